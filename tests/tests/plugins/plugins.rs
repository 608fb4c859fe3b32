//! The plugin runtime through the real proxy, with real compiled components.

use std::time::Duration;

use weir_tests::{Client, MockServer, TestProxy, config, fixture_plugin, with_plugins};

async fn proxy_with(chain: &[&str], sections: &[String]) -> (MockServer, TestProxy) {
    let server = MockServer::start("s1").await;
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        chain,
        sections,
    );
    let proxy = TestProxy::start(&toml).await;
    (server, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_runs_in_order_and_responses_come_back_in_reverse() {
    let (_server, proxy) = proxy_with(
        &["a", "b"],
        &[
            fixture_plugin("a", "tag", ""),
            fixture_plugin("b", "tag", ""),
        ],
    )
    .await;
    let reply = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["headers"]["x-chain"], "a | b");
    let back: Vec<&str> = reply
        .headers
        .get_all("x-chain-back")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(back, vec!["b", "a"]);
}

fn section(name: &str, config: &str, extra: &str) -> String {
    format!(
        "[plugin.{name}]\nwasm = \"{}\"\n{extra}\nconfig = {config}\n",
        weir_tests::FIXTURE_WASM
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_response_stops_the_chain_and_passes_back_through_earlier_plugins() {
    let (server, proxy) = proxy_with(
        &["a", "deny", "c"],
        &[
            fixture_plugin("a", "tag", ""),
            section(
                "deny",
                r#"{ mode = "respond", status = 403, tag = "deny" }"#,
                "",
            ),
            fixture_plugin("c", "tag", ""),
        ],
    )
    .await;
    let reply = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.text(), "answered by deny\n");
    let back: Vec<&str> = reply
        .headers
        .get_all("x-chain-back")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        back,
        vec!["a"],
        "only the plugins before the one that answered see the response"
    );
    assert_eq!(server.requests(), 0);
    let lines = proxy.log.wait_for(1).await;
    assert!(
        lines[0].contains(" 403 ") && lines[0].contains(" LR "),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_route_to_a_backend_and_prefer_a_server() {
    let main = MockServer::start("main").await;
    let (v2a, v2b) = (
        MockServer::start("v2a").await,
        MockServer::start("v2b").await,
    );
    let toml = with_plugins(
        config("roundrobin", &[("main", main.addr, "")], ""),
        &["route"],
        &[section(
            "route",
            r#"{ mode = "route", backend = "v2", server = "v2b" }"#,
            "",
        )],
    ) + &format!(
        "\n[backend.v2]\nservers = [{{ name = \"v2a\", addr = \"{}\" }}, {{ name = \"v2b\", addr = \"{}\" }}]\n",
        v2a.addr, v2b.addr
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..6 {
        assert_eq!(client.get("/").await.server(), "v2b");
    }
    assert_eq!(main.requests() + v2a.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_rewrite_the_path_and_replace_responses() {
    let (_server, proxy) =
        proxy_with(&["rewrite"], &[fixture_plugin("rewrite", "rewrite", "")]).await;
    let reply = Client::connect(proxy.addr()).await.get("/x?y=1").await;
    assert_eq!(reply.json()["path"], "/rewritten/x");
    assert_eq!(reply.json()["query"], "y=1", "a new path keeps the query");

    let (_server, proxy) =
        proxy_with(&["replace"], &[fixture_plugin("replace", "replace", "")]).await;
    let reply = Client::connect(proxy.addr()).await.get("/status/500").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "replaced a 500 from s1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_counters_outlive_instances() {
    let (_server, proxy) =
        proxy_with(&["count-a"], &[fixture_plugin("count-a", "count", "")]).await;
    let addr = proxy.addr();
    // Concurrent requests use several instances; the count is the host's, so it never repeats.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                Client::connect(addr).await.get("/").await.json()["headers"]["x-count"].clone()
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap().as_str().unwrap().parse::<u32>().unwrap());
    }
    counts.sort();
    assert_eq!(counts, (1..=8).collect::<Vec<_>>());
}

/// A plugin whose calls never wait (host counters on the memory store, WASI's sink
/// streams) is called on the caller's stack; one that waits on a clock is called on
/// fibers, and its wait holds no thread: ten requests that each sleep 100 ms in it, all
/// at once on the one thread this test runs everything on, take about 100 ms, not one
/// second.
#[tokio::test(flavor = "current_thread")]
async fn plugins_that_never_wait_run_on_the_stack_and_a_waiting_one_holds_no_thread() {
    let nap = format!(
        "[plugin.nap]\nwasm = \"{}\"\nconfig = {{ ms = 100 }}\n",
        weir_tests::SLEEPER_WASM
    );
    let (server, proxy) = proxy_with(
        &["count-on-stack", "nap"],
        &[fixture_plugin("count-on-stack", "count", ""), nap.clone()],
    )
    .await;
    let addr = proxy.addr();
    let wave = || async move {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| tokio::spawn(async move { Client::connect(addr).await.get("/").await }))
            .collect();
        let mut counts = Vec::new();
        for t in tasks {
            let reply = t.await.unwrap();
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.json()["headers"]["x-slept"], "100");
            let count = reply.json()["headers"]["x-count"].clone();
            counts.push(count.as_str().unwrap().parse::<u32>().unwrap());
        }
        counts.sort();
        (counts, started.elapsed())
    };
    // The first wave makes the instances (slow in a debug build) and finds that `nap`
    // waits: its first call stops there and is made again on a fiber.
    let (counts, _) = wave().await;
    assert_eq!(counts, (1..=10).collect::<Vec<_>>());
    let (counts, took) = wave().await;
    assert_eq!(
        counts,
        (11..=20).collect::<Vec<_>>(),
        "each request counted once"
    );
    assert_eq!(server.requests(), 20);
    assert!(
        took < Duration::from_millis(600),
        "ten 100 ms waits in a plugin took {took:?} together: they held the thread"
    );
    let plugins = proxy.running.plugins();
    let on_stack = |name: &str| {
        plugins
            .iter()
            .find(|p| &*p.name == name)
            .unwrap()
            .calls_on_stack()
    };
    assert!(
        on_stack("count-on-stack"),
        "counts never wait: called on the stack"
    );
    assert!(!on_stack("nap"), "a plugin that sleeps is called on fibers");

    // A reload keeps that: the next generation's `nap` is on fibers from its load, and
    // its first call does not stop at the wait again (counted once, as before).
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["count-on-stack", "nap"],
        &[fixture_plugin("count-on-stack", "count", ""), nap],
    );
    let config = weir::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    proxy.running.reload(&config).await.expect("reload");
    let plugins = proxy.running.plugins();
    let find = |name: &str| plugins.iter().find(|p| &*p.name == name).unwrap();
    assert!(
        !find("nap").calls_on_stack(),
        "a reload keeps a plugin on fibers"
    );
    assert!(find("count-on-stack").calls_on_stack());
    let calls = find("nap")
        .stats
        .calls
        .load(std::sync::atomic::Ordering::Relaxed);
    let reply = Client::connect(addr).await.get("/").await;
    assert_eq!(reply.json()["headers"]["x-slept"], "100");
    assert_eq!(reply.json()["headers"]["x-count"], "21");
    assert_eq!(
        find("nap")
            .stats
            .calls
            .load(std::sync::atomic::Ordering::Relaxed),
        calls + 1
    );
}

