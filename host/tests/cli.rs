//! The `weir` command line, run as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

mod common;
use common::free_port;

/// A config file in a directory of its own, removed with it when the test ends.
struct Written(std::path::PathBuf);

impl std::ops::Deref for Written {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Written {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_config(name: &str, text: &str) -> Written {
    let dir = std::env::temp_dir().join(format!("weir-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    Written(path)
}

fn config(bind: &str, extra_global: &str) -> String {
    format!(
        "[global]\n{extra_global}\n\n[[frontend]]\nname = \"www\"\nbind = \"{bind}\"\ndefault_backend = \"app\"\n\n[backend.app]\nservers = [{{ name = \"a\", addr = \"127.0.0.1:9\" }}]\n"
    )
}

#[test]
fn check_accepts_a_valid_config_with_exit_0() {
    let path = write_config("valid.toml", &config("127.0.0.1:0", ""));
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration is valid"
    );
}

#[test]
fn check_rejects_an_invalid_config_with_exit_1_and_the_key_path() {
    let text = config("127.0.0.1:0", "maxconn = -1").replace("127.0.0.1:9", "127.0.0.1:99999");
    let path = write_config("invalid.toml", &text);
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("global.maxconn: must be between 1 and 10000000, got -1 (line 2)"),
        "{err}"
    );
    assert!(
        err.contains("backend.app.servers[0].addr: invalid address \"127.0.0.1:99999\""),
        "{err}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(WEIR)
        .args(["check", "--config", "/nonexistent/weir.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/weir.toml"));
}

#[test]
fn version_and_help() {
    let out = Command::new(WEIR).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(WEIR).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "demo"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn run_fails_clearly_when_the_bind_address_is_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = write_config("in-use.toml", &config(&addr.to_string(), ""));
    let out = Command::new(WEIR)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("frontend[0].bind: cannot listen on {addr}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Starts `weir run` on a config and reads the address it listens on from its log.
fn spawn_run(path: &std::path::Path) -> (Child, String, BufReader<ChildStderr>) {
    spawn_run_with(path, &[])
}

/// [`spawn_run`] with more environment variables.
fn spawn_run_with(
    path: &std::path::Path,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Child, String, BufReader<ChildStderr>) {
    let mut child = Command::new(WEIR)
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = logged_after(&mut stderr, "listening on ");
    (
        child,
        addr.expect("weir logged its listening address"),
        stderr,
    )
}

/// What follows `marker` on the first of the next 50 log lines that has it.
fn logged_after(stderr: &mut BufReader<ChildStderr>, marker: &str) -> Option<String> {
    for _ in 0..50 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(a) = line.trim().split(marker).nth(1) {
            return Some(a.to_string());
        }
    }
    None
}

/// Starts `weir run`, reads the bound address from its log, and stops it with SIGTERM.
#[test]
fn run_serves_on_a_single_thread_and_stops_on_sigterm() {
    let path = write_config("run.toml", &config("127.0.0.1:0", "threads = 1"));
    let (mut child, addr, mut stderr) = spawn_run(&path);
    let response = get(&addr);
    // Nothing listens on the server's port: the proxy answers 503 by itself.
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("weir did not stop on SIGTERM")
    });
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(
        rest.contains("\"GET / HTTP/1.1\""),
        "the access log line goes to stderr: {rest}"
    );
}

/// `GET /` on a new connection: the whole response, head and body.
fn get(addr: &str) -> String {
    try_get(addr).unwrap()
}

/// `GET /` on a new connection, waiting up to 10 s for the response.
fn try_get(addr: &str) -> std::io::Result<String> {
    try_get_path(addr, "/")
}

/// `GET path` on a new connection, waiting up to 10 s for the response.
fn try_get_path(addr: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn get_body(addr: &str) -> String {
    get(addr)
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A request head weir refuses (two Content-Lengths): with `RUST_LOG=debug`, weir logs a
/// line for each, from the thread that serves it. The 400's head.
fn try_refused(addr: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// weir logs a line for each refused request at debug level (warnings about a failing
/// server come at most once a second, see the next test). With stderr a pipe nobody
/// reads, the pipe is full after a hundred or so requests; a line written from the
/// thread that serves requests would then hold every request up for good.
#[test]
fn a_stderr_nobody_reads_holds_up_no_request() {
    let path = write_config("stalled-stderr.toml", &config("127.0.0.1:0", "threads = 1"));
    let debug = std::ffi::OsStr::new("debug");
    let (child, addr, _unread) = spawn_run_with(&path, &[("RUST_LOG", debug)]);
    let _child = Killed(child);
    for i in 0..2000 {
        let response = try_refused(&addr)
            .unwrap_or_else(|e| panic!("request {i}: no response within 10 s ({e})"));
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "request {i}: {response:?}"
        );
    }
}

/// During an outage weir writes a warning about each failing server at most once a
/// second, saying how many it held back, not a line per request.
#[test]
fn warnings_about_a_failing_server_come_at_most_once_a_second() {
    let text = config("127.0.0.1:0", "access_log = \"off\"");
    let path = write_config("quiet.toml", &text);
    let (mut child, addr, mut stderr) = spawn_run(&path);
    let started = std::time::Instant::now();
    for i in 0..200 {
        let response = try_get(&addr).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(response.starts_with("HTTP/1.1 503"), "request {i}");
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert!(try_get(&addr).unwrap().starts_with("HTTP/1.1 503"));
    let seconds = started.elapsed().as_secs() + 1;
    terminate(&mut child).expect("weir stops");
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    let answered: Vec<&str> = log.lines().filter(|l| l.contains("www app a: ")).collect();
    let connects: Vec<&str> = log.lines().filter(|l| l.contains("app/a: ")).collect();
    for lines in [&answered, &connects] {
        assert!(
            !lines.is_empty() && lines.len() as u64 <= seconds,
            "{} lines in {seconds} s: {lines:#?}",
            lines.len()
        );
    }
    assert!(
        answered
            .iter()
            .any(|l| l.contains("more like it since the last line")),
        "the line after the quiet second counts what was held back: {answered:#?}"
    );
}

/// Past 16,384 lines waiting for a stderr nobody reads, new log lines are dropped, and
/// /metrics counts them.
#[test]
fn log_lines_dropped_for_a_stalled_stderr_are_counted() {
    let text = config("127.0.0.1:0", "threads = 1") + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let path = write_config("dropped-lines.toml", &text);
    let debug = std::ffi::OsStr::new("debug");
    let (child, addr, mut unread) = spawn_run_with(&path, &[("RUST_LOG", debug)]);
    let _child = Killed(child);
    let admin =
        logged_after(&mut unread, "admin listening on ").expect("weir logged its admin address");
    let dropped = |admin: &str| -> u64 {
        try_get_path(admin, "/metrics")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("weir_log_dropped_total "))
            .expect("weir_log_dropped_total in /metrics")
            .parse()
            .unwrap()
    };
    assert_eq!(dropped(&admin), 0);
    // Each request is refused and logs a line at debug level: 20,000 of them are more
    // than the pipe and the queue hold together.
    for i in 0..20_000 {
        let response = try_refused(&addr)
            .unwrap_or_else(|e| panic!("request {i}: no response within 10 s ({e})"));
        assert!(response.starts_with("HTTP/1.1 400"), "request {i}");
        if i % 1000 == 999 && dropped(&admin) > 0 {
            return;
        }
    }
    panic!("no dropped line counted after 20,000 requests logged with stderr never read");
}

/// Polls until `addr` answers with `body` (a reload takes effect asynchronously).
fn wait_for_body(addr: &str, body: &str) -> bool {
    (0..100).any(|_| {
        let found = get_body(addr) == body;
        if !found {
            std::thread::sleep(Duration::from_millis(50));
        }
        found
    })
}

#[test]
fn sighup_reloads_the_config_file_and_keeps_the_old_one_when_the_new_is_invalid() {
    let path = write_config("hup.toml", &config("127.0.0.1:0", ""));
    let dir = path.parent().unwrap();
    std::fs::write(dir.join("sorry.txt"), "back soon\n").unwrap();
    let (mut child, addr, mut stderr) = spawn_run(&path);
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    assert!(get_body(&addr).starts_with("503 Service Unavailable"));

    // The same frontend (binds as configured), now with an error page for 503.
    let reloaded = config("127.0.0.1:0", "").replace(
        "[backend.app]",
        "[backend.app]\nerrorfiles = { 503 = \"sorry.txt\" }",
    );
    std::fs::write(&*path, reloaded).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let reloaded = wait_for_body(&addr, "back soon\n");

    std::fs::write(&*path, "this is not toml [").unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let still_serving = get_body(&addr);
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reloaded, "SIGHUP did not apply the new config");
    assert!(alive, "an invalid config on SIGHUP must not stop weir");
    assert_eq!(
        still_serving, "back soon\n",
        "the last good config keeps serving"
    );
}

/// A server on a thread of its own that answers every request after `delay`.
fn slow_server(delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n",
                );
            });
        }
    });
    addr
}

