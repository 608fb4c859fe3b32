//! `security-headers`: adds the response headers browsers use to protect users, with sane
//! defaults; HSTS only on https; optionally sends plain-http requests to https with a 301;
//! strips headers that advertise the server's software.
//!
//! ```toml
//! [plugin.secure]
//! stock = "security-headers"
//! config = { https_redirect = true, content_security_policy = "default-src 'self'" }
//! ```

use serde::Deserialize;
use weir_sdk::{
    Header, HeaderOp, Hooks, LocalResponse, Plugin, Proceed, Request, RequestAction, RequestFields,
    Response, ResponseAction, ResponseFields, export_plugin,
};

fn some(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// X-Frame-Options; "" leaves it out.
    pub frame_options: String,
    /// X-Content-Type-Options; "" leaves it out.
    pub content_type_options: String,
    /// Referrer-Policy; "" leaves it out.
    pub referrer_policy: String,
    /// Strict-Transport-Security max-age in seconds, on https responses; 0 leaves it out.
    pub hsts_max_age: u64,
    pub hsts_include_subdomains: bool,
    pub hsts_preload: bool,
    pub content_security_policy: Option<String>,
    pub permissions_policy: Option<String>,
    /// Answer plain-http requests with a 301 to the same URL over https.
    pub https_redirect: bool,
    /// Replace a header the server set instead of keeping the server's.
    #[serde(rename = "override")]
    pub override_: bool,
    /// Response headers removed.
    pub remove: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frame_options: "SAMEORIGIN".into(),
            content_type_options: "nosniff".into(),
            referrer_policy: "strict-origin-when-cross-origin".into(),
            hsts_max_age: 31_536_000,
            hsts_include_subdomains: false,
            hsts_preload: false,
            content_security_policy: None,
            permissions_policy: None,
            https_redirect: false,
            override_: false,
            remove: vec!["server".into(), "x-powered-by".into()],
        }
    }
}

pub struct SecurityHeaders {
    /// Added to every response.
    always: Vec<Header>,
    /// Added to https responses only.
    hsts: Option<Header>,
    https_redirect: bool,
    override_: bool,
    remove: Vec<String>,
}

fn check_value(field: &str, value: &str) -> Result<(), String> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(format!("{field}: must not contain CR, LF or NUL"));
    }
    Ok(())
}

impl Plugin for SecurityHeaders {
    type Config = Config;
    const NAME: &'static str = "security-headers";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_REQUEST.union(Hooks::ON_RESPONSE);

