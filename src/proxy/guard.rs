//! Hostile input: what a client may not send, and how long it may take to send anything.
//!
//! hyper's HTTP/1 parser already refuses most malformed heads itself, answering with an empty
//! `400` (or `414`) and closing the connection before the proxy sees a request: two different
//! `Content-Length`s (or a list, or a non-number), `Transfer-Encoding` on HTTP/1.0, a final
//! transfer coding other than `chunked` (`xchunked`), bare CR, NUL or obs-folded lines in a
//! header, whitespace before a header's colon. Heads over 64 KiB or with more lines than
//! `max_headers` are refused (`431`) on the byte stream, with lb's text, by
//! [`super::checked_stream`]. HTTP/2 (the h2 crate) resets streams that carry connection-specific
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
//! the byte stream, by [`super::checked_stream`].
//!
//! [`Activity`] holds a connection's deadlines, all checked by one sleeping task per
//! connection rather than a timer per request: the first request (`header_timeout`), a request
//! head arriving in pieces (`header_timeout`, reported by the client stream), a connection
//! with nothing in flight (`idle_timeout`; a response body still being sent counts as in
//! flight) and a client that stops reading (`idle_timeout` without a byte taken).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

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
        let ok = !literal.is_empty() && literal.iter().all(|&b| b.is_ascii_hexdigit() || b":.vV".contains(&b));
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

/// Connection-level deadlines, from the listener's `header_timeout` and `idle_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    /// The first request must have arrived this long after the connection was accepted (after
    /// the TLS handshake).
    pub first_request: Duration,
    /// A connection with nothing in flight and no new request for this long is closed
    /// gracefully.
    pub idle: Duration,
    /// An HTTP/1 request head must be complete this long after its first bytes arrived
    /// (`header_timeout`; slowloris).
    pub head: Duration,
}

/// Requests in flight on one connection and when the last one ended, shared between the
/// connection's service (which reports each request through [`Activity::track`]) and the task
/// that serves the connection (which waits in [`Activity::expired`]).
#[derive(Clone, Default)]
pub struct Activity(Arc<ActivityInner>);

#[derive(Default)]
struct ActivityInner {
    state: Mutex<ActivityState>,
    /// Signalled once per connection, when its first request starts.
    first: Notify,
    /// Signalled when a request head starts arriving in pieces, or writes to the client start
    /// to block, so that [`Activity::expired`] looks at the new deadline.
    new_deadline: Notify,
    /// Signalled when the connection's stream refused a request head: nothing more is read,
    /// and the connection is to be shut down after the requests in flight (see
    /// [`super::checked_stream`]).
    stop: Notify,
}

#[derive(Default)]
struct ActivityState {
    started: bool,
    active: usize,
    last_end: Option<Instant>,
    /// Since when an HTTP/1 request head has been arriving without being complete (see
    /// [`Activity::head_pending`]).
    head_since: Option<Instant>,
    /// Since when the client has not taken what lb is writing to it (see
    /// [`Activity::write_blocked`]).
    stalled_since: Option<Instant>,
    /// The status and body size of an answer the connection's stream gave a refused head (see
    /// [`Activity::answered_itself`]).
    own_answer: Option<(u16, u64)>,
}

/// What [`Activity::expired`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request arrived within `first_request`: nothing is in flight, drop the connection.
    NoRequest,
    /// Requests were served, but none for `idle`: shut the connection down gracefully.
    Idle,
    /// A request head has been arriving for longer than `head` (slowloris) with nothing in
    /// flight: drop the connection.
    SlowHead,
    /// The client has not read anything of what lb writes to it for `idle`, even though a
    /// response is in flight: drop the connection (and the request with it).
    Stalled,
}

impl Activity {
    fn state(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports that an HTTP/1 request head has started to arrive but is not complete yet
    /// (`true`), or that it no longer is (`false`). Called by the connection's stream only when
    /// this changes, which is only when a head is split across reads: a whole head in one read
    /// costs no timer at all.
    pub fn head_pending(&self, pending: bool) {
        self.mark(pending, |s| &mut s.head_since);
    }

    /// Reports that a write to the client could not proceed (`true`: its receive window and
    /// lb's send buffer are full), or that one went through again (`false`). Called by the
    /// connection's stream only when this changes; writes to a client that reads never block.
    pub fn write_blocked(&self, blocked: bool) {
        self.mark(blocked, |s| &mut s.stalled_since);
    }

    /// Starts (`on`, keeping an earlier start) or clears the timestamp `field` picks, and wakes
    /// [`Activity::expired`] to look at the new deadline.
    fn mark(&self, on: bool, field: impl FnOnce(&mut ActivityState) -> &mut Option<Instant>) {
        let mut s = self.state();
        let since = field(&mut s);
        if !on {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
            self.0.new_deadline.notify_one();
        }
    }

    /// Resolves once writes to the client have been blocked for `idle` without a break (see
    /// [`Activity::write_blocked`]). For a connection that is finishing its last response after
    /// a graceful shutdown: [`Activity::expired`] has returned by then.
    pub async fn stalled(&self, idle: Duration) {
        loop {
            let deadline = self.state().stalled_since.map(|since| since + idle);
            tokio::select! {
                _ = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    if self.state().stalled_since.is_some_and(|since| since + idle <= now) {
                        return;
                    }
                }
                _ = self.0.new_deadline.notified() => {}
            }
        }
    }

