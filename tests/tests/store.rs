//! Plugins' kv through the real proxy with Redis as the shared store: what a plugin sets
//! is in Redis for the other nodes, and what another node wrote there is what the plugin
//! reads. (The counters' sharing between weir processes is in host/tests/store.rs.)
//!
//! Needs Debian's redis-server, so ignored by a plain `cargo test`; run with
//! `cargo test --workspace --test store -- --ignored` (CI does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_tests::*;

/// A redis-server of the test's own on a port it picked, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                let line = format!("SKIPPED: the store tests need redis-server ({e})");
                println!("{line}");
                panic!("{line}");
            });
        let redis = Redis { port, child };
        for _ in 0..100 {
            if redis.command(&["PING"]).is_ok_and(|r| r == "PONG") {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {port}");
    }

    /// One command; a string or integer reply, or "(nil)".
    fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        Ok(match line.split_at(1) {
            ("$", "-1") => "(nil)".to_owned(),
            ("$", n) => {
                let mut buf = vec![0; n.parse::<usize>().unwrap() + 2];
                r.read_exact(&mut buf)?;
                String::from_utf8_lossy(&buf[..buf.len() - 2]).into_owned()
            }
            (_, rest) => rest.to_owned(),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo test --workspace --test store -- --ignored"]
async fn a_plugins_kv_is_read_from_and_written_to_redis() {
    let redis = Redis::start();
    let server = MockServer::start("s1").await;
    let prefix = format!("weir-kv-{}:", std::process::id());
    let toml = with_plugins(
        config("roundrobin", &[("s1", server.addr, "")], ""),
        &["kv"],
        &[fixture_plugin("kv", "kv", "")],
    ) + &format!(
        "[state]\nstore = {{ redis = \"redis://127.0.0.1:{}/0\", prefix = \"{prefix}\", sync = \"100ms\", timeout = \"500ms\" }}\n",
        redis.port
    );
    let proxy = TestProxy::start(&toml).await;
    let mut client = Client::connect(proxy.addr()).await;
    let key = format!("{prefix}kv:kv:k");

    let set = client
        .send(
            http::Request::get("/")
                .header("host", "test.local")
                .header("x-set", "from-a")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(set.text(), "from-a");
    assert_eq!(redis.command(&["GET", &key]).unwrap(), "from-a");
    let ttl: i64 = redis.command(&["PTTL", &key]).unwrap().parse().unwrap();
    assert!((1..=60_000).contains(&ttl), "ttl {ttl}");

    // Another node writes; this one reads it once its cached read (100 ms) is over.
    redis.command(&["SET", &key, "from-b"]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(client.get("/").await.text(), "from-b");
    redis.command(&["DEL", &key]).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(client.get("/").await.text(), "(none)");
}
