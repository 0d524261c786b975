//! The forwarding paths: L7 HTTP ([`http`]) and L4 TCP ([`tcp`]).
//!
//! - `headers`: hop-by-hop removal and X-Forwarded-* (pure functions).
//! - `upstream`: per-backend keep-alive connection pool and the streamed response body.
//! - `h1_client`: lb's own HTTP/1.1 client for bodiless requests (the hot path).
//! - `http`: one request → pick, forward, retry, answer; WebSocket tunnels.
//! - `tcp`: one connection → pick, connect (with failover), copy bytes both ways.
//! - `local`: the short text/plain answers the proxy gives itself (400, 502, 503, 504).
//! - `upstream_tls`: opening backend connections: TCP, an optional PROXY header, optional TLS.
//! - `framing` + `checked_stream`: HTTP/1 request heads judged on the client's byte stream
//!   before hyper parses them (both `Content-Length` and `Transfer-Encoding` → 400).
//! - `guard`: hostile input: request checks (400/413/414/431), the client body limit, and the
//!   connection deadlines before the first request and when idle.
//! - `h2_flood`: HTTP/2 control-frame floods, bounded on the client's byte stream as nginx does.
//! - `h2_stream`: the executor that runs each HTTP/2 stream, resetting one that cannot send for
//!   `idle_timeout`.

pub mod checked_stream;
pub mod framing;
pub mod guard;
pub mod h1_client;
pub mod h2_flood;
pub mod h2_stream;
pub mod headers;
pub mod http;
pub mod local;
pub mod tcp;
pub mod upstream;
pub mod upstream_tls;

pub use self::http::{HttpProxy, RespBody};
