//! lb's own HTTP/1.1 client for requests without a body: the proxy's hot path.
//!
//! hyper's client runs every upstream connection as a task of its own and talks to it over
//! channels. Per request that is a channel send, a oneshot back, two wake-ups between tasks, and
//! a response head parsed into a fresh map. Under callgrind it was 38% of lb's instructions per
//! proxied GET. Here the request's own task writes the head and reads the response head. The
//! response body ([`OwnBody`]) reads straight from the socket, as the client connection pulls it.
//!
//! Only requests without a body that ask for no upgrade come here: most traffic, and requests
//! that every try can rebuild from the same head. Requests with a body and upgrades keep hyper's
//! client (`super::idle::connect`), which streams a body while it reads the answer.
//!
//! Responses are framed as RFC 9112 section 6.3 says: no body for HEAD, 1xx, 204 and 304;
//! `Transfer-Encoding` ending in `chunked`; otherwise `Content-Length`; otherwise until close.
//! What is not clean HTTP/1 (two different lengths, bytes httparse refuses, a head over 64 KiB
//! or with more than 100 headers, a chunk line that is not hex) is an error before anything
//! reaches the client, or an aborted body after. Chunked trailers are read and dropped.
//! A connection is reused only after a complete response that did not ask to close it and
//! left no stray bytes behind.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{request, response, HeaderMap, Method, Response, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::connect::BackendStream;
use crate::http1::headers::{self, Forwarded};
use crate::http1::{
    MAX_HEAD_BYTES as MAX_HEAD, MAX_RESPONSE_HEADERS as MAX_HEADERS, MAX_TRAILER_BYTES as MAX_TRAILERS,
};

/// Most informational (1xx) answers taken before the final one: each costs a copy of what
/// follows it in the buffer, and a backend could otherwise stream them until the timeout.
const MAX_INFORMATIONAL: usize = 64;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Read sizes: small answers need one small buffer; a body that keeps filling it gets a larger
/// one, up to the cap, while the client takes what was read before (see `H1Conn::make_room`).
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 256 * 1024;
/// hyper's server asks a body for more while less than its buffer size (`max_buf_size`, the
/// 64 KiB head limit) waits to be written to the client; a read at least this large is written
/// out before the body is asked again, unless the client is slower than the backend.
const CLIENT_BATCH: usize = 64 * 1024;
/// An idle connection keeps its read buffer only up to this size.
const KEEP_BUF: usize = 16 * 1024;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backend I/O: {0}")]
    Io(#[from] io::Error),
    #[error("backend closed the connection before the response head")]
    ClosedBeforeHead,
    #[error("backend closed the connection mid-body")]
    Truncated,
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("invalid response body: {0}")]
    Body(&'static str),
}

impl From<httparse::Error> for Error {
    fn from(e: httparse::Error) -> Self {
        Error::Head(match e {
            httparse::Error::TooManyHeaders => "too many headers",
            httparse::Error::Version => "not HTTP/1",
            httparse::Error::Status => "bad status",
            _ => "malformed",
        })
    }
}

/// How one try's exchange failed, with what the retry logic needs to know.
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    /// True when no byte of the request was written: it can go anywhere else.
    pub unsent: bool,
    /// True when no byte of a response arrived before the failure.
    pub no_answer: bool,
}

/// An open HTTP/1.1 connection to a backend with nothing in flight.
#[derive(Debug)]
pub struct H1Conn {
    io: BackendStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Size of the next read: grows while reads fill it and the client keeps up.
    read_size: usize,
    /// The last read filled the buffer: the backend has more ready.
    filled: bool,
}

impl H1Conn {
    pub fn new(io: BackendStream) -> H1Conn {
        H1Conn { io, buf: BytesMut::new(), read_size: READ_MIN, filled: false }
    }

