//! Per-hook cost of a plugin call on a pooled, live instance: what one `on-request`
//! costs the proxy, the copy of the request into the sandbox and the action out included.
//!
//! Run: `cargo run --release -p weir-bench --bin hooks [name]` (it prints a Markdown table;
//! with a name, only the cases whose name contains it).
//!
//! Two cases, both with the stock `router`:
//! - empty: no rules, a request without headers: the fixed cost of a call;
//! - router-like: ten rules of the usual kinds (path prefixes, a regex, a host, a header,
//!   a method, a source block), a request with ten headers, matched by the last rule. The
//!   headers and fields are selected as the proxy selects them: only those the router
//!   declared it reads (two of the ten headers) are copied. A third case copies all ten
//!   headers and every field, as every call did before plugins declared what they read.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use weir::plugin::types::{HeaderParam, Request, RequestFields, RequestValue};
use weir::plugin::{Fields, RequestInfo};
use weir::upstream::BackendRt;

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

/// The request's fields, as the proxy knows them.
fn info(path: &str) -> RequestInfo<'_> {
    RequestInfo {
        method: "GET",
        path,
        query: Some("page=2"),
        host: Some("www.example.com"),
        client_ip: "192.0.2.10",
        frontend: "www",
        scheme: "http",
        backend: "app",
    }
}

/// A hook's input: the fields and headers selected for it.
fn request<'a>(
    fields: &'a Fields<RequestValue<'a>, 8>,
    headers: &'a [HeaderParam<'a>],
) -> Request<'a> {
    Request {
        fields: fields.list(),
        headers: weir::plugin::header_list(headers),
        id: 1,
    }
}

/// `calls` calls in a row.
async fn call(plugin: &Arc<weir::plugin::Plugin>, request: &Request<'_>, calls: usize) {
    for _ in 0..calls {
        let action = plugin
            .call_on_request(request.clone())
            .await
            .expect("the call succeeds");
        std::hint::black_box(action);
    }
}

/// Nanoseconds per call over `calls` calls.
async fn measure(plugin: &Arc<weir::plugin::Plugin>, request: &Request<'_>, calls: usize) -> f64 {
    let started = Instant::now();
    call(plugin, request, calls).await;
    started.elapsed().as_nanos() as f64 / calls as f64
}

/// A count from the environment (`ROUNDS`, `CALLS` per round, `WARMUP` calls), else
/// `default`: smaller ones for a run under callgrind, which is about fifty times slower.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = weir::Config::from_toml(CONFIG, Path::new(".")).expect("valid config");
    let backends: Arc<[Arc<BackendRt>]> = config
        .backends
        .iter()
        .map(|b| BackendRt::new(b.clone(), None))
        .collect();
    let plugins = weir::plugin::load_all(&config.plugins, backends, &[], false)
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
    let mut ten_headers = http::HeaderMap::new();
    for (name, value) in [
        ("host", "www.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=4f2a9c1e8b7d6a5f; theme=dark; lang=en"),
        ("referer", "https://www.example.com/api/"),
        ("x-request-id", "0b1e6f0a-3c2d-4e5f-8a9b-0c1d2e3f4a5b"),
        ("x-forwarded-for", "198.51.100.7"),
        ("cache-control", "no-cache"),
    ] {
        ten_headers.insert(name, http::HeaderValue::from_static(value));
    }
    let (empty, router) = (by_name("empty"), by_name("router"));
    let declared = router.request_headers_of(&ten_headers);
    let all = weir::plugin::headers_of(&ten_headers);
    let empty_fields = empty.request_values(&info("/"));
    let router_fields = router.request_values(&info("/api/users"));
    let all_fields = info("/api/users").values(RequestFields::all());
    let cases = [
        (
            "empty hook",
            Arc::clone(&empty),
            request(&empty_fields, &[]),
            500.0,
        ),
        (
            "router-like hook, 10 rules, 10 headers (2 copied)",
            Arc::clone(&router),
            request(&router_fields, &declared),
            2000.0,
        ),
        (
            "router-like hook, 10 rules, 10 headers (all copied)",
            Arc::clone(&router),
            request(&all_fields, &all),
            2000.0,
        ),
    ];
    // An argument keeps only the cases whose name contains it (for a profile of one).
    let only = std::env::args().nth(1).unwrap_or_default();
    let cases: Vec<_> = cases
        .into_iter()
        .filter(|(name, ..)| name.contains(only.as_str()))
        .collect();
    // Rounds interleave the cases (A B C A B C ...), so a slow spell of a shared machine
    // hits them alike; each case reports its median round.
    let (rounds, calls) = (setting("ROUNDS", 15), setting("CALLS", 30_000));
    for (_, plugin, req, _) in &cases {
        call(plugin, req, setting("WARMUP", 20_000)).await; // fills the pool, warms caches
    }
    let mut samples = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for (i, (_, plugin, req, _)) in cases.iter().enumerate() {
            samples[i].push(measure(plugin, req, calls).await);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            s[rounds / 2]
        })
        .collect();
    println!(
        "| case | ns per call (median of {rounds} interleaved rounds) | target ns | ratio to target |"
    );
    println!("|---|---|---|---|");
    for ((name, _, _, target), ns) in cases.iter().zip(&medians) {
        println!("| {name} | {ns:.0} | {target:.0} | {:.2} |", ns / target);
    }
}