/// Sends SIGTERM and waits up to 5 s for weir to exit.
fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn proxied_config(server: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\n[backend.app]\nservers = [{{ name = \"a\", addr = \"{server}\" }}]\n"
    )
}

#[test]
fn sigterm_lets_a_request_in_flight_finish_within_timeout_shutdown() {
    let server = slow_server(Duration::from_millis(700));
    let path = write_config(
        "grace.toml",
        &proxied_config(&server, "[defaults]\ntimeout = { shutdown = \"20s\" }"),
    );
    let (mut child, addr, mut stderr) = spawn_run(&path);
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let request = std::thread::spawn(move || get(&addr));
    std::thread::sleep(Duration::from_millis(300));
    let status = terminate(&mut child).expect("weir stops once the request is done");
    assert!(status.success(), "{status:?}");
    let response = request.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("slow\n"), "{response}");
}

#[test]
fn sigterm_gives_up_on_requests_after_timeout_shutdown_and_exits_0() {
    // The server would take a minute; timeout.shutdown cuts the wait to 300 ms (the
    // default, 10 s, would outlast terminate()'s 5 s).
    let server = slow_server(Duration::from_secs(60));
    let path = write_config(
        "cut.toml",
        &proxied_config(&server, "[defaults]\ntimeout = { shutdown = \"300ms\" }"),
    );
    let (mut child, addr, mut stderr) = spawn_run(&path);
    let _request = std::thread::spawn(move || get(&addr));
    std::thread::sleep(Duration::from_millis(300));
    let status = terminate(&mut child).expect("weir stops after timeout.shutdown");
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    assert!(
        rest.contains("1 connections still open after timeout.shutdown (300ms)"),
        "{rest}"
    );
}

/// Polls until the file holds `n` lines.
fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lines
}

