//! A client connection's activity: when it last moved a byte and what weir waits on for
//! it (the client, a server, the rest of a request body, the next request head), which
//! decides its timeouts. The listener (`server`) sets it up; the request pipeline
//! (`proxy`) and the bodies it streams (`upstream`) mark what they wait on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last moved a byte, and whether weir is waiting on a server for it
/// (the server timeout governs that wait, not the client timeout) or on the client's
/// request body (which the client timeout governs even while a server waits for it);
/// and, for HTTP/1, since when it has been waiting for its next request head.
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    awaiting_server: AtomicU32,
    receiving_body: AtomicU32,
    /// Requests between their head and the end of their response.
    requests: AtomicU32,
    /// When the wait for the next request head began (the activity clock's
    /// milliseconds): the end of the last response, or the start of the connection.
    head_wait_ms: AtomicU64,
    /// No more request heads come: the connection became a tunnel.
    heads_over: AtomicBool,
    /// When the first bytes of the request head being read came (the activity clock's
    /// milliseconds; `u64::MAX`: not seen), for the log's idle and request times.
    head_began_ms: AtomicU64,
    /// The connection was closed because timeout.client ran out (the log's `c`).
    timed_out: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            awaiting_server: AtomicU32::new(0),
            receiving_body: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            head_wait_ms: AtomicU64::new(0),
            heads_over: AtomicBool::new(false),
            head_began_ms: AtomicU64::new(u64::MAX),
            timed_out: AtomicBool::new(false),
        }
    }
}

/// Why a connection's activity ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Idle for timeout.client while weir waited on the client.
    Client,
    /// No complete request head within timeout.http_request.
    Head,
}

impl Activity {
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long no byte has moved on the connection.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// `at` (a reading the caller took), else now, on the activity clock in milliseconds.
    fn ms_at_or_now(&self, at: Option<Instant>) -> u64 {
        match at {
            Some(at) => at.saturating_duration_since(self.base).as_millis() as u64,
            None => self.now_ms(),
        }
    }

    /// timeout.client ran out: the connection is being closed for it.
    pub fn time_out(&self) {
        self.timed_out.store(true, Ordering::Release);
    }

    /// Whether the connection was closed by timeout.client (else by the client).
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// The first bytes of a request head came now.
    pub fn head_began(&self) {
        self.head_began_ms.store(self.now_ms(), Ordering::Release);
    }

    /// When the first bytes of the request head came, once per head.
    pub fn take_head_began(&self) -> Option<std::time::Instant> {
        let ms = self.head_began_ms.swap(u64::MAX, Ordering::AcqRel);
        (ms != u64::MAX).then(|| self.base.into_std() + std::time::Duration::from_millis(ms))
    }

    /// The wait for the first request head begins now.
    pub fn await_heads(&self) {
        self.head_wait_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Marks a request from its head to the end of its response, until the guard drops;
    /// the wait for the next head then begins.
    pub fn request(self: &Arc<Self>) -> InRequest {
        self.requests.fetch_add(1, Ordering::AcqRel);
        InRequest {
            activity: Arc::clone(self),
            ended: None,
        }
    }

    /// The connection became a tunnel: no more request heads to wait for.
    pub fn upgraded(&self) {
        self.heads_over.store(true, Ordering::Release);
    }

    /// Marks a wait for a server's response head until the guard drops.
    pub fn awaiting_server(self: &Arc<Self>) -> AwaitingServer {
        self.awaiting_server.fetch_add(1, Ordering::AcqRel);
        AwaitingServer {
            activity: Arc::clone(self),
            ended: None,
        }
    }

    /// Marks a request body still to come from the client until the guard drops.
    pub fn receiving_body(self: &Arc<Self>) -> ReceivingBody {
        self.receiving_body.fetch_add(1, Ordering::AcqRel);
        ReceivingBody(Arc::clone(self))
    }

    /// Resolves once nothing has moved for `client` while weir was waiting on the client
    /// (for a request, or for the rest of a request body), not on a server; or, with
    /// `head`, once a request head has been awaited that long (HAProxy's
    /// `timeout http-request`: from the end of the previous response, or the start).
    ///
    /// One timer per connection, not one per request: it wakes at the earliest deadline
    /// it knows of, and at least every `head` while requests run. A head wait that
    /// begins later ends later than that, so it is never missed.
    pub async fn expired(&self, client: Duration, head: Option<Duration>) -> Expired {
        loop {
            let now = self.now_ms();
            let idle =
                Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)));
            let waiting = self.awaiting_server.load(Ordering::Acquire) > 0
                && self.receiving_body.load(Ordering::Acquire) == 0;
            if !waiting && idle >= client {
                return Expired::Client;
            }
            let mut wait = if waiting { client } else { client - idle };
            if let Some(limit) = head
                && !self.heads_over.load(Ordering::Acquire)
            {
                if self.requests.load(Ordering::Acquire) == 0 {
                    let since = Duration::from_millis(
                        now.saturating_sub(self.head_wait_ms.load(Ordering::Acquire)),
                    );
                    if since >= limit {
                        return Expired::Head;
                    }
                    wait = wait.min(limit - since);
                } else {
                    wait = wait.min(limit);
                }
            }
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// A request in progress on its connection; see [`Activity::request`].
pub struct InRequest {
    activity: Arc<Activity>,
    /// When it ended, if the caller read the clock for other uses too.
    ended: Option<Instant>,
}

impl InRequest {
    /// The request ended at `at`: the wait for the next request head begins then (the
    /// mark is released when this is dropped).
    pub fn end_at(&mut self, at: Instant) {
        self.ended = Some(at);
    }

    /// The connection's activity.
    pub fn activity(&self) -> &Activity {
        &self.activity
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        let activity = &self.activity;
        let ms = activity.ms_at_or_now(self.ended);
        activity.head_wait_ms.store(ms, Ordering::Release);
        activity.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct AwaitingServer {
    activity: Arc<Activity>,
    ended: Option<Instant>,
}

impl AwaitingServer {
    /// The wait ended at `at` (the caller's clock reading).
    pub fn end_at(mut self, at: Instant) {
        self.ended = Some(at);
    }
}

impl Drop for AwaitingServer {
    fn drop(&mut self) {
        let activity = &self.activity;
        let ms = activity.ms_at_or_now(self.ended);
        activity.last_ms.store(ms, Ordering::Relaxed);
        activity.awaiting_server.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct ReceivingBody(Arc<Activity>);

impl Drop for ReceivingBody {
    fn drop(&mut self) {
        self.0.receiving_body.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An IO that records every byte moved in an [`Activity`], and first replays a prefix.
pub struct Tracked<T> {
    prefix: Bytes,
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    /// The stream it tracks.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn new(inner: T, prefix: Bytes, activity: Arc<Activity>) -> Self {
        activity.touch();
        Self {
            prefix,
            inner,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &polled
            && *n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled
            && *n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
