//! `weir plugin new`: a plugin project that builds as it is, with the hooks asked for. It
//! holds a crate (its `Cargo.toml` depends on the SDK of a weir checkout, and its
//! `Cargo.lock` pins the versions weir was built and tested with), a `src/lib.rs` with one
//! small working example per hook and a unit test for each against the SDK's fake host, a
//! `weir.toml` that loads the built component, and a README with the commands that matter.

use std::path::{Path, PathBuf};

/// The hooks a plugin project can start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Request,
    Response,
    Health,
    Connect,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::Request, Hook::Response, Hook::Health, Hook::Connect];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Request => "request",
            Hook::Response => "response",
            Hook::Health => "health",
            Hook::Connect => "connect",
        }
    }

    /// `request,response` and the like; each name once, in any order.
    pub fn parse_list(text: &str) -> Result<Vec<Hook>, String> {
        let mut hooks = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let hook = Hook::ALL
                .into_iter()
                .find(|h| h.name() == word)
                .ok_or_else(|| {
                    format!("no hook {word:?}: the hooks are request, response, health, connect")
                })?;
            if !hooks.contains(&hook) {
                hooks.push(hook);
            }
        }
        if hooks.is_empty() {
            return Err("no hook named: the hooks are request, response, health, connect".into());
        }
        Ok(hooks)
    }
}

/// What to write.
pub struct Project<'a> {
    /// The crate's name: lower-case letters, digits and `-`, starting with a letter.
    pub name: &'a str,
    pub hooks: &'a [Hook],
    /// The `weir-sdk` crate's directory, as the project's `Cargo.toml` will name it.
    pub sdk: &'a Path,
    /// The `rust-version` the SDK needs, for the README.
    pub rust_version: &'a str,
}

/// The Cargo.lock of the weir this binary was built from: the project builds with the
/// versions the SDK was tested with (cargo drops what the project does not use).
const LOCK: &str = include_str!("../../Cargo.lock");

/// Checks a project name: what cargo takes as a package name and what a plugin's
/// `[plugin.NAME]` table reads well with.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !first_ok || !rest_ok || name.ends_with('-') || name.len() > 64 {
        return Err(format!(
            "{name:?} is not a plugin name: lower-case letters, digits and '-', starting \
             with a letter (at most 64)"
        ));
    }
    Ok(())
}

/// The `weir-sdk` crate to depend on, as an absolute path: `given`, else the SDK of the
/// weir checkout this binary was built from.
pub fn find_sdk(given: Option<&Path>) -> Result<PathBuf, String> {
    let (path, whose) = match given {
        Some(path) => (path.to_path_buf(), "--sdk"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk"),
            "the SDK of the weir checkout this binary was built from",
        ),
    };
    let path = path
        .canonicalize()
        .map_err(|e| format!("{whose} ({}): {e}; give --sdk PATH", path.display()))?;
    let manifest = sdk_manifest(&path)?;
    let name = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str());
    if name != Some("weir-sdk") {
        return Err(format!(
            "{whose} ({}) is not the weir-sdk crate",
            path.display()
        ));
    }
    Ok(path)
}

/// The SDK's `rust-version`: the oldest Rust a plugin project builds with.
pub fn rust_version(sdk: &Path) -> Result<String, String> {
    sdk_manifest(sdk)?
        .get("package")
        .and_then(|p| p.get("rust-version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "{}/Cargo.toml has no rust-version of its own",
                sdk.display()
            )
        })
}

fn sdk_manifest(sdk: &Path) -> Result<toml::Table, String> {
    let file = sdk.join("Cargo.toml");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Writes the project into `dir`, which must not exist yet; returns the files written.
pub fn write(project: &Project<'_>, dir: &Path) -> Result<Vec<PathBuf>, String> {
    check_name(project.name)?;
    if dir.exists() {
        return Err(format!("{} exists already: nothing written", dir.display()));
    }
    let files = [
        ("Cargo.toml", cargo_toml(project)),
        ("Cargo.lock", LOCK.to_owned()),
        ("src/lib.rs", lib_rs(project)),
        ("weir.toml", weir_toml(project)),
        ("README.md", readme(project)),
        (".gitignore", "/target\n".to_owned()),
    ];
    let mut written = Vec::new();
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `my-plugin` → `my_plugin`: the library's name, and the component's file name.
pub fn lib_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `my-plugin` → `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn cargo_toml(p: &Project<'_>) -> String {
    let sdk = toml_string(&p.sdk.display().to_string());
    format!(
        r##"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
# The SDK's: the oldest Rust it builds with.
rust-version = "{rust}"
publish = false

# The component weir loads: `cargo build --release --target wasm32-wasip2` (the target is
# added once with `rustup target add wasm32-wasip2`) writes
# target/wasm32-wasip2/release/{lib}.wasm. `cargo test` builds the same code natively.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
# The SDK is not on crates.io yet: this is the weir checkout's own (`weir plugin new
# --sdk PATH` names another).
weir-sdk = {{ path = {sdk} }}
serde = {{ version = "1", features = ["derive"] }}

# A project of its own, even inside another cargo workspace.
[workspace]
"##,
        name = p.name,
        lib = lib_name(p.name),
        rust = p.rust_version,
    )
}

