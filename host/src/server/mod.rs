//! Listeners and client connections: bind every frontend, enforce `global.maxconn`, tell
//! HTTP/2 prior knowledge from HTTP/1.x on the same port, apply the client-side timeouts,
//! and shut down gracefully.

pub mod framing;
pub mod io;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::activity::{Activity, Expired, Tracked};
use crate::config::{Config, Frontend};
use crate::health;
use crate::proxy::log::AccessLog;
use crate::proxy::{self, ConnInfo, Proxy};
use crate::stats::Gauge;
use crate::upstream::BackendRt;
use crate::{proxy_protocol, tls};

/// How long an HTTP/2 client that flooded weir with control frames has to read the GOAWAY
/// before its connection is dropped.
const FLOOD_GRACE: Duration = Duration::from_millis(500);

/// How often idle server connections past their timeout are closed.
const POOL_SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Plugin(#[from] crate::proxy::PluginLoadError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("admin.bind: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A frontend address that could not be bound, at start or on reload.
#[derive(Debug, thiserror::Error)]
#[error("frontend[{frontend}].bind{bind}: cannot listen on {addr}: {source}")]
pub struct BindError {
    frontend: usize,
    bind: String,
    addr: SocketAddr,
    source: std::io::Error,
}

/// A running proxy: its listeners, and the handle to stop it.
pub struct Running {
    control: Arc<Control>,
    admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Connections>,
    tasks: Vec<JoinHandle<()>>,
}

/// What operators steer at run time, through the admin API, signals or the library: the
/// generation serving now and how to replace it.
pub struct Control {
    current: Current,
    generation: std::sync::Mutex<Generation>,
    /// The frontend listeners, one per bind address. Also held across a whole reload, so
    /// that reloads happen one at a time.
    listeners: tokio::sync::Mutex<Vec<Listener>>,
    /// The bound addresses per frontend, in config order, for reading without waiting.
    bound: std::sync::Mutex<Vec<(String, Vec<SocketAddr>)>>,
    log: AccessLog,
    /// The config file weir was started from, which the admin API's reload reads again.
    source: Option<std::path::PathBuf>,
    /// Client connections per frontend name; kept across reloads.
    gauges: std::sync::Mutex<HashMap<String, Arc<Gauge>>>,
    maxconn: Arc<Semaphore>,
    maxconn_limit: usize,
    connections: Arc<Connections>,
    admin: Option<crate::config::Admin>,
    started: std::time::Instant,
    /// `[defaults] timeout.shutdown` of the generation serving now, in milliseconds.
    timeout_shutdown_ms: std::sync::atomic::AtomicU64,
    /// Reloads that took effect, and those refused.
    pub reloads: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
}

/// One bound frontend address and its accept loop.
struct Listener {
    /// The address as configured (port 0 stays 0) and as bound.
    configured: SocketAddr,
    bound: SocketAddr,
    frontend: String,
    /// The frontend settings new connections get; replaced by a reload.
    server: watch::Sender<Arc<FrontendServer>>,
    /// Stops accepting and closes the listener's connections gracefully.
    closing: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Stops accepting (the socket closes) and asks its connections to finish their
    /// current request and close.
    fn close(&self) {
        let _ = self.closing.send(true);
    }
}

/// The generation requests use now: looked up per request, swapped by a reload.
type Current = Arc<std::sync::RwLock<Arc<Proxy>>>;

/// A generation's own tasks (health checks, pool sweeping), stopped when it is replaced.
struct Generation {
    number: u64,
    stop: watch::Sender<bool>,
}

fn current(c: &Current) -> Arc<Proxy> {
    Arc::clone(&c.read().unwrap_or_else(|p| p.into_inner()))
}

/// Starts a generation's background tasks; they end when `stop` fires.
fn spawn_generation(proxy: &Arc<Proxy>, stop: &watch::Sender<bool>) {
    let sweeper = Arc::clone(proxy);
    let mut stopped = stop.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POOL_SWEEP);
        loop {
            tokio::select! {
                _ = tick.tick() => sweeper.backends.iter().for_each(|b| b.purge_idle()),
                _ = stopped.changed() => return,
            }
        }
    });
    health::checker::spawn_all(&proxy.backends, &proxy.plugins, &stop.subscribe());
}

/// Why a reload was refused; the running generation keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Plugin(#[from] crate::proxy::PluginLoadError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the [admin] section cannot change on reload; restart weir for that")]
    Admin,
}

