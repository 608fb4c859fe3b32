//! Client-side IO helpers: telling HTTP/2 prior knowledge from HTTP/1.x, and watching an
//! HTTP/2 client's control frames. What a connection is doing, for its timeouts, is
//! [`crate::activity`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::net::{AckNow, write_through};

/// The client connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

/// Control frames (PING and SETTINGS that are not acknowledgements) an HTTP/2 client may
/// send in one second. Clients send a handful; a flood past this ends the connection.
pub const H2_CONTROL_FRAMES_PER_SECOND: u32 = 100;

/// Watches the frames an HTTP/2 client sends, for floods that h2 itself answers one for
/// one: PING and SETTINGS. Past [`H2_CONTROL_FRAMES_PER_SECOND`] it reads no more (so the
/// flood costs nothing further) and fires `flood`, and the connection is ended with a
/// GOAWAY. h2 ends rapid resets, CONTINUATION and empty DATA floods by itself.
pub struct FrameWatch<T> {
    inner: T,
    /// Preface bytes still to skip before the first frame.
    preface: usize,
    /// The frame header being read, and how much of it is in.
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
    window: Instant,
    control: u32,
    flood: Arc<tokio::sync::Notify>,
    flooded: bool,
}

impl<T> FrameWatch<T> {
    pub fn new(inner: T, flood: Arc<tokio::sync::Notify>) -> Self {
        Self {
            inner,
            preface: H2_PREFACE.len(),
            head: [0; 9],
            head_len: 0,
            payload: 0,
            window: Instant::now(),
            control: 0,
            flood,
            flooded: false,
        }
    }

    /// Follows the frame boundaries through `bytes`, counting control frames. On a flood,
    /// returns how many of `bytes` come before the frame that crossed the limit: only
    /// those are passed on.
    fn scan(&mut self, all: &[u8]) -> Option<usize> {
        let mut bytes = all;
        while !bytes.is_empty() && !self.flooded {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == 9 {
                    self.head_len = 0;
                    let h = self.head;
                    self.payload =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    // PING (6) or SETTINGS (4) without the ACK flag (0x1).
                    if matches!(h[3], 4 | 6) && h[4] & 0x1 == 0 {
                        self.count_control();
                        if self.flooded {
                            let end = all.len() - bytes.len();
                            return Some(end.saturating_sub(9));
                        }
                    }
                }
            }
        }
        None
    }

    fn count_control(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.window) > Duration::from_secs(1) {
            self.window = now;
            self.control = 0;
        }
        self.control += 1;
        if self.control > H2_CONTROL_FRAMES_PER_SECOND {
            self.flooded = true;
            self.flood.notify_one();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FrameWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.flooded {
            // Nothing more is read; the connection ends shortly.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && let Some(keep) = self.scan(&buf.filled()[before..])
        {
            buf.set_filled(before + keep);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FrameWatch<T> {
    write_through!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AckNow> AckNow for crate::activity::Tracked<S> {
    fn ack_now(&self) {
        self.get_ref().ack_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            0,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend(std::iter::repeat_n(0u8, payload));
        f
    }

    #[test]
    fn control_frames_are_counted_across_any_split() {
        let flood = Arc::new(tokio::sync::Notify::new());
        let mut watch = FrameWatch::new((), Arc::clone(&flood));
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend(frame(4, 0, 6)); // SETTINGS
        bytes.extend(frame(4, 1, 0)); // SETTINGS ACK: not counted
        bytes.extend(frame(0, 0, 300)); // DATA whose payload holds a fake header
        bytes.extend(frame(6, 1, 8)); // PING ACK: not counted
        for _ in 0..10 {
            bytes.extend(frame(6, 0, 8)); // PING
        }
        for chunk in bytes.chunks(7) {
            assert_eq!(watch.scan(chunk), None);
        }
        assert_eq!(watch.control, 11);
        assert!(!watch.flooded);
        let mut pings = Vec::new();
        for _ in 0..H2_CONTROL_FRAMES_PER_SECOND {
            pings.extend(frame(6, 0, 8));
        }
        // The frame that crosses the limit, and all after it, are held back.
        let limit = (H2_CONTROL_FRAMES_PER_SECOND - 11) as usize;
        assert_eq!(watch.scan(&pings), Some(limit * 17));
        assert!(watch.flooded);
    }
}
