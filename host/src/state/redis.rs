//! The shared store: Redis, through redis-rs's connection manager (it reconnects by
//! itself). Counts are made in the memory store and synced every `sync`: one pipeline
//! pushes each touched key's deltas and reads back its totals, so a request never waits on
//! Redis. With `consistency = "exact"`, each count is one atomic script instead, waited
//! for at most `timeout`. kv goes to Redis on every write, and reads are cached for `sync`.
//!
//! Keys: `<prefix><plugin>:sliding:<window ms>:<window number>:<key>` (expiring two
//! windows and a second after their last count), `<prefix><plugin>:count:<key>` (expiring
//! with their window), `<prefix><plugin>:kv:<key>` (with the TTL the plugin gave).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::memory::{CounterPush, KV_MAX_KEYS, SlidingCount, SlidingPush};
use super::{PluginState, all, unix_ms};
use crate::config::{RedisStore, StoreOnError};

/// Keys pushed in one pipeline.
const BATCH: usize = 1000;

/// Pushes a key's deltas for its window and the one before, and reads both totals back.
/// KEYS: current, previous. ARGV: delta current, delta previous, TTL in ms.
const SYNC_SLIDING: &str = r"
local cur = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local prev
if ARGV[2] ~= '0' then
  prev = redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  prev = tonumber(redis.call('GET', KEYS[2]) or '0')
end
return {cur, prev}
";

/// `add-sliding` in one step, as the memory store does it: adds unless the sliding count
/// after adding would pass the limit. KEYS: current, previous. ARGV: delta, limit (or
/// empty), ms elapsed in the window, window in ms, TTL in ms. Returns previous, current,
/// added (1 or 0).
const EXACT_SLIDING: &str = r"
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = cur + tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local window = tonumber(ARGV[4])
  local overlap = window - math.min(tonumber(ARGV[3]), window)
  local weighted = math.floor((math.max(prev, 0) * overlap + window - 1) / window)
  if after + weighted > tonumber(ARGV[2]) then
    return {prev, cur, 0}
  end
end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {prev, after, 1}
";

/// `add`'s counter: adds, starts the window's expiry on a new key, and returns the count
/// and the ms its window has left. KEYS: the counter. ARGV: delta, window in ms.
const COUNT: &str = r"
local c = redis.call('INCRBY', KEYS[1], ARGV[1])
local t = redis.call('PTTL', KEYS[1])
if t < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  t = tonumber(ARGV[2])
end
return {c, t}
";

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// The shared store's state, for the metrics and `/api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStatus {
    /// The last exchange with Redis succeeded.
    pub up: bool,
    /// Exchanges with Redis that failed or timed out.
    pub errors: u64,
    /// Syncs that pushed counts and read totals back.
    pub syncs: u64,
}

impl StoreStatus {
    /// The memory store's: always up.
    pub fn memory() -> StoreStatus {
        StoreStatus {
            up: true,
            errors: ERRORS.load(Ordering::Relaxed),
            syncs: SYNCS.load(Ordering::Relaxed),
        }
    }
}

/// Failed exchanges and syncs, for the whole process: counters that never go back, when a
/// reload replaces the store.
static ERRORS: AtomicU64 = AtomicU64::new(0);
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// A kv value read from (or written to) Redis, None when absent, and when.
type Cached = (Option<Vec<u8>>, Instant);

pub struct Redis {
    pub cfg: RedisStore,
    conn: ConnectionManager,
    up: AtomicBool,
    /// Whether Redis was tried yet (a store that never came up is logged once).
    tried: AtomicBool,
    /// The sync's scripts are loaded in Redis (they are loaded again after a failure:
    /// a restarted Redis has lost them).
    loaded: AtomicBool,
    sync_sliding: redis::Script,
    exact_sliding: redis::Script,
    count: redis::Script,
    cache: Mutex<HashMap<String, Cached>>,
}

