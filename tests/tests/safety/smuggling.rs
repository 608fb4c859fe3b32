//! Request smuggling: a request whose framing is ambiguous or invalid gets 400, the
//! connection closes, and nothing of it reaches a server.

use std::sync::atomic::Ordering;

use weir_tests::{MockServer, TestProxy, config, raw, raw_status};

const REFUSED: &[(&[u8], u16)] = &[
    // Content-Length together with Transfer-Encoding, either order.
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n", 400),
    // Repeated Content-Length, equal or not.
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd", 400),
    // Invalid Content-Length.
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nabcd", 400),
    // Transfer codings weir does not implement (RFC 9112 §6.1: 501).
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    // Transfer-Encoding other than one chunked, in HTTP/1.1.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    // Invalid chunk sizes.
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4 x\r\nabcd\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabcd\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabcd\r\n0\r\n\r\n", 400),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_invalid_framing_is_refused_closed_and_never_forwarded() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    for (request, status) in REFUSED {
        let (response, closed) = raw(proxy.addr(), request).await;
        let shown = String::from_utf8_lossy(request);
        assert_eq!(raw_status(&response), *status, "{shown}: {response}");
        assert!(closed, "{shown}: the connection must close");
        assert_eq!(server.requests(), 0, "{shown}: reached the server");
    }
    // The same requests framed one way only go through.
    for request in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    ] {
        let (response, _) = raw(proxy.addr(), request).await;
        assert_eq!(raw_status(&response), 200, "{response}");
    }
    assert_eq!(server.requests(), 2);
}

/// A refused request behind good ones on a keep-alive connection: the good ones are
/// answered in order, then the refusal, then the connection closes; the smuggled request
/// hidden in the refused one's body never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_after_good_ones_is_answered_in_order_then_closed() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let (response, closed) = raw(
        proxy.addr(),
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
          POST /three HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(closed, "{response}");
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &response[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{response}");
    assert!(
        response.contains("Content-Length and Transfer-Encoding"),
        "{response}"
    );
    assert_eq!(server.requests(), 2, "only /one and /two reach the server");
}

/// The refusal is logged and counted as a request error (`ereq`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_counts_as_a_request_error() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let (response, _) = raw(
        proxy.addr(),
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
    )
    .await;
    assert_eq!(raw_status(&response), 400, "{response}");
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains("www app/<NOSRV>") || lines[0].contains("www <NOSRV>/<NOSRV>"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" 400 0 PR "), "{}", lines[0]);
    assert!(lines[0].ends_with("\"POST /x HTTP/1.1\""), "{}", lines[0]);
    let fe = proxy
        .running
        .control()
        .proxy()
        .frontend("www")
        .cloned()
        .unwrap();
    assert_eq!(fe.stats.request_errors.load(Ordering::Relaxed), 1);
}

/// Heads that arrive in pieces are held back until whole, then checked like any other:
/// the good request is answered, the ambiguous one behind it refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_arriving_in_pieces_are_checked_whole() {
    use tokio::io::AsyncWriteExt;
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let stream_bytes: &[u8] = b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
        POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    for piece in stream_bytes.chunks(7) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let (response, closed) =
        weir_tests::read_until_close(&mut stream, std::time::Duration::from_secs(5)).await;
    assert!(closed, "{response}");
    let statuses: Vec<&str> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &response[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400"], "{response}");
    assert_eq!(server.completed(), 1, "only /one reaches the server");
}
