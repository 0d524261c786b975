//! The binary's side of systemd's readiness protocol (`sd_notify(3)`), written by hand: one datagram of
//! `KEY=VALUE` lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace). With `Type=notify` systemd starts units that depend on lb only once lb
//! says `READY=1`, which it does after every listener is bound; `RELOADING=1` and `READY=1`
//! bracket a reload, and `STOPPING=1` starts a shutdown. Without `$NOTIFY_SOCKET` (not under
//! systemd) every call does nothing.
//!
//! Sent from the control thread, off the request path. Errors are logged and otherwise
//! ignored: a supervisor that stopped listening must not stop lb.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `"READY=1"`) to systemd, if lb runs under it.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return };
    if let Err(e) = send(&target.to_string_lossy(), state) {
        tracing::warn!(socket = %target.to_string_lossy(), error = %e, state, "cannot notify systemd");
    }
}

fn send(target: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => send_abstract(&socket, name, state),
        None => socket.send_to(state.as_bytes(), target).map(drop),
    }
}

/// An abstract socket name (Linux): systemd uses these for `$NOTIFY_SOCKET` in containers.
#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &str, state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(state.as_bytes(), &addr).map(drop)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract unix sockets are Linux's"))
}