    fn configure(c: Config) -> Result<Self, String> {
        let mut always = Vec::new();
        for (field, name, value) in [
            ("frame_options", "x-frame-options", some(&c.frame_options)),
            (
                "content_type_options",
                "x-content-type-options",
                some(&c.content_type_options),
            ),
            (
                "referrer_policy",
                "referrer-policy",
                some(&c.referrer_policy),
            ),
            (
                "content_security_policy",
                "content-security-policy",
                c.content_security_policy,
            ),
            (
                "permissions_policy",
                "permissions-policy",
                c.permissions_policy,
            ),
        ] {
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            check_value(field, &value)?;
            always.push(Header {
                name: name.into(),
                value,
            });
        }
        let hsts = (c.hsts_max_age > 0).then(|| {
            let mut value = format!("max-age={}", c.hsts_max_age);
            if c.hsts_include_subdomains {
                value.push_str("; includeSubDomains");
            }
            if c.hsts_preload {
                value.push_str("; preload");
            }
            Header {
                name: "strict-transport-security".into(),
                value,
            }
        });
        for (i, name) in c.remove.iter().enumerate() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("remove[{i}]: \"{name}\" is not a header name"));
            }
        }
        Ok(SecurityHeaders {
            always,
            hsts,
            https_redirect: c.https_redirect,
            override_: c.override_,
            remove: c.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
        })
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(vec![])
    }

    /// Only the https redirect reads the request.
    fn request_fields(&self) -> Option<RequestFields> {
        Some(if self.https_redirect {
            RequestFields::SCHEME | RequestFields::HOST | RequestFields::PATH | RequestFields::QUERY
        } else {
            RequestFields::empty()
        })
    }

    /// `on_response` reads the scheme only (HSTS goes on HTTPS responses alone).
    fn response_fields(&self) -> Option<ResponseFields> {
        Some(ResponseFields::SCHEME)
    }

    /// Without `override`, whether the server already set a header decides whether it is
    /// set: those headers are read. With it, none.
    fn response_headers(&self) -> Option<Vec<String>> {
        if self.override_ {
            return Some(vec![]);
        }
        Some(
            self.always
                .iter()
                .chain(&self.hsts)
                .map(|h| h.name.clone())
                .collect(),
        )
    }

    fn on_request(&self, request: Request) -> RequestAction {
        if !self.https_redirect || request.scheme == "https" {
            return RequestAction::Proceed(Proceed::unchanged());
        }
        let Some(host) = &request.host else {
            return RequestAction::Proceed(Proceed::unchanged());
        };
        // The https URL drops the plain-http port.
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        };
        let mut location = format!("https://{name}{}", request.path);
        if let Some(q) = &request.query {
            location.push('?');
            location.push_str(q);
        }
        RequestAction::Respond(
            LocalResponse::text(301, "Moved Permanently\n").with_header("location", &location),
        )
    }

    /// Without `https_redirect`, requests need no call.
    fn request_edits(&self, _frontend: &str) -> Option<Vec<HeaderOp>> {
        (!self.https_redirect).then(Vec::new)
    }

    /// With `override` and no HSTS (which depends on the scheme), every response gets the
    /// same edits, which weir then makes without a call.
    fn response_edits(&self, _frontend: &str) -> Option<Vec<HeaderOp>> {
        if !self.override_ || self.hsts.is_some() {
            return None;
        }
        let remove = self.remove.iter().map(|n| HeaderOp::Remove(n.clone()));
        let set = self.always.iter().map(|h| HeaderOp::Set(h.clone()));
        Some(remove.chain(set).collect())
    }

    fn on_response(&self, response: Response) -> ResponseAction {
        let mut ops: Vec<HeaderOp> = self
            .remove
            .iter()
            .map(|n| HeaderOp::Remove(n.clone()))
            .collect();
        let hsts = self.hsts.iter().filter(|_| response.scheme == "https");
        for h in self.always.iter().chain(hsts) {
            if self.override_ || response.header(&h.name).is_none() {
                ops.push(HeaderOp::Set(h.clone()));
            }
        }
        ResponseAction::Proceed(ops)
    }
}

