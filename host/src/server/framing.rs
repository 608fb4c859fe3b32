//! HTTP/1.x request framing, checked below the HTTP parser.
//!
//! hyper resolves some ambiguous framings by itself (with both Content-Length and
//! Transfer-Encoding it drops the length; equal repeated lengths become one) and hands
//! weir a request in which the ambiguity can no longer be seen. A load balancer should
//! refuse such requests outright, since the server behind it, or a proxy in front, may
//! read them differently. [`FramingGuard`] sits between the client connection and hyper,
//! follows the message boundaries of the byte stream (heads, Content-Length bodies,
//! chunked bodies), and checks each request head before hyper sees any of it. A head it
//! refuses is never passed on: the connection finishes the response in progress, if any,
//! then answers the refused request itself and closes. It does not parse a head in full
//! (hyper does that next): one pass over its lines finds where it ends and what its
//! framing headers say, reading the same lines as hyper's parser for every head that
//! parser accepts.
//!
//! What it refuses: Content-Length together with Transfer-Encoding (400), more than one
//! Content-Length (400), a line ending in a bare LF (400), a transfer coding other than
//! `chunked` (501), a request line over [`MAX_REQUEST_LINE`] (414), and a head over
//! `max_header_size` or with more than `max_headers` headers (431). Everything else that
//! is malformed is left to hyper, which answers 400 and closes; once hyper's parser
//! refuses a head that is still incomplete, or a chunked body is malformed, the guard
//! just passes bytes through, as it does after an upgrade or CONNECT request.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::http1::{Chunked, Rejection, parse_length};

/// The longest request line accepted (method, target and version); longer gets 414. A
/// smaller `max_header_size` lowers it.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The headers httparse reads of an incomplete head (on the stack) to tell whether it
/// refuses the head already; past them it only says there are more, which is no refusal.
const STACK_HEADERS: usize = 128;

/// The limits a head is checked against: the frontend's.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_size: usize,
    pub max_headers: usize,
}

impl Limits {
    fn request_line(&self) -> usize {
        MAX_REQUEST_LINE.min(self.max_header_size)
    }
}

/// Where the guard is in the request stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Expecting a request head.
    Head,
    /// This many bytes of a Content-Length body still to come.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
    /// No longer checking: after an upgrade or CONNECT request, or bytes hyper refuses.
    Open,
}

/// What the guard found on one connection, shared with the service that answers its
/// requests: the connection is asked to close only once every request passed on before
/// the refused one has been answered, so that responses stay in order.
#[derive(Default)]
pub struct Verdict {
    rejected: OnceLock<Rejection>,
    /// The refusal's answer as written (`proxy::local::refusal`), and its status.
    answer: OnceLock<(u16, Bytes)>,
    close: Notify,
    /// Request heads passed on to hyper, and requests answered.
    passed: AtomicU64,
    answered: AtomicU64,
}

impl Verdict {
    /// The refused head, once there is one.
    pub fn rejection(&self) -> Option<&Rejection> {
        self.rejected.get()
    }

    /// The refusal's answer is ready: the guard writes it before the connection closes.
    pub fn set_answer(&self, status: u16, bytes: Vec<u8>) {
        let _ = self.answer.set((status, Bytes::from(bytes)));
    }

    /// The status the refused head was answered with.
    pub fn answered_status(&self) -> Option<u16> {
        self.answer
            .get()
            .map(|(status, _)| *status)
            .or_else(|| self.rejection().map(|r| r.status))
    }

    /// Resolves once a head was refused and every request before it was answered.
    pub async fn closing(&self) {
        self.close.notified().await
    }

    /// Called as each request's response is handed to hyper.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::SeqCst);
        self.maybe_close();
    }

    fn refuse(&self, rejection: Rejection) {
        let _ = self.rejected.set(rejection);
        self.maybe_close();
    }

    fn maybe_close(&self) {
        if self.rejected.get().is_some()
            && self.answered.load(Ordering::SeqCst) >= self.passed.load(Ordering::SeqCst)
        {
            self.close.notify_one();
        }
    }
}

/// Checks HTTP/1.x request framing on a client connection before hyper reads it.
pub struct FramingGuard<T> {
    inner: T,
    state: State,
    limits: Limits,
    /// An incomplete request head, held back until it is complete and checked.
    held: Vec<u8>,
    /// Checked bytes still to be passed on (when more were ready than hyper could take).
    ready: Bytes,
    verdict: Arc<Verdict>,
    /// What is still to be written of the refusal's response, once it is due.
    reply: Option<Bytes>,
    /// The socket was asked to acknowledge at once for the request under way (once per
    /// request is enough: the ACK that releases the client's next segment).
    acked: bool,
    /// Told when a request head begins to come, for the log's idle time.
    activity: Option<Arc<crate::activity::Activity>>,
}

impl<T> FramingGuard<T> {
    pub fn new(inner: T, limits: Limits, verdict: Arc<Verdict>) -> Self {
        Self {
            inner,
            state: State::Head,
            limits,
            held: Vec::new(),
            ready: Bytes::new(),
            verdict,
            reply: None,
            acked: false,
            activity: None,
        }
    }

