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
/// Most counters a plugin may keep (of each kind: `add`'s and `add-sliding`'s). A new
/// key in a full table drops the expired ones, and when too few had expired, the ones
/// counted least recently, down to 15/16 of this: a table kept full by new keys (a flood
/// of client addresses) is scanned once every 62,500 of them, not once per key.
pub const MAX_COUNTERS: usize = 1_000_000;
/// The longest key. A longer counter key is counted under its SHA-256 (so counters stay
/// exact); a longer kv key is refused.
pub const MAX_KEY: usize = 256;

/// A kv value and when it expires.
type Entry = (Vec<u8>, Option<Instant>);

#[derive(Default)]
pub struct PluginState {
    /// The configured plugin's name, for the log.
    name: String,
    counters: Mutex<Table<Counter>>,
    sliding: Mutex<Table<Sliding>>,
    kv: Mutex<Kv>,
}

/// Counters of one kind, at most `max` of them ([`MAX_COUNTERS`]).
struct Table<V> {
    entries: HashMap<String, V>,
    max: usize,
    /// How often the table was full and scanned to make room.
    scans: u64,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            max: MAX_COUNTERS,
            scans: 0,
        }
    }
}

impl<V> Table<V> {
    /// Makes room for a new key when the table is full: drops the entries that are not
    /// `live`, and when that leaves more than 15/16 of `max`, also the ones of lowest
    /// `rank` (the first to end, the least recently counted) down to that. Returns how
    /// many live entries were dropped.
    fn make_room<R: Ord + Copy>(
        &mut self,
        live: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> R,
    ) -> usize {
        if self.entries.len() < self.max {
            return 0;
        }
        self.scans += 1;
        self.entries.retain(|_, v| live(v));
        let keep = self.max - self.max / 16;
        let Some(cut) = self.entries.len().checked_sub(keep).filter(|&n| n > 0) else {
            return 0;
        };
        let mut ranks: Vec<R> = self.entries.values().map(&rank).collect();
        let nth = *ranks.select_nth_unstable(cut - 1).1;
        // The entries ranked below the cut-th lowest go, and as many of its rank (there
        // may be ties) as make up `cut`.
        let mut ties = cut - ranks.iter().filter(|&&r| r < nth).count();
        self.entries.retain(|_, v| match rank(v).cmp(&nth) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal if ties > 0 => {
                ties -= 1;
                false
            }
            _ => true,
        });
        cut
    }
}

/// A key's counts in two windows aligned to the clock: window `index` (the latest one
/// counted in) and the one before it.
struct Sliding {
    window_ms: u64,
    index: u64,
    current: i64,
    previous: i64,
    /// When it was last counted in (ms since the Unix epoch).
    counted_ms: u64,
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
    /// No entry expires before this (none with a TTL: never): a full store is scanned
    /// for expired entries only once one may have expired, not at every `set`.
    next_expiry: Option<Instant>,
    /// How often the store was scanned for expired entries.
    scans: u64,
}

