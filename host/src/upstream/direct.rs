//! HTTP/1.1 exchanges with a server, driven by the request's own task: for requests
//! without a body on plain TCP connections, which are most requests.
//!
//! hyper's client connection runs as a task of its own and takes requests and gives back
//! responses and their bodies through channels: per request, two more task switches, four
//! channel passes and a second read buffer. Here the request's task writes the head and
//! reads the response head, and the response body reads its bytes from the socket as the
//! client takes them. The connection goes back to the pool when the body has been read to
//! its end. Requests with a body (which may go on after the response has begun), upgrades,
//! TLS and HTTP/2 keep hyper's client; an idle connection of this kind becomes one of
//! hyper's when such a request takes it.
//!
//! Responses are read as hyper reads them (RFC 9112 §6.3): no body after HEAD, 1xx, 204
//! and 304; chunked when Transfer-Encoding ends in chunked, else (and without
//! Content-Length) up to the connection's end; Content-Length values must agree;
//! informational responses are skipped (a test compares the two on generated responses).
//! A connection is kept only when the response said nothing against it, was read to its
//! end and nothing followed it.

use std::fmt::Write as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http1::{Chunked, last_token_is, list_has, parse_length};

/// The most header fields in a response head or trailer section (hyper's default).
const MAX_HEADERS: usize = 100;
/// The largest response head, and what may be buffered while looking for its end
/// (hyper's default read buffer limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// The largest trailer section (hyper's limit).
const MAX_TRAILERS: usize = 16 * 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8192;

/// An HTTP/1.1 connection to a server, idle between exchanges.
pub struct Conn {
    io: TcpStream,
    /// Read from the server and not yet used; empty while the connection is idle.
    buf: BytesMut,
    /// The request head being written (kept for its room).
    out: Vec<u8>,
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// Writing the request head failed: no response was read.
    Write(io::Error),
    /// The response head was broken, too large or never came.
    Response(String),
}

/// What decides where a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// At this position of a chunked body, with this many bytes of the current
    /// chunk-size line read, or of the trailer section seen (still in the buffer).
    Chunked(Chunked, usize),
    /// Up to the connection's end.
    Eof,
    /// Read to its end.
    Done,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// The socket, for hyper's client to take over (an idle connection has nothing
    /// buffered).
    pub fn into_stream(self) -> TcpStream {
        debug_assert!(self.buf.is_empty());
        self.io
    }

    /// Whether an idle connection can take a request: the server has neither closed it
    /// nor sent anything since the last response. Costs a system call only when the
    /// socket was reported readable.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Sends `req`'s head and reads the response's; the response body takes the
    /// connection. The request has no body.
    pub async fn exchange<B>(mut self, req: &Request<B>) -> Result<Response<Body>, Failure> {
        encode(&mut self.out, req);
        self.io.write_all(&self.out).await.map_err(Failure::Write)?;
        loop {
            if !self.buf.is_empty()
                && let Some((head, state)) = parse_head(&mut self.buf, req.method())?
            {
                return Ok(Response::from_parts(head, Body::new(self, state)));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Failure::Response("the response head is too large".into()));
            }
            let n = std::future::poll_fn(|cx| fill(&mut self.io, &mut self.buf, cx))
                .await
                .map_err(|e| Failure::Response(format!("reading the response: {e}")))?;
            if n == 0 {
                return Err(Failure::Response(
                    "the connection closed before the response head".into(),
                ));
            }
        }
    }
}

