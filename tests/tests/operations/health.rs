//! Health checks through the real proxy, with real servers failing and coming back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use weir::upstream::{AdminError, AdminState, BackendRt};
use weir_tests::{Client, MockServer, TestProxy, closed_port, config, servers_seen, wait_until};

const CHECK: &str =
    r#"health = { path = "/health", interval = "100ms", timeout = "80ms", fall = 2, rise = 3 }"#;

async fn two(check: &str) -> ([MockServer; 2], TestProxy) {
    let servers = [MockServer::start("s1").await, MockServer::start("s2").await];
    let list: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.addr, ""))
        .collect();
    let proxy = TestProxy::start(&config("roundrobin", &list, check)).await;
    (servers, proxy)
}

fn backend(proxy: &TestProxy) -> std::sync::Arc<BackendRt> {
    proxy.running.backend("app").expect("backend app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_its_check_leaves_within_fall_intervals_and_returns_after_rise() {
    let (servers, proxy) = two(CHECK).await;
    let b = backend(&proxy);
    // Let the first checks run, then start failing.
    wait_until(Duration::from_secs(2), || {
        servers[1].stats.health_checks.load(Ordering::SeqCst) >= 2
    })
    .await
    .unwrap();
    servers[1].set_health(503);
    // fall (2) × interval (100 ms) + one interval.
    let down_after = wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .expect("s2 never went down");
    assert!(
        down_after <= Duration::from_millis(300 + 40),
        "down after {down_after:?}"
    );
    let detail = b.servers[1].health.snapshot();
    let last = detail.last_check.clone().unwrap();
    assert_eq!((last.status.code(), last.code), ("L7STS", Some(503)));
    assert_eq!(detail.label(3, 2), "DOWN");
    assert_eq!(detail.down_transitions, 1);

    let mut client = Client::connect(proxy.addr()).await;
    let seen = servers_seen(&mut client, "/", 20).await;
    assert_eq!(seen.get("s1"), Some(&20), "{seen:?}");

    servers[1].set_health(200);
    // rise (3) good checks at fastinter (= interval here).
    let up_after = wait_until(Duration::from_secs(2), || b.servers[1].health.is_up())
        .await
        .expect("s2 never came back");
    assert!(
        up_after >= Duration::from_millis(180),
        "came back after only {up_after:?}"
    );
    assert!(
        up_after <= Duration::from_millis(400 + 40),
        "came back after {up_after:?}"
    );
    let seen = servers_seen(&mut client, "/", 20).await;
    assert_eq!(
        (seen.get("s1"), seen.get("s2")),
        (Some(&10), Some(&10)),
        "{seen:?}"
    );
    assert!(b.servers[1].health.snapshot().downtime() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_marks_a_closed_port_down() {
    let good = MockServer::start("good").await;
    let dead = closed_port().await;
    let check = r#"health = { interval = "50ms", fall = 1, rise = 1 }"#;
    let proxy = TestProxy::start(&config(
        "roundrobin",
        &[("good", good.addr, ""), ("dead", dead, "")],
        check,
    ))
    .await;
    let b = backend(&proxy);
    wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .expect("a closed port must go down");
    assert_eq!(
        b.servers[1]
            .health
            .snapshot()
            .last_check
            .unwrap()
            .status
            .code(),
        "L4CON"
    );
    assert!(b.servers[0].health.is_up());
    assert_eq!(
        b.servers[0]
            .health
            .snapshot()
            .last_check
            .unwrap()
            .status
            .code(),
        "L4OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_status_and_expect_body_decide_the_verdict() {
    let teapot = r#"health = { path = "/health", interval = "50ms", fall = 1, rise = 1, expect_status = [200, 418], expect_body = "healthy" }"#;
    let (servers, proxy) = two(teapot).await;
    let b = backend(&proxy);
    servers[1].set_health(418);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.servers[1].health.is_up(), "418 is in the expected list");
    servers[1].set_health(500);
    wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .expect("500 is not expected");

    let wrong_body = r#"health = { path = "/health", interval = "50ms", fall = 1, rise = 1, expect_status = "2xx", expect_body = "ready" }"#;
    let (_servers, proxy) = two(wrong_body).await;
    let b = backend(&proxy);
    wait_until(Duration::from_secs(2), || !b.servers[0].health.is_up())
        .await
        .expect("the body lacks \"ready\"");
    let last = b.servers[0].health.snapshot().last_check.unwrap();
    assert_eq!(last.status.code(), "L7RSP");
    assert!(last.detail.contains("ready"), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_can_override_the_backend_check() {
    let s1 = MockServer::start("s1").await;
    let s2 = MockServer::start("s2").await;
    s2.set_health(503);
    let check = r#"health = { path = "/health", interval = "50ms", fall = 1, rise = 1 }"#;
    let list = [
        ("s1", s1.addr, ""),
        (
            "s2",
            s2.addr,
            r#"health = { path = "/", expect_status = 200 }"#,
        ),
    ];
    let proxy = TestProxy::start(&config("roundrobin", &list, check)).await;
    let b = backend(&proxy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.servers[1].health.is_up(),
        "s2 is checked on / and answers 200 there"
    );
    assert!(
        s2.stats.health_checks.load(Ordering::SeqCst) == 0,
        "s2's /health was never asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_server_is_an_immediate_503() {
    let (servers, proxy) =
        two(r#"health = { path = "/health", interval = "50ms", fall = 1, rise = 1 }"#).await;
    let b = backend(&proxy);
    for s in &servers {
        s.set_health(503);
    }
    wait_until(Duration::from_secs(2), || {
        b.servers.iter().all(|s| !s.health.is_up())
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let reply = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(reply.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "503 must not wait: {:?}",
        started.elapsed()
    );
    assert_eq!(servers[0].requests() + servers[1].requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_takes_over_when_the_primaries_are_down_and_gives_back() {
    let primary = MockServer::start("primary").await;
    let backup1 = MockServer::start("backup1").await;
    let backup2 = MockServer::start("backup2").await;
    let check = r#"health = { path = "/health", interval = "50ms", fall = 1, rise = 1 }"#;
    let list = [
        ("primary", primary.addr, ""),
        ("backup1", backup1.addr, "backup = true"),
        ("backup2", backup2.addr, "backup = true"),
    ];
    let proxy = TestProxy::start(&config("roundrobin", &list, check)).await;
    let b = backend(&proxy);
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(
        servers_seen(&mut client, "/", 10).await.get("primary"),
        Some(&10)
    );

    primary.set_health(503);
    wait_until(Duration::from_secs(2), || !b.servers[0].health.is_up())
        .await
        .unwrap();
    let seen = servers_seen(&mut client, "/", 10).await;
    assert_eq!(
        seen.get("backup1"),
        Some(&10),
        "only the first backup without allbackups: {seen:?}"
    );

    primary.set_health(200);
    wait_until(Duration::from_secs(2), || b.servers[0].health.is_up())
        .await
        .unwrap();
    assert_eq!(
        servers_seen(&mut client, "/", 10).await.get("primary"),
        Some(&10)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allbackups_spreads_over_every_backup() {
    let primary = MockServer::start("primary").await;
    let backup1 = MockServer::start("backup1").await;
    let backup2 = MockServer::start("backup2").await;
    let extra = "allbackups = true\nhealth = { path = \"/health\", interval = \"50ms\", fall = 1, rise = 1 }";
    let list = [
        ("primary", primary.addr, ""),
        ("backup1", backup1.addr, "backup = true"),
        ("backup2", backup2.addr, "backup = true"),
    ];
    let proxy = TestProxy::start(&config("roundrobin", &list, extra)).await;
    primary.set_health(503);
    wait_until(Duration::from_secs(2), || {
        !backend(&proxy).servers[0].health.is_up()
    })
    .await
    .unwrap();
    let seen = servers_seen(&mut Client::connect(proxy.addr()).await, "/", 10).await;
    assert_eq!(
        (seen.get("backup1"), seen.get("backup2")),
        (Some(&5), Some(&5)),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowstart_ramps_a_returning_server_up_gradually() {
    let s1 = MockServer::start("s1").await;
    let s2 = MockServer::start("s2").await;
    let check = "slowstart = \"2s\"\nhealth = { path = \"/health\", interval = \"30ms\", fall = 1, rise = 1 }";
    let list = [
        ("s1", s1.addr, "weight = 100"),
        ("s2", s2.addr, "weight = 100"),
    ];
    let proxy = TestProxy::start(&config("roundrobin", &list, check)).await;
    let b = backend(&proxy);
    let mut client = Client::connect(proxy.addr()).await;
    // At start-up there is no ramp: both servers share evenly.
    let seen = servers_seen(&mut client, "/", 100).await;
    assert_eq!(seen.get("s2"), Some(&50), "{seen:?}");

    s2.set_health(503);
    wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .unwrap();
    s2.set_health(200);
    wait_until(Duration::from_secs(2), || b.servers[1].health.is_up())
        .await
        .unwrap();
    let early = servers_seen(&mut client, "/", 200)
        .await
        .get("s2")
        .copied()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = servers_seen(&mut client, "/", 200)
        .await
        .get("s2")
        .copied()
        .unwrap_or(0);
    assert!(early < 50, "right after coming back s2 took {early} of 200");
    assert!(
        (90..=110).contains(&late),
        "after the ramp s2 took {late} of 200"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_errors_mark_a_server_down() {
    // Active checks pass and run rarely; live traffic decides.
    let check = r#"health = { path = "/health", interval = "10s", fall = 3, rise = 2, observe = "layer7", error_limit = 3, on_error = "mark-down" }"#;
    let (servers, proxy) = two(check).await;
    let b = backend(&proxy);
    servers[1].fail_with(500);
    let mut client = Client::connect(proxy.addr()).await;
    let mut errors = 0;
    for _ in 0..20 {
        if client.get("/").await.status == 500 {
            errors += 1;
        }
    }
    assert_eq!(
        errors, 3,
        "s2 is taken out after error_limit consecutive 5xx"
    );
    assert!(!b.servers[1].health.is_up());
    assert_eq!(
        b.servers[1]
            .health
            .snapshot()
            .last_check
            .unwrap()
            .status
            .code(),
        "OBS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_requests_finish_and_takes_no_new_ones() {
    let (_servers, proxy) = two("").await;
    let b = backend(&proxy);
    let addr = proxy.addr();
    // Two slow requests: one lands on each server.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { Client::connect(addr).await.get("/sleep/500").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.set_admin("s2", AdminState::Drain).unwrap();
    let seen = servers_seen(&mut Client::connect(addr).await, "/", 10).await;
    assert_eq!(seen.get("s1"), Some(&10), "{seen:?}");
    for t in slow {
        assert_eq!(
            t.await.unwrap().status,
            200,
            "requests in flight on the drained server finish"
        );
    }
    b.set_admin("s2", AdminState::Ready).unwrap();
    let seen = servers_seen(&mut Client::connect(addr).await, "/", 10).await;
    assert_eq!(seen.get("s2"), Some(&5), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maint_takes_a_server_out_and_stops_its_checks() {
    let (servers, proxy) = two(r#"health = { path = "/health", interval = "30ms" }"#).await;
    let b = backend(&proxy);
    b.set_admin("s2", AdminState::Maint).unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let checks = servers[1].stats.health_checks.load(Ordering::SeqCst);
    let seen = servers_seen(&mut Client::connect(proxy.addr()).await, "/", 10).await;
    assert_eq!(seen.get("s1"), Some(&10));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        servers[1].stats.health_checks.load(Ordering::SeqCst),
        checks,
        "no checks during maintenance"
    );
    b.set_admin("s2", AdminState::Ready).unwrap();
    wait_until(Duration::from_secs(1), || {
        servers[1].stats.health_checks.load(Ordering::SeqCst) > checks
    })
    .await
    .expect("checks resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_change_at_run_time() {
    let (_servers, proxy) = two("").await;
    let b = backend(&proxy);
    b.set_weight("s1", 3).unwrap();
    let seen = servers_seen(&mut Client::connect(proxy.addr()).await, "/", 40).await;
    assert_eq!(
        (seen.get("s1"), seen.get("s2")),
        (Some(&30), Some(&10)),
        "{seen:?}"
    );
    b.set_weight("s2", 0).unwrap();
    let seen = servers_seen(&mut Client::connect(proxy.addr()).await, "/", 10).await;
    assert_eq!(seen.get("s1"), Some(&10));
    assert_eq!(b.set_weight("s2", 300), Err(AdminError::BadWeight(300)));
    assert!(matches!(
        b.set_admin("nope", AdminState::Drain),
        Err(AdminError::UnknownServer { .. })
    ));
}

/// The process's log, captured once for every test of this binary (other tests' proxies
/// log there too: this file's servers have names of their own).
fn captured_log() -> weir_tests::LogLines {
    static LOG: std::sync::OnceLock<weir_tests::LogLines> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let lines = weir_tests::LogLines::default();
        let writer = lines.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .init();
        lines
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_is_logged_with_its_reason() {
    let log = captured_log();
    let servers = [
        MockServer::start("logged1").await,
        MockServer::start("logged2").await,
        MockServer::start("logged3").await,
    ];
    let list: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.addr, ""))
        .collect();
    let check = r#"health = { path = "/health", interval = "50ms", fall = 1, rise = 1 }"#;
    let proxy = TestProxy::start(&config("roundrobin", &list, check)).await;
    let b = backend(&proxy);
    servers[1].set_health(503);
    wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .unwrap();
    servers[1].set_health(200);
    wait_until(Duration::from_secs(2), || b.servers[1].health.is_up())
        .await
        .unwrap();
    // The state changes first and the line is written just after it: wait for the line.
    let logged = |what: &str| log.lines().iter().any(|l| l.contains(what));
    wait_until(Duration::from_secs(2), || {
        logged("server app/logged2 is UP")
    })
    .await
    .expect("an UP line within 2 s");
    let lines = log.lines();
    let down = lines
        .iter()
        .find(|l| l.contains("server app/logged2 is DOWN"))
        .expect("a DOWN line");
    assert!(
        down.contains(
            "server app/logged2 is DOWN, reason: Layer7 wrong status, code: 503, check duration: "
        ),
        "{down}"
    );
    assert!(down.ends_with("ms, 2 active servers left"), "{down}");
    let up = lines
        .iter()
        .find(|l| l.contains("server app/logged2 is UP"))
        .expect("an UP line");
    assert!(
        up.contains("reason: Layer7 check passed, code: 200"),
        "{up}"
    );
    assert!(up.ends_with("3 active servers online"), "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_send_the_configured_method_host_and_headers() {
    let check = r#"health = { path = "/health", method = "HEAD", host = "status.internal", headers = { Authorization = "Bearer k" }, interval = "50ms" }"#;
    let (servers, _proxy) = two(check).await;
    wait_until(Duration::from_secs(2), || {
        servers[0].stats.last_health.lock().unwrap().is_some()
    })
    .await
    .unwrap();
    let (method, headers) = servers[0]
        .stats
        .last_health
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(method, http::Method::HEAD);
    assert_eq!(headers["host"], "status.internal");
    assert_eq!(headers["authorization"], "Bearer k");
    assert_eq!(headers["user-agent"], "weir-health-check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastinter_speeds_up_a_change_and_downinter_slows_checks_while_down() {
    let check = r#"health = { path = "/health", interval = "2s", fastinter = "50ms", downinter = "400ms", fall = 3, rise = 1 }"#;
    let (servers, proxy) = two(check).await;
    let b = backend(&proxy);
    wait_until(Duration::from_secs(3), || {
        servers[1].stats.health_checks.load(Ordering::SeqCst) >= 1
    })
    .await
    .unwrap();
    servers[1].set_health(503);
    // One failure at the next regular check (within 2 s), then two more at fastinter.
    let down = wait_until(Duration::from_secs(4), || !b.servers[1].health.is_up())
        .await
        .expect("went down");
    assert!(
        down < Duration::from_millis(2000 + 300),
        "down after {down:?}: fastinter was not used"
    );
    let checks = servers[1].stats.health_checks.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let while_down = servers[1].stats.health_checks.load(Ordering::SeqCst) - checks;
    assert!(
        (2..=3).contains(&while_down),
        "{while_down} checks in 1 s at downinter 400ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_fastinter_makes_checks_decide_quickly() {
    let check = r#"health = { path = "/health", interval = "10s", fastinter = "50ms", fall = 2, rise = 1, observe = "layer7", error_limit = 2, on_error = "fastinter" }"#;
    let (servers, proxy) = two(check).await;
    let b = backend(&proxy);
    servers[1].fail_with(500);
    servers[1].set_health(503);
    let mut client = Client::connect(proxy.addr()).await;
    for _ in 0..4 {
        client.get("/").await;
    }
    // Without fastinter the next check would be 10 s away.
    let down = wait_until(Duration::from_secs(2), || !b.servers[1].health.is_up())
        .await
        .expect("checks ran at fastinter");
    assert!(down < Duration::from_millis(500), "down after {down:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_checks_are_spread_over_the_interval() {
    let servers = [
        MockServer::start("a").await,
        MockServer::start("b").await,
        MockServer::start("c").await,
        MockServer::start("d").await,
    ];
    let list: Vec<(&str, SocketAddr, &str)> = servers
        .iter()
        .map(|s| (s.name.as_str(), s.addr, ""))
        .collect();
    let proxy = TestProxy::start(&config(
        "roundrobin",
        &list,
        r#"health = { path = "/health", interval = "800ms" }"#,
    ))
    .await;
    let firsts = || {
        servers
            .iter()
            .filter_map(|s| *s.stats.first_health.lock().unwrap())
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(3), || firsts().len() == 4)
        .await
        .expect("every server checked");
    let mut at = firsts();
    at.sort();
    // Four servers over 800 ms: first checks about 200 ms apart, not all at once.
    for pair in at.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(120),
            "first checks {gap:?} apart"
        );
    }
    drop(proxy);
}
