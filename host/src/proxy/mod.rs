//! The request pipeline: from a client request to a server and back.
//!
//! validate → route (the frontend's backend; plugins will choose here) → pick a server
//! and connect, retrying connect failures → send with the server timeout → stream the
//! response back. Every failure becomes a [`ProxyError`] with one status.

pub mod backend;
pub mod body;
mod error;
pub mod headers;
pub mod log;
pub mod pool;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::balance::RequestKey;
use crate::config::{Config, Frontend};
use crate::server::io::Activity;
use backend::{BackendRt, InFlight};
use body::{ClientBody, ResponseBody};
pub use error::ProxyError;
use log::{AccessLog, LogRecord};

/// One generation of the running configuration: frontends with their backends.
pub struct Proxy {
    pub frontends: Vec<Arc<FrontendRt>>,
    pub backends: Vec<Arc<BackendRt>>,
}

pub struct FrontendRt {
    pub cfg: Frontend,
    pub name: Arc<str>,
    pub backend: Arc<BackendRt>,
    pub log: AccessLog,
}

impl Proxy {
    pub fn new(config: &Config, log: AccessLog) -> Self {
        let backends: Vec<Arc<BackendRt>> = config
            .backends
            .iter()
            .map(|b| Arc::new(BackendRt::new(b.clone())))
            .collect();
        let frontends = config
            .frontends
            .iter()
            .map(|f| {
                let backend = backends
                    .iter()
                    .find(|b| b.cfg.name == f.default_backend)
                    .expect("validation checked default_backend");
                Arc::new(FrontendRt {
                    cfg: f.clone(),
                    name: f.name.as_str().into(),
                    backend: Arc::clone(backend),
                    log: log.clone(),
                })
            })
            .collect();
        Self {
            frontends,
            backends,
        }
    }
}

/// What the pipeline knows about the client connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// "http" or "https", for X-Forwarded-Proto.
    pub proto: &'static str,
    pub activity: Arc<Activity>,
    /// Milliseconds (on the activity clock) when the connection became ready for its next request.
    ready_since: AtomicU64,
    accepted: Instant,
    /// The connection's share of `global.maxconn`, held while any request or tunnel lives.
    _permit: Option<OwnedSemaphorePermit>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        proto: &'static str,
        activity: Arc<Activity>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            peer,
            proto,
            activity,
            ready_since: AtomicU64::new(0),
            accepted: Instant::now(),
            _permit: permit,
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
    let start = Instant::now();
    let mut record = LogRecord {
        client: conn.peer,
        time: SystemTime::now(),
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
        termination: *b"--",
        retries: 0,
        method: req.method().clone(),
        uri: req.uri().to_string(),
        version: req.version(),
        format: fe.cfg.log_format,
    };
    let version = req.version();
    let response = match forward(&fe, &conn, req, &mut record).await {
        Ok(response) => response,
        Err(err) => error_response(&fe, &err, record, version),
    };
    conn.mark_ready();
    response
}

