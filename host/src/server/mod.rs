//! Listeners and client connections: bind every frontend, enforce `global.maxconn`, tell
//! HTTP/2 prior knowledge from HTTP/1.x on the same port, apply the client-side timeouts,
//! and shut down gracefully.

pub mod io;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, Frontend};
use crate::health;
use crate::proxy::backend::BackendRt;
use crate::proxy::log::AccessLog;
use crate::proxy::stats::Gauge;
use crate::proxy::{self, ConnInfo, Proxy};
use io::{Activity, Tracked};

/// How often idle server connections past their timeout are closed.
const POOL_SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Plugin(#[from] crate::proxy::PluginLoadError),
    #[error("frontend[{frontend}].bind{bind}: cannot listen on {addr}: {source}")]
    Bind {
        frontend: usize,
        bind: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin.bind: cannot listen on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy: its listeners, and the handle to stop it.
pub struct Running {
    bound: Vec<(String, Vec<SocketAddr>)>,
    control: Arc<Control>,
    admin: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Connections>,
    tasks: Vec<JoinHandle<()>>,
}

/// What operators steer at run time, through the admin API, signals or the library: the
/// generation serving now and how to replace it.
pub struct Control {
    /// The configured bind addresses, which a reload may not change.
    binds: Vec<(String, Vec<SocketAddr>)>,
    current: Current,
    generation: std::sync::Mutex<Generation>,
    log: AccessLog,
    /// The config file weir was started from, which the admin API's reload reads again.
    source: Option<std::path::PathBuf>,
    /// Client connections per frontend, in config order.
    gauges: Vec<Arc<Gauge>>,
    maxconn: usize,
    admin: Option<crate::config::Admin>,
    started: std::time::Instant,
    /// Reloads that took effect, and those refused.
    pub reloads: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
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
    #[error("frontends and their bind addresses cannot change on reload; restart weir for that")]
    Frontends,
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

    pub fn addrs(&self, frontend: &str) -> &[SocketAddr] {
        self.bound
            .iter()
            .find(|(name, _)| name == frontend)
            .map(|(_, a)| a.as_slice())
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

    /// Loads `config` as a new generation (every plugin loaded and configured first) and
    /// swaps it in: the next request uses it, requests in flight finish on the old one.
    /// On any error nothing changes. Frontends and binds stay as started; the rest
    /// (backends, servers, plugins, timeouts of backends) is taken from `config`. Servers
    /// start fresh (UP, no queue) except for what an operator set at run time (state,
    /// weight), which servers of the same backend and name keep.
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
        if bind_list(config) != self.binds {
            return Err(ReloadError::Frontends);
        }
        if config.admin != self.admin {
            return Err(ReloadError::Admin);
        }
        let proxy = Arc::new(Proxy::new(config, self.log.clone()).await?);
        proxy.inherit_runtime_state(&current(&self.current));
        let (stop, _) = watch::channel(false);
        spawn_generation(&proxy, &stop);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = proxy;
        let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let _ = generation.stop.send(true);
        generation.stop = stop;
        generation.number += 1;
        tracing::info!("configuration reloaded: generation {}", generation.number);
        Ok(generation.number)
    }

    /// The config file weir was started from, if any.
    pub fn source(&self) -> Option<&std::path::Path> {
        self.source.as_deref()
    }

    /// Client connections of a frontend (by config index), and the global limit.
    pub fn connections(&self, frontend: usize) -> (&Gauge, usize) {
        (&self.gauges[frontend], self.maxconn)
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

fn bind_list(config: &Config) -> Vec<(String, Vec<SocketAddr>)> {
    config
        .frontends
        .iter()
        .map(|f| (f.name.clone(), f.binds.clone()))
        .collect()
}

/// Binds every frontend and starts serving on the current tokio runtime.
pub async fn start(config: &Config, log: AccessLog) -> Result<Running, StartError> {
    let proxy = Arc::new(Proxy::new(config, log.clone()).await?);
    let live: Current = Arc::new(std::sync::RwLock::new(Arc::clone(&proxy)));
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for (fi, fe) in config.frontends.iter().enumerate() {
        let mut addrs = Vec::new();
        for (bi, addr) in fe.binds.iter().enumerate() {
            let bind = if fe.binds.len() > 1 {
                format!("[{bi}]")
            } else {
                String::new()
            };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    frontend: fi,
                    bind,
                    addr: *addr,
                    source,
                })?;
            addrs.push(listener.local_addr().unwrap_or(*addr));
            listeners.push((listener, fe.clone(), fi));
        }
        bound.push((fe.name.clone(), addrs));
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
    let gauges: Vec<Arc<Gauge>> = config.frontends.iter().map(|_| Arc::default()).collect();
    let maxconn = Arc::new(Semaphore::new(config.global.maxconn));
    let mut tasks: Vec<JoinHandle<()>> = listeners
        .into_iter()
        .map(|(listener, fe, index)| {
            let server = Arc::new(FrontendServer::new(
                fe,
                index,
                Arc::clone(&live),
                Arc::clone(&gauges[index]),
            ));
            tokio::spawn(accept_loop(
                listener,
                server,
                Arc::clone(&maxconn),
                shutdown.subscribe(),
                Arc::clone(&connections),
            ))
        })
        .collect();
    let (stop, _) = watch::channel(false);
    spawn_generation(&proxy, &stop);
    for (name, addrs) in &bound {
        for a in addrs {
            tracing::info!("frontend {name} listening on {a}");
        }
    }
    let control = Arc::new(Control {
        binds: bind_list(config),
        current: live,
        generation: std::sync::Mutex::new(Generation { number: 1, stop }),
        log,
        source: config.source.clone(),
        gauges,
        maxconn: config.global.maxconn,
        admin: config.admin.clone(),
        started: std::time::Instant::now(),
        reloads: Default::default(),
        reloads_failed: Default::default(),
    });
    let admin = match admin_listener {
        Some((listener, cfg)) => {
            let addr = listener.local_addr().unwrap_or(cfg.bind);
            tracing::info!("admin listening on {addr}");
            tasks.push(tokio::spawn(crate::admin::serve(
                listener,
                Arc::clone(&control),
                cfg.auth,
                shutdown.subscribe(),
            )));
            Some(addr)
        }
        None => None,
    };
    Ok(Running {
        bound,
        control,
        admin,
        shutdown,
        connections,
        tasks,
    })
}

/// A frontend's listener side: its connection builders, made once at start (so its
/// connection-level timeouts and limits change on restart), and where to find the
/// frontend of the current generation for each request.
struct FrontendServer {
    /// The frontend's config as started; the generation itself is looked up per request,
    /// so that a reload releases the old one.
    cfg: Frontend,
    index: usize,
    live: Current,
    /// Its client connections (shared by its binds).
    connections: Arc<Gauge>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl FrontendServer {
    fn new(cfg: Frontend, index: usize, live: Current, connections: Arc<Gauge>) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(cfg.timeout_http_request)
            .max_headers(cfg.max_headers)
            .max_header_size(cfg.max_header_size)
            .max_buf_size(cfg.max_header_size.max(8192) + 8192)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(cfg.max_header_size as u32)
            .max_concurrent_streams(256);
        Self {
            cfg,
            index,
            live,
            connections,
            h1,
            h2,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: Arc<FrontendServer>,
    maxconn: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    connections: Arc<Connections>,
) {
    loop {
        // Past maxconn, new connections wait in the kernel's backlog, as with HAProxy.
        let permit = tokio::select! {
            p = Arc::clone(&maxconn).acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!("accept on frontend {}: {e}", server.cfg.name);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        connections.open.fetch_add(1, Ordering::AcqRel);
        server.connections.enter();
        let guard = ConnGuard(Arc::clone(&connections), Arc::clone(&server.connections));
        let conn = ConnInfo::new(peer, "http", Arc::new(Activity::default()), Some(permit));
        tokio::spawn(serve(
            stream,
            Arc::clone(&server),
            conn,
            shutdown.clone(),
            guard,
        ));
    }
}

async fn serve(
    mut stream: TcpStream,
    server: Arc<FrontendServer>,
    conn: ConnInfo,
    shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let cfg = &server.cfg;
    let peer = conn.peer;
    // The first bytes decide the protocol; they must come within timeout.http_request.
    let (prefix, is_h2) =
        match tokio::time::timeout(cfg.timeout_http_request, io::sniff_h2(&mut stream)).await {
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
    let activity = Arc::clone(&conn.activity);
    let io = TokioIo::new(Tracked::new(stream, prefix, Arc::clone(&activity)));
    let conn = Arc::new(conn);
    let server_for_service = Arc::clone(&server);
    let service = service_fn(move |req| {
        // Each request takes the frontend of the generation serving now.
        let fe = Arc::clone(&current(&server_for_service.live).frontends[server_for_service.index]);
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(proxy::handle(fe, conn, req).await) }
    });
    let client_timeout = cfg.timeout_client;
    if is_h2 {
        let connection = server.h2.serve_connection(io, service);
        drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            client_timeout,
            shutdown,
            peer,
        )
        .await;
    } else {
        let connection = server.h1.serve_connection(io, service).with_upgrades();
        drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            client_timeout,
            shutdown,
            peer,
        )
        .await;
    }
}

/// Runs a connection to its end; on shutdown lets it finish gracefully; closes it when the
/// client has been idle for timeout.client while weir was not waiting on a server.
async fn drive<C: Future<Output = Result<(), hyper::Error>>>(
    connection: C,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Activity,
    client_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let mut connection = std::pin::pin!(connection);
    let mut draining = *shutdown.borrow();
    if draining {
        graceful(connection.as_mut());
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("{peer}: {e}");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                graceful(connection.as_mut());
            }
            _ = activity.idle_timeout(client_timeout) => {
                tracing::debug!("{peer}: closed after timeout.client");
                return;
            }
        }
    }
}
