//! `lb --check` through the real binary: a good file passes with a summary; each kind of bad
//! file fails with `PATH:LINE:COL: message` naming the problem, and a non-zero exit.

use std::process::Command;

use crate::support::lbproc::check_config;
use crate::support::temp_dir;

const GOOD: &str = r#"
[admin]
bind = "127.0.0.1:9900"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
pool = "app"

[pools.app]
strategy = "weighted"
backends = [
  { addr = "127.0.0.1:9001" },
  { addr = "127.0.0.1:9002", weight = 3, name = "b" },
]
connect_timeout = "2s"

[pools.app.health]
kind = "http"
path = "/health"
interval = "2s"
"#;

/// Asserts that `toml` fails `--check` with `PATH:LINE:COL:` and a message containing `needle`.
fn rejects(name: &str, toml: &str, line: usize, needle: &str) {
    let out = check_config(toml);
    assert!(!out.ok, "{name}: accepted\n{}", out.stdout);
    let prefix = format!("{}:{line}:", out.path);
    assert!(out.stderr.starts_with(&prefix), "{name}: expected location {prefix}, got: {}", out.stderr);
    assert!(out.stderr.contains(needle), "{name}: expected {needle:?} in: {}", out.stderr);
}

#[test]
fn a_good_file_passes_with_a_summary() {
    let out = check_config(GOOD);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!(
            "{}: OK: 1 listener(s): web (http 127.0.0.1:8080 -> app); 1 pool(s), 2 backend(s); admin on 127.0.0.1:9900",
            out.path
        )
    );
}

#[test]
fn arrays_of_tables_are_the_same_shape() {
    let toml = "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n\n[pools.app]\nstrategy = \"round_robin\"\n\n[[pools.app.backends]]\naddr = \"127.0.0.1:9001\"\n\n[[pools.app.backends]]\naddr = \"127.0.0.1:9002\"\n";
    let out = check_config(toml);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("2 backend(s)"), "{}", out.stdout);
}

#[test]
fn syntax_errors_have_line_and_column() {
    rejects("syntax", "[[listeners]]\nname = \"web\nbind = 1\n", 2, "");
}

#[test]
fn unknown_keys_are_named() {
    rejects("unknown-key", &GOOD.replace("connect_timeout", "conect_timeout"), 16, "unknown field `conect_timeout`");
}

#[test]
fn unknown_strategy_is_named() {
    rejects("strategy", &GOOD.replace("\"weighted\"", "\"fastest\""), 11, "unknown variant `fastest`");
}

#[test]
fn listener_naming_a_missing_pool() {
    rejects("missing-pool", &GOOD.replace("pool = \"app\"", "pool = \"api\""), 8, "pool \"api\", which is not defined");
}

#[test]
fn duplicate_listener_names() {
    let toml = format!("{GOOD}\n[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:8081\"\npool = \"app\"\n");
    rejects("dup-listener", &toml, 24, "duplicate listener name \"web\"");
}

#[test]
fn duplicate_binds() {
    let toml = format!("{GOOD}\n[[listeners]]\nname = \"other\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n");
    rejects("dup-bind", &toml, 25, "binds 127.0.0.1:8080 which web already binds");
    // A wildcard on the same port cannot be bound next to it either.
    for wild in ["0.0.0.0:8080", "[::]:8080"] {
        let toml = format!("{GOOD}\n[[listeners]]\nname = \"other\"\nbind = \"{wild}\"\npool = \"app\"\n");
        rejects("wild-bind", &toml, 25, &format!("binds {wild}, which overlaps 127.0.0.1:8080 of web (same port)"));
    }
    // Different ports, and an IPv6 address beside an IPv4 wildcard, are fine.
    let toml = format!("{GOOD}\n[[listeners]]\nname = \"other\"\nbind = \"0.0.0.0:8081\"\npool = \"app\"\n");
    assert!(check_config(&toml).ok);
}

/// `:80` and `*:80` are every IPv4 address, as nginx's `listen 80` and HAProxy's `bind :80`;
/// a port alone is refused with what to write instead.
#[test]
fn port_only_binds() {
    for bind in [":8085", "*:8085"] {
        let toml = GOOD.replace("bind = \"127.0.0.1:8080\"", &format!("bind = \"{bind}\""));
        let out = check_config(&toml);
        assert!(out.ok, "{bind}: {}", out.stderr);
        assert!(out.stdout.contains("0.0.0.0:8085"), "{bind}: {}", out.stdout);
    }
    let toml = GOOD.replace("bind = \"127.0.0.1:8080\"", "bind = \"8080\"");
    rejects("port-alone", &toml, 7, "write \":8080\" or \"0.0.0.0:8080\"");
    let toml = GOOD.replace("bind = \"127.0.0.1:9900\"", "bind = \"*:99999\"");
    rejects("star-bad-port", &toml, 3, "invalid admin bind address \"*:99999\"");
}

