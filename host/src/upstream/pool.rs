//! Connections to one server. HTTP/1.1: keep-alive connections, one request at a time; a
//! connection goes back to the pool once its response has been read to the end, the most
//! recently used is reused first, and idle ones are closed after `pool_idle_timeout` or
//! beyond `pool_max_idle`. A plain-TCP connection serves bodiless requests itself
//! ([`super::direct`]) and is handed to hyper's client for the others. HTTP/2: one
//! connection shared by all requests, opened again when it closes. New connections are
//! dialed by [`super::connect`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::{AckNow, write_through};

use super::body::ClientBody;
use super::connect::{self, ConnectError, Dial, Stream};
use super::direct;

/// A connection's request side.
pub enum Sender {
    /// Driven by the request's task (bodiless requests on plain TCP).
    Direct(direct::Conn),
    /// Driven by hyper's client, in a task of its own.
    Hyper(Hyper),
}

/// A connection hyper's client drives.
pub enum Hyper {
    H1(http1::SendRequest<ClientBody>),
    H2(http2::SendRequest<ClientBody>),
}

impl Hyper {
    /// Sends a request; on an error before it was written, the request comes back.
    /// (Not an `async fn`: that would hold room for both protocols' futures, where an
    /// `Either` holds one or the other, and every request's future is smaller by one.)
    pub fn try_send_request(
        &mut self,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ClientBody>>>> + use<>
    {
        match self {
            Hyper::H1(s) => Either::Left(s.try_send_request(req)),
            Hyper::H2(s) => Either::Right(s.try_send_request(req)),
        }
    }
}

impl Sender {
    /// This connection ready for a request: a direct one as it is when `direct`, else
    /// handed to hyper's client. `None`: the connection could not be handed over.
    fn for_request(self, direct: bool, addr: SocketAddr) -> Option<Sender> {
        match self {
            Sender::Direct(conn) if !direct => {
                // hyper's HTTP/1.1 handshake does no I/O: it is ready when first polled.
                let handshake = handshake(conn.into_stream(), addr, false);
                futures_util::FutureExt::now_or_never(handshake)?.ok()
            }
            s => Some(s),
        }
    }

    /// Whether requests go out as HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::Hyper(Hyper::H2(_)))
    }
}

pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, shared (servers with `proto = "h2"`).
    h2: bool,
    shared: Mutex<Option<http2::SendRequest<ClientBody>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    /// `Direct` or HTTP/1.1 `Hyper`.
    sender: Sender,
    since: Instant,
}

impl Idle {
    /// Whether the connection is still open and can take a request.
    fn is_open(&mut self) -> bool {
        match &mut self.sender {
            Sender::Direct(c) => c.is_open(),
            Sender::Hyper(Hyper::H1(s)) => s.is_ready(),
            Sender::Hyper(Hyper::H2(s)) => !s.is_closed(),
        }
    }
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration, h2: bool) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            h2,
            shared: Mutex::new(None),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared HTTP/2 connection if it is open, else the most recently used idle
    /// HTTP/1.1 connection that is still open and fresh (idle less than the timeout at
    /// `now`), ready for a request that is `direct` (see [`Sender::for_request`]).
    pub fn take(&self, now: Instant, direct: bool, addr: SocketAddr) -> Option<Sender> {
        if self.h2 {
            return self
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|s| !s.is_closed() && s.is_ready())
                .map(|s| Sender::Hyper(Hyper::H2(s.clone())));
        }
        let mut idle = self.lock();
        while let Some(mut c) = idle.pop() {
            if now.duration_since(c.since) < self.idle_timeout
                && c.is_open()
                && let Some(sender) = c.sender.for_request(direct, addr)
            {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps an HTTP/1.1 connection for reuse, if there is room (made by closing expired
    /// or closed ones when full; otherwise the generation's periodic sweep closes them).
    fn put(&self, sender: Sender, now: Instant) {
        let mut idle = self.lock();
        if idle.len() >= self.max_idle {
            Self::purge_locked(&mut idle, self.idle_timeout);
        }
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Closes idle connections that expired or that the server closed.
    pub fn purge(&self) {
        Self::purge_locked(&mut self.lock(), self.idle_timeout);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if shared.as_ref().is_some_and(|s| s.is_closed()) {
            *shared = None;
        }
    }

    fn purge_locked(idle: &mut Vec<Idle>, timeout: Duration) {
        let now = Instant::now();
        idle.retain_mut(|c| now.duration_since(c.since) < timeout && c.is_open());
    }

    /// Returns an HTTP/1.1 `sender` to the pool; called once its response has been read
    /// to the end. By then the connection has nearly always taken in the response's end
    /// and is ready for the next request, so it goes straight back; if not yet, a small
    /// task waits for it. A connection that never becomes ready (the server closed it,
    /// or the response was cut short) is dropped. An HTTP/2 connection stays shared
    /// anyway. `now`: the caller's clock reading, when the response ended.
    pub fn recycle(self: &Arc<Self>, sender: Sender, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        let mut sender = match sender {
            Sender::Hyper(Hyper::H2(_)) => return,
            direct @ Sender::Direct(_) => return self.put(direct, now),
            Sender::Hyper(Hyper::H1(sender)) => sender,
        };
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.put(Sender::Hyper(Hyper::H1(sender)), now);
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(Sender::Hyper(Hyper::H1(sender)), Instant::now());
            }
        });
    }

    /// Opens a new connection within `timeout` (TLS handshake included), for a request
    /// that is `direct` (see [`Sender::for_request`]). An HTTP/2 one becomes the shared
    /// connection.
    pub async fn connect(
        &self,
        dial: Dial<'_>,
        timeout: Duration,
        direct: bool,
    ) -> Result<Sender, ConnectError> {
        // Boxed: the TCP, TLS and HTTP handshakes make a large future, which would
        // otherwise be part of every request's future, connection reused or not.
        Box::pin(self.open(dial, timeout, direct)).await
    }

    async fn open(
        &self,
        dial: Dial<'_>,
        timeout: Duration,
        direct: bool,
    ) -> Result<Sender, ConnectError> {
        let addr = dial.addr;
        let opened = async {
            match connect::dial(&dial).await? {
                Stream::Plain(stream) if direct && !self.h2 => {
                    Ok(Sender::Direct(direct::Conn::new(stream)))
                }
                Stream::Plain(stream) => handshake(stream, addr, self.h2).await,
                Stream::Tls(stream) => handshake(stream, addr, self.h2).await,
            }
        };
        let sender = match tokio::time::timeout(timeout, opened).await {
            Err(_) => return Err(ConnectError::Timeout(addr)),
            Ok(result) => result?,
        };
        if let Sender::Hyper(Hyper::H2(h2)) = &sender {
            *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(h2.clone());
        }
        Ok(sender)
    }
}