export_plugin!(SecurityHeaders);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{request, response};

    fn plugin(config: &str) -> SecurityHeaders {
        weir_sdk::parse_config::<SecurityHeaders>(config).unwrap()
    }

    /// The response's headers after the plugin's edits, as "name: value" lines, sorted.
    fn after(p: &SecurityHeaders, r: Response) -> Vec<String> {
        let headers = r.headers.clone();
        let ResponseAction::Proceed(ops) = p.on_response(r) else {
            panic!("replaced")
        };
        let mut lines = weir_sdk::testing::apply_edits(&headers, ops);
        lines.sort();
        lines
    }

    #[test]
    fn fixed_edits_only_when_nothing_depends_on_the_message() {
        let p = plugin(r#"{"override": true, "hsts_max_age": 0}"#);
        let r = response(200)
            .with_header("server", "nginx")
            .with_header("x-frame-options", "ALLOW");
        let fixed = p.response_edits("www").expect("fixed edits");
        let mut lines = weir_sdk::testing::apply_edits(&r.headers, fixed);
        lines.sort();
        assert_eq!(lines, after(&p, r));
        assert!(p.request_edits("www").unwrap().is_empty());
        // HSTS depends on the scheme, keeping the server's headers on the response, a
        // redirect on the request.
        assert!(
            plugin(r#"{"override": true}"#)
                .response_edits("www")
                .is_none()
        );
        assert!(
            plugin(r#"{"hsts_max_age": 0}"#)
                .response_edits("www")
                .is_none()
        );
        assert!(
            plugin(r#"{"https_redirect": true}"#)
                .request_edits("www")
                .is_none()
        );
    }

    #[test]
    fn reads_the_response_headers_it_may_set_unless_it_overrides() {
        let names = plugin("{}").response_headers().unwrap();
        assert_eq!(
            names,
            [
                "x-frame-options",
                "x-content-type-options",
                "referrer-policy",
                "strict-transport-security"
            ]
        );
        let p = plugin(r#"{"override": true}"#);
        assert_eq!(p.response_headers(), Some(vec![]));
    }

    #[test]
    fn defaults_on_plain_http() {
        let p = plugin("{}");
        let got = after(
            &p,
            response(200)
                .with_header("server", "nginx/1.2")
                .with_header("x-powered-by", "PHP")
                .with_header("content-type", "text/html"),
        );
        assert_eq!(
            got,
            [
                "content-type: text/html",
                "referrer-policy: strict-origin-when-cross-origin",
                "x-content-type-options: nosniff",
                "x-frame-options: SAMEORIGIN",
            ]
        );
    }

    #[test]
    fn hsts_only_on_https() {
        let p = plugin(
            r#"{"hsts_max_age": 600, "hsts_include_subdomains": true, "hsts_preload": true}"#,
        );
        let got = after(&p, response(200).over_https());
        assert!(
            got.contains(
                &"strict-transport-security: max-age=600; includeSubDomains; preload".into()
            ),
            "{got:?}"
        );
        let got = after(&p, response(200));
        assert!(
            !got.iter().any(|h| h.starts_with("strict-transport")),
            "{got:?}"
        );
    }

    #[test]
    fn the_servers_headers_win_unless_override() {
        let r = || response(200).with_header("x-frame-options", "DENY");
        let got = after(&plugin("{}"), r());
        assert!(got.contains(&"x-frame-options: DENY".into()), "{got:?}");
        let got = after(&plugin(r#"{"override": true}"#), r());
        assert!(
            got.contains(&"x-frame-options: SAMEORIGIN".into()),
            "{got:?}"
        );
        assert_eq!(got.iter().filter(|h| h.starts_with("x-frame")).count(), 1);
    }

    #[test]
    fn optional_policies_and_removals() {
        let p = plugin(
            r#"{"content_security_policy": "default-src 'self'", "permissions_policy": "camera=()",
                "frame_options": "", "remove": []}"#,
        );
        let got = after(&p, response(200).with_header("server", "x"));
        assert!(got.contains(&"content-security-policy: default-src 'self'".into()));
        assert!(got.contains(&"permissions-policy: camera=()".into()));
        assert!(got.contains(&"server: x".into()));
        assert!(!got.iter().any(|h| h.starts_with("x-frame")));
    }

    #[test]
    fn https_redirect() {
        let p = plugin(r#"{"https_redirect": true}"#);
        let RequestAction::Respond(r) =
            p.on_request(request("GET", "/a/b?c=1").with_host("example.com:8080"))
        else {
            panic!("no redirect")
        };
        assert_eq!(r.status, 301);
        let loc = r.headers.iter().find(|h| h.name == "location").unwrap();
        assert_eq!(loc.value, "https://example.com/a/b?c=1");
        let over_tls = p.on_request(request("GET", "/").with_host("example.com").over_https());
        assert!(matches!(over_tls, RequestAction::Proceed(_)));
        let off = plugin("{}").on_request(request("GET", "/").with_host("example.com"));
        assert!(matches!(off, RequestAction::Proceed(_)));
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |c: &str| weir_sdk::parse_config::<SecurityHeaders>(c).err().unwrap();
        assert!(
            e(r#"{"content_security_policy": "a\r\nb"}"#).starts_with("content_security_policy:")
        );
        assert!(e(r#"{"remove": ["ok", "bad name"]}"#).starts_with("remove[1]:"));
        assert!(e(r#"{"hsts": 1}"#).contains("hsts"));
    }
}
