//! Quickstart: three demo backends plus lb serving `./lb.toml`, in one process.
//!
//! ```text
//! cargo run --example quickstart        # then, in another terminal:
//! for i in 1 2 3 4 5 6; do curl -s localhost:8080; done
//! ```
//!
//! The backends listen on 127.0.0.1:9001-9003 and answer `hello from demo-N` (and 200 on
//! /health). lb runs exactly as the `lb` binary would: edit lb.toml and send SIGHUP to reload,
//! Ctrl-C to stop.

use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

async fn demo_backend(port: u16, name: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = if req.uri().path() == "/health" {
                        "ok\n".to_owned()
                    } else {
                        format!("hello from {name} (port {port}), you asked for {}\n", req.uri())
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    for (i, port) in [9001u16, 9002, 9003].into_iter().enumerate() {
        demo_backend(port, format!("demo-{}", i + 1)).await?;
    }
    let path = Path::new("lb.toml");
    let loaded = lb::config::load(path)?;
    let mut running = lb::app::Running::start(loaded.config).await?;
    eprintln!("\n  lb is up. Try:  for i in 1 2 3 4 5 6; do curl -s localhost:8080; done\n  Admin: curl localhost:9900/healthz   Reload: kill -HUP {}   Stop: Ctrl-C\n", std::process::id());
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => { let _ = running.reload(path).await; }
        }
    }
    running.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
