//! One validation pass from the file structs to the typed `Config`. It collects every
//! problem it finds rather than stopping at the first, so `weir check` lists them all.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::file::{
    BackendFile, CertFile, ExpectStatusFile, File, FrontendFile, HealthFile, OneOrMany, ServerFile,
    TlsFile,
};
use super::locate::{KeyPath, Locator};
use super::units::{Dur, Size, parse_duration, parse_size};
use super::{
    AccessLogTarget, Admin, Backend, Balance, CheckKind, Config, ConfigError, ConfigErrors,
    ErrorFiles, ErrorPage, FailPolicy, Frontend, Global, HealthCheck, HttpCheck, LogFormat,
    Observe, OnError, PluginConfig, PluginSource, RetryOn, Server, StatusMatch,
};

/// Statuses that weir answers by itself and that `errorfiles` may therefore replace.
const OWN_STATUSES: [u16; 5] = [400, 501, 502, 503, 504];
const MAX_WEIGHT: i64 = 256;
const MAX_ERRORFILE_SIZE: u64 = 64 * 1024;

struct Ctx<'a> {
    loc: Locator<'a>,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        let e = ConfigError {
            path: path.to_string(),
            line: self.loc.line_of(path),
            message: message.into(),
        };
        // A backend's health check is checked once per server; say each problem once.
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    /// An integer within bounds, or an error naming the key.
    fn int(&mut self, path: &KeyPath, value: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            self.err(path, format!("must be between {min} and {max}, got {v}"));
            return default;
        }
        v
    }

    /// A duration greater than zero, or the inherited one when not written.
    fn positive(&mut self, path: &KeyPath, value: Option<&Dur>, inherited: Duration) -> Duration {
        let Some(Dur(text)) = value else {
            return inherited;
        };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.err(path, "must be greater than zero");
                inherited
            }
            Ok(d) => d,
            Err(msg) => {
                self.err(path, msg);
                inherited
            }
        }
    }

    fn size(&mut self, path: &KeyPath, value: Option<&Size>) -> Option<u64> {
        let Size(text) = value?;
        parse_size(text).map_err(|msg| self.err(path, msg)).ok()
    }
}

pub fn load(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let loc = Locator::new(text);
    let file: File = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let offset = e.span().map(|s| s.start);
            return Err(ConfigErrors(vec![ConfigError {
                path: offset
                    .map(|o| loc.path_at(o).to_string())
                    .unwrap_or_default(),
                line: offset.map(|o| loc.line_of_offset(o)),
                message: e.message().trim().to_string(),
            }]));
        }
    };
    let mut cx = Ctx {
        loc,
        base,
        errors: Vec::new(),
    };
    let config = build(&mut cx, file);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(cx.errors))
    }
}

/// Values inherited from `[defaults]`, already checked.
struct Defaults {
    connect: Duration,
    client: Duration,
    server: Duration,
    http_request: Duration,
    tunnel: Duration,
    queue: Duration,
    retries: u32,
    redispatch: bool,
    retry_on: RetryOn,
    forwardfor: bool,
    max_header_size: usize,
    max_headers: usize,
    log_format: LogFormat,
    pool_max_idle: usize,
    pool_idle_timeout: Duration,
    errorfiles: ErrorFiles,
}