impl Kv {
    fn remove(&mut self, key: &str) {
        if let Some((value, _)) = self.entries.remove(key) {
            self.bytes -= key.len() + value.len();
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|e| now < e) {
            return;
        }
        self.scans += 1;
        let (bytes, next) = (&mut self.bytes, &mut self.next_expiry);
        *next = None;
        self.entries.retain(|k, (v, e)| {
            let live = e.is_none_or(|e| now < e);
            if !live {
                *bytes -= k.len() + v.len();
            } else if let Some(e) = *e {
                *next = Some(next.map_or(e, |n| n.min(e)));
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
    format!("sha256:{}", crate::util::sha256_hex(key.as_bytes())).into()
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
        Arc::clone(all.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(PluginState {
                name: name.to_owned(),
                ..PluginState::default()
            })
        }))
    }

    /// Logs the live counters a full table dropped.
    fn dropped(&self, n: usize) {
        if n > 0 {
            tracing::warn!(
                "plugin.{}: its counter table was full; {n} counters in use dropped to make room (the oldest)",
                self.name
            );
        }
    }

    pub fn counter_add(&self, key: &str, delta: i64, window: Duration) -> i64 {
        let key = &*counter_key(key);
        let now = Instant::now();
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if !counters.entries.contains_key(key) {
            let dropped = counters.make_room(|c| c.live(now), |c| c.start + c.window);
            self.dropped(dropped);
        }
        let c = counters.entries.entry(key.to_owned()).or_insert(Counter {
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
        let found = all
            .entries
            .get_mut(key)
            .filter(|s| s.window_ms == window_ms);
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
            counted_ms: now_ms,
        };
        match found {
            Some(s) => *s = entry,
            None => {
                let dropped =
                    all.make_room(|s| s.index + 1 >= now_ms / s.window_ms, |s| s.counted_ms);
                self.dropped(dropped);
                all.entries.insert(key.to_owned(), entry);
            }
        }
        counted
    }

    fn live_counter<R>(&self, key: &str, f: impl FnOnce(&Counter, Instant) -> R) -> Option<R> {
        let key = &*counter_key(key);
        let now = Instant::now();
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        counters
            .entries
            .get(key)
            .filter(|c| c.live(now))
            .map(|c| f(c, now))
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
        let expires = ttl.map(|t| now + t);
        if let Some(e) = expires {
            kv.next_expiry = Some(kv.next_expiry.map_or(e, |n| n.min(e)));
        }
        kv.entries.insert(key.to_owned(), (value.to_vec(), expires));
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
    fn a_full_table_drops_the_least_recently_counted_a_sixteenth_at_a_time() {
        let s = PluginState::default();
        s.sliding.lock().unwrap().max = 64;
        let add = |key: &str, now_ms| s.sliding_add_at(key, 1, 60_000, None, now_ms);
        for i in 0..64 {
            add(&format!("k{i}"), 1_000 + i);
        }
        add("k0", 2_000);
        // Full, with no window over: the four (64 / 16) counted least recently go.
        assert_eq!(add("new0", 3_000).current, 1);
        {
            let table = s.sliding.lock().unwrap();
            assert_eq!(table.entries.len(), 61);
            assert_eq!(table.scans, 1);
            for gone in ["k1", "k2", "k3", "k4"] {
                assert!(!table.entries.contains_key(gone), "{gone}");
            }
            assert_eq!(table.entries["k0"].current, 2);
            assert!(table.entries.contains_key("k5"));
        }
        // A flood of new keys: the table stays within bounds and is scanned once per
        // four of them, not once per key.
        for i in 1..=1000 {
            assert_eq!(add(&format!("new{i}"), 3_000 + i).current, 1);
        }
        let table = s.sliding.lock().unwrap();
        assert!(table.entries.len() <= 64);
        assert_eq!(table.scans, 1 + 1000 / 4);
        drop(table);

        // `add`'s counters alike: the first to end go first.
        s.counters.lock().unwrap().max = 64;
        for i in 0..1064 {
            assert_eq!(
                s.counter_add(&format!("c{i}"), 1, Duration::from_secs(60)),
                1
            );
        }
        let table = s.counters.lock().unwrap();
        assert!(table.entries.len() <= 64);
        assert_eq!(table.scans, 1000 / 4);
        assert!(table.entries.contains_key("c1063") && !table.entries.contains_key("c0"));
    }

    #[test]
    fn a_full_kv_store_is_scanned_only_once_an_entry_may_have_expired() {
        let s = PluginState::default();
        s.kv_set("brief", b"v", Some(Duration::from_millis(1)))
            .unwrap();
        for i in 1..KV_MAX_KEYS {
            s.kv_set(&format!("k{i}"), b"v", None).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
        // The expired entry makes room; after that nothing can expire, and a full store
        // refuses without scanning its 100,000 keys again.
        s.kv_set("one-more", b"v", None).unwrap();
        for i in 0..100 {
            let full = s.kv_set(&format!("more{i}"), b"v", None).unwrap_err();
            assert!(full.contains("full"), "{full}");
        }
        assert_eq!(s.kv.lock().unwrap().scans, 1);
        assert_eq!(s.kv_get("brief"), None);
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
                .entries
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
