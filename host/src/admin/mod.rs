//! The `[admin]` listener: the statistics page, HAProxy-compatible CSV statistics, Prometheus
//! metrics and the runtime API, in JSON.
//!
//! - `GET /`: the statistics page (see [`page`]);
//! - `GET /;csv` and `GET /stats.csv`: the statistics as HAProxy writes them (see [`csv`]);
//! - `GET /metrics`: Prometheus text exposition (see [`metrics`]);
//! - `GET /healthz`: `200 ok` while this node can serve, else 503 with the reasons (see
//!   [`health`]); it needs no credentials, as HAProxy's `monitor-uri` does not;
//! - `GET /api/info`: version, uptime, config generation, the loaded plugins;
//! - `GET /api/backends`: every backend's servers with state, weight and health;
//! - `POST /api/backends/<b>/servers/<s>/state` with `{"state": "ready" | "drain" | "maint"}`;
//! - `POST /api/backends/<b>/servers/<s>/weight` with `{"weight": 0..256}`;
//! - `POST /api/reload`: reads the config file again, as SIGHUP does;
//! - `GET /api/plugins/<name>/candidate`: how a plugin's candidate compares with it;
//! - `POST /api/plugins/<name>/promote` and `.../abort`: the candidate takes the plugin's
//!   place (a reload), or is taken out.
//!
//! Bad input gets a 4xx with `{"error": "..."}` and changes nothing. With `auth`, every
//! route needs HTTP basic auth.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Admin;
use crate::server::Control;
use crate::upstream::{AdminState, BackendRt};

pub mod against;
pub mod csv;
pub mod health;
pub mod metrics;
pub mod page;
pub mod persist;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

type Reply = Response<Full<Bytes>>;

