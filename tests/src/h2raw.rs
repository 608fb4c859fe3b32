//! A raw HTTP/2 client that writes frames as given, for abuse tests: floods of resets,
//! PINGs, SETTINGS or CONTINUATION frames that a well-behaved client never sends.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// `GET /` for authority `a`, HPACK-encoded with the static table only.
pub const GET_BLOCK: [u8; 6] = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];

/// One frame: the 9-byte header and the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A connection that has sent the client preface and an empty SETTINGS frame.
pub async fn connect(addr: SocketAddr) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut hello = crate::H2_PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    stream.into_split()
}

/// What the server did with a flood.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A GOAWAY with this error code, after this many frames.
    GoAway { code: u32, after: usize },
    /// The connection closed without one.
    Closed,
    /// Still open after the time allowed.
    Open,
}

/// Reads frames until a GOAWAY arrives, the connection closes, or `limit` passes.
pub async fn until_goaway(read: &mut OwnedReadHalf, limit: Duration) -> End {
    let deadline = tokio::time::Instant::now() + limit;
    let mut frames = 0;
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout_at(deadline, read.read_exact(&mut head)).await {
            Err(_) => return End::Open,
            Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        match tokio::time::timeout_at(deadline, read.read_exact(&mut payload)).await {
            Err(_) => return End::Open,
            Ok(Err(_)) => return End::Closed,
            Ok(Ok(_)) => {}
        }
        if head[3] == GOAWAY && payload.len() >= 8 {
            return End::GoAway {
                code: u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
                after: frames,
            };
        }
        frames += 1;
    }
}

/// Writes `frames` in batches until done or the server stops reading; returns how many
/// frames went out.
pub async fn flood(write: &mut OwnedWriteHalf, frames: impl Iterator<Item = Vec<u8>>) -> usize {
    let mut sent = 0;
    let mut batch = Vec::new();
    let mut in_batch = 0;
    for f in frames {
        batch.extend(f);
        in_batch += 1;
        if in_batch == 64 {
            match tokio::time::timeout(Duration::from_secs(2), write.write_all(&batch)).await {
                Ok(Ok(())) => sent += in_batch,
                _ => return sent,
            }
            batch.clear();
            in_batch = 0;
        }
    }
    if !batch.is_empty() && write.write_all(&batch).await.is_ok() {
        sent += in_batch;
    }
    sent
}
