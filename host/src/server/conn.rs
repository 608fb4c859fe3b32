//! Client connections: the accept loop of a listener, the PROXY header, TLS, telling
//! HTTP/2 prior knowledge from HTTP/1.x, the framing guard, and driving a connection to
//! its end under the client-side timeouts (or a graceful shutdown).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::activity::{Activity, Expired, Tracked};
use crate::config::Frontend;
use crate::proxy::{self, ConnInfo};
use crate::stats::Gauge;
use crate::{proxy_protocol, tls};

use super::{ConnGuard, Connections, Current, FLOOD_GRACE, current, framing, io};

/// A frontend's listener side: its connection builders (the connection-level timeouts and
/// limits), and where to find the frontend of the current generation for each request.
/// A reload makes new ones for new connections.
pub(super) struct FrontendServer {
    /// The frontend's config; the generation itself is looked up per request by name, so
    /// that a reload releases the old one.
    pub(super) cfg: Frontend,
    pub(super) live: Current,
    /// Its client connections (shared by its binds, kept across reloads).
    pub(super) connections: Arc<Gauge>,
    pub(super) h1: http1::Builder,
    pub(super) h2: http2::Builder<TokioExecutor>,
    /// The TLS handshake, for a frontend with `tls`.
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
}

impl FrontendServer {
    pub(super) fn new(cfg: Frontend, live: Current, connections: Arc<Gauge>) -> Self {
        let mut h1 = http1::Builder::new();
        // timeout.http_request is the connection's own timer (`Activity::expired`), not
        // hyper's, which would arm a timer for every request (hyper's HTTP/1 server uses a
        // timer for nothing else, so it gets none).
        h1.header_read_timeout(None)
            .max_headers(cfg.max_headers)
            .max_header_size(cfg.max_header_size)
            .max_buf_size(cfg.max_header_size.max(8192) + 8192)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(cfg.max_header_size as u32)
            .max_concurrent_streams(256);
        // HTTP offers h2 and http/1.1; a tcp frontend's clients speak what they speak.
        let alpn = cfg.mode == crate::config::Mode::Http;
        let tls = cfg.tls.as_deref().map(|certs| tls::acceptor(certs, alpn));
        Self {
            cfg,
            live,
            connections,
            h1,
            h2,
            tls,
        }
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    server: watch::Receiver<Arc<FrontendServer>>,
    maxconn: Arc<super::global::Slots>,
    mut closing: watch::Receiver<bool>,
    connections: Arc<Connections>,
) {
    // A listener bound to one address is where all its connections arrive: only a
    // wildcard bind asks each connection (getsockname) which address it came to.
    let bound = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        // Past maxconn, new connections wait in the kernel's backlog, as with HAProxy.
        let permit = tokio::select! {
            p = maxconn.take() => p,
            _ = closing.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!("accept on frontend {}: {e}", server.borrow().cfg.name);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closing.changed() => return,
        };
        let server = Arc::clone(&server.borrow());
        let _ = stream.set_nodelay(true);
        connections.open.enter();
        server.connections.enter();
        let guard = ConnGuard(Arc::clone(&connections), Arc::clone(&server.connections));
        let proto = if server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let local = bound.unwrap_or_else(|| stream.local_addr().unwrap_or(peer));
        let conn = ConnInfo::new(
            peer,
            local,
            proto,
            Arc::new(Activity::default()),
            Some(permit),
            crate::stats::Open {
                process: Arc::clone(&connections.open),
                frontend: Arc::clone(&server.connections),
            },
        );
        // A tcp connection's task holds none of HTTP's (larger) state.
        if server.cfg.mode == crate::config::Mode::Tcp {
            tokio::spawn(super::tcp::accepted(stream, server, conn, guard));
        } else {
            tokio::spawn(serve(stream, server, conn, closing.clone(), guard));
        }
    }
}

