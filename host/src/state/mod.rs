//! State the host keeps for plugins, namespaced per configured plugin: windowed counters
//! and a small key-value store with TTLs. It lives outside instances, so it survives
//! instance recycling; held per plugin name by the process, it survives reloads too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most keys a plugin may keep in kv, the largest value, and the most bytes (keys and
/// values together) it may hold: a plugin storing without end cannot take the process's
/// memory.
pub const KV_MAX_KEYS: usize = 100_000;
pub const KV_MAX_VALUE: usize = 64 * 1024;
pub const KV_MAX_BYTES: usize = 64 << 20;
/// Most counters a plugin may keep; expired ones are dropped first.
pub const MAX_COUNTERS: usize = 1_000_000;
/// The longest key. A longer counter key is counted under its SHA-256 (so counters stay
/// exact); a longer kv key is refused.
pub const MAX_KEY: usize = 256;

/// A kv value and when it expires.
type Entry = (Vec<u8>, Option<Instant>);

#[derive(Default)]
pub struct PluginState {
    counters: Mutex<HashMap<String, Counter>>,
    sliding: Mutex<HashMap<String, Sliding>>,
    kv: Mutex<Kv>,
}

/// A key's counts in two windows aligned to the clock: window `index` (the latest one
/// counted in) and the one before it.
struct Sliding {
    window_ms: u64,
    index: u64,
    current: i64,
    previous: i64,
}

impl Sliding {
    /// The counts as of window `index`: the window before it, and `index` itself.
    fn at(&self, index: u64) -> (i64, i64) {
        match index.checked_sub(self.index) {
            Some(0) => (self.previous, self.current),
            Some(1) => (self.current, 0),
            _ => (0, 0),
        }
    }
}

/// What [`PluginState::sliding_add`] found and did.
#[derive(Debug, PartialEq, Eq)]
pub struct SlidingCount {
    pub previous: i64,
    pub current: i64,
    pub elapsed_ms: u64,
    pub added: bool,
}

/// Milliseconds since the Unix epoch: the clock plugins read (`clock.now-ms`), and the
/// one sliding windows are aligned to.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The sliding count at `elapsed_ms` into the current window of `window_ms`: the current
/// count, plus the previous window's weighted by how much of it the last `window_ms`
/// still covers, rounded up.
pub fn sliding_estimate(previous: i64, current: i64, elapsed_ms: u64, window_ms: u64) -> i64 {
    let previous = previous.max(0) as u128;
    let overlap = u128::from(window_ms - elapsed_ms.min(window_ms));
    let weighted = (previous * overlap).div_ceil(u128::from(window_ms.max(1)));
    current.saturating_add(i64::try_from(weighted).unwrap_or(i64::MAX))
}

/// The kv entries, and the bytes of their keys and values.
#[derive(Default)]
struct Kv {
    entries: HashMap<String, Entry>,
    bytes: usize,
}

impl Kv {
    fn remove(&mut self, key: &str) {
        if let Some((value, _)) = self.entries.remove(key) {
            self.bytes -= key.len() + value.len();
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        let bytes = &mut self.bytes;
        self.entries.retain(|k, (v, e)| {
            let live = e.is_none_or(|e| now < e);
            if !live {
                *bytes -= k.len() + v.len();
            }
            live
        });
    }
}

/// A counter key within [`MAX_KEY`].
fn counter_key(key: &str) -> std::borrow::Cow<'_, str> {
    if key.len() <= MAX_KEY {
        return key.into();
    }
    format!(
        "sha256:{}",
        crate::plugin::validate::sha256_hex(key.as_bytes())
    )
    .into()
}

struct Counter {
    start: Instant,
    window: Duration,
    count: i64,
}

impl Counter {
    fn live(&self, now: Instant) -> bool {
        now < self.start + self.window
    }
}

