//! HTTP/1.1 on the wire, as both sides of weir read it: the listener's framing guard
//! (`server::framing`), the pipeline (`proxy`) and weir's own HTTP/1.1 client
//! (`upstream::direct`). Nothing here does I/O.

use http::HeaderValue;

/// True when the comma-separated list `value` holds `token` (case-insensitive). A value
/// that is not visible ASCII holds none.
pub fn list_has(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// True when the comma-separated list `value` ends with `token` (case-insensitive), as
/// Transfer-Encoding's last coding decides a message's framing.
pub fn last_token_is(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// A Content-Length value: digits only.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A request head the guard refused.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: u16,
    /// Why, for the log and the response body.
    pub reason: &'static str,
    /// The request's method and target, when its request line could be read.
    pub method: Option<String>,
    pub target: Option<String>,
    /// The size of the refused head.
    pub head_bytes: u64,
}

impl Rejection {
    /// The body of its response when no `errorfiles` page replaces it.
    pub fn default_body(&self) -> String {
        let phrase = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        format!("{} {phrase}: {}\n", self.status, self.reason)
    }

    /// The plain response, for a refusal on a connection whose frontend is gone (a reload
    /// removed it): the connection closes after it. Otherwise `proxy::local::refusal`
    /// answers.
    pub fn response(&self) -> Vec<u8> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        let status =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        closing_response(status, headers, self.default_body().as_bytes())
    }
}

/// A response as HTTP/1.1 writes it, closing the connection after it: `headers` less
/// the framing and connection fields, which it sets itself.
pub fn closing_response(
    status: http::StatusCode,
    mut headers: http::HeaderMap,
    body: &[u8],
) -> Vec<u8> {
    use http::header;
    for hop in [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
    ] {
        headers.remove(hop);
    }
    let reason = status.canonical_reason().unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).into_bytes();
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// Where a chunked body is (RFC 9112 §7.1), byte by byte outside chunk data, by the rules
/// hyper reads one with (its `ChunkedState`): the framing guard follows request bodies
/// with it, and weir's HTTP/1.1 client decodes response bodies with it, so that both read
/// a body's end exactly where hyper would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line: a hex digit must come.
    Start,
    /// In the chunk size, read so far.
    Size(u64),
    /// Spaces or tabs after the size.
    SizeLws(u64),
    /// In a chunk extension, up to its CR.
    Ext(u64),
    /// The LF that ends the chunk-size line.
    SizeLf(u64),
    /// Chunk data: this many bytes left (never 0).
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk, at the start of a line: a trailer field or the final CRLF.
    EndCr,
    /// In a trailer field line, up to its CR.
    Trailer,
    TrailerLf,
    /// The LF that ends the body.
    EndLf,
}

impl Chunked {
    /// The position after one byte outside chunk data: `Ok(None)` once the body has
    /// ended, `Err` for a malformed body. Not for [`Chunked::Data`] (see [`Self::skip`]).
    pub fn step(self, b: u8) -> Result<Option<Chunked>, &'static str> {
        use Chunked::*;
        let hex = (b as char).to_digit(16).map(u64::from);
        Ok(Some(match (self, b) {
            (Start, _) => Size(hex.ok_or("a chunk-size line has no size")?),
            (Size(n), _) if hex.is_some() => Size(
                n.checked_mul(16)
                    .and_then(|n| n.checked_add(hex.unwrap_or(0)))
                    .ok_or("a chunk size overflows")?,
            ),
            (Size(n) | SizeLws(n), b'\t' | b' ') => SizeLws(n),
            (Size(n) | SizeLws(n), b';') => Ext(n),
            (Size(n) | SizeLws(n) | Ext(n), b'\r') => SizeLf(n),
            (Size(_) | SizeLws(_), _) => return Err("invalid chunk-size line"),
            (Ext(_), b'\n') => return Err("a chunk extension holds a bare LF"),
            (Ext(n), _) => Ext(n),
            (SizeLf(0), b'\n') => EndCr,
            (SizeLf(n), b'\n') => Data(n),
            (SizeLf(_), _) => return Err("a chunk-size line does not end with CRLF"),
            (Data(_), _) => return Err("chunk data is skipped, not stepped"),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (DataCr | DataLf, _) => return Err("a chunk's data does not end with CRLF"),
            (EndCr, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (EndCr | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => EndCr,
            (EndLf, b'\n') => return Ok(None),
            (TrailerLf | EndLf, _) => return Err("a trailer line does not end with CRLF"),
        }))
    }

    /// Passes over up to `available` bytes of chunk data: how many it takes, and the
    /// position after them.
    pub fn skip(self, available: u64) -> (u64, Chunked) {
        match self {
            Chunked::Data(left) if available < left => (available, Chunked::Data(left - available)),
            Chunked::Data(left) => (left, Chunked::DataCr),
            other => (0, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size a chunk-size line (without its LF) gives, read through [`Chunked::step`].
    fn size_line(line: &[u8]) -> Option<u64> {
        let mut at = Chunked::Start;
        for &b in line.iter().chain(b"\n") {
            at = at.step(b).ok()??;
        }
        match at {
            Chunked::Data(n) => Some(n),
            Chunked::EndCr => Some(0),
            _ => None,
        }
    }

    #[test]
    fn chunk_size_lines_take_hex_and_extensions() {
        assert_eq!(size_line(b"1F\r"), Some(31));
        assert_eq!(size_line(b"a ; x=\"y\"\r"), Some(10));
        assert_eq!(size_line(b"0\r"), Some(0));
        assert_eq!(size_line(b"ffffffffffffffff\r"), Some(u64::MAX));
        assert_eq!(size_line(b"00000000000000000001\t;x\r"), Some(1));
        for bad in [
            &b"1F"[..],
            b"\r",
            b" 1\r",
            b"1 2\r",
            b"-1\r",
            b"1;\r\r",
            b"1\x0c\r",
            b"10000000000000000\r",
            b"1;x\ny\r",
        ] {
            assert_eq!(size_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_trailers_and_crlf() {
        let mut at = Chunked::Start;
        let wire = b"3\r\nabc\r\n0\r\nx: 1\r\n\r\n";
        let mut i = 0;
        while i < wire.len() {
            if let Chunked::Data(_) = at {
                let (taken, next) = at.skip((wire.len() - i) as u64);
                i += taken as usize;
                at = next;
                continue;
            }
            match at.step(wire[i]).unwrap() {
                Some(next) => at = next,
                None => break,
            }
            i += 1;
        }
        assert_eq!(i, wire.len() - 1, "the body ends at its last LF");
        assert_eq!(Chunked::Data(5).skip(3), (3, Chunked::Data(2)));
        assert_eq!(Chunked::Data(5).skip(9), (5, Chunked::DataCr));
    }
}