fn build(cx: &mut Ctx<'_>, file: File) -> Config {
    let root = KeyPath::root();
    let g = root.key("global");
    let global = Global {
        maxconn: cx.int(&g.key("maxconn"), file.global.maxconn, 4096, 1, 10_000_000) as usize,
        threads: cx.int(&g.key("threads"), file.global.threads, 0, 0, 1024) as usize,
        access_log: match file.global.access_log.as_deref() {
            None | Some("stderr") => AccessLogTarget::Stderr,
            Some("off") => AccessLogTarget::Off,
            Some("") => {
                cx.err(
                    &g.key("access_log"),
                    "must be \"stderr\", \"off\" or a file path",
                );
                AccessLogTarget::Stderr
            }
            Some(path) => AccessLogTarget::File(cx.base.join(path)),
        },
        timeout_shutdown: cx.positive(
            &root.key("defaults").key("timeout").key("shutdown"),
            file.defaults
                .timeout
                .as_ref()
                .and_then(|t| t.shutdown.as_ref()),
            Duration::from_secs(10),
        ),
    };
    let defaults = build_defaults(cx, &file);
    let backend_names: HashSet<&str> = file.backend.keys().map(String::as_str).collect();

    if file.frontend.is_empty() {
        cx.err(
            &root.key("frontend"),
            "at least one [[frontend]] is required",
        );
    }
    let mut frontend_names = HashSet::new();
    let mut all_binds: Vec<(SocketAddr, KeyPath)> = Vec::new();
    let mut frontends = Vec::new();
    for (i, f) in file.frontend.iter().enumerate() {
        let path = root.key("frontend").index(i);
        if f.name.is_empty() {
            cx.err(&path.key("name"), "must not be empty");
        } else if !frontend_names.insert(f.name.as_str()) {
            cx.err(
                &path.key("name"),
                format!("duplicate frontend name \"{}\"", f.name),
            );
        }
        frontends.push(build_frontend(
            cx,
            &path,
            f,
            &defaults,
            &backend_names,
            &mut all_binds,
        ));
    }

    if file.backend.is_empty() {
        cx.err(
            &root.key("backend"),
            "at least one [backend.<name>] is required",
        );
    }
    let backends = file
        .backend
        .iter()
        .map(|(name, b)| build_backend(cx, &root.key("backend").key(name), name, b, &defaults))
        .collect();

    let plugins = build_plugins(cx, &file);
    for (name, b) in &file.backend {
        let named = |h: &Option<HealthFile>| h.as_ref().and_then(|h| h.plugin.clone());
        let bp = root.key("backend").key(name);
        let mut refs = vec![(bp.key("health").key("plugin"), named(&b.health))];
        for (i, s) in b.servers.iter().enumerate() {
            refs.push((
                bp.key("servers").index(i).key("health").key("plugin"),
                named(&s.health),
            ));
        }
        for (path, plugin) in refs {
            if let Some(p) = plugin
                && !file.plugin.contains_key(&p)
            {
                cx.err(
                    &path,
                    format!("unknown plugin \"{p}\" (no [plugin.{p}] section)"),
                );
            }
        }
    }
    for (i, f) in file.frontend.iter().enumerate() {
        for (j, name) in f.plugins.iter().enumerate() {
            if !file.plugin.contains_key(name) {
                cx.err(
                    &root.key("frontend").index(i).key("plugins").index(j),
                    format!("unknown plugin \"{name}\" (no [plugin.{name}] section)"),
                );
            }
        }
    }
    let admin = file.admin.as_ref().and_then(|a| {
        let path = root.key("admin");
        let bind = match parse_addr(&a.bind, true) {
            Ok(addr) => Some(addr),
            Err(msg) => {
                cx.err(&path.key("bind"), msg);
                None
            }
        };
        if let Some(addr) = bind
            && let Some((_, other)) = all_binds
                .iter()
                .find(|(b, _)| *b == addr && addr.port() != 0)
        {
            cx.err(
                &path.key("bind"),
                format!("{addr} is already bound by {other}"),
            );
        }
        if let Some(auth) = &a.auth
            && (auth.user.is_empty() || auth.user.contains(':') || auth.password.is_empty())
        {
            cx.err(
                &path.key("auth"),
                "needs a user (without \":\") and a non-empty password",
            );
        }
        let refresh = cx.positive(
            &path.key("refresh"),
            a.refresh.as_ref(),
            Duration::from_secs(5),
        );
        bind.map(|bind| Admin {
            bind,
            stats_admin: a.stats_admin.unwrap_or(false),
            refresh,
            auth: a
                .auth
                .as_ref()
                .map(|x| (x.user.clone(), x.password.clone())),
        })
    });
    Config {
        global,
        frontends,
        backends,
        plugins,
        admin,
        source: None,
    }
}

