use super::*;

fn guard() -> FramingGuard<()> {
    FramingGuard::new(
        (),
        Limits {
            max_header_size: 1024,
            max_headers: 10,
        },
        Arc::default(),
    )
}

/// Feeds `stream` in pieces of `step` bytes; returns the bytes passed on and the
/// refusal, if any.
fn feed(stream: &[u8], step: usize) -> (Vec<u8>, Option<u16>) {
    let mut g = guard();
    let mut out = Vec::new();
    for piece in stream.chunks(step) {
        let mut data = std::mem::take(&mut g.held);
        data.extend_from_slice(piece);
        let passed = g.scan(&data);
        out.extend_from_slice(&data[..passed]);
        if g.rejected() {
            break;
        }
        g.held = data[passed..].to_vec();
    }
    (out, g.verdict.rejection().map(|r| r.status))
}

#[test]
fn keep_alive_requests_pass_whole_in_any_pieces() {
    let stream: &[u8] = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n\
        GET /d HTTP/1.1\r\nHost: a\r\n\r\n";
    for step in [1, 2, 3, 7, 16, stream.len()] {
        let (out, refused) = feed(stream, step);
        assert_eq!(refused, None, "step {step}");
        assert_eq!(out, stream, "step {step}");
    }
}

#[test]
fn a_smuggled_head_behind_a_body_is_checked() {
    // The body's length hides nothing: the next head is read where the body ends.
    let first: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd";
    let stream = [first, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"].concat();
    for step in [1, 5, stream.len()] {
        let (out, refused) = feed(&stream, step);
        assert_eq!(refused, Some(400));
        assert_eq!(out, first, "only the first request is passed on");
    }
}

#[test]
fn a_chunked_body_ends_where_hyper_ends_it() {
    // hyper takes any byte but CR inside a trailer line, a bare LF too: the guard
    // follows the body to the same end and checks the head after it.
    let first: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;x=y\r\nz\r\n0\r\nt: 1\n2\r\n\r\n";
    let stream = [
        first,
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ]
    .concat();
    for step in [1, 7, stream.len()] {
        let (out, refused) = feed(&stream, step);
        assert_eq!(refused, Some(400), "step {step}");
        assert_eq!(
            out, first,
            "step {step}: only the first request is passed on"
        );
    }
}

#[test]
fn refusals_and_their_statuses() {
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_REQUEST_LINE));
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(11));
    let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "b".repeat(1100));
    let cases: &[(&[u8], u16)] = &[
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (long_line.as_bytes(), 414),
        (many.as_bytes(), 431),
        (big.as_bytes(), 431),
    ];
    for (request, status) in cases {
        for step in [1, request.len()] {
            let (out, refused) = feed(request, step);
            let shown = String::from_utf8_lossy(request);
            assert_eq!(refused, Some(*status), "{shown}");
            assert!(out.is_empty(), "{shown}");
        }
    }
}

#[test]
fn bytes_past_a_malformed_body_or_an_upgrade_are_passed_on_unchecked() {
    for request in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    ] {
        let (out, refused) = feed(request, request.len());
        assert_eq!(refused, None);
        assert_eq!(out, request);
    }
}

#[test]
fn a_head_hyper_refuses_is_passed_on_and_the_heads_after_it_are_checked() {
    // A complete head that hyper's parser refuses goes on: hyper answers it with 400
    // and closes. A smuggling attempt behind it is refused all the same.
    let bad: &[u8] = b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n";
    let stream = [
        bad,
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ]
    .concat();
    assert_eq!(feed(&stream, stream.len()), (bad.to_vec(), Some(400)));
    // In pieces, the parser refuses the first head before it is complete, and from
    // then on everything goes on unchecked: hyper closes at that head.
    assert_eq!(feed(&stream, 1), (stream.clone(), None));
    // An incomplete head that the parser refuses already is not held back either.
    let garbage: &[u8] = b"GET / HTTP/1.1\r\nBad Name: x\r\n";
    assert_eq!(feed(garbage, garbage.len()), (garbage.to_vec(), None));
}

