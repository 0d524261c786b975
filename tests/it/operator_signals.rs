//! What operators send by habit, through the real binary: `SIGUSR1` (logrotate's postrotate)
//! reopens access-log files, `SIGUSR2` is logged and ignored, an `LB_LOG` that does not parse
//! falls back to `info` with a word on stderr, and a reload that moves `[admin]` moves it.

use std::time::Duration;

use crate::support::lbproc::*;
use crate::support::*;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

async fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    wait_until(&format!("{n} lines in {}", path.display()), || lines(path).len() >= n).await;
    lines(path)
}

fn config(b: &TestBackend, extra: &str) -> String {
    format!("{extra}\n{}\n{}", listener("web", "127.0.0.1:0", "http", "app"), pool("app", "round_robin", &[b], ""))
}

async fn served(lb: &Lb, path: &str) {
    let addr = lb.listener_addr(0, "web").await;
    let mut c = Conn::open(addr).await;
    assert_eq!(c.get(path).await.map(|(s, _)| s), Ok(200), "{path}");
}

#[tokio::test]
async fn sigusr1_reopens_access_logs_as_logrotate_expects() {
    let b = TestBackend::start("a").await;
    let dir = temp_dir("usr1");
    let (log, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let toml =
        config(&b, "").replace("pool = \"app\"\n", &format!("pool = \"app\"\naccess_log = \"{}\"\n", log.display()));
    let lb = Lb::start(&toml, &[]).await;
    served(&lb, "/before").await;
    assert_eq!(wait_lines(&log, 1).await.len(), 1);
    // logrotate: move the file away, then tell lb.
    std::fs::rename(&log, &rotated).unwrap();
    let from = lb.mark();
    lb.signal("USR1");
    lb.wait_log(from, |l| l.contains("access log reopened")).await;
    served(&lb, "/after").await;
    let new = wait_lines(&log, 1).await;
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("path=\"/after\""), "{new:?}");
    let old = lines(&rotated);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].contains("path=\"/before\""), "{old:?}");
}

#[tokio::test]
async fn sigusr2_is_logged_and_ignored() {
    let b = TestBackend::start("a").await;
    let mut lb = Lb::start(&config(&b, ""), &[]).await;
    let from = lb.mark();
    lb.signal("USR2");
    lb.wait_log(from, |l| l.contains("SIGUSR2 ignored")).await;
    // USR1 without any access log is harmless too.
    lb.signal("USR1");
    lb.wait_log(from, |l| l.contains("SIGUSR1")).await;
    assert_eq!(lb.try_exit(), None, "lb exited:\n{}", lb.logs().join("\n"));
    served(&lb, "/still-serving").await;
}