fn build_defaults(cx: &mut Ctx<'_>, file: &File) -> Defaults {
    let d = &file.defaults;
    let p = KeyPath::root().key("defaults");
    let t = d.timeout.as_ref();
    let tp = p.key("timeout");
    Defaults {
        connect: cx.positive(
            &tp.key("connect"),
            t.and_then(|t| t.connect.as_ref()),
            Duration::from_secs(5),
        ),
        client: cx.positive(
            &tp.key("client"),
            t.and_then(|t| t.client.as_ref()),
            Duration::from_secs(30),
        ),
        server: cx.positive(
            &tp.key("server"),
            t.and_then(|t| t.server.as_ref()),
            Duration::from_secs(30),
        ),
        http_request: cx.positive(
            &tp.key("http_request"),
            t.and_then(|t| t.http_request.as_ref()),
            Duration::from_secs(10),
        ),
        tunnel: cx.positive(
            &tp.key("tunnel"),
            t.and_then(|t| t.tunnel.as_ref()),
            Duration::from_secs(3600),
        ),
        retries: cx.int(&p.key("retries"), d.retries, 3, 0, 100) as u32,
        queue: cx.positive(
            &tp.key("queue"),
            t.and_then(|t| t.queue.as_ref()),
            Duration::from_secs(5),
        ),
        redispatch: d.redispatch.unwrap_or(true),
        retry_on: retry_on(cx, &p.key("retry_on"), d.retry_on.as_deref()).unwrap_or(RetryOn {
            conn_failure: true,
            empty_response: false,
            response_timeout: false,
            statuses: Vec::new(),
        }),
        forwardfor: d.forwardfor.unwrap_or(true),
        max_header_size: header_size(
            cx,
            &p.key("max_header_size"),
            d.max_header_size.as_ref(),
            64 * 1024,
        ),
        max_headers: cx.int(&p.key("max_headers"), d.max_headers, 100, 1, 10_000) as usize,
        log_format: log_format(
            cx,
            &p.key("log_format"),
            d.log_format.as_deref(),
            LogFormat::Text,
        ),
        pool_max_idle: cx.int(&p.key("pool_max_idle"), d.pool_max_idle, 64, 0, 100_000) as usize,
        pool_idle_timeout: cx.positive(
            &p.key("pool_idle_timeout"),
            d.pool_idle_timeout.as_ref(),
            Duration::from_secs(5),
        ),
        errorfiles: errorfiles(cx, &p.key("errorfiles"), d.errorfiles.as_ref()),
    }
}

fn build_frontend(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    f: &FrontendFile,
    d: &Defaults,
    backend_names: &HashSet<&str>,
    all_binds: &mut Vec<(SocketAddr, KeyPath)>,
) -> Frontend {
    let binds_written: Vec<(KeyPath, &str)> = match &f.bind {
        OneOrMany::One(s) => vec![(path.key("bind"), s.as_str())],
        OneOrMany::Many(v) => v
            .iter()
            .enumerate()
            .map(|(i, s)| (path.key("bind").index(i), s.as_str()))
            .collect(),
    };
    if binds_written.is_empty() {
        cx.err(&path.key("bind"), "at least one bind address is required");
    }
    let mut binds = Vec::new();
    for (bp, text) in binds_written {
        match parse_addr(text, true) {
            Ok(addr) => {
                // Port 0 asks the system for any free port, so it can never clash.
                if addr.port() != 0
                    && let Some((_, first)) = all_binds.iter().find(|(a, _)| *a == addr)
                {
                    let msg = format!("{addr} is already bound by {first}");
                    cx.err(&bp, msg);
                }
                all_binds.push((addr, bp));
                binds.push(addr);
            }
            Err(msg) => cx.err(&bp, msg),
        }
    }
    let default_backend = match &f.default_backend {
        Some(b) if backend_names.contains(b.as_str()) => b.clone(),
        Some(b) => {
            cx.err(
                &path.key("default_backend"),
                format!("unknown backend \"{b}\" (no [backend.{b}] section)"),
            );
            b.clone()
        }
        None => {
            cx.err(path, "default_backend is required");
            String::new()
        }
    };
    let t = f.timeout.as_ref();
    let tp = path.key("timeout");
    let redirect_https = f.redirect_https.unwrap_or(false);
    if redirect_https && f.tls.is_some() {
        cx.err(
            &path.key("redirect_https"),
            "is for a plain-http frontend; this one has tls",
        );
    }
    Frontend {
        name: f.name.clone(),
        binds,
        default_backend,
        plugins: f.plugins.clone(),
        timeout_client: cx.positive(
            &tp.key("client"),
            t.and_then(|t| t.client.as_ref()),
            d.client,
        ),
        timeout_http_request: cx.positive(
            &tp.key("http_request"),
            t.and_then(|t| t.http_request.as_ref()),
            d.http_request,
        ),
        forwardfor: f.forwardfor.unwrap_or(d.forwardfor),
        max_header_size: header_size(
            cx,
            &path.key("max_header_size"),
            f.max_header_size.as_ref(),
            d.max_header_size as u64,
        ),
        max_headers: cx.int(
            &path.key("max_headers"),
            f.max_headers,
            d.max_headers as i64,
            1,
            10_000,
        ) as usize,
        log_format: log_format(
            cx,
            &path.key("log_format"),
            f.log_format.as_deref(),
            d.log_format,
        ),
        errorfiles: merged(
            &d.errorfiles,
            errorfiles(cx, &path.key("errorfiles"), f.errorfiles.as_ref()),
        ),
        tls: f.tls.as_ref().map(|t| tls(cx, &path.key("tls"), t)),
        redirect_https,
        accept_proxy: f.accept_proxy.unwrap_or(false),
    }
}