pub(super) async fn serve(
    mut stream: TcpStream,
    server: Arc<FrontendServer>,
    mut conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let cfg = &server.cfg;
    let activity = Arc::clone(&conn.activity);
    // The PROXY header, the TLS handshake, and the first bytes that tell HTTP/2 prior
    // knowledge from HTTP/1.x must each come within timeout.http_request.
    let limit = cfg.timeout_http_request;
    let Some(early) = proxied(&mut stream, cfg, &mut conn).await else {
        return;
    };
    // Counted from here (the client's address is known, through a PROXY header too)
    // until the connection ends: for plugins' connection limits.
    let _counted = crate::stats::per_client().enter(conn.peer.ip());
    let peer = conn.peer;
    if let Some(acceptor) = &server.tls {
        let tracked = Tracked::new(stream, bytes::Bytes::from(early), activity);
        // Boxed: a TLS connection's state (the handshake, then rustls's) is large, and a
        // plain connection's task need not hold room for it.
        return Box::pin(serve_tls(acceptor, tracked, &server, conn, shutdown)).await;
    }
    let (prefix, is_h2) = match tokio::time::timeout(limit, io::sniff_h2(&mut stream, early)).await
    {
        Ok(Ok((prefix, _))) if prefix.is_empty() => return,
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(e)) => {
            tracing::debug!("{peer}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("{peer}: no request within timeout.http_request");
            return;
        }
    };
    let io = Tracked::new(stream, prefix, activity);
    run(io, is_h2, &server, conn, shutdown).await;
}

/// Serves a frontend with `tls`: the handshake (within timeout.http_request), then
/// HTTP/2 or HTTP/1.x as ALPN chose.
async fn serve_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: Tracked<TcpStream>,
    server: &Arc<FrontendServer>,
    conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
) {
    let limit = (server.cfg.timeout_http_request, "timeout.http_request");
    let Some(tls) = handshake(acceptor, io, limit, conn.peer).await else {
        return;
    };
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2);
    run(tls, is_h2, server, conn, shutdown).await;
}

/// The TLS handshake of a frontend with `tls`, within `limit` (and the name of its
/// setting, for the log); None when it failed or took too long.
pub(super) async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: Tracked<TcpStream>,
    (limit, setting): (Duration, &str),
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<Tracked<TcpStream>>> {
    match tokio::time::timeout(limit, acceptor.accept(io)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!("{peer}: TLS handshake: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("{peer}: no TLS handshake within {setting}");
            None
        }
    }
}

/// With `accept_proxy`, reads the connection's PROXY header (within timeout.http_request)
/// and takes the client's address from it: the bytes read past it, or None when the
/// connection is to be closed.
pub(super) async fn proxied(
    stream: &mut TcpStream,
    cfg: &Frontend,
    conn: &mut ConnInfo,
) -> Option<Vec<u8>> {
    if !cfg.accept_proxy {
        return Some(Vec::new());
    }
    // Boxed: a connection's task does not carry the header's read buffer when it has
    // none to read.
    let header = Box::pin(read_proxy_header(stream));
    match tokio::time::timeout(cfg.timeout_http_request, header).await {
        Ok(Ok((header, rest))) => {
            if let proxy_protocol::Header::Proxied {
                source,
                destination,
            } = header
            {
                conn.peer = source;
                conn.local = destination;
            }
            Some(rest)
        }
        Ok(Err(e)) => {
            tracing::debug!("{}: {e}", conn.peer);
            None
        }
        Err(_) => {
            tracing::debug!(
                "{}: no PROXY protocol header within timeout.http_request",
                conn.peer
            );
            None
        }
    }
}

/// Reads a PROXY protocol header (v1 or v2); returns it and the bytes read past it.
pub(super) async fn read_proxy_header(
    stream: &mut TcpStream,
) -> Result<(proxy_protocol::Header, Vec<u8>), String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before its PROXY protocol header ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        // The parser refuses a header past its size limit, so the buffer stays small.
        if let Some((header, used)) = proxy_protocol::parse(&buf).map_err(|e| e.to_string())? {
            return Ok((header, buf.split_off(used)));
        }
    }
}