/// `url` without its password, for the log.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl Redis {
    /// Connects (without waiting longer than `timeout`: when Redis cannot be reached,
    /// the store starts down and the sync keeps trying) and starts the sync.
    pub async fn start(cfg: RedisStore) -> Arc<Redis> {
        let client = redis::Client::open(cfg.url.as_str()).expect("validation parsed the URL");
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(cfg.timeout.max(cfg.sync)))
            .set_number_of_retries(1)
            .set_max_delay(cfg.sync);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)
            .expect("a connection manager without push settings");
        let redis = Arc::new(Redis {
            conn,
            up: AtomicBool::new(false),
            tried: AtomicBool::new(false),
            loaded: AtomicBool::new(false),
            sync_sliding: redis::Script::new(SYNC_SLIDING),
            exact_sliding: redis::Script::new(EXACT_SLIDING),
            count: redis::Script::new(COUNT),
            cache: Mutex::new(HashMap::new()),
            cfg,
        });
        match redis.ping().await {
            Ok(()) => redis.reached(),
            Err(e) => redis.failed(&e),
        }
        tokio::spawn(run(Arc::downgrade(&redis), redis.cfg.sync));
        redis
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> StoreStatus {
        StoreStatus {
            up: self.is_up(),
            ..StoreStatus::memory()
        }
    }

    /// Counts a failed exchange; the first after success (or the first of all) is logged.
    pub fn failed(&self, e: &RedisError) {
        ERRORS.fetch_add(1, Ordering::Relaxed);
        self.loaded.store(false, Ordering::Relaxed);
        let first = !self.tried.swap(true, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) || first {
            let policy = match self.cfg.on_error {
                StoreOnError::Local => "counting on this node alone until it is back",
                StoreOnError::Deny => "refusing requests that need it until it is back",
            };
            tracing::warn!(
                "state: Redis at {} cannot be reached ({e}); {policy}",
                redacted(&self.cfg.url)
            );
        }
    }

    /// Notes a successful exchange; the first after a failure is logged.
    fn reached(&self) {
        self.tried.store(true, Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "state: Redis at {} reachable; syncing every {:?}",
                redacted(&self.cfg.url),
                self.cfg.sync
            );
        }
    }

    /// Waits at most `limit` for `f`.
    async fn within<T>(
        limit: Duration,
        f: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(limit, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisError::Timeout(limit)),
        }
    }

    async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        Self::within(
            self.cfg.timeout,
            redis::cmd("PING").query_async::<()>(&mut conn),
        )
        .await
    }

    fn key(&self, plugin: &str, kind: &str, key: &str) -> String {
        format!("{}{plugin}:{kind}:{key}", self.cfg.prefix)
    }

    fn sliding_keys(&self, plugin: &str, push: &SlidingPush) -> (String, String) {
        let kind = format!("sliding:{}", push.window_ms);
        let at = |index: u64| self.key(plugin, &kind, &format!("{index}:{}", push.key));
        (at(push.index), at(push.index.saturating_sub(1)))
    }

    fn sliding_ttl(window_ms: u64) -> u64 {
        window_ms.saturating_mul(2).saturating_add(1000)
    }

    /// `add-sliding` in Redis, in one atomic script.
    pub async fn sliding_exact(
        &self,
        plugin: &str,
        push: &SlidingPush,
        limit: Option<i64>,
        elapsed_ms: u64,
    ) -> Result<SlidingCount, RedisError> {
        let (current, previous) = self.sliding_keys(plugin, push);
        let mut conn = self.conn.clone();
        let mut call = self.exact_sliding.key(current);
        call.key(previous)
            .arg(push.current)
            .arg(limit.map_or(String::new(), |l| l.to_string()))
            .arg(elapsed_ms)
            .arg(push.window_ms)
            .arg(Self::sliding_ttl(push.window_ms));
        let (previous, current, added): (i64, i64, i64) =
            Self::within(self.cfg.timeout, call.invoke_async(&mut conn)).await?;
        self.reached();
        Ok(SlidingCount {
            previous,
            current,
            elapsed_ms,
            added: added == 1,
        })
    }

    /// `add` in Redis: the count and the time its window has left.
    pub async fn count_exact(
        &self,
        plugin: &str,
        push: &CounterPush,
    ) -> Result<(i64, Duration), RedisError> {
        let mut conn = self.conn.clone();
        let mut call = self.count.key(self.key(plugin, "count", &push.key));
        call.arg(push.delta).arg(push.window.as_millis() as u64);
        let (total, left): (i64, u64) =
            Self::within(self.cfg.timeout, call.invoke_async(&mut conn)).await?;
        self.reached();
        Ok((total, Duration::from_millis(left)))
    }

    /// A kv value: from the cache when read less than `sync` ago.
    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        let key = self.key(plugin, "kv", key);
        if let Some((value, _)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(_, at)| at.elapsed() < self.cfg.sync)
        {
            return Ok(value.clone());
        }
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = Self::within(
            self.cfg.timeout,
            redis::cmd("GET").arg(&key).query_async(&mut conn),
        )
        .await?;
        self.reached();
        self.cached(key, value.clone());
        Ok(value)
    }

    /// Writes a kv value (None: deletes it).
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: Option<&[u8]>,
        ttl: Option<Duration>,
    ) -> Result<(), RedisError> {
        let key = self.key(plugin, "kv", key);
        let cmd = match value {
            Some(v) => {
                let mut c = redis::cmd("SET");
                c.arg(&key).arg(v);
                if let Some(ttl) = ttl {
                    c.arg("PX").arg((ttl.as_millis() as u64).max(1));
                }
                c
            }
            None => {
                let mut c = redis::cmd("DEL");
                c.arg(&key);
                c
            }
        };
        let mut conn = self.conn.clone();
        Self::within(self.cfg.timeout, cmd.query_async::<()>(&mut conn)).await?;
        self.reached();
        self.cached(key, value.map(<[u8]>::to_vec));
        Ok(())
    }

    fn cached(&self, key: String, value: Option<Vec<u8>>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KV_MAX_KEYS {
            cache.clear();
        }
        cache.insert(key, (value, Instant::now()));
    }

    /// One sync: every plugin's touched keys pushed and read back, in pipelines; a ping
    /// when nothing was counted, so that the store's state stays known. What could not be
    /// pushed is given back for the next sync.
    async fn sync(&self) {
        let plugins: Vec<Arc<PluginState>> = all()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Arc::clone)
            .collect();
        let now_ms = unix_ms();
        let mut sliding = Vec::new();
        let mut counters = Vec::new();
        for p in &plugins {
            sliding.extend(p.local.take_sliding(now_ms).into_iter().map(|s| (p, s)));
            counters.extend(p.local.take_counters().into_iter().map(|c| (p, c)));
        }
        if sliding.is_empty() && counters.is_empty() {
            match self.ping().await {
                Ok(()) => self.reached(),
                Err(e) => self.failed(&e),
            }
            return;
        }
        let result = self.push(&sliding, &counters).await;
        match result {
            Ok(()) => {
                SYNCS.fetch_add(1, Ordering::Relaxed);
                self.reached();
            }
            Err((e, from_sliding, from_counters)) => {
                for (p, push) in sliding.into_iter().skip(from_sliding) {
                    p.local.sliding_unpushed(push);
                }
                for (p, push) in counters.into_iter().skip(from_counters) {
                    p.local.counter_unpushed(push);
                }
                self.failed(&e);
            }
        }
    }

    /// Pushes in batches; on failure, says how far each list got.
    async fn push(
        &self,
        sliding: &[(&Arc<PluginState>, SlidingPush)],
        counters: &[(&Arc<PluginState>, CounterPush)],
    ) -> Result<(), (RedisError, usize, usize)> {
        let limit = self.cfg.timeout.max(self.cfg.sync);
        let mut conn = self.conn.clone();
        if !self.loaded.load(Ordering::Relaxed) {
            for script in [SYNC_SLIDING, COUNT] {
                let load = redis::cmd("SCRIPT").arg("LOAD").arg(script).to_owned();
                Self::within(limit, load.query_async::<String>(&mut conn))
                    .await
                    .map_err(|e| (e, 0, 0))?;
            }
            self.loaded.store(true, Ordering::Relaxed);
        }
        for (i, batch) in sliding.chunks(BATCH).enumerate() {
            let mut pipe = redis::pipe();
            for (p, push) in batch {
                let (current, previous) = self.sliding_keys(&p.name, push);
                pipe.cmd("EVALSHA")
                    .arg(self.sync_sliding.get_hash())
                    .arg(2)
                    .arg(current)
                    .arg(previous)
                    .arg(push.current)
                    .arg(push.previous)
                    .arg(Self::sliding_ttl(push.window_ms));
            }
            let totals: Vec<(i64, i64)> = Self::within(limit, pipe.query_async(&mut conn))
                .await
                .map_err(|e| (e, i * BATCH, 0))?;
            for ((p, push), (current, previous)) in batch.iter().zip(totals) {
                p.local.sliding_synced(push, current, previous);
            }
        }
        for (i, batch) in counters.chunks(BATCH).enumerate() {
            let mut pipe = redis::pipe();
            for (p, push) in batch {
                pipe.cmd("EVALSHA")
                    .arg(self.count.get_hash())
                    .arg(1)
                    .arg(self.key(&p.name, "count", &push.key))
                    .arg(push.delta)
                    .arg(push.window.as_millis() as u64);
            }
            let totals: Vec<(i64, u64)> = Self::within(limit, pipe.query_async(&mut conn))
                .await
                .map_err(|e| (e, sliding.len(), i * BATCH))?;
            for ((p, push), (total, left)) in batch.iter().zip(totals) {
                p.local
                    .counter_synced(push, total, Duration::from_millis(left));
            }
        }
        Ok(())
    }
}

/// Syncs every `every` while the store is in use.
async fn run(store: Weak<Redis>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(redis) = store.upgrade() else {
            return;
        };
        redis.sync().await;
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn the_log_never_shows_the_password() {
        assert_eq!(
            redacted("redis://user:secret@10.0.0.1:6379/0"),
            "redis://10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1/"), "redis://127.0.0.1/");
    }
}