#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    closed: Notify,
}

struct ConnGuard(Arc<Connections>, Arc<Gauge>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.1.leave();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Running {
    /// The first address a frontend listens on (with the real port when the config said 0).
    pub fn addr(&self, frontend: &str) -> SocketAddr {
        self.addrs(frontend)[0]
    }

    /// Every address a frontend listens on, in config order.
    pub fn addrs(&self, frontend: &str) -> Vec<SocketAddr> {
        self.control
            .addrs(frontend)
            .unwrap_or_else(|| panic!("no frontend named {frontend}"))
    }

    /// The admin listener's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The run-time controls, shared with the admin API.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// A backend, for the run-time controls: server state (ready / drain / maint) and weight.
    pub fn backend(&self, name: &str) -> Option<Arc<BackendRt>> {
        self.control.backend(name)
    }

    /// The loaded plugins, in config order.
    pub fn plugins(&self) -> Vec<Arc<crate::plugin::Plugin>> {
        self.control.plugins()
    }

    /// The configuration generation serving now: 1 at start, one more per reload.
    pub fn generation(&self) -> u64 {
        self.control.generation()
    }

    /// See [`Control::reload`].
    pub async fn reload(&self, config: &Config) -> Result<u64, ReloadError> {
        self.control.reload(config).await
    }

    /// Stops accepting, asks every connection to finish its current request and close,
    /// and waits up to `grace` for them. Returns the number still open when it gave up.
    pub async fn shutdown(self, grace: Duration) -> usize {
        let _ = self.shutdown.send(true);
        let _ = self
            .control
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop
            .send(true);
        let listeners = std::mem::take(&mut *self.control.listeners.lock().await);
        for listener in listeners {
            listener.close();
            let _ = listener.task.await;
        }
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let closed = self.connections.closed.notified();
            let open = self.connections.open.load(Ordering::Acquire);
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.connections.open.load(Ordering::Acquire);
            }
        }
    }
}

impl Control {
    /// A backend, for the run-time controls: server state (ready / drain / maint) and weight.
    pub fn backend(&self, name: &str) -> Option<Arc<BackendRt>> {
        current(&self.current)
            .backends
            .iter()
            .find(|b| &*b.name == name)
            .cloned()
    }

    /// The loaded plugins, in config order.
    pub fn plugins(&self) -> Vec<Arc<crate::plugin::Plugin>> {
        current(&self.current).plugins.clone()
    }

    /// The configuration generation serving now: 1 at start, one more per reload.
    pub fn generation(&self) -> u64 {
        self.generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .number
    }

