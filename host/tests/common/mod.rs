//! Helpers the integration tests of several binaries share (each includes this file):
//! a free port, the check for a tool a test needs, and a redis-server of the test's own.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on now (bound, then closed), never handed out before in this
/// process: a test binary's tests run side by side, and the kernel may give the port that
/// one test was handed, and has not bound yet, to another.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Whether `tool` is on the PATH.
pub fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fails the test, in one visible line, when `tool` is missing: `line` says what needs it
/// and how to install it. Such a test is never counted as passed.
pub fn require(tool: &str, line: &str) {
    if !installed(tool) {
        let line = format!("SKIPPED: {line}");
        println!("{line}");
        panic!("{line}");
    }
}

/// A redis-server of the test's own on 127.0.0.1, without persistence, killed when
/// dropped. Where redis-server is missing, says so in one line and fails.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        require(
            "redis-server",
            "the store tests need redis-server (apt-get install redis-server)",
        );
        let mut redis = Redis {
            port: free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts it (again) on its port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..100 {
            if self.command(&["PING"]).is_ok_and(|r| r == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One command in RESP; its reply as one line per element (bulk strings by value,
    /// nil as nothing, simple strings and integers without their type mark).
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut lines = Vec::new();
        read_reply(&mut r, &mut lines)?;
        Ok(lines.join("\n"))
    }
}

fn read_reply(r: &mut impl BufRead, lines: &mut Vec<String>) -> std::io::Result<()> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    match line.as_bytes().first() {
        Some(b'*') => {
            for _ in 0..line[1..].parse::<i64>().unwrap_or(0).max(0) {
                read_reply(r, lines)?;
            }
        }
        Some(b'$') => {
            let n: i64 = line[1..].parse().unwrap_or(-1);
            if n >= 0 {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                lines.push(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
        }
        Some(b'+' | b':') => lines.push(line[1..].to_owned()),
        _ => lines.push(line),
    }
    Ok(())
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
