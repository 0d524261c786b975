//! HTTP/1 request framing as the client sent it, followed ahead of hyper's parser.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding`: it drops the
//! length, reads the body as chunked and closes the connection afterwards. That is safe, but
//! SPEC promises `400` and nothing forwarded, as nginx and HAProxy do, and by the time the
//! proxy's service sees the request the `Content-Length` is gone. So the client's byte stream is
//! read through a [`Scanner`] first (see [`super::checked_stream`]): it finds each request head,
//! judges it, and skips the body by its framing (`Content-Length` bytes, or chunks up to the last
//! one and its trailers) to find the next head.
//!
//! It also refuses heads over 64 KiB or with more header lines than `max_headers` (`431`),
//! so that those get lb's own answer too.
//!
//! The scanner only has to be right where hyper would accept the bytes: where hyper will refuse
//! them itself (a malformed head, a bad chunk size, a second different length) the scanner stops
//! judging (`State::Off`) and hyper answers `400` and closes. It also stops after an
//! `Upgrade`/`CONNECT` head (what follows is a tunnel, not HTTP) and for HTTP/2 with prior
//! knowledge (the `PRI * HTTP/2.0` preface).

use memchr::memchr;

/// A head that has not ended within this many bytes is left to hyper, which answers 431 (its
/// buffer is this size, see [`crate::server::MAX_HEAD_BYTES`]).
pub const MAX_HEAD: usize = crate::server::MAX_HEAD_BYTES;

/// A chunk-size or trailer line longer than this is left to hyper (which allows 16 KiB of chunk
/// extensions per body and errors past that).
const MAX_LINE: usize = 20 * 1024;

/// What [`Scanner::scan`] found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes may be handed on; the rest, if any, is an incomplete head or line
    /// that must be seen whole before it can be judged. Scan it again with more bytes after it.
    Pass(usize),
    /// The first `n` bytes may be handed on; the request head that starts there is refused.
    Refuse(usize, Refusal),
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Both `Content-Length` and `Transfer-Encoding` (`400`).
    Smuggling,
    /// Longer than 64 KiB, or more header lines than `max_headers` (`431`).
    TooLarge,
}

/// Where in the request stream the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request head (possibly after empty lines).
    Head,
    /// This many body bytes are left (`Content-Length`).
    Body(u64),
    /// Expecting a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data are left.
    ChunkData(u64),
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
    /// No longer judging: everything passes (see the module doc for when).
    Off,
}

/// Follows one connection's request stream; see the module doc.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Header lines allowed per head (`max_headers`).
    max_headers: usize,
}

impl Default for Scanner {
    /// With 100 header lines allowed, `max_headers`' default.
    fn default() -> Self {
        Scanner::new(100)
    }
}

/// How the body after a judged head is framed.
enum Next {
    Body(u64),
    Chunked,
    /// No body: another head follows.
    Head,
    /// Stop judging (tunnel, HTTP/2, or something hyper refuses itself).
    Off,
    /// Refused (see [`Refusal`]).
    Refuse(Refusal),
}

impl Scanner {
    /// A scanner for a new connection, allowing `max_headers` header lines per head.
    pub fn new(max_headers: usize) -> Self {
        Scanner { state: State::Head, max_headers }
    }

    /// True while the scanner expects a request head: unjudged bytes held now are the start of
    /// one.
    pub fn in_head(&self) -> bool {
        self.state == State::Head
    }

    /// True once the scanner has stopped judging; every later byte passes.
    pub fn is_off(&self) -> bool {
        self.state == State::Off
    }

