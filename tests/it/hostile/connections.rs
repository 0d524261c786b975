//! Connection counts: hundreds of idle connections do not stop traffic, clients past
//! `max_connections` wait for a slot, and file-descriptor exhaustion (the real binary under a
//! lowered RLIMIT_NOFILE) is backed off from and recovered.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{config, lb_with, normal_request_is_served};
use crate::support::*;

#[tokio::test]
async fn three_hundred_idle_connections_do_not_stop_traffic() {
    let (b, _lb, addr) = lb_with("").await;
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Half say nothing, half sent part of a head.
        if i % 2 == 1 {
            s.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
        }
        idle.push(s);
    }
    let client = client();
    for i in 0..50 {
        let (status, body, _) = get(&client, addr, &format!("/busy/{i}")).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    }
    assert_eq!(b.hits(), 50);
    drop(idle);
    normal_request_is_served(addr, &b).await;
}

#[tokio::test]
async fn past_max_connections_clients_wait_until_a_slot_frees() {
    let (b, _lb, addr) = lb_with("max_connections = 2").await;
    // Two keep-alive connections, each served once and then held open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // The third connects (the kernel backlog takes it) but is not served while both are held.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
    let early = read_all(&mut third, Duration::from_millis(500)).await;
    assert!(early.bytes.is_empty() && !early.closed, "served past max_connections: {}", early.text());
    assert_eq!(b.hits(), 2);
    // One of the first two leaves: the third is served.
    drop(held.pop());
    let r = read_all(&mut third, PATIENCE).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(b.hits(), 3);
}

/// The real binary with a low RLIMIT_NOFILE (set with `prlimit` once it runs): clients past
/// the limit make accept() fail with EMFILE. lb must back off (no spinning: it uses little CPU
/// meanwhile), log the failure at a bounded rate, and serve again once descriptors free up.
/// It must stay the spawned binary: the limit is per process, and this test binary's process
/// runs every other test at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off_and_recovers() {
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    let b = TestBackend::start("a").await;
    let toml = config(&backends_toml(&[&b]), "header_timeout = \"60s\"");
    let lb = lbproc::Lb::start(&toml, &[]).await;
    let addr = lb.listener_addr(0, "web").await;
    let pid = lb.pid().to_string();
    // Room for what lb already has open plus a few connections.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = (open + 8).to_string();
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={limit}:{limit}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "prlimit failed");

    let mark = lb.mark();
    let mut clients = Vec::new();
    for _ in 0..40 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    lb.wait_log(mark, |l| l.contains("accept failed")).await;
    let cpu_before = cpu_ticks(&pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_used = cpu_ticks(&pid) - cpu_before;
    let warnings = lb.logs()[mark..].iter().filter(|l| l.contains("accept failed")).count();
    // Logged at most once a second (3 allows for the edges of the window).
    assert!(warnings <= 4, "{warnings} accept warnings in ~2 s:\n{}", lb.logs()[mark..].join("\n"));
    // A spinning accept loop burns a whole core (~200 ticks in 2 s); backing off, almost none.
    assert!(cpu_used < 100, "lb used {cpu_used} CPU ticks in 2 s with accept failing");

    // Once the clients leave, lb serves again. While it works through its backlog, a request
    // may still find no descriptor for the backend connection (502); that is lb's shortage, not
    // the backend's, so the backend stays in rotation and the next try is served.
    drop(clients);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut statuses = Vec::new();
    loop {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /back HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(2)).await;
        statuses.push(r.status());
        if r.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lb did not recover: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!statuses.contains(&503), "the backend was taken out of rotation: {statuses:?}");
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
