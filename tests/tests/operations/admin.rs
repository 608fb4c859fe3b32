//! The admin listener's runtime API, through real HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use weir_tests::{
    Client, MockServer, Reply, SlowFile, TestProxy, config, fixture_plugin, with_plugins,
};

const ADMIN: &str = "\n[admin]\nbind = \"127.0.0.1:0\"\n";

async fn call(addr: SocketAddr, method: Method, path: &str, body: &str) -> Reply {
    call_as(addr, method, path, body, None).await
}

async fn call_as(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> Reply {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    Client::connect(addr)
        .await
        .send(req.body(weir_tests::body(body.to_owned())).unwrap())
        .await
}

async fn set_state(admin: SocketAddr, server: &str, state: &str) -> Reply {
    let path = format!("/api/backends/app/servers/{server}/state");
    call(
        admin,
        Method::POST,
        &path,
        &format!("{{\"state\": \"{state}\"}}"),
    )
    .await
}

fn server_in<'a>(backends: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    backends["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

async fn two_servers(extra: &str) -> (MockServer, MockServer, TestProxy, SocketAddr) {
    let (s1, s2) = (MockServer::start("s1").await, MockServer::start("s2").await);
    let mut toml = config(
        "roundrobin",
        &[("s1", s1.addr, ""), ("s2", s2.addr, "")],
        "",
    );
    toml.push_str(extra);
    let proxy = TestProxy::start(&toml).await;
    let admin = proxy.running.admin_addr().expect("admin listener");
    (s1, s2, proxy, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_servers_and_changes_their_state_and_weight() {
    let (_s1, _s2, proxy, admin) = two_servers(ADMIN).await;
    let r = call(admin, Method::GET, "/api/backends", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let all = r.json();
    assert_eq!(all["backends"][0]["name"], "app");
    for name in ["s1", "s2"] {
        let s = server_in(&all, name);
        assert_eq!(
            (&s["status"], &s["state"], &s["weight"]),
            (&"UP".into(), &"ready".into(), &1.into())
        );
    }

    let r = set_state(admin, "s1", "drain").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["status"].as_str()),
        (Some("drain"), Some("DRAIN"))
    );
    let mut c = Client::connect(proxy.addr()).await;
    for _ in 0..4 {
        assert_eq!(
            c.get("/").await.server(),
            "s2",
            "a draining server gets no new requests"
        );
    }

    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s2/weight",
        r#"{"weight": 7}"#,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["weight"].as_u64()),
        (200, Some(7))
    );
    let b = proxy.running.backend("app").unwrap();
    assert_eq!(
        b.servers[1]
            .weight
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );

    let r = set_state(admin, "s1", "maint").await;
    assert_eq!(r.json()["status"], "MAINT");
    let info = call(admin, Method::GET, "/api/info", "").await.json();
    assert_eq!(info["generation"], 1);
    assert!(info["version"].is_string() && info["uptime_s"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_json_error_and_changes_nothing() {
    let (_s1, _s2, proxy, admin) = two_servers(ADMIN).await;
    let state = "/api/backends/app/servers/s1/state";
    let cases: [(Method, &str, &str, u16); 9] = [
        (
            Method::POST,
            "/api/backends/nope/servers/s1/state",
            r#"{"state": "drain"}"#,
            404,
        ),
        (
            Method::POST,
            "/api/backends/app/servers/nope/state",
            r#"{"state": "drain"}"#,
            404,
        ),
        (Method::POST, state, "{not json", 400),
        (Method::POST, state, r#"{"state": "sleeping"}"#, 400),
        (Method::POST, state, r#"{"stat": "drain"}"#, 400),
        (
            Method::POST,
            "/api/backends/app/servers/s1/weight",
            r#"{"weight": 300}"#,
            400,
        ),
        (
            Method::POST,
            "/api/backends/app/servers/s1/weight",
            r#"{"weight": -1}"#,
            400,
        ),
        (Method::GET, state, "", 405),
        (Method::GET, "/api/nothing", "", 404),
    ];
    for (method, path, body, status) in cases {
        let r = call(admin, method.clone(), path, body).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path} {body}");
        assert!(
            r.json()["error"].is_string(),
            "{method} {path}: {}",
            r.text()
        );
    }
    let b = proxy.running.backend("app").unwrap();
    assert_eq!(b.servers[0].admin(), weir::upstream::AdminState::Ready);
    assert_eq!(
        b.servers[0]
            .weight
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_guards_every_route() {
    let (_s1, _s2, _proxy, admin) = two_servers(&format!(
        "{ADMIN}auth = {{ user = \"admin\", password = \"s3cr3t\" }}\n"
    ))
    .await;
    for path in ["/", "/;csv", "/metrics", "/api/info", "/api/backends"] {
        let r = call(admin, Method::GET, path, "").await;
        assert_eq!(r.status, 401);
        assert_eq!(r.headers["www-authenticate"], "Basic realm=\"weir\"");
        // "admin:wrong"
        let r = call_as(admin, Method::GET, path, "", Some("Basic YWRtaW46d3Jvbmc=")).await;
        assert_eq!(r.status, 401);
        // "admin:s3cr3t"
        let r = call_as(admin, Method::GET, path, "", Some("Basic YWRtaW46czNjcjN0")).await;
        assert_eq!(r.status, 200);
    }
    let r = set_state(admin, "s1", "maint").await;
    assert_eq!(r.status, 401, "no change without credentials");
}

fn write_config(path: &PathBuf, server: &MockServer, tag: &str) {
    std::fs::write(path, config_text(server, tag)).unwrap();
}

/// weir started as `weir run` starts it, from a config file (tag "v1", see
/// [`config_text`]) in a directory of its own; the file's path.
async fn start_from_file(server: &MockServer, name: &str) -> (weir::Running, PathBuf) {
    let dir = weir_tests::scratch_dir(&format!("admin-{name}"));
    let file = dir.join("weir.toml");
    write_config(&file, server, "v1");
    let config = weir::Config::from_file(&file).expect("valid config");
    let running = weir::start(&config, weir::AccessLog::disabled())
        .await
        .expect("start");
    (running, file)
}

/// The tag the fixture plugin set on the request a reply echoes.
fn tag(reply: Reply) -> String {
    reply.json()["headers"]["x-chain"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn config_text(server: &MockServer, tag: &str) -> String {
    let section =
        fixture_plugin("p", "tag", "").replace("tag = \"p\"", &format!("tag = \"{tag}\""));
    let mut toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["p"],
        &[section],
    );
    toml.push_str(ADMIN);
    toml
}

/// Reading the config file at a reload may wait: on a slow disk or network file system,
/// or (resolving a server's host name) on a DNS server. weir with `threads = 1` serves
/// every connection on one thread, as this test's runtime does (the proxy, the server,
/// the client and the admin listener all run on it): the reload reads on another thread,
/// and requests are answered while it waits.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_waiting_on_its_file_holds_up_no_request() {
    let server = MockServer::start("s1").await;
    let (running, file) = start_from_file(&server, "slow").await;
    let (www, admin) = (running.addr("www"), running.admin_addr().unwrap());
    let mut client = Client::connect(www).await;
    assert_eq!(tag(client.get("/").await), "v1");

    let mut slow = SlowFile::create(&file, config_text(&server, "v2").into_bytes());
    let reload = tokio::spawn(call(admin, Method::POST, "/api/reload", ""));
    slow.opened().await;
    for _ in 0..20 {
        assert_eq!(tag(client.get("/").await), "v1");
    }
    assert!(
        !slow.written(),
        "the requests were answered only once the reload had its file"
    );
    slow.release();
    let r = reload.await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.json()["generation"].as_u64()),
        (200, Some(2)),
        "{}",
        r.text()
    );
    assert_eq!(tag(client.get("/").await), "v2");
    running.shutdown(std::time::Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_api_reads_the_file_and_keeps_runtime_changes() {
    let server = MockServer::start("s1").await;
    let (running, file) = start_from_file(&server, "api").await;
    let (www, admin) = (running.addr("www"), running.admin_addr().unwrap());
    assert_eq!(tag(Client::connect(www).await.get("/").await), "v1");

    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s1/weight",
        r#"{"weight": 9}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let drain = r#"{"state": "drain"}"#;
    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s1/state",
        drain,
    )
    .await;
    assert_eq!(r.status, 200);
    write_config(&file, &server, "v2");
    let r = call(admin, Method::POST, "/api/reload", "").await;
    assert_eq!(
        (r.status.as_u16(), r.json()["generation"].as_u64()),
        (200, Some(2))
    );
    let backends = call(admin, Method::GET, "/api/backends", "").await.json();
    assert_eq!(
        server_weight(&backends),
        9,
        "a runtime weight survives the reload"
    );
    assert_eq!(
        server_in(&backends, "s1")["state"],
        "drain",
        "so does a runtime state"
    );
    let ready = r#"{"state": "ready"}"#;
    call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s1/state",
        ready,
    )
    .await;
    assert_eq!(tag(Client::connect(www).await.get("/").await), "v2");

    // A broken file is refused with the reason; the running generation keeps serving.
    std::fs::write(&file, "[[frontend]]\nname = 3\n").unwrap();
    let r = call(admin, Method::POST, "/api/reload", "").await;
    assert_eq!(r.status, 422);
    assert!(
        r.json()["error"].as_str().unwrap().contains("frontend"),
        "{}",
        r.text()
    );
    assert_eq!(tag(Client::connect(www).await.get("/").await), "v2");
    let info = call(admin, Method::GET, "/api/info", "").await.json();
    assert_eq!(info["generation"], 2);
    assert_eq!(info["plugins"][0]["name"], "p");
    assert_eq!(info["plugins"][0]["sha256"].as_str().unwrap().len(), 64);
    running.shutdown(std::time::Duration::from_secs(1)).await;
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

fn server_weight(backends: &serde_json::Value) -> u64 {
    server_in(backends, "s1")["weight"].as_u64().unwrap()
}

/// Two checked servers behind a proxy with an admin listener and the fixture plugin "p" in
/// the chain, once both servers were checked and four good requests and one 503 went
/// through the kept-alive `client`.
struct Traffic {
    _servers: (MockServer, MockServer),
    proxy: TestProxy,
    admin: SocketAddr,
    toml: String,
    _client: Client,
}

async fn traffic() -> Traffic {
    traffic_with("").await
}

/// Two checked servers behind a plugin, some requests served; `admin_extra` goes into `[admin]`.
async fn traffic_with(admin_extra: &str) -> Traffic {
    let (s1, s2) = (MockServer::start("s1").await, MockServer::start("s2").await);
    let mut toml = with_plugins(
        config(
            "roundrobin",
            &[("s1", s1.addr, ""), ("s2", s2.addr, "")],
            "health = { path = \"/health\", interval = \"50ms\" }",
        ),
        &["p"],
        &[fixture_plugin("p", "tag", "")],
    );
    toml.push_str(ADMIN);
    toml.push_str(admin_extra);
    let proxy = TestProxy::start(&toml).await;
    let admin = proxy.running.admin_addr().unwrap();
    let b = proxy.running.backend("app").unwrap();
    weir_tests::wait_until(std::time::Duration::from_secs(3), || {
        b.servers
            .iter()
            .all(|s| s.health.snapshot().last_check.is_some())
    })
    .await
    .expect("both servers checked");
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(client.get("/status/503").await.status, 503);
    Traffic {
        _servers: (s1, s2),
        proxy,
        admin,
        toml,
        _client: client,
    }
}

/// The CSV as rows of `column → value`.
fn parse_csv(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csv_reads_as_haproxy_writes_it() {
    let t = traffic().await;
    let admin = t.admin;
    let r = set_state(admin, "s2", "maint").await;
    assert_eq!(r.status, 200);

    for path in ["/;csv", "/stats.csv"] {
        let r = call(admin, Method::GET, path, "").await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        let text = r.text();
        assert!(
            text.starts_with(
                "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,\
                 eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,\
                 qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,\
                 check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,\
                 hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,\n"
            ),
            "{text}"
        );
        let rows = parse_csv(&text);
        let names: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r["pxname"].clone(), r["svname"].clone()))
            .collect();
        let expected = [
            ("www", "FRONTEND"),
            ("app", "s1"),
            ("app", "s2"),
            ("app", "BACKEND"),
        ];
        assert_eq!(
            names,
            expected
                .map(|(p, s)| (p.to_string(), s.to_string()))
                .to_vec()
        );
        let (fe, one, two, be) = (&rows[0], &rows[1], &rows[2], &rows[3]);
        assert_eq!((fe["status"].as_str(), fe["type"].as_str()), ("OPEN", "0"));
        assert_eq!(fe["stot"], "5");
        assert_eq!(
            (fe["hrsp_2xx"].as_str(), fe["hrsp_5xx"].as_str()),
            ("4", "1")
        );
        assert!(
            fe["scur"].parse::<u64>().unwrap() >= 1,
            "our connection is open"
        );
        assert_eq!((one["status"].as_str(), one["type"].as_str()), ("UP", "2"));
        assert_eq!(
            (one["check_status"].as_str(), one["check_code"].as_str()),
            ("L7OK", "200")
        );
        assert_eq!((one["act"].as_str(), one["bck"].as_str()), ("1", "0"));
        assert_eq!(two["status"], "MAINT");
        let served: u64 = one["stot"].parse::<u64>().unwrap() + two["stot"].parse::<u64>().unwrap();
        assert_eq!(served, 5);
        assert_eq!((be["status"].as_str(), be["type"].as_str()), ("UP", "1"));
        assert_eq!((be["stot"].as_str(), be["lbtot"].as_str()), ("5", "5"));
        assert_eq!((fe["req_tot"].as_str(), be["req_tot"].as_str()), ("5", "5"));
        for row in [fe, one, two, be] {
            assert_eq!(
                (row["cli_abrt"].as_str(), row["srv_abrt"].as_str()),
                ("0", "0")
            );
        }
        assert_eq!((be["act"].as_str(), be["weight"].as_str()), ("1", "1"));
        // Five request heads of some 40 bytes each, no bodies.
        let bin: u64 = fe["bin"].parse().unwrap();
        assert!((100..1000).contains(&bin), "bin {bin}");
        assert_eq!(be["bin"], fe["bin"]);
        let bout: u64 = fe["bout"].parse().unwrap();
        assert!(
            bout > 0 && be["bout"] == fe["bout"],
            "{bout} {}",
            be["bout"]
        );
    }
}

/// The FRONTEND, server and BACKEND rows' `cli_abrt` and `srv_abrt`, and the same two
/// counters in the metrics of the frontend, the backend and the server `s1`.
async fn aborts(admin: SocketAddr) -> Vec<(u64, u64)> {
    let csv = parse_csv(&call(admin, Method::GET, "/;csv", "").await.text());
    let m = scrape(admin).await;
    let mut seen: Vec<(u64, u64)> = csv
        .iter()
        .map(|r| {
            (
                r["cli_abrt"].parse().unwrap(),
                r["srv_abrt"].parse().unwrap(),
            )
        })
        .collect();
    for (scope, labels) in [
        ("frontend", &[("frontend", "www")][..]),
        ("backend", &[("backend", "app")][..]),
        ("server", &[("backend", "app"), ("server", "s1")][..]),
    ] {
        let count = |what: &str| sample(&m, &format!("weir_{scope}_{what}_aborts_total"), labels);
        seen.push((count("client") as u64, count("server") as u64));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_broken_off_count_as_client_or_server_aborts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = MockServer::start("s1").await;
    let toml = config("roundrobin", &[("s1", server.addr, "")], "") + ADMIN;
    let proxy = TestProxy::start(&toml).await;
    let admin = proxy.running.admin_addr().unwrap();
    assert!(aborts(admin).await.iter().all(|&a| a == (0, 0)));

    // The client goes while the server thinks (CH), then in the middle of a body (CD).
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    weir_tests::wait_until(Duration::from_secs(5), || server.requests() == 1)
        .await
        .expect("the request reaches the server");
    drop(stream);
    proxy.log.wait_for(1).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /gate HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 256];
    assert!(
        stream.read(&mut head).await.unwrap() > 0,
        "the response began"
    );
    drop(stream);
    let lines = proxy.log.wait_for(2).await;
    assert!(
        lines[0].contains(" CH ") && lines[1].contains(" CD "),
        "{lines:?}"
    );
    // FRONTEND, s1, BACKEND in the CSV; frontend, backend, s1 in the metrics.
    assert_eq!(aborts(admin).await, vec![(2, 0); 6]);

    // A server that closes in the middle of its body (SD).
    let (closing, _) = weir_tests::faulty_server(weir_tests::Fault::CloseMidBody).await;
    let toml = config("roundrobin", &[("s1", closing, "")], "") + ADMIN;
    let proxy = TestProxy::start(&toml).await;
    let admin = proxy.running.admin_addr().unwrap();
    let mut client = Client::connect(proxy.addr()).await;
    let broken = client
        .try_send(
            http::Request::get("/")
                .header("host", "a")
                .body(weir_tests::empty())
                .unwrap(),
        )
        .await;
    assert!(broken.is_err(), "{broken:?}");
    let lines = proxy.log.wait_for(1).await;
    assert!(lines[0].contains(" SD "), "{lines:?}");
    assert_eq!(aborts(admin).await, vec![(0, 1); 6]);
}

/// The value of the sample `metric` with these labels (among others).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric} {labels:?}"));
    match &found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max)
        }
        prometheus_parse::Value::Summary(_) => panic!("no summaries here"),
    }
}

async fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let r = call(admin, Method::GET, "/metrics", "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("weir_"), "{line}");
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_exposition() {
    let t = traffic().await;
    let (proxy, admin, toml) = (&t.proxy, t.admin, &t.toml);

    let m = scrape(admin).await;
    let www = [("frontend", "www")];
    assert_eq!(sample(&m, "weir_frontend_requests_total", &www), 5.0);
    assert_eq!(
        sample(
            &m,
            "weir_frontend_responses_total",
            &[("frontend", "www"), ("class", "5xx")]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "weir_frontend_request_duration_seconds", &www),
        5.0,
        "the +Inf bucket counts every request"
    );
    assert_eq!(sample(&m, "weir_frontend_connections", &www), 1.0);
    assert_eq!(
        sample(&m, "weir_backend_requests_total", &[("backend", "app")]),
        5.0
    );
    assert_eq!(sample(&m, "weir_backend_up", &[("backend", "app")]), 1.0);
    let s1_labels = [("backend", "app"), ("server", "s1")];
    assert_eq!(sample(&m, "weir_server_up", &s1_labels), 1.0);
    assert_eq!(
        sample(
            &m,
            "weir_server_last_check",
            &[("server", "s1"), ("status", "L7OK")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "weir_server_admin_state",
            &[("server", "s1"), ("state", "ready")]
        ),
        1.0
    );
    let served = sample(&m, "weir_server_requests_total", &s1_labels)
        + sample(&m, "weir_server_requests_total", &[("server", "s2")]);
    assert_eq!(served, 5.0);
    assert!(sample(&m, "weir_plugin_calls_total", &[("plugin", "p")]) >= 10.0);
    assert_eq!(
        sample(&m, "weir_plugin_traps_total", &[("plugin", "p")]),
        0.0
    );
    assert_eq!(
        sample(&m, "weir_plugin_call_duration_seconds", &[("plugin", "p")]),
        sample(&m, "weir_plugin_calls_total", &[("plugin", "p")]),
        "every call is in the latency histogram"
    );
    assert!(sample(&m, "weir_frontend_bytes_in_total", &www) > 100.0);
    assert_eq!(sample(&m, "weir_config_generation", &[]), 1.0);

    let reloaded = weir::Config::from_toml(toml, std::path::Path::new(".")).unwrap();
    proxy.running.reload(&reloaded).await.expect("reload");
    let m = scrape(admin).await;
    assert_eq!(sample(&m, "weir_config_generation", &[]), 2.0);
    assert_eq!(sample(&m, "weir_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(
        sample(&m, "weir_reloads_total", &[("result", "failed")]),
        0.0
    );
}

/// The `<tr …>` of the row whose first cell is `name`, up to its end.
fn html_row<'a>(page: &'a str, name: &str) -> &'a str {
    let cell = format!("<td class=\"name\">{name}</td>");
    let at = page.find(&cell).unwrap_or_else(|| panic!("no row {name}"));
    let start = page[..at].rfind("<tr").unwrap();
    let end = at + page[at..].find("</tr>").unwrap();
    &page[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_every_proxy_server_and_plugin() {
    let t = traffic_with("stats_admin = true\nrefresh = \"2s\"\n").await;
    let admin = t.admin;
    assert_eq!(set_state(admin, "s2", "drain").await.status, 200);

    let r = call(admin, Method::GET, "/", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
    let page = r.text();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
    // Self-contained: nothing is fetched from elsewhere.
    for external in ["http://", "https://", "src=", "<link"] {
        assert!(!page.contains(external), "the page refers to {external}");
    }
    // The legend names every colour.
    for label in ["active UP", "active DOWN", "backup UP", "DRAIN", "MAINT"] {
        assert!(page.contains(label), "legend lacks {label}");
    }
    assert!(page.contains("<h2>Frontend www</h2>"));
    assert!(page.contains("<h2>Backend app</h2>"));

    // Cells in table order: Queue Cur Max, Sessions Cur Max Limit Total LbTot, Bytes In Out,
    // Denied Req, Errors Req Conn Resp, Warnings Retr Redis, Responses 1xx..other, Server…
    let cells = |row: &str| -> Vec<String> {
        row.split("<td")
            .skip(2)
            .map(|c| {
                let text = &c[c.find('>').unwrap() + 1..];
                text[..text.find("</td>").unwrap()].to_string()
            })
            .collect()
    };
    let frontend = html_row(&page, "Frontend");
    assert!(
        frontend.starts_with("<tr class=\"frontend\">"),
        "{frontend}"
    );
    let f = cells(frontend);
    assert_eq!(f[5], "5", "total sessions: {f:?}");
    assert!(f[7].parse::<u64>().unwrap() > 100, "bytes in: {f:?}");
    assert_eq!(
        (f[16].as_str(), f[19].as_str()),
        ("4", "1"),
        "2xx and 5xx: {f:?}"
    );
    assert_eq!(f[21], "OPEN");

    let s1 = html_row(&page, "s1");
    assert!(s1.starts_with("<tr class=\"up\">"), "{s1}");
    let c1 = cells(s1);
    assert_eq!(c1[21], "UP");
    assert!(c1[22].starts_with("L7OK/200 in "), "last check: {c1:?}");
    assert!(
        s1.contains("data-server=\"s1\" data-state=\"drain\">drain</button>"),
        "stats_admin buttons: {s1}"
    );
    let s2 = html_row(&page, "s2");
    assert!(s2.starts_with("<tr class=\"drain\">"), "{s2}");
    assert!(
        s2.contains("data-state=\"drain\" disabled>"),
        "the current state's button is disabled: {s2}"
    );
    let total = cells(html_row(&page, "Backend"));
    assert_eq!((total[5].as_str(), total[21].as_str()), ("5", "UP"));

    // The plugin table: calls, traps, timeouts, invalid, p50, p99.
    let p = cells(html_row(&page, "p"));
    assert!(p[2].parse::<u64>().unwrap() >= 10, "calls: {p:?}");
    assert_eq!((p[3].as_str(), p[4].as_str()), ("0", "0"));
    for quantile in [&p[6], &p[7]] {
        assert!(
            quantile.ends_with("µs") || quantile.ends_with("ms"),
            "{p:?}"
        );
    }
    assert!(page.contains("<script>"), "the buttons' script");

    // Without stats_admin there are no buttons.
    let plain = traffic().await;
    let page = call(plain.admin, Method::GET, "/", "").await.text();
    assert!(!page.contains("<button"));
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_whether_this_node_can_serve_and_needs_no_credentials() {
    let (_s1, _s2, _proxy, admin) = two_servers(&format!(
        "{ADMIN}auth = {{ user = \"admin\", password = \"s3cr3t\" }}\n"
    ))
    .await;
    let healthz = || call(admin, Method::GET, "/healthz", "");
    let r = healthz().await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "ok\n".to_owned()));
    let as_admin = Some("Basic YWRtaW46czNjcjN0");
    let set = |server: &'static str, state: &'static str| {
        let path = format!("/api/backends/app/servers/{server}/state");
        let body = format!("{{\"state\": \"{state}\"}}");
        async move { call_as(admin, Method::POST, &path, &body, as_admin).await }
    };
    assert_eq!(set("s1", "maint").await.status, 200);
    assert_eq!(healthz().await.status, 200, "s2 still serves");
    assert_eq!(set("s2", "drain").await.status, 200);
    let r = healthz().await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["reasons"][0],
        "frontend www: backend app has no server that can take a request"
    );
    assert_eq!(set("s2", "ready").await.status, 200);
    assert_eq!(healthz().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_check_history_carry_over_a_reload() {
    let good = MockServer::start("s1").await;
    let dead = weir_tests::closed_port().await;
    let checked = "health = { path = \"/health\", interval = \"50ms\", fall = 1, rise = 1 }";
    let toml = |retries: u32| {
        let servers = [("s1", good.addr, ""), ("s2", dead, "")];
        let backend = config(
            "roundrobin",
            &servers,
            &format!("retries = {retries}\n{checked}"),
        );
        with_plugins(backend, &["p"], &[fixture_plugin("p", "tag", "")]) + ADMIN
    };
    let proxy = TestProxy::start(&toml(3)).await;
    let admin = proxy.running.admin_addr().unwrap();
    let s2 = [("backend", "app"), ("server", "s2")];
    let went_down = weir_tests::wait_until(Duration::from_secs(5), || {
        proxy.running.backend("app").unwrap().servers[1]
            .health
            .snapshot()
            .down_transitions
            > 0
    })
    .await;
    assert!(went_down.is_some(), "s2 was checked DOWN");
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let before = scrape(admin).await;
    let failures = sample(&before, "weir_server_check_failures_total", &s2);
    assert!(failures >= 1.0);

    let config = weir::Config::from_toml(&toml(2), std::path::Path::new(".")).unwrap();
    assert_eq!(proxy.running.reload(&config).await.unwrap(), 2);
    let after = scrape(admin).await;
    let www = [("frontend", "www")];
    assert_eq!(sample(&after, "weir_frontend_requests_total", &www), 10.0);
    assert_eq!(
        sample(&after, "weir_backend_requests_total", &[("backend", "app")]),
        10.0
    );
    assert_eq!(
        sample(
            &after,
            "weir_server_requests_total",
            &[("backend", "app"), ("server", "s1")]
        ),
        10.0
    );
    assert_eq!(sample(&after, "weir_server_up", &s2), 0.0, "s2 stays DOWN");
    assert!(sample(&after, "weir_server_check_failures_total", &s2) >= failures);
    assert_eq!(
        sample(&after, "weir_server_down_transitions_total", &s2),
        1.0
    );
    for _ in 0..5 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let later = scrape(admin).await;
    assert_eq!(sample(&later, "weir_frontend_requests_total", &www), 15.0);
    // Two calls a request (on-request, on-response), across both generations.
    let p = [("plugin", "p")];
    assert_eq!(sample(&later, "weir_plugin_calls_total", &p), 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_at_most_maxconn_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_s1, _s2, _proxy, admin) = two_servers(&format!("{ADMIN}maxconn = 2\n")).await;
    // Two connections that send nothing hold both slots.
    let idle = [
        tokio::net::TcpStream::connect(admin).await.unwrap(),
        tokio::net::TcpStream::connect(admin).await.unwrap(),
    ];
    let mut third = tokio::net::TcpStream::connect(admin).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut answer));
    assert!(
        waited.await.is_err(),
        "a third connection waits while two are open"
    );
    drop(idle);
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("answered once a slot is free")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}
