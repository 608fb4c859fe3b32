//! The memory store's tables, and its bookkeeping for the shared store.

use super::*;

#[test]
fn counters_are_windowed() {
    let s = Memory::default();
    assert_eq!(s.counter_add("a", 1, Duration::from_millis(50), false), 1);
    assert_eq!(s.counter_add("a", 1, Duration::from_millis(50), false), 2);
    assert_eq!(s.counter_get("a"), 2);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(s.counter_get("a"), 0);
    assert_eq!(s.counter_add("a", 1, Duration::from_millis(50), false), 1);
}

#[test]
fn sliding_counts_keep_the_window_before_and_check_the_limit() {
    let s = Memory::default();
    let add = |delta, limit, now| s.sliding_add_at("k", delta, 1000, limit, now, false);
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
        s.sliding_add_at("k", 1, 500, None, 8_100, false),
        counted(0, 1, 100, true)
    );
    // Taking back works as adding does.
    assert_eq!(
        s.sliding_add_at("k", -1, 500, None, 8_200, false),
        counted(0, 0, 200, true)
    );
}

#[test]
fn kv_expires_and_caps_values() {
    let s = Memory::default();
    s.kv_set("k", b"v", Some(Duration::from_millis(20)))
        .unwrap();
    assert_eq!(s.kv_get("k"), Some(b"v".to_vec()));
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(s.kv_get("k"), None);
    assert!(s.kv_set("big", &vec![0; KV_MAX_VALUE + 1], None).is_err());
}

#[test]
fn kv_is_bounded_in_bytes_and_key_length() {
    let s = Memory::default();
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
    let s = Memory::default();
    s.sliding.lock().unwrap().max = 64;
    let add = |key: &str, now_ms| s.sliding_add_at(key, 1, 60_000, None, now_ms, false);
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
            s.counter_add(&format!("c{i}"), 1, Duration::from_secs(60), false),
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
    let s = Memory::default();
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
    let s = Memory::default();
    let a = format!("{}a", "x".repeat(MAX_KEY));
    let b = format!("{}b", "x".repeat(MAX_KEY));
    assert_eq!(s.counter_add(&a, 1, Duration::from_secs(60), false), 1);
    assert_eq!(s.counter_add(&a, 1, Duration::from_secs(60), false), 2);
    assert_eq!(s.counter_add(&b, 1, Duration::from_secs(60), false), 1);
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
fn a_shared_store_gets_each_delta_once_and_the_counts_become_its_totals() {
    let s = Memory::default();
    let add = |now_ms, limit| s.sliding_add_at("k", 1, 1000, limit, now_ms, true);
    add(5_100, None);
    add(5_200, None);
    let pushed = s.take_sliding(5_300);
    assert_eq!(
        pushed,
        vec![SlidingPush {
            key: "k".into(),
            window_ms: 1000,
            index: 5,
            current: 2,
            previous: 0,
        }]
    );
    // Counted while the push was on its way: kept for the next one.
    add(5_400, None);
    // Another node counted 7 in this window and 4 in the one before.
    s.sliding_synced(&pushed[0], 9, 4);
    assert_eq!(add(5_500, Some(100)).current, 11);
    // A refused count touches the key (its totals are read back) but pushes nothing.
    assert!(!add(5_600, Some(5)).added);
    let next = s.take_sliding(5_700);
    assert_eq!((next[0].current, next[0].previous), (2, 0));
    assert!(s.take_sliding(5_800).is_empty());
    // A push that failed is given back, and still counts after the window rolls.
    s.sliding_unpushed(next[0].clone());
    let again = s.take_sliding(6_100);
    assert_eq!(
        (again[0].index, again[0].current, again[0].previous),
        (6, 0, 2)
    );
    // Nothing is tracked without a shared store.
    s.sliding_add_at("other", 1, 1000, None, 6_200, false);
    assert!(s.take_sliding(6_300).is_empty());
}

#[test]
fn add_counters_take_the_shared_total_and_the_time_its_window_has_left() {
    let s = Memory::default();
    let minute = Duration::from_secs(60);
    s.counter_add("c", 3, minute, true);
    let pushed = s.take_counters();
    assert_eq!(
        pushed,
        vec![CounterPush {
            key: "c".into(),
            window: minute,
            delta: 3,
        }]
    );
    s.counter_add("c", 1, minute, true);
    s.counter_synced(&pushed[0], 10, Duration::from_secs(20));
    assert_eq!(s.counter_get("c"), 11);
    let left = s.counter_remaining("c");
    assert!(left <= Duration::from_secs(20) && left > Duration::from_secs(19));
    let next = s.take_counters();
    assert_eq!(next[0].delta, 1);
    s.counter_unpushed(next[0].clone());
    assert_eq!(s.take_counters()[0].delta, 1);
}