/// Reads what the socket has into `buf`, making room first. `Ok(0)`: the server closed.
fn fill(io: &mut TcpStream, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 8 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The request head as HTTP/1.1 writes it. Transfer-Encoding is left out: the request
/// has no body (as hyper's client does).
fn encode<B>(out: &mut Vec<u8>, req: &Request<B>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let uri = req.uri();
    match (uri.scheme(), uri.path_and_query()) {
        (None, Some(target)) => out.extend_from_slice(target.as_str().as_bytes()),
        _ => {
            let mut s = String::new();
            let _ = write!(s, "{uri}");
            out.extend_from_slice(s.as_bytes());
        }
    }
    out.extend_from_slice(if req.version() == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in req.headers() {
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the body of a response just parsed is read, and whether its connection may be
/// kept.
#[derive(Debug)]
struct BodyState {
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head at the start of `buf`, taking it out. `None`: more is needed
/// (or an informational response was skipped and nothing follows it yet).
fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<(http::response::Parts, BodyState)>, Failure> {
    let bad = |why: &dyn std::fmt::Display| Failure::Response(format!("invalid response: {why}"));
    loop {
        // Where each field's name and value are in the head, to be cut from it once the
        // head is taken out of `buf`.
        let mut spans = [[0u32; 4]; MAX_HEADERS];
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(bad(&e)),
        };
        let code = res.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|e| bad(&e))?;
        let version = if res.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let reason = res
            .reason
            .filter(|r| Some(*r) != status.canonical_reason())
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r.as_bytes()).ok());
        let base = buf.as_ptr() as usize;
        let count = res.headers.len();
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            *span = [
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            ];
        }
        let head = buf.split_to(len).freeze();
        if (100..200).contains(&code) && code != 101 {
            // Informational: skipped, as hyper's client does.
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }

        // One pass over the fields: the framing and keep-alive are read as the map is
        // built (looking them up after would cost three more hash probes per response).
        let mut headers = HeaderMap::with_capacity(count);
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        let mut lengths: Option<Option<u64>> = None;
        let mut chunked = None;
        for &[ns, ne, vs, ve] in &spans[..count] {
            let name =
                HeaderName::from_bytes(&head[ns as usize..ne as usize]).map_err(|e| bad(&e))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
                .map_err(|e| bad(&e))?;
            if name == CONNECTION {
                // Once any Connection field asks to close, a later keep-alive cannot undo it.
                if saw_close || list_has(&value, "close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = list_has(&value, "keep-alive");
                }
            } else if name == CONTENT_LENGTH {
                let parsed = content_length(&value);
                lengths = Some(match (lengths, parsed) {
                    (None, n) => n,
                    (Some(Some(a)), Some(b)) if a == b => Some(a),
                    _ => None,
                });
            } else if name == TRANSFER_ENCODING {
                // The last field's last coding decides.
                chunked = Some(last_token_is(&value, "chunked"));
            }
            headers.append(name, value);
        }

        let framing = if code == 101 || code == 204 || code == 304 || method == Method::HEAD {
            Framing::Length(0)
        } else if let Some(chunked) = chunked {
            if version == Version::HTTP_10 {
                return Err(bad(&"Transfer-Encoding in an HTTP/1.0 response"));
            }
            if lengths.is_some() {
                // Both: the coding decides, and the connection is not trusted after.
                keep_alive = false;
            }
            if chunked {
                Framing::Chunked(Chunked::Start, 0)
            } else {
                Framing::Eof
            }
        } else {
            match lengths {
                Some(Some(n)) => Framing::Length(n),
                Some(None) => return Err(bad(&"Content-Length")),
                None => Framing::Eof,
            }
        };
        if framing == Framing::Eof || code == 101 {
            keep_alive = false;
        }

        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        let (parts, ()) = response.into_parts();
        return Ok(Some((
            parts,
            BodyState {
                framing,
                keep_alive,
            },
        )));
    }
}

