//! Two weir nodes behind keepalived, with examples/ha/'s files, in network namespaces
//! the test makes and removes itself: a bridge joins node A, node B, a server host (two
//! servers) and a client; addresses come from 198.18.0.0/24 and nothing is routed
//! outside the namespaces. keepalived (Debian's package) moves the virtual address
//! 198.18.0.100 by VRRP, with `weir health` as its `vrrp_script`.
//!
//! They need root, `ip netns` and keepalived, so they are ignored by a plain
//! `cargo test`; run them with `cargo test -p weir --test ha -- --ignored` (CI does,
//! after installing keepalived). Where they cannot run they say why in one line and fail
//! rather than pass.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

mod common;
const VIP: &str = "198.18.0.100";

/// Runs a command to its end; panics with its output when it fails.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the lab needs, or the one line that says what is missing.
fn prerequisites() -> Result<(), String> {
    let uid = run(&["id", "-u"]);
    if uid.trim() != "0" {
        return Err("SKIPPED: the HA tests need root (network namespaces)".into());
    }
    for (tool, why) in [
        ("ip", "iproute2"),
        ("keepalived", "keepalived (apt-get install keepalived)"),
        (
            "redis-server",
            "redis-server (apt-get install redis-server)",
        ),
        ("python3", "python3, for the servers and the client"),
    ] {
        if !common::installed(tool) {
            return Err(format!("SKIPPED: the HA tests need {why}"));
        }
    }
    Ok(())
}

