//! weir: a high-availability HTTP load balancer and reverse proxy.
//!
//! The crate is both the `weir` binary and a library, so that tests run the real proxy
//! in-process: build a [`config::Config`], then [`server::start`] it on a tokio runtime.

pub mod balance;
pub mod config;
pub mod demo;
pub mod health;
pub mod proxy;
pub mod server;

pub use config::Config;
pub use proxy::log::AccessLog;
pub use server::{Running, StartError, start};
