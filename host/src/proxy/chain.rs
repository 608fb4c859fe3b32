//! The plugin chain of a frontend: `on-request` in config order, the first local response
//! stopping it; `on-response` in reverse order over the plugins that ran (so a local
//! response from plugin k passes back through k-1 … 0).

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode, Uri};

use crate::config::FailPolicy;
use crate::plugin::{
    Answer, FixedEdits, Hook, HookError, Plugin, Proceed, RequestDecision, RequestInfo,
    ResponseDecision, ResponseInfo, validate,
};
use crate::upstream::BackendRt;

/// Where the chain leaves a request.
pub enum Decision {
    /// Go on, to this backend, preferring this server.
    Proceed {
        backend: Option<Arc<BackendRt>>,
        prefer: Option<usize>,
    },
    /// Answer with this response (it still passes back through `ran`).
    Respond(Answer),
}

/// Who sent the request, as plugins see it.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    /// The connection, which gives the client's address.
    pub conn: &'a super::ConnInfo,
    pub frontend: &'a str,
    /// "http" or "https".
    pub scheme: &'static str,
    /// The request's number within the process.
    pub id: u64,
}

impl<'a> Client<'a> {
    /// The client of request `id` on `conn`, to frontend `fe`.
    pub fn of(fe: &'a super::FrontendRt, conn: &'a super::ConnInfo, id: u64) -> Self {
        Client {
            conn,
            frontend: &fe.name,
            scheme: conn.proto,
            id,
        }
    }
}

/// A plugin in a frontend's chain, with the edits it (and its candidate version)
/// declared fixed for that frontend.
pub struct Link {
    pub plugin: Arc<Plugin>,
    pub fixed: FixedEdits,
    pub candidate_fixed: FixedEdits,
}

impl Link {
    /// The version that decides for `client_ip`: a canary candidate for its share of
    /// clients, else the plugin; with its fixed edits.
    fn version(&self, client_ip: &str) -> Version<'_> {
        let canary = self
            .plugin
            .candidate
            .as_ref()
            .is_some_and(|c| c.decides(client_ip));
        self.pick(canary)
    }

    /// The canary candidate (when `canary` and the plugin has one) or the plugin.
    fn pick(&self, canary: bool) -> Version<'_> {
        match &self.plugin.candidate {
            Some(c) if canary => Version {
                plugin: &c.plugin,
                fixed: &self.candidate_fixed,
                canary: Some(c),
            },
            _ => Version {
                plugin: &self.plugin,
                fixed: &self.fixed,
                canary: None,
            },
        }
    }
}

/// The version of a link's plugin that runs for a request.
struct Version<'a> {
    plugin: &'a Arc<Plugin>,
    fixed: &'a FixedEdits,
    /// Set when it is the canary candidate, whose calls count toward taking it out.
    canary: Option<&'a crate::plugin::Candidate>,
}

impl Version<'_> {
    /// Counts a call of the canary: `ok` when it gave a usable answer.
    fn note(&self, ok: bool, link: &Link) {
        if let Some(c) = self.canary {
            c.note_call(ok, &link.plugin.name);
        }
    }
}

/// A plugin whose `on-response` must see the answer, the note its `on-request` left, and
/// whether its canary candidate answered the request (and so answers the response).
pub struct Ran {
    index: usize,
    note: Option<String>,
    candidate: bool,
    /// A shadow candidate ran on the request: its note is to come, for its `on-response`.
    shadow: Option<crate::plugin::ShadowNote>,
}

/// Every plugin of a chain, as if all had run and left no note: for a response weir made
/// before the chain ran.
pub fn every(plugins: &[Link]) -> Vec<Ran> {
    (0..plugins.len())
        .map(|index| Ran {
            index,
            note: None,
            candidate: false,
            shadow: None,
        })
        .collect()
}

/// The next request number: unique within the process.
pub fn next_request_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A fail-closed plugin failed: the request gets a generic 503.
#[derive(Debug)]
pub struct Failed;

/// Handles a failed call according to the plugin's policy: `Ok(())` to skip the plugin.
fn on_failure(plugin: &Plugin, hook: &str, err: &HookError) -> Result<(), Failed> {
    if let HookError::StoreDown = err {
        // Refused whatever the plugin's policy; the store logged when Redis went away.
        return Err(Failed);
    }
    let calls = plugin
        .stats
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    let failures = plugin.stats.failures();
    let policy = match plugin.on_error {
        FailPolicy::Closed => "fail-closed: 503",
        FailPolicy::Open => "fail-open: skipped",
    };
    tracing::error!(
        "plugin {} failed in {hook}: {err} ({policy}; {failures} failures in {calls} calls)",
        plugin.name
    );
    match plugin.on_error {
        FailPolicy::Closed => Err(Failed),
        FailPolicy::Open => Ok(()),
    }
}

