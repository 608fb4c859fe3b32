//! `weir import` on the corpus in tests/import/: for each `NAME.cfg`, the TOML must be
//! `NAME.toml` and the report `NAME.report` (exit 0 when the report is empty, 2 when not),
//! and `weir check` must accept the TOML. `WEIR_BLESS=1 cargo test -p weir --test import`
//! rewrites the golden files from what the import writes now: read the diff before
//! committing it.
//!
//! The differential tests (`--ignored`: they need Debian's haproxy) run HAProxy on a
//! corpus file and weir on its import, against the same servers, and compare what the
//! same requests get from both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

mod common;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/import")
}

/// The environment the corpus files that use `${VAR}` expect. The files the differential
/// tests run name their listener `${FE}` and their servers `${S1}`..`${S3}`.
const ENV: [(&str, &str); 9] = [
    ("CONNECT_TIMEOUT", "4s"),
    ("LISTEN_ADDR", "127.0.0.1"),
    ("LISTEN_PORT", "8080"),
    ("APP_SERVER", "10.0.0.9:8080"),
    ("FE", "*:8080"),
    ("S1", "10.0.0.1:8080"),
    ("S2", "10.0.0.2:8080"),
    ("S3", "10.0.0.3:8080"),
    ("LOG", "127.0.0.1:5140"),
];

