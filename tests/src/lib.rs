//! Test helpers: mock servers on 127.0.0.1:0, raw clients, and the real weir proxy started
//! in-process from a TOML string.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

pub mod h2raw;
pub mod tls;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Counters a mock server keeps, for tests to assert on.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Requests whose body was read to its end.
    pub completed: AtomicUsize,
    pub concurrent: AtomicUsize,
    pub max_concurrent: AtomicUsize,
    /// Requests to /health.
    pub health_checks: AtomicUsize,
    /// The status /health answers (200 when 0).
    pub health_status: AtomicU16,
    /// When not 0, every other request is answered with this status.
    pub fail_status: AtomicU16,
    /// When the first /health request came.
    pub first_health: Mutex<Option<std::time::Instant>>,
    /// Method and headers of the last /health request.
    pub last_health: Mutex<Option<(http::Method, http::HeaderMap)>>,
    /// Paths in the order requests arrived.
    pub arrivals: Mutex<Vec<String>>,
    /// The body /health answers with ("healthy" when None).
    pub health_body: Mutex<Option<String>>,
}

/// Hands a test control over a streaming exchange: `reached` fires when the server has
/// got that far, `release` lets it go on.
#[derive(Default)]
pub struct Gate {
    pub reached: Notify,
    pub release: Notify,
}

/// An HTTP/1.1 server that answers with JSON describing the request it saw:
/// `/health` answers `healthy` with `stats.health_status` (200 by default);
/// `{"server", "method", "path", "query", "headers", "body_len"}`. Paths with meaning:
/// `/status/<code>`, `/sleep/<ms>`, `.../headers?name=value&...` (the usual JSON, with
/// those response headers), `/hang` (never answers), `/gate` (sends a first
/// chunk, waits for the gate, then the rest), `/upload-gate` (reads one body chunk,
/// opens the gate, then reads the rest); any request asking for a WebSocket upgrade
/// gets a WebSocket echo server.
pub struct MockServer {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub gate: Arc<Gate>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl MockServer {
    pub async fn start(name: &str) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(name, listener)
    }

