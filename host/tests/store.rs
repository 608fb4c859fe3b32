//! Plugins' state shared through Redis: weir processes and Debian's `redis-server`, each
//! started on 127.0.0.1 with ports the test picks, and stopped by it.
//!
//! They need redis-server, so they are ignored by a plain `cargo test`; run them with
//! `cargo test -p weir --test store -- --ignored` (CI does, after installing it). Where
//! redis-server is missing they say so in one line and fail rather than pass.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

mod common;

use common::{Redis, free_port};

/// The sum of the values of the keys matching `pattern`.
fn sum(redis: &Redis, pattern: &str) -> i64 {
    let keys = redis.command(&["KEYS", pattern]).unwrap();
    keys.lines()
        .filter(|k| !k.is_empty())
        .map(|k| redis.command(&["GET", k]).unwrap().parse::<i64>().unwrap())
        .sum()
}

/// A server that answers every request 200 "ok", closing the connection.
fn server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    addr
}

/// A weir process and its log, read by a thread of the test.
struct Node {
    child: Child,
    addr: String,
    admin: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Dir,
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A prefix of Redis keys that no other test uses.
fn prefix(test: &str) -> String {
    format!("weir-test-{}-{test}:", std::process::id())
}

/// A node with `rate-limit` (`limit`, e.g. `{ requests = 50, window = "5s" }`) in front
/// of `server`, and the given `[state] store`.
fn node(name: &str, server: &str, limit: &str, store: &str) -> Node {
    let admin = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"[[frontend]]
name = "www"
bind = "127.0.0.1:0"
default_backend = "app"
plugins = ["limit"]

[plugin.limit]
stock = "rate-limit"
config = {limit}

[state]
store = {store}

[admin]
bind = "{admin}"

[backend.app]
servers = [{{ name = "s", addr = "{server}" }}]
"#
    );
    let dir = std::env::temp_dir().join(format!("weir-store-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(WEIR)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(a) = line.split("frontend www listening on ").nth(1) {
                let _ = tx.send(a.trim().to_owned());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("node {name} did not start: {:?}", log.lock().unwrap()));
    Node {
        child,
        addr,
        admin,
        log,
        _dir: Dir(dir),
    }
}

impl Node {
    /// The status of one request.
    fn status(&self) -> u16 {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"))
    }

