//! The layer 4 bench's tools (bench/tcp): servers, load, and two bare relays that measure
//! how bytes best cross a proxy.
//!
//! ```text
//! tcpload serve ECHO_ADDR SOURCE_ADDR   echo: 16 bytes back per connection; source: the
//!                                       count of bytes a client asks for (8 bytes, LE)
//! tcpload conns ADDR SECONDS CONCURRENCY   short connections: connect, 16 bytes each way,
//!                                          close; prints {"connections": n, "seconds": s}
//! tcpload stream ADDR BYTES              one connection receiving BYTES from the source;
//!                                        prints {"bytes": n, "seconds": s}
//! tcpload relay LISTEN TARGET copy|splice   a one-thread relay: tokio's copy_bidirectional,
//!                                           or splice(2) through a pipe, no user-space copy
//! tcpload rate ADDR RATE SECONDS CONNECTIONS   HTTP/1.1 keep-alive GETs of / at a fixed
//!                                              RATE per second over CONNECTIONS; prints
//!                                              {"requests": n, "seconds": s, "errors": e}
//! tcpload latency ADDR RATE SECONDS CONNECTIONS   the same load as `rate`, paced
//!                                                 precisely (a thread per connection)
//!                                                 and timed from each request's
//!                                                 scheduled moment; prints {"requests",
//!                                                 "errors", "seconds", "p50_ms", "p90_ms",
//!                                                 "p99_ms", "p999_ms", "max_ms", "late"}
//! tcpload hold ADDR CONNECTIONS SECONDS   opens CONNECTIONS keep-alive connections (at
//!                                         most 100 connecting at once), one GET / on
//!                                         each (5 s at most: then it counts as an
//!                                         error), then holds them all idle; prints
//!                                         {"held": n, "errors": e} once all are in and
//!                                         answered, and exits SECONDS later
//! ```
//!
//! `latency` does not hide a stall (coordinated omission): a request that could not be
//! sent on time because the one before it was still waiting is timed from when it should
//! have been sent, as a user arriving then would have waited. Each connection is a thread
//! sleeping to its next moment with a timer slack of 1 µs; `late` counts requests sent
//! more than 1 ms after their moment.
//!
//! `rate` holds the offered load the same whatever answers, where a closed-loop client
//! such as wrk sends as fast as the proxy answers: two proxies then see the same arrivals,
//! so their CPU per request compares work with work (a slower proxy otherwise gets its
//! requests in bigger batches, which makes each one cheaper). Connection k sends request
//! k, k + C, k + 2C... at its scheduled time (tokio's timer: to the millisecond), or at
//! once when it fell behind.

#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let addr = |i: usize| -> SocketAddr { arg(i).parse().unwrap_or_else(|_| usage()) };
    let number = |i: usize| -> u64 { arg(i).parse().unwrap_or_else(|_| usage()) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match arg(0) {
        "serve" => runtime.block_on(serve(addr(1), addr(2))),
        "conns" => runtime.block_on(conns(addr(1), number(2), number(3))),
        "stream" => runtime.block_on(stream(addr(1), number(2))),
        "relay" => runtime.block_on(relay(addr(1), addr(2), arg(3) == "splice")),
        "rate" => runtime.block_on(rate(addr(1), number(2), number(3), number(4))),
        "hold" => runtime.block_on(hold(addr(1), number(2), number(3))),
        "latency" => latency(addr(1), number(2), number(3), number(4)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: tcpload serve ECHO SOURCE | conns ADDR SECONDS CONCURRENCY | stream ADDR BYTES | relay LISTEN TARGET copy|splice | rate ADDR RATE SECONDS CONNECTIONS | latency ADDR RATE SECONDS CONNECTIONS | hold ADDR CONNECTIONS SECONDS"
    );
    std::process::exit(2)
}

async fn serve(echo: SocketAddr, source: SocketAddr) {
    let echo = TcpListener::bind(echo).await.expect("bind the echo server");
    let source = TcpListener::bind(source).await.expect("bind the source");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 16];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    while let Ok((mut s, _)) = source.accept().await {
        tokio::spawn(async move {
            let mut asked = [0u8; 8];
            if s.read_exact(&mut asked).await.is_err() {
                return;
            }
            let mut left = u64::from_le_bytes(asked);
            let chunk = vec![0u8; 256 * 1024];
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
        });
    }
}