/// A Content-Length value: one number, or a list of the same number. `None`: invalid.
fn content_length(value: &HeaderValue) -> Option<u64> {
    let mut found = None;
    for part in value.to_str().ok()?.split(',') {
        let n = parse_length(part.as_bytes())?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    // The largest length hyper accepts; larger ones are refused as it refuses them.
    found.filter(|&n| n <= u64::MAX - 2)
}

/// A response body read from its connection, which it owns until the body's end.
pub struct Body {
    conn: Option<Conn>,
    state: BodyState,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

impl Body {
    fn new(conn: Conn, state: BodyState) -> Self {
        Self {
            conn: Some(conn),
            state,
        }
    }

    /// The connection, if the body has been read to its end and the connection can take
    /// another request.
    pub fn take_idle(&mut self) -> Option<Conn> {
        let done = http_body::Body::is_end_stream(self);
        if !(done && self.state.keep_alive) {
            return None;
        }
        self.conn.take().filter(|c| c.buf.is_empty())
    }

    /// Closes the connection now (the body will not be read to its end).
    pub fn abandon(&mut self) {
        self.conn = None;
    }

    /// Ends the body with an error and closes the connection (the body is not at its end,
    /// so a later poll gets an error too).
    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(BodyError(why))))
    }

    /// Reads more into the buffer; a clean end is an error where the framing expected more.
    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, String>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Err("the connection is closed".into()));
        };
        match ready!(fill(&mut conn.io, &mut conn.buf, cx)) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(format!("reading the response body: {e}"))),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return match this.state.framing {
                    Framing::Done | Framing::Length(0) => Poll::Ready(None),
                    _ => this.fail("the connection is closed".into()),
                };
            };
            let buf = &mut conn.buf;
            match this.state.framing {
                Framing::Done | Framing::Length(0) => {
                    this.state.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !buf.is_empty() {
                        let take = left.min(buf.len() as u64);
                        this.state.framing = Framing::Length(left - take);
                        let data = buf.split_to(take as usize).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Eof => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                }
                Framing::Chunked(chunk, seen) => match decode_chunk(buf, chunk, seen) {
                    Ok(Step::Next(next, frame)) => {
                        this.state.framing = next;
                        if let Some(frame) = frame {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        continue;
                    }
                    Ok(Step::More(at)) => this.state.framing = at,
                    Err(why) => return this.fail(why),
                },
            }
            // More is needed from the server.
            match ready!(this.read_more(cx)) {
                Ok(0) if this.state.framing == Framing::Eof => {
                    this.state.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the server closed the connection mid-body".into()),
                Ok(_) => {}
                Err(why) => return this.fail(why),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What the chunked decoder did with what was buffered.
enum Step {
    /// Moved on, with a frame to pass on or none.
    Next(Framing, Option<Frame<Bytes>>),
    /// Needs more bytes, from this position on.
    More(Framing),
}

/// One step of the chunked decoder over `buf`, at `chunk` with `seen` bytes of the
/// current line or trailer section read (see [`Framing::Chunked`]). The positions are
/// [`Chunked`]'s, so the body ends where hyper would end it.
fn decode_chunk(buf: &mut BytesMut, chunk: Chunked, seen: usize) -> Result<Step, String> {
    match chunk {
        Chunked::Data(_) => {
            if buf.is_empty() {
                return Ok(Step::More(Framing::Chunked(chunk, 0)));
            }
            let (take, next) = chunk.skip(buf.len() as u64);
            let data = buf.split_to(take as usize).freeze();
            Ok(Step::Next(
                Framing::Chunked(next, 0),
                Some(Frame::data(data)),
            ))
        }
        Chunked::EndCr | Chunked::Trailer | Chunked::TrailerLf | Chunked::EndLf => {
            trailers(buf, chunk, seen)
        }
        _ => {
            // A chunk-size line, or the CRLF after a chunk's data: used up as it is read.
            let (mut at, mut line) = (chunk, seen);
            let mut used = 0;
            while used < buf.len() {
                let next = at.step(buf[used])?.ok_or("a chunked body ended early")?;
                used += 1;
                line = if next == Chunked::Start { 0 } else { line + 1 };
                if line > MAX_CHUNK_LINE {
                    return Err("a chunk-size line is too long".into());
                }
                at = next;
                if matches!(at, Chunked::Data(_) | Chunked::EndCr) {
                    buf.advance(used);
                    return Ok(Step::Next(Framing::Chunked(at, 0), None));
                }
            }
            buf.advance(used);
            Ok(Step::More(Framing::Chunked(at, line)))
        }
    }
}

/// The trailer section after the last chunk (`seen` bytes of it already followed), kept
/// in `buf` until its final CRLF: then read as hyper reads it, fields and all.
fn trailers(buf: &mut BytesMut, chunk: Chunked, seen: usize) -> Result<Step, String> {
    let mut at = chunk;
    for (i, &b) in buf.iter().enumerate().skip(seen) {
        if i >= MAX_TRAILERS {
            return Err("the trailer section is too large".into());
        }
        let Some(next) = at.step(b)? else {
            let len = i + 1;
            let frame = (len > 2).then(|| trailer_fields(&buf[..len])).transpose()?;
            buf.advance(len);
            return Ok(Step::Next(Framing::Done, frame.map(Frame::trailers)));
        };
        at = next;
    }
    Ok(Step::More(Framing::Chunked(at, buf.len())))
}

/// The fields of a whole trailer section (ending in an empty line).
fn trailer_fields(section: &[u8]) -> Result<HeaderMap, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((n, fields))) if n == section.len() => fields,
        Ok(_) => return Err("invalid trailer section".into()),
        Err(e) => return Err(format!("invalid trailer section: {e}")),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|e| format!("invalid trailer: {e}"))?;
        let value =
            HeaderValue::from_bytes(f.value).map_err(|e| format!("invalid trailer: {e}"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        raw: &[u8],
        method: Method,
    ) -> Result<Option<(http::response::Parts, BodyState)>, Failure> {
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
        let wire =
            b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 7\r\n\r\nNEXT";
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
}
