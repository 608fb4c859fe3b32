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
use crate::net::AckNow;

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
    /// Read from the server and not yet used; empty, and holding no room, while the
    /// connection is idle.
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
            if !self.buf.is_empty() {
                if let Some((head, state)) = parse_head(&mut self.buf, req.method())? {
                    if state.waits_for_more(&self.buf) {
                        self.io.ack_now();
                    }
                    return Ok(Response::from_parts(head, Body::new(self, state)));
                }
                // Part of the head came: the rest may wait on our ACK of it.
                self.io.ack_now();
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

/// Reads what the socket has into `buf`. `Ok(0)`: the server closed. Room is made only
/// once the socket is readable: a connection waiting for its server holds no buffer.
///
/// The read is tokio's `poll_read`, which takes a read that did not fill the room as
/// proof that the socket is drained and forgets its readiness until the next event: so
/// [`Conn::is_open`] on a connection back in the pool needs no system call to know that
/// nothing came since (a `try_read` would keep the readiness, and the next check would
/// pay a read that fails with EAGAIN on every request).
fn fill(io: &mut TcpStream, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    ready!(io.poll_read_ready(cx))?;
    if buf.capacity() - buf.len() < READ_SIZE / 8 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(std::pin::Pin::new(io), cx, buf)
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

impl BodyState {
    /// Whether more of the body must come from the server than `buf` holds.
    fn waits_for_more(&self, buf: &BytesMut) -> bool {
        match self.framing {
            Framing::Done => false,
            Framing::Length(left) => (buf.len() as u64) < left,
            Framing::Chunked(..) => !buf.ends_with(b"0\r\n\r\n"),
            Framing::Eof => true,
        }
    }
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
        let mut conn = self.conn.take().filter(|c| c.buf.is_empty())?;
        // An idle connection holds no room for reading: the buffer's block is freed once
        // the body's last bytes have been written to the client.
        conn.buf = BytesMut::new();
        Some(conn)
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
mod tests;
