//! `[backend.<name>]`: balancing, servers, health checks, retries.

use super::*;

pub(super) fn build_backend(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    name: &str,
    b: &BackendFile,
    d: &Defaults,
) -> Backend {
    let mode = mode(cx, &path.key("mode"), b.mode.as_deref());
    let balance = match &b.balance {
        None => Balance::RoundRobin,
        Some(text) => parse_balance(text).unwrap_or_else(|msg| {
            cx.err(&path.key("balance"), msg);
            Balance::RoundRobin
        }),
    };
    match (&balance, mode) {
        (Balance::Uri | Balance::Hdr(_) | Balance::UrlParam(_), Mode::Tcp) => cx.err(
            &path.key("balance"),
            "hashes an HTTP request; a tcp backend has roundrobin, static-rr, leastconn, first, random, source and sni",
        ),
        (Balance::Sni, Mode::Http) => cx.err(
            &path.key("balance"),
            "sni is for tcp backends (mode = \"tcp\"); an http backend has hdr:host",
        ),
        _ => {}
    }
    if mode == Mode::Tcp {
        for (i, s) in b.servers.iter().enumerate() {
            if s.proto.as_deref() == Some("h2") {
                cx.err(
                    &path.key("servers").index(i).key("proto"),
                    "a tcp backend relays bytes: it speaks no HTTP/2 to its servers",
                );
            }
        }
    }
    if b.servers.is_empty() {
        cx.err(&path.key("servers"), "at least one server is required");
    }
    let mut names = HashSet::new();
    let servers: Vec<Server> = b
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sp = path.key("servers").index(i);
            if s.name.is_empty() {
                cx.err(&sp.key("name"), "must not be empty");
            } else if !names.insert(s.name.as_str()) {
                cx.err(
                    &sp.key("name"),
                    format!("duplicate server name \"{}\" in backend \"{name}\"", s.name),
                );
            }
            build_server(cx, path, &sp, s, b)
        })
        .collect();
    if !servers.is_empty() && servers.iter().all(|s| s.weight == 0) {
        cx.err(
            &path.key("servers"),
            "every server has weight 0, so none can receive traffic",
        );
    }
    let t = b.timeout.as_ref();
    let tp = path.key("timeout");
    let tunnel_written = t.is_some_and(|t| t.tunnel.is_some()) || d.tunnel_written;
    Backend {
        name: name.to_owned(),
        mode,
        tunnel_written,
        balance,
        servers,
        timeout_connect: cx.positive(
            &tp.key("connect"),
            t.and_then(|t| t.connect.as_ref()),
            d.connect,
        ),
        timeout_server: cx.positive(
            &tp.key("server"),
            t.and_then(|t| t.server.as_ref()),
            d.server,
        ),
        timeout_tunnel: cx.positive(
            &tp.key("tunnel"),
            t.and_then(|t| t.tunnel.as_ref()),
            d.tunnel,
        ),
        timeout_queue: cx.positive(&tp.key("queue"), t.and_then(|t| t.queue.as_ref()), d.queue),
        retries: cx.int(&path.key("retries"), b.retries, d.retries as i64, 0, 100) as u32,
        redispatch: b.redispatch.unwrap_or(d.redispatch),
        retry_on: retry_on(cx, &path.key("retry_on"), b.retry_on.as_deref())
            .unwrap_or_else(|| d.retry_on.clone()),
        allbackups: b.allbackups.unwrap_or(false),
        maxqueue: b
            .maxqueue
            .map(|m| cx.int(&path.key("maxqueue"), Some(m), 0, 0, 10_000_000) as usize),
        pool_max_idle: cx.int(
            &path.key("pool_max_idle"),
            b.pool_max_idle,
            d.pool_max_idle as i64,
            0,
            100_000,
        ) as usize,
        pool_idle_timeout: cx.positive(
            &path.key("pool_idle_timeout"),
            b.pool_idle_timeout.as_ref(),
            d.pool_idle_timeout,
        ),
        // Not merged with [defaults]: a backend's own pages come first, then the frontend's
        // (which include the defaults).
        errorfiles: errorfiles(cx, &path.key("errorfiles"), b.errorfiles.as_ref()),
    }
}

