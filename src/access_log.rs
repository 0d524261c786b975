//! Access log: one line per HTTP request or TCP session, written off the request path.
//!
//! The request path formats a line (only when a listener has `access_log` set) and hands it to
//! a dedicated writer thread over a bounded channel. If the writer falls behind (a slow disk),
//! lines are dropped and counted rather than stalling requests; the count is reported in the
//! log itself. The writer wakes every 10 ms, drains everything queued through a buffer and
//! flushes: lines appear within milliseconds, and senders never have to wake a sleeping thread.
//!
//! `SIGUSR1` reopens every file target (see [`AccessLog::reopen`]), so that logrotate can move
//! a file away and have lb write to a new one at the same path, as with nginx.
//!
//! Lines are logfmt: `ts=... listener=web client=10.0.0.1:5123 method=GET path="/x" status=200
//! backend=a bytes=1234 duration_ms=1.234 retries=0 request_id="..."` (tcp sessions: `mode=tcp`,
//! `bytes_in`/`bytes_out` instead of method/path/status/bytes).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Lines buffered between the request path and the writer: at 100k requests/s, over half a
/// second of lines.
const QUEUE: usize = 64 * 1024;

/// The writer's buffer: one write system call per tick at ordinary rates.
const WRITE_BUF: usize = 64 * 1024;

/// How often the writer wakes to drain the queue. The writer never blocks on the channel, so a
/// request never pays for waking it (a futex wake per line would cost more than the line).
const TICK: Duration = Duration::from_millis(10);

/// Where the lines go (`access_log = "stderr" | "stdout" | "/path/file"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Stderr,
    Stdout,
    File(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stderr => f.write_str("stderr"),
            Target::Stdout => f.write_str("stdout"),
            Target::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What the writer thread is sent: a line, or a request to write out everything before it.
enum Msg {
    Line(String),
    /// Flush everything queued before this, then answer.
    Flush(mpsc::Sender<()>),
}

/// The sending side; cheap to share between listeners writing to the same target.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    /// Set by [`AccessLog::reopen`]; the writer opens its file again at its next tick, after
    /// the lines it drained.
    reopen: Arc<AtomicBool>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Line(_) => "Line",
            Msg::Flush(_) => "Flush",
        })
    }
}

impl AccessLog {
    /// Opens `target` (files in append mode, created if missing) and starts its writer thread.
    pub fn open(target: &Target) -> io::Result<Arc<AccessLog>> {
        let out = open_target(target)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let (d, r) = (dropped.clone(), reopen.clone());
        let target = target.clone();
        std::thread::Builder::new().name("lb-access-log".into()).spawn(move || write_loop(rx, out, &target, d, &r))?;
        Ok(Arc::new(AccessLog { tx, dropped, reopen }))
    }

    /// Asks the writer to open its file again (`SIGUSR1`), after writing out every line sent
    /// before. A file that cannot be opened is logged, and lines go on to the old one.
    /// A flag, not a queued message: the caller (the control thread) never waits on a full queue.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    fn send(&self, line: String) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (up to `limit`) until every line sent so far is written out: at exit, the writer
    /// thread would otherwise die with the last lines still queued or buffered.
    pub fn flush(&self, limit: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        let deadline = Instant::now() + limit;
        let mut msg = Msg::Flush(ack);
        // The queue may be full; the writer empties it every tick.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(TICK);
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok()
    }

    /// Logs one HTTP request.
    pub fn http(&self, e: &HttpEntry, status: u16, bytes: u64) {
        let mut line = String::with_capacity(192);
        stamp(&mut line);
        let _ = write!(
            line,
            " listener={} client={} method={} path=\"{}\" status={status} backend={} bytes={bytes} duration_ms={:.3} retries={} request_id=\"{}\"",
            e.listener,
            e.client,
            e.method,
            Escaped(&e.path),
            if e.backend.is_empty() { "-" } else { &e.backend },
            e.started.elapsed().as_secs_f64() * 1000.0,
            e.retries,
            Escaped(e.request_id.to_str().unwrap_or("-"))
        );
        self.send(line);
    }

