//! Prometheus metrics: one registry owned by the application, names and labels as the README's "Metrics" section lists them.
//!
//! Per-backend series (`lb_requests_total`, `lb_request_duration_seconds`, `lb_backend_up`,
//! `lb_backend_in_rotation`, `lb_backend_in_flight`, `lb_health_checks_total`) live with the backend's shared state
//! ([`BackendMetrics`]) and are emitted by a collector that walks the live pool snapshots at
//! scrape time. So a kept backend's counters continue across reloads, a removed backend's series
//! disappear with it, and gauges are read from the same atomics the strategies use, never
//! written on the hot path. Answers the proxy gives itself carry `backend=""`.
//!
//! Label values are bounded by configuration: listener, pool and backend names, status codes,
//! fixed words. No paths, no client addresses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc, MetricVec, MetricVecBuilder};
use prometheus::proto::{Gauge as GaugeProto, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::backend::metrics::{
    CHECKS, CHECKS_HELP, DURATION, DURATION_BUCKETS, DURATION_HELP, IN_FLIGHT, IN_FLIGHT_HELP, IN_ROTATION,
    IN_ROTATION_HELP, REQUESTS, REQUESTS_HELP, UP, UP_HELP,
};
use crate::pool::PoolHandle;

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// The live pools, for the per-backend collector; replaced on reload.
    pools: Arc<ArcSwap<BTreeMap<String, PoolHandle>>>,
    /// Answers lb gave itself (no backend). Labels: listener, pool, code.
    pub local_requests: IntCounterVec,
    /// Labels: listener, pool.
    pub local_duration: HistogramVec,
    /// Labels: pool.
    pub retries: IntCounterVec,
    /// Labels: listener.
    pub connections_open: IntGaugeVec,
    /// Labels: listener.
    pub connections_total: IntCounterVec,
    /// Labels: listener, direction (`in`: from clients, `out`: to clients).
    pub tcp_bytes: IntCounterVec,
    /// Labels: result.
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let pools: Arc<ArcSwap<BTreeMap<String, PoolHandle>>> = Arc::default();
        let m = Metrics {
            local_requests: counter_vec(REQUESTS, REQUESTS_HELP, &["listener", "pool", "code"]),
            local_duration: HistogramVec::new(
                HistogramOpts::new(DURATION, DURATION_HELP).buckets(DURATION_BUCKETS.to_vec()),
                &["listener", "pool"],
            )
            .expect("static metric definition"),
            retries: counter_vec("lb_retries_total", "Requests or sessions tried again on another backend.", &["pool"]),
            connections_open: IntGaugeVec::new(
                Opts::new("lb_connections_open", "Client connections open."),
                &["listener"],
            )
            .expect("static metric definition"),
            connections_total: counter_vec("lb_connections_total", "Client connections accepted.", &["listener"]),
            tcp_bytes: counter_vec(
                "lb_tcp_bytes_total",
                "Bytes proxied in tcp mode; in: received from clients, out: sent to clients.",
                &["listener", "direction"],
            ),
            reloads: counter_vec("lb_config_reloads_total", "Configuration reloads by result.", &["result"]),
            last_reload_success: Gauge::new(
                "lb_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load.",
            )
            .expect("static metric definition"),
            pools: pools.clone(),
            registry,
        };
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(m.retries.clone()),
            Box::new(m.connections_open.clone()),
            Box::new(m.connections_total.clone()),
            Box::new(m.tcp_bytes.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.last_reload_success.clone()),
            Box::new(PoolCollector::new(pools, m.local_requests.clone(), m.local_duration.clone())),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        // Both results exist from the start, so rate() and alerts work before the first reload.
        m.reloads.with_label_values(&["success"]);
        m.reloads.with_label_values(&["failure"]);
        Arc::new(m)
    }

    /// Points the per-backend collector at the current pools (at start and after a reload).
    /// Every pool's retry counter exists from the start; removed pools' series go.
    pub fn set_pools(&self, pools: BTreeMap<String, PoolHandle>) {
        for name in self.pools.load().keys().filter(|n| !pools.contains_key(*n)) {
            let _ = self.retries.remove_label_values(&[name]);
            remove_where(&self.local_requests, "pool", name);
            remove_where(&self.local_duration, "pool", name);
        }
        for name in pools.keys() {
            self.retries.with_label_values(&[name]);
        }
        self.pools.store(Arc::new(pools));
    }

    /// The live pools, by name (what the status page shows).
    pub fn pools(&self) -> Arc<BTreeMap<String, PoolHandle>> {
        self.pools.load_full()
    }

    /// Deletes the series of a listener that a reload removed, its requests' included.
    pub fn forget_listener(&self, name: &str) {
        let _ = self.connections_open.remove_label_values(&[name]);
        let _ = self.connections_total.remove_label_values(&[name]);
        let _ = self.tcp_bytes.remove_label_values(&[name, "in"]);
        let _ = self.tcp_bytes.remove_label_values(&[name, "out"]);
        remove_where(&self.local_requests, "listener", name);
        remove_where(&self.local_duration, "listener", name);
        for pool in self.pools.load().values() {
            for b in pool.load().backends.iter() {
                remove_where(&b.metrics().requests, "listener", name);
                remove_where(&b.metrics().duration, "listener", name);
            }
        }
    }

    /// Counts a reload; a success also stamps the last-success time.
    pub fn reload_result(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "success" } else { "failure" }]).inc();
        if ok {
            self.mark_loaded();
        }
    }

    /// Stamps the time of a successful configuration load.
    pub fn mark_loaded(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.last_reload_success.set(now);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        if TextEncoder::new().encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Emits the per-backend families from the live snapshots.
struct PoolCollector {
    pools: Arc<ArcSwap<BTreeMap<String, PoolHandle>>>,
    local_requests: IntCounterVec,
    local_duration: HistogramVec,
    descs: Vec<Desc>,
}

impl PoolCollector {
    fn new(
        pools: Arc<ArcSwap<BTreeMap<String, PoolHandle>>>,
        local_requests: IntCounterVec,
        local_duration: HistogramVec,
    ) -> Self {
        let desc = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(name.into(), help.into(), labels.iter().map(|s| s.to_string()).collect(), Default::default())
                .expect("static metric definition")
        };
        let descs = vec![
            desc(REQUESTS, REQUESTS_HELP, &["listener", "pool", "backend", "code"]),
            desc(DURATION, DURATION_HELP, &["listener", "pool", "backend"]),
            desc(UP, UP_HELP, &["pool", "backend"]),
            desc(IN_ROTATION, IN_ROTATION_HELP, &["pool", "backend"]),
            desc(IN_FLIGHT, IN_FLIGHT_HELP, &["pool", "backend"]),
            desc(CHECKS, CHECKS_HELP, &["pool", "backend", "result"]),
        ];
        PoolCollector { pools, local_requests, local_duration, descs }
    }
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f
}

