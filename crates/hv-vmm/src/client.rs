//! A small blocking client of the API (for the host daemon and for tests): one HTTP/1.1
//! request per connection, as `ch-remote` does.
//!
//! ```no_run
//! use hv_vmm::client::Client;
//! let client = Client::new("/run/hv/vm1.sock");
//! let ping = client.ping()?;
//! println!("hv-vmm {} (pid {})", ping.version, ping.pid);
//! let r = client.put("vm.boot", None)?;
//! assert_eq!(r.status, 204, "{}", r.body);
//! # Ok::<(), hv_vmm::client::ClientError>(())
//! ```

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::api::{VmInfo, VmmPingResponse};
use crate::config::VmConfig;
use crate::server::API_ROOT;

/// Why a request could not be made or its answer read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {endpoint} failed: {source}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be formed (an endpoint name with characters a path cannot hold).
    #[error("bad request for {endpoint}: {source}")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: hyper::http::Error,
    },
    /// The runtime could not be made.
    #[error("cannot start the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The server answered an error status.
    #[error("{endpoint} answered {status}: {body}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The status code.
        status: u16,
        /// The body.
        body: String,
    },
    /// The answer is not the JSON expected.
    #[error("{endpoint} answered unexpected JSON: {source}")]
    Json {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A status code and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// A client of one `hv-vmm` API socket.
#[derive(Clone, Debug)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client of the socket at `path` (nothing is connected until a request).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self { path: path.as_ref().to_path_buf() }
    }

    /// Sends `method` to `/api/v1/<endpoint>` with `body` (sent as JSON).
    pub fn request(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(ClientError::Runtime)?;
        rt.block_on(self.exchange(method, endpoint, body))
    }

    async fn exchange(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        let http = |source| ClientError::Http { endpoint: endpoint.into(), source };
        let stream = tokio::net::UnixStream::connect(&self.path)
            .await
            .map_err(|source| ClientError::Connect { path: self.path.clone(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{API_ROOT}/{endpoint}"))
            .header("host", "localhost");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|source| ClientError::Request { endpoint: endpoint.into(), source })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
        driver.abort();
        Ok(Reply { status, body: String::from_utf8_lossy(&bytes).into_owned() })
    }

    /// `GET` an endpoint.
    pub fn get(&self, endpoint: &str) -> Result<Reply, ClientError> {
        self.request("GET", endpoint, None)
    }

    /// `PUT` an endpoint, with a JSON body or none.
    pub fn put(&self, endpoint: &str, body: Option<&[u8]>) -> Result<Reply, ClientError> {
        self.request("PUT", endpoint, body)
    }

    fn get_json<T: DeserializeOwned>(&self, endpoint: &str) -> Result<T, ClientError> {
        let r = self.get(endpoint)?;
        if r.status != 200 {
            return Err(ClientError::Status {
                endpoint: endpoint.into(),
                status: r.status,
                body: r.body,
            });
        }
        serde_json::from_str(&r.body)
            .map_err(|source| ClientError::Json { endpoint: endpoint.into(), source })
    }

    fn put_ok(&self, endpoint: &str, body: Option<&[u8]>) -> Result<(), ClientError> {
        let r = self.put(endpoint, body)?;
        if r.status != 204 {
            return Err(ClientError::Status {
                endpoint: endpoint.into(),
                status: r.status,
                body: r.body,
            });
        }
        Ok(())
    }

    /// `vmm.ping`.
    pub fn ping(&self) -> Result<VmmPingResponse, ClientError> {
        self.get_json("vmm.ping")
    }

    /// `vm.info`.
    pub fn info(&self) -> Result<VmInfo, ClientError> {
        self.get_json("vm.info")
    }

    /// `vm.create` with `config`.
    pub fn create(&self, config: &VmConfig) -> Result<(), ClientError> {
        let body = serde_json::to_vec(config)
            .map_err(|source| ClientError::Json { endpoint: "vm.create".into(), source })?;
        self.put_ok("vm.create", Some(&body))
    }

    /// A body-less `PUT` that must answer 204 (`vm.boot`, `vm.pause`, `vmm.shutdown`...).
    pub fn action(&self, endpoint: &str) -> Result<(), ClientError> {
        self.put_ok(endpoint, None)
    }
}
