//! Faults around weir: servers that break off a response or reset, and clients that stall,
//! read slowly, vanish or pile up idle connections. weir keeps serving, never passes a
//! broken response off as complete, and releases what a dead exchange held.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::{
    Client, Fault, MockServer, TestProxy, config, empty, faulty_server, get, h2_client, open_fds,
    wait_until,
};

fn with_defaults(toml: String, defaults: &str) -> String {
    format!("[defaults]\n{defaults}\n\n{toml}")
}

/// Requests in flight to the backend's first server.
fn in_flight(proxy: &TestProxy) -> u32 {
    proxy.running.backend("app").unwrap().servers[0]
        .in_flight
        .load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_breaking_off_a_response_is_a_truncation_never_a_short_complete_message() {
    for fault in [Fault::CloseMidBody, Fault::ResetMidBody] {
        let (addr, _) = faulty_server(fault).await;
        let proxy = TestProxy::start(&config("roundrobin", &[("s1", addr, "")], "")).await;
        // HTTP/1.1: the client connection is closed before the body's end.
        let mut client = Client::connect(proxy.addr()).await;
        let result = client
            .try_send(Request::get("/").header("host", "a").body(empty()).unwrap())
            .await;
        assert!(result.is_err(), "{fault:?} over HTTP/1.1: {result:?}");
        // HTTP/2: the stream is reset. Usually the client has the head by then; when
        // the server's break follows its head at once, the reset can overtake the head
        // still queued in weir's HTTP/2 connection (a reset discards the stream's
        // unsent frames), and the client gets the reset alone. Either way the stream
        // never ends as if complete.
        let mut h2 = h2_client(proxy.addr()).await;
        let sent = h2
            .send_request(
                Request::get(format!("http://{}/", proxy.addr()))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        match sent {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await;
                assert!(body.is_err(), "{fault:?} over HTTP/2: {body:?}");
            }
            Err(e) => assert!(
                format!("{e:?}").contains("Reset("),
                "{fault:?} over HTTP/2: a stream reset, not {e:?}"
            ),
        }
        let lines = proxy.log.wait_for(2).await;
        assert!(
            lines.iter().all(|l| l.contains(" SD ")),
            "{fault:?}: the server broke off the data phase: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_resetting_the_connection_is_a_502_and_retried_elsewhere_when_allowed() {
    let (resetting, seen) = faulty_server(Fault::Reset).await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", resetting, "")], "")).await;
    assert_eq!(get(proxy.addr(), "/").await.status, 502);
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    let good = MockServer::start("s2").await;
    let list = [("s1", resetting, ""), ("s2", good.addr, "")];
    let extra = r#"retry_on = ["conn-failure", "empty-response"]"#;
    let proxy = TestProxy::start(&config("roundrobin", &list, extra)).await;
    for _ in 0..6 {
        let reply = get(proxy.addr(), "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.server(), "s2");
    }
}

/// A client that stops sending its body: cut after timeout.client; the server's
/// connection is released, and the service carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_cut_after_timeout_client_and_the_server_side_released() {
    let server = MockServer::start("s1").await;
    let toml = with_defaults(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        r#"timeout = { client = "400ms", server = "10s" }"#,
    );
    let proxy = TestProxy::start(&toml).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /upload-gate HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    eprintln!("a stalled upload was cut after {took:?} with timeout.client = 400ms");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || in_flight(&proxy) == 0)
            .await
            .is_some(),
        "the server side is released"
    );
    assert_eq!(server.completed(), 0, "the cut upload never looks complete");
    assert_eq!(get(proxy.addr(), "/").await.status, 200);
}

/// A client that never reads its response: cut after timeout.client of no progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_timeout_client() {
    let server = MockServer::start("s1").await;
    let toml = with_defaults(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        r#"timeout = { client = "400ms" }"#,
    );
    let proxy = TestProxy::start(&toml).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    // 64 MiB: far more than the socket buffers between weir and this client hold.
    stream
        .write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || in_flight(&proxy) == 0
            && server.requests() == 1)
        .await
        .is_some(),
        "weir gave up on the stalled reader and released the server side"
    );
    // What was buffered drains, then the connection ends short of the 64 MiB.
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the connection was never closed"),
        }
    }
    assert!(got < 64 << 20, "read {got} bytes");
    assert_eq!(get(proxy.addr(), "/").await.status, 200);
}

/// Clients that vanish mid-upload and mid-download: the server connections they held are
/// released and the process's file descriptors come back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_transfer_release_everything_they_held() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    assert_eq!(get(proxy.addr(), "/").await.status, 200);
    let baseline = open_fds();
    for round in 0..20 {
        // Mid-upload: the head and part of the body, then gone.
        let mut up = TcpStream::connect(proxy.addr()).await.unwrap();
        up.write_all(b"POST /upload-gate HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        up.write_all(&[b'x'; 20_000]).await.unwrap();
        server.gate.reached.notified().await;
        drop(up);
        // Mid-download: the first bytes of a big response, then gone.
        let mut down = TcpStream::connect(proxy.addr()).await.unwrap();
        down.write_all(b"GET /bytes/33554432 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let n = down.read(&mut first).await.unwrap();
        assert!(n > 0, "round {round}: the download started");
        drop(down);
    }
    let settled = wait_until(Duration::from_secs(5), || {
        in_flight(&proxy) == 0 && open_fds() <= baseline
    })
    .await;
    eprintln!(
        "after 40 vanished clients: {} fds (baseline {baseline}), settled in {settled:?}",
        open_fds()
    );
    assert!(
        settled.is_some(),
        "in flight {}, fds {} (baseline {baseline})",
        in_flight(&proxy),
        open_fds()
    );
    assert_eq!(server.completed(), 1, "no cut upload looks complete");
    assert_eq!(get(proxy.addr(), "/").await.status, 200);
}

/// 5,000 idle client connections: weir holds them within `maxconn`, never more, and a
/// client that comes with a request is still served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_stay_within_maxconn_and_a_probe_is_served() {
    let server = MockServer::start("s1").await;
    let toml = format!(
        "[global]\nmaxconn = 5050\n\n{}",
        config("roundrobin", &[("s1", server.addr, "")], "")
    );
    let proxy = TestProxy::start(&toml).await;
    let (gauge, limit) = proxy.running.control().connections("www");
    assert_eq!(limit, 5050);
    let mut idle = Vec::with_capacity(5100);
    for _ in 0..5000 {
        idle.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(10), || gauge
            .open
            .load(Ordering::SeqCst)
            == 5000)
        .await
        .is_some(),
        "weir holds all 5,000: {}",
        gauge.open.load(Ordering::SeqCst)
    );
    let started = Instant::now();
    let reply = get(proxy.addr(), "/").await;
    assert_eq!(reply.status, 200);
    let probe = started.elapsed();
    eprintln!("with 5,000 idle connections a request took {probe:?}");
    assert!(probe < Duration::from_secs(1), "the probe took {probe:?}");
    // Past maxconn, connections wait in the backlog rather than being taken on.
    for _ in 0..100 {
        idle.push(TcpStream::connect(proxy.addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gauge.open.load(Ordering::SeqCst), 5050);
    assert_eq!(
        gauge.max.load(Ordering::SeqCst),
        5050,
        "never above maxconn"
    );
    drop(idle);
    assert!(
        wait_until(Duration::from_secs(10), || gauge
            .open
            .load(Ordering::SeqCst)
            == 0)
        .await
        .is_some()
    );
}
