//! An HTTP/1 client connection as hyper reads it: every request head is judged by a
//! [`Scanner`] before hyper sees any byte of it, so a head hyper would accept but lb refuses
//! (both `Content-Length` and `Transfer-Encoding`; README, "Request smuggling and malformed
//! requests") never becomes a request.
//!
//! It also tells the connection's [`Activity`] when a head arrives in pieces (timed by
//! `header_timeout`) and when writes to the client block (a client that stops reading is
//! dropped after `idle_timeout`), both only on change, so that the usual request costs no timer.
//!
//! Bytes normally go straight from the socket into hyper's buffer and are only looked at there;
//! they are copied into this wrapper's own buffer only when a read ends inside a head, which is
//! held back until it is whole.
//!
//! A refused head is answered (`400`, or `431` for a head over 64 KiB or with more than
//! `max_headers` lines) and the connection is closed, after whatever came before it on the
//! connection:
//! - nothing was handed to hyper yet (the usual case): the answer is written here and hyper is
//!   told the client has gone (end of stream), so it closes without a request;
//! - earlier requests were (pipelined): hyper is never given the refused head, the serving task
//!   is told through [`Activity::stop_reading`] to shut the connection down gracefully, hyper
//!   finishes the responses in flight, and the answer is written when it shuts the stream down.
//!
//! A chunked body hyper fails to decode is passed up to the failing byte (hyper answers it) and
//! nothing after it is read, as after a refused head.
//!
//! On HTTP/2 the bytes are counted by a [`FloodMeter`] on their way to hyper; a control-frame
//! flood ends the connection with a read error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::deadlines::Activity;
use super::h2_flood::FloodMeter;
use crate::http1::framing::{Refusal, Scan, Scanner};

/// The answer to a head with both `Content-Length` and `Transfer-Encoding`.
const SMUGGLING: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 59\r\n\
connection: close\r\n\
\r\n\
400 Bad Request: both Content-Length and Transfer-Encoding\n";

/// The answer to a head over 64 KiB or with more than `max_headers` lines.
const TOO_LARGE: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 36\r\n\
connection: close\r\n\
\r\n\
431 Request Header Fields Too Large\n";

/// The status and body size of the answer to `why`, for the metrics and the access log;
/// `None` where hyper answers.
fn answer_status(why: Refusal) -> Option<(u16, u64)> {
    let bytes = answer(why);
    let status = bytes.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).and_then(|s| s.parse().ok())?;
    let body = bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |at| bytes.len() - at - 4);
    Some((status, body as u64))
}

fn answer(why: Refusal) -> &'static [u8] {
    match why {
        Refusal::Smuggling => SMUGGLING,
        Refusal::TooLarge => TOO_LARGE,
        // hyper answers the byte it fails on.
        Refusal::Malformed => b"",
    }
}

/// Read size when reading into the held-back buffer.
const READ_CHUNK: usize = 8 * 1024;

/// See the module doc.
pub struct CheckedStream<S> {
    inner: S,
    scanner: Scanner,
    /// Read from the client, not yet handed to hyper: the first `ready` bytes are judged, the
    /// rest is an incomplete head or line.
    held: Vec<u8>,
    ready: usize,
    /// Whether hyper has been handed any byte: until then no request can be in flight.
    delivered: bool,
    /// A head was refused, with this answer; nothing after it is read.
    refused: Option<&'static [u8]>,
    /// How much of the answer has been written.
    answered: usize,
    /// An incomplete request head is held (reported to [`Activity::head_pending`], which
    /// times it: `header_timeout`).
    head_pending: bool,
    /// The last write to the client could not proceed (reported to
    /// [`Activity::write_blocked`], which times it: `idle_timeout`).
    write_blocked: bool,
    activity: Activity,
    /// Follows an HTTP/2 connection's frames (an HTTP/1 one only for its first bytes).
    meter: FloodMeter,
    /// Set once lb has shut its side down: what is still read and thrown away before close.
    linger: Option<Linger>,
}

/// After lb shut its side of a connection down (a GOAWAY sent, a `Connection: close` answer
/// written), the client's bytes still on their way are read and dropped for up to
/// [`LINGER_TIME`] or [`LINGER_BYTES`], or until the client closes too (nginx's lingering
/// close, with a far shorter wait).
/// Closing a socket with unread bytes makes the kernel send a reset, and a reset can destroy
/// the answer lb just wrote before the client has read it: a client flooding lb would never
/// see the GOAWAY that tells it why.
struct Linger {
    deadline: Pin<Box<Sleep>>,
    left: usize,
}

