//! HTTPS with rustls: a PEM certificate chain and key into an acceptor, and a listener for
//! `axum::serve` whose handshakes run in their own tasks (with a deadline), so one slow or
//! hostile client cannot hold up the accepting of others.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::ServeError;

/// A TLS acceptor.
pub type Acceptor = TlsAcceptor;

/// How long a client has to finish the handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// The acceptor of the certificate chain in `cert` and the private key in `key` (PEM).
pub fn acceptor(cert: &Path, key: &Path) -> Result<Acceptor, ServeError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| ServeError::Tls(format!("certificate '{}': {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!("no certificate in '{}'", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServeError::Tls(format!("key '{}': {e}", key.display())))?;
    // ring rather than aws-lc-rs: no C/cmake build. Its lack of post-quantum key exchange is
    // why rustls marks this deprecated; classical ECDHE is what OpenStack clients use today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener handing out connections whose TLS handshake completed.
#[derive(Debug)]
pub struct TlsListener {
    local: std::io::Result<SocketAddr>,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `tcp` and shakes hands with `acceptor` in the background.
    pub fn new(tcp: TcpListener, acceptor: Acceptor) -> TlsListener {
        let local = tcp.local_addr();
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => log::debug!("TLS handshake with {peer}: timed out"),
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task only ends with the listener; nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
