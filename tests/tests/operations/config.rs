//! Config errors name the key path and the line; valid configs load with their defaults.

use std::path::Path;
use std::time::Duration;

use weir::config::{Balance, Config, ConfigError};

fn errors(toml: &str) -> Vec<ConfigError> {
    Config::from_toml(toml, Path::new("."))
        .expect_err("config must be rejected")
        .0
}

fn one_error(toml: &str) -> String {
    let e = errors(toml);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].to_string()
}

const VALID: &str = r#"
[[frontend]]
name = "www"
bind = "127.0.0.1:8080"
default_backend = "app"

[backend.app]
servers = [{ name = "a", addr = "127.0.0.1:9001" }]
"#;

#[test]
fn an_invalid_server_address_names_its_path_and_line() {
    let toml = r#"[[frontend]]
name = "www"
bind = ["127.0.0.1:8080"]
default_backend = "app"

[backend.app]
servers = [
  { name = "web1", addr = "127.0.0.1:9001" },
  { name = "web2", addr = "127.0.0.1:99999" },
]
"#;
    let e = one_error(toml);
    assert!(
        e.starts_with("backend.app.servers[1].addr: invalid address \"127.0.0.1:99999\""),
        "{e}"
    );
    assert!(e.ends_with("(line 9)"), "{e}");
}

#[test]
fn unknown_keys_are_errors_with_path_and_line() {
    let toml = VALID.replace(
        "default_backend = \"app\"",
        "default_backend = \"app\"\ncolour = \"blue\"",
    );
    let e = one_error(&toml);
    assert!(
        e.starts_with("frontend[0].colour: unknown field `colour`"),
        "{e}"
    );
    assert!(e.ends_with("(line 6)"), "{e}");
    let toml = VALID.replace(
        "addr = \"127.0.0.1:9001\"",
        "addr = \"127.0.0.1:9001\", wieght = 2",
    );
    let e = one_error(&toml);
    assert!(
        e.starts_with("backend.app.servers[0].wieght: unknown field"),
        "{e}"
    );
    let e = one_error(&format!(
        "[defaults]\ntimeout = {{ conect = \"1s\" }}\n{VALID}"
    ));
    assert!(
        e.starts_with("defaults.timeout.conect: unknown field"),
        "{e}"
    );
    assert!(e.ends_with("(line 2)"), "{e}");
}

#[test]
fn every_problem_is_reported_in_one_pass() {
    let toml = r#"[[frontend]]
name = "www"
bind = "127.0.0.1:8080"
default_backend = "api"

[[frontend]]
name = "www"
bind = "127.0.0.1:8080"
default_backend = "app"

[backend.app]
balance = "fastest"
timeout = { connect = "5x", server = "0s" }
servers = [
  { name = "a", addr = "127.0.0.1:1", weight = 0 },
  { name = "a", addr = "nowhere", weight = 0 },
]

[backend.empty]
servers = []
"#;
    let found: Vec<String> = errors(toml).iter().map(|e| e.to_string()).collect();
    let expect = [
        "frontend[0].default_backend: unknown backend \"api\" (no [backend.api] section) (line 4)",
        "frontend[1].name: duplicate frontend name \"www\" (line 7)",
        "frontend[1].bind: 127.0.0.1:8080 is already bound by frontend[0].bind (line 8)",
        "backend.app.balance: unknown algorithm \"fastest\"",
        "backend.app.servers[1].name: duplicate server name \"a\" in backend \"app\" (line 16)",
        "backend.app.servers[1].addr: invalid address \"nowhere\": expected host:port (line 16)",
        "backend.app.servers: every server has weight 0, so none can receive traffic (line 14)",
        "backend.app.timeout.connect: invalid duration \"5x\": unknown unit \"x\"",
        "backend.app.timeout.server: must be greater than zero (line 13)",
        "backend.empty.servers: at least one server is required (line 20)",
    ];
    for e in expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), expect.len(), "{}", found.join("\n"));
}

