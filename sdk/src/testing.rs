//! A stand-in for weir in native unit tests of plugin logic: a manual clock, in-memory
//! counters and kv with the host's semantics, captured logs, and backends you describe.
//!
//! ```ignore
//! let host = FakeHost::install();
//! host.set_now_ms(1_000);
//! let plugin = weir_sdk::parse_config::<MyPlugin>(r#"{"requests": 2}"#).unwrap();
//! // ... call plugin.on_request(...) and assert on the action, host.logs(), ...
//! host.advance_ms(10_000);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::{Level, ServerInfo};

#[derive(Default)]
struct State {
    now_ms: u64,
    counters: HashMap<String, (u64, u64, i64)>,
    /// Per key: window length, window index, previous and current count.
    sliding: HashMap<String, (u64, u64, i64, i64)>,
    kv: HashMap<String, (Vec<u8>, Option<u64>)>,
    logs: Vec<(Level, String)>,
    backends: HashMap<String, Vec<ServerInfo>>,
    open: HashMap<String, u32>,
}

/// The fake host of the current thread; cloning shares it.
#[derive(Clone, Default)]
pub struct FakeHost(Rc<RefCell<State>>);

thread_local! {
    static CURRENT: RefCell<Option<FakeHost>> = const { RefCell::new(None) };
}

/// Runs `f` against the installed fake host. Panics when a test forgot to install one.
pub(crate) fn with_host<R>(f: impl FnOnce(&FakeHost) -> R) -> R {
    CURRENT.with(|c| {
        f(c.borrow()
            .as_ref()
            .expect("install a weir_sdk::testing::FakeHost first"))
    })
}

impl FakeHost {
    /// A fresh host for this thread, replacing any earlier one. The clock starts at 0.
    pub fn install() -> FakeHost {
        let host = FakeHost::default();
        CURRENT.with(|c| *c.borrow_mut() = Some(host.clone()));
        host
    }

    pub fn set_now_ms(&self, now: u64) {
        self.0.borrow_mut().now_ms = now;
    }

    pub fn advance_ms(&self, ms: u64) {
        self.0.borrow_mut().now_ms += ms;
    }

