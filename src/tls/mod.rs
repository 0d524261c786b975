//! TLS material, both ways: the listeners' server configs and certificate choice ([`server`]),
//! and the trust and server names for TLS to backends ([`client`]). Pure rustls set-up: no
//! sockets, no configuration types (lb.toml's are built from these).

pub mod client;
pub mod server;

pub use client::{server_name, TlsClient, UpstreamTls};
pub use server::{check_pair, server_config, TlsCertConfig, TlsError};