#[test]
fn bad_values_are_named() {
    let e = one_error(&format!("[global]\nmaxconn = 0\n{VALID}"));
    assert_eq!(
        e,
        "global.maxconn: must be between 1 and 10000000, got 0 (line 2)"
    );
    let e = one_error(&format!("[defaults]\nmax_header_size = \"64\"\n{VALID}"));
    assert!(
        e.starts_with("defaults.max_header_size: invalid size \"64\": a unit is required"),
        "{e}"
    );
    let e = one_error(&format!("[defaults]\ntimeout = {{ client = 30 }}\n{VALID}"));
    assert!(
        e.starts_with(
            "defaults.timeout.client: expected a duration as a string with a unit, e.g. \"30s\""
        ),
        "{e}"
    );
    let e = one_error(&VALID.replace("[backend.app]", "[backend.app]\nbalance = \"hdr:\""));
    assert!(
        e.starts_with("backend.app.balance: invalid header name"),
        "{e}"
    );
    let e = one_error(&VALID.replace(
        "[backend.app]",
        "[backend.app]\nerrorfiles = { 404 = \"x.html\" }",
    ));
    assert!(
        e.starts_with("backend.app.errorfiles.404: weir does not generate status 404"),
        "{e}"
    );
    let e = one_error(&VALID.replace(
        "[backend.app]",
        "[backend.app]\nerrorfiles = { 503 = \"/nonexistent/503.html\" }",
    ));
    assert!(
        e.starts_with("backend.app.errorfiles.503: cannot read /nonexistent/503.html"),
        "{e}"
    );
    let e = one_error(&VALID.replace("name = \"www\"", "name = \"www\"\nlog_format = \"xml\""));
    assert_eq!(
        e,
        "frontend[0].log_format: unknown log format \"xml\" (expected \"text\", \"json\" or a string with HAProxy's % variables) (line 4)"
    );
}

#[test]
fn syntax_errors_give_the_line() {
    let e = one_error("[[frontend]]\nname = \"www\"\nbind = \n");
    assert!(e.ends_with("(line 3)"), "{e}");
}

#[test]
fn a_config_needs_a_frontend_and_a_backend() {
    let found: Vec<String> = errors("").iter().map(|e| e.to_string()).collect();
    assert!(
        found.contains(&"frontend: at least one [[frontend]] is required".to_string()),
        "{found:?}"
    );
    assert!(
        found.contains(&"backend: at least one [backend.<name>] is required".to_string()),
        "{found:?}"
    );
}

#[test]
fn defaults_are_inherited_and_overridden() {
    let toml = r#"
[global]
threads = 1

[defaults]
timeout = { connect = "2s", server = "7s", client = "11s" }
retries = 1
log_format = "json"

[[frontend]]
name = "www"
bind = ["127.0.0.1:8080", "[::1]:8080"]
default_backend = "app"
timeout = { client = "3s" }

[backend.app]
balance = "url_param:user"
timeout = { server = "1m" }
redispatch = false
servers = [
  { name = "a", addr = "localhost:9001", weight = 5, maxconn = 10 },
  { name = "b", addr = "127.0.0.1:9002", backup = true },
]
"#;
    let c = Config::from_toml(toml, Path::new(".")).unwrap();
    assert_eq!(c.global.threads, 1);
    assert_eq!(c.global.maxconn, 4096);
    let f = &c.frontends[0];
    assert_eq!(f.binds.len(), 2);
    assert_eq!(f.timeout_client, Duration::from_secs(3));
    assert_eq!(f.timeout_http_request, Duration::from_secs(10));
    assert_eq!(f.log_format, weir::config::LogFormat::Json);
    assert!(f.forwardfor);
    assert_eq!((f.max_header_size, f.max_headers), (64 * 1024, 100));
    let b = &c.backends[0];
    assert_eq!(b.balance, Balance::UrlParam("user".into()));
    assert_eq!(b.timeout_connect, Duration::from_secs(2));
    assert_eq!(b.timeout_server, Duration::from_secs(60));
    assert_eq!(b.timeout_tunnel, Duration::from_secs(3600));
    assert_eq!((b.retries, b.redispatch), (1, false));
    assert_eq!(
        b.servers[0].addr.port(),
        9001,
        "host names resolve at load time"
    );
    assert_eq!((b.servers[0].weight, b.servers[0].maxconn), (5, Some(10)));
    assert!(b.servers[1].backup);
}

#[test]
fn the_quickstart_example_is_valid() {
    Config::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.toml"))
        .unwrap();
}

