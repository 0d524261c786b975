//! lb.toml loading must never panic, whatever the text: every problem is a located error.
//!
//! `parse` resolves `host:port` names and reads TLS files named in the text, so a run touches
//! the resolver and the file system (relative paths are taken from the current directory).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match lb::config::parse(std::path::Path::new("lb.toml"), text) {
        Ok(loaded) => {
            // A config that loads is complete and consistent.
            assert!(!loaded.config.listeners.is_empty());
            for l in &loaded.config.listeners {
                assert!(loaded.config.pools.contains_key(&l.pool), "listener names a missing pool");
                assert!(l.max_connections >= 1 && l.max_headers >= 1 && l.max_uri_bytes >= 1);
            }
            for p in loaded.config.pools.values() {
                assert!(!p.backends.is_empty());
                assert!(p.backends.iter().all(|b| (1..=1000).contains(&b.weight)));
            }
            let _ = loaded.config.summary();
        }
        Err(e) => {
            // Errors render as PATH[:LINE:COL]: message.
            assert!(e.to_string().starts_with("lb.toml"));
        }
    }
});
