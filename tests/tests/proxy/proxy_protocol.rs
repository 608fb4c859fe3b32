//! The PROXY protocol: `accept_proxy` takes the client's address from a v1 or v2 header
//! (and closes connections without a valid one); `send_proxy` sends one to servers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir::proxy_protocol::{self, Header, Version};
use weir_tests::{MockServer, TestProxy, config, read_until_close};

fn accepting(server: &MockServer, extra: &str) -> String {
    config("roundrobin", &[("s1", server.addr, "")], "").replace(
        "default_backend = \"app\"\n",
        &format!("default_backend = \"app\"\naccept_proxy = true\n{extra}"),
    )
}

const REQUEST: &[u8] = b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";

/// Sends `preface` and a request; returns the response text and whether weir closed.
async fn exchange(addr: SocketAddr, preface: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = preface.to_vec();
    bytes.extend_from_slice(REQUEST);
    stream.write_all(&bytes).await.unwrap();
    read_until_close(&mut stream, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_takes_the_client_address_from_v1_and_v2_headers() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&accepting(&server, "")).await;
    let addr = proxy.addr();
    let client: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::9]:40001".parse().unwrap();
    for (i, preface) in [
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n".to_vec(),
        proxy_protocol::encode(Version::V2, client, addr),
        proxy_protocol::encode(Version::V1, v6, "[2001:db8::1]:80".parse().unwrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let (text, _) = exchange(addr, &preface).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let body: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        let expected = if i == 2 { "2001:db8::9" } else { "203.0.113.9" };
        assert_eq!(body["headers"]["x-forwarded-for"], expected);
        let lines = proxy.log.wait_for(i + 1).await;
        let logged = if i == 2 { v6 } else { client };
        assert!(lines[i].starts_with(&format!("{logged} ")), "{}", lines[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_closes_connections_without_a_valid_header() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&accepting(&server, "")).await;
    let addr = proxy.addr();
    let mut bad_v2 = proxy_protocol::V2_SIGNATURE.to_vec();
    bad_v2.extend_from_slice(&[0x11, 0x11, 0, 12]);
    bad_v2.extend_from_slice(&[0; 12]);
    for preface in [
        &b""[..],
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000\r\n",
        b"PROXY TCP4 not-an-ip 127.0.0.1 40000 80\r\n",
        &bad_v2,
    ] {
        let (text, closed) = exchange(addr, preface).await;
        assert!(closed && text.is_empty(), "{preface:?}: {text}");
    }
    assert_eq!(server.requests(), 0, "nothing reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_works_in_front_of_tls() {
    let ca = weir_tests::tls::TestCa::new("proxy");
    let (cert, key) = ca.issue("site", &["site.test"]);
    let server = MockServer::start("s1").await;
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start(&accepting(&server, &tls)).await;
    let mut tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 198.51.100.4 127.0.0.1 5555 443\r\n")
        .await
        .unwrap();
    let stream = ca
        .connector(&[b"http/1.1"])
        .connect("site.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let reply = weir_tests::tls::get_h1(stream, "site.test", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "198.51.100.4");
    assert_eq!(reply.json()["headers"]["x-forwarded-proto"], "https");
}

/// A keep-alive server that reads a PROXY header first on every connection, and answers
/// each request with that header, as text.
async fn proxy_aware_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let header = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    match proxy_protocol::parse(&buf) {
                        Ok(Some((h, used))) => {
                            buf.drain(..used);
                            break format!("{h:?}");
                        }
                        Ok(None) => continue,
                        Err(e) => format!("{e}"),
                    };
                    return;
                };
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{header}",
                            header.len()
                        );
                        if stream.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_tells_the_server_who_the_client_is_on_a_connection_of_its_own() {
    for version in ["v1", "v2"] {
        let (server, connections) = proxy_aware_server().await;
        let proxy = TestProxy::start(&config(
            "roundrobin",
            &[("s1", server, &format!("send_proxy = \"{version}\""))],
            "",
        ))
        .await;
        let addr = proxy.addr();
        let mut client = weir_tests::Client::connect(addr).await;
        let expected = format!(
            "{:?}",
            Header::Proxied {
                source: client.local_addr,
                destination: addr
            }
        );
        for _ in 0..2 {
            let reply = client.get("/").await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.text(), expected, "{version}");
        }
        // Another client gets a server connection of its own, with its own address.
        let mut other = weir_tests::Client::connect(addr).await;
        let reply = other.get("/").await;
        assert!(
            reply.text().contains(&other.local_addr.to_string()),
            "{version}"
        );
        assert_eq!(
            connections.load(Ordering::SeqCst),
            3,
            "{version}: no server connection is reused with send_proxy"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_proxy_weir_in_front_of_an_accept_proxy_weir_keeps_the_client_address() {
    let server = MockServer::start("s1").await;
    let inner = TestProxy::start(&accepting(&server, "")).await;
    for (i, version) in ["v1", "v2"].into_iter().enumerate() {
        let outer = TestProxy::start(&config(
            "roundrobin",
            &[(
                "inner",
                inner.addr(),
                &format!("send_proxy = \"{version}\""),
            )],
            "",
        ))
        .await;
        let mut client = weir_tests::Client::connect(outer.addr()).await;
        assert_eq!(client.get("/").await.status, 200);
        let lines = inner.log.wait_for(i + 1).await;
        let last = &lines[i];
        assert!(
            last.starts_with(&format!("{} ", client.local_addr)),
            "{version}: the inner weir logs the client: {last}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_of_a_send_proxy_server_start_with_a_local_header() {
    let (server, _) = proxy_aware_server().await;
    let proxy = TestProxy::start(&config(
        "roundrobin",
        &[("s1", server, "send_proxy = \"v2\"")],
        "health = { path = \"/health\", interval = \"50ms\" }",
    ))
    .await;
    let b = proxy.running.backend("app").unwrap();
    weir_tests::wait_until(Duration::from_secs(3), || {
        b.servers[0].health.snapshot().last_check.is_some()
    })
    .await
    .expect("checked");
    let last = b.servers[0].health.snapshot().last_check.unwrap();
    assert_eq!(last.status.code(), "L7OK", "{last}");
}
