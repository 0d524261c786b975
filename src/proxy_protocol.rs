//! The PROXY protocol (haproxy's `proxy-protocol.txt`), version 1 (one text line) and version 2
//! (binary): the few bytes a proxy writes before anything else on a connection to say whose
//! connection it relays.
//!
//! - Receiving (`accept_proxy = true` on a listener): [`parse`] is a pure function over the
//!   bytes read so far. It never asks for more bytes than the shortest valid header could still
//!   need ([`Parsed::Incomplete`]), so [`read_header`] reads exactly those and never consumes a
//!   byte past the header: the stream is handed on to TLS, HTTP or the TCP splice untouched, with
//!   no buffer to replay. Headers are at most [`MAX_HEADER_LEN`] bytes (v1: 107 as the spec
//!   says). Anything that does not match the spec exactly is an error and the connection is
//!   closed. A v2 `LOCAL` command or a family lb does not forward (v1 `UNKNOWN`, v2 UNSPEC, UDP,
//!   AF_UNIX) keeps the socket's own addresses, as the spec asks.
//! - Sending (`send_proxy` on a pool, tcp mode): [`encode`] builds the header for a client's
//!   source and destination addresses, or the `LOCAL`/`UNKNOWN` form for lb's own connections
//!   (health checks).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use serde::Deserialize;

/// `send_proxy = "v1" | "v2"`: the PROXY protocol version written to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyVersion {
    V1,
    V2,
}

impl ProxyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (`PROXY UNKNOWN` with two full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;
/// Longest header accepted: v2's 16 fixed bytes plus addresses and TLVs. The spec designs
/// headers to fit in 536 bytes; this leaves room for generous TLVs and refuses anything else.
pub const MAX_HEADER_LEN: usize = 1024;
/// The shortest valid header, `PROXY UNKNOWN\r\n` (v2 headers have at least 16 bytes).
const MIN_HEADER_LEN: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";
/// TLV type of a CRC32C checksum of the whole header.
const PP2_TYPE_CRC32C: u8 = 0x03;

/// The original connection's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: ProxyVersion,
    /// `None` for v2 `LOCAL`, v1 `UNKNOWN`, and families lb does not forward: the receiver
    /// uses the socket's own addresses.
    pub addresses: Option<Addresses>,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long (anything after it is payload).
    Complete { header: Header, len: usize },
    /// Not yet a whole header; at least `at_least` more bytes are needed, and reading exactly
    /// that many never reads past the end of a valid header.
    Incomplete { at_least: usize },
}

/// Why bytes are not a valid PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v2 version {0:#x} (only 2 exists)")]
    Version(u8),
    #[error("PROXY v2 command {0:#x} is neither LOCAL nor PROXY")]
    Command(u8),
    #[error("PROXY v2 family/protocol byte {0:#04x} is invalid")]
    Family(u8),
    #[error("PROXY v2 address block of {0} bytes is too short for its family")]
    ShortAddresses(usize),
    #[error("PROXY header longer than the limit")]
    TooLong,
    #[error("PROXY v2 TLVs are malformed")]
    Tlv,
    #[error("PROXY v2 CRC32C checksum does not match")]
    Checksum,
    #[error("malformed PROXY v1 line: {0}")]
    V1(&'static str),
}

