//! The forwarding paths: L7 HTTP ([`http`]) and L4 TCP ([`tcp`]).
//!
//! - `response_body`: the streamed response body (in-flight count, duration, access log, the
//!   connection back to its idle pool).
//! - `http`: one request → pick, forward, retry, answer; WebSocket tunnels.
//! - `tcp`: one connection → pick, connect (with failover), copy bytes both ways.
//! - `local`: the short text/plain answers the proxy gives itself (400, 502, 503, 504).
//! - `checked_stream` (with `crate::http1::framing`): HTTP/1 request heads judged on the
//!   client's byte stream before hyper parses them (both `Content-Length` and `Transfer-Encoding` → 400).
//! - `guard`: hostile input: request checks (400/405/413/414/431), whose fault a failed body was, and the
//!   connection deadlines before the first request and when idle.
//! - `h2_flood`: HTTP/2 control-frame floods, bounded on the client's byte stream as nginx does.
//! - `h2_stream`: the executor that runs each HTTP/2 stream, resetting one that cannot send for
//!   `idle_timeout`.

pub mod checked_stream;
pub mod guard;
pub mod h2_flood;
pub mod h2_stream;
pub mod http;
pub mod local;
pub mod response_body;
pub mod tcp;

pub use self::http::{HttpProxy, RespBody};
