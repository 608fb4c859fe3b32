//! Every balancing algorithm through the real proxy.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http::Request;
use weir_tests::{Client, MockServer, TestProxy, config, empty};

const N: usize = 10_000;
const WEIGHTS: [u32; 3] = [1, 2, 3];

async fn three_servers() -> Vec<MockServer> {
    vec![
        MockServer::start("s1").await,
        MockServer::start("s2").await,
        MockServer::start("s3").await,
    ]
}

async fn weighted_proxy(balance: &str, servers: &[MockServer]) -> TestProxy {
    let weights: Vec<String> = WEIGHTS.iter().map(|w| format!("weight = {w}")).collect();
    let list: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .zip(&weights)
        .map(|(s, w)| (s.name.as_str(), s.addr, w.as_str()))
        .collect();
    TestProxy::start(&config(balance, &list, "")).await
}

/// Sends `N` requests over `parallel` keep-alive connections; `make` builds request i.
async fn spread(
    addr: SocketAddr,
    parallel: usize,
    make: impl Fn(usize) -> Request<weir_tests::Body> + Send + Sync + 'static,
) -> HashMap<String, usize> {
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for p in 0..parallel {
        let make = Arc::clone(&make);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut counts = HashMap::new();
            for i in (p..N).step_by(parallel) {
                let reply = client.send(make(i)).await;
                *counts.entry(reply.server()).or_insert(0) += 1;
            }
            counts
        }));
    }
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

fn assert_weighted(counts: &HashMap<String, usize>) {
    let sum: u32 = WEIGHTS.iter().sum();
    for (i, w) in WEIGHTS.iter().enumerate() {
        let name = format!("s{}", i + 1);
        let share = *counts.get(&name).unwrap_or(&0) as f64 / N as f64;
        let expected = f64::from(*w) / f64::from(sum);
        assert!(
            (share - expected).abs() < 0.02,
            "{name}: share {share:.4}, expected {expected:.4}; {counts:?}"
        );
    }
}

fn get(path: String) -> Request<weir_tests::Body> {
    Request::get(path)
        .header("host", "test.local")
        .body(empty())
        .unwrap()
}

