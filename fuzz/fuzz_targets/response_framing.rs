//! lb's own upstream HTTP/1 client (`lb::upstream::h1_client`) on arbitrary backend answers: it
//! never panics, and reaches the same verdict (status, body bytes, reusable or error) however
//! the backend's stream is cut into reads.
//!
//! Input: byte 0 is the read size (1..=256), byte 1's low bit says the request was a HEAD; the
//! rest is what the backend sent.
#![no_main]

use lb::internals::read_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [step, flags, stream @ ..] = data else { return };
    let head = flags & 1 == 1;
    let whole = read_response(stream, stream.len().max(1), head).map_err(|e| e.to_string());
    let pieces = read_response(stream, usize::from(*step).max(1), head).map_err(|e| e.to_string());
    assert_eq!(whole, pieces, "read size {step}");
});
