//! Header hygiene between client and backend: hop-by-hop removal and forwarding headers.
//!
//! Pure functions over `HeaderMap` so they are cheap to test and fuzz. Hop-by-hop headers
//! (RFC 9110 §7.6.1) describe one connection, not the message, so a proxy must drop them in both
//! directions, together with every header the `Connection` header names. The one exception is a
//! protocol upgrade (WebSocket), where `Connection: upgrade` and `Upgrade` must reach the
//! backend (and its 101 answer the client) for the tunnel to be set up.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that are always connection-specific, as ready names: removing by `HeaderName` skips
/// the parse a `&str` key costs on every call (measured: ~2,500 instructions per call before).
/// `Connection` must stay first (see [`strip_hop_by_hop`]).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// True when `headers` ask for a protocol upgrade: an `Upgrade` header and the `upgrade` token
/// in `Connection`.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has_token(headers, "upgrade")
}

fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The comma-separated tokens of every `Connection` header, trimmed. Split as bytes, so that a
/// stray non-ASCII byte in one token does not hide the others.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers.get_all(header::CONNECTION).iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')).map(<[u8]>::trim_ascii)
}

/// True for a header that is always connection-specific (not counting those `Connection`
/// names).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// The index of a name in [`HOP_BY_HOP`]; the names' lengths rule out most headers before any
/// comparison.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17) {
        return None;
    }
    HOP_BY_HOP.iter().position(|h| h == name)
}

/// The headers `Connection` names beyond the fixed hop-by-hop list (`keep-alive` and `close`
/// name nothing more). Empty, without allocating, in the common case.
fn connection_named(headers: &HeaderMap, keep_upgrade: bool) -> Vec<HeaderName> {
    named_in(connection_tokens(headers)).filter(|n| !(keep_upgrade && n == header::UPGRADE)).collect()
}

/// The header names among `Connection` tokens beyond `keep-alive` and `close`. `Host` is never
/// one: a client's `Connection: host` must not leave the backend without the host it asked for.
pub fn named_in<'a>(tokens: impl Iterator<Item = &'a [u8]> + 'a) -> impl Iterator<Item = HeaderName> + 'a {
    tokens
        .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| n != header::HOST)
}