    /// Serves on an existing listener (to come back on the same port after `stop`).
    pub fn serve(name: &str, listener: TcpListener) -> MockServer {
        let server = MockServer {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            stats: Arc::new(Stats::default()),
            gate: Arc::new(Gate::default()),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        server.accept_on(listener);
        server
    }

    fn accept_on(&self, listener: TcpListener) {
        let (n, s, g) = (
            self.name.clone(),
            Arc::clone(&self.stats),
            Arc::clone(&self.gate),
        );
        let tasks = Arc::clone(&self.tasks);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (n, s, g) = (n.clone(), Arc::clone(&s), Arc::clone(&g));
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (n, s, g) = (n.clone(), Arc::clone(&s), Arc::clone(&g));
                        async move { Ok::<_, Infallible>(mock_handle(&n, &s, &g, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
                tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// Requests whose whole body arrived (others were cut off mid-body).
    pub fn completed(&self) -> usize {
        self.stats.completed.load(Ordering::SeqCst)
    }

    /// Kills the server: the port is freed and every open connection is cut.
    pub fn kill(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Serves again on the same port after `kill`.
    pub async fn restart(&self) {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(self.addr).await {
                self.accept_on(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("could not bind {} again", self.addr);
    }

    pub fn set_health(&self, status: u16) {
        self.stats.health_status.store(status, Ordering::SeqCst);
    }

    /// What /health answers with from now on.
    pub fn set_health_body(&self, body: &str) {
        *self.stats.health_body.lock().unwrap() = Some(body.to_owned());
    }

    /// Every request but /health gets `status` (0 to answer normally again).
    pub fn fail_with(&self, status: u16) {
        self.stats.fail_status.store(status, Ordering::SeqCst);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Concurrent<'a>(&'a Stats);

impl<'a> Concurrent<'a> {
    fn enter(stats: &'a Stats) -> Self {
        let now = stats.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_concurrent.fetch_max(now, Ordering::SeqCst);
        Concurrent(stats)
    }
}

impl Drop for Concurrent<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::SeqCst);
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn mock_handle(
    name: &str,
    stats: &Stats,
    gate: &Arc<Gate>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        stats.health_checks.fetch_add(1, Ordering::SeqCst);
        stats
            .first_health
            .lock()
            .unwrap()
            .get_or_insert_with(std::time::Instant::now);
        *stats.last_health.lock().unwrap() = Some((req.method().clone(), req.headers().clone()));
        let status = match stats.health_status.load(Ordering::SeqCst) {
            0 => 200,
            s => s,
        };
        let body = stats.health_body.lock().unwrap().clone();
        return full(
            StatusCode::from_u16(status).unwrap(),
            body.unwrap_or_else(|| "healthy".into()),
        );
    }
    stats.requests.fetch_add(1, Ordering::SeqCst);
    stats.arrivals.lock().unwrap().push(path.clone());
    let _concurrent = Concurrent::enter(stats);
    let fail = stats.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return full(
            StatusCode::from_u16(fail).unwrap(),
            format!("{name} failing\n"),
        );
    }
    if req.headers().contains_key(header::UPGRADE) {
        return websocket_echo(&mut req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return full(
            StatusCode::from_u16(code.parse().unwrap()).unwrap(),
            format!("{name} {code}\n"),
        );
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if path == "/hop-response" {
        let mut r = full(StatusCode::OK, "hop");
        let h = r.headers_mut();
        h.insert("connection", "x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        return r;
    }
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return full(StatusCode::OK, vec![b'x'; n.parse().unwrap()]);
    }
    if path == "/gate" {
        let gate = Arc::clone(gate);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                .await;
            gate.release.notified().await;
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"rest")))).await;
        });
        let stream = tokio_stream_from(rx);
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    let mut seen = BTreeMap::new();
    for (k, v) in req.headers() {
        seen.entry(k.as_str().to_string())
            .and_modify(|s: &mut String| {
                s.push_str(" | ");
                s.push_str(v.to_str().unwrap_or("?"));
            })
            .or_insert_with(|| v.to_str().unwrap_or("?").to_string());
    }
    let method = req.method().to_string();
    let query = req.uri().query().map(str::to_string);
    let mut body = req.into_body();
    let mut body_len = 0usize;
    let mut first = true;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return full(StatusCode::BAD_REQUEST, "bad body");
        };
        if let Some(d) = frame.data_ref() {
            body_len += d.len();
            if first && path == "/upload-gate" {
                first = false;
                gate.reached.notify_one();
            }
        }
    }
    stats.completed.fetch_add(1, Ordering::SeqCst);
    let json = serde_json::json!({
        "server": name, "method": method, "path": path, "query": query, "headers": seen, "body_len": body_len,
    });
    let mut r = full(StatusCode::OK, json.to_string());
    if path.ends_with("/headers") {
        for pair in query.as_deref().unwrap_or("").split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                let v = v.replace("%20", " ").replace("%3B", ";");
                r.headers_mut().append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
        }
    }
    r.headers_mut().insert("x-server", name.parse().unwrap());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn websocket_echo(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return full(StatusCode::BAD_REQUEST, "no key");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, "upgrade".parse().unwrap());
    h.insert(header::UPGRADE, "websocket".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    r
}

/// What a faulty raw server does after reading a request head.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Closes the connection without a byte of response.
    Close,
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// Keeps the connection open and never answers.
    Hang,
    /// Resets the connection (RST) without a byte of response.
    Reset,
    /// Promises a 1,000-byte body, sends 10 bytes of it, and closes.
    CloseMidBody,
    /// Sends a chunked response's first chunk, then resets the connection.
    ResetMidBody,
}

