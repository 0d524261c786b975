//! HTTP/2 streams held to `idle_timeout`: a stream whose response cannot send a byte for that
//! long is reset, and its backend connection and in-flight count are released at once.
//!
//! hyper's HTTP/2 server runs every accepted stream (the handler, then its response body pumped
//! into h2) as a task of its own, spawned through the connection's executor. [`StreamExec`] is
//! that executor: it runs each stream task inside a [`Watched`] wrapper with a [`StreamClock`].
//!
//! Why the deadline cannot live in the response body: while a stream has no send window (a
//! client that advertises a zero window, or stops granting more, yet keeps answering PINGs),
//! hyper's `PipeToSendStream` holds the chunk it last took and waits in h2's `poll_capacity`
//! without polling the body again, so a timer inside the body would never be looked at. The
//! connection's own stall check (writes to the socket blocking, see `limits::Activity`) does not
//! see it either: the client reads the socket, it only withholds flow-control credit.
//!
//! So the body only notes on the clock when it hands hyper a chunk and when hyper comes back for
//! more (see `limits::ActiveBody`), which costs two atomic stores per chunk. The wrapper is polled
//! whenever the stream's task is, and by a timer of its own that is armed only while a chunk
//! waits (re-armed at most once per `idle_timeout`, not per chunk). Once a chunk has waited
//! `idle_timeout`, the wrapper ends the task: hyper's stream future is dropped with the response
//! body in it, which closes the backend connection (a response cut short is never reused) and
//! ends the in-flight count, whatever the client does next; h2, seeing the stream's last handle
//! go, discards the data queued for it and sends `RST_STREAM(CANCEL)`, when the client's socket
//! takes it (a client that stops reading the socket is dropped by the connection's stall check).
//!
//! A backend that is slow to send its next chunk is not a stall: the body is then waiting on the
//! backend, not on the client, and the clock is not running.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};

tokio::task_local! {
    /// The clock of the HTTP/2 stream whose task is being polled; absent on HTTP/1 connections,
    /// whose requests are polled by the connection's own task.
    static CLOCK: Arc<StreamClock>;
}

/// The clock of the HTTP/2 stream being served by the current task, if this task runs one.
/// Looked up once per response, when its head is ready.
pub fn current() -> Option<Arc<StreamClock>> {
    CLOCK.try_with(Arc::clone).ok()
}

/// Since when one HTTP/2 stream's response has had a chunk waiting for the client's window.
#[derive(Debug)]
pub struct StreamClock {
    /// Where `waiting` counts from.
    start: Instant,
    /// Nanoseconds after `start`, plus one, at which the body handed hyper a chunk that hyper
    /// has not come back after; 0 while none is waiting.
    waiting: AtomicU64,
}

impl StreamClock {
    fn new() -> Self {
        StreamClock { start: Instant::now(), waiting: AtomicU64::new(0) }
    }

    /// The body handed hyper a chunk with bytes in it: from now its sending is up to the client.
    pub fn handed_over(&self) {
        let at = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.waiting.store(at + 1, Ordering::Relaxed);
    }

    /// hyper asks the body for more: what it was handed has gone out (at least in part).
    pub fn taken(&self) {
        self.waiting.store(0, Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.start + Duration::from_nanos(at - 1)),
        }
    }
}

/// The executor hyper's HTTP/2 server spawns each stream (and each HTTP/2 CONNECT tunnel) with:
/// a tokio task, watched by a [`StreamClock`] (see the module doc).
#[derive(Clone, Debug)]
pub struct StreamExec {
    /// For the log line of a stream that is reset.
    listener: Arc<str>,
    /// The listener's `idle_timeout`.
    idle: Duration,
}

impl StreamExec {
    pub fn new(listener: Arc<str>, idle: Duration) -> Self {
        StreamExec { listener, idle }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let clock = Arc::new(StreamClock::new());
        tokio::spawn(Watched {
            inner: CLOCK.scope(clock.clone(), fut),
            clock,
            idle: self.idle,
            timer: None,
            armed: false,
            listener: self.listener.clone(),
        });
    }
}

pin_project_lite::pin_project! {
    /// One stream's task: ends (dropping the stream) once its clock has run for `idle`.
    pub struct Watched<F: 'static> {
        #[pin]
        inner: TaskLocalFuture<Arc<StreamClock>, F>,
        clock: Arc<StreamClock>,
        idle: Duration,
        // Allocated the first time a chunk waits: most streams never need it.
        timer: Option<Pin<Box<Sleep>>>,
        // Whether `timer` is set for the chunk waiting now (or an earlier one: it then fires
        // early, and is set again for the right deadline).
        armed: bool,
        listener: Arc<str>,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.inner.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(since) = this.clock.waiting_since() else {
            *this.armed = false;
            return Poll::Pending;
        };
        let deadline = since + *this.idle;
        let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !*this.armed {
            timer.as_mut().reset(deadline);
            *this.armed = true;
        }
        while timer.as_mut().poll(cx).is_ready() {
            if deadline <= Instant::now() {
                tracing::debug!(listener = %this.listener, "HTTP/2 stream sent nothing for idle_timeout; resetting it");
                // Returning ends the task, which drops the stream future (see the module doc).
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use tokio::sync::{mpsc, Notify};

    /// A stream task whose body, told so through `steps`, hands hyper a chunk (`true`) or is
    /// asked for more (`false`), from inside the task as hyper's body polls are. Notifies
    /// `dropped` when its task drops it.
    async fn stream(mut steps: mpsc::UnboundedReceiver<bool>, dropped: Arc<Notify>) {
        struct OnDrop(Arc<Notify>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.notify_one();
            }
        }
        let _guard = OnDrop(dropped);
        let clock = current().expect("runs with a clock");
        while let Some(hand) = steps.recv().await {
            if hand {
                clock.handed_over();
            } else {
                clock.taken();
            }
        }
        std::future::pending::<()>().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_waiting_idle_ends_the_stream_and_one_taken_in_time_does_not() {
        let idle = Duration::from_secs(60);
        let dropped = Arc::new(Notify::new());
        let (steps, rx) = mpsc::unbounded_channel();
        StreamExec::new(Arc::from("web"), idle).execute(stream(rx, dropped.clone()));
        let ended = dropped.notified();
        tokio::pin!(ended);

        // No chunk waiting (a slow backend): never ends.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(poll_once(ended.as_mut()).await.is_pending());

        // Chunks that hyper takes within idle of each other: never ends.
        for _ in 0..20 {
            steps.send(true).unwrap();
            tokio::time::sleep(Duration::from_secs(50)).await;
            steps.send(false).unwrap();
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(poll_once(ended.as_mut()).await.is_pending());

        // One that waits: the stream ends idle after it was handed over.
        steps.send(true).unwrap();
        let since = Instant::now();
        ended.await;
        assert_eq!(since.elapsed(), idle);
    }

    /// Polls `f` once, from inside a task.
    async fn poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
