//! The status page of the admin listener: `GET /status` (one self-contained HTML page) and
//! `GET /status.json` (the same data for scripts).
//!
//! Both are rendered from one [`Status`] value, collected on each request from the live pool
//! snapshots (the same ones requests balance over), each backend's health atomics and metric
//! series, and a [`Topology`] (listeners and health-check settings) that `app` republishes at
//! start and after every reload.
//!
//! The page has no external assets: CSS and a small script are inline, and the
//! `Content-Security-Policy` header forbids loading anything but `/status.json` from the same
//! origin. The server renders every table, so the page is complete without JavaScript (a
//! `<noscript>` meta refresh reloads it every few seconds); with JavaScript it fetches
//! `/status.json` every [`REFRESH`] and re-renders in place. Every name is escaped server-side
//! and inserted as text (never as HTML) by the script.
//!
//! Request rates: a sampler task records each backend's request total every second, and
//! `requests_per_second` is the increase over the last [`RATE_WINDOW`] (or since the backend
//! appeared, if that is shorter).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use prometheus::core::Collector;
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use crate::backend::Backend;
use crate::backend::CheckResult;
use crate::config::{Config, HealthConfig, HealthKind};
use crate::metrics::Metrics;
use crate::shutdown::Signal;

/// How often the page re-fetches `/status.json`.
pub const REFRESH: Duration = Duration::from_secs(2);
/// The span `requests_per_second` is averaged over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// How often the sampler records request totals.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Without JavaScript, the page reloads itself this often (seconds).
const NOSCRIPT_REFRESH_SECS: u32 = 5;

/// The `Content-Security-Policy` of the HTML page: inline style and script, `fetch` to the same
/// origin, nothing else (no images, fonts, frames, external scripts or styles).
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One listener as configured, with the address it actually bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenerInfo {
    pub name: String,
    /// The bound address (the real port when the configuration said port 0).
    pub bind: String,
    /// `"http"` or `"tcp"`.
    pub mode: &'static str,
    pub pool: String,
    /// True when the listener terminates TLS.
    pub tls: bool,
}

/// The active health check of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthInfo {
    /// `"http"` or `"tcp"`.
    pub kind: &'static str,
    /// The probed path; `null` for tcp checks.
    pub path: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl From<&HealthConfig> for HealthInfo {
    fn from(h: &HealthConfig) -> Self {
        HealthInfo {
            kind: match h.kind {
                HealthKind::Http => "http",
                HealthKind::Tcp => "tcp",
            },
            path: (h.kind == HealthKind::Http).then(|| h.path.clone()),
            interval_ms: h.interval.as_millis() as u64,
            timeout_ms: h.timeout.as_millis() as u64,
            rise: h.rise,
            fall: h.fall,
        }
    }
}

/// What the status page needs from the configuration; replaced as a whole on reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// In configuration order.
    pub listeners: Vec<ListenerInfo>,
    /// Active health check of each pool (`None`: passive detection only).
    pub health: BTreeMap<String, Option<HealthInfo>>,
}

/// The topology shared between `app` (writer) and the admin listener (reader).
pub type SharedTopology = Arc<ArcSwap<Topology>>;

impl Topology {
    /// From a configuration and the address each listener is bound to (by name).
    pub fn new(config: &Config, bound: impl Fn(&str) -> Option<SocketAddr>) -> Topology {
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerInfo {
                name: l.name.clone(),
                bind: bound(&l.name).unwrap_or(l.bind).to_string(),
                mode: l.mode.as_str(),
                pool: l.pool.clone(),
                tls: !l.tls.is_empty(),
            })
            .collect();
        let health =
            config.pools.iter().map(|(name, p)| (name.clone(), p.health.as_ref().map(HealthInfo::from))).collect();
        Topology { listeners, health }
    }
}