/// The namespaces, files and processes of one test; all removed when it ends.
struct Lab {
    prefix: String,
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

/// A node of the lab: its namespace's role and address.
const ROLES: [(&str, &str); 4] = [
    ("a", "198.18.0.11"),
    ("b", "198.18.0.12"),
    ("s", "198.18.0.20"),
    ("c", "198.18.0.30"),
];

impl Lab {
    /// The bridge and the four hosts on it. `tag` keeps the names of tests running at
    /// once apart.
    fn new(tag: char) -> Lab {
        if let Err(line) = prerequisites() {
            println!("{line}");
            panic!("{line}");
        }
        let prefix = format!("wh{}{tag}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("weir-ha-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            prefix,
            dir,
            children: Vec::new(),
        };
        let hub = lab.ns("hub");
        run(&["ip", "netns", "add", &hub]);
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        for (role, addr) in ROLES {
            let ns = lab.ns(role);
            let (inside, outside) = (
                format!("{}{role}0", lab.prefix),
                format!("{}{role}1", lab.prefix),
            );
            run(&["ip", "netns", "add", &ns]);
            run(&[
                "ip", "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ]);
            run(&["ip", "link", "set", &inside, "netns", &ns]);
            run(&["ip", "-n", &ns, "link", "set", &inside, "name", "eth0"]);
            run(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            run(&["ip", "link", "set", &outside, "netns", &hub]);
            run(&["ip", "-n", &hub, "link", "set", &outside, "master", "br0"]);
            run(&["ip", "-n", &hub, "link", "set", &outside, "up"]);
        }
        lab
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Starts `args` in the namespace of `role`, its output in a file of the lab.
    fn spawn(&mut self, name: &str, role: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    /// Stops the process started as `name` with `signal`.
    fn signal(&mut self, name: &str, signal: &str) {
        let (_, child) = self.children.iter().find(|(n, _)| n == name).unwrap();
        run(&["kill", &format!("-{signal}"), &child.id().to_string()]);
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Two servers on the server host, answering `GET /name` with s1 and s2.
    fn servers(&mut self) {
        for (name, port) in [("s1", "8001"), ("s2", "8002")] {
            let root = self.dir.join(name);
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("name"), name).unwrap();
            let root = root.to_str().unwrap().to_owned();
            self.spawn(
                name,
                "s",
                &[
                    "python3",
                    "-m",
                    "http.server",
                    port,
                    "--bind",
                    "198.18.0.20",
                    "--directory",
                    &root,
                ],
            );
        }
    }

    /// The nodes' shared store: redis-server on the server host.
    fn redis(&mut self) {
        self.spawn(
            "redis",
            "s",
            &[
                "redis-server",
                "--port",
                "6379",
                "--bind",
                "198.18.0.20",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        );
    }

    /// weir and keepalived on node `role`, with examples/ha/'s files: weir.toml (its
    /// servers and Redis moved to the lab's, its rate limit `limit` when given, and a
    /// header naming the node that answered) and
    /// keepalived-<role>.conf (the lab's weir binary and virtual address; without
    /// `enable_script_security`, since the binary's build directory may not satisfy it).
    fn node(&mut self, role: &str, limit: Option<&str>) {
        let example = |name: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/ha")
                .join(name);
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let weir = example("weir.toml")
            .replace("192.0.2.21:8080", "198.18.0.20:8001")
            .replace("192.0.2.22:8080", "198.18.0.20:8002")
            .replace("192.0.2.30:6379", "198.18.0.20:6379")
            .replace(EXAMPLE_LIMIT, limit.unwrap_or(EXAMPLE_LIMIT))
            .replace(
                "plugins = [\"limit\", \"sticky\"]",
                "plugins = [\"limit\", \"sticky\", \"mark\"]",
            )
            + &format!(
                "\n[plugin.mark]\nstock = \"header-rewrite\"\nconfig = {{ response = [ {{ set = \"x-node\", value = \"{role}\" }} ] }}\n"
            );
        let config = self.write(&format!("weir-{role}.toml"), &weir);
        let config = config.to_str().unwrap().to_owned();
        self.spawn(
            &format!("weir-{role}"),
            role,
            &[WEIR, "run", "--config", &config],
        );
        // Up before keepalived asks it.
        let ns = self.ns(role);
        let healthy = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            Command::new("ip")
                .args(["netns", "exec", &ns, WEIR, "health"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(
            healthy,
            "weir on node {role} never became healthy:\n{}",
            self.log(&format!("weir-{role}"))
        );
        let keepalived = example(&format!("keepalived-{role}.conf"))
            .replace("/usr/local/bin/weir", WEIR)
            .replace("192.0.2.100", VIP)
            .replace("  enable_script_security\n", "");
        let keepalived = self.write(&format!("keepalived-{role}.conf"), &keepalived);
        let pid = |what: &str| self.dir.join(format!("keepalived-{role}-{what}.pid"));
        let args = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--vrrp",
            "-f",
            keepalived.to_str().unwrap(),
            "-p",
            pid("main").to_str().unwrap(),
            "-r",
            pid("vrrp").to_str().unwrap(),
            "-c",
            pid("checkers").to_str().unwrap(),
        ]
        .map(str::to_owned);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(&format!("keepalived-{role}"), role, &args);
    }

    /// Whether node `role` holds the virtual address.
    fn holds_vip(&self, role: &str) -> bool {
        run(&[
            "ip",
            "-n",
            &self.ns(role),
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .contains(&format!("{VIP}/"))
    }

    /// Waits up to `limit` for node `role` to hold the address: how long it took.
    fn wait_for_vip(&self, role: &str, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.holds_vip(role) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The client: for `seconds`, one request every `gap_ms` to the virtual address, each
    /// on a new connection, keeping the sticky cookie it is given. One line a request,
    /// in the log `name`.
    fn client(&mut self, name: &str, seconds: f64, gap_ms: u32) {
        let script = self.write("client.py", CLIENT);
        let script = script.to_str().unwrap().to_owned();
        let (seconds, gap) = (
            seconds.to_string(),
            (f64::from(gap_ms) / 1000.0).to_string(),
        );
        self.spawn(name, "c", &["python3", &script, VIP, &seconds, &gap]);
    }

    /// Waits for the client `name` to end (bounded), and reads its lines.
    fn client_lines(&mut self, name: &str) -> Vec<Answer> {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the client never ended"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap();
        text.lines().filter_map(Answer::parse).collect()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for role in ["a", "b", "s", "c", "hub"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request of the client: when it was sent (seconds since the Unix epoch), and the
/// node and server that answered, or the failure.
#[derive(Debug)]
struct Answer {
    at: f64,
    outcome: Result<(u16, String, String), String>,
}

impl Answer {
    fn parse(line: &str) -> Option<Answer> {
        let mut words = line.split_whitespace();
        let at = words.next()?.parse().ok()?;
        let outcome = match words.next()? {
            "ok" => {
                let status = words.next()?.parse().ok()?;
                Ok((status, words.next()?.to_owned(), words.next()?.to_owned()))
            }
            _ => Err(words.collect::<Vec<_>>().join(" ")),
        };
        Some(Answer { at, outcome })
    }
}

const CLIENT: &str = r#"
import socket, sys, time
vip, seconds, gap = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
cookie, end = None, time.time() + seconds
while time.time() < end:
    at = time.time()
    try:
        s = socket.create_connection((vip, 8080), timeout=5)
        head = "GET /name HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n"
        if cookie:
            head += "Cookie: " + cookie + "\r\n"
        s.sendall((head + "\r\n").encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        top, _, body = data.partition(b"\r\n\r\n")
        lines = top.decode().split("\r\n")
        headers = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if cookie is None and "set-cookie" in headers:
            cookie = headers["set-cookie"].split(";")[0]
        print("%.3f ok %s %s %s" % (at, lines[0].split()[1], headers.get("x-node", "-"),
              body.decode().strip() or "-"), flush=True)
    except Exception as e:
        print("%.3f fail %s %s" % (at, type(e).__name__, e), flush=True)
    time.sleep(gap)
"#;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// examples/ha/weir.toml's rate limit.
const EXAMPLE_LIMIT: &str = r#"requests = 100, window = "1s""#;

/// The lab with both nodes up (with `limit` instead of the example's rate limit, when
/// given) and A holding the address.
fn pair(tag: char, limit: Option<&str>) -> Lab {
    let mut lab = Lab::new(tag);
    lab.servers();
    lab.redis();
    lab.node("a", limit);
    lab.node("b", limit);
    assert!(
        lab.wait_for_vip("a", Duration::from_secs(15)).is_some(),
        "node A never took the address:\n{}",
        lab.log("keepalived-a")
    );
    lab
}

/// What a stop of the active node's weir did: when it was signalled, how long the
/// address took to reach B, and the client's answers around it.
struct Move {
    at: f64,
    took: Duration,
    answers: Vec<Answer>,
}

/// Runs the client for `seconds`, stops A's weir with `signal` two seconds in, and
/// waits for the address to reach B.
fn stop_the_active_node(lab: &mut Lab, signal: &str, seconds: u32) -> Move {
    lab.client("client", f64::from(seconds), 50);
    std::thread::sleep(Duration::from_secs(2));
    let at = now();
    lab.signal("weir-a", signal);
    let took = lab.wait_for_vip("b", Duration::from_secs(10));
    let answers = lab.client_lines("client");
    let took = took.unwrap_or_else(|| {
        panic!(
            "the address never moved to B:\n{}\n{}",
            lab.log("keepalived-a"),
            lab.log("keepalived-b")
        )
    });
    println!(
        "the address moved to the standby {} ms after SIG{signal}",
        took.as_millis()
    );
    Move { at, took, answers }
}

/// Every answer, one a line, for a failure message.
fn summary(answers: &[Answer]) -> String {
    answers
        .iter()
        .map(|a| match &a.outcome {
            Ok((status, node, server)) => format!("{:.3} {status} {node} {server}", a.at),
            Err(e) => format!("{:.3} FAILED {e}", a.at),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root, ip netns and keepalived: cargo test -p weir --test ha -- --ignored"]
fn killing_the_active_weir_moves_the_address_to_the_standby_within_3s() {
    let mut lab = pair('k', None);
    let Move {
        at: killed_at,
        took: moved,
        answers,
    } = stop_the_active_node(&mut lab, "KILL", 8);
    assert!(moved < Duration::from_secs(3), "{moved:?}");
    // Before the kill A answered; from a second after the move, B answers every request,
    // and the sticky client stays on its server. A request still in flight when SIGKILL
    // lands is cut with its connection (nothing can answer it): the requests of the last
    // 200 ms before the kill are left out.
    let before: Vec<&Answer> = answers.iter().filter(|a| a.at < killed_at - 0.2).collect();
    let after: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.at > killed_at + moved.as_secs_f64() + 1.0)
        .collect();
    assert!(
        before.len() > 10 && after.len() > 10,
        "{}",
        summary(&answers)
    );
    let server = match &before[0].outcome {
        Ok((200, node, server)) if node == "a" => server.clone(),
        other => panic!("{other:?}\n{}", summary(&answers)),
    };
    for a in before.iter().chain(&after) {
        let expected_node = if a.at < killed_at { "a" } else { "b" };
        match &a.outcome {
            Ok((200, node, s)) if node == expected_node && *s == server => {}
            _ => panic!("{a:?}\n{}", summary(&answers)),
        }
    }
}

#[test]
#[ignore = "needs root, ip netns and keepalived: cargo test -p weir --test ha -- --ignored"]
fn a_graceful_stop_of_the_active_node_moves_the_address_with_no_failed_request() {
    let mut lab = pair('g', None);
    let Move {
        at: stopped_at,
        answers,
        ..
    } = stop_the_active_node(&mut lab, "TERM", 10);
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.outcome.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", summary(&answers));
    let servers: std::collections::HashSet<&str> = answers
        .iter()
        .filter_map(|a| a.outcome.as_ref().ok().map(|(_, _, s)| s.as_str()))
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "the sticky client kept its server: {servers:?}"
    );
    let last = answers.last().expect("answers");
    assert!(
        matches!(&last.outcome, Ok((200, node, _)) if node == "b"),
        "B answers at the end\n{}",
        summary(&answers)
    );
    assert!(
        answers
            .iter()
            .any(|a| a.at > stopped_at && matches!(&a.outcome, Ok((_, n, _)) if n == "a")),
        "A went on answering during its grace\n{}",
        summary(&answers)
    );
}

#[test]
#[ignore = "needs root, ip netns, keepalived and redis-server: cargo test -p weir --test ha -- --ignored"]
fn a_clients_rate_limit_count_carries_over_the_move_through_redis() {
    // 25 a minute: a client that used 15 of them on A has about 10 left on B.
    let mut lab = pair('r', Some(r#"requests = 25, window = "60s""#));
    lab.client("before", 0.75, 50);
    let before = lab.client_lines("before");
    lab.signal("weir-a", "TERM");
    assert!(
        lab.wait_for_vip("b", Duration::from_secs(10)).is_some(),
        "the address never moved to B"
    );
    lab.client("after", 1.5, 50);
    let after = lab.client_lines("after");
    let admitted = |answers: &[Answer], node: &str| {
        answers
            .iter()
            .filter(|a| matches!(&a.outcome, Ok((200, n, _)) if n == node))
            .count()
    };
    let refused = after
        .iter()
        .filter(|a| matches!(&a.outcome, Ok((429, _, _))))
        .count();
    let (on_a, on_b) = (admitted(&before, "a"), admitted(&after, "b"));
    println!("admitted {on_a} on A, then {on_b} on B; {refused} refused on B");
    assert_eq!(on_a, before.len(), "{}", summary(&before));
    // B learns the client's count at its first sync after the client's first request
    // there (100 ms: two requests at this pace); counting alone it would admit 25.
    assert!(
        on_a + on_b <= 25 + 3 && refused > 0,
        "{}\n{}",
        summary(&before),
        summary(&after)
    );
}
