//! HTTP/2 abuse written frame by frame: rapid reset (CVE-2023-44487) and CONTINUATION floods
//! end in GOAWAY, and nothing of them reaches the backend.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{lb_with, normal_request_is_served};
use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET http://h/`: static-table :method GET, :scheme http, :path /, and :authority
/// as a literal without indexing.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'h'];

/// Reads frames until the server closes; returns the GOAWAY error code, if one came.
///
/// The floods below are far larger than what lb reads before it judges them: the GOAWAY must
/// still arrive, so lb may not close the socket on flood bytes it has not read (the kernel would
/// send a reset, which can discard the GOAWAY before the client reads it; it did in most runs
/// before lb lingered on close).
async fn goaway_code(s: &mut TcpStream) -> (Option<u32>, bool) {
    let r = read_all(s, PATIENCE).await;
    let (mut at, mut code) = (0, None);
    while at + 9 <= r.bytes.len() {
        let len = u32::from_be_bytes([0, r.bytes[at], r.bytes[at + 1], r.bytes[at + 2]]) as usize;
        let payload = r.bytes.get(at + 9..at + 9 + len).unwrap_or_default();
        if r.bytes[at + 3] == GOAWAY && payload.len() >= 8 {
            code = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
        }
        at += 9 + len;
    }
    (code, r.closed)
}

#[tokio::test]
async fn http2_rapid_reset_is_cut_off() {
    let (b, _lb, addr) = lb_with("").await;
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        flood.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, GET_BLOCK));
        flood.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes())); // CANCEL
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&flood).await; // the server may hang up before all of it is written
    let (code, closed) = goaway_code(&mut s).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "no GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(closed);
    // Streams reset before they were accepted never reach the proxy; only a handful may.
    let hits = b.hits();
    assert!(hits < 100, "{hits} of 2000 reset streams reached the backend");
    normal_request_is_served(addr, &b).await;
}

#[tokio::test]
async fn http2_continuation_flood_is_cut_off() {
    let (b, _lb, addr) = lb_with("").await;
    let mut flood = PREFACE.to_vec();
    flood.extend(frame(SETTINGS, 0, 0, &[]));
    flood.extend(frame(HEADERS, END_STREAM, 1, GET_BLOCK));
    // Each CONTINUATION carries one more complete header (literal, new name), none ends it.
    let mut one = vec![0x00, 0x03];
    one.extend_from_slice(b"x-a");
    one.push(100);
    one.extend(std::iter::repeat_n(b'v', 100));
    for _ in 0..5000 {
        flood.extend(frame(CONTINUATION, 0, 1, &one));
    }
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&flood).await;
    let (code, closed) = goaway_code(&mut s).await;
    assert!(matches!(code, Some(c) if c != 0), "no GOAWAY with an error: {code:?}");
    assert!(closed);
    assert_eq!(b.hits(), 0);
    normal_request_is_served(addr, &b).await;
}

/// The `:status` of the first response HEADERS frame on stream 1 in `bytes`, when h2 sent it
/// as an indexed static-table entry (it does for 200, 204, 206, 304, 400, 404 and 500).
fn first_status(bytes: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let stream = u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]]) & 0x7fff_ffff;
        if bytes[at + 3] == HEADERS && stream == 1 {
            return match bytes.get(at + 9)? {
                0x88 => Some(200),
                0x8c => Some(400),
                0x8d => Some(404),
                0x8e => Some(500),
                _ => None,
            };
        }
        at += 9 + len;
    }
    None
}

/// An HTTP/2 request that names no host (no `:authority`, no `Host`) is refused like an
/// HTTP/1.1 one without `Host`, rather than sent on with a host lb made up; one that names it
/// is served.
#[tokio::test]
async fn http2_requests_without_a_host_get_400() {
    let (b, _lb, addr) = lb_with("").await;
    for (block, want) in [(&[0x82u8, 0x86, 0x84][..], 400), (GET_BLOCK, 200)] {
        let mut req = PREFACE.to_vec();
        req.extend(frame(SETTINGS, 0, 0, &[]));
        req.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, block));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while first_status(&got).is_none() {
            let n = tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(first_status(&got), Some(want));
    }
    assert_eq!(b.hits(), 1, "only the request with a host reached the backend");
}
