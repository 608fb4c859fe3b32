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
    BackendFile, CandidateFile, CertFile, ExpectStatusFile, File, FrontendFile, HealthFile,
    OneOrMany, ServerFile, TlsFile,
};
use super::locate::{KeyPath, Locator};
use super::units::{Dur, Size, parse_duration, parse_size};
use super::{
    Admin, AdminState, Backend, Balance, Candidate, CandidateMode, CheckKind, Config, ConfigError,
    ConfigErrors, ErrorFiles, ErrorPage, FailPolicy, Frontend, Global, HealthCheck, HttpCheck,
    LogFormat, Mode, Observe, OnError, PluginConfig, PluginSource, RetryOn, Server, StatusMatch,
};

/// Statuses that weir answers by itself and that `errorfiles` may therefore replace.
const OWN_STATUSES: [u16; 5] = [400, 501, 502, 503, 504];
const MAX_WEIGHT: i64 = 256;
const MAX_ERRORFILE_SIZE: u64 = 64 * 1024;

mod backend;
mod frontend;
mod plugins;
mod state;

use backend::{build_backend, mode, retry_on};
pub(super) use frontend::custom_log_format;
use frontend::{build_frontend, header_size, log_format};
use plugins::build_plugins;
use state::build_store;

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

    /// A duration (zero allowed), or `default` when not written.
    fn duration(&mut self, path: &KeyPath, value: Option<&Dur>, default: Duration) -> Duration {
        let Some(Dur(text)) = value else {
            return default;
        };
        parse_duration(text).unwrap_or_else(|msg| {
            self.err(path, msg);
            default
        })
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
    /// `timeout.tunnel` is written in `[defaults]`.
    tunnel_written: bool,
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
        access_log: state::access_log(cx, &g.key("access_log"), file.global.access_log.as_ref()),
        timeout_shutdown: cx.positive(
            &root.key("defaults").key("timeout").key("shutdown"),
            file.defaults
                .timeout
                .as_ref()
                .and_then(|t| t.shutdown.as_ref()),
            Duration::from_secs(10),
        ),
        grace: cx.duration(&g.key("grace"), file.global.grace.as_ref(), Duration::ZERO),
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

    // A tcp frontend relays to tcp backends, an http one speaks HTTP to http ones.
    let backends: Vec<Backend> = backends;
    for (i, f) in frontends.iter().enumerate() {
        if let Some(b) = backends.iter().find(|b| b.name == f.default_backend)
            && b.mode != f.mode
        {
            cx.err(
                &root.key("frontend").index(i).key("default_backend"),
                format!(
                    "backend \"{}\" is mode {}, but this frontend is mode {}: a {} frontend needs {} backends",
                    b.name,
                    b.mode.name(),
                    f.mode.name(),
                    f.mode.name(),
                    f.mode.name()
                ),
            );
        }
    }
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
        let maxconn = cx.int(&path.key("maxconn"), a.maxconn, 16, 1, 10_000) as usize;
        bind.map(|bind| Admin {
            bind,
            maxconn,
            persist: a.persist.unwrap_or(false),
            stats_admin: a.stats_admin.unwrap_or(false),
            refresh,
            auth: a
                .auth
                .as_ref()
                .map(|x| (x.user.clone(), x.password.clone())),
        })
    });
    let store = build_store(cx, &file);
    Config {
        global,
        frontends,
        backends,
        plugins,
        admin,
        store,
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
        tunnel_written: t.is_some_and(|t| t.tunnel.is_some()),
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

/// Most memory a plugin instance may be given.
const MAX_PLUGIN_MEMORY: u64 = 256 << 20;
/// A plugin's `memory` and `timeout` when its table does not say.
pub const PLUGIN_MEMORY: u64 = 16 << 20;
pub const PLUGIN_TIMEOUT: Duration = Duration::from_millis(10);

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
