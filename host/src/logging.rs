//! weir's own log (tracing, to stderr): written by a thread of its own, as access log
//! lines are, so a stderr that does not keep up (a pipe or terminal nobody reads) never
//! holds up a request. Several lines come from requests: each 5xx, each failed connect,
//! each failed plugin call.

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
