//! The real `lb` binary as a child process, for tests that need real signals: a config file in
//! a private temp dir, stderr (the logs) collected line by line, signals sent with `kill(1)`,
//! and helpers to wait on logs, ports and exit. Every wait has a deadline; nothing relies on a
//! fixed sleep. The child is SIGKILLed when the guard drops, whatever happened to the test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{temp_dir, TempDir, PATIENCE};

/// A running `lb` child process.
pub struct Lb {
    child: Child,
    dir: TempDir,
    pub config: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Lb {
    /// Writes `toml` to `<tmp>/lb.toml`, starts `lb --config <it> <args>` and waits until it
    /// logs that it started.
    pub async fn start(toml: &str, args: &[&str]) -> Lb {
        Lb::start_with_env(toml, args, &[("LB_LOG", "info")]).await
    }

    /// [`Lb::start`] with these environment variables set (and nothing else changed).
    pub async fn start_with_env(toml: &str, args: &[&str], env: &[(&str, &str)]) -> Lb {
        let dir = temp_dir("proc");
        let config = dir.join("lb.toml");
        std::fs::write(&config, toml).expect("write lb.toml");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lb"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lb");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let lb = Lb { child, dir, config, log };
        lb.wait_log(0, |l| l.contains(" started: ")).await;
        lb
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Number of log lines so far: a position to wait from.
    pub fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits for a log line at index `from` or later that satisfies `pred`, and returns it.
    pub async fn wait_log(&self, from: usize, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().skip(from).find(|l| pred(l)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!("no matching log line within {PATIENCE:?}; logs:\n{}", self.logs().join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Address of listener `name` as logged by the latest "listening" line for it at or after
    /// `from` (listeners bound to port 0 are found this way).
    pub async fn listener_addr(&self, from: usize, name: &str) -> SocketAddr {
        let tag = format!("listener={name} ");
        let line = self.wait_log(from, |l| l.contains(" listening ") && l.contains(&tag)).await;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .and_then(|a| a.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
    }

    /// Sends `sig` ("HUP", "TERM", "INT", "USR1"...) to the process.
    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").arg("-s").arg(sig).arg(self.pid().to_string()).status().expect("run kill").success();
        assert!(ok, "kill -s {sig} failed");
    }

    /// Replaces lb.toml atomically (a reader never sees half a file).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.dir.join("lb.toml.new");
        std::fs::write(&tmp, toml).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Writes `toml`, sends SIGHUP and waits for the outcome: `Ok(line)` for "reload applied",
    /// `Err(line)` for "reload rejected".
    pub async fn reload(&self, toml: &str) -> Result<String, String> {
        self.write_config(toml);
        self.hup().await
    }

    /// SIGHUP with the file as it is; see [`Lb::reload`].
    pub async fn hup(&self) -> Result<String, String> {
        let from = self.mark();
        self.signal("HUP");
        let line = self.wait_log(from, |l| l.contains("reload applied") || l.contains("reload rejected")).await;
        if line.contains("reload applied") {
            Ok(line)
        } else {
            Err(line)
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (up to `limit`) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            if Instant::now() > deadline {
                panic!("lb did not exit within {limit:?}; logs:\n{}", self.logs().join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Lb {
    /// Kills the child before its temp dir (a field, dropped after this) is removed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until a connection to `addr` is refused (the listener is closed).
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ if Instant::now() > deadline => panic!("{addr} still accepts connections"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// What `lb --check` said about a config file.
pub struct Checked {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    /// The file checked, as lb names it in messages.
    pub path: String,
}

/// Writes `toml` to a fresh `lb.toml` and runs `lb --config <it> --check`.
pub fn check_config(toml: &str) -> Checked {
    let dir = temp_dir("check");
    let path = dir.join("lb.toml");
    std::fs::write(&path, toml).expect("write lb.toml");
    let out =
        Command::new(env!("CARGO_BIN_EXE_lb")).arg("--config").arg(&path).arg("--check").output().expect("run lb");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Checked {
        ok: out.status.success(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
        path: path.display().to_string(),
    }
}
