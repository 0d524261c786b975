//! Header hygiene on arbitrary header maps: after `strip_hop_by_hop` no hop-by-hop header (nor
//! any header the Connection header named) survives, and after `add_forwarding` there is exactly
//! one X-Forwarded-For, ending with the client's address. Without upgrade, what lb's own
//! client writes (`for_each_forwarded`) is exactly what those two edits leave in the map.
//!
//! Input: byte 0 picks the upgrade flag, the scheme and the client address family; bytes 1..17
//! the address; the rest is `name:value` lines (invalid names or values are skipped, as hyper
//! would never hand them over).
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use lb::internals::headers::{
    add_forwarding, client_ip_value, for_each_forwarded, is_upgrade_request, strip_hop_by_hop, Forwarded,
};
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let (flags, addr, rest) = (data[0], &data[1..17], &data[17..]);
    let client = if flags & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(addr);
        IpAddr::V6(Ipv6Addr::from(b))
    };
    let proto = if flags & 2 == 0 { "http" } else { "https" };
    let mut headers = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..]))
        else {
            continue;
        };
        headers.append(name, value);
    }

    // What the proxy does: upgrade only when the request asks for it (flag 4 forces the
    // upgrade path as for a backend's 101 answer).
    let keep_upgrade = is_upgrade_request(&headers) || flags & 4 != 0;
    let named: HashSet<Vec<u8>> = headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .collect();
    let host = headers.get("host").cloned();
    let had_upgrade = headers.contains_key("upgrade");
    let original = headers.clone();

    strip_hop_by_hop(&mut headers, keep_upgrade);
    for name in HOP_BY_HOP {
        match name {
            "upgrade" if keep_upgrade => assert_eq!(headers.contains_key(name), had_upgrade),
            "connection" if keep_upgrade => {
                let v: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(v, ["upgrade"], "Connection must be exactly `upgrade` on the upgrade path");
            }
            _ => assert!(!headers.contains_key(name), "hop-by-hop {name} survived"),
        }
    }
    for name in named.iter().filter_map(|n| HeaderName::from_bytes(n).ok()) {
        // Host is never dropped for being named (a client's `Connection: host`).
        if name == "host" || (keep_upgrade && (name == "upgrade" || name == "connection")) {
            continue;
        }
        assert!(!headers.contains_key(&name), "{name}, named in Connection, survived");
    }

    add_forwarding(&mut headers, client, proto, host.as_ref());
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "exactly one X-Forwarded-For");
    let xff = xff[0].to_str().expect("X-Forwarded-For is text");
    let ip = client.to_canonical().to_string();
    assert!(xff == ip || xff.ends_with(&format!(", {ip}")), "X-Forwarded-For {xff:?} does not end with {ip}");
    assert_eq!(headers.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(proto.as_bytes()));
    assert_eq!(headers.get("x-forwarded-host"), host.as_ref());

    if !keep_upgrade {
        let fwd = Forwarded { client: client_ip_value(client), proto, host: host.clone(), request_id: None };
        let mut written = Vec::new();
        for_each_forwarded(&original, &fwd, |n, v| written.push((n.as_str().to_owned(), v.to_vec())));
        let mut edited: Vec<_> = headers.iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())).collect();
        written.sort();
        edited.sort();
        assert_eq!(written, edited, "own client's head differs from the edited map");
    }
});
