//! What weir offers a plugin: log, clock, counters, kv, a view of the backends and the
//! client connections open per address. In a
//! component these call weir; in a native build they call the installed
//! [`FakeHost`](crate::testing::FakeHost), so plugin logic runs in ordinary unit tests.

use crate::{Level, ServerInfo, Sliding};

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::weir::plugin::{backends, clock, connections, counters, kv, log};
    use crate::{Level, ServerInfo, Sliding};

    pub fn log(level: Level, message: &str) {
        log::write(level, message)
    }
    pub fn now_ms() -> u64 {
        clock::now_ms()
    }
    pub fn counter_add(key: &str, delta: i64, window_ms: u64) -> i64 {
        counters::add(key, delta, window_ms)
    }
    pub fn counter_get(key: &str) -> i64 {
        counters::get(key)
    }
    pub fn counter_remaining_ms(key: &str) -> u64 {
        counters::remaining_ms(key)
    }
    pub fn add_sliding(key: &str, delta: i64, window_ms: u64, limit: Option<i64>) -> Sliding {
        counters::add_sliding(key, delta, window_ms, limit)
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }
    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        kv::set(key, value, ttl_ms)
    }
    pub fn kv_delete(key: &str) {
        kv::delete(key)
    }
    pub fn servers(backend: &str) -> Vec<ServerInfo> {
        backends::servers(backend)
    }
    pub fn open_from(client_ip: &str) -> u32 {
        connections::open_from(client_ip)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use crate::testing::with_host;
    use crate::{Level, ServerInfo, Sliding};

    pub fn log(level: Level, message: &str) {
        with_host(|h| h.log(level, message))
    }
    pub fn now_ms() -> u64 {
        with_host(|h| h.now_ms())
    }
    pub fn counter_add(key: &str, delta: i64, window_ms: u64) -> i64 {
        with_host(|h| h.counter_add(key, delta, window_ms))
    }
    pub fn counter_get(key: &str) -> i64 {
        with_host(|h| h.counter_get(key))
    }
    pub fn counter_remaining_ms(key: &str) -> u64 {
        with_host(|h| h.counter_remaining_ms(key))
    }
    pub fn add_sliding(key: &str, delta: i64, window_ms: u64, limit: Option<i64>) -> Sliding {
        with_host(|h| h.add_sliding(key, delta, window_ms, limit))
    }
    pub fn kv_get(key: &str) -> Option<Vec<u8>> {
        with_host(|h| h.kv_get(key))
    }
    pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
        with_host(|h| h.kv_set(key, value, ttl_ms))
    }
    pub fn kv_delete(key: &str) {
        with_host(|h| h.kv_delete(key))
    }
    pub fn servers(backend: &str) -> Vec<ServerInfo> {
        with_host(|h| h.servers(backend))
    }
    pub fn open_from(client_ip: &str) -> u32 {
        with_host(|h| h.open_from(client_ip))
    }
}

/// Writes to weir's log, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Adds `delta` to `key` in its current window of `window_ms` and returns the new count.
pub fn counter_add(key: &str, delta: i64, window_ms: u64) -> i64 {
    imp::counter_add(key, delta, window_ms)
}

/// The count of `key` in its current window (0 when none is running).
pub fn counter_get(key: &str) -> i64 {
    imp::counter_get(key)
}

/// Milliseconds left in the current window of `key`.
pub fn counter_remaining_ms(key: &str) -> u64 {
    imp::counter_remaining_ms(key)
}

/// Adds `delta` to the current window's count of `key` (windows of `window_ms` aligned
/// to the clock) and returns it with the previous window's count, in one call to weir.
/// With a `limit`, adds only when the sliding count after adding stays within it (the
/// current count plus the previous window's weighted by how much of it the last
/// `window_ms` still covers): check and add are one step, shared by every instance.
pub fn add_sliding(key: &str, delta: i64, window_ms: u64, limit: Option<i64>) -> Sliding {
    imp::add_sliding(key, delta, window_ms, limit)
}

pub fn kv_get(key: &str) -> Option<Vec<u8>> {
    imp::kv_get(key)
}

/// Stores a value, for `ttl_ms` when given.
pub fn kv_set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), String> {
    imp::kv_set(key, value, ttl_ms)
}

pub fn kv_delete(key: &str) {
    imp::kv_delete(key)
}

/// The servers of a backend, in config order.
pub fn servers(backend: &str) -> Vec<ServerInfo> {
    imp::servers(backend)
}

/// Client connections open now from `client_ip` (as text), on every frontend.
pub fn open_from(client_ip: &str) -> u32 {
    imp::open_from(client_ip)
}