/// Serves the admin API until its task is stopped: through a graceful shutdown too, to
/// the end of the drain, so that `/healthz` says the node is going.
///
/// It serves at most `[admin] maxconn` connections at once (16 by default): past that, new
/// ones wait in the kernel's backlog until one closes, so a client that can reach the
/// admin listener cannot take the file descriptors the proxy needs.
pub async fn serve(listener: TcpListener, control: Arc<Control>, cfg: Admin) {
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.maxconn));
    let cfg = Arc::new(cfg);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accept on the admin listener: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (control, cfg) = (Arc::clone(&control), Arc::clone(&cfg));
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let (control, cfg) = (Arc::clone(&control), Arc::clone(&cfg));
                async move { Ok::<_, std::convert::Infallible>(handle(req, &control, &cfg).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A 200 with this body; nothing the admin listener answers is cached.
fn document(body: String, content_type: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn reply(status: StatusCode, body: Value) -> Reply {
    let mut r = document(body.to_string() + "\n", "application/json");
    *r.status_mut() = status;
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    reply(status, json!({ "error": message.into() }))
}

async fn handle(req: Request<Incoming>, control: &Control, cfg: &Admin) -> Reply {
    if req.uri().path() == "/healthz" {
        return match *req.method() {
            Method::GET | Method::HEAD => health::healthz(control),
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
        };
    }
    if let Some((user, password)) = &cfg.auth
        && !authorized(&req, user, password)
    {
        let mut r = error(StatusCode::UNAUTHORIZED, "authentication required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"weir\""),
        );
        return r;
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, [""]) => document(
            page::render(control, cfg.refresh, cfg.stats_admin),
            "text/html; charset=utf-8",
        ),
        (Method::GET, [";csv" | "stats.csv"]) => {
            document(csv::render(control), "text/csv; charset=utf-8")
        }
        (Method::GET, ["metrics"]) => document(
            metrics::render(control),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Method::GET, ["api", "info"]) => info(control),
        (Method::GET, ["api", "backends"]) => backends(control),
        (Method::GET, ["api", "plugins", name, "candidate"]) => candidate(control, name),
        (Method::POST, ["api", "plugins", name, what @ ("promote" | "abort")]) => {
            let name = name.to_string();
            let change = if *what == "promote" {
                persist::CandidateChange::Promote
            } else {
                persist::CandidateChange::Abort
            };
            settle(control, &name, change).await
        }
        (
            Method::POST,
            [
                "api",
                "backends",
                b,
                "servers",
                s,
                what @ ("state" | "weight"),
            ],
        ) => {
            let (b, s, what) = (b.to_string(), s.to_string(), what.to_string());
            let body = match read_json(req).await {
                Ok(v) => v,
                Err(r) => return r,
            };
            set_server(control, &b, &s, &what, &body).await
        }
        (Method::POST, ["api", "reload"]) => reload(control).await,
        (
            _,
            ["api", "info"]
            | ["api", "backends"]
            | ["api", "reload"]
            | ["api", "plugins", _, "candidate" | "promote" | "abort"]
            | ["api", "backends", _, "servers", _, "state" | "weight"],
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
        _ => error(StatusCode::NOT_FOUND, format!("no such route: {path}")),
    }
}

/// Whether the request carries `Authorization: Basic` with these credentials.
fn authorized(req: &Request<Incoming>, user: &str, password: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64_decode(b64.trim()))
    else {
        return false;
    };
    let expected = format!("{user}:{password}");
    // Compared in full whatever differs, so the time taken tells nothing.
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Standard base64 (with or without padding); None when malformed.
/// Standard base64 with padding.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Reply> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body must be JSON of at most {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

fn info(control: &Control) -> Reply {
    let proxy = control.proxy();
    let plugins: Vec<Value> = proxy
        .plugins
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "plugin": p.describe().0,
                "version": p.describe().1,
                "sha256": p.sha256,
                "candidate": p.candidate.as_ref().map(|c| json!({
                    "mode": c.mode.name(),
                    "version": c.plugin.describe().1,
                    "sha256": c.plugin.sha256,
                    "aborted": c.aborted(),
                })),
            })
        })
        .collect();
    reply(
        StatusCode::OK,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": control.uptime().as_secs(),
            "generation": control.generation(),
            "config": control.source().map(|p| p.display().to_string()),
            "global": control.global(),
            "admin": control.admin().map(|a| json!({
                "bind": a.bind.to_string(),
                "maxconn": a.maxconn,
                "stats_admin": a.stats_admin,
                "refresh_ms": a.refresh.as_millis() as u64,
                "user": a.auth.as_ref().map(|(u, _)| u.clone()),
            })),
            "plugins": plugins,
        }),
    )
}

/// `GET /api/plugins/<name>/candidate`: how the plugin's candidate compares with it.
fn candidate(control: &Control, name: &str) -> Reply {
    let proxy = control.proxy();
    let Some(plugin) = proxy.plugins.iter().find(|p| *p.name == *name) else {
        return error(StatusCode::NOT_FOUND, format!("no plugin {name:?}"));
    };
    let Some(c) = &plugin.candidate else {
        return error(
            StatusCode::NOT_FOUND,
            format!("plugin {name:?} has no candidate"),
        );
    };
    let hook = |counts: &crate::plugin::Counts| {
        let (compared, disagreed) = counts.compared();
        let outcomes: serde_json::Map<String, Value> = counts
            .all()
            .iter()
            .map(|(kind, n)| ((*kind).to_owned(), json!(n)))
            .collect();
        json!({
            "compared": compared,
            "outcomes": outcomes,
            "disagreement_share": if compared == 0 {
                0.0
            } else {
                disagreed as f64 / compared as f64
            },
        })
    };
    let stats = &c.plugin.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let percent = match c.mode {
        crate::config::CandidateMode::Canary { percent, .. } => Some(percent),
        crate::config::CandidateMode::Shadow => None,
    };
    reply(
        StatusCode::OK,
        json!({
            "plugin": name,
            "mode": c.mode.name(),
            "percent": percent,
            "aborted": c.aborted(),
            "taken_out": c.taken().map(|t| match t {
                crate::plugin::Taken::ByHand => "by hand",
                crate::plugin::Taken::ByFailures => "by failures",
            }),
            "current": {
                "version": plugin.describe().1,
                "sha256": plugin.sha256,
                "calls": load(&plugin.stats.calls),
                "failures": plugin.stats.failures(),
            },
            "candidate": {
                "version": c.plugin.describe().1,
                "sha256": c.plugin.sha256,
                "calls": load(&stats.calls),
                "failures": stats.failures(),
                "traps": load(&stats.traps),
                "timeouts": load(&stats.timeouts),
                "invalid": load(&stats.invalid),
            },
            "on_request": hook(&c.stats.request),
            "on_response": hook(&c.stats.response),
            "skipped": load(&c.stats.skipped),
            "shadow_cpu_seconds": load(&c.stats.cpu_ns) as f64 / 1e9,
            "sample": c.stats.sample(),
        }),
    )
}