/// Removes every series of `vec` whose label `name` has `value` (prometheus removes only exact
/// label sets, so the sets are read back from what the vector holds).
fn remove_where<T: MetricVecBuilder>(vec: &MetricVec<T>, name: &str, value: &str) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if labels.iter().any(|l| l.name() == name && l.value() == value) {
                let values: Vec<&str> = labels.iter().map(LabelPair::value).collect();
                let by_name: std::collections::HashMap<&str, &str> =
                    labels.iter().map(|l| l.name()).zip(values.iter().copied()).collect();
                let _ = vec.remove(&by_name);
            }
        }
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

/// Moves every metric of `source` into `into`, adding `extra` labels and sorting label names.
fn adopt(into: &mut MetricFamily, source: Vec<MetricFamily>, extra: &[(&str, &str)]) {
    for mut mf in source {
        for mut m in mf.take_metric() {
            let mut labels = m.take_label();
            labels.extend(extra.iter().map(|(k, v)| label(k, v)));
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            m.set_label(labels);
            into.mut_metric().push(m);
        }
    }
}

fn gauge_metric(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut g = GaugeProto::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut requests = family(REQUESTS, REQUESTS_HELP, MetricType::COUNTER);
        let mut duration = family(DURATION, DURATION_HELP, MetricType::HISTOGRAM);
        let mut up = family(UP, UP_HELP, MetricType::GAUGE);
        let mut in_rotation = family(IN_ROTATION, IN_ROTATION_HELP, MetricType::GAUGE);
        let mut in_flight = family(IN_FLIGHT, IN_FLIGHT_HELP, MetricType::GAUGE);
        let mut checks = family(CHECKS, CHECKS_HELP, MetricType::COUNTER);
        adopt(&mut requests, self.local_requests.collect(), &[("backend", "")]);
        adopt(&mut duration, self.local_duration.collect(), &[("backend", "")]);
        for (pool_name, handle) in self.pools.load().iter() {
            let pool = handle.load();
            for (i, b) in pool.backends.iter().enumerate() {
                let m = b.metrics();
                let extra = [("pool", pool_name.as_str()), ("backend", b.name.as_str())];
                adopt(&mut requests, m.requests.collect(), &extra);
                adopt(&mut duration, m.duration.collect(), &extra);
                let base = || vec![label("backend", &b.name), label("pool", pool_name)];
                // Up is the backend's health; in rotation is the snapshot's `up` set, which also
                // holds backends down by live traffic alone when nothing else is up.
                let bit = |b: bool| if b { 1.0 } else { 0.0 };
                up.mut_metric().push(gauge_metric(base(), bit(b.health().is_up())));
                in_rotation.mut_metric().push(gauge_metric(base(), bit(pool.up.binary_search(&i).is_ok())));
                in_flight.mut_metric().push(gauge_metric(base(), b.in_flight() as f64));
                for (result, counter) in [("failure", &m.checks_failed), ("success", &m.checks_ok)] {
                    let mut labels = base();
                    labels.push(label("result", result));
                    adopt(&mut checks, counter.collect(), &[]);
                    if let Some(last) = checks.mut_metric().last_mut() {
                        last.set_label(labels);
                    }
                }
            }
        }
        vec![requests, duration, up, in_rotation, in_flight, checks]
    }
}
