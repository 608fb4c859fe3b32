//! One active check against one server: a TCP connect, or an HTTP request on a fresh
//! connection. Reading the response and judging it are separate steps, so the verdict can
//! later be delegated (to a plugin's `on-health-check`) without touching the probing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::config::{CheckKind, FailPolicy, HealthCheck, HttpCheck, Server};
use crate::plugin::{HealthProbe, HealthVerdict, Plugin};
use crate::upstream::connect::{self, ConnectError, Dial, Stream};
use crate::upstream::health::{CheckResult, CheckStatus};

/// How much of a check response body is kept for `expect_body` (and, later, plugins).
pub const BODY_PREFIX: usize = 16 * 1024;

/// What an HTTP check got back.
#[derive(Debug, Clone)]
pub struct ProbeResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body_prefix: Bytes,
}

/// A plugin that judges HTTP check responses through its `on-health-check`.
#[derive(Clone, Copy)]
pub struct Judge<'a> {
    pub plugin: &'a Arc<Plugin>,
    pub backend: &'a str,
    pub server: &'a str,
}

/// One check's result, and the weight a judging plugin asked for: `Some(None)` for up
/// at the configured weight, `Some(Some(w))` for up at weight `w`.
pub struct Checked {
    pub result: CheckResult,
    pub weight: Option<Option<u32>>,
}

/// Runs one check of `server` within its timeout, speaking as weir speaks to it (PROXY
/// header, TLS, HTTP/2).
pub async fn run(check: &HealthCheck, server: &Server) -> CheckResult {
    run_judged(check, server, None).await.result
}

/// Runs one check, letting `judge` decide on an HTTP response when given.
pub async fn run_judged(check: &HealthCheck, server: &Server, judge: Option<Judge<'_>>) -> Checked {
    let started = Instant::now();
    let connected = AtomicBool::new(false);
    let mut weight = None;
    let attempt = attempt(check, server, &connected, judge, &mut weight);
    let outcome = tokio::time::timeout(check.timeout, attempt).await;
    let duration = started.elapsed();
    let (status, code, detail) = match outcome {
        Ok(r) => r,
        Err(_) if connected.load(Ordering::Acquire) => (
            CheckStatus::L7Timeout,
            None,
            format!("no response within {:?}", check.timeout),
        ),
        Err(_) => (
            CheckStatus::L4Timeout,
            None,
            format!("no connection within {:?}", check.timeout),
        ),
    };
    Checked {
        result: CheckResult {
            status,
            code,
            duration,
            detail,
        },
        weight,
    }
}

type Outcome = (CheckStatus, Option<u16>, String);

async fn attempt(
    check: &HealthCheck,
    server: &Server,
    connected: &AtomicBool,
    judge: Option<Judge<'_>>,
    weight: &mut Option<Option<u32>>,
) -> Outcome {
    let addr = server.addr;
    let stream = match connect::tcp(addr).await {
        Ok(s) => s,
        Err(e) => return dial_failed(e),
    };
    connected.store(true, Ordering::Release);
    // A server that demands a PROXY header on every connection gets one that names no
    // client (`LOCAL` / `UNKNOWN`).
    let preface = server.send_proxy.map(crate::proxy_protocol::local);
    let dial = Dial {
        addr,
        preface: preface.as_deref(),
        tls: server.tls.as_ref(),
    };
    let stream = match connect::secure(stream, &dial).await {
        Ok(s) => s,
        Err(e) => return dial_failed(e),
    };
    match &check.kind {
        CheckKind::Tcp {
            send: None,
            expect: None,
        } if server.tls.is_some() => (CheckStatus::L6Ok, None, String::new()),
        CheckKind::Tcp {
            send: None,
            expect: None,
        } => (CheckStatus::L4Ok, None, String::new()),
        CheckKind::Tcp { send, expect } => {
            tcp_exchange(stream, send.as_deref(), expect.as_deref()).await
        }
        CheckKind::Http(http) => {
            match http_probe(http, addr, stream, server.h2, server.tls.is_some()).await {
                Ok(response) => match judge {
                    Some(j) => plugin_verdict(http, j, &response, weight).await,
                    None => verdict(http, &response),
                },
                Err(detail) => (CheckStatus::L7Response, None, detail),
            }
        }
    }
}

