//! HTTP/1 request framing as the client sent it, followed ahead of hyper's parser.
//!
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding`: it drops the
//! length, reads the body as chunked and closes the connection afterwards. That is safe, but
//! lb promises `400` and nothing forwarded (README, "Request smuggling and malformed
//! requests"), as nginx and HAProxy do, and by the time the proxy's service sees the request
//! the `Content-Length` is gone. So the client's byte stream is read through a [`Scanner`]
//! first (see `crate::server::checked_stream`): it finds each request head,
//! judges it, and skips the body by its framing (`Content-Length` bytes, or chunks up to the last
//! one and its trailers) to find the next head.
//!
//! It also refuses heads over 64 KiB or with more header lines than `max_headers` (`431`),
//! so that those get lb's own answer too.
//!
//! The scanner must see every message boundary where hyper does. Chunked bodies are followed
//! byte by byte with the states of hyper's own chunked decoder; at a byte hyper fails on,
//! the scanner passes that byte (hyper answers) and refuses everything after it
//! ([`Refusal::Malformed`]). A head hyper refuses itself (a line without a colon, a bad or second
//! different `Content-Length`) turns the scanner off (`State::Off`): hyper answers `400` and
//! closes. It is also off after a head lb tunnels (an HTTP/1.1 upgrade, `CONNECT`) and for
//! HTTP/2 with prior knowledge (the `PRI * HTTP/2.0` preface).

use memchr::{memchr, memchr2};

/// A head that has not ended within this many bytes is refused (hyper's buffer is this size,
/// see `super::MAX_HEAD_BYTES`).
pub const MAX_HEAD: usize = super::MAX_HEAD_BYTES;

/// What [`Scanner::scan`] found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// The first `n` bytes may be handed on; the rest, if any, is an incomplete head that must
    /// be seen whole before it can be judged. Scan it again with more bytes after it.
    Pass(usize),
    /// The first `n` bytes may be handed on; nothing after them may (see [`Refusal`]).
    Refuse(usize, Refusal),
}

/// Why the stream is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A head with both `Content-Length` and `Transfer-Encoding` (`400`).
    Smuggling,
    /// A head longer than 64 KiB, or with more header lines than `max_headers` (`431`).
    TooLarge,
    /// A chunked body hyper fails to decode at the last byte passed: hyper answers it, lb adds
    /// nothing and reads no further.
    Malformed,
}

/// Where in the request stream the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head (possibly before it, in empty lines); see [`HeadScan`].
    Head,
    /// This many body bytes are left (`Content-Length`).
    Body(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// No longer judging: everything passes (see the module doc for when).
    Off,
}

/// hyper's `ChunkedState`, with the chunk size carried along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    Start,
    Size(u64),
    /// Spaces or tabs after the size.
    SizeLws(u64),
    /// `;` and anything up to CR.
    Extension(u64),
    SizeLf(u64),
    /// This many bytes of chunk data are left.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk's size line or a trailer line: CR (the end) or a trailer.
    EndCr,
    EndLf,
    /// A trailer line: hyper ends it only at CR, which LF must follow.
    Trailer,
    TrailerLf,
}

/// Follows one connection's request stream; see the module doc.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// What has been seen of the current head (while `state` is `Head`).
    head: HeadScan,
    /// Header lines allowed per head (`max_headers`).
    max_headers: usize,
    /// The last head judged may have turned the connection into a tunnel.
    tunnel: bool,
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
    /// Stop judging (HTTP/2, or a head hyper refuses itself).
    Off,
    /// Stop judging: the head may turn the connection into a tunnel.
    Tunnel,
    /// Refused (see [`Refusal`]).
    Refuse(Refusal),
}

impl Scanner {
    /// A scanner for a new connection, allowing `max_headers` header lines per head.
    pub fn new(max_headers: usize) -> Self {
        Scanner { state: State::Head, head: HeadScan::default(), max_headers, tunnel: false }
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

    /// True once a head that may become a tunnel (an HTTP/1.1 upgrade, `CONNECT`) was passed:
    /// the connection's bytes may then be the tunnel's, not HTTP.
    pub fn may_tunnel(&self) -> bool {
        self.tunnel
    }

    /// Judges `data`, the bytes that follow everything judged so far. Bytes reported as passed
    /// are consumed (the scanner's state moves past them); the rest must be offered again,
    /// with more bytes after it, on the next call. The one change it makes to them: a request
    /// line's `HTTP/1.2` to `HTTP/1.9` becomes `HTTP/1.1` (see [`HeadScan::scan`]).
    pub fn scan(&mut self, data: &mut [u8]) -> Scan {
        let mut pos = 0;
        loop {
            let rest = &mut data[pos..];
            if rest.is_empty() {
                return Scan::Pass(pos);
            }
            match self.state {
                State::Off => return Scan::Pass(data.len()),
                State::Head => {
                    if self.head.scanned == 0 {
                        // Empty lines before a request line are skipped by httparse; skip them
                        // here.
                        let skip = rest.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
                        if skip > 0 {
                            pos += skip;
                            continue;
                        }
                    }
                    let end = match self.head.scan(rest, self.max_headers) {
                        // Refused as soon as it is certain, so that a head trickled in does not
                        // keep being held (the same verdict as once it is whole).
                        Progress::TooManyLines => return Scan::Refuse(pos, Refusal::TooLarge),
                        Progress::Incomplete if rest.len() > MAX_HEAD => return Scan::Refuse(pos, Refusal::TooLarge),
                        Progress::Incomplete => return Scan::Pass(pos),
                        Progress::Complete(end) => end,
                    };
                    let head = std::mem::take(&mut self.head);
                    if end > MAX_HEAD {
                        return Scan::Refuse(pos, Refusal::TooLarge);
                    }
                    self.state = match head.next() {
                        Next::Refuse(why) => return Scan::Refuse(pos, why),
                        Next::Body(0) | Next::Head => State::Head,
                        Next::Body(n) => State::Body(n),
                        Next::Chunked => State::Chunked(Chunk::Start),
                        Next::Off => State::Off,
                        Next::Tunnel => {
                            self.tunnel = true;
                            State::Off
                        }
                    };
                    pos += end;
                }
                State::Body(left) => {
                    let take = left.min(rest.len() as u64);
                    pos += take as usize;
                    self.state = if left == take { State::Head } else { State::Body(left - take) };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let take = left.min(rest.len() as u64);
                    pos += take as usize;
                    self.state = State::Chunked(if left == take { Chunk::DataCr } else { Chunk::Data(left - take) });
                }
                // Runs of bytes that do not change the state, skipped at once.
                State::Chunked(Chunk::Extension(_)) if !matches!(rest[0], b'\r' | b'\n') => {
                    pos += memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                }
                State::Chunked(Chunk::Trailer) if rest[0] != b'\r' => {
                    pos += memchr(b'\r', rest).unwrap_or(rest.len());
                }
                State::Chunked(chunk) => {
                    pos += 1;
                    self.state = match chunk_byte(chunk, rest[0]) {
                        Some(Some(next)) => State::Chunked(next),
                        Some(None) => State::Head,
                        None => return Scan::Refuse(pos, Refusal::Malformed),
                    };
                }
            }
        }
    }
}

/// One byte of a chunked body outside chunk data, as hyper's decoder takes it: the next state,
/// `Some(None)` at the end of the body, `None` where hyper fails.
fn chunk_byte(chunk: Chunk, b: u8) -> Option<Option<Chunk>> {
    use Chunk::*;
    let next = match (chunk, b) {
        (Start, _) => Size(hex(b)?),
        // Any number of digits, as long as the size fits (hyper's checked arithmetic).
        (Size(n), _) if b.is_ascii_hexdigit() => Size(n.checked_mul(16)?.checked_add(hex(b)?)?),
        (Size(n) | SizeLws(n), b' ' | b'\t') => SizeLws(n),
        (Size(n) | SizeLws(n), b';') => Extension(n),
        (Size(n) | SizeLws(n) | Extension(n), b'\r') => SizeLf(n),
        (Extension(_), b'\n') => return None,
        (Extension(n), _) => Extension(n),
        (SizeLf(0), b'\n') => EndCr,
        (SizeLf(n), b'\n') => Data(n),
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => Start,
        (EndCr, b'\r') => EndLf,
        // Any other byte (a bare LF too) starts a trailer line.
        (EndCr, _) => Trailer,
        (Trailer, b'\r') => TrailerLf,
        (Trailer, _) => Trailer,
        (TrailerLf, b'\n') => EndCr,
        (EndLf, b'\n') => return Some(None),
        _ => return None,
    };
    Some(Some(next))
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// How far [`HeadScan::scan`] got.
enum Progress {
    /// The head has not ended yet.
    Incomplete,
    /// More header lines than allowed, ended or not.
    TooManyLines,
    /// The head ends after this many bytes (its final empty line included).
    Complete(usize),
}

/// What has been seen of the head being received. Kept between calls, so that a head that
/// arrives in pieces is scanned once, however many reads it takes.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of whole lines already scanned (0: nothing yet, not even the request line).
    scanned: usize,
    /// No line end before this offset.
    searched: usize,
    /// Header lines so far.
    lines: usize,
    http11: bool,
    connect: bool,
    h2: bool,
    /// Any `Content-Length` line, whatever its value.
    saw_length: bool,
    length: Option<u64>,
    /// Any `Transfer-Encoding` line.
    te: bool,
    upgrade: bool,
    connection_upgrade: bool,
    /// Something hyper refuses the head for.
    bad: bool,
}

impl HeadScan {
    /// Goes on scanning the head at the start of `data` (the same bytes as on the last call,
    /// and maybe more) from where the last call stopped. Lines end at LF, with or without CR
    /// before it, as httparse accepts both.
    ///
    /// A request line ending in `HTTP/1.2` to `HTTP/1.9` is rewritten to `HTTP/1.1` in place:
    /// RFC 9110 §2.5 has a server answer a higher minor version of a major version it speaks
    /// as the highest it supports, but httparse (so hyper) refuses any minor version beyond 1.
    fn scan(&mut self, data: &mut [u8], max_headers: usize) -> Progress {
        loop {
            let search = self.searched.max(self.scanned).min(data.len());
            let Some(i) = memchr(b'\n', &data[search..]) else {
                self.searched = data.len();
                return Progress::Incomplete;
            };
            let nl = search + i;
            let start = self.scanned;
            self.scanned = nl + 1;
            // The line without its LF, and without the CR before it if there is one.
            let end = nl - usize::from(nl > start && data[nl - 1] == b'\r');
            if start == 0 {
                if let [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] = &data[..end] {
                    data[end - 1] = b'1';
                }
                let line = &data[..end];
                self.http11 = line.ends_with(b" HTTP/1.1");
                self.connect = line.starts_with(b"CONNECT ");
                self.h2 = line.starts_with(b"PRI ") && line.ends_with(b" HTTP/2.0");
                continue;
            }
            let line = &data[start..end];
            if line.is_empty() {
                return Progress::Complete(self.scanned);
            }
            self.lines += 1;
            if self.lines > max_headers {
                return Progress::TooManyLines;
            }
            self.header(line);
        }
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = memchr(b':', line) else {
            // hyper refuses a line without a colon itself.
            self.bad = true;
            return;
        };
        // Only four names matter; most lines are ruled out by their first byte.
        if !matches!(line[0] | 0x20, b'c' | b't' | b'u') {
            return;
        }
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            // Noted whatever the value: hyper ignores one after `Transfer-Encoding`.
            self.saw_length = true;
            match parse_length(value.trim_ascii()) {
                Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                // hyper refuses these itself (without `Transfer-Encoding`).
                _ => self.bad = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            // As lb reads it (`headers::is_upgrade_request`).
            self.connection_upgrade |=
                value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        }
    }

    /// What follows the whole head.
    fn next(&self) -> Next {
        if self.te && self.saw_length {
            Next::Refuse(Refusal::Smuggling)
        } else if self.bad || self.h2 {
            Next::Off
        } else if self.connect || (self.http11 && self.upgrade && self.connection_upgrade) {
            // Heads lb tunnels: what follows is the tunnel's if the backend agrees (and lb
            // closes the connection if it does not).
            Next::Tunnel
        } else if self.te {
            // hyper refuses a Transfer-Encoding that does not end in chunked, and on HTTP/1.0.
            Next::Chunked
        } else {
            self.length.map_or(Next::Head, Next::Body)
        }
    }
}

/// A `Content-Length` value as hyper accepts it: ASCII digits only.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `stream` as it would arrive in pieces of `step` bytes, holding back what is not
    /// yet judged the way the stream wrapper does. Returns the bytes passed and the refusal.
    fn run(stream: &[u8], step: usize) -> (Vec<u8>, Option<Refusal>) {
        let mut s = Scanner::default();
        let (mut passed, mut held) = (Vec::new(), Vec::new());
        for piece in stream.chunks(step) {
            held.extend_from_slice(piece);
            match s.scan(&mut held) {
                Scan::Pass(n) => {
                    passed.extend(held.drain(..n));
                }
                Scan::Refuse(n, why) => {
                    passed.extend(held.drain(..n));
                    return (passed, Some(why));
                }
            }
        }
        (passed, None)
    }

    /// Every piece size gives the same answer as the whole stream at once.
    fn check(stream: &[u8], passed: usize, refused: Option<Refusal>) {
        check_steps(stream, passed, refused, &[1, 2, 3, 7, 64, stream.len().max(1)]);
    }

    fn check_steps(stream: &[u8], passed: usize, refused: Option<Refusal>, steps: &[usize]) {
        for &step in steps {
            let (p, r) = run(stream, step);
            assert_eq!((p.len(), r), (passed, refused), "step {step}: {:?}", String::from_utf8_lossy(stream));
            assert_eq!(&p[..], &stream[..passed]);
        }
    }

    const SMUGGLED: &[u8] = b"POST /s HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn plain_gets_pass_whole_heads_only() {
        let one = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        check(one, one.len(), None);
        let two = [&one[..], &one[..]].concat();
        check(&two, two.len(), None);
        // An incomplete head is held back.
        check(b"GET / HTTP/1.1\r\nHost: h\r\n", 0, None);
        check(b"GET / HTTP/1.1\r\nHost: h\r\n\r", 0, None);
        // Bare LF line ends and leading empty lines, as httparse allows.
        let lf = b"\r\n\nGET / HTTP/1.1\nHost: h\n\n";
        check(lf, lf.len(), None);
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused_in_either_order() {
        for head in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 60\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\nContent-Length: 0\r\n\r\n",
        ] {
            let stream = [head, b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"].concat();
            check(&stream, 0, Some(Refusal::Smuggling));
        }
    }

    /// hyper skips a `Content-Length` after `Transfer-Encoding` without parsing it, so its
    /// value must not matter.
    #[test]
    fn any_content_length_with_transfer_encoding_is_refused() {
        for value in ["1, 1", "+3", "", " ", "x", "99999999999999999999999", "3, 4"] {
            for head in [
                format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: {value}\r\n\r\n"),
                format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ] {
                let stream = [head.as_bytes(), b"0\r\n\r\n", SMUGGLED].concat();
                check(&stream, 0, Some(Refusal::Smuggling));
            }
        }
    }

    #[test]
    fn a_refused_head_after_good_requests_passes_only_those() {
        let good = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        let chunked = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n";
        let bad = b"POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let stream = [&good[..], chunked, bad].concat();
        check(&stream, good.len() + chunked.len(), Some(Refusal::Smuggling));
    }

    #[test]
    fn body_bytes_that_look_like_a_bad_head_are_not_judged() {
        let inner = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body_cl =
            [format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", inner.len()).as_bytes(), inner].concat();
        check(&body_cl, body_cl.len(), None);
        let body_chunked = [
            format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", inner.len()).as_bytes(),
            inner,
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        check(&body_chunked, body_chunked.len(), None);
    }

    /// hyper ends a trailer line only at CRLF: a bare LF is part of a trailer, so what follows
    /// it up to the CRLF CRLF is trailer bytes too, and the head after that is judged.
    #[test]
    fn trailers_end_where_hyper_ends_them() {
        let post = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n";
        for trailers in [
            format!("0\r\n\nGET /fake HTTP/1.1\r\nContent-Length: {}\r\n\r\n", SMUGGLED.len()),
            "0\r\nT: a\nb\r\n\r\n".to_owned(),
            "0\r\n\n\r\n\r\n".to_owned(),
            "0\r\nT: v\r\nU: w\r\n\r\n".to_owned(),
        ] {
            let good = [&post[..], trailers.as_bytes()].concat();
            check(&[&good[..], SMUGGLED].concat(), good.len(), Some(Refusal::Smuggling));
        }
        // CR not followed by LF in a trailer: hyper fails there.
        let bad = [&post[..], b"0\r\nT: v\rX\r\n\r\n"].concat();
        let at = post.len() + b"0\r\nT: v\rX".len();
        check(&[&bad[..], SMUGGLED].concat(), at, Some(Refusal::Malformed));
    }

    /// hyper takes any number of hex digits as long as the size fits in 64 bits.
    #[test]
    fn chunk_sizes_follow_hyper() {
        let post = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let zeros = |n| "0".repeat(n);
        // (body, whether the head after it is judged: not after an endless chunk)
        for (body, judged) in [
            (format!("{}\r\n\r\n", zeros(17)), true),
            (format!("{}\r\n\r\n", zeros(30_000)), true),
            (format!("{}1\r\nA\r\n0\r\n\r\n", zeros(40)), true),
            ("1aF ;x\r\n".to_owned() + &"z".repeat(0x1af) + "\r\n0;y\r\n\r\n", true),
            (format!("{}ffffffffffffffff \t;ext=\"a b\"\r\n", zeros(20)), false),
        ] {
            let good = [&post[..], body.as_bytes()].concat();
            let stream = [&good[..], SMUGGLED].concat();
            let (passed, refused) = if judged { (good.len(), Some(Refusal::Smuggling)) } else { (stream.len(), None) };
            check_steps(&stream, passed, refused, &[1, 7, 4096, stream.len()]);
        }
        // Where hyper fails: the failing byte is passed (hyper answers), nothing after it.
        for (body, bad_at) in [
            ("zz\r\n", 0),
            ("10000000000000000\r\n", 16),
            ("1\nA\r\n", 1),
            ("1 2\r\n", 2),
            ("1;a\nb\r\n", 3),
            ("1\r\nAB\r\n", 4),
            ("0\r\n\r\r", 4),
            (";\r\n", 0),
        ] {
            let stream = [&post[..], body.as_bytes(), SMUGGLED].concat();
            check(&stream, post.len() + bad_at + 1, Some(Refusal::Malformed));
        }
    }

    #[test]
    fn scanning_stops_where_hyper_takes_over() {
        // HTTP/2 prior knowledge, an upgrade and CONNECT: what follows is not HTTP/1.
        for first in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive , Upgrade\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nconnection: keep-alive\r\nUPGRADE: websocket\r\nConnection: UPGRADE\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
            // Heads that hyper refuses itself.
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nNo colon here\r\n\r\n",
        ] {
            let stream = [first, SMUGGLED].concat();
            check(&stream, stream.len(), None);
        }
    }

    /// Only heads lb tunnels turn the scanner off: an `Upgrade` that lb does not act on leaves
    /// the connection serving HTTP/1, so what follows is judged.
    #[test]
    fn upgrade_heads_lb_does_not_tunnel_are_judged() {
        for first in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nUpgrade: foo\r\nConnection: keep-alive, upgraded\r\n\r\n",
            b"GET / HTTP/1.0\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nUpgrade: foo\r\nContent-Length: 5\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nX-Method: CONNECT \r\nUpgrade: foo\r\n\r\n",
        ] {
            let stream = [first, SMUGGLED].concat();
            check(&stream, first.len(), Some(Refusal::Smuggling));
        }
    }

    #[test]
    fn higher_minor_versions_become_http_1_1() {
        for (line, want) in [
            (&b"GET / HTTP/1.2\r\n"[..], &b"GET / HTTP/1.1\r\n"[..]),
            (b"GET / HTTP/1.9\n", b"GET / HTTP/1.1\n"),
            (b"GET /HTTP/1.2 HTTP/1.0\r\n", b"GET /HTTP/1.2 HTTP/1.0\r\n"),
            (b"GET / HTTP/2.2\r\n", b"GET / HTTP/2.2\r\n"),
            (b"GET / HTTP/1.12\r\n", b"GET / HTTP/1.12\r\n"),
        ] {
            let mut head = [line, b"Host: h\r\n\r\n"].concat();
            let mut s = Scanner::default();
            assert_eq!(s.scan(&mut head), Scan::Pass(head.len()));
            assert_eq!(&head[..line.len()], want, "{:?}", String::from_utf8_lossy(line));
        }
        // Only request lines: a header line that happens to end the same way is left alone.
        let mut two = b"GET / HTTP/1.1\r\nX: HTTP/1.2\r\n\r\nGET / HTTP/1.3\r\n\r\n".to_vec();
        Scanner::default().scan(&mut two);
        assert_eq!(&two[..], b"GET / HTTP/1.1\r\nX: HTTP/1.2\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut s = Scanner::default();
        let mut huge = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(s.scan(&mut huge), Scan::Refuse(0, Refusal::TooLarge));
        // A head longer than the limit is refused as such, cut into reads or not.
        let long_bad = [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\nX: "[..],
            &vec![b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        check_steps(&long_bad, 0, Some(Refusal::TooLarge), &[1000, 4096, long_bad.len()]);
        // Header lines are counted against max_headers.
        let mut s = Scanner::new(2);
        assert_eq!(s.scan(&mut b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n".to_vec()), Scan::Pass(30));
        assert_eq!(
            s.scan(&mut b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n".to_vec()),
            Scan::Refuse(0, Refusal::TooLarge)
        );
    }

    /// A head trickled in line by line is refused once it has too many lines, before it ends,
    /// and each call scans only what is new.
    #[test]
    fn too_many_lines_are_refused_before_the_head_ends() {
        let mut s = Scanner::new(100);
        let mut held = b"GET / HTTP/1.1\r\n".to_vec();
        assert_eq!(s.scan(&mut held), Scan::Pass(0));
        for line in 1..=100 {
            held.extend_from_slice(b"a\n");
            assert_eq!(s.scan(&mut held), Scan::Pass(0), "line {line}");
            assert_eq!((s.head.scanned, s.head.lines), (held.len(), line));
        }
        held.extend_from_slice(b"a");
        assert_eq!(s.scan(&mut held), Scan::Pass(0));
        assert_eq!(s.head.searched, held.len());
        held.extend_from_slice(b"\n");
        assert_eq!(s.scan(&mut held), Scan::Refuse(0, Refusal::TooLarge));
        // The same verdict for the stream whole (or in any pieces).
        let stream = [&b"GET / HTTP/1.1\r\n"[..], &b"a\n".repeat(30_000)].concat();
        check_steps(&stream, 0, Some(Refusal::TooLarge), &[1, 2, 5, 4096, stream.len()]);
    }
}
