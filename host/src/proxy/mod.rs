//! The request pipeline: from a client request to a server and back. This file holds a
//! generation of frontends ([`Proxy`]), what is known of a client connection
//! ([`ConnInfo`]) and [`handle`], which runs a request's stages ([`pipeline`]) and has
//! every failure answered by [`local`].

pub mod body;
mod chain;
mod error;
pub mod headers;
pub mod local;
pub mod log;
mod pipeline;
mod splice;
mod syslog;
pub mod tcp;
mod tunnel;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::activity::Activity;
use crate::config::{Config, Frontend};
use crate::plugin::{self, LoadError, Plugin};
use crate::stats::Counters;
use crate::upstream::{BackendRt, Received, ServerRt, TimerSlot};
use body::{Logged, ResponseBody};
pub use error::ProxyError;
use log::{AccessLog, LogRecord, Target};

/// One generation of the running configuration: frontends with their backends.
pub struct Proxy {
    pub frontends: Vec<Arc<FrontendRt>>,
    pub backends: Vec<Arc<BackendRt>>,
    pub plugins: Vec<Arc<Plugin>>,
}

pub struct FrontendRt {
    pub cfg: Frontend,
    pub name: Arc<str>,
    pub backend: Arc<BackendRt>,
    /// The plugin chain, in order.
    pub plugins: Vec<chain::Link>,
    /// Every backend, for plugins that route.
    pub backends: Arc<[Arc<BackendRt>]>,
    pub log: AccessLog,
    pub stats: Arc<Counters>,
}

/// A plugin that could not be loaded: the config is refused.
#[derive(Debug, thiserror::Error)]
#[error("plugin.{name}: {error}")]
pub struct PluginLoadError {
    pub name: String,
    pub error: LoadError,
}

impl Proxy {
    /// Builds a generation: backends, and every plugin loaded and configured. `old`: the
    /// generation it replaces, whose run-time state carries over for the frontends,
    /// backends and servers that are still there (counters, operators' settings, health).
    pub async fn new(
        config: &Config,
        log: AccessLog,
        old: Option<&Proxy>,
    ) -> Result<Self, PluginLoadError> {
        let backends: Vec<Arc<BackendRt>> = config
            .backends
            .iter()
            .map(|b| {
                let before = old.and_then(|o| o.backends.iter().find(|o| *o.name == *b.name));
                BackendRt::new(b.clone(), before.map(|b| &**b))
            })
            .collect();
        let shared: Arc<[Arc<BackendRt>]> = backends.clone().into();
        let before = old.map_or(&[][..], |o| &o.plugins[..]);
        let shared_store = matches!(config.store, crate::config::Store::Redis(_));
        let plugins = plugin::load_all(&config.plugins, Arc::clone(&shared), before, shared_store)
            .await
            .map_err(|(name, error)| PluginLoadError { name, error })?;
        for b in &config.backends {
            for s in &b.servers {
                let judge = s.health.as_ref().and_then(|h| match &h.kind {
                    crate::config::CheckKind::Http(http) => http.plugin.as_deref(),
                    crate::config::CheckKind::Tcp { .. } => None,
                });
                let Some(name) = judge else { continue };
                let p = plugins
                    .iter()
                    .find(|p| &*p.name == name)
                    .expect("validation checked plugin names");
                if !p.has(plugin::Hook::HealthCheck) {
                    let why = format!(
                        "backend {}: its health check names a plugin without on-health-check",
                        b.name
                    );
                    return Err(PluginLoadError {
                        name: name.to_owned(),
                        error: LoadError::Misused(why),
                    });
                }
            }
        }
        let mut frontends = Vec::with_capacity(config.frontends.len());
        for f in &config.frontends {
            let backend = backends
                .iter()
                .find(|b| b.cfg.name == f.default_backend)
                .expect("validation checked default_backend");
            let mut chain = Vec::with_capacity(f.plugins.len());
            for name in &f.plugins {
                let plugin = plugins
                    .iter()
                    .find(|p| &*p.name == name)
                    .expect("validation checked plugin names");
                let tcp = f.mode == crate::config::Mode::Tcp;
                if tcp && !plugin.connects() {
                    let why = format!(
                        "frontend {} is mode tcp, and this plugin has no on-connect (a component of the world plugin, not plugin-l4: build it with this weir's SDK)",
                        f.name
                    );
                    return Err(PluginLoadError {
                        name: name.clone(),
                        error: LoadError::Misused(why),
                    });
                }
                // Fixed header edits are HTTP's.
                let fixed_edits = |version: &Arc<Plugin>| {
                    let version = Arc::clone(version);
                    let frontend = f.name.clone();
                    async move {
                        match tcp {
                            true => Ok(plugin::FixedEdits::default()),
                            false => version.fixed_edits(&frontend).await,
                        }
                    }
                };
                let failed = |error| PluginLoadError {
                    name: name.clone(),
                    error,
                };
                let fixed = fixed_edits(plugin).await.map_err(failed)?;
                let candidate_fixed = match &plugin.candidate {
                    Some(c) => fixed_edits(&c.plugin)
                        .await
                        .map_err(|e| failed(LoadError::Candidate(Box::new(e))))?,
                    None => plugin::FixedEdits::default(),
                };
                chain.push(chain::Link {
                    plugin: Arc::clone(plugin),
                    fixed,
                    candidate_fixed,
                });
            }
            frontends.push(Arc::new(FrontendRt {
                cfg: f.clone(),
                name: f.name.as_str().into(),
                backend: Arc::clone(backend),
                plugins: chain,
                backends: Arc::clone(&shared),
                log: log.clone(),
                stats: old
                    .and_then(|o| o.frontend(&f.name))
                    .map(|o| Arc::clone(&o.stats))
                    .unwrap_or_default(),
            }));
        }
        Ok(Self {
            frontends,
            backends,
            plugins,
        })
    }