/// Short: a client that keeps its socket open after lb's FIN would otherwise hold the
/// connection (and a shutdown) this long; flood bytes on loopback or a LAN arrive well within it.
const LINGER_TIME: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 1 << 20;

/// The read error that ends a connection found flooding.
fn flood() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "HTTP/2 control-frame flood (over 8 times the request bytes + 1 MiB)")
}

impl<S> CheckedStream<S> {
    /// `max_headers`: header lines allowed per request head (more: `431`).
    pub fn new(inner: S, activity: Activity, max_headers: usize) -> Self {
        CheckedStream {
            inner,
            scanner: Scanner::new(max_headers),
            held: Vec::new(),
            ready: 0,
            delivered: false,
            refused: None,
            answered: 0,
            head_pending: false,
            write_blocked: false,
            activity,
            meter: FloodMeter::default(),
            linger: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> CheckedStream<S> {
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let answer = self.refused.unwrap_or_default();
        // Through `note_write` like hyper's writes: a client that stops reading the answer is
        // still dropped after `idle_timeout`.
        while self.answered < answer.len() {
            let res = Pin::new(&mut self.inner).poll_write(cx, &answer[self.answered..]);
            self.note_write(written(&res));
            let n = ready!(res)?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.answered += n;
        }
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(res.is_pending().then_some(true));
        res
    }
}

impl<S> CheckedStream<S> {
    /// A head was refused: nothing after it is read, and the answer is recorded.
    fn refuse(&mut self, why: Refusal) {
        self.refused = Some(answer(why));
        if let Some((status, body)) = answer_status(why) {
            self.activity.answered_itself(status, body);
        }
    }

    /// Tells [`Activity`] when writes to the client start blocking (`Pending`) or stop
    /// (bytes were taken). A flush that completes says nothing: on a plain socket it always
    /// does, blocked or not.
    fn note_write(&mut self, blocked: Option<bool>) {
        if let Some(blocked) = blocked.filter(|b| *b != self.write_blocked) {
            self.write_blocked = blocked;
            self.activity.write_blocked(blocked);
        }
    }

    /// Tells [`Activity`] when an incomplete head starts or stops being held.
    fn note_head(&mut self) {
        let pending = self.held.len() > self.ready && self.scanner.in_head();
        if pending != self.head_pending {
            self.head_pending = pending;
            self.activity.head_pending(pending);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CheckedStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                if this.meter.feed(&this.held[..n]) {
                    return Poll::Ready(Err(flood()));
                }
                out.put_slice(&this.held[..n]);
                this.held.drain(..n);
                this.ready -= n;
                if this.held.is_empty() {
                    // The slow path is rare; do not keep its buffer on idle connections.
                    this.held = Vec::new();
                }
                this.delivered = true;
                return Poll::Ready(Ok(()));
            }
            if this.refused.is_some() {
                if !this.delivered {
                    ready!(this.poll_answer(cx))?;
                    // End of stream: hyper closes a connection that never had a request.
                    return Poll::Ready(Ok(()));
                }
                // Woken by nothing: the serving task shuts the connection down instead.
                this.activity.stop_reading();
                return Poll::Pending;
            }
            if this.held.is_empty() {
                // Fast path: read into hyper's buffer and judge the bytes there.
                let before = out.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
                let new = &mut out.filled_mut()[before..];
                if new.is_empty() || this.scanner.is_off() {
                    if this.meter.feed(new) {
                        return Poll::Ready(Err(flood()));
                    }
                    this.delivered |= !new.is_empty();
                    return Poll::Ready(Ok(()));
                }
                let passed = match this.scanner.scan(new) {
                    Scan::Pass(n) => {
                        this.held.extend_from_slice(&new[n..]);
                        n
                    }
                    Scan::Refuse(n, why) => {
                        this.refuse(why);
                        n
                    }
                };
                if this.meter.feed(&new[..passed]) {
                    return Poll::Ready(Err(flood()));
                }
                out.set_filled(before + passed);
                this.note_head();
                if passed > 0 {
                    this.delivered = true;
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Slow path: more bytes after an incomplete head.
            ready!(this.poll_fill_held(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> CheckedStream<S> {
    /// Reads more bytes behind the incomplete head held back, and judges them: the rare path
    /// (a head split across reads), kept out of `poll_read`'s way.
    fn poll_fill_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let len = self.held.len();
        self.held.resize(len + READ_CHUNK, 0);
        let mut buf = ReadBuf::new(&mut self.held[len..]);
        let res = Pin::new(&mut self.inner).poll_read(cx, &mut buf);
        let got = buf.filled().len();
        self.held.truncate(len + got);
        ready!(res)?;
        if got == 0 {
            // The client ended inside a head: no request can come of it. Let hyper see the
            // bytes and the end, and answer as it does for a truncated head.
            self.ready = self.held.len();
            self.note_head();
            return Poll::Ready(Ok(()));
        }
        // The scanner goes on from where it stopped in the held head (each byte is scanned
        // once, however the head is trickled in).
        match self.scanner.scan(&mut self.held) {
            Scan::Pass(n) => self.ready = n,
            Scan::Refuse(n, why) => {
                self.held.truncate(n);
                self.ready = n;
                self.refuse(why);
            }
        }
        self.note_head();
        Poll::Ready(Ok(()))
    }
}

/// What a write's outcome says about the client reading: blocked, moving, or nothing.
fn written(res: &Poll<io::Result<usize>>) -> Option<bool> {
    match res {
        Poll::Pending => Some(true),
        Poll::Ready(Ok(n)) if *n > 0 => Some(false),
        Poll::Ready(_) => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for CheckedStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(written(&res));
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(written(&res));
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TLS stream may take the bytes and block only when flushing them.
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(res.is_pending().then_some(true));
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.linger.is_none() {
            if this.refused.is_some() {
                // Hyper has finished what came before the refused head; the answer goes last.
                ready!(this.poll_answer(cx))?;
            }
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            if this.scanner.may_tunnel() {
                // An upgraded tunnel half-closes toward the client while the client's bytes
                // still go to the backend through the other half: nothing here is to be dropped.
                return Poll::Ready(Ok(()));
            }
            this.linger = Some(Linger { deadline: Box::pin(tokio::time::sleep(LINGER_TIME)), left: LINGER_BYTES });
        }
        let Some(linger) = this.linger.as_mut() else { return Poll::Ready(Ok(())) };
        let mut sink = [0u8; 4096];
        loop {
            if linger.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut sink);
            match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() && buf.filled().len() < linger.left => {
                    linger.left -= buf.filled().len();
                }
                // The client closed (or reset, or sent more than is worth reading): done.
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_answers_are_counted_with_their_status_and_body_size() {
        assert_eq!(answer_status(Refusal::Smuggling), Some((400, 59)));
        assert_eq!(answer_status(Refusal::TooLarge), Some((431, 36)));
        assert_eq!(answer_status(Refusal::Malformed), None);
    }

    use super::*;
    use crate::server::deadlines::{ConnTimeouts, Expired};
    use std::time::Duration;

    /// A client that sends `head` and then nothing, and never reads.
    struct NotReading(Option<&'static [u8]>);

    impl AsyncRead for NotReading {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            match self.0.take() {
                Some(head) => {
                    buf.put_slice(head);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for NotReading {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    /// The refusal is written like any answer: a client that does not take it is a stalled
    /// reader, cut after `idle_timeout` (not left to the idle timer, or to nothing).
    #[tokio::test(start_paused = true)]
    async fn a_client_not_taking_the_refusal_is_stalled() {
        let activity = Activity::default();
        // A request was served before (the refused head came pipelined behind it).
        let served = async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        };
        drop(activity.track(served).await);
        let head = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = CheckedStream::new(NotReading(Some(head)), activity.clone(), 100);
        let mut buf = [0u8; 256];
        let pending = std::future::poll_fn(|cx| {
            let mut out = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut s).poll_read(cx, &mut out).is_pending())
        })
        .await;
        assert!(pending);
        let t = ConnTimeouts {
            first_request: Duration::from_secs(3600),
            idle: Duration::from_secs(60),
            head: Duration::from_secs(3600),
        };
        assert_eq!(activity.expired(t).await, Expired::Stalled);
    }

    #[test]
    fn the_answers_declare_their_body_length() {
        for answer in [SMUGGLING, TOO_LARGE] {
            let text = std::str::from_utf8(answer).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("content-length: {}\r\n", body.len())), "{head}");
        }
    }
}