/// Everything `/status.json` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Server time (unix ms) of this snapshot; `since_ms` values are on the same clock.
    pub now_ms: u64,
    /// How often the page refreshes.
    pub refresh_ms: u64,
    /// The span `requests_per_second` is averaged over.
    pub rate_window_ms: u64,
    pub listeners: Vec<ListenerInfo>,
    /// Sorted by name.
    pub pools: Vec<PoolStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub strategy: &'static str,
    /// `null` when the pool has no active health check.
    pub health: Option<HealthInfo>,
    /// How many backends are up (`state` `"up"`).
    pub backends_up: usize,
    /// In configuration order.
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub addr: String,
    /// `"up"`, or `"down"` (out by its active check or by live-traffic failures).
    pub state: &'static str,
    /// What took it down: `"check"` (its active check; it stays out), `"traffic"` (live-traffic
    /// failures alone); `null` when up.
    pub down_by: Option<&'static str>,
    /// Whether new requests go to it: when up, and when down by live traffic alone while
    /// nothing else in its pool is up (tried anyway).
    pub in_rotation: bool,
    /// Unix ms of the last up/down transition (or of when lb started using the backend).
    pub since_ms: u64,
    /// Up/down transitions so far.
    pub transitions: u64,
    /// The last active probe; `null` when none has run (or the pool has no active check).
    pub last_check: Option<LastCheck>,
    pub weight: u32,
    pub in_flight: usize,
    /// Requests answered by this backend since lb started using it.
    pub requests_total: u64,
    /// Average over the last `rate_window_ms`.
    pub requests_per_second: f64,
    /// The share of its answers over the last `rate_window_ms` that were 5xx (0.0 to 1.0);
    /// `null` when it answered nothing then. A backend answering errors is up to its health
    /// check; this says so at a glance.
    pub error_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastCheck {
    /// `"success"` or `"failure"`.
    pub result: &'static str,
    /// Why it failed (`"status 503"`, `"connect failed: …"`); empty on success.
    pub reason: String,
}

/// Requests answered by `b` over every listener and status code, and those that were 5xx.
fn answered(b: &Backend) -> (u64, u64) {
    let (mut all, mut errors) = (0, 0);
    for m in b.metrics().requests.collect().iter().flat_map(|f| f.get_metric()) {
        let n = m.get_counter().get_value() as u64;
        all += n;
        if m.get_label().iter().any(|l| l.name() == "code" && l.value().starts_with('5')) {
            errors += n;
        }
    }
    (all, errors)
}

/// A 5xx share at or above this is shown in red (the alert rules' `LbHigh5xxRatio` line).
const ERRORS_SHOWN_BAD: f64 = 0.05;

/// A 5xx share as the page shows it: "—" without answers, else a percentage.
fn error_text(ratio: Option<f64>) -> String {
    match ratio {
        None => "\u{2014}".to_owned(),
        Some(r) => format!("{}%", (r * 1000.0).round() / 10.0),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Identifies a backend's request counter across snapshots: a backend kept by a reload (same
/// pool, same address, same name) keeps its series.
type Key = (String, String, SocketAddr);

fn key(pool: &str, b: &Backend) -> Key {
    (pool.to_owned(), b.name.clone(), b.addr)
}

/// Request totals sampled once a second over the last [`RATE_WINDOW`].
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<Samples>,
}

/// Each backend's (answers, 5xx answers) at each sample, oldest first.
type Samples = VecDeque<(Instant, HashMap<Key, (u64, u64)>)>;

impl Rates {
    /// Records every backend's current total.
    pub fn sample(&self, metrics: &Metrics) {
        let mut totals = HashMap::new();
        for (pool_name, handle) in metrics.pools().iter() {
            for b in handle.load().backends.iter() {
                totals.insert(key(pool_name, b), answered(b));
            }
        }
        self.record(Instant::now(), totals);
    }

    fn record(&self, at: Instant, totals: HashMap<Key, (u64, u64)>) {
        let Ok(mut s) = self.samples.lock() else { return };
        s.push_back((at, totals));
        while s.front().is_some_and(|(t, _)| at.duration_since(*t) > RATE_WINDOW) {
            s.pop_front();
        }
    }

    /// Requests per second of `key`, whose total is `total` at `now`, over the oldest sample
    /// in the window that knows it. Zero without such a sample.
    fn rate(samples: &Samples, key: &Key, total: u64, now: Instant) -> f64 {
        let Some((t0, base)) = samples.iter().find_map(|(t, m)| m.get(key).map(|v| (*t, v.0))) else {
            return 0.0;
        };
        // A shorter span than a second says more about timing than about traffic.
        let secs = now.saturating_duration_since(t0).as_secs_f64().max(1.0);
        // A counter that went down belongs to a new backend under the same key.
        let delta = if total >= base { total - base } else { total };
        (delta as f64 / secs * 100.0).round() / 100.0
    }

    /// The 5xx share of `key`'s answers since the oldest sample in the window that knows it,
    /// `(total, errors)` being its counts now; `None` when it answered nothing since.
    fn error_ratio(samples: &Samples, key: &Key, now: (u64, u64)) -> Option<f64> {
        let (total0, errors0) = samples.iter().find_map(|(_, m)| m.get(key).copied()).unwrap_or((0, 0));
        // Counters that went down belong to a new backend under the same key.
        let (all, errors) = if now.0 >= total0 && now.1 >= errors0 { (now.0 - total0, now.1 - errors0) } else { now };
        (all > 0).then(|| (errors as f64 / all as f64 * 1000.0).round() / 1000.0)
    }

    /// Samples every `SAMPLE_EVERY` until the drain is triggered.
    pub async fn run(self: Arc<Self>, metrics: Arc<Metrics>, mut stop: Signal, mut signal: Signal) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sample(&metrics),
                _ = signal.triggered() => return,
                // The admin listener moved or went: its sampler goes with it.
                _ = stop.triggered() => return,
            }
        }
    }
}

