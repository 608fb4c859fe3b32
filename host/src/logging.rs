//! weir's own log (tracing, to stderr): written by a thread of its own, as access log
//! lines are, so a stderr that does not keep up (a pipe or terminal nobody reads) never
//! holds up a request. Several lines come from requests: each 5xx and each failed connect
//! (at most one a second per server, see [`quietly`]), each failed plugin call.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Lines waiting for stderr past which new ones are dropped.
pub const QUEUE: usize = 16 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Sends the process's log to stderr through the writer thread, at the level `RUST_LOG`
/// sets (`info` by default). Keep the guard until the process ends: dropping it writes
/// the lines still queued.
pub fn to_stderr() -> WorkerGuard {
    let (stderr, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE)
        .thread_name("weir-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(stderr.error_counter());
    tracing_subscriber::fmt()
        .with_writer(stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    guard
}

/// Log lines dropped because stderr did not keep up (0 when the log is not set up by
/// [`to_stderr`], as in tests).
pub fn dropped() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// How often a warning about one thing (a server, a frontend's backend) is written.
const QUIET_FOR: std::time::Duration = std::time::Duration::from_secs(1);
/// Keys remembered at most; past it the table starts again (an outage's keys are few).
const QUIET_KEYS: usize = 10_000;

/// Whether to write a warning about `key` now: at most one line a second per key, so
/// that an outage writes a line a second about each server instead of one per request.
/// `Some(n)`: write it, saying that `n` more like it were held back since the last one.
pub fn quietly(key: &str) -> Option<u64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;
    static SEEN: OnceLock<Mutex<HashMap<String, (Instant, u64)>>> = OnceLock::new();
    let now = Instant::now();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match seen.get_mut(key) {
        Some((last, held)) if now.duration_since(*last) < QUIET_FOR => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None => {
            if seen.len() >= QUIET_KEYS {
                seen.clear();
            }
            seen.insert(key.to_owned(), (now, 0));
            Some(0)
        }
    }
}

/// What a line says of the lines [`quietly`] held back before it.
pub fn held_back(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more like it since the last line, not written)"),
    }
}
