//! Notifications to the service manager (systemd's `sd_notify` protocol): when weir runs
//! under a unit with `Type=notify`, systemd hands it a datagram socket in `NOTIFY_SOCKET`
//! and waits for `READY=1` before it counts the service as started. weir says `READY=1`
//! once its listeners are bound, `RELOADING=1` (with the monotonic time systemd wants)
//! when a SIGHUP reload begins and `READY=1` again when it is done, and `STOPPING=1` when
//! a stop begins. Without `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` lines) to the service manager, if there
/// is one. A failure is logged and otherwise ignored: the proxy runs on either way.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): its name follows a NUL byte.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("could not notify the service manager ({state:?}): {e}");
    }
}

/// `READY=1`: the listeners are bound (at start, and when a reload is done).
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// `RELOADING=1`, with the time the reload began on the monotonic clock, in
/// microseconds, as systemd asks of a service that notifies its reloads.
pub fn reloading() {
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
        monotonic_usec()
    ));
}

/// `STOPPING=1`: a stop has begun (requests in flight are finishing).
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// CLOCK_MONOTONIC, in microseconds.
fn monotonic_usec() -> u64 {
    // `Instant` reads CLOCK_MONOTONIC on Linux but does not expose it; read it directly.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
    if !ok {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