    /// False when the backend closed (or wrote to) this idle connection. Costs no system call
    /// unless the socket became readable while idle; never waits.
    pub fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match &self.io {
            BackendStream::Plain(s) => s,
            BackendStream::Tls(s) => {
                // rustls decrypts every whole record a socket read brought in, but hands out one
                // record per read: bytes (or a close_notify) that came with the last answer can
                // wait inside it while the socket itself is quiet.
                if !s.get_ref().1.wants_read() {
                    return false;
                }
                s.get_ref().0
            }
        };
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable while idle: an end of stream, a reset, stray bytes, or (TLS) a session
            // ticket, which is consumed without producing data. Only the last leaves it usable.
            Poll::Ready(Ok(())) => {
                self.buf.reserve(64);
                matches!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.buf), Poll::Pending)
                    && self.buf.is_empty()
            }
        }
    }

    /// Readies the connection to wait idle in a pool: a large read buffer is let go.
    pub fn idle(mut self) -> H1Conn {
        if self.buf.capacity() > KEEP_BUF {
            self.buf = BytesMut::new();
        }
        self.read_size = READ_MIN;
        self
    }

    /// Sends a bodiless request head (with `host` added when given, hop-by-hop headers left
    /// out and forwarding headers added) and reads the response head, hop-by-hop headers left
    /// out. On success the connection moves into the returned body.
    pub async fn exchange(
        mut self,
        parts: &request::Parts,
        host: Option<&HeaderValue>,
        fwd: &Forwarded,
    ) -> Result<(response::Parts, OwnBody), Failed> {
        let head = encode_request(parts, host, fwd);
        let mut written = 0;
        while written < head.len() {
            let res = std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_write(cx, &head[written..])).await;
            match res {
                Ok(n) if n > 0 => written += n,
                Ok(_) => {
                    let error = io::Error::from(io::ErrorKind::WriteZero).into();
                    return Err(Failed { error, unsent: written == 0, no_answer: true });
                }
                Err(e) => return Err(Failed { error: e.into(), unsent: written == 0, no_answer: true }),
            }
        }
        // A no-op on plain TCP; sends what TLS still holds.
        if let Err(e) = self.io.flush().await {
            return Err(Failed { error: e.into(), unsent: false, no_answer: true });
        }
        let head_request = parts.method == Method::HEAD;
        let mut informational = 0;
        // Any byte of an answer (a 1xx one included) means the backend took the request: a
        // failure after it is no stale connection.
        let mut received = false;
        loop {
            if let Some((resp, framing, reusable)) = parse_head(&mut self.buf, head_request, &mut informational)? {
                let state = State::from(framing);
                return Ok((resp, OwnBody { conn: Some(self), state, reusable, failed: None }));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Failed { error: Error::Head("head over 64 KiB"), unsent: false, no_answer: false });
            }
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) => return Err(Failed { error: Error::ClosedBeforeHead, unsent: false, no_answer: !received }),
                Ok(_) => received = true,
                Err(e) => return Err(Failed { error: e.into(), unsent: false, no_answer: !received }),
            }
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.make_room();
        }
        let spare = self.buf.capacity() - self.buf.len();
        let res = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = res {
            self.filled = n == spare;
        }
        res
    }

    /// Makes room for the next read, sized by how the client keeps up.
    ///
    /// Every body piece is a slice of this buffer, so it can be reclaimed without allocating
    /// only once all the pieces read into it are dropped, i.e. written to the client. hyper's
    /// server asks for the next piece before writing while less than `CLIENT_BATCH` waits, and
    /// writes before asking again otherwise; so a reclaim that works means the client took
    /// everything, and reads may grow. One that fails after a read of a whole batch means the
    /// client is slower than the backend: reads halve (down to `CLIENT_BATCH / 2`), so that a
    /// slow reader parks less of the body in lb (it used to hold 256 KiB pieces, 330 KB per
    /// connection under `slowhttptest -X`). Halving rather than dropping to `READ_MIN` keeps
    /// a client that is only somewhat slower (most downloads) on large reads: dropping cost
    /// up to 1.7x the system calls per byte of a download to curl, for no less memory.
    fn make_room(&mut self) {
        if self.buf.try_reclaim(self.read_size) {
            if self.filled && self.read_size < READ_MAX {
                self.read_size *= 2;
            }
        } else if self.read_size >= CLIENT_BATCH {
            self.read_size /= 2;
        }
        self.buf.reserve(self.read_size);
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed { error, unsent: false, no_answer: false }
    }
}

/// The request head as bytes: request line in origin form, `host` when the client sent none,
/// then the client's headers without hop-by-hop ones and with the forwarding headers (see
/// [`headers::for_each_forwarded`]).
fn encode_request(parts: &request::Parts, host: Option<&HeaderValue>, fwd: &Forwarded) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = parts.method.as_str();
    // The 96 cover the request line's rest and the forwarding headers' names and lb's values.
    let mut len = method.len() + target.len() + 96 + fwd.host.as_ref().map_or(0, HeaderValue::len);
    len += fwd.request_id.as_ref().map_or(0, |id| id.len() + 16);
    for (name, value) in &parts.headers {
        len += name.as_str().len() + value.len() + 4;
    }
    if let Some(h) = host {
        len += h.len() + 8;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = host {
        put_header(&mut out, &HOST, h.as_bytes());
    }
    headers::for_each_forwarded(&parts.headers, fwd, |name, value| put_header(&mut out, name, value));
    out.extend_from_slice(b"\r\n");
    out
}

