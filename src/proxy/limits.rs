//! Hostile input: what a client's request may not be.
//!
//! hyper's HTTP/1 parser already refuses most malformed heads itself, answering with an empty
//! `400` (or `414`) and closing the connection before the proxy sees a request: two different
//! `Content-Length`s (or a list, or a non-number), `Transfer-Encoding` on HTTP/1.0, a final
//! transfer coding other than `chunked` (`xchunked`), bare CR, NUL or obs-folded lines in a
//! header, whitespace before a header's colon. Heads over 64 KiB or with more lines than
//! `max_headers` are refused (`431`) on the byte stream, with lb's text, by
//! `crate::server::checked_stream`. HTTP/2 (the h2 crate) resets streams that carry connection-specific
//! headers or invalid values. What gets through and is refused here, before anything reaches a
//! backend:
//!
//! - a `Transfer-Encoding` other than exactly one `chunked` (hyper accepts `chunked, chunked`,
//!   `gzip, chunked` and repeated headers, which other servers may frame differently): `400`;
//! - more than one `Host` header (RFC 9112 §3.2; lb and the backend could each take a
//!   different one): `400` (found where the proxy reads the host, with the same lookup);
//! - an HTTP/1.1 request without a host (no `Host`, no absolute-form target), or whose host is
//!   empty or not `host[:port]` as RFC 3986 spells it (a space, `/`, `\`, `@`...): `400`
//!   (RFC 9112 §3.2), as nginx does; a backend that routes by host must not guess;
//! - the asterisk form (`* HTTP/1.1`) with any method but `OPTIONS` (RFC 9112 §3.2.4): `400`;
//! - `CONNECT`: `405`. lb is a reverse proxy and opens no tunnels to where a client asks;
//! - an HTTP/2 request with more header fields than `max_headers` (the HTTP/1 limit, which the
//!   byte stream enforces before hyper parses a head; h2 only bounds the list's size): `431`.
//!   `cookie` fields count as one, since HTTP/2 clients send one per cookie where HTTP/1 has
//!   one line;
//! - a path and query longer than `max_uri_bytes`: `414`;
//! - a declared `Content-Length` over `max_body_bytes`: `413`; a body without one that grows
//!   past it is cut off there by [`crate::upstream::ClientBody`] and answered with `413` too.
//!
//! Each of these answers carries `Connection: close` on HTTP/1: the rest of the connection's
//! bytes cannot be trusted to be framed the way we think, so nothing more is read from it.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` cannot be told apart here
//! (hyper drops the `Content-Length` before the proxy sees the head); it is refused earlier, on
//! the byte stream, by `crate::server::checked_stream`. How long a client may take is the
//! server's (`crate::server::deadlines`).

use std::error::Error as StdError;

use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};

use super::http::RespBody;
use super::local;
use crate::upstream::{ClientBodyError, ConnectError};

/// Per-listener request limits (`max_uri_bytes`, `max_body_bytes`, `max_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Header fields allowed per request; more gets 431. HTTP/1 heads are held to it on the
    /// byte stream already (see `checked_stream`), so only HTTP/2 requests can reach this check
    /// with more.
    pub max_headers: usize,
    /// Longest path and query accepted; longer gets 414.
    pub max_uri_bytes: usize,
    /// Largest request body accepted, `None` for no limit; larger gets 413.
    pub max_body_bytes: Option<u64>,
}

/// Why a request is refused before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Transfer-Encoding` other than exactly one `chunked`.
    TransferEncoding,
    /// Path and query longer than `max_uri_bytes`.
    UriTooLong,
    /// Body larger than `max_body_bytes` (declared, or found out while streaming it).
    BodyTooLarge,
    /// The client's body ended before its declared end (the client went away or broke the
    /// framing). Not the backend's fault, so it is not counted against it.
    BodyAborted,
    /// More than one `Host` header (RFC 9112 §3.2): backends and lb could disagree on which
    /// one names the site.
    DuplicateHost,
    /// An HTTP/1.1 request with no host at all (RFC 9112 §3.2).
    MissingHost,
    /// A host that is empty or not `host[:port]` (see [`valid_host`]).
    InvalidHost,
    /// `*` as the target of anything but `OPTIONS` (RFC 9112 §3.2.4).
    AsteriskForm,
    /// `CONNECT`: lb opens no tunnels to where a client asks.
    Connect,
    /// More header fields than `max_headers`.
    TooManyHeaders,
}

