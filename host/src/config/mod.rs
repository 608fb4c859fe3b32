//! Configuration: the TOML file (`file`), parsed once and validated (`validate`) into the
//! typed [`Config`] that the rest of weir uses. Every error names its key path and line.

mod file;
mod locate;
mod logging;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

pub use locate::KeyPath;
pub use logging::*;
pub use validate::{PLUGIN_MEMORY, PLUGIN_TIMEOUT};

/// A validated configuration. Cheap to share; built once per load or reload.
#[derive(Debug, Clone)]
pub struct Config {
    pub global: Global,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// Every `[plugin.<name>]` section, by name.
    pub plugins: Vec<PluginConfig>,
    /// The `[admin]` listener, if configured.
    pub admin: Option<Admin>,
    /// `[state] store`: where plugins' counters and kv live.
    pub store: Store,
    /// The file this was read from, if any; relative paths in it were resolved against its folder.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Global {
    /// Concurrent client connections for the whole process; more wait in the kernel's backlog.
    pub maxconn: usize,
    /// Worker threads; 1 runs a single-threaded runtime, 0 means one per core.
    pub threads: usize,
    /// Where access log lines go.
    pub access_log: AccessLogTarget,
    /// How long requests in flight may take to finish once weir is told to stop
    /// (`[defaults] timeout.shutdown`).
    pub timeout_shutdown: Duration,
    /// How long weir goes on accepting once told to stop, `/healthz` answering 503
    /// meanwhile, so that a virtual address can move away first (HAProxy's `grace`).
    pub grace: Duration,
}

#[derive(Debug, Clone)]
pub struct Frontend {
    pub name: String,
    pub binds: Vec<SocketAddr>,
    pub default_backend: String,
    /// The plugin chain, in order: names of `[plugin.<name>]` sections.
    pub plugins: Vec<String>,
    /// Idle time allowed on the client side while weir is not waiting for a server.
    pub timeout_client: Duration,
    /// Time for a complete request head to arrive, also the keep-alive idle limit.
    pub timeout_http_request: Duration,
    pub forwardfor: bool,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub log_format: LogFormat,
    pub errorfiles: ErrorFiles,
    /// TLS termination: the certificates, in config order (the first is the default).
    pub tls: Option<Vec<Arc<rustls::sign::CertifiedKey>>>,
    /// Answer plain-http requests with a 301 to the same URL over https.
    pub redirect_https: bool,
    /// Connections start with a PROXY protocol header (v1 or v2) that gives the client's
    /// address; one without is closed.
    pub accept_proxy: bool,
    pub mode: Mode,
    /// tcp: read the TLS ClientHello (its SNI and ALPN) without decrypting, and relay the
    /// bytes untouched.
    pub tls_passthrough: bool,
}

/// What a frontend or backend speaks: HTTP, or bytes relayed both ways (layer 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Http,
    Tcp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub mode: Mode,
    /// tcp: `timeout.tunnel` when written (in the backend or `[defaults]`), which then
    /// bounds a relayed connection's idle time instead of the client and server timeouts.
    pub tunnel_written: bool,
    pub balance: Balance,
    pub servers: Vec<Server>,
    pub timeout_connect: Duration,
    /// Time for the server to send its response head, and the longest silence inside its body.
    pub timeout_server: Duration,
    /// Idle time allowed on an upgraded (WebSocket) connection.
    pub timeout_tunnel: Duration,
    /// How long a request may wait for a free server slot when every server is at its maxconn.
    pub timeout_queue: Duration,
    pub retries: u32,
    pub redispatch: bool,
    pub retry_on: RetryOn,
    /// With no usable primary server, spread over every backup instead of the first one.
    pub allbackups: bool,
    /// Most requests waiting in the queue; more get 503 at once. None: no limit.
    pub maxqueue: Option<usize>,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    pub errorfiles: ErrorFiles,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    /// The operator's say over it at start (`state`); a reload that leaves it as it was
    /// keeps what was set at run time.
    pub state: AdminState,
    /// 0 to 256; a server of weight 0 gets no new traffic from the balancer.
    pub weight: u32,
    pub maxconn: Option<u32>,
    pub backup: bool,
    /// A server coming back UP ramps its weight linearly over this time.
    pub slowstart: Option<Duration>,
    /// Active health check; None when the backend and server configure none.
    pub health: Option<HealthCheck>,
    /// A PROXY protocol header sent first on every connection to the server.
    pub send_proxy: Option<crate::proxy_protocol::Version>,
    /// TLS to the server.
    pub tls: Option<crate::tls::ServerTls>,
    /// HTTP/2 to the server (prior knowledge, or ALPN over TLS) instead of HTTP/1.1.
    pub h2: bool,
}

