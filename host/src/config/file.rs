//! The config file exactly as written: serde structs that reject unknown keys.
//! `validate` turns these into the typed `Config`; nothing else reads them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::units::{Dur, Size};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub global: GlobalFile,
    #[serde(default)]
    pub defaults: DefaultsFile,
    #[serde(default)]
    pub frontend: Vec<FrontendFile>,
    #[serde(default)]
    pub backend: BTreeMap<String, BackendFile>,
    #[serde(default)]
    pub plugin: BTreeMap<String, PluginFile>,
    pub admin: Option<AdminFile>,
    #[serde(default)]
    pub state: StateFile,
}

/// `[state]`: where plugins' counters and kv live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `"memory"`, or a table with a `redis` URL ([`RedisFile`]); read by validation so
    /// that either form's errors name `state.store`.
    pub store: Option<toml::Value>,
}

/// `store = { redis = "redis://...", ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub redis: String,
    pub prefix: Option<String>,
    pub timeout: Option<Dur>,
    pub sync: Option<Dur>,
    pub on_error: Option<String>,
    pub consistency: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub bind: String,
    pub auth: Option<AuthFile>,
    pub stats_admin: Option<bool>,
    pub refresh: Option<Dur>,
    pub maxconn: Option<i64>,
    pub persist: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub user: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    pub wasm: Option<String>,
    pub stock: Option<String>,
    pub sha256: Option<String>,
    pub on_error: Option<String>,
    pub timeout: Option<Dur>,
    pub memory: Option<Size>,
    pub config: Option<toml::Table>,
    pub candidate: Option<CandidateFile>,
}

/// `candidate = { wasm = "...", mode = "shadow", ... }` in a plugin's table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateFile {
    pub wasm: Option<String>,
    pub stock: Option<String>,
    pub mode: Option<String>,
    /// For `shadow`: the sample of disagreements shows header values.
    pub sample_values: Option<bool>,
    /// For `canary`: the share of clients it decides for, 0–100.
    pub percent: Option<f64>,
    /// For `canary`: the share of its calls that may fail (`"1%"`) within `window`.
    pub max_failures: Option<String>,
    pub window: Option<Dur>,
    pub sha256: Option<String>,
    pub timeout: Option<Dur>,
    pub memory: Option<Size>,
    pub config: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalFile {
    pub maxconn: Option<i64>,
    pub threads: Option<i64>,
    /// `"stderr"`, `"off"`, a file path, `"syslog"`, or `{ syslog = ..., facility, format }`.
    pub access_log: Option<toml::Value>,
    pub grace: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsFile {
    pub timeout: Option<TimeoutsFile>,
    pub retries: Option<i64>,
    pub redispatch: Option<bool>,
    pub retry_on: Option<Vec<String>>,
    pub forwardfor: Option<bool>,
    pub max_header_size: Option<Size>,
    pub max_headers: Option<i64>,
    pub log_format: Option<String>,
    pub errorfiles: Option<BTreeMap<String, String>>,
    pub pool_max_idle: Option<i64>,
    pub pool_idle_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub shutdown: Option<Dur>,
    pub connect: Option<Dur>,
    pub client: Option<Dur>,
    pub server: Option<Dur>,
    pub http_request: Option<Dur>,
    pub queue: Option<Dur>,
    pub tunnel: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendTimeoutsFile {
    pub client: Option<Dur>,
    pub http_request: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTimeoutsFile {
    pub connect: Option<Dur>,
    pub server: Option<Dur>,
    pub queue: Option<Dur>,
    pub tunnel: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendFile {
    pub name: String,
    pub bind: OneOrMany,
    pub default_backend: Option<String>,
    #[serde(default)]
    pub plugins: Vec<String>,
    pub timeout: Option<FrontendTimeoutsFile>,
    pub forwardfor: Option<bool>,
    pub max_header_size: Option<Size>,
    pub max_headers: Option<i64>,
    pub log_format: Option<String>,
    pub errorfiles: Option<BTreeMap<String, String>>,
    pub tls: Option<TlsFile>,
    pub redirect_https: Option<bool>,
    pub accept_proxy: Option<bool>,
    /// "http" (the default) or "tcp".
    pub mode: Option<String>,
    pub tls_passthrough: Option<bool>,
}

/// `tls = { cert, key }`, or a list of them chosen by SNI (the first is the default).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TlsFile {
    One(CertFile),
    Many(Vec<CertFile>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: String,
    /// Without it, the key is read from `cert` (HAProxy's combined PEM: chain and key).
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// "http" (the default) or "tcp".
    pub mode: Option<String>,
    pub balance: Option<String>,
    #[serde(default)]
    pub servers: Vec<ServerFile>,
    pub timeout: Option<BackendTimeoutsFile>,
    pub retries: Option<i64>,
    pub redispatch: Option<bool>,
    pub retry_on: Option<Vec<String>>,
    pub health: Option<HealthFile>,
    pub allbackups: Option<bool>,
    pub maxqueue: Option<i64>,
    pub slowstart: Option<Dur>,
    pub errorfiles: Option<BTreeMap<String, String>>,
    pub pool_max_idle: Option<i64>,
    pub pool_idle_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub name: String,
    pub addr: String,
    pub state: Option<String>,
    pub weight: Option<i64>,
    pub maxconn: Option<i64>,
    pub backup: Option<bool>,
    pub slowstart: Option<Dur>,
    /// Keys here override the backend's `health` for this server.
    pub health: Option<HealthFile>,
    pub send_proxy: Option<String>,
    pub tls: Option<bool>,
    pub verify: Option<bool>,
    pub ca: Option<String>,
    pub sni: Option<String>,
    pub proto: Option<String>,
}

/// A health check as written; every key optional so a server can override a few.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub expect_status: Option<ExpectStatusFile>,
    pub expect_body: Option<String>,
    pub interval: Option<Dur>,
    pub fastinter: Option<Dur>,
    pub downinter: Option<Dur>,
    pub timeout: Option<Dur>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub observe: Option<String>,
    pub error_limit: Option<i64>,
    pub on_error: Option<String>,
    /// A plugin whose `on-health-check` judges the response.
    pub plugin: Option<String>,
    /// A TCP check's exchange: what to send once connected, and what the reply must
    /// contain.
    pub send: Option<String>,
    pub expect: Option<String>,
}

impl HealthFile {
    /// These keys, falling back to `base` for the ones not written here.
    pub fn over(&self, base: &HealthFile) -> HealthFile {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            a.clone().or_else(|| b.clone())
        }
        HealthFile {
            method: pick(&self.method, &base.method),
            path: pick(&self.path, &base.path),
            host: pick(&self.host, &base.host),
            headers: pick(&self.headers, &base.headers),
            expect_status: pick(&self.expect_status, &base.expect_status),
            expect_body: pick(&self.expect_body, &base.expect_body),
            interval: pick(&self.interval, &base.interval),
            fastinter: pick(&self.fastinter, &base.fastinter),
            downinter: pick(&self.downinter, &base.downinter),
            timeout: pick(&self.timeout, &base.timeout),
            rise: pick(&self.rise, &base.rise),
            fall: pick(&self.fall, &base.fall),
            observe: pick(&self.observe, &base.observe),
            error_limit: pick(&self.error_limit, &base.error_limit),
            on_error: pick(&self.on_error, &base.on_error),
            plugin: pick(&self.plugin, &base.plugin),
            send: pick(&self.send, &base.send),
            expect: pick(&self.expect, &base.expect),
        }
    }
}

/// `200`, `[200, 204]` or `"2xx"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ExpectStatusFile {
    Code(i64),
    Codes(Vec<i64>),
    Class(String),
}