    /// The addresses a frontend listens on now, with real ports; None for no such frontend.
    pub fn addrs(&self, frontend: &str) -> Option<Vec<SocketAddr>> {
        self.bound
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(name, _)| name == frontend)
            .map(|(_, addrs)| addrs.clone())
    }

    /// Loads `config` as a new generation (every plugin loaded and configured, every new
    /// address bound, first) and swaps it in: the next request uses it, requests in flight
    /// finish on the old one. On any error nothing changes. Frontends may come, go and
    /// change: an address no longer configured stops accepting and its connections close
    /// after their current request; a new one starts accepting; connection-level settings
    /// apply to new connections. Servers start fresh (UP, no queue) except for what an
    /// operator set at run time (state, weight), which servers of the same backend and
    /// name keep. `[admin]` cannot change.
    pub async fn reload(&self, config: &Config) -> Result<u64, ReloadError> {
        let result = self.swap(config).await;
        match &result {
            Ok(_) => self.reloads.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.reloads_failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Counts a reload refused before it reached [`Self::reload`] (a config file that
    /// does not parse).
    pub fn note_failed_reload(&self) {
        self.reloads_failed.fetch_add(1, Ordering::Relaxed);
    }

    async fn swap(&self, config: &Config) -> Result<u64, ReloadError> {
        if config.admin != self.admin {
            return Err(ReloadError::Admin);
        }
        // One reload at a time: the listeners stay locked until the swap is done.
        let mut listeners = self.listeners.lock().await;
        let proxy = Arc::new(Proxy::new(config, self.log.clone()).await?);
        proxy.inherit_runtime_state(&current(&self.current));

        // Each configured address either keeps a listener (same address; with port 0,
        // same frontend too) or gets a new socket. Nothing is bound until the generation
        // loaded, and a bind that fails changes nothing.
        enum Slot {
            Kept(usize),
            Fresh(TcpListener),
        }
        let mut claimed = vec![false; listeners.len()];
        let mut plan = Vec::new();
        for (fi, fe) in config.frontends.iter().enumerate() {
            for (bi, addr) in fe.binds.iter().enumerate() {
                let found = listeners.iter().enumerate().position(|(i, l)| {
                    !claimed[i]
                        && l.configured == *addr
                        && (addr.port() != 0 || l.frontend == fe.name)
                });
                plan.push(match found {
                    Some(i) => {
                        claimed[i] = true;
                        Slot::Kept(i)
                    }
                    None => Slot::Fresh(bind(fe, fi, bi, *addr).await?),
                });
            }
        }

        // Commit: the new generation, then the listeners.
        let (stop, _) = watch::channel(false);
        spawn_generation(&proxy, &stop);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = proxy;
        self.timeout_shutdown_ms
            .store(millis(config.global.timeout_shutdown), Ordering::Relaxed);
        let mut old: Vec<Option<Listener>> = listeners.drain(..).map(Some).collect();
        let mut plan = plan.into_iter();
        let mut next = Vec::new();
        for fe in &config.frontends {
            let server = self.frontend_server(fe);
            for addr in &fe.binds {
                next.push(match plan.next().expect("one slot per address") {
                    Slot::Kept(i) => {
                        let mut l = old[i].take().expect("each listener is kept once");
                        l.frontend = fe.name.clone();
                        let _ = l.server.send(Arc::clone(&server));
                        l
                    }
                    Slot::Fresh(socket) => {
                        let l = self.listen(socket, *addr, fe, Arc::clone(&server));
                        tracing::info!("frontend {} listening on {}", fe.name, l.bound);
                        l
                    }
                });
            }
        }
        for l in old.into_iter().flatten() {
            tracing::info!(
                "frontend {}: no longer listening on {}",
                l.frontend,
                l.bound
            );
            l.close();
        }
        *listeners = next;
        *self.bound.lock().unwrap_or_else(|p| p.into_inner()) = bound_list(config, &listeners);
        drop(listeners);

        let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let _ = generation.stop.send(true);
        generation.stop = stop;
        generation.number += 1;
        tracing::info!("configuration reloaded: generation {}", generation.number);
        Ok(generation.number)
    }

    /// The settings new connections of a frontend get.
    fn frontend_server(&self, fe: &Frontend) -> Arc<FrontendServer> {
        let gauge = Arc::clone(
            self.gauges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(fe.name.clone())
                .or_default(),
        );
        Arc::new(FrontendServer::new(
            fe.clone(),
            Arc::clone(&self.current),
            gauge,
        ))
    }

    /// Starts accepting on a bound socket.
    fn listen(
        &self,
        socket: TcpListener,
        configured: SocketAddr,
        fe: &Frontend,
        server: Arc<FrontendServer>,
    ) -> Listener {
        let bound = socket.local_addr().unwrap_or(configured);
        let (server, server_rx) = watch::channel(server);
        let (closing, closing_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            socket,
            server_rx,
            Arc::clone(&self.maxconn),
            closing_rx,
            Arc::clone(&self.connections),
        ));
        Listener {
            configured,
            bound,
            frontend: fe.name.clone(),
            server,
            closing,
            task,
        }
    }

    /// How long requests in flight may take to finish when weir stops: `timeout.shutdown`
    /// of the configuration serving now.
    pub fn timeout_shutdown(&self) -> Duration {
        Duration::from_millis(self.timeout_shutdown_ms.load(Ordering::Relaxed))
    }

    /// The access log requests are written to.
    pub fn log(&self) -> &AccessLog {
        &self.log
    }

    /// The config file weir was started from, if any.
    pub fn source(&self) -> Option<&std::path::Path> {
        self.source.as_deref()
    }

    /// Client connections of a frontend, and the global limit.
    pub fn connections(&self, frontend: &str) -> (Arc<Gauge>, usize) {
        let gauge = self
            .gauges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(frontend)
            .cloned()
            .unwrap_or_default();
        (gauge, self.maxconn_limit)
    }

    /// How long weir has been running.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The generation serving now.
    pub fn proxy(&self) -> Arc<Proxy> {
        current(&self.current)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The bound addresses per frontend, in config order; `listeners` follow the same order.
fn bound_list(config: &Config, listeners: &[Listener]) -> Vec<(String, Vec<SocketAddr>)> {
    let mut addrs = listeners.iter().map(|l| l.bound);
    config
        .frontends
        .iter()
        .map(|f| (f.name.clone(), addrs.by_ref().take(f.binds.len()).collect()))
        .collect()
}

/// Binds one frontend address; the error names it by its place in the config.
async fn bind(
    fe: &Frontend,
    fi: usize,
    bi: usize,
    addr: SocketAddr,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        frontend: fi,
        bind: if fe.binds.len() > 1 {
            format!("[{bi}]")
        } else {
            String::new()
        },
        addr,
        source,
    })
}

/// Binds every frontend and the admin listener, and starts serving on the current tokio
/// runtime; `admin` serves the admin listener (`crate::start` hands it `admin::serve`: the
/// admin surface steers this module's [`Control`], so this module does not name it).
pub async fn start<A, F>(config: &Config, log: AccessLog, admin: A) -> Result<Running, StartError>
where
    A: FnOnce(TcpListener, Arc<Control>, crate::config::Admin, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let proxy = Arc::new(Proxy::new(config, log.clone()).await?);
    let mut sockets = Vec::new();
    for (fi, fe) in config.frontends.iter().enumerate() {
        for (bi, addr) in fe.binds.iter().enumerate() {
            sockets.push((bind(fe, fi, bi, *addr).await?, *addr, fe));
        }
    }
    let admin_listener = match &config.admin {
        Some(admin) => Some((
            TcpListener::bind(admin.bind)
                .await
                .map_err(|source| StartError::AdminBind {
                    addr: admin.bind,
                    source,
                })?,
            admin.clone(),
        )),
        None => None,
    };

    let (shutdown, _) = watch::channel(false);
    let connections = Arc::new(Connections::default());
    let (stop, _) = watch::channel(false);
    spawn_generation(&proxy, &stop);
    let control = Arc::new(Control {
        current: Arc::new(std::sync::RwLock::new(proxy)),
        generation: std::sync::Mutex::new(Generation { number: 1, stop }),
        listeners: Default::default(),
        bound: Default::default(),
        log,
        source: config.source.clone(),
        gauges: Default::default(),
        maxconn: Arc::new(Semaphore::new(config.global.maxconn)),
        maxconn_limit: config.global.maxconn,
        connections: Arc::clone(&connections),
        admin: config.admin.clone(),
        started: std::time::Instant::now(),
        timeout_shutdown_ms: millis(config.global.timeout_shutdown).into(),
        reloads: Default::default(),
        reloads_failed: Default::default(),
    });
    {
        let mut listeners = control.listeners.lock().await;
        let mut servers: HashMap<&str, Arc<FrontendServer>> = HashMap::new();
        for (socket, addr, fe) in sockets {
            let server = servers
                .entry(fe.name.as_str())
                .or_insert_with(|| control.frontend_server(fe));
            let listener = control.listen(socket, addr, fe, Arc::clone(server));
            tracing::info!("frontend {} listening on {}", fe.name, listener.bound);
            listeners.push(listener);
        }
        *control.bound.lock().unwrap_or_else(|p| p.into_inner()) = bound_list(config, &listeners);
    }
    let mut tasks = Vec::new();
    let admin = match admin_listener {
        Some((listener, cfg)) => {
            let addr = listener.local_addr().unwrap_or(cfg.bind);
            tracing::info!("admin listening on {addr}");
            tasks.push(tokio::spawn(admin(
                listener,
                Arc::clone(&control),
                cfg,
                shutdown.subscribe(),
            )));
            Some(addr)
        }
        None => None,
    };
    Ok(Running {
        control,
        admin,
        shutdown,
        connections,
        tasks,
    })
}

/// A frontend's listener side: its connection builders (the connection-level timeouts and
/// limits), and where to find the frontend of the current generation for each request.
/// A reload makes new ones for new connections.
struct FrontendServer {
    /// The frontend's config; the generation itself is looked up per request by name, so
    /// that a reload releases the old one.
    cfg: Frontend,
    live: Current,
    /// Its client connections (shared by its binds, kept across reloads).
    connections: Arc<Gauge>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// The TLS handshake, for a frontend with `tls`.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl FrontendServer {
    fn new(cfg: Frontend, live: Current, connections: Arc<Gauge>) -> Self {
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
        let tls = cfg.tls.as_deref().map(tls::acceptor);
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

async fn accept_loop(
    listener: TcpListener,
    server: watch::Receiver<Arc<FrontendServer>>,
    maxconn: Arc<Semaphore>,
    mut closing: watch::Receiver<bool>,
    connections: Arc<Connections>,
) {
    loop {
        // Past maxconn, new connections wait in the kernel's backlog, as with HAProxy.
        let permit = tokio::select! {
            p = Arc::clone(&maxconn).acquire_owned() => p.expect("the semaphore is never closed"),
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
        connections.open.fetch_add(1, Ordering::AcqRel);
        server.connections.enter();
        let guard = ConnGuard(Arc::clone(&connections), Arc::clone(&server.connections));
        let proto = if server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let local = stream.local_addr().unwrap_or(peer);
        let conn = ConnInfo::new(
            peer,
            local,
            proto,
            Arc::new(Activity::default()),
            Some(permit),
        );
        tokio::spawn(serve(stream, server, conn, closing.clone(), guard));
    }
}

async fn serve(
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
    let mut early = Vec::new();
    if cfg.accept_proxy {
        match tokio::time::timeout(limit, read_proxy_header(&mut stream)).await {
            Ok(Ok((header, rest))) => {
                if let proxy_protocol::Header::Proxied {
                    source,
                    destination,
                } = header
                {
                    conn.peer = source;
                    conn.local = destination;
                }
                early = rest;
            }
            Ok(Err(e)) => {
                tracing::debug!("{}: {e}", conn.peer);
                return;
            }
            Err(_) => {
                tracing::debug!(
                    "{}: no PROXY protocol header within timeout.http_request",
                    conn.peer
                );
                return;
            }
        }
    }
    let peer = conn.peer;
    if let Some(acceptor) = &server.tls {
        let tracked = Tracked::new(stream, bytes::Bytes::from(early), activity);
        let tls = match tokio::time::timeout(limit, acceptor.accept(tracked)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!("{peer}: TLS handshake: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("{peer}: no TLS handshake within timeout.http_request");
                return;
            }
        };
        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2);
        return run(tls, is_h2, &server, conn, shutdown).await;
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

/// Reads a PROXY protocol header (v1 or v2); returns it and the bytes read past it.
async fn read_proxy_header(
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
async fn run<I>(
    io: I,
    is_h2: bool,
    server: &Arc<FrontendServer>,
    conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
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
        // not; a box per request costs less than ~10 KiB held per idle connection.
        Box::pin(async move {
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
        drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            (client_timeout, None),
            shutdown,
            Signals::Flood(flood),
            peer,
        )
        .await;
    } else {
        let guard = framing::FramingGuard::new(
            io,
            framing::Limits {
                max_header_size: server.cfg.max_header_size,
                max_headers: server.cfg.max_headers,
            },
            Arc::clone(&verdict),
        );
        let connection = server
            .h1
            .serve_connection(TokioIo::new(guard), service)
            .with_upgrades();
        activity.await_heads();
        drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            (client_timeout, Some(server.cfg.timeout_http_request)),
            shutdown,
            Signals::Refused(Arc::clone(&verdict), Arc::clone(server), Arc::clone(&conn)),
            peer,
        )
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
enum Signals {
    /// An HTTP/2 client flooded weir with control frames: GOAWAY, then close soon after.
    Flood(Arc<Notify>),
    /// An HTTP/1 request head was refused: once the requests before it are answered, its
    /// answer is made (by the frontend serving now, for its connection) and the connection
    /// closes after it.
    Refused(Arc<framing::Verdict>, Arc<FrontendServer>, Arc<ConnInfo>),
}

/// Makes the answer to a refused head, for the guard to write before the connection
/// closes. Without a frontend (a reload removed it) the guard writes the plain refusal.
async fn answer_refusal(verdict: &framing::Verdict, server: &FrontendServer, conn: &ConnInfo) {
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
async fn drive<C: Future<Output = Result<(), hyper::Error>>>(
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
                    Expired::Client => tracing::debug!("{peer}: closed after timeout.client"),
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
enum Event {
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
struct Others {
    woken: std::sync::atomic::AtomicBool,
    task: futures_util::task::AtomicWaker,
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
