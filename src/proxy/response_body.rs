//! The response body passed from a backend to the client: it keeps the request counted in
//! flight until its last byte, observes the request's duration, writes the access-log line, and
//! gives the connection back to the backend's idle pool after a clean end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus::Histogram;

use crate::access_log::{AccessLog, HttpEntry};
use crate::backend::InFlight;
use crate::upstream::h1_client::OwnBody;
use crate::upstream::Sender;

/// Where a response body comes from: lb's own client's connection, or hyper's (with the
/// connection to give back when the body ended).
enum Source {
    Own(OwnBody),
    Hyper { body: Incoming, reuse: Option<Sender> },
}

/// The error a response body ends with when the backend failed mid-body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from a backend. It keeps the request counted in flight until the body has
/// been passed on completely (or dropped), and gives the connection back to the backend's pool
/// when the body ended cleanly.
pub struct UpstreamBody {
    source: Source,
    in_flight: Option<InFlight>,
    /// Where the request's duration goes, and when the request arrived.
    observe: (Histogram, Instant),
    /// Body bytes passed on so far (for the access log).
    bytes: u64,
    /// The access log line to write when the body ends: log, entry, status.
    log: Option<Box<(Arc<AccessLog>, HttpEntry, u16)>>,
}

impl UpstreamBody {
    /// A body read by hyper's client; `reuse` goes back to the pool at a clean end.
    pub fn hyper(inner: Incoming, reuse: Option<Sender>, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        Self::new(Source::Hyper { body: inner, reuse }, in_flight, observe)
    }

    /// A body read by lb's own client.
    pub fn own(inner: OwnBody, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        Self::new(Source::Own(inner), in_flight, observe)
    }

    fn new(source: Source, in_flight: InFlight, observe: (Histogram, Instant)) -> Self {
        let mut body = UpstreamBody { source, in_flight: Some(in_flight), observe, bytes: 0, log: None };
        if body.is_end_stream() {
            body.finish(true);
        }
        body
    }

    /// Writes an access log line for this response once it has ended (at once if it already has).
    pub fn log_at_end(&mut self, log: Arc<AccessLog>, entry: HttpEntry, status: u16) {
        if self.in_flight.is_none() {
            log.http(&entry, status, self.bytes);
        } else {
            self.log = Some(Box::new((log, entry, status)));
        }
    }

    /// Runs once, when the body ended (cleanly or not) or was dropped unfinished.
    fn finish(&mut self, clean: bool) {
        if let Some(l) = self.log.take() {
            let (log, entry, status) = *l;
            log.http(&entry, status, self.bytes);
        }
        let Some(guard) = self.in_flight.take() else {
            return;
        };
        self.observe.0.observe(self.observe.1.elapsed().as_secs_f64());
        let backend = guard.backend();
        match &mut self.source {
            Source::Hyper { reuse, .. } => {
                if let (true, Some(s)) = (clean, reuse.take()) {
                    backend.conns().put(s, backend.transport_id());
                }
            }
            Source::Own(body) => {
                if let (true, Some(c)) = (clean, body.take_reusable()) {
                    backend.conns().put_own(c, backend.transport_id());
                }
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The client went away before the end: count the request as done, do not reuse.
        self.finish(false);
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let res: Poll<Option<Result<Frame<Bytes>, BodyError>>> = match &mut this.source {
            Source::Own(body) => match body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Source::Hyper { body, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Own(body) => body.is_end(),
            Source::Hyper { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Own(body) => body.exact_len().map_or_else(SizeHint::default, SizeHint::with_exact),
            Source::Hyper { body, .. } => body.size_hint(),
        }
    }
}
