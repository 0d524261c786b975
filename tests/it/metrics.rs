//! GET /metrics: every SPEC.md family with its labels, exact counts across a reload, gauges back
//! to zero, removed backends' series deleted, and output that passes `promtool check metrics`
//! (when promtool is installed; `.ci/run` installs it and sets LB_REQUIRE_PROMTOOL=1) and our
//! own exposition-format checks (always).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::*;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition format, checking it on the way: TYPE before samples, valid
/// names, quoted label values, no duplicate series, cumulative histogram buckets ending in
/// `+Inf` equal to `_count`.
fn parse(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
            assert!(valid_name(name), "bad family name {name}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "family {name} typed twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(valid_name(k), "bad label name {k}");
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(&name)
            .to_owned();
        assert!(typed.contains_key(&family), "sample {name} before its TYPE");
        assert!(seen.insert(series.to_owned()), "duplicate series {series}");
        samples.push(Sample { name, labels, value });
    }
    // Histogram buckets: cumulative, with +Inf equal to _count.
    for s in samples.iter().filter(|s| s.name.ends_with("_count")) {
        let base = s.name.trim_end_matches("_count");
        if typed.get(base).map(String::as_str) != Some("histogram") {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|b| b.name == format!("{base}_bucket"))
            .filter(|b| b.labels.iter().filter(|(k, _)| *k != "le").all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|b| (b.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY), b.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "buckets not cumulative: {buckets:?}");
        assert_eq!(buckets.last().map(|b| (b.0, b.1)), Some((f64::INFINITY, s.value)), "{base} +Inf != count");
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

async fn scrape(lb: &lb::app::Running) -> (String, Vec<Sample>) {
    let (status, text, headers) = get(&client(), lb.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let samples = parse(&text);
    (text, samples)
}

fn promtool_check(text: &str) {
    let required = std::env::var("LB_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(!required, "promtool required but not runnable: {e}");
            eprintln!("promtool not installed; exposition checked by the built-in parser only");
            return;
        }
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(a: &TestBackend, b: Option<&TestBackend>) -> String {
    let backends = match b {
        Some(b) => backends_toml(&[a, b]),
        None => backends_toml(&[a]),
    };
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nretries = 1\n{backends}\n\n\
         [pools.app.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\n\
         [[listeners]]\nname = \"dead\"\nbind = \"127.0.0.1:0\"\npool = \"empty\"\n\n\
         [pools.empty]\nstrategy = \"random\"\nbackends = [{{ addr = \"127.0.0.1:9\", name = \"nowhere\" }}]\n\
         [pools.empty.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n\n\
         [[listeners]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"app\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spec_family_with_exact_counts_across_a_reload() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let dir = temp_dir("metrics");
    let path = dir.join("lb.toml");
    std::fs::write(&path, config(&a, Some(&b))).unwrap();
    let loaded = lb::config::load(&path).unwrap();
    let mut lb = lb::app::Running::start(loaded.config).await.unwrap();
    let web = lb.listener_addr("web").unwrap();
    let dead = lb.listener_addr("dead").unwrap();
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "empty").is_empty()).await);

    let client = client();
    for _ in 0..40 {
        assert_eq!(get(&client, web, "/").await.0, 200);
    }
    for _ in 0..5 {
        assert_eq!(get(&client, web, "/status/404").await.0, 404);
    }
    for _ in 0..3 {
        assert_eq!(get(&client, dead, "/").await.0, 503);
    }
    let (text, s) = scrape(&lb).await;
    promtool_check(&text);
    let req = |s: &[Sample], backend: &str, code: &str| {
        value(s, "lb_requests_total", &[("listener", "web"), ("pool", "app"), ("backend", backend), ("code", code)])
    };
    assert_eq!(req(&s, "a", "200"), Some(20.0));
    assert_eq!(req(&s, "b", "200"), Some(20.0));
    assert_eq!(req(&s, "a", "404").unwrap_or(0.0) + req(&s, "b", "404").unwrap_or(0.0), 5.0);
    let local = [("listener", "dead"), ("pool", "empty"), ("backend", ""), ("code", "503")];
    assert_eq!(value(&s, "lb_requests_total", &local), Some(3.0));
    // One duration observation per answered request.
    let dur = [("listener", "web"), ("pool", "app"), ("backend", "a")];
    let answered_by_a = req(&s, "a", "200").unwrap() + req(&s, "a", "404").unwrap_or(0.0);
    assert_eq!(value(&s, "lb_request_duration_seconds_count", &dur), Some(answered_by_a));
    let dur_local = [("listener", "dead"), ("pool", "empty"), ("backend", "")];
    assert_eq!(value(&s, "lb_request_duration_seconds_count", &dur_local), Some(3.0));
    assert_eq!(value(&s, "lb_backend_up", &[("pool", "app"), ("backend", "a")]), Some(1.0));
    assert_eq!(value(&s, "lb_backend_up", &[("pool", "empty"), ("backend", "nowhere")]), Some(0.0));
    assert_eq!(value(&s, "lb_backend_in_flight", &[("pool", "app"), ("backend", "a")]), Some(0.0));
    assert!(
        value(&s, "lb_health_checks_total", &[("pool", "app"), ("backend", "a"), ("result", "success")]).unwrap()
            >= 1.0
    );
    assert!(
        value(&s, "lb_health_checks_total", &[("pool", "empty"), ("backend", "nowhere"), ("result", "failure")])
            .unwrap()
            >= 1.0
    );
    // Exactly one more connection after one raw connection, and open back where it was.
    let conns = value(&s, "lb_connections_total", &[("listener", "web")]).unwrap();
    let open = value(&s, "lb_connections_open", &[("listener", "web")]).unwrap();
    assert!(conns >= 1.0 && open >= 1.0, "the keep-alive client's connection is counted");
    let resp = raw(web, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let (_, s) = scrape(&lb).await;
    assert_eq!(value(&s, "lb_connections_total", &[("listener", "web")]), Some(conns + 1.0));
    // The raw connection's task ends just after the response; wait for its gauge decrement.
    let mut open_now = None;
    for _ in 0..200 {
        let (_, s) = scrape(&lb).await;
        open_now = value(&s, "lb_connections_open", &[("listener", "web")]);
        if open_now == Some(open) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open_now, Some(open));
    assert_eq!(value(&s, "lb_config_reloads_total", &[("result", "success")]), Some(0.0));
    assert!(value(&s, "lb_config_last_reload_success_timestamp_seconds", &[]).unwrap() > 1.7e9);

    // Reload without b: a's counters continue, b's series are gone.
    std::fs::write(&path, config(&a, None)).unwrap();
    lb.reload(&path).await.unwrap();
    for _ in 0..10 {
        assert_eq!(get(&client, web, "/").await.0, 200);
    }
    // A broken file is counted as a failure and changes nothing.
    std::fs::write(&path, "[[listeners]]\nname = 1\n").unwrap();
    assert!(lb.reload(&path).await.is_err());
    let (text, s) = scrape(&lb).await;
    promtool_check(&text);
    assert_eq!(req(&s, "a", "200"), Some(30.0));
    assert!(s.iter().all(|x| x.labels.get("backend").map(String::as_str) != Some("b")), "b's series remain");
    assert_eq!(value(&s, "lb_config_reloads_total", &[("result", "success")]), Some(1.0));
    assert_eq!(value(&s, "lb_config_reloads_total", &[("result", "failure")]), Some(1.0));
    for family in [
        "lb_requests_total",
        "lb_request_duration_seconds_bucket",
        "lb_backend_up",
        "lb_backend_in_flight",
        "lb_health_checks_total",
        "lb_retries_total",
        "lb_connections_open",
        "lb_connections_total",
        "lb_tcp_bytes_total",
        "lb_config_reloads_total",
        "lb_config_last_reload_success_timestamp_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {}", family.trim_end_matches("_bucket"))), "{family} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_rises_under_load_and_returns_to_zero() {
    let a = TestBackend::start("a").await;
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[pools.app]\nstrategy = \"round_robin\"\n{}\n",
        backends_toml(&[&a])
    );
    let lb = start_lb(&toml).await;
    let web = lb.listener_addr("web").unwrap();
    let tasks: Vec<_> = (0..5).map(|_| tokio::spawn(async move { get(&client(), web, "/slow/400").await.0 })).collect();
    let labels = [("pool", "app"), ("backend", "a")];
    let mut peak = 0.0;
    for _ in 0..30 {
        let (_, s) = scrape(&lb).await;
        peak = f64::max(peak, value(&s, "lb_backend_in_flight", &labels).unwrap());
        if peak == 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(peak, 5.0);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (_, s) = scrape(&lb).await;
    assert_eq!(value(&s, "lb_backend_in_flight", &labels), Some(0.0));
    assert_eq!(
        value(&s, "lb_requests_total", &[("listener", "web"), ("pool", "app"), ("backend", "a"), ("code", "200")]),
        Some(5.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_counted_only_when_another_backend_is_tried() {
    let live = TestBackend::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let toml = format!(
        "[[listeners]]\nname = \"one\"\nbind = \"127.0.0.1:0\"\npool = \"alone\"\n\
         [[listeners]]\nname = \"two\"\nbind = \"127.0.0.1:0\"\npool = \"pair\"\n\
         [pools.alone]\nstrategy = \"round_robin\"\nretries = 2\nbackends = [{{ addr = \"{dead}\" }}]\n\
         [pools.pair]\nstrategy = \"round_robin\"\nretries = 2\n\
         backends = [{{ addr = \"{dead}\", name = \"dead\" }}, {{ addr = \"{}\", name = \"live\" }}]\n",
        live.addr
    );
    let lb = start_lb(&toml).await;
    // Alone: the only backend fails and there is nobody to retry on.
    assert_eq!(get(&client(), lb.listener_addr("one").unwrap(), "/").await.0, 502);
    // Pair, fresh cursor: dead first, then one retry on live.
    assert_eq!(get(&client(), lb.listener_addr("two").unwrap(), "/").await.1, "live");
    let samples = parse(&lb.metrics().render());
    assert_eq!(value(&samples, "lb_retries_total", &[("pool", "alone")]), Some(0.0));
    assert_eq!(value(&samples, "lb_retries_total", &[("pool", "pair")]), Some(1.0));
}

/// A reload that removes a listener and a pool deletes every series naming them: the
/// listener's requests on backends that stay, and the proxy's own answers for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_and_pool_leave_no_series_behind() {
    let a = TestBackend::start("a").await;
    let web = |name: &str, pool: &str| {
        format!("[[listeners]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\npool = \"{pool}\"\n\n")
    };
    let app = format!("[pools.app]\nstrategy = \"round_robin\"\n{}\n", backends_toml(&[&a]));
    let empty = "[pools.empty]\nstrategy = \"random\"\nbackends = [{ addr = \"127.0.0.1:9\", name = \"nowhere\" }]\n\
                 [pools.empty.health]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\n";
    let before = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n{}{}{}{app}{empty}",
        web("web", "app"),
        web("old", "app"),
        web("dead", "empty")
    );
    let mut lb = lb::app::Running::start(lb::config::parse(std::path::Path::new("lb.toml"), &before).unwrap().config)
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "empty").is_empty()).await);
    let client = client();
    for (listener, status) in [("web", 200), ("old", 200), ("dead", 503)] {
        assert_eq!(get(&client, lb.listener_addr(listener).unwrap(), "/").await.0, status);
    }
    let (_, s) = scrape(&lb).await;
    let naming = |s: &[Sample], key: &str, value: &str| {
        s.iter().filter(|x| x.labels.get(key).map(String::as_str) == Some(value)).count()
    };
    assert!(naming(&s, "listener", "old") > 0 && naming(&s, "listener", "dead") > 0 && naming(&s, "pool", "empty") > 0);

    let after = format!("[admin]\nbind = \"127.0.0.1:0\"\n\n{}{app}", web("web", "app"));
    lb.apply(lb::config::parse(std::path::Path::new("lb.toml"), &after).unwrap().config).unwrap();
    let (text, s) = scrape(&lb).await;
    promtool_check(&text);
    for (key, value) in [("listener", "old"), ("listener", "dead"), ("pool", "empty")] {
        assert_eq!(naming(&s, key, value), 0, "series with {key}=\"{value}\" remain:\n{text}");
    }
    let kept = [("listener", "web"), ("pool", "app"), ("backend", "a"), ("code", "200")];
    assert_eq!(value(&s, "lb_requests_total", &kept), Some(1.0));
}