fn put_header(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    Close,
}

/// What an answer's header lines say, as [`parse_head`] needs it.
struct Heads {
    /// The headers passed on: hop-by-hop ones (and those `Connection` names) left out.
    map: HeaderMap,
    length: Option<u64>,
    /// `Some(final coding is chunked)` when there is a `Transfer-Encoding`.
    te: Option<bool>,
    close: bool,
    keep_alive: bool,
}

/// Walks an answer's header lines once: the header map to pass on (values are slices of
/// `all`, not copies) and the framing facts. Hop-by-hop headers are left out here rather than
/// removed from the map afterwards, as strip_hop_by_hop would.
#[inline]
fn answer_headers(all: &Bytes, lines: &[httparse::Header<'_>]) -> Result<Heads, Error> {
    let mut named: Vec<HeaderName> = Vec::new();
    for h in lines.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
        named.extend(headers::named_in(h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii)));
    }
    let mut heads = Heads {
        map: HeaderMap::with_capacity(lines.len() + 1),
        length: None,
        te: None,
        close: false,
        keep_alive: false,
    };
    for h in lines {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Error::Head("bad header name"))?;
        let value =
            HeaderValue::from_maybe_shared(all.slice_ref(h.value)).map_err(|_| Error::Head("bad header value"))?;
        if name == CONTENT_LENGTH {
            let n = parse_length(h.value).ok_or(Error::Head("bad Content-Length"))?;
            if heads.length.is_some_and(|l| l != n) {
                return Err(Error::Head("conflicting Content-Length"));
            }
            heads.length = Some(n);
        } else if name == TRANSFER_ENCODING {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            heads.te = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                heads.close |= token.eq_ignore_ascii_case(b"close");
                heads.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        if !headers::is_hop_by_hop(&name) && !named.contains(&name) {
            heads.map.append(name, value);
        }
    }
    if heads.te.is_some() && heads.length.is_some() {
        // The body is framed by Transfer-Encoding; a Content-Length next to it is wrong
        // (RFC 9112 §6.3) and must not reach the client, which would frame by it.
        heads.map.remove(CONTENT_LENGTH);
    }
    Ok(heads)
}

/// How an answer's body is framed, and whether its connection may be reused after it.
#[inline]
fn framing_of(head_request: bool, code: u16, version: Version, h: &Heads) -> (Framing, bool) {
    let framing = if head_request || code == 204 || code == 304 {
        Framing::Empty
    } else {
        match (h.te, h.length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    // Both framings at once is a smuggling shape, and so is Transfer-Encoding in an
    // HTTP/1.0 answer (RFC 9112 §6.1): answer this one, never reuse.
    let reusable = framing != Framing::Close
        && !(h.te.is_some() && h.length.is_some())
        && if version == Version::HTTP_11 { !h.close } else { h.te.is_none() && h.keep_alive && !h.close };
    (framing, reusable)
}

/// Parses a response head at the front of `buf` and removes it (with any 1xx heads before it).
/// `None` while the head is incomplete. Header values share the head's memory.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    informational: &mut usize,
) -> Result<Option<(response::Parts, Framing, bool)>, Error> {
    loop {
        // Parsed over a frozen view of everything buffered, so that header values can be
        // slices of it rather than copies; what follows the head goes back to `buf`.
        if buf.is_empty() {
            return Ok(None);
        }
        let all = buf.split().freeze();
        // Uninitialized: zeroing 100 headers per response cost more than parsing them.
        let mut headers = [std::mem::MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &all,
            &mut headers,
        )? {
            httparse::Status::Partial => {
                *buf = match all.try_into_mut() {
                    Ok(mut whole) => {
                        whole.unsplit(std::mem::take(buf));
                        whole
                    }
                    Err(all) => BytesMut::from(&all[..]),
                };
                return Ok(None);
            }
            // A read can bring in a whole head larger than the limit at once.
            httparse::Status::Complete(len) if len > MAX_HEAD => return Err(Error::Head("head over 64 KiB")),
            httparse::Status::Complete(len) => len,
        };
        buf.extend_from_slice(&all[len..]);
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(Error::Head("101 Switching Protocols to a request without Upgrade"));
            }
            // 100 Continue, 103 Early Hints: informational, dropped (as hyper's client does).
            *informational += 1;
            if *informational > MAX_INFORMATIONAL {
                return Err(Error::Head("too many informational answers"));
            }
            continue;
        }
        let version = if parsed.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        let status = StatusCode::from_u16(code).map_err(|_| Error::Head("bad status"))?;
        let heads = answer_headers(&all, parsed.headers)?;
        let (framing, reusable) = framing_of(head_request, code, version, &heads);
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = heads.map;
        return Ok(Some((parts, framing, reusable)));
    }
}

