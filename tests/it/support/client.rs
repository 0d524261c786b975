//! HTTP/1.1 clients towards lb: hyper-util's pooled client, and single explicit connections
//! for tests that must know which socket carried which request.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
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

/// `clients` pooled clients at once, each sending `each` GETs for `/` one after another; every
/// answer must be 200.
pub async fn get_concurrently(addr: SocketAddr, clients: usize, each: usize) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let client = client();
                for _ in 0..each {
                    assert_eq!(get(&client, addr, "/").await.0, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// One explicit HTTP/1.1 keep-alive connection to lb: unlike the pooled [`client()`], the test
/// knows every request goes over this very socket (the pooled client may open a second one, and
/// that one can land on lb's other worker, whose upstream pool is its own). Requests return
/// `Err` when the connection failed, which is what some tests wait for; `driver` ends when the
/// server closes the connection.
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
        self.send(Method::GET, path).await
    }

    /// A bodiless `method` request for `path` on this connection → (status, body).
    pub async fn send(&mut self, method: Method, path: &str) -> Result<(u16, String), String> {
        let resp = self.request(method, path).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// GET `path` on this connection, returning once the response head is in.
    pub async fn head(&mut self, path: &str) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.request(Method::GET, path).await
    }

    async fn request(&mut self, method: Method, path: &str) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::builder().method(method).uri(path).header("host", "lb.test").body(Empty::new()).unwrap();
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
