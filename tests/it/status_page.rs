//! GET /status and /status.json on the admin listener: the exact JSON shape and values, a
//! backend going down and back, reloads, escaping, no external assets, and the page itself in
//! headless Chromium (the DOM after its script ran: every backend row, states, a backend going
//! down).
//!
//! Chromium: `.ci/run` installs Debian's `chromium` package and sets `LB_REQUIRE_CHROMIUM=1`, so
//! CI fails without it. Elsewhere, a missing Chromium prints a notice and the browser test checks
//! the server-rendered page over plain HTTP instead. `LB_CHROMIUM=/path/to/chrome` picks another
//! binary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::*;

/// Probes every 100 ms; down after 2 failures, up after 1 success.
fn config(pool: &[&TestBackend], side: &[&TestBackend]) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
pool = "app"

[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
mode = "tcp"
pool = "side"

[pools.app]
strategy = "weighted"
{}

[pools.app.health]
kind = "http"
path = "/health"
interval = "100ms"
timeout = "500ms"
rise = 1
fall = 2

[pools.side]
strategy = "least_connections"
{}
"#,
        weighted_backends_toml(pool),
        backends_toml(side),
    )
}

/// Like `backends_toml`, with weights 1, 2, 3, ...
fn weighted_backends_toml(backends: &[&TestBackend]) -> String {
    let items: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ addr = \"{}\", name = \"{}\", weight = {} }}", b.addr, b.name, i + 1))
        .collect();
    format!("backends = [{}]", items.join(", "))
}

async fn status_json(admin: SocketAddr) -> Value {
    let (status, body, headers) = get(&client(), admin, "/status.json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "no-store");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status.json is not JSON ({e}): {body}"))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().map(String::as_str).collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn pool<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["pools"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no pool {name}"))
}

fn backend<'a>(s: &'a Value, pool_name: &str, name: &str) -> &'a Value {
    pool(s, pool_name)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {pool_name}"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Polls `/status.json` until `cond` holds (5 s at most) and returns the last answer.