/// Loads every certificate and key of a frontend's `tls`, checking they belong together.
fn tls(cx: &mut Ctx<'_>, path: &KeyPath, t: &TlsFile) -> Vec<Arc<rustls::sign::CertifiedKey>> {
    let entries: Vec<(KeyPath, &CertFile)> = match t {
        TlsFile::One(c) => vec![(path.clone(), c)],
        TlsFile::Many(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| (path.index(i), c))
            .collect(),
    };
    if entries.is_empty() {
        cx.err(path, "needs at least one { cert, key }");
    }
    let mut certs = Vec::new();
    for (p, c) in entries {
        let (cert, key) = (cx.base.join(&c.cert), cx.base.join(&c.key));
        match crate::tls::load(&cert, &key) {
            Ok(certified) => certs.push(certified),
            Err((crate::tls::File::Cert, msg)) => cx.err(&p.key("cert"), msg),
            Err((crate::tls::File::Key, msg)) => cx.err(&p.key("key"), msg),
        }
    }
    certs
}

fn build_backend(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    name: &str,
    b: &BackendFile,
    d: &Defaults,
) -> Backend {
    let balance = match &b.balance {
        None => Balance::RoundRobin,
        Some(text) => parse_balance(text).unwrap_or_else(|msg| {
            cx.err(&path.key("balance"), msg);
            Balance::RoundRobin
        }),
    };
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
    Backend {
        name: name.to_owned(),
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

fn build_server(
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
fn server_name_of(written: &str, addr: SocketAddr) -> rustls::pki_types::ServerName<'static> {
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

fn build_server_fields(
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
    Server {
        name: s.name.clone(),
        addr,
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
fn health_check(
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
    let check = HealthCheck {
        kind: CheckKind::Tcp,
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
        return Some(check);
    };
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

fn expect_status(cx: &mut Ctx<'_>, path: &KeyPath, e: &ExpectStatusFile) -> StatusMatch {
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
fn retry_on(cx: &mut Ctx<'_>, path: &KeyPath, list: Option<&[String]>) -> Option<RetryOn> {
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

/// Most memory a plugin instance may be given.
const MAX_PLUGIN_MEMORY: u64 = 256 << 20;

fn build_plugins(cx: &mut Ctx<'_>, file: &File) -> Vec<PluginConfig> {
    file.plugin
        .iter()
        .map(|(name, p)| {
            let path = KeyPath::root().key("plugin").key(name);
            let sha256 = p.sha256.as_ref().map(|h| h.to_ascii_lowercase());
            if let Some(h) = &sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                cx.err(&path.key("sha256"), "must be 64 hexadecimal digits");
            }
            let memory = cx
                .size(&path.key("memory"), p.memory.as_ref())
                .unwrap_or(16 << 20);
            if !(1 << 20..=MAX_PLUGIN_MEMORY).contains(&memory) {
                cx.err(&path.key("memory"), "must be between 1MiB and 256MiB");
            }
            let on_error = match p.on_error.as_deref() {
                None | Some("fail-closed") => FailPolicy::Closed,
                Some("fail-open") => FailPolicy::Open,
                Some(other) => {
                    cx.err(
                        &path.key("on_error"),
                        format!(
                            "unknown policy \"{other}\" (expected \"fail-closed\" or \"fail-open\")"
                        ),
                    );
                    FailPolicy::Closed
                }
            };
            let source = match (&p.wasm, &p.stock) {
                (Some(file), None) => PluginSource::File(cx.base.join(file)),
                (None, Some(stock)) => match crate::stock::find(stock) {
                    Some((name, _)) => PluginSource::Stock(name),
                    None => {
                        let known = crate::stock::names().collect::<Vec<_>>();
                        cx.err(
                            &path.key("stock"),
                            format!(
                                "no stock plugin \"{stock}\" (weir has: {})",
                                known.join(", ")
                            ),
                        );
                        PluginSource::Stock("")
                    }
                },
                (Some(_), Some(_)) => {
                    cx.err(
                        &path.key("stock"),
                        "give either `wasm` or `stock`, not both",
                    );
                    PluginSource::Stock("")
                }
                (None, None) => {
                    cx.err(&path, "needs `wasm = \"path\"` or `stock = \"name\"`");
                    PluginSource::Stock("")
                }
            };
            let config = p.config.clone().unwrap_or_default();
            PluginConfig {
                name: name.clone(),
                source,
                sha256,
                on_error,
                timeout: cx.positive(
                    &path.key("timeout"),
                    p.timeout.as_ref(),
                    Duration::from_millis(10),
                ),
                memory,
                config_json: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            }
        })
        .collect()
}

/// `ip:port`, `[v6]:port` or `host:port` (resolved now, at load time, to its first address).
fn parse_addr(text: &str, allow_port_zero: bool) -> Result<SocketAddr, String> {
    let invalid = |why: &str| format!("invalid address \"{text}\": {why}");
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 && !allow_port_zero {
            return Err(invalid("port 0 is not a server port"));
        }
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(invalid("expected host:port"));
    };
    if host.is_empty() {
        return Err(invalid("expected host:port"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port must be a number from 1 to 65535"))?;
    if port == 0 && !allow_port_zero {
        return Err(invalid("port 0 is not a server port"));
    }
    let host_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if !host_ok {
        return Err(invalid(
            "expected an IP address or a host name before the port",
        ));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| invalid(&format!("cannot resolve host: {e}")))?
        .next()
        .ok_or_else(|| invalid("the host name resolves to no address"))
}

fn parse_balance(text: &str) -> Result<Balance, String> {
    Ok(match text {
        "roundrobin" => Balance::RoundRobin,
        "static-rr" => Balance::StaticRr,
        "leastconn" => Balance::LeastConn,
        "random" => Balance::Random,
        "source" => Balance::Source,
        "uri" => Balance::Uri,
        "first" => Balance::First,
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
                    "unknown algorithm \"{text}\" (expected roundrobin, static-rr, leastconn, random, source, uri, hdr:<name>, url_param:<name> or first)"
                ));
            }
        }
    })
}

fn header_size(cx: &mut Ctx<'_>, path: &KeyPath, value: Option<&Size>, default: u64) -> usize {
    let v = cx.size(path, value).unwrap_or(default);
    if !(1024..=1024 * 1024).contains(&v) {
        cx.err(
            path,
            format!("must be between 1KiB and 1MiB, got {v} bytes"),
        );
        return default as usize;
    }
    v as usize
}

fn log_format(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    value: Option<&str>,
    default: LogFormat,
) -> LogFormat {
    match value {
        None => default,
        Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            cx.err(
                path,
                format!("unknown log format \"{other}\" (expected \"text\" or \"json\")"),
            );
            default
        }
    }
}

fn errorfiles(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    map: Option<&BTreeMap<String, String>>,
) -> ErrorFiles {
    let mut out = ErrorFiles::default();
    for (code, file) in map.into_iter().flatten() {
        let p = path.key(code);
        let status = match code.parse::<u16>() {
            Ok(c) if OWN_STATUSES.contains(&c) => {
                StatusCode::from_u16(c).expect("listed statuses are valid")
            }
            _ => {
                cx.err(&p, format!("weir does not generate status {code} itself; errorfiles apply to {OWN_STATUSES:?}"));
                continue;
            }
        };
        let full = cx.base.join(file);
        let body = match std::fs::metadata(&full) {
            Ok(m) if m.len() > MAX_ERRORFILE_SIZE => {
                cx.err(&p, format!("{} is larger than 64KiB", full.display()));
                continue;
            }
            _ => match std::fs::read(&full) {
                Ok(b) => b,
                Err(e) => {
                    cx.err(&p, format!("cannot read {}: {e}", full.display()));
                    continue;
                }
            },
        };
        let html = matches!(
            full.extension().and_then(|e| e.to_str()),
            Some("html" | "htm")
        );
        let content_type = if html {
            "text/html; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        };
        out.0.insert(
            status,
            ErrorPage {
                body: Bytes::from(body),
                content_type,
            },
        );
    }
    out
}

fn merged(defaults: &ErrorFiles, own: ErrorFiles) -> ErrorFiles {
    let mut all = defaults.0.clone();
    all.extend(own.0);
    ErrorFiles(all)
}