    /// Everything logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.0.borrow().logs.clone()
    }

    /// Describes a backend for `host::servers`.
    pub fn set_servers(&self, backend: &str, servers: Vec<ServerInfo>) {
        self.0
            .borrow_mut()
            .backends
            .insert(backend.to_owned(), servers);
    }

    /// Sets the client connections open from `client_ip`, for `host::open_from`.
    pub fn set_open_from(&self, client_ip: &str, n: u32) {
        self.0.borrow_mut().open.insert(client_ip.to_owned(), n);
    }

    pub(crate) fn open_from(&self, client_ip: &str) -> u32 {
        self.0.borrow().open.get(client_ip).copied().unwrap_or(0)
    }

    pub(crate) fn log(&self, level: Level, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_owned()));
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.0.borrow().now_ms
    }

    pub(crate) fn counter_add(&self, key: &str, delta: i64, window_ms: u64) -> i64 {
        let mut s = self.0.borrow_mut();
        let now = s.now_ms;
        let entry = s
            .counters
            .entry(key.to_owned())
            .or_insert((now, window_ms, 0));
        if now >= entry.0 + entry.1 {
            *entry = (now, window_ms, 0);
        }
        entry.2 += delta;
        entry.2
    }

    pub(crate) fn add_sliding(
        &self,
        key: &str,
        delta: i64,
        window_ms: u64,
        limit: Option<i64>,
    ) -> crate::Sliding {
        let mut s = self.0.borrow_mut();
        let window_ms = window_ms.max(1);
        let (index, elapsed_ms) = (s.now_ms / window_ms, s.now_ms % window_ms);
        let (previous, current) = match s.sliding.get(key) {
            Some(&(w, i, previous, current)) if w == window_ms && i == index => (previous, current),
            Some(&(w, i, _, current)) if w == window_ms && i + 1 == index => (current, 0),
            _ => (0, 0),
        };
        let after = current.saturating_add(delta);
        // As weir does: the previous window weighted by how much of it is still covered.
        let overlap = (window_ms - elapsed_ms) as i64;
        let estimate =
            after + (previous.max(0) * overlap + window_ms as i64 - 1) / window_ms as i64;
        let added = limit.is_none_or(|l| estimate <= l);
        if added {
            s.sliding
                .insert(key.to_owned(), (window_ms, index, previous, after));
        }
        crate::Sliding {
            previous,
            current: if added { after } else { current },
            elapsed_ms,
            added,
        }
    }

    fn live_counter(&self, key: &str) -> Option<(u64, u64, i64)> {
        let s = self.0.borrow();
        s.counters
            .get(key)
            .copied()
            .filter(|(start, window, _)| s.now_ms < start + window)
    }

    pub(crate) fn counter_get(&self, key: &str) -> i64 {
        self.live_counter(key).map_or(0, |c| c.2)
    }

    pub(crate) fn counter_remaining_ms(&self, key: &str) -> u64 {
        let now = self.now_ms();
        self.live_counter(key)
            .map_or(0, |(start, window, _)| start + window - now)
    }

    pub(crate) fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let s = self.0.borrow();
        let (value, expires) = s.kv.get(key)?;
        expires.is_none_or(|e| s.now_ms < e).then(|| value.clone())
    }

    pub(crate) fn kv_set(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        let mut s = self.0.borrow_mut();
        let expires = ttl_ms.map(|t| s.now_ms + t);
        s.kv.insert(key.to_owned(), (value.to_vec(), expires));
        Ok(())
    }

    pub(crate) fn kv_delete(&self, key: &str) {
        self.0.borrow_mut().kv.remove(key);
    }

    pub(crate) fn servers(&self, backend: &str) -> Vec<ServerInfo> {
        self.0
            .borrow()
            .backends
            .get(backend)
            .cloned()
            .unwrap_or_default()
    }
}

/// A request as weir would hand it to `on-request`: `GET`-style defaults (client
/// 192.0.2.1 on frontend "www", plain http, backend "app"), changed with the builder
/// methods.
pub fn request(method: &str, path_and_query: &str) -> crate::Request {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path_and_query.to_owned(), None),
    };
    crate::Request {
        method: method.to_owned(),
        path,
        query,
        host: None,
        headers: Vec::new(),
        client_ip: "192.0.2.1".into(),
        frontend: "www".into(),
        scheme: "http".into(),
        backend: "app".into(),
        id: 1,
    }
}

/// A connection as weir would hand it to `on-connect`: from 192.0.2.1 to 127.0.0.1:6379
/// on frontend "www", no TLS, the only one from its address.
pub fn connection() -> crate::Connection {
    crate::Connection {
        client_ip: "192.0.2.1".into(),
        local_addr: "127.0.0.1:6379".into(),
        frontend: "www".into(),
        sni: None,
        alpn: Vec::new(),
        client_connections: 1,
        id: 1,
    }
}

/// A response as weir would hand it to `on-response`: from server "s1" of backend "app",
/// answering `GET /` from 192.0.2.1 on frontend "www" over plain http.
pub fn response(status: u16) -> crate::Response {
    crate::Response {
        status,
        headers: Vec::new(),
        backend: Some("app".into()),
        server: Some("s1".into()),
        method: "GET".into(),
        path: "/".into(),
        client_ip: "192.0.2.1".into(),
        scheme: "http".into(),
        frontend: "www".into(),
        id: 1,
        note: None,
    }
}