/// Parses the start of a connection. `buf` may hold more than the header (the payload that
/// follows is not looked at) or less (then it says how much more to read at least).
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    match buf.first() {
        None => Ok(Parsed::Incomplete { at_least: MIN_HEADER_LEN }),
        Some(b'\r') => parse_v2(buf),
        Some(b'P') => parse_v1(buf),
        Some(_) => Err(Error::NotProxy),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] != V2_SIGNATURE[..sig] {
        return Err(Error::NotProxy);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete { at_least: 16 - buf.len() });
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(Error::Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(Error::Command(c)),
    };
    let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > MAX_HEADER_LEN {
        return Err(Error::TooLong);
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete { at_least: total - buf.len() });
    }
    let header =
        |addresses| Ok(Parsed::Complete { header: Header { version: ProxyVersion::V2, addresses }, len: total });
    if local {
        // "The receiver must ... discard the protocol block including the family."
        return header(None);
    }
    let (family, transport) = (fam >> 4, fam & 0x0f);
    // Only UNSPEC/UNSPEC, or a known family with STREAM or DGRAM: the spec has receivers
    // reject every other combination.
    let addr_len = match (family, transport) {
        (0, 0) => 0,
        (1, 1 | 2) => 12,
        (2, 1 | 2) => 36,
        (3, 1 | 2) => 216,
        _ => return Err(Error::Family(fam)),
    };
    let block = &buf[16..total];
    if block.len() < addr_len {
        return Err(Error::ShortAddresses(block.len()));
    }
    // "The receiver ... must ignore" what follows an UNSPEC family: its TLVs are not checked.
    if family != 0 {
        check_tlvs(&buf[..total], 16 + addr_len)?;
    }
    let a = &block[..addr_len];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let addresses = match (family, transport) {
        (1, 1) => {
            let (s, d) = (Ipv4Addr::new(a[0], a[1], a[2], a[3]), Ipv4Addr::new(a[4], a[5], a[6], a[7]));
            Some(Addresses { source: (s, port(8)).into(), destination: (d, port(10)).into() })
        }
        (2, 1) => {
            let ip = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&a[at..at + 16]).unwrap_or_default());
            Some(Addresses { source: (ip(0), port(32)).into(), destination: (ip(16), port(34)).into() })
        }
        // UNSPEC, UDP and AF_UNIX: valid, but not a TCP client address; "the receiver ...
        // falls back to the UNSPEC mode" and uses the connection's own endpoints.
        _ => None,
    };
    header(addresses)
}

/// Checks that the TLVs from `at` to the end of `header` are well framed, and verifies a
/// CRC32C TLV when there is one.
fn check_tlvs(header: &[u8], mut at: usize) -> Result<(), Error> {
    let mut crc_at = None;
    while at < header.len() {
        if header.len() - at < 3 {
            return Err(Error::Tlv);
        }
        let (kind, len) = (header[at], usize::from(u16::from_be_bytes([header[at + 1], header[at + 2]])));
        let value = at + 3;
        if header.len() - value < len {
            return Err(Error::Tlv);
        }
        if kind == PP2_TYPE_CRC32C {
            if len != 4 || crc_at.is_some() {
                return Err(Error::Tlv);
            }
            crc_at = Some(value);
        }
        at = value + len;
    }
    if let Some(v) = crc_at {
        let sent = u32::from_be_bytes([header[v], header[v + 1], header[v + 2], header[v + 3]]);
        // The checksum covers the whole header with its own value zeroed.
        let crc = crc32c_update(crc32c_update(crc32c_update(!0, &header[..v]), &[0; 4]), &header[v + 4..]);
        if !crc != sent {
            return Err(Error::Checksum);
        }
    }
    Ok(())
}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: headers are small and rare.
fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    crc
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(Error::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(Error::V1("LF without CR")),
        Some(i) if i + 2 > V1_MAX_LEN => Err(Error::TooLong),
        Some(i) => match buf.get(i + 1) {
            Some(b'\n') => {
                let addresses = v1_line(&buf[..i])?;
                Ok(Parsed::Complete { header: Header { version: ProxyVersion::V1, addresses }, len: i + 2 })
            }
            Some(_) => Err(Error::V1("CR without LF")),
            None => {
                v1_partial(&buf[..i])?;
                Ok(Parsed::Incomplete { at_least: 1 })
            }
        },
        None if buf.len() >= V1_MAX_LEN => Err(Error::TooLong),
        None => {
            let at_least = v1_partial(buf)?.max(MIN_HEADER_LEN.saturating_sub(buf.len()));
            if buf.len() + at_least > V1_MAX_LEN {
                return Err(Error::TooLong);
            }
            Ok(Parsed::Incomplete { at_least })
        }
    }
}

