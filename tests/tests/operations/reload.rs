//! Reloading the configuration while requests flow: plugins swapped, none lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_tests::{Client, MockServer, SlowFile, TestProxy, config, fixture_plugin, with_plugins};

fn tagged(server: &MockServer, tag: &str) -> String {
    let section =
        fixture_plugin("p", "tag", "").replace("tag = \"p\"", &format!("tag = \"{tag}\""));
    with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["p"],
        &[section],
    )
}

fn load(toml: &str) -> weir::Config {
    weir::Config::from_toml(toml, Path::new(".")).expect("valid config")
}

/// weir without plugins, the path of a plugin file in a directory of its own (not
/// written), and a config that adds that file as the fixture plugin `p` (mode "tag").
async fn without_then_with_plugin_file(
    server: &MockServer,
    name: &str,
) -> (TestProxy, PathBuf, weir::Config) {
    let base = config("roundrobin", &[("s1", server.addr, "")], "");
    let proxy = TestProxy::start(&base).await;
    let dir = weir_tests::scratch_dir(&format!("reload-{name}"));
    let wasm = dir.join(format!("{name}.wasm"));
    let section = fixture_plugin("p", "tag", "")
        .replace(weir_tests::FIXTURE_WASM, &wasm.display().to_string());
    (proxy, wasm, load(&with_plugins(base, &["p"], &[section])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_a_keep_alive_loop_lose_no_request() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&tagged(&server, "v0")).await;
    let addr = proxy.addr();
    let done = Arc::new(AtomicBool::new(false));
    let looping = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let (mut ok, mut failed, mut last) = (0, 0, String::new());
            while !done.load(Ordering::SeqCst) {
                match client
                    .try_send(
                        http::Request::get("/")
                            .header("host", "a")
                            .body(weir_tests::empty())
                            .unwrap(),
                    )
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        ok += 1;
                        last = r.json()["headers"]["x-chain"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                    }
                    other => {
                        eprintln!("failed: {:?}", other.map(|r| (r.status, r.text())));
                        failed += 1
                    }
                }
            }
            (ok, failed, last)
        })
    };
    for i in 1..=50 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let generation = proxy
            .running
            .reload(&load(&tagged(&server, &format!("v{i}"))))
            .await
            .expect("reload");
        assert_eq!(generation, i + 1);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::SeqCst);
    let (ok, failed, last) = looping.await.unwrap();
    eprintln!("{ok} requests, {failed} failed, across 50 reloads");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 50 reloads",
        ok + failed
    );
    assert!(ok > 100, "only {ok} requests went through");
    assert_eq!(
        last, "v50",
        "the keep-alive connection uses the newest plugins"
    );
}

/// Compiling a plugin takes a fraction of a second of CPU. weir with `threads = 1` serves
/// every connection on one thread, as this test's runtime does (the proxy, the server and
/// the client all run on it): a reload that compiled on that thread held every request
/// until the plugin was compiled.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_that_compiles_a_plugin_holds_up_no_request() {
    let server = MockServer::start("s1").await;
    let (proxy, wasm, with_plugin) = without_then_with_plugin_file(&server, "compile").await;
    // Compiled components are cached by their SHA-256: the fixture with a custom section
    // of its own has bytes that no other test of this process had compiled.
    let mut bytes = std::fs::read(weir_tests::FIXTURE_WASM).unwrap();
    let name = b"weir-test";
    bytes.extend_from_slice(&[0, 1 + name.len() as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    std::fs::write(&wasm, &bytes).unwrap();

    let addr = proxy.addr();
    let done = Arc::new(AtomicBool::new(false));
    let looping = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut answered = Vec::new();
            while !done.load(Ordering::SeqCst) {
                assert_eq!(client.get("/").await.status, 200);
                answered.push(Instant::now());
            }
            answered
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    proxy.running.reload(&with_plugin).await.expect("reload");
    let ended = Instant::now();
    done.store(true, Ordering::SeqCst);
    let answered = looping.await.unwrap();

    // The longest time without an answer while the reload ran.
    let during: Vec<Instant> = answered
        .into_iter()
        .filter(|t| (started..ended).contains(t))
        .collect();
    let mut longest = Duration::ZERO;
    let mut last = started;
    for t in during.iter().copied().chain([ended]) {
        longest = longest.max(t - last);
        last = t;
    }
    let took = ended - started;
    eprintln!(
        "the reload took {took:?}; {} requests answered meanwhile, at most {longest:?} apart",
        during.len()
    );
    // Compiled on the runtime's thread, nothing is answered while the plugin compiles:
    // most of the reload. Off it, the thread answers all along, but for the moments the
    // operating system gives the two cores to other work.
    assert!(
        during.len() >= 10 && longest * 4 < took,
        "{} requests answered during a reload of {took:?}, at most {longest:?} apart",
        during.len()
    );
    let reply = Client::connect(addr).await.get("/").await;
    assert_eq!(reply.json()["headers"]["x-chain"], "p");
    std::fs::remove_dir_all(wasm.parent().unwrap()).unwrap();
}

/// Reading a plugin's file may wait, on a slow disk or network file system; with
/// `threads = 1` (this test's runtime) requests are answered while it does.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_waiting_on_a_plugin_file_holds_up_no_request() {
    let server = MockServer::start("s1").await;
    let (proxy, wasm, with_plugin) = without_then_with_plugin_file(&server, "slow").await;
    let mut client = Client::connect(proxy.addr()).await;
    let mut slow = SlowFile::create(&wasm, std::fs::read(weir_tests::FIXTURE_WASM).unwrap());
    let (reloaded, ()) = tokio::join!(proxy.running.reload(&with_plugin), async {
        slow.opened().await;
        for _ in 0..20 {
            assert_eq!(client.get("/").await.status, 200);
        }
        assert!(
            !slow.written(),
            "the requests were answered only once the reload had the plugin's file"
        );
        slow.release();
    });
    assert_eq!(reloaded.expect("reload"), 2);
    assert_eq!(client.get("/").await.json()["headers"]["x-chain"], "p");
    std::fs::remove_dir_all(wasm.parent().unwrap()).unwrap();
}