    /// Tells `activity` when each request head begins to come.
    pub fn with_activity(mut self, activity: Arc<crate::activity::Activity>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// What it finds, for the service answering the connection's requests.
    pub fn verdict(&self) -> Arc<Verdict> {
        Arc::clone(&self.verdict)
    }

    /// A request is under way (part of a head held back, or a body still to come): what
    /// came may need acknowledging at once for the rest to be sent.
    fn waits_for_more(&self) -> bool {
        !self.acked
            && (!self.held.is_empty() || matches!(self.state, State::Body(_) | State::Chunked(_)))
    }

    fn rejected(&self) -> bool {
        self.verdict.rejected.get().is_some()
    }

    /// Follows `data` (the stream's next bytes) from the current state. Returns how many
    /// of them may be passed on now; the rest is an incomplete head (to hold back), or
    /// a refused head (dropped, with the refusal recorded).
    fn scan(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            match self.state {
                State::Open => return data.len(),
                State::Body(left) => {
                    let n = left.min((data.len() - at) as u64);
                    at += n as usize;
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Body(left - n)
                    };
                }
                State::Chunked(chunk @ Chunked::Data(_)) => {
                    let (n, next) = chunk.skip((data.len() - at) as u64);
                    at += n as usize;
                    self.state = State::Chunked(next);
                }
                State::Chunked(chunk) => {
                    self.state = match chunk.step(data[at]) {
                        Ok(Some(next)) => State::Chunked(next),
                        Ok(None) => State::Head,
                        // Malformed: hyper refuses the body and closes the connection.
                        Err(_) => State::Open,
                    };
                    at += 1;
                }
                State::Head => match self.head(&data[at..]) {
                    Head::Incomplete => return at,
                    Head::Refused(rejection) => {
                        self.verdict.refuse(rejection);
                        return at;
                    }
                    Head::Next(len, state) => {
                        self.verdict.passed.fetch_add(1, Ordering::SeqCst);
                        self.acked = false;
                        at += len;
                        self.state = state;
                    }
                },
            }
        }
        at
    }

    /// Reads the request head at the start of `data`.
    fn head(&self, data: &[u8]) -> Head {
        let Some(head) = Scanned::head(data) else {
            return self.incomplete(data);
        };
        let len = head.len;
        let refuse = |status, reason| {
            let (method, target) = request_line_parts(head.request_line);
            Head::Refused(Rejection {
                status,
                reason,
                method,
                target,
                head_bytes: len as u64,
            })
        };
        if head.request_line.len() > self.limits.request_line() {
            return refuse(414, "the request line is too long");
        }
        if len > self.limits.max_header_size {
            return refuse(431, "the request head is too large");
        }
        if head.headers > self.limits.max_headers {
            return refuse(431, "too many request headers");
        }
        if head.bare_lf {
            return refuse(400, "a line ends in a bare LF");
        }
        if head.lengths > 1 {
            return refuse(400, "more than one Content-Length");
        }
        if head.chunked && head.length.is_some() {
            return refuse(400, "both Content-Length and Transfer-Encoding");
        }
        if head.unsupported_coding {
            return refuse(501, "unsupported transfer coding");
        }
        let upgrade = head.upgrade || head.request_line.starts_with(b"CONNECT ");
        let next = if upgrade || !head.only_chunked {
            State::Open
        } else if head.chunked {
            // A repeated `chunked`, or chunked in HTTP/1.0, is refused after hyper parses
            // it; the body is followed all the same.
            State::Chunked(Chunked::Start)
        } else if let Some(length) = head.length {
            match parse_length(length) {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                // hyper refuses an invalid length.
                None => State::Open,
            }
        } else {
            State::Head
        };
        Head::Next(len, next)
    }

    /// A head not complete yet: refused when it is already too long, passed on as it is
    /// when the parser hyper uses refuses it already (hyper answers 400 and closes), else
    /// held until the rest comes.
    fn incomplete(&self, data: &[u8]) -> Head {
        let start = skip_empty_lines(data);
        let line = memchr::memchr(b'\n', &data[start..]).unwrap_or(data.len() - start);
        let refuse = |status, reason| {
            let (method, target) = request_line_parts(&data[start..start + line]);
            Head::Refused(Rejection {
                status,
                reason,
                method,
                target,
                head_bytes: data.len() as u64,
            })
        };
        if line > self.limits.request_line() {
            return refuse(414, "the request line is too long");
        }
        if data.len() > self.limits.max_header_size {
            return refuse(431, "the request head is too large");
        }
        // Header lines complete so far (the request line's end is not one).
        let lines = memchr::memchr_iter(b'\n', &data[start..]).count();
        if lines.saturating_sub(1) > self.limits.max_headers {
            return refuse(431, "too many request headers");
        }
        let mut stack = [const { MaybeUninit::<httparse::Header>::uninit() }; STACK_HEADERS];
        match httparse::Request::new(&mut []).parse_with_uninit_headers(data, &mut stack) {
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Head::Incomplete,
            Err(_) => Head::Next(data.len(), State::Open),
        }
    }
}

