//! Canary routing: requests carrying a header, or a stable share of clients, go to a
//! canary backend; everything else goes where the frontend sends it.
//!
//! ```toml
//! [plugin.canary]
//! wasm = "canary.wasm"
//! config = { backend = "app-v2", percent = 5, header = "x-canary" }
//! ```

use serde::Deserialize;
use weir_sdk::{
    Hooks, Level, Plugin, Proceed, Request, RequestAction, RequestFields, export_plugin, host,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The canary backend.
    pub backend: String,
    /// Share of clients (by IP) sent to the canary, 0 to 100.
    #[serde(default)]
    pub percent: u8,
    /// Requests with this header (any value) always go to the canary.
    #[serde(default)]
    pub header: Option<String>,
}

pub struct Canary(Config);

impl Plugin for Canary {
    type Config = Config;
    const NAME: &'static str = "canary";
    const VERSION: &'static str = "0.1.0";
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn configure(config: Config) -> Result<Self, String> {
        if config.percent > 100 {
            return Err(format!("percent: must be 0 to 100, got {}", config.percent));
        }
        if config.backend.is_empty() {
            return Err("backend: must name a backend".into());
        }
        host::log(
            Level::Info,
            &format!("{}% of clients to {}", config.percent, config.backend),
        );
        Ok(Canary(config))
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(
            self.0
                .header
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        )
    }

    /// The client address picks the bucket.
    fn request_fields(&self) -> Option<RequestFields> {
        Some(RequestFields::CLIENT_IP)
    }

    fn on_request(&self, request: Request) -> RequestAction {
        let by_header = self
            .0
            .header
            .as_deref()
            .is_some_and(|h| request.header(h).is_some());
        if by_header || bucket(&request.client_ip) < u32::from(self.0.percent) {
            RequestAction::Proceed(Proceed::unchanged().backend(&self.0.backend))
        } else {
            RequestAction::Proceed(Proceed::unchanged())
        }
    }
}

/// A client's stable bucket, 0 to 99, so a client stays on one side.
fn bucket(client: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in client.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % 100
}

export_plugin!(Canary);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Header;
    use weir_sdk::testing::FakeHost;

    fn request(ip: &str, headers: Vec<Header>) -> Request {
        Request {
            headers,
            ..weir_sdk::testing::request("GET", "/").from_ip(ip)
        }
    }

    fn to_canary(action: RequestAction) -> bool {
        matches!(action, RequestAction::Proceed(p) if p.backend.as_deref() == Some("v2"))
    }

    #[test]
    fn the_header_always_wins() {
        let _host = FakeHost::install();
        let p = weir_sdk::parse_config::<Canary>(
            r#"{"backend": "v2", "percent": 0, "header": "x-canary"}"#,
        )
        .unwrap();
        let with = vec![Header {
            name: "x-canary".into(),
            value: "1".into(),
        }];
        assert!(to_canary(p.on_request(request("10.0.0.1", with))));
        assert!(!to_canary(p.on_request(request("10.0.0.1", vec![]))));
    }

    #[test]
    fn a_stable_share_of_clients_goes_to_the_canary() {
        let _host = FakeHost::install();
        let p = weir_sdk::parse_config::<Canary>(r#"{"backend": "v2", "percent": 20}"#).unwrap();
        let chosen = (0..1000)
            .filter(|i| {
                to_canary(p.on_request(request(&format!("10.0.{}.{}", i / 250, i % 250), vec![])))
            })
            .count();
        assert!((150..=250).contains(&chosen), "{chosen} of 1000 clients");
        let first = to_canary(p.on_request(request("10.9.9.9", vec![])));
        assert!((0..10).all(|_| to_canary(p.on_request(request("10.9.9.9", vec![]))) == first));
    }

    #[test]
    fn bad_config_names_the_field() {
        let _host = FakeHost::install();
        let err = weir_sdk::parse_config::<Canary>(r#"{"backend": "v2", "percent": 101}"#)
            .err()
            .unwrap();
        assert!(err.starts_with("percent:"), "{err}");
        let err = weir_sdk::parse_config::<Canary>(r#"{"percent": 1}"#)
            .err()
            .unwrap();
        assert!(err.contains("`backend`"), "{err}");
        let host = FakeHost::install();
        weir_sdk::parse_config::<Canary>(r#"{"backend": "v2", "percent": 5}"#).unwrap();
        assert_eq!(host.logs()[0].1, "5% of clients to v2");
    }
}
