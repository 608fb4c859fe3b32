//! `sticky-session`: cookie-based server persistence, HAProxy's
//! `cookie SERVERID insert indirect nocache`. A request whose cookie names a server of the
//! backend it is going to that can take it (up, or draining) goes to that server; any
//! other request is balanced as usual and its response sets the cookie to the server that
//! answered. With `key`, the cookie holds an HMAC instead of the server's name.
//!
//! ```toml
//! [plugin.sticky]
//! stock = "sticky-session"
//! config = { cookie = "SERVERID", httponly = true, max_idle = "30m" }
//! ```

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use weir_sdk::util::Millis;
use weir_sdk::{
    Header, HeaderOp, Hooks, Plugin, Proceed, Request, RequestAction, RequestFields, Response,
    ResponseAction, ResponseFields, ServerState, export_plugin, host,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The cookie's name.
    pub cookie: String,
    /// Remove the cookie from requests before they reach the server.
    pub indirect: bool,
    /// Mark responses that set the cookie `Cache-Control: private`.
    pub nocache: bool,
    pub httponly: bool,
    pub secure: bool,
    /// "Strict", "Lax" or "None".
    pub samesite: Option<String>,
    /// The cookie's Path attribute.
    pub path: String,
    pub domain: Option<String>,
    /// A cookie unused for this long is ignored.
    pub max_idle: Option<Millis>,
    /// A cookie older than this is ignored.
    pub max_life: Option<Millis>,
    /// A secret: the cookie then holds an HMAC of the server instead of its name.
    pub key: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cookie: "SERVERID".into(),
            indirect: true,
            nocache: true,
            httponly: false,
            secure: false,
            samesite: None,
            path: "/".into(),
            domain: None,
            max_idle: None,
            max_life: None,
            key: None,
        }
    }
}

pub struct Sticky {
    cookie: String,
    indirect: bool,
    nocache: bool,
    /// "; Path=/; HttpOnly ..." appended to every cookie set.
    attributes: String,
    max_idle_s: Option<u64>,
    max_life_s: Option<u64>,
    key: Option<Vec<u8>>,
}

/// What the request's cookie said, once checked.
struct Stuck {
    server: String,
    first: u64,
    last: u64,
}

fn cookie_safe(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty()
        || value
            .bytes()
            .any(|b| !(0x21..0x7f).contains(&b) || b == b';' || b == b',')
    {
        return Err(format!("{field}: \"{value}\" cannot be used in a cookie"));
    }
    Ok(())
}

impl Sticky {
    /// The cookie's token for a server: its name, or an HMAC of backend and name.
    fn token(&self, backend: &str, server: &str) -> String {
        match &self.key {
            None => server.to_owned(),
            Some(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
                mac.update(backend.as_bytes());
                mac.update(b"/");
                mac.update(server.as_bytes());
                let bytes = mac.finalize().into_bytes();
                bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
            }
        }
    }

    fn dated(&self) -> bool {
        self.max_idle_s.is_some() || self.max_life_s.is_some()
    }

    /// The cookie's value: the token, with last-use and first-use times (Unix seconds)
    /// when idle or life limits apply.
    fn value(&self, token: &str, first: u64, last: u64) -> String {
        if self.dated() {
            format!("{token}|{last}|{first}")
        } else {
            token.to_owned()
        }
    }

    /// The server the request's cookie names, if it is recent enough and that server of
    /// `backend` can take the request.
    fn stuck(&self, request: &Request, now: u64) -> Option<Stuck> {
        let value = request.cookie(&self.cookie)?;
        let mut parts = value.split('|');
        let token = parts.next()?;
        let (last, first) = if self.dated() {
            (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?)
        } else {
            (now, now)
        };
        if self
            .max_idle_s
            .is_some_and(|max| now.saturating_sub(last) > max)
            || self
                .max_life_s
                .is_some_and(|max| now.saturating_sub(first) > max)
        {
            return None;
        }
        let servers = host::servers(&request.backend);
        let server = servers
            .iter()
            .find(|s| self.token(&request.backend, &s.name) == token)?;
        matches!(server.state, ServerState::Up | ServerState::Drain).then(|| Stuck {
            server: server.name.clone(),
            first,
            last,
        })
    }