    /// A frontend of this generation, by name.
    pub fn frontend(&self, name: &str) -> Option<&Arc<FrontendRt>> {
        self.frontends.iter().find(|f| &*f.name == name)
    }
}

/// Logs and counts (`ereq`) a request head the HTTP/1 framing check refused before any of
/// it reached the HTTP parser, answered with `status` ([`local::refusal`]).
pub fn log_refused(
    fe: &FrontendRt,
    conn: &ConnInfo,
    refused: &crate::http1::Rejection,
    status: u16,
) {
    let method = refused
        .method
        .as_deref()
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or_else(|| Method::from_bytes(b"BADREQ").expect("a valid token"));
    let target = Target::Text(refused.target.clone().unwrap_or_default());
    let mut record = new_record(
        fe,
        conn,
        method,
        target,
        Version::HTTP_11,
        refused.head_bytes,
    );
    record.status = status;
    record.termination = *b"PR";
    tracing::debug!("{}: request refused: {}", conn.peer, refused.reason);
    record.tally.count(&record);
    fe.log.emit(&record);
}

/// The log record of a request starting now on `fe`, counted in the frontend's stats.
fn new_record(
    fe: &FrontendRt,
    conn: &ConnInfo,
    method: Method,
    uri: Target,
    version: Version,
    bytes_in: u64,
) -> LogRecord {
    let start = Instant::now();
    let tq = conn.take_wait(start);
    // From the head's first byte to now is HAProxy's TR; the rest of the wait was idle.
    let ti = conn
        .activity
        .take_head_began()
        .map_or(Duration::ZERO, |began| {
            tq.saturating_sub(start.saturating_duration_since(began))
        });
    LogRecord {
        client: conn.peer,
        // Only the log line shows it.
        time: if fe.log.is_on() {
            SystemTime::now()
        } else {
            SystemTime::UNIX_EPOCH
        },
        start,
        frontend: Arc::clone(&fe.name),
        backend: None,
        server: None,
        tq,
        ti,
        tw: None,
        tc: None,
        tr: None,
        status: 0,
        bytes: 0,
        head_bytes: 0,
        received: Arc::new(Received {
            bytes: AtomicU64::new(bytes_in),
            ..Default::default()
        }),
        termination: *b"--",
        retries: 0,
        redispatches: 0,
        tally: log::Tally {
            frontend: Some(Arc::clone(&fe.stats)),
            ..Default::default()
        },
        logged: fe.log.is_on(),
        load: log::Load::default(),
        queue_ahead: 0,
        method,
        uri,
        version,
        format: fe.cfg.log_format.clone(),
    }
}

