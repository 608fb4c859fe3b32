//! Malformed requests, one table: each gets its status, the connection is closed (RFC
//! 9112 §11.2: after a framing error the rest of the stream cannot be trusted), and none
//! of them reaches a server. The one exception is a body that turns out malformed after
//! data began to flow (bodies are streamed): the server may then see its request cut off
//! mid-body (or nothing, when the error shows before the request's head was written to
//! it), never a complete request.

use std::time::Duration;

use weir_tests::{MockServer, TestProxy, config, raw, raw_status, wait_until};

/// (what is wrong, the raw request, the status weir answers)
const MALFORMED: &[(&str, &[u8], u16)] = &[
    // Message framing (request smuggling).
    ("Content-Length with Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding with Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    ("duplicate equal Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab", 400),
    ("duplicate differing Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400),
    ("Content-Length list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nab", 400),
    ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -2\r\n\r\nab", 400),
    ("overflowing Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nab", 400),
    ("signed Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab", 400),
    ("hex Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x2\r\n\r\nab", 400),
    ("Content-Length with inner space", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nab", 400),
    ("empty Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nab", 400),
    ("unknown transfer coding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nab", 501),
    ("chunked not last", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501),
    ("chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("negative chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", 400),
    ("non-hex chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nab\r\n0\r\n\r\n", 400),
    ("overflowing chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nab\r\n", 400),
    ("junk after chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\nab\r\n0\r\n\r\n", 400),
    // Line endings and header syntax.
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("one bare LF in the head", b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", 400),
    ("bare CR in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("space in a header name", b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n", 400),
    ("space before the colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", 400),
    ("NUL in a header name", b"GET / HTTP/1.1\r\nHost: a\r\nX\0A: b\r\n\r\n", 400),
    ("empty header name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400),
    ("header line without a colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n", 400),
    // Request line.
    ("invalid method", b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("HTTP/0.9 request", b"GET /\r\n\r\n", 400),
    ("unknown HTTP version", b"GET / HTTP/1.7\r\nHost: a\r\n\r\n", 400),
    ("lowercase protocol name", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    ("extra word on the request line", b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400),
    ("no target", b"GET HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("two spaces before the target", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("space in the target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("invalid UTF-8 in the path", b"GET /\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("control byte in the path", b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("authority-form target without CONNECT", b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("asterisk-form target without OPTIONS", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    // Host.
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    // Last: this one's first chunk may be streamed to a server before the error shows.
    ("chunk longer than its size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcdef\r\n0\r\n\r\n", 400),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_request_gets_its_status_closes_and_is_never_forwarded() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9 * 1024));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X-A: b\r\n".repeat(101)
    );
    let sizes: [(&str, &[u8], u16); 3] = [
        ("request line over 8 KiB", long_line.as_bytes(), 414),
        ("head over max_header_size", big_head.as_bytes(), 431),
        ("more than max_headers headers", many.as_bytes(), 431),
    ];
    let cases: Vec<_> = MALFORMED.iter().chain(&sizes).collect();
    assert!(cases.len() >= 40);
    let mut wrong = Vec::new();
    // What reached the server so far: only ever the streamed case.
    let mut reached = 0;
    for (what, request, status) in cases {
        let (response, closed) = raw(proxy.addr(), request).await;
        let got = if response.is_empty() {
            0
        } else {
            raw_status(&response)
        };
        if got != *status || !closed {
            wrong.push(format!(
                "{what}: got {got} (closed: {closed}), want {status}"
            ));
        }
        if what.starts_with("chunk longer") {
            // Streamed: whether the head reached the server depends on how far weir had
            // written it when the error showed, and the server counts it in a task of its
            // own. Give it time to arrive; it must never arrive whole.
            wait_until(Duration::from_millis(500), || server.requests() > reached).await;
            assert!(
                server.requests() <= reached + 1,
                "{what}: reached the server twice"
            );
            reached = server.requests();
        } else {
            assert_eq!(server.requests(), reached, "{what}: reached the server");
        }
        assert_eq!(server.completed(), 0, "{what}: reached the server whole");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Well-formed neighbours of those requests go through.
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"[..],
        b"GET http://b/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2;x=y\r\nab\r\n0\r\nX-T: 1\r\n\r\n",
    ] {
        let (response, _) = raw(proxy.addr(), request).await;
        assert_eq!(raw_status(&response), 200, "{}", String::from_utf8_lossy(request));
    }
    assert_eq!(server.completed(), 5);
}