/// Serves HTTP/2 or HTTP/1.x on a connection until it ends.
pub(super) async fn run<I>(
    io: I,
    is_h2: bool,
    server: &Arc<FrontendServer>,
    conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::net::AckNow + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = Arc::clone(&conn.activity);
    let conn = Arc::new(conn);
    let server_for_service = Arc::clone(server);
    let conn_for_service = Arc::clone(&conn);
    // What the HTTP/1 framing check finds (HTTP/2 connections leave it empty).
    let verdict = Arc::new(framing::Verdict::default());
    let verdict_for_service = Arc::clone(&verdict);
    let service = service_fn(move |req| {
        // Each request takes the frontend of the generation serving now.
        let fe = current(&server_for_service.live)
            .frontend(&server_for_service.cfg.name)
            .cloned();
        let conn = Arc::clone(&conn_for_service);
        let verdict = Arc::clone(&verdict_for_service);
        // Boxed: hyper keeps room for the service's future in every connection, idle or
        // not; a box per request costs less than ~5 KiB held per idle connection.
        crate::util::boxed(|| async move {
            let response = match fe {
                Some(fe) => proxy::handle(fe, conn, req).await,
                // A reload removed this frontend while the request was on its way; its
                // connections are closing.
                None => proxy::local::frontend_gone(),
            };
            verdict.answered();
            Ok::<_, Infallible>(response)
        })
    });
    let client_timeout = server.cfg.timeout_client;
    if is_h2 {
        let flood = Arc::new(Notify::new());
        let io = TokioIo::new(io::FrameWatch::new(io, Arc::clone(&flood)));
        let connection = server.h2.serve_connection(io, service);
        // Boxed, as is the HTTP/1 connection below: the connection's task then holds only
        // the protocol it speaks, and nothing of it before the client's first bytes.
        Box::pin(drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            (client_timeout, None),
            shutdown,
            Signals::Flood(flood),
            peer,
        ))
        .await;
    } else {
        let guard = framing::FramingGuard::new(
            io,
            framing::Limits {
                max_header_size: server.cfg.max_header_size,
                max_headers: server.cfg.max_headers,
            },
            Arc::clone(&verdict),
        )
        .with_activity(Arc::clone(&activity));
        let connection = server
            .h1
            .serve_connection(TokioIo::new(guard), service)
            .with_upgrades();
        activity.await_heads();
        Box::pin(drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            (client_timeout, Some(server.cfg.timeout_http_request)),
            shutdown,
            Signals::Refused(Arc::clone(&verdict), Arc::clone(server), Arc::clone(&conn)),
            peer,
        ))
        .await;
        if let Some(rejection) = verdict.rejection()
            && let Some(fe) = current(&server.live).frontend(&server.cfg.name)
        {
            let status = verdict.answered_status().unwrap_or(rejection.status);
            proxy::log_refused(fe, &conn, rejection, status);
        }
    }
}

/// What, besides shutdown, ends a connection early.
pub(super) enum Signals {
    /// An HTTP/2 client flooded weir with control frames: GOAWAY, then close soon after.
    Flood(Arc<Notify>),
    /// An HTTP/1 request head was refused: once the requests before it are answered, its
    /// answer is made (by the frontend serving now, for its connection) and the connection
    /// closes after it.
    Refused(Arc<framing::Verdict>, Arc<FrontendServer>, Arc<ConnInfo>),
}

/// Makes the answer to a refused head, for the guard to write before the connection
/// closes. Without a frontend (a reload removed it) the guard writes the plain refusal.
pub(super) async fn answer_refusal(
    verdict: &framing::Verdict,
    server: &FrontendServer,
    conn: &ConnInfo,
) {
    let Some(rejection) = verdict.rejection() else {
        return;
    };
    let Some(fe) = current(&server.live).frontend(&server.cfg.name).cloned() else {
        return;
    };
    let (status, bytes) = proxy::local::refusal(&fe, conn, rejection).await;
    verdict.set_answer(status, bytes);
}