    /// A sample of the Prometheus metrics, by its line's start.
    fn metric(&self, start: &str) -> Option<f64> {
        let mut s = TcpStream::connect(&self.admin).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.lines()
            .find(|l| l.starts_with(start))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Waits (at most 10 s) for `weir_store_up` to be `up`.
    fn wait_store_up(&self, up: bool) {
        let want = if up { 1.0 } else { 0.0 };
        for _ in 0..200 {
            if self.metric("weir_store_up{store=\"redis\"}") == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "weir_store_up never became {want}: {:?}",
            self.log.lock().unwrap()
        );
    }

    fn logged(&self, text: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }
}

/// Sleeps until a little after the start of the next window of `window_ms` (windows are
/// aligned to the Unix epoch), so that a run of requests falls in one window.
fn align_to_window(window_ms: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let wait = window_ms - now % window_ms + 50;
    std::thread::sleep(Duration::from_millis(wait));
}

/// Sends `n` requests alternately to `nodes`, `pace` apart; returns how many were
/// admitted (200; the others must be 429) and the requests sent per second.
fn alternate(nodes: &[&Node], n: usize, pace: Duration) -> (usize, f64) {
    let started = Instant::now();
    let mut admitted = 0;
    for i in 0..n {
        match nodes[i % nodes.len()].status() {
            200 => admitted += 1,
            429 => {}
            other => panic!("request {i}: status {other}"),
        }
        std::thread::sleep(pace);
    }
    (admitted, n as f64 / started.elapsed().as_secs_f64())
}

const WINDOW_MS: u64 = 5000;
const LIMIT: &str = r#"{ requests = 50, window = "5s" }"#;

#[test]
#[ignore = "needs redis-server: cargo test -p weir --test store -- --ignored"]
fn two_nodes_sharing_redis_admit_one_limit_between_them_not_one_each() {
    let redis = Redis::start();
    let server = server();
    let store = format!(
        r#"{{ redis = "{}", prefix = "{}", sync = "100ms" }}"#,
        redis.url(),
        prefix("shared")
    );
    let a = node("shared-a", &server, LIMIT, &store);
    let b = node("shared-b", &server, LIMIT, &store);
    a.wait_store_up(true);
    b.wait_store_up(true);
    align_to_window(WINDOW_MS);
    let (admitted, rate) = alternate(&[&a, &b], 150, Duration::from_millis(10));
    // Each node learns the other's counts at its next sync, from the other's sync before
    // it: what the pair admits past the limit is at most what arrives in two sync
    // intervals (0.2 s), with 0.1 s more for the round trips. Alone, each node would
    // admit 50 (100 in all).
    let bound = 50 + (rate * 0.3).ceil() as usize;
    println!("admitted {admitted} of 150 at {rate:.0} requests/s (bound {bound})");
    assert!(
        (50..=bound).contains(&admitted),
        "admitted {admitted}, expected 50..={bound}"
    );
    assert!(bound < 100, "the run was too fast to tell sharing apart");
    assert!(a.metric("weir_store_syncs_total").unwrap_or(0.0) > 0.0);
}

#[test]
#[ignore = "needs redis-server: cargo test -p weir --test store -- --ignored"]
fn with_exact_consistency_two_nodes_admit_exactly_the_limit() {
    let redis = Redis::start();
    let server = server();
    let store = format!(
        r#"{{ redis = "{}", prefix = "{}", consistency = "exact", timeout = "500ms" }}"#,
        redis.url(),
        prefix("exact")
    );
    let a = node("exact-a", &server, LIMIT, &store);
    let b = node("exact-b", &server, LIMIT, &store);
    a.wait_store_up(true);
    b.wait_store_up(true);
    align_to_window(WINDOW_MS);
    let (admitted, _) = alternate(&[&a, &b], 100, Duration::ZERO);
    assert_eq!(admitted, 50);
}

/// Waits (at most 5 s) for the keys matching `pattern` to sum to `want`.
fn wait_for_sum(redis: &Redis, pattern: &str, want: i64) {
    let mut total = 0;
    for _ in 0..100 {
        total = sum(redis, pattern);
        if total == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(total, want, "the counts in Redis");
}

#[test]
#[ignore = "needs redis-server: cargo test -p weir --test store -- --ignored"]
fn redis_going_away_loses_no_request_in_local_mode_and_its_counts_sync_when_it_returns() {
    let mut redis = Redis::start();
    let server = server();
    let keys = prefix("local");
    let store = format!(
        r#"{{ redis = "{}", prefix = "{keys}", sync = "100ms", on_error = "local" }}"#,
        redis.url()
    );
    let a = node(
        "local-a",
        &server,
        r#"{ requests = 100000, window = "60s" }"#,
        &store,
    );
    a.wait_store_up(true);
    let mut sent = 0;
    let mut send = |n: usize| {
        for _ in 0..n {
            assert_eq!(a.status(), 200, "a request was lost");
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    send(50);
    let counted = format!("{keys}limit:sliding:*");
    wait_for_sum(&redis, &counted, 50);
    // Redis keeps nothing across this restart: what it holds afterwards is what the
    // node pushed after it came back.
    redis.kill();
    send(100);
    a.wait_store_up(false);
    send(100);
    assert!(a.metric("weir_store_errors_total").unwrap() >= 1.0);
    // One line when Redis went away, however many syncs failed since.
    assert_eq!(
        a.logged("cannot be reached"),
        1,
        "{:?}",
        a.log.lock().unwrap()
    );

    redis.restart();
    a.wait_store_up(true);
    send(50);
    // Everything counted while Redis was away reached it once it was back.
    wait_for_sum(&redis, &counted, sent as i64 - 50);
    assert_eq!(a.logged("reachable; syncing"), 2);
}

#[test]
#[ignore = "needs redis-server: cargo test -p weir --test store -- --ignored"]
fn in_deny_mode_requests_that_need_redis_are_refused_while_it_is_away() {
    let mut redis = Redis::start();
    let server = server();
    let store = format!(
        r#"{{ redis = "{}", prefix = "{}", sync = "100ms", on_error = "deny" }}"#,
        redis.url(),
        prefix("deny")
    );
    let a = node(
        "deny-a",
        &server,
        r#"{ requests = 100000, window = "60s" }"#,
        &store,
    );
    a.wait_store_up(true);
    assert_eq!(a.status(), 200);
    redis.kill();
    a.wait_store_up(false);
    for _ in 0..10 {
        assert_eq!(a.status(), 503);
    }
    redis.restart();
    a.wait_store_up(true);
    assert_eq!(a.status(), 200);
}
