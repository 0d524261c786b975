//! The HTTP/1 request framing scanner (`lb::http1::framing`) on arbitrary byte streams: it
//! never panics, never passes more bytes than it was given, and reaches the same verdict (bytes
//! passed, head refused or not) however the stream is cut into reads, as the stream wrapper
//! feeds it.
//!
//! Input: byte 0 is the read size (1..=256); the rest is the client's byte stream.
#![no_main]

use lb::internals::framing::{Scan, Scanner};
use libfuzzer_sys::fuzz_target;

/// Feeds `stream` in reads of `step` bytes, holding back what is not yet judged.
fn run(stream: &[u8], step: usize) -> (usize, bool) {
    let mut s = Scanner::default();
    let (mut passed, mut held) = (0, Vec::new());
    for piece in stream.chunks(step) {
        held.extend_from_slice(piece);
        match s.scan(&mut held) {
            Scan::Pass(n) => {
                assert!(n <= held.len());
                passed += n;
                held.drain(..n);
            }
            Scan::Refuse(n, _) => {
                assert!(n <= held.len());
                return (passed + n, true);
            }
        }
    }
    (passed, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else { return };
    let whole = run(stream, stream.len().max(1));
    let pieces = run(stream, usize::from(step).max(1));
    assert_eq!(whole, pieces, "read size {step}");
});
