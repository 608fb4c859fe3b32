//! `health-json`: judges active health checks by a JSON body. A server is up when the field
//! at `field` (a dotted path; numbers index arrays) equals `expect`; when it equals
//! `degraded`, the server stays up at `degraded_weight`; anything else, a missing field or
//! a body that is not JSON takes it down, with the reason in the log.
//!
//! ```toml
//! [plugin.health]
//! stock = "health-json"
//! config = { field = "status", expect = "healthy", degraded = "degraded", degraded_weight = 1 }
//!
//! [backend.app]
//! health = { path = "/health", plugin = "health" }
//! ```

use serde::Deserialize;
use serde_json::Value;
use weir_sdk::util::OneOrMany;
use weir_sdk::{Hooks, Plugin, Probe, Verdict, export_plugin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Dotted path to the field: "status", "checks.db.state", "items.0.ok".
    #[serde(default = "default_field")]
    pub field: String,
    /// The value (or any of the values) that means healthy.
    #[serde(default = "default_expect")]
    pub expect: OneOrMany<Value>,
    /// The value (or values) that means up but degraded.
    #[serde(default)]
    pub degraded: Option<OneOrMany<Value>>,
    /// The weight of a degraded server.
    #[serde(default = "default_degraded_weight")]
    pub degraded_weight: u32,
}

fn default_field() -> String {
    "status".into()
}

fn default_expect() -> OneOrMany<Value> {
    OneOrMany(vec![Value::String("healthy".into())])
}

fn default_degraded_weight() -> u32 {
    1
}

pub struct HealthJson {
    path: Vec<String>,
    expect: Vec<Value>,
    degraded: Vec<Value>,
    degraded_weight: u32,
}

fn check_values(field: &str, values: &[Value]) -> Result<(), String> {
    match values.iter().position(|v| v.is_object() || v.is_array()) {
        Some(i) => Err(format!(
            "{field}: expected a string, number, boolean or null (item {i} is not)"
        )),
        None if values.is_empty() => Err(format!("{field}: give at least one value")),
        None => Ok(()),
    }
}

impl HealthJson {
    fn lookup<'a>(&self, mut value: &'a Value) -> Option<&'a Value> {
        for part in &self.path {
            value = match value {
                Value::Object(map) => map.get(part)?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(value)
    }
}

impl Plugin for HealthJson {
    type Config = Config;
    const NAME: &'static str = "health-json";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_HEALTH_CHECK;

    fn configure(c: Config) -> Result<Self, String> {
        let path: Vec<String> = c.field.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("field: \"{}\" is not a dotted path", c.field));
        }
        check_values("expect", &c.expect.0)?;
        let degraded = c.degraded.map(|d| d.0).unwrap_or_default();
        if !degraded.is_empty() {
            check_values("degraded", &degraded)?;
        }
        if c.degraded_weight == 0 || c.degraded_weight > 256 {
            return Err("degraded_weight: must be 1 to 256".into());
        }
        Ok(HealthJson {
            path,
            expect: c.expect.0,
            degraded,
            degraded_weight: c.degraded_weight,
        })
    }

    fn on_health_check(&self, probe: Probe) -> Verdict {
        let Ok(body) = serde_json::from_slice::<Value>(&probe.body_prefix) else {
            return Verdict::Down(format!(
                "HTTP {}: the body is not JSON (or longer than 16 KiB)",
                probe.status
            ));
        };
        let field = self.path.join(".");
        match self.lookup(&body) {
            None => Verdict::Down(format!("no field {field} in the JSON body")),
            Some(v) if self.expect.contains(v) => Verdict::Up(None),
            Some(v) if self.degraded.contains(v) => Verdict::Up(Some(self.degraded_weight)),
            Some(v) => Verdict::Down(format!("{field} is {v}")),
        }
    }
}

export_plugin!(HealthJson);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(config: &str) -> HealthJson {
        weir_sdk::parse_config::<HealthJson>(config).unwrap()
    }

    fn probe(body: &str) -> Probe {
        Probe {
            backend: "app".into(),
            server: "s1".into(),
            status: 200,
            headers: vec![],
            body_prefix: body.as_bytes().to_vec(),
        }
    }

    fn verdict(p: &HealthJson, body: &str) -> String {
        match p.on_health_check(probe(body)) {
            Verdict::Up(None) => "up".into(),
            Verdict::Up(Some(w)) => format!("up {w}"),
            Verdict::Down(why) => format!("down: {why}"),
        }
    }

    #[test]
    fn the_default_reads_status_healthy() {
        let p = plugin("{}");
        assert_eq!(verdict(&p, r#"{"status": "healthy"}"#), "up");
        assert_eq!(
            verdict(&p, r#"{"status": "sick"}"#),
            "down: status is \"sick\""
        );
        assert_eq!(
            verdict(&p, r#"{"state": "healthy"}"#),
            "down: no field status in the JSON body"
        );
        assert!(verdict(&p, "<html>").starts_with("down: HTTP 200: the body is not JSON"));
        assert!(verdict(&p, r#"{"status": "heal"#).contains("not JSON"));
    }

    #[test]
    fn nested_fields_arrays_and_other_types() {
        let p = plugin(r#"{"field": "checks.1.ok", "expect": true}"#);
        assert_eq!(
            verdict(&p, r#"{"checks": [{"ok": false}, {"ok": true}]}"#),
            "up"
        );
        assert_eq!(
            verdict(&p, r#"{"checks": [{"ok": true}, {"ok": false}]}"#),
            "down: checks.1.ok is false"
        );
        assert!(verdict(&p, r#"{"checks": {"ok": true}}"#).starts_with("down: no field"));
        let p = plugin(r#"{"field": "code", "expect": [0, 200]}"#);
        assert_eq!(verdict(&p, r#"{"code": 200}"#), "up");
        assert_eq!(verdict(&p, r#"{"code": 0}"#), "up");
        assert_eq!(verdict(&p, r#"{"code": "200"}"#), "down: code is \"200\"");
    }

    #[test]
    fn degraded_lowers_the_weight() {
        let p = plugin(r#"{"expect": "ok", "degraded": ["slow", "busy"], "degraded_weight": 3}"#);
        assert_eq!(verdict(&p, r#"{"status": "ok"}"#), "up");
        assert_eq!(verdict(&p, r#"{"status": "busy"}"#), "up 3");
        assert_eq!(
            verdict(&p, r#"{"status": "down"}"#),
            "down: status is \"down\""
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |c: &str| weir_sdk::parse_config::<HealthJson>(c).err().unwrap();
        assert!(e(r#"{"field": "a..b"}"#).starts_with("field:"));
        assert!(e(r#"{"expect": {"a": 1}}"#).starts_with("expect:"));
        assert!(e(r#"{"expect": []}"#).starts_with("expect:"));
        assert!(e(r#"{"degraded": "x", "degraded_weight": 0}"#).starts_with("degraded_weight:"));
        assert!(e(r#"{"feild": "x"}"#).contains("feild"));
    }
}
