//! What `deploy/` ships is run, not just shipped: the systemd unit through `systemd-analyze
//! verify`, the Prometheus alert rules through `promtool check rules` and `promtool test rules`
//! with their fixtures. Each tool is required where CI says so (`LB_REQUIRE_SYSTEMD`,
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
