//! Layer 4: a tcp frontend's connection relayed, bytes both ways, to one server of its
//! backend. The server is chosen as for HTTP (balancing, maxconn and the queue, backups,
//! slowstart and weights), the connect is retried on failure (elsewhere with redispatch),
//! and the connection then lives until both sides have closed (a half-close passes
//! through) or nothing has moved either way for its idle timeout. When it ends, one line
//! in the access log (HAProxy's tcplog by default) and the counters.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chain::{self, Connected};
use super::log::{Load, LogRecord, Target};
use super::pipeline::{Attempts, connect_failed};
use super::splice;
use super::{ConnInfo, FrontendRt, new_record};
use crate::activity::Tracked;
use crate::balance::RequestKey;
use crate::upstream::connect::Stream;
use crate::upstream::{BackendRt, InFlight, QueueError, Slot};
use bytes::Bytes;
use tokio::net::TcpStream;

/// What weir knows of a tcp connection before it relays it.
#[derive(Debug, Default)]
pub struct Opening {
    /// The server name and the protocols (ALPN) of the client's TLS ClientHello, when
    /// weir read one.
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    /// Connections open from the client's address, this one included.
    pub client_connections: u32,
}

/// A tcp frontend's client connection, as the listener hands it over.
pub enum Client {
    /// The socket, and the bytes already read from it (a ClientHello, what followed a
    /// PROXY header), relayed first.
    Plain(TcpStream, Bytes),
    /// TLS that weir terminated.
    Tls(Box<tokio_rustls::server::TlsStream<Tracked<TcpStream>>>),
}

/// Relays `client` to a server of `fe`'s backend (or the one the chain's `on-connect`
/// chose) until the connection ends, then logs and counts it. Between two plain sockets
/// bulk bytes move with splice(2) ([`super::splice`]); through TLS, with a copy.
pub async fn relay(fe: Arc<FrontendRt>, conn: ConnInfo, client: Client, opening: Opening) {
    let mut record = tcp_record(&fe, &conn);
    // The chain's future is boxed: without plugins the task does not carry its room.
    let route = if fe.plugins.is_empty() {
        Ok((Arc::clone(&fe.backend), None))
    } else {
        crate::util::boxed(|| on_connect(&fe, &conn, &opening)).await
    };
    let (backend, prefer) = match route {
        Ok(route) => route,
        Err(termination) => {
            record.termination = termination;
            return finish(&fe, &conn, record, None);
        }
    };
    record.backend = Some(Arc::clone(&backend.name));
    record.tally.backend = Some(Arc::clone(&backend.stats));
    let sni = opening.sni.as_deref();
    let (server, slot) = match connect(&backend, &conn, sni, prefer, &mut record).await {
        Ok(connected) => connected,
        Err(termination) => {
            record.termination = termination;
            return finish(&fe, &conn, record, None);
        }
    };
    let (limit, blame) = idle_limit(&fe, &backend);
    let activity = Arc::clone(&conn.activity);
    let (ended, (up, down)) = match (client, server) {
        (Client::Plain(mut client, early), Stream::Plain(mut server)) => {
            let mut counted = (0, 0);
            let relayed = async {
                splice::write_all(&server, &early)
                    .await
                    .map_err(|_| splice::Side::Server)?;
                activity.touch();
                splice::relay(&mut client, &mut server, &activity, &mut counted).await
            };
            let ended = tokio::select! {
                relayed = relayed => match relayed {
                    Ok(()) => *b"--",
                    Err(splice::Side::Server) => *b"SD",
                    Err(splice::Side::Client) => *b"CD",
                },
                () = idle(&conn, limit) => [blame, b'D'],
            };
            (ended, (counted.0 + early.len() as u64, counted.1))
        }
        (client, server) => {
            let client: Box<dyn Io> = match client {
                Client::Plain(socket, early) => {
                    Box::new(Tracked::new(socket, early, Arc::clone(&activity)))
                }
                Client::Tls(tls) => tls,
            };
            let mut client = Side::new(client);
            let mut server = Side::new(server);
            let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
            let ended = tokio::select! {
                copied = copy => match copied {
                    Ok(_) => *b"--",
                    // Which side broke: the one whose read or write failed.
                    Err(_) if server.failed => *b"SD",
                    Err(_) => *b"CD",
                },
                () = idle(&conn, limit) => [blame, b'D'],
            };
            (ended, (client.read, server.read))
        }
    };
    record.termination = ended;
    record.bytes = down;
    record.received.bytes.fetch_add(up, Ordering::Relaxed);
    finish(&fe, &conn, record, Some((&backend, slot)));
}

/// A client connection the copy relays.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection refused before any server was sought (with `tls_passthrough`, its first
/// bytes were no TLS ClientHello): said in weir's log, and in the access log as `PR`.
pub fn refused(fe: &FrontendRt, conn: &ConnInfo, why: &str) {
    tracing::info!("{}: frontend {}: {why}; closed", conn.peer, fe.name);
    let mut record = tcp_record(fe, conn);
    record.termination = *b"PR";
    finish(fe, conn, record, None);
}

