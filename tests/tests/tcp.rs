//! Layer 4 through the real proxy: tcp frontends relaying bytes to tcp backends, TLS
//! passed through undecrypted (chosen by SNI), half-closes, timeouts, retries, the
//! tcplog line, TCP health checks with send/expect. Redis behind a tcp frontend needs
//! Debian's redis-server, so that test is ignored by a plain `cargo test`; run it with
//! `cargo test --workspace --test tcp -- --ignored` (CI does).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::tls::TestCa;
use weir_tests::{TestProxy, closed_port, read_until_close, unresponsive_server, wait_until};

#[path = "../../host/tests/common/mod.rs"]
mod common;

/// A tcp frontend "www" over a tcp backend "app" of `servers` (name, address, more keys).
fn tcp_config(servers: &[(&str, SocketAddr, &str)], frontend: &str, backend: &str) -> String {
    format!(
        "[[frontend]]\nname = \"www\"\nmode = \"tcp\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n{frontend}\n\n[backend.app]\nmode = \"tcp\"\n{backend}\nservers = [\n{}\n]\n",
        weir_tests::server_lines(servers)
    )
}

/// A raw TCP server: echoes what it reads; when the client half-closes, writes
/// `<name> saw <n> bytes` and closes. Counts its connections.
struct EchoServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl EchoServer {
    async fn start(name: &'static str) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = 0;
                    let mut buf = [0u8; 16384];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                seen += n;
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                    let _ = stream
                        .write_all(format!("{name} saw {seen} bytes\n").as_bytes())
                        .await;
                });
            }
        });
        EchoServer { addr, connections }
    }
}

