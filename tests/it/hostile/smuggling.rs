//! Request smuggling and malformed heads: what hyper refuses, what lb refuses on top (framing a
//! backend could read differently, bad hosts and targets, CONNECT), and heads hidden behind
//! bodies, trailers or upgrades that must still be judged. Each refusal: the status, the close,
//! nothing forwarded, and the next normal request served.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{lb_with, normal_request_is_served};
use crate::support::*;

/// Pipelined behind each refused head: a request that must never be read, let alone forwarded.
const SMUGGLED_GET: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";

/// Checks `r`, what a client got for a head lb must refuse (followed by [`SMUGGLED_GET`]): the
/// `status` and the close, announced; one answer only (nothing after the head was read), the
/// backend reached by nothing; then a normal request is served. Returns `r` for checks of its
/// own.
async fn assert_refused(addr: SocketAddr, b: &TestBackend, what: &str, status: u16, r: Reply) -> Reply {
    assert_eq!(r.status(), status, "{what}: {}", r.text());
    assert!(r.closed, "{what}: connection left open");
    assert!(r.head().contains("connection: close"), "{what}: {}", r.text());
    assert_eq!(r.text().matches("HTTP/1.").count(), 1, "{what}: more than one answer: {}", r.text());
    assert_eq!(b.hits(), 0, "{what}: the backend saw {:?}", b.last_seen());
    normal_request_is_served(addr, b).await;
    b.hits.store(0, Ordering::SeqCst);
    r
}

/// Sends `head` and [`SMUGGLED_GET`] at once on a fresh connection; see [`assert_refused`].
async fn refused(addr: SocketAddr, b: &TestBackend, what: &str, status: u16, head: &[u8]) -> Reply {
    assert_refused(addr, b, what, status, send(addr, &[head, SMUGGLED_GET].concat()).await).await
}

