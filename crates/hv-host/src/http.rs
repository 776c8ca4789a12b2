//! A small HTTP/1.1 client over a Unix socket or TCP (hyper), for talking to `hv-vmm`'s API
//! and to `hvd`.

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
pub use hyper::body::Bytes;
use hyper::Request;
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address (`HOST:PORT`).
    Tcp(String),
}

/// A host URI that is not `hv+unix:///ABS/PATH` or `hv+tcp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid URI {uri}: {why}")]
pub struct InvalidUri {
    /// The URI given.
    pub uri: String,
    /// What is wrong.
    pub why: &'static str,
}

impl Endpoint {
    /// Parses a host daemon's URI: `hv+unix:///ABS/PATH/hvd.sock` or `hv+tcp://HOST:PORT`.
    pub fn parse_uri(uri: &str) -> Result<Endpoint, InvalidUri> {
        let bad = |why| InvalidUri { uri: uri.to_string(), why };
        if let Some(path) = uri.strip_prefix("hv+unix://") {
            if !path.starts_with('/') {
                return Err(bad("hv+unix:// needs an absolute path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = uri.strip_prefix("hv+tcp://") {
            let addr = addr.trim_end_matches('/');
            if !addr.contains(':') {
                return Err(bad("hv+tcp:// needs HOST:PORT"));
            }
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        Err(bad("use hv+unix:///PATH/hvd.sock or hv+tcp://HOST:PORT"))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Errors talking to a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Nothing listens there (or the connection was refused).
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("request to {endpoint} failed: {why}")]
    Exchange {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        why: String,
    },
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(Endpoint),
}

/// A response: status and body bytes.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// Sends one request and reads the whole response, within `timeout`.
pub async fn call(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let fut = async {
        let stream = connect(endpoint).await?;
        exchange(endpoint, stream, method, path, headers, body).await
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| HttpError::Timeout(endpoint.clone()))?
}

/// Opens a byte stream to `endpoint` (TCP without Nagle's delay: requests are small).
async fn connect(endpoint: &Endpoint) -> Result<Box<dyn Io>, HttpError> {
    let fail = |source| HttpError::Connect { endpoint: endpoint.clone(), source };
    Ok(match endpoint {
        Endpoint::Unix(p) => Box::new(UnixStream::connect(p).await.map_err(fail)?),
        Endpoint::Tcp(a) => {
            let s = TcpStream::connect(a).await.map_err(fail)?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
    })
}

async fn exchange(
    endpoint: &Endpoint,
    stream: Box<dyn Io>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response, HttpError> {
    let fail = |why: String| HttpError::Exchange { endpoint: endpoint.clone(), why };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
    let has_body = body.is_some();
    if has_body {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| fail(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok(Response { status, body })
}

/// Sends a request whose body is the chunks `body` yields (never held whole in memory), and
/// reads the whole (short) response. A chunk that is an error aborts the request.
pub async fn upload(
    endpoint: &Endpoint,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    mut body: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> Result<Response, HttpError> {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let fail = |why: String| HttpError::Exchange { endpoint: endpoint.clone(), why };
    let io = connect(endpoint).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
    req = req.header("content-type", "application/octet-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let frames = futures_util::stream::poll_fn(move |cx| {
        body.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    });
    let req = req.body(StreamBody::new(frames)).map_err(|e| fail(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok(Response { status, body })
}

/// Sends a `GET` and, when the answer is a success, hands its body to `sink` chunk by chunk as
/// it arrives (a sink error ends the transfer with that error). A failure status comes back
/// with its (short) body whole, for the caller to read the error from.
pub async fn download(
    endpoint: &Endpoint,
    path: &str,
    headers: &[(&str, &str)],
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<Response, HttpError> {
    let fail = |why: String| HttpError::Exchange { endpoint: endpoint.clone(), why };
    let (sender, conn, resp) = send_get(endpoint, path, headers).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let body = body.collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
        conn.abort();
        return Ok(Response { status, body });
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            sink(data).map_err(|e| fail(format!("writing what arrived: {e}")))?;
        }
    }
    drop(sender);
    let _ = conn.await;
    Ok(Response { status, body: Bytes::new() })
}

/// A connection upgraded out of HTTP: raw bytes both ways.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Sends a bodiless `POST path` asking to upgrade the connection to `protocol`. A `101
/// Switching Protocols` answer gives the raw connection; any other comes back whole, for the
/// caller to read the error from.
pub async fn upgrade(
    endpoint: &Endpoint,
    path: &str,
    protocol: &str,
    headers: &[(&str, &str)],
) -> Result<std::result::Result<Upgraded, Response>, HttpError> {
    let fail = |why: String| HttpError::Exchange { endpoint: endpoint.clone(), why };
    let io = connect(endpoint).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fail(e.to_string()))?;
    // The connection task hands the stream over to the upgrade when the answer is 101.
    tokio::spawn(conn.with_upgrades());
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "localhost")
        .header("connection", "upgrade")
        .header("upgrade", protocol);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| fail(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = resp.into_body().collect().await.map_err(|e| fail(e.to_string()))?.to_bytes();
        return Ok(Err(Response { status, body }));
    }
    let io = hyper::upgrade::on(resp).await.map_err(|e| fail(format!("upgrade: {e}")))?;
    Ok(Ok(TokioIo::new(io)))
}

/// The connection half of a streamed exchange: the request sender (dropping it lets the
/// connection end) and the task that runs the connection.
type Exchange = (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
    hyper::Response<hyper::body::Incoming>,
);

/// Connects, sends a bodiless `GET path` with `headers`, and returns the response with its
/// body still unread (for [`download`]).
async fn send_get(
    endpoint: &Endpoint,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Exchange, HttpError> {
    let fail = |why: String| HttpError::Exchange { endpoint: endpoint.clone(), why };
    let io = connect(endpoint).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut req = Request::builder().method(Method::GET).uri(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).map_err(|e| fail(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| fail(e.to_string()))?;
    Ok((sender, conn, resp))
}

/// A byte stream hyper can run HTTP over (Unix or TCP).
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
