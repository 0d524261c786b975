//! The forwarding paths: L7 HTTP ([`http`]) and L4 TCP ([`tcp`]).
//!
//! - `headers`: hop-by-hop removal and X-Forwarded-* (pure functions).
//! - `upstream`: per-backend keep-alive connection pool and the streamed response body.
//! - `http`: one request → pick, forward, retry, answer; WebSocket tunnels.
//! - `tcp`: one connection → pick, connect (with failover), copy bytes both ways.
//! - `local`: the short text/plain answers the proxy gives itself (400, 502, 503, 504).

pub mod headers;
pub mod http;
pub mod local;
pub mod tcp;
pub mod upstream;

pub use self::http::{HttpProxy, RespBody};
