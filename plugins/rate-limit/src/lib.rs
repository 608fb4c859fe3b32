//! `rate-limit`: at most `requests` per `window` per key (the client address, a header or
//! a cookie); over the limit a request is answered 429 with `Retry-After` and never
//! reaches a server. With `max_connections`, at most that many connections open at once
//! per client address (HAProxy's `src_conn_cur`): a request on one more is answered 429.
//!
//! On a tcp frontend (`on-connect`) each connection counts as a request (per client
//! address), and a connection over either limit is closed.
//!
//! The count is a sliding window kept by the host (`add-sliding`, one host call per
//! request), so it is shared by every instance of the plugin and survives reloads: the
//! count of the current fixed window plus the previous window's count weighted by how
//! much of it still overlaps the last `window`. Refused requests are not counted.
//!
//! ```toml
//! [plugin.limit]
//! stock = "rate-limit"
//! config = { requests = 100, window = "10s", key = "src", allow = ["10.0.0.0/8"] }
//! ```

use serde::Deserialize;
use weir_sdk::util::{Cidr, Millis, in_any};
use weir_sdk::{
    ConnectAction, Connection, Hooks, LocalResponse, Plugin, Proceed, Request, RequestAction,
    RequestFields, export_plugin, host,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Requests allowed per window.
    #[serde(default)]
    pub requests: Option<u32>,
    /// Connections open at once per client address (weir counts them on every frontend).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// The window: "1s" by default.
    #[serde(default)]
    pub window: Option<Millis>,
    /// What identifies a client: "src" (default), "header:<name>" or "cookie:<name>".
    #[serde(default)]
    pub key: Option<String>,
    /// Extra requests tolerated on top of `requests` (default 0).
    #[serde(default)]
    pub burst: u32,
    /// Client addresses never limited.
    #[serde(default)]
    pub allow: Vec<Cidr>,
}

enum Key {
    Src,
    Header(String),
    Cookie(String),
}

pub struct RateLimit {
    /// Requests per window, with the burst; None for no rate.
    limit: Option<u64>,
    max_connections: Option<u32>,
    window: u64,
    key: Key,
    allow: Vec<Cidr>,
}

impl RateLimit {
    /// The client's identity: the configured header or cookie, or the client address when
    /// that is missing (so leaving it out is no way around the limit).
    fn identity(&self, request: &Request) -> String {
        let found = match &self.key {
            Key::Src => None,
            Key::Header(name) => request.header(name).map(|v| format!("h:{v}")),
            Key::Cookie(name) => request.cookie(name).map(|v| format!("c:{v}")),
        };
        found.unwrap_or_else(|| {
            let mut id = String::with_capacity(3 + request.client_ip.len());
            id.push_str("ip:");
            id.push_str(&request.client_ip);
            id
        })
    }

    /// Seconds until one more request would be allowed, if no other came meanwhile:
    /// `previous` and `current` are the two windows' counts, `elapsed` ms into the current.
    fn retry_after(&self, previous: u64, current: u64, elapsed: u64) -> u64 {
        let (w, limit) = (self.window, self.limit.unwrap_or(u64::MAX));
        // Allowed at `e` ms into a window when ceil(p * (w - e) / w) + c + 1 <= limit,
        // that is from e = w - floor((limit - 1 - c) * w / p).
        let from = |p: u64, c: u64| -> Option<u64> {
            let room = (limit - 1).checked_sub(c)?;
            if p == 0 {
                return Some(0);
            }
            let e = w - (room * w / p).min(w);
            (e < w).then_some(e)
        };
        let wait_ms = match from(previous, current) {
            // Later in this window, as the previous window's share shrinks.
            Some(e) => e.saturating_sub(elapsed),
            // In the next window, where this window's count is the weighted one; two
            // windows on, nothing counts.
            None => (w - elapsed) + from(current, 0).unwrap_or(w),
        };
        wait_ms.div_ceil(1000).max(1)
    }
}