/// A TOML string holding `text`.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn lib_rs(p: &Project<'_>) -> String {
    let has = |h: Hook| p.hooks.contains(&h);
    let ty = type_name(p.name);
    let name = p.name;
    let mut imports = vec!["Hooks", "Plugin", "export_plugin"];
    let mut flags = Vec::new();
    let mut fields = String::new();
    let mut checks = String::new();
    let mut hooks = String::new();
    let mut tests = String::new();
    fields.push_str(&format!(
        "    /// The value of the `x-{name}` header this plugin sets.\n    tag: String,\n"
    ));
    checks.push_str(
        "        if config.tag.is_empty() {\n            \
         return Err(\"tag: must not be empty\".into()); // name the field at fault\n        }\n",
    );
    if has(Hook::Request) {
        imports.extend(["LocalResponse", "Proceed", "Request", "RequestAction"]);
        flags.push("Hooks::ON_REQUEST");
        fields.push_str(
            "    /// Requests whose path starts with one of these are answered 403 here, and\n    \
             /// reach no server.\n    #[serde(default)]\n    deny: Vec<String>,\n",
        );
        checks.push_str(
            "        if let Some(i) = config.deny.iter().position(|p| !p.starts_with('/')) {\n            \
             return Err(format!(\"deny[{i}]: a path starts with '/'\"));\n        }\n",
        );
        hooks.push_str(&format!(
            r##"
    fn on_request(&self, request: Request) -> RequestAction {{
        if self.config.deny.iter().any(|p| request.path.starts_with(p.as_str())) {{
            return RequestAction::Respond(LocalResponse::text(403, "forbidden\n"));
        }}
        RequestAction::Proceed(Proceed::unchanged().set_header("x-{name}", &self.config.tag))
    }}
"##
        ));
        tests.push_str(&format!(
            r##"
    #[test]
    fn denied_paths_are_answered_here_and_the_rest_tagged() {{
        let _host = FakeHost::install();
        let plugin = plugin(r#"{{"tag": "edge", "deny": ["/admin"]}}"#);
        let denied = plugin.on_request(testing::request("GET", "/admin/users"));
        assert!(matches!(denied, RequestAction::Respond(r) if r.status == 403));
        let RequestAction::Proceed(proceed) = plugin.on_request(testing::request("GET", "/")) else {{
            panic!("a path not denied goes on");
        }};
        let headers = testing::apply_edits(&[], proceed.edits);
        assert_eq!(headers, ["x-{name}: edge"]);
    }}

    #[test]
    fn a_deny_path_without_its_slash_is_refused_at_load() {{
        let err = weir_sdk::parse_config::<{ty}>(r#"{{"tag": "a", "deny": ["admin"]}}"#);
        assert_eq!(err.err().as_deref(), Some("deny[0]: a path starts with '/'"));
    }}
"##
        ));
    }
    if has(Hook::Response) {
        imports.extend(["HeaderOp", "Response", "ResponseAction"]);
        flags.push("Hooks::ON_RESPONSE");
        hooks.push_str(&format!(
            r##"
    // on_response reads no response header: weir copies none into the sandbox.
    fn response_headers(&self) -> Option<Vec<String>> {{
        Some(vec![])
    }}

    fn on_response(&self, response: Response) -> ResponseAction {{
        let mut edits = vec![HeaderOp::Remove("x-powered-by".into())];
        if response.status >= 500 {{
            edits.push(HeaderOp::Set(weir_sdk::Header {{
                name: "x-{name}".into(),
                value: self.config.tag.clone(),
            }}));
        }}
        ResponseAction::Proceed(edits)
    }}
"##
        ));
        tests.push_str(&format!(
            r##"
    #[test]
    fn server_errors_are_tagged_and_x_powered_by_removed() {{
        let _host = FakeHost::install();
        let plugin = plugin(r#"{{"tag": "edge"}}"#);
        let response = testing::response(502).with_header("x-powered-by", "php");
        let ResponseAction::Proceed(edits) = plugin.on_response(response.clone()) else {{
            panic!("edits expected");
        }};
        let headers = testing::apply_edits(&response.headers, edits);
        assert_eq!(headers, ["x-{name}: edge"]);
    }}
"##
        ));
    }
    if has(Hook::Health) {
        imports.extend(["Probe", "Verdict"]);
        flags.push("Hooks::ON_HEALTH_CHECK");
        fields.push_str(
            "    /// A health check passes when the server's body contains this.\n    \
             #[serde(default = \"ok\")]\n    healthy: String,\n",
        );
        hooks.push_str(
            r##"
    fn on_health_check(&self, probe: Probe) -> Verdict {
        let body = String::from_utf8_lossy(&probe.body_prefix);
        if probe.status == 200 && body.contains(self.config.healthy.as_str()) {
            Verdict::Up(None)
        } else {
            Verdict::Down(format!("status {}, no {:?} in the body", probe.status, self.config.healthy))
        }
    }
"##,
        );
        tests.push_str(
            r##"
    fn probe(status: u16, body: &str) -> weir_sdk::Probe {
        weir_sdk::Probe {
            backend: "app".into(),
            server: "s1".into(),
            status,
            headers: vec![],
            body_prefix: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_server_is_up_when_its_body_says_so() {
        let _host = FakeHost::install();
        let plugin = plugin(r#"{"tag": "a", "healthy": "ready"}"#);
        assert!(matches!(plugin.on_health_check(probe(200, "ready")), Verdict::Up(None)));
        assert!(matches!(plugin.on_health_check(probe(200, "starting")), Verdict::Down(_)));
        assert!(matches!(plugin.on_health_check(probe(503, "ready")), Verdict::Down(_)));
    }
"##,
        );
    }
    if has(Hook::Connect) {
        imports.extend(["ConnectAction", "Connection"]);
        fields.push_str(
            "    /// On a tcp frontend: connections that send no TLS server name are closed.\n    \
             #[serde(default)]\n    require_sni: bool,\n",
        );
        hooks.push_str(
            r##"
    fn on_connect(&self, connection: Connection) -> ConnectAction {
        if self.config.require_sni && connection.sni.is_none() {
            return ConnectAction::Close("no TLS server name".into());
        }
        ConnectAction::Unchanged
    }
"##,
        );
        tests.push_str(
            r##"
    #[test]
    fn connections_without_a_server_name_are_closed_when_asked() {
        let _host = FakeHost::install();
        let plugin = plugin(r#"{"tag": "a", "require_sni": true}"#);
        let bare = plugin.on_connect(testing::connection());
        assert!(matches!(bare, ConnectAction::Close(_)));
        let named = plugin.on_connect(testing::connection().with_sni("db.example.com"));
        assert!(matches!(named, ConnectAction::Unchanged));
    }
"##,
        );
    }
    imports.sort_unstable();
    let hooks_const = if flags.is_empty() {
        // on_connect is not a flag: weir calls it on tcp frontends whatever HOOKS says.
        "Hooks::empty()".to_owned()
    } else {
        let mut text = flags[0].to_owned();
        for flag in &flags[1..] {
            text = format!("{text}.union({flag})");
        }
        text
    };
    let health_default = if has(Hook::Health) {
        "\nfn ok() -> String {\n    \"ok\".into()\n}\n"
    } else {
        ""
    };
    let hook_list: Vec<&str> = p.hooks.iter().map(|h| h.name()).collect();
    format!(
        r##"//! {name}: a weir plugin ({hook_list}). `cargo test` runs its tests natively against the
//! SDK's fake host; `cargo build --release --target wasm32-wasip2` builds the component
//! weir loads.

use serde::Deserialize;
use weir_sdk::{{{imports}}};

/// The plugin's `config` table in weir.toml, handed to `configure` as JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {{
{fields}}}
{health_default}
pub struct {ty} {{
    config: Config,
}}

impl Plugin for {ty} {{
    type Config = Config;
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    // weir calls only the hooks listed here (on_connect, on tcp frontends, always).
    const HOOKS: Hooks = {hooks_const};

    fn configure(config: Config) -> Result<Self, String> {{
{checks}        Ok({ty} {{ config }})
    }}
{hooks}}}

export_plugin!({ty});

#[cfg(test)]
mod tests {{
    use super::*;
    {testing}

    fn plugin(config: &str) -> {ty} {{
        weir_sdk::parse_config::<{ty}>(config).unwrap()
    }}

    #[test]
    fn an_empty_tag_is_refused_at_load() {{
        let err = weir_sdk::parse_config::<{ty}>(r#"{{"tag": ""}}"#);
        assert_eq!(err.err().as_deref(), Some("tag: must not be empty"));
    }}
{tests}}}
"##,
        hook_list = hook_list.join(", "),
        imports = imports.join(", "),
        testing = if has(Hook::Request) || has(Hook::Response) || has(Hook::Connect) {
            "use weir_sdk::testing::{self, FakeHost};"
        } else {
            "use weir_sdk::testing::FakeHost;"
        },
    )
}

fn weir_toml(p: &Project<'_>) -> String {
    let has = |h: Hook| p.hooks.contains(&h);
    let name = p.name;
    let lib = lib_name(name);
    let http = has(Hook::Request) || has(Hook::Response) || has(Hook::Health);
    let mut config = String::from("tag = \"edge\"");
    if has(Hook::Request) {
        config.push_str(", deny = [\"/admin\"]");
    }
    if has(Hook::Health) {
        config.push_str(", healthy = \"ok\"");
    }
    if has(Hook::Connect) {
        config.push_str(", require_sni = false");
    }
    let mut out = format!(
        "# Loads the plugin as built by `cargo build --release --target wasm32-wasip2`.\n\
         # Run it with `weir run --config weir.toml`; `weir check --config weir.toml` loads and\n\
         # configures it without serving.\n\n\
         [plugin.{name}]\n\
         wasm = \"target/wasm32-wasip2/release/{lib}.wasm\"   # relative to this file\n\
         config = {{ {config} }}\n"
    );
    if http {
        let chain = if has(Hook::Request) || has(Hook::Response) {
            format!("plugins = [\"{name}\"]\n")
        } else {
            String::new()
        };
        let health = if has(Hook::Health) {
            format!("health = {{ path = \"/health\", plugin = \"{name}\" }}\n")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:8080\"\ndefault_backend = \"app\"\n\
             {chain}\n[backend.app]\n{health}servers = [{{ name = \"s1\", addr = \"127.0.0.1:9000\" }}]\n"
        ));
    }
    if has(Hook::Connect) {
        out.push_str(&format!(
            "\n# on_connect runs on tcp frontends.\n[[frontend]]\nname = \"tcp\"\nmode = \"tcp\"\n\
             bind = \"127.0.0.1:8443\"\ndefault_backend = \"tcp-app\"\nplugins = [\"{name}\"]\n\n\
             [backend.tcp-app]\nmode = \"tcp\"\nservers = [{{ name = \"s1\", addr = \"127.0.0.1:9443\" }}]\n"
        ));
    }
    out
}

fn readme(p: &Project<'_>) -> String {
    let name = p.name;
    let lib = lib_name(name);
    let hook_list: Vec<&str> = p.hooks.iter().map(|h| h.name()).collect();
    format!(
        r##"# {name}

A weir plugin, written with weir's SDK; its hooks: {hooks}. The SDK's tutorial, with
everything a plugin can do, is {sdk}/README.md.

Rust {rust} or newer, with the WebAssembly target added once:

```sh
rustup target add wasm32-wasip2
```

The three commands that matter:

```sh
cargo test                                         # the logic, natively, against the SDK's fake host
cargo build --release --target wasm32-wasip2       # → target/wasm32-wasip2/release/{lib}.wasm
weir run --config weir.toml                        # weir with the plugin on a frontend
```

`weir plugin check target/wasm32-wasip2/release/{lib}.wasm --config '{{"tag": "a"}}'` loads
the component as weir would and prints what it declares; `weir check --config weir.toml`
loads and configures it with the whole config.

The SDK is not published on crates.io yet: `Cargo.toml` points at the SDK of the weir
checkout that wrote this project ({sdk}). `weir plugin new --sdk PATH` names another;
so does editing the `weir-sdk` line. `Cargo.lock` holds the versions that weir was built
with.
"##,
        hooks = hook_list.join(", "),
        sdk = p.sdk.display(),
        rust = p.rust_version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("my-plugin2").is_ok());
        for bad in ["", "My", "2fast", "a_b", "trailing-", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("my-fine-plugin"), "MyFinePlugin");
        assert_eq!(lib_name("my-fine-plugin"), "my_fine_plugin");
    }

    #[test]
    fn hook_lists_are_read() {
        assert_eq!(
            Hook::parse_list("response, request,response").unwrap(),
            [Hook::Response, Hook::Request]
        );
        assert!(
            Hook::parse_list("reqest")
                .unwrap_err()
                .contains("no hook \"reqest\"")
        );
        assert!(Hook::parse_list("").is_err());
    }

    #[test]
    fn a_path_with_quotes_stays_one_toml_string() {
        let text = toml_string("C:\\sdk \"x\"");
        let parsed: toml::Value = toml::from_str(&format!("a = {text}")).unwrap();
        assert_eq!(parsed["a"].as_str(), Some("C:\\sdk \"x\""));
    }
}
