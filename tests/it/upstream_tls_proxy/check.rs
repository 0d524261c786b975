//! `--check` for the TLS and PROXY protocol keys: each mistake with its location, the documented
//! keys accepted, and send_proxy on an HTTP pool warned about.

use std::path::Path;

use rustls::pki_types::ServerName;

use super::{make_ca, write_ca};
use crate::support::temp_dir;

fn check(toml: &str) -> Result<lb::config::Loaded, lb::config::ConfigError> {
    lb::config::parse(Path::new("/nonexistent-dir/lb.toml"), toml)
}

/// The line of the first occurrence of `needle` in `toml` (1-based).
fn line_of(toml: &str, needle: &str) -> usize {
    toml.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn check_reports_tls_and_proxy_mistakes_with_their_location() {
    let dir = temp_dir("check");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let broken = dir.join("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").unwrap();
    let pool = |keys: &str, backend: &str| {
        format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\n[pools.p]\nstrategy = \"random\"\n{keys}\n\
             backends = [{{ addr = \"127.0.0.1:9443\"{backend} }}]\n"
        )
    };
    let cases = [
        (
            pool(&format!("tls = true\ntls_ca = \"{}\"", dir.join("missing.pem").display()), ""),
            "tls_ca",
            "cannot read TLS CA file",
        ),
        (pool(&format!("tls = true\ntls_ca = \"{}\"", garbage.display()), ""), "tls_ca", "no certificate found"),
        (pool(&format!("tls = true\ntls_ca = \"{}\"", broken.display()), ""), "tls_ca", "cannot read CA certificates"),
        (pool("tls = true\ntls_sni = \"not a name!\"", ""), "tls_sni", "invalid tls_sni"),
        (pool("tls_sni = \"backend.test\"", ""), "tls_sni", "only applies when"),
        (
            pool(&format!("tls = true\ntls_ca = \"{}\"", garbage.display()), ", tls = false"),
            "tls_ca",
            "only applies when",
        ),
        (pool("send_proxy = \"v3\"", ""), "send_proxy", "unknown variant"),
        (pool("", ", tls = \"yes\""), "backends", "invalid type"),
        (pool("tls_verify = false", ""), "tls_verify", "unknown field"),
    ];
    for (toml, key, message) in cases {
        let err = check(&toml).expect_err(&toml);
        assert!(err.message.contains(message), "{toml}\n→ {err}");
        assert_eq!(err.location.map(|l| l.0), Some(line_of(&toml, key)), "{toml}\n→ {err}");
    }
    let listener = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccept_proxy = \"yes\"\n\n\
                    [pools.p]\nstrategy = \"random\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n";
    let err = check(listener).unwrap_err();
    assert_eq!(err.location.map(|l| l.0), Some(5), "{err}");
}

#[test]
fn check_accepts_the_documented_keys_and_warns_about_send_proxy_on_http() {
    let dir = temp_dir("checkok");
    let ca_path = write_ca(&dir, "ca.pem", &make_ca("ok"));
    let toml = format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\naccept_proxy = true\n\n\
         [pools.p]\nstrategy = \"random\"\ntls = true\ntls_ca = \"{}\"\ntls_sni = \"backend.test\"\nsend_proxy = \"v1\"\n\
         backends = [{{ addr = \"127.0.0.1:9443\" }}, {{ addr = \"127.0.0.1:9080\", tls = false }}]\n",
        ca_path.display()
    );
    let loaded = check(&toml).unwrap();
    assert!(loaded.config.listeners[0].accept_proxy);
    let p = &loaded.config.pools["p"];
    assert_eq!(p.send_proxy, Some(lb::config::ProxyVersion::V1));
    assert_eq!(p.backends[0].tls, Some(ServerName::try_from("backend.test").unwrap()));
    assert_eq!(p.backends[1].tls, None);
    assert_eq!(p.tls.as_ref().and_then(|t| t.ca.clone()), Some(ca_path));
    assert!(loaded.warnings.iter().any(|w| w.contains("send_proxy")), "{:?}", loaded.warnings);
}