impl Plugin for RateLimit {
    type Config = Config;
    const NAME: &'static str = "rate-limit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn configure(config: Config) -> Result<Self, String> {
        match (config.requests, config.max_connections) {
            (None, None) => {
                return Err("requests: give requests, max_connections or both".into());
            }
            (Some(0), _) => return Err("requests: must be at least 1".into()),
            (_, Some(0)) => return Err("max_connections: must be at least 1".into()),
            _ => {}
        }
        let window = config.window.map_or(1000, |m| m.0);
        if window == 0 {
            return Err("window: must be longer than 0".into());
        }
        let key = match config.key.as_deref() {
            None | Some("src") => Key::Src,
            Some(k) => match k.split_once(':') {
                Some(("header", name)) if !name.is_empty() => {
                    Key::Header(name.to_ascii_lowercase())
                }
                Some(("cookie", name)) if !name.is_empty() => Key::Cookie(name.to_owned()),
                _ => {
                    return Err(format!(
                        "key: \"{k}\" is not \"src\", \"header:<name>\" or \"cookie:<name>\""
                    ));
                }
            },
        };
        if config.max_connections.is_some() && !matches!(key, Key::Src) {
            return Err(
                "max_connections: connections are counted per client address: key must be \"src\""
                    .into(),
            );
        }
        Ok(RateLimit {
            limit: config
                .requests
                .map(|r| u64::from(r) + u64::from(config.burst)),
            max_connections: config.max_connections,
            window,
            key,
            allow: config.allow,
        })
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(match &self.key {
            Key::Src => vec![],
            Key::Header(name) => vec![name.clone()],
            Key::Cookie(_) => vec!["cookie".into()],
        })
    }

    /// The client address: for `allow`, and as the key (or the fallback key).
    fn request_fields(&self) -> Option<RequestFields> {
        Some(RequestFields::CLIENT_IP)
    }

    fn on_connect(&self, connection: Connection) -> ConnectAction {
        self.connection(&connection)
    }

    fn on_request(&self, request: Request) -> RequestAction {
        if in_any(&self.allow, &request.client_ip) {
            return RequestAction::Proceed(Proceed::unchanged());
        }
        if let Some(max) = self.max_connections
            && host::open_from(&request.client_ip) > max
        {
            return RequestAction::Respond(LocalResponse::text(
                429,
                "Too Many Requests: too many connections\n",
            ));
        }
        let Some(limit) = self.limit else {
            return RequestAction::Unchanged;
        };
        let id = self.identity(&request);
        // Counted only when within the limit, in one step with the check: concurrent
        // requests never get past the limit together, and refused ones are not counted.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let count = host::add_sliding(&id, 1, self.window, Some(limit));
        if count.added {
            return RequestAction::Proceed(Proceed::unchanged());
        }
        let retry = self.retry_after(
            count.previous.max(0) as u64,
            count.current.max(0) as u64,
            count.elapsed_ms,
        );
        RequestAction::Respond(
            LocalResponse::text(429, "Too Many Requests\n")
                .with_header("retry-after", &retry.to_string()),
        )
    }
}