#[test]
fn the_access_log_goes_to_a_file_that_sigusr1_reopens() {
    let path = write_config(
        "log.toml",
        &config("127.0.0.1:0", "access_log = \"access.log\"").replace(
            "[backend.app]",
            "[defaults]\nlog_format = \"json\"\n\n[backend.app]",
        ),
    );
    let dir = path.parent().unwrap();
    let (log, rotated) = (dir.join("access.log"), dir.join("access.log.1"));
    let (mut child, addr, stderr) = spawn_run(&path);
    let stderr = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = { stderr }.read_to_string(&mut rest);
        rest
    });

    assert!(get(&addr).starts_with("HTTP/1.1 503"));
    let first = wait_for_lines(&log, 1);
    // Rotation: the file is moved away, SIGUSR1 opens a new one at the configured path.
    std::fs::rename(&log, &rotated).unwrap();
    Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status()
        .unwrap();
    let reopened = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        log.exists()
    });
    assert!(get(&addr).starts_with("HTTP/1.1 503"));
    let second = wait_for_lines(&log, 1);
    let status = terminate(&mut child);
    let stderr = stderr.join().unwrap();
    let old = std::fs::read_to_string(&rotated).unwrap();

    assert!(status.is_some_and(|s| s.success()));
    assert_eq!(first.len(), 1, "{first:?}");
    let line: serde_json::Value = serde_json::from_str(&first[0]).expect("a JSON line");
    assert_eq!(
        (line["status"].as_i64(), line["uri"].as_str()),
        (Some(503), Some("/"))
    );
    assert!(reopened, "SIGUSR1 created the file again");
    assert_eq!(
        second.len(),
        1,
        "the next request goes to the new file: {second:?}"
    );
    assert_eq!(
        old.lines().count(),
        1,
        "the rotated file keeps the first line only"
    );
    assert!(
        !stderr.contains("GET /"),
        "nothing goes to stderr: {stderr}"
    );
}

