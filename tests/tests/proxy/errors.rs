//! Errors as a client sees them, each produced by a real faulty server or a raw request.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::{
    Client, Fault, MockServer, TestProxy, closed_port, config, faulty_server, get, raw, raw_status,
    read_until_close, unresponsive_server, wait_until,
};

fn with_timeouts(toml: String, timeouts: &str) -> String {
    format!("[defaults]\ntimeout = {{ {timeouts} }}\n\n{toml}")
}

async fn proxy_to(addr: SocketAddr, timeouts: &str) -> TestProxy {
    TestProxy::start(&with_timeouts(
        config("roundrobin", &[("s1", addr, "")], ""),
        timeouts,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_body_from_the_client_is_400_not_502() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let (response, closed) = raw(
        proxy.addr(),
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nxx\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 400, "{response}");
    assert!(
        closed,
        "the connection must be closed after a malformed body"
    );
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" 400 ") && lines[0].contains(" CD "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_request_without_host_is_400_and_never_forwarded() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let (response, closed) = raw(proxy.addr(), b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(raw_status(&response), 400, "{response}");
    assert!(closed);
    let (response, _) = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 400, "{response}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_request_line_is_400_and_never_forwarded() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let (response, closed) = raw(proxy.addr(), b"GET\x01 / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&response), 400, "{response}");
    assert!(closed);
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_method_is_501() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let (response, _) = raw(
        proxy.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 501, "{response}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_64_kib_is_431() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let big = "a".repeat(70 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let (response, _) = raw(proxy.addr(), request.as_bytes()).await;
    assert_eq!(
        raw_status(&response),
        431,
        "{}",
        &response[..response.len().min(200)]
    );
    // Just under the limit passes.
    let fits = "a".repeat(60 * 1024);
    let request =
        format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Big: {fits}\r\n\r\n");
    let (response, _) = raw(proxy.addr(), request.as_bytes()).await;
    assert_eq!(raw_status(&response), 200);
    assert_eq!(server.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_headers_is_431() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (response, _) = raw(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&response), 431, "{response}");
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_are_configurable() {
    let server = MockServer::start("s1").await;
    let toml = config("roundrobin", &[("s1", server.addr, "")], "").replacen(
        "default_backend = \"app\"\n",
        "default_backend = \"app\"\nmax_headers = 10\nmax_header_size = \"2KiB\"\n",
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    let headers: String = (0..10).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (response, _) = raw(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        raw_status(&response),
        431,
        "11 headers with max_headers = 10"
    );
    let big = "a".repeat(3000);
    let (response, _) = raw(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\nX: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        raw_status(&response),
        431,
        "a 3 KB head with max_header_size = 2KiB"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_without_a_response_is_502() {
    let (addr, seen) = faulty_server(Fault::Close).await;
    let proxy = proxy_to(addr, "").await;
    let reply = get(proxy.addr(), "/").await;
    assert_eq!(reply.status, 502);
    assert!(
        reply.text().starts_with("502 Bad Gateway"),
        "{}",
        reply.text()
    );
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" 502 ") && lines[0].contains(" SH "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answering_garbage_is_502() {
    let (addr, _) = faulty_server(Fault::Garbage).await;
    let proxy = proxy_to(addr, "").await;
    assert_eq!(get(proxy.addr(), "/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_server_is_503_after_retries() {
    let (a, b) = (closed_port().await, closed_port().await);
    let toml = config("roundrobin", &[("s1", a, ""), ("s2", b, "")], "retries = 2");
    let proxy = TestProxy::start(&toml).await;
    let started = Instant::now();
    let reply = get(proxy.addr(), "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("No server is available"),
        "{}",
        reply.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused connections must fail fast"
    );
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" 503 ") && lines[0].contains(" SC 1/1/0/0/2 0/0 "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_server() {
    let good = MockServer::start("good").await;
    let dead = closed_port().await;
    let toml = config(
        "roundrobin",
        &[("dead", dead, ""), ("good", good.addr, "")],
        "retries = 1",
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..20 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.server(), "good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_server_is_504_within_the_timeout_and_the_client_connection_stays_usable() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "server = \"400ms\"").await;
    let mut client = Client::connect(proxy.addr()).await;
    let started = Instant::now();
    let reply = client.get("/hang").await;
    let took = started.elapsed();
    eprintln!("504 after {took:?} with timeout.server = 400ms");
    assert_eq!(reply.status, 504);
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_millis(440 + 200),
        "504 after {took:?}"
    );
    let reply = client.get("/").await;
    assert_eq!(
        reply.status, 200,
        "the same client connection serves the next request"
    );
}

/// A client connection keeps one timer for timeout.server from request to request; each
/// request's deadline is its own, whether the previous one's passed during the request
/// or while the connection was idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_keep_alive_connection_gets_its_own_server_timeout() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "server = \"400ms\"").await;
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(client.get("/").await.status, 200);
    // The first request's deadline falls in the middle of this one, which is in time.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let reply = client.get("/sleep/300").await;
    assert_eq!(
        reply.status, 200,
        "a deadline of the request before cut this one"
    );
    // Idle past the last deadline: the timer goes off with no request waiting.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for round in 0..2 {
        let started = Instant::now();
        let reply = client.get("/hang").await;
        let took = started.elapsed();
        assert_eq!(reply.status, 504, "round {round}");
        assert!(
            took >= Duration::from_millis(400) && took <= Duration::from_millis(440 + 200),
            "round {round}: 504 after {took:?} with timeout.server = 400ms"
        );
        assert_eq!(client.get("/").await.status, 200, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_silent_mid_body_cuts_the_response_rather_than_completing_it() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "server = \"300ms\"").await;
    let mut client = Client::connect(proxy.addr()).await;
    // /gate sends one chunk and then nothing until released, which never happens here.
    let result = client
        .try_send(
            http::Request::get("/gate")
                .header("host", "a")
                .body(weir_tests::empty())
                .unwrap(),
        )
        .await;
    assert!(
        result.is_err(),
        "a cut response must not look complete: {result:?}"
    );
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" sD "), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errorfiles_replace_the_default_bodies() {
    let dir = weir_tests::scratch_dir("errorfiles");
    std::fs::write(dir.join("503.html"), "<h1>We'll be right back</h1>").unwrap();
    std::fs::write(dir.join("fe-503.txt"), "frontend page").unwrap();
    let dead = closed_port().await;
    let toml = config(
        "roundrobin",
        &[("s1", dead, "")],
        &format!(
            "errorfiles = {{ 503 = \"{}\" }}",
            dir.join("503.html").display()
        ),
    );
    let reply = get(TestProxy::start(&toml).await.addr(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "<h1>We'll be right back</h1>");
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");

    // Without a backend page, the frontend's applies.
    let toml = config("roundrobin", &[("s1", dead, "")], "").replacen(
        "default_backend = \"app\"\n",
        &format!(
            "default_backend = \"app\"\nerrorfiles = {{ 503 = \"{}\" }}\n",
            dir.join("fe-503.txt").display()
        ),
        1,
    );
    let reply = get(TestProxy::start(&toml).await.addr(), "/").await;
    assert_eq!(reply.text(), "frontend page");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_after_timeout_http_request() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "http_request = \"500ms\"").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            closed_after = Some(started.elapsed());
            break;
        }
        if let (_, true) = read_until_close(&mut stream, Duration::from_millis(1)).await {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow client was never cut off");
    assert!(
        closed_after < Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
    assert_eq!(server.requests(), 0);
}

/// Sends one request on a connection, reads the answer, and asserts that the proxy then
/// closes the idle connection after about 300 ms (the shorter of the two timeouts).
async fn idle_keep_alive_closes_after_300ms(timeouts: &str) {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, timeouts).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (response, closed) = read_until_close(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(raw_status(&response), 200);
    assert!(
        closed,
        "an idle keep-alive connection must be closed ({timeouts})"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "closed after {took:?} ({timeouts})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_timeout_client() {
    idle_keep_alive_closes_after_300ms("client = \"300ms\", http_request = \"10s\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_timeout_http_request() {
    // As HAProxy without `timeout http-keep-alive`: the wait for the next request head
    // counts from the end of the previous response.
    idle_keep_alive_closes_after_300ms("client = \"10s\", http_request = \"300ms\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_response_is_not_cut_by_timeout_http_request() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "http_request = \"300ms\", server = \"5s\"").await;
    let mut client = Client::connect(proxy.addr()).await;
    let gate = std::sync::Arc::clone(&server.gate);
    // /gate sends its first chunk, then the rest only once released: well after the
    // head timeout, while the response is still on its way.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        gate.release.notify_one();
    });
    let reply = client.get("/gate").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "first;rest");
    // And the connection still serves the next request.
    assert_eq!(client.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_is_not_cut_by_the_client_timeout() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "client = \"200ms\", server = \"5s\"").await;
    let reply = get(proxy.addr(), "/sleep/600").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_maxconn_holds_extra_connections_until_one_closes() {
    let server = MockServer::start("s1").await;
    let toml = format!(
        "[global]\nmaxconn = 1\n\n{}",
        config("roundrobin", &[("s1", server.addr, "")], "")
    );
    let proxy = TestProxy::start(&toml).await;
    let mut first = Client::connect(proxy.addr()).await;
    assert_eq!(first.get("/").await.status, 200);
    let addr = proxy.addr();
    let second = tokio::spawn(async move { get(addr, "/second").await.status });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served past maxconn = 1"
    );
    assert_eq!(server.requests(), 1);
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once a slot freed");
    assert_eq!(status.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_address_in_use_is_a_clear_startup_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let toml = config("roundrobin", &[("s1", closed_port().await, "")], "")
        .replace("127.0.0.1:0", &addr.to_string());
    let config = weir::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let err = weir::start(&config, weir::AccessLog::disabled())
        .await
        .err()
        .expect("bind must fail");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("frontend[0].bind: cannot listen on {addr}: ")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("in use"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_gives_503_in_time() {
    let (_listener, _fillers, addr) = unresponsive_server();
    let toml = with_timeouts(
        config("roundrobin", &[("s1", addr, "")], "retries = 1"),
        "connect = \"300ms\"",
    );
    let proxy = TestProxy::start(&toml).await;
    let started = Instant::now();
    let reply = get(proxy.addr(), "/").await;
    let took = started.elapsed();
    assert_eq!(reply.status, 503);
    // Two attempts (one retry) of 300 ms each.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1500),
        "503 after {took:?}"
    );
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" SC 1/1/0/0/1 0/0 "), "{lines:?}");
}

/// A frontend over a dead server with the chain `secure` (security-headers), `tag` (the
/// fixture, which appends `x-chain-back: tag` on the way back) and `more`, `frontend_keys`
/// added to the frontend, and pages for 400, 501 and 503.
async fn answers_pass_the_chain(more: &[String], frontend_keys: &str) -> TestProxy {
    let dir = weir_tests::scratch_dir("local-answers");
    for status in [400, 501, 503] {
        std::fs::write(dir.join(format!("{status}.txt")), format!("page {status}")).unwrap();
    }
    let pages = format!(
        "errorfiles = {{ 400 = \"{d}/400.txt\", 501 = \"{d}/501.txt\", 503 = \"{d}/503.txt\" }}\n",
        d = dir.display()
    );
    let mut chain = vec!["secure", "tag"];
    let mut sections = vec![
        weir_tests::stock_plugin("secure", "security-headers", "{}"),
        weir_tests::fixture_plugin("tag", "tag", ""),
    ];
    for m in more {
        chain.push(m.split(['[', '.', ']']).nth(2).unwrap());
        sections.push(m.clone());
    }
    let toml = weir_tests::with_plugins(
        config("roundrobin", &[("s1", closed_port().await, "")], ""),
        &chain,
        &sections,
    )
    .replacen(
        "default_backend = \"app\"\n",
        &format!("default_backend = \"app\"\n{pages}{frontend_keys}"),
        1,
    );
    let proxy = TestProxy::start(&toml).await;
    // The pages are read when the config loads.
    std::fs::remove_dir_all(&dir).unwrap();
    proxy
}

/// The answer passed back through security-headers and the fixture.
fn passed_the_chain(response: &str) -> bool {
    response.contains("x-content-type-options: nosniff") && response.contains("x-chain-back: tag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weirs_own_answers_get_their_page_and_pass_the_on_response_chain() {
    let proxy = answers_pass_the_chain(&[], "").await;
    // An error after the chain ran: no server (503).
    let (response, _) = raw(proxy.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&response), 503, "{response}");
    assert!(response.ends_with("page 503"), "{response}");
    assert!(passed_the_chain(&response), "{response}");
    // The pipeline's refusal, before the chain ran (501): every plugin sees it.
    let (response, _) = raw(
        proxy.addr(),
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 501, "{response}");
    assert!(response.ends_with("page 501"), "{response}");
    assert!(passed_the_chain(&response), "{response}");
    // The framing guard's refusal of a head hyper never sees (400).
    let smuggle = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx";
    let (response, closed) = raw(proxy.addr(), smuggle).await;
    assert_eq!(raw_status(&response), 400, "{response}");
    assert!(response.ends_with("page 400"), "{response}");
    assert!(passed_the_chain(&response), "{response}");
    assert!(closed, "the connection closes after a refused head");
    let lines = proxy.log.wait_for(3).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 400 ") && l.contains(" PR ")),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_redirect_passes_the_on_response_chain() {
    let proxy = answers_pass_the_chain(&[], "redirect_https = true\n").await;
    let (response, _) = raw(
        proxy.addr(),
        b"GET /x HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 301, "{response}");
    assert!(
        response.contains("location: https://shop.example/x"),
        "{response}"
    );
    assert!(passed_the_chain(&response), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_plugins_503_passes_the_plugins_before_it_not_the_failed_one() {
    // `trap` fails in on-request (fail-closed): its 503 goes back through `tag` and
    // `secure`, which ran before it.
    let trap = weir_tests::fixture_plugin("trap", "trap", "");
    let proxy = answers_pass_the_chain(&[trap], "").await;
    let (response, _) = raw(proxy.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(raw_status(&response), 503, "{response}");
    assert!(response.ends_with("page 503"), "{response}");
    assert!(passed_the_chain(&response), "{response}");
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" PI "), "{lines:?}");
}

/// The access log's line for the one request sent, once written.
async fn only_line(proxy: &TestProxy) -> String {
    let lines = proxy.log.wait_for(1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_response_is_logged_cd() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /gate HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The head and the first chunk come; the rest waits on the server's gate.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("first;") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the response's first chunk")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    drop(stream);
    let line = only_line(&proxy).await;
    assert!(
        line.contains(" 200 ") && line.contains(" CD ") && line.contains("app/s1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_timeout_client_is_logged_cd_with_no_status() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "client = \"300ms\"").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let (response, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "timeout.client must close the stalled upload");
    assert!(response.is_empty(), "{response}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let line = only_line(&proxy).await;
    // Sent to the server, then cut in the data phase by the client timeout.
    assert!(
        line.contains(" -1 0 cD ") && line.contains("app/s1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_client_stops_reading_is_logged_cd_after_timeout_client() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "client = \"300ms\"").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    // Far more than the sockets between weir and the client hold; never read.
    stream
        .write_all(b"GET /bytes/64000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let line = tokio::time::timeout(Duration::from_secs(10), only_line(&proxy))
        .await
        .expect("a line once timeout.client cut the transfer");
    assert!(line.contains(" 200 ") && line.contains(" cD "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_the_server_thinks_is_logged_ch() {
    let server = MockServer::start("s1").await;
    let proxy = proxy_to(server.addr, "").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), || server.requests() == 1)
        .await
        .expect("the request reaches the server");
    drop(stream);
    let line = only_line(&proxy).await;
    assert!(line.contains(" -1 0 CH "), "{line}");
}