/// Runs a connection to its end; on shutdown lets it finish gracefully; closes it when the
/// client has been idle for timeout.client while weir was not waiting on a server, or (for
/// HTTP/1, with a head timeout) when a request head took longer than timeout.http_request.
pub(super) async fn drive<C: Future<Output = Result<(), hyper::Error>>>(
    connection: C,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Activity,
    (client_timeout, head_timeout): (Duration, Option<Duration>),
    mut shutdown: watch::Receiver<bool>,
    signals: Signals,
    peer: SocketAddr,
) {
    let mut connection = std::pin::pin!(connection);
    let mut draining = *shutdown.borrow();
    if draining {
        graceful(connection.as_mut());
    }
    let flooded = async {
        match &signals {
            Signals::Flood(n) => n.notified().await,
            Signals::Refused(..) => std::future::pending().await,
        }
    };
    let refused = async {
        match &signals {
            Signals::Refused(verdict, server, conn) => {
                verdict.closing().await;
                // Boxed: rare, and large (it may call plugins).
                Box::pin(answer_refusal(verdict, server, conn)).await;
            }
            Signals::Flood(_) => std::future::pending().await,
        }
    };
    let mut flooded = std::pin::pin!(flooded);
    let mut refused = std::pin::pin!(refused);
    let mut cut_off: Option<tokio::time::Instant> = None;
    // The futures besides the connection are polled only after one of them woke the task:
    // nearly every wake-up is the connection's, and polling the five others on each cost
    // about 1,100 instructions per request (BENCHMARKS.md).
    let others = Arc::new(Others::default());
    let others_waker = std::task::Waker::from(Arc::clone(&others));
    loop {
        let mut changed = std::pin::pin!(shutdown.changed());
        let mut expired = std::pin::pin!(activity.expired(client_timeout, head_timeout));
        let until = cut_off;
        let mut cut = std::pin::pin!(async move {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        });
        // New futures, and ones that may have been woken while an event was handled.
        others.woken.store(true, Ordering::Release);
        let event = std::future::poll_fn(|cx| {
            // The connection first: it is what nearly every wake-up is for.
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            others.task.register(cx.waker());
            if !others.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut ocx = std::task::Context::from_waker(&others_waker);
            if !draining
                && (changed.as_mut().poll(&mut ocx).is_ready()
                    || refused.as_mut().poll(&mut ocx).is_ready())
            {
                return Poll::Ready(Event::Drain);
            }
            if cut_off.is_none() && flooded.as_mut().poll(&mut ocx).is_ready() {
                return Poll::Ready(Event::Flooded);
            }
            if cut.as_mut().poll(&mut ocx).is_ready() {
                return Poll::Ready(Event::Cut);
            }
            expired.as_mut().poll(&mut ocx).map(Event::Expired)
        })
        .await;
        match event {
            Event::Ended(result) => {
                if let Err(e) = result {
                    tracing::debug!("{peer}: {e}");
                }
                return;
            }
            Event::Drain => {
                // On a refusal, the refusal is written when hyper closes the connection.
                draining = true;
                graceful(connection.as_mut());
            }
            Event::Flooded => {
                // The GOAWAY goes out now; the client has a moment to read it, then the
                // connection is dropped (nothing more is read from it meanwhile).
                tracing::warn!("{peer}: HTTP/2 control frame flood; sending GOAWAY and closing");
                graceful(connection.as_mut());
                cut_off = Some(tokio::time::Instant::now() + FLOOD_GRACE);
            }
            Event::Cut => return,
            Event::Expired(why) => {
                match why {
                    Expired::Client => {
                        // For the log lines of the requests this cuts off.
                        activity.time_out();
                        tracing::debug!("{peer}: closed after timeout.client");
                    }
                    Expired::Head => {
                        tracing::debug!("{peer}: no complete request within timeout.http_request");
                    }
                }
                return;
            }
        }
    }
}

/// What ended one wait of [`drive`].
pub(super) enum Event {
    Ended(Result<(), hyper::Error>),
    /// Shutdown began, or an HTTP/1 request head was refused: finish what is under way.
    Drain,
    Flooded,
    Cut,
    Expired(Expired),
}

/// The waker of [`drive`]'s futures besides the connection: it notes that one of them
/// woke, and wakes the connection's task.
#[derive(Default)]
pub(super) struct Others {
    pub(super) woken: std::sync::atomic::AtomicBool,
    pub(super) task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Others {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an async fn of five arguments returns.
    fn future_size<A, B, C, D, E, F>(_: impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every client connection's task is a `serve` future, from its accept to its end, so
    /// its size is memory per connection (with TLS, HTTP/2 and HTTP/1 state inline it was
    /// 10 KiB). What only some connections need is boxed when they need it.
    #[test]
    fn a_connection_task_holds_no_room_for_what_it_does_not_speak() {
        let serve = future_size(super::serve);
        assert!(serve < 2048, "serve's future takes {serve} bytes");
    }
}
