//! A client connection's deadlines: the first request (`header_timeout`), a request head arriving
//! in pieces (`header_timeout`, reported by the client stream), a connection with nothing in
//! flight (`idle_timeout`; a response body still being sent counts as in flight) and a client
//! that stops reading (`idle_timeout` without a byte taken).
//!
//! [`Activity`] holds them all, checked by one sleeping task per connection rather than a timer
//! per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

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
    use super::*;

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