/// What one pass over a complete request head found. Only a head that hyper's parser
/// (httparse) accepts reaches a server, and for those this reads the same lines: the
/// head ends at the first empty line after the request line (empty lines before it are
/// skipped, as httparse skips them), and a header's name is what comes before its
/// colon. A head that httparse refuses is passed on as well; hyper answers it with 400
/// and closes the connection.
struct Scanned<'a> {
    /// The head's length, the empty line that ends it included.
    len: usize,
    request_line: &'a [u8],
    headers: usize,
    bare_lf: bool,
    /// Content-Length headers, and the first one's value.
    lengths: usize,
    length: Option<&'a [u8]>,
    /// Transfer-Encoding is present; every coding in it is `chunked`; one of them is a
    /// token other than `chunked`.
    chunked: bool,
    only_chunked: bool,
    unsupported_coding: bool,
    upgrade: bool,
}

impl<'a> Scanned<'a> {
    /// The head at the start of `data`, or None while it is incomplete.
    fn head(data: &'a [u8]) -> Option<Self> {
        let start = skip_empty_lines(data);
        let mut scanned = Scanned {
            len: 0,
            request_line: &[],
            headers: 0,
            bare_lf: false,
            lengths: 0,
            length: None,
            chunked: false,
            only_chunked: true,
            unsupported_coding: false,
            upgrade: false,
        };
        let mut at = start;
        loop {
            let end = at + memchr::memchr(b'\n', &data[at..])?;
            let line = match data[at..end].strip_suffix(b"\r") {
                Some(line) => line,
                None => {
                    scanned.bare_lf = true;
                    &data[at..end]
                }
            };
            if at == start {
                scanned.request_line = line;
            } else if line.is_empty() {
                scanned.len = end + 1;
                return Some(scanned);
            } else {
                scanned.headers += 1;
                scanned.header(line);
            }
            at = end + 1;
        }
    }

    /// Notes what a header line says about the framing.
    fn header(&mut self, line: &'a [u8]) {
        // The names that matter begin with c, t or u: most lines need no closer look.
        if !matches!(line[0] | 0x20, b'c' | b't' | b'u') {
            return;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            self.lengths += 1;
            self.length.get_or_insert(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.chunked = true;
            for coding in value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if !coding.eq_ignore_ascii_case(b"chunked") {
                    self.only_chunked = false;
                    self.unsupported_coding |= is_token(coding);
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }
}

/// Where the request line starts: after the empty lines httparse skips before it.
fn skip_empty_lines(data: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match data.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            _ if data.get(at) == Some(&b'\n') => at += 1,
            _ => return at,
        }
    }
}

/// A request line's method and target, for the log line of a refused head.
fn request_line_parts(line: &[u8]) -> (Option<String>, Option<String>) {
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let mut text = || {
        parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    };
    (text(), text())
}

enum Head {
    /// More bytes are needed.
    Incomplete,
    Refused(Rejection),
    /// A head of this length, and the state after it.
    Next(usize, State),
}

/// An HTTP token (RFC 9110 §5.6.2), as a transfer coding's name must be.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl<T: AsyncRead + Unpin + crate::net::AckNow> AsyncRead for FramingGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.rejected() {
                // Nothing more is read; the connection is finishing and will close.
                return Poll::Pending;
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let after = buf.filled().len();
            if after == before {
                // End of stream: an incomplete head goes on as it is, for hyper to judge.
                if this.held.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.state = State::Open;
                this.ready = Bytes::from(std::mem::take(&mut this.held));
                continue;
            }
            if this.held.is_empty() && this.state == State::Head {
                // The first bytes of a head: how long the connection was idle ends here.
                if let Some(a) = &this.activity {
                    a.head_began();
                }
            }
            if this.held.is_empty() {
                // The usual case: check the bytes where they are, in hyper's buffer.
                let passed = this.scan(&buf.filled()[before..after]);
                if !this.rejected() {
                    this.held
                        .extend_from_slice(&buf.filled()[before + passed..after]);
                }
                buf.set_filled(before + passed);
                if this.waits_for_more() {
                    this.inner.ack_now();
                    this.acked = true;
                }
                if passed > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // A head that came in pieces: check it once the rest is here.
                this.held.extend_from_slice(&buf.filled()[before..after]);
                buf.set_filled(before);
                let mut checked = Bytes::from(std::mem::take(&mut this.held));
                let passed = this.scan(&checked);
                let rest = checked.split_off(passed);
                if !this.rejected() {
                    this.held = rest.to_vec();
                }
                this.ready = checked;
                if this.waits_for_more() {
                    this.inner.ack_now();
                    this.acked = true;
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    crate::net::write_through!();

    /// Before the connection closes, the refused request gets its answer.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.reply.is_none()
            && let Some(rejection) = this.verdict.rejection()
        {
            this.reply = Some(match this.verdict.answer.get() {
                Some((_, answer)) => answer.clone(),
                None => Bytes::from(rejection.response()),
            });
        }
        if let Some(reply) = &mut this.reply {
            while !reply.is_empty() {
                let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, reply))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                reply.advance(n);
            }
            std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