pub(super) fn build_server(
    cx: &mut Ctx<'_>,
    backend_path: &KeyPath,
    path: &KeyPath,
    s: &ServerFile,
    b: &BackendFile,
) -> Server {
    let mut server = build_server_fields(cx, backend_path, path, s, b);
    let h2 = match s.proto.as_deref() {
        None | Some("http/1.1") => false,
        Some("h2") => true,
        Some(other) => {
            cx.err(
                &path.key("proto"),
                format!("must be \"http/1.1\" or \"h2\", got \"{other}\""),
            );
            false
        }
    };
    server.h2 = h2;
    let tls_keys = s.verify.is_some() || s.ca.is_some() || s.sni.is_some();
    if s.tls == Some(true) {
        let name = match &s.sni {
            Some(sni) => {
                rustls::pki_types::ServerName::try_from(sni.clone()).unwrap_or_else(|_| {
                    cx.err(&path.key("sni"), format!("\"{sni}\" is not a DNS name"));
                    rustls::pki_types::ServerName::IpAddress(server.addr.ip().into())
                })
            }
            None => server_name_of(&s.addr, server.addr),
        };
        let ca = s.ca.as_ref().map(|c| cx.base.join(c));
        match crate::tls::client(ca.as_deref(), s.verify.unwrap_or(true), h2, name) {
            Ok(tls) => server.tls = Some(tls),
            Err(msg) => cx.err(&path.key("ca"), msg),
        }
    } else if tls_keys {
        cx.err(
            &path.key("tls"),
            "verify, ca and sni apply to TLS: set tls = true",
        );
    }
    server
}

/// The name a server's certificate must carry: the host its `addr` names, or its IP.
pub(super) fn server_name_of(
    written: &str,
    addr: SocketAddr,
) -> rustls::pki_types::ServerName<'static> {
    let host = written
        .rsplit_once(':')
        .map_or(written, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_err()
        && let Ok(name) = rustls::pki_types::ServerName::try_from(host.to_owned())
    {
        return name;
    }
    rustls::pki_types::ServerName::IpAddress(addr.ip().into())
}

pub(super) fn build_server_fields(
    cx: &mut Ctx<'_>,
    backend_path: &KeyPath,
    path: &KeyPath,
    s: &ServerFile,
    b: &BackendFile,
) -> Server {
    let addr = parse_addr(&s.addr, false).unwrap_or_else(|msg| {
        cx.err(&path.key("addr"), msg);
        SocketAddr::from(([0, 0, 0, 0], 0))
    });
    let maxconn = s
        .maxconn
        .map(|m| cx.int(&path.key("maxconn"), Some(m), 1, 1, 1_000_000) as u32);
    let state = match s.state.as_deref() {
        None => AdminState::Ready,
        Some(name) => AdminState::from_name(name).unwrap_or_else(|| {
            cx.err(
                &path.key("state"),
                format!("must be \"ready\", \"drain\" or \"maint\", got \"{name}\""),
            );
            AdminState::Ready
        }),
    };
    Server {
        name: s.name.clone(),
        addr,
        state,
        weight: cx.int(&path.key("weight"), s.weight, 1, 0, MAX_WEIGHT) as u32,
        maxconn,
        backup: s.backup.unwrap_or(false),
        slowstart: match s.slowstart.as_ref() {
            Some(v) => Some(cx.positive(&path.key("slowstart"), Some(v), Duration::ZERO)),
            None => b
                .slowstart
                .as_ref()
                .map(|v| cx.positive(&backend_path.key("slowstart"), Some(v), Duration::ZERO)),
        },
        health: health_check(cx, backend_path, b.health.as_ref(), path, s.health.as_ref()),
        tls: None,
        h2: false,
        send_proxy: match s.send_proxy.as_deref() {
            None => None,
            Some("v1") => Some(crate::proxy_protocol::Version::V1),
            Some("v2") => Some(crate::proxy_protocol::Version::V2),
            Some(other) => {
                cx.err(
                    &path.key("send_proxy"),
                    format!("must be \"v1\" or \"v2\", got \"{other}\""),
                );
                None
            }
        },
    }
}

