//! The memory store: one plugin's windowed counters and small key-value store, in this
//! process. With a shared store it is also the local half: counts are made here and the
//! deltas not yet pushed are kept per key ([`Memory::take_sliding`] and the like).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
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
pub struct Memory {
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
    /// With a shared store: the keys counted since the last sync, whose totals it reads
    /// back (and whose deltas it pushes).
    touched: HashSet<String>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            max: MAX_COUNTERS,
            scans: 0,
            touched: HashSet::new(),
        }
    }
}

impl<V> Table<V> {
    fn touch(&mut self, key: &str) {
        if !self.touched.contains(key) {
            self.touched.insert(key.to_owned());
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
/// counted in) and the one before it. With a shared store, the counts are the totals read
/// back at the last sync plus this node's deltas not yet pushed (`unsynced*`).
#[derive(Clone, Copy, Default)]
struct Sliding {
    window_ms: u64,
    index: u64,
    current: i64,
    previous: i64,
    /// When it was last counted in (ms since the Unix epoch).
    counted_ms: u64,
    unsynced: i64,
    unsynced_previous: i64,
}

impl Sliding {
    /// The entry as of window `index` (not before its own): the window before it, and
    /// `index` itself.
    fn at(&self, index: u64) -> Sliding {
        let empty = Sliding {
            window_ms: self.window_ms,
            index,
            counted_ms: self.counted_ms,
            ..Sliding::default()
        };
        match index.checked_sub(self.index) {
            Some(0) | None => *self,
            Some(1) => Sliding {
                previous: self.current,
                unsynced_previous: self.unsynced,
                ..empty
            },
            _ => empty,
        }
    }
}

/// One key's deltas for the shared store, taken at a sync: `current` for window `index`,
/// `previous` for the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingPush {
    pub key: String,
    pub window_ms: u64,
    pub index: u64,
    pub current: i64,
    pub previous: i64,
}

/// One `add` counter's delta for the shared store, taken at a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterPush {
    pub key: String,
    pub window: Duration,
    pub delta: i64,
}

/// What [`Memory::sliding_add`] found and did.
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
pub(super) fn counter_key(key: &str) -> std::borrow::Cow<'_, str> {
    if key.len() <= MAX_KEY {
        return key.into();
    }
    format!("sha256:{}", crate::util::sha256_hex(key.as_bytes())).into()
}

struct Counter {
    start: Instant,
    window: Duration,
    count: i64,
    /// With a shared store: added here since the last push.
    unsynced: i64,
}

impl Counter {
    fn live(&self, now: Instant) -> bool {
        now < self.start + self.window
    }
}

impl Memory {
    /// The store of the configured plugin `name` (named in the log).
    pub fn named(name: &str) -> Memory {
        Memory {
            name: name.to_owned(),
            ..Memory::default()
        }
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

    /// Adds `delta` to `key`'s count in its window; `track`: keep the delta for the shared
    /// store.
    pub fn counter_add(&self, key: &str, delta: i64, window: Duration, track: bool) -> i64 {
        let key = &*counter_key(key);
        let now = Instant::now();
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if !counters.entries.contains_key(key) {
            let dropped = counters.make_room(|c| c.live(now), |c| c.start + c.window);
            self.dropped(dropped);
        }
        let fresh = Counter {
            start: now,
            window,
            count: 0,
            unsynced: 0,
        };
        let c = counters.entries.entry(key.to_owned()).or_insert(fresh);
        if !c.live(now) {
            *c = Counter {
                start: now,
                window,
                count: 0,
                unsynced: 0,
            };
        }
        c.count = c.count.saturating_add(delta);
        let count = c.count;
        if track {
            c.unsynced = c.unsynced.saturating_add(delta);
            counters.touch(key);
        }
        count
    }

    /// Takes the deltas of the `add` counters counted since the last call.
    pub fn take_counters(&self) -> Vec<CounterPush> {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let touched = std::mem::take(&mut counters.touched);
        let now = Instant::now();
        touched
            .into_iter()
            .filter_map(|key| {
                let c = counters.entries.get_mut(&key).filter(|c| c.live(now))?;
                let delta = std::mem::take(&mut c.unsynced);
                Some(CounterPush {
                    key,
                    window: c.window,
                    delta,
                })
            })
            .collect()
    }

    /// The shared store's total for a pushed counter and the time its window has left:
    /// the count becomes the total plus what was added here since.
    pub fn counter_synced(&self, push: &CounterPush, total: i64, left: Duration) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let c = counters.entries.entry(push.key.clone()).or_insert(Counter {
            start: now,
            window: push.window,
            count: 0,
            unsynced: 0,
        });
        c.count = total.saturating_add(c.unsynced);
        c.window = push.window;
        c.start = (now + left.min(push.window))
            .checked_sub(push.window)
            .unwrap_or(now);
    }