/// Removes hop-by-hop headers and every header named in `Connection`. With `keep_upgrade`,
/// `Upgrade` survives and `Connection` is rewritten to exactly `upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the few names a message has, instead of a hash lookup per hop-by-hop name:
    // most messages carry none of them, or only `Connection` (measured: ~2,300 instructions per
    // request for the seven removals before).
    let mut present = [false; 7];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
        }
    }
    // Names listed in Connection go first, while the header is still there.
    if present[0] {
        for name in connection_named(headers, keep_upgrade) {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The id every request carries to its backend and back to its client (see [`request_id`]).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 64 bits of a request id: splitmix64 over a per-thread counter seeded once from the OS's
/// randomness. Ids need to be unique, not secret: a counter never repeats within a thread,
/// random seeds keep threads and processes apart, and it costs a few instructions where the
/// thread RNG (ChaCha) cost hundreds per id.
fn next_id_bits() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let z = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// The request's id: the client's `X-Request-Id` when it is 1 to 200 visible ASCII bytes (so
/// that a trace started upstream goes on), else a new 128-bit id, 32 hex digits.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if (1..=200).contains(&b.len()) && b.iter().all(|c| (0x21..=0x7e).contains(c)) {
            return v.clone();
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bytes = [next_id_bits().to_be_bytes(), next_id_bits().to_be_bytes()];
    for (pair, b) in id.chunks_exact_mut(2).zip(bytes.iter().flatten()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    // Hex digits are always a valid value.
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Adds the forwarding headers: the client address appended to `X-Forwarded-For` (earlier
/// values kept, several headers folded into one), `X-Forwarded-Proto` set to the listener's
/// scheme and `X-Forwarded-Host` set to the host the client asked for. Also folds several
/// `Cookie` headers into one (see [`add_forwarding_value`]).
pub fn add_forwarding(headers: &mut HeaderMap, client: IpAddr, proto: &'static str, host: Option<&HeaderValue>) {
    add_forwarding_value(headers, &client_ip_value(client), proto, host, None);
}

/// The client's address as an `X-Forwarded-For` element (IPv4-mapped IPv6 shown as IPv4).
/// The proxy computes it once per connection rather than formatting it per request.
pub fn client_ip_value(client: IpAddr) -> HeaderValue {
    // An IP address always formats to a valid header value.
    HeaderValue::from_str(&client.to_canonical().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`add_forwarding`] with the client address already as a header value (see
/// [`client_ip_value`]): the common case, no earlier `X-Forwarded-For`, costs a refcount.
///
/// Several `Cookie` headers become one, joined by `"; "`: HTTP/2 clients send each cookie as a
/// header of its own, and RFC 9113 §8.2.3 requires them joined before they go on over
/// HTTP/1.1, where many servers read only one `Cookie` line.
pub fn add_forwarding_value(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
    request_id: Option<&HeaderValue>,
) {
    if let header::Entry::Occupied(mut e) = headers.entry(header::COOKIE) {
        if e.iter().nth(1).is_some() {
            if let Some(joined) = join_cookies(e.iter()) {
                e.insert(joined);
            }
        }
    }
    // Room for the headers below at once: the map hyper parsed is sized to the request.
    headers.reserve(4);
    // One lookup for the common case (no earlier X-Forwarded-For), as an entry.
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        header::Entry::Occupied(mut e) => {
            let mut joined = e.iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ");
            joined.push_str(", ");
            joined.push_str(client.to_str().unwrap_or("unknown"));
            if let Ok(v) = HeaderValue::from_str(&joined) {
                // Replaces every earlier value with the one joined list.
                e.insert(v);
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    if let Some(id) = request_id {
        headers.insert(X_REQUEST_ID.clone(), id.clone());
    }
}

/// What a request forwarded by lb's own client says about its client: the values
/// [`add_forwarding_value`] would set.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The client's address as an `X-Forwarded-For` element ([`client_ip_value`]).
    pub client: HeaderValue,
    /// The listener's scheme, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The host the client asked for, for `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
    /// The request's `X-Request-Id` ([`request_id`]), replacing the client's.
    pub request_id: Option<HeaderValue>,
}

/// Several `Cookie` values as one, joined by `"; "`; `None` if that is no valid value (it
/// always is, joining valid ones).
fn join_cookies<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<HeaderValue> {
    let parts: Vec<&[u8]> = values.map(HeaderValue::as_bytes).collect();
    HeaderValue::from_bytes(&parts.join(&b"; "[..])).ok()
}

/// Calls `put` with each header a backend should get for a request with `headers`: what
/// [`strip_hop_by_hop`] (without upgrade) and then [`add_forwarding_value`] would leave in the
/// map, without changing it. lb's own client writes the request head this way: growing and
/// trimming the map hyper parsed cost about 2,000 instructions per request.
pub fn for_each_forwarded(headers: &HeaderMap, fwd: &Forwarded, mut put: impl FnMut(&HeaderName, &[u8])) {
    let named = if headers.contains_key(header::CONNECTION) { connection_named(headers, false) } else { Vec::new() };
    let mut prior_for: Option<Vec<&str>> = None;
    let mut cookies_done = false;
    for (name, value) in headers {
        if hop_by_hop_index(name).is_some() || named.contains(name) {
            continue;
        }
        if name == header::COOKIE {
            // All of a name's values come one after another: the first stands for them all.
            if std::mem::replace(&mut cookies_done, true) {
                continue;
            }
            let all = headers.get_all(header::COOKIE);
            match all.iter().nth(1).and_then(|_| join_cookies(all.iter())) {
                Some(joined) => put(name, joined.as_bytes()),
                None => {
                    for v in all {
                        put(name, v.as_bytes());
                    }
                }
            }
            continue;
        }
        if name == X_FORWARDED_FOR {
            prior_for.get_or_insert_with(Vec::new).extend(value.to_str().ok());
            continue;
        }
        if name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST || (name == X_REQUEST_ID && fwd.request_id.is_some()) {
            continue;
        }
        put(name, value.as_bytes());
    }
    match prior_for {
        None => put(&X_FORWARDED_FOR, fwd.client.as_bytes()),
        Some(prior) => {
            let mut joined = prior.join(", ");
            joined.push_str(", ");
            joined.push_str(fwd.client.to_str().unwrap_or("unknown"));
            // As add_forwarding_value: a joined list that is no valid value is left out.
            if HeaderValue::from_str(&joined).is_ok() {
                put(&X_FORWARDED_FOR, joined.as_bytes());
            }
        }
    }
    put(&X_FORWARDED_PROTO, fwd.proto.as_bytes());
    if let Some(h) = &fwd.host {
        put(&X_FORWARDED_HOST, h.as_bytes());
    }
    if let Some(id) = &fwd.request_id {
        put(&X_REQUEST_ID, id.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_usable_else_made() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(v).unwrap());
            request_id(&h)
        };
        assert_eq!(with("abc-123"), "abc-123");
        assert_eq!(with(&"x".repeat(200)), "x".repeat(200).as_str());
        let made = [request_id(&HeaderMap::new()), with("has space"), with(&"x".repeat(201)), with("")];
        for id in &made {
            assert!(
                id.len() == 32 && id.as_bytes().iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)),
                "{id:?}"
            );
        }
        let mut distinct: Vec<_> = made.iter().map(|v| v.as_bytes().to_vec()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), made.len());
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn every_hop_by_hop_header_alone_is_removed() {
        // Guards the length filter in strip_hop_by_hop against a name added to the list.
        for name in HOP_BY_HOP.iter() {
            let mut h = map(&[(name.as_str(), "x"), ("host", "h")]);
            strip_hop_by_hop(&mut h, false);
            assert!(!h.contains_key(name), "{name} survived");
            assert!(h.contains_key("host"));
        }
    }

    #[test]
    fn removes_fixed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret ,x-other"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
            ("host", "example"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["host", "x-kept"]);
    }

    #[test]
    fn upgrade_keeps_upgrade_and_rewrites_connection() {
        let mut h = map(&[("connection", "Upgrade, x-drop"), ("upgrade", "websocket"), ("x-drop", "1")]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("x-drop").is_none());
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_non_ascii_byte_does_not_hide_the_other_named_headers() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_bytes(b"x-secret, \xff-junk").unwrap());
        h.append("x-secret", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
        assert!(is_upgrade_request(&map(&[("connection", "keep-alive, UPGRADE"), ("upgrade", "h2c")])));
    }

    #[test]
    fn forwarding_appends_client_and_sets_proto_and_host() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("shop.example:8080");
        add_forwarding(&mut h, "10.0.0.9".parse().unwrap(), "http", Some(&host));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example:8080");
    }

    /// The headers [`for_each_forwarded`] gives, sorted, against the map after
    /// [`strip_hop_by_hop`] and [`add_forwarding_value`], sorted.
    type Pairs = Vec<(String, Vec<u8>)>;

    fn both_ways(h: &HeaderMap, fwd: &Forwarded) -> (Pairs, Pairs) {
        let mut streamed = Vec::new();
        for_each_forwarded(h, fwd, |n, v| streamed.push((n.as_str().to_owned(), v.to_vec())));
        let mut m = h.clone();
        strip_hop_by_hop(&mut m, false);
        add_forwarding_value(&mut m, &fwd.client, fwd.proto, fwd.host.as_ref(), fwd.request_id.as_ref());
        let mut mapped: Vec<_> = m.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        streamed.sort();
        mapped.sort();
        (streamed, mapped)
    }

    #[test]
    fn writing_forwarded_headers_matches_editing_the_map() {
        let cases: Vec<HeaderMap> = vec![
            map(&[("host", "h"), ("accept", "*/*")]),
            map(&[("host", "h"), ("connection", "keep-alive"), ("keep-alive", "timeout=5"), ("te", "trailers")]),
            map(&[("connection", "X-Secret, close"), ("x-secret", "1"), ("x-kept", "2"), ("upgrade", "websocket")]),
            map(&[("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "2.2.2.2, 3.3.3.3"), ("x-forwarded-proto", "x")]),
            map(&[("x-forwarded-host", "evil"), ("cookie", "a=1"), ("cookie", "b=2"), ("proxy-connection", "x")]),
            map(&[("connection", "x-forwarded-for"), ("x-forwarded-for", "9.9.9.9")]),
        ];
        let mut odd = HeaderMap::new();
        odd.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        odd.append("connection", HeaderValue::from_bytes(b"x-a, \xff-junk").unwrap());
        odd.append("x-a", HeaderValue::from_static("1"));
        for h in cases.iter().chain([&odd]) {
            for host in [None, Some(HeaderValue::from_static("shop.example"))] {
                let fwd =
                    Forwarded { client: HeaderValue::from_static("10.0.0.9"), proto: "https", host, request_id: None };
                let (streamed, mapped) = both_ways(h, &fwd);
                assert_eq!(streamed, mapped, "{h:?}");
            }
        }
    }

    #[test]
    fn several_cookie_headers_reach_the_backend_as_one_and_host_is_never_connection_named() {
        let h =
            map(&[("host", "h"), ("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2; c=3"), ("connection", "host")]);
        let fwd =
            Forwarded { client: HeaderValue::from_static("10.0.0.9"), proto: "http", host: None, request_id: None };
        let mut written = Vec::new();
        for_each_forwarded(&h, &fwd, |n, v| written.push((n.as_str().to_owned(), v.to_vec())));
        let cookies: Vec<_> = written.iter().filter(|(n, _)| n == "cookie").map(|(_, v)| v.clone()).collect();
        assert_eq!(cookies, [b"a=1; b=2; c=3".to_vec()]);
        assert!(written.iter().any(|(n, v)| n == "host" && v == b"h"), "{written:?}");
        let mut edited = h.clone();
        strip_hop_by_hop(&mut edited, false);
        add_forwarding_value(&mut edited, &fwd.client, fwd.proto, None, None);
        assert_eq!(edited.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1; b=2; c=3"]);
        assert_eq!(edited["host"], "h");
        // One Cookie header is passed as it is.
        let one = map(&[("cookie", "a=1")]);
        let mut written = Vec::new();
        for_each_forwarded(&one, &fwd, |n, v| written.push((n.as_str().to_owned(), v.to_vec())));
        assert!(written.contains(&("cookie".to_owned(), b"a=1".to_vec())));
    }

    #[test]
    fn forwarding_without_prior_headers_and_mapped_v6() {
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, "::ffff:127.0.0.1".parse().unwrap(), "https", None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert!(h.get("x-forwarded-host").is_none());
    }
}
