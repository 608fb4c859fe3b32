//! The admin listener's runtime API, through real HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use http::Method;
use weir_tests::{Client, MockServer, Reply, TestProxy, config, fixture_plugin, with_plugins};

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

    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s1/state",
        r#"{"state": "drain"}"#,
    )
    .await;
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

    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s1/state",
        r#"{"state": "maint"}"#,
    )
    .await;
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
    assert_eq!(
        b.servers[0].admin(),
        weir::proxy::backend::AdminState::Ready
    );
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
    for path in ["/api/info", "/api/backends"] {
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
    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s1/state",
        r#"{"state": "maint"}"#,
    )
    .await;
    assert_eq!(r.status, 401, "no change without credentials");
}

fn write_config(path: &PathBuf, server: &MockServer, tag: &str) {
    let section =
        fixture_plugin("p", "tag", "").replace("tag = \"p\"", &format!("tag = \"{tag}\""));
    let mut toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["p"],
        &[section],
    );
    toml.push_str(ADMIN);
    std::fs::write(path, toml).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_api_reads_the_file_and_keeps_runtime_changes() {
    let server = MockServer::start("s1").await;
    let dir = std::env::temp_dir().join(format!("weir-admin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("weir.toml");
    write_config(&file, &server, "v1");
    let config = weir::Config::from_file(&file).expect("valid config");
    let running = weir::start(&config, weir::AccessLog::disabled())
        .await
        .expect("start");
    let (www, admin) = (running.addr("www"), running.admin_addr().unwrap());
    let tag = |r: Reply| r.json()["headers"]["x-chain"].as_str().unwrap().to_owned();
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
    let _ = std::fs::remove_dir_all(&dir);
}

fn server_weight(backends: &serde_json::Value) -> u64 {
    server_in(backends, "s1")["weight"].as_u64().unwrap()
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
    let (s1, s2) = (MockServer::start("s1").await, MockServer::start("s2").await);
    let mut toml = config(
        "roundrobin",
        &[("s1", s1.addr, ""), ("s2", s2.addr, "")],
        "health = { path = \"/health\", interval = \"50ms\" }",
    );
    toml.push_str(ADMIN);
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

    let mut c = Client::connect(proxy.addr()).await;
    for _ in 0..4 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!(c.get("/status/503").await.status, 503);
    let r = call(
        admin,
        Method::POST,
        "/api/backends/app/servers/s2/state",
        r#"{"state": "maint"}"#,
    )
    .await;
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
                 hrsp_5xx,hrsp_other"
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
        assert_eq!((be["act"].as_str(), be["weight"].as_str()), ("1", "1"));
        let bout: u64 = fe["bout"].parse().unwrap();
        assert!(
            bout > 0 && be["bout"] == fe["bout"],
            "{bout} {}",
            be["bout"]
        );
    }
}