    /// Judges `data`, the bytes that follow everything judged so far. Bytes reported as passed
    /// are consumed (the scanner's state moves past them); the rest must be offered again,
    /// with more bytes after it, on the next call.
    pub fn scan(&mut self, data: &[u8]) -> Scan {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            if rest.is_empty() {
                return Scan::Pass(pos);
            }
            match self.state {
                State::Off => return Scan::Pass(data.len()),
                State::Head => {
                    // Empty lines before a request line are skipped by httparse; skip them here.
                    let skip = rest.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                    if skip > 0 {
                        pos += skip;
                        continue;
                    }
                    let head = scan_head(rest, self.max_headers);
                    // Too long, ended or not (the same verdict however the bytes were cut into
                    // reads).
                    if head.as_ref().map_or(rest.len(), |(end, _)| *end) > MAX_HEAD {
                        return Scan::Refuse(pos, Refusal::TooLarge);
                    }
                    let Some((end, next)) = head else {
                        return Scan::Pass(pos);
                    };
                    self.state = match next {
                        Next::Refuse(why) => return Scan::Refuse(pos, why),
                        Next::Body(0) | Next::Head => State::Head,
                        Next::Body(n) => State::Body(n),
                        Next::Chunked => State::ChunkSize,
                        Next::Off => State::Off,
                    };
                    pos += end;
                }
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min(rest.len() as u64);
                    pos += take as usize;
                    self.state = match (self.state, left - take) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), n) => State::Body(n),
                        (_, 0) => State::ChunkEnd,
                        (_, n) => State::ChunkData(n),
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let nl = memchr(b'\n', rest);
                    if nl.unwrap_or(rest.len()) > MAX_LINE {
                        self.state = State::Off;
                        return Scan::Pass(data.len());
                    }
                    let Some(nl) = nl else {
                        return Scan::Pass(pos);
                    };
                    let line = trim_cr(&rest[..nl]);
                    pos += nl + 1;
                    self.state = match self.state {
                        State::ChunkSize => match chunk_size(line) {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        },
                        State::ChunkEnd if line.is_empty() => State::ChunkSize,
                        State::Trailers if line.is_empty() => State::Head,
                        State::Trailers => State::Trailers,
                        _ => State::Off,
                    };
                }
            }
        }
    }
}