    /// Gives back a delta the shared store did not take, for the next sync.
    pub fn counter_unpushed(&self, push: CounterPush) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = counters.entries.get_mut(&push.key) {
            c.unsynced = c.unsynced.saturating_add(push.delta);
            counters.touched.insert(push.key);
        }
    }

    /// Adds `delta` to the current window's count of `key` (windows of `window_ms`
    /// aligned to the Unix epoch), unless `limit` is given and the sliding count after
    /// adding would exceed it; returns both windows' counts. `track`: keep the delta and
    /// the key for the shared store.
    pub fn sliding_add(
        &self,
        key: &str,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
        track: bool,
    ) -> SlidingCount {
        self.sliding_add_at(key, delta, window_ms, limit, unix_ms(), track)
    }

    pub(super) fn sliding_add_at(
        &self,
        key: &str,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
        now_ms: u64,
        track: bool,
    ) -> SlidingCount {
        let window_ms = window_ms.max(1);
        let (index, elapsed_ms) = (now_ms / window_ms, now_ms % window_ms);
        let key = &*counter_key(key);
        let mut all = self.sliding.lock().unwrap_or_else(|p| p.into_inner());
        if track {
            all.touch(key);
        }
        // One lookup for a key that counts already (nearly every call).
        let found = all
            .entries
            .get_mut(key)
            .filter(|s| s.window_ms == window_ms);
        let mut entry = found.as_ref().map_or(
            Sliding {
                window_ms,
                index,
                ..Sliding::default()
            },
            |s| s.at(index),
        );
        let after = entry.current.saturating_add(delta);
        let added = limit
            .is_none_or(|l| sliding_estimate(entry.previous, after, elapsed_ms, window_ms) <= l);
        let counted = SlidingCount {
            previous: entry.previous,
            current: if added { after } else { entry.current },
            elapsed_ms,
            added,
        };
        if !added {
            return counted;
        }
        entry.current = after;
        entry.counted_ms = now_ms;
        if track {
            entry.unsynced = entry.unsynced.saturating_add(delta);
        }
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

    /// Takes the deltas of the sliding counts touched since the last call (a key touched
    /// but not counted in has none: its totals are only read back).
    pub fn take_sliding(&self, now_ms: u64) -> Vec<SlidingPush> {
        let mut all = self.sliding.lock().unwrap_or_else(|p| p.into_inner());
        let touched = std::mem::take(&mut all.touched);
        touched
            .into_iter()
            .filter_map(|key| {
                let s = all.entries.get_mut(&key)?;
                *s = s.at(now_ms / s.window_ms);
                let push = SlidingPush {
                    window_ms: s.window_ms,
                    index: s.index,
                    current: std::mem::take(&mut s.unsynced),
                    previous: std::mem::take(&mut s.unsynced_previous),
                    key,
                };
                Some(push)
            })
            .collect()
    }

    /// The shared store's totals of a key's two windows (as of `index`, the push's or
    /// an exact count's): the counts become them plus what was added here since.
    pub fn sliding_synced(&self, push: &SlidingPush, current: i64, previous: i64) {
        let mut all = self.sliding.lock().unwrap_or_else(|p| p.into_inner());
        let s = all
            .entries
            .entry(push.key.clone())
            .or_insert_with(|| Sliding {
                window_ms: push.window_ms,
                index: push.index,
                ..Sliding::default()
            });
        if s.window_ms != push.window_ms {
            return;
        }
        if s.index == push.index {
            s.current = current.saturating_add(s.unsynced);
            s.previous = previous.saturating_add(s.unsynced_previous);
        } else if s.index == push.index + 1 {
            s.previous = current.saturating_add(s.unsynced_previous);
        }
    }

    /// Gives back deltas the shared store did not take, for the next sync.
    pub fn sliding_unpushed(&self, push: SlidingPush) {
        let mut all = self.sliding.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = all
            .entries
            .get_mut(&push.key)
            .filter(|s| s.window_ms == push.window_ms)
        else {
            return;
        };
        if s.index == push.index {
            s.unsynced = s.unsynced.saturating_add(push.current);
            s.unsynced_previous = s.unsynced_previous.saturating_add(push.previous);
        } else if s.index == push.index + 1 {
            s.unsynced_previous = s.unsynced_previous.saturating_add(push.current);
        }
        all.touched.insert(push.key);
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
mod tests;