/// A TCP server that misbehaves as told, counting the requests it read.
pub async fn faulty_server(fault: Fault) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                if !read_head(&mut stream, &mut Vec::new()).await {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                match fault {
                    Fault::Close => drop(stream),
                    Fault::Garbage => {
                        let _ = stream.write_all(b"this is not http\r\n\r\n").await;
                    }
                    Fault::Hang => {
                        let _ = stream.read(&mut chunk).await;
                        std::future::pending::<()>().await;
                    }
                    Fault::Reset => reset(stream),
                    Fault::CloseMidBody => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
                            .await;
                    }
                    Fault::ResetMidBody => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n")
                            .await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        reset(stream);
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A raw HTTP/1.1 server that answers every request head it reads with `reply`, as
/// given, and closes the connection after it when `close` is set. Counts connections
/// and requests. For responses that hyper's server would not write.
pub async fn canned_server(
    reply: &'static [u8],
    close: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (conns, reqs) = (Arc::clone(&connections), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = Arc::clone(&reqs);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut stream, &mut buf).await {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    if stream.write_all(reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections, requests)
}

/// Reads from `stream` into `buf` until it holds a request head, and takes the head out
/// (what follows it stays). False when the connection ends first.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            return true;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Closes a connection with a TCP RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// This process's resident memory, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Open file descriptors of this process (the proxy, its servers and clients alike).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// An address that refuses connections: a socket bound to it but not listening. It is
/// held for the rest of the test process, so that no other test's listener, started
/// meanwhile on port 0, can be given the port (a port bound and released could be, and a
/// test expecting refusals then met a server).
pub async fn closed_port() -> SocketAddr {
    static HELD: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// The access log of a test proxy, line by line.
#[derive(Clone, Default)]
pub struct LogLines(Arc<Mutex<Vec<u8>>>);

impl Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogLines {
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded) until at least `n` lines are written, and returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let lines = self.lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} access log lines, got {:?}", self.lines());
    }
}

/// The real proxy, started in-process from config text.
pub struct TestProxy {
    pub running: weir::Running,
    pub log: LogLines,
}

impl TestProxy {
    pub async fn start(toml: &str) -> TestProxy {
        let config = weir::Config::from_toml(toml, Path::new("."))
            .unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
        let log = LogLines::default();
        let running = weir::start(&config, weir::AccessLog::to_writer(log.clone()))
            .await
            .expect("start");
        TestProxy { running, log }
    }

    /// The address of the frontend named "www".
    pub fn addr(&self) -> SocketAddr {
        self.running.addr("www")
    }
}

/// A config with one frontend "www" on port 0 and one backend "app" over `servers`
/// (`name = addr` pairs, with optional extra server keys), plus `extra` TOML appended
/// inside `[backend.app]`.
pub fn config(balance: &str, servers: &[(&str, SocketAddr, &str)], backend_extra: &str) -> String {
    format!(
        "[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n\n[backend.app]\nbalance = \"{balance}\"\n{backend_extra}\nservers = [\n{}\n]\n",
        server_lines(servers)
    )
}

/// A backend's `servers` list, one inline table a line: name, address, more keys.
pub fn server_lines(servers: &[(&str, SocketAddr, &str)]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(name, addr, more)| {
            let more = if more.is_empty() {
                String::new()
            } else {
                format!(", {more}")
            };
            format!("  {{ name = \"{name}\", addr = \"{addr}\"{more} }},")
        })
        .collect();
    list.join("\n")
}

/// A response as a test reads it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn server(&self) -> String {
        self.json()["server"].as_str().unwrap().to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 keep-alive connection, for sequential requests.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    pub local_addr: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect(addr).await.unwrap()).await
    }

    /// Connects from a chosen loopback address (127.x.y.z), to vary the client IP.
    pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        Self::from_stream(socket.connect(addr).await.unwrap()).await
    }

    async fn from_stream(stream: TcpStream) -> Client {
        let local_addr = stream.local_addr().unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Client { sender, local_addr }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(
            Request::get(path)
                .header("host", "test.local")
                .body(empty())
                .unwrap(),
        )
        .await
    }

    pub async fn send(&mut self, req: Request<Body>) -> Reply {
        self.try_send(req).await.expect("request failed")
    }

    pub async fn try_send(&mut self, req: Request<Body>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        read_reply(response).await
    }

    pub fn sender_mut(&mut self) -> &mut hyper::client::conn::http1::SendRequest<Body> {
        &mut self.sender
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

pub async fn read_reply(response: Response<Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

pub fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

pub fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// One-shot GET on a new connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Client::connect(addr).await.get(path).await
}

/// An HTTP/2 cleartext (prior knowledge) connection.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends raw bytes and reads until the proxy closes the connection (or 5 s pass).
/// Returns what was read and whether the connection was closed.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_close(&mut stream, Duration::from_secs(5)).await
}

pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// The status code of the first response in raw bytes.
pub fn raw_status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"))
}

/// Polls `condition` every 5 ms for up to `limit`; returns how long it took to hold.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = tokio::time::Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    condition().then(|| started.elapsed())
}

