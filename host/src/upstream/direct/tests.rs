use super::*;

fn head(raw: &[u8], method: Method) -> Result<Option<(http::response::Parts, BodyState)>, Failure> {
    parse_head(&mut BytesMut::from(raw), &method)
}

fn framing_of(raw: &[u8], method: Method) -> (Framing, bool) {
    let (_, state) = head(raw, method).ok().flatten().expect("a complete head");
    (state.framing, state.keep_alive)
}

/// Data, trailers, and the bytes after the body.
type Decoded = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// Feeds `wire` to the chunked decoder `step` bytes at a time, as reads would bring
/// it; returns the data and trailers decoded and what is left after the body.
fn dechunk(wire: &[u8], step: usize) -> Result<Decoded, String> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut framing = Framing::Chunked(Chunked::Start, 0);
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Framing::Chunked(chunk, seen) = framing {
        match decode_chunk(&mut buf, chunk, seen)? {
            Step::Next(next, frame) => {
                framing = next;
                match frame.map(Frame::into_data) {
                    Some(Ok(d)) => data.extend_from_slice(&d),
                    Some(Err(f)) => trailers = f.into_trailers().ok(),
                    None => {}
                }
            }
            Step::More(at) if fed < wire.len() => {
                framing = at;
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
            Step::More(_) => return Err("cut short".into()),
        }
    }
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&wire[fed..]);
    Ok((data, trailers, rest))
}