#[test]
fn invalid_health_check_parameters_name_their_key() {
    let with = |backend_extra: &str, server_extra: &str| {
        VALID
            .replace("[backend.app]", &format!("[backend.app]\n{backend_extra}"))
            .replace(
                "addr = \"127.0.0.1:9001\"",
                &format!("addr = \"127.0.0.1:9001\"{server_extra}"),
            )
    };
    let found: Vec<String> = errors(&with(
        r#"health = { path = "health", interval = "0s", fall = 0, rise = 0, observe = "layer9", expect_status = "6xx" }"#,
        "",
    ))
    .iter()
    .map(|e| e.to_string())
    .collect();
    for expected in [
        "backend.app.health.interval: must be greater than zero (line 8)",
        "backend.app.health.fall: must be between 1 and 1000, got 0 (line 8)",
        "backend.app.health.rise: must be between 1 and 1000, got 0 (line 8)",
        "backend.app.health.observe: unknown mode \"layer9\"",
        "backend.app.health.path: must start with \"/\", got \"health\" (line 8)",
        "backend.app.health.expect_status: invalid status class \"6xx\"",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "missing {expected:?} in\n{}",
            found.join("\n")
        );
    }

    // A server's own override is named at the server.
    let e = one_error(&with(
        r#"health = { interval = "1s" }"#,
        r#", health = { fall = 0 }"#,
    ));
    assert_eq!(
        e,
        "backend.app.servers[0].health.fall: must be between 1 and 1000, got 0 (line 9)"
    );
    let e = one_error(&with(r#"health = { expect_body = "ok" }"#, ""));
    assert!(
        e.starts_with("backend.app.health.expect_body: applies to HTTP checks only"),
        "{e}"
    );
    let e = one_error(&with(r#"retry_on = ["conn-failure", "500"]"#, ""));
    assert!(
        e.starts_with("backend.app.retry_on[1]: unknown condition \"500\""),
        "{e}"
    );
    let e = one_error(&with("", r#", slowstart = "0s""#));
    assert!(
        e.starts_with("backend.app.servers[0].slowstart: must be greater than zero"),
        "{e}"
    );
}

#[test]
fn health_and_resilience_keys_load_with_their_defaults() {
    let toml = VALID.replace(
        "[backend.app]",
        "[backend.app]\nhealth = { path = \"/health\" }\nmaxqueue = 10\nretry_on = [\"conn-failure\", \"503\"]",
    );
    let c = Config::from_toml(&toml, Path::new(".")).unwrap();
    let b = &c.backends[0];
    assert_eq!(b.maxqueue, Some(10));
    assert_eq!(b.timeout_queue, Duration::from_secs(5));
    assert!(
        b.retry_on.conn_failure && !b.retry_on.empty_response && b.retry_on.statuses == vec![503]
    );
    let h = b.servers[0].health.as_ref().unwrap();
    assert_eq!(
        (h.interval, h.fastinter, h.downinter, h.timeout),
        (
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_secs(2),
            Duration::from_secs(1)
        )
    );
    assert_eq!((h.rise, h.fall, h.error_limit), (2, 3, 10));
    let weir::config::CheckKind::Http(http) = &h.kind else {
        panic!("an HTTP check")
    };
    assert!(
        http.expect_status.matches(200)
            && http.expect_status.matches(302)
            && !http.expect_status.matches(404)
    );
    let plain = Config::from_toml(VALID, Path::new(".")).unwrap();
    assert!(
        plain.backends[0].servers[0].health.is_none(),
        "no health table, no checks"
    );
    assert!(plain.backends[0].retry_on.conn_failure && !plain.backends[0].retry_on.after_send());
}

#[test]
fn tcp_mode_is_checked_by_key_path_and_line() {
    let base = |frontend: &str, backend: &str| {
        format!(
            "[[frontend]]\nname = \"db\"\nmode = \"tcp\"\nbind = \"127.0.0.1:6380\"\ndefault_backend = \"app\"\n{frontend}\n\n[backend.app]\n{backend}\nservers = [{{ name = \"a\", addr = \"127.0.0.1:6379\" }}]\n"
        )
    };
    // A tcp frontend needs a tcp backend.
    let e = one_error(&base("", ""));
    assert!(
        e.starts_with("frontend[0].default_backend: backend \"app\" is mode http")
            && e.ends_with("(line 5)"),
        "{e}"
    );
    let tcp = "mode = \"tcp\"";
    Config::from_toml(&base("", tcp), Path::new(".")).expect("a tcp pair loads");
    // What only HTTP has, on a tcp frontend.
    let e = one_error(&base("forwardfor = true", tcp));
    assert!(
        e.starts_with("frontend[0].forwardfor: applies to HTTP"),
        "{e}"
    );
    // Balancing on HTTP fields, on a tcp backend; sni on an http one.
    let e = one_error(&base("", "mode = \"tcp\"\nbalance = \"uri\""));
    assert!(
        e.starts_with("backend.app.balance: hashes an HTTP request"),
        "{e}"
    );
    let e = one_error(&VALID.replace("[backend.app]\n", "[backend.app]\nbalance = \"sni\"\n"));
    assert!(
        e.starts_with("backend.app.balance: sni is for tcp backends"),
        "{e}"
    );
    // Passthrough only on tcp, and not with termination.
    let e = one_error(&VALID.replace(
        "default_backend = \"app\"\n",
        "default_backend = \"app\"\ntls_passthrough = true\n",
    ));
    assert!(
        e.starts_with("frontend[0].tls_passthrough: is for a tcp frontend"),
        "{e}"
    );
    // A TCP check's exchange is not for an HTTP check.
    let e = one_error(&base(
        "",
        "mode = \"tcp\"\nhealth = { path = \"/\", send = \"PING\\r\\n\" }",
    ));
    assert!(
        e.starts_with("backend.app.health.send: applies to TCP checks") && e.ends_with("(line 10)"),
        "{e}"
    );
    let e = errors(&base("", "mode = \"udp\""))[0].to_string();
    assert!(
        e.starts_with("backend.app.mode: must be \"http\" or \"tcp\""),
        "{e}"
    );
}

#[test]
fn a_candidates_mode_and_limits_are_checked_by_key_path_and_line() {
    let with = |candidate: &str| {
        format!(
            "{VALID}\n[plugin.r]\nstock = \"router\"\ntimeout = \"20ms\"\nconfig = {{ rules = [] }}\ncandidate = {candidate}\n"
        )
    };
    let e = one_error(&with(r#"{ stock = "router" }"#));
    assert!(
        e.contains("plugin.r.candidate.mode") && e.contains("line 14") && e.contains("is required"),
        "{e}"
    );
    let e = one_error(&with(r#"{ stock = "router", mode = "canary" }"#));
    assert!(
        e.contains("plugin.r.candidate.percent") && e.contains("is required for a canary"),
        "{e}"
    );
    let e = one_error(&with(
        r#"{ stock = "router", mode = "canary", percent = 101 }"#,
    ));
    assert!(e.contains("must be between 0 and 100"), "{e}");
    let e = one_error(&with(
        r#"{ stock = "router", mode = "canary", percent = 5, max_failures = "lots" }"#,
    ));
    assert!(e.contains("plugin.r.candidate.max_failures"), "{e}");
    let e = one_error(&with(r#"{ stock = "router", mode = "mirror" }"#));
    assert!(e.contains("unknown mode \"mirror\""), "{e}");
    let e = one_error(&with(r#"{ mode = "shadow" }"#));
    assert!(
        e.contains("plugin.r.candidate") && e.contains("needs `wasm"),
        "{e}"
    );
    let e = one_error(&with(
        r#"{ stock = "router", mode = "shadow", memory = "1KiB" }"#,
    ));
    assert!(e.contains("plugin.r.candidate.memory"), "{e}");
    let e = one_error(&with(
        r#"{ stock = "router", mode = "shadow", percent = 5 }"#,
    ));
    assert!(
        e.contains("plugin.r.candidate.percent") && e.contains("is for a canary"),
        "{e}"
    );

    // What the candidate does not say, it takes from the plugin (but not sha256).
    let config = Config::from_toml(
        &with(r#"{ stock = "router", mode = "shadow" }"#),
        Path::new("."),
    )
    .unwrap();
    let plugin = &config.plugins[0];
    let candidate = &plugin.candidate.as_ref().unwrap().plugin;
    assert_eq!(candidate.name, "r (candidate)");
    assert_eq!(candidate.timeout, Duration::from_millis(20));
    assert_eq!(candidate.config_json, plugin.config_json);
}
