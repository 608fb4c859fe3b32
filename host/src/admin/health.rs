//! The node's own health, for keepalived or whatever else decides which node holds the
//! traffic: `GET /healthz` answers `200 ok` while this node can serve, and `503` with the
//! reasons otherwise; `weir health` asks it from the command line and answers with its
//! exit code, as a `vrrp_script` wants.
//!
//! A node can serve when it is not shutting down, every frontend of the running
//! generation has its addresses bound, and every frontend's default backend has a server
//! that can take a request (UP, ready, weight above 0; a backup counts). From the moment
//! a graceful shutdown starts it answers 503, so that the address moves away before the
//! drain ends. Both sides are cheap enough to run every second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use super::{Reply, document, reply};
use crate::server::Control;

/// Why this node cannot serve now; empty when it can.
pub fn reasons(control: &Control) -> Vec<String> {
    if control.is_draining() {
        return vec!["shutting down".to_owned()];
    }
    let proxy = control.proxy();
    let mut reasons = Vec::new();
    for fe in &proxy.frontends {
        if control.addrs(&fe.name).is_none_or(|a| a.is_empty()) {
            reasons.push(format!("frontend {}: not listening", fe.name));
        }
        let backend = &fe.backend;
        if !backend.servers.iter().any(|s| s.available()) {
            reasons.push(format!(
                "frontend {}: backend {} has no server that can take a request",
                fe.name, backend.name
            ));
        }
    }
    reasons
}

/// `GET /healthz`.
pub fn healthz(control: &Control) -> Reply {
    let reasons = reasons(control);
    if reasons.is_empty() {
        return document("ok\n".to_owned(), "text/plain; charset=utf-8");
    }
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "status": "down", "reasons": reasons }),
    )
}

/// `weir health`: the admin listener's verdict at `admin`, and with `through`, one real
/// request through a frontend (`http://host:port/path`), which must get an answer below
/// 500. `Ok` with the line to print when the node can serve; `Err` with the line to
/// print when it cannot or could not be asked. Each exchange has `timeout`.
pub fn ask(admin: SocketAddr, through: Option<&str>, timeout: Duration) -> Result<String, String> {
    let (status, body) =
        get(admin, "/healthz", None, timeout).map_err(|e| format!("down: admin {admin}: {e}"))?;
    if status != 200 {
        let reasons = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["reasons"].as_array().map(|r| {
                    r.iter()
                        .filter_map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            })
            .unwrap_or_else(|| body.trim().to_owned());
        return Err(format!("down: {reasons}"));
    }
    let Some(url) = through else {
        return Ok("ok".to_owned());
    };
    let (addr, path) = target(url)?;
    match get(addr, &path, None, timeout) {
        Ok((status, _)) if status < 500 => Ok(format!("ok (through {url}: {status})")),
        Ok((status, _)) => Err(format!("down: through {url}: {status}")),
        Err(e) => Err(format!("down: through {url}: {e}")),
    }
}

/// The address and path of an `http://host:port/path` URL.
fn target(url: &str) -> Result<(SocketAddr, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--through {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--through {url}: only http:// URLs are supported"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--through {url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("--through {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("--through {url}: {host} has no address"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((addr, path))
}

/// One `GET` over HTTP/1.1 (with basic `auth`, `user:password`, when given), the
/// connection closed after it: the status and the body.
pub(super) fn get(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    stream.set_write_timeout(Some(left()?))?;
    let auth = auth.map_or(String::new(), |a| {
        format!(
            "Authorization: Basic {}\r\n",
            super::base64_encode(a.as_bytes())
        )
    });
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weir-health\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut chunk)? {
            0 => break,
            n => response.extend_from_slice(&chunk[..n]),
        }
        if response.len() > 1 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response")
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}
