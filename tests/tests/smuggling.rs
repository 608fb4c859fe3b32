//! Request smuggling: a request whose framing is ambiguous or invalid gets 400, the
//! connection closes, and nothing of it reaches a server.

use weir_tests::{MockServer, TestProxy, config, raw, raw_status};

const REFUSED: &[&[u8]] = &[
    // Different Content-Lengths.
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
    // Invalid Content-Length.
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nabcd",
    // Transfer-Encoding other than a single chunked.
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    // Invalid chunk sizes.
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4 x\r\nabcd\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabcd\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabcd\r\n0\r\n\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_invalid_framing_is_400_closed_and_never_forwarded() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    for request in REFUSED {
        let (response, closed) = raw(proxy.addr(), request).await;
        let shown = String::from_utf8_lossy(request);
        assert_eq!(raw_status(&response), 400, "{shown}: {response}");
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

/// With Content-Length and Transfer-Encoding together, Transfer-Encoding wins, as RFC 9112
/// §6.3 has it: the server gets the chunked body alone, without Content-Length, and the
/// connection closes after the response, so what hides behind the body is never read as
/// a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_forwards_the_chunked_body_only_and_closes() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    for request in [
        &b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let (response, closed) = raw(proxy.addr(), request).await;
        assert_eq!(raw_status(&response), 200, "{response}");
        assert!(closed, "the connection closes after the response");
        let body: serde_json::Value =
            serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["path"], "/a");
        assert!(body["headers"].get("content-length").is_none(), "{body}");
    }
    assert_eq!(
        server.requests(),
        2,
        "the hidden requests never reach the server"
    );
}

/// Repeated equal Content-Lengths are one length (RFC 9110 §8.6): forwarded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_repeated_content_lengths_are_forwarded_as_one() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let (response, _) = raw(
        proxy.addr(),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
    )
    .await;
    assert_eq!(raw_status(&response), 200, "{response}");
    let body: serde_json::Value =
        serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["headers"]["content-length"], "4");
}