/// Judges the head at the start of `data` once it is complete: its length including the final
/// empty line, and what follows it. `None` while the head has not ended. One pass over the
/// lines (CRLF or bare LF ends, as httparse accepts both); a head that is still incomplete is
/// looked at again from its start when more bytes come, which only happens when a head is split
/// across reads.
fn scan_head(data: &[u8], max_headers: usize) -> Option<(usize, Next)> {
    let first = memchr(b'\n', data)?;
    let request_line = trim_cr(&data[..first]);
    let mut length: Option<u64> = None;
    let (mut chunked, mut upgrade, mut off) = (false, false, false);
    let mut lines = 0;
    let mut from = first + 1;
    loop {
        let nl = from + memchr(b'\n', &data[from..])?;
        let line = trim_cr(&data[from..nl]);
        from = nl + 1;
        if line.is_empty() {
            break;
        }
        lines += 1;
        if off {
            continue;
        }
        let Some(colon) = memchr(b':', line) else {
            // hyper refuses a line without a colon itself.
            off = true;
            continue;
        };
        // Only three names matter; most lines are ruled out by their first byte.
        if !matches!(line[0] | 0x20, b'c' | b't' | b'u') {
            continue;
        }
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_length(value.trim_ascii()) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                // hyper refuses these itself.
                _ => off = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let next = if lines > max_headers {
        Next::Refuse(Refusal::TooLarge)
    } else if chunked && length.is_some() {
        Next::Refuse(Refusal::Smuggling)
    } else if off
        || request_line.starts_with(b"PRI ") && request_line.ends_with(b" HTTP/2.0")
        // After an upgrade or CONNECT the bytes are a tunnel's (if the backend agrees).
        || upgrade
        || request_line.starts_with(b"CONNECT ")
    {
        Next::Off
    } else {
        // hyper refuses a Transfer-Encoding that does not end in chunked, and on HTTP/1.0.
        match (chunked, length) {
            (true, _) => Next::Chunked,
            (false, Some(n)) => Next::Body(n),
            (false, None) => Next::Head,
        }
    };
    Some((from, next))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A `Content-Length` value as hyper accepts it: ASCII digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The size in a chunk-size line (hex, optionally followed by `;extensions` or whitespace).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `stream` as it would arrive in pieces of `step` bytes, holding back what is not
    /// yet judged the way the stream wrapper does. Returns the bytes passed and whether a
    /// head was refused.
    fn run(stream: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut s = Scanner::default();
        let (mut passed, mut held) = (Vec::new(), Vec::new());
        for piece in stream.chunks(step) {
            held.extend_from_slice(piece);
            match s.scan(&held) {
                Scan::Pass(n) => {
                    passed.extend(held.drain(..n));
                }
                Scan::Refuse(n, _) => {
                    passed.extend(held.drain(..n));
                    return (passed, true);
                }
            }
        }
        (passed, false)
    }

    /// Every piece size gives the same answer as the whole stream at once.
    fn check(stream: &[u8], passed: usize, refused: bool) {
        check_steps(stream, passed, refused, &[1, 2, 3, 7, 64, stream.len().max(1)]);
    }

    fn check_steps(stream: &[u8], passed: usize, refused: bool, steps: &[usize]) {
        for &step in steps {
            let (p, r) = run(stream, step);
            assert_eq!((p.len(), r), (passed, refused), "step {step}: {:?}", String::from_utf8_lossy(stream));
            assert_eq!(&p[..], &stream[..passed]);
        }
    }

    #[test]
    fn plain_gets_pass_whole_heads_only() {
        let one = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        check(one, one.len(), false);
        let two = [&one[..], &one[..]].concat();
        check(&two, two.len(), false);
        // An incomplete head is held back.
        check(b"GET / HTTP/1.1\r\nHost: h\r\n", 0, false);
        check(b"GET / HTTP/1.1\r\nHost: h\r\n\r", 0, false);
        // Bare LF line ends and leading empty lines, as httparse allows.
        let lf = b"\r\n\nGET / HTTP/1.1\nHost: h\n\n";
        check(lf, lf.len(), false);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 60\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n",
        ] {
            let stream = [head, b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"].concat();
            check(&stream, 0, true);
        }
    }

    #[test]
    fn a_refused_head_after_good_requests_passes_only_those() {
        let good = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let chunked = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n";
        let bad = b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let stream = [&good[..], chunked, bad].concat();
        check(&stream, good.len() + chunked.len(), true);
    }

    #[test]
    fn body_bytes_that_look_like_a_bad_head_are_not_judged() {
        let inner = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body_cl =
            [format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", inner.len()).as_bytes(), inner].concat();
        check(&body_cl, body_cl.len(), false);
        let body_chunked = [
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", inner.len()).as_bytes(),
            inner,
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        check(&body_chunked, body_chunked.len(), false);
    }

    #[test]
    fn scanning_stops_where_hyper_takes_over() {
        // HTTP/2 prior knowledge, an upgrade and CONNECT: what follows is not HTTP/1.
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        for first in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            // Heads and chunks that hyper refuses itself.
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let stream = [first, bad].concat();
            check(&stream, stream.len(), false);
        }
    }

    #[test]
    fn oversized_heads_are_refused_and_long_lines_stop_scanning() {
        let mut s = Scanner::default();
        let huge = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(s.scan(&huge), Scan::Refuse(0, Refusal::TooLarge));
        let mut s = Scanner::default();
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(s.scan(head), Scan::Pass(head.len()));
        let long_line = vec![b'1'; MAX_LINE + 1];
        assert_eq!(s.scan(&long_line), Scan::Pass(long_line.len()));
        assert!(s.is_off());
        // A head longer than the limit is refused as such, cut into reads or not.
        let long_bad = [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nX: "[..],
            &vec![b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        check_steps(&long_bad, 0, true, &[1000, 4096, long_bad.len()]);
        // Header lines are counted against max_headers.
        let mut s = Scanner::new(2);
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n"), Scan::Pass(30));
        assert_eq!(s.scan(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), Scan::Refuse(0, Refusal::TooLarge));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"1aF;ext=1"), Some(0x1af));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(chunk_size(b"10000000000000000"), None);
        assert_eq!(chunk_size(b";x"), None);
    }
}