    /// The request's Cookie headers without this plugin's cookie; None when it had none.
    fn without_cookie(&self, request: &Request) -> Option<Vec<String>> {
        request.cookie(&self.cookie)?;
        Some(
            request
                .headers_named("cookie")
                .map(|v| {
                    v.split(';')
                        .map(str::trim)
                        .filter(|pair| {
                            pair.split_once('=')
                                .is_none_or(|(n, _)| n.trim() != self.cookie)
                        })
                        .filter(|pair| !pair.is_empty())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|v| !v.is_empty())
                .collect(),
        )
    }
}

fn now_s() -> u64 {
    host::now_ms() / 1000
}

impl Plugin for Sticky {
    type Config = Config;
    const NAME: &'static str = "sticky-session";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_REQUEST.union(Hooks::ON_RESPONSE);

    fn configure(c: Config) -> Result<Self, String> {
        cookie_safe("cookie", &c.cookie)?;
        if c.cookie.contains('=') {
            return Err(format!("cookie: \"{}\" cannot contain \"=\"", c.cookie));
        }
        cookie_safe("path", &c.path)?;
        let mut attributes = format!("; Path={}", c.path);
        if let Some(domain) = &c.domain {
            cookie_safe("domain", domain)?;
            attributes.push_str(&format!("; Domain={domain}"));
        }
        if c.httponly {
            attributes.push_str("; HttpOnly");
        }
        if c.secure {
            attributes.push_str("; Secure");
        }
        if let Some(s) = &c.samesite {
            let s = match s.to_ascii_lowercase().as_str() {
                "strict" => "Strict",
                "lax" => "Lax",
                "none" => "None",
                _ => return Err(format!("samesite: \"{s}\" is not Strict, Lax or None")),
            };
            attributes.push_str(&format!("; SameSite={s}"));
        }
        let seconds = |field: &str, m: Option<Millis>| -> Result<Option<u64>, String> {
            match m {
                Some(Millis(ms)) if ms < 1000 => Err(format!("{field}: must be at least 1s")),
                Some(Millis(ms)) => Ok(Some(ms / 1000)),
                None => Ok(None),
            }
        };
        let key = match c.key {
            Some(k) if k.len() < 16 => {
                return Err("key: must be at least 16 characters".into());
            }
            k => k.map(String::into_bytes),
        };
        Ok(Sticky {
            cookie: c.cookie,
            indirect: c.indirect,
            nocache: c.nocache,
            attributes,
            max_idle_s: seconds("max_idle", c.max_idle)?,
            max_life_s: seconds("max_life", c.max_life)?,
            key,
        })
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(vec!["cookie".into()])
    }

    /// The backend the request goes to, whose servers the cookie may name.
    fn request_fields(&self) -> Option<RequestFields> {
        Some(RequestFields::BACKEND)
    }

    /// `on_response` reads which backend and server answered (and its note).
    fn response_fields(&self) -> Option<ResponseFields> {
        Some(ResponseFields::BACKEND | ResponseFields::SERVER)
    }

    /// It only adds a cookie to a response; it reads none of its headers.
    fn response_headers(&self) -> Option<Vec<String>> {
        Some(vec![])
    }

    fn on_request(&self, request: Request) -> RequestAction {
        let now = now_s();
        let mut p = Proceed::unchanged();
        if let Some(stuck) = self.stuck(&request, now) {
            p = p
                .server(&stuck.server)
                .note(format!("{}|{}|{}", stuck.first, stuck.last, stuck.server));
        }
        if self.indirect
            && let Some(rest) = self.without_cookie(&request)
        {
            p = p.remove_header("cookie");
            for v in rest {
                p = p.append_header("cookie", &v);
            }
        }
        RequestAction::Proceed(p)
    }

