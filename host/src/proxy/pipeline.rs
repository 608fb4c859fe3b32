//! A request's stages, top to bottom: checks → the chain's `on-request` → choose a
//! server and exchange with it, with retries → the chain's `on-response` → respond.
//! [`forward`] reads as that list; each stage is a function of its own below it. Every
//! failure is a [`ProxyError`], which [`super::local::error`] answers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::body::ResponseBody;
use super::chain::{self, Answered, Client, Ran};
use super::log::LogRecord;
use super::{ConnInfo, FrontendRt, ProxyError, headers, local, tunnel};
use crate::balance::RequestKey;
use crate::upstream::{
    self, BackendRt, ClientBody, InFlight, Outcome, QueueError, ServerBody, ServerRt, Slot, Unsent,
};

/// Decides a request's response: a server's, a plugin's or weir's own. `record` fills in
/// on the way; the caller attaches it to the response body, which logs it at its end.
/// `id`: the request's number for plugins; `ran` becomes the plugins that ran, once the
/// chain has (weir's own answers to errors pass back through them).
pub(super) async fn forward(
    fe: &FrontendRt,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    record: &mut LogRecord,
    id: u64,
    ran: &mut Option<Vec<Ran>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = check(&req)?;
    let client = Client::of(fe, conn, id);
    if fe.cfg.redirect_https && conn.proto == "http" {
        return Box::pin(redirect_https(fe, client, &req, host.as_ref(), record)).await;
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
    let mut no_chain = Vec::new();
    let ran = match fe.plugins.is_empty() {
        true => &mut no_chain,
        false => ran.insert(Vec::new()),
    };
    let route = match on_request(fe, client, &mut parts, host.as_ref(), ran, record).await? {
        Routed::To(route) => route,
        Routed::Answered(response) => return Ok(*response),
    };
    // The wait for a server (Tw) starts when the plugins are done: without plugins, when
    // the request did.
    let started = match fe.plugins.is_empty() {
        true => record.start,
        false => Instant::now(),
    };
    let backend = route.backend.as_ref().unwrap_or(&fe.backend);
    if backend.cfg.mode == crate::config::Mode::Tcp {
        // A plugin routed an HTTP request to a backend that relays bytes.
        tracing::warn!(
            "frontend {}: a plugin chose backend {}, which is mode tcp; answered 503",
            fe.name,
            backend.name
        );
        return Err(ProxyError::NoServer);
    }
    record.backend = Some(Arc::clone(&backend.name));
    record.tally.backend = Some(Arc::clone(&backend.stats));
    // What on-response is told of the request, kept only for plugins that will see it.
    let asked = (!ran.is_empty()).then(|| (parts.method.to_string(), parts.uri.path().to_owned()));
    // Lent to the exchange, not moved into it: each request's future moves fewer bytes.
    let mut request = Outgoing::new(parts, body, upgrade, backend, record, conn);
    let prefer = route.prefer;
    let exchanged = exchange(
        conn,
        backend,
        &mut request,
        prefer,
        client_upgrade,
        started,
        record,
    );
    let exchanged = exchanged.await?;
    drop(request);
    let (method, path) = asked.unwrap_or_default();
    let server = Arc::clone(&exchanged.slot.server().name);
    let answered = Answered {
        method: &method,
        path: &path,
        client,
        backend: Some(&backend.name),
        server: Some(&server),
    };
    respond(fe, conn, backend, exchanged, ran, &answered, record).await
}

/// The checks a request passes before anything else: a method weir proxies, framing that
/// cannot be read two ways, a target it can forward. The request's host, when it has one.
fn check(req: &Request<Incoming>) -> Result<Option<Authority>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::NotImplemented("CONNECT"));
    }
    headers::check_framing(req.version(), req.headers())?;
    headers::check_target(req.method(), req.version(), req.uri())?;
    headers::request_host(req.version(), req.uri(), req.headers())
}

