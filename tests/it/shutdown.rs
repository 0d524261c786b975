//! Graceful shutdown (SIGTERM/SIGINT) on the real process: stop accepting at once, let
//! requests and TCP sessions in flight finish, close idle keep-alive connections at once, exit
//! 0; and never wait past `--shutdown-timeout`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::lbproc::*;
use crate::support::*;

fn config(mode: &str, b: &TestBackend) -> String {
    format!("{}{}", listener("web", "127.0.0.1:0", mode, "app"), pool("app", "round_robin", &[b], ""))
}

/// Starts a `/stream` response and reads its first chunk: a request that stays in flight
/// until the backend is released.
async fn streaming(addr: std::net::SocketAddr) -> (Conn, hyper::body::Incoming) {
    let mut c = Conn::open(addr).await;
    let resp = c.head("/stream").await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(read_until(&mut body, "first;").await.unwrap(), "first;");
    (c, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_refuses_new_connections_and_exits_0() {
    let a = TestBackend::start("a").await;
    let mut lb = Lb::start(&config("http", &a), &[]).await;
    let addr = lb.listener_addr(0, "web").await;

    // Three responses streaming, two requests still waiting for their response heads.
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(streaming(addr).await);
    }
    let slow: Vec<_> =
        (0..2).map(|_| tokio::spawn(async move { Conn::open(addr).await.get("/slow/1500").await })).collect();
    wait_until("every request reached the backend", || a.hits() == 5).await;

    let mark = lb.mark();
    lb.signal("TERM");
    lb.wait_log(mark, |l| l.contains("shutting down")).await;
    wait_refused(addr).await;
    assert!(lb.try_exit().is_none(), "lb exited with requests in flight");

    a.release();
    for (_conn, mut body) in streams {
        assert_eq!(read_until(&mut body, "second").await.unwrap(), "second");
        assert!(body.frame().await.is_none(), "stream did not end cleanly");
    }
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), (200, "a".into()));
    }
    let status = lb.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{:?}", lb.logs());
    assert!(!lb.logs().iter().any(|l| l.contains("deadline passed")), "{:?}", lb.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keepalive_connections_at_once() {
    let a = TestBackend::start("a").await;
    let mut lb = Lb::start(&config("http", &a), &[]).await;
    let addr = lb.listener_addr(0, "web").await;

    // An idle HTTP/1.1 keep-alive connection and an idle h2c connection.
    let mut idle = Conn::open(addr).await;
    assert_eq!(idle.get("/").await.unwrap(), (200, "a".into()));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, h2_conn) =
        hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let h2_driver = tokio::spawn(h2_conn);
    let resp =
        h2.send_request(http::Request::get(format!("http://{addr}/")).body(Empty::new()).unwrap()).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "a");
    // And a slow response in flight.
    let (_conn, mut body) = streaming(addr).await;

    lb.signal("TERM");
    // Both idle connections are closed by lb while the slow response is still held.
    let closed = tokio::time::timeout(PATIENCE, idle.driver).await;
    assert!(matches!(closed, Ok(Ok(Ok(())))), "idle HTTP/1.1 connection not closed: {closed:?}");
    let closed = tokio::time::timeout(PATIENCE, h2_driver).await;
    assert!(matches!(closed, Ok(Ok(Ok(())))), "idle h2 connection not closed: {closed:?}");
    assert!(lb.try_exit().is_none(), "lb exited with a request in flight");

    a.release();
    assert_eq!(read_until(&mut body, "second").await.unwrap(), "second");
    assert!(body.frame().await.is_none(), "stream did not end cleanly");
    assert_eq!(lb.wait_exit(PATIENCE).await.code(), Some(0), "{:?}", lb.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_tcp_sessions_finish() {
    let a = TestBackend::start("a").await;
    let mut lb = Lb::start(&config("tcp", &a), &[]).await;
    let addr = lb.listener_addr(0, "web").await;

    let mut session = tokio::net::TcpStream::connect(addr).await.unwrap();
    session.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_raw_until(&mut session, "first;").await.contains("first;"));

    let mark = lb.mark();
    lb.signal("TERM");
    lb.wait_log(mark, |l| l.contains("shutting down")).await;
    wait_refused(addr).await;

    // The session goes on: the rest of the response, then another request on it.
    a.release();
    assert!(read_raw_until(&mut session, "second").await.contains("second"));
    session.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let next = read_raw_until(&mut session, "\r\n\r\na").await;
    assert!(next.contains("HTTP/1.1 200") && next.contains("x-served-by: a"), "{next}");
    assert!(lb.try_exit().is_none(), "lb exited with a TCP session open");

    // The client ends the session; then lb has nothing left and exits.
    session.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, session.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(lb.wait_exit(PATIENCE).await.code(), Some(0), "{:?}", lb.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_at_the_shutdown_timeout_when_a_request_is_stuck() {
    let a = TestBackend::start("a").await;
    let mut lb = Lb::start(&config("http", &a), &["--shutdown-timeout", "1s"]).await;
    let addr = lb.listener_addr(0, "web").await;
    // Never released.
    let (_conn, mut body) = streaming(addr).await;

    let mark = lb.mark();
    lb.signal("INT");
    lb.wait_log(mark, |l| l.contains("deadline passed")).await;
    assert_eq!(lb.wait_exit(PATIENCE).await.code(), Some(0), "{:?}", lb.logs());
    // What was still in flight is cut when the process exits.
    assert!(read_until(&mut body, "second").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once_with_1() {
    let a = TestBackend::start("a").await;
    let mut lb = Lb::start(&config("http", &a), &["--shutdown-timeout", "300s"]).await;
    let addr = lb.listener_addr(0, "web").await;
    // Never released: the drain would wait the full 300 s.
    let (_conn, _body) = streaming(addr).await;

    let mark = lb.mark();
    lb.signal("TERM");
    lb.wait_log(mark, |l| l.contains("shutting down")).await;
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(PATIENCE).await.code(), Some(1), "{:?}", lb.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_in_the_access_log_when_the_process_exits() {
    let a = TestBackend::start("a").await;
    let dir = temp_dir("exit-log");
    let log = dir.join("access.log");
    let cfg = format!(
        "{}\naccess_log = \"{}\"\n\n{}",
        listener("web", "127.0.0.1:0", "http", "app").trim_end(),
        log.display(),
        pool("app", "round_robin", &[&a], "")
    );
    let mut lb = Lb::start(&cfg, &[]).await;
    let addr = lb.listener_addr(0, "web").await;
    let mut c = Conn::open(addr).await;
    for i in 0..5 {
        assert_eq!(c.get(&format!("/r{i}")).await.unwrap().0, 200);
    }
    c.close();
    // At once: the writer thread must not be left with lines queued or buffered.
    lb.signal("TERM");
    assert_eq!(lb.wait_exit(PATIENCE).await.code(), Some(0), "{:?}", lb.logs());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let paths: Vec<&str> =
        text.lines().filter_map(|l| l.split(" path=\"").nth(1)).filter_map(|p| p.split('"').next()).collect();
    assert_eq!(paths, ["/r0", "/r1", "/r2", "/r3", "/r4"], "{text}");
}