impl RateLimit {
    /// `on-connect`: a connection over `max_connections`, or over `requests` new
    /// connections per window from its address, is closed.
    fn connection(&self, c: &Connection) -> ConnectAction {
        if in_any(&self.allow, &c.client_ip) {
            return ConnectAction::Unchanged;
        }
        if let Some(max) = self.max_connections
            && c.client_connections > max
        {
            return ConnectAction::Close(format!(
                "{} connections open from {}, more than max_connections = {max}",
                c.client_connections, c.client_ip
            ));
        }
        if let Some(limit) = self.limit {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let id = format!("conn:{}", c.client_ip);
            if !host::add_sliding(&id, 1, self.window, Some(limit)).added {
                return ConnectAction::Close(format!(
                    "{} over {limit} connections per {} ms",
                    c.client_ip, self.window
                ));
            }
        }
        ConnectAction::Unchanged
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{FakeHost, request};

    fn limiter(config: &str) -> RateLimit {
        weir_sdk::parse_config::<RateLimit>(config).unwrap()
    }

    /// The Retry-After of a refusal, or None when the request may go on.
    fn refused(p: &RateLimit, req: Request) -> Option<u64> {
        match p.on_request(req) {
            RequestAction::Proceed(_) | RequestAction::Unchanged => None,
            RequestAction::Respond(r) => {
                assert_eq!(r.status, 429);
                let h = r.headers.iter().find(|h| h.name == "retry-after").unwrap();
                Some(h.value.parse().unwrap())
            }
        }
    }

    #[test]
    fn the_limit_holds_per_client_and_frees_up_later() {
        let host = FakeHost::install();
        host.set_now_ms(1_000_000);
        let p = limiter(r#"{"requests": 3, "window": "10s"}"#);
        for _ in 0..3 {
            assert_eq!(refused(&p, request("GET", "/").from_ip("192.0.2.1")), None);
        }
        let retry = refused(&p, request("GET", "/").from_ip("192.0.2.1")).unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
        // Another client has its own count.
        assert_eq!(refused(&p, request("GET", "/").from_ip("192.0.2.2")), None);
        // Refusals are not counted: waiting as told lets the client in.
        host.advance_ms(retry * 1000);
        assert_eq!(refused(&p, request("GET", "/").from_ip("192.0.2.1")), None);
        // Two full windows later the client starts from nothing.
        host.advance_ms(20_000);
        for _ in 0..3 {
            assert_eq!(refused(&p, request("GET", "/").from_ip("192.0.2.1")), None);
        }
    }

    #[test]
    fn the_window_slides() {
        let host = FakeHost::install();
        host.set_now_ms(9_000); // 9 s into window 0 of 10 s
        let p = limiter(r#"{"requests": 4, "window": "10s"}"#);
        for _ in 0..4 {
            assert_eq!(refused(&p, request("GET", "/")), None);
        }
        // 2 s later, in window 1: 80% of the 4 earlier requests still count.
        host.set_now_ms(11_000);
        assert!(refused(&p, request("GET", "/")).is_some());
        // At 16 s, 40% of them count (1.6, rounded up to 2): two more fit.
        host.set_now_ms(16_000);
        assert_eq!(refused(&p, request("GET", "/")), None);
        assert_eq!(refused(&p, request("GET", "/")), None);
        assert!(refused(&p, request("GET", "/")).is_some());
    }

    #[test]
    fn burst_adds_room() {
        let host = FakeHost::install();
        host.set_now_ms(5);
        let p = limiter(r#"{"requests": 2, "burst": 3, "window": "1m"}"#);
        for _ in 0..5 {
            assert_eq!(refused(&p, request("GET", "/")), None);
        }
        assert!(refused(&p, request("GET", "/")).is_some());
    }

    #[test]
    fn keys_from_header_or_cookie_fall_back_to_the_address() {
        let host = FakeHost::install();
        host.set_now_ms(5);
        let p = limiter(r#"{"requests": 1, "key": "header:X-Api-Key"}"#);
        let with = |k: &str| request("GET", "/").with_header("x-api-key", k);
        assert_eq!(refused(&p, with("a")), None);
        assert!(refused(&p, with("a")).is_some());
        assert_eq!(refused(&p, with("b")), None);
        // Without the header, the address is the key.
        assert_eq!(refused(&p, request("GET", "/")), None);
        assert!(refused(&p, request("GET", "/")).is_some());

        let c = limiter(r#"{"requests": 1, "key": "cookie:sid"}"#);
        let with = |k: &str| request("GET", "/").with_header("cookie", &format!("x=1; sid={k}"));
        assert_eq!(refused(&c, with("u1")), None);
        assert!(refused(&c, with("u1")).is_some());
        assert_eq!(refused(&c, with("u2")), None);
    }

    #[test]
    fn allowed_addresses_are_never_limited() {
        let host = FakeHost::install();
        host.set_now_ms(5);
        let p = limiter(r#"{"requests": 1, "allow": ["10.0.0.0/8", "::1"]}"#);
        for _ in 0..5 {
            assert_eq!(refused(&p, request("GET", "/").from_ip("10.3.3.3")), None);
            assert_eq!(refused(&p, request("GET", "/").from_ip("::1")), None);
        }
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |c: &str| weir_sdk::parse_config::<RateLimit>(c).err().unwrap();
        assert!(e(r#"{"requests": 0}"#).starts_with("requests:"));
        assert!(e(r#"{"requests": 1, "window": "1 fortnight"}"#).starts_with("window:"));
        assert!(e(r#"{"requests": 1, "key": "ip"}"#).starts_with("key:"));
        assert!(e(r#"{"requests": 1, "allow": ["300.0.0.0/8"]}"#).starts_with("allow[0]"));
        assert!(e(r#"{"window": "1s"}"#).contains("requests"));
    }

    #[test]
    fn max_connections_counts_what_is_open_per_address() {
        let host = FakeHost::install();
        host.set_now_ms(5);
        let p = limiter(r#"{"max_connections": 10, "allow": ["10.0.0.0/8"]}"#);
        host.set_open_from("192.0.2.1", 10);
        assert_eq!(refused(&p, request("GET", "/").from_ip("192.0.2.1")), None);
        host.set_open_from("192.0.2.1", 11);
        let r = p.on_request(request("GET", "/").from_ip("192.0.2.1"));
        assert!(matches!(r, RequestAction::Respond(l) if l.status == 429));
        // Without `requests`, nothing else is limited.
        for _ in 0..100 {
            assert_eq!(refused(&p, request("GET", "/").from_ip("192.0.2.9")), None);
        }
        // On a tcp frontend: the eleventh connection is closed, the allowed never.
        use weir_sdk::testing::connection;
        let c =
            |ip: &str, n: u32| p.on_connect(connection().from_ip(ip).with_client_connections(n));
        assert!(matches!(c("192.0.2.1", 10), ConnectAction::Unchanged));
        assert!(
            matches!(c("192.0.2.1", 11), ConnectAction::Close(why) if why.contains("more than max_connections = 10"))
        );
        assert!(matches!(c("10.1.1.1", 50), ConnectAction::Unchanged));
        let e = |c: &str| weir_sdk::parse_config::<RateLimit>(c).err().unwrap();
        assert!(e(r#"{"max_connections": 0}"#).starts_with("max_connections:"));
        assert!(e(r#"{"max_connections": 5, "key": "header:x"}"#).starts_with("max_connections:"));
        assert!(e(r#"{"window": "1s"}"#).starts_with("requests:"));
    }

    #[test]
    fn new_connections_count_against_the_rate_on_tcp() {
        let host = FakeHost::install();
        host.set_now_ms(5);
        let p = limiter(r#"{"requests": 2, "window": "10s"}"#);
        use weir_sdk::testing::connection;
        assert!(matches!(
            p.on_connect(connection()),
            ConnectAction::Unchanged
        ));
        assert!(matches!(
            p.on_connect(connection()),
            ConnectAction::Unchanged
        ));
        assert!(matches!(
            p.on_connect(connection()),
            ConnectAction::Close(_)
        ));
        assert!(matches!(
            p.on_connect(connection().from_ip("192.0.2.7")),
            ConnectAction::Unchanged
        ));
    }
}
