//! Listeners and client connections: bind every frontend, enforce `global.maxconn`, tell
//! HTTP/2 prior knowledge from HTTP/1.x on the same port, apply the client-side timeouts,
//! and shut down gracefully. `conn` serves one client connection; `control` swaps
//! generations and listeners at a reload.

mod conn;
mod control;
pub mod framing;
mod global;
pub mod io;
mod tcp;

use conn::FrontendServer;
pub use control::{Control, ReloadError};
use control::{Generation, bound_list, millis};
pub use global::{GlobalInfo, target_name};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, Frontend};
use crate::health;
use crate::proxy::Proxy;
use crate::proxy::log::AccessLog;
use crate::stats::Gauge;
use crate::upstream::BackendRt;

/// How long an HTTP/2 client that flooded weir with control frames has to read the GOAWAY
/// before its connection is dropped.
pub(super) const FLOOD_GRACE: Duration = Duration::from_millis(500);

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
    pub(super) frontend: usize,
    pub(super) bind: String,
    pub(super) addr: SocketAddr,
    pub(super) source: std::io::Error,
}

/// A running proxy: its listeners, and the handle to stop it.
pub struct Running {
    pub(super) control: Arc<Control>,
    pub(super) admin: Option<SocketAddr>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) connections: Arc<Connections>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

/// The generation requests use now: looked up per request, swapped by a reload.
pub(super) type Current = Arc<std::sync::RwLock<Arc<Proxy>>>;

pub(super) fn current(c: &Current) -> Arc<Proxy> {
    Arc::clone(&c.read().unwrap_or_else(|p| p.into_inner()))
}

/// Starts a generation's background tasks; they end when `stop` fires.
pub(super) fn spawn_generation(proxy: &Arc<Proxy>, stop: &watch::Sender<bool>) {
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

#[derive(Default)]
pub(super) struct Connections {
    /// Client connections open on the process, on every frontend.
    pub(super) open: Arc<Gauge>,
    pub(super) closed: Notify,
}

pub(super) struct ConnGuard(Arc<Connections>, Arc<Gauge>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.1.leave();
        if self.0.open.leave() == 1 {
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

    /// Stops: goes on accepting for `[global] grace` (0 by default) with `/healthz`
    /// answering 503, then stops accepting, asks every connection to finish its current
    /// request and close, and waits up to `grace` for them. Returns the number still open
    /// when it gave up. The admin listener serves to the end of it.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.control.draining.store(true, Ordering::Release);
        let linger = self.control.grace();
        if !linger.is_zero() {
            tracing::info!("stopping: accepting for {linger:?} more ([global] grace)");
            tokio::time::sleep(linger).await;
        }
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
        let deadline = tokio::time::Instant::now() + grace;
        let left = loop {
            let closed = self.connections.closed.notified();
            let open = self.connections.open.now();
            if open == 0 {
                break 0;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                break self.connections.open.now();
            }
        };
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
        left as usize
    }
}

/// Binds one frontend address; the error names it by its place in the config.
pub(super) async fn bind(
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
    A: FnOnce(TcpListener, Arc<Control>, crate::config::Admin) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let proxy = Arc::new(Proxy::new(config, log.clone(), None).await?);
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
    crate::state::use_store(&config.store).await;
    spawn_generation(&proxy, &stop);
    let control = Arc::new(Control {
        current: Arc::new(std::sync::RwLock::new(proxy)),
        generation: std::sync::Mutex::new(Generation { number: 1, stop }),
        listeners: Default::default(),
        bound: Default::default(),
        global: global::RunningGlobal::new(config, log),
        source: config.source.clone(),
        config: std::sync::Mutex::new(Arc::new(config.clone())),
        gauges: Default::default(),
        connections: Arc::clone(&connections),
        admin: config.admin.clone(),
        started: std::time::Instant::now(),
        timeout_shutdown_ms: millis(config.global.timeout_shutdown).into(),
        grace_ms: millis(config.global.grace).into(),
        draining: Default::default(),
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
            tasks.push(tokio::spawn(admin(listener, Arc::clone(&control), cfg)));
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
