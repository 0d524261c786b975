//! Data-plane threads: one single-threaded tokio runtime per worker, nginx-style.
//!
//! Every listener accepts on every worker, and a connection lives on the worker that accepted
//! it, together with the upstream connections it uses (their driver tasks are spawned on the
//! same runtime, and idle ones are kept per worker, see [`slot`]). A request therefore never
//! crosses threads: no work stealing, no cross-thread wake-ups, no contended queues. Measured
//! against one multi-threaded runtime on the benchmark machine, see the README. New
//! connections are shared out by count ([`Load`]): a worker more than one connection ahead of
//! the least loaded one leaves the next accept to the others.
//!
//! The control plane (signals, reloads, health checks, the admin listener) stays on the
//! runtime that started [`crate::app::Running`].

use std::cell::Cell;
use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

thread_local! {
    /// 1 + this thread's worker index; 0 on threads that are not workers.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// How many per-worker slots per-backend state keeps (idle connections): one per core plus one
/// for threads that are not workers.
pub fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| default_count() + 1)
}

/// This thread's slot, below [`slots`]. Workers beyond the core count share slots (still
/// correct, only no longer thread-local).
pub fn slot() -> usize {
    SLOT.with(Cell::get) % slots()
}

/// Workers to start when not told: one per core the process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A worker may hold this many more connections than the least loaded one and still accept.
const SLACK: usize = 1;

/// Open connections per worker, so that they share new connections evenly. Without it, the
/// worker that wakes first for a burst of connections accepts nearly all of them (measured:
/// one worker doing 78% of the work under `wrk -c64`).
#[derive(Debug)]
pub struct Load {
    open: Box<[AtomicUsize]>,
    /// Signalled whenever a connection opens or closes anywhere.
    changed: Notify,
}

impl Load {
    fn new(workers: usize) -> Self {
        Load { open: (0..workers).map(|_| AtomicUsize::new(0)).collect(), changed: Notify::new() }
    }

    /// Waits until worker `me` is not ahead of the least loaded worker by more than `SLACK`.
    /// Meanwhile the others take the new connections (every worker is woken for each).
    pub async fn wait_turn(&self, me: usize) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let least = self.open.iter().map(|n| n.load(Ordering::Relaxed)).min().unwrap_or(0);
            if self.open[me].load(Ordering::Relaxed) <= least + SLACK {
                return;
            }
            changed.await;
        }
    }

    /// Counts a connection on worker `me` while the returned guard lives.
    pub fn opened(self: &Arc<Self>, me: usize) -> OpenOnWorker {
        self.open[me].fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        OpenOnWorker(self.clone(), me)
    }
}

/// One open connection on a worker (see [`Load::opened`]).
pub struct OpenOnWorker(Arc<Load>, usize);

impl Drop for OpenOnWorker {
    fn drop(&mut self) {
        self.0.open[self.1].fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// The running workers. Dropping this stops them: their runtimes, and every connection still
/// on them, are dropped.
pub struct Workers {
    handles: Vec<Handle>,
    load: Arc<Load>,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        let (mut handles, mut stops) = (Vec::with_capacity(count), Vec::with_capacity(count));
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            std::thread::Builder::new().name(format!("lb-worker-{i}")).spawn(move || {
                SLOT.with(|s| s.set(i + 1));
                // Runs the worker's tasks until `stop` is dropped.
                let _ = runtime.block_on(stopped);
            })?;
        }
        Ok(Workers { handles, load: Arc::new(Load::new(count)), _stop: stops })
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The workers' connection counts (see [`Load`]).
    pub fn load(&self) -> &Arc<Load> {
        &self.load
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_ahead_of_the_least_loaded_waits_its_turn() {
        let load = Arc::new(Load::new(2));
        let _a = (load.opened(0), load.opened(0));
        // Worker 1 (none open) may accept at once; worker 0 (two ahead) may not.
        tokio::time::timeout(std::time::Duration::from_secs(5), load.wait_turn(1)).await.unwrap();
        let waiting = tokio::spawn({
            let load = load.clone();
            async move { load.wait_turn(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // One connection on worker 1 brings worker 0 within the slack.
        let _b = load.opened(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        // A connection closing on worker 1 puts worker 0 ahead again.
        drop(_b);
        let again = tokio::spawn({
            let load = load.clone();
            async move { load.wait_turn(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!again.is_finished());
        drop(_a);
        tokio::time::timeout(std::time::Duration::from_secs(5), again).await.unwrap().unwrap();
    }

    #[test]
    fn each_worker_runs_on_its_own_slot_and_stops_when_dropped() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for h in workers.handles() {
            let tx = tx.clone();
            h.spawn(async move { tx.send((std::thread::current().id(), slot())).unwrap() });
        }
        let (a, b) = (rx.recv().unwrap(), rx.recv().unwrap());
        assert_ne!(a.0, b.0, "two workers, two threads");
        let mut seen = [a.1, b.1];
        seen.sort();
        assert_eq!(seen, [1 % slots(), 2 % slots()]);
        assert_eq!(slot(), 0, "the test thread is not a worker");
        let handle = workers.handles()[0].clone();
        drop(workers);
        // A stopped runtime no longer runs what is spawned on it.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle.spawn(async move { tx.send(()).unwrap() });
        }));
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err());
    }
}