impl Refusal {
    /// The proxy's answer: a short text/plain body, and `Connection: close` on HTTP/1.
    pub fn response(self, version: Version) -> Response<RespBody> {
        let mut resp = match self {
            Refusal::TransferEncoding => {
                local::bad_request("unsupported Transfer-Encoding (only \"chunked\" is accepted)")
            }
            Refusal::UriTooLong => local::respond(StatusCode::URI_TOO_LONG, "414 URI Too Long"),
            Refusal::BodyTooLarge => local::respond(StatusCode::PAYLOAD_TOO_LARGE, "413 Content Too Large"),
            Refusal::BodyAborted => local::bad_request("the request body ended early"),
            Refusal::DuplicateHost => local::bad_request("more than one Host header"),
            Refusal::MissingHost => local::bad_request("no Host header"),
            Refusal::InvalidHost => local::bad_request("invalid Host header"),
            Refusal::AsteriskForm => local::bad_request("the target * is for OPTIONS only"),
            Refusal::Connect => {
                local::respond(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed: lb does not tunnel CONNECT")
            }
            Refusal::TooManyHeaders => {
                local::respond(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "431 Request Header Fields Too Large")
            }
        };
        if version < Version::HTTP_2 {
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Checks a request head against the rules above. Cheap: a few header lookups.
pub fn check<B>(req: &Request<B>, limits: &Limits) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    // hyper parses `*` (and only it) into a URI without a path that starts with '/'.
    if req.method() != Method::OPTIONS && req.uri().path() == "*" {
        return Err(Refusal::AsteriskForm);
    }
    let headers = req.headers();
    // One comparison for nearly every request; the cookies are only counted past the limit.
    if headers.len() > limits.max_headers {
        let crumbs = headers.get_all(COOKIE).iter().count();
        if headers.len() - crumbs.saturating_sub(1) > limits.max_headers {
            return Err(Refusal::TooManyHeaders);
        }
    }
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(first) = te.next() {
        let only_chunked = first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") && te.next().is_none();
        // hyper never hands over both; refuse them anyway should that change.
        if !only_chunked || headers.contains_key(CONTENT_LENGTH) {
            return Err(Refusal::TransferEncoding);
        }
    }
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > limits.max_uri_bytes {
        return Err(Refusal::UriTooLong);
    }
    if let Some(max) = limits.max_body_bytes {
        // hyper (HTTP/1) and h2 have already refused unparsable or conflicting values.
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        if declared.is_some_and(|len: u64| len > max) {
            return Err(Refusal::BodyTooLarge);
        }
    }
    Ok(())
}

/// True when `host` is `host[:port]` as RFC 3986 §3.2.2-3 spells it: a non-empty reg-name
/// (unreserved, percent-encoded or sub-delim characters), an IPv4 address (a reg-name too) or a
/// bracketed IP literal, then optionally `:` and at most five digits. A Host that fails this
/// (empty, with a space, `/`, `\`, `@`, `?`, `#`, a control byte) could be read differently by
/// lb and by a backend that routes by it; nginx refuses such hosts as well.
pub fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', host) else { return false };
        let literal = &host[1..close];
        // IPv6 (and IPvFuture) literals, with an RFC 6874 zone (`%25eth0`).
        let ok = !literal.is_empty() && literal.iter().all(|&b| b.is_ascii_alphanumeric() || b":.%-_~".contains(&b));
        if !ok {
            return false;
        }
        match &host[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b"x"[..], port),
            _ => return false,
        }
    } else {
        match memchr::memrchr(b':', host) {
            Some(i) => (&host[..i], &host[i + 1..]),
            None => (host, &b""[..]),
        }
    };
    let name_ok =
        !name.is_empty() && name.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    name_ok && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

/// When an upstream exchange failed because of the client's body (too large, or cut short),
/// the refusal to answer with; `None` when the backend side failed.
pub fn client_fault(err: &(dyn StdError + 'static)) -> Option<Refusal> {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cause {
        match e.downcast_ref::<ClientBodyError>() {
            Some(ClientBodyError::TooLarge) => return Some(Refusal::BodyTooLarge),
            Some(ClientBodyError::Read(_)) => return Some(Refusal::BodyAborted),
            None => cause = e.source(),
        }
    }
    None
}

/// True when a backend connect failed because lb itself is out of file descriptors (EMFILE,
/// ENFILE: the same numbers on Linux, the BSDs and macOS). That says nothing about the backend,
/// so it must not count as a passive health failure: otherwise a flood of client connections
/// that exhausts descriptors would take every backend out of rotation, and keep them out for a
/// while after the flood is gone.
pub fn out_of_descriptors(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Io(_, err) if io_out_of_descriptors(err))
}