/// An operator's say over a server, beside what health checks decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    /// Takes traffic when healthy.
    #[default]
    Ready,
    /// Takes no new traffic; requests in flight finish. Checks go on.
    Drain,
    /// Out of service; checks stop.
    Maint,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [AdminState::Ready, AdminState::Drain, AdminState::Maint];

    /// `"ready"`, `"drain"`, `"maint"`: as the config, the API and the page write it.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
        }
    }

    pub fn from_name(name: &str) -> Option<AdminState> {
        Some(match name {
            "ready" => AdminState::Ready,
            "drain" => AdminState::Drain,
            "maint" => AdminState::Maint,
            _ => return None,
        })
    }
}

/// The `[admin]` section: one listener for the runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub bind: SocketAddr,
    /// Basic auth required on every admin route: user and password.
    pub auth: Option<(String, String)>,
    /// Ready / drain / maint buttons on the statistics page.
    pub stats_admin: bool,
    /// How often the statistics page reloads itself.
    pub refresh: Duration,
    /// Connections the admin listener serves at once; more wait in the kernel's backlog.
    pub maxconn: usize,
    /// Server state and weight set at run time are written back into the config file.
    pub persist: bool,
}

/// Where plugins' counters and kv live (`[state] store`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Store {
    /// In this process only: the default, for a single node.
    #[default]
    Memory,
    /// Shared with the other nodes through Redis.
    Redis(RedisStore),
}

/// `store = { redis = "redis://...", ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStore {
    /// The server's URL (`redis://[user:password@]host[:port][/db]`).
    pub url: String,
    /// Put before every key weir writes (then the plugin's name).
    pub prefix: String,
    /// The longest a request waits on Redis, and the longest a sync may take.
    pub timeout: Duration,
    /// How often counts are pushed to Redis and totals read back.
    pub sync: Duration,
    pub on_error: StoreOnError,
    pub consistency: Consistency,
}

/// What calls that need the shared store do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOnError {
    /// Go on with this node's own counts and kv.
    Local,
    /// Refuse the request (503).
    Deny,
}

/// How closely nodes agree on a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Counted locally; deltas pushed and totals read back every `sync`.
    Sync,
    /// One atomic script in Redis per count.
    Exact,
}

/// A `[plugin.<name>]` section: where the component is and how it is confined.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub name: String,
    /// Where the component comes from.
    pub source: PluginSource,
    /// When set, the file must have this SHA-256 (lower-case hex).
    pub sha256: Option<String>,
    pub on_error: FailPolicy,
    /// CPU deadline per hook call.
    pub timeout: Duration,
    /// Linear memory cap per instance, in bytes.
    pub memory: u64,
    /// The `config` table, as the JSON text handed to the plugin's `configure`.
    pub config_json: String,
    /// A candidate version run beside it (`candidate = {...}`).
    pub candidate: Option<Box<Candidate>>,
}

/// A plugin's candidate version: another component (and maybe config), run as `mode` says.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub mode: CandidateMode,
    /// A shadow's sample of disagreements shows header values (`sample_values = true`).
    pub sample_values: bool,
    /// The candidate as a plugin of its own, named "<plugin> (candidate)".
    pub plugin: PluginConfig,
}

/// How a candidate runs beside the plugin's current version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CandidateMode {
    /// On the same inputs, after the current version decided, off the request's path: its
    /// decision compared with the current one's and thrown away.
    Shadow,
    /// It decides for `percent` of clients (the same client always on the same side), and
    /// is taken out by itself when more than `max_failures` (a share, 0–1) of its calls
    /// fail within `window`.
    Canary {
        percent: f64,
        max_failures: f64,
        window: Duration,
    },
}