/// Header edits applied to a header list as weir applies them (a set replaces every value,
/// an append adds one, a remove drops all), as `name: value` lines in order.
pub fn apply_edits(headers: &[crate::Header], ops: Vec<crate::HeaderOp>) -> Vec<String> {
    let mut headers = headers.to_vec();
    for op in ops {
        match op {
            crate::HeaderOp::Set(h) => {
                headers.retain(|x| x.name != h.name);
                headers.push(h);
            }
            crate::HeaderOp::Append(h) => headers.push(h),
            crate::HeaderOp::Remove(n) => headers.retain(|x| x.name != n),
        }
    }
    headers
        .iter()
        .map(|h| format!("{}: {}", h.name, h.value))
        .collect()
}

impl crate::Request {
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(crate::Header {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        });
        self
    }

    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }

    pub fn from_ip(mut self, ip: &str) -> Self {
        self.client_ip = ip.to_owned();
        self
    }

    pub fn over_https(mut self) -> Self {
        self.scheme = "https".into();
        self
    }

    pub fn to_backend(mut self, backend: &str) -> Self {
        self.backend = backend.to_owned();
        self
    }
}

impl crate::Response {
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push(crate::Header {
            name: name.to_ascii_lowercase(),
            value: value.to_owned(),
        });
        self
    }

    pub fn with_note(mut self, note: &str) -> Self {
        self.note = Some(note.to_owned());
        self
    }

    pub fn from_server(mut self, server: &str) -> Self {
        self.server = Some(server.to_owned());
        self
    }

    pub fn over_https(mut self) -> Self {
        self.scheme = "https".into();
        self
    }
}

impl crate::Connection {
    /// The server name of its TLS ClientHello.
    pub fn with_sni(mut self, sni: &str) -> Self {
        self.sni = Some(sni.to_owned());
        self
    }

    pub fn from_ip(mut self, ip: &str) -> Self {
        self.client_ip = ip.to_owned();
        self
    }

    /// Connections open from its address, this one included.
    pub fn with_client_connections(mut self, n: u32) -> Self {
        self.client_connections = n;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn counters_start_again_after_their_window() {
        let h = FakeHost::install();
        assert_eq!(host::counter_add("k", 1, 1000), 1);
        assert_eq!(host::counter_add("k", 2, 1000), 3);
        h.advance_ms(400);
        assert_eq!(host::counter_remaining_ms("k"), 600);
        h.advance_ms(600);
        assert_eq!(host::counter_get("k"), 0);
        assert_eq!(host::counter_add("k", 1, 1000), 1);
    }

    #[test]
    fn sliding_counts_follow_the_clock_and_the_limit() {
        let host = FakeHost::install();
        host.set_now_ms(5_100);
        assert_eq!(host::add_sliding("k", 3, 1000, None).current, 3);
        host.set_now_ms(6_250);
        let s = host::add_sliding("k", 1, 1000, Some(4));
        assert_eq!(
            (s.previous, s.current, s.elapsed_ms, s.added),
            (3, 1, 250, true)
        );
        let s = host::add_sliding("k", 1, 1000, Some(4));
        assert_eq!((s.previous, s.current, s.added), (3, 1, false));
        host.set_now_ms(8_000);
        let s = host::add_sliding("k", 1, 1000, Some(4));
        assert_eq!((s.previous, s.current, s.added), (0, 1, true));
    }

    #[test]
    fn kv_values_expire() {
        let h = FakeHost::install();
        host::kv_set("a", b"1", Some(100)).unwrap();
        host::kv_set("b", b"2", None).unwrap();
        h.advance_ms(100);
        assert_eq!(host::kv_get("a"), None);
        assert_eq!(host::kv_get("b"), Some(b"2".to_vec()));
        host::kv_delete("b");
        assert_eq!(host::kv_get("b"), None);
    }

    #[test]
    fn logs_are_captured() {
        let h = FakeHost::install();
        host::log(Level::Warn, "careful");
        assert_eq!(h.logs().len(), 1);
        assert_eq!(h.logs()[0].1, "careful");
    }
}