    fn on_response(&self, response: Response) -> ResponseAction {
        let (Some(backend), Some(server)) = (&response.backend, &response.server) else {
            return ResponseAction::Proceed(Vec::new());
        };
        let now = now_s();
        let stuck = response.note.as_deref().and_then(|n| {
            let mut parts = n.splitn(3, '|');
            let first: u64 = parts.next()?.parse().ok()?;
            let last: u64 = parts.next()?.parse().ok()?;
            Some((first, last, parts.next()?))
        });
        let first = match stuck {
            // The cookie named the server that answered: set it again only to keep an
            // idle limit from running out.
            Some((first, last, s)) if s == server => {
                let refresh = self
                    .max_idle_s
                    .is_some_and(|idle| now.saturating_sub(last) >= (idle / 4).max(1));
                if !refresh {
                    return ResponseAction::Proceed(Vec::new());
                }
                first
            }
            _ => now,
        };
        let token = self.token(backend, server);
        let mut ops = vec![HeaderOp::Append(Header {
            name: "set-cookie".into(),
            value: format!(
                "{}={}{}",
                self.cookie,
                self.value(&token, first, now),
                self.attributes
            ),
        })];
        if self.nocache {
            ops.push(HeaderOp::Set(Header {
                name: "cache-control".into(),
                value: "private".into(),
            }));
        }
        ResponseAction::Proceed(ops)
    }
}

export_plugin!(Sticky);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::ServerInfo;
    use weir_sdk::testing::{FakeHost, request, response};

    fn host(states: &[(&str, ServerState)]) -> FakeHost {
        let host = FakeHost::install();
        host.set_now_ms(1_000_000_000);
        host.set_servers(
            "app",
            states
                .iter()
                .map(|(name, state)| ServerInfo {
                    name: (*name).into(),
                    state: *state,
                    weight: 1,
                    in_flight: 0,
                    backup: false,
                })
                .collect(),
        );
        host
    }

    fn sticky(config: &str) -> Sticky {
        weir_sdk::parse_config::<Sticky>(config).unwrap()
    }

    fn proceed(p: &Sticky, req: Request) -> Proceed {
        match p.on_request(req) {
            RequestAction::Proceed(p) => p,
            RequestAction::Unchanged => Proceed::unchanged(),
            RequestAction::Respond(_) => panic!("answered"),
        }
    }

    fn edits(p: &Sticky, resp: Response) -> Vec<String> {
        let ResponseAction::Proceed(ops) = p.on_response(resp) else {
            panic!("replaced")
        };
        ops.into_iter()
            .map(|op| match op {
                HeaderOp::Set(h) => format!("set {}: {}", h.name, h.value),
                HeaderOp::Append(h) => format!("add {}: {}", h.name, h.value),
                HeaderOp::Remove(n) => format!("del {n}"),
            })
            .collect()
    }

    #[test]
    fn a_new_client_gets_the_cookie_of_the_server_that_answered() {
        let _h = host(&[("s1", ServerState::Up), ("s2", ServerState::Up)]);
        let p = sticky("{}");
        let action = proceed(&p, request("GET", "/"));
        assert_eq!(action.server, None);
        assert_eq!(action.note, None);
        assert_eq!(
            edits(&p, response(200).from_server("s2")),
            [
                "add set-cookie: SERVERID=s2; Path=/",
                "set cache-control: private"
            ]
        );
    }

