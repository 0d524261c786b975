//! HTTP/1.1 clients towards lb: hyper-util's pooled client, and single explicit connections
//! for tests that must know which socket carried which request.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A keep-alive HTTP/1.1 client (hyper-util's pooled client).
pub type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://addr{path}` → (status, body as text, headers).
pub async fn get(client: &Client, addr: SocketAddr, path: &str) -> (StatusCode, String, HeaderMap) {
    let uri = format!("http://{addr}{path}");
    let resp = client.get(uri.parse().unwrap()).await.expect("request reached lb");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// One keep-alive client connection to lb, for tests that count upstream connections.
///
/// The pooled `client()` may open a second connection when the first has not yet gone back to
/// its pool, and that one can land on lb's other worker, whose upstream pool is its own.
pub struct OneConn(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl OneConn {
    pub async fn open(addr: SocketAddr) -> OneConn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("lb accepts");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        OneConn(sender)
    }

    /// GET `path` on this connection → (status, body as text, headers).
    pub async fn get(&mut self, path: &str) -> (StatusCode, String, HeaderMap) {
        self.send(http::Method::GET, path).await
    }

    /// A bodiless `method` request for `path` on this connection → (status, body, headers).
    pub async fn send(&mut self, method: http::Method, path: &str) -> (StatusCode, String, HeaderMap) {
        let req = Request::builder().method(method).uri(path).header("host", "lb.test").body(Empty::new()).unwrap();
        self.0.ready().await.expect("connection still open");
        let resp = self.0.send_request(req).await.expect("request reached lb");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned(), headers)
    }
}

/// One explicit HTTP/1.1 keep-alive connection (unlike the pooled client, the test knows
/// every request goes over this very socket). `closed` resolves when the server closes it.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    pub driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to lb");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        Conn { sender, driver: tokio::spawn(conn) }
    }

    /// Closes the socket.
    pub fn close(self) {
        self.driver.abort();
    }

    /// GET `path` on this connection → (status, body).
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let resp = self.head(path).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET `path` on this connection, returning once the response head is in.
    pub async fn head(&mut self, path: &str) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(path).header("host", "lb.test").body(Empty::new()).unwrap();
        self.sender.send_request(req).await.map_err(|e| e.to_string())
    }
}

/// Reads the body of a streamed response up to and including `until` (or the end).
pub async fn read_until(body: &mut hyper::body::Incoming, until: &str) -> Result<String, String> {
    let mut got = String::new();
    while !got.contains(until) {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    got.push_str(&String::from_utf8_lossy(&d));
                }
            }
            Some(Err(e)) => return Err(format!("{e} after {got:?}")),
            None => break,
        }
    }
    Ok(got)
}