/// Requests that take two seconds, in flight while the configuration is reloaded, finish
/// on the generation they started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_requests_in_flight_complete_across_a_reload() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&tagged(&server, "old")).await;
    let addr = proxy.addr();
    let slow: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { Client::connect(addr).await.get("/sleep/2000").await }))
        .collect();
    assert!(
        weir_tests::wait_until(Duration::from_secs(2), || server.requests() == 5)
            .await
            .is_some(),
        "the slow requests reached the server"
    );
    proxy
        .running
        .reload(&load(&tagged(&server, "new")))
        .await
        .expect("reload");
    let fresh = Client::connect(addr).await.get("/").await;
    assert_eq!(fresh.json()["headers"]["x-chain"], "new");
    for request in slow {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.json()["headers"]["x-chain"],
            "old",
            "it went out before the reload"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_plugin_is_refused_at_reload_and_the_old_generation_keeps_serving() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&tagged(&server, "good")).await;
    let broken = tagged(&server, "x").replace("mode = \"tag\"", "mode = \"require\"");
    let err = proxy
        .running
        .reload(&load(&broken))
        .await
        .expect_err("configure fails");
    assert_eq!(
        err.to_string(),
        "plugin.p: configure failed: missing field `required`"
    );
    assert_eq!(proxy.running.generation(), 1);
    let reply = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(reply.json()["headers"]["x-chain"], "good");

    // An address that cannot be bound refuses the whole reload.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved =
        tagged(&server, "x").replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string());
    let err = proxy
        .running
        .reload(&load(&moved))
        .await
        .expect_err("the address is taken");
    assert!(matches!(err, weir::ReloadError::Bind(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("frontend[0].bind: cannot listen on"),
        "{err}"
    );
    assert_eq!(proxy.running.generation(), 1);
    let reply = Client::connect(proxy.addr()).await.get("/").await;
    assert_eq!(reply.json()["headers"]["x-chain"], "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_starts_new_listeners_and_stops_removed_ones() {
    let server = MockServer::start("s1").await;
    let base = config("roundrobin", &[("s1", server.addr, "")], "");
    let proxy = TestProxy::start(&base).await;
    let www = proxy.addr();
    let mut idle = Client::connect(www).await;
    assert_eq!(idle.get("/").await.status, 200);

    // A second frontend: it starts accepting; www keeps its socket and connections.
    let with_api = format!(
        "{base}\n[[frontend]]\nname = \"api\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n"
    );
    assert_eq!(proxy.running.reload(&load(&with_api)).await.unwrap(), 2);
    let api = proxy.running.addr("api");
    assert_ne!(api, www);
    assert_eq!(Client::connect(api).await.get("/").await.status, 200);
    assert_eq!(proxy.running.addr("www"), www);
    assert_eq!(
        idle.get("/").await.status,
        200,
        "www's connection is untouched"
    );

    // Remove www (the config now has api alone): a request in flight on it finishes, its
    // idle connection closes, its port stops accepting; api serves on.
    let mut busy = Client::connect(www).await;
    let in_flight = tokio::spawn(async move { busy.get("/sleep/300").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let only_api = base.replacen("name = \"www\"", "name = \"api\"", 1);
    assert_eq!(proxy.running.reload(&load(&only_api)).await.unwrap(), 3);
    assert_eq!(proxy.running.addr("api"), api, "api keeps its socket");
    assert_eq!(in_flight.await.unwrap().status, 200);
    weir_tests::wait_until(Duration::from_secs(3), || idle.is_closed())
        .await
        .expect("the idle connection on the removed listener closes");
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(www).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the removed address stops accepting");
    assert_eq!(Client::connect(api).await.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_wasm_file_and_reloading_changes_the_next_request() {
    let (app, v2) = (
        MockServer::start("app").await,
        MockServer::start("v2").await,
    );
    let dir = weir_tests::scratch_dir("reload");
    let wasm = dir.join("plugin.wasm");
    std::fs::copy(weir_tests::CANARY_WASM, &wasm).unwrap();
    // Both components accept this config: the canary (no header, 0 %) sends nothing to
    // v2; the fixture (mode `route` by default) sends everything there.
    let section = format!(
        "[plugin.p]\nwasm = \"{}\"\nconfig = {{ backend = \"v2\" }}\n",
        wasm.display()
    );
    let toml = with_plugins(
        config("roundrobin", &[("app", app.addr, "")], ""),
        &["p"],
        &[section],
    ) + &format!(
        "\n[backend.v2]\nservers = [{{ name = \"v2\", addr = \"{}\" }}]\n",
        v2.addr
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(client.get("/").await.server(), "app");

    std::fs::copy(weir_tests::FIXTURE_WASM, &wasm).unwrap();
    proxy.running.reload(&load(&toml)).await.expect("reload");
    assert_eq!(client.get("/").await.server(), "v2");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_releases_the_old_generation() {
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&tagged(&server, "old")).await;
    let mut client = Client::connect(proxy.addr()).await;
    assert_eq!(client.get("/").await.json()["headers"]["x-chain"], "old");
    let old = Arc::downgrade(&proxy.running.plugins()[0]);
    proxy
        .running
        .reload(&load(&tagged(&server, "new")))
        .await
        .expect("reload");
    assert_eq!(client.get("/").await.json()["headers"]["x-chain"], "new");
    let released = weir_tests::wait_until(Duration::from_secs(2), || old.upgrade().is_none()).await;
    assert!(
        released.is_some(),
        "the old generation's plugin (and its instances) is still held"
    );
}

/// A client connection that has been served once (so it holds a connection slot).
async fn served(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.get("/").await.status, 200);
    c
}

/// Whether a new connection is served within `wait`.
async fn served_within(addr: std::net::SocketAddr, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut c = Client::connect(addr).await;
        c.get("/").await.status == 200
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_global_maxconn_both_ways() {
    let server = MockServer::start("s1").await;
    let with = |n: usize| {
        format!(
            "[global]\nmaxconn = {n}\n\n{}",
            config("roundrobin", &[("s1", server.addr, "")], "")
        )
    };
    let proxy = TestProxy::start(&with(1)).await;
    let addr = proxy.addr();
    let first = served(addr).await;
    assert!(!served_within(addr, Duration::from_millis(300)).await);

    // More slots: a second connection gets one at once.
    proxy.running.reload(&load(&with(2))).await.expect("reload");
    let second = served(addr).await;
    assert_eq!(proxy.running.control().global().maxconn, 2);

    // Fewer: with two open and the limit at one, a new connection waits until both
    // have closed.
    proxy.running.reload(&load(&with(1))).await.expect("reload");
    drop(first);
    assert!(!served_within(addr, Duration::from_millis(300)).await);
    drop(second);
    assert!(served_within(addr, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_access_log_to_the_file_it_names() {
    let server = MockServer::start("s1").await;
    let dir = weir_tests::scratch_dir("reload-access-log");
    let (a, b) = (dir.join("a.log"), dir.join("b.log"));
    let with = |target: &Path| {
        format!(
            "[global]\naccess_log = \"{}\"\n\n{}",
            target.display(),
            config("roundrobin", &[("s1", server.addr, "")], "")
        )
    };
    let proxy = TestProxy::start(&with(&a)).await;
    assert_eq!(weir_tests::get(proxy.addr(), "/before").await.status, 200);
    proxy
        .running
        .reload(&load(&with(&b)))
        .await
        .expect("reload");
    assert_eq!(weir_tests::get(proxy.addr(), "/after").await.status, 200);
    proxy.running.control().log().flush(Duration::from_secs(2));
    let written = std::fs::read_to_string(&b).unwrap_or_default();
    assert!(
        written.contains("/after") && !written.contains("/before"),
        "{written}"
    );
    assert_eq!(
        proxy.running.control().global().access_log,
        b.display().to_string()
    );

    // A file that cannot be opened refuses the reload; the log stays where it was.
    let bad = with(&dir.join("no-such-dir").join("c.log"));
    let e = proxy.running.reload(&load(&bad)).await.unwrap_err();
    assert!(e.to_string().starts_with("global.access_log: "), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
