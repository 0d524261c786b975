//! Helpers shared by the integration tests, one module per kind, all re-exported here so a test
//! module needs only `use crate::support::*;` (plus `use crate::support::lbproc::*;` when it
//! runs the real binary): real backends on 127.0.0.1:0 that record what reaches them, lb
//! in-process or as a child process, HTTP and raw-socket clients.

mod backend;
mod client;
mod config;
pub mod lbproc;
mod raw;
mod raw_backends;
mod tls;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use backend::*;
pub use client::*;
pub use config::*;
pub use raw::*;
pub use raw_backends::*;
pub use tls::*;

/// Generous bound for anything that should take milliseconds; only there to turn a hang into a
/// failure (with the logs attached, where there are logs).
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Polls until `cond` holds, and fails the test (naming `what`) if it does not within
/// [`PATIENCE`].
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(eventually(PATIENCE, cond).await, "timed out waiting for {what}");
}

/// A fresh directory under the system's temp dir, removed when dropped. Names carry the
/// process id and a counter: every test of the binary shares the process, so a tag alone could
/// collide.
pub struct TempDir(PathBuf);

pub fn temp_dir(tag: &str) -> TempDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lb-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    TempDir(dir)
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