impl CandidateMode {
    pub fn name(self) -> &'static str {
        match self {
            CandidateMode::Shadow => "shadow",
            CandidateMode::Canary { .. } => "canary",
        }
    }
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A file (`wasm = "path"`, relative to the config file).
    File(PathBuf),
    /// A stock plugin embedded in the weir binary (`stock = "name"`).
    Stock(&'static str),
}

/// What a plugin that traps, overruns its deadline or returns invalid output costs the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// A generic 503; the plugin is named in the log, never in the body.
    Closed,
    /// The request goes on as if the plugin were absent.
    Open,
}

/// When a request is tried again on another attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection to the server could not be opened (always safe: nothing was sent).
    pub conn_failure: bool,
    /// The server closed the connection without a response.
    pub empty_response: bool,
    /// The server did not answer within timeout.server.
    pub response_timeout: bool,
    /// The server answered with one of these statuses.
    pub statuses: Vec<u16>,
}

impl RetryOn {
    /// Any condition that is only known after the request was sent.
    pub fn after_send(&self) -> bool {
        self.empty_response || self.response_timeout || !self.statuses.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    /// Interval while a state change is in progress (UP going down, DOWN going up).
    pub fastinter: Duration,
    /// Interval while DOWN.
    pub downinter: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Passive observation of live traffic.
    pub observe: Option<Observe>,
    pub error_limit: u32,
    pub on_error: OnError,
}

#[derive(Debug, Clone)]
pub enum CheckKind {
    /// A TCP connect, and optionally an exchange: `send` written once connected, `expect`
    /// looked for in what comes back (HAProxy's `tcp-check send` / `expect string`).
    Tcp {
        send: Option<Vec<u8>>,
        expect: Option<String>,
    },
    Http(HttpCheck),
}

#[derive(Debug, Clone)]
pub struct HttpCheck {
    pub method: Method,
    pub path: String,
    /// Host header; the server's address when None.
    pub host: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub expect_status: StatusMatch,
    /// A substring the response body must contain (within its first 16 KiB).
    pub expect_body: Option<String>,
    /// A plugin whose `on-health-check` judges the response instead of the expectations.
    pub plugin: Option<String>,
}

/// Accepted statuses as inclusive ranges: a code is `(c, c)`, a class `2xx` is `(200, 299)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatch(pub Vec<(u16, u16)>);

impl StatusMatch {
    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observe {
    /// Connection failures count as errors.
    Layer4,
    /// Connection failures, 5xx responses, bad or missing responses and timeouts count.
    Layer7,
}

/// What `error_limit` consecutive observed errors do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Count as one failed check.
    FailCheck,
    /// Check at `fastinter` until the checks decide.
    FastInter,
    /// Mark the server DOWN at once; checks bring it back.
    MarkDown,
}

/// How a backend chooses among its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    StaticRr,
    LeastConn,
    Random,
    Source,
    Uri,
    Hdr(HeaderName),
    UrlParam(String),
    First,
    /// tcp: a hash of the TLS ClientHello's server name.
    Sni,
}

/// Replacement bodies for the responses weir generates itself, by status.
#[derive(Debug, Clone, Default)]
pub struct ErrorFiles(pub BTreeMap<StatusCode, ErrorPage>);

#[derive(Debug, Clone)]
pub struct ErrorPage {
    pub body: Bytes,
    pub content_type: &'static str,
}

impl ErrorFiles {
    pub fn get(&self, status: StatusCode) -> Option<&ErrorPage> {
        self.0.get(&status)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Self::from_toml(&text, base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// [`Config::from_file`] for a reload, on a thread of tokio's blocking pool: reading
    /// the file and those it names (error pages) may wait on a slow disk, and resolving a
    /// server's host name on a DNS server, while the runtime's threads (with
    /// `threads = 1`, one) serve every connection.
    pub async fn reread(path: &Path) -> Result<Config, ConfigErrors> {
        let path = path.to_path_buf();
        crate::util::off_runtime(move || Self::from_file(&path)).await
    }

    /// Validates config text; relative paths in it are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
        validate::load(text, base_dir)
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// One problem in a config file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Every problem found in one pass over a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