/// True when an I/O error is lb's own descriptor exhaustion (EMFILE or ENFILE).
pub fn io_out_of_descriptors(err: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(err.raw_os_error(), Some(ENFILE | EMFILE))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_emfile_and_enfile_are_lbs_own_exhaustion() {
        use std::io::{Error, ErrorKind};
        assert!(io_out_of_descriptors(&Error::from_raw_os_error(24)));
        assert!(io_out_of_descriptors(&Error::from_raw_os_error(23)));
        assert!(!io_out_of_descriptors(&Error::from_raw_os_error(111)), "ECONNREFUSED is the backend's");
        assert!(!io_out_of_descriptors(&Error::new(ErrorKind::TimedOut, "t")));
    }

    use super::*;

    const LIMITS: Limits = Limits { max_uri_bytes: 16, max_body_bytes: Some(10), max_headers: 3 };

    #[test]
    fn hosts_as_rfc_3986_spells_them() {
        for good in [
            "example.com",
            "a.b-c_d~e",
            "example.com:8080",
            "example.com:",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[fe80::1%25eth0]:80",
            "xn--bcher-kva.example",
            "a%20b",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a\\b",
            "user@host",
            "h?x",
            "h#x",
            ":80",
            "h:123456",
            "h:8o",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:x",
            "h\t",
            "h:80:80",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn connect_and_the_asterisk_form_are_refused() {
        let connect = Request::connect("h:443").body(()).unwrap();
        assert_eq!(check(&connect, &LIMITS), Err(Refusal::Connect));
        let star = Request::get("*").body(()).unwrap();
        assert_eq!(check(&star, &LIMITS), Err(Refusal::AsteriskForm));
        let options = Request::options("*").body(()).unwrap();
        assert_eq!(check(&options, &LIMITS), Ok(()));
    }

    fn req(headers: &[(&str, &str)], uri: &str) -> Request<()> {
        let mut b = Request::post(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn transfer_encoding_must_be_exactly_chunked() {
        assert_eq!(check(&req(&[("transfer-encoding", "chunked")], "/"), &LIMITS), Ok(()));
        assert_eq!(check(&req(&[("transfer-encoding", "Chunked")], "/"), &LIMITS), Ok(()));
        for bad in ["chunked, chunked", "gzip, chunked", "xchunked", "identity", ""] {
            assert_eq!(
                check(&req(&[("transfer-encoding", bad)], "/"), &LIMITS),
                Err(Refusal::TransferEncoding),
                "{bad:?}"
            );
        }
        let twice = req(&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")], "/");
        assert_eq!(check(&twice, &LIMITS), Err(Refusal::TransferEncoding));
        let both = req(&[("transfer-encoding", "chunked"), ("content-length", "3")], "/");
        assert_eq!(check(&both, &LIMITS), Err(Refusal::TransferEncoding));
    }

    #[test]
    fn uri_and_declared_body_limits() {
        assert_eq!(check(&req(&[], "/0123456789abcde"), &LIMITS), Ok(()));
        assert_eq!(check(&req(&[], "/0123456789?bcdef"), &LIMITS), Err(Refusal::UriTooLong));
        assert_eq!(check(&req(&[("content-length", "10")], "/"), &LIMITS), Ok(()));
        assert_eq!(check(&req(&[("content-length", "11")], "/"), &LIMITS), Err(Refusal::BodyTooLarge));
        let unlimited = Limits { max_body_bytes: None, ..LIMITS };
        assert_eq!(check(&req(&[("content-length", "99999999999")], "/"), &unlimited), Ok(()));
    }

    #[test]
    fn header_fields_past_max_headers_with_cookies_counted_once() {
        let three = [("a", "1"), ("b", "2"), ("c", "3")];
        assert_eq!(check(&req(&three, "/"), &LIMITS), Ok(()));
        assert_eq!(
            check(&req(&[("a", "1"), ("a", "2"), ("b", "3"), ("c", "4")], "/"), &LIMITS),
            Err(Refusal::TooManyHeaders)
        );
        let crumbs: Vec<(&str, &str)> =
            std::iter::repeat_n(("cookie", "k=v"), 50).chain([("a", "1"), ("b", "2")]).collect();
        assert_eq!(check(&req(&crumbs, "/"), &LIMITS), Ok(()));
        let more: Vec<(&str, &str)> = crumbs.iter().copied().chain([("c", "3")]).collect();
        assert_eq!(check(&req(&more, "/"), &LIMITS), Err(Refusal::TooManyHeaders));
        assert_eq!(Refusal::TooManyHeaders.response(Version::HTTP_2).status(), 431);
    }

    #[test]
    fn refusals_close_http1_connections_only() {
        let r = Refusal::TransferEncoding.response(Version::HTTP_11);
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        assert!(Refusal::UriTooLong.response(Version::HTTP_2).headers().get("connection").is_none());
        assert_eq!(Refusal::BodyTooLarge.response(Version::HTTP_10).status(), 413);
    }
}