/// `weir health` with these arguments: its exit code and the line it printed.
fn health(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(WEIR)
        .arg("health")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn health_answers_with_its_exit_code_for_keepalived() {
    let server = slow_server(Duration::ZERO);
    let admin = format!("127.0.0.1:{}", free_port());
    let text = proxied_config(&server, "") + &format!("\n[admin]\nbind = \"{admin}\"\n");
    let path = write_config("health.toml", &text);
    let (child, addr, mut stderr) = spawn_run(&path);
    let _child = Killed(child);
    logged_after(&mut stderr, "admin listening on ").expect("the admin listener is up");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    assert_eq!(health(&["--admin", &admin]), (Some(0), "ok".into()));
    let config = path.to_str().unwrap();
    assert_eq!(health(&["--config", config]), (Some(0), "ok".into()));
    let through = format!("http://{addr}/");
    assert_eq!(
        health(&["--admin", &admin, "--through", &through]),
        (Some(0), format!("ok (through {through}: 200)"))
    );

    // The frontend's only server in maintenance: this node cannot serve.
    let mut api = TcpStream::connect(&admin).unwrap();
    let body = r#"{"state": "maint"}"#;
    write!(
        api,
        "POST /api/backends/app/servers/a/state HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    api.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        health(&["--admin", &admin]),
        (
            Some(1),
            "down: frontend www: backend app has no server that can take a request".into()
        )
    );

    let (code, line) = health(&["--admin", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(code, Some(1));
    assert!(line.starts_with("down: admin 127.0.0.1:"), "{line}");
}

#[test]
fn weir_tells_the_service_manager_when_it_is_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = write_config("notify.toml", &config("127.0.0.1:0", ""));
    // systemd's side of NOTIFY_SOCKET: a datagram socket weir sends its states to.
    let socket_path = path.parent().unwrap().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let (mut child, _addr, mut stderr) =
        spawn_run_with(&path, &[("NOTIFY_SOCKET", socket_path.as_os_str())]);
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    assert_eq!(next(), "READY=1\nSTATUS=serving, generation 1");

    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let reloading = next();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{reloading}"));
    assert!(usec > 0);
    assert_eq!(next(), "READY=1\nSTATUS=serving, generation 2");

    let status = terminate(&mut child).expect("weir stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(next(), "STOPPING=1\nSTATUS=stopping");
}

/// examples/systemd/weir.service, with this build's binary, is a unit systemd accepts.
#[test]
fn the_example_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd/weir.service"),
    )
    .unwrap()
    .replace("/usr/local/bin/weir", WEIR);
    let path = write_config("weir.service", &unit);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) verifies the example unit");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// `weir check --config FILE --against ADMIN`: exit code and stdout.
fn check_against(path: &std::path::Path, admin: &str) -> (Option<i32>, String) {
    let out = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(path)
        .args(["--against", admin])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// One request to the admin API; the answer's body.
fn admin_call(admin: &str, method: &str, path: &str) -> String {
    let mut api = TcpStream::connect(admin).unwrap();
    write!(
        api,
        "{method} {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YWRtaW46czNjcmV0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    api.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned()
}

#[test]
fn a_reload_applies_maxconn_and_says_threads_need_a_restart_as_check_against_does() {
    let server = slow_server(Duration::ZERO);
    let admin = format!("127.0.0.1:{}", free_port());
    let with = |global: &str| {
        proxied_config(&server, global)
            + &format!(
                "\n[admin]\nbind = \"{admin}\"\nauth = {{ user = \"admin\", password = \"s3cret\" }}\n"
            )
    };
    let path = write_config(
        "against.toml",
        &with("[global]\nthreads = 1\nmaxconn = 100"),
    );
    let (child, _addr, mut stderr) = spawn_run(&path);
    let _child = Killed(child);
    logged_after(&mut stderr, "admin listening on ").expect("the admin listener is up");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let against = format!("admin:s3cret@{admin}");
    assert_eq!(
        check_against(&path, &against),
        (Some(0), "configuration is valid\n".into())
    );

    std::fs::write(&*path, with("[global]\nthreads = 2\nmaxconn = 50")).unwrap();
    let (code, out) = check_against(&path, &against);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("applies at reload: global.maxconn: 100 running, 50 in the file")
            && out.contains("needs a restart: global.threads: 1 running, 2 in the file"),
        "{out}"
    );

    let answer = admin_call(&admin, "POST", "/api/reload");
    assert!(
        answer.contains("\"restart_needed\":[\"global.threads: 1 running, 2 in the config"),
        "{answer}"
    );
    let info = admin_call(&admin, "GET", "/api/info");
    assert!(
        info.contains("\"maxconn\":50") && info.contains("\"threads\":1"),
        "{info}"
    );
    // The reload applied maxconn; threads still need the restart.
    let (code, out) = check_against(&path, &against);
    assert_eq!(code, Some(2), "{out}");
    assert!(!out.contains("maxconn"), "{out}");
}

/// A JSON POST to the admin API; the status line and body.
fn admin_post(admin: &str, path: &str, body: &str) -> String {
    let mut api = TcpStream::connect(admin).unwrap();
    write!(
        api,
        "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    api.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn with_persist_runtime_changes_are_written_back_and_survive_a_restart() {
    let server = slow_server(Duration::ZERO);
    let admin = format!("127.0.0.1:{}", free_port());
    let text = format!(
        "# Kept as written.\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\n[backend.app]\nservers = [\n  {{ name = \"a\", addr = \"{server}\" }},  # the main one\n  {{ name = \"b\", addr = \"{server}\", weight = 2 }},\n]\n\n[admin]\nbind = \"{admin}\"\npersist = true\n"
    );
    let path = write_config("persist.toml", &text);
    let start = || {
        let (child, _, mut stderr) = spawn_run(&path);
        logged_after(&mut stderr, "admin listening on ").expect("the admin listener is up");
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Killed(child)
    };
    let running = start();
    let answer = admin_post(
        &admin,
        "/api/backends/app/servers/a/state",
        r#"{"state": "maint"}"#,
    );
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"persisted\":true"),
        "{answer}"
    );
    let answer = admin_post(
        &admin,
        "/api/backends/app/servers/b/weight",
        r#"{"weight": 5}"#,
    );
    assert!(answer.contains("\"persisted\":true"), "{answer}");
    let written = std::fs::read_to_string(&*path).unwrap();
    assert_eq!(
        written,
        text.replace(
            "\" },  # the main one",
            "\", state = \"maint\" },  # the main one"
        )
        .replace("weight = 2", "weight = 5")
    );
    // A change that would leave the file invalid (every server at weight 0) is refused,
    // and nothing changes.
    admin_post(
        &admin,
        "/api/backends/app/servers/a/weight",
        r#"{"weight": 0}"#,
    );
    let refused = admin_post(
        &admin,
        "/api/backends/app/servers/b/weight",
        r#"{"weight": 0}"#,
    );
    assert!(refused.starts_with("HTTP/1.1 409"), "{refused}");
    assert!(
        std::fs::read_to_string(&*path)
            .unwrap()
            .contains("weight = 5")
    );

    // After a restart, the server is still in maintenance.
    drop(running);
    let _running = start();
    let info = admin_call(&admin, "GET", "/api/backends");
    assert!(
        info.contains("\"name\":\"a\"") && info.contains("\"state\":\"maint\""),
        "{info}"
    );
}

#[test]
fn without_persist_the_file_is_left_alone_and_the_answer_says_so() {
    let server = slow_server(Duration::ZERO);
    let admin = format!("127.0.0.1:{}", free_port());
    let text = proxied_config(&server, "") + &format!("\n[admin]\nbind = \"{admin}\"\n");
    let path = write_config("no-persist.toml", &text);
    let (child, _, mut stderr) = spawn_run(&path);
    let _child = Killed(child);
    logged_after(&mut stderr, "admin listening on ").expect("the admin listener is up");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let answer = admin_post(
        &admin,
        "/api/backends/app/servers/a/state",
        r#"{"state": "drain"}"#,
    );
    assert!(
        answer.contains("\"persisted\":false") && answer.contains("\"state\":\"drain\""),
        "{answer}"
    );
    assert_eq!(std::fs::read_to_string(&*path).unwrap(), text);
}

#[test]
fn the_access_log_goes_to_syslog_over_a_local_socket_or_udp() {
    use std::os::unix::net::UnixDatagram;
    let server = slow_server(Duration::ZERO);
    let dir = std::env::temp_dir().join(format!("weir-cli-syslog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("log");
    let local = UnixDatagram::bind(&socket).unwrap();
    local
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let targets = [
        format!(
            "{{ syslog = \"{}\", facility = \"local3\" }}",
            socket.display()
        ),
        format!(
            "{{ syslog = \"udp://{}\", format = \"rfc5424\" }}",
            udp.local_addr().unwrap()
        ),
    ];
    for (i, target) in targets.iter().enumerate() {
        let text = proxied_config(&server, &format!("[global]\naccess_log = {target}"));
        let path = write_config(&format!("syslog{i}.toml"), &text);
        let (child, addr, mut stderr) = spawn_run(&path);
        let _child = Killed(child);
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        assert!(get(&addr).starts_with("HTTP/1.1 200"));
        let mut buf = [0u8; 2048];
        let n = if i == 0 {
            local.recv(&mut buf).unwrap()
        } else {
            udp.recv(&mut buf).unwrap()
        };
        let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
        let header = if i == 0 { "<158>" } else { "<134>1 " };
        assert!(datagram.starts_with(header), "{datagram}");
        assert!(
            datagram.contains(" www app/a ") && datagram.contains("\"GET / HTTP/1.1\""),
            "{datagram}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn weir_starts_before_its_syslog_daemon_and_logs_once_it_is_there() {
    use std::os::unix::net::UnixDatagram;
    let server = slow_server(Duration::ZERO);
    let dir = std::env::temp_dir().join(format!("weir-cli-syslog-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("log");
    let text = proxied_config(
        &server,
        &format!(
            "[global]\naccess_log = {{ syslog = \"{}\" }}",
            socket.display()
        ),
    );
    let path = write_config("syslog-late.toml", &text);
    // No daemon yet: weir starts and serves all the same (HAProxy does too).
    let (child, addr, mut stderr) = spawn_run(&path);
    let _child = Killed(child);
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    assert!(get(&addr).starts_with("HTTP/1.1 200"));
    // The daemon comes up: the next request's line reaches it.
    let daemon = UnixDatagram::bind(&socket).unwrap();
    daemon
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(get(&addr).starts_with("HTTP/1.1 200"));
    let mut buf = [0u8; 2048];
    let n = daemon.recv(&mut buf).unwrap();
    let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        datagram.starts_with("<134>") && datagram.contains(" www app/a "),
        "{datagram}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cargo` with `args` in `dir`, as a plugin author runs it there, into `target` (shared by
/// the runs of these tests); stdout and stderr together, when it succeeded.
fn cargo(dir: &std::path::Path, toolchain: Option<&str>, args: &[&str]) -> String {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-new-target");
    let mut command = match toolchain {
        Some(t) => {
            let mut c = Command::new("rustup");
            c.args(["run", t, "cargo"]);
            c
        }
        None => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
    };
    // What the outer build set for weir's own target, not the project's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    if toolchain.is_some() {
        for var in ["RUSTC", "RUSTDOC", "RUSTUP_TOOLCHAIN", "CARGO"] {
            command.env_remove(var);
        }
    }
    let out = command
        .args(args)
        .current_dir(dir)
        .env(
            "CARGO_TARGET_DIR",
            target.join(toolchain.unwrap_or("pinned")),
        )
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{text}",
        dir.display()
    );
    text
}

/// `weir plugin new NAME --hooks HOOKS` in a fresh directory under the test's target:
/// (that directory, the project's).
fn plugin_new(name: &str, hooks: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plugin-new-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let out = Command::new(WEIR)
        .args(["plugin", "new", name, "--hooks", hooks])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = root.join(name);
    (root, project)
}

/// A server that answers /health with `ok` and anything else with the request's head, so
/// that the test sees the headers weir sent.
fn head_echo_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).unwrap_or(0) != 1 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let body = if head.starts_with(b"GET /health ") {
                        b"ok".to_vec()
                    } else {
                        head
                    };
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Powered-By: test\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(&body);
                    if stream.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `weir plugin new` writes a project that builds as it is: its own unit tests pass, it
/// builds for wasm32-wasip2 as its README says, `weir plugin check` and `weir check` load
/// it, and weir serves with its generated weir.toml (the addresses swapped for the test's):
/// the request hook answers a denied path itself and tags the rest, the response hook
/// removes x-powered-by, the health hook keeps the server up.
#[test]
fn plugin_new_writes_a_project_that_tests_builds_and_runs_in_weir() {
    let (root, project) = plugin_new("edge-guard", "request,response,health,connect");
    let again = Command::new(WEIR)
        .args(["plugin", "new", "edge-guard"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already: nothing written"));

    let tested = cargo(&project, None, &["test"]);
    assert!(tested.contains("test result: ok. 6 passed"), "{tested}");
    cargo(
        &project,
        None,
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let wasm = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("plugin-new-target/pinned/wasm32-wasip2/release/edge_guard.wasm");

    let checked = Command::new(WEIR)
        .args(["plugin", "check"])
        .arg(&wasm)
        .args(["--config", r#"{"tag": "t"}"#])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{said}");
    assert!(said.starts_with("plugin edge-guard 0.1.0\n"), "{said}");
    assert!(
        said.contains("hooks: on-request, on-response, on-health-check, on-connect\n"),
        "{said}"
    );
    assert!(said.contains("on-response reads headers: none\n"), "{said}");
    let refused = Command::new(WEIR)
        .args(["plugin", "check"])
        .arg(&wasm)
        .args(["--config", r#"{"tag": ""}"#])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("weir would refuse it: configure failed: tag: must not be empty"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // The generated weir.toml names the component where cargo built it in the project;
    // this test's build went to a shared target directory, so the file is put there.
    let built = project.join("target/wasm32-wasip2/release");
    std::fs::create_dir_all(&built).unwrap();
    std::fs::copy(&wasm, built.join("edge_guard.wasm")).unwrap();
    let status = Command::new(WEIR)
        .args(["check", "--config"])
        .arg(project.join("weir.toml"))
        .status()
        .unwrap();
    assert!(status.success(), "weir check on the generated weir.toml");

    let server = head_echo_server();
    let text = std::fs::read_to_string(project.join("weir.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:9000", &server);
    let run = project.join("run.toml");
    std::fs::write(&run, format!("[global]\nthreads = 1\n\n{text}")).unwrap();
    let mut child = Command::new(WEIR)
        .args(["run", "--config"])
        .arg(&run)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = logged_after(&mut stderr, "frontend www listening on ").expect("www listens");
    let denied = try_get_path(&addr, "/admin/users").unwrap();
    let tagged = try_get_path(&addr, "/hello").unwrap();
    terminate(&mut child);
    let _ = std::fs::remove_dir_all(&root);
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert!(tagged.starts_with("HTTP/1.1 200"), "{tagged}");
    assert!(
        tagged.contains("x-edge-guard: edge\r\n"),
        "the request hook's header reached the server: {tagged}"
    );
    assert!(
        !tagged.to_ascii_lowercase().contains("x-powered-by"),
        "the response hook removed it: {tagged}"
    );
}

/// The SDK's `rust-version` is true: a project `weir plugin new` writes builds (natively
/// and for wasm32-wasip2) and passes its tests with that Rust. Needs the toolchain:
/// `rustup toolchain install <rust-version> --profile minimal --target wasm32-wasip2`
/// (.ci/run installs it).
#[test]
#[ignore = "needs the SDK's rust-version toolchain (CI installs it)"]
fn the_sdk_builds_with_its_rust_version() {
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/Cargo.toml"))
            .unwrap(),
    )
    .unwrap();
    let version = manifest["package"]["rust-version"]
        .as_str()
        .expect("sdk/Cargo.toml has a rust-version of its own")
        .to_owned();
    // rustup names a release by all three numbers.
    let version = if version.matches('.').count() == 1 {
        format!("{version}.0")
    } else {
        version
    };
    let installed = Command::new("rustup")
        .args(["run", &version, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "Rust {version} is not installed: rustup toolchain install {version} --profile minimal --target wasm32-wasip2"
    );
    let (root, project) = plugin_new("oldest-rust", "request,response,health,connect");
    let tested = cargo(&project, Some(&version), &["test"]);
    assert!(tested.contains("test result: ok. 6 passed"), "{tested}");
    cargo(
        &project,
        Some(&version),
        &["build", "--release", "--target", "wasm32-wasip2"],
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// `weir plugin check` says why weir would refuse what it is given, and exits 1.
#[test]
fn plugin_check_says_why_weir_would_refuse_a_file() {
    let check = |file: &str, config: &str| {
        let out = Command::new(WEIR)
            .args(["plugin", "check", file, "--config", config])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (code, said) = check(manifest, "{}");
    assert_eq!(code, Some(1));
    assert!(
        said.contains("weir would refuse it: not a weir plugin component: not WebAssembly"),
        "{said}"
    );
    let (code, said) = check("/nonexistent/plugin.wasm", "{}");
    assert_eq!(code, Some(1));
    assert!(said.contains("cannot read"), "{said}");
    let (code, said) = check(manifest, "{tag");
    assert_eq!(code, Some(1));
    assert!(said.starts_with("--config: not JSON"), "{said}");
}