#[test]
fn zero_backends() {
    let toml = "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\npool = \"app\"\n[pools.app]\nstrategy = \"random\"\nbackends = []\n";
    rejects("zero", toml, 7, "pool \"app\" has no backends");
}

#[test]
fn weight_zero_and_bad_addresses() {
    rejects("weight0", &GOOD.replace("weight = 3", "weight = 0"), 14, "weight must be at least 1");
    rejects("bad-addr", &GOOD.replace("127.0.0.1:9001", "127.0.0.1"), 13, "invalid backend address \"127.0.0.1\"");
    rejects("bad-port", &GOOD.replace("127.0.0.1:9001", "127.0.0.1:99999"), 13, "invalid backend address");
    rejects("dup-backend", &GOOD.replace("127.0.0.1:9002", "127.0.0.1:9001"), 14, "duplicate backend 127.0.0.1:9001");
}

#[test]
fn durations_that_do_not_parse() {
    rejects(
        "duration",
        &GOOD.replace("\"2s\"\n\n[pools", "\"2 parsecs\"\n\n[pools"),
        16,
        "invalid duration \"2 parsecs\"",
    );
    rejects(
        "zero-duration",
        &GOOD.replace("interval = \"2s\"", "interval = \"0s\""),
        21,
        "interval must be greater than 0",
    );
    // Past what a deadline can hold: refused here, not a panic at the first request.
    rejects(
        "huge-duration",
        &GOOD.replace("interval = \"2s\"", "interval = \"300000000000years\""),
        21,
        "interval must be at most 365 days",
    );
}

#[test]
fn unreadable_tls_files() {
    let toml =
        GOOD.replace("pool = \"app\"", "pool = \"app\"\ntls = [{ cert = \"missing.pem\", key = \"missing.key\" }]");
    rejects("tls", &toml, 9, "cannot read TLS certificate file");
}

#[test]
fn health_settings_are_validated() {
    rejects("rise0", &format!("{GOOD}rise = 0\n"), 22, "rise must be at least 1");
    rejects("kind", &GOOD.replace("kind = \"http\"", "kind = \"icmp\""), 19, "unknown variant `icmp`");
}

#[test]
fn round_robin_with_weights_warns_but_passes() {
    let out = check_config(&GOOD.replace("\"weighted\"", "\"round_robin\""));
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!("{}:11:12: warning: pool \"app\": round_robin ignores weights", out.path)),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lb")).args(["--config", "/nonexistent/lb.toml", "--check"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("/nonexistent/lb.toml: cannot read config"));
}

#[test]
fn version_and_help() {
    let v = Command::new(env!("CARGO_BIN_EXE_lb")).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("lb {}", env!("CARGO_PKG_VERSION")));
    let h = Command::new(env!("CARGO_BIN_EXE_lb")).arg("--help").output().unwrap();
    assert!(h.status.success());
    let help = String::from_utf8_lossy(&h.stdout);
    assert!(help.contains("--config") && help.contains("--check") && help.contains("SIGHUP"), "{help}");
}

/// `lb completions SHELL` prints a script the shell accepts, naming every flag; `lb man` a man
/// page groff renders without a warning (when groff is here). Both come from the same clap
/// definition as `--help`, so they cannot drift from it.
#[test]
fn completions_and_man_page() {
    let lb = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lb")).args(args).output().unwrap();
        assert!(out.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let flags = ["--config", "--check", "--log-format", "--shutdown-timeout", "--workers"];
    for shell in ["bash", "zsh", "fish"] {
        let script = lb(&["completions", shell]);
        for flag in flags {
            assert!(script.contains(flag.trim_start_matches('-')), "{shell}: no {flag}");
        }
    }
    let dir = temp_dir("completions");
    let bash = dir.join("lb.bash");
    std::fs::write(&bash, lb(&["completions", "bash"])).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    let man = lb(&["man"]);
    assert!(man.contains(".TH lb 1"), "{man}");
    for flag in flags {
        assert!(man.contains(&flag.replace('-', "\\-")), "man page without {flag}");
    }
    if Command::new("groff").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let page = dir.join("lb.1");
        std::fs::write(&page, &man).unwrap();
        let out = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&page).output().unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "groff: {}", String::from_utf8_lossy(&out.stderr));
    }
}