/// A Content-Length value: digits only, no sign, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Where a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

impl From<Framing> for State {
    fn from(framing: Framing) -> State {
        match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::Size),
            Framing::Close => State::Close,
        }
    }
}

/// One step of a body over the buffered bytes: a piece of data, the end, or a need for more.
/// (At the end of the stream, a body delimited by close has ended; any other is truncated.)
fn body_step(state: &mut State, buf: &mut BytesMut) -> Result<Step, Error> {
    match state {
        State::Done => Ok(Step::End),
        State::Length(_) | State::Close if buf.is_empty() => Ok(Step::NeedMore),
        State::Length(left) => {
            let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= n as u64;
            if *left == 0 {
                *state = State::Done;
            }
            Ok(Step::Data(buf.split_to(n).freeze()))
        }
        State::Close => Ok(Step::Data(buf.split().freeze())),
        State::Chunked(ch) => {
            let step = chunked_step(ch, buf)?;
            if step == Step::End {
                *state = State::Done;
            }
            Ok(step)
        }
    }
}

/// Reads one response from `stream` handed over in pieces of `step` bytes, as lb's client reads
/// it from a backend: the status, the body, and whether the connection could carry another
/// request afterwards. For the `response_framing` fuzz target: the verdict must not depend on
/// how the stream is cut.
pub fn read_response(stream: &[u8], step: usize, head_request: bool) -> Result<(u16, Vec<u8>, bool), Error> {
    let mut pieces = stream.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let mut informational = 0;
    let (parts, framing, reusable) = loop {
        if let Some(head) = parse_head(&mut buf, head_request, &mut informational)? {
            break head;
        }
        if buf.len() >= MAX_HEAD {
            return Err(Error::Head("head over 64 KiB"));
        }
        buf.extend_from_slice(pieces.next().ok_or(Error::ClosedBeforeHead)?);
    };
    let mut state = State::from(framing);
    let mut body = Vec::new();
    loop {
        match body_step(&mut state, &mut buf)? {
            Step::Data(d) => body.extend_from_slice(&d),
            Step::End => {
                let rest = buf.len() + pieces.map(<[u8]>::len).sum::<usize>();
                return Ok((parts.status.as_u16(), body, reusable && rest == 0));
            }
            Step::NeedMore => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None if state == State::Close => return Ok((parts.status.as_u16(), body, false)),
                None => return Err(Error::Truncated),
            },
        }
    }
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes of them seen so far.
    Trailers(usize),
}

/// One step of the chunked decoder over the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

