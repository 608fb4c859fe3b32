//! Connections to one server. HTTP/1.1: keep-alive connections, one request at a time; a
//! connection goes back to the pool once its response has been read to the end, the most
//! recently used is reused first, and idle ones are closed after `pool_idle_timeout` or
//! beyond `pool_max_idle`. HTTP/2: one connection shared by all requests, opened again
//! when it closes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::ClientBody;
use crate::server::tls::ServerTls;

/// A connection's request side.
pub enum Sender {
    H1(http1::SendRequest<ClientBody>),
    H2(http2::SendRequest<ClientBody>),
}

impl Sender {
    /// Sends a request; on an error before it was written, the request comes back.
    /// (Not an `async fn`: that would hold room for both protocols' futures, where an
    /// `Either` holds one or the other, and every request's future is smaller by one.)
    pub fn try_send_request(
        &mut self,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<ClientBody>>>> + use<>
    {
        match self {
            Sender::H1(s) => Either::Left(s.try_send_request(req)),
            Sender::H2(s) => Either::Right(s.try_send_request(req)),
        }
    }

    /// Whether requests go out as HTTP/2.
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }
}

/// How to reach the server.
pub struct Route<'a> {
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// Written first on the connection: a PROXY protocol header.
    pub preface: Option<&'a [u8]>,
    pub tls: Option<&'a ServerTls>,
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
    sender: http1::SendRequest<ClientBody>,
    since: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
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
    /// `now`).
    pub fn take(&self, now: Instant) -> Option<Sender> {
        if self.h2 {
            return self
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|s| !s.is_closed() && s.is_ready())
                .map(|s| Sender::H2(s.clone()));
        }
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if now.duration_since(c.since) < self.idle_timeout && c.sender.is_ready() {
                return Some(Sender::H1(c.sender));
            }
        }
        None
    }

    /// Keeps an HTTP/1.1 connection for reuse, if there is room (made by closing expired
    /// or closed ones when full; otherwise the generation's periodic sweep closes them).
    fn put(&self, sender: http1::SendRequest<ClientBody>, now: Instant) {
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
        idle.retain(|c| now.duration_since(c.since) < timeout && !c.sender.is_closed());
    }

    /// Returns an HTTP/1.1 `sender` to the pool; called once its response has been read
    /// to the end. By then the connection has nearly always taken in the response's end
    /// and is ready for the next request, so it goes straight back; if not yet, a small
    /// task waits for it. A connection that never becomes ready (the server closed it,
    /// or the response was cut short) is dropped. An HTTP/2 connection stays shared
    /// anyway. `now`: the caller's clock reading, when the response ended.
    pub fn recycle(self: &Arc<Self>, sender: Sender, now: Instant) {
        let Sender::H1(mut sender) = sender else {
            return;
        };
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.put(sender, now);
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(sender, Instant::now());
            }
        });
    }

    /// Opens a new connection within the route's timeout (TLS handshake included). An
    /// HTTP/2 one becomes the shared connection.
    pub async fn connect(&self, route: Route<'_>) -> Result<Sender, ConnectError> {
        // Boxed: the TCP, TLS and HTTP handshakes make a large future, which would
        // otherwise be part of every request's future, connection reused or not.
        Box::pin(self.open(route)).await
    }

    async fn open(&self, route: Route<'_>) -> Result<Sender, ConnectError> {
        let addr = route.addr;
        let opened = async {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| ConnectError::Io(addr, e))?;
            let _ = stream.set_nodelay(true);
            if let Some(bytes) = route.preface {
                stream
                    .write_all(bytes)
                    .await
                    .map_err(|e| ConnectError::Io(addr, e))?;
            }
            match route.tls {
                Some(tls) => {
                    let stream = tls
                        .connector
                        .connect(tls.name.clone(), stream)
                        .await
                        .map_err(|e| ConnectError::Tls(addr, e))?;
                    handshake(stream, addr, self.h2).await
                }
                None => handshake(stream, addr, self.h2).await,
            }
        };
        let sender = match tokio::time::timeout(route.timeout, opened).await {
            Err(_) => return Err(ConnectError::Timeout(addr)),
            Ok(result) => result?,
        };
        if let Sender::H2(h2) = &sender {
            *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(h2.clone());
        }
        Ok(sender)
    }
}

/// The HTTP/1.1 or HTTP/2 handshake on an open connection; the connection is driven by a
/// task of its own.
async fn handshake<I>(io: I, addr: SocketAddr, h2: bool) -> Result<Sender, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("server connection to {addr} ended: {e}");
            }
        });
        Ok(Sender::H1(sender))
    }
}
