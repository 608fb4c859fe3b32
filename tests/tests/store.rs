//! Plugins' kv through the real proxy with Redis as the shared store: what a plugin sets
//! is in Redis for the other nodes, and what another node wrote there is what the plugin
//! reads. (The counters' sharing between weir processes is in host/tests/store.rs.)
//!
//! Needs Debian's redis-server, so ignored by a plain `cargo test`; run with
//! `cargo test --workspace --test store -- --ignored` (CI does).

use std::time::Duration;

use weir_tests::*;

#[path = "../../host/tests/common/mod.rs"]
mod common;

use common::Redis;

/// One test at a time: the store in use is the process's, swapped by each proxy's start.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `[state]` section that puts this Redis in use, its keys under `prefix`.
fn redis_state(redis: &Redis, prefix: &str) -> String {
    format!(
        "[state]\nstore = {{ redis = \"redis://127.0.0.1:{}/0\", prefix = \"{prefix}\", sync = \"100ms\", timeout = \"500ms\" }}\n",
        redis.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test --workspace --test store -- --ignored"]
async fn a_plugins_kv_is_read_from_and_written_to_redis() {
    let _turn = TURN.lock().await;
    let redis = Redis::start();
    let server = MockServer::start("s1").await;
    let prefix = format!("weir-kv-{}:", std::process::id());
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["kv"],
        &[fixture_plugin("kv", "kv", "")],
    ) + &redis_state(&redis, &prefix);
    let proxy = TestProxy::start(&toml).await;
    // Its kv calls wait for Redis: they run on fibers, never on the caller's stack.
    assert!(!proxy.running.plugins()[0].calls_on_stack());
    let mut client = Client::connect(proxy.addr()).await;
    let key = format!("{prefix}kv:kv:k");

    let set = client
        .send(
            http::Request::get("/")
                .header("host", "test.local")
                .header("x-set", "from-a")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(set.text(), "from-a");
    assert_eq!(redis.command(&["GET", &key]).unwrap(), "from-a");
    let ttl: i64 = redis.command(&["PTTL", &key]).unwrap().parse().unwrap();
    assert!((1..=60_000).contains(&ttl), "ttl {ttl}");

    // Another node writes; this one reads it once its cached read (100 ms) is over.
    redis.command(&["SET", &key, "from-b"]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(client.get("/").await.text(), "from-b");
    redis.command(&["DEL", &key]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(client.get("/").await.text(), "(none)");
}

/// A reload that puts Redis in use while a request is on its way: the generation that
/// took the request runs its plugin's calls on the caller's stack (it was loaded with the
/// memory store), and the plugin's `on-response` reads kv after the swap. That read now
/// waits for Redis: the call stops where it would wait, is made again on a fiber, and
/// answers with what Redis holds; the plugin's calls stay on fibers, and the call is
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test --workspace --test store -- --ignored"]
async fn a_call_on_the_stack_that_comes_to_wait_for_redis_after_a_reload_is_made_again_on_a_fiber()
{
    let _turn = TURN.lock().await;
    let redis = Redis::start();
    let server = MockServer::start("s1").await;
    let prefix = format!("weir-kv-reload-{}:", std::process::id());
    let memory = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["back"],
        &[fixture_plugin("back", "kv-back", "")],
    );
    let shared = memory.clone() + &redis_state(&redis, &prefix);
    let key = format!("{prefix}back:kv:k");
    redis.command(&["SET", &key, "in-redis"]).unwrap();
    let proxy = TestProxy::start(&memory).await;
    let before = proxy.running.plugins()[0].clone();
    assert!(before.calls_on_stack());
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(
        client.get("/").await.headers["x-kv"],
        "(none)",
        "the memory store holds nothing under k"
    );

    let addr = proxy.addr();
    let slow = tokio::spawn(async move { Client::connect(addr).await.get("/sleep/2000").await });
    weir_tests::wait_until(Duration::from_secs(5), || {
        server
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await
    .expect("the slow request reached the server");
    let reload = weir::Config::from_toml(&shared, std::path::Path::new(".")).unwrap();
    proxy.running.reload(&reload).await.expect("reload");
    assert!(
        !slow.is_finished(),
        "the response came back before the reload was done"
    );
    let answer = slow.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["x-kv"], "in-redis",
        "the old generation's call read Redis, on a fiber"
    );
    assert!(
        !before.calls_on_stack(),
        "the call that waited moved the plugin's calls to fibers"
    );
    assert_eq!(
        before
            .stats
            .calls
            .load(std::sync::atomic::Ordering::Relaxed),
        4,
        "two requests, each an on-request and an on-response call, counted once"
    );
    redis.command(&["DEL", &key]).unwrap();
}
