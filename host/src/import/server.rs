//! `server` lines (after their `default-server` words): weir's server table, and the
//! check settings the line carries.

use super::Cx;
use super::emit::V;
use super::parse::Line;
use super::settings::duration;

/// A server as weir will have it.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its weir name: HAProxy's, or its cookie value when the backend inserts a cookie.
    pub name: String,
    pub haproxy_name: String,
    /// weir's keys after `name` (`addr` first).
    pub entries: Vec<(String, V)>,
    pub checked: bool,
    /// The check's settings on this line (`interval`, `rise`, ...).
    pub health: Vec<(String, V)>,
    pub cookie: Option<String>,
}

/// Words a server keyword takes after it (the keywords not listed take none).
fn arity(word: &str) -> usize {
    match word {
        "inter"
        | "fastinter"
        | "downinter"
        | "rise"
        | "fall"
        | "weight"
        | "maxconn"
        | "slowstart"
        | "verify"
        | "ca-file"
        | "sni"
        | "alpn"
        | "proto"
        | "cookie"
        | "observe"
        | "error-limit"
        | "on-error"
        | "port"
        | "addr"
        | "id"
        | "maxqueue"
        | "minconn"
        | "resolvers"
        | "init-addr"
        | "agent-port"
        | "agent-inter"
        | "agent-send"
        | "agent-addr"
        | "check-sni"
        | "crt"
        | "ciphers"
        | "ciphersuites"
        | "ssl-min-ver"
        | "ssl-max-ver"
        | "on-marked-down"
        | "on-marked-up"
        | "resolve-prefer"
        | "resolve-net"
        | "namespace"
        | "source"
        | "pool-max-conn"
        | "pool-purge-delay"
        | "pool-low-conn"
        | "max-reuse"
        | "check-proto"
        | "check-alpn"
        | "redir"
        | "track"
        | "ws"
        | "crl-file"
        | "curves"
        | "sigalgs"
        | "set-proxy-v2-tlv-fmt"
        | "hash-key"
        | "log-proto"
        | "tcp-ut"
        | "shard"
        | "guid"
        | "check-reuse-pool"
        | "check-pool-conn-name"
        | "pool-conn-name"
        | "idle-ping"
        | "strict-maxconn" => 1,
        _ => 0,
    }
}