async fn json_until(admin: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = status_json(admin).await;
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last /status.json: {s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_exact_fields_and_values() {
    let (a, b, c) = (TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await);
    let s1 = TestBackend::start("s1").await;
    let started = now_ms();
    let lb = start_lb(&config(&[&a, &b, &c], &[&s1])).await;
    let admin = lb.admin_addr().unwrap();
    let web = lb.listener_addr("web").unwrap();
    // Every backend of the checked pool has been probed (and the rate sampler has started).
    json_until(admin, "a probe of every backend", |s| {
        pool(s, "app")["backends"].as_array().unwrap().iter().all(|b| b["last_check"]["result"] == "success")
    })
    .await;
    let http = client();
    for _ in 0..12 {
        assert_eq!(get(&http, web, "/").await.0, 200);
    }
    let s = status_json(admin).await;

    assert_eq!(keys(&s), set(&["now_ms", "refresh_ms", "rate_window_ms", "listeners", "pools"]));
    let now = s["now_ms"].as_u64().unwrap();
    assert!(now >= started && now <= now_ms(), "now_ms {now} is the server's clock");
    assert_eq!(s["refresh_ms"], 2000);
    assert_eq!(s["rate_window_ms"], 10000);
    assert_eq!(
        s["listeners"],
        json!([
            { "name": "web", "bind": web.to_string(), "mode": "http", "pool": "app", "tls": false },
            { "name": "raw", "bind": lb.listener_addr("raw").unwrap().to_string(), "mode": "tcp", "pool": "side", "tls": false },
        ]),
        "listeners in config order, with the bound (not the configured :0) address"
    );

    let names: Vec<&str> = s["pools"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["app", "side"], "pools sorted by name");
    let app = pool(&s, "app");
    assert_eq!(keys(app), set(&["name", "strategy", "health", "backends_up", "backends"]));
    assert_eq!(app["strategy"], "weighted");
    assert_eq!(
        app["health"],
        json!({ "kind": "http", "path": "/health", "interval_ms": 100, "timeout_ms": 500, "rise": 1, "fall": 2 })
    );
    assert_eq!(app["backends_up"], 3);
    let backend_keys = set(&[
        "name",
        "addr",
        "state",
        "down_by",
        "in_rotation",
        "since_ms",
        "transitions",
        "last_check",
        "weight",
        "in_flight",
        "requests_total",
        "requests_per_second",
        "error_ratio",
    ]);
    let order: Vec<&str> = app["backends"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(order, ["a", "b", "c"], "backends in config order");
    let mut total = 0;
    for (i, tb) in [&a, &b, &c].into_iter().enumerate() {
        let j = backend(&s, "app", &tb.name);
        assert_eq!(keys(j), backend_keys);
        assert_eq!(j["addr"], tb.addr.to_string());
        assert_eq!(j["state"], "up");
        assert_eq!((&j["down_by"], &j["in_rotation"]), (&Value::Null, &json!(true)));
        assert_eq!(j["weight"], i + 1);
        assert_eq!(j["in_flight"], 0);
        assert_eq!(j["transitions"], 0);
        assert_eq!(j["last_check"], json!({ "result": "success", "reason": "" }));
        let since = j["since_ms"].as_u64().unwrap();
        assert!(since >= started && since <= now, "since_ms {since}: when lb started using it");
        assert_eq!(j["requests_total"], tb.hits() as u64, "{} answered {} requests", tb.name, tb.hits());
        total += j["requests_total"].as_u64().unwrap();
        assert!(j["requests_per_second"].as_f64().unwrap() >= 0.0);
    }
    assert_eq!(total, 12);
    // Weighted 1:2:3 over 12 picks: exact shares.
    assert_eq!([a.hits(), b.hits(), c.hits()], [2, 4, 6]);

    let side = pool(&s, "side");
    assert_eq!(side["strategy"], "least_connections");
    assert_eq!(side["health"], Value::Null, "no [health]: null");
    let j = backend(&s, "side", "s1");
    assert_eq!(keys(j), backend_keys);
    assert_eq!(j["last_check"], Value::Null, "no active check: null");
    assert_eq!(j["state"], "up");
    assert_eq!(j["requests_total"], 0);
    assert_eq!(j["requests_per_second"], 0.0);

    // Traffic shows as a rate (once the sampler, which samples every second, has a total from
    // before some of it).
    let rate = |s: &Value| -> f64 {
        pool(s, "app")["backends"].as_array().unwrap().iter().map(|b| b["requests_per_second"].as_f64().unwrap()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for _ in 0..5 {
            get(&http, web, "/").await;
        }
        let s = status_json(admin).await;
        if rate(&s) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "requests never showed as a rate: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A backend that answers every request with a 500 is up as far as its health check goes, but
/// the page says at a glance that its answers are errors: its 5xx share (over the last rate
/// window) is 100% in `/status.json` and in red on the page, while a healthy neighbour's is 0%;
/// one that answered nothing shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_each_backends_5xx_share() {
    let (ok, failing, idle) =
        (TestBackend::start("ok").await, TestBackend::start("failing").await, TestBackend::start("idle").await);
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [[listeners]]\nname = \"side\"\nbind = \"127.0.0.1:0\"\npool = \"spare\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{}\n\n[pools.spare]\nstrategy = \"round_robin\"\n{}\n",
        backends_toml(&[&ok, &failing]),
        backends_toml(&[&idle])
    );
    let lb = start_lb(&toml).await;
    let (web, admin) = (lb.listener_addr("web").unwrap(), lb.admin_addr().unwrap());
    let http = client();
    // Round robin: the two backends take turns, so one of them gets every /status/500 (which
    // makes it answer 500) and the other every /fine.
    let shares = |s: &Value| -> Vec<Option<f64>> {
        ["ok", "failing"].iter().map(|n| backend(s, "app", n)["error_ratio"].as_f64()).collect()
    };
    let s = json_until(admin, "both shares measured", |s| {
        let mut got = shares(s);
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        got == [Some(0.0), Some(1.0)]
    });
    let traffic = async {
        for _ in 0..40 {
            get(&http, web, "/status/500").await;
            get(&http, web, "/fine").await;
        }
    };
    let (s, ()) = tokio::join!(s, traffic);
    assert_eq!(backend(&s, "spare", "idle")["error_ratio"], Value::Null, "answered nothing: no share");
    let (bad, good) = if shares(&s)[0] == Some(1.0) { ("ok", "failing") } else { ("failing", "ok") };
    let (_, html, _) = get(&http, admin, "/status").await;
    let row = |name: &str| {
        html.lines()
            .find(|l| l.contains(&format!("data-backend=\"{name}\"")))
            .unwrap_or_else(|| panic!("no row for {name}"))
    };
    assert!(row(bad).contains("<td class=\"num bad\">100%</td>"), "{}", row(bad));
    assert!(row(good).contains("<td class=\"num\">0%</td>"), "{}", row(good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_a_backend_going_down_and_back() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let s1 = TestBackend::start("s1").await;
    let lb = start_lb(&config(&[&a, &b], &[&s1])).await;
    let admin = lb.admin_addr().unwrap();
    json_until(admin, "b probed", |s| backend(s, "app", "b")["last_check"]["result"] == "success").await;

    let before = now_ms();
    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(5), || up_names(&lb, "app") == ["a"]).await, "lb takes b out");
    let s = status_json(admin).await;
    let j = backend(&s, "app", "b");
    assert_eq!(j["state"], "down");
    assert_eq!((&j["down_by"], &j["in_rotation"]), (&json!("check"), &json!(false)));
    assert_eq!(j["last_check"], json!({ "result": "failure", "reason": "status 503" }));
    assert_eq!(j["transitions"], 1);
    let since = j["since_ms"].as_u64().unwrap();
    assert!(since >= before && since <= s["now_ms"].as_u64().unwrap(), "since_ms is the time it went down");
    assert_eq!(pool(&s, "app")["backends_up"], 1);
    assert_eq!(backend(&s, "app", "a")["state"], "up");

    b.set_healthy(true);
    let s = json_until(admin, "b back up", |s| backend(s, "app", "b")["state"] == "up").await;
    let j = backend(&s, "app", "b");
    assert_eq!(j["transitions"], 2);
    assert_eq!(j["last_check"], json!({ "result": "success", "reason": "" }));
    assert!(j["since_ms"].as_u64().unwrap() >= since);
    assert_eq!(pool(&s, "app")["backends_up"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_a_reload() {
    let (a, b, c) = (TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await);
    let s1 = TestBackend::start("s1").await;
    let mut lb = start_lb(&config(&[&a, &b], &[&s1])).await;
    let admin = lb.admin_addr().unwrap();
    let web = lb.listener_addr("web").unwrap();
    for _ in 0..3 {
        get(&client(), web, "/").await;
    }
    let a_before = backend(&status_json(admin).await, "app", "a")["requests_total"].as_u64().unwrap();
    assert_eq!(a_before, a.hits() as u64);

    // b goes, c comes, the tcp listener goes, a second http listener comes.
    let text = config(&[&a, &c], &[&s1]).replace("name = \"raw\"", "name = \"web2\"").replace("mode = \"tcp\"", "");
    let new = lb::config::parse(Path::new("lb.toml"), &text).unwrap().config;
    lb.apply(new).unwrap();

    let s = status_json(admin).await;
    assert_eq!(
        s["listeners"],
        json!([
            { "name": "web", "bind": web.to_string(), "mode": "http", "pool": "app", "tls": false },
            { "name": "web2", "bind": lb.listener_addr("web2").unwrap().to_string(), "mode": "http", "pool": "side", "tls": false },
        ])
    );
    let names: Vec<&str> =
        pool(&s, "app")["backends"].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(backend(&s, "app", "a")["requests_total"], a_before, "a kept backend keeps its counts");
    assert_eq!(backend(&s, "app", "c")["weight"], 2, "c took b's place and weight");
}

// ---------------------------------------------------------------------------------------------
// The HTML page.

/// One `<tr>` of a page: its attributes (entities decoded) and everything up to `</tr>`.
#[derive(Debug)]
struct Row {
    attrs: BTreeMap<String, String>,
    inner: String,
}

fn decode(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// Every table row of `html` with its attributes. Understands quoted attribute values holding
/// `>` (as Chromium serializes them).
fn all_rows(html: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<tr") {
        rest = &rest[start + 3..];
        let mut attrs = BTreeMap::new();
        let bytes = rest.as_bytes();
        let mut i = 0;
        loop {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'>' {
                break;
            }
            let name_start = i;
            while i < bytes.len() && !matches!(bytes[i], b'=' | b'>' | b' ') {
                i += 1;
            }
            let name = rest[name_start..i].to_owned();
            let mut value = String::new();
            if i < bytes.len() && bytes[i] == b'=' {
                let quote = bytes[i + 1];
                let end = rest[i + 2..].find(quote as char).expect("closing quote") + i + 2;
                value = decode(&rest[i + 2..end]);
                i = end + 1;
            }
            attrs.insert(name, value);
        }
        let body = &rest[i.min(rest.len())..];
        let inner = body[..body.find("</tr>").unwrap_or(body.len())].to_owned();
        out.push(Row { attrs, inner });
    }
    out
}

fn backend_rows(html: &str) -> BTreeMap<String, Row> {
    all_rows(html).into_iter().filter_map(|r| Some((r.attrs.get("data-backend")?.clone(), r))).collect()
}

fn state_of(html: &str, name: &str) -> String {
    let rows = backend_rows(html);
    let row = rows.get(name).unwrap_or_else(|| panic!("no row for backend {name:?} in:\n{html}"));
    row.attrs["data-state"].clone()
}

/// The value of `attr` on `<body>`.
fn body_attr(html: &str, attr: &str) -> Option<String> {
    let body = &html[html.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let at = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(tag[at..at + tag[at..].find('"')?].to_owned())
}

/// The backend names of the page tests: one of them is markup, to prove every name is inserted
/// as text.
const ODD: &str = "x<i>\"&'y";

fn odd_config(pool: &[&TestBackend], odd: &TestBackend) -> String {
    config(pool, &[])
        .replace("backends = []", &format!("backends = [{{ addr = \"{}\", name = {} }}]", odd.addr, toml_string(ODD)))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What both the server-rendered page and the page after its script ran must show.
fn assert_page(html: &str, states: &[(&str, &str)]) {
    let rows = backend_rows(html);
    let names: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    let mut expected: BTreeSet<&str> = states.iter().map(|(n, _)| *n).collect();
    expected.insert(ODD);
    assert_eq!(names, expected, "one row per backend");
    for (name, state) in states {
        assert_eq!(state_of(html, name), *state, "backend {name}");
        let row = &rows[*name];
        let shown = if *state == "up" { ">UP<" } else { ">DOWN<" };
        assert!(row.inner.contains(shown), "{name} row says {shown}: {}", row.inner);
        assert_eq!(row.attrs.get("class").map(String::as_str), Some(*state), "row styled {state}");
    }
    assert_eq!(state_of(html, ODD), "up");
    // The odd name is text: escaped once, never an element.
    let odd_row = &rows[ODD].inner;
    assert!(odd_row.contains("x&lt;i&gt;"), "name inserted as text: {odd_row}");
    assert!(!odd_row.contains("<i>"), "no markup from names: {odd_row}");
    let listeners: Vec<String> = all_rows(html).iter().filter_map(|r| r.attrs.get("data-listener").cloned()).collect();
    assert_eq!(listeners, ["web", "raw"]);
    assert!(html.contains("weighted") && html.contains("least_connections"), "strategies shown");
    assert!(html.contains("health check: http GET /health every 100ms, timeout 500ms, rise 1, fall 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_is_complete_without_javascript_and_self_contained() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let odd = TestBackend::start("odd").await;
    let lb = start_lb(&odd_config(&[&a, &b], &odd)).await;
    let admin = lb.admin_addr().unwrap();

    let (status, html, headers) = get(&client(), admin, "/status").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none';") && csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(body_attr(&html, "data-source").as_deref(), Some("server"));
    assert_page(&html, &[("a", "up"), ("b", "up")]);
    // No external assets: no src attributes, no remote or protocol-relative links, no CSS urls.
    for needle in [" src=", "http://", "https://", "//cdn", "url(", "@import", "<link", "<img"] {
        assert!(!html.contains(needle), "the page references {needle:?}");
    }
    assert!(html.contains("<noscript><meta http-equiv=\"refresh\""), "refreshes itself without JS");
    assert!(html.contains("fetch(\"/status.json\""), "refreshes itself with JS");

    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(5), || up_names(&lb, "app") == ["a"]).await);
    let (_, html, _) = get(&client(), admin, "/status").await;
    assert_page(&html, &[("a", "up"), ("b", "down")]);
    assert!(backend_rows(&html)["b"].inner.contains("status 503"), "last check reason shown");

    // HEAD works, other methods do not.
    let head =
        raw(admin, b"HEAD /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Duration::from_secs(2)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let post = raw(
        admin,
        b"POST /status.json HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium.

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LB_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome-stable", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

const CHROMIUM_LIMIT: Duration = Duration::from_secs(30);

/// Loads `url` in headless Chromium, lets its scripts run for 3 s of virtual time, and returns
/// the serialized DOM. Kills the browser (its whole process group) if it runs over 30 s.
fn dump_dom(chromium: &Path, url: &str) -> String {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("status-page");
    let profile = dir.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    // Files, not pipes: helper processes that outlive the browser cannot block the reads.
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-breakpad",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=3000", "--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let deadline = Instant::now() + CHROMIUM_LIMIT;
    let status = loop {
        match child.try_wait().expect("wait for chromium") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => {
                // The group is the browser and its helpers, all started here.
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
                let _ = child.kill();
                let _ = child.wait();
                let err = std::fs::read_to_string(&err_path).unwrap_or_default();
                panic!("chromium ran over {CHROMIUM_LIMIT:?} and was killed; stderr:\n{err}");
            }
        }
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success() && out.contains("</html>"), "chromium failed ({status}); stderr:\n{err}\nstdout:\n{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let (a, b, c) = (TestBackend::start("a").await, TestBackend::start("b").await, TestBackend::start("c").await);
    let odd = TestBackend::start("odd").await;
    let lb = start_lb(&odd_config(&[&a, &b, &c], &odd)).await;
    let admin = lb.admin_addr().unwrap();
    let url = format!("http://{admin}/status");

    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var("LB_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "LB_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium, or set LB_CHROMIUM)"
        );
        eprintln!("NOTICE: chromium not found; checking the server-rendered page over plain HTTP instead");
        let (_, html, _) = get(&client(), admin, "/status").await;
        assert_page(&html, &[("a", "up"), ("b", "up"), ("c", "up")]);
        b.set_healthy(false);
        assert!(eventually(Duration::from_secs(5), || up_names(&lb, "app") == ["a", "c"]).await);
        let (_, html, _) = get(&client(), admin, "/status").await;
        assert_page(&html, &[("a", "up"), ("b", "down"), ("c", "up")]);
        return;
    };

    let load = |chromium: PathBuf, url: String| tokio::task::spawn_blocking(move || dump_dom(&chromium, &url));
    let dom = load(chromium.clone(), url.clone()).await.unwrap();
    // The script fetched /status.json and re-rendered the tables itself.
    assert_eq!(body_attr(&dom, "data-source").as_deref(), Some("live"), "the page's script ran:\n{dom}");
    assert!(dom.contains("live, refreshes every 2s"), "{dom}");
    assert_page(&dom, &[("a", "up"), ("b", "up"), ("c", "up")]);

    b.set_healthy(false);
    assert!(eventually(Duration::from_secs(5), || up_names(&lb, "app") == ["a", "c"]).await, "lb takes b out");
    let dom = load(chromium, url).await.unwrap();
    assert_eq!(body_attr(&dom, "data-source").as_deref(), Some("live"));
    assert_page(&dom, &[("a", "up"), ("b", "down"), ("c", "up")]);
    let rows = backend_rows(&dom);
    assert!(rows["b"].inner.contains("status 503"), "the failed check's reason: {}", rows["b"].inner);
    assert!(dom.contains("2 of 3 up"), "pool summary");
}
