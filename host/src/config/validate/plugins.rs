//! `[plugin.<name>]`: sources, limits, configs.

use super::*;

pub(super) fn build_plugins(cx: &mut Ctx<'_>, file: &File) -> Vec<PluginConfig> {
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
                .unwrap_or(PLUGIN_MEMORY);
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
                timeout: cx.positive(&path.key("timeout"), p.timeout.as_ref(), PLUGIN_TIMEOUT),
                memory,
                config_json: serde_json::to_string(&config).unwrap_or_else(|_| "{}".into()),
            }
        })
        .collect()
}
