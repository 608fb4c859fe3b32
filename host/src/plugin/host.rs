//! The host side of the imports a plugin sees: log, clock, counters, kv, backends,
//! connections.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::StoreState;
use super::bindings::weir::plugin::{backends, clock, connections, counters, kv, log, types};
use crate::upstream::AdminState;

/// Longest log message kept from a plugin.
const MAX_LOG: usize = 4096;

impl types::Host for StoreState {}

impl log::Host for StoreState {
    fn write(&mut self, level: log::Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG {
            let mut cut = MAX_LOG;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl clock::Host for StoreState {
    fn now_ms(&mut self) -> u64 {
        crate::state::unix_ms()
    }
}

impl counters::Host for StoreState {
    async fn add(&mut self, key: String, delta: i64, window_ms: u64) -> wasmtime::Result<i64> {
        let window = Duration::from_millis(window_ms);
        Ok(self.state.counter_add(&key, delta, window).await?)
    }

    fn get(&mut self, key: String) -> i64 {
        self.state.counter_get(&key)
    }

    fn remaining_ms(&mut self, key: String) -> u64 {
        self.state.counter_remaining(&key).as_millis() as u64
    }

    async fn add_sliding(
        &mut self,
        key: String,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
    ) -> wasmtime::Result<counters::Sliding> {
        let c = self
            .state
            .sliding_add(&key, delta, window_ms, limit)
            .await?;
        Ok(c.into())
    }
}

/// A sliding window's count as the plugin takes it (from the asynchronous import here,
/// and from the one that answers at once in `engine`).
impl From<crate::state::SlidingCount> for counters::Sliding {
    fn from(c: crate::state::SlidingCount) -> Self {
        counters::Sliding {
            previous: c.previous,
            current: c.current,
            elapsed_ms: c.elapsed_ms,
            added: c.added,
        }
    }
}

impl kv::Host for StoreState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.state.kv_get(&key).await?)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), String>> {
        let ttl = ttl_ms.map(Duration::from_millis);
        Ok(self.state.kv_set(&key, &value, ttl).await?)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        Ok(self.state.kv_delete(&key).await?)
    }
}

impl connections::Host for StoreState {
    fn open_from(&mut self, client_ip: String) -> u32 {
        client_ip
            .parse()
            .map_or(0, |ip| crate::stats::per_client().open(ip))
    }
}

impl backends::Host for StoreState {
    fn servers(&mut self, backend: String) -> Vec<backends::ServerInfo> {
        let Some(b) = self.backends.iter().find(|b| *b.name == *backend) else {
            return Vec::new();
        };
        b.servers
            .iter()
            .map(|s| backends::ServerInfo {
                name: s.name.to_string(),
                state: match (s.admin(), s.health.is_up()) {
                    (AdminState::Maint, _) => backends::ServerState::Maint,
                    (AdminState::Drain, _) => backends::ServerState::Drain,
                    (AdminState::Ready, true) => backends::ServerState::Up,
                    (AdminState::Ready, false) => backends::ServerState::Down,
                },
                weight: s.weight.load(Ordering::Relaxed),
                in_flight: s.in_flight.load(Ordering::Relaxed),
                backup: s.cfg.backup,
            })
            .collect()
    }
}
