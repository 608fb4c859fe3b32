//! `[state]`: the store of plugins' counters and kv.

use serde::Deserialize;

use super::super::file::RedisFile;
use super::super::{Consistency, RedisStore, Store, StoreOnError};
use super::*;

pub(super) fn build_store(cx: &mut Ctx<'_>, file: &File) -> Store {
    let path = KeyPath::root().key("state").key("store");
    let redis = match &file.state.store {
        None => return Store::Memory,
        Some(toml::Value::String(s)) if s == "memory" => return Store::Memory,
        Some(toml::Value::Table(t)) => match RedisFile::deserialize(t.clone()) {
            Ok(r) => r,
            Err(e) => {
                cx.err(&path, e.message().trim().to_owned());
                return Store::Memory;
            }
        },
        Some(_) => {
            cx.err(
                &path,
                "must be \"memory\" or { redis = \"redis://host:port/db\", ... }",
            );
            return Store::Memory;
        }
    };
    if !redis.redis.starts_with("redis://") {
        cx.err(&path.key("redis"), "must be a redis:// URL");
    } else if let Err(e) = redis::Client::open(redis.redis.as_str()) {
        cx.err(&path.key("redis"), format!("not a Redis URL: {e}"));
    }
    let timeout = cx.positive(
        &path.key("timeout"),
        redis.timeout.as_ref(),
        Duration::from_millis(50),
    );
    let sync = cx.positive(
        &path.key("sync"),
        redis.sync.as_ref(),
        Duration::from_millis(100),
    );
    let on_error = match redis.on_error.as_deref() {
        None | Some("local") => StoreOnError::Local,
        Some("deny") => StoreOnError::Deny,
        Some(other) => {
            cx.err(
                &path.key("on_error"),
                format!("unknown policy \"{other}\" (expected \"local\" or \"deny\")"),
            );
            StoreOnError::Local
        }
    };
    let consistency = match redis.consistency.as_deref() {
        None | Some("sync") => Consistency::Sync,
        Some("exact") => Consistency::Exact,
        Some(other) => {
            cx.err(
                &path.key("consistency"),
                format!("unknown consistency \"{other}\" (expected \"sync\" or \"exact\")"),
            );
            Consistency::Sync
        }
    };
    Store::Redis(RedisStore {
        url: redis.redis,
        prefix: redis.prefix.unwrap_or_else(|| "weir:".to_owned()),
        timeout,
        sync,
        on_error,
        consistency,
    })
}

