//! What operators touch: the admin API, config errors, health checks, reloads, stopping.

mod admin;
mod config;
mod health;
mod reload;
mod shutdown;
