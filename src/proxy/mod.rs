//! The forwarding paths: L7 HTTP ([`http`]) and L4 TCP ([`tcp`]).
//!
//! - `response_body`: the streamed response body (in-flight count, duration, access log, the
//!   connection back to its idle pool).
//! - `http`: one request → pick, forward, retry, answer; WebSocket tunnels.
//! - `tcp`: one connection → pick, connect (with failover), copy bytes both ways.
//! - `local`: the short text/plain answers the proxy gives itself (400, 502, 503, 504).
//! - `limits`: hostile requests refused before forwarding (400/405/413/414/431), and whose fault
//!   a failed request body was.

pub mod failover;
pub mod http;
pub mod limits;
pub mod local;
pub mod response_body;
pub mod tcp;

pub use self::http::HttpProxy;