#[tokio::test]
async fn an_lb_log_that_does_not_parse_falls_back_to_info() {
    let b = TestBackend::start("a").await;
    for bad in ["warning", "verbose", "lb=loud"] {
        // `start` waits for the info-level " started: " line: it is there only if the default
        // level was used.
        let lb = Lb::start_with_env(&config(&b, ""), &[], &[("LB_LOG", bad)]).await;
        let said = lb.logs().iter().any(|l| l.contains(&format!("LB_LOG={bad:?} is not a log filter")));
        assert!(said, "{bad}: {}", lb.logs().join("\n"));
    }
    // A good value still applies: at `error`, nothing is logged at start.
    let mut quiet = std::process::Command::new(env!("CARGO_BIN_EXE_lb"));
    let dir = temp_dir("loglevel");
    let path = dir.join("lb.toml");
    // A config that fails to start (port taken) logs an error at any level but `off`.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(&path, config(&b, "").replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string())).unwrap();
    let out = quiet.arg("--config").arg(&path).env("LB_LOG", "error").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot bind"), "{stderr}");
    assert!(!stderr.contains(" INFO "), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb"))
        .arg("--config")
        .arg(&path)
        .env("LB_LOG", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind"), "a bad LB_LOG must not silence fatal errors: {stderr}");
}

/// Where `lb` says its admin listener is, from the latest "admin listening" line after `from`.
async fn admin_addr(lb: &Lb, from: usize) -> std::net::SocketAddr {
    let line = lb.wait_log(from, |l| l.contains("admin listening")).await;
    let at = line.find("addr=Some(").map(|i| i + "addr=Some(".len()).expect("addr in line");
    line[at..].split(')').next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{line}"))
}

async fn healthz(addr: std::net::SocketAddr) -> Result<u16, String> {
    let mut c = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    use tokio::io::AsyncWriteExt;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.map_err(|e| e.to_string())?;
    let reply = read_raw_until(&mut c, "ok").await;
    reply.get(9..12).and_then(|s| s.parse().ok()).ok_or(reply)
}

#[tokio::test]
async fn a_reload_that_moves_admin_moves_it() {
    let b = TestBackend::start("a").await;
    let lb = Lb::start(&config(&b, "[admin]\nbind = \"127.0.0.1:0\"\n"), &[]).await;
    let old = admin_addr(&lb, 0).await;
    assert_eq!(healthz(old).await, Ok(200));
    let port = free_ports(1)[0];
    let from = lb.mark();
    let applied = lb.reload(&config(&b, &format!("[admin]\nbind = \"127.0.0.1:{port}\"\n"))).await.expect("reload");
    assert!(applied.contains(&format!("admin moved 127.0.0.1:0 -> 127.0.0.1:{port}")), "{applied}");
    let new = admin_addr(&lb, from).await;
    assert_eq!(new.port(), port);
    assert_eq!(healthz(new).await, Ok(200));
    wait_refused(old).await;
    // A move to an address that cannot be bound rejects the reload; the admin stays.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let _hold = std::net::TcpListener::bind(taken);
    let rejected = lb.reload(&config(&b, &format!("[admin]\nbind = \"{taken}\"\n"))).await;
    assert!(rejected.is_err(), "{rejected:?}");
    assert_eq!(healthz(new).await, Ok(200));
    // Removing [admin] closes it.
    let applied = lb.reload(&config(&b, "")).await.expect("reload");
    assert!(applied.contains("admin removed"), "{applied}");
    wait_refused(new).await;
}

/// Receives one datagram from the systemd notify socket (bounded wait).
async fn next_state(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, sock.recv(&mut buf)).await.expect("a notification").unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Under systemd (`Type=notify`), lb says `READY=1` once it serves, brackets a reload with
/// `RELOADING=1` and `READY=1` (a rejected reload too: lb serves on), and says `STOPPING=1` when
/// it starts to drain; to a socket path and to an abstract socket (`@name`, as in containers).
#[tokio::test]
async fn systemd_is_told_ready_reloading_and_stopping() {
    let b = TestBackend::start("a").await;
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let abstract_name = format!("lb-test-notify-{}", std::process::id());
    let by_path = tokio::net::UnixDatagram::bind(&path).unwrap();
    let by_name = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        std_sock.set_nonblocking(true).unwrap();
        tokio::net::UnixDatagram::from_std(std_sock).unwrap()
    };
    for (target, sock) in [(path.to_string_lossy().into_owned(), &by_path), (format!("@{abstract_name}"), &by_name)] {
        let toml = config(&b, "");
        let mut lb = Lb::start_with_env(&toml, &[], &[("LB_LOG", "info"), ("NOTIFY_SOCKET", &target)]).await;
        assert_eq!(next_state(sock).await, "READY=1", "{target}");
        served(&lb, "/ready").await;
        lb.reload(&toml.replace("round_robin", "random")).await.expect("reload applied");
        assert_eq!(next_state(sock).await, "RELOADING=1");
        assert_eq!(next_state(sock).await, "READY=1");
        lb.reload("not toml [").await.expect_err("a broken file is rejected");
        assert_eq!(next_state(sock).await, "RELOADING=1");
        assert_eq!(next_state(sock).await, "READY=1");
        lb.signal("TERM");
        assert_eq!(next_state(sock).await, "STOPPING=1");
        assert!(lb.wait_exit(PATIENCE).await.success());
    }
}

/// Swaps `link` to point at `target` atomically, as Kubernetes swaps a ConfigMap's `..data`.
fn swap_symlink(target: &str, link: &std::path::Path) {
    let name = link.file_name().unwrap().to_string_lossy();
    let tmp = link.with_file_name(format!("{name}.swap"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// With `--watch-config`, a changed file is reloaded as on SIGHUP, including the way a
/// Kubernetes ConfigMap changes (`lb.toml` → `..data/lb.toml`, `..data` swapped to a new
/// directory), and a broken one is rejected with the running configuration kept.
#[tokio::test]
async fn a_watched_config_reloads_when_a_configmap_swaps_it() {
    let b = TestBackend::start("a").await;
    let toml = config(&b, "");
    let lb = Lb::start(&toml, &["--watch-config"]).await;
    let dir = lb.config.parent().unwrap().to_path_buf();
    // Lay the file out as a ConfigMap volume does.
    for (version, text) in [("..v1", toml.clone()), ("..v2", toml.replace("round_robin", "random"))] {
        std::fs::create_dir_all(dir.join(version)).unwrap();
        std::fs::write(dir.join(version).join("lb.toml"), text).unwrap();
    }
    swap_symlink("..v1", &dir.join("..data"));
    let from = lb.mark();
    swap_symlink("..data/lb.toml", &lb.config);
    let line = lb.wait_log(from, |l| l.contains("reload applied") || l.contains("reload rejected")).await;
    assert!(line.contains("reload applied: no changes"), "{line}");
    // The ConfigMap is updated: ..data now leads to ..v2.
    let from = lb.mark();
    swap_symlink("..v2", &dir.join("..data"));
    let line = lb.wait_log(from, |l| l.contains("reload applied") || l.contains("reload rejected")).await;
    assert!(line.contains("strategy round_robin -> random"), "{line}");
    served(&lb, "/after-swap").await;
    // A broken update is rejected; lb serves on with what it had.
    std::fs::create_dir_all(dir.join("..v3")).unwrap();
    std::fs::write(dir.join("..v3").join("lb.toml"), "not toml [").unwrap();
    let from = lb.mark();
    swap_symlink("..v3", &dir.join("..data"));
    lb.wait_log(from, |l| l.contains("reload rejected")).await;
    served(&lb, "/after-broken").await;
}