#[test]
fn heads_are_read_as_httparse_reads_them() {
    let mut g = guard();
    for head in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"\r\n\nGET /x?y HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-LENGTH:  7 \r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(head) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("{other:?}"),
        };
        let scanned = Scanned::head(head).expect("a complete head");
        assert_eq!(scanned.len, len);
        assert_eq!(scanned.headers, req.headers.len());
        let line = format!(
            "{} {} HTTP/1.{}",
            req.method.unwrap(),
            req.path.unwrap(),
            req.version.unwrap()
        );
        assert_eq!(scanned.request_line, line.as_bytes());
        assert!(Scanned::head(&head[..len - 1]).is_none());
        g.state = State::Head;
        assert!(matches!(g.head(head), Head::Next(n, _) if n == len));
    }
    assert_eq!(
        Scanned::head(b"POST / HTTP/1.1\r\ncontent-LENGTH:  7 \r\n\r\n")
            .unwrap()
            .length,
        Some(&b"  7 "[..])
    );
    assert!(matches!(
        g.head(b"POST / HTTP/1.1\r\nContent-Length: 7\r\n\r\n"),
        Head::Next(_, State::Body(7))
    ));
    let refused = g.head(b"CONNECT a:1 HTTP/1.1\nHost: a\r\n\r\n");
    let Head::Refused(r) = refused else {
        panic!("a bare LF is refused")
    };
    assert_eq!(
        (r.method.as_deref(), r.target.as_deref()),
        (Some("CONNECT"), Some("a:1"))
    );
}

/// Differential check against httparse on generated heads: whatever it parses as a
/// complete head, the scan reads with the same length, header count and framing
/// headers (what a server behind weir would act on).
#[test]
fn every_head_httparse_completes_is_scanned_alike() {
    const PIECES: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b":",
        b": ",
        b" ",
        b"\t",
        b"Content-Length",
        b"content-length",
        b"Transfer-Encoding",
        b"TRANSFER-encoding",
        b"chunked",
        b"gzip",
        b",",
        b"5",
        b"10",
        b"Host",
        b"Upgrade",
        b"a",
        b"x-y",
        b"\x00",
        b"\xc3\xa9",
        b"HTTP/1.0",
        b"/p?q",
        b"POST",
        b"Host: a\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Upgrade: x\r\n",
        b"X: gzip, chunked\r\n",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut complete = 0;
    for _ in 0..50_000 {
        let mut head = Vec::new();
        if next() % 4 != 0 {
            head.extend_from_slice(PIECES[0]);
        }
        for _ in 0..(2 + next() % 24) {
            head.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        if next() % 2 == 0 {
            head.extend_from_slice(b"\r\n\r\n");
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let scanned = Scanned::head(&head);
        let Ok(httparse::Status::Complete(len)) = req.parse(&head) else {
            continue;
        };
        complete += 1;
        let shown = String::from_utf8_lossy(&head);
        let scanned = scanned.unwrap_or_else(|| panic!("not scanned: {shown:?}"));
        assert_eq!(scanned.len, len, "{shown:?}");
        assert_eq!(scanned.headers, req.headers.len(), "{shown:?}");
        let named = |name: &'static str| {
            req.headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
        };
        assert_eq!(
            scanned.lengths,
            named("content-length").count(),
            "{shown:?}"
        );
        assert_eq!(
            scanned.length.map(<[u8]>::trim_ascii),
            named("content-length").next().map(|h| h.value),
            "{shown:?}"
        );
        assert_eq!(
            scanned.chunked,
            named("transfer-encoding").next().is_some(),
            "{shown:?}"
        );
        let codings: Vec<&[u8]> = named("transfer-encoding")
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        assert_eq!(
            scanned.only_chunked,
            codings.iter().all(|c| c.eq_ignore_ascii_case(b"chunked")),
            "{shown:?}"
        );
        assert_eq!(
            scanned.upgrade,
            named("upgrade").next().is_some(),
            "{shown:?}"
        );
    }
    assert!(complete > 3_000, "only {complete} complete heads generated");
}
