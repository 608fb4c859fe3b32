//! What a plugin returns is checked before weir acts on it: header names and values
//! (no CR, LF or NUL: no response splitting), sizes, statuses and paths.

use http::{HeaderName, HeaderValue, StatusCode};

use super::types;

/// The most memory a plugin instance may be given (the pooling allocator reserves it).
pub const MAX_MEMORY: u64 = 256 << 20;
/// Most headers a plugin may set or append in one action.
pub const MAX_HEADERS: usize = 100;
/// Largest header value a plugin may set.
pub const MAX_HEADER_VALUE: usize = 16 * 1024;
/// Largest body of a local response.
pub const MAX_BODY: usize = 1 << 20;

/// A header a plugin asked for, as weir will write it.
pub fn header(h: &types::HeaderResult) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(h.name.as_bytes())
        .map_err(|_| format!("invalid header name {:?}", h.name))?;
    if h.value.len() > MAX_HEADER_VALUE {
        return Err(format!(
            "header {name} is longer than {MAX_HEADER_VALUE} bytes"
        ));
    }
    let value = HeaderValue::from_str(&h.value)
        .map_err(|_| format!("invalid value for header {name} (control characters?)"))?;
    Ok((name, value))
}

pub fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))
}

/// A local response's status: a final status, 200 to 599.
pub fn status(code: u16) -> Result<StatusCode, String> {
    match StatusCode::from_u16(code) {
        Ok(s) if (200..=599).contains(&code) => Ok(s),
        _ => Err(format!("invalid status {code} for a local response")),
    }
}

pub fn local_response(r: &types::LocalResponse) -> Result<(), String> {
    status(r.status)?;
    if r.headers.len() > MAX_HEADERS {
        return Err(format!(
            "{} headers, more than {MAX_HEADERS}",
            r.headers.len()
        ));
    }
    if r.body.len() > MAX_BODY {
        return Err(format!(
            "a body of {} bytes, more than {MAX_BODY}",
            r.body.len()
        ));
    }
    r.headers.iter().try_for_each(|h| header(h).map(|_| ()))
}

/// Longest note a plugin may leave with a request.
pub const MAX_NOTE: usize = 4 * 1024;

/// A note kept with the request for the plugin's `on-response`.
pub fn note(n: &str) -> Result<(), String> {
    if n.len() > MAX_NOTE {
        return Err(format!("a note of {} bytes, more than {MAX_NOTE}", n.len()));
    }
    Ok(())
}

/// A new path: origin-form, a valid URI path and query.
pub fn path(p: &str) -> Result<http::uri::PathAndQuery, String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} does not start with /"));
    }
    p.parse().map_err(|_| format!("invalid path {p:?}"))
}

/// One header edit of a plugin, checked: its name and value parsed once, for [`apply`].
#[derive(Clone, Debug)]
pub enum Edit {
    Set(HeaderName, HeaderValue),
    Append(HeaderName, HeaderValue),
    Remove(HeaderName),
}

/// Checks a list of header edits whole (its length, every name and value), parsing each
/// once: nothing is applied when any is invalid.
pub fn edits(ops: &[types::HeaderOp]) -> Result<Vec<Edit>, String> {
    if ops.len() > MAX_HEADERS {
        return Err(format!(
            "{} header edits, more than {MAX_HEADERS}",
            ops.len()
        ));
    }
    ops.iter()
        .map(|op| match op {
            types::HeaderOp::Set(h) => header(h).map(|(n, v)| Edit::Set(n, v)),
            types::HeaderOp::Append(h) => header(h).map(|(n, v)| Edit::Append(n, v)),
            types::HeaderOp::Remove(name) => header_name(name).map(Edit::Remove),
        })
        .collect()
}

/// Applies checked edits to a header map, in order.
pub fn apply(edits: impl IntoIterator<Item = Edit>, headers: &mut http::HeaderMap) {
    for edit in edits {
        match edit {
            Edit::Set(n, v) => {
                headers.insert(n, v);
            }
            Edit::Append(n, v) => {
                headers.append(n, v);
            }
            Edit::Remove(n) => {
                headers.remove(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> types::HeaderResult {
        types::HeaderResult {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn crlf_and_nul_are_refused() {
        assert!(header(&h("x-a", "ok")).is_ok());
        assert!(header(&h("x-a", "a\r\nSet-Cookie: evil=1")).is_err());
        assert!(header(&h("x-a", "a\nb")).is_err());
        assert!(header(&h("x-a", "a\0b")).is_err());
        assert!(header(&h("x a", "v")).is_err());
        assert!(header(&h("x-a\r\n", "v")).is_err());
    }

    #[test]
    fn statuses_paths_and_sizes_are_bounded() {
        assert!(status(204).is_ok());
        assert!(status(101).is_err() && status(600).is_err());
        assert!(path("/a?b=1").is_ok());
        assert!(path("a").is_err() && path("/a b").is_err());
        let big = types::LocalResponse {
            status: 200,
            headers: vec![],
            body: vec![0; MAX_BODY + 1],
        };
        assert!(local_response(&big).is_err());
    }
}
