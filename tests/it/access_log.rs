//! The access log: one line per request (and per TCP session) with exact fields, written to the
//! configured file, including lb's own answers and retries.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn read_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.find('"').map(|end| &quoted[..end]);
    }
    Some(rest.split(' ').next().unwrap_or(rest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_and_tcp_sessions_are_logged_with_exact_fields() {
    let dir = temp_dir("access");
    let log = dir.join("access.log");
    let a = TestBackend::start("a").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\naccess_log = \"{log}\"\n\n\
         [[listeners]]\nname = \"none\"\nbind = \"127.0.0.1:0\"\npool = \"gone\"\naccess_log = \"{log}\"\n\n\
         [[listeners]]\nname = \"raw\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\npool = \"app\"\naccess_log = \"{log}\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nretries = 1\n\
         backends = [{{ addr = \"{dead}\", name = \"dead\" }}, {{ addr = \"{}\", name = \"a\" }}]\n\n\
         [pools.gone]\nstrategy = \"random\"\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n\
         [pools.gone.health]\nkind = \"tcp\"\ninterval = \"50ms\"\nfall = 1\n",
        a.addr,
        log = log.display()
    );
    let lb = start_lb(&toml).await;
    let web = lb.listener_addr("web").unwrap();
    assert!(eventually(Duration::from_secs(3), || up_names(&lb, "gone").is_empty()).await);

    // First request: dead is tried first (round robin from a fresh cursor), fails, retried on a.
    let (status, body, _) = get(&client(), web, "/first?x=1").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "a"));
    let (status, _, _) = get(&client(), lb.listener_addr("none").unwrap(), "/nothing").await;
    assert_eq!(status, 503);
    let mut s = tokio::net::TcpStream::connect(lb.listener_addr("raw").unwrap()).await.unwrap();
    s.write_all(b"GET /over-tcp HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    drop(s);

    assert!(eventually(Duration::from_secs(3), || read_lines(&log).len() >= 3).await, "{:?}", read_lines(&log));
    let lines = read_lines(&log);
    let find = |listener: &str| lines.iter().find(|l| field(l, "listener") == Some(listener)).unwrap().clone();

    let line = find("web");
    assert!(line.starts_with("ts=20"), "{line}");
    assert_eq!(field(&line, "method"), Some("GET"));
    assert_eq!(field(&line, "path"), Some("/first?x=1"));
    assert_eq!(field(&line, "status"), Some("200"));
    assert_eq!(field(&line, "backend"), Some("a"));
    assert_eq!(field(&line, "bytes"), Some("1"), "body \"a\"");
    assert_eq!(field(&line, "retries"), Some("1"));
    let id = field(&line, "request_id").expect("a request_id");
    assert!(id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()), "{line}");
    assert!(field(&line, "client").unwrap().starts_with("127.0.0.1:"));
    assert!(field(&line, "duration_ms").unwrap().parse::<f64>().unwrap() >= 0.0);

    let line = find("none");
    assert_eq!(field(&line, "status"), Some("503"));
    assert_eq!(field(&line, "backend"), Some("-"));
    assert_eq!(field(&line, "path"), Some("/nothing"));

    let line = find("raw");
    assert_eq!(field(&line, "mode"), Some("tcp"));
    // Either a directly, or dead first and then a by failover.
    assert_eq!(field(&line, "backend"), Some("a"), "{line}");
    assert_eq!(field(&line, "bytes_in"), Some("54"));
    assert_eq!(field(&line, "bytes_out").map(|b| b.parse::<usize>().unwrap()), Some(reply.len()));
    drop(lb);
}

/// Heads refused before they become requests (on the byte stream by lb, or unparsable for
/// hyper) are answered, and each answer is counted in `lb_requests_total{backend=""}` and
/// logged with `method=-` and `path="-"`, like every other answer lb gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_heads_that_never_became_requests_are_counted_and_logged() {
    let dir = temp_dir("access-refused");
    let log = dir.join("access.log");
    let a = TestBackend::start("a").await;
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\nmax_headers = 5\naccess_log = \"{}\"\n\n\
         [pools.app]\nstrategy = \"round_robin\"\nbackends = [{{ addr = \"{}\", name = \"a\" }}]\n",
        log.display(),
        a.addr
    );
    let lb = start_lb(&toml).await;
    let web = lb.listener_addr("web").unwrap();
    let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", "X-A: 1\r\n".repeat(10));
    let heads: [(&[u8], &str); 3] = [
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        (many.as_bytes(), "431"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n", "400"),
    ];
    for (head, status) in heads {
        let mut s = tokio::net::TcpStream::connect(web).await.unwrap();
        s.write_all(head).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
        assert!(reply.starts_with(format!("HTTP/1.1 {status}").as_bytes()), "{}", String::from_utf8_lossy(&reply));
    }
    assert_eq!(a.hits(), 0);
    assert!(eventually(Duration::from_secs(5), || read_lines(&log).len() >= 3).await, "{:?}", read_lines(&log));
    let lines = read_lines(&log);
    // Logged as each connection ends, in any order: (status, body bytes) sorted.
    let mut answers: Vec<_> = lines.iter().map(|l| (field(l, "status").unwrap(), field(l, "bytes").unwrap())).collect();
    answers.sort();
    assert_eq!(answers, [("400", "0"), ("400", "59"), ("431", "36")], "{lines:?}");
    for l in &lines {
        assert_eq!(
            (field(l, "method"), field(l, "path"), field(l, "backend")),
            (Some("-"), Some("-"), Some("-")),
            "{l}"
        );
    }
    let metrics = lb.metrics().render();
    for (code, n) in [("400", 2), ("431", 1)] {
        let series = format!("lb_requests_total{{backend=\"\",code=\"{code}\",listener=\"web\",pool=\"app\"}} {n}");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
    drop(lb);
}

#[test]
fn check_rejects_an_access_log_in_a_missing_directory() {
    let toml = "[[listeners]]\nname = \"w\"\nbind = \"127.0.0.1:8080\"\npool = \"p\"\naccess_log = \"/nonexistent-dir/a.log\"\n[pools.p]\nstrategy = \"random\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
    let err = lb::config::parse(std::path::Path::new("lb.toml"), toml).unwrap_err().to_string();
    assert_eq!(err, "lb.toml:5:14: access_log directory /nonexistent-dir does not exist");
}