/// Heads that hyper's parser refuses with an empty 400 before the proxy sees anything.
const REFUSED_BY_HYPER: &[(&str, &[u8])] = &[
    (
        "two different Content-Lengths",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    ),
    ("a Content-Length list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 4\r\n\r\nabcd"),
    ("a signed Content-Length", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc"),
    ("an unknown transfer coding", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("Transfer-Encoding on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("space before the colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("a bare CR in a value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n"),
    ("a NUL in a value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n"),
    ("an injected line without a colon", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\nInjected\r\n\r\n"),
    ("an obs-folded line", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n"),
    ("a space in a header name", b"GET / HTTP/1.1\r\nHost: h\r\nX A: a\r\n\r\n"),
];

#[tokio::test]
async fn malformed_heads_get_400_and_close_with_nothing_forwarded() {
    let (b, _lb, addr) = lb_with("").await;
    for (what, head) in REFUSED_BY_HYPER {
        refused(addr, &b, what, 400, head).await;
    }
}

/// Transfer codings hyper accepts (it only checks that `chunked` comes last) but that other
/// servers may frame differently: refused by the proxy, with its own text and a close.
const REFUSED_BY_LB: &[(&str, &[u8])] = &[
    ("chunked, chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("gzip, chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    (
        "two Transfer-Encoding lines",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("identity, chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"),
];

#[tokio::test]
async fn obfuscated_transfer_encodings_get_400_and_close_with_nothing_forwarded() {
    let (b, _lb, addr) = lb_with("").await;
    for (what, head) in REFUSED_BY_LB {
        let r = refused(addr, &b, what, 400, head).await;
        assert!(r.head().contains("content-type: text/plain"), "{what}: {}", r.head());
        assert!(r.text().contains("Transfer-Encoding"), "{what}: {}", r.text());
    }
    // A single `chunked`, in any case, is fine.
    let r = send(addr, b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.text().ends_with("ok"), "{}", r.text());
}

/// Requests whose target or host a backend could read differently from lb (RFC 9112 §3.2,
/// §3.2.4), and `CONNECT`, which a reverse proxy does not tunnel: lb's own answer, a close, and
/// nothing forwarded.
const BAD_TARGETS: &[(&str, u16, &[u8])] = &[
    ("HTTP/1.1 without Host", 400, b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n"),
    ("an empty Host", 400, b"GET / HTTP/1.1\r\nHost:\r\n\r\n"),
    ("a Host with a space", 400, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
    ("a Host with a slash", 400, b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    ("a Host with userinfo", 400, b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"),
    ("a Host with a bad port", 400, b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n"),
    ("HTTP/1.0 with a bad Host", 400, b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n"),
    ("GET *", 400, b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("CONNECT", 405, b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"),
    (
        "CONNECT with a tunnel's first bytes",
        405,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nSSH-2.0-x\r\n",
    ),
];

#[tokio::test]
async fn bad_hosts_targets_and_connect_are_refused_with_nothing_forwarded() {
    let (b, _lb, addr) = lb_with("").await;
    for (what, status, head) in BAD_TARGETS {
        refused(addr, &b, what, *status, head).await;
    }
}

/// What is allowed beside those: `OPTIONS *`, an HTTP/1.0 request without Host (it names the
/// backend), hosts with ports and IP literals, and a higher HTTP/1 minor version, served as
/// HTTP/1.1 (RFC 9110 §2.5), all reach the backend as the client sent them.
#[tokio::test]
async fn good_hosts_options_star_and_http_1_2_are_served() {
    let (b, _lb, addr) = lb_with("").await;
    for (what, bytes, uri) in [
        ("OPTIONS *", &b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"[..], "*"),
        ("HTTP/1.0 without Host", b"GET /ten HTTP/1.0\r\n\r\n", "/ten"),
        ("a host and port", b"GET /port HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close\r\n\r\n", "/port"),
        ("an IPv6 literal", b"GET /v6 HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n", "/v6"),
        ("HTTP/1.2", b"GET /twelve HTTP/1.2\r\nHost: h\r\nConnection: close\r\n\r\n", "/twelve"),
    ] {
        let r = send(addr, bytes).await;
        assert_eq!(r.status(), 200, "{what}: {}", r.text());
        assert_eq!(b.last_seen().uri, uri, "{what}");
    }
}

/// Both Content-Length and Transfer-Encoding, in either order: 400 with the proxy's own text,
/// closed, nothing forwarded, and nothing after it on the connection read. Sent whole, and
/// split so that the head arrives in pieces.
#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400_and_close_with_nothing_forwarded() {
    let (b, _lb, addr) = lb_with("").await;
    let cases: [&[u8]; 3] = [
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ];
    for (i, head) in cases.iter().enumerate() {
        let bytes = [head, SMUGGLED_GET].concat();
        for split in [None, Some(30)] {
            let r = match split {
                None => send(addr, &bytes).await,
                Some(at) => {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    s.write_all(&bytes[..at]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    s.write_all(&bytes[at..]).await.unwrap();
                    read_all(&mut s, PATIENCE).await
                }
            };
            let what = format!("case {i}, split {split:?}");
            let r = assert_refused(addr, &b, &what, 400, r).await;
            assert!(r.head().contains("content-type: text/plain"), "{what}: {}", r.head());
            assert!(r.text().ends_with("both Content-Length and Transfer-Encoding\n"), "{what}: {}", r.text());
        }
    }
}

/// The refused head arrives pipelined behind a good request: the good one is answered and
/// forwarded, then the 400, then the close; the refused request never reaches the backend.
#[tokio::test]
async fn a_pipelined_request_before_a_smuggling_head_is_still_answered() {
    let (b, _lb, addr) = lb_with("").await;
    let bytes = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nfirst\
        POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
        GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let r = send(addr, bytes).await;
    let text = r.text();
    assert!(r.closed, "connection left open: {text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let second = text.find("HTTP/1.1 400").unwrap_or_else(|| panic!("no 400 after the 200: {text}"));
    assert!(text[..second].ends_with("first"), "the first response is not whole: {text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 2, "{text}");
    assert_eq!(b.hits(), 1, "{:?}", b.seen.lock().unwrap());
    assert_eq!(b.last_seen().body, &b"first"[..]);
    normal_request_is_served(addr, &b).await;
}

/// A head with both `Content-Length` and `Transfer-Encoding`, sent behind bytes that must not
/// hide it from the proxy's judging.
const SMUGGLED: &[u8] =
    b"GET /smuggled HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// Sends `first` and then [`SMUGGLED`] on one connection: `first` is served (`forwarded`
/// requests reach the backend, when given), the smuggled head gets the proxy's 400 (unless
/// `may_close_first`: the connection may also end with `first`'s answer, before it is read) and
/// the close, and it never reaches the backend.
async fn smuggled_head_is_judged_after(
    addr: SocketAddr,
    b: &TestBackend,
    what: &str,
    first: &[u8],
    forwarded: Option<usize>,
    may_close_first: bool,
) {
    b.hits.store(0, Ordering::SeqCst);
    b.seen.lock().unwrap().clear();
    let r = send(addr, &[first, SMUGGLED].concat()).await;
    let text = r.text();
    assert!(r.closed, "{what}: connection left open: {text}");
    let refused = text.ends_with("400 Bad Request: both Content-Length and Transfer-Encoding\n");
    assert!(refused || may_close_first && text.ends_with("\r\n\r\na"), "{what}: {text}");
    let uris: Vec<String> = b.seen.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
    assert!(!uris.iter().any(|u| u == "/smuggled" || u == "/fake"), "{what}: the backend saw {uris:?}");
    if let Some(n) = forwarded {
        assert_eq!(b.hits(), n, "{what}: the backend saw {uris:?}");
    }
    normal_request_is_served(addr, b).await;
}

/// hyper ends a trailer line only at CRLF: after the last chunk, a bare LF starts a trailer,
/// and `GET /fake ...` up to the CRLF CRLF is trailer bytes, not a head whose body would hide
/// the next request.
#[tokio::test]
async fn a_bare_lf_in_trailers_does_not_hide_the_next_head() {
    let (b, _lb, addr) = lb_with("").await;
    // The second one's trailers do not parse as headers: hyper fails the body, and the request
    // may or may not have reached the backend by then.
    for (trailers, forwarded) in [
        (format!("0\r\n\nGET /fake HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n", SMUGGLED.len()), Some(1)),
        (format!("0\r\nX-T: a\nGET /fake HTTP/1.1\r\nContent-Length: {}\r\n\r\n", SMUGGLED.len()), None),
    ] {
        let first =
            format!("POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n{trailers}");
        smuggled_head_is_judged_after(addr, &b, &format!("{trailers:?}"), first.as_bytes(), forwarded, false).await;
    }
}

/// hyper takes a chunk size with any number of leading zeros; so must the judging, rather than
/// stop at 16 digits and let the next head through unjudged.
#[tokio::test]
async fn chunk_sizes_with_many_leading_zeros_do_not_hide_the_next_head() {
    let (b, _lb, addr) = lb_with("").await;
    for body in
        [format!("{}\r\n\r\n", "0".repeat(17)), format!("{}1\r\nA\r\n{}\r\n\r\n", "0".repeat(40), "0".repeat(100))]
    {
        let first = format!("POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        smuggled_head_is_judged_after(addr, &b, &body, first.as_bytes(), Some(1), false).await;
    }
}

/// A chunked body hyper fails to decode: its 400 and the close, and nothing after the bad byte
/// is read as a request.
#[tokio::test]
async fn a_malformed_chunk_ends_the_connection_with_nothing_after_it_read() {
    let (b, _lb, addr) = lb_with("").await;
    for body in ["zz\r\n", "1\nA\r\n0\r\n\r\n", "1\r\nAB\r\n0\r\n\r\n", "0\r\n\r\r\n"] {
        let bytes = format!("POST /first HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
        b.seen.lock().unwrap().clear();
        let r = send(addr, bytes.as_bytes()).await;
        assert!(r.closed, "{body:?}: connection left open: {}", r.text());
        assert_eq!(r.text().matches("HTTP/1.1 ").count(), 1, "{body:?}: {}", r.text());
        assert_eq!(r.status(), 400, "{body:?}: {}", r.text());
        let uris: Vec<String> = b.seen.lock().unwrap().iter().map(|s| s.uri.clone()).collect();
        assert!(!uris.iter().any(|u| u == "/smuggled"), "{body:?}: the backend saw {uris:?}");
        normal_request_is_served(addr, &b).await;
    }
}

/// hyper does not parse a `Content-Length` that follows `Transfer-Encoding` (it would serve
/// the request): refused as smuggling whatever its value.
#[tokio::test]
async fn transfer_encoding_with_an_unparsable_content_length_gets_400() {
    let (b, _lb, addr) = lb_with("").await;
    for value in ["1, 1", "+3", ""] {
        let head = format!(
            "POST /te-cl HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: {value}\r\n\r\n0\r\n\r\n"
        );
        let r = refused(addr, &b, &format!("{value:?}"), 400, head.as_bytes()).await;
        assert!(r.text().ends_with("both Content-Length and Transfer-Encoding\n"), "{value:?}: {}", r.text());
    }
}

/// An `Upgrade` header without `upgrade` in `Connection` is not an upgrade lb makes: the heads
/// after it are still judged. (hyper still keeps such a request's upgrade pending, and then
/// drops the connection without shutting it down, so the 400 may not be written; or lb ends
/// the connection with the first answer. Either way the smuggled head goes nowhere.)
#[tokio::test]
async fn an_upgrade_header_lb_does_not_act_on_leaves_the_next_head_judged() {
    let (b, _lb, addr) = lb_with("").await;
    for first in [
        &b"GET /first HTTP/1.1\r\nHost: h\r\nUpgrade: foo\r\n\r\n"[..],
        b"GET /first HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
    ] {
        smuggled_head_is_judged_after(addr, &b, &String::from_utf8_lossy(first), first, Some(1), true).await;
    }
}