/// A server's health check: the backend's `health` with the server's keys over it. Each
/// error names the table the offending key was written in.
pub(super) fn health_check(
    cx: &mut Ctx<'_>,
    backend_path: &KeyPath,
    backend: Option<&HealthFile>,
    server_path: &KeyPath,
    server: Option<&HealthFile>,
) -> Option<HealthCheck> {
    let empty = HealthFile::default();
    let merged = match (backend, server) {
        (None, None) => return None,
        (b, s) => s.unwrap_or(&empty).over(b.unwrap_or(&empty)),
    };
    let written_by_server = |key: &str| -> bool {
        let Some(s) = server else { return false };
        match key {
            "method" => s.method.is_some(),
            "path" => s.path.is_some(),
            "host" => s.host.is_some(),
            "headers" => s.headers.is_some(),
            "expect_status" => s.expect_status.is_some(),
            "expect_body" => s.expect_body.is_some(),
            "interval" => s.interval.is_some(),
            "fastinter" => s.fastinter.is_some(),
            "downinter" => s.downinter.is_some(),
            "timeout" => s.timeout.is_some(),
            "rise" => s.rise.is_some(),
            "fall" => s.fall.is_some(),
            "observe" => s.observe.is_some(),
            "error_limit" => s.error_limit.is_some(),
            "on_error" => s.on_error.is_some(),
            "plugin" => s.plugin.is_some(),
            "send" => s.send.is_some(),
            "expect" => s.expect.is_some(),
            _ => false,
        }
    };
    let at = |key: &str| -> KeyPath {
        let base = if written_by_server(key) {
            server_path
        } else {
            backend_path
        };
        base.key("health").key(key)
    };
    let h = &merged;
    let interval = cx.positive(&at("interval"), h.interval.as_ref(), Duration::from_secs(2));
    let mut check = HealthCheck {
        kind: CheckKind::Tcp {
            send: None,
            expect: None,
        },
        interval,
        fastinter: cx.positive(&at("fastinter"), h.fastinter.as_ref(), interval),
        downinter: cx.positive(&at("downinter"), h.downinter.as_ref(), interval),
        timeout: cx.positive(
            &at("timeout"),
            h.timeout.as_ref(),
            interval.min(Duration::from_secs(1)),
        ),
        rise: cx.int(&at("rise"), h.rise, 2, 1, 1000) as u32,
        fall: cx.int(&at("fall"), h.fall, 3, 1, 1000) as u32,
        observe: match h.observe.as_deref() {
            None => None,
            Some("layer4") => Some(Observe::Layer4),
            Some("layer7") => Some(Observe::Layer7),
            Some(other) => {
                cx.err(
                    &at("observe"),
                    format!("unknown mode \"{other}\" (expected \"layer4\" or \"layer7\")"),
                );
                None
            }
        },
        error_limit: cx.int(&at("error_limit"), h.error_limit, 10, 1, 1_000_000) as u32,
        on_error: match h.on_error.as_deref() {
            None | Some("fail-check") => OnError::FailCheck,
            Some("fastinter") => OnError::FastInter,
            Some("mark-down") => OnError::MarkDown,
            Some(other) => {
                cx.err(
                    &at("on_error"),
                    format!("unknown action \"{other}\" (expected \"fail-check\", \"fastinter\" or \"mark-down\")"),
                );
                OnError::FailCheck
            }
        },
    };
    let Some(path) = h.path.clone() else {
        for key in [
            "method",
            "host",
            "headers",
            "expect_status",
            "expect_body",
            "plugin",
        ] {
            let written = match key {
                "method" => h.method.is_some(),
                "host" => h.host.is_some(),
                "headers" => h.headers.is_some(),
                "expect_status" => h.expect_status.is_some(),
                "plugin" => h.plugin.is_some(),
                _ => h.expect_body.is_some(),
            };
            if written {
                cx.err(&at(key), "applies to HTTP checks only: set health.path too");
            }
        }
        if h.send.as_deref() == Some("") {
            cx.err(&at("send"), "must not be empty");
        }
        if h.expect.as_deref() == Some("") {
            cx.err(&at("expect"), "must not be empty");
        }
        check.kind = CheckKind::Tcp {
            send: h.send.clone().map(String::into_bytes),
            expect: h.expect.clone(),
        };
        return Some(check);
    };
    for (key, written) in [("send", h.send.is_some()), ("expect", h.expect.is_some())] {
        if written {
            cx.err(&at(key), "applies to TCP checks (without health.path)");
        }
    }
    if !path.starts_with('/') {
        cx.err(
            &at("path"),
            format!("must start with \"/\", got \"{path}\""),
        );
    }
    let method = match h.method.as_deref() {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.as_bytes()).unwrap_or_else(|_| {
            cx.err(&at("method"), format!("invalid method \"{m}\""));
            Method::GET
        }),
    };
    let mut headers = Vec::new();
    for (name, value) in h.headers.iter().flatten() {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => cx.err(&at("headers").key(name), "invalid header name or value"),
        }
    }
    let expect_status = match &h.expect_status {
        None => StatusMatch(vec![(200, 399)]),
        Some(e) => expect_status(cx, &at("expect_status"), e),
    };
    Some(HealthCheck {
        kind: CheckKind::Http(HttpCheck {
            method,
            path,
            host: h.host.clone(),
            headers,
            expect_status,
            expect_body: h.expect_body.clone(),
            plugin: h.plugin.clone(),
        }),
        ..check
    })
}

