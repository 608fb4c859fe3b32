//! `weir plugin check`: a component loaded and configured as weir would load it, and what
//! it declares, in words.

use std::sync::Arc;

use super::{LoadError, Plugin, engine};
use crate::config::{FailPolicy, PluginConfig, PluginSource};

/// What a component is and declares, once loaded and configured.
#[derive(Debug)]
pub struct Inspection {
    /// Its own name and version (`describe`).
    pub name: String,
    pub version: String,
    /// The `weir:plugin` interfaces it imports, with their version.
    pub imports: Vec<String>,
    /// What it exports: the world's functions.
    pub exports: Vec<String>,
    /// The hooks weir calls: `on-request`, `on-response`, `on-health-check`, `on-connect`.
    pub hooks: Vec<&'static str>,
    /// What its hooks read: header names (None: all) and fields.
    pub request_headers: Option<Vec<String>>,
    pub request_fields: String,
    pub response_headers: Option<Vec<String>>,
    pub response_fields: String,
    pub bytes: usize,
    pub sha256: String,
}

/// Loads `bytes` as weir loads a plugin named `name` (default limits, `config_json` handed
/// to `configure`), and says what it declares. Err: the first problem, as weir would
/// refuse the plugin at load.
pub async fn inspect(name: &str, bytes: &[u8], config_json: &str) -> Result<Inspection, LoadError> {
    let cfg = PluginConfig {
        name: name.to_owned(),
        source: PluginSource::File(name.into()),
        sha256: None,
        on_error: FailPolicy::Closed,
        timeout: crate::config::PLUGIN_TIMEOUT,
        memory: crate::config::PLUGIN_MEMORY,
        config_json: config_json.to_owned(),
        candidate: None,
    };
    let plugin = Plugin::from_bytes(&cfg, bytes, Arc::from([]), false).await?;
    let component = engine::compile(bytes, &plugin.sha256).await?;
    let ty = component.component_type();
    let engine = engine::engine();
    let mut imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("weir:plugin/"))
        .collect();
    imports.sort();
    let exports = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let (own_name, version) = plugin.describe();
    let mut hooks = Vec::new();
    for (hook, name) in [
        (super::Hook::Request, "on-request"),
        (super::Hook::Response, "on-response"),
        (super::Hook::HealthCheck, "on-health-check"),
    ] {
        if plugin.has(hook) {
            hooks.push(name);
        }
    }
    if plugin.connects() {
        hooks.push("on-connect");
    }
    let names = |list: &Option<Vec<http::HeaderName>>| {
        list.as_ref()
            .map(|l| l.iter().map(|h| h.as_str().to_owned()).collect())
    };
    Ok(Inspection {
        name: own_name.to_owned(),
        version: version.to_owned(),
        imports,
        exports,
        hooks,
        request_headers: names(&plugin.request_headers),
        request_fields: flag_names(format!("{:?}", plugin.request_fields)),
        response_headers: names(&plugin.response_headers),
        response_fields: flag_names(format!("{:?}", plugin.response_fields)),
        bytes: bytes.len(),
        sha256: plugin.sha256.clone(),
    })
}

/// `RequestFields(PATH | CLIENT_IP)` (the flags' Debug form) → `path, client-ip`.
fn flag_names(debug: String) -> String {
    let inner = debug
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .map_or(debug.as_str(), |(inner, _)| inner);
    let names: Vec<String> = inner
        .split('|')
        .map(|n| n.trim().to_ascii_lowercase().replace('_', "-"))
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers = |list: &Option<Vec<String>>| match list {
            None => "all".to_owned(),
            Some(l) if l.is_empty() => "none".to_owned(),
            Some(l) => l.join(", "),
        };
        writeln!(f, "plugin {} {}", self.name, self.version)?;
        writeln!(f, "component: {} bytes, sha256 {}", self.bytes, self.sha256)?;
        writeln!(f, "imports: {}", self.imports.join(", "))?;
        writeln!(f, "exports: {}", self.exports.join(", "))?;
        writeln!(f, "hooks: {}", self.hooks.join(", "))?;
        if self.hooks.contains(&"on-request") {
            writeln!(
                f,
                "on-request reads headers: {}",
                headers(&self.request_headers)
            )?;
            writeln!(f, "on-request reads fields: {}", self.request_fields)?;
        }
        if self.hooks.contains(&"on-response") {
            writeln!(
                f,
                "on-response reads headers: {}",
                headers(&self.response_headers)
            )?;
            writeln!(f, "on-response reads fields: {}", self.response_fields)?;
        }
        Ok(())
    }
}
