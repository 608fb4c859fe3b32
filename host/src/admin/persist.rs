//! `[admin] persist = true`: a server's state or weight set through the runtime API (or
//! the page's buttons) is written back into the config file, in place, with its comments,
//! order and formatting kept (toml_edit), atomically (a file beside it, synced, then
//! renamed over it). The file must stay valid: a change that would make it invalid is
//! refused, and nothing changes.

use std::io::Write;
use std::path::Path;

use toml_edit::{DocumentMut, Item, Table, Value};

use crate::config::{AdminState, Config};

/// What to write for one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    State(AdminState),
    Weight(u32),
}

/// The config text with `change` made to `server` of `backend`.
pub fn edited(text: &str, backend: &str, server: &str, change: Change) -> Result<String, String> {
    let mut doc = parse(text)?;
    let servers = doc
        .get_mut("backend")
        .and_then(|b| b.get_mut(backend))
        .and_then(|b| b.get_mut("servers"))
        .ok_or_else(|| format!("the config file has no backend.{backend}.servers"))?;
    let named = |name: Option<&str>| name == Some(server);
    let found = match servers {
        Item::Value(Value::Array(list)) => list.iter_mut().find_map(|v| match v {
            Value::InlineTable(t) if named(t.get("name").and_then(Value::as_str)) => {
                set_inline(t, change);
                Some(())
            }
            _ => None,
        }),
        Item::ArrayOfTables(list) => list
            .iter_mut()
            .find(|t| named(t.get("name").and_then(Item::as_str)))
            .map(|t| set_table(t, change)),
        _ => None,
    };
    found.ok_or_else(|| format!("the config file has no server {server} in backend.{backend}"))?;
    Ok(doc.to_string())
}

fn set_inline(t: &mut toml_edit::InlineTable, change: Change) {
    let (key, value): (&str, Value) = match change {
        Change::State(AdminState::Ready) => {
            t.remove("state");
            return;
        }
        Change::State(s) => ("state", s.name().into()),
        Change::Weight(w) => ("weight", i64::from(w).into()),
    };
    if let Some(v) = t.get_mut(key) {
        let decor = v.decor().clone();
        *v = value;
        *v.decor_mut() = decor;
        return;
    }
    // A new last key takes over the space the last value had before the closing brace.
    let suffix = t.iter_mut().last().and_then(|(_, v)| {
        let s = v.decor().suffix().cloned();
        v.decor_mut().set_suffix("");
        s
    });
    t.insert(key, value);
    if let (Some(s), Some(v)) = (suffix, t.get_mut(key)) {
        v.decor_mut().set_suffix(s);
    }
}

fn set_table(t: &mut Table, change: Change) {
    match change {
        Change::State(AdminState::Ready) => {
            t.remove("state");
        }
        Change::State(s) => {
            t.insert("state", toml_edit::value(s.name()));
        }
        Change::Weight(w) => {
            t.insert("weight", toml_edit::value(i64::from(w)));
        }
    }
}

/// Makes `change` in the file at `path`, when the file stays valid.
pub fn write_back(path: &Path, backend: &str, server: &str, change: Change) -> Result<(), String> {
    edit_file(path, |text| edited(text, backend, server, change)).map(|_| ())
}

/// What a plugin's candidate becomes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateChange {
    /// The candidate's component and the keys it sets replace the plugin's.
    Promote,
    /// The candidate goes.
    Abort,
}

/// The config text with `plugin`'s candidate promoted or removed.
pub fn candidate_edited(
    text: &str,
    plugin: &str,
    change: CandidateChange,
) -> Result<String, String> {
    let mut doc = parse(text)?;
    let table = doc
        .get_mut("plugin")
        .and_then(|p| p.get_mut(plugin))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("the config file has no plugin.{plugin}"))?;
    let candidate = table
        .remove("candidate")
        .ok_or_else(|| format!("the config file has no plugin.{plugin}.candidate"))?;
    if change == CandidateChange::Abort {
        return Ok(doc.to_string());
    }
    let candidate = candidate
        .as_table_like()
        .ok_or_else(|| format!("plugin.{plugin}.candidate is not a table"))?;
    for key in ["wasm", "stock", "sha256"] {
        table.remove(key);
    }
    for key in ["wasm", "stock", "sha256", "config", "timeout", "memory"] {
        if let Some(item) = candidate.get(key) {
            let mut value = match item {
                Item::Value(v) => v.clone(),
                Item::Table(t) => Value::InlineTable(t.clone().into_inline_table()),
                _ => return Err(format!("plugin.{plugin}.candidate.{key} is not a value")),
            };
            value.decor_mut().clear();
            table.insert(key, Item::Value(value));
        }
    }
    Ok(doc.to_string())
}

