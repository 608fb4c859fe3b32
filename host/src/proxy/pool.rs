//! Keep-alive connections to one server. A connection goes back to the pool once its
//! response has been read to the end; the most recently used is reused first, and idle
//! ones are closed after `pool_idle_timeout` or beyond `pool_max_idle`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ClientBody;

pub type Sender = SendRequest<ClientBody>;

pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("handshake with {0}: {1}")]
    Handshake(SocketAddr, hyper::Error),
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open and fresh.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some(c) = idle.pop() {
            if now.duration_since(c.since) < self.idle_timeout && c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Keeps a connection for reuse, if there is room.
    fn put(&self, sender: Sender) {
        let mut idle = self.lock();
        Self::purge_locked(&mut idle, self.idle_timeout);
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes idle connections that expired or that the server closed.
    pub fn purge(&self) {
        Self::purge_locked(&mut self.lock(), self.idle_timeout);
    }

    fn purge_locked(idle: &mut Vec<Idle>, timeout: Duration) {
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < timeout && !c.sender.is_closed());
    }

    /// Returns `sender` to the pool once its current response has been read to the end.
    /// A connection whose response was abandoned or upgraded never becomes ready and is dropped.
    pub fn recycle(self: &Arc<Self>, mut sender: Sender) {
        if self.max_idle == 0 {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(sender);
            }
        });
    }

    /// Opens a new connection within `timeout`.
    /// `preface` (a PROXY protocol header) is written first.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        preface: Option<&[u8]>,
    ) -> Result<Sender, ConnectError> {
        let mut stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout(addr)),
            Ok(Err(e)) => return Err(ConnectError::Io(addr, e)),
            Ok(Ok(s)) => s,
        };
        if let Some(bytes) = preface {
            use tokio::io::AsyncWriteExt;
            stream
                .write_all(bytes)
                .await
                .map_err(|e| ConnectError::Io(addr, e))?;
        }
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("server connection to {addr} ended: {e}");
            }
        });
        Ok(sender)
    }
}
