//! `weir check --against ADMIN`: what a config would change in a running weir, asked of
//! its admin API (`GET /api/info`): what a reload applies, and what needs a restart.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::server::target_name;

/// What loading `config` into the weir at `admin` would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Difference {
    /// Changes a reload applies.
    pub applies: Vec<String>,
    /// Changes only a restart applies.
    pub restart: Vec<String>,
}

/// `[user:password@]host:port`: the address and the credentials.
fn parse(against: &str) -> Result<(SocketAddr, Option<&str>), String> {
    let (auth, addr) = match against.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, against),
    };
    let addr = addr
        .to_socket_addrs()
        .map_err(|e| format!("--against {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("--against {addr}: no address"))?;
    Ok((addr, auth))
}

/// Asks the running weir at `against` and compares.
pub fn ask(config: &Config, against: &str, timeout: Duration) -> Result<Difference, String> {
    let (addr, auth) = parse(against)?;
    let (status, body) = super::health::get(addr, "/api/info", auth, timeout)
        .map_err(|e| format!("admin {addr}: {e}"))?;
    if status != 200 {
        return Err(format!("admin {addr}: GET /api/info answered {status}"));
    }
    let info: Value =
        serde_json::from_str(&body).map_err(|e| format!("admin {addr}: not JSON: {e}"))?;
    Ok(compare(config, &info))
}

/// The differences between `config` and the running weir's `/api/info`.
pub fn compare(config: &Config, info: &Value) -> Difference {
    let mut d = Difference::default();
    let g = &config.global;
    let running = &info["global"];
    if running["threads"].as_u64() != Some(g.threads as u64) {
        d.restart.push(format!(
            "global.threads: {} running, {} in the file",
            running["threads"], g.threads
        ));
    }
    if running["maxconn"].as_u64() != Some(g.maxconn as u64) {
        d.applies.push(format!(
            "global.maxconn: {} running, {} in the file",
            running["maxconn"], g.maxconn
        ));
    }
    let log = target_name(&g.access_log);
    if running["access_log"].as_str() != Some(log.as_str()) {
        d.applies.push(format!(
            "global.access_log: {} running, {log} in the file",
            running["access_log"]
        ));
    }
    let admin = config.admin.as_ref().map(|a| {
        serde_json::json!({
            "bind": a.bind.to_string(),
            "maxconn": a.maxconn,
            "stats_admin": a.stats_admin,
            "refresh_ms": a.refresh.as_millis() as u64,
            "user": a.auth.as_ref().map(|(u, _)| u.clone()),
        })
    });
    if admin.as_ref().unwrap_or(&Value::Null) != &info["admin"] {
        d.restart.push(
            "[admin] differs from the running one: weir refuses to reload a changed [admin]"
                .to_owned(),
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_and_admin_need_a_restart_maxconn_and_the_log_a_reload() {
        let config = Config::from_toml(
            "[global]\nthreads = 2\nmaxconn = 100\naccess_log = \"off\"\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"app\"\n[backend.app]\nservers = [{ name = \"a\", addr = \"127.0.0.1:1\" }]\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let same = serde_json::json!({
            "global": { "threads": 2, "maxconn": 100, "access_log": "off" },
            "admin": null,
        });
        assert_eq!(compare(&config, &same), Difference::default());
        let other = serde_json::json!({
            "global": { "threads": 1, "maxconn": 50, "access_log": "stderr" },
            "admin": { "bind": "127.0.0.1:8404" },
        });
        let d = compare(&config, &other);
        assert_eq!(d.applies.len(), 2, "{d:?}");
        assert_eq!(d.restart.len(), 2, "{d:?}");
        assert!(d.restart[0].contains("global.threads: 1 running, 2 in the file"));
        assert_eq!(
            parse("admin:pw@127.0.0.1:8404").unwrap().1,
            Some("admin:pw")
        );
    }
}
