//! Slow readers (issue #15, defect 4): a client that takes a large response slowly, or not at
//! all, must push back on lb, and through lb on the backend, instead of lb parking the body in
//! its own memory or in ever larger socket buffers.
//!
//! The backend counts the body bytes its socket accepted. Once the client stops reading and
//! that count stops moving, each of those bytes is in one place: the backend's send queue,
//! lb's receive queue from the backend, lb's memory, lb's send queue to the client, the
//! client's receive queue, or read by the client. The kernel's queues are read from
//! `/proc/net/tcp` (Linux), so what lb holds in memory is the remainder, exactly. Before the
//! fix lb let the kernel grow the client socket's send queue to megabytes (4 MiB is
//! `tcp_wmem`'s usual maximum) and held 256 KiB pieces of the body for a client that read
//! nothing. Nothing is timed: the settling wait only decides when to look.
//!
//! After a burst of slow readers, the real `lb` binary must give the memory back (glibc's
//! malloc kept it for good; the binary now uses jemalloc with its background thread).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::lbproc;
use crate::support::start_lb;

/// Only there to turn a hang into a failure (a 64 MiB body through lb, on a loaded machine).
const PATIENCE: Duration = Duration::from_secs(60);
const BODY: u64 = 64 << 20;
/// What may be out of the backend in all while the client reads nothing: lb's queue to the
/// client and its memory (below), the receive queue the kernel grew for lb while it was
/// reading (up to about 1 MiB measured) and the test's two small buffers.
const OUT_BOUND: u64 = 2 << 20;
/// lb's send queue to a client that reads nothing: its unsent limit (128 KiB, plus the one
/// segment that crosses it) and what is in flight within the client's small window.
const QUEUE_BOUND: u64 = 512 << 10;
/// Body bytes in lb's memory for a client that read nothing: hyper's 64 KiB write batch and
/// the smaller reads once the client is seen to lag (73 KiB measured; 156 KiB when reads kept
/// growing to 256 KiB).
const HELD_BOUND: u64 = 128 << 10;

/// A backend that answers every request with a `BODY`-byte body through a small send buffer,
/// counting the bytes its sockets accepted.
async fn big_body_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let socket = TcpSocket::new_v4().unwrap();
    // Accepted sockets inherit it; the kernel doubles it, and no autotuning grows it.
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let sent = counter.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b'x'; 64 * 1024];
                let mut left = BODY;
                while left > 0 {
                    let n = (piece.len() as u64).min(left) as usize;
                    match s.write(&piece[..n]).await {
                        Ok(0) | Err(_) => return,
                        Ok(w) => {
                            sent.fetch_add(w as u64, Ordering::Relaxed);
                            left -= w as u64;
                        }
                    }
                }
            });
        }
    });
    (addr, sent)
}

async fn lb_for(backend: SocketAddr) -> (lb::app::Running, SocketAddr) {
    let lb = start_lb(&format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
    ))
    .await;
    let addr = lb.listener_addr("web").unwrap();
    (lb, addr)
}

/// A client with a receive buffer of `rcvbuf` bytes (pinned, so the kernel does not grow it)
/// that has sent a GET and read nothing.
async fn slow_client(addr: SocketAddr, rcvbuf: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    s
}

/// `(tx_queue, rx_queue)` of the established 127.0.0.1 socket from `local` to `remote` (either
/// port 0 for any), with the other end's port, from `/proc/net/tcp`.
fn queues(local: u16, remote: u16) -> (u64, u64, u16) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r) = (port(f[1]), port(f[2]));
        if f[3] == "01" && (local == 0 || l == local) && (remote == 0 || r == remote) {
            let (tx, rx) = f[4].split_once(':').unwrap();
            found.push((
                u64::from_str_radix(tx, 16).unwrap(),
                u64::from_str_radix(rx, 16).unwrap(),
                if local == 0 { l } else { r },
            ));
        }
    }
    assert_eq!(found.len(), 1, "sockets {local} -> {remote}: {found:?}");
    found[0]
}

/// Where the body bytes out of the backend are once it stopped: what lb holds in memory, and
/// lb's send queue to the client.
struct Census {
    out: u64,
    held: u64,
    to_client: u64,
}