pub(super) fn expect_status(cx: &mut Ctx<'_>, path: &KeyPath, e: &ExpectStatusFile) -> StatusMatch {
    let code = |cx: &mut Ctx<'_>, c: i64| -> Option<(u16, u16)> {
        if (100..=599).contains(&c) {
            Some((c as u16, c as u16))
        } else {
            cx.err(path, format!("{c} is not an HTTP status"));
            None
        }
    };
    let ranges = match e {
        ExpectStatusFile::Code(c) => code(cx, *c).into_iter().collect(),
        ExpectStatusFile::Codes(list) => list.iter().filter_map(|c| code(cx, *c)).collect(),
        ExpectStatusFile::Class(class) => {
            let b = class.as_bytes();
            if b.len() == 3 && (b'1'..=b'5').contains(&b[0]) && b[1..].eq_ignore_ascii_case(b"xx") {
                let lo = u16::from(b[0] - b'0') * 100;
                vec![(lo, lo + 99)]
            } else {
                cx.err(
                    path,
                    format!("invalid status class \"{class}\" (expected e.g. \"2xx\")"),
                );
                Vec::new()
            }
        }
    };
    StatusMatch(ranges)
}

/// `["conn-failure", "empty-response", "response-timeout", "502", "503", "504"]`.
pub(super) fn retry_on(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    list: Option<&[String]>,
) -> Option<RetryOn> {
    let list = list?;
    let mut r = RetryOn {
        conn_failure: false,
        empty_response: false,
        response_timeout: false,
        statuses: Vec::new(),
    };
    for (i, item) in list.iter().enumerate() {
        match item.as_str() {
            "conn-failure" => r.conn_failure = true,
            "empty-response" => r.empty_response = true,
            "response-timeout" => r.response_timeout = true,
            "502" | "503" | "504" => r.statuses.push(item.parse().expect("listed codes parse")),
            other => cx.err(
                &path.index(i),
                format!("unknown condition \"{other}\" (expected conn-failure, empty-response, response-timeout, 502, 503 or 504)"),
            ),
        }
    }
    Some(r)
}

pub(super) fn parse_balance(text: &str) -> Result<Balance, String> {
    Ok(match text {
        "roundrobin" => Balance::RoundRobin,
        "static-rr" => Balance::StaticRr,
        "leastconn" => Balance::LeastConn,
        "random" => Balance::Random,
        "source" => Balance::Source,
        "uri" => Balance::Uri,
        "first" => Balance::First,
        "sni" => Balance::Sni,
        _ => {
            if let Some(name) = text.strip_prefix("hdr:") {
                let header = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name \"{name}\" in \"{text}\""))?;
                Balance::Hdr(header)
            } else if let Some(name) = text.strip_prefix("url_param:") {
                if name.is_empty() {
                    return Err(
                        "url_param: needs a parameter name, e.g. \"url_param:userid\"".into(),
                    );
                }
                Balance::UrlParam(name.to_owned())
            } else {
                return Err(format!(
                    "unknown algorithm \"{text}\" (expected roundrobin, static-rr, leastconn, random, source, uri, hdr:<name>, url_param:<name>, first or sni)"
                ));
            }
        }
    })
}

/// `mode`: "http" (the default) or "tcp".
pub(super) fn mode(cx: &mut Ctx<'_>, path: &KeyPath, text: Option<&str>) -> Mode {
    match text {
        None | Some("http") => Mode::Http,
        Some("tcp") => Mode::Tcp,
        Some(other) => {
            cx.err(
                path,
                format!("must be \"http\" or \"tcp\", got \"{other}\""),
            );
            Mode::Http
        }
    }
}
