//! Client-side IO helpers: activity tracking for idle timeouts, and replaying the bytes
//! read while sniffing for the HTTP/2 preface.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// When a connection last moved a byte, and whether weir is waiting on a server for it
/// (the server timeout governs that wait, not the client timeout).
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    awaiting_server: AtomicU32,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            awaiting_server: AtomicU32::new(0),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// Marks a wait for a server's response head until the guard drops.
    pub fn awaiting_server(self: &Arc<Self>) -> AwaitingServer {
        self.awaiting_server.fetch_add(1, Ordering::AcqRel);
        AwaitingServer(Arc::clone(self))
    }

    /// Resolves once nothing has moved for `limit` while weir was not waiting on a server.
    pub async fn idle_timeout(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            let waiting = self.awaiting_server.load(Ordering::Acquire) > 0;
            if !waiting && idle >= limit {
                return;
            }
            let wait = if waiting { limit } else { limit - idle };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

pub struct AwaitingServer(Arc<Activity>);

impl Drop for AwaitingServer {
    fn drop(&mut self) {
        self.0.touch();
        self.0.awaiting_server.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An IO that records every byte moved in an [`Activity`], and first replays a prefix.
pub struct Tracked<T> {
    prefix: Bytes,
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
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

/// Reads just enough to tell an HTTP/2 prior-knowledge connection from HTTP/1.x: until
/// the bytes differ from the preface or all 24 have matched. `buf` holds bytes already
/// read from the connection. Returns every byte read and whether they began with the
/// preface.
pub async fn sniff_h2<T: AsyncRead + Unpin>(
    io: &mut T,
    mut buf: Vec<u8>,
) -> io::Result<(Bytes, bool)> {
    let seen = buf.len().min(H2_PREFACE.len());
    if buf[..seen] != H2_PREFACE[..seen] {
        return Ok((Bytes::from(buf), false));
    }
    let mut chunk = [0u8; 24];
    while buf.len() < H2_PREFACE.len() {
        let want = H2_PREFACE.len() - buf.len();
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf[..] != H2_PREFACE[..buf.len()] {
            return Ok((Bytes::from(buf), false));
        }
    }
    let is_h2 = buf.len() >= H2_PREFACE.len();
    Ok((Bytes::from(buf), is_h2))
}
