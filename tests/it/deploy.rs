//! What `deploy/` ships is run, not just shipped: the systemd unit through `systemd-analyze
//! verify`, the Prometheus alert rules through `promtool check rules` and `promtool test rules`
//! with their fixtures, the Kubernetes manifests through `kubernetes-validate`, and every query
//! of the Grafana dashboard against a real Prometheus scraping a real lb. Each tool is required where CI says so (`LB_REQUIRE_SYSTEMD`,
//! `LB_REQUIRE_PROMTOOL`) and skipped with a word elsewhere.

use std::process::Command;

use crate::support::*;

/// Whether `tool` runs here; panics when `require` is set and it does not.
fn have(tool: &str, require: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os(require).is_none(), "{tool} is required here ({require})");
        eprintln!("skipped: no {tool}");
    }
    ok
}

fn deploy(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// The shipped unit (`deploy/systemd/lb.service`) passes `systemd-analyze verify` without a
/// word, with its binary paths pointed at the binary under test. Skipped when systemd-analyze
/// is missing, unless `LB_REQUIRE_SYSTEMD=1` (CI) says it must run.
#[test]
fn the_systemd_unit_verifies_clean() {
    let have = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have {
        assert!(std::env::var_os("LB_REQUIRE_SYSTEMD").is_none(), "systemd-analyze is required here");
        eprintln!("skipped: no systemd-analyze");
        return;
    }
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/lb.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let dir = temp_dir("unit");
    let path = dir.join("lb.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/lb", env!("CARGO_BIN_EXE_lb"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "systemd-analyze had something to say:\n{said}");
}

/// The alert rules load, and each alert fires on the fixture series meant to fire it and on
/// none of the healthy ones (`deploy/prometheus/lb-alerts.test.yml`).
#[test]
fn the_alert_rules_pass_their_tests() {
    if !have("promtool", "LB_REQUIRE_PROMTOOL") {
        return;
    }
    for args in [&["check", "rules", "lb-alerts.yml"][..], &["test", "rules", "lb-alerts.test.yml"]] {
        let out = Command::new("promtool").args(args).current_dir(deploy("prometheus")).output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool {args:?}:\n{said}");
        assert!(said.contains("SUCCESS"), "promtool {args:?}:\n{said}");
    }
}

/// The Kubernetes manifests pass `kubernetes-validate --strict` against the API's schemas, and
/// the lb.toml inside the ConfigMap passes `lb --check` (with the cluster's Service name, which
/// only the cluster's DNS knows, read as 127.0.0.1), with its admin listener on the port the
/// probes ask.
#[test]
fn the_kubernetes_manifests_validate() {
    let manifests = deploy("kubernetes/lb.yaml");
    let text = std::fs::read_to_string(&manifests).unwrap();
    let toml: String = text
        .split("  lb.toml: |\n")
        .nth(1)
        .expect("a ConfigMap with lb.toml")
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("bind = \"0.0.0.0:9900\"") && text.contains("containerPort: 9900"), "{toml}");
    assert!(text.matches("httpGet: { path: /healthz, port: admin }").count() == 2);
    let out = crate::support::lbproc::check_config(&toml.replace("app.default.svc.cluster.local", "127.0.0.1"));
    assert!(out.ok, "{}", out.stderr);
    if !have("kubernetes-validate", "LB_REQUIRE_KUBERNETES_VALIDATE") {
        return;
    }
    let out = Command::new("kubernetes-validate").arg("--strict").arg(&manifests).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for kind in ["configmap/lb-config", "deployment/lb", "service/lb", "poddisruptionbudget/lb"] {
        assert!(said.contains(&format!("passed for resource {kind}")), "{kind}: {said}");
    }
}

/// Percent-encodes a query for a URL (every byte but ASCII letters and digits).
fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Stops the Prometheus server when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every query of the Grafana dashboard (`deploy/grafana/lb.json`) returns data from a real
/// Prometheus server that scrapes a real lb under traffic (with `$instance` as "all").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_return_data_from_a_real_prometheus() {
    if !have("prometheus", "LB_REQUIRE_PROMETHEUS") {
        return;
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/lb.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().replace("$instance", ".*"))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");

    let b = TestBackend::start("a").await;
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\n{}\n[pools.app.health]\nkind = \"http\"\npath = \"/\"\ninterval = \"250ms\"\n",
        backends_toml(&[&b])
    );
    let lb = start_lb(&toml).await;
    let (web, admin) = (lb.listener_addr("web").unwrap(), lb.admin_addr().unwrap());
    let traffic = tokio::spawn(async move {
        let c = client();
        loop {
            let _ = get(&c, web, "/dashboard").await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });

    let dir = temp_dir("prometheus");
    let port = free_ports(1)[0];
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: lb\n    static_configs:\n      - targets: [\"{admin}\"]\n"),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Each query is asked until it has data: rates need a few scrapes first.
    let deadline = tokio::time::Instant::now() + PATIENCE * 4;
    let c = client();
    for expr in &exprs {
        loop {
            let answer = tokio::time::timeout(PATIENCE, async {
                let uri: http::Uri = format!("http://{api}/api/v1/query?query={}", url_encode(expr)).parse().unwrap();
                let resp = c.get(uri).await.ok()?;
                let body = http_body_util::BodyExt::collect(resp.into_body()).await.ok()?.to_bytes();
                serde_json::from_slice::<serde_json::Value>(&body).ok()
            })
            .await
            .ok()
            .flatten();
            if let Some(v) = &answer {
                assert_eq!(v["status"], "success", "{expr}: {v}");
                if v["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
                    break;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no data for {expr}: {answer:?}");
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
    traffic.abort();
}