/// Counts, once the backend has stopped, where its `out` bytes are; `read` of them the
/// client has read, `client` is its socket.
fn census(out: u64, read: u64, backend: SocketAddr, lb: SocketAddr, client: &TcpStream) -> Census {
    let (backend_tx, _, upstream) = queues(backend.port(), 0);
    let (_, lb_rx, _) = queues(upstream, backend.port());
    let me = client.local_addr().unwrap().port();
    let (to_client, _, _) = queues(lb.port(), me);
    let (_, client_rx, _) = queues(me, lb.port());
    // lb's response head is in the client's queue or read, and is no body byte: a few bytes
    // of slack in lb's favour.
    let held = out.saturating_sub(backend_tx + lb_rx + to_client + client_rx + read);
    eprintln!("out {out}: backend queue {backend_tx}, lb receive queue {lb_rx}, lb memory {held}, lb send queue {to_client}, client queue {client_rx}, read {read}");
    Census { out, held, to_client }
}

/// The backend's count once it has stopped moving (unchanged for half a second).
async fn settled(sent: &AtomicU64) -> u64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let (mut last, mut still) = (u64::MAX, 0);
    while tokio::time::Instant::now() < deadline {
        let now = sent.load(Ordering::Relaxed);
        if now == last {
            still += 1;
            if still == 5 {
                return now;
            }
        } else {
            (last, still) = (now, 0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the backend never stopped sending: {} bytes out", sent.load(Ordering::Relaxed));
}

/// Reads the response head and exactly `n` body bytes.
async fn read_head_and(s: &mut TcpStream, n: u64) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed in the head: {head:?}");
        head.push(byte[0]);
    }
    read_body(s, n).await;
    String::from_utf8(head).unwrap()
}

async fn read_body(s: &mut TcpStream, mut n: u64) {
    let mut buf = vec![0u8; 64 * 1024];
    while n > 0 {
        let want = (buf.len() as u64).min(n) as usize;
        let got = s.read(&mut buf[..want]).await.unwrap();
        assert!(got > 0, "closed with {n} body bytes to go");
        n -= got as u64;
    }
}

#[tokio::test]
async fn a_client_that_reads_nothing_holds_back_the_backend() {
    let (backend, sent) = big_body_backend().await;
    let (_lb, addr) = lb_for(backend).await;
    let mut client = slow_client(addr, 4096).await;
    let c = census(settled(&sent).await, 0, backend, addr, &client);
    assert!(c.out < OUT_BOUND, "{} bytes of a {BODY}-byte body left the backend", c.out);
    assert!(c.to_client < QUEUE_BOUND, "lb's send queue to the client holds {} bytes", c.to_client);
    assert!(c.held < HELD_BOUND, "lb holds {} bytes of the body", c.held);
    // Backpressure, not a dead end: the whole body follows once the client reads (through a
    // window as large as the handshake allows, to be quick about it).
    socket2::SockRef::from(&client).set_recv_buffer_size(64 * 1024).unwrap();
    let read = tokio::time::timeout(PATIENCE, read_head_and(&mut client, BODY)).await;
    assert!(read.expect("the body did not follow").starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_client_that_stops_after_reading_fast_holds_back_the_backend() {
    // lb's reads grow to 256 KiB while the client keeps up, and the kernel grows the receive
    // queue from the backend: what bounds the rest is lb's send queue to the client.
    let (backend, sent) = big_body_backend().await;
    let (_lb, addr) = lb_for(backend).await;
    let mut client = slow_client(addr, 64 * 1024).await;
    let first = 8 << 20;
    tokio::time::timeout(PATIENCE, read_head_and(&mut client, first)).await.expect("first part");
    let c = census(settled(&sent).await, first, backend, addr, &client);
    assert!(c.to_client < QUEUE_BOUND, "lb's send queue to the client holds {} bytes", c.to_client);
    // One 256 KiB piece partly written, and hyper's 64 KiB batch.
    assert!(c.held < 320 << 10, "lb holds {} bytes of the body", c.held);
    tokio::time::timeout(PATIENCE, read_body(&mut client, BODY - first)).await.expect("the rest did not follow");
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn memory_goes_back_after_a_burst_of_slow_readers() {
    let (backend, sent) = big_body_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
    );
    let lb = lbproc::Lb::start(&toml, &["--workers", "1"]).await;
    let addr = lb.listener_addr(0, "web").await;
    let start = rss_kib(lb.pid());
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(slow_client(addr, 4096).await);
    }
    settled(&sent).await;
    let peak = rss_kib(lb.pid());
    assert!(peak > start + 10 * 1024, "300 slow readers cost lb only {} KiB", peak - start);
    drop(clients);
    // Back to within a quarter of the burst; the deadline only turns "never" into a failure.
    let target = start + (peak - start) / 4;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut now = peak;
    while tokio::time::Instant::now() < deadline {
        now = rss_kib(lb.pid());
        if now <= target {
            eprintln!("lb's RSS: {start} KiB at start, {peak} KiB with 300 slow readers, {now} KiB after");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("lb's RSS: {start} KiB at start, {peak} KiB with 300 slow readers, still {now} KiB after they left");
}
