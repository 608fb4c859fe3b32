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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test --workspace --test store -- --ignored"]
async fn a_plugins_kv_is_read_from_and_written_to_redis() {
    let redis = Redis::start();
    let server = MockServer::start("s1").await;
    let prefix = format!("weir-kv-{}:", std::process::id());
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["kv"],
        &[fixture_plugin("kv", "kv", "")],
    ) + &format!(
        "[state]\nstore = {{ redis = \"redis://127.0.0.1:{}/0\", prefix = \"{prefix}\", sync = \"100ms\", timeout = \"500ms\" }}\n",
        redis.port
    );
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
