//! How weir speaks to servers: TLS (verified against a CA file, or not at all), SNI,
//! HTTP/2 in the clear or by ALPN, gRPC-style trailers both ways, and health checks that
//! speak what the server speaks.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use weir_tests::tls::{Listen, TestCa, echo_server};
use weir_tests::{Client, TestProxy, config};

async fn through(server: std::net::SocketAddr, keys: &str) -> TestProxy {
    TestProxy::start(&config("roundrobin", &[("s1", server, keys)], "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_server_is_verified_against_the_ca_file() {
    let ca = TestCa::new("up");
    let (cert, key) = ca.issue("backend", &["backend.test"]);
    let server = echo_server(Listen::Tls(cert, key)).await;
    let ca_file = ca.ca_file();
    let other = TestCa::new("up-other");
    let wrong_ca = other.ca_file();

    let ok = through(
        server,
        &format!(
            "tls = true, ca = \"{}\", sni = \"backend.test\"",
            ca_file.display()
        ),
    )
    .await;
    let reply = Client::connect(ok.addr()).await.get("/secure").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.json();
    assert_eq!(seen["path"], "/secure");
    assert_eq!(seen["version"], "HTTP/1.1");

    // A CA that did not sign the server's certificate, or a name it does not carry: no
    // connection, so 503.
    for keys in [
        format!(
            "tls = true, ca = \"{}\", sni = \"backend.test\"",
            wrong_ca.display()
        ),
        format!(
            "tls = true, ca = \"{}\", sni = \"other.test\"",
            ca_file.display()
        ),
        // No sni: the address is an IP, which the certificate does not name.
        format!("tls = true, ca = \"{}\"", ca_file.display()),
    ] {
        let refused = through(server, &keys).await;
        let reply = Client::connect(refused.addr()).await.get("/").await;
        assert_eq!(reply.status, 503, "{keys}");
        let lines = refused.log.wait_for(1).await;
        assert!(lines[0].contains(" SC "), "{}", lines[0]);
    }

    // verify = false takes any certificate.
    let unverified = through(
        server,
        &format!(
            "tls = true, verify = false, ca = \"{}\"",
            wrong_ca.display()
        ),
    )
    .await;
    assert_eq!(
        Client::connect(unverified.addr())
            .await
            .get("/")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_a_server_in_the_clear_and_over_tls() {
    let h2c = echo_server(Listen::H2c).await;
    let proxy = through(h2c, "proto = \"h2\"").await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..3 {
        let seen = client.get("/two").await.json();
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["path"], "/two");
        assert_eq!(seen["authority"], "test.local");
    }

    let ca = TestCa::new("up-h2");
    let (cert, key) = ca.issue("backend", &["backend.test"]);
    let tls = echo_server(Listen::Tls(cert, key)).await;
    let proxy = through(
        tls,
        &format!(
            "tls = true, proto = \"h2\", ca = \"{}\", sni = \"backend.test\"",
            ca.ca_file().display()
        ),
    )
    .await;
    let seen = Client::connect(proxy.addr())
        .await
        .get("/alpn")
        .await
        .json();
    assert_eq!(seen["version"], "HTTP/2.0", "ALPN chose h2");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_calls_keep_their_trailers_both_ways() {
    let server = echo_server(Listen::H2c).await;
    let proxy = through(server, "proto = \"h2\"").await;
    let mut sender = weir_tests::h2_client(proxy.addr()).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-trailer", http::HeaderValue::from_static("sent-last"));
    let frames = vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
            b"\0\0\0\0\x05hello",
        ))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
    let request = http::Request::post("http://grpc.test/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        trailers["x-echo"], "sent-last",
        "the request trailer reached the server"
    );
    let seen: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
    assert_eq!(seen["version"], "HTTP/2.0");
    assert_eq!(seen["headers"]["te"], "trailers");
    assert_eq!(seen["body"], "\0\0\0\0\u{5}hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_and_http2_as_the_server_does() {
    let ca = TestCa::new("up-check");
    let (cert, key) = ca.issue("backend", &["backend.test"]);
    let tls = echo_server(Listen::Tls(cert, key)).await;
    let h2c = echo_server(Listen::H2c).await;
    let toml = config(
        "roundrobin",
        &[
            (
                "secure",
                tls,
                &format!(
                    "tls = true, ca = \"{}\", sni = \"backend.test\"",
                    ca.ca_file().display()
                ),
            ),
            ("two", h2c, "proto = \"h2\""),
        ],
        "health = { path = \"/health\", interval = \"50ms\" }",
    );
    let proxy = TestProxy::start(&toml).await;
    let b = proxy.running.backend("app").unwrap();
    weir_tests::wait_until(Duration::from_secs(3), || {
        b.servers
            .iter()
            .all(|s| s.health.snapshot().last_check.is_some())
    })
    .await
    .expect("both checked");
    for s in &b.servers {
        let last = s.health.snapshot().last_check.unwrap();
        assert_eq!(last.status.code(), "L7OK", "{}: {last}", s.name);
    }
}

#[tokio::test]
async fn server_tls_settings_are_checked_at_load() {
    let server: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (keys, path, message) in [
        (
            "tls = true, ca = \"/nonexistent/ca.pem\"",
            "servers[0].ca",
            "cannot read",
        ),
        ("verify = false", "servers[0].tls", "set tls = true"),
        (
            "proto = \"h3\"",
            "servers[0].proto",
            "\"http/1.1\" or \"h2\"",
        ),
        (
            "tls = true, sni = \"bad name!\"",
            "servers[0].sni",
            "not a DNS name",
        ),
    ] {
        let toml = config("roundrobin", &[("s1", server, keys)], "");
        let errors = weir::Config::from_toml(&toml, std::path::Path::new("."))
            .expect_err(keys)
            .to_string();
        assert!(
            errors.contains(path) && errors.contains(message),
            "{keys}: {errors}"
        );
    }
}

/// A server that writes each response's head and body in two writes, with Nagle's
/// algorithm on, as Python's http.server does: the body waits for the ACK of the head.
/// With `tls`, each write is a TLS record of its own.
fn two_write_server(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                None => serve_two_writes(conn),
                Some(config) => {
                    if let Ok(session) = rustls::ServerConnection::new(config) {
                        serve_two_writes(rustls::StreamOwned::new(session, conn));
                    }
                }
            });
        }
    });
    addr
}