/// The chain's `on-connect`: the backend and the server to prefer, or the termination
/// state of a connection a plugin closed (`LR`) or a fail-closed plugin failed on (`PI`).
async fn on_connect(
    fe: &FrontendRt,
    conn: &ConnInfo,
    opening: &Opening,
) -> Result<(Arc<BackendRt>, Option<usize>), [u8; 2]> {
    let info = crate::plugin::ConnectInfo {
        client_ip: conn.peer_ip_text().to_owned(),
        local_addr: conn.local.to_string(),
        frontend: fe.name.to_string(),
        sni: opening.sni.clone(),
        alpn: opening.alpn.clone(),
        client_connections: opening.client_connections,
        id: chain::next_request_id(),
    };
    match chain::on_connect(&fe.plugins, &fe.backends, &fe.backend, &info).await {
        Connected::Proceed { backend, prefer } => {
            Ok((backend.unwrap_or_else(|| Arc::clone(&fe.backend)), prefer))
        }
        Connected::Close(why) => {
            tracing::info!("{}: frontend {}: {why}; closed", conn.peer, fe.name);
            Err(*b"LR")
        }
        Connected::Failed => Err(*b"PI"),
    }
}

/// A connection's log record: HTTP's fields stay empty (`TCP` for the method).
fn tcp_record(fe: &FrontendRt, conn: &ConnInfo) -> LogRecord {
    let method = Method::from_bytes(b"TCP").expect("a valid token");
    new_record(
        fe,
        conn,
        method,
        Target::Text(String::new()),
        Version::HTTP_11,
        0,
    )
}

/// Logs and counts a connection that ended; `slot`, the server slot it held, is released
/// first, so the counts are of the others (as HAProxy counts them).
/// `at`: the backend it went to and the slot it held there, once it had one.
fn finish(
    fe: &FrontendRt,
    conn: &ConnInfo,
    mut record: LogRecord,
    at: Option<(&BackendRt, InFlight)>,
) {
    let at = at.map(|(backend, slot)| {
        let server = Arc::clone(slot.server());
        drop(slot);
        (backend, server)
    });
    if record.logged {
        let (backend, server) = at.map_or((0, 0), |(b, s)| {
            (b.sessions(), u64::from(s.in_flight.load(Ordering::Relaxed)))
        });
        record.load = Load {
            process: conn.open.process.now(),
            frontend: conn.open.frontend.now(),
            backend,
            server,
        };
    }
    record.tally.count(&record);
    fe.log.emit(&record);
}

/// How long a relayed connection may stay idle, and whose timeout that is: `timeout.tunnel`
/// when the backend (or `[defaults]`) writes it, else the shorter of the frontend's client
/// timeout and the backend's server timeout, as HAProxy does in tcp mode.
fn idle_limit(fe: &FrontendRt, backend: &BackendRt) -> (Duration, u8) {
    if backend.cfg.tunnel_written {
        return (backend.cfg.timeout_tunnel, b'c');
    }
    if fe.cfg.timeout_client <= backend.cfg.timeout_server {
        (fe.cfg.timeout_client, b'c')
    } else {
        (backend.cfg.timeout_server, b's')
    }
}

/// Resolves once nothing has moved on the client connection (either way) for `limit`.
async fn idle(conn: &ConnInfo, limit: Duration) {
    loop {
        let idle = conn.activity.idle();
        if idle >= limit {
            return;
        }
        tokio::time::sleep(limit - idle).await;
    }
}

/// A server slot and a connection to that server: the queue when every server is full,
/// the connect within `timeout.connect`, again on failure while `retries` allow. Else the
/// termination state of the failure.
async fn connect(
    backend: &BackendRt,
    conn: &ConnInfo,
    sni: Option<&str>,
    prefer: Option<usize>,
    record: &mut LogRecord,
) -> Result<(Stream, InFlight), [u8; 2]> {
    static NO_HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    let key = RequestKey {
        client_ip: conn.peer.ip(),
        path: "",
        query: None,
        headers: NO_HEADERS.get_or_init(HeaderMap::new),
        sni,
    };
    let started = Instant::now();
    let mut attempts = Attempts::new(backend, prefer);
    loop {
        let slot = match backend.choose(&key, &mut attempts.excluded, attempts.pinned) {
            Slot::Got(slot) => slot,
            Slot::Refused(QueueError::QueueFull) => return Err(*b"PQ"),
            Slot::Refused(_) => return Err(*b"SC"),
            Slot::Queued(place, ahead) => {
                record.queue_ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
                match backend.wait(place).await {
                    Ok(slot) => slot,
                    Err(QueueError::Timeout) => return Err(*b"sQ"),
                    Err(_) => return Err(*b"SC"),
                }
            }
        };
        let chosen = Instant::now();
        record.tw.get_or_insert(chosen - started);
        let server = Arc::clone(slot.server());
        let index = slot.index();
        record.server = Some(Arc::clone(&server.name));
        record.tally.server = Some(Arc::clone(&server.stats));
        let preface = server
            .cfg
            .send_proxy
            .map(|v| crate::proxy_protocol::encode(v, conn.peer, conn.local));
        let timeout = backend.cfg.timeout_connect;
        match server.stream(timeout, preface.as_deref()).await {
            Ok(stream) => {
                record.tc = Some(chosen.elapsed());
                return Ok((stream, slot));
            }
            Err(e) => connect_failed(backend, &server, index, &e),
        }
        if !attempts.again(backend.cfg.retry_on.conn_failure, record, index) {
            return Err(*b"SC");
        }
    }
}

/// One side of a relay: the bytes read from it, and whether reading or writing it failed.
struct Side<S> {
    inner: S,
    read: u64,
    failed: bool,
}

impl<S> Side<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            failed: false,
        }
    }

    fn note<T>(&mut self, polled: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(_)) = polled {
            self.failed = true;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Side<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        self.note(&polled);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Side<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note(&polled);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(&polled);
        polled
    }
}