impl Status {
    /// The state of every listener, pool and backend right now.
    pub fn collect(metrics: &Metrics, topology: &Topology, rates: &Rates) -> Status {
        let now = Instant::now();
        let empty = VecDeque::new();
        let guard = rates.samples.lock();
        let samples = guard.as_deref().unwrap_or(&empty);
        let pools = metrics
            .pools()
            .iter()
            .map(|(pool_name, handle)| {
                let pool = handle.load();
                let backends: Vec<BackendStatus> = pool
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let h = b.health();
                        let down = h.down();
                        let (result, reason) = h.last_check();
                        let last_check = match result {
                            CheckResult::None => None,
                            CheckResult::Success => Some(LastCheck { result: "success", reason }),
                            CheckResult::Failure => Some(LastCheck { result: "failure", reason }),
                        };
                        let counts = answered(b);
                        let total = counts.0;
                        BackendStatus {
                            name: b.name.clone(),
                            addr: b.addr.to_string(),
                            state: if down.is_up() { "up" } else { "down" },
                            down_by: if down.by_check() {
                                Some("check")
                            } else if down.by_traffic() {
                                Some("traffic")
                            } else {
                                None
                            },
                            in_rotation: pool.up.binary_search(&i).is_ok(),
                            since_ms: h.since_ms(),
                            transitions: h.transitions(),
                            last_check,
                            weight: b.weight,
                            in_flight: b.in_flight(),
                            requests_total: total,
                            requests_per_second: Rates::rate(samples, &key(pool_name, b), total, now),
                            error_ratio: Rates::error_ratio(samples, &key(pool_name, b), counts),
                        }
                    })
                    .collect();
                PoolStatus {
                    name: pool_name.clone(),
                    strategy: pool.kind.as_str(),
                    health: topology.health.get(pool_name).cloned().flatten(),
                    backends_up: backends.iter().filter(|b| b.state == "up").count(),
                    backends,
                }
            })
            .collect();
        Status {
            now_ms: now_ms(),
            refresh_ms: REFRESH.as_millis() as u64,
            rate_window_ms: RATE_WINDOW.as_millis() as u64,
            listeners: topology.listeners.clone(),
            pools,
        }
    }

    /// `/status.json`.
    pub fn to_json(&self) -> Vec<u8> {
        // Only strings, numbers, options and vectors: serialization cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// `/status`: the complete page, tables rendered, script inline.
    pub fn to_html(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = write!(
            out,
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>lb status</title>\n\
             <noscript><meta http-equiv=\"refresh\" content=\"{NOSCRIPT_REFRESH_SECS}\"></noscript>\n\
             <style>{CSS}</style>\n</head>\n\
             <body data-source=\"server\" data-now-ms=\"{}\" data-refresh-ms=\"{}\">\n<header>\n<h1>lb status</h1>\n\
             <p class=\"meta\"><span id=\"updated\">as of {}</span> · <span id=\"live\">refreshes every {}</span> · \
             <a href=\"/status.json\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n</header>\n<main id=\"content\">\n",
            self.now_ms,
            self.refresh_ms,
            utc(self.now_ms),
            duration_text(self.refresh_ms),
        );
        self.listeners_html(&mut out);
        for p in &self.pools {
            self.pool_html(&mut out, p);
        }
        let _ = write!(out, "</main>\n<script>{JS}</script>\n</body>\n</html>\n");
        out
    }

    fn listeners_html(&self, out: &mut String) {
        out.push_str(
            "<section class=\"listeners\" aria-labelledby=\"h-listeners\">\n<h2 id=\"h-listeners\">Listeners</h2>\n\
             <table>\n<thead><tr><th scope=\"col\">listener</th><th scope=\"col\">bind</th><th scope=\"col\">mode</th>\
             <th scope=\"col\">pool</th></tr></thead>\n<tbody>\n",
        );
        if self.listeners.is_empty() {
            out.push_str("<tr><td colspan=\"4\" class=\"none\">no listeners</td></tr>\n");
        }
        for l in &self.listeners {
            let _ = writeln!(
                out,
                "<tr data-listener=\"{n}\"><td>{n}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.bind),
                esc(&mode_text(l)),
                esc(&l.pool),
                n = esc(&l.name),
            );
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }

    fn pool_html(&self, out: &mut String, p: &PoolStatus) {
        let _ = write!(
            out,
            "<section class=\"pool\" data-pool=\"{n}\">\n<h2>Pool <span class=\"name\">{n}</span></h2>\n\
             <p class=\"poolmeta\"><span class=\"tag\">{}</span> <span class=\"count {}\">{} of {} up</span> \
             <span class=\"check-desc\">{}</span></p>\n\
             <table>\n<thead><tr><th scope=\"col\">backend</th><th scope=\"col\">address</th><th scope=\"col\">state</th>\
             <th scope=\"col\">since</th><th scope=\"col\">last check</th><th scope=\"col\" class=\"num\">weight</th>\
             <th scope=\"col\" class=\"num\">in flight</th><th scope=\"col\" class=\"num\">req/s</th>\
             <th scope=\"col\" class=\"num\">5xx</th></tr></thead>\n<tbody>\n",
            p.strategy,
            count_class(p),
            p.backends_up,
            p.backends.len(),
            esc(&health_text(p.health.as_ref())),
            n = esc(&p.name),
        );
        for b in &p.backends {
            let (check_class, check_text, check_title) = check_cells(b, p.health.is_some());
            let note = match state_note(b) {
                Some((text, title)) => format!(" <span class=\"why\" title=\"{title}\">{text}</span>"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "<tr data-backend=\"{n}\" data-state=\"{state}\" class=\"{state}\"><td>{n}</td><td class=\"mono\">{}</td>\
                 <td><span class=\"state {state}\">{}</span>{note}</td><td title=\"{}\">{}</td>\
                 <td class=\"check {check_class}\" title=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num{}\">{}</td></tr>",
                esc(&b.addr),
                if b.state == "up" { "UP" } else { "DOWN" },
                esc(&utc(b.since_ms)),
                ago(self.now_ms.saturating_sub(b.since_ms)),
                esc(&check_title),
                esc(&check_text),
                b.weight,
                b.in_flight,
                rate_text(b.requests_per_second),
                if b.error_ratio.is_some_and(|r| r >= ERRORS_SHOWN_BAD) { " bad" } else { "" },
                error_text(b.error_ratio),
                n = esc(&b.name),
                state = b.state,
            );
        }
        out.push_str("</tbody>\n</table>\n</section>\n");
    }
}

fn mode_text(l: &ListenerInfo) -> String {
    if l.tls {
        format!("{} + tls", l.mode)
    } else {
        l.mode.to_owned()
    }
}

fn count_class(p: &PoolStatus) -> &'static str {
    if p.backends_up == p.backends.len() {
        "all"
    } else if p.backends_up == 0 {
        "none"
    } else {
        "some"
    }
}

/// (text, tooltip) shown after `DOWN` for a backend out by live-traffic failures (the last-check
/// cell already says why a check failed). The script has the same function.
fn state_note(b: &BackendStatus) -> Option<(&'static str, &'static str)> {
    match (b.down_by, b.in_rotation) {
        (Some("traffic"), true) => Some((
            "live traffic · tried anyway",
            "out by live-traffic failures; nothing else in the pool is up, so it is tried anyway",
        )),
        (Some("traffic"), false) => Some(("live traffic", "out by live-traffic failures (connect, reset, timeout)")),
        _ => None,
    }
}

/// (css class, cell text, tooltip) of the last-check cell.
fn check_cells(b: &BackendStatus, has_check: bool) -> (&'static str, String, String) {
    match &b.last_check {
        Some(c) if c.result == "success" => ("ok", "✓ ok".into(), "last probe succeeded".into()),
        Some(c) => ("fail", format!("✗ {}", c.reason), "last probe failed".into()),
        None if has_check => ("pending", "not yet".into(), "no probe has finished yet".into()),
        None => ("passive", "—".into(), "no active health check; failures on live traffic take it out".into()),
    }
}

/// "http GET /health every 2s, timeout 1s, rise 2, fall 3".
fn health_text(h: Option<&HealthInfo>) -> String {
    match h {
        None => "no active health check (passive detection only)".into(),
        Some(h) => {
            let what = match &h.path {
                Some(path) => format!("{} GET {}", h.kind, path),
                None => format!("{} connect", h.kind),
            };
            format!(
                "health check: {what} every {}, timeout {}, rise {}, fall {}",
                duration_text(h.interval_ms),
                duration_text(h.timeout_ms),
                h.rise,
                h.fall
            )
        }
    }
}

/// `250ms`, `2s`, `1.5s` (the script has the same function).
fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", ms as f64 / 1000.0)
    }
}

