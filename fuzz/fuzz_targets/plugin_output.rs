//! Fuzzes the checks on what a plugin returns (header edits, local responses, paths):
//! whatever passes them must be safe to write into an HTTP/1.1 head, with no CR, LF or
//! NUL to split a response, and must apply without error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::plugin::types::{HeaderOp, HeaderResult as Header, LocalResponse};
use weir::plugin::validate;

/// Splits the input into fields at 0xFF bytes (never valid UTF-8 itself).
fn fields(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// Header edits: each field is an op kind (its first char) then `name:value`.
fn ops(fields: &[String]) -> Vec<HeaderOp> {
    fields
        .iter()
        .filter_map(|f| {
            let mut chars = f.chars();
            let kind = chars.next()?;
            let rest: String = chars.collect();
            let (name, value) = rest.split_once(':').unwrap_or((&rest, ""));
            let header = Header {
                name: name.to_string(),
                value: value.to_string(),
            };
            Some(match kind as u32 % 3 {
                0 => HeaderOp::Set(header),
                1 => HeaderOp::Append(header),
                _ => HeaderOp::Remove(name.to_string()),
            })
        })
        .collect()
}

/// The head a server or client would get, parsed back: it must hold exactly these headers.
fn written_safely(headers: &http::HeaderMap) {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in headers {
        assert!(
            !value
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | 0))
        );
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    let mut parsed = vec![httparse::EMPTY_HEADER; headers.len() + 1];
    let mut response = httparse::Response::new(&mut parsed);
    let status = response
        .parse(&head)
        .expect("a head made of checked headers parses");
    assert_eq!(status, httparse::Status::Complete(head.len()));
    assert_eq!(response.headers.len(), headers.len());
}

fuzz_target!(|data: &[u8]| {
    let fields = fields(data);
    let ops = ops(&fields);
    if let Ok(edits) = validate::edits(&ops) {
        let mut headers = http::HeaderMap::new();
        validate::apply(edits, &mut headers);
        written_safely(&headers);
    }

    let status = data.first().map_or(0, |&b| u16::from(b) * 3);
    let response = LocalResponse {
        status,
        headers: ops
            .iter()
            .filter_map(|op| match op {
                HeaderOp::Set(h) | HeaderOp::Append(h) => Some(h.clone()),
                HeaderOp::Remove(_) => None,
            })
            .collect(),
        body: data.to_vec(),
    };
    if validate::local_response(&response).is_ok() {
        assert!((200..=599).contains(&response.status));
        let mut headers = http::HeaderMap::new();
        for h in &response.headers {
            let (name, value) = validate::header(h).expect("checked headers convert");
            headers.append(name, value);
        }
        written_safely(&headers);
    }

    if let Some(path) = fields.first()
        && let Ok(checked) = validate::path(path)
    {
        assert!(checked.as_str().starts_with('/'));
        assert!(
            !checked
                .as_str()
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b < 0x20)
        );
        let uri: http::Uri = checked
            .as_str()
            .parse()
            .expect("a checked path is a valid target");
        assert_eq!(
            uri.path_and_query().map(|p| p.as_str()),
            Some(checked.as_str())
        );
    }
});