/// The HTTP/1.1 or HTTP/2 handshake on an open connection; the connection is driven by a
/// task of its own.
async fn handshake<I>(io: I, addr: SocketAddr, h2: bool) -> Result<Sender, ConnectError>
where
    I: AsyncRead + AsyncWrite + AckNow + Unpin + Send + 'static,
{
    if h2 {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("HTTP/2 server connection to {addr} ended: {e}");
            }
        });
        Ok(Sender::Hyper(Hyper::H2(sender)))
    } else {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(AckAfterHead::new(io)))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("server connection to {addr} ended: {e}");
            }
        });
        Ok(Sender::Hyper(Hyper::H1(sender)))
    }
}

/// What hyper's HTTP/1.1 client reads a server through. When a read ended with the end of
/// a response head and the next one finds nothing yet, the socket acknowledges at once
/// ([`AckNow`]): a server that wrote the body apart from the head, with Nagle's algorithm
/// on, sends it without waiting 40 ms for the delayed ACK. A response that came whole
/// costs nothing; a bodiless one, a system call.
struct AckAfterHead<I> {
    inner: I,
    /// The last read ended with a response head, by [`ends_a_head`].
    head_ended: bool,
}

impl<I> AckAfterHead<I> {
    fn new(inner: I) -> Self {
        Self {
            inner,
            head_ended: false,
        }
    }
}

impl<I: AsyncRead + AckNow + Unpin> AsyncRead for AckAfterHead<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_pending() {
            if std::mem::take(&mut this.head_ended) {
                this.inner.ack_now();
            }
        } else {
            this.head_ended = ends_a_head(&buf.filled()[before..]);
        }
        read
    }
}

/// Whether `read` ends as a response head does: with an empty line, but not the one that
/// ends a chunked body (`0\r\n\r\n` after a chunk's `\r\n`), so that a whole chunked
/// response costs no system call either.
fn ends_a_head(read: &[u8]) -> bool {
    read.ends_with(b"\r\n\r\n") && !read.ends_with(b"\n0\r\n\r\n")
}

impl<I: AsyncWrite + Unpin> AsyncWrite for AckAfterHead<I> {
    write_through!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::ends_a_head;

    #[test]
    fn a_read_ends_a_head_at_its_empty_line_and_not_at_a_chunked_body_end() {
        assert!(ends_a_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"));
        assert!(ends_a_head(b"\r\n\r\n"));
        assert!(!ends_a_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        ));
        assert!(!ends_a_head(b"HTTP/1.1 200 OK\r\n"));
        // A whole chunked response, and a body's last chunks read apart from its head.
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert!(!ends_a_head(chunked));
        assert!(!ends_a_head(b"5\r\nhello\r\n0\r\n\r\n"));
        assert!(!ends_a_head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        ));
    }
}
