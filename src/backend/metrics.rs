//! A backend's own metric series ([`BackendMetrics`]): its request counts and durations by
//! listener, and its health-check results. They live on the backend's shared state, so a kept
//! backend's counters continue across reloads and a removed backend's series go with it;
//! `crate::metrics` renders them into the families the README's "Metrics" section names, at scrape time.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

/// The families' names and help texts, shared with `crate::metrics`, which renders them.
/// Latency buckets for a proxy: sub-millisecond to a minute.
pub const DURATION_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub(crate) const REQUESTS: &str = "lb_requests_total";
pub(crate) const REQUESTS_HELP: &str =
    "Requests answered, by listener, pool, backend (\"\" when lb answered itself) and status code.";
pub(crate) const DURATION: &str = "lb_request_duration_seconds";
pub(crate) const DURATION_HELP: &str = "Time from receiving a request to the end of its response.";
pub(crate) const UP: &str = "lb_backend_up";
pub(crate) const UP_HELP: &str =
    "1 when the backend is up, 0 when its active check or live-traffic failures took it down.";
pub(crate) const IN_ROTATION: &str = "lb_backend_in_rotation";
pub(crate) const IN_ROTATION_HELP: &str =
    "1 when new requests go to the backend: it is up, or it is down by live-traffic failures alone and nothing else in its pool is up.";
pub(crate) const IN_FLIGHT: &str = "lb_backend_in_flight";
pub(crate) const IN_FLIGHT_HELP: &str = "Requests (http) or sessions (tcp) in flight to the backend.";
pub(crate) const CHECKS: &str = "lb_health_checks_total";
pub(crate) const CHECKS_HELP: &str = "Active health check results.";

/// The series of one backend; shared by every snapshot holding it and kept across reloads.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    /// Labels: listener, code.
    pub requests: IntCounterVec,
    /// Labels: listener.
    pub duration: HistogramVec,
    pub checks_ok: IntCounter,
    pub checks_failed: IntCounter,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        // The names here are placeholders; the collector renames into the SPEC families.
        BackendMetrics {
            requests: IntCounterVec::new(Opts::new(REQUESTS, REQUESTS_HELP), &["listener", "code"])
                .expect("static metric definition"),
            duration: HistogramVec::new(
                HistogramOpts::new(DURATION, DURATION_HELP).buckets(DURATION_BUCKETS.to_vec()),
                &["listener"],
            )
            .expect("static metric definition"),
            checks_ok: IntCounter::new(CHECKS, CHECKS_HELP).expect("static metric definition"),
            checks_failed: IntCounter::new(CHECKS, CHECKS_HELP).expect("static metric definition"),
        }
    }
}