/// Runs `on-request` over the chain, applying edits to `parts`. `ran` collects the
/// plugins whose `on-response` must see the answer.
pub async fn on_request(
    plugins: &[Link],
    backends: &[Arc<BackendRt>],
    default: &Arc<BackendRt>,
    parts: &mut Parts,
    host: Option<&str>,
    client: Client<'_>,
    ran: &mut Vec<Ran>,
) -> Result<Decision, Failed> {
    let mut backend: Option<Arc<BackendRt>> = None;
    let mut prefer = None;
    for (i, link) in plugins.iter().enumerate() {
        let version = link.version(client.conn.peer_ip_text());
        let (plugin, candidate) = (version.plugin, version.canary.is_some());
        if !plugin.has(Hook::Request) {
            ran.push(Ran {
                index: i,
                note: None,
                candidate,
                shadow: None,
            });
            continue;
        }
        if let Some(edits) = &version.fixed.request {
            // The same for every request: made here, without a call.
            validate::apply(edits.iter().cloned(), &mut parts.headers);
            ran.push(Ran {
                index: i,
                note: None,
                candidate,
                shadow: None,
            });
            continue;
        }
        let info = RequestInfo {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            host,
            client_ip: client.conn.peer_ip_text(),
            frontend: client.frontend,
            scheme: client.scheme,
            backend: &backend.as_ref().unwrap_or(default).name,
        };
        let mut shadow = None;
        let decision = match plugin.on_request(&info, &parts.headers, client.id).await {
            Ok(d) => {
                if let Some(c) = link.plugin.candidate.as_ref().filter(|_| !candidate) {
                    // On the same request, on the shadow thread: compared, thrown away.
                    shadow = c.shadow_request(&info, &parts.headers, client.id, &d);
                }
                d
            }
            Err(e) => {
                version.note(false, link);
                on_failure(plugin, "on-request", &e)?;
                continue;
            }
        };
        let applied = match decision {
            RequestDecision::Respond(answer) => {
                version.note(true, link);
                return Ok(Decision::Respond(answer));
            }
            RequestDecision::Unchanged => Ok(None),
            RequestDecision::Proceed(mut p) => {
                let note = p.note.take();
                apply(p, parts, backends, default, &mut backend, &mut prefer).map(|()| note)
            }
        };
        version.note(applied.is_ok(), link);
        match applied {
            Ok(note) => ran.push(Ran {
                index: i,
                note,
                candidate,
                shadow,
            }),
            Err(why) => {
                plugin.note_invalid();
                on_failure(plugin, "on-request", &HookError::Invalid(why))?;
            }
        }
    }
    Ok(Decision::Proceed { backend, prefer })
}

/// Looks up a `proceed`'s backend and server, then applies it: nothing changes when any
/// part is invalid.
fn apply(
    p: Proceed,
    parts: &mut Parts,
    backends: &[Arc<BackendRt>],
    default: &Arc<BackendRt>,
    backend: &mut Option<Arc<BackendRt>>,
    prefer: &mut Option<usize>,
) -> Result<(), String> {
    // A new path without a query keeps the request's query, as HAProxy's set-path does.
    let path = match (p.set_path.as_deref(), parts.uri.query()) {
        (Some(new), Some(query)) if !new.contains('?') => {
            Some(validate::path(&format!("{new}?{query}"))?)
        }
        (new, _) => new.map(validate::path).transpose()?,
    };
    let (chosen, server) = route(
        backends,
        default,
        backend.as_ref(),
        p.backend.as_deref(),
        p.server.as_deref(),
    )?;
    validate::apply(p.edits, &mut parts.headers);
    if let Some(pq) = path {
        parts.uri = Uri::from(pq);
    }
    if let Some(b) = chosen {
        *backend = Some(b);
        *prefer = None;
    }
    if server.is_some() {
        *prefer = server;
    }
    Ok(())
}

/// A plugin's backend and server, by name, looked up: the backend (None when it named
/// none) and the server's index in the backend the request or connection goes to (the
/// one named, else `current`, else the frontend's `default`).
fn route(
    backends: &[Arc<BackendRt>],
    default: &Arc<BackendRt>,
    current: Option<&Arc<BackendRt>>,
    backend: Option<&str>,
    server: Option<&str>,
) -> Result<(Option<Arc<BackendRt>>, Option<usize>), String> {
    let chosen = match backend {
        Some(name) => Some(
            backends
                .iter()
                .find(|b| *b.name == *name)
                .cloned()
                .ok_or_else(|| format!("unknown backend {name:?}"))?,
        ),
        None => None,
    };
    let target = chosen.as_ref().or(current).unwrap_or(default);
    let server = match server {
        Some(name) => Some(target.server_index(name).map_err(|e| e.to_string())?),
        None => None,
    };
    Ok((chosen, server))
}