    /// Records that the connection's stream answered a head it refused itself (no request
    /// exists for it), so that the answer is counted and logged like any other.
    pub fn answered_itself(&self, status: u16, body_bytes: u64) {
        self.state().own_answer = Some((status, body_bytes));
    }

    /// See [`Activity::answered_itself`].
    pub fn own_answer(&self) -> Option<(u16, u64)> {
        self.state().own_answer
    }

    /// Asks the task serving the connection to shut it down gracefully (idempotent).
    pub fn stop_reading(&self) {
        self.0.stop.notify_one();
    }

    /// Resolves once [`Activity::stop_reading`] has been called.
    pub async fn reading_stopped(&self) {
        self.0.stop.notified().await;
    }

    /// Counts `fut` (one request's handler) as in flight until it completes or is dropped, and
    /// then its response body until that has been sent or dropped.
    pub fn track<F: Future>(&self, fut: F) -> Tracked<F> {
        {
            let mut s = self.state();
            if !s.started {
                s.started = true;
                self.0.first.notify_waiters();
            }
            s.active += 1;
        }
        Tracked { fut, done: Some(InFlightRequest(self.clone())) }
    }

    /// Resolves when the connection has outlived its deadlines: no first request within
    /// `first_request` of now, or nothing in flight and no request for `idle`. Never while a
    /// request is in flight.
    ///
    /// It sleeps until the earliest moment a deadline could pass and looks at the state then,
    /// rather than being woken by every request: requests only update a counter and a
    /// timestamp, which keeps the per-request cost to one uncontended lock (measured: a wake
    /// and timer re-arm per request cost ~6% of all instructions).
    pub async fn expired(&self, t: ConnTimeouts) -> Expired {
        let opened = Instant::now();
        // Until the first request: its deadline, or the request itself, whichever comes first.
        let first = self.0.first.notified();
        let started = self.state().started;
        if !started {
            tokio::select! {
                _ = tokio::time::sleep_until(opened + t.first_request) => {}
                _ = first => {}
            }
        }
        let mut at = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                // A head began arriving in pieces: its deadline may come before `at`.
                _ = self.0.new_deadline.notified() => {}
            }
            let now = Instant::now();
            let s = self.state();
            if !s.started {
                return Expired::NoRequest;
            }
            let head_deadline = s.head_since.map(|since| since + t.head);
            // A client that stopped reading holds its response (and the backend connection)
            // for ever unless cut: after `idle` without progress, whatever is in flight.
            let stall_deadline = s.stalled_since.map(|since| since + t.idle);
            if stall_deadline.is_some_and(|d| d <= now) {
                return Expired::Stalled;
            }
            if s.active > 0 {
                // Busy: look again one idle period from now, or at the head's deadline. A late
                // head behind a request in flight is only cut once that has finished: look
                // again every 100 ms meanwhile (a rare case; requests do not wake this).
                at = match head_deadline {
                    Some(d) if d > now => (now + t.idle).min(d),
                    Some(_) => now + Duration::from_millis(100),
                    None => now + t.idle,
                };
            } else {
                if head_deadline.is_some_and(|d| d <= now) {
                    return Expired::SlowHead;
                }
                let idle_until = s.last_end.unwrap_or(opened) + t.idle;
                if idle_until <= now {
                    return Expired::Idle;
                }
                at = head_deadline.map_or(idle_until, |d| d.min(idle_until));
            }
            if let Some(d) = stall_deadline {
                at = at.min(d);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A request handler counted in [`Activity`] while it lives, and its response body after
    /// it (see [`ActiveBody`]). A plain struct rather than an `async` block: an async block
    /// awaiting `fut` stores it twice (as captured and as awaited), and hyper moves this future
    /// into place once per request, so its size is copied per request (measured: the handler
    /// future went from 6.9 KB to 3.4 KB).
    pub struct Tracked<F> {
        #[pin]
        fut: F,
        done: Option<InFlightRequest>,
    }
}

impl<F, B, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ActiveBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.fut.poll(cx));
        let done = this.done.take();
        // On HTTP/2, the body reports to its stream's clock (see `h2_stream`).
        let clock = super::h2_stream::current();
        Poll::Ready(res.map(|resp| resp.map(|inner| ActiveBody { inner, done, clock })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in [`Activity`] until it has been sent
    /// (or dropped): a long download is activity, not idleness, so `idle_timeout` does not end
    /// its connection's keep-alive. On HTTP/2 it also tells its stream's clock when a chunk was
    /// handed to hyper and when hyper came back for more (see `h2_stream`).
    pub struct ActiveBody<B> {
        #[pin]
        inner: B,
        done: Option<InFlightRequest>,
        clock: Option<Arc<super::h2_stream::StreamClock>>,
    }
}

impl<B: Body> Body for ActiveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if let Some(clock) = this.clock.as_ref() {
            clock.taken();
        }
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.done.take()),
            // A chunk with bytes needs send window; an empty one (or trailers) goes out without.
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(clock), Some(data)) = (this.clock.as_ref(), frame.data_ref()) {
                    if data.has_remaining() {
                        clock.handed_over();
                    }
                }
            }
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends one request's turn in [`Activity`] when dropped.
struct InFlightRequest(Activity);

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        {
            let mut s = self.0.state();
            s.active = s.active.saturating_sub(1);
            s.last_end = Some(Instant::now());
        }
    }
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

    const T: ConnTimeouts = ConnTimeouts {
        first_request: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        head: Duration::from_secs(10),
    };

    /// Waits, in a task of its own, for `a`'s connection to outlive its deadlines ([`T`]).
    fn watch(a: &Activity) -> tokio::task::JoinHandle<Expired> {
        let a = a.clone();
        tokio::spawn(async move { a.expired(T).await })
    }

    /// A request handler that answers (with an empty body) once `rx` fires or is dropped.
    async fn answer_when(
        rx: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible> {
        let _ = rx.await;
        Ok(Response::new(http_body_util::Empty::new()))
    }

    fn ready_now() -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(());
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_being_sent_is_activity() {
        let a = Activity::default();
        let resp = a.track(answer_when(ready_now())).await.unwrap();
        let watcher = watch(&a);
        // The handler has returned, but its body is still on its way: not idle.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!watcher.is_finished(), "idle while a response body was being sent");
        drop(resp);
        let ended = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_deadlines() {
        let a = Activity::default();
        let started = Instant::now();
        assert_eq!(a.expired(T).await, Expired::NoRequest);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        let a = Activity::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let req = tokio::spawn(a.track(answer_when(rx)));
        let watcher = watch(&a);
        // In flight for 5 minutes: never expires meanwhile.
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(!watcher.is_finished());
        tx.send(()).unwrap();
        req.await.unwrap().unwrap();
        let ended = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_arriving_in_pieces_must_end_within_its_deadline() {
        let a = Activity::default();
        drop(a.track(answer_when(ready_now())).await);
        let watcher = watch(&a);
        // Idle for 30 s (longer than the head deadline, shorter than idle): kept.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!watcher.is_finished());
        // A head that completes in time clears its deadline.
        a.head_pending(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.head_pending(false);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!watcher.is_finished());
        // One that does not is cut 10 s after it began, well before the idle deadline.
        a.head_pending(true);
        let began = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::SlowHead);
        assert_eq!(began.elapsed(), Duration::from_secs(10));

        // A client that stops reading is cut after `idle`, even with a request in flight; one
        // whose writes go through again is not.
        let a = Activity::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let req = tokio::spawn(a.track(answer_when(rx)));
        let watcher = watch(&a);
        tokio::task::yield_now().await;
        a.write_blocked(true);
        tokio::time::sleep(Duration::from_secs(50)).await;
        a.write_blocked(false);
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(!watcher.is_finished(), "cut although the client kept reading");
        a.write_blocked(true);
        let stalled = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::Stalled);
        assert_eq!(stalled.elapsed(), Duration::from_secs(60));
        drop((tx, req));

        // Behind a request in flight, a late head is cut only once that request has finished.
        let a = Activity::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let req = tokio::spawn(a.track(answer_when(rx)));
        let watcher = watch(&a);
        tokio::task::yield_now().await;
        a.head_pending(true);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!watcher.is_finished(), "cut while a request was in flight");
        tx.send(()).unwrap();
        req.await.unwrap().unwrap();
        let ended = Instant::now();
        assert_eq!(watcher.await.unwrap(), Expired::SlowHead);
        assert!(ended.elapsed() <= Duration::from_millis(100), "{:?}", ended.elapsed());
    }
}