/// Decodes as much of a chunked body as `buf` holds, up to one data piece.
fn chunked_step(state: &mut Chunked, buf: &mut BytesMut) -> Result<Step, Error> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(Error::Body("chunk line too long"))
                    } else {
                        Ok(Step::NeedMore)
                    };
                };
                if eol > MAX_CHUNK_LINE || eol == 0 || buf[eol - 1] != b'\r' {
                    return Err(Error::Body("bad chunk line"));
                }
                let line = &buf[..eol - 1];
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                // Leading zeros are no overflow; 15 significant hex digits fit a u64.
                let significant = line[..digits].iter().skip_while(|&&d| d == b'0').count();
                // After the size: optional spaces or tabs, then nothing or an extension (whose
                // content is ignored, but may hold no bare CR).
                let rest = &line[digits..];
                let ext = &rest[rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count()..];
                if digits == 0 || significant > 15 || !(ext.is_empty() || (ext[0] == b';' && !ext.contains(&b'\r'))) {
                    return Err(Error::Body("bad chunk size"));
                }
                let size = line[..digits].iter().fold(0u64, |n, &d| n * 16 + u64::from(hex(d)));
                let _ = buf.split_to(eol + 1);
                *state = if size == 0 { Chunked::Trailers(0) } else { Chunked::Data(size) };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                *state = if n as u64 == left { Chunked::DataEnd } else { Chunked::Data(left - n as u64) };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Body("no CRLF after chunk data"));
                }
                let _ = buf.split_to(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers(seen) => {
                let Some(eol) = memchr::memchr(b'\n', buf) else {
                    return if seen + buf.len() > MAX_TRAILERS {
                        Err(Error::Body("trailers too long"))
                    } else {
                        Ok(Step::NeedMore)
                    };
                };
                if eol == 0 || buf[eol - 1] != b'\r' || seen + eol > MAX_TRAILERS {
                    return Err(Error::Body("bad trailer line"));
                }
                let _ = buf.split_to(eol + 1);
                if eol == 1 {
                    return Ok(Step::End);
                }
                *state = Chunked::Trailers(seen + eol + 1);
            }
        }
    }
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// A response body read from the backend as the client takes it. Holds the connection; when the
/// body ended cleanly and the connection may be reused, [`OwnBody::take_reusable`] gives it back.
#[derive(Debug)]
pub struct OwnBody {
    conn: Option<H1Conn>,
    state: State,
    reusable: bool,
    /// A failure reported on the next poll (see [`OwnBody::fail`]).
    failed: Option<Error>,
}

impl OwnBody {
    pub fn is_end(&self) -> bool {
        self.state == State::Done && self.failed.is_none()
    }

