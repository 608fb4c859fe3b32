//! State the host keeps for plugins, namespaced per configured plugin: windowed counters
//! and a small key-value store with TTLs. It lives outside instances, so it survives
//! instance recycling; held per plugin name by the process, it survives reloads too.
//!
//! One interface, [`PluginState`], over two stores, chosen by `[state] store`: the memory
//! store ([`memory`]) in this process, the default; or Redis ([`redis`]), shared by the
//! nodes of a pair, with the memory store as its local half (counts are made locally and
//! synced; what Redis cannot answer in time is answered locally or refused).

mod memory;
mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::config::{Consistency, Store, StoreOnError};

use memory::{CounterPush, Memory, SlidingPush};
pub use memory::{
    KV_MAX_BYTES, KV_MAX_KEYS, KV_MAX_VALUE, MAX_COUNTERS, MAX_KEY, SlidingCount, sliding_estimate,
    unix_ms,
};
use redis::Redis;
pub use redis::StoreStatus;

/// A call that needs the shared store while it cannot be reached, with
/// `on_error = "deny"`: the request is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the shared store (Redis) cannot be reached, and on_error = \"deny\"")]
pub struct StoreDown;

/// One configured plugin's counters and kv.
pub struct PluginState {
    name: String,
    local: Memory,
}

/// Every plugin's state, by name: what a sync walks.
fn all() -> &'static Mutex<HashMap<String, Arc<PluginState>>> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<PluginState>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

/// The shared store in use, if `[state]` names one.
fn shared() -> Option<Arc<Redis>> {
    // The memory store (nearly every node) pays one load, not a lock and a clone.
    if !SHARED_ON.load(Ordering::Acquire) {
        return None;
    }
    SHARED
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(Arc::clone)
}

static SHARED: RwLock<Option<Arc<Redis>>> = RwLock::new(None);
static SHARED_ON: AtomicBool = AtomicBool::new(false);

/// Makes `store` the one plugins' state goes through, from now on: at start and at each
/// reload. The Redis store of the generation before is kept when its settings did not
/// change (its connection and sync go on); otherwise a new one connects, and the old
/// one's sync stops.
pub async fn use_store(store: &Store) {
    let next = match store {
        Store::Memory => None,
        Store::Redis(cfg) => match shared() {
            Some(same) if same.cfg == *cfg => Some(same),
            _ => Some(Redis::start(cfg.clone()).await),
        },
    };
    let on = next.is_some();
    *SHARED.write().unwrap_or_else(|p| p.into_inner()) = next;
    SHARED_ON.store(on, Ordering::Release);
}

/// The shared store's state for the metrics: None with the memory store.
pub fn store_status() -> Option<StoreStatus> {
    shared().map(|r| r.status())
}

impl PluginState {
    /// The state of the configured plugin `name`, shared by all its instances and kept
    /// across reloads.
    pub fn for_plugin(name: &str) -> Arc<PluginState> {
        let mut all = all().lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(all.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(PluginState {
                name: name.to_owned(),
                local: Memory::named(name),
            })
        }))
    }

    /// What to do when Redis failed or is known to be down: Ok to go on locally.
    fn fallback(redis: &Redis) -> Result<(), StoreDown> {
        match redis.cfg.on_error {
            StoreOnError::Local => Ok(()),
            StoreOnError::Deny => Err(StoreDown),
        }
    }

    /// `add`: counts `delta` in `key`'s window.
    pub async fn counter_add(
        &self,
        key: &str,
        delta: i64,
        window: Duration,
    ) -> Result<i64, StoreDown> {
        let Some(redis) = shared() else {
            return Ok(self.local.counter_add(key, delta, window, false));
        };
        if redis.cfg.consistency == Consistency::Exact && redis.is_up() {
            let push = CounterPush {
                key: memory::counter_key(key).into_owned(),
                window,
                delta,
            };
            match redis.count_exact(&self.name, &push).await {
                Ok((total, left)) => {
                    self.local.counter_synced(&push, total, left);
                    return Ok(total);
                }
                Err(e) => redis.failed(&e),
            }
        }
        if !redis.is_up() {
            Self::fallback(&redis)?;
        }
        Ok(self.local.counter_add(key, delta, window, true))
    }

    /// `get`: the count of `key` as of the last sync and this node's counts since.
    pub fn counter_get(&self, key: &str) -> i64 {
        self.local.counter_get(key)
    }

    pub fn counter_remaining(&self, key: &str) -> Duration {
        self.local.counter_remaining(key)
    }

    /// `add-sliding`.
    pub async fn sliding_add(
        &self,
        key: &str,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
    ) -> Result<SlidingCount, StoreDown> {
        let Some(redis) = shared() else {
            return Ok(self.local.sliding_add(key, delta, window_ms, limit, false));
        };
        if redis.cfg.consistency == Consistency::Exact && redis.is_up() {
            let window_ms = window_ms.max(1);
            let now_ms = unix_ms();
            let push = SlidingPush {
                key: memory::counter_key(key).into_owned(),
                window_ms,
                index: now_ms / window_ms,
                current: delta,
                previous: 0,
            };
            match redis
                .sliding_exact(&self.name, &push, limit, now_ms % window_ms)
                .await
            {
                Ok(c) => {
                    self.local.sliding_synced(&push, c.current, c.previous);
                    return Ok(c);
                }
                Err(e) => redis.failed(&e),
            }
        }
        if !redis.is_up() {
            Self::fallback(&redis)?;
        }
        Ok(self.local.sliding_add(key, delta, window_ms, limit, true))
    }

    /// `kv.get`: with Redis, its value (read at most `sync` ago).
    pub async fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreDown> {
        let Some(redis) = shared() else {
            return Ok(self.local.kv_get(key));
        };
        if redis.is_up() {
            match redis.kv_get(&self.name, key).await {
                Ok(v) => return Ok(v),
                Err(e) => redis.failed(&e),
            }
        }
        Self::fallback(&redis)?;
        Ok(self.local.kv_get(key))
    }

    /// `kv.set`: kept here (within this node's limits) and, with Redis, written there.
    pub async fn kv_set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Result<(), String>, StoreDown> {
        if let Err(e) = self.local.kv_set(key, value, ttl) {
            return Ok(Err(e));
        }
        let Some(redis) = shared() else {
            return Ok(Ok(()));
        };
        if redis.is_up() {
            match redis.kv_set(&self.name, key, Some(value), ttl).await {
                Ok(()) => return Ok(Ok(())),
                Err(e) => redis.failed(&e),
            }
        }
        Self::fallback(&redis)?;
        Ok(Ok(()))
    }

    pub async fn kv_delete(&self, key: &str) -> Result<(), StoreDown> {
        self.local.kv_delete(key);
        let Some(redis) = shared() else {
            return Ok(());
        };
        if redis.is_up() {
            match redis.kv_set(&self.name, key, None, None).await {
                Ok(()) => return Ok(()),
                Err(e) => redis.failed(&e),
            }
        }
        Self::fallback(&redis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_is_shared_per_plugin_name() {
        PluginState::for_plugin("x")
            .counter_add("hits", 5, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(PluginState::for_plugin("x").counter_get("hits"), 5);
        assert_eq!(PluginState::for_plugin("y").counter_get("hits"), 0);
    }
}