/// `server NAME ADDR [params]`; None when it cannot be carried over (noted).
pub fn server(cx: &mut Cx, line: &Line, defaults: &[String]) -> Option<Server> {
    let (name, addr) = (line.word(1), line.word(2));
    if name.is_empty() || addr.is_empty() {
        cx.left(line, "a server needs a name and an address");
        return None;
    }
    let addr = match address(addr) {
        Ok(a) => a,
        Err(why) => {
            cx.left(line, why);
            return None;
        }
    };
    let mut s = Server {
        name: name.to_owned(),
        haproxy_name: name.to_owned(),
        entries: vec![("addr".into(), V::Str(addr))],
        checked: false,
        health: Vec::new(),
        cookie: None,
    };
    let set = |list: &mut Vec<(String, V)>, k: &str, v: V| {
        list.retain(|(e, _)| e != k);
        list.push((k.to_owned(), v));
    };
    let mut missing = Vec::new();
    let mut disabled = false;
    let own = &line.words[3..];
    let all: Vec<&String> = defaults.iter().chain(own).collect();
    let mut i = 0;
    while i < all.len() {
        let word = all[i].as_str();
        let n = arity(word);
        let arg = all.get(i + 1).map_or("", |s| s.as_str());
        i += 1 + n;
        let number = |max: i64| arg.parse::<i64>().ok().filter(|v| (0..=max).contains(v));
        match word {
            "check" => s.checked = true,
            "no-check" => s.checked = false,
            "inter" | "fastinter" | "downinter" | "slowstart" => match duration(arg) {
                Some(d) if word == "slowstart" => set(&mut s.entries, "slowstart", V::Str(d)),
                Some(d) => {
                    let key = if word == "inter" { "interval" } else { word };
                    set(&mut s.health, key, V::Str(d));
                }
                None => missing.push(format!("{word} {arg}: not a duration")),
            },
            "rise" | "fall" | "error-limit" => match number(1000) {
                Some(v) if v > 0 => set(&mut s.health, &word.replace('-', "_"), V::Int(v)),
                _ => missing.push(format!("{word} {arg}: not a count weir takes")),
            },
            "weight" => match number(256) {
                Some(v) => set(&mut s.entries, "weight", V::Int(v)),
                None => missing.push(format!("weight {arg}: weir's weights go from 0 to 256")),
            },
            "maxconn" => match number(i64::from(u32::MAX)) {
                Some(v) if v > 0 => set(&mut s.entries, "maxconn", V::Int(v)),
                _ => missing.push(format!("maxconn {arg}: not a limit weir takes")),
            },
            "backup" => set(&mut s.entries, "backup", V::Bool(true)),
            "no-backup" => s.entries.retain(|(k, _)| k != "backup"),
            "send-proxy" => set(&mut s.entries, "send_proxy", V::str("v1")),
            "send-proxy-v2" => set(&mut s.entries, "send_proxy", V::str("v2")),
            "no-send-proxy" | "no-send-proxy-v2" => s.entries.retain(|(k, _)| k != "send_proxy"),
            "ssl" => set(&mut s.entries, "tls", V::Bool(true)),
            "no-ssl" => s.entries.retain(|(k, _)| k != "tls"),
            "check-ssl" | "no-tls-tickets" | "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "enabled" => {
            }
            "verify" if arg == "none" => set(&mut s.entries, "verify", V::Bool(false)),
            "verify" if arg == "required" => s.entries.retain(|(k, _)| k != "verify"),
            "ca-file" => set(&mut s.entries, "ca", V::Str(cx.path(arg, true))),
            "sni" if arg.starts_with("str(") && arg.ends_with(')') => {
                set(&mut s.entries, "sni", V::str(&arg[4..arg.len() - 1]));
            }
            "alpn" | "proto" if arg.split(',').next() == Some("h2") => {
                set(&mut s.entries, "proto", V::str("h2"));
            }
            "alpn" | "proto" if arg.split(',').next() == Some("http/1.1") => {}
            "cookie" => s.cookie = Some(arg.to_owned()),
            "observe" if arg == "layer4" || arg == "layer7" => {
                set(&mut s.health, "observe", V::str(arg));
            }
            "on-error" if ["fastinter", "mark-down", "fail-check"].contains(&arg) => {
                set(&mut s.health, "on_error", V::str(arg));
            }
            "disabled" => disabled = true,
            _ if n == 1 => missing.push(format!("{word} {arg}")),
            _ => missing.push(word.to_owned()),
        }
    }
    if disabled {
        s.entries.push(("state".into(), V::str("maint")));
    }
    if !missing.is_empty() {
        cx.partly(
            line,
            format!("no equivalent in weir for {}", missing.join(", ")),
        );
    }
    Some(s)
}

/// HAProxy's server address in weir's form, or why not.
fn address(addr: &str) -> Result<String, &'static str> {
    let addr = addr
        .strip_prefix("ipv4@")
        .or_else(|| addr.strip_prefix("ipv6@"))
        .unwrap_or(addr);
    if addr.contains('@') || addr.starts_with('/') {
        return Err("an address weir cannot reach (weir connects over TCP to host:port)");
    }
    let port = if let Some(rest) = addr.strip_prefix('[') {
        rest.split_once("]:").map(|(_, p)| p)
    } else if addr.matches(':').count() == 1 {
        addr.rsplit_once(':').map(|(_, p)| p)
    } else {
        None
    };
    match port {
        Some(p)
            if p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0) =>
        {
            Ok(addr.to_owned())
        }
        Some(_) => Err("a port weir cannot use (a range, an offset or 0)"),
        None => Err("no port: HAProxy then uses the client's destination port, weir needs one"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_port() {
        assert_eq!(address("10.0.0.1:80").unwrap(), "10.0.0.1:80");
        assert_eq!(address("ipv4@10.0.0.1:80").unwrap(), "10.0.0.1:80");
        assert_eq!(address("[::1]:80").unwrap(), "[::1]:80");
        assert_eq!(address("app.internal:8080").unwrap(), "app.internal:8080");
        assert!(address("10.0.0.1").is_err());
        assert!(address("10.0.0.1:+1").is_err());
        assert!(address("unix@/run/app.sock").is_err());
    }
}