/// A directory of this test process's own under the system's temporary directory
/// (`weir-<name>-<pid>-<n>`, one per call), created. The test removes it.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weir-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file whose reading waits for as long as a test wants, as on a slow disk: a named pipe
/// at `path`, replacing any file there. A thread of its own writes `content` to it once
/// a reader has it open and [`SlowFile::release`] is called, or after 5 s, so a reader
/// that holds up the test's thread ends rather than hangs it.
pub struct SlowFile {
    opened: Option<tokio::sync::oneshot::Receiver<()>>,
    release: std::sync::mpsc::Sender<()>,
    written: Arc<std::sync::atomic::AtomicBool>,
    writer: std::thread::JoinHandle<()>,
}

impl SlowFile {
    pub fn create(path: &Path, content: Vec<u8>) -> SlowFile {
        use std::os::unix::fs::OpenOptionsExt;

        let _ = std::fs::remove_file(path);
        let made = std::process::Command::new("mkfifo").arg(path).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let path = path.to_path_buf();
        let written = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let was_written = Arc::clone(&written);
        let writer = std::thread::spawn(move || {
            // Opening a pipe to write without blocking succeeds once a reader has it
            // open; the reader then waits in `read` until the content comes.
            let open = |flags| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(flags)
                    .open(&path)
            };
            let mut probe = None;
            for _ in 0..1000 {
                match open(libc::O_NONBLOCK) {
                    Ok(p) => {
                        probe = Some(p);
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            let _probe = probe.expect("a reader opened the file within 10 s");
            let _ = opened_tx.send(());
            let _ = released.recv_timeout(Duration::from_secs(5));
            was_written.store(true, Ordering::SeqCst);
            // Written blocking (the content may be more than the pipe holds).
            open(0).unwrap().write_all(&content).unwrap();
        });
        SlowFile {
            opened: Some(opened),
            release,
            written,
            writer,
        }
    }

    /// Whether the content has been let go to the reader (released, or timed out).
    pub fn written(&self) -> bool {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until a reader has opened the file (and waits on it).
    pub async fn opened(&mut self) {
        let opened = self.opened.take().expect("opened once");
        opened.await.expect("a reader opened the file");
    }

    /// Lets the reader have the content, and waits until it is written.
    pub fn release(self) {
        let _ = self.release.send(());
        self.writer.join().unwrap();
    }
}

/// Which servers answered `n` sequential GETs of `path`, by name.
pub async fn servers_seen(
    client: &mut Client,
    path: &str,
    n: usize,
) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for _ in 0..n {
        let reply = client.get(path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        *seen.entry(reply.server()).or_insert(0) += 1;
    }
    seen
}

/// The test plugin component: behaviour chosen by `config.mode`.
pub const FIXTURE_WASM: &str = env!("WEIR_FIXTURE_WASM");
/// The example canary plugin component.
pub const CANARY_WASM: &str = env!("WEIR_CANARY_WASM");
/// A plugin that sleeps `config.ms` in every `on-request` call (tests/plugins/sleeper).
pub const SLEEPER_WASM: &str = env!("WEIR_SLEEPER_WASM");

/// A `[plugin.<name>]` section for a stock plugin with this config table (inline TOML).
pub fn stock_plugin(name: &str, stock: &str, config: &str) -> String {
    format!("[plugin.{name}]\nstock = \"{stock}\"\nconfig = {config}\n")
}

/// A `[plugin.<name>]` section for the fixture in `mode`, with extra keys.
pub fn fixture_plugin(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[plugin.{name}]\nwasm = \"{FIXTURE_WASM}\"\n{extra}\nconfig = {{ mode = \"{mode}\", tag = \"{name}\" }}\n"
    )
}

/// `config(...)` with a plugin chain on the frontend and plugin sections appended.
pub fn with_plugins(toml: String, chain: &[&str], sections: &[String]) -> String {
    let list: Vec<String> = chain.iter().map(|c| format!("\"{c}\"")).collect();
    let mut t = toml.replacen(
        "default_backend = \"app\"\n",
        &format!(
            "default_backend = \"app\"\nplugins = [{}]\n",
            list.join(", ")
        ),
        1,
    );
    for s in sections {
        t.push('\n');
        t.push_str(s);
    }
    t
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
/// hangs as it would to a host that does not answer.
pub fn unresponsive_server() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (listener, fillers, addr)
}
