//! weir: a high-availability HTTP load balancer and reverse proxy.
//!
//! The crate is both the `weir` binary and a library, so that tests run the real proxy
//! in-process: build a [`config::Config`], then [`server::start`] it on a tokio runtime.

pub mod admin;
pub mod alloc;
pub mod balance;
pub mod config;
pub mod demo;
pub mod health;
pub mod logging;
pub mod plugin;
pub mod proxy;
pub mod proxy_protocol;
pub mod server;
pub mod state;

pub use config::Config;
pub use proxy::log::AccessLog;
pub use server::{ReloadError, Running, StartError, start};

/// Runs `f` on a thread of tokio's blocking pool and waits for it there, so that the
/// runtime's threads (with `threads = 1`, the one serving every connection) go on
/// meanwhile: for reading files and resolving names at a reload. A panic in `f` goes on
/// in the caller.
pub(crate) async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Everything `weir check` proves beyond parsing: every plugin loads, checks out and
/// accepts its config. Nothing is bound.
pub async fn check(config: &Config) -> Result<(), String> {
    proxy::Proxy::new(config, AccessLog::disabled())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
