//! HTTP/1 as lb reads and writes it, with no I/O: the limits (one copy each), the request
//! framing scanner that judges heads on the client's byte stream ([`framing`]), and header
//! hygiene for both directions ([`headers`]: hop-by-hop removal, `X-Forwarded-*`).
//!
//! The response side's parser (lb's own upstream client) lives with that client in
//! `upstream/h1_client.rs` and takes its limits from here. Its chunked decoder is not the
//! request scanner's on purpose: the scanner must accept exactly what hyper's server accepts
//! (bare LF in trailers, any number of leading zeros) so that it finds every boundary hyper
//! finds, while lb's client is strict about what backends send (CRLF everywhere, bounded lines);
//! one decoder for both would loosen one side or break the other.

pub mod framing;
pub mod headers;

/// Largest request or response head (start line and headers) accepted: a request over it gets
/// `431`, a backend's answer over it is a bad answer (`502`). hyper's server buffer is set to it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Header lines an answer from a backend may have (hyper's default for requests, which
/// `max_headers` sets per listener).
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// Trailer section of a chunked body, in bytes.
pub const MAX_TRAILER_BYTES: usize = 64 * 1024;