#[test]
fn chunked_bodies_decode_alike_however_the_reads_split_them() {
    let wire = b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 7\r\n\r\nNEXT";
    for step in 1..wire.len() {
        let (data, trailers, rest) = dechunk(wire, step).unwrap();
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        assert_eq!(trailers.unwrap()["x-sum"], "7", "step {step}");
        assert_eq!(rest, b"NEXT", "step {step}");
    }
    let (data, trailers, rest) = dechunk(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!(
        (data.as_slice(), trailers.is_none(), rest.len()),
        (&b"abc"[..], true, 0)
    );
}

#[test]
fn broken_chunked_framing_is_an_error() {
    for wire in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b"1\r\na\r\n0\r\nx: 1\n\n",
    ] {
        assert!(
            dechunk(wire, 4).is_err(),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
    let long = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
    let too_long = "a chunk-size line is too long";
    assert_eq!(dechunk(&long, 4096).unwrap_err(), too_long);
    let ended = [&long, b"\r\nhello\r\n0\r\n\r\n".as_slice()].concat();
    assert_eq!(dechunk(&ended, ended.len()).unwrap_err(), too_long);
}

#[test]
fn content_length_values_must_be_one_number() {
    let cl = |v: &'static str| content_length(&HeaderValue::from_static(v));
    assert_eq!(cl("42"), Some(42));
    assert_eq!(cl("42, 42"), Some(42));
    assert_eq!(cl("00000000000000000000042"), Some(42));
    for bad in [
        "",
        "4 2",
        "42, 43",
        "42,",
        "+1",
        "0x10",
        "99999999999999999999",
    ] {
        assert_eq!(cl(bad), None, "{bad:?}");
    }
}

#[test]
fn the_framing_of_a_response_follows_its_status_method_and_fields() {
    use Framing::{Eof, Length};
    let chunked = Framing::Chunked(Chunked::Start, 0);
    let cases: &[(&str, Method, Framing, bool)] = &[
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5",
            Method::GET,
            Length(5),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5",
            Method::HEAD,
            Length(0),
            true,
        ),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: 5",
            Method::GET,
            Length(0),
            true,
        ),
        (
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5",
            Method::GET,
            Length(0),
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
            Method::GET,
            chunked,
            true,
        ),
        // Both: the coding wins and the connection is not kept.
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
            Method::GET,
            chunked,
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip",
            Method::GET,
            Eof,
            false,
        ),
        ("HTTP/1.1 200 OK", Method::GET, Eof, false),
        (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0",
            Method::GET,
            Length(0),
            false,
        ),
        (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\nContent-Length: 0",
            Method::GET,
            Length(0),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 0",
            Method::GET,
            Length(0),
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0",
            Method::GET,
            Length(0),
            true,
        ),
    ];
    for (raw, method, framing, keep_alive) in cases {
        let raw = format!("{raw}\r\n\r\n");
        let got = framing_of(raw.as_bytes(), method.clone());
        assert_eq!(got, (*framing, *keep_alive), "{raw:?} to {method}");
    }
    let get = || Method::GET;
    for bad in [
        &b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"not http\r\n\r\n",
    ] {
        assert!(
            head(bad, get()).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn response_heads_are_read_whole_past_informational_ones() {
    let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 Fine\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc";
    for cut in 0..raw.len() - 3 {
        let mut buf = BytesMut::from(&raw[..cut]);
        match parse_head(&mut buf, &Method::GET) {
            Ok(None) => {}
            other => panic!("cut {cut}: {:?}", other.map(|h| h.map(|(p, _)| p.status))),
        }
    }
    let mut buf = BytesMut::from(&raw[..]);
    let (parts, state) = parse_head(&mut buf, &Method::GET).unwrap().unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    let values: Vec<_> = parts.headers.get_all("x-a").iter().collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(state.framing, Framing::Length(3));
    assert_eq!(&buf[..], b"abc", "the body stays in the buffer");
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>().unwrap();
    assert_eq!(reason.as_bytes(), b"Fine", "a reason of its own is kept");
    let (canonical, _) = head(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET)
        .unwrap()
        .unwrap();
    assert!(
        canonical
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .is_none()
    );
}

#[test]
fn request_heads_are_written_as_http_1_1_without_transfer_encoding() {
    let req = Request::get("/a/b?c=d")
        .header("host", "example.com")
        .header("transfer-encoding", "chunked")
        .header("x-two", "1")
        .header("x-two", "2")
        .body(())
        .unwrap();
    let mut out = Vec::new();
    encode(&mut out, &req);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "GET /a/b?c=d HTTP/1.1\r\nhost: example.com\r\nx-two: 1\r\nx-two: 2\r\n\r\n"
    );
    let absolute = Request::get("http://example.com/x").body(()).unwrap();
    let mut out = Vec::new();
    encode(&mut out, &absolute);
    assert!(out.starts_with(b"GET http://example.com/x HTTP/1.1\r\n"));
}

/// A response as a client ends up with it, or `None` for an error anywhere.
type Received = Option<(
    StatusCode,
    HeaderMap,
    Vec<u8>,
    Option<HeaderMap>,
    Option<Vec<u8>>,
)>;

/// Sends a `method` request over loopback TCP to a server that answers with `raw`
/// and then closes its side, through this module (`direct`) or hyper's client.
async fn receive(raw: Vec<u8>, method: Method, direct: bool) -> Received {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = stream.write_all(&raw).await;
        let _ = stream.shutdown().await;
        // Held open until the client is done, so that it reads a clean end.
        while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "a")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let got = async {
        let response = if direct {
            Conn::new(stream).exchange(&req).await.ok()?.map(|b| {
                b.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
                    .boxed()
            })
        } else {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            sender.send_request(req).await.ok()?.map(|b| {
                b.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
                    .boxed()
            })
        };
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.ok()?;
        let trailers = collected.trailers().cloned();
        let reason = parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| r.as_bytes().to_vec());
        let data = collected.to_bytes().to_vec();
        Some((parts.status, parts.headers, data, trailers, reason))
    };
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), got)
        .await
        .expect("a response or an error in time");
    server.abort();
    got
}