async fn check_weights(
    balance: &str,
    parallel: usize,
    make: impl Fn(usize) -> Request<weir_tests::Body> + Send + Sync + 'static,
) {
    let servers = three_servers().await;
    let proxy = weighted_proxy(balance, &servers).await;
    let counts = spread(proxy.addr(), parallel, make).await;
    assert_weighted(&counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundrobin_follows_weights() {
    check_weights("roundrobin", 4, |_| get("/".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_rr_follows_weights() {
    check_weights("static-rr", 4, |_| get("/".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastconn_follows_weights_when_load_is_even() {
    check_weights("leastconn", 1, |_| get("/".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_weights_when_load_is_even() {
    check_weights("random", 1, |_| get("/".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_hash_follows_weights() {
    check_weights("uri", 4, |i| get(format!("/item/{i}"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hdr_hash_follows_weights() {
    check_weights("hdr:x-user", 4, |i| {
        Request::get("/")
            .header("host", "t")
            .header("x-user", format!("user-{i}"))
            .body(empty())
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_param_hash_follows_weights() {
    check_weights("url_param:user", 4, |i| {
        get(format!("/cart?lang=en&user={i}"))
    })
    .await;
}

fn loopback(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// One new connection per request, each from a different 127.x address.
async fn by_source(addr: SocketAddr, n: usize, parallel: usize) -> HashMap<usize, String> {
    let mut tasks = Vec::new();
    for p in 0..parallel {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in (p..n).step_by(parallel) {
                let mut client = Client::connect_from(addr, loopback(i)).await;
                seen.push((i, client.get("/").await.server()));
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_follows_weights() {
    let servers = three_servers().await;
    let proxy = weighted_proxy("source", &servers).await;
    let seen = by_source(proxy.addr(), N, 8).await;
    let mut counts = HashMap::new();
    for server in seen.values() {
        *counts.entry(server.clone()).or_insert(0) += 1;
    }
    assert_weighted(&counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_pins_a_client_to_one_server() {
    let servers = three_servers().await;
    let proxy = weighted_proxy("source", &servers).await;
    for i in 0..20 {
        let first = Client::connect_from(proxy.addr(), loopback(i))
            .await
            .get("/")
            .await
            .server();
        for _ in 0..3 {
            assert_eq!(
                Client::connect_from(proxy.addr(), loopback(i))
                    .await
                    .get("/")
                    .await
                    .server(),
                first
            );
        }
    }
}

/// Four servers, then the same config without s3: keys move only off s3.
async fn consistency(
    balance: &str,
    keys: usize,
    route: impl AsyncFn(SocketAddr) -> HashMap<usize, String>,
) {
    let servers = [
        MockServer::start("s1").await,
        MockServer::start("s2").await,
        MockServer::start("s3").await,
        MockServer::start("s4").await,
    ];
    let all: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.addr, ""))
        .collect();
    let without_s3: Vec<(&str, SocketAddr, &str)> =
        all.iter().copied().filter(|s| s.0 != "s3").collect();
    let before = route(TestProxy::start(&config(balance, &all, "")).await.addr()).await;
    let after = route(
        TestProxy::start(&config(balance, &without_s3, ""))
            .await
            .addr(),
    )
    .await;
    let mut moved = 0;
    for k in 0..keys {
        if before[&k] != after[&k] {
            assert_eq!(
                before[&k], "s3",
                "key {k} moved from {} though that server stayed",
                before[&k]
            );
            moved += 1;
        }
    }
    let limit = 1.5 * keys as f64 / 4.0;
    assert!(
        (moved as f64) <= limit,
        "{moved} of {keys} keys moved, more than 1.5/N"
    );
    assert!(moved > 0, "the removed server held no keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_hash_is_consistent_when_a_server_is_removed() {
    consistency("uri", 4000, async |addr| {
        let mut client = Client::connect(addr).await;
        let mut seen = HashMap::new();
        for k in 0..4000 {
            seen.insert(k, client.send(get(format!("/obj/{k}"))).await.server());
        }
        seen
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_hash_is_consistent_when_a_server_is_removed() {
    consistency("source", 2000, async |addr| by_source(addr, 2000, 8).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leastconn_avoids_a_busy_server() {
    let servers = [MockServer::start("s1").await, MockServer::start("s2").await];
    let list: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.addr, ""))
        .collect();
    let proxy = TestProxy::start(&config("leastconn", &list, "")).await;
    let addr = proxy.addr();
    // Occupy one server with a slow request.
    let slow = tokio::spawn(async move {
        Client::connect(addr)
            .await
            .get("/sleep/1500")
            .await
            .server()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let busy = if servers[0]
        .stats
        .concurrent
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1
    {
        "s1"
    } else {
        "s2"
    };
    let mut client = Client::connect(addr).await;
    for _ in 0..10 {
        assert_ne!(client.get("/").await.server(), busy);
    }
    assert_eq!(slow.await.unwrap(), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_fills_servers_in_order() {
    let servers = [MockServer::start("s1").await, MockServer::start("s2").await];
    let list = vec![
        ("s1", servers[0].addr, "maxconn = 1"),
        ("s2", servers[1].addr, "maxconn = 1"),
    ];
    let proxy = TestProxy::start(&config("first", &list, "")).await;
    let addr = proxy.addr();
    let mut client = Client::connect(addr).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.server(), "s1");
    }
    // While s1 holds its one connection, the next request spills over to s2.
    let slow =
        tokio::spawn(async move { Client::connect(addr).await.get("/sleep/800").await.server() });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(client.get("/").await.server(), "s2");
    assert_eq!(slow.await.unwrap(), "s1");
    assert_eq!(client.get("/").await.server(), "s1");
}
