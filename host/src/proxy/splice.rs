//! Relaying between two plain TCP sockets, as a tcp frontend does when neither side speaks
//! TLS through weir: each direction copies through a small buffer until a read fills it,
//! then moves its bytes with splice(2) through a pipe, never into user space. Short
//! exchanges cost no pipe; bulk transfers cost a third of the CPU of copying
//! (BENCHMARKS.md, "Layer 4").

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use crate::activity::Activity;

/// A read of this size that comes back full marks a direction as bulk.
const BUFFER: usize = 16 * 1024;
/// The most one splice moves into the pipe (a pipe holds 64 KiB by default).
const SPLICE_MAX: usize = 1 << 20;

/// Which side of a relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Bytes both ways between `client` and `server` until each direction has ended (a
/// half-close passes through as a shutdown of the other side's writing), touching
/// `activity` whenever bytes move; `counted` becomes the bytes from the client and from
/// the server. Err: the side whose socket failed.
pub async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    activity: &Activity,
    counted: &mut (u64, u64),
) -> Result<(), Side> {
    let (mut up, mut down) = (0u64, 0u64);
    let ended = AtomicBool::new(false);
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    let result = tokio::try_join!(
        pump(
            (client_read, server_write.as_ref()),
            activity,
            &mut up,
            &ended,
            (Side::Client, Side::Server)
        ),
        pump(
            (server_read, client_write.as_ref()),
            activity,
            &mut down,
            &ended,
            (Side::Server, Side::Client)
        ),
    );
    *counted = (up, down);
    result.map(|_| ())
}

/// One direction: `from` to `to`. `sides`: who `from` and `to` are, for the error.
/// `ended`: whether one of the two directions has ended.
async fn pump(
    (mut from, to): (ReadHalf<'_>, &TcpStream),
    activity: &Activity,
    moved: &mut u64,
    ended: &AtomicBool,
    (from_side, to_side): (Side, Side),
) -> Result<(), Side> {
    let mut pipe: Option<Pipe> = None;
    // Not zeroed: reads fill its spare room (zeroing 16 KiB per direction was a tenth of
    // a short connection's cost).
    let mut buf: Vec<u8> = Vec::with_capacity(BUFFER);
    loop {
        let n = match &pipe {
            Some(pipe) => {
                let n = pipe.fill_from(from.as_ref()).await.map_err(|_| from_side)?;
                if n > 0 {
                    pipe.drain_to(to, n).await.map_err(|_| to_side)?;
                }
                n
            }
            None => {
                buf.clear();
                // Through tokio's read: a read that does not fill the buffer tells it the
                // socket is drained, so the next read waits for data instead of trying.
                let n = from.read_buf(&mut buf).await.map_err(|_| from_side)?;
                write_all(to, &buf).await.map_err(|_| to_side)?;
                if n == BUFFER {
                    // Bulk: the rest goes through a pipe.
                    pipe = Some(Pipe::new().map_err(|_| from_side)?);
                }
                n
            }
        };
        if n == 0 {
            // The end of `from`'s stream: `to` is told, and may go on sending. When the
            // other direction has ended too, `to` has sent all it will and both sockets
            // close next, which tells it the same (its reads are drained: a FIN, no RST).
            if !ended.swap(true, Ordering::Relaxed) {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            return Ok(());
        }
        *moved += n as u64;
        activity.touch();
    }
}

/// Writes all of `data` to `to`.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A pipe between two sockets: what splice moves bytes through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes; each is owned
        // once, below.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors, owned by nothing else.
        Ok(unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        })
    }

    /// Moves what `from` has (up to the pipe's room) into the empty pipe: 0 at its end.
    async fn fill_from(&self, from: &TcpStream) -> io::Result<usize> {
        from.async_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), self.write.as_raw_fd(), SPLICE_MAX)
        })
        .await
    }

    /// Moves the `n` bytes in the pipe out to `to`.
    async fn drain_to(&self, to: &TcpStream, mut n: usize) -> io::Result<()> {
        while n > 0 {
            n -= to
                .async_io(Interest::WRITABLE, || {
                    splice(self.read.as_raw_fd(), to.as_raw_fd(), n)
                })
                .await?;
        }
        Ok(())
    }
}

fn splice(from: i32, to: i32, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the call (their owners outlive it); the
    // offsets are null, as for sockets and pipes they must be.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
