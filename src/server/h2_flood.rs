//! HTTP/2 control-frame floods (PING, SETTINGS, WINDOW_UPDATE, empty frames...), bounded as
//! nginx bounds them: a connection is dropped once the bytes its client sent, divided by 8,
//! exceed the request bytes among them (HEADERS, CONTINUATION and DATA payloads) plus 1 MiB.
//!
//! What the h2 crate already bounds: it answers a PING or SETTINGS frame before it reads the
//! next frame, so at most one PONG and one SETTINGS ACK wait at a time and a client that does
//! not read them is only throttled (and, once writes to it block for `idle_timeout`, dropped by
//! the connection's stall check). What it does not bound is a client that reads every answer:
//! it can keep lb answering control frames, at the cost of its own bandwidth only, for as long
//! as the connection lives, and a request held open keeps it alive. nginx's rule (in
//! `ngx_http_v2_read_handler`) leaves any real client far below the bound: requests and bodies
//! are payload, and the frames that manage them (WINDOW_UPDATE, a PING now and then) are a few
//! bytes each.
//!
//! [`FloodMeter`] follows the client's bytes as they are handed to hyper (see
//! `checked_stream`): the 24-byte preface, then frame headers, whose payloads it skips by their
//! length. A connection that does not start with the preface (HTTP/1) is not followed at all.

/// The HTTP/2 connection preface (RFC 9113 §3.4), with prior knowledge or after TLS ALPN alike.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes allowed beyond 8 times the payload bytes (nginx's 1 MiB).
const ALLOWANCE: u64 = 1 << 20;

/// Frame types whose payload is a request: DATA, HEADERS, CONTINUATION.
fn is_payload(kind: u8) -> bool {
    matches!(kind, 0x0 | 0x1 | 0x9)
}

/// Where in the client's byte stream the meter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of the preface have been seen.
    Preface(usize),
    /// In a frame header, of which `have` bytes are in `buf`.
    Header { buf: [u8; 9], have: usize },
    /// This many bytes of a frame's payload are left to skip.
    Payload(usize),
    /// Not HTTP/2: nothing to count.
    Off,
}

/// Counts one connection's client bytes; see the module doc.
#[derive(Debug)]
pub struct FloodMeter {
    state: State,
    /// Every byte the client sent.
    total: u64,
    /// The request bytes among them.
    payload: u64,
}

impl Default for FloodMeter {
    fn default() -> Self {
        FloodMeter { state: State::Preface(0), total: 0, payload: 0 }
    }
}

impl FloodMeter {
    /// Counts `data`, the client's next bytes. True once the connection is a flood: it is then
    /// to be dropped, and nothing more fed.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        if self.state == State::Off {
            return false;
        }
        self.total += data.len() as u64;
        while !data.is_empty() {
            match &mut self.state {
                State::Preface(seen) => {
                    let n = (PREFACE.len() - *seen).min(data.len());
                    if data[..n] != PREFACE[*seen..*seen + n] {
                        self.state = State::Off;
                        return false;
                    }
                    *seen += n;
                    if *seen == PREFACE.len() {
                        self.state = State::Header { buf: [0; 9], have: 0 };
                    }
                    data = &data[n..];
                }
                State::Header { buf, have } => {
                    let n = (9 - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 9 {
                        let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                        if is_payload(buf[3]) {
                            self.payload += len as u64;
                        }
                        self.state =
                            if len == 0 { State::Header { buf: [0; 9], have: 0 } } else { State::Payload(len) };
                    }
                }
                State::Payload(left) => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.state = State::Header { buf: [0; 9], have: 0 };
                    }
                }
                State::Off => return false,
            }
        }
        self.total / 8 > self.payload + ALLOWANCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `bytes` in pieces of `step` bytes; returns after how many bytes it was a flood.
    fn flood_at(bytes: &[u8], step: usize) -> Option<usize> {
        let mut m = FloodMeter::default();
        let mut fed = 0;
        for piece in bytes.chunks(step) {
            fed += piece.len();
            if m.feed(piece) {
                return Some(fed);
            }
        }
        None
    }

    #[test]
    fn control_frames_past_eight_times_the_payload_plus_1_mib_are_a_flood() {
        let mut pings = PREFACE.to_vec();
        let ping = frame(0x6, b"12345678");
        for _ in 0..(9 << 20) / ping.len() {
            pings.extend_from_slice(&ping);
        }
        // Cut just past 8 MiB, whatever the pieces the bytes came in.
        for step in [1, 7, 17, 4096, 65536] {
            let at = flood_at(&pings, step).expect("a PING flood");
            assert!(at > 8 << 20 && at <= (8 << 20) + 65536, "step {step}: cut at {at}");
        }

        // Requests and bodies raise the bound: 4 MiB of DATA allow 32 MiB + 8 MiB in all.
        let mut busy = PREFACE.to_vec();
        for _ in 0..256 {
            busy.extend(frame(0x0, &[b'x'; 16384]));
        }
        busy.extend(frame(0x1, &[0x82; 100]));
        let base = busy.len();
        for _ in 0..(35 << 20) / ping.len() {
            busy.extend_from_slice(&ping);
        }
        assert_eq!(flood_at(&busy, 65536), None);
        for _ in 0..(6 << 20) / ping.len() {
            busy.extend_from_slice(&ping);
        }
        let at = flood_at(&busy, 65536).expect("still a flood, later");
        assert!(at > base + (35 << 20), "{at}");
    }

    #[test]
    fn http1_connections_are_not_followed() {
        let mut m = FloodMeter::default();
        assert!(!m.feed(b"GET / HTTP/1.1\r\n"));
        assert_eq!(m.state, State::Off);
        // A preface that breaks off is not HTTP/2 either.
        let mut m = FloodMeter::default();
        assert!(!m.feed(b"PRI * HTTP/2.0\r\n\r\nXX"));
        assert_eq!(m.state, State::Off);
        assert!(!m.feed(&vec![0u8; 64 << 20]));
    }
}