/// Checks the start of a v1 line (no CR or LF yet) and returns a lower bound of the bytes that
/// must still follow, CRLF included: each missing field needs a space and one character.
fn v1_partial(line: &[u8]) -> Result<usize, Error> {
    if line.len() < V1_PREFIX.len() {
        return Ok(MIN_HEADER_LEN - line.len());
    }
    let rest = &line[V1_PREFIX.len()..];
    if !rest.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Error::V1("not printable ASCII"));
    }
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        // Still in the protocol name: "UNKNOWN" then CRLF, or "TCP4"/"TCP6" then four fields.
        let unknown = b"UNKNOWN".starts_with(rest).then(|| 7 - rest.len() + 2);
        let tcp = (b"TCP4".starts_with(rest) || b"TCP6".starts_with(rest)).then(|| 4 - rest.len() + 4 * 2 + 2);
        return match (unknown, tcp) {
            (Some(a), Some(b)) => Ok(a.min(b)),
            (Some(n), None) | (None, Some(n)) => Ok(n),
            (None, None) => Err(Error::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
        };
    };
    let fields = &rest[space + 1..];
    match &rest[..space] {
        // Anything may follow UNKNOWN up to the CRLF.
        b"UNKNOWN" => Ok(2),
        b"TCP4" | b"TCP6" => {
            let spaces = fields.iter().filter(|&&b| b == b' ').count();
            if spaces > 3 {
                return Err(Error::V1("more than four fields"));
            }
            if fields.starts_with(b" ") || fields.windows(2).any(|w| w == b"  ") {
                return Err(Error::V1("empty field"));
            }
            let current_empty = fields.is_empty() || fields.ends_with(b" ");
            Ok((3 - spaces) * 2 + usize::from(current_empty) + 2)
        }
        _ => Err(Error::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    }
}

/// Parses a whole v1 line without its CRLF.
fn v1_line(line: &[u8]) -> Result<Option<Addresses>, Error> {
    if !line.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Error::V1("not printable ASCII"));
    }
    let line = std::str::from_utf8(line).map_err(|_| Error::V1("not printable ASCII"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(Error::NotProxy);
    }
    let v4 = match parts.next() {
        Some("UNKNOWN") => return Ok(None),
        Some("TCP4") => true,
        Some("TCP6") => false,
        _ => return Err(Error::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::V1("expected source, destination and two ports"));
    };
    let ip = |s: &str| -> Result<IpAddr, Error> {
        if v4 {
            // Rust's parser already refuses leading zeros ("octal"), as the spec does.
            s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| Error::V1("invalid IPv4 address"))
        } else {
            s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| Error::V1("invalid IPv6 address"))
        }
    };
    Ok(Some(Addresses {
        source: SocketAddr::new(ip(src)?, v1_port(sport)?),
        destination: SocketAddr::new(ip(dst)?, v1_port(dport)?),
    }))
}

/// A decimal port, 0 to 65535, without sign or leading zeros.
fn v1_port(s: &str) -> Result<u16, Error> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(Error::V1("invalid port"));
    }
    s.parse().map_err(|_| Error::V1("invalid port"))
}