/// What the pipeline knows about the client connection a request came on.
pub struct ConnInfo {
    /// The client: the connection's peer, or the source a PROXY protocol header gave.
    pub peer: SocketAddr,
    /// The address the client connected to (or the destination a PROXY header gave).
    pub local: SocketAddr,
    /// "http" or "https", for X-Forwarded-Proto.
    pub proto: &'static str,
    pub activity: Arc<Activity>,
    /// Milliseconds (on the activity clock) when the connection became ready for its next request.
    ready_since: AtomicU64,
    accepted: Instant,
    /// The timer of the wait for a server's response head (timeout.server), kept from one
    /// request to the next.
    server_timer: TimerSlot,
    /// The client's address as text, made on first use ([`Self::peer_ip_text`]).
    peer_ip_text: OnceLock<Box<str>>,
    /// The connection's share of `global.maxconn`, held while any request or tunnel lives.
    _permit: Option<OwnedSemaphorePermit>,
    /// The connections open now, for the access log.
    open: crate::stats::Open,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        proto: &'static str,
        activity: Arc<Activity>,
        permit: Option<OwnedSemaphorePermit>,
        open: crate::stats::Open,
    ) -> Self {
        Self {
            peer,
            local,
            proto,
            activity,
            ready_since: AtomicU64::new(0),
            accepted: Instant::now(),
            server_timer: TimerSlot::default(),
            peer_ip_text: OnceLock::new(),
            _permit: permit,
            open,
        }
    }

    /// The client's address as X-Forwarded-For and plugins get it: formatted for the
    /// connection's first request that needs it, kept for the requests after it.
    pub fn peer_ip_text(&self) -> &str {
        self.peer_ip_text
            .get_or_init(|| self.peer.ip().to_string().into())
    }

    /// What is open now, for the log: the connections, and the other requests on the
    /// backend and server a request went to (it holds a slot there, and HAProxy, which
    /// counts when the request is over, does not count it).
    fn load(&self, on: Option<(&BackendRt, &ServerRt)>) -> log::Load {
        let (backend, server) = on.map_or((0, 0), |(b, s)| {
            let server = u64::from(s.in_flight.load(Ordering::Relaxed));
            (b.sessions().saturating_sub(1), server.saturating_sub(1))
        });
        log::Load {
            process: self.open.process.now(),
            frontend: self.open.frontend.now(),
            backend,
            server,
        }
    }

    /// Time since the connection was accepted or the previous response head was sent.
    fn take_wait(&self, now: Instant) -> Duration {
        let now_ms = now.duration_since(self.accepted).as_millis() as u64;
        let since = self.ready_since.swap(now_ms, Ordering::Relaxed);
        Duration::from_millis(now_ms.saturating_sub(since))
    }

    fn mark_ready(&self) {
        self.ready_since.store(
            self.accepted.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

/// Serves one request. Never fails: errors become local responses.
pub async fn handle(
    fe: Arc<FrontendRt>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let request = conn.activity.request();
    let uri = Target::Uri(req.uri().clone());
    let head = head_size(&req, &uri);
    let (method, version) = (req.method().clone(), req.version());
    let record = || new_record(&fe, &conn, method, uri, version, head);
    let mut pending = Unanswered {
        logged: Some(Logged::boxed(record, fe.log.clone(), request)),
        fe: &fe,
        conn: &conn,
    };
    let version = req.version();
    // Only the request's number is kept across the pipeline (every byte held here is
    // moved with each request's future); the error path makes its `Client` again.
    let id = chain::next_request_id();
    // The plugins that ran, once the chain has: weir's own answers pass back through them.
    let mut ran = None;
    let forwarded = pipeline::forward(&fe, &conn, req, pending.record(), id, &mut ran).await;
    let mut logged = pending.answered();
    let record = &mut logged.record;
    let response = match forwarded {
        Ok(mut response) => {
            if record.logged {
                record.head_bytes = response_head_size(&response);
            }
            response.body_mut().attach(logged);
            response
        }
        Err(err) => {
            if record.logged && record.load.process == 0 {
                record.load = conn.load(None);
            }
            let client = chain::Client::of(&fe, &conn, id);
            let answer = local::error(&fe, client, &err, logged, version, ran);
            Box::pin(answer).await
        }
    };
    conn.mark_ready();
    response
}

/// A request's record until its response is decided. A request dropped before that (its
/// client went away, or timeout.client closed its connection) is logged and counted
/// here, with a termination state saying who ended it and in which phase, and status -1.
struct Unanswered<'a> {
    logged: Option<Box<Logged>>,
    fe: &'a FrontendRt,
    conn: &'a ConnInfo,
}

impl Unanswered<'_> {
    fn record(&mut self) -> &mut LogRecord {
        &mut self
            .logged
            .as_mut()
            .expect("a record until answered")
            .record
    }

    fn answered(mut self) -> Box<Logged> {
        self.logged.take().expect("a record until answered")
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some(mut logged) = self.logged.take() else {
            return;
        };
        let record = &mut logged.record;
        let who = match self.conn.activity.timed_out() {
            true => b'c',
            false => b'C',
        };
        record.termination = [who, cut_phase(record)];
        if record.logged {
            record.load = self.conn.load(None);
        }
        record.tally.count(record);
        self.fe.log.emit(record);
    }
}

/// The phase a request was in when its client cut it off, as HAProxy names them: `R`
/// before a server was sought (the plugins), `Q` waiting for a server slot, `C`
/// connecting, `D` sending the request body, `H` waiting for the response head.
fn cut_phase(record: &LogRecord) -> u8 {
    if record.tc.is_some() {
        match record.received.complete.load(Ordering::Acquire) {
            true => b'H',
            false => b'D',
        }
    } else if record.tw.is_some() {
        b'C'
    } else if record.backend.is_some() {
        b'Q'
    } else {
        b'R'
    }
}

/// The size of a response head as weir writes it on HTTP/1.1: status line, header lines
/// (with the `date` the listener adds when the head has none), blank line.
fn response_head_size<B>(response: &Response<B>) -> u64 {
    let status = response.status();
    let line = "HTTP/1.1 200 \r\n".len() + status.canonical_reason().map_or(0, str::len);
    let fields: usize = response
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    let date = match response.headers().contains_key(http::header::DATE) {
        true => 0,
        false => "date: Sat, 05 Dec 2026 21:55:12 GMT\r\n".len(),
    };
    (line + fields + date + 2) as u64
}

/// The size of a request head as HTTP/1.1 writes it: request line (`uri` is its target
/// as written), header lines, blank line.
fn head_size<B>(req: &Request<B>, uri: &Target) -> u64 {
    let line = req.method().as_str().len() + 1 + uri.written_len() + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (line + fields + 2) as u64
}
