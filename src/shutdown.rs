//! Drain signalling: one trigger, many watchers, and a way to wait until all watchers are gone.
//!
//! Accept loops stop accepting when triggered; HTTP connections switch to graceful shutdown
//! (finish the request in flight, close idle keep-alive connections at once); TCP sessions run
//! on until their peers close. Each of them holds a [`Signal`] while it lives, so
//! [`Drain::drained`] resolves exactly when the last one has finished.

use tokio::sync::watch;

/// The trigger side.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

/// The watching side; cheap to clone, one per task that must finish before exit.
#[derive(Debug, Clone)]
pub struct Signal {
    rx: watch::Receiver<bool>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { tx: watch::channel(false).0 }
    }
}

impl Drain {
    pub fn signal(&self) -> Signal {
        Signal { rx: self.tx.subscribe() }
    }

    /// Tells every watcher to wind down.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves when every [`Signal`] has been dropped.
    pub async fn drained(&self) {
        self.tx.closed().await;
    }

    /// Watchers still alive (accept loops, connections, sessions).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl Signal {
    /// Resolves once the drain has been triggered (at once if it already was).
    pub async fn triggered(&mut self) {
        // An error means the Drain is gone, which also means: stop.
        let _ = self.rx.wait_for(|v| *v).await;
    }
}
