//! Every response weir writes itself, in one place: a request's error ([`ProxyError`]),
//! the framing guard's refusal of a request head, the `redirect_https` redirect, a
//! plugin's own response, and the 503 for a listener a reload removed.
//!
//! An error status gets its `errorfiles` page when one is configured (the backend's the
//! request went to, else the frontend's). Every answer but the last passes back through
//! the frontend's `on-response` chain, as a server's response does: over the plugins that
//! ran, or over the whole chain when weir answered before the chain ran. A fail-closed
//! plugin that fails there turns the answer into the 503 of a failed plugin, which goes
//! on through the plugins not yet called, never through the one that failed.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version, header};

use super::body::{Logged, ResponseBody};
use super::chain::{self, Answered, Client, Ran, ResponseChange};
use super::log::{LogRecord, Target};
use super::{ConnInfo, FrontendRt, ProxyError};
use crate::http1::Rejection;
use crate::plugin::Answer;

/// The plugins an answer passes back through: those that ran, or every plugin of the
/// frontend when the chain had not run yet.
fn chain_for(fe: &FrontendRt, ran: Option<Vec<Ran>>) -> Vec<Ran> {
    ran.unwrap_or_else(|| chain::every(&fe.plugins))
}

/// An error status's answer: the `errorfiles` page of `backend` (the one the request went
/// to, if any), else the frontend's, else `default`.
fn error_page(
    fe: &FrontendRt,
    backend: Option<&str>,
    status: StatusCode,
    default: impl FnOnce() -> String,
) -> Answer {
    let page = backend
        .and_then(|name| fe.backends.iter().find(|b| &*b.name == name))
        .and_then(|b| b.cfg.errorfiles.get(status))
        .or_else(|| fe.cfg.errorfiles.get(status));
    let (body, content_type) = match page {
        Some(p) => (p.body.clone(), p.content_type),
        None => (Bytes::from(default()), "text/plain; charset=utf-8"),
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Answer {
        status,
        headers,
        body,
    }
}

/// Passes `answer` back through `ran`, in reverse order. When a fail-closed plugin fails,
/// the answer becomes the failed plugin's 503 (`termination` says so) and goes on through
/// the plugins not yet called: `chain::on_response` leaves only those in `ran`.
async fn through_chain(
    fe: &FrontendRt,
    ran: &mut Vec<Ran>,
    mut answer: Answer,
    answered: &Answered<'_>,
    termination: &mut [u8; 2],
) -> Answer {
    while !ran.is_empty() {
        let changed = chain::on_response(
            &fe.plugins,
            ran,
            &mut answer.status,
            &mut answer.headers,
            answered,
        )
        .await;
        match changed {
            Ok(ResponseChange::Keep) => break,
            Ok(ResponseChange::Replace(body)) => {
                answer.body = body;
                break;
            }
            Err(chain::Failed) => {
                let failed = ProxyError::PluginFailed;
                *termination = failed.termination();
                answer = error_page(fe, answered.backend, failed.status(), || {
                    failed.default_body()
                });
            }
        }
    }
    answer
}

fn response(answer: Answer) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(answer.body));
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response
}

/// A request's error, answered, logged when the answer has been sent. `ran`: the plugins
/// that ran (see the module's description).
pub async fn error(
    fe: &FrontendRt,
    client: Client<'_>,
    err: &ProxyError,
    mut logged: Box<Logged>,
    version: Version,
    ran: Option<Vec<Ran>>,
) -> Response<ResponseBody> {
    let record = &mut logged.record;
    let status = err.status();
    if status.is_server_error() {
        let key = format!(
            "{} {} {}",
            fe.name,
            record.backend.as_deref().unwrap_or("-"),
            record.server.as_deref().unwrap_or("-")
        );
        if let Some(held) = crate::logging::quietly(&key) {
            tracing::warn!("{key}: {err}{}", crate::logging::held_back(held));
        }
    }
    record.termination = err.termination();
    let answer = error_page(fe, record.backend.as_deref(), status, || err.default_body());
    let method = record.method.clone();
    let answered = Answered {
        method: method.as_str(),
        path: record.uri.path(),
        client,
        backend: record.backend.as_deref(),
        server: record.server.as_deref(),
    };
    let mut termination = record.termination;
    let mut ran = chain_for(fe, ran);
    let answer = through_chain(fe, &mut ran, answer, &answered, &mut termination).await;
    record.termination = termination;
    record.status = answer.status.as_u16();
    let mut response = response(answer);
    if err.closes_connection() && version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response.body_mut().attach(logged);
    response
}

/// A response a plugin made: it passes back through the plugins that ran before it.
pub async fn from_plugin(
    fe: &FrontendRt,
    answered: &Answered<'_>,
    ran: &mut Vec<Ran>,
    answer: Answer,
    record: &mut LogRecord,
) -> Response<ResponseBody> {
    record.termination = *b"LR";
    let answer = through_chain(fe, ran, answer, answered, &mut record.termination).await;
    record.status = answer.status.as_u16();
    response(answer)
}

/// `redirect_https`: a 301 to the same host (without its port, so https's own) and path
/// over https, through the whole chain.
pub async fn redirect_https(
    fe: &FrontendRt,
    answered: &Answered<'_>,
    host: Option<&http::uri::Authority>,
    uri: &http::Uri,
    record: &mut LogRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = host.ok_or(ProxyError::BadRequest(
        "A Host header is needed to redirect to https.",
    ))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = HeaderValue::try_from(format!("https://{}{target}", host.host()))
        .map_err(|_| ProxyError::BadRequest("Invalid Host header."))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::LOCATION, location);
    let answer = Answer {
        status: StatusCode::MOVED_PERMANENTLY,
        headers,
        body: Bytes::new(),
    };
    record.termination = *b"LR";
    let mut ran = chain_for(fe, None);
    let answer = through_chain(fe, &mut ran, answer, answered, &mut record.termination).await;
    record.status = answer.status.as_u16();
    Ok(response(answer))
}

/// The answer to a request head the framing guard refused, as the bytes to write before
/// the connection closes, and its status: its `errorfiles` page (the frontend's) or the
/// reason, through the whole chain.
pub async fn refusal(fe: &FrontendRt, conn: &ConnInfo, refused: &Rejection) -> (u16, Vec<u8>) {
    let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::BAD_REQUEST);
    let answer = error_page(fe, None, status, || refused.default_body());
    let answered = Answered {
        method: refused.method.as_deref().unwrap_or(""),
        path: refused
            .target
            .as_deref()
            .map_or("", |t| t.split('?').next().unwrap_or(t)),
        client: Client {
            conn,
            frontend: &fe.name,
            scheme: conn.proto,
            id: chain::next_request_id(),
        },
        backend: None,
        server: None,
    };
    let mut termination = *b"PR";
    let mut ran = chain_for(fe, None);
    let answer = through_chain(fe, &mut ran, answer, &answered, &mut termination).await;
    let bytes = crate::http1::closing_response(answer.status, answer.headers, &answer.body);
    (answer.status.as_u16(), bytes)
}

/// The answer to a request that arrived on a listener a reload just removed: 503, and the
/// connection closes. Not logged, and no plugin sees it: the frontend it belonged to,
/// with its chain, is gone.
pub fn frontend_gone() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::local(Bytes::from_static(
        b"503 Service Unavailable: this listener was removed by a reload\n",
    )));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

impl Target {
    /// The path of the target, for plugins (the text of a refused head has none).
    fn path(&self) -> &str {
        match self {
            Target::Uri(uri) => uri.path(),
            Target::Text(_) => "",
        }
    }
}
