//! Per-hook cost of a plugin call on a pooled, live instance: what one `on-request`
//! costs the proxy, the copy of the request into the sandbox and the action out included.
//!
//! Run: `cargo run --release -p weir-bench --bin hooks` (it prints a Markdown table).
//!
//! Two cases, both with the stock `router`:
//! - empty: no rules, a request without headers: the fixed cost of a call;
//! - router-like: ten rules of the usual kinds (path prefixes, a regex, a host, a header,
//!   a method, a source block), a request with ten headers, matched by the last rule.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use weir::plugin::types::{Header, Request};
use weir::proxy::backend::BackendRt;

const CONFIG: &str = r#"
[[frontend]]
name = "www"
bind = "127.0.0.1:0"
default_backend = "app"

[backend.app]
servers = [{ name = "a", addr = "127.0.0.1:9" }]

[backend.static]
servers = [{ name = "s", addr = "127.0.0.1:9" }]

[plugin.empty]
stock = "router"
config = { rules = [] }

[plugin.router]
stock = "router"
config = { rules = [
  { path_beg = ["/static", "/images", "/assets"], backend = "static" },
  { path_end = [".php", ".asp"], deny = 403 },
  { path_reg = "^/v[0-9]+/internal/", deny = 404 },
  { host = "*.legacy.example.com", backend = "static" },
  { header = { name = "x-canary", exact = "1" }, backend = "static" },
  { method = ["DELETE", "PATCH"], path_beg = "/readonly", deny = 405 },
  { path_beg = "/admin", src_not = ["10.0.0.0/8"], deny = 403 },
  { query = "debug", backend = "static" },
  { header = { name = "user-agent", contains = "bot" }, deny = 403 },
  { path_beg = "/api/", host = "www.example.com", backend = "app" },
] }
"#;

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
    }
}

fn request(path: &str, headers: Vec<Header>) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        query: Some("page=2".into()),
        host: Some("www.example.com".into()),
        headers,
        client_ip: "192.0.2.10".into(),
        frontend: "www".into(),
        scheme: "http".into(),
        backend: "app".into(),
        id: 1,
    }
}

/// Nanoseconds per call: the median of `rounds` rounds of `calls` calls each.
async fn measure(
    plugin: &Arc<weir::plugin::Plugin>,
    request: &Request,
    rounds: usize,
    calls: usize,
) -> f64 {
    let mut per_call = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..calls {
            let action = plugin.on_request(request).await.expect("the call succeeds");
            std::hint::black_box(action);
        }
        per_call.push(started.elapsed().as_nanos() as f64 / calls as f64);
    }
    per_call.sort_by(f64::total_cmp);
    per_call[rounds / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = weir::Config::from_toml(CONFIG, Path::new(".")).expect("valid config");
    let backends: Arc<[Arc<BackendRt>]> = config
        .backends
        .iter()
        .map(|b| BackendRt::new(b.clone()))
        .collect();
    let plugins = weir::plugin::load_all(&config.plugins, backends)
        .await
        .map_err(|(name, e)| format!("{name}: {e}"))
        .expect("plugins load");
    let by_name = |n: &str| {
        plugins
            .iter()
            .find(|p| &*p.name == n)
            .cloned()
            .expect("configured")
    };
    let ten_headers = vec![
        header("host", "www.example.com"),
        header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        ),
        header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        header("accept-language", "en-GB,en;q=0.9"),
        header("accept-encoding", "gzip, deflate, br"),
        header("cookie", "session=4f2a9c1e8b7d6a5f; theme=dark; lang=en"),
        header("referer", "https://www.example.com/api/"),
        header("x-request-id", "0b1e6f0a-3c2d-4e5f-8a9b-0c1d2e3f4a5b"),
        header("x-forwarded-for", "198.51.100.7"),
        header("cache-control", "no-cache"),
    ];
    let cases = [
        (
            "empty hook",
            by_name("empty"),
            request("/", Vec::new()),
            500.0,
        ),
        (
            "router-like hook, 10 rules, 10 headers",
            by_name("router"),
            request("/api/users", ten_headers),
            2000.0,
        ),
    ];
    println!("| case | ns per call (median of 9 rounds) | target ns |");
    println!("|---|---|---|");
    for (name, plugin, req, target) in cases {
        // Warm-up: instance in the pool, caches and branch predictors settled.
        measure(&plugin, &req, 1, 20_000).await;
        let ns = measure(&plugin, &req, 9, 50_000).await;
        println!("| {name} | {ns:.0} | {target:.0} |");
    }
}
