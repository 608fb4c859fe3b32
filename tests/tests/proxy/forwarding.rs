//! What the proxy does to a request on its way to a server and back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::atomic::Ordering;

use weir_tests::{
    Client, MockServer, TestProxy, body, canned_server, config, empty, get, h2_client, raw,
    read_reply,
};

async fn one_server(extra_frontend: &str) -> (MockServer, TestProxy) {
    let server = MockServer::start("s1").await;
    let mut toml = config("roundrobin", &[("s1", server.addr, "")], "");
    toml = toml.replacen(
        "default_backend = \"app\"\n",
        &format!("default_backend = \"app\"\n{extra_frontend}\n"),
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    (server, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sequential_requests_reuse_server_connections() {
    let (server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..1000 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(server.requests(), 1000);
    assert!(
        server.connections() <= 2,
        "{} server connections for 1000 requests",
        server.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_and_without_bodies_share_server_connections() {
    let (server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..30 {
        let reply = if i % 3 == 0 {
            client
                .send(
                    Request::post("/up")
                        .header("host", "a")
                        .body(body("x".repeat(i)))
                        .unwrap(),
                )
                .await
        } else {
            client.get("/").await
        };
        assert_eq!(reply.status, 200);
        if i % 3 == 0 {
            assert_eq!(reply.json()["body_len"], i, "{}", reply.text());
        }
    }
    assert_eq!(server.requests(), 30);
    assert_eq!(
        server.connections(),
        1,
        "one server connection serves both kinds"
    );
}

/// A proxy in front of one canned server.
async fn canned(reply: &'static [u8], close: bool) -> (TestProxy, SocketAddr, Counters) {
    let (addr, connections, requests) = canned_server(reply, close).await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", addr, "")], "")).await;
    (proxy, addr, Counters(connections, requests))
}

struct Counters(
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
);

impl Counters {
    fn connections(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn requests(&self) -> usize {
        self.1.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_arrive_whole_and_keep_their_connection() {
    let (proxy, _, server) = canned(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        false,
    )
    .await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..3 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello world");
    }
    assert_eq!(server.requests(), 3);
    assert_eq!(server.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_a_length_is_read_to_the_close_and_its_connection_not_kept() {
    let (proxy, _, server) = canned(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..2 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "until the end");
    }
    assert_eq!(server.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_before_the_final_one_are_skipped() {
    let (proxy, _, _server) = canned(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    )
    .await;
    let reply = get(proxy.addr(), "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert!(reply.headers.get("link").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_from_a_server_are_a_502() {
    let (proxy, _, _server) = canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        false,
    )
    .await;
    assert_eq!(get(proxy.addr(), "/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_response_has_no_body_whatever_its_length_says() {
    let (proxy, _, server) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", false).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..2 {
        let reply = client
            .send(
                Request::head("/")
                    .header("host", "a")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-length"], "100");
        assert!(reply.body.is_empty());
    }
    assert_eq!(
        server.connections(),
        1,
        "the connection is kept after a HEAD"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_not_sent_the_next_request() {
    // Keep-alive by the response's word, but the server closes after each response.
    let (proxy, _, server) = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true).await;
    let mut client = Client::connect(proxy.addr()).await;
    for i in 0..5 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200, "request {i}");
        assert_eq!(reply.text(), "ok");
        // Time for the server's close to arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_shared_across_client_connections() {
    let (server, proxy) = one_server("").await;
    for _ in 0..200 {
        assert_eq!(get(proxy.addr(), "/").await.status, 200);
    }
    assert!(
        server.connections() <= 2,
        "{} server connections for 200 clients",
        server.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_headers_are_set() {
    let (_server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    let req = Request::get("/x")
        .header("host", "shop.example:8080")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    let seen = client.send(req).await.json();
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "a client must not choose the proto"
    );
    assert_eq!(h["x-forwarded-host"], "shop.example:8080");
    assert_eq!(h["host"], "shop.example:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwardfor_false_adds_no_x_forwarded_headers() {
    let (_server, proxy) = one_server("forwardfor = false").await;
    let seen = get(proxy.addr(), "/").await.json();
    let h = seen["headers"].as_object().unwrap();
    assert!(
        !h.contains_key("x-forwarded-for") && !h.contains_key("x-forwarded-proto"),
        "{h:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (_server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    let req = Request::get("/")
        .header("host", "a")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "deflate")
        .header("trailer", "x-checksum")
        .header("upgrade", "h2c")
        .header("x-end-to-end", "1")
        .body(empty())
        .unwrap();
    let seen = client.send(req).await.json();
    let h = seen["headers"].as_object().unwrap();
    for name in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!h.contains_key(name), "{name} reached the server: {h:?}");
    }
    assert_eq!(h["x-end-to-end"], "1");

    let reply = client.get("/hop-response").await;
    for name in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client: {:?}",
            reply.headers
        );
    }
    assert_eq!(reply.headers["x-kept"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_takes_host_from_the_target() {
    let (_server, proxy) = one_server("").await;
    let (response, _) = raw(
        proxy.addr(),
        b"GET http://b.example/path?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["headers"]["host"], "b.example");
    assert_eq!(json["path"], "/path");
    assert_eq!(json["query"], "q=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_reaches_an_http1_server() {
    let (server, proxy) = one_server("").await;
    let sender = h2_client(proxy.addr()).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        let addr = proxy.addr();
        tasks.push(tokio::spawn(async move {
            let req = Request::post(format!("http://{addr}/h2/{i}"))
                .body(body(vec![b'x'; 1000]))
                .unwrap();
            let reply = read_reply(sender.send_request(req).await.unwrap())
                .await
                .unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.headers["x-server"], "s1");
            let json = reply.json();
            assert_eq!(json["path"], format!("/h2/{i}"));
            assert_eq!(json["method"], "POST");
            assert_eq!(json["body_len"], 1000);
            assert_eq!(json["headers"]["host"], addr.to_string());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.requests(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bodies_are_streamed_not_buffered() {
    let (server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    let req = Request::get("/gate")
        .header("host", "a")
        .body(empty())
        .unwrap();
    let response = client.sender_mut().send_request(req).await.unwrap();
    let mut body = response.into_body();
    // The first chunk arrives while the server still holds back the rest.
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk streamed");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        Bytes::from_static(b"first;")
    );
    server.gate.release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"rest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_streamed_not_buffered() {
    let (server, proxy) = one_server("").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    let req = Request::post("/upload-gate")
        .header("host", "a")
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    let mut client = Client::connect(proxy.addr()).await;
    let reply = tokio::spawn(async move { client.send(req).await });
    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
        .await
        .unwrap();
    // The server sees the first chunk before the client has sent the rest.
    tokio::time::timeout(Duration::from_secs(5), server.gate.reached.notified())
        .await
        .expect("first chunk streamed");
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; 500]))))
        .await
        .unwrap();
    drop(tx);
    let reply = reply.await.unwrap();
    assert_eq!(reply.json()["body_len"], 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_arrive_whole_with_either_framing() {
    let (_server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    let big = vec![7u8; 1 << 20];
    let req = Request::post("/up")
        .header("host", "a")
        .body(body(big.clone()))
        .unwrap();
    assert_eq!(client.send(req).await.json()["body_len"], 1 << 20);
    let stream = futures_util::stream::iter(
        big.chunks(64 * 1024)
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::copy_from_slice(c))))
            .collect::<Vec<_>>(),
    );
    let req = Request::post("/up")
        .header("host", "a")
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    assert_eq!(client.send(req).await.json()["body_len"], 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_an_access_log_line() {
    let (_server, proxy) = one_server("").await;
    let mut client = Client::connect(proxy.addr()).await;
    client.get("/logged?x=1").await;
    let lines = proxy.log.wait_for(1).await;
    let line = &lines[0];
    let client_addr: SocketAddr = client.local_addr;
    assert!(line.starts_with(&format!("{client_addr} [")), "{line}");
    assert!(line.contains("] www app/s1 "), "{line}");
    assert!(line.contains(" 200 "), "{line}");
    assert!(
        line.ends_with(" -- 1/1/0/0/0 0/0 \"GET /logged?x=1 HTTP/1.1\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_request() {
    let (_server, proxy) = one_server("log_format = \"json\"").await;
    get(proxy.addr(), "/j").await;
    let lines = proxy.log.wait_for(1).await;
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["frontend"], "www");
    assert_eq!(v["backend"], "app");
    assert_eq!(v["server"], "s1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["uri"], "/j");
    assert_eq!(v["termination"], "--");
    assert!(v["bytes"].as_u64().unwrap() > 0);
    // HAProxy's counts under its names: the one client connection, no other request.
    for (name, value) in [
        ("actconn", 1),
        ("feconn", 1),
        ("beconn", 0),
        ("srv_conn", 0),
        ("retries", 0),
        ("srv_queue", 0),
        ("backend_queue", 0),
    ] {
        assert_eq!(v[name], value, "{name} in {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bind_address_of_a_frontend_serves() {
    let server = MockServer::start("s1").await;
    let toml = config("roundrobin", &[("s1", server.addr, "")], "").replace(
        "bind = \"127.0.0.1:0\"",
        "bind = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
    );
    let proxy = TestProxy::start(&toml).await;
    let addrs = proxy.running.addrs("www").to_vec();
    assert_eq!(addrs.len(), 2);
    for addr in addrs {
        assert_eq!(get(addr, "/").await.status, 200, "{addr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_close_after_pool_idle_timeout() {
    let server = MockServer::start("s1").await;
    let toml = config(
        "roundrobin",
        &[("s1", server.addr, "")],
        "pool_idle_timeout = \"200ms\"",
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    client.get("/").await;
    client.get("/").await;
    assert_eq!(server.connections(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    client.get("/").await;
    assert_eq!(
        server.connections(),
        2,
        "an expired idle connection must not be reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_max_idle_zero_opens_a_connection_per_request() {
    let server = MockServer::start("s1").await;
    let toml = config(
        "roundrobin",
        &[("s1", server.addr, "")],
        "pool_max_idle = 0",
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..5 {
        client.get("/").await;
    }
    assert_eq!(server.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_are_served_and_closed() {
    let (server, proxy) = one_server("").await;
    let (response, closed) = raw(proxy.addr(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        closed,
        "HTTP/1.0 without keep-alive closes after the response"
    );
    assert!(response.contains("\"path\":\"/old\""), "{response}");
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_log_format_splits_keep_alive_idle_time_from_the_request_time() {
    let (_server, proxy) =
        one_server("log_format = \"%ci %ft %b/%s Ti=%Ti TR=%TR Tq=%Tq %ST %{+Q}r\"").await;
    let mut client = Client::connect(proxy.addr()).await;
    client.get("/first").await;
    // Idle on the kept-alive connection, then the second request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.get("/second").await;
    let lines = proxy.log.wait_for(2).await;
    let field = |line: &str, name: &str| -> u64 {
        line.split(' ')
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let second = &lines[1];
    assert!(second.starts_with("127.0.0.1 www app/s1 Ti="), "{second}");
    assert!(
        second.ends_with(" 200 \"GET /second HTTP/1.1\""),
        "{second}"
    );
    let (ti, tr, tq) = (
        field(second, "Ti="),
        field(second, "TR="),
        field(second, "Tq="),
    );
    // Each is rounded down to the millisecond on its own.
    assert!(
        ti >= 250 && tr < 100 && (ti + tr..=ti + tr + 1).contains(&tq),
        "{second}"
    );

    let e = weir::Config::from_toml(
        &config(
            "roundrobin",
            &[("s1", "127.0.0.1:1".parse().unwrap(), "")],
            "",
        )
        .replacen(
            "default_backend = \"app\"\n",
            "default_backend = \"app\"\nlog_format = \"%ci %hr\"\n",
            1,
        ),
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("frontend[0].log_format") && e.contains("%hr"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_counts_connections_and_queue_places_as_haproxy_does() {
    // One slot on the only server: the second and third requests queue behind the first.
    let server = MockServer::start("s1").await;
    let toml = config("roundrobin", &[("s1", server.addr, "maxconn = 1")], "").replacen(
        "default_backend = \"app\"\n",
        "default_backend = \"app\"\nlog_format = \"%HU %ac/%fc/%bc/%sc/%rc %sq/%bq\"\n",
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    let mut tasks = Vec::new();
    for (path, queued_before) in [("/sleep/400", 0), ("/b", 1), ("/c", 2)] {
        let addr = proxy.addr();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            client.get(path).await.status.as_u16()
        }));
        // Each in turn: the first on the server, the others in the queue.
        let backend = proxy.running.backend("app").unwrap();
        weir_tests::wait_until(Duration::from_secs(5), || {
            server.requests() == 1 && backend.queue_len().0 == queued_before
        })
        .await
        .unwrap_or_else(|| panic!("{path} in its place"));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let lines = proxy.log.wait_for(3).await;
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{path} ")))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
            .clone()
    };
    // When the first answered, three clients were connected and two other requests were
    // on the backend (queued), none on the server: HAProxy's counts leave the request
    // itself out.
    assert_eq!(line("/sleep/400"), "/sleep/400 3/3/2/0/0 0/0");
    // The second had one behind it, the third had one ahead of it in the queue.
    assert!(line("/b").ends_with("/1/0/0 0/0"), "{lines:?}");
    assert!(line("/c").ends_with("/0/0/0 0/1"), "{lines:?}");
}
