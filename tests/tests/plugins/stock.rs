//! The stock plugins, embedded in weir, through the real proxy.

use std::path::Path;
use std::time::Duration;

use weir::upstream::AdminState;
use weir_tests::{Client, MockServer, TestProxy, config, stock_plugin, wait_until, with_plugins};

fn load(toml: &str) -> weir::Config {
    weir::Config::from_toml(toml, Path::new(".")).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// One server "s1" behind frontend "www" whose chain is one stock plugin: the server
/// and the config text.
async fn one_stock(name: &str, stock: &str, config_table: &str) -> (MockServer, String) {
    let server = MockServer::start("s1").await;
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &[name],
        &[stock_plugin(name, stock, config_table)],
    );
    (server, toml)
}

/// A frontend over backend "app" (s1, s2) and backend "static" (st), with the chain.
async fn two_backends(
    chain: &[&str],
    sections: &[String],
) -> (MockServer, MockServer, MockServer, TestProxy) {
    let (s1, s2, st) = (
        MockServer::start("s1").await,
        MockServer::start("s2").await,
        MockServer::start("st").await,
    );
    let mut toml = with_plugins(
        config(
            "roundrobin",
            &[("s1", s1.addr, ""), ("s2", s2.addr, "")],
            "",
        ),
        chain,
        sections,
    );
    toml.push_str(&format!(
        "\n[backend.static]\nservers = [{{ name = \"st\", addr = \"{}\" }}]\n",
        st.addr
    ));
    let proxy = TestProxy::start(&toml).await;
    (s1, s2, st, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_routes_denies_and_redirects_by_rule() {
    let rules = r#"{ rules = [
        { path_beg = ["/static", "/images"], backend = "static" },
        { path_beg = "/admin", src_not = ["10.0.0.0/8"], deny = 403 },
        { path = "/old", redirect = { location = "https://example.com/new", code = 301 } },
        { method = "DELETE", header = { name = "x-role", exact = "admin" }, path_beg = "/api", backend = "static", set_path = "/deleted" },
    ] }"#;
    let (s1, s2, st, proxy) =
        two_backends(&["routes"], &[stock_plugin("routes", "router", rules)]).await;
    let mut c = Client::connect(proxy.addr()).await;
    let r = c.get("/images/logo.png").await;
    assert_eq!((r.status.as_u16(), r.server()), (200, "st".to_owned()));
    let r = c.get("/app/page").await;
    assert_ne!(
        r.server(),
        "st",
        "unmatched requests go to the default backend"
    );

    let before = s1.requests() + s2.requests() + st.requests();
    let r = c.get("/admin/users").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "Forbidden\n");
    let r = c.get("/old").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], "https://example.com/new");
    assert_eq!(
        s1.requests() + s2.requests() + st.requests(),
        before,
        "denied and redirected requests reach no server"
    );

    let del = |role: &str| {
        http::Request::delete("/api/item/7")
            .header("host", "x")
            .header("x-role", role)
            .body(weir_tests::empty())
            .unwrap()
    };
    let r = c.send(del("admin")).await;
    assert_eq!(r.server(), "st");
    assert_eq!(r.json()["path"], "/deleted");
    let r = c.send(del("guest")).await;
    assert_ne!(r.server(), "st");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_refuses_an_unknown_backend_at_load() {
    let (_server, toml) = one_stock(
        "routes",
        "router",
        r#"{ rules = [{ path_beg = "/", backend = "nope" }] }"#,
    )
    .await;
    let err = weir::check(&load(&toml))
        .await
        .expect_err("unknown backend");
    assert_eq!(
        err,
        "plugin.routes: configure failed: rules[0].backend: no backend \"nope\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_stock_plugin_is_a_config_error_with_the_line() {
    let toml = "[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\n\
                [backend.app]\nservers = [{ name = \"s1\", addr = \"127.0.0.1:9\" }]\n\n\
                [plugin.x]\nstock = \"routr\"\n";
    let err = weir::Config::from_toml(toml, Path::new("."))
        .expect_err("unknown stock plugin")
        .to_string();
    assert!(
        err.contains("plugin.x.stock") && err.contains("line 10") && err.contains("router"),
        "{err}"
    );
}

/// The server a reply came from, and the SERVERID cookie it set, if any.
fn served(reply: &weir_tests::Reply) -> (String, Option<String>) {
    let cookie = reply
        .headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (reply.server(), cookie)
}

async fn get_with_cookie(c: &mut Client, cookie: Option<&str>) -> weir_tests::Reply {
    let mut req = http::Request::get("/").header("host", "x");
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    c.send(req.body(weir_tests::empty()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_pin_a_client_and_move_it_when_its_server_goes() {
    let (_s1, _s2, _st, proxy) = two_backends(
        &["sticky"],
        &[stock_plugin(
            "sticky",
            "sticky-session",
            "{ httponly = true }",
        )],
    )
    .await;
    let mut c = Client::connect(proxy.addr()).await;
    let first = get_with_cookie(&mut c, None).await;
    let (home, set) = served(&first);
    assert_eq!(
        set.as_deref(),
        Some(format!("SERVERID={home}; Path=/; HttpOnly").as_str())
    );
    assert_eq!(first.headers["cache-control"], "private");

    let cookie = format!("lang=en; SERVERID={home}");
    for _ in 0..6 {
        let r = get_with_cookie(&mut c, Some(&cookie)).await;
        assert_eq!(served(&r), (home.clone(), None), "a pinned client stays");
        assert_eq!(
            r.json()["headers"]["cookie"],
            "lang=en",
            "the server never sees the persistence cookie"
        );
    }

    // Draining keeps the sessions already there; new clients go elsewhere.
    let b = proxy.running.backend("app").unwrap();
    b.set_admin(&home, AdminState::Drain).unwrap();
    let r = get_with_cookie(&mut c, Some(&cookie)).await;
    assert_eq!(served(&r).0, home);
    for _ in 0..3 {
        assert_ne!(get_with_cookie(&mut c, None).await.server(), home);
    }

    // In maintenance, the client moves on without an error and the cookie follows.
    b.set_admin(&home, AdminState::Maint).unwrap();
    let r = get_with_cookie(&mut c, Some(&cookie)).await;
    assert_eq!(r.status, 200);
    let (other, set) = served(&r);
    assert_ne!(other, home);
    assert_eq!(
        set.as_deref(),
        Some(format!("SERVERID={other}; Path=/; HttpOnly").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_past_the_limit_and_keeps_counting_across_reloads() {
    let (server, toml) = one_stock(
        "limit",
        "rate-limit",
        r#"{ requests = 3, window = "1m", key = "header:x-api-key" }"#,
    )
    .await;
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    let keyed = |key: &str| {
        http::Request::get("/")
            .header("host", "x")
            .header("x-api-key", key)
            .body(weir_tests::empty())
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(c.send(keyed("alice")).await.status, 200);
    }
    let refused = c.send(keyed("alice")).await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
    assert_eq!(server.requests(), 3, "refused requests reach no server");
    assert_eq!(
        c.send(keyed("bob")).await.status,
        200,
        "bob has his own count"
    );
    // With the memory store its counts never wait: its calls ran on the caller's stack.
    assert!(proxy.running.plugins()[0].calls_on_stack());

    // A reload builds new instances; the counts are the host's and carry over.
    proxy.running.reload(&load(&toml)).await.expect("reload");
    let mut c = Client::connect(proxy.addr()).await;
    assert_eq!(c.send(keyed("alice")).await.status, 429);
    assert_eq!(server.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_are_added_without_duplicating_the_servers() {
    let (_server, toml) = one_stock(
        "secure",
        "security-headers",
        r#"{ content_security_policy = "default-src 'self'" }"#,
    )
    .await;
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    let r = c
        .get("/headers?x-frame-options=DENY&server=nginx&x-powered-by=PHP")
        .await;
    let all = |name: &str| -> Vec<String> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("x-frame-options"), ["DENY"], "the server's value wins");
    assert_eq!(all("x-content-type-options"), ["nosniff"]);
    assert_eq!(all("referrer-policy"), ["strict-origin-when-cross-origin"]);
    assert_eq!(all("content-security-policy"), ["default-src 'self'"]);
    assert!(all("server").is_empty() && all("x-powered-by").is_empty());
    assert!(
        all("strict-transport-security").is_empty(),
        "no HSTS over plain http"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_redirect_plain_http_to_https() {
    let (server, toml) = one_stock("secure", "security-headers", "{ https_redirect = true }").await;
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    let req = http::Request::get("/shop/cart?item=3")
        .header("host", "shop.example.com:8080")
        .body(weir_tests::empty())
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.headers["location"],
        "https://shop.example.com/shop/cart?item=3"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rewrite_edits_requests_and_responses_with_variables() {
    let server = MockServer::start("s1").await;
    let rewrite = r#"{ request = [
        { set = "x-request-id", value = "%[request_id]" },
        { set = "x-client", value = "%[src] on %[frontend] to %[backend]" },
        { del = "x-internal-token" },
        { replace = "user-agent", regex = "^curl/.*", with = "a script" },
        { set_path = "/v2%[path]" },
    ], response = [
        { set = "x-served-by", value = "%[backend]/%[server] (%[status])" },
        { replace = "set-cookie", regex = "; *Domain=[^;]*", with = "" },
        { set = "x-request-id", value = "%[request_id]" },
    ] }"#;
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["rewrite"],
        &[stock_plugin("rewrite", "header-rewrite", rewrite)],
    );
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let req = http::Request::get("/headers?set-cookie=a=1%3B%20Domain=internal%3B%20Path=/")
            .header("host", "x")
            .header("x-internal-token", "secret")
            .header("user-agent", "curl/8.0")
            .body(weir_tests::empty())
            .unwrap();
        let r = c.send(req).await;
        let seen = r.json();
        assert_eq!(seen["path"], "/v2/headers");
        assert_eq!(seen["headers"]["x-client"], "127.0.0.1 on www to app");
        assert_eq!(seen["headers"]["user-agent"], "a script");
        assert!(seen["headers"].get("x-internal-token").is_none());
        let id = seen["headers"]["x-request-id"].as_str().unwrap().to_owned();
        assert_eq!(id.len(), 16);
        assert_eq!(r.headers["x-request-id"], id.as_str(), "one id per request");
        assert_eq!(r.headers["x-served-by"], "app/s1 (200)");
        assert_eq!(r.headers["set-cookie"], "a=1; Path=/");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_edits_are_made_in_the_plugins_place_without_calling_it() {
    let server = MockServer::start("s1").await;
    // `fixed` edits every request and response alike: weir makes its edits itself.
    let fixed = r#"{ request = [
        { set = "x-fixed", value = "1" },
        { del = "x-internal-token" },
    ], response = [
        { del = "x-powered-by" },
        { set = "x-order", value = "fixed" },
    ] }"#;
    // `called` reads what `fixed` did (after it on requests, before it on responses).
    let called = r#"{ request = [
        { replace = "x-fixed", regex = "1", with = "seen" },
    ], response = [
        { set = "x-order", value = "called %[status]" },
        { add = "x-called", value = "%[status]" },
    ] }"#;
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["fixed", "called"],
        &[
            stock_plugin("fixed", "header-rewrite", fixed),
            stock_plugin("called", "header-rewrite", called),
        ],
    );
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    for _ in 0..3 {
        let req = http::Request::get("/headers?x-powered-by=php")
            .header("host", "x")
            .header("x-internal-token", "secret")
            .body(weir_tests::empty())
            .unwrap();
        let r = c.send(req).await;
        let seen = r.json();
        assert_eq!(seen["headers"]["x-fixed"], "seen");
        assert!(seen["headers"].get("x-internal-token").is_none());
        assert!(r.headers.get("x-powered-by").is_none());
        assert_eq!(r.headers["x-order"], "fixed");
        assert_eq!(r.headers["x-called"], "200");
    }
    let calls = |name: &str| {
        let plugins = proxy.running.plugins();
        let p = plugins.iter().find(|p| &*p.name == name).unwrap();
        p.stats.calls.load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(calls("fixed"), 0, "no call for fixed edits");
    assert_eq!(
        calls("called"),
        6,
        "on-request and on-response, three times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_naming_the_frontend_are_fixed_per_frontend() {
    let server = MockServer::start("s1").await;
    // One plugin section in two frontends' chains: each frontend gets its own name,
    // made by weir from the edits the plugin declared for it, without a call.
    let rewrite = r#"{ request = [
        { set = "x-fe", value = "via %[frontend]" },
    ], response = [
        { add = "x-served-on", value = "%[frontend]" },
    ] }"#;
    let mut toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["rw"],
        &[stock_plugin("rw", "header-rewrite", rewrite)],
    );
    toml.push_str(
        "\n[[frontend]]\nname = \"api\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\nplugins = [\"rw\"]\n",
    );
    let proxy = TestProxy::start(&toml).await;
    for frontend in ["www", "api", "www"] {
        let mut c = Client::connect(proxy.running.addr(frontend)).await;
        let r = c.get("/headers").await;
        assert_eq!(r.json()["headers"]["x-fe"], format!("via {frontend}"));
        assert_eq!(r.headers["x-served-on"], frontend);
    }
    let plugins = proxy.running.plugins();
    let rw = plugins.iter().find(|p| &*p.name == "rw").unwrap();
    let calls = rw.stats.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(calls, 0, "no call for edits fixed per frontend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_json_reads_the_status_field_and_degrades_weight() {
    let (s1, s2, s3) = (
        MockServer::start("s1").await,
        MockServer::start("s2").await,
        MockServer::start("s3").await,
    );
    s1.set_health_body(r#"{"status": "healthy", "version": 3}"#);
    s2.set_health_body(r#"{"status": "degraded"}"#);
    s3.set_health_body(r#"{"status": "failing"}"#);
    let mut toml = config(
        "roundrobin",
        &[
            ("s1", s1.addr, "weight = 10"),
            ("s2", s2.addr, "weight = 10"),
            ("s3", s3.addr, "weight = 10"),
        ],
        "health = { path = \"/health\", interval = \"50ms\", rise = 1, fall = 1, plugin = \"hj\" }",
    );
    toml.push('\n');
    toml.push_str(&stock_plugin(
        "hj",
        "health-json",
        r#"{ field = "status", expect = "healthy", degraded = "degraded", degraded_weight = 2 }"#,
    ));
    let proxy = TestProxy::start(&toml).await;
    let b = proxy.running.backend("app").unwrap();
    let weight = |i: usize| {
        b.servers[i]
            .weight
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_until(Duration::from_secs(3), || {
        !b.servers[2].health.is_up() && weight(1) == 2
    })
    .await
    .expect("s3 down and s2 at the degraded weight");
    assert!(b.servers[0].health.is_up() && weight(0) == 10);
    assert!(b.servers[1].health.is_up());

    let mut c = Client::connect(proxy.addr()).await;
    let mut counts = [0usize; 3];
    for _ in 0..24 {
        match c.get("/").await.server().as_str() {
            "s1" => counts[0] += 1,
            "s2" => counts[1] += 1,
            other => panic!("{other} is down"),
        }
    }
    assert_eq!(counts, [20, 4, 0], "weights 10 and 2");

    // Recovery: the field says healthy again.
    s3.set_health_body(r#"{"status": "healthy"}"#);
    wait_until(Duration::from_secs(3), || b.servers[2].health.is_up())
        .await
        .expect("s3 back up");
}

/// A GET with a Host header and extra headers, on `c`.
async fn get_as(
    c: &mut Client,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> weir_tests::Reply {
    let mut req = http::Request::get(path).header("host", host);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    c.send(req.body(weir_tests::empty()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_matches_hosts_suffixes_regexes_queries_and_header_values() {
    let rules = r#"{ rules = [
        { host = "*.static.example.com", backend = "static" },
        { path_end = [".php", ".asp"], deny = 403 },
        { path_reg = "^/v[0-9]+/internal/", deny = 404 },
        { query = { name = "view", exact = "raw" }, backend = "static" },
        { header = { name = "user-agent", contains = "bot" }, deny = 429 },
        { header = "x-canary", header_not = { name = "x-canary", prefix = "off" }, backend = "static" },
        { path_beg_not = "/app", deny = 410 },
    ] }"#;
    let (_s1, _s2, _st, proxy) =
        two_backends(&["routes"], &[stock_plugin("routes", "router", rules)]).await;
    let mut c = Client::connect(proxy.addr()).await;
    let status = |r: &weir_tests::Reply| r.status.as_u16();
    let r = get_as(&mut c, "/app/x", "img.static.example.com:8080", &[]).await;
    assert_eq!(r.server(), "st", "wildcard host, port ignored");
    let r = get_as(&mut c, "/app/x", "static.example.com", &[]).await;
    assert_ne!(r.server(), "st", "the wildcard needs a subdomain");
    assert_eq!(
        status(&get_as(&mut c, "/app/index.php", "a", &[]).await),
        403
    );
    assert_eq!(
        status(&get_as(&mut c, "/v2/internal/k", "a", &[]).await),
        404
    );
    assert_eq!(
        get_as(&mut c, "/app/f?view=raw", "a", &[]).await.server(),
        "st"
    );
    assert_ne!(
        get_as(&mut c, "/app/f?view=rawx", "a", &[]).await.server(),
        "st"
    );
    let bot = [("user-agent", "a crawling bot/1.0")];
    assert_eq!(status(&get_as(&mut c, "/app/", "a", &bot).await), 429);
    let on = [("x-canary", "on")];
    assert_eq!(get_as(&mut c, "/app/", "a", &on).await.server(), "st");
    let off = [("x-canary", "off-now")];
    assert_ne!(get_as(&mut c, "/app/", "a", &off).await.server(), "st");
    assert_eq!(status(&get_as(&mut c, "/elsewhere", "a", &[]).await), 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_with_a_key_hide_server_names() {
    let (_s1, _s2, _st, proxy) = two_backends(
        &["sticky"],
        &[stock_plugin(
            "sticky",
            "sticky-session",
            r#"{ key = "a secret of some length", secure = true, samesite = "Strict", max_idle = "30m", nocache = false }"#,
        )],
    )
    .await;
    let mut c = Client::connect(proxy.addr()).await;
    let first = get_with_cookie(&mut c, None).await;
    let (home, set) = served(&first);
    let set = set.expect("a cookie");
    assert!(
        first.headers.get("cache-control").is_none(),
        "nocache is off"
    );
    assert!(set.ends_with("; Path=/; Secure; SameSite=Strict"), "{set}");
    let value = set
        .strip_prefix("SERVERID=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let token = value.split('|').next().unwrap();
    assert_eq!(token.len(), 16, "{value}");
    assert!(!value.contains(&home), "the server's name is not exposed");
    let cookie = format!("SERVERID={value}");
    for _ in 0..4 {
        let r = get_with_cookie(&mut c, Some(&cookie)).await;
        assert_eq!(served(&r), (home.clone(), None));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_by_address_with_burst_and_an_allow_list() {
    let (server, toml) = one_stock(
        "limit-src",
        "rate-limit",
        r#"{ requests = 2, burst = 1, window = "1m" }"#,
    )
    .await;
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.status, 200, "requests + burst");
    }
    assert_eq!(c.get("/").await.status, 429);
    assert_eq!(server.requests(), 3);

    let (server, toml) = one_stock(
        "allowed",
        "rate-limit",
        r#"{ requests = 1, window = "1m", allow = ["127.0.0.0/8"] }"#,
    )
    .await;
    let proxy = TestProxy::start(&toml).await;
    let mut c = Client::connect(proxy.addr()).await;
    for _ in 0..4 {
        assert_eq!(c.get("/").await.status, 200, "127.0.0.1 is never limited");
    }
    assert_eq!(server.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_override_replaces_the_servers_value() {
    let (_server, toml) = one_stock(
        "secure",
        "security-headers",
        r#"{ override = true, referrer_policy = "no-referrer", remove = [] }"#,
    )
    .await;
    let proxy = TestProxy::start(&toml).await;
    let r = Client::connect(proxy.addr())
        .await
        .get("/headers?x-frame-options=ALLOWALL&referrer-policy=unsafe-url&server=nginx")
        .await;
    let all = |name: &str| -> Vec<String> {
        r.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(all("x-frame-options"), ["SAMEORIGIN"]);
    assert_eq!(all("referrer-policy"), ["no-referrer"]);
    assert_eq!(all("server"), ["nginx"], "remove = [] keeps it");
}
