//! What benches, fuzz targets and the integration tests reach inside lb for: not an interface,
//! and free to change with the code it names (re-exports only; `#[doc(hidden)]` in `lib.rs`).

pub use crate::admin::MAX_CONNECTIONS as ADMIN_MAX_CONNECTIONS;
pub use crate::backend::{Backend, CheckResult, InFlight};
pub use crate::balance::{hash_bytes, PickCtx};
pub use crate::http1::{framing, headers};
pub use crate::metrics::Metrics;
pub use crate::pool::{Pool, PoolHandle, PoolSettings};
pub use crate::upstream::h1_client::read_response;