/// One hostile behaviour under both policies: fail-closed answers a generic 503 without
/// reaching a server; fail-open serves as if the plugin were absent.
async fn hostile(mode: &str, extra: &str) {
    let name = format!("bad-{mode}");
    let (server, proxy) = proxy_with(&[&name], &[fixture_plugin(&name, mode, extra)]).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..3 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 503, "{mode}: {}", reply.text());
        assert!(
            !reply.text().contains(&name) && !reply.text().contains("plugin"),
            "{mode}: {}",
            reply.text()
        );
    }
    assert_eq!(
        server.requests(),
        0,
        "{mode}: nothing reaches a server when failing closed"
    );
    let plugin = &proxy.running.plugins()[0];
    let failures = plugin.stats.failures();
    assert_eq!(failures, 3, "{mode}: each failure is counted once");

    let open = format!("{extra}\non_error = \"fail-open\"");
    let (server, proxy) = proxy_with(&[&name], &[fixture_plugin(&name, mode, &open)]).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..3 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200, "{mode}: fail-open serves");
        assert!(
            reply.json()["headers"].get("x-evil").is_none(),
            "{mode}: nothing of the plugin's output applies"
        );
    }
    assert_eq!(server.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_plugin_follows_its_policy() {
    hostile("trap", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_follows_its_policy() {
    hostile("panic", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_growing_past_its_memory_cap_follows_its_policy() {
    hostile("grow", "memory = \"4MiB\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_recursing_without_end_follows_its_policy() {
    hostile("recurse", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_returning_crlf_in_a_header_follows_its_policy() {
    hostile("crlf", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_naming_an_unknown_backend_follows_its_policy() {
    hostile("bad-backend", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_returning_a_huge_response_follows_its_policy() {
    hostile("huge", "").await;
}

/// A plugin that calls the host without end is stopped at its deadline like any loop,
/// and what it stored stays within the host's bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_storming_the_host_with_calls_follows_its_policy() {
    hostile("storm", "").await;
}

/// Hostile calls by the hundred: memory grown to the cap and recursion to the stack's
/// end, each instance discarded. The process's memory stays bounded: instances are
/// recycled, not leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_failing_calls_leave_memory_bounded() {
    let sections = [
        fixture_plugin(
            "grow",
            "grow",
            "memory = \"8MiB\"\non_error = \"fail-open\"",
        ),
        fixture_plugin("recurse", "recurse", "on_error = \"fail-open\""),
    ];
    let (_server, proxy) = proxy_with(&["grow", "recurse"], &sections).await;
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let warm = weir_tests::rss_bytes();
    for _ in 0..300 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let after = weir_tests::rss_bytes();
    let grown = after.saturating_sub(warm);
    eprintln!(
        "RSS {} MiB after warm-up, {} MiB after 300 more",
        warm >> 20,
        after >> 20
    );
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    for plugin in proxy.running.plugins() {
        assert_eq!(plugin.stats.failures(), 320, "{}", plugin.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha256_pin_that_does_not_match_is_refused_at_load() {
    let server = MockServer::start("s1").await;
    let pin = format!("sha256 = \"{}\"", "0".repeat(64));
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["p"],
        &[fixture_plugin("p", "tag", &pin)],
    );
    let loaded = weir::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let err = weir::start(&loaded, weir::AccessLog::disabled())
        .await
        .err()
        .expect("a mismatched pin must be refused");
    assert!(
        err.to_string()
            .starts_with("plugin.p: sha256 mismatch: the component has "),
        "{err}"
    );

    let actual = weir::util::sha256_hex(&std::fs::read(weir_tests::FIXTURE_WASM).unwrap());
    let pin = format!("sha256 = \"{actual}\"");
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["p"],
        &[fixture_plugin("p", "tag", &pin)],
    );
    TestProxy::start(&toml).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_config_error_names_the_plugin_and_the_field() {
    let server = MockServer::start("s1").await;
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["needy"],
        &[fixture_plugin("needy", "require", "")],
    );
    let config = weir::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let err = weir::check(&config).await.expect_err("configure must fail");
    assert_eq!(
        err,
        "plugin.needy: configure failed: missing field `required`"
    );
    // Edits declared for every response are checked at load as a hook's would be, and
    // the error names the frontend they were declared for.
    let fixed = toml.replace(
        "mode = \"require\"",
        "mode = \"tag\", fixed = [\"x-a\", \"bad name\"]",
    );
    let config = weir::Config::from_toml(&fixed, std::path::Path::new(".")).unwrap();
    let err = weir::check(&config)
        .await
        .expect_err("a bad edit must fail");
    assert!(
        err.starts_with("plugin.needy: ") && err.contains("response-edits(\"www\"): "),
        "{err}"
    );
    let toml = toml.replace("mode = \"require\"", "mode = \"tag\", colour = \"red\"");
    let config = weir::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let err = weir::check(&config)
        .await
        .expect_err("an unknown field must fail");
    assert!(
        err.starts_with("plugin.needy: configure failed: colour: unknown field `colour`")
            && !err.contains("column"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_canary_plugin_routes_by_header() {
    let (main, canary) = (
        MockServer::start("main").await,
        MockServer::start("canary").await,
    );
    let section = format!(
        "[plugin.canary]\nwasm = \"{}\"\nconfig = {{ backend = \"v2\", percent = 0, header = \"x-canary\" }}\n",
        weir_tests::CANARY_WASM
    );
    let toml = with_plugins(
        config("roundrobin", &[("main", main.addr, "")], ""),
        &["canary"],
        &[section],
    ) + &format!(
        "\n[backend.v2]\nservers = [{{ name = \"canary\", addr = \"{}\" }}]\n",
        canary.addr
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(client.get("/").await.server(), "main");
    let req = http::Request::get("/")
        .header("host", "a")
        .header("x-canary", "1")
        .body(weir_tests::empty())
        .unwrap();
    assert_eq!(client.send(req).await.server(), "canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_plugin_judges_servers_and_sets_their_weight() {
    let (s1, s2) = (MockServer::start("s1").await, MockServer::start("s2").await);
    let check =
        r#"health = { path = "/health", interval = "30ms", fall = 1, rise = 1, plugin = "judge" }"#;
    let list = [
        ("s1", s1.addr, "weight = 10"),
        ("s2", s2.addr, "weight = 10"),
    ];
    let toml = config("roundrobin", &list, check) + "\n" + &fixture_plugin("judge", "judge", "");
    let proxy = TestProxy::start(&toml).await;
    let b = proxy.running.backend("app").unwrap();
    let weight = |i: usize| {
        b.servers[i]
            .weight
            .load(std::sync::atomic::Ordering::SeqCst)
    };

    s2.set_health(418);
    weir_tests::wait_until(Duration::from_secs(2), || weight(1) == 1)
        .await
        .expect("the plugin lowered s2's weight");
    assert!(b.servers[1].health.is_up(), "degraded is not down");
    let seen = weir_tests::servers_seen(&mut Client::connect(proxy.addr()).await, "/", 22).await;
    assert_eq!(
        (seen.get("s1"), seen.get("s2")),
        (Some(&20), Some(&2)),
        "{seen:?}"
    );

    s2.set_health(503);
    weir_tests::wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .expect("the plugin took s2 down");
    let last = b.servers[1].health.snapshot().last_check.unwrap();
    assert_eq!(last.detail, "plugin: app says s2 is sick");

    s2.set_health(200);
    weir_tests::wait_until(Duration::from_secs(2), || {
        b.servers[1].health.is_up() && weight(1) == 10
    })
    .await
    .expect("back up at the configured weight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_naming_a_plugin_without_the_hook_is_refused() {
    let s1 = MockServer::start("s1").await;
    let check = r#"health = { path = "/health", plugin = "canary" }"#;
    let section = format!(
        "[plugin.canary]\nwasm = \"{}\"\nconfig = {{ backend = \"app\" }}\n",
        weir_tests::CANARY_WASM
    );
    let toml = config("roundrobin", &[("s1", s1.addr, "")], check) + "\n" + &section;
    let loaded = weir::Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let err = weir::check(&loaded)
        .await
        .expect_err("canary has no on-health-check");
    assert_eq!(
        err,
        "plugin.canary: backend app: its health check names a plugin without on-health-check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_server_that_refuses_is_left_on_redispatch() {
    let good = MockServer::start("good").await;
    let dead = weir_tests::closed_port().await;
    let toml = with_plugins(
        config(
            "roundrobin",
            &[("dead", dead, ""), ("good", good.addr, "")],
            "retries = 2",
        ),
        &["prefer"],
        &[section(
            "prefer",
            r#"{ mode = "route", server = "dead" }"#,
            "",
        )],
    );
    let proxy = TestProxy::start(&toml).await;
    let reply = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.server(), "good");
}

/// The fixture plugin `p` in mode `seen`, with `extra` config keys (", key = value").
fn seen(extra: &str) -> String {
    format!(
        "[plugin.p]\nwasm = \"{}\"\nconfig = {{ mode = \"seen\"{extra} }}\n",
        weir_tests::FIXTURE_WASM
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_gets_only_the_headers_it_asks_for() {
    let request = || {
        http::Request::get("/")
            .header("host", "a")
            .header("x-a", "1")
            .header("x-b", "2")
            .header("cookie", "c=1")
            .body(weir_tests::empty())
            .unwrap()
    };
    let needs = ", needs = [\"x-a\", \"Cookie\", \"X-Server\"]";
    let (_server, proxy) = proxy_with(&["p"], &[seen(needs)]).await;
    let reply = Client::connect(proxy.addr()).await.send(request()).await;
    assert_eq!(reply.json()["headers"]["x-seen"], "x-a,cookie");
    // The response has content-type and content-length too; only x-server was asked for.
    assert_eq!(reply.headers["x-seen-back"], "x-server");

    let (_server, proxy) = proxy_with(&["p"], &[seen("")]).await;
    let reply = Client::connect(proxy.addr()).await.send(request()).await;
    let all = reply.json()["headers"]["x-seen"]
        .as_str()
        .unwrap()
        .to_owned();
    for name in ["host", "x-a", "x-b", "cookie"] {
        assert!(all.split(',').any(|n| n == name), "{all}");
    }
    let back = reply.headers["x-seen-back"].to_str().unwrap();
    for name in ["x-server", "content-type"] {
        assert!(back.split(',').any(|n| n == name), "{back}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_gets_only_the_request_fields_it_asks_for() {
    let request = || {
        http::Request::get("/a?b=1")
            .header("host", "example.com")
            .body(weir_tests::empty())
            .unwrap()
    };
    let asked = ", fields = [\"path\", \"client-ip\", \"query\"]";
    let (_server, proxy) = proxy_with(&["p"], &[seen(asked)]).await;
    let reply = Client::connect(proxy.addr()).await.send(request()).await;
    assert_eq!(
        reply.json()["headers"]["x-seen-fields"],
        "path,query,client-ip"
    );

    let (_server, proxy) = proxy_with(&["p"], &[seen(", fields = []")]).await;
    let reply = Client::connect(proxy.addr()).await.send(request()).await;
    assert_eq!(reply.json()["headers"]["x-seen-fields"], "");

    let (_server, proxy) = proxy_with(&["p"], &[seen("")]).await;
    let reply = Client::connect(proxy.addr()).await.send(request()).await;
    assert_eq!(
        reply.json()["headers"]["x-seen-fields"],
        "method,path,query,host,client-ip,frontend,scheme,backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_gets_only_the_response_fields_it_asks_for() {
    let fields_back = |reply: &weir_tests::Reply| {
        reply.headers["x-seen-back-fields"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let asked = ", response_fields = [\"server\", \"path\", \"scheme\"]";
    let (_server, proxy) = proxy_with(&["p"], &[seen(asked)]).await;
    let reply = Client::connect(proxy.addr()).await.get("/a?b=1").await;
    assert_eq!(fields_back(&reply), "server,path,scheme");

    let (_server, proxy) = proxy_with(&["p"], &[seen(", response_fields = []")]).await;
    let reply = Client::connect(proxy.addr()).await.get("/a?b=1").await;
    assert_eq!(fields_back(&reply), "");

    let (_server, proxy) = proxy_with(&["p"], &[seen("")]).await;
    let reply = Client::connect(proxy.addr()).await.get("/a?b=1").await;
    assert_eq!(
        fields_back(&reply),
        "backend,server,method,path,client-ip,scheme,frontend"
    );
}

/// A plugin "routes" (the stock router: `/static` to backend "static") over backends "app"
/// (s1) and "static" (st), with `candidate` in its table and an admin listener.
async fn shadowed(candidate: &str) -> (MockServer, MockServer, TestProxy, String) {
    let (s1, st) = (MockServer::start("s1").await, MockServer::start("st").await);
    let section = format!(
        "[plugin.routes]\nstock = \"router\"\nconfig = {{ rules = [{{ path_beg = \"/static\", backend = \"static\" }}] }}\ncandidate = {candidate}\n"
    );
    let mut toml = with_plugins(
        config("roundrobin", &[("s1", s1.addr, "")], ""),
        &["routes"],
        &[section],
    );
    toml.push_str(&format!(
        "\n[backend.static]\nservers = [{{ name = \"st\", addr = \"{}\" }}]\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        st.addr
    ));
    let proxy = TestProxy::start(&toml).await;
    (s1, st, proxy, toml)
}

/// The candidate's report from the runtime API once it has compared `n` requests (the
/// shadow runs after the answer, so it may lag a little).
async fn candidate_report(proxy: &TestProxy, n: u64) -> serde_json::Value {
    let admin = proxy.running.admin_addr().unwrap();
    for _ in 0..500 {
        let report = Client::connect(admin)
            .await
            .get("/api/plugins/routes/candidate")
            .await
            .json();
        if report["on_request"]["compared"].as_u64() >= Some(n) {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the candidate did not compare {n} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_candidate_is_compared_on_every_request_and_decides_none() {
    // The candidate also sends /v2 to "static": it disagrees on one path of four.
    let (s1, st, proxy, _) = shadowed(
        r#"{ stock = "router", mode = "shadow", config = { rules = [{ path_beg = ["/static", "/v2"], backend = "static" }] } }"#,
    )
    .await;
    let mut c = Client::connect(proxy.addr()).await;
    for (path, server) in [
        ("/", "s1"),
        ("/static/a.css", "st"),
        ("/v2/users", "s1"),
        ("/x", "s1"),
    ] {
        let r = c.get(path).await;
        assert_eq!(
            (r.status.as_u16(), r.server()),
            (200, server.to_owned()),
            "{path}: the current version decides"
        );
    }
    assert_eq!((s1.requests(), st.requests()), (3, 1));
    let report = candidate_report(&proxy, 4).await;
    assert_eq!(report["on_request"]["compared"], 4);
    assert_eq!(report["on_request"]["outcomes"]["agree"], 3);
    assert_eq!(report["on_request"]["outcomes"]["backend"], 1);
    assert_eq!(report["on_request"]["disagreement_share"], 0.25);
    assert_eq!(report["candidate"]["calls"], 4);
    assert!(
        report["shadow_cpu_seconds"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    let sample = report["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 1, "{report}");
    assert_eq!(sample[0]["path"], "/v2/users");
    assert_eq!(sample[0]["method"], "GET");
    assert_eq!(sample[0]["kind"], "backend");
    assert_eq!(sample[0]["current"], "proceed");
    assert_eq!(sample[0]["candidate"], "proceed backend static");
    let admin = proxy.running.admin_addr().unwrap();
    let page = Client::connect(admin).await.get("/").await.text();
    assert!(
        page.contains("routes (candidate): latest disagreements"),
        "{page}"
    );
    assert!(
        page.contains("GET /v2/users</td><td>proceed</td><td>proceed backend static</td>"),
        "{page}"
    );
    assert!(page.contains("shadow: 1 of 4 disagree"), "{page}");
    let info = admin_get(&proxy, "/api/info").await;
    assert_eq!(info["plugins"][0]["candidate"]["mode"], "shadow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_candidate_never_touches_a_response() {
    let candidate = format!(
        r#"{{ wasm = "{}", mode = "shadow", config = {{ mode = "trap" }} }}"#,
        weir_tests::FIXTURE_WASM
    );
    let (_s1, _st, proxy, _) = shadowed(&candidate).await;
    let mut c = Client::connect(proxy.addr()).await;
    for path in ["/", "/static/a", "/b", "/static/c"] {
        let r = c.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["path"], path);
    }
    let report = candidate_report(&proxy, 4).await;
    assert_eq!(report["on_request"]["outcomes"]["trap"], 4);
    assert_eq!(report["candidate"]["traps"], 4);
    assert!(
        report["sample"][0]["candidate"]
            .as_str()
            .unwrap()
            .starts_with("failed: trapped")
    );
}

/// CPU time the calling thread has used (user and system, in the kernel's ticks).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // After the name in parentheses: state is field 3, utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SC_CLK_TCK is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The shadow's calls run on a thread of their own: a candidate that spins to its
/// deadline on every request spends none of the CPU of the thread that serves requests
/// (here the test's only thread, as with `threads = 1`).
#[tokio::test(flavor = "current_thread")]
async fn a_shadow_call_never_runs_on_the_thread_that_serves_requests() {
    let candidate = format!(
        r#"{{ wasm = "{}", mode = "shadow", timeout = "200ms", config = {{ mode = "loop" }} }}"#,
        weir_tests::FIXTURE_WASM
    );
    let (_s1, _st, proxy, _) = shadowed(&candidate).await;
    let mut c = Client::connect(proxy.addr()).await;
    let before = thread_cpu();
    for _ in 0..10 {
        assert_eq!(c.get("/").await.status, 200);
    }
    let report = candidate_report(&proxy, 10).await;
    let used = thread_cpu() - before;
    assert_eq!(report["on_request"]["outcomes"]["timeout"], 10, "{report}");
    // The ten calls spun for 2 s of CPU in all, on another thread.
    assert!(used < Duration::from_millis(700), "{used:?}");
    assert!(
        report["shadow_cpu_seconds"].as_f64().unwrap() >= 1.9,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_without_the_candidate_removes_it_and_a_broken_one_is_refused() {
    let candidate = r#"{ stock = "router", mode = "shadow", config = { rules = [] } }"#;
    let (_s1, _st, proxy, toml) = shadowed(candidate).await;
    let admin = proxy.running.admin_addr().unwrap();
    let r = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(r.status, 200);
    candidate_report(&proxy, 1).await;

    // A candidate whose configure fails: the reload is refused, the candidate stays.
    let broken = toml.replace("config = { rules = [] }", "config = { rules = 3 }");
    let config = weir::Config::from_toml(&broken, std::path::Path::new(".")).unwrap();
    let err = proxy
        .running
        .reload(&config)
        .await
        .expect_err("a broken candidate");
    assert!(
        err.to_string()
            .contains("routes: candidate: configure failed"),
        "{err}"
    );
    let report = candidate_report(&proxy, 1).await;
    assert_eq!(report["mode"], "shadow");

    let without = toml.replace(&format!("candidate = {candidate}\n"), "");
    let config = weir::Config::from_toml(&without, std::path::Path::new(".")).unwrap();
    proxy.running.reload(&config).await.unwrap();
    let gone = Client::connect(admin)
        .await
        .get("/api/plugins/routes/candidate")
        .await;
    assert_eq!(gone.status, 404);
    assert!(gone.text().contains("has no candidate"), "{}", gone.text());
}

/// GET `path` on the admin listener, as JSON.
async fn admin_get(proxy: &TestProxy, path: &str) -> serde_json::Value {
    let admin = proxy.running.admin_addr().unwrap();
    Client::connect(admin).await.get(path).await.json()
}

/// POST `path` on the admin listener with an empty body.
async fn admin_post(proxy: &TestProxy, path: &str) -> weir_tests::Reply {
    let admin = proxy.running.admin_addr().unwrap();
    let req = http::Request::post(path)
        .header("host", "admin")
        .body(weir_tests::empty())
        .unwrap();
    Client::connect(admin).await.send(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_decides_for_its_share_of_clients_each_staying_on_its_side() {
    // The candidate sends everything to "static"; the current version only /static.
    let (s1, st, proxy, _) = shadowed(
        r#"{ stock = "router", mode = "canary", percent = 50, config = { rules = [{ path_beg = "/", backend = "static" }] } }"#,
    )
    .await;
    let mut on_candidate = 0;
    for i in 1..=40u8 {
        let from = std::net::IpAddr::from([127, 0, 3, i]);
        let mut c = Client::connect_from(proxy.addr(), from).await;
        let first = c.get("/a").await.server();
        for _ in 0..2 {
            assert_eq!(
                c.get("/b").await.server(),
                first,
                "client {from} stays on its side"
            );
        }
        on_candidate += usize::from(first == "st");
    }
    assert!(
        (8..=32).contains(&on_candidate),
        "about half of 40 clients on the canary: {on_candidate}"
    );
    assert_eq!(st.requests(), on_candidate * 3);
    assert_eq!(s1.requests(), (40 - on_candidate) * 3);
    let report = admin_get(&proxy, "/api/plugins/routes/candidate").await;
    assert_eq!(report["mode"], "canary");
    assert_eq!(report["percent"], 50.0);
    assert_eq!(report["candidate"]["calls"], on_candidate as u64 * 3);
    assert_eq!(report["current"]["calls"], (40 - on_candidate) as u64 * 3);
    let metrics = Client::connect(proxy.running.admin_addr().unwrap())
        .await
        .get("/metrics")
        .await
        .text();
    assert!(
        metrics.contains(&format!(
            "weir_plugin_calls_total{{plugin=\"routes (candidate)\"}} {}",
            on_candidate * 3
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_taken_out_by_itself() {
    let candidate = format!(
        r#"{{ wasm = "{}", mode = "canary", percent = 100, max_failures = "10%", config = {{ mode = "trap" }} }}"#,
        weir_tests::FIXTURE_WASM
    );
    let (s1, _st, proxy, _) = shadowed(&candidate).await;
    let mut c = Client::connect(proxy.addr()).await;
    let mut refused = 0;
    for _ in 0..30 {
        let r = c.get("/a").await;
        if r.status == 503 {
            refused += 1;
            // A fail-closed failure closes nothing: the next request goes on.
        } else {
            assert_eq!(r.status, 200);
        }
    }
    // Every call failed: taken out at the 20th (the fewest calls a window is judged on);
    // from then on the current version decides.
    assert_eq!(
        refused, 20,
        "fail-closed: the candidate's failures cost their requests a 503"
    );
    assert_eq!(s1.requests(), 10);
    let report = admin_get(&proxy, "/api/plugins/routes/candidate").await;
    assert_eq!(report["taken_out"], "by failures");
    assert_eq!(report["candidate"]["calls"], 20);
    assert_eq!(report["candidate"]["traps"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_promote_through_the_api() {
    let (s1, st, proxy, _) = shadowed(
        r#"{ stock = "router", mode = "canary", percent = 100, config = { rules = [{ path_beg = "/", backend = "static" }] } }"#,
    )
    .await;
    let mut c = Client::connect(proxy.addr()).await;
    assert_eq!(
        c.get("/a").await.server(),
        "st",
        "the canary decides for every client"
    );

    let r = admin_post(&proxy, "/api/plugins/routes/abort").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["persisted"], false);
    assert!(
        r.json()["note"]
            .as_str()
            .unwrap()
            .contains("persist is off")
    );
    assert_eq!(
        c.get("/a").await.server(),
        "s1",
        "taken out: the current version decides"
    );
    let report = admin_get(&proxy, "/api/plugins/routes/candidate").await;
    assert_eq!(report["taken_out"], "by hand");

    let r = admin_post(&proxy, "/api/plugins/routes/promote").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(
        c.get("/a").await.server(),
        "st",
        "promoted: the candidate's rules decide"
    );
    let info = admin_get(&proxy, "/api/info").await;
    assert!(info["plugins"][0]["candidate"].is_null(), "{info}");
    let r = admin_post(&proxy, "/api/plugins/routes/promote").await;
    assert_eq!(r.status, 404);
    let r = admin_post(&proxy, "/api/plugins/nope/abort").await;
    assert_eq!(r.status, 404);
    assert_eq!((s1.requests(), st.requests()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_persist_a_promotion_is_written_to_the_config_file() {
    let (s1, st) = (MockServer::start("s1").await, MockServer::start("st").await);
    let dir = weir_tests::scratch_dir("candidate-persist");
    let file = dir.join("weir.toml");
    let text = format!(
        "# Routing, by the router stock plugin.\n\
         [[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\nplugins = [\"routes\"]\n\n\
         [backend.app]\nservers = [{{ name = \"s1\", addr = \"{}\" }}]\n\n\
         [backend.static]\nservers = [{{ name = \"st\", addr = \"{}\" }}]\n\n\
         [plugin.routes]\nstock = \"router\"   # v1\nconfig = {{ rules = [] }}\n\
         candidate = {{ stock = \"router\", mode = \"shadow\", config = {{ rules = [{{ path_beg = \"/\", backend = \"static\" }}] }} }}\n\n\
         [admin]\nbind = \"127.0.0.1:0\"\npersist = true\n",
        s1.addr, st.addr
    );
    std::fs::write(&file, &text).unwrap();
    let config = weir::Config::from_file(&file).unwrap();
    let running = weir::start(&config, weir::AccessLog::disabled())
        .await
        .unwrap();
    let mut c = Client::connect(running.addr("www")).await;
    assert_eq!(c.get("/a").await.server(), "s1", "a shadow decides nothing");
    let req = http::Request::post("/api/plugins/routes/promote")
        .header("host", "admin")
        .body(weir_tests::empty())
        .unwrap();
    let r = Client::connect(running.admin_addr().unwrap())
        .await
        .send(req)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["persisted"], true);
    assert_eq!(c.get("/a").await.server(), "st");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.starts_with("# Routing, by the router stock plugin.\n"),
        "{written}"
    );
    assert!(!written.contains("candidate"), "{written}");
    assert!(written.contains("backend = \"static\""), "{written}");
    // The file now says what runs: loading it again gives the same routing.
    let again = weir::Config::from_file(&file).unwrap();
    assert!(again.plugins[0].candidate.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_compares_responses_too_and_shows_values_when_asked() {
    let server = MockServer::start("s1").await;
    let wasm = weir_tests::FIXTURE_WASM;
    let section = format!(
        "[plugin.tags]\nwasm = \"{wasm}\"\nconfig = {{ mode = \"tag\", tag = \"v1\" }}\n\
         candidate = {{ wasm = \"{wasm}\", mode = \"shadow\", sample_values = true, config = {{ mode = \"tag\", tag = \"v2\" }} }}\n"
    );
    let mut toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["tags"],
        &[section],
    );
    toml.push_str("\n[admin]\nbind = \"127.0.0.1:0\"\n");
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    for _ in 0..2 {
        let r = c.get("/a").await;
        assert_eq!(
            r.json()["headers"]["x-chain"],
            "v1",
            "the current version's edit"
        );
        assert_eq!(r.headers["x-chain-back"], "v1");
    }
    let admin = proxy.running.admin_addr().unwrap();
    let mut report = serde_json::Value::Null;
    for _ in 0..200 {
        report = Client::connect(admin)
            .await
            .get("/api/plugins/tags/candidate")
            .await
            .json();
        if report["on_response"]["compared"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(report["on_request"]["outcomes"]["edits"], 2, "{report}");
    assert_eq!(report["on_response"]["outcomes"]["edits"], 2, "{report}");
    assert_eq!(report["on_response"]["disagreement_share"], 1.0);
    let sample = report["sample"].as_array().unwrap();
    let response = sample.iter().find(|d| d["hook"] == "on-response").unwrap();
    assert_eq!(response["current"], "proceed; append x-chain-back: v1");
    assert_eq!(response["candidate"], "proceed; append x-chain-back: v2");
    let request = sample.iter().find(|d| d["hook"] == "on-request").unwrap();
    assert_eq!(request["candidate"], "proceed; append x-chain: v2");
}
