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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalFile {
    pub maxconn: Option<i64>,
    pub threads: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsFile {
    pub timeout: Option<TimeoutsFile>,
    pub retries: Option<i64>,
    pub redispatch: Option<bool>,
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
    pub connect: Option<Dur>,
    pub client: Option<Dur>,
    pub server: Option<Dur>,
    pub http_request: Option<Dur>,
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
    pub timeout: Option<FrontendTimeoutsFile>,
    pub forwardfor: Option<bool>,
    pub max_header_size: Option<Size>,
    pub max_headers: Option<i64>,
    pub log_format: Option<String>,
    pub errorfiles: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    pub balance: Option<String>,
    #[serde(default)]
    pub servers: Vec<ServerFile>,
    pub timeout: Option<BackendTimeoutsFile>,
    pub retries: Option<i64>,
    pub redispatch: Option<bool>,
    pub errorfiles: Option<BTreeMap<String, String>>,
    pub pool_max_idle: Option<i64>,
    pub pool_idle_timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub name: String,
    pub addr: String,
    pub weight: Option<i64>,
    pub maxconn: Option<i64>,
    pub backup: Option<bool>,
}