/// `[global] access_log`: `"stderr"`, `"off"`, a file path, `"syslog"` (/dev/log, local0,
/// RFC 3164), or `{ syslog = "/dev/log" | "udp://host:port", facility, format }`.
pub(super) fn access_log(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    value: Option<&toml::Value>,
) -> crate::config::AccessLogTarget {
    use crate::config::{AccessLogTarget, SYSLOG_FACILITIES, Syslog, SyslogAddr, SyslogFormat};
    let local = || {
        AccessLogTarget::Syslog(Syslog {
            to: SyslogAddr::Unix("/dev/log".into()),
            facility: 16,
            format: SyslogFormat::Rfc3164,
        })
    };
    let table = match value {
        None => return AccessLogTarget::Stderr,
        Some(toml::Value::String(s)) => {
            return match s.as_str() {
                "stderr" => AccessLogTarget::Stderr,
                "off" => AccessLogTarget::Off,
                "syslog" => local(),
                "" => {
                    cx.err(
                        path,
                        "must be \"stderr\", \"off\", \"syslog\" or a file path",
                    );
                    AccessLogTarget::Stderr
                }
                file => AccessLogTarget::File(cx.base.join(file)),
            };
        }
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            cx.err(
                path,
                "must be a string or { syslog = ..., facility, format }",
            );
            return AccessLogTarget::Stderr;
        }
    };
    if let Some(k) = table
        .keys()
        .find(|k| !["syslog", "facility", "format"].contains(&k.as_str()))
    {
        cx.err(&path.key(k), "unknown key (syslog, facility, format)");
    }
    let to = match table.get("syslog").and_then(toml::Value::as_str) {
        Some(udp) if udp.starts_with("udp://") => match udp["udp://".len()..].parse() {
            Ok(addr) => SyslogAddr::Udp(addr),
            Err(_) => {
                cx.err(&path.key("syslog"), "udp:// needs ip:port");
                SyslogAddr::Unix("/dev/log".into())
            }
        },
        Some(socket) if socket.starts_with('/') => SyslogAddr::Unix(socket.into()),
        _ => {
            cx.err(
                &path.key("syslog"),
                "must be a socket path (\"/dev/log\") or \"udp://ip:port\"",
            );
            SyslogAddr::Unix("/dev/log".into())
        }
    };
    let facility = match table.get("facility").map(|f| f.as_str()) {
        None => 16,
        Some(Some(name)) if SYSLOG_FACILITIES.contains(&name) => SYSLOG_FACILITIES
            .iter()
            .position(|f| *f == name)
            .unwrap_or(16) as u8,
        Some(_) => {
            cx.err(
                &path.key("facility"),
                "a syslog facility name (local0 ... local7, daemon, ...)",
            );
            16
        }
    };
    let format = match table.get("format").map(|f| f.as_str()) {
        None | Some(Some("rfc3164")) => SyslogFormat::Rfc3164,
        Some(Some("rfc5424")) => SyslogFormat::Rfc5424,
        Some(_) => {
            cx.err(&path.key("format"), "must be \"rfc3164\" or \"rfc5424\"");
            SyslogFormat::Rfc3164
        }
    };
    AccessLogTarget::Syslog(Syslog {
        to,
        facility,
        format,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Consistency, Store, StoreOnError};
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = "[[frontend]]\nname = \"www\"\nbind = [\"127.0.0.1:0\"]\ndefault_backend = \"app\"\n[backend.app]\nservers = [{ name = \"a\", addr = \"127.0.0.1:1\" }]\n";

    fn load(state: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{BASE}{state}"), Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_store_is_memory_unless_redis_is_named() {
        assert_eq!(load("").unwrap().store, Store::Memory);
        assert_eq!(
            load("[state]\nstore = \"memory\"\n").unwrap().store,
            Store::Memory
        );
        let c = load("[state]\nstore = { redis = \"redis://127.0.0.1:6379/0\", sync = \"250ms\", on_error = \"deny\", consistency = \"exact\" }\n").unwrap();
        let Store::Redis(r) = c.store else {
            panic!("not redis")
        };
        assert_eq!(r.url, "redis://127.0.0.1:6379/0");
        assert_eq!(r.prefix, "weir:");
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert_eq!(r.sync, Duration::from_millis(250));
        assert_eq!(r.on_error, StoreOnError::Deny);
        assert_eq!(r.consistency, Consistency::Exact);
    }

    #[test]
    fn a_bad_store_names_its_key_and_line() {
        let e = load("[state]\nstore = \"disk\"\n").unwrap_err();
        assert!(e.contains("state.store") && e.contains("line 8"), "{e}");
        let e = load("[state]\nstore = { redis = \"http://x\" }\n").unwrap_err();
        assert!(e.contains("state.store.redis"), "{e}");
        let e = load("[state]\nstore = { redis = \"redis://x\", syncs = \"1s\" }\n").unwrap_err();
        assert!(e.contains("state.store") && e.contains("syncs"), "{e}");
        let e =
            load("[state]\nstore = { redis = \"redis://x\", on_error = \"retry\" }\n").unwrap_err();
        assert!(e.contains("state.store.on_error"), "{e}");
        let e = load("[state]\nstore = { redis = \"redis://x\", sync = \"0s\" }\n").unwrap_err();
        assert!(e.contains("state.store.sync"), "{e}");
    }

    fn global(access_log: &str) -> Result<Config, String> {
        Config::from_toml(
            &format!("[global]\naccess_log = {access_log}\n{BASE}"),
            Path::new("."),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_access_log_may_go_to_syslog() {
        use crate::config::{AccessLogTarget, SyslogAddr, SyslogFormat};
        let AccessLogTarget::Syslog(s) = global("\"syslog\"").unwrap().global.access_log else {
            panic!("not syslog")
        };
        assert_eq!(s.to, SyslogAddr::Unix("/dev/log".into()));
        assert_eq!((s.facility, s.format), (16, SyslogFormat::Rfc3164));
        let AccessLogTarget::Syslog(s) = global(
            "{ syslog = \"udp://127.0.0.1:514\", facility = \"daemon\", format = \"rfc5424\" }",
        )
        .unwrap()
        .global
        .access_log
        else {
            panic!("not syslog")
        };
        assert_eq!(s.to, SyslogAddr::Udp("127.0.0.1:514".parse().unwrap()));
        assert_eq!((s.facility, s.format), (3, SyslogFormat::Rfc5424));
        let e = global("{ syslog = \"/dev/log\", facility = \"local9\" }").unwrap_err();
        assert!(
            e.contains("global.access_log.facility") && e.contains("line 2"),
            "{e}"
        );
        let e = global("{ syslog = \"/dev/log\", level = \"info\" }").unwrap_err();
        assert!(e.contains("global.access_log.level"), "{e}");
        let e = global("{ syslog = \"tcp://x\" }").unwrap_err();
        assert!(e.contains("global.access_log.syslog"), "{e}");
    }
}
