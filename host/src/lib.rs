//! weir: a high-availability HTTP load balancer and reverse proxy.
//!
//! The crate is both the `weir` binary and a library, so that tests run the real proxy
//! in-process: build a [`config::Config`], then [`start`] it on a tokio runtime.
//! ARCHITECTURE.md says which module is which, and what each may import.

pub mod activity;
pub mod admin;
pub mod alloc;
pub mod balance;
pub mod config;
pub mod demo;
pub mod health;
pub mod http1;
pub mod import;
pub mod logging;
pub mod net;
pub mod notify;
pub mod plugin;
pub mod proxy;
pub mod proxy_protocol;
pub mod scaffold;
pub mod server;
pub mod state;
pub mod stats;
pub mod stock;
pub mod tls;
pub mod upstream;
pub mod util;

pub use config::Config;
pub use proxy::log::AccessLog;
pub use server::{ReloadError, Running, StartError};

/// Binds every frontend and the admin listener (`[admin]`) and starts serving on the
/// current tokio runtime.
pub async fn start(config: &Config, log: AccessLog) -> Result<Running, StartError> {
    server::start(config, log, admin::serve).await
}

/// Everything `weir check` proves beyond parsing: every plugin loads, checks out and
/// accepts its config. Nothing is bound.
pub async fn check(config: &Config) -> Result<(), String> {
    proxy::Proxy::new(config, AccessLog::disabled(), None)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// ARCHITECTURE.md's table of rooms is the rule for what each top-level module may
/// import; these tests hold the code to it, and the rule to having no circle.
#[cfg(test)]
mod architecture {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    type Graph = BTreeMap<String, BTreeSet<String>>;

    /// Every source file of host/src but the crate root's: its path there, and its text.
    fn sources() -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let (mut files, mut found) = (vec![src.clone()], Vec::new());
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.extension().is_some_and(|e| e == "rs")
                && relative != "lib.rs"
                && relative != "main.rs"
            {
                found.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
        found
    }

    /// The room (top-level module) a file of host/src belongs to.
    fn room_of(relative: &str) -> &str {
        relative.split(['/', '.']).next().unwrap()
    }

    /// The lines of `text` without their comments.
    fn code_lines(text: &str) -> impl Iterator<Item = &str> {
        text.lines().map(|line| line.split("//").next().unwrap())
    }

    /// The top-level modules each module of host/src names through `crate::`.
    fn imports() -> Graph {
        let mut graph = Graph::new();
        for (relative, text) in sources() {
            let room = room_of(&relative).to_owned();
            let named = graph.entry(room.clone()).or_default();
            for code in code_lines(&text) {
                for (at, _) in code.match_indices("crate::") {
                    for target in paths_after(&code[at + "crate::".len()..]) {
                        if target != room {
                            named.insert(target);
                        }
                    }
                }
            }
        }
        graph
    }

    /// The first segment of the path(s) at the start of `rest`: `a::b` gives `a`,
    /// `{a, b::c}` gives `a` and `b`.
    fn paths_after(rest: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let Some(group) = rest.strip_prefix('{') else {
            return vec![ident(rest)];
        };
        let mut depth = 0;
        let mut names = vec![ident(group)];
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => names.push(ident(&group[i + 1..])),
                _ => {}
            }
        }
        names.retain(|n| !n.is_empty());
        names
    }

    /// The rooms table of ARCHITECTURE.md: each room and the rooms it may import.
    fn allowed() -> Graph {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ARCHITECTURE.md");
        let doc = std::fs::read_to_string(doc).unwrap();
        let mut graph = Graph::new();
        for row in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let room = cells[1].trim_matches('`').trim_end_matches('/').to_owned();
            let may = cells[cells.len() - 2]
                .split(',')
                .map(|s| s.trim().trim_matches('`').trim_end_matches('/').to_owned())
                .filter(|s| !s.is_empty() && s != "—")
                .collect();
            graph.insert(room, may);
        }
        graph
    }

    #[test]
    fn every_module_imports_only_what_architecture_md_allows() {
        let allowed = allowed();
        let mut wrong = Vec::new();
        for (room, targets) in imports() {
            let Some(may) = allowed.get(&room) else {
                wrong.push(format!("{room} is not in ARCHITECTURE.md's table of rooms"));
                continue;
            };
            for target in targets.difference(may) {
                wrong.push(format!("{room} imports {target}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "not allowed by ARCHITECTURE.md: {wrong:#?}"
        );
    }

    #[test]
    fn the_rooms_import_each_other_in_no_circle() {
        let allowed = allowed();
        // Depth-first search; a room met again while still on the path closes a circle.
        fn visit(room: &str, graph: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) {
            if let Some(at) = path.iter().position(|r| r == room) {
                panic!("import circle: {} -> {room}", path[at..].join(" -> "));
            }
            if !done.insert(room.to_owned()) {
                return;
            }
            path.push(room.to_owned());
            for next in graph.get(room).into_iter().flatten() {
                visit(next, graph, path, done);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        for room in allowed.keys() {
            visit(room, &allowed, &mut Vec::new(), &mut done);
        }
        assert!(allowed.len() > 10, "the table was read: {allowed:?}");
    }

    #[test]
    fn the_wit_bindings_types_stay_inside_plugin() {
        let mut named = Vec::new();
        for (relative, text) in sources() {
            if room_of(&relative) == "plugin" {
                continue;
            }
            for code in code_lines(&text) {
                // rustls' `pki_types` is not the bindings' `types`.
                let wit = code.matches("types::").count() - code.matches("pki_types::").count();
                if wit > 0 || code.contains("plugin::types") {
                    named.push(format!("{relative}: {}", code.trim()));
                }
            }
        }
        assert!(
            named.is_empty(),
            "WIT types named outside plugin/: {named:#?}"
        );
    }

    #[test]
    fn import_paths_are_read_whole_and_in_groups() {
        assert_eq!(paths_after("upstream::BackendRt;"), ["upstream"]);
        assert_eq!(
            paths_after("{proxy_protocol, tls::ServerTls};"),
            ["proxy_protocol", "tls"]
        );
        assert_eq!(paths_after("{a::{b, c}, d}"), ["a", "d"]);
    }
}