/// Sends `data`, half-closes, and reads until the other side closes.
async fn exchange(addr: SocketAddr, data: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(data).await.unwrap();
    stream.shutdown().await.unwrap();
    let (got, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the connection must close after the server's last bytes"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_go_both_ways_and_a_half_close_passes_through() {
    let s1 = EchoServer::start("s1").await;
    let proxy = TestProxy::start(&tcp_config(&[("s1", s1.addr, "")], "", "")).await;
    let got = exchange(proxy.addr(), b"hello, layer four").await;
    // The server saw the client's end of stream and still had its say after it.
    assert_eq!(got, "hello, layer fours1 saw 17 bytes\n");
    // HAProxy's tcplog: client, [date], frontend, backend/server, Tw/Tc/Tt, bytes to the
    // client, termination, counts, queues.
    let lines = proxy.log.wait_for(1).await;
    let words: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(words.len(), 9, "{lines:?}");
    assert!(words[1].starts_with('['), "{lines:?}");
    assert_eq!(&words[2..4], ["www", "app/s1"], "{lines:?}");
    assert_eq!(words[5], got.len().to_string(), "{lines:?}");
    assert_eq!(&words[6..], ["--", "1/1/0/0/0", "0/0"], "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_balanced_and_maxconn_queues_them() {
    let (s1, s2) = (EchoServer::start("s1").await, EchoServer::start("s2").await);
    let servers = [
        ("s1", s1.addr, "maxconn = 1"),
        ("s2", s2.addr, "maxconn = 1"),
    ];
    let proxy = TestProxy::start(&tcp_config(&servers, "", "balance = \"roundrobin\"")).await;
    // Two held open fill both servers; a third waits in the queue until one closes.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        held.push(c);
    }
    assert_eq!(
        (
            s1.connections.load(Ordering::SeqCst),
            s2.connections.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
    let third = tokio::spawn(exchange(proxy.addr(), b"third"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!third.is_finished(), "the third must wait for a free slot");
    drop(held.pop());
    let got = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third is served once a slot frees")
        .unwrap();
    assert!(
        got.starts_with("third") && got.ends_with(" saw 5 bytes\n"),
        "{got}"
    );
    let lines = proxy.log.wait_for(2).await;
    assert!(lines.iter().any(|l| l.ends_with(" 0/0")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_left_after_timeout_connect_for_another() {
    let (_listener, _fillers, dead) = unresponsive_server();
    let good = EchoServer::start("good").await;
    let servers = [("dead", dead, ""), ("good", good.addr, "")];
    let backend = "balance = \"first\"\nretries = 1\ntimeout = { connect = \"300ms\" }";
    let proxy = TestProxy::start(&tcp_config(&servers, "", backend)).await;
    let started = Instant::now();
    let got = exchange(proxy.addr(), b"ping").await;
    assert_eq!(got, "pinggood saw 4 bytes\n");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let lines = proxy.log.wait_for(1).await;
    // Redispatched to the good server after one retry.
    assert!(
        lines[0].contains(" app/good ") && lines[0].contains(" -- 1/1/0/0/1 0/0"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_to_reach_closes_the_client_and_logs_sc() {
    let servers = [("gone", closed_port().await, "")];
    let proxy = TestProxy::start(&tcp_config(&servers, "", "retries = 1")).await;
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let (got, closed) = read_until_close(&mut c, Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "{got}");
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" app/gone ") && lines[0].contains(" SC "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_is_closed_after_timeout_client() {
    let s1 = EchoServer::start("s1").await;
    let frontend = "timeout = { client = \"300ms\" }";
    let proxy = TestProxy::start(&tcp_config(&[("s1", s1.addr, "")], frontend, "")).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(b"one").await.unwrap();
    let (got, closed) = read_until_close(&mut c, Duration::from_secs(5)).await;
    assert!(closed, "a stalled client must be closed");
    assert_eq!(got, "one");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" cD "), "{lines:?}");
}

/// A TLS server that tells its name to whoever completes a handshake, then closes.
async fn named_tls_server(
    name: &'static str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (SocketAddr, CertificateDer<'static>) {
    let certified = weir::tls::load(cert, key).unwrap();
    let der = certified.cert[0].clone();
    let acceptor = weir::tls::acceptor(&[certified], false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(name.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, der)
}

/// Completes a TLS handshake over `io` naming `sni`, reads to the end: what the server
/// said, and the certificate it showed.
async fn tls_talk<IO>(ca: &TestCa, io: IO, sni: &str) -> (String, CertificateDer<'static>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut tls = ca
        .connector(&[])
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), io)
        .await
        .unwrap_or_else(|e| panic!("TLS through weir for {sni}: {e}"));
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    let mut said = String::new();
    let _ = tls.read_to_string(&mut said).await;
    (said, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passes_through_undecrypted_and_the_sni_chooses_the_server() {
    let ca = TestCa::new("tcp-passthrough");
    let (a_cert, a_key) = ca.issue("a", &["*.weir.test"]);
    let (b_cert, b_key) = ca.issue("b", &["*.weir.test"]);
    let (a, a_der) = named_tls_server("a", &a_cert, &a_key).await;
    let (b, b_der) = named_tls_server("b", &b_cert, &b_key).await;
    let proxy = TestProxy::start(&tcp_config(
        &[("a", a, ""), ("b", b, "")],
        "tls_passthrough = true",
        "balance = \"sni\"",
    ))
    .await;
    let mut chosen = std::collections::BTreeMap::new();
    for i in 0..16 {
        let sni = format!("n{i}.weir.test");
        let mut first = None;
        for _ in 0..3 {
            let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
            let (said, cert) = tls_talk(&ca, tcp, &sni).await;
            // The server's own certificate: weir holds no key for these names.
            let expected = if said == "a" { &a_der } else { &b_der };
            assert_eq!(&cert, expected, "{sni} answered by {said}");
            // The same name goes to the same server every time.
            assert_eq!(*first.get_or_insert_with(|| said.clone()), said, "{sni}");
        }
        *chosen.entry(first.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        chosen.len(),
        2,
        "sixteen names spread over both: {chosen:?}"
    );
}

/// Writes at most 7 bytes per write, each after a pause: a ClientHello in many packets.
struct Trickle {
    inner: TcpStream,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let n = data.len().min(7);
        let written = Pin::new(&mut self.inner).poll_write(cx, &data[..n]);
        if let Poll::Ready(Ok(_)) = written {
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_split_across_many_packets_is_still_read() {
    let ca = TestCa::new("tcp-split-hello");
    let (cert, key) = ca.issue("a", &["split.test"]);
    let (a, a_der) = named_tls_server("a", &cert, &key).await;
    let proxy = TestProxy::start(&tcp_config(
        &[("a", a, "")],
        "tls_passthrough = true",
        "balance = \"sni\"",
    ))
    .await;
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (said, cert) = tls_talk(
        &ca,
        Trickle {
            inner: tcp,
            pause: None,
        },
        "split.test",
    )
    .await;
    assert_eq!((said.as_str(), &cert), ("a", &a_der));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_packet_that_is_no_tls_is_closed_logged_and_never_relayed() {
    let s1 = EchoServer::start("s1").await;
    let proxy = TestProxy::start(&tcp_config(
        &[("s1", s1.addr, "")],
        "tls_passthrough = true",
        "",
    ))
    .await;
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_close(&mut c, Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "{got}");
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" www <NOSRV>/<NOSRV> ") && lines[0].contains(" PR "),
        "{lines:?}"
    );
    assert_eq!(s1.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_terminates_on_a_tcp_frontend_and_plain_bytes_reach_the_server() {
    let ca = TestCa::new("tcp-terminate");
    let (cert, key) = ca.issue("edge", &["edge.test"]);
    let s1 = EchoServer::start("s1").await;
    let frontend = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let proxy = TestProxy::start(&tcp_config(&[("s1", s1.addr, "")], &frontend, "")).await;
    let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut tls = ca
        .connector(&[b"redis"])
        .connect(ServerName::try_from("edge.test").unwrap(), tcp)
        .await
        .expect("weir's own certificate, whatever ALPN the client offers");
    tls.write_all(b"in the clear behind weir").await.unwrap();
    tls.shutdown().await.unwrap();
    let mut got = String::new();
    let _ = tls.read_to_string(&mut got).await;
    assert_eq!(got, "in the clear behind weirs1 saw 24 bytes\n");
}

/// A server for TCP checks: answers `PING\r\n` with `+PONG\r\n` while `healthy`, else
/// with `-ERR`; and it can stop listening and come back on the same port.
struct PingServer {
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PingServer {
    async fn start() -> PingServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = PingServer {
            addr: listener.local_addr().unwrap(),
            healthy: Arc::new(AtomicBool::new(true)),
            task: std::sync::Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let healthy = Arc::clone(&self.healthy);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let healthy = Arc::clone(&healthy);
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = stream.read(&mut buf).await
                        && buf[..n].starts_with(b"PING")
                    {
                        let answer: &[u8] = if healthy.load(Ordering::SeqCst) {
                            b"+PONG\r\n"
                        } else {
                            b"-ERR not now\r\n"
                        };
                        let _ = stream.write_all(answer).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    async fn restart(&self) {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                return self.serve(listener);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not listen on {} again", self.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_with_send_and_expect_follows_the_server_down_and_up() {
    let server = PingServer::start().await;
    let backend = "health = { send = \"PING\\r\\n\", expect = \"+PONG\", interval = \"100ms\", rise = 1, fall = 1 }";
    let proxy = TestProxy::start(&tcp_config(&[("s1", server.addr, "")], "", backend)).await;
    let rt = proxy.running.backend("app").unwrap();
    let up = |want: bool| {
        let rt = Arc::clone(&rt);
        async move {
            wait_until(Duration::from_secs(5), || {
                rt.servers[0].health.is_up() == want
            })
            .await
            .unwrap_or_else(|| panic!("the server never went {}", if want { "UP" } else { "DOWN" }))
        }
    };
    // A wrong answer takes it down; the right one brings it back.
    server.healthy.store(false, Ordering::SeqCst);
    up(false).await;
    let last = rt.servers[0]
        .health
        .snapshot()
        .last_check
        .expect("a check ran");
    assert_eq!(last.status.code(), "L7RSP", "{last:?}");
    server.healthy.store(true, Ordering::SeqCst);
    up(true).await;
    assert_eq!(
        rt.servers[0]
            .health
            .snapshot()
            .last_check
            .unwrap()
            .status
            .code(),
        "L7OK"
    );
    // The server dies (nothing listens), then comes back.
    server.stop();
    up(false).await;
    assert_eq!(
        rt.servers[0]
            .health
            .snapshot()
            .last_check
            .unwrap()
            .status
            .code(),
        "L4CON"
    );
    server.restart().await;
    up(true).await;
}

/// One RESP command's reply, read as far as it needs: a simple string, an error, an
/// integer or a bulk string.
async fn resp<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut tokio::io::BufReader<S>,
    args: &[&[u8]],
) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    stream.get_mut().write_all(&out).await.unwrap();
    read_resp(stream).await
}

async fn read_resp<S: AsyncRead + Unpin>(stream: &mut tokio::io::BufReader<S>) -> Vec<u8> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    stream.read_until(b'\n', &mut line).await.unwrap();
    if line.first() != Some(&b'$') {
        return line;
    }
    let len: usize = std::str::from_utf8(&line[1..line.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    let mut value = vec![0u8; len + 2];
    stream.read_exact(&mut value).await.unwrap();
    value.truncate(len);
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test --workspace --test tcp -- --ignored"]
async fn redis_works_through_a_tcp_frontend() {
    let redis = common::Redis::start();
    let addr: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let backend = "health = { send = \"PING\\r\\n\", expect = \"+PONG\", interval = \"200ms\" }";
    let proxy = TestProxy::start(&tcp_config(&[("redis", addr, "")], "", backend)).await;
    let mut c = tokio::io::BufReader::new(TcpStream::connect(proxy.addr()).await.unwrap());
    assert_eq!(resp(&mut c, &[b"SET", b"weir:k", b"v1"]).await, b"+OK\r\n");
    assert_eq!(resp(&mut c, &[b"GET", b"weir:k"]).await, b"v1");
    // A pipelined burst: a thousand commands in one write, a thousand answers.
    let mut burst = Vec::new();
    for _ in 0..1000 {
        burst.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$8\r\nweir:ctr\r\n");
    }
    c.get_mut().write_all(&burst).await.unwrap();
    for i in 1..=1000 {
        assert_eq!(read_resp(&mut c).await, format!(":{i}\r\n").into_bytes());
    }
    // A large value, both ways.
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(resp(&mut c, &[b"SET", b"weir:big", &big]).await, b"+OK\r\n");
    assert!(
        resp(&mut c, &[b"GET", b"weir:big"]).await == big,
        "the 8 MiB value came back changed"
    );
    drop(c);
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" app/redis ") && lines[0].contains(" -- "),
        "{lines:?}"
    );
    let sent: u64 = lines[0].split(' ').nth(5).unwrap().parse().unwrap();
    assert!(sent > 8 << 20, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_comes_in_and_goes_out_on_tcp() {
    let s1 = EchoServer::start("s1").await;
    let proxy = TestProxy::start(&tcp_config(
        &[("s1", s1.addr, "send_proxy = \"v1\"")],
        "accept_proxy = true",
        "",
    ))
    .await;
    // The client's header names 192.0.2.7; weir's header to the server names it too,
    // and the echo server sends it back before the payload.
    let got = exchange(
        proxy.addr(),
        b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 6379\r\npayload",
    )
    .await;
    let header = "PROXY TCP4 192.0.2.7 127.0.0.1 40000 6379\r\n";
    assert_eq!(
        got,
        format!("{header}payloads1 saw {} bytes\n", header.len() + 7)
    );
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].starts_with("192.0.2.7:40000 "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frontends_and_backends_are_in_the_csv_and_metrics() {
    let s1 = EchoServer::start("s1").await;
    let toml = tcp_config(&[("s1", s1.addr, "")], "", "") + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let proxy = TestProxy::start(&toml).await;
    let got = exchange(proxy.addr(), b"twelve bytes").await;
    proxy.log.wait_for(1).await;
    let admin = proxy.running.admin_addr().unwrap();
    let csv = weir_tests::get(admin, "/;csv").await.text();
    let row = |name: &str| -> Vec<String> {
        csv.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row in {csv}"))
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    // Sessions and bytes both ways; no HTTP responses.
    for r in [row("www,FRONTEND,"), row("app,s1,"), row("app,BACKEND,")] {
        assert_eq!(r[7], "1", "stot in {r:?}");
        assert_eq!(r[8], "12", "bin in {r:?}");
        assert_eq!(r[9], got.len().to_string(), "bout in {r:?}");
        assert!(r[39..45].iter().all(|c| c.is_empty() || c == "0"), "{r:?}");
    }
    let metrics = weir_tests::get(admin, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_frontend_bytes_in_total{frontend=\"www\"} 12")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_sends_connections_by_sni_to_backends_and_closes_denied_sources() {
    let ca = TestCa::new("tcp-router");
    let names = ["*.weir.test", "*.eu.weir.test"];
    let (a_cert, a_key) = ca.issue("a", &names);
    let (b_cert, b_key) = ca.issue("b", &names);
    let (a, _) = named_tls_server("a", &a_cert, &a_key).await;
    let (b, _) = named_tls_server("b", &b_cert, &b_key).await;
    let rules = r#"{ rules = [
        { src = "127.0.0.2/32", deny = 403 },
        { sni = "api.weir.test", backend = "api" },
        { sni = "*.eu.weir.test", backend = "eu" },
    ] }"#;
    let toml = weir_tests::with_plugins(
        tcp_config(&[("a", a, "")], "tls_passthrough = true", ""),
        &["routes"],
        &[weir_tests::stock_plugin("routes", "router", rules)],
    ) + &format!(
        "\n[backend.api]\nmode = \"tcp\"\nservers = [{{ name = \"a\", addr = \"{a}\" }}]\n\n[backend.eu]\nmode = \"tcp\"\nservers = [{{ name = \"b\", addr = \"{b}\" }}]\n"
    );
    let proxy = TestProxy::start(&toml).await;
    let talk = |sni: &'static str| {
        let ca = &ca;
        let addr = proxy.addr();
        async move {
            tls_talk(ca, TcpStream::connect(addr).await.unwrap(), sni)
                .await
                .0
        }
    };
    assert_eq!(talk("api.weir.test").await, "a");
    assert_eq!(talk("db.eu.weir.test").await, "b");
    // No rule: the frontend's default backend (server a).
    assert_eq!(talk("other.weir.test").await, "a");
    // A denied source is closed before any server hears of it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let denied = socket.connect(proxy.addr()).await.unwrap();
    // on-connect runs once the ClientHello is read (the rules may need its name).
    let name = ServerName::try_from("api.weir.test").unwrap();
    let handshake = ca.connector(&[]).connect(name, denied);
    let refused = tokio::time::timeout(Duration::from_secs(5), handshake)
        .await
        .expect("closed at once");
    assert!(refused.is_err(), "the denied source must get no handshake");
    // A session is logged when it ends, so the lines may come in any order.
    let lines = proxy.log.wait_for(4).await;
    let mut routed: Vec<&str> = lines.iter().map(|l| l.split(' ').nth(3).unwrap()).collect();
    routed.sort_unstable();
    assert_eq!(
        routed,
        ["<NOSRV>/<NOSRV>", "api/a", "app/a", "eu/b"],
        "{lines:?}"
    );
    let denied = lines.iter().find(|l| l.contains("<NOSRV>")).unwrap();
    assert!(denied.starts_with("127.0.0.2:"), "{lines:?}");
    assert!(denied.contains(" LR "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_connection_from_one_address_is_refused_until_one_closes() {
    // An address of the test's own: weir counts per address across the process.
    const CLIENT: [u8; 4] = [127, 0, 0, 11];
    let s1 = EchoServer::start("s1").await;
    let limit = weir_tests::stock_plugin("limit", "rate-limit", "{ max_connections = 10 }");
    let toml = weir_tests::with_plugins(
        tcp_config(&[("s1", s1.addr, "")], "", ""),
        &["limit"],
        &[limit],
    ) + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let proxy = TestProxy::start(&toml).await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut c = connect_from(proxy.addr(), CLIENT).await;
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        open.push(c);
    }
    let mut eleventh = connect_from(proxy.addr(), CLIENT).await;
    let (got, closed) = read_until_close(&mut eleventh, Duration::from_secs(5)).await;
    assert!(
        closed && got.is_empty(),
        "the eleventh must be closed: {got}"
    );
    assert_eq!(s1.connections.load(Ordering::SeqCst), 10);
    // One closes: the next one is let through.
    drop(open.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut c = connect_from(proxy.addr(), CLIENT).await;
        c.write_all(b"y").await.unwrap();
        let mut one = [0u8; 1];
        if tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut one))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "a connection must be accepted once one of the ten closed"
    );
    // The refusal is counted as denied (the CSV's dreq).
    let admin = proxy.running.admin_addr().unwrap();
    let csv = weir_tests::get(admin, "/;csv").await.text();
    let frontend = csv
        .lines()
        .find(|l| l.starts_with("www,FRONTEND,"))
        .unwrap();
    let denied: usize = frontend.split(',').nth(10).unwrap().parse().unwrap();
    assert!(denied >= 1, "{csv}");
    // As many as the access log's refusals (its lines are written by their own thread).
    let log = &proxy.log;
    wait_until(Duration::from_secs(5), || {
        log.lines().iter().filter(|l| l.contains(" LR ")).count() == denied
    })
    .await
    .unwrap_or_else(|| panic!("{denied} denied, log: {:?}", log.lines()));
    let lines = proxy.log.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" www <NOSRV>/<NOSRV> ") && l.contains(" LR ")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_an_http_request_gets_429() {
    let server = weir_tests::MockServer::start("s1").await;
    let limit = weir_tests::stock_plugin("limit", "rate-limit", "{ max_connections = 2 }");
    let toml = weir_tests::with_plugins(
        weir_tests::config("roundrobin", &[("s1", server.addr, "")], ""),
        &["limit"],
        &[limit],
    );
    let proxy = TestProxy::start(&toml).await;
    let mut first = weir_tests::Client::connect_from(proxy.addr(), [127, 0, 0, 12].into()).await;
    let mut second = weir_tests::Client::connect_from(proxy.addr(), [127, 0, 0, 12].into()).await;
    assert_eq!(first.get("/").await.status, 200);
    assert_eq!(second.get("/").await.status, 200);
    let mut third = weir_tests::Client::connect_from(proxy.addr(), [127, 0, 0, 12].into()).await;
    assert_eq!(third.get("/").await.status, 429);
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let status = third.get("/").await.status;
        if status == 200 {
            again = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        again,
        Some(http::StatusCode::OK),
        "once one closed, the third is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_half_closes_still_hears_the_client() {
    // The server greets, ends its side, and goes on reading what the client sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heard_tx, heard) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello, then silence").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        let _ = heard_tx.send(got);
    });
    let proxy = TestProxy::start(&tcp_config(&[("s1", addr, "")], "", "")).await;
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut greeting))
        .await
        .expect("the server's end of stream reaches the client")
        .unwrap();
    assert_eq!(greeting, b"hello, then silence");
    c.write_all(b"still talking").await.unwrap();
    c.shutdown().await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), heard)
        .await
        .expect("the client's bytes after the server's half-close reach it")
        .unwrap();
    assert_eq!(heard, b"still talking");
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" -- "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_both_ways_arrives_byte_for_byte() {
    let s1 = EchoServer::start("s1").await;
    let proxy = TestProxy::start(&tcp_config(&[("s1", s1.addr, "")], "", "")).await;
    // Far more than one read's buffer: past the first full read it goes by splice(2).
    let data: Vec<u8> = (0..24u32 << 20).map(|i| (i % 253) as u8).collect();
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut got))
        .await
        .expect("the echo within 30 s")
        .unwrap();
    writer.await.unwrap();
    let tail = format!("s1 saw {} bytes\n", data.len());
    assert_eq!(got.len(), data.len() + tail.len());
    assert!(got[..data.len()] == data[..], "the bytes came back changed");
    assert_eq!(&got[data.len()..], tail.as_bytes());
    let lines = proxy.log.wait_for(1).await;
    let words: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(words[5], got.len().to_string(), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_timeout_server_or_timeout_tunnel() {
    let s1 = EchoServer::start("s1").await;
    // The server's timeout is the shorter: the close is blamed on it.
    let frontend = "timeout = { client = \"5s\" }";
    let backend = "timeout = { server = \"300ms\" }";
    let proxy = TestProxy::start(&tcp_config(&[("s1", s1.addr, "")], frontend, backend)).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let (_, closed) = read_until_close(&mut c, Duration::from_secs(4)).await;
    assert!(closed && started.elapsed() < Duration::from_secs(3));
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" sD "), "{lines:?}");
    // timeout.tunnel, when written, bounds the idle time instead of both.
    let backend = "timeout = { server = \"5s\", tunnel = \"300ms\" }";
    let proxy = TestProxy::start(&tcp_config(&[("s1", s1.addr, "")], frontend, backend)).await;
    let started = Instant::now();
    let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let (_, closed) = read_until_close(&mut c, Duration::from_secs(4)).await;
    let took = started.elapsed();
    assert!(closed && took >= Duration::from_millis(300) && took < Duration::from_secs(3));
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" cD "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_takes_the_connections_while_the_primary_is_down() {
    let backup = EchoServer::start("backup").await;
    let servers = [
        ("primary", closed_port().await, ""),
        ("spare", backup.addr, "backup = true"),
    ];
    let health = "health = { interval = \"100ms\", fall = 1, rise = 1 }";
    let proxy = TestProxy::start(&tcp_config(&servers, "", health)).await;
    let rt = proxy.running.backend("app").unwrap();
    wait_until(Duration::from_secs(5), || !rt.servers[0].health.is_up())
        .await
        .expect("the primary goes DOWN");
    for _ in 0..3 {
        assert_eq!(
            exchange(proxy.addr(), b"hi").await,
            "hibackup saw 2 bytes\n"
        );
    }
}

/// A connection to `addr` from the local address `from`.
async fn connect_from(addr: SocketAddr, from: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocols_a_client_hello_offers_reach_the_router() {
    let ca = TestCa::new("tcp-alpn");
    let (a_cert, a_key) = ca.issue("a", &["svc.weir.test"]);
    let (b_cert, b_key) = ca.issue("b", &["svc.weir.test"]);
    let (a, _) = named_tls_server("a", &a_cert, &a_key).await;
    let (b, _) = named_tls_server("b", &b_cert, &b_key).await;
    let rules = "{ rules = [{ alpn = \"h2\", backend = \"h2\" }] }";
    let toml = weir_tests::with_plugins(
        tcp_config(&[("a", a, "")], "tls_passthrough = true", ""),
        &["routes"],
        &[weir_tests::stock_plugin("routes", "router", rules)],
    ) + &format!(
        "\n[backend.h2]\nmode = \"tcp\"\nservers = [{{ name = \"b\", addr = \"{b}\" }}]\n"
    );
    let proxy = TestProxy::start(&toml).await;
    let talk = |alpn: &'static [&'static [u8]]| {
        let (ca, addr) = (&ca, proxy.addr());
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("svc.weir.test").unwrap();
            let mut tls = ca.connector(alpn).connect(name, tcp).await.unwrap();
            let mut said = String::new();
            let _ = tls.read_to_string(&mut said).await;
            said
        }
    };
    assert_eq!(talk(&[b"h2", b"http/1.1"]).await, "b");
    assert_eq!(talk(&[b"http/1.1"]).await, "a");
    assert_eq!(talk(&[]).await, "a");
}