/// `redirect_https`: answered before the chain ran (so through all of it).
async fn redirect_https(
    fe: &FrontendRt,
    client: Client<'_>,
    req: &Request<Incoming>,
    host: Option<&Authority>,
    record: &mut LogRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let answered = Answered {
        method: req.method().as_str(),
        path: req.uri().path(),
        client,
        backend: None,
        server: None,
    };
    local::redirect_https(fe, &answered, host, req.uri(), record).await
}

/// Where the chain sent a request: a backend other than the frontend's, a server it
/// prefers.
#[derive(Default)]
struct Route {
    backend: Option<Arc<BackendRt>>,
    prefer: Option<usize>,
}

enum Routed {
    To(Route),
    /// A plugin answered itself (boxed: rare, and large).
    Answered(Box<Response<ResponseBody>>),
}

/// The chain's `on-request`, in order: edits to `parts`, a route, or a plugin's own
/// answer (which passes back through the plugins before it).
async fn on_request(
    fe: &FrontendRt,
    client: Client<'_>,
    parts: &mut http::request::Parts,
    host: Option<&Authority>,
    ran: &mut Vec<Ran>,
    record: &mut LogRecord,
) -> Result<Routed, ProxyError> {
    if fe.plugins.is_empty() {
        return Ok(Routed::To(Route::default()));
    }
    // Boxed, as are the other plugin and connect steps: they are large, and unboxed they
    // would make every request's future (moved and held per request) as large as the
    // largest of them, whether it runs or not.
    let decision = crate::util::boxed(|| {
        chain::on_request(
            &fe.plugins,
            &fe.backends,
            &fe.backend,
            parts,
            host.map(|h| h.as_str()),
            client,
            ran,
        )
    })
    .await
    .map_err(|_| ProxyError::PluginFailed)?;
    match decision {
        chain::Decision::Proceed { backend, prefer } => Ok(Routed::To(Route { backend, prefer })),
        chain::Decision::Respond(answer) => {
            let answered = Answered {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                client,
                backend: None,
                server: None,
            };
            let answer = local::from_plugin(fe, &answered, ran, answer, record);
            Ok(Routed::Answered(Box::new(Box::pin(answer).await)))
        }
    }
}

/// The request on its way to servers, and what a retry needs of it.
struct Outgoing {
    /// The request for the next attempt; taken by each attempt.
    pending: Option<Request<ClientBody>>,
    /// A request can be sent again after reaching a server only if repeating it is safe
    /// and nothing of it is lost: an idempotent method without a body.
    replay: Option<http::request::Parts>,
    /// Bodiless requests that ask for no upgrade are sent by the request's own task on
    /// plain-TCP HTTP/1.1 connections; the others go through hyper's client.
    direct: bool,
}

impl Outgoing {
    fn new(
        parts: http::request::Parts,
        body: Incoming,
        upgrade: bool,
        backend: &BackendRt,
        record: &LogRecord,
        conn: &ConnInfo,
    ) -> Self {
        let bodiless = http_body::Body::is_end_stream(&body);
        let replay = (backend.cfg.retry_on.after_send()
            && bodiless
            && is_idempotent(&parts.method)
            && !upgrade)
            .then(|| parts.clone());
        let body = ClientBody::new(body, Arc::clone(&record.received), &conn.activity);
        Outgoing {
            pending: Some(Request::from_parts(parts, body)),
            replay,
            direct: !upgrade && bodiless,
        }
    }

