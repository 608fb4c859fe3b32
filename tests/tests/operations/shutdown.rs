//! Stopping the proxy: no new connections, requests in flight finish.

use std::time::Duration;

use weir_tests::{Client, MockServer, TestProxy, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_flight_finish_and_refuses_new_connections() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let addr = proxy.addr();
    let in_flight =
        tokio::spawn(async move { Client::connect(addr).await.get("/sleep/600").await });
    let mut idle = Client::connect(addr).await;
    assert_eq!(idle.get("/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let left = proxy.running.shutdown(Duration::from_secs(5)).await;
    assert_eq!(left, 0, "every connection closed within the grace period");
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the request in flight completed");
    assert!(idle.is_closed(), "an idle keep-alive connection is closed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_the_grace_period() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let addr = proxy.addr();
    let _hung = tokio::spawn(async move { Client::connect(addr).await.get("/hang").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let left = proxy.running.shutdown(Duration::from_millis(300)).await;
    assert_eq!(left, 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_from_the_start_of_a_graceful_shutdown_to_its_end() {
    let server = MockServer::start("s1").await;
    let toml = config("roundrobin", &[("s1", server.addr, "")], "")
        + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let proxy = TestProxy::start(&toml).await;
    let (addr, admin) = (proxy.addr(), proxy.running.admin_addr().unwrap());
    let healthz = || async move { Client::connect(admin).await.get("/healthz").await };
    assert_eq!(healthz().await.status, 200);
    let in_flight =
        tokio::spawn(async move { Client::connect(addr).await.get("/sleep/1500").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(proxy.running.shutdown(Duration::from_secs(5)));
    // While the request in flight keeps the drain going, the node says it is going.
    let mut said = None;
    for _ in 0..50 {
        let r = healthz().await;
        if r.status == 503 {
            said = Some(r.json()["reasons"][0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(said, Some("shutting down".into()));
    assert!(!in_flight.is_finished(), "the drain is still going");
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert_eq!(stopping.await.unwrap(), 0);
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is gone once the drain is over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_grace_a_stop_goes_on_accepting_while_healthz_says_503() {
    let server = MockServer::start("s1").await;
    let toml = format!(
        "[global]\ngrace = \"2s\"\n\n{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config("roundrobin", &[("s1", server.addr, "")], "")
    );
    let proxy = TestProxy::start(&toml).await;
    let (addr, admin) = (proxy.addr(), proxy.running.admin_addr().unwrap());
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(proxy.running.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        Client::connect(admin).await.get("/healthz").await.status,
        503
    );
    let reply = Client::connect(addr).await.get("/").await;
    assert_eq!(reply.status, 200, "a new connection is still served");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(stopping.await.unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_secs(2), "it lingered");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "then it stopped accepting"
    );
}