fn import(dir: &Path, file: &str, env: &[(&str, &str)]) -> Output {
    Command::new(WEIR)
        .current_dir(dir)
        .args(["import", file])
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn the_corpus_imports_as_its_golden_files_say_and_weir_check_accepts_it() {
    let dir = corpus();
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".cfg").then_some(name)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus has {} files", files.len());
    let scratch = std::env::temp_dir().join(format!("weir-import-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    for sub in ["certs", "errors"] {
        let _ = std::os::unix::fs::symlink(dir.join(sub), scratch.join(sub));
    }
    let mut failures = Vec::new();
    for file in &files {
        let stem = file.trim_end_matches(".cfg");
        let out = import(&dir, file, &ENV);
        let (toml, report) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        let (toml_path, report_path) = (
            dir.join(format!("{stem}.toml")),
            dir.join(format!("{stem}.report")),
        );
        if bless {
            std::fs::write(&toml_path, &toml).unwrap();
            std::fs::write(&report_path, &report).unwrap();
        }
        let expected = std::fs::read_to_string(&toml_path).unwrap_or_default();
        let expected_report = std::fs::read_to_string(&report_path).unwrap_or_default();
        if toml != expected {
            failures.push(format!(
                "{file}: the TOML differs from {stem}.toml:\n{toml}"
            ));
        }
        if report != expected_report {
            failures.push(format!(
                "{file}: the report differs from {stem}.report:\n{report}"
            ));
        }
        let code = if expected_report.is_empty() { 0 } else { 2 };
        if out.status.code() != Some(code) {
            failures.push(format!(
                "{file}: exit {:?}, expected {code}",
                out.status.code()
            ));
        }
        let written = scratch.join(format!("{stem}.toml"));
        std::fs::write(&written, &toml).unwrap();
        let check = Command::new(WEIR)
            .args(["check", "--config"])
            .arg(&written)
            .output()
            .unwrap();
        if !check.status.success() {
            failures.push(format!(
                "{file}: weir check refuses the import: {}",
                String::from_utf8_lossy(&check.stderr)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `text` imported from a scratch file: exit code, stdout, stderr.
fn import_text(name: &str, text: &[u8]) -> (Option<i32>, String, String) {
    let dir = std::env::temp_dir().join(format!("weir-import-bad-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("haproxy.cfg"), text).unwrap();
    let out = import(&dir, "haproxy.cfg", &[]);
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_files_get_an_error_with_the_line_and_exit_1() {
    let cases: [(&str, &[u8], &str); 6] = [
        ("quote", b"global\n  maxconn 10\nfrontend a\n  bind \":80\n", "haproxy.cfg:4: unterminated double quote"),
        ("outside", b"bind :80\n", "haproxy.cfg:1: \"bind\" outside any section"),
        (
            "backend",
            b"frontend a\n  bind :80\n  use_backend nope if { path /x }\n  default_backend b\nbackend b\n  server s 10.0.0.1:80\n",
            "haproxy.cfg:3: no backend named \"nope\"",
        ),
        ("nul", b"global\n  maxconn\x0010\n", "haproxy.cfg:2: a NUL byte"),
        ("binary", b"global\n\xff\xfe\x00garbage", "haproxy.cfg:2: not UTF-8 text"),
        ("from", b"frontend a from nowhere\n  bind :80\n", "haproxy.cfg:1: no defaults section named \"nowhere\""),
    ];
    for (name, text, expected) in cases {
        let (code, stdout, stderr) = import_text(name, text);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: {stdout}");
        assert!(stderr.starts_with(expected), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn a_ten_megabyte_file_is_read_whole_without_trouble() {
    let mut text = String::from(
        "defaults\n  mode http\nfrontend www\n  bind :8080\n  default_backend app\nbackend app\n",
    );
    let mut i = 0;
    while text.len() < 10 << 20 {
        text.push_str(&format!(
            "  server s{i} 10.{}.{}.{}:80 check weight 1\n",
            i >> 16 & 255,
            i >> 8 & 255,
            i & 255
        ));
        i += 1;
    }
    let (code, stdout, stderr) = import_text("big", text.as_bytes());
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("addr = ").count(), i);
}

// ---- Differential tests: HAProxy on the file, weir on its import. ----

mod differential {
    use super::common::free_port;
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::process::{Child, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Request headers a mock server echoes back as `x-seen-<name>`.
    const ECHOED: [&str; 6] = [
        "x-client",
        "x-via",
        "x-forwarded-proto",
        "x-internal-token",
        "x-forwarded-for",
        "cookie",
    ];

    /// A server that answers every request 200 with its name (body and `x-server`), an
    /// `x-powered-by` for the proxies to remove, and the echoed request headers; HTTP/1.1
    /// keep-alive. `stop` closes it and every connection it has.
    pub struct Mock {
        pub addr: String,
        down: Arc<AtomicBool>,
        conns: Arc<Mutex<Vec<TcpStream>>>,
    }

    impl Mock {
        pub fn start(name: &'static str) -> Mock {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let down = Arc::new(AtomicBool::new(false));
            let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            let (d, c) = (Arc::clone(&down), Arc::clone(&conns));
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if d.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    c.lock().unwrap().push(conn.try_clone().unwrap());
                    std::thread::spawn(move || serve(name, conn));
                }
            });
            Mock { addr, down, conns }
        }

        pub fn stop(&self) {
            self.down.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(&self.addr);
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    impl Drop for Mock {
        fn drop(&mut self) {
            self.stop();
        }
    }

    fn serve(name: &str, conn: TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut conn = conn;
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => head.push(line.trim_end().to_owned()),
                }
            }
            let mut headers = BTreeMap::new();
            for h in head.iter().skip(1) {
                if let Some((n, v)) = h.split_once(':') {
                    headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let length: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nx-server: {name}\r\nx-powered-by: mock\r\ncontent-length: {}\r\n",
                name.len()
            );
            for h in ECHOED {
                if let Some(v) = headers.get(h) {
                    out.push_str(&format!("x-seen-{h}: {v}\r\n"));
                }
            }
            out.push_str("\r\n");
            out.push_str(name);
            if conn.write_all(out.as_bytes()).is_err() {
                return;
            }
            if headers
                .get("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            {
                return;
            }
        }
    }

    /// What a client saw: status, the server that answered, and the response headers the
    /// test compares.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Seen {
        pub status: u16,
        pub server: String,
        pub headers: BTreeMap<String, String>,
    }

    /// One request on a new connection: `path`, with `headers`.
    pub fn request(addr: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nconnection: close\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            req.push_str("host: test.local\r\n");
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status from {addr}: {text:?}"));
        let mut headers = BTreeMap::new();
        for l in lines {
            if let Some((n, v)) = l.split_once(':') {
                headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let server = headers.remove("x-server").unwrap_or_default();
        Seen {
            status,
            server,
            headers,
        }
    }

    /// A proxy process, killed when dropped.
    struct Proc(Child, PathBuf);

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    fn wait_for(child: &mut Child, addr: &str, what: &str, log: &Path) {
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{what} exited ({status}) before listening on {addr}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "{what} never listened on {addr}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    /// HAProxy on `file` and weir on its import, both in front of `servers` (`S1`..):
    /// their listening addresses.
    fn pair(file: &str, servers: &[&Mock]) -> (String, String, Vec<Proc>) {
        pair_with(file, servers, &[])
    }

    /// [`pair`], with more variables for the file.
    fn pair_with(
        file: &str,
        servers: &[&Mock],
        more: &[(&str, String)],
    ) -> (String, String, Vec<Proc>) {
        super::common::require(
            "haproxy",
            "the differential tests need haproxy (apt-get install haproxy)",
        );
        let scratch = std::env::temp_dir().join(format!(
            "weir-diff-{}-{}",
            std::process::id(),
            file.trim_end_matches(".cfg")
        ));
        std::fs::create_dir_all(&scratch).unwrap();
        let env = |fe: &str| {
            let mut env: Vec<(String, String)> = vec![("FE".into(), fe.into())];
            for (i, s) in servers.iter().enumerate() {
                env.push((format!("S{}", i + 1), s.addr.clone()));
            }
            env.extend(more.iter().map(|(k, v)| (k.to_string(), v.clone())));
            env
        };
        let (h, w) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let hlog = scratch.join("haproxy.log");
        let haproxy = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(corpus().join(file))
            .envs(env(&h))
            .stdout(std::fs::File::create(&hlog).unwrap())
            .stderr(std::fs::File::create(&hlog).unwrap())
            .spawn()
            .unwrap();
        let procs_dir = scratch.clone();
        let out = Command::new(WEIR)
            .current_dir(corpus())
            .args(["import", file, "-o"])
            .arg(scratch.join("weir.toml"))
            .envs(env(&w))
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let wlog = scratch.join("weir.log");
        let weir = Command::new(WEIR)
            .args(["run", "--config"])
            .arg(scratch.join("weir.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&wlog).unwrap())
            .spawn()
            .unwrap();
        let mut procs = vec![Proc(haproxy, PathBuf::new()), Proc(weir, procs_dir)];
        wait_for(&mut procs[0].0, &h, "HAProxy", &hlog);
        wait_for(&mut procs[1].0, &w, "weir", &wlog);
        (h, w, procs)
    }

    /// The same requests to both; what each saw, compared on status, server and `keep`
    /// headers (names; values compared as written).
    fn same(h: &str, w: &str, requests: &[(&str, &[(&str, &str)])], keep: &[&str]) -> Vec<Seen> {
        let pick = |s: Seen| Seen {
            headers: s
                .headers
                .into_iter()
                .filter(|(n, _)| keep.contains(&n.as_str()))
                .collect(),
            ..s
        };
        let mut seen = Vec::new();
        for (path, headers) in requests {
            let (a, b) = (
                pick(request(h, path, headers)),
                pick(request(w, path, headers)),
            );
            assert_eq!(
                a, b,
                "{path} {headers:?}: HAProxy (left) and weir (right) differ"
            );
            seen.push(a);
        }
        seen
    }

    /// How many of `seen` each server answered.
    fn counts(seen: &[Seen]) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for s in seen {
            *c.entry(s.server.clone()).or_default() += 1;
        }
        c
    }

    /// Sends `n` requests to each and compares how the servers shared them.
    fn same_spread(h: &str, w: &str, path: &str, n: usize) -> BTreeMap<String, usize> {
        let (a, b): (Vec<Seen>, Vec<Seen>) = (0..n)
            .map(|_| (request(h, path, &[]), request(w, path, &[])))
            .unzip();
        assert!(a.iter().chain(&b).all(|s| s.status == 200), "{a:?}\n{b:?}");
        let (ca, cb) = (counts(&a), counts(&b));
        assert_eq!(
            ca, cb,
            "{path}: HAProxy (left) and weir (right) spread differently"
        );
        ca
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn a_web_balancer_spreads_alike_and_both_move_off_a_server_taken_down() {
        let (s1, s2, s3) = (Mock::start("m1"), Mock::start("m2"), Mock::start("m3"));
        let (h, w, _p) = pair("01-web.cfg", &[&s1, &s2, &s3]);
        let spread = same_spread(&h, &w, "/", 6);
        assert_eq!(spread, BTreeMap::from([("m1".into(), 3), ("m2".into(), 3)]));
        // web2 goes away: with redispatch, every request ends on web1, never the backup.
        s2.stop();
        let seen = same(&h, &w, &[("/", &[]), ("/", &[]), ("/", &[])], &[]);
        assert!(seen.iter().all(|s| s.server == "m1"), "{seen:?}");
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn sticky_cookies_name_the_same_servers() {
        let (s1, s2, s3) = (Mock::start("m1"), Mock::start("m2"), Mock::start("m3"));
        let (h, w, _p) = pair("03-sticky.cfg", &[&s1, &s2, &s3]);
        // A cookie names a server by its cookie value; the proxies drop it (indirect).
        let seen = same(
            &h,
            &w,
            &[
                ("/", &[("cookie", "SERVERID=s2")]),
                ("/", &[("cookie", "SERVERID=s3; other=1")]),
                ("/", &[("cookie", "SERVERID=s1")]),
            ],
            &["x-seen-cookie"],
        );
        let servers: Vec<&str> = seen.iter().map(|s| s.server.as_str()).collect();
        assert_eq!(servers, ["m2", "m3", "m1"]);
        // Without a cookie: a Set-Cookie naming the server that answered, not cached.
        for addr in [&h, &w] {
            let first = request(addr, "/", &[]);
            let cookie = first.headers.get("set-cookie").expect("a cookie");
            let value = cookie.split(';').next().unwrap();
            let expected = format!("SERVERID=s{}", &first.server[1..]);
            assert_eq!(value, expected, "{addr}");
            assert!(cookie.to_ascii_lowercase().contains("httponly"), "{cookie}");
        }
        // With nocache, weir marks every response that sets the cookie private; HAProxy
        // only those it finds cacheable (this server's are not): a difference the README
        // states.
        let h_cache = request(&h, "/", &[]).headers.get("cache-control").cloned();
        let w_cache = request(&w, "/", &[]).headers.get("cache-control").cloned();
        assert_eq!(
            (h_cache.as_deref(), w_cache.as_deref()),
            (None, Some("private"))
        );
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn acl_routing_and_denials_match() {
        let (s1, s2, s3) = (
            Mock::start("static"),
            Mock::start("api"),
            Mock::start("web"),
        );
        let (h, w, _p) = pair("04-acl-routing.cfg", &[&s1, &s2, &s3]);
        let seen = same(
            &h,
            &w,
            &[
                ("/static/app.js", &[]),
                ("/images/a.png", &[]),
                ("/theme.css", &[]),
                ("/v1/users", &[("host", "API.example.com")]),
                ("/api/users", &[]),
                ("/", &[]),
                ("/admin/panel", &[]),
                ("/index.html", &[]),
            ],
            &[],
        );
        let got: Vec<(u16, &str)> = seen.iter().map(|s| (s.status, s.server.as_str())).collect();
        assert_eq!(
            got,
            [
                (200, "static"),
                (200, "static"),
                (200, "static"),
                (200, "api"),
                (200, "api"),
                (200, "web"),
                (403, ""),
                (200, "web"),
            ]
        );
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn a_burst_past_the_rate_limit_is_refused_alike() {
        let s1 = Mock::start("m1");
        let (h, w, _p) = pair("05-rate-limit.cfg", &[&s1]);
        let burst: Vec<(&str, &[(&str, &str)])> = vec![("/", &[]); 25];
        let seen = same(&h, &w, &burst, &[]);
        let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
        assert_eq!(statuses[..20], [200; 20]);
        assert_eq!(statuses[20..], [429; 5]);
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn header_edits_match() {
        let s1 = Mock::start("m1");
        let (h, w, _p) = pair("10-headers.cfg", &[&s1]);
        let seen = same(
            &h,
            &w,
            &[("/", &[("x-internal-token", "secret")])],
            &[
                "x-seen-x-client",
                "x-seen-x-via",
                "x-seen-x-forwarded-proto",
                "x-seen-x-internal-token",
                "x-served-by",
                "x-backend",
                "x-powered-by",
            ],
        );
        let headers = &seen[0].headers;
        assert_eq!(
            headers.get("x-seen-x-client").map(String::as_str),
            Some("127.0.0.1")
        );
        assert_eq!(headers.get("x-served-by").map(String::as_str), Some("a1"));
        assert!(
            !headers.contains_key("x-powered-by")
                && !headers.contains_key("x-seen-x-internal-token")
        );
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn redirects_match() {
        let s1 = Mock::start("m1");
        let (h, w, _p) = pair("11-redirects.cfg", &[&s1]);
        let seen = same(
            &h,
            &w,
            &[
                ("/any", &[("host", "old.example.com")]),
                ("/down", &[]),
                ("/up", &[]),
            ],
            &["location"],
        );
        let got: Vec<(u16, Option<&str>)> = seen
            .iter()
            .map(|s| (s.status, s.headers.get("location").map(String::as_str)))
            .collect();
        assert_eq!(
            got,
            [
                (301, Some("https://new.example.com/")),
                (302, Some("/maintenance.html")),
                (200, None),
            ]
        );
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn without_a_default_backend_what_no_rule_routes_gets_503_alike() {
        let (s1, s2) = (Mock::start("app"), Mock::start("blog"));
        let (h, w, _p) = pair("15-no-default.cfg", &[&s1, &s2]);
        let seen = same(
            &h,
            &w,
            &[
                ("/", &[("host", "app.example.com")]),
                ("/", &[("host", "blog.example.com")]),
                ("/", &[("host", "www.blog.example.com")]),
                ("/empty", &[]),
                ("/", &[("host", "other.example.com")]),
            ],
            &[],
        );
        let got: Vec<(u16, &str)> = seen.iter().map(|s| (s.status, s.server.as_str())).collect();
        assert_eq!(
            got,
            [
                (200, "app"),
                (200, "blog"),
                (200, "blog"),
                (503, ""),
                (503, "")
            ]
        );
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn balancing_algorithms_spread_alike() {
        let (s1, s2, s3) = (Mock::start("m1"), Mock::start("m2"), Mock::start("m3"));
        let (h, w, _p) = pair("16-balance.cfg", &[&s1, &s2, &s3]);
        // static-rr by weights 2:1:0.
        let spread = same_spread(&h, &w, "/", 6);
        assert_eq!(spread, BTreeMap::from([("m1".into(), 4), ("m2".into(), 2)]));
        for path in ["/uri/a", "/header", "/param?user=x", "/random"] {
            same_spread(&h, &w, path, 2);
        }
        // first: the first server while it is below its maxconn.
        assert_eq!(
            same_spread(&h, &w, "/first", 3),
            BTreeMap::from([("m1".into(), 3)])
        );
    }

    #[test]
    #[ignore = "needs haproxy: cargo test -p weir --test import -- --ignored"]
    fn option_httplog_lines_have_haproxys_fields_in_haproxys_places() {
        let s1 = Mock::start("m1");
        let daemon = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        daemon
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let log = daemon.local_addr().unwrap().to_string();
        let (h, w, _p) = pair_with("22-httplog.cfg", &[&s1], &[("LOG", log)]);
        // One request at a time, so each line is the one proxy's; the proxies' other
        // messages (HAProxy's "Proxy started") are not request lines.
        let line_of = |addr: &str| -> Vec<String> {
            assert_eq!(request(addr, "/shape?x=1", &[]).status, 200);
            let mut buf = [0u8; 4096];
            loop {
                let n = daemon.recv(&mut buf).expect("a log line");
                let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
                if datagram.contains("\"GET /shape?x=1 HTTP/1.1\"") {
                    // After the syslog header: `<134>Dec  5 ... name[pid]: `.
                    let (_, line) = datagram.split_once("]: ").expect("a syslog header");
                    return line.split_whitespace().map(str::to_owned).collect();
                }
            }
        };
        let (haproxy, weir) = (line_of(&h), line_of(&w));
        let shape = |fields: &[String]| -> Vec<String> {
            fields
                .iter()
                .map(|f| {
                    let mut out = String::new();
                    for c in f.chars() {
                        match c.is_ascii_digit() {
                            true if out.ends_with('9') => {}
                            true => out.push('9'),
                            false => out.push(c),
                        }
                    }
                    out
                })
                .collect()
        };
        assert_eq!(
            shape(&haproxy),
            shape(&weir),
            "HAProxy (left) and weir (right):\n{haproxy:?}\n{weir:?}"
        );
        // Past the timers and byte counts, the fields are the same to the letter: frontend,
        // backend/server, status, cookies, termination state, counts, queues, request.
        for i in [2, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14] {
            assert_eq!(haproxy[i], weir[i], "field {i}: {haproxy:?}\n{weir:?}");
        }
    }
}

/// The fuzz target's property (fuzz/fuzz_targets/import.rs), on the corpus cut and
/// garbled in many ways by a fixed pseudo-random sequence: no panic, TOML that parses,
/// notes and errors inside the file. `WEIR_GARBLE_ROUNDS` (500) garbles each file that
/// many times.
#[test]
fn garbled_corpus_files_give_toml_or_an_error_never_a_panic() {
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "{", "}", "\"", "'", "\\", "${", "#", "!", "or", "if", "unless", " ", "\n", ":", "(", ")",
    ];
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "cfg") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let rounds: usize = std::env::var("WEIR_GARBLE_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(500);
        for _ in 0..rounds {
            let mut t = text.clone();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() as usize) % (t.len() + 1);
                let at = (0..=at).rev().find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                match next() % 3 {
                    0 => t.truncate(at),
                    1 => t.insert_str(at, pieces[(next() as usize) % pieces.len()]),
                    _ => {
                        let end = (at + (next() as usize) % 20).min(t.len());
                        let end = (end..=t.len())
                            .find(|&i| t.is_char_boundary(i))
                            .unwrap_or(t.len());
                        t.replace_range(at..end, "");
                    }
                }
            }
            let lines = t.lines().count().max(1);
            match weir::import::import(&t, "fuzz.cfg", &|_| None) {
                Ok(imported) => {
                    let parsed: Result<toml::Table, _> = toml::from_str(&imported.toml);
                    assert!(parsed.is_ok(), "{:?}\n{t}\n{}", parsed.err(), imported.toml);
                    assert!(imported.notes.iter().all(|n| (1..=lines).contains(&n.line)));
                }
                Err(e) => assert!((1..=lines).contains(&e.line), "{e}\n{t}"),
            }
        }
    }
}