async fn conns(addr: SocketAddr, seconds: u64, concurrency: u64) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                if s.write_all(b"0123456789abcdef").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.await;
    }
    println!(
        "{{\"connections\": {}, \"seconds\": {elapsed:.3}}}",
        done.load(Ordering::Relaxed)
    );
}

async fn stream(addr: SocketAddr, bytes: u64) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    s.write_all(&bytes.to_le_bytes()).await.expect("ask");
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    println!(
        "{{\"bytes\": {got}, \"seconds\": {:.3}}}",
        started.elapsed().as_secs_f64()
    );
}

async fn relay(listen: SocketAddr, target: SocketAddr, splice: bool) {
    let listener = TcpListener::bind(listen).await.expect("bind the relay");
    while let Ok((mut client, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            if splice {
                let _ = splice_both(&client, &server).await;
            } else {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// Both directions through pipes with splice(2): the bytes never enter user space.
async fn splice_both(a: &TcpStream, b: &TcpStream) -> std::io::Result<()> {
    let (ab, ba) = tokio::join!(splice_one(a, b), splice_one(b, a));
    ab.and(ba)
}

async fn splice_one(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (pr, pw) = (fds[0], fds[1]);
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    let result = async {
        loop {
            // Socket → pipe.
            let n = from
                .async_io(Interest::READABLE, || {
                    // SAFETY: both descriptors are open for the call; null offsets.
                    let n = unsafe {
                        libc::splice(
                            from.as_raw_fd(),
                            std::ptr::null_mut(),
                            pw,
                            std::ptr::null_mut(),
                            1 << 20,
                            flags,
                        )
                    };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await?;
            if n == 0 {
                // SAFETY: a plain shutdown of an open socket's write side.
                unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
                return Ok(());
            }
            // Pipe → socket, all of it.
            let mut left = n;
            while left > 0 {
                let m = to
                    .async_io(Interest::WRITABLE, || {
                        // SAFETY: as above.
                        let m = unsafe {
                            libc::splice(
                                pr,
                                std::ptr::null_mut(),
                                to.as_raw_fd(),
                                std::ptr::null_mut(),
                                left,
                                flags,
                            )
                        };
                        if m < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(m as usize)
                        }
                    })
                    .await?;
                left -= m;
            }
        }
    }
    .await;
    // SAFETY: the pipe's two ends, opened above, closed once.
    unsafe {
        libc::close(pr);
        libc::close(pw);
    }
    result
}

async fn rate(addr: SocketAddr, rate: u64, seconds: u64, connections: u64) {
    if rate == 0 || connections == 0 {
        usage();
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(seconds);
    let every = Duration::from_secs_f64(connections as f64 / rate as f64);
    let mut tasks = Vec::new();
    for k in 0..connections {
        let first = start + Duration::from_secs_f64(k as f64 / rate as f64);
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut errors = 0u64;
            let mut conn = None;
            let mut next = first;
            while next < end {
                tokio::time::sleep_until(next).await;
                next += every;
                if conn.is_none() {
                    conn = TcpStream::connect(addr).await.ok();
                }
                let Some(stream) = conn.as_mut() else {
                    errors += 1;
                    continue;
                };
                match get(stream, "bench").await {
                    Ok(true) => done += 1,
                    Ok(false) => {
                        errors += 1;
                        conn = None;
                    }
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (done, errors)
        }));
    }
    let (mut requests, mut errors) = (0, 0);
    for t in tasks {
        let (d, e) = t.await.expect("a connection's task");
        requests += d;
        errors += e;
    }
    println!(
        "{{\"requests\": {requests}, \"seconds\": {}, \"errors\": {errors}}}",
        (tokio::time::Instant::now() - start).as_secs_f64()
    );
}

fn latency(addr: SocketAddr, rate: u64, seconds: u64, connections: u64) {
    if rate == 0 || connections == 0 {
        usage();
    }
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(seconds);
    let every = Duration::from_secs_f64(connections as f64 / rate as f64);
    let threads: Vec<_> = (0..connections)
        .map(|k| {
            let first = start + Duration::from_secs_f64(k as f64 / rate as f64);
            std::thread::spawn(move || paced(addr, first, every, end))
        })
        .collect();
    let (mut micros, mut errors, mut late) = (Vec::new(), 0u64, 0u64);
    for t in threads {
        let got = t.join().expect("a connection's thread");
        micros.extend(got.micros);
        errors += got.errors;
        late += got.late;
    }
    micros.sort_unstable();
    let at = |q: f64| -> f64 {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"seconds\": {seconds}, \"p50_ms\": {:.3}, \"p90_ms\": {:.3}, \"p99_ms\": {:.3}, \"p999_ms\": {:.3}, \"max_ms\": {:.3}, \"late\": {late}}}",
        micros.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        at(1.0),
    );
}

/// What one paced connection saw.
struct Paced {
    /// Each answered request's time from its scheduled moment to its last byte, in µs.
    micros: Vec<u64>,
    errors: u64,
    /// Requests sent more than 1 ms after their moment.
    late: u64,
}

/// One connection's requests at `first`, `first + every`, ... until `end`.
fn paced(addr: SocketAddr, first: Instant, every: Duration, end: Instant) -> Paced {
    // SAFETY: prctl with PR_SET_TIMERSLACK takes a value and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64) };
    let mut seen = Paced {
        micros: Vec::new(),
        errors: 0,
        late: 0,
    };
    let host = addr.to_string();
    let mut conn: Option<std::net::TcpStream> = None;
    let mut moment = first;
    while moment < end {
        let now = Instant::now();
        if now < moment {
            std::thread::sleep(moment - now);
        } else if now - moment > Duration::from_millis(1) {
            seen.late += 1;
        }
        if conn.is_none() {
            conn = std::net::TcpStream::connect(addr).ok();
            if let Some(c) = &conn {
                let _ = c.set_nodelay(true);
            }
        }
        let answered = conn
            .as_mut()
            .is_some_and(|c| get_blocking(c, &host).unwrap_or(false));
        if answered {
            seen.micros.push(moment.elapsed().as_micros() as u64);
        } else {
            seen.errors += 1;
            conn = None;
        }
        moment += every;
    }
    seen
}

/// [`get`] on a blocking socket.
fn get_blocking(stream: &mut std::net::TcpStream, host: &str) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(answer) = answer(&buf) {
            return Ok(answer);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn hold(addr: SocketAddr, connections: u64, seconds: u64) {
    use std::io::Write;
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.expect("the gate stays open");
                let opened = async {
                    let mut stream = TcpStream::connect(addr).await.ok()?;
                    get(&mut stream, &addr.to_string())
                        .await
                        .ok()?
                        .then_some(stream)
                };
                tokio::time::timeout(Duration::from_secs(5), opened)
                    .await
                    .ok()
                    .flatten()
            })
        })
        .collect();
    let mut held = Vec::with_capacity(tasks.len());
    let mut errors = 0u64;
    for t in tasks {
        match t.await.expect("a connection's task") {
            Some(stream) => held.push(stream),
            None => errors += 1,
        }
    }
    println!("{{\"held\": {}, \"errors\": {errors}}}", held.len());
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

/// One `GET /` with this Host on a keep-alive connection; true for a 2xx answer read
/// whole (by its Content-Length).
async fn get(stream: &mut TcpStream, host: &str) -> std::io::Result<bool> {
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if let Some(answer) = answer(&buf) {
            return Ok(answer);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(false);
        }
    }
}

/// Whether `buf` holds a whole response (by its Content-Length): None while more must
/// come; then true for a 2xx, false for anything else (or a head past 64 KiB, or without
/// a Content-Length).
fn answer(buf: &[u8]) -> Option<bool> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (buf.len() > 64 * 1024).then_some(false);
    };
    let head = String::from_utf8_lossy(&buf[..head_end + 4]).to_ascii_lowercase();
    let Some(length) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Some(false);
    };
    (buf.len() >= head_end + 4 + length).then(|| head.starts_with("http/1.1 2"))
}