/// The config file's text as a document that keeps its comments and layout.
fn parse(text: &str) -> Result<DocumentMut, String> {
    text.parse()
        .map_err(|e| format!("the config file no longer parses: {e}"))
}

/// Edits the file at `path` with `edit`, when what it makes is a valid config, writing it
/// atomically; returns the text it had before.
pub fn edit_file(
    path: &Path,
    edit: impl FnOnce(&str) -> Result<String, String>,
) -> Result<String, String> {
    // One change at a time: each reads what the one before wrote.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let new = edit(&text)?;
    let base = path.parent().unwrap_or(Path::new("."));
    Config::from_toml(&new, base)
        .map_err(|e| format!("the change would make the file invalid: {e}"))?;
    write_atomically(path, &new)?;
    Ok(text)
}

/// Writes `text` to a file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let base = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = base.join(format!(".{name}.weir-persist"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&temp, meta.permissions())?;
        }
        std::fs::rename(&temp, path)?;
        std::fs::File::open(base)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# The app's servers.
[backend.app]
servers = [
  { name = "a", addr = "127.0.0.1:1" },   # the first
  { name = "b", addr = "127.0.0.1:2", weight = 3 },
]

[[backend.api.servers]]
name = "c"
addr = "127.0.0.1:3"
"#;

    #[test]
    fn a_change_keeps_the_files_comments_and_order() {
        let t = edited(TEXT, "app", "a", Change::State(AdminState::Maint)).unwrap();
        assert!(
            t.contains(r#"{ name = "a", addr = "127.0.0.1:1", state = "maint" },   # the first"#),
            "{t}"
        );
        assert!(t.starts_with("# The app's servers.\n"), "{t}");
        let t = edited(&t, "app", "a", Change::State(AdminState::Ready)).unwrap();
        assert!(!t.contains("maint"), "{t}");
        let t = edited(&t, "app", "b", Change::Weight(7)).unwrap();
        assert!(t.contains("weight = 7") && !t.contains("weight = 3"), "{t}");
        let t = edited(&t, "api", "c", Change::State(AdminState::Drain)).unwrap();
        assert!(t.contains("state = \"drain\""), "{t}");
        assert!(
            edited(&t, "app", "nope", Change::Weight(1))
                .unwrap_err()
                .contains("nope")
        );
        assert!(edited(&t, "none", "a", Change::Weight(1)).is_err());
    }

    const PLUGIN: &str = r#"# Routing.
[plugin.routes]
wasm = "router-v1.wasm"   # the one serving
sha256 = "aa"
timeout = "5ms"
config = { rules = [] }
candidate = { wasm = "router-v2.wasm", mode = "canary", percent = 5, config = { rules = [1] } }

[plugin.other]
stock = "router"
"#;

    #[test]
    fn a_promoted_candidate_takes_the_plugins_place_and_an_aborted_one_goes() {
        let t = candidate_edited(PLUGIN, "routes", CandidateChange::Promote).unwrap();
        let doc: toml::Table = toml::from_str(&t).unwrap();
        let routes = &doc["plugin"]["routes"];
        assert_eq!(routes["wasm"].as_str(), Some("router-v2.wasm"));
        assert!(routes.get("sha256").is_none(), "{t}");
        assert!(routes.get("candidate").is_none(), "{t}");
        assert_eq!(routes["timeout"].as_str(), Some("5ms"));
        assert_eq!(routes["config"]["rules"][0].as_integer(), Some(1));
        assert!(t.starts_with("# Routing.\n"), "{t}");
        assert!(t.contains("[plugin.other]\nstock = \"router\""), "{t}");

        let t = candidate_edited(PLUGIN, "routes", CandidateChange::Abort).unwrap();
        assert!(
            t.contains("wasm = \"router-v1.wasm\"   # the one serving"),
            "{t}"
        );
        assert!(!t.contains("candidate"), "{t}");
        assert!(candidate_edited(&t, "routes", CandidateChange::Abort).is_err());
        assert!(candidate_edited(PLUGIN, "nope", CandidateChange::Abort).is_err());
    }
}