    #[test]
    fn the_cookie_pins_the_server_and_is_hidden_from_it() {
        let _h = host(&[("s1", ServerState::Up), ("s2", ServerState::Up)]);
        let p = sticky("{}");
        let action = proceed(
            &p,
            request("GET", "/").with_header("cookie", "a=1; SERVERID=s2; b=2"),
        );
        assert_eq!(action.server.as_deref(), Some("s2"));
        let note = action.note.clone().unwrap();
        let ops: Vec<_> = action
            .edits
            .iter()
            .map(|op| match op {
                HeaderOp::Remove(n) => format!("del {n}"),
                HeaderOp::Append(h) => format!("add {}: {}", h.name, h.value),
                HeaderOp::Set(h) => format!("set {}: {}", h.name, h.value),
            })
            .collect();
        assert_eq!(ops, ["del cookie", "add cookie: a=1; b=2"]);
        // The server that answered is the one named: nothing to set.
        assert!(edits(&p, response(200).from_server("s2").with_note(&note)).is_empty());

        let only = proceed(&p, request("GET", "/").with_header("cookie", "SERVERID=s1"));
        assert_eq!(only.server.as_deref(), Some("s1"));
        assert!(matches!(&only.edits[..], [HeaderOp::Remove(n)] if n == "cookie"));
        let direct = proceed(
            &sticky(r#"{"indirect": false}"#),
            request("GET", "/").with_header("cookie", "SERVERID=s1"),
        );
        assert!(direct.edits.is_empty());
    }

    #[test]
    fn an_unusable_server_is_left_and_the_cookie_rewritten() {
        let _h = host(&[
            ("s1", ServerState::Down),
            ("s2", ServerState::Drain),
            ("s3", ServerState::Maint),
        ]);
        let p = sticky("{}");
        for gone in ["s1", "s3", "nosuch"] {
            let action = proceed(
                &p,
                request("GET", "/").with_header("cookie", &format!("SERVERID={gone}")),
            );
            assert_eq!(action.server, None, "{gone}");
            assert_eq!(action.note, None);
        }
        // A draining server keeps its sessions.
        let action = proceed(&p, request("GET", "/").with_header("cookie", "SERVERID=s2"));
        assert_eq!(action.server.as_deref(), Some("s2"));
        // The answer from another server rewrites the cookie.
        assert_eq!(
            edits(&p, response(200).from_server("s2").with_note("1|1|s1"))[0],
            "add set-cookie: SERVERID=s2; Path=/"
        );
    }

    #[test]
    fn a_key_hides_server_names() {
        let _h = host(&[("s1", ServerState::Up), ("s2", ServerState::Up)]);
        let p = sticky(r#"{"key": "0123456789abcdef0123", "nocache": false}"#);
        let set = edits(&p, response(200).from_server("s1"));
        assert_eq!(set.len(), 1);
        let value = set[0]
            .strip_prefix("add set-cookie: SERVERID=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(value.len(), 16);
        assert!(!value.contains("s1"));
        let action = proceed(
            &p,
            request("GET", "/").with_header("cookie", &format!("SERVERID={value}")),
        );
        assert_eq!(action.server.as_deref(), Some("s1"));
        // The bare name is not accepted in place of the HMAC.
        let action = proceed(&p, request("GET", "/").with_header("cookie", "SERVERID=s1"));
        assert_eq!(action.server, None);
    }

    #[test]
    fn idle_and_life_limits() {
        let h = host(&[("s1", ServerState::Up)]);
        let p = sticky(
            r#"{"max_idle": "10m", "max_life": "1h", "httponly": true, "secure": true, "samesite": "lax"}"#,
        );
        let now = 1_000_000;
        let set = edits(&p, response(200).from_server("s1"));
        assert_eq!(
            set[0],
            format!(
                "add set-cookie: SERVERID=s1|{now}|{now}; Path=/; HttpOnly; Secure; SameSite=Lax"
            )
        );
        let cookie = format!("SERVERID=s1|{now}|{now}");
        h.advance_ms(5 * 60_000);
        let action = proceed(&p, request("GET", "/").with_header("cookie", &cookie));
        assert_eq!(action.server.as_deref(), Some("s1"));
        // Past a quarter of max_idle, the answer refreshes the last-use time.
        let refreshed = edits(
            &p,
            response(200)
                .from_server("s1")
                .with_note(&action.note.unwrap()),
        );
        assert_eq!(
            refreshed[0],
            format!(
                "add set-cookie: SERVERID=s1|{}|{now}; Path=/; HttpOnly; Secure; SameSite=Lax",
                now + 300
            )
        );
        // Idle too long: ignored.
        h.advance_ms(6 * 60_000);
        let action = proceed(&p, request("GET", "/").with_header("cookie", &cookie));
        assert_eq!(action.server, None);
        // Used recently but too old.
        let old = format!("SERVERID=s1|{}|{}", now + 11 * 60, now - 3_600);
        let action = proceed(&p, request("GET", "/").with_header("cookie", &old));
        assert_eq!(action.server, None);
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |c: &str| weir_sdk::parse_config::<Sticky>(c).err().unwrap();
        assert!(e(r#"{"cookie": "a b"}"#).starts_with("cookie:"));
        assert!(e(r#"{"samesite": "sometimes"}"#).starts_with("samesite:"));
        assert!(e(r#"{"key": "short"}"#).starts_with("key:"));
        assert!(e(r#"{"max_idle": "10ms"}"#).starts_with("max_idle:"));
        assert!(e(r#"{"max_life": "forever"}"#).starts_with("max_life"));
        assert!(e(r#"{"cooki": "x"}"#).contains("cooki"));
    }
}
