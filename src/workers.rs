//! Data-plane threads: one single-threaded tokio runtime per worker, nginx-style.
//!
//! Every listener accepts on every worker, and a connection lives on the worker that accepted
//! it, together with the upstream connections it uses (their driver tasks are spawned on the
//! same runtime, and idle ones are kept per worker, see [`slot`]). A request therefore never
//! crosses threads: no work stealing, no cross-thread wake-ups, no contended queues. Measured
//! against one multi-threaded runtime on the benchmark machine, see the README.
//!
//! The control plane (signals, reloads, health checks, the admin listener) stays on the
//! runtime that started [`crate::app::Running`].

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

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

/// The running workers. Dropping this stops them: their runtimes, and every connection still
/// on them, are dropped.
pub struct Workers {
    handles: Vec<Handle>,
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
        Ok(Workers { handles, _stop: stops })
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