/// A TCP check's exchange (HAProxy's `tcp-check send` / `expect string`): `send` written,
/// then what comes back read until it holds `expect`, the server closes, or
/// [`BODY_PREFIX`] bytes came without it.
async fn tcp_exchange(mut stream: Stream, send: Option<&[u8]>, expect: Option<&str>) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if let Some(bytes) = send
        && let Err(e) = stream.write_all(bytes).await
    {
        return (CheckStatus::L4Conn, None, format!("sending: {e}"));
    }
    let Some(expect) = expect else {
        return (CheckStatus::L7Ok, None, String::new());
    };
    let mut got = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if got.windows(expect.len()).any(|w| w == expect.as_bytes()) {
            return (CheckStatus::L7Ok, None, String::new());
        }
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => return (CheckStatus::L7Response, None, format!("reading: {e}")),
        };
        if n == 0 || got.len() >= BODY_PREFIX {
            let seen = String::from_utf8_lossy(&got[..got.len().min(64)]).into_owned();
            return (
                CheckStatus::L7Response,
                None,
                format!("expected {expect:?}, got {seen:?}"),
            );
        }
        got.extend_from_slice(&chunk[..n]);
    }
}

/// A failed dial as a check reports it: TLS at layer 6, the rest at layer 4. The details
/// say what failed, without the address the check is already shown under.
fn dial_failed(e: ConnectError) -> Outcome {
    match e {
        ConnectError::Tls(_, e) => (CheckStatus::L6Response, None, format!("TLS: {e}")),
        ConnectError::Io(_, e) => (CheckStatus::L4Conn, None, e.to_string()),
        e => (CheckStatus::L4Conn, None, e.to_string()),
    }
}

async fn http_probe(
    check: &HttpCheck,
    addr: SocketAddr,
    stream: Stream,
    h2: bool,
    tls: bool,
) -> Result<ProbeResponse, String> {
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let mut request = Request::builder()
        .method(check.method.clone())
        .uri(&check.path)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let h = request.headers_mut();
    for (name, value) in &check.headers {
        h.append(name.clone(), value.clone());
    }
    h.insert(
        header::HOST,
        HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
    );
    h.entry(header::USER_AGENT)
        .or_insert(HeaderValue::from_static("weir-health-check"));
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        *request.version_mut() = http::Version::HTTP_2;
        let scheme = if tls { "https" } else { "http" };
        let uri = format!("{scheme}://{host}{}", check.path);
        *request.uri_mut() = uri
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        sender.send_request(request).await
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        request
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let (parts, mut body) = response.into_parts();
    let mut prefix = BytesMut::new();
    while prefix.len() < BODY_PREFIX {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = BODY_PREFIX - prefix.len();
                    prefix.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
    Ok(ProbeResponse {
        status: parts.status,
        headers: parts.headers,
        body_prefix: prefix.freeze(),
    })
}

/// Asks the plugin. If its call fails, a fail-open plugin leaves the verdict to the
/// configured expectations; a fail-closed one fails the check.
async fn plugin_verdict(
    check: &HttpCheck,
    judge: Judge<'_>,
    response: &ProbeResponse,
    weight: &mut Option<Option<u32>>,
) -> Outcome {
    let code = response.status.as_u16();
    let probe = HealthProbe {
        backend: judge.backend,
        server: judge.server,
        status: code,
        headers: &response.headers,
        body_prefix: &response.body_prefix,
    };
    match judge.plugin.on_health_check(&probe).await {
        Ok(HealthVerdict::Up(w)) => {
            *weight = Some(w.map(|w| w.min(256)));
            (CheckStatus::L7Ok, Some(code), String::new())
        }
        Ok(HealthVerdict::Down(reason)) => (
            CheckStatus::L7Response,
            Some(code),
            format!("plugin: {reason}"),
        ),
        Err(e) => {
            tracing::error!(
                "plugin {} failed in on-health-check: {e}",
                judge.plugin.name
            );
            match judge.plugin.on_error {
                FailPolicy::Open => verdict(check, response),
                FailPolicy::Closed => (
                    CheckStatus::L7Response,
                    Some(code),
                    format!("plugin failed: {e}"),
                ),
            }
        }
    }
}

/// Judges an HTTP check response by the configured expectations.
pub fn verdict(check: &HttpCheck, response: &ProbeResponse) -> Outcome {
    let code = response.status.as_u16();
    if !check.expect_status.matches(code) {
        return (CheckStatus::L7Status, Some(code), String::new());
    }
    if let Some(needle) = &check.expect_body {
        let found = response
            .body_prefix
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes());
        if !found {
            return (
                CheckStatus::L7Response,
                Some(code),
                format!("body lacks \"{needle}\""),
            );
        }
    }
    (CheckStatus::L7Ok, Some(code), String::new())
}