    /// Exact remaining length, when known.
    pub fn exact_len(&self) -> Option<u64> {
        if self.failed.is_some() {
            return None;
        }
        match self.state {
            State::Done => Some(0),
            State::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The connection, if the body ended cleanly, it may be reused and nothing extra arrived
    /// (read, held by TLS, or waiting in the socket).
    pub fn take_reusable(&mut self) -> Option<H1Conn> {
        let mut conn = self.conn.take()?;
        (self.state == State::Done && self.reusable && conn.alive()).then(|| conn.idle())
    }

    /// The next piece of the body: `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match body_step(&mut self.state, &mut conn.buf) {
                Err(e) => return self.fail(e, cx),
                Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(d))),
                Ok(Step::End) => return Poll::Ready(None),
                Ok(Step::NeedMore) => {}
            }
            // The buffer holds nothing more of the body: read.
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return self.fail(e.into(), cx),
                Poll::Ready(Ok(0)) if self.state == State::Close => {
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return self.fail(Error::Truncated, cx),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Ends the body with an error, one poll late: hyper's server drops what it has buffered
    /// for the client when a body fails, so the bytes that did arrive (often the head and part
    /// of the body, read together with the end of stream) are let out first, as nginx does.
    /// The client still sees its connection aborted, never a complete message.
    fn fail(&mut self, e: Error, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        self.conn = None;
        self.state = State::Done;
        self.reusable = false;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn decode_all(input: &[u8], cut: usize) -> Result<Vec<u8>, Error> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match chunked_step(&mut state, &mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::End => return Ok(out),
                Step::NeedMore if fed == input.len() => return Err(Error::Truncated),
                Step::NeedMore => {
                    let next = (fed + cut).min(input.len());
                    buf.put_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_however_they_are_cut() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 1..body.len() {
            assert_eq!(decode_all(body, cut).unwrap(), b"hello 0123456789", "cut {cut}");
        }
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\n\r\n",
            // A bare CR (or any other byte but space and tab) after the size, or inside an
            // extension.
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5\x0c\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            // 16 significant hex digits do not fit.
            b"0010000000000000000\r\n",
        ] {
            assert!(matches!(decode_all(bad, 64), Err(Error::Body(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(decode_all(b"5\r\nhel", 64), Err(Error::Truncated)));
        // Leading zeros are no overflow; spaces and tabs may stand before an extension or the end.
        for good in [&b"0000000000000000000005\r\nhello\r\n0\r\n\r\n"[..], b"5 \t;x=1\r\nhello\r\n0 \r\n\r\n"] {
            assert_eq!(decode_all(good, 64).unwrap(), b"hello", "{:?}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn a_response_reads_the_same_however_it_is_cut() {
        let stream =
            b"HTTP/1.1 103 Early\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for step in 1..=stream.len() {
            assert_eq!(read_response(stream, step, false).unwrap(), (200, b"hello".to_vec(), true), "step {step}");
        }
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel";
        assert!(matches!(read_response(short, 4, false), Err(Error::Truncated)));
        // Bytes after a complete answer make the connection unusable.
        let extra = b"HTTP/1.1 204 No Content\r\n\r\nX";
        assert_eq!(read_response(extra, 3, false).unwrap(), (204, Vec::new(), false));
    }

    fn head(raw: &[u8], head_request: bool) -> Result<Option<(response::Parts, Framing, bool)>, Error> {
        parse_head(&mut BytesMut::from(raw), head_request, &mut 0)
    }

    #[test]
    fn response_heads_are_framed_as_rfc_9112_says() {
        let framing = |raw: &[u8]| head(raw, false).unwrap().map(|(_, f, r)| (f, r));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"), Some((Framing::Length(3), true)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Some((Framing::Chunked, true))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some((Framing::Chunked, false))
        );
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), Some((Framing::Close, false)));
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\n\r\nuntil close"), Some((Framing::Close, false)));
        assert_eq!(framing(b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"), Some((Framing::Empty, true)));
        assert_eq!(framing(b"HTTP/1.1 304 Not Modified\r\n\r\n"), Some((Framing::Empty, true)));
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
            Some((Framing::Length(0), false))
        );
        assert_eq!(framing(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"), Some((Framing::Length(0), false)));
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n"),
            Some((Framing::Length(0), true))
        );
        // Transfer-Encoding in an HTTP/1.0 answer: read until close or chunked, never reused.
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some((Framing::Chunked, false))
        );
        // A Content-Length next to Transfer-Encoding does not reach the client.
        for raw in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 3\r\n\r\n",
        ] {
            let (parts, _, _) = head(raw, false).unwrap().unwrap();
            assert!(!parts.headers.contains_key("content-length"), "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(framing(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n"), None);
        let (parts, f, _) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", true).unwrap().unwrap();
        assert_eq!(f, Framing::Empty);
        assert_eq!(parts.headers["content-length"], "12");
    }

    #[test]
    fn informational_heads_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nlink: x\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\nok"[..]);
        let (parts, f, _) = parse_head(&mut buf, false, &mut 0).unwrap().unwrap();
        assert_eq!(
            (parts.status.as_u16(), f, &parts.headers["x-a"]),
            (201, Framing::Length(2), &HeaderValue::from_static("1"))
        );
        assert_eq!(&buf[..], b"ok");
        assert!(head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        // A backend cannot stream informational answers for ever: the limit holds across
        // reads (the counter lives with the exchange).
        let processing = b"HTTP/1.1 102 Processing\r\n\r\n";
        let mut count = 0;
        for _ in 0..MAX_INFORMATIONAL {
            assert!(parse_head(&mut BytesMut::from(&processing[..]), false, &mut count).unwrap().is_none());
        }
        let mut last = BytesMut::from(&b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"[..]);
        assert!(matches!(parse_head(&mut last, false, &mut count), Err(Error::Head(_))));
        let mut within =
            BytesMut::from(&b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        assert!(parse_head(&mut within, false, &mut (MAX_INFORMATIONAL - 1)).unwrap().is_some());
    }

    #[test]
    fn bad_heads_are_errors() {
        for bad in [
            &b"this is not HTTP at all\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad name: v\r\n\r\n",
        ] {
            assert!(head(bad, false).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(head(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes(), false).is_err());
        // The same length twice is one length.
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n", false).is_ok());
        // A whole head over 64 KiB, read at once.
        let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(head(big.as_bytes(), false), Err(Error::Head("head over 64 KiB"))));
    }

    #[test]
    fn request_heads_are_origin_form_with_headers_as_given() {
        let req = http::Request::get("http://example.com/a?b=1").header("x-one", "1").header("x-two", "2").body(());
        let (parts, ()) = req.unwrap().into_parts();
        let host = HeaderValue::from_static("10.0.0.1:80");
        let fwd =
            Forwarded { client: HeaderValue::from_static("192.0.2.7"), proto: "http", host: None, request_id: None };
        let out = String::from_utf8(encode_request(&parts, Some(&host), &fwd)).unwrap();
        let want = "GET /a?b=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-one: 1\r\nx-two: 2\r\n\
                    x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\r\n";
        assert_eq!(out, want);
    }
}