/// What `on-response` asks of a response.
pub enum ResponseChange {
    Keep,
    /// A plugin replaced the response: `status` and `headers` were set, this is the body.
    Replace(Bytes),
}

/// The request a response answers, and who answered it (none for a local response).
pub struct Answered<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub client: Client<'a>,
    pub backend: Option<&'a str>,
    pub server: Option<&'a str>,
}

/// Runs `on-response` over the plugins that ran, in reverse order, editing `headers`.
/// A replacement replaces the whole response; the plugins before it still see it. When a
/// fail-closed plugin fails, `ran` keeps only the plugins not called yet, which the
/// answer to that failure passes through.
pub async fn on_response(
    plugins: &[Link],
    ran: &mut Vec<Ran>,
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    answered: &Answered<'_>,
) -> Result<ResponseChange, Failed> {
    let mut change = ResponseChange::Keep;
    for at in (0..ran.len()).rev() {
        let link = &plugins[ran[at].index];
        // The version that answered the request answers its response (a canary taken
        // out meanwhile too: the note is its own).
        let version = link.pick(ran[at].candidate);
        let (plugin, fixed) = (version.plugin, version.fixed);
        if !plugin.has(Hook::Response) {
            continue;
        }
        if let Some(edits) = &fixed.response {
            validate::apply(edits.iter().cloned(), headers);
            continue;
        }
        let note = ran[at].note.take();
        let info = ResponseInfo {
            backend: answered.backend,
            server: answered.server,
            method: answered.method,
            path: answered.path,
            client_ip: answered.client.conn.peer_ip_text(),
            scheme: answered.client.scheme,
            frontend: answered.client.frontend,
        };
        let id = answered.client.id;
        let decided = plugin
            .on_response(&info, *status, headers, id, note.as_deref())
            .await;
        version.note(decided.is_ok(), link);
        if let (Ok(d), Some(noted), Some(c)) = (
            &decided,
            ran[at].shadow.take(),
            link.plugin.candidate.as_ref(),
        ) {
            // The same response, before this plugin's edits: compared, thrown away.
            c.shadow_response(&info, (*status, headers), id, noted, d);
        }
        match decided {
            Ok(ResponseDecision::Unchanged) => {}
            Ok(ResponseDecision::Edit(edits)) => validate::apply(edits, headers),
            Ok(ResponseDecision::Replace(answer)) => {
                *status = answer.status;
                *headers = answer.headers;
                change = ResponseChange::Replace(answer.body);
            }
            Err(e) => {
                if on_failure(plugin, "on-response", &e).is_err() {
                    ran.truncate(at);
                    return Err(Failed);
                }
            }
        }
    }
    Ok(change)
}

/// Where `on-connect` over a tcp frontend's chain leaves a connection.
pub enum Connected {
    /// Go on, to this backend (the frontend's when None), preferring this server.
    Proceed {
        backend: Option<Arc<BackendRt>>,
        prefer: Option<usize>,
    },
    /// A plugin closed it, for this reason.
    Close(String),
    /// A fail-closed plugin failed.
    Failed,
}

/// Runs `on-connect` over a tcp frontend's chain, in order; the first close stops it.
pub async fn on_connect(
    plugins: &[Link],
    backends: &[Arc<BackendRt>],
    default: &Arc<BackendRt>,
    connection: &crate::plugin::ConnectInfo,
) -> Connected {
    use crate::plugin::ConnectDecision;
    let mut backend: Option<Arc<BackendRt>> = None;
    let mut prefer = None;
    for Link { plugin, .. } in plugins {
        let decision = match plugin.on_connect(connection).await {
            Ok(d) => d,
            Err(e) => match on_failure(plugin, "on-connect", &e) {
                Ok(()) => continue,
                Err(Failed) => return Connected::Failed,
            },
        };
        let (chosen, server) = match decision {
            ConnectDecision::Unchanged => continue,
            ConnectDecision::Close(why) => {
                return Connected::Close(format!("plugin {}: {why}", plugin.name));
            }
            ConnectDecision::Proceed { backend, server } => (backend, server),
        };
        let looked_up = route(
            backends,
            default,
            backend.as_ref(),
            chosen.as_deref(),
            server.as_deref(),
        )
        .and_then(|(chosen, server)| match &chosen {
            Some(b) if b.cfg.mode != crate::config::Mode::Tcp => {
                Err(format!("backend {:?} is not mode tcp", &*b.name))
            }
            _ => Ok((chosen, server)),
        });
        match looked_up {
            Ok((chosen, server)) => {
                if let Some(b) = chosen {
                    backend = Some(b);
                    prefer = None;
                }
                if server.is_some() {
                    prefer = server;
                }
            }
            Err(why) => {
                plugin.note_invalid();
                if on_failure(plugin, "on-connect", &HookError::Invalid(why)).is_err() {
                    return Connected::Failed;
                }
            }
        }
    }
    Connected::Proceed { backend, prefer }
}