impl PluginState {
    /// The state of the configured plugin `name`, shared by all its instances and kept
    /// across reloads.
    pub fn for_plugin(name: &str) -> Arc<PluginState> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<PluginState>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(all.entry(name.to_owned()).or_default())
    }

    pub fn counter_add(&self, key: &str, delta: i64, window: Duration) -> i64 {
        let key = &*counter_key(key);
        let now = Instant::now();
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if counters.len() >= MAX_COUNTERS && !counters.contains_key(key) {
            counters.retain(|_, c| c.live(now));
        }
        let c = counters.entry(key.to_owned()).or_insert(Counter {
            start: now,
            window,
            count: 0,
        });
        if !c.live(now) {
            *c = Counter {
                start: now,
                window,
                count: 0,
            };
        }
        c.count = c.count.saturating_add(delta);
        c.count
    }

    /// Adds `delta` to the current window's count of `key` (windows of `window_ms`
    /// aligned to the Unix epoch), unless `limit` is given and the sliding count after
    /// adding would exceed it; returns both windows' counts.
    pub fn sliding_add(
        &self,
        key: &str,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
    ) -> SlidingCount {
        self.sliding_add_at(key, delta, window_ms, limit, unix_ms())
    }

    fn sliding_add_at(
        &self,
        key: &str,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
        now_ms: u64,
    ) -> SlidingCount {
        let window_ms = window_ms.max(1);
        let (index, elapsed_ms) = (now_ms / window_ms, now_ms % window_ms);
        let key = &*counter_key(key);
        let mut all = self.sliding.lock().unwrap_or_else(|p| p.into_inner());
        // One lookup for a key that counts already (nearly every call).
        let found = all.get_mut(key).filter(|s| s.window_ms == window_ms);
        let (previous, current) = found.as_ref().map_or((0, 0), |s| s.at(index));
        let after = current.saturating_add(delta);
        let added =
            limit.is_none_or(|l| sliding_estimate(previous, after, elapsed_ms, window_ms) <= l);
        let counted = SlidingCount {
            previous,
            current: if added { after } else { current },
            elapsed_ms,
            added,
        };
        if !added {
            return counted;
        }
        let entry = Sliding {
            window_ms,
            index,
            current: after,
            previous,
        };
        match found {
            Some(s) => *s = entry,
            None => {
                if all.len() >= MAX_COUNTERS {
                    all.retain(|_, s| s.index + 1 >= now_ms / s.window_ms);
                }
                all.insert(key.to_owned(), entry);
            }
        }
        counted
    }

    fn live_counter<R>(&self, key: &str, f: impl FnOnce(&Counter, Instant) -> R) -> Option<R> {
        let key = &*counter_key(key);
        let now = Instant::now();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters.get(key).filter(|c| c.live(now)).map(|c| f(c, now))
    }

    pub fn counter_get(&self, key: &str) -> i64 {
        self.live_counter(key, |c, _| c.count).unwrap_or(0)
    }

    pub fn counter_remaining(&self, key: &str) -> Duration {
        self.live_counter(key, |c, now| c.start + c.window - now)
            .unwrap_or_default()
    }

    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        let (value, expires) = kv.entries.get(key)?;
        expires
            .is_none_or(|e| Instant::now() < e)
            .then(|| value.clone())
    }

    pub fn kv_set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), String> {
        if value.len() > KV_MAX_VALUE {
            return Err(format!(
                "value of {} bytes is over the {KV_MAX_VALUE}-byte limit",
                value.len()
            ));
        }
        if key.len() > MAX_KEY {
            return Err(format!(
                "key of {} bytes is over the {MAX_KEY}-byte limit",
                key.len()
            ));
        }
        let now = Instant::now();
        let mut kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        kv.remove(key);
        let size = key.len() + value.len();
        if kv.entries.len() >= KV_MAX_KEYS || kv.bytes + size > KV_MAX_BYTES {
            kv.drop_expired(now);
            if kv.entries.len() >= KV_MAX_KEYS || kv.bytes + size > KV_MAX_BYTES {
                return Err(format!(
                    "the store is full ({KV_MAX_KEYS} keys or {} MiB)",
                    KV_MAX_BYTES >> 20
                ));
            }
        }
        kv.bytes += size;
        kv.entries
            .insert(key.to_owned(), (value.to_vec(), ttl.map(|t| now + t)));
        Ok(())
    }

    pub fn kv_delete(&self, key: &str) {
        self.kv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_windowed() {
        let s = PluginState::default();
        assert_eq!(s.counter_add("a", 1, Duration::from_millis(50)), 1);
        assert_eq!(s.counter_add("a", 1, Duration::from_millis(50)), 2);
        assert_eq!(s.counter_get("a"), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.counter_get("a"), 0);
        assert_eq!(s.counter_add("a", 1, Duration::from_millis(50)), 1);
    }

    #[test]
    fn sliding_counts_keep_the_window_before_and_check_the_limit() {
        let s = PluginState::default();
        let add = |delta, limit, now| s.sliding_add_at("k", delta, 1000, limit, now);
        let counted = |previous, current, elapsed_ms, added| SlidingCount {
            previous,
            current,
            elapsed_ms,
            added,
        };
        assert_eq!(add(1, None, 5_100), counted(0, 1, 100, true));
        assert_eq!(add(2, None, 5_900), counted(0, 3, 900, true));
        // The next window: 3 weighted by the 750 ms of it still covered, rounded up.
        assert_eq!(add(1, Some(4), 6_250), counted(3, 1, 250, true));
        assert_eq!(sliding_estimate(3, 1, 250, 1000), 4);
        // Over the limit: not added, and the counts say why.
        assert_eq!(add(1, Some(4), 6_300), counted(3, 1, 300, false));
        assert_eq!(add(1, Some(4), 6_700), counted(3, 2, 700, true));
        // A window skipped: nothing counts any more.
        assert_eq!(add(1, Some(4), 8_000), counted(0, 1, 0, true));
        // Another window length starts the key again.
        assert_eq!(
            s.sliding_add_at("k", 1, 500, None, 8_100),
            counted(0, 1, 100, true)
        );
        // Taking back works as adding does.
        assert_eq!(
            s.sliding_add_at("k", -1, 500, None, 8_200),
            counted(0, 0, 200, true)
        );
    }

    #[test]
    fn kv_expires_and_caps_values() {
        let s = PluginState::default();
        s.kv_set("k", b"v", Some(Duration::from_millis(20)))
            .unwrap();
        assert_eq!(s.kv_get("k"), Some(b"v".to_vec()));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(s.kv_get("k"), None);
        assert!(s.kv_set("big", &vec![0; KV_MAX_VALUE + 1], None).is_err());
    }

    #[test]
    fn kv_is_bounded_in_bytes_and_key_length() {
        let s = PluginState::default();
        let value = vec![0u8; KV_MAX_VALUE];
        let fit = KV_MAX_BYTES / (KV_MAX_VALUE + 8);
        for i in 0..fit {
            s.kv_set(&format!("k{i:07}"), &value, None).unwrap();
        }
        let full = s.kv_set("one-more", &value, None).unwrap_err();
        assert!(full.contains("full"), "{full}");
        // Replacing a key frees its old size first; deleting frees room.
        s.kv_set("k0000000", &value, None).unwrap();
        s.kv_delete("k0000001");
        s.kv_set("one-more", &value, None).unwrap();
        assert!(s.kv.lock().unwrap().bytes <= KV_MAX_BYTES);
        assert!(s.kv_set(&"k".repeat(MAX_KEY + 1), b"v", None).is_err());
    }

    #[test]
    fn long_counter_keys_are_counted_exactly_under_a_digest() {
        let s = PluginState::default();
        let a = format!("{}a", "x".repeat(MAX_KEY));
        let b = format!("{}b", "x".repeat(MAX_KEY));
        assert_eq!(s.counter_add(&a, 1, Duration::from_secs(60)), 1);
        assert_eq!(s.counter_add(&a, 1, Duration::from_secs(60)), 2);
        assert_eq!(s.counter_add(&b, 1, Duration::from_secs(60)), 1);
        assert_eq!(s.counter_get(&a), 2);
        assert!(
            s.counters
                .lock()
                .unwrap()
                .keys()
                .all(|k| k.len() <= MAX_KEY)
        );
    }

    #[test]
    fn state_is_shared_per_plugin_name() {
        PluginState::for_plugin("x").counter_add("hits", 5, Duration::from_secs(60));
        assert_eq!(PluginState::for_plugin("x").counter_get("hits"), 5);
        assert_eq!(PluginState::for_plugin("y").counter_get("hits"), 0);
    }
}
