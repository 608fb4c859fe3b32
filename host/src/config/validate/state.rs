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
}
