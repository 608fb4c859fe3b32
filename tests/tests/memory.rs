//! Memory per connection, counted as heap bytes through the real proxy: what weir holds
//! for an idle keep-alive client connection. Heap bytes, unlike RSS or time, are the same
//! from run to run, so a test can hold a bound (the bench reports RSS: BENCHMARKS.md).
//!
//! This binary counts every allocation of its process, so it holds this one test only.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use weir_tests::{MockServer, TestProxy, config};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: each method forwards to the system allocator with the same contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One GET on a blocking connection, read to the end of its body (by Content-Length).
fn get(stream: &mut std::net::TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: www\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "the proxy closed the connection");
        got += n;
        let text = std::str::from_utf8(&buf[..got]).unwrap();
        if let Some(end) = text.find("\r\n\r\n") {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if got >= end + 4 + length {
                return;
            }
        }
    }
}

/// Each of 200 client connections makes one request and then waits: with hyper's
/// buffers kept (8 KiB to write from the connection's start, 8 KiB to read from its
/// first read) and a task with room for TLS and HTTP/2 inline, each held over 26 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_holds_a_few_kib() {
    const CONNECTIONS: usize = 200;
    const BOUND: isize = 8 * 1024;
    let server = MockServer::start("s1").await;
    let proxy = TestProxy::start(&config("roundrobin", &[("s1", server.addr, "")], "")).await;
    let addr = proxy.addr();
    let per_connection = tokio::task::spawn_blocking(move || {
        // A first exchange opens the pooled server connection and warms what is made once.
        let mut first = std::net::TcpStream::connect(addr).unwrap();
        get(&mut first);
        std::thread::sleep(Duration::from_millis(200));
        let mut held = Vec::with_capacity(CONNECTIONS);
        let before = LIVE.load(Ordering::Relaxed);
        for _ in 0..CONNECTIONS {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            get(&mut stream);
            held.push(stream);
        }
        std::thread::sleep(Duration::from_millis(300));
        let after = LIVE.load(Ordering::Relaxed);
        drop(held);
        (after - before) / CONNECTIONS as isize
    })
    .await
    .unwrap();
    assert!(
        per_connection < BOUND,
        "an idle keep-alive connection holds {per_connection} bytes of heap (at most {BOUND})"
    );
    eprintln!("an idle keep-alive connection holds {per_connection} bytes of heap");
}
