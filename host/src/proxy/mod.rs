//! The request pipeline: from a client request to a server and back.
//!
//! validate → route (the frontend's backend; plugins will choose here) → pick a server
//! and connect, retrying connect failures → send with the server timeout → stream the
//! response back. Every failure becomes a [`ProxyError`] with one status.

pub mod body;
mod chain;
mod error;
pub mod headers;
pub mod local;
pub mod log;
mod tunnel;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::activity::Activity;
use crate::balance::RequestKey;
use crate::config::{Config, Frontend};
use crate::plugin::{self, LoadError, Plugin};
use crate::stats::Counters;
use crate::upstream::{
    self, BackendRt, ClientBody, InFlight, Outcome, QueueError, Received, TimerSlot, Unsent,
};
use body::ResponseBody;
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
    /// Takes over what operators set at run time in the generation this one replaces.
    pub fn inherit_runtime_state(&self, old: &Proxy) {
        for b in &self.backends {
            if let Some(o) = old.backends.iter().find(|o| o.name == b.name) {
                b.inherit(o);
            }
        }
    }

    /// Builds a generation: backends, and every plugin loaded and configured.
    pub async fn new(config: &Config, log: AccessLog) -> Result<Self, PluginLoadError> {
        let backends: Vec<Arc<BackendRt>> = config
            .backends
            .iter()
            .map(|b| BackendRt::new(b.clone()))
            .collect();
        let shared: Arc<[Arc<BackendRt>]> = backends.clone().into();
        let plugins = plugin::load_all(&config.plugins, Arc::clone(&shared))
            .await
            .map_err(|(name, error)| PluginLoadError { name, error })?;
        for b in &config.backends {
            for s in &b.servers {
                let judge = s.health.as_ref().and_then(|h| match &h.kind {
                    crate::config::CheckKind::Http(http) => http.plugin.as_deref(),
                    crate::config::CheckKind::Tcp => None,
                });
                let Some(name) = judge else { continue };
                let p = plugins
                    .iter()
                    .find(|p| &*p.name == name)
                    .expect("validation checked plugin names");
                if !p.hooks().contains(plugin::types::Hooks::ON_HEALTH_CHECK) {
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
                let fixed = plugin
                    .fixed_edits(&f.name)
                    .await
                    .map_err(|error| PluginLoadError {
                        name: name.clone(),
                        error,
                    })?;
                chain.push(chain::Link {
                    plugin: Arc::clone(plugin),
                    fixed,
                });
            }
            frontends.push(Arc::new(FrontendRt {
                cfg: f.clone(),
                name: f.name.as_str().into(),
                backend: Arc::clone(backend),
                plugins: chain,
                backends: Arc::clone(&shared),
                log: log.clone(),
                stats: Arc::default(),
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
/// it reached the HTTP parser; the check itself answered the client.
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
        tq: conn.take_wait(start),
        tw: None,
        tc: None,
        tr: None,
        status: 0,
        bytes: 0,
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
        method,
        uri,
        version,
        format: fe.cfg.log_format,
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
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        proto: &'static str,
        activity: Arc<Activity>,
        permit: Option<OwnedSemaphorePermit>,
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
        }
    }

    /// The client's address as X-Forwarded-For and plugins get it: formatted for the
    /// connection's first request that needs it, kept for the requests after it.
    pub fn peer_ip_text(&self) -> &str {
        self.peer_ip_text
            .get_or_init(|| self.peer.ip().to_string().into())
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
    let mut record = new_record(&fe, &conn, req.method().clone(), uri, req.version(), head);
    let version = req.version();
    let id = chain::next_request_id();
    // The plugins that ran, once the chain has: weir's own answers pass back through them.
    let mut ran = None;
    let response = match forward(&fe, &conn, req, &mut record, id, &mut ran).await {
        Ok(mut response) => {
            response.body_mut().attach(record, fe.log.clone(), request);
            response
        }
        Err(err) => {
            let client = chain::Client {
                conn: &conn,
                frontend: &fe.name,
                scheme: conn.proto,
                id,
            };
            let answer = local::error(&fe, client, &err, record, version, request, ran);
            Box::pin(answer).await
        }
    };
    conn.mark_ready();
    response
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

/// Decides a request's response: a server's, a plugin's or weir's own. `record` fills in
/// on the way; [`handle`] attaches it to the response body, which logs it at its end.
/// `id`: the request's number for plugins; `ran` becomes the plugins that ran, once the
/// chain has.
async fn forward(
    fe: &FrontendRt,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    record: &mut LogRecord,
    id: u64,
    ran_slot: &mut Option<Vec<chain::Ran>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::NotImplemented("CONNECT"));
    }
    headers::check_framing(req.version(), req.headers())?;
    headers::check_target(req.method(), req.version(), req.uri())?;
    let host = headers::request_host(req.version(), req.uri(), req.headers())?;
    let client = chain::Client {
        conn,
        frontend: &fe.name,
        scheme: conn.proto,
        id,
    };
    if fe.cfg.redirect_https && conn.proto == "http" {
        let answered = chain::Answered {
            method: req.method().as_str(),
            path: req.uri().path(),
            client,
            backend: None,
            server: None,
        };
        let redirect = local::redirect_https(fe, &answered, host.as_ref(), req.uri(), record);
        return Box::pin(redirect).await;
    }
    let upgrade = headers::is_upgrade(req.version(), req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let forwarded = fe.cfg.forwardfor.then(|| (conn.peer_ip_text(), conn.proto));
    headers::prepare_request(
        &parts.method,
        &mut parts.uri,
        &mut parts.version,
        &mut parts.headers,
        host.as_ref(),
        upgrade,
        forwarded,
    );

    // The plugin chain: edits, a route, or a response of its own.
    let mut no_chain = Vec::new();
    let ran = if fe.plugins.is_empty() {
        &mut no_chain
    } else {
        ran_slot.insert(Vec::new())
    };
    let mut routed: Option<Arc<BackendRt>> = None;
    let mut pinned = None;
    if !fe.plugins.is_empty() {
        // Boxed, as are the other plugin and connect steps below: they are large, and
        // unboxed they would make every request's future (moved and held per request)
        // as large as the largest of them, whether it runs or not.
        let decision = Box::pin(chain::on_request(
            &fe.plugins,
            &fe.backends,
            &fe.backend,
            &mut parts,
            host.as_ref().map(|h| h.as_str()),
            client,
            ran,
        ))
        .await
        .map_err(|_| ProxyError::PluginFailed)?;
        match decision {
            chain::Decision::Proceed {
                backend: chosen,
                prefer,
            } => {
                routed = chosen;
                pinned = prefer;
            }
            chain::Decision::Respond(answer) => {
                let answered = chain::Answered {
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    client,
                    backend: None,
                    server: None,
                };
                let answer = local::from_plugin(fe, &answered, ran, answer, record);
                return Ok(Box::pin(answer).await);
            }
        }
    }
    let backend = routed.as_ref().unwrap_or(&fe.backend);
    record.backend = Some(Arc::clone(&backend.name));
    record.tally.backend = Some(Arc::clone(&backend.stats));
    // What on-response is told of the request, kept only for plugins that will see it.
    let (method, path) = if ran.is_empty() {
        (String::new(), String::new())
    } else {
        (parts.method.to_string(), parts.uri.path().to_owned())
    };

    let retry_on = &backend.cfg.retry_on;
    // A request can be sent again after reaching a server only if repeating it is safe
    // and nothing of it is lost: an idempotent method without a body.
    let replay = (retry_on.after_send()
        && http_body::Body::is_end_stream(&body)
        && is_idempotent(&parts.method)
        && !upgrade)
        .then(|| parts.clone());
    // Bodiless requests that ask for no upgrade are sent by this task itself on plain-TCP
    // HTTP/1.1 connections (`direct`); the others go through hyper's client.
    let direct = !upgrade && http_body::Body::is_end_stream(&body);
    let client_body = ClientBody::new(body, Arc::clone(&record.received), &conn.activity);
    let mut pending = Some(Request::from_parts(parts, client_body));
    let mut excluded = Vec::new();
    // The wait for a server (Tw) starts when the plugins are done: without plugins, when
    // the request did.
    let started = if fe.plugins.is_empty() {
        record.start
    } else {
        Instant::now()
    };

    loop {
        let mut request = match (pending.take(), &replay) {
            (Some(r), _) => r,
            (None, Some(parts)) => Request::from_parts(parts.clone(), ClientBody::empty()),
            (None, None) => unreachable!("a retry after sending needs a replayable request"),
        };
        let can_retry = record.retries < backend.cfg.retries;
        let slot = choose(backend, &request, conn.peer.ip(), &mut excluded, pinned).await?;
        // One clock reading serves the wait's end, the pool's freshness check and, on a
        // pooled connection, the moment the request is sent.
        let chosen_at = Instant::now();
        record.tw.get_or_insert_with(|| chosen_at - started);
        let server = Arc::clone(slot.server());
        let index = slot.index();
        record.server = Some(Arc::clone(&server.name));
        record.tally.server = Some(Arc::clone(&server.stats));
        // The next attempt goes elsewhere with redispatch (even from a server a plugin
        // preferred), else to this server again.
        let mut next_attempt = |record: &mut LogRecord| {
            record.retries += 1;
            if backend.cfg.redispatch {
                record.redispatches += 1;
                excluded.push(index);
                pinned = None;
            } else {
                pinned = Some(index);
            }
        };

        let connection = match server.pooled(chosen_at, direct) {
            Some(connection) => {
                record.tc = Some(Duration::ZERO);
                connection
            }
            None => {
                let connect_start = Instant::now();
                let preface = server
                    .cfg
                    .send_proxy
                    .map(|v| crate::proxy_protocol::encode(v, conn.peer, conn.local));
                match server
                    .connect(backend.cfg.timeout_connect, preface.as_deref(), direct)
                    .await
                {
                    Ok(connection) => {
                        record.tc = Some(connect_start.elapsed());
                        connection
                    }
                    Err(e) => {
                        tracing::warn!("{}/{}: {e}", backend.name, server.name);
                        backend.observe(index, true, false);
                        if retry_on.conn_failure && can_retry {
                            next_attempt(record);
                            pending = Some(request);
                            continue;
                        }
                        return Err(ProxyError::ConnectFailed(e.to_string()));
                    }
                }
            }
        };

        if connection.is_h2() && client_upgrade.is_some() {
            return Err(ProxyError::ServerFailed(
                "an upgrade (WebSocket) cannot go to a server spoken to in HTTP/2".into(),
            ));
        }
        headers::for_server(&mut request, connection.is_h2(), server.cfg.tls.is_some());
        let sent_at = if connection.reused() {
            chosen_at
        } else {
            Instant::now()
        };
        let waiting = conn.activity.awaiting_server();
        let mut timer = conn.server_timer.take(sent_at + backend.cfg.timeout_server);
        let sent = upstream::send(
            backend,
            &server,
            connection,
            request,
            &mut timer,
            &record.received.failed,
        )
        .await;
        drop(timer);
        // One clock reading for the end of the wait and the response time.
        let answered = Instant::now();
        waiting.end_at(answered.into());
        match sent {
            Outcome::Unsent(request, why) => {
                backend.observe(index, true, false);
                if retry_on.conn_failure && can_retry {
                    next_attempt(record);
                    pending = Some(request);
                    continue;
                }
                return Err(match why {
                    Unsent::Write(e) => ProxyError::ServerFailed(e),
                    Unsent::Connect(e) => ProxyError::ConnectFailed(e.to_string()),
                });
            }
            Outcome::ClientBody => return Err(ProxyError::ClientBody),
            Outcome::Timeout => {
                backend.observe(index, true, true);
                if retry_on.response_timeout && replay.is_some() && can_retry {
                    next_attempt(record);
                    continue;
                }
                return Err(ProxyError::ServerTimeout);
            }
            Outcome::Failed(why) => {
                backend.observe(index, true, true);
                if retry_on.empty_response && replay.is_some() && can_retry {
                    next_attempt(record);
                    continue;
                }
                return Err(ProxyError::ServerFailed(why));
            }
            Outcome::Response(response, server_upgrade) => {
                let status = response.status().as_u16();
                backend.observe(index, status >= 500 && status != 501 && status != 505, true);
                if retry_on.statuses.contains(&status) && replay.is_some() && can_retry {
                    next_attempt(record);
                    continue;
                }
                record.tr = Some(answered - sent_at);
                record.status = status;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let (Some(client_upgrade), Some(server_upgrade)) =
                        (client_upgrade, server_upgrade)
                    else {
                        return Err(ProxyError::ServerFailed(
                            "101 Switching Protocols to a request that asked for no upgrade".into(),
                        ));
                    };
                    conn.activity.upgraded();
                    let (mut head, _) = response.into_parts();
                    headers::strip_hop_by_hop(&mut head.headers, true);
                    tokio::spawn(tunnel::run(
                        client_upgrade,
                        server_upgrade,
                        backend.cfg.timeout_tunnel,
                        Arc::clone(conn),
                        slot,
                    ));
                    let body = ResponseBody::local(Bytes::new());
                    return Ok(Response::from_parts(head, body));
                }
                let (mut head, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut head.headers, false);
                if !ran.is_empty() {
                    let change = Box::pin(chain::on_response(
                        &fe.plugins,
                        ran,
                        &mut head.status,
                        &mut head.headers,
                        &chain::Answered {
                            method: &method,
                            path: &path,
                            client,
                            backend: Some(&backend.name),
                            server: Some(&server.name),
                        },
                    ))
                    .await
                    .map_err(|_| ProxyError::PluginFailed)?;
                    record.status = head.status.as_u16();
                    if let chain::ResponseChange::Replace(replaced) = change {
                        // The server's body is dropped unread; its connection is not reused.
                        drop(body);
                        drop(slot);
                        head.headers.remove(http::header::CONTENT_LENGTH);
                        head.headers.remove(http::header::TRANSFER_ENCODING);
                        let local = ResponseBody::local(replaced);
                        return Ok(Response::from_parts(head, local));
                    }
                }
                let body = ResponseBody::server(body, backend.cfg.timeout_server, slot);
                return Ok(Response::from_parts(head, body));
            }
        }
    }
}

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A server slot for this attempt (see [`BackendRt::choose`]), as the client sees a
/// failure to get one.
async fn choose(
    backend: &BackendRt,
    request: &Request<ClientBody>,
    client_ip: std::net::IpAddr,
    excluded: &mut Vec<usize>,
    pinned: Option<usize>,
) -> Result<InFlight, ProxyError> {
    let key = RequestKey {
        client_ip,
        path: request.uri().path(),
        query: request.uri().query(),
        headers: request.headers(),
    };
    backend
        .choose(&key, excluded, pinned)
        .await
        .map_err(|e| match e {
            QueueError::NoServer => ProxyError::NoServer,
            QueueError::QueueFull => ProxyError::QueueFull,
            QueueError::Timeout => ProxyError::QueueTimeout,
        })
}
