//! The one way weir dials a server, for requests and health checks alike: a TCP connect,
//! then the PROXY protocol header when the server wants one, then TLS (with the ALPN its
//! client config offers) when it speaks TLS. Each step fails with its own error, so a
//! health check reports the layer that failed as HAProxy does (L4 for the connect and the
//! header, L6 for TLS).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::ServerTls;

/// How to reach a server.
#[derive(Clone, Copy)]
pub struct Dial<'a> {
    pub addr: SocketAddr,
    /// Written first on the connection: a PROXY protocol header.
    pub preface: Option<&'a [u8]>,
    pub tls: Option<&'a ServerTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    /// The TCP connect, or writing the PROXY header, failed (layer 4).
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, io::Error),
    /// The TLS handshake failed (layer 6).
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, io::Error),
    /// The HTTP/1.1 or HTTP/2 handshake failed.
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

/// A dialed connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The TCP connect alone (with Nagle off: weir writes whole heads and bodies itself).
/// Health checks take this step apart from [`secure`], to tell a connect that timed out
/// (L4) from a server that connected and then went silent.
pub async fn tcp(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    let failed = |e| ConnectError::Io(addr, e);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )
    .map_err(failed)?;
    let _ = socket.set_tcp_nodelay(true);
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(failed(e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(failed)?;
    // The connect has ended when the socket turns writable; it failed when the kernel also
    // flags an error (or a hang-up). Only then is the error read: a connect that succeeded
    // costs no getsockopt(SO_ERROR) (it is most of the connects a tcp frontend makes).
    let ready = stream
        .ready(Interest::WRITABLE | Interest::ERROR)
        .await
        .map_err(failed)?;
    if ready.is_error() || ready.is_write_closed() {
        let e = match stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        return Err(failed(e));
    }
    Ok(stream)
}

/// The steps after the connect: the PROXY header, then TLS.
pub async fn secure(mut stream: TcpStream, dial: &Dial<'_>) -> Result<Stream, ConnectError> {
    if let Some(bytes) = dial.preface {
        stream
            .write_all(bytes)
            .await
            .map_err(|e| ConnectError::Io(dial.addr, e))?;
    }
    match dial.tls {
        None => Ok(Stream::Plain(stream)),
        // Boxed: the handshake's state stays out of every plain connection's future.
        Some(tls) => Box::pin(tls.connector.connect(tls.name.clone(), stream))
            .await
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(|e| ConnectError::Tls(dial.addr, e)),
    }
}

/// Every step, without a time limit of its own (the caller's bounds the whole).
pub async fn dial(dial: &Dial<'_>) -> Result<Stream, ConnectError> {
    secure(tcp(dial.addr).await?, dial).await
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
