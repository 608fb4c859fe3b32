//! `[plugin.<name>]`: sources, limits, configs, and a candidate version.

use super::*;

pub(super) fn build_plugins(cx: &mut Ctx<'_>, file: &File) -> Vec<PluginConfig> {
    file.plugin
        .iter()
        .map(|(name, p)| {
            let path = KeyPath::root().key("plugin").key(name);
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
            let config = p.config.clone().unwrap_or_default();
            let plugin = PluginConfig {
                name: name.clone(),
                source: source(cx, &path, p.wasm.as_deref(), p.stock.as_deref()),
                sha256: sha256(cx, &path, p.sha256.as_deref()),
                on_error,
                timeout: cx.positive(&path.key("timeout"), p.timeout.as_ref(), PLUGIN_TIMEOUT),
                memory: memory(cx, &path, p.memory.as_ref(), PLUGIN_MEMORY),
                config_json: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
                candidate: None,
            };
            let candidate = p
                .candidate
                .as_ref()
                .map(|c| Box::new(candidate(cx, &path.key("candidate"), c, &plugin)));
            PluginConfig {
                candidate,
                ..plugin
            }
        })
        .collect()
}

/// A plugin's candidate version: its own component, and what it does not say taken from
/// the plugin (config, timeout, memory, on_error; never sha256, which names one file).
fn candidate(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    c: &CandidateFile,
    plugin: &PluginConfig,
) -> Candidate {
    let mode = match c.mode.as_deref() {
        Some("shadow") => CandidateMode::Shadow,
        Some("canary") => {
            let percent = match c.percent {
                Some(p) if (0.0..=100.0).contains(&p) => p,
                Some(_) => {
                    cx.err(&path.key("percent"), "must be between 0 and 100");
                    0.0
                }
                None => {
                    cx.err(&path.key("percent"), "is required for a canary: 0–100");
                    0.0
                }
            };
            let max_failures = match c.max_failures.as_deref().map(share) {
                None => 0.01,
                Some(Some(share)) => share,
                Some(None) => {
                    cx.err(
                        &path.key("max_failures"),
                        "must be a share of calls, \"0%\" to \"100%\" (like \"1%\" or \"0.5%\")",
                    );
                    0.01
                }
            };
            let window = cx.positive(
                &path.key("window"),
                c.window.as_ref(),
                Duration::from_secs(60),
            );
            CandidateMode::Canary {
                percent,
                max_failures,
                window,
            }
        }
        Some(other) => {
            cx.err(
                &path.key("mode"),
                format!("unknown mode \"{other}\" (expected \"shadow\" or \"canary\")"),
            );
            CandidateMode::Shadow
        }
        None => {
            cx.err(&path.key("mode"), "is required: \"shadow\" or \"canary\"");
            CandidateMode::Shadow
        }
    };
    if mode == CandidateMode::Shadow {
        for (key, set) in [
            ("percent", c.percent.is_some()),
            ("max_failures", c.max_failures.is_some()),
            ("window", c.window.is_some()),
        ] {
            if set {
                cx.err(&path.key(key), "is for a canary (mode = \"canary\")");
            }
        }
    }
    let config_json = match &c.config {
        Some(config) => serde_json::to_string(config).unwrap_or_else(|_| "{}".into()),
        None => plugin.config_json.clone(),
    };
    if c.sample_values.is_some() && mode != CandidateMode::Shadow {
        cx.err(
            &path.key("sample_values"),
            "is for a shadow (mode = \"shadow\")",
        );
    }
    Candidate {
        mode,
        sample_values: c.sample_values.unwrap_or(false),
        plugin: PluginConfig {
            // Its own name: its counters and kv are apart from the plugin's, and the log
            // tells the two apart.
            name: format!("{} (candidate)", plugin.name),
            source: source(cx, path, c.wasm.as_deref(), c.stock.as_deref()),
            sha256: sha256(cx, path, c.sha256.as_deref()),
            on_error: plugin.on_error,
            timeout: cx.positive(&path.key("timeout"), c.timeout.as_ref(), plugin.timeout),
            memory: memory(cx, path, c.memory.as_ref(), plugin.memory),
            config_json,
            candidate: None,
        },
    }
}

/// `"1%"`, `"0.5%"` → 0.01, 0.005.
fn share(text: &str) -> Option<f64> {
    let n: f64 = text.trim().strip_suffix('%')?.trim().parse().ok()?;
    (0.0..=100.0).contains(&n).then_some(n / 100.0)
}

fn sha256(cx: &mut Ctx<'_>, path: &KeyPath, given: Option<&str>) -> Option<String> {
    let sha256 = given.map(str::to_ascii_lowercase);
    if let Some(h) = &sha256
        && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        cx.err(&path.key("sha256"), "must be 64 hexadecimal digits");
    }
    sha256
}

fn memory(cx: &mut Ctx<'_>, path: &KeyPath, given: Option<&Size>, default: u64) -> u64 {
    let memory = cx.size(&path.key("memory"), given).unwrap_or(default);
    if !(1 << 20..=MAX_PLUGIN_MEMORY).contains(&memory) {
        cx.err(&path.key("memory"), "must be between 1MiB and 256MiB");
    }
    memory
}

/// `wasm = "file"` (relative to the config file) or `stock = "name"`.
fn source(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    wasm: Option<&str>,
    stock: Option<&str>,
) -> PluginSource {
    match (wasm, stock) {
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
            cx.err(path, "needs `wasm = \"path\"` or `stock = \"name\"`");
            PluginSource::Stock("")
        }
    }
}