/// `POST /api/plugins/<name>/promote` or `.../abort`. Promote: the candidate (its
/// component and the keys it sets) takes the plugin's place in a reload. Abort: it is
/// taken out at once. With `[admin] persist`, the config file says so too; without, the
/// answer says that the file still names the candidate.
async fn settle(control: &Control, name: &str, change: persist::CandidateChange) -> Reply {
    let running = control.config();
    let Some(at) = running.plugins.iter().position(|p| p.name == name) else {
        return error(StatusCode::NOT_FOUND, format!("no plugin {name:?}"));
    };
    let Some(candidate) = running.plugins[at].candidate.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("plugin {name:?} has no candidate"),
        );
    };
    // Written back first: a change the file cannot take is not made at all.
    let before = match (control.admin().is_some_and(|a| a.persist), control.source()) {
        (true, Some(path)) => {
            let (path, plugin) = (path.to_owned(), name.to_owned());
            let written = crate::util::off_runtime(move || {
                persist::edit_file(&path, |text| {
                    persist::candidate_edited(text, &plugin, change)
                })
            })
            .await;
            match written {
                Ok(before) => Some(before),
                Err(e) => return error(StatusCode::CONFLICT, format!("not changed: {e}")),
            }
        }
        _ => None,
    };
    let persisted = before.is_some();
    let mut answer = json!({ "plugin": name, "persisted": persisted });
    match change {
        persist::CandidateChange::Abort => {
            let proxy = control.proxy();
            if let Some(c) = proxy
                .plugins
                .iter()
                .find(|p| *p.name == *name)
                .and_then(|p| p.candidate.as_ref())
                && c.take_out(crate::plugin::Taken::ByHand)
            {
                tracing::info!("plugin {name}: candidate taken out through the runtime API");
            }
            answer["aborted"] = Value::Bool(true);
            if !persisted {
                answer["note"] = json!(
                    "[admin] persist is off: the config file still names the candidate, which a reload brings back"
                );
            }
        }
        persist::CandidateChange::Promote => {
            let mut config = (*running).clone();
            config.plugins[at] = crate::config::PluginConfig {
                name: name.to_owned(),
                candidate: None,
                ..candidate.plugin.clone()
            };
            match control.reload(&config).await {
                Ok(generation) => {
                    tracing::info!("plugin {name}: candidate promoted (generation {generation})");
                    answer["generation"] = json!(generation);
                    if !persisted {
                        answer["note"] = json!(
                            "[admin] persist is off: the config file still names the version before, which a reload brings back"
                        );
                    }
                }
                Err(e) => {
                    if let (Some(text), Some(path)) = (before, control.source()) {
                        let _ = persist::write_atomically(path, &text);
                    }
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("not promoted, the running generation stays: {e}"),
                    );
                }
            }
        }
    }
    reply(StatusCode::OK, answer)
}