/// The time before the next check: `interval` when settled UP, `fastinter` while a change
/// is in progress, `downinter` while DOWN; shortened by up to 10% of jitter so that checks
/// on many servers drift apart instead of firing together.
pub fn next_delay(check: &HealthCheck, up: bool, changing: bool, jitter: f64) -> Duration {
    let base = if changing {
        check.fastinter
    } else if up {
        check.interval
    } else {
        check.downinter
    };
    base.mul_f64(1.0 - 0.1 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusMatch;

    fn http(expect: Vec<(u16, u16)>, body: Option<&str>) -> HttpCheck {
        HttpCheck {
            method: http::Method::GET,
            path: "/health".into(),
            host: None,
            headers: Vec::new(),
            expect_status: StatusMatch(expect),
            expect_body: body.map(str::to_string),
            plugin: None,
        }
    }

    fn response(code: u16, body: &'static str) -> ProbeResponse {
        ProbeResponse {
            status: StatusCode::from_u16(code).unwrap(),
            headers: HeaderMap::new(),
            body_prefix: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn the_next_check_follows_the_state_with_up_to_ten_percent_jitter() {
        let check = HealthCheck {
            kind: CheckKind::Tcp {
                send: None,
                expect: None,
            },
            interval: Duration::from_millis(1000),
            fastinter: Duration::from_millis(100),
            downinter: Duration::from_millis(5000),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            observe: None,
            error_limit: 10,
            on_error: crate::config::OnError::FailCheck,
        };
        assert_eq!(
            next_delay(&check, true, false, 0.0),
            Duration::from_millis(1000)
        );
        assert_eq!(
            next_delay(&check, true, false, 1.0),
            Duration::from_millis(900)
        );
        assert_eq!(
            next_delay(&check, true, true, 0.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            next_delay(&check, false, true, 0.0),
            Duration::from_millis(100)
        );
        assert_eq!(
            next_delay(&check, false, false, 0.5),
            Duration::from_millis(4750)
        );
    }

    #[test]
    fn status_and_body_expectations() {
        let c = http(vec![(200, 299)], Some("healthy"));
        assert_eq!(
            verdict(&c, &response(204, "all healthy")).0,
            CheckStatus::L7Ok
        );
        assert_eq!(
            verdict(&c, &response(503, "healthy")).0,
            CheckStatus::L7Status
        );
        assert_eq!(
            verdict(&c, &response(200, "degraded")).0,
            CheckStatus::L7Response
        );
        let c = http(vec![(200, 200), (418, 418)], None);
        assert_eq!(verdict(&c, &response(418, "")).0, CheckStatus::L7Ok);
        assert_eq!(verdict(&c, &response(201, "")).0, CheckStatus::L7Status);
    }
}
