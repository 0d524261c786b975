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

use std::time::Duration;

pub use backend::*;
pub use client::*;
pub use config::*;
pub use raw::*;
pub use raw_backends::*;

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
