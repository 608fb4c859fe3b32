//! Reload control: the generation serving now, the listeners (added and removed as a
//! reload's frontends say), and what operators steer at run time through the admin API,
//! signals or the library.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Frontend};
use crate::proxy::Proxy;
use crate::proxy::log::AccessLog;
use crate::stats::Gauge;
use crate::upstream::BackendRt;

use super::conn::{FrontendServer, accept_loop};
use super::{BindError, Connections, Current, bind, current, spawn_generation};

/// What operators steer at run time, through the admin API, signals or the library: the
/// generation serving now and how to replace it.
pub struct Control {
    pub(super) current: Current,
    pub(super) generation: std::sync::Mutex<Generation>,
    /// The frontend listeners, one per bind address. Also held across a whole reload, so
    /// that reloads happen one at a time.
    pub(super) listeners: tokio::sync::Mutex<Vec<Listener>>,
    /// The bound addresses per frontend, in config order, for reading without waiting.
    pub(super) bound: std::sync::Mutex<Vec<(String, Vec<SocketAddr>)>>,
    /// `[global]` as running: the connection slots, the access log, what needs a restart.
    pub(super) global: super::global::RunningGlobal,
    /// The config file weir was started from, which the admin API's reload reads again.
    pub(super) source: Option<std::path::PathBuf>,
    /// The config of the generation serving now.
    pub(super) config: std::sync::Mutex<Arc<Config>>,
    /// Client connections per frontend name; kept across reloads.
    pub(super) gauges: std::sync::Mutex<HashMap<String, Arc<Gauge>>>,
    pub(super) connections: Arc<Connections>,
    pub(super) admin: Option<crate::config::Admin>,
    pub(super) started: std::time::Instant,
    /// `[defaults] timeout.shutdown` of the generation serving now, in milliseconds.
    pub(super) timeout_shutdown_ms: std::sync::atomic::AtomicU64,
    /// `[global] grace` of the generation serving now, in milliseconds.
    pub(super) grace_ms: std::sync::atomic::AtomicU64,
    /// A graceful shutdown has begun.
    pub(super) draining: std::sync::atomic::AtomicBool,
    /// Reloads that took effect, and those refused.
    pub reloads: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
}

/// One bound frontend address and its accept loop.
pub(super) struct Listener {
    /// The address as configured (port 0 stays 0) and as bound.
    pub(super) configured: SocketAddr,
    pub(super) bound: SocketAddr,
    pub(super) frontend: String,
    /// The frontend settings new connections get; replaced by a reload.
    pub(super) server: watch::Sender<Arc<FrontendServer>>,
    /// Stops accepting and closes the listener's connections gracefully.
    pub(super) closing: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
}

impl Listener {
    /// Stops accepting (the socket closes) and asks its connections to finish their
    /// current request and close.
    pub(super) fn close(&self) {
        let _ = self.closing.send(true);
    }
}

/// A generation's own tasks (health checks, pool sweeping), stopped when it is replaced.
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) stop: watch::Sender<bool>,
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
    #[error("global.access_log: {0}")]
    AccessLog(std::io::Error),
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

    /// Whether a graceful shutdown has begun (the node is going).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
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

    pub(super) async fn swap(&self, config: &Config) -> Result<u64, ReloadError> {
        if config.admin != self.admin {
            return Err(ReloadError::Admin);
        }
        // One reload at a time: the listeners stay locked until the swap is done.
        let mut listeners = self.listeners.lock().await;
        let before = current(&self.current);
        let log = self
            .global
            .log_for(config)
            .map_err(ReloadError::AccessLog)?;
        let proxy = Arc::new(Proxy::new(config, log.clone(), Some(&before)).await?);

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
        crate::state::use_store(&config.store).await;
        self.global.apply(config, log);
        spawn_generation(&proxy, &stop);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = proxy;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(config.clone());
        self.timeout_shutdown_ms
            .store(millis(config.global.timeout_shutdown), Ordering::Relaxed);
        self.grace_ms
            .store(millis(config.global.grace), Ordering::Relaxed);
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
    pub(super) fn frontend_server(&self, fe: &Frontend) -> Arc<FrontendServer> {
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
    pub(super) fn listen(
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
            Arc::clone(&self.global.maxconn),
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

    /// `[global] grace` of the generation serving now: how long a stop keeps accepting.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(Ordering::Relaxed))
    }

    /// The access log requests are written to now.
    pub fn log(&self) -> AccessLog {
        self.global.log()
    }

    /// The `[admin]` section weir runs with (a reload cannot change it).
    pub fn admin(&self) -> Option<&crate::config::Admin> {
        self.admin.as_ref()
    }

    /// The `[global]` settings running, and what the last config needs a restart for.
    pub fn global(&self) -> super::global::GlobalInfo {
        self.global.info()
    }

    /// The config of the generation serving now (runtime changes to servers aside).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.lock().unwrap_or_else(|p| p.into_inner()))
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
        (gauge, self.global.maxconn())
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

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The bound addresses per frontend, in config order; `listeners` follow the same order.
pub(super) fn bound_list(
    config: &Config,
    listeners: &[Listener],
) -> Vec<(String, Vec<SocketAddr>)> {
    let mut addrs = listeners.iter().map(|l| l.bound);
    config
        .frontends
        .iter()
        .map(|f| (f.name.clone(), addrs.by_ref().take(f.binds.len()).collect()))
        .collect()
}