    /// The request for the next attempt: the one not yet sent, or a copy of one that was.
    fn take(&mut self) -> Request<ClientBody> {
        match (self.pending.take(), &self.replay) {
            (Some(r), _) => r,
            (None, Some(parts)) => Request::from_parts(parts.clone(), ClientBody::empty()),
            (None, None) => unreachable!("a retry after sending needs a replayable request"),
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

/// A server's answer, on the slot it holds.
struct Exchanged {
    response: Response<ServerBody>,
    /// Both sides of an upgrade, for a 101: the client's, the server's.
    upgrade: (Option<OnUpgrade>, Option<OnUpgrade>),
    slot: InFlight,
}

/// Where the next attempt may go: the servers failed attempts excluded, the server a
/// plugin (or, without redispatch, the last attempt) pinned.
pub(super) struct Attempts<'a> {
    backend: &'a BackendRt,
    pub(super) excluded: Vec<usize>,
    pub(super) pinned: Option<usize>,
}

impl<'a> Attempts<'a> {
    /// The first attempt: any server, or the one a plugin prefers.
    pub(super) fn new(backend: &'a BackendRt, prefer: Option<usize>) -> Self {
        Attempts {
            backend,
            excluded: Vec::new(),
            pinned: prefer,
        }
    }

    /// Whether another attempt is allowed; if so, it is counted and aimed: elsewhere with
    /// redispatch (even from a server a plugin preferred), else at server `index` again.
    pub(super) fn again(&mut self, allowed: bool, record: &mut LogRecord, index: usize) -> bool {
        if !allowed || record.retries >= self.backend.cfg.retries {
            return false;
        }
        record.retries += 1;
        if self.backend.cfg.redispatch {
            record.redispatches += 1;
            self.excluded.push(index);
            self.pinned = None;
        } else {
            self.pinned = Some(index);
        }
        true
    }
}

/// Chooses a server and exchanges the request with it, again on a failure the backend's
/// `retry_on` names, up to `retries` times. `client_upgrade`: the client's side of the
/// upgrade it asked for; `started`: when the wait for a server began.
async fn exchange(
    conn: &ConnInfo,
    backend: &BackendRt,
    request: &mut Outgoing,
    prefer: Option<usize>,
    client_upgrade: Option<OnUpgrade>,
    started: Instant,
    record: &mut LogRecord,
) -> Result<Exchanged, ProxyError> {
    let retry_on = &backend.cfg.retry_on;
    let replayable = request.replay.is_some();
    let mut attempts = Attempts::new(backend, prefer);
    loop {
        let mut req = request.take();
        let slot = match choose(backend, &req, conn, &mut attempts) {
            Slot::Got(slot) => slot,
            Slot::Refused(e) => return Err(no_slot(e)),
            Slot::Queued(place, ahead) => {
                record.queue_ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
                backend.wait(place).await.map_err(no_slot)?
            }
        };
        // One clock reading serves the wait's end, the pool's freshness check and, on a
        // pooled connection, the moment the request is sent.
        let chosen_at = Instant::now();
        record.tw.get_or_insert_with(|| chosen_at - started);
        let server = Arc::clone(slot.server());
        let index = slot.index();
        record.server = Some(Arc::clone(&server.name));
        record.tally.server = Some(Arc::clone(&server.stats));
        let connection = match server.pooled(chosen_at, request.direct) {
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
                let timeout = backend.cfg.timeout_connect;
                let dialed = server.connect(timeout, preface.as_deref(), request.direct);
                match dialed.await {
                    Ok(connection) => {
                        record.tc = Some(connect_start.elapsed());
                        connection
                    }
                    Err(e) => {
                        connect_failed(backend, &server, index, &e);
                        if attempts.again(retry_on.conn_failure, record, index) {
                            request.pending = Some(req);
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
        headers::for_server(&mut req, connection.is_h2(), server.cfg.tls.is_some());
        let sent_at = match connection.reused() {
            true => chosen_at,
            false => Instant::now(),
        };
        let waiting = conn.activity.awaiting_server();
        let mut timer = conn.server_timer.take(sent_at + backend.cfg.timeout_server);
        let failed = &record.received.failed;
        let sent = upstream::send(backend, &server, connection, req, &mut timer, failed).await;
        drop(timer);
        // One clock reading for the end of the wait and the response time.
        let answered = Instant::now();
        waiting.end_at(answered.into());
        let retry = match sent {
            Outcome::Unsent(req, why) => {
                backend.observe(index, true, false);
                if attempts.again(retry_on.conn_failure, record, index) {
                    request.pending = Some(req);
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
                (retry_on.response_timeout, ProxyError::ServerTimeout)
            }
            Outcome::Failed(why) => {
                backend.observe(index, true, true);
                (retry_on.empty_response, ProxyError::ServerFailed(why))
            }
            Outcome::Response(response, upgrade) => {
                let status = response.status().as_u16();
                backend.observe(index, status >= 500 && status != 501 && status != 505, true);
                let retried = retry_on.statuses.contains(&status) && replayable;
                if !(retried && attempts.again(true, record, index)) {
                    record.tr = Some(answered - sent_at);
                    record.status = status;
                    if record.logged {
                        record.load = conn.load(Some((backend, &server)));
                    }
                    return Ok(Exchanged {
                        response,
                        upgrade: (client_upgrade, upgrade),
                        slot,
                    });
                }
                continue;
            }
        };
        if !attempts.again(retry.0 && replayable, record, index) {
            return Err(retry.1);
        }
    }
}

/// A connect to server `index` failed: said in weir's log (at most a line per server and
/// second) and observed in its health.
pub(super) fn connect_failed(
    backend: &BackendRt,
    server: &ServerRt,
    index: usize,
    e: &dyn std::fmt::Display,
) {
    let key = format!("{}/{}", backend.name, server.name);
    if let Some(held) = crate::logging::quietly(&key) {
        tracing::warn!("{key}: {e}{}", crate::logging::held_back(held));
    }
    backend.observe(index, true, false);
}

/// A server slot for this attempt (see [`BackendRt::choose`]), without waiting.
fn choose(
    backend: &BackendRt,
    request: &Request<ClientBody>,
    conn: &ConnInfo,
    attempts: &mut Attempts<'_>,
) -> Slot {
    let key = RequestKey {
        client_ip: conn.peer.ip(),
        path: request.uri().path(),
        query: request.uri().query(),
        headers: request.headers(),
        sni: None,
    };
    backend.choose(&key, &mut attempts.excluded, attempts.pinned)
}

/// A failure to get a server slot, as the client sees it.
fn no_slot(e: QueueError) -> ProxyError {
    match e {
        QueueError::NoServer => ProxyError::NoServer,
        QueueError::QueueFull => ProxyError::QueueFull,
        QueueError::Timeout => ProxyError::QueueTimeout,
    }
}

/// The server's answer on its way to the client: a 101 becomes a tunnel; anything else
/// loses its hop-by-hop headers, passes back through the chain (which may replace it),
/// and streams its body.
async fn respond(
    fe: &FrontendRt,
    conn: &Arc<ConnInfo>,
    backend: &BackendRt,
    exchanged: Exchanged,
    ran: &mut Vec<Ran>,
    answered: &Answered<'_>,
    record: &mut LogRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Exchanged {
        response,
        upgrade,
        slot,
    } = exchanged;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some(server_upgrade)) = upgrade else {
            return Err(ProxyError::ServerFailed(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            ));
        };
        conn.activity.upgraded();
        let (mut head, _) = response.into_parts();
        headers::strip_hop_by_hop(&mut head.headers, true);
        let idle = backend.cfg.timeout_tunnel;
        let tunnel = tunnel::run(client_upgrade, server_upgrade, idle, Arc::clone(conn), slot);
        tokio::spawn(tunnel);
        return Ok(Response::from_parts(
            head,
            ResponseBody::local(Bytes::new()),
        ));
    }
    let (mut head, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers, false);
    if !ran.is_empty() {
        let change = crate::util::boxed(|| {
            chain::on_response(
                &fe.plugins,
                ran,
                &mut head.status,
                &mut head.headers,
                answered,
            )
        })
        .await
        .map_err(|_| ProxyError::PluginFailed)?;
        record.status = head.status.as_u16();
        if let chain::ResponseChange::Replace(replaced) = change {
            // The server's body is dropped unread; its connection is not reused.
            drop(body);
            drop(slot);
            head.headers.remove(http::header::CONTENT_LENGTH);
            head.headers.remove(http::header::TRANSFER_ENCODING);
            return Ok(Response::from_parts(head, ResponseBody::local(replaced)));
        }
    }
    let body = ResponseBody::server(body, backend.cfg.timeout_server, slot);
    Ok(Response::from_parts(head, body))
}
