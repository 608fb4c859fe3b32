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