fn backend_json(b: &BackendRt) -> Value {
    let servers: Vec<Value> = b
        .servers
        .iter()
        .map(|s| {
            let detail = s.health.snapshot();
            let status = csv::server_status(s, &detail, false);
            json!({
                "name": &*s.name,
                "addr": s.cfg.addr.to_string(),
                "status": status,
                "state": s.admin().name(),
                "health": if detail.up { "up" } else { "down" },
                "checked": s.cfg.health.is_some(),
                "last_check": detail.last_check.map(|c| c.status.code()),
                "weight": s.weight.load(std::sync::atomic::Ordering::Relaxed),
                "configured_weight": s.cfg.weight,
                "in_flight": s.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                "backup": s.cfg.backup,
            })
        })
        .collect();
    json!({ "name": &*b.name, "servers": servers })
}

fn backends(control: &Control) -> Reply {
    let proxy = control.proxy();
    let list: Vec<Value> = proxy.backends.iter().map(|b| backend_json(b)).collect();
    reply(StatusCode::OK, json!({ "backends": list }))
}

async fn set_server(
    control: &Control,
    backend: &str,
    server: &str,
    what: &str,
    body: &Value,
) -> Reply {
    let Some(b) = control.backend(backend) else {
        return error(StatusCode::NOT_FOUND, format!("no backend \"{backend}\""));
    };
    if b.server_index(server).is_err() {
        return error(
            StatusCode::NOT_FOUND,
            format!("no server \"{server}\" in backend \"{backend}\""),
        );
    }
    let change = if what == "state" {
        match body
            .get("state")
            .and_then(Value::as_str)
            .and_then(AdminState::from_name)
        {
            Some(state) => persist::Change::State(state),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected {\"state\": \"ready\" | \"drain\" | \"maint\"}",
                );
            }
        }
    } else {
        match body
            .get("weight")
            .and_then(Value::as_u64)
            .filter(|w| *w <= 256)
        {
            Some(weight) => persist::Change::Weight(weight as u32),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected {\"weight\": N} with N from 0 to 256",
                );
            }
        }
    };
    // Written back first: a change the file cannot take is not made at all.
    let persisted = match (control.admin().is_some_and(|a| a.persist), control.source()) {
        (true, Some(path)) => {
            let (path, b_name, s_name) = (path.to_owned(), backend.to_owned(), server.to_owned());
            let written = crate::util::off_runtime(move || {
                persist::write_back(&path, &b_name, &s_name, change)
            })
            .await;
            if let Err(e) = written {
                return error(StatusCode::CONFLICT, format!("not changed: {e}"));
            }
            true
        }
        _ => false,
    };
    let result = match change {
        persist::Change::State(state) => b.set_admin(server, state),
        persist::Change::Weight(w) => b.set_weight(server, w),
    };
    match result {
        Ok(()) => {
            let i = b.server_index(server).unwrap_or_default();
            let mut answer = backend_json(&b)["servers"][i].clone();
            answer["persisted"] = Value::Bool(persisted);
            reply(StatusCode::OK, answer)
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn reload(control: &Control) -> Reply {
    let Some(path) = control.source() else {
        return error(
            StatusCode::CONFLICT,
            "weir was not started from a config file: there is nothing to reload",
        );
    };
    let config = match crate::config::Config::reread(path).await {
        Ok(c) => c,
        Err(errors) => {
            control.note_failed_reload();
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the config was refused, the running one stays: {errors}"),
            );
        }
    };
    match control.reload(&config).await {
        Ok(generation) => reply(
            StatusCode::OK,
            json!({
                "generation": generation,
                "restart_needed": control.global().restart_needed,
            }),
        ),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the config was refused, the running one stays: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWRtaW46czNjcjN0").unwrap(), b"admin:s3cr3t");
        for text in ["", "a", "ab", "abc", "admin:s3cr3t"] {
            let encoded = super::base64_encode(text.as_bytes());
            assert_eq!(
                base64_decode(&encoded).unwrap(),
                text.as_bytes(),
                "{encoded}"
            );
        }
        assert_eq!(super::base64_encode(b"admin:s3cr3t"), "YWRtaW46czNjcjN0");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("!!!!").is_none());
    }
}
