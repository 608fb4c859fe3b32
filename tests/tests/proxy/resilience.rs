//! Retries, redispatch and the queue, with servers that die, refuse and fail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use weir_tests::{Client, Fault, MockServer, TestProxy, body, config, faulty_server, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_flapping_twenty_times_in_ten_seconds_costs_no_request() {
    let s1 = MockServer::start("s1").await;
    let s2 = Arc::new(MockServer::start("s2").await);
    // What an operator sets up for a server that may die at any moment: retry idempotent
    // requests whatever way the attempt failed, and check health often.
    let extra = r#"retry_on = ["conn-failure", "empty-response", "response-timeout"]
retries = 3
timeout = { server = "2s" }
health = { path = "/health", interval = "50ms", timeout = "40ms", fall = 1, rise = 2 }"#;
    let list = [("s1", s1.addr, ""), ("s2", s2.addr, "")];
    let proxy = TestProxy::start(&config("roundrobin", &list, extra)).await;
    let addr = proxy.addr();

    let flapper = {
        let s2 = Arc::clone(&s2);
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                s2.kill();
                tokio::time::sleep(Duration::from_millis(250)).await;
                s2.restart().await;
            }
        })
    };
    // Four keep-alive clients send GETs back to back for the whole ten seconds.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let flapping = flapper.abort_handle();
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let (mut done, mut failed) = (0, Vec::new());
                while !flapping.is_finished() {
                    let reply = client.get("/").await;
                    if reply.status != 200 {
                        failed.push(reply.status);
                    }
                    done += 1;
                }
                (done, failed)
            })
        })
        .collect();
    flapper.await.unwrap();
    let (mut done, mut failed) = (0, Vec::new());
    for c in clients {
        let (d, f) = c.await.unwrap();
        done += d;
        failed.extend(f);
    }
    eprintln!(
        "{done} requests, {} failed, while s2 flapped 20 times",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {done} requests failed: {failed:?}",
        failed.len()
    );
    assert!(done > 2000, "only {done} requests");
    assert!(s2.requests() > 0, "s2 served between its deaths");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maxconn_is_never_exceeded_and_the_queue_serves_everyone_in_time() {
    let s1 = MockServer::start("s1").await;
    let toml = config(
        "roundrobin",
        &[("s1", s1.addr, "maxconn = 2")],
        "timeout = { queue = \"5s\" }",
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.addr();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/sleep/100").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(s1.stats.max_concurrent.load(Ordering::SeqCst), 2);
    let (now, max) = proxy.running.backend("app").unwrap().queue_len();
    assert_eq!(now, 0);
    assert!(max >= 7, "most requests waited in the queue: max {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_timeout_is_a_503() {
    let s1 = MockServer::start("s1").await;
    let toml = config(
        "roundrobin",
        &[("s1", s1.addr, "maxconn = 2")],
        "timeout = { queue = \"300ms\" }",
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.addr();
    let started = Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move { (get(addr, "/sleep/1000").await.status, Instant::now()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, at) = t.await.unwrap();
        if status == 503 {
            let waited = at.duration_since(started);
            assert!(
                waited >= Duration::from_millis(300) && waited < Duration::from_millis(900),
                "503 after {waited:?}"
            );
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503, 503]);
    assert_eq!(s1.stats.max_concurrent.load(Ordering::SeqCst), 2);
    let lines = proxy.log.wait_for(5).await;
    assert_eq!(
        lines.iter().filter(|l| l.contains(" sQ ")).count(),
        3,
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_at_once() {
    let s1 = MockServer::start("s1").await;
    let toml = config(
        "roundrobin",
        &[("s1", s1.addr, "maxconn = 1")],
        "maxqueue = 1\ntimeout = { queue = \"5s\" }",
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.addr();
    let busy = tokio::spawn(async move { get(addr, "/sleep/600").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = tokio::spawn(async move { get(addr, "/").await.status });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    assert_eq!(get(addr, "/").await.status, 503);
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(
        queued.await.unwrap(),
        200,
        "the queued request is served once the slot frees"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_503_resends_safe_requests_elsewhere_but_never_a_body() {
    let failing = MockServer::start("failing").await;
    let good = MockServer::start("good").await;
    failing.fail_with(503);
    let list = [("failing", failing.addr, ""), ("good", good.addr, "")];
    let proxy = TestProxy::start(&config("roundrobin", &list, "retry_on = [\"503\"]")).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..10 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.server(), "good");
    }
    assert_eq!(
        failing.requests(),
        5,
        "half the GETs went to the failing server first"
    );

    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = Request::post("/order")
            .header("host", "a")
            .body(body("item=1"))
            .unwrap();
        statuses.push(client.send(req).await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        5,
        "a POST is never sent twice: {statuses:?}"
    );
    assert_eq!(failing.requests(), 10);
    assert_eq!(good.requests(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_response_is_retried_only_for_idempotent_requests() {
    let (closing, seen) = faulty_server(Fault::Close).await;
    let good = MockServer::start("good").await;
    let list: [(&str, SocketAddr, &str); 2] = [("closing", closing, ""), ("good", good.addr, "")];
    let proxy = TestProxy::start(&config(
        "roundrobin",
        &list,
        "retry_on = [\"conn-failure\", \"empty-response\"]",
    ))
    .await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..6 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let before = seen.load(Ordering::SeqCst);
    assert_eq!(before, 3);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let mut c = Client::connect(proxy.addr()).await;
        let req = Request::post("/pay")
            .header("host", "a")
            .body(body("amount=5"))
            .unwrap();
        statuses.push(c.send(req).await.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before + 3,
        "each failed POST reached a server exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redispatch_retries_stay_on_the_same_server() {
    let (refusing, good) = (
        weir_tests::closed_port().await,
        MockServer::start("good").await,
    );
    let list = [("refusing", refusing, ""), ("good", good.addr, "")];
    let toml = config("roundrobin", &list, "redispatch = false\nretries = 2");
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(client.get("/").await.status.as_u16());
        }
        v
    };
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        2,
        "{statuses:?}"
    );
    let lines = proxy.log.wait_for(4).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("app/refusing") && l.contains(" SC 1/1/0/0/2 0/0 ")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_first_come_first_served() {
    let s1 = MockServer::start("s1").await;
    let toml = config(
        "roundrobin",
        &[("s1", s1.addr, "maxconn = 1")],
        "timeout = { queue = \"10s\" }",
    );
    let proxy = TestProxy::start(&toml).await;
    let addr = proxy.addr();
    let first = tokio::spawn(async move { get(addr, "/sleep/300").await.status });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut waiting = Vec::new();
    for i in 0..6 {
        waiting.push(tokio::spawn(async move {
            get(addr, &format!("/sleep/{}", 10 + i)).await.status
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.await.unwrap(), 200);
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    let arrivals = s1.stats.arrivals.lock().unwrap().clone();
    let expected: Vec<String> = std::iter::once("/sleep/300".to_string())
        .chain((0..6).map(|i| format!("/sleep/{}", 10 + i)))
        .collect();
    assert_eq!(arrivals, expected);
}