fn error_response(
    fe: &FrontendRt,
    err: &ProxyError,
    mut record: LogRecord,
    version: Version,
) -> Response<ResponseBody> {
    let status = err.status();
    if status.is_server_error() {
        tracing::warn!(
            "{} {} {}: {err}",
            fe.name,
            record.backend.as_deref().unwrap_or("-"),
            record.server.as_deref().unwrap_or("-")
        );
    }
    let page = fe
        .backend
        .cfg
        .errorfiles
        .get(status)
        .filter(|_| record.backend.is_some())
        .or_else(|| fe.cfg.errorfiles.get(status));
    let (body, content_type) = match page {
        Some(p) => (p.body.clone(), p.content_type),
        None => (Bytes::from(err.default_body()), "text/plain; charset=utf-8"),
    };
    record.status = status.as_u16();
    record.termination = err.termination();
    let mut response = Response::new(ResponseBody::local(body, record, fe.log.clone()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if err.closes_connection() && version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn forward(
    fe: &FrontendRt,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    record: &mut LogRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::NotImplemented("CONNECT"));
    }
    let host = headers::request_host(req.version(), req.uri(), req.headers())?;
    let backend = &fe.backend;
    record.backend = Some(Arc::clone(&backend.name));
    let upgrade = headers::is_upgrade(req.version(), req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let key = RequestKey {
        client_ip: conn.peer.ip(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let (slot, mut sender, mut reused) = connect(backend, &key, record).await?;

    let (client_body, client_failed) = ClientBody::new(body);
    let forwarded = fe.cfg.forwardfor.then_some((conn.peer.ip(), conn.proto));
    headers::prepare_request(
        &parts.method,
        &mut parts.uri,
        &mut parts.version,
        &mut parts.headers,
        host.as_ref(),
        upgrade,
        forwarded,
    );
    let mut upstream = Request::from_parts(parts, client_body);

    let sent_at = Instant::now();
    let waiting = conn.activity.awaiting_server();
    let mut response = loop {
        let attempt = tokio::time::timeout(
            backend.cfg.timeout_server,
            sender.try_send_request(upstream),
        )
        .await;
        match attempt {
            Err(_) => return Err(ProxyError::ServerTimeout),
            Ok(Ok(response)) => break response,
            Ok(Err(mut e)) => {
                if client_failed.load(Ordering::Acquire) {
                    return Err(ProxyError::ClientBody);
                }
                match e.take_message() {
                    // A pooled connection closed before the request was written: nothing
                    // reached the server, so a fresh connection may carry it.
                    Some(unsent) if reused => {
                        let server = slot.server();
                        sender = server
                            .pool
                            .connect(server.cfg.addr, backend.cfg.timeout_connect)
                            .await
                            .map_err(|e| ProxyError::ConnectFailed(e.to_string()))?;
                        reused = false;
                        upstream = unsent;
                    }
                    _ => return Err(ProxyError::ServerFailed(e.into_error().to_string())),
                }
            }
        }
    };
    drop(waiting);
    record.tr = Some(sent_at.elapsed());
    record.status = response.status().as_u16();

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::ServerFailed(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            ));
        };
        let server_upgrade = hyper::upgrade::on(&mut response);
        let (mut head, _) = response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers, true);
        tokio::spawn(tunnel::run(
            client_upgrade,
            server_upgrade,
            backend.cfg.timeout_tunnel,
            Arc::clone(conn),
            slot,
        ));
        return Ok(Response::from_parts(
            head,
            ResponseBody::local(Bytes::new(), record.clone(), fe.log.clone()),
        ));
    }

    slot.server().pool.recycle(sender);
    let (mut head, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers, false);
    let body = ResponseBody::server(
        body,
        backend.cfg.timeout_server,
        record.clone(),
        fe.log.clone(),
        slot,
    );
    Ok(Response::from_parts(head, body))
}

/// Chooses a server and gets a connection to it: a pooled one, or a new one within
/// `timeout.connect`. A failed connect is retried up to `retries` times: with
/// `redispatch`, on a server not tried yet (or any, once all have failed); without, on
/// the same server.
async fn connect(
    backend: &BackendRt,
    key: &RequestKey<'_>,
    record: &mut LogRecord,
) -> Result<(InFlight, pool::Sender, bool), ProxyError> {
    let started = Instant::now();
    let mut excluded = Vec::new();
    let mut pinned: Option<usize> = None;
    let mut last_error = None;
    loop {
        let slot = match pinned {
            Some(i) => backend.claim(i),
            None => backend.acquire(key, &mut excluded).or_else(|| {
                // Every server failed once and retries remain: try them again.
                if excluded.is_empty() {
                    return None;
                }
                excluded.clear();
                backend.acquire(key, &mut excluded)
            }),
        };
        let Some(slot) = slot else {
            return Err(last_error.unwrap_or(ProxyError::NoServer));
        };
        record.tw.get_or_insert_with(|| started.elapsed());
        let server = Arc::clone(slot.server());
        record.server = Some(Arc::clone(&server.name));
        if let Some(sender) = server.pool.take() {
            record.tc = Some(Duration::ZERO);
            return Ok((slot, sender, true));
        }
        let connect_start = Instant::now();
        match server
            .pool
            .connect(server.cfg.addr, backend.cfg.timeout_connect)
            .await
        {
            Ok(sender) => {
                record.tc = Some(connect_start.elapsed());
                return Ok((slot, sender, false));
            }
            Err(e) => {
                tracing::warn!("{}/{}: {e}", backend.name, server.name);
                last_error = Some(ProxyError::ConnectFailed(e.to_string()));
                if record.retries >= backend.cfg.retries {
                    return Err(last_error.unwrap_or(ProxyError::NoServer));
                }
                record.retries += 1;
                let index = slot.index();
                if backend.cfg.redispatch {
                    excluded.push(index);
                } else {
                    pinned = Some(index);
                }
            }
        }
    }
}