fn rate_text(r: f64) -> String {
    format!("{r:.1}")
}

/// A relative span: `42s`, `3m 2s`, `5h 12m`, `2d 3h` (the script has the same function).
pub fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `2024-05-01 12:34:56 UTC` from unix ms.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Escapes text for HTML element content and double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's style sheet (`status.css`), inlined so that the page needs no other request.
const CSS: &str = include_str!("status.css");

/// The page's script (`status.js`): polls `/status.json` and redraws, inlined like the CSS.
const JS: &str = include_str!("status.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_html_cares_about() {
        assert_eq!(esc(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(esc("plain-name_1"), "plain-name_1");
    }

    #[test]
    fn relative_times() {
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(59_999), "59s");
        assert_eq!(ago(62_000), "1m 2s");
        assert_eq!(ago(3 * 3_600_000 + 5 * 60_000), "3h 5m");
        assert_eq!(ago(2 * 86_400_000 + 3 * 3_600_000), "2d 3h");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_709_210_096_789), "2024-02-29 12:34:56 UTC");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_text(250), "250ms");
        assert_eq!(duration_text(2000), "2s");
        assert_eq!(duration_text(1500), "1.5s");
    }

    #[test]
    fn rates_use_the_oldest_sample_in_the_window() {
        let rates = Rates::default();
        let k: Key = ("app".into(), "a".into(), "127.0.0.1:1".parse().unwrap());
        let t0 = Instant::now();
        rates.record(t0, HashMap::from([(k.clone(), (100, 10))]));
        rates.record(t0 + Duration::from_secs(5), HashMap::from([(k.clone(), (150, 10))]));
        let s = rates.samples.lock().unwrap();
        assert_eq!(Rates::rate(&s, &k, 300, t0 + Duration::from_secs(10)), 20.0);
        // Unknown backend: no rate yet. Counter reset: counts from zero.
        let other: Key = ("app".into(), "b".into(), "127.0.0.1:2".parse().unwrap());
        assert_eq!(Rates::rate(&s, &other, 5, t0 + Duration::from_secs(10)), 0.0);
        assert_eq!(Rates::rate(&s, &k, 30, t0 + Duration::from_secs(10)), 3.0);
        // The 5xx share over the same span: 40 of 200 more answers.
        assert_eq!(Rates::error_ratio(&s, &k, (300, 50)), Some(0.2));
        assert_eq!(Rates::error_ratio(&s, &k, (100, 10)), None, "no answers since");
        assert_eq!(Rates::error_ratio(&s, &other, (4, 1)), Some(0.25), "a new backend: all it answered");
        drop(s);
        // Samples older than the window go.
        rates.record(t0 + RATE_WINDOW + Duration::from_secs(2), HashMap::from([(k.clone(), (400, 10))]));
        let s = rates.samples.lock().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].1[&k], (150, 10));
        assert_eq!(error_text(Some(0.2)), "20%");
        assert_eq!(error_text(Some(0.473)), "47.3%");
        assert_eq!(error_text(None), "\u{2014}");
    }
}