/// The header announcing `addresses` (a relayed client), or, with `None`, a connection lb makes
/// on its own behalf (a health check): v2 `LOCAL`, v1 `UNKNOWN`.
///
/// IPv4-mapped IPv6 addresses (from a dual-stack listener) are sent as IPv4; when the two
/// families still differ, both go as IPv6.
pub fn encode(version: ProxyVersion, addresses: Option<Addresses>) -> Vec<u8> {
    let canonical = addresses.map(|a| {
        let c = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
        (c(a.source), c(a.destination))
    });
    match (version, canonical) {
        (ProxyVersion::V1, None) => b"PROXY UNKNOWN\r\n".to_vec(),
        (ProxyVersion::V1, Some((s, d))) => {
            let (proto, si, di) = match (s.ip(), d.ip()) {
                (IpAddr::V4(si), IpAddr::V4(di)) => ("TCP4", IpAddr::V4(si), IpAddr::V4(di)),
                (si, di) => ("TCP6", IpAddr::V6(as_v6(si)), IpAddr::V6(as_v6(di))),
            };
            format!("PROXY {proto} {si} {di} {} {}\r\n", s.port(), d.port()).into_bytes()
        }
        (ProxyVersion::V2, None) => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
        (ProxyVersion::V2, Some((s, d))) => {
            let mut out = Vec::with_capacity(16 + 36);
            out.extend_from_slice(&V2_SIGNATURE);
            match (s.ip(), d.ip()) {
                (IpAddr::V4(si), IpAddr::V4(di)) => {
                    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    out.extend_from_slice(&si.octets());
                    out.extend_from_slice(&di.octets());
                }
                (si, di) => {
                    out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    out.extend_from_slice(&as_v6(si).octets());
                    out.extend_from_slice(&as_v6(di).octets());
                }
            }
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
            out
        }
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("{0}")]
    Invalid(#[from] Error),
    #[error("reading the PROXY header failed: {0}")]
    Io(#[from] io::Error),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
}

/// Reads one header from `stream`, consuming exactly its bytes and nothing after it.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, AcceptError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse(&buf)? {
            Parsed::Complete { header, len } if len == buf.len() => return Ok(header),
            // Cannot happen (reads never go past a valid header); refuse rather than lose bytes.
            Parsed::Complete { .. } => return Err(Error::TooLong.into()),
            Parsed::Incomplete { at_least } => {
                let have = buf.len();
                buf.resize(have + at_least, 0);
                stream.read_exact(&mut buf[have..]).await?;
            }
        }
    }
}