fn serve_two_writes(stream: impl std::io::Read + std::io::Write) {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let mut length = 0;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
        }
        if reader.read_exact(&mut vec![0; length]).is_err() {
            return;
        }
        let conn = reader.get_mut();
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        if conn.write_all(head).is_err() || conn.write_all(b"hello").is_err() {
            return;
        }
    }
}

/// 20 requests one after another on one kept-alive client connection, after a first one
/// that opens the server connection they all reuse: their median time is under 15 ms.
/// Without the remedy each waits for weir's delayed ACK: 40 ms.
async fn assert_no_stall(proxy: &TestProxy, request: fn() -> Request<weir_tests::Body>) {
    let mut client = Client::connect(proxy.addr()).await;
    let mut took = Vec::new();
    for i in 0..21 {
        let started = std::time::Instant::now();
        let reply = client.send(request()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello");
        if i > 0 {
            took.push(started.elapsed());
        }
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median {median:?}: {took:?}"
    );
}

fn get() -> Request<weir_tests::Body> {
    Request::get("/")
        .header("host", "test.local")
        .body(weir_tests::empty())
        .unwrap()
}

fn post() -> Request<weir_tests::Body> {
    Request::post("/form")
        .header("host", "test.local")
        .body(weir_tests::body("name=weir"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_writing_head_and_body_apart_costs_no_delayed_ack_on_a_pooled_connection() {
    let proxy = through(two_write_server(None), "").await;
    assert_no_stall(&proxy, get).await;
}

/// A request with a body goes out through hyper's client, not weir's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_writing_head_and_body_apart_costs_no_delayed_ack_on_a_request_with_a_body() {
    let proxy = through(two_write_server(None), "").await;
    assert_no_stall(&proxy, post).await;
}

/// Requests to a TLS server go out through hyper's client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_writing_head_and_body_apart_costs_no_delayed_ack() {
    let ca = TestCa::new("two-writes");
    let (cert, key) = ca.issue("backend", &["backend.test"]);
    let certified = weir::tls::load(&cert, &key).unwrap();
    let config = weir::tls::acceptor(&[certified], false).config().clone();
    let keys = format!(
        "tls = true, ca = \"{}\", sni = \"backend.test\"",
        ca.ca_file().display()
    );
    let proxy = through(two_write_server(Some(config)), &keys).await;
    assert_no_stall(&proxy, get).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_head_and_body_apart_costs_no_delayed_ack() {
    use std::io::{Read, Write};
    let server = weir_tests::MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let addr = proxy.addr();
    let took = tokio::task::spawn_blocking(move || {
        // Nagle on, as a client library's default: the body waits for the head's ACK.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut took = Vec::new();
        let mut buf = [0u8; 4096];
        for i in 0..21 {
            let started = std::time::Instant::now();
            s.write_all(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\n")
                .unwrap();
            s.write_all(b"hello").unwrap();
            // Read the whole response: its head says how long the body is.
            let mut got = Vec::new();
            loop {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|l| l.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                        break;
                    }
                }
            }
            if i > 0 {
                took.push(started.elapsed());
            }
        }
        took
    })
    .await
    .unwrap();
    let mut sorted = took.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median {median:?}: {took:?}"
    );
}