    /// Logs an answer lb gave to a request head that never became a request (see
    /// `server`): nothing of the head is trusted, so method and path are `-`.
    pub fn refused(&self, listener: &str, client: SocketAddr, status: u16, bytes: u64, started: Instant) {
        let mut line = String::with_capacity(160);
        stamp(&mut line);
        let _ = write!(
            line,
            " listener={listener} client={client} method=- path=\"-\" status={status} backend=- bytes={bytes} duration_ms={:.3} retries=0",
            started.elapsed().as_secs_f64() * 1000.0
        );
        self.send(line);
    }

    /// Logs one TCP session.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        &self,
        listener: &str,
        client: SocketAddr,
        backend: Option<&str>,
        bytes_in: u64,
        bytes_out: u64,
        started: Instant,
        retries: usize,
    ) {
        let mut line = String::with_capacity(160);
        stamp(&mut line);
        let _ = write!(
            line,
            " listener={listener} mode=tcp client={client} backend={} bytes_in={bytes_in} bytes_out={bytes_out} duration_ms={:.3} retries={retries}",
            backend.unwrap_or("-"),
            started.elapsed().as_secs_f64() * 1000.0
        );
        self.send(line);
    }
}

/// What is known of a request when its response starts; logged when the response ends.
#[derive(Debug, Clone)]
pub struct HttpEntry {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: http::Method,
    /// Path and query as requested.
    pub path: String,
    /// Backend name; empty when lb answered itself.
    pub backend: String,
    pub started: Instant,
    pub retries: usize,
    /// The request's `X-Request-Id`, kept or made by lb.
    pub request_id: http::HeaderValue,
}

/// `ts=2026-11-22T14:33:00.123Z` in UTC without a date library: civil-from-days arithmetic.
fn stamp(out: &mut String) {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "ts={year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    );
}

/// Escapes `"` and `\` and control characters, so a hostile path cannot forge fields or lines.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn open_target(target: &Target) -> io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stderr => Box::new(io::stderr()),
        Target::Stdout => Box::new(io::stdout()),
        Target::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
    })
}

fn write_loop(
    rx: Receiver<Msg>,
    out: Box<dyn Write + Send>,
    target: &Target,
    dropped: Arc<AtomicU64>,
    reopen: &AtomicBool,
) {
    let mut out = BufWriter::with_capacity(WRITE_BUF, out);
    let mut reported = 0;
    loop {
        std::thread::sleep(TICK);
        let mut closed = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(line)) => {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Ok(Msg::Flush(ack)) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        // Lines drained above were sent before the signal or about when it came: they go to the
        // old file, the rest to the new one.
        if reopen.swap(false, Ordering::AcqRel) {
            let _ = out.flush();
            if let Target::File(_) = target {
                match open_target(target) {
                    Ok(new) => {
                        out = BufWriter::with_capacity(WRITE_BUF, new);
                        tracing::info!(access_log = %target, "access log reopened");
                    }
                    Err(e) => {
                        tracing::error!(access_log = %target, error = %e, "cannot reopen access log; writing to the old file")
                    }
                }
            }
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost != reported {
            let mut line = String::new();
            stamp(&mut line);
            let _ = writeln!(out, "{line} access_log_dropped={} (writer fell behind)", lost - reported);
            reported = lost;
        }
        let _ = out.flush();
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_iso8601() {
        let mut s = String::new();
        stamp(&mut s);
        assert_eq!(s.len(), "ts=2026-11-22T14:33:00.123Z".len(), "{s}");
        assert!(s.starts_with("ts=20") && s.ends_with('Z'), "{s}");
    }

    #[test]
    fn paths_cannot_forge_fields_or_lines() {
        let s = Escaped("/a\" status=200\nforged=1\\").to_string();
        assert_eq!(s, "/a\\\" status=200\\x0aforged=1\\\\");
    }
}