/// The addresses a connection on an `accept_proxy` listener stands for: the header's, or the
/// socket's own (`peer`, `local`) for `LOCAL`/`UNKNOWN`. The header must arrive within `timeout`.
pub async fn accept<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    local: SocketAddr,
    timeout: Duration,
) -> Result<(SocketAddr, SocketAddr), AcceptError> {
    match tokio::time::timeout(timeout, read_header(stream)).await {
        Err(_) => Err(AcceptError::Timeout(timeout)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Header { addresses: Some(a), .. })) => Ok((a.source, a.destination)),
        Ok(Ok(Header { addresses: None, .. })) => Ok((peer, local)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("{buf:?}: expected a complete header, got {other:?}"),
        }
    }

    /// The property [`read_header`] relies on: for every proper prefix of a valid header, the
    /// parser asks for more, and never for more than what is left of the header.
    fn assert_prefixes_ask_within(header: &[u8]) {
        for k in 0..header.len() {
            match parse(&header[..k]) {
                Ok(Parsed::Incomplete { at_least }) => {
                    assert!(at_least >= 1 && k + at_least <= header.len(), "prefix {k}: asks {at_least}")
                }
                other => panic!("prefix {k} of {header:?}: {other:?}"),
            }
        }
    }

    /// Reads like `read_header` does, from a complete byte string; returns the consumed length.
    fn read_by_bounds(bytes: &[u8]) -> Result<(Header, usize), Error> {
        let mut have = 0;
        loop {
            match parse(&bytes[..have])? {
                Parsed::Complete { header, len } => return Ok((header, len)),
                Parsed::Incomplete { at_least } => {
                    have += at_least;
                    if have > bytes.len() {
                        return Err(Error::NotProxy); // would wait for more input
                    }
                }
            }
        }
    }

    // The v2 header haproxy sent in front of an HTTP request (a capture of TCP over IPv4 from
    // 172.19.0.1:42578 to 172.19.0.3:80).
    const HAPROXY_V2: [u8; 28] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c, 0xac, 0x13,
        0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50,
    ];

    #[test]
    fn v2_tcp4_from_haproxy() {
        let mut bytes = HAPROXY_V2.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (h, len) = complete(&bytes);
        assert_eq!(len, 28);
        assert_eq!(h.version, ProxyVersion::V2);
        assert_eq!(h.addresses, Some(Addresses { source: sa("172.19.0.1:42578"), destination: sa("172.19.0.3:80") }));
        assert_prefixes_ask_within(&HAPROXY_V2);
        assert_eq!(encode(ProxyVersion::V2, h.addresses), HAPROXY_V2);
    }

    #[test]
    fn v2_tcp6_round_trips() {
        let a = Addresses { source: sa("[2001:db8::1]:56324"), destination: sa("[2001:db8::11]:443") };
        let bytes = encode(ProxyVersion::V2, Some(a));
        assert_eq!(bytes.len(), 16 + 36);
        assert_eq!(&bytes[12..16], &[0x21, 0x21, 0x00, 0x24]);
        assert_eq!(&bytes[16..32], &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(&bytes[48..52], &[0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(complete(&bytes), (Header { version: ProxyVersion::V2, addresses: Some(a) }, 52));
        assert_prefixes_ask_within(&bytes);
    }

    #[test]
    fn v2_local_keeps_the_socket_addresses_and_skips_its_block() {
        let local = encode(ProxyVersion::V2, None);
        assert_eq!(local, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00");
        assert_eq!(complete(&local), (Header { version: ProxyVersion::V2, addresses: None }, 16));
        // "must not assume zero is presented for LOCAL": a block (even an odd family) is skipped.
        let mut with_block = HAPROXY_V2.to_vec();
        with_block[12] = 0x20;
        with_block[13] = 0xff;
        assert_eq!(complete(&with_block), (Header { version: ProxyVersion::V2, addresses: None }, 28));
    }

    #[test]
    fn v2_unspec_udp_and_unix_fall_back_to_the_socket() {
        for fam in [0x00u8, 0x12, 0x22, 0x31, 0x32] {
            let len: u16 = match fam >> 4 {
                0 => 0,
                1 => 12,
                2 => 36,
                _ => 216,
            };
            let mut b = V2_SIGNATURE.to_vec();
            b.extend_from_slice(&[0x21, fam]);
            b.extend_from_slice(&len.to_be_bytes());
            b.resize(16 + usize::from(len), 7);
            assert_eq!(complete(&b).0.addresses, None, "family {fam:#04x}");
        }
        // What follows an UNSPEC family is ignored, even when it is no valid TLV list.
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x00, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(complete(&b).0.addresses, None);
    }

    #[test]
    fn v2_invalid_fields_are_refused() {
        let with = |i: usize, v: u8| {
            let mut b = HAPROXY_V2.to_vec();
            b[i] = v;
            parse(&b)
        };
        assert_eq!(with(12, 0x11), Err(Error::Version(1)));
        assert_eq!(with(12, 0x31), Err(Error::Version(3)));
        assert_eq!(with(12, 0x22), Err(Error::Command(2)));
        assert_eq!(with(13, 0x41), Err(Error::Family(0x41)));
        assert_eq!(with(13, 0x13), Err(Error::Family(0x13)));
        // A known family without a transport, or a transport without a family.
        for fam in [0x01u8, 0x02, 0x10, 0x20, 0x30] {
            assert_eq!(with(13, fam), Err(Error::Family(fam)), "family {fam:#04x}");
        }
        // TCP over IPv6 needs 36 bytes; 12 are announced.
        assert_eq!(with(13, 0x21), Err(Error::ShortAddresses(12)));
        // A wrong signature byte anywhere is not PROXY at all.
        for (i, b) in V2_SIGNATURE.iter().enumerate() {
            assert_eq!(with(i, b ^ 0x40), Err(Error::NotProxy), "byte {i}");
        }
        // Fails as soon as a signature byte is wrong, without waiting for 16 bytes.
        assert_eq!(parse(b"\r\n\r\nX"), Err(Error::NotProxy));
    }

    #[test]
    fn v2_length_limit_is_checked_before_reading_the_block() {
        let mut b = V2_SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11]);
        b.extend_from_slice(&((MAX_HEADER_LEN - 16 + 1) as u16).to_be_bytes());
        assert_eq!(parse(&b), Err(Error::TooLong));
        b.truncate(14);
        b.extend_from_slice(&((MAX_HEADER_LEN - 16) as u16).to_be_bytes());
        assert_eq!(parse(&b), Ok(Parsed::Incomplete { at_least: MAX_HEADER_LEN - 16 }));
        b[14..16].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(parse(&b), Err(Error::TooLong));
    }

    fn with_tlvs(tlvs: &[u8]) -> Vec<u8> {
        let mut b = HAPROXY_V2.to_vec();
        b[14..16].copy_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
        b.extend_from_slice(tlvs);
        b
    }

    #[test]
    fn v2_tlvs_are_skipped_when_well_framed() {
        // PP2_TYPE_AUTHORITY "example.com", then a 3-byte NOOP.
        let mut tlvs = vec![0x02, 0x00, 0x0b];
        tlvs.extend_from_slice(b"example.com");
        tlvs.extend_from_slice(&[0x04, 0x00, 0x00]);
        let b = with_tlvs(&tlvs);
        let (h, len) = complete(&b);
        assert_eq!((h.addresses.unwrap().source, len), (sa("172.19.0.1:42578"), b.len()));
        assert_prefixes_ask_within(&b);
        // A TLV running past the header, or a stray byte after the last one.
        assert_eq!(parse(&with_tlvs(&[0x02, 0x00, 0x05, b'a'])), Err(Error::Tlv));
        assert_eq!(parse(&with_tlvs(&[0x04, 0x00, 0x00, 0x01])), Err(Error::Tlv));
        assert_eq!(parse(&with_tlvs(&[0x04, 0x00])), Err(Error::Tlv));
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(!crc32c_update(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn v2_crc32c_is_verified() {
        let mut b = with_tlvs(&[PP2_TYPE_CRC32C, 0x00, 0x04, 0, 0, 0, 0]);
        let crc = !crc32c_update(!0, &b);
        let at = b.len() - 4;
        b[at..].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(complete(&b).1, b.len());
        b[at] ^= 1;
        assert_eq!(parse(&b), Err(Error::Checksum));
        // A checksum of the wrong size is malformed.
        assert_eq!(parse(&with_tlvs(&[PP2_TYPE_CRC32C, 0x00, 0x02, 0, 0])), Err(Error::Tlv));
    }

    #[test]
    fn v1_examples_from_the_spec() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (h, len) = complete(line);
        assert_eq!(len, 47);
        assert_eq!(
            h,
            Header {
                version: ProxyVersion::V1,
                addresses: Some(Addresses { source: sa("192.168.0.1:56324"), destination: sa("192.168.0.11:443") }),
            }
        );
        assert_prefixes_ask_within(&line[..47]);

        // The longest lines the spec lists: 56 (TCP4), 104 (TCP6) and 107 (UNKNOWN) bytes.
        let tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        assert_eq!(complete(tcp4).1, 56);
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
        assert_eq!(complete(tcp6.as_bytes()).1, 104);
        let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(complete(worst.as_bytes()), (Header { version: ProxyVersion::V1, addresses: None }, 107));
        let short = b"PROXY UNKNOWN\r\n";
        assert_eq!(complete(short), (Header { version: ProxyVersion::V1, addresses: None }, 15));
        for h in [&tcp4[..], tcp6.as_bytes(), worst.as_bytes(), short] {
            assert_prefixes_ask_within(h);
        }
    }

    #[test]
    fn v1_encoding() {
        let a = Addresses { source: sa("192.168.0.1:56324"), destination: sa("192.168.0.11:443") };
        assert_eq!(encode(ProxyVersion::V1, Some(a)), b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
        let a6 = Addresses { source: sa("[2001:db8::1]:1"), destination: sa("[::ffff:10.0.0.1]:2") };
        assert_eq!(encode(ProxyVersion::V1, Some(a6)), b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 1 2\r\n");
        // A dual-stack listener's mapped addresses go out as plain IPv4.
        let mapped = Addresses { source: sa("[::ffff:10.0.0.2]:5"), destination: sa("[::ffff:10.0.0.1]:6") };
        assert_eq!(encode(ProxyVersion::V1, Some(mapped)), b"PROXY TCP4 10.0.0.2 10.0.0.1 5 6\r\n");
        assert_eq!(encode(ProxyVersion::V1, None), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  // LF alone
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX", // CR alone
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",    // a port missing
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 2 3\r\n",    // a field too many
            b"PROXY TCP4 192.168.0.1  192.168.0.11 1 2\r\n",     // two spaces
            b"PROXY TCP4 192.168.000.1 192.168.0.11 1 2\r\n",    // leading zeros (octal?)
            b"PROXY TCP4 192.168.0.1 192.168.0.11 01 2\r\n",     // leading zero in a port
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 2\r\n",     // sign
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 2\r\n",  // port out of range
            b"PROXY TCP4 ::1 ::1 1 2\r\n",                       // family mismatch
            b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n",               // family mismatch
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",               // unknown protocol
            b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n",               // case matters
            b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",              // two spaces
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n",              // trailing space
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 \xff\r\n",            // not ASCII
            b"PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n",                // no space after PROXY
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",               // case matters
        ];
        for b in bad {
            assert!(parse(b).is_err(), "accepted {:?}", String::from_utf8_lossy(b));
        }
        // No CRLF within 107 bytes.
        let long = format!("PROXY UNKNOWN {}", "a".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(Error::TooLong));
        let almost = format!("PROXY UNKNOWN {}\r\n", "a".repeat(92));
        assert_eq!(almost.len(), 108);
        assert_eq!(parse(almost.as_bytes()), Err(Error::TooLong));
    }

    #[test]
    fn garbage_and_other_protocols_are_refused_early() {
        for b in [&b"GET / HTTP/1.1\r\n"[..], b"\x16\x03\x01\x02\x00", b"SSH-2.0-OpenSSH", b"\0", b"PRI * HTTP/2.0"] {
            assert!(parse(b).is_err(), "accepted {b:?}");
        }
        // A client that speaks first without a header is refused after the first 15 bytes.
        assert_eq!(read_by_bounds(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Err(Error::NotProxy));
        assert_eq!(parse(b""), Ok(Parsed::Incomplete { at_least: 15 }));
    }

    #[test]
    fn reading_by_bounds_stops_exactly_at_the_end_of_the_header() {
        let v1 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\nSSH-2.0-x\r\n";
        assert_eq!(read_by_bounds(v1).unwrap().1, 44);
        let mut v2 = HAPROXY_V2.to_vec();
        v2.extend_from_slice(b"payload");
        assert_eq!(read_by_bounds(&v2).unwrap().1, 28);
        // The shortest header followed by nothing: a server-speaks-first protocol must not hang.
        assert_eq!(read_by_bounds(b"PROXY UNKNOWN\r\n").unwrap().1, 15);
    }

    /// A small deterministic fuzz: random and mutated inputs never panic, complete headers are
    /// never longer than the input or the limits, and every answer agrees with the prefix rule.
    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let seeds: Vec<Vec<u8>> = vec![
            HAPROXY_V2.to_vec(),
            encode(ProxyVersion::V2, Some(Addresses { source: sa("[::1]:1"), destination: sa("[::2]:2") })),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            b"PROXY TCP6 ::1 ::2 1 2\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ];
        for i in 0..200_000 {
            let mut b = seeds[i % seeds.len()].clone();
            match next() % 4 {
                0 => {
                    let at = next() as usize % b.len();
                    b[at] = next() as u8;
                }
                1 => b.truncate(next() as usize % (b.len() + 1)),
                2 => {
                    let at = next() as usize % (b.len() + 1);
                    b.insert(at, next() as u8);
                }
                _ => b = (0..next() % 64).map(|_| next() as u8).collect(),
            }
            match parse(&b) {
                Ok(Parsed::Complete { len, .. }) => {
                    assert!(len <= b.len() && len <= MAX_HEADER_LEN);
                    // The same header alone parses the same, and every prefix asks within it.
                    assert_eq!(parse(&b[..len]).map(|p| matches!(p, Parsed::Complete { .. })), Ok(true));
                    assert_prefixes_ask_within(&b[..len]);
                }
                Ok(Parsed::Incomplete { at_least }) => assert!(at_least >= 1 && b.len() + at_least <= MAX_HEADER_LEN),
                Err(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn read_header_consumes_exactly_the_header_from_a_trickling_stream() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut bytes = b"PROXY TCP4 10.1.2.3 10.0.0.1 4242 443\r\n".to_vec();
        bytes.extend_from_slice(b"hello");
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(3) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let h = read_header(&mut server).await.unwrap();
        assert_eq!(h.addresses.unwrap().source, sa("10.1.2.3:4242"));
        let _client = writer.await.unwrap();
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
    }
}