#[tokio::test]
async fn responses_are_read_as_hyper_reads_them() {
    const STATUS: &[&str] = &[
        "HTTP/1.1 200 OK\r\n",
        "HTTP/1.1 200 Fine\r\n",
        "HTTP/1.0 200 OK\r\n",
        "HTTP/1.1 204 No Content\r\n",
        "HTTP/1.1 304 Not Modified\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 404 Not Found\r\n",
        "HTTP/1.1 099 Low\r\n",
        "HTTP/1.1 200\r\n",
        "HTTP/2 200 OK\r\n",
    ];
    const FIELDS: &[&str] = &[
        "content-length: 5\r\n",
        "Content-Length: 5\r\n",
        "content-length: 5, 5\r\n",
        "content-length: 6\r\n",
        "content-length: 0\r\n",
        "content-length: 5x\r\n",
        "content-length: \r\n",
        "transfer-encoding: chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "transfer-encoding: chunked, gzip\r\n",
        "connection: close\r\n",
        "connection: keep-alive\r\n",
        "x-any: some value\r\n",
        "x-bad : value\r\n",
        "x-lf: value\n",
    ];
    const BODIES: &[&str] = &[
        "",
        "hello",
        "hello world",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;ext=1\r\nhello\r\n0\r\n\r\n",
        "5 \t;x\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
        "5\r\nhello\r\n0\r\nx-sum: 1\r\nx-two: 2\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "zz\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\n",
        "5\r\nhello\r\n0\r\nx: 1\n\n",
        "5\r\nhel",
        "A\r\n0123456789\r\n00000000000000000000\r\n\r\n",
    ];
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut agreed, mut answered) = (0, 0);
    for case in 0..1500 {
        let mut raw = STATUS[next() as usize % STATUS.len()].as_bytes().to_vec();
        for _ in 0..next() % 4 {
            raw.extend_from_slice(FIELDS[next() as usize % FIELDS.len()].as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(BODIES[next() as usize % BODIES.len()].as_bytes());
        // Now and then one byte changed, or the end cut off.
        match next() % 8 {
            0 => {
                let at = next() as usize % raw.len();
                let bytes = b" \r\n:;0aZ\t";
                raw[at] = bytes[next() as usize % bytes.len()];
            }
            1 => raw.truncate(next() as usize % raw.len()),
            _ => {}
        }
        let method = if next() % 5 == 0 {
            Method::HEAD
        } else {
            Method::GET
        };
        let ours = receive(raw.clone(), method.clone(), true).await;
        let hypers = receive(raw.clone(), method, false).await;
        assert_eq!(
            ours,
            hypers,
            "case {case}: {:?}",
            String::from_utf8_lossy(&raw)
        );
        agreed += 1;
        answered += usize::from(ours.is_some());
    }
    // Both outcomes came up often enough to mean something.
    assert!(
        answered > 300 && agreed - answered > 300,
        "{answered} of {agreed} answered"
    );
}

/// A connection back from its body holds no read buffer, and takes the next exchange.
#[tokio::test]
async fn an_idle_connection_holds_no_buffer_and_serves_again() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut chunk = [0u8; 1024];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await;
        }
    });
    let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let req = Request::get("/").header("host", "a").body(()).unwrap();
    for _ in 0..2 {
        let mut body = conn.exchange(&req).await.unwrap().into_body();
        let data = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(&data[..], b"hello");
        conn = body.take_idle().expect("the connection is idle again");
        assert_eq!(conn.buf.capacity(), 0);
    }
}

/// A connection back from a response read whole knows without a system call that nothing
/// came since: its socket's readiness was forgotten at the read that drained it. And a
/// server closing the idle connection is still seen.
#[tokio::test]
async fn an_idle_connection_is_checked_without_a_read_and_a_close_is_seen() {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut chunk = [0u8; 1024];
        let _ = stream.read(&mut chunk).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .await;
        let _ = closed.await;
    });
    let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
    let req = Request::get("/").header("host", "a").body(()).unwrap();
    let mut body = conn.exchange(&req).await.unwrap().into_body();
    assert_eq!(
        &(&mut body).collect().await.unwrap().to_bytes()[..],
        b"hello"
    );
    let mut conn = body.take_idle().expect("the connection is idle again");
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(
        conn.io.poll_read_ready(&mut cx).is_pending(),
        "the readiness is forgotten once the response is read whole"
    );
    assert!(conn.is_open());
    close.send(()).unwrap();
    for _ in 0..200 {
        if !conn.is_open() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the server's close was not seen");
}
