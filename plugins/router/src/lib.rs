//! `router`: HAProxy-style ACL routing. Rules are tried in order and the first whose
//! conditions all hold decides: a backend (optionally with a new path), a denial, a
//! redirect, or a new path alone. A request no rule matches goes on unchanged, to the
//! frontend's default backend.
//!
//! On a tcp frontend the same rules route connections (`on-connect`): a rule whose
//! conditions are all about the connection (`sni`, `alpn`, `src` and their `_not`, or none)
//! sends it to its `backend` or, with `deny`, closes it; rules with HTTP conditions pass
//! connections by, and rules with `sni` conditions pass HTTP requests by.
//!
//! ```toml
//! [plugin.routes]
//! stock = "router"
//! config = { rules = [
//!   { path_beg = ["/static", "/images"], backend = "static" },
//!   { path_beg = "/admin", src_not = ["10.0.0.0/8"], deny = 403 },
//! ] }
//! ```

use std::net::IpAddr;

use regex_lite::Regex;
use serde::Deserialize;
use weir_sdk::util::{Cidr, OneOrMany};
use weir_sdk::{
    ConnectAction, ConnectRoute, Connection, Hooks, LocalResponse, Plugin, Proceed, Request,
    RequestAction, RequestFields, export_plugin, host,
};

/// `header` and `query` conditions: a name alone (present), or a name and how its value
/// must look.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum FieldMatchFile {
    Present(String),
    Value {
        name: String,
        #[serde(default)]
        exact: Option<String>,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        contains: Option<String>,
    },
}

#[derive(Deserialize)]
pub struct RedirectFile {
    pub location: String,
    #[serde(default)]
    pub code: Option<u16>,
}

type Many<T> = Option<OneOrMany<T>>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    path: Many<String>,
    path_not: Many<String>,
    path_beg: Many<String>,
    path_beg_not: Many<String>,
    path_end: Many<String>,
    path_end_not: Many<String>,
    path_reg: Many<String>,
    path_reg_not: Many<String>,
    host: Many<String>,
    host_not: Many<String>,
    method: Many<String>,
    method_not: Many<String>,
    header: Many<FieldMatchFile>,
    header_not: Many<FieldMatchFile>,
    query: Many<FieldMatchFile>,
    query_not: Many<FieldMatchFile>,
    src: Many<Cidr>,
    src_not: Many<Cidr>,
    sni: Many<String>,
    sni_not: Many<String>,
    alpn: Many<String>,
    alpn_not: Many<String>,
    backend: Option<String>,
    deny: Option<u16>,
    redirect: Option<RedirectFile>,
    set_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<RuleFile>,
}

/// How a header or query value must look.
enum ValueTest {
    Present,
    Exact(String),
    Prefix(String),
    /// A searcher for the text, made once at configure (`str::contains` makes one per
    /// call: most of the cost of a short value).
    Contains(Box<memchr::memmem::Finder<'static>>),
}

struct FieldMatch {
    name: String,
    test: ValueTest,
}

impl FieldMatch {
    fn value_ok(&self, value: &str) -> bool {
        match &self.test {
            ValueTest::Present => true,
            ValueTest::Exact(v) => value == v,
            ValueTest::Prefix(v) => value.starts_with(v.as_str()),
            ValueTest::Contains(v) => v.find(value.as_bytes()).is_some(),
        }
    }
}

/// A path regex, and the text any path it matches starts with (from an anchored
/// pattern's leading literal characters): most paths are ruled out by that comparison,
/// at a fraction of the cost of running the regex.
struct PathRegex {
    prefix: String,
    regex: Regex,
}

impl PathRegex {
    fn new(pattern: &str) -> Result<Self, regex_lite::Error> {
        Ok(PathRegex {
            prefix: anchored_prefix(pattern),
            regex: Regex::new(pattern)?,
        })
    }

    fn is_match(&self, path: &str) -> bool {
        path.starts_with(self.prefix.as_str()) && self.regex.is_match(path)
    }
}

/// The literal text an anchored pattern requires at the start (`"/v"` for
/// `^/v[0-9]+/`), or "" when it is not anchored or could match otherwise (an alternation
/// anywhere, a flag group). Conservative: it stops at the first character that is not
/// plainly literal, and drops a literal that a quantifier makes optional.
fn anchored_prefix(pattern: &str) -> String {
    let Some(rest) = pattern.strip_prefix('^') else {
        return String::new();
    };
    if pattern.contains('|') {
        return String::new();
    }
    let literal = |c: char| c.is_ascii_alphanumeric() || "/-_~%=&,:;@!'\"<># ".contains(c);
    let mut prefix: String = rest.chars().take_while(|&c| literal(c)).collect();
    if matches!(rest[prefix.len()..].chars().next(), Some('*' | '?' | '{')) {
        prefix.pop();
    }
    prefix
}

/// A host pattern: exact, or `*.example.com` for any subdomain.
enum HostPattern {
    Exact(String),
    Suffix(String),
}

/// One kind of condition; a list of values matches when any does.
enum Test {
    Path(Vec<String>),
    PathBeg(Vec<String>),
    PathEnd(Vec<String>),
    PathReg(Vec<PathRegex>),
    Host(Vec<HostPattern>),
    Method(Vec<String>),
    Header(Vec<FieldMatch>),
    Query(Vec<FieldMatch>),
    Src(Vec<Cidr>),
    /// The TLS server name of a connection (exact, or `*.suffix`).
    Sni(Vec<HostPattern>),
    /// A protocol the connection's ClientHello offers (ALPN).
    Alpn(Vec<String>),
}

struct Condition {
    test: Test,
    negate: bool,
}

enum Action {
    Route {
        backend: Option<String>,
        set_path: Option<String>,
    },
    Deny(u16),
    Redirect {
        location: String,
        code: u16,
    },
}

struct Rule {
    conditions: Vec<Condition>,
    action: Action,
    /// Its conditions can be told of a request (no `sni`), and of a connection (only
    /// `sni` and `src`), and its action applies to a connection (no redirect, no new path).
    for_requests: bool,
    for_connections: bool,
}

pub struct Router {
    rules: Vec<Rule>,
    /// The headers any rule looks at.
    headers: Vec<String>,
    /// The request fields any rule looks at.
    fields: RequestFields,
}

/// What a condition sees of a request, computed once per request.
struct Subject<'a> {
    request: &'a Request,
    /// The host without a port, lower-case.
    host: Option<String>,
    ip: Option<IpAddr>,
}

impl Test {
    /// The request field the test reads (none for headers, which are declared apart).
    fn field(&self) -> RequestFields {
        match self {
            Test::Path(_) | Test::PathBeg(_) | Test::PathEnd(_) | Test::PathReg(_) => {
                RequestFields::PATH
            }
            Test::Host(_) => RequestFields::HOST,
            Test::Method(_) => RequestFields::METHOD,
            Test::Header(_) => RequestFields::empty(),
            Test::Query(_) => RequestFields::QUERY,
            Test::Src(_) => RequestFields::CLIENT_IP,
            Test::Sni(_) | Test::Alpn(_) => RequestFields::empty(),
        }
    }

    /// Whether it can be told of a connection (on a tcp frontend), and of a request.
    fn on_connections(&self) -> bool {
        matches!(self, Test::Src(_) | Test::Sni(_) | Test::Alpn(_))
    }

    fn on_requests(&self) -> bool {
        !matches!(self, Test::Sni(_) | Test::Alpn(_))
    }

    fn holds_for_connection(&self, c: &Connection, sni: Option<&str>, ip: Option<IpAddr>) -> bool {
        match self {
            Test::Src(v) => ip.is_some_and(|ip| v.iter().any(|b| b.contains(ip))),
            Test::Sni(v) => sni.is_some_and(|name| host_matches(v, name)),
            Test::Alpn(v) => c.alpn.iter().any(|offered| v.contains(offered)),
            _ => false,
        }
    }

    fn holds(&self, s: &Subject<'_>) -> bool {
        let path = s.request.path.as_str();
        match self {
            Test::Path(v) => v.iter().any(|p| path == p),
            Test::PathBeg(v) => v.iter().any(|p| path.starts_with(p.as_str())),
            Test::PathEnd(v) => v.iter().any(|p| path.ends_with(p.as_str())),
            Test::PathReg(v) => v.iter().any(|r| r.is_match(path)),
            Test::Host(v) => s.host.as_deref().is_some_and(|h| host_matches(v, h)),
            Test::Method(v) => v.contains(&s.request.method),
            Test::Header(v) => v.iter().any(|m| {
                s.request
                    .headers_named(&m.name)
                    .any(|value| m.value_ok(value))
            }),
            Test::Query(v) => v.iter().any(|m| {
                s.request
                    .query_param(&m.name)
                    .is_some_and(|value| m.value_ok(value))
            }),
            Test::Src(v) => s.ip.is_some_and(|ip| v.iter().any(|b| b.contains(ip))),
            Test::Sni(_) | Test::Alpn(_) => false,
        }
    }
}

/// Whether a (lower-case) host name is one of `patterns`.
fn host_matches(patterns: &[HostPattern], h: &str) -> bool {
    patterns.iter().any(|p| match p {
        HostPattern::Exact(e) => h == e,
        HostPattern::Suffix(suffix) => h.len() > suffix.len() && h.ends_with(suffix.as_str()),
    })
}

/// `header` (names compared case-insensitively, so kept lower-case) and `query`
/// (names compared as written) conditions.
fn field_matches(
    list: OneOrMany<FieldMatchFile>,
    key: &str,
    header: bool,
) -> Result<Vec<FieldMatch>, String> {
    list.0
        .into_iter()
        .map(|m| match m {
            FieldMatchFile::Present(name) => Ok(FieldMatch {
                name: if header {
                    name.to_ascii_lowercase()
                } else {
                    name
                },
                test: ValueTest::Present,
            }),
            FieldMatchFile::Value {
                name,
                exact,
                prefix,
                contains,
            } => {
                let test = match (exact, prefix, contains) {
                    (None, None, None) => ValueTest::Present,
                    (Some(v), None, None) => ValueTest::Exact(v),
                    (None, Some(v), None) => ValueTest::Prefix(v),
                    (None, None, Some(v)) => {
                        ValueTest::Contains(Box::new(memchr::memmem::Finder::new(&v).into_owned()))
                    }
                    _ => {
                        return Err(format!(
                            "{key}: give one of `exact`, `prefix` or `contains`"
                        ));
                    }
                };
                let name = if header {
                    name.to_ascii_lowercase()
                } else {
                    name
                };
                Ok(FieldMatch { name, test })
            }
        })
        .collect()
}

fn host_patterns(list: OneOrMany<String>, key: &str) -> Result<Vec<HostPattern>, String> {
    list.0
        .into_iter()
        .map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some("") => Err(format!("{key}: \"*.\" needs a domain")),
                Some(rest) => Ok(HostPattern::Suffix(format!(".{rest}"))),
                None if h.contains('*') => Err(format!(
                    "{key}: \"{h}\": a wildcard is allowed only as a leading \"*.\""
                )),
                None => Ok(HostPattern::Exact(h)),
            }
        })
        .collect()
}

fn compile_rule(rule: RuleFile, at: &str) -> Result<Rule, String> {
    let mut conditions = Vec::new();
    let mut add = |test: Test, negate: bool| conditions.push(Condition { test, negate });
    let key = |name: &str| format!("{at}.{name}");
    let paths = |v: Many<String>, name: &str| -> Result<Option<Vec<String>>, String> {
        v.map(|v| {
            v.0.into_iter()
                .map(|p| {
                    if p.is_empty() {
                        Err(format!("{}: must not be empty", key(name)))
                    } else {
                        Ok(p)
                    }
                })
                .collect()
        })
        .transpose()
    };
    for (v, negate, name) in [
        (rule.path, false, "path"),
        (rule.path_not, true, "path_not"),
    ] {
        if let Some(v) = paths(v, name)? {
            add(Test::Path(v), negate);
        }
    }
    for (v, negate, name) in [
        (rule.path_beg, false, "path_beg"),
        (rule.path_beg_not, true, "path_beg_not"),
    ] {
        if let Some(v) = paths(v, name)? {
            add(Test::PathBeg(v), negate);
        }
    }
    for (v, negate, name) in [
        (rule.path_end, false, "path_end"),
        (rule.path_end_not, true, "path_end_not"),
    ] {
        if let Some(v) = paths(v, name)? {
            add(Test::PathEnd(v), negate);
        }
    }
    for (v, negate, name) in [
        (rule.path_reg, false, "path_reg"),
        (rule.path_reg_not, true, "path_reg_not"),
    ] {
        if let Some(v) = v {
            let regexes =
                v.0.iter()
                    .map(|r| PathRegex::new(r).map_err(|e| format!("{}: {e}", key(name))))
                    .collect::<Result<_, _>>()?;
            add(Test::PathReg(regexes), negate);
        }
    }
    for (v, negate, name) in [
        (rule.host, false, "host"),
        (rule.host_not, true, "host_not"),
    ] {
        if let Some(v) = v {
            add(Test::Host(host_patterns(v, &key(name))?), negate);
        }
    }
    for (v, negate) in [(rule.method, false), (rule.method_not, true)] {
        if let Some(v) = v {
            add(
                Test::Method(v.0.iter().map(|m| m.to_ascii_uppercase()).collect()),
                negate,
            );
        }
    }
    for (v, negate, name) in [
        (rule.header, false, "header"),
        (rule.header_not, true, "header_not"),
    ] {
        if let Some(v) = v {
            add(Test::Header(field_matches(v, &key(name), true)?), negate);
        }
    }
    for (v, negate, name) in [
        (rule.query, false, "query"),
        (rule.query_not, true, "query_not"),
    ] {
        if let Some(v) = v {
            add(Test::Query(field_matches(v, &key(name), false)?), negate);
        }
    }
    for (v, negate) in [(rule.src, false), (rule.src_not, true)] {
        if let Some(v) = v {
            add(Test::Src(v.0), negate);
        }
    }
    for (v, negate, name) in [(rule.sni, false, "sni"), (rule.sni_not, true, "sni_not")] {
        if let Some(v) = v {
            add(Test::Sni(host_patterns(v, &key(name))?), negate);
        }
    }
    for (v, negate) in [(rule.alpn, false), (rule.alpn_not, true)] {
        if let Some(v) = v {
            add(Test::Alpn(v.0), negate);
        }
    }

    if let Some(backend) = &rule.backend
        && host::servers(backend).is_empty()
    {
        return Err(format!("{}: no backend \"{backend}\"", key("backend")));
    }
    if let Some(p) = &rule.set_path
        && !p.starts_with('/')
    {
        return Err(format!("{}: must start with \"/\"", key("set_path")));
    }
    let routes = rule.backend.is_some() || rule.set_path.is_some();
    let action = match (rule.deny, rule.redirect) {
        (Some(_), _) if routes => {
            return Err(format!(
                "{}: a rule that denies cannot also route",
                key("deny")
            ));
        }
        (_, Some(_)) if routes => {
            return Err(format!(
                "{}: a rule that redirects cannot also route",
                key("redirect")
            ));
        }
        (Some(_), Some(_)) => {
            return Err(format!("{}: give `deny` or `redirect`, not both", at));
        }
        (Some(status), None) => {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "{}: must be a 4xx or 5xx status, got {status}",
                    key("deny")
                ));
            }
            Action::Deny(status)
        }
        (None, Some(r)) => {
            let code = r.code.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&code) {
                return Err(format!(
                    "{}: must be 301, 302, 303, 307 or 308, got {code}",
                    key("redirect.code")
                ));
            }
            if r.location.is_empty() || r.location.contains(['\r', '\n', '\0']) {
                return Err(format!(
                    "{}: must be a URL or a path",
                    key("redirect.location")
                ));
            }
            Action::Redirect {
                location: r.location,
                code,
            }
        }
        (None, None) if routes => Action::Route {
            backend: rule.backend,
            set_path: rule.set_path,
        },
        (None, None) => {
            return Err(format!(
                "{at}: needs an action: `backend`, `deny`, `redirect` or `set_path`"
            ));
        }
    };
    let for_requests = conditions.iter().all(|c| c.test.on_requests());
    let for_connections = conditions.iter().all(|c| c.test.on_connections())
        && matches!(
            action,
            Action::Deny(_) | Action::Route { set_path: None, .. }
        );
    Ok(Rule {
        conditions,
        action,
        for_requests,
        for_connections,
    })
}

impl Plugin for Router {
    type Config = Config;
    const NAME: &'static str = "router";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_REQUEST;

    fn configure(config: Config) -> Result<Self, String> {
        let rules = config
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| compile_rule(r, &format!("rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut headers: Vec<String> = rules
            .iter()
            .flat_map(|r| &r.conditions)
            .filter_map(|c| match &c.test {
                Test::Header(matches) => Some(matches.iter().map(|m| m.name.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        headers.sort();
        headers.dedup();
        let fields = rules
            .iter()
            .flat_map(|r| &r.conditions)
            .map(|c| c.test.field())
            .fold(RequestFields::empty(), |all, f| all | f);
        Ok(Router {
            rules,
            headers,
            fields,
        })
    }

    fn request_headers(&self) -> Option<Vec<String>> {
        Some(self.headers.clone())
    }

    fn request_fields(&self) -> Option<RequestFields> {
        Some(self.fields)
    }

    fn on_connect(&self, connection: Connection) -> ConnectAction {
        let sni = connection
            .sni
            .as_deref()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let ip = connection.client_ip.parse().ok();
        let found = self.rules.iter().enumerate().find(|(_, r)| {
            r.for_connections
                && r.conditions.iter().all(|t| {
                    t.test.holds_for_connection(&connection, sni.as_deref(), ip) != t.negate
                })
        });
        match found {
            None => ConnectAction::Unchanged,
            Some((
                _,
                Rule {
                    action: Action::Route { backend, .. },
                    ..
                },
            )) => ConnectAction::Proceed(ConnectRoute {
                backend: backend.clone(),
                server: None,
            }),
            Some((i, _)) => ConnectAction::Close(format!("denied by rule {i}")),
        }
    }

    fn on_request(&self, request: Request) -> RequestAction {
        // The host and the address are prepared only when a rule reads them: most rule
        // sets test the path alone, and parsing an address costs more than the match
        // (even the empty one weir sends when no rule reads it: about 600 instructions).
        let reads = |field| self.fields.contains(field);
        let subject = Subject {
            host: request
                .host
                .as_deref()
                .filter(|_| reads(RequestFields::HOST))
                .map(|h| {
                    let h = match h.rsplit_once(':') {
                        Some((name, port))
                            if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            name
                        }
                        _ => h,
                    };
                    h.trim_end_matches('.').to_ascii_lowercase()
                }),
            ip: reads(RequestFields::CLIENT_IP)
                .then(|| request.client_ip.parse().ok())
                .flatten(),
            request: &request,
        };
        let Some(rule) = self.rules.iter().find(|r| {
            r.for_requests
                && r.conditions
                    .iter()
                    .all(|c| c.test.holds(&subject) != c.negate)
        }) else {
            return RequestAction::Unchanged;
        };
        match &rule.action {
            Action::Route { backend, set_path } => {
                let mut p = Proceed::unchanged();
                p.backend = backend.clone();
                p.set_path = set_path.clone();
                RequestAction::Proceed(p)
            }
            Action::Deny(status) => RequestAction::Respond(LocalResponse::text(
                *status,
                &format!("{}\n", reason(*status)),
            )),
            Action::Redirect { location, code } => RequestAction::Respond(
                LocalResponse::text(*code, "").with_header("location", location),
            ),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        429 => "Too Many Requests",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        s if s < 500 => "Request Denied",
        _ => "Unavailable",
    }
}

export_plugin!(Router);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{FakeHost, request};
    use weir_sdk::{ServerInfo, ServerState};

    fn host() -> FakeHost {
        let host = FakeHost::install();
        for b in ["app", "static", "api", "eu"] {
            host.set_servers(
                b,
                vec![ServerInfo {
                    name: "s1".into(),
                    state: ServerState::Up,
                    weight: 1,
                    in_flight: 0,
                    backup: false,
                }],
            );
        }
        host
    }

    fn router(rules: &str) -> Router {
        weir_sdk::parse_config::<Router>(&format!("{{\"rules\": {rules}}}")).unwrap()
    }

    fn error(rules: &str) -> String {
        weir_sdk::parse_config::<Router>(&format!("{{\"rules\": {rules}}}"))
            .err()
            .unwrap()
    }

    /// "backend:<name>", "path:<p>", "deny:<status>", "redirect:<code> <location>" or "-".
    fn outcome(r: &Router, req: Request) -> String {
        match r.on_request(req) {
            RequestAction::Proceed(p) => match (p.backend, p.set_path) {
                (None, None) => "-".into(),
                (Some(b), None) => format!("backend:{b}"),
                (None, Some(p)) => format!("path:{p}"),
                (Some(b), Some(p)) => format!("backend:{b} path:{p}"),
            },
            RequestAction::Unchanged => "-".into(),
            RequestAction::Respond(l) if l.status >= 400 => format!("deny:{}", l.status),
            RequestAction::Respond(l) => {
                let loc = l.headers.iter().find(|h| h.name == "location").unwrap();
                format!("redirect:{} {}", l.status, loc.value)
            }
        }
    }

    #[test]
    fn first_match_wins_and_lists_mean_any() {
        let _h = host();
        let r = router(
            r#"[{"path_beg": ["/static", "/images"], "backend": "static"},
                {"path_beg": "/", "backend": "api"},
                {"path_beg": "/static/x", "backend": "eu"}]"#,
        );
        assert_eq!(
            outcome(&r, request("GET", "/images/a.png")),
            "backend:static"
        );
        assert_eq!(outcome(&r, request("GET", "/static/x/1")), "backend:static");
        assert_eq!(outcome(&r, request("GET", "/other")), "backend:api");
    }

    #[test]
    fn all_conditions_must_hold_and_negation() {
        let _h = host();
        let r = router(r#"[{"path_beg": "/admin", "src_not": ["10.0.0.0/8"], "deny": 403}]"#);
        assert_eq!(
            outcome(&r, request("GET", "/admin").from_ip("8.8.8.8")),
            "deny:403"
        );
        assert_eq!(
            outcome(&r, request("GET", "/admin").from_ip("10.1.2.3")),
            "-"
        );
        assert_eq!(
            outcome(&r, request("GET", "/public").from_ip("8.8.8.8")),
            "-"
        );
    }

    #[test]
    fn an_anchored_regex_is_checked_against_its_literal_prefix_first() {
        assert_eq!(anchored_prefix("^/v[0-9]+/internal/"), "/v");
        assert_eq!(anchored_prefix("^/api/users$"), "/api/users");
        assert_eq!(anchored_prefix("/api"), "");
        assert_eq!(anchored_prefix("^(?i)/api"), "");
        assert_eq!(anchored_prefix("^/a|/b"), "");
        assert_eq!(anchored_prefix("^/ab?c"), "/a");
        assert_eq!(anchored_prefix("^/ab*"), "/a");
        assert_eq!(anchored_prefix("^/ab{0,2}"), "/a");
        assert_eq!(anchored_prefix("^/ab+"), "/ab");
        assert_eq!(anchored_prefix("^/a\\.b"), "/a");
        let _h = host();
        let r = router(
            r#"[{"path_reg": "^/ab?c/", "deny": 403},
                {"path_reg": "^/a|^/b", "deny": 404}]"#,
        );
        assert_eq!(outcome(&r, request("GET", "/ac/x")), "deny:403");
        assert_eq!(outcome(&r, request("GET", "/abc/x")), "deny:403");
        assert_eq!(outcome(&r, request("GET", "/b/x")), "deny:404");
        assert_eq!(outcome(&r, request("GET", "/c/x")), "-");
    }

    #[test]
    fn paths_exact_suffix_and_regex() {
        let _h = host();
        let r = router(
            r#"[{"path": "/health", "deny": 404},
                {"path_end": [".php", ".asp"], "deny": 403},
                {"path_reg": "^/v[0-9]+/", "backend": "api"},
                {"path_reg_not": "^/keep", "path_beg": "/k", "set_path": "/moved"}]"#,
        );
        assert_eq!(outcome(&r, request("GET", "/health")), "deny:404");
        assert_eq!(outcome(&r, request("GET", "/health/x")), "-");
        assert_eq!(outcome(&r, request("GET", "/x/index.php")), "deny:403");
        assert_eq!(outcome(&r, request("GET", "/v2/users")), "backend:api");
        assert_eq!(outcome(&r, request("GET", "/vx/users")), "-");
        assert_eq!(outcome(&r, request("GET", "/kite")), "path:/moved");
        assert_eq!(outcome(&r, request("GET", "/keep")), "-");
    }

    #[test]
    fn hosts_exact_and_wildcard() {
        let _h = host();
        let r = router(
            r#"[{"host": "*.eu.example.com", "backend": "eu"},
                {"host": ["api.example.com"], "backend": "api"}]"#,
        );
        let at = |h: &str| outcome(&r, request("GET", "/").with_host(h));
        assert_eq!(at("www.eu.example.com"), "backend:eu");
        assert_eq!(at("WWW.EU.Example.com:8080"), "backend:eu");
        assert_eq!(at("eu.example.com"), "-");
        assert_eq!(at("api.example.com"), "backend:api");
        assert_eq!(at("api.example.com."), "backend:api");
        assert_eq!(at("xapi.example.com"), "-");
        assert_eq!(outcome(&r, request("GET", "/")), "-");
    }

    #[test]
    fn methods_headers_and_query() {
        let _h = host();
        let r = router(
            r#"[{"method": ["post", "PUT"], "path_beg": "/ro", "deny": 405},
                {"header": {"name": "X-Env", "exact": "beta"}, "backend": "eu"},
                {"header": [{"name": "user-agent", "contains": "bot"},
                            {"name": "x-bot", "prefix": "yes"}], "deny": 403},
                {"header": "x-debug", "header_not": {"name": "x-debug", "exact": "0"}, "backend": "api"},
                {"query": {"name": "v", "exact": "2"}, "backend": "static"},
                {"query": "preview", "set_path": "/preview"}]"#,
        );
        assert_eq!(outcome(&r, request("POST", "/ro/1")), "deny:405");
        assert_eq!(outcome(&r, request("GET", "/ro/1")), "-");
        assert_eq!(
            outcome(&r, request("GET", "/").with_header("x-env", "beta")),
            "backend:eu"
        );
        assert_eq!(
            outcome(&r, request("GET", "/").with_header("x-env", "beta2")),
            "-"
        );
        assert_eq!(
            outcome(
                &r,
                request("GET", "/").with_header("user-agent", "a googlebot")
            ),
            "deny:403"
        );
        assert_eq!(
            outcome(
                &r,
                request("GET", "/").with_header("user-agent", "Mozilla/5.0 (bo t)")
            ),
            "-"
        );
        assert_eq!(
            outcome(&r, request("GET", "/").with_header("x-bot", "yes please")),
            "deny:403"
        );
        assert_eq!(
            outcome(&r, request("GET", "/").with_header("x-debug", "1")),
            "backend:api"
        );
        assert_eq!(
            outcome(&r, request("GET", "/").with_header("x-debug", "0")),
            "-"
        );
        assert_eq!(outcome(&r, request("GET", "/?a=1&v=2")), "backend:static");
        assert_eq!(outcome(&r, request("GET", "/?v=20")), "-");
        assert_eq!(outcome(&r, request("GET", "/p?preview")), "path:/preview");
    }

    #[test]
    fn redirects_and_route_with_new_path() {
        let _h = host();
        let r = router(
            r#"[{"path": "/old", "redirect": {"location": "https://example.com/new", "code": 301}},
                {"path": "/tmp", "redirect": {"location": "/elsewhere"}},
                {"path_beg": "/api/", "backend": "api", "set_path": "/"}]"#,
        );
        assert_eq!(
            outcome(&r, request("GET", "/old")),
            "redirect:301 https://example.com/new"
        );
        assert_eq!(
            outcome(&r, request("GET", "/tmp")),
            "redirect:302 /elsewhere"
        );
        assert_eq!(outcome(&r, request("GET", "/api/x")), "backend:api path:/");
    }

    #[test]
    fn only_the_headers_and_fields_rules_read_are_asked_for() {
        let _h = host();
        let r = router(
            r#"[{"header": [{"name": "X-B", "exact": "1"}, "x-a"], "deny": 403},
                {"header_not": "x-a", "path": "/", "backend": "api"},
                {"query": "x-q", "deny": 403}]"#,
        );
        assert_eq!(r.request_headers(), Some(vec!["x-a".into(), "x-b".into()]));
        assert_eq!(router("[]").request_headers(), Some(vec![]));
        assert_eq!(router("[]").request_fields(), Some(RequestFields::empty()));
        assert_eq!(
            r.request_fields(),
            Some(RequestFields::PATH | RequestFields::QUERY)
        );
    }

    #[test]
    fn query_names_are_case_sensitive_header_names_are_not() {
        let _h = host();
        let r =
            router(r#"[{"query": "Preview", "deny": 403}, {"header": "X-Preview", "deny": 404}]"#);
        assert_eq!(outcome(&r, request("GET", "/?Preview")), "deny:403");
        assert_eq!(outcome(&r, request("GET", "/?preview")), "-");
        assert_eq!(
            outcome(&r, request("GET", "/").with_header("x-preview", "1")),
            "deny:404"
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let _h = host();
        let e = error(r#"[{"path": "/"}, {"path": "/x", "backend": "nope"}]"#);
        assert!(
            e.contains("rules[0]") && e.contains("needs an action"),
            "{e}"
        );
        let e = error(r#"[{"path": "/x", "backend": "nope"}]"#);
        assert_eq!(e, "rules[0].backend: no backend \"nope\"");
        let e = error(r#"[{"path_reg": "(", "deny": 403}]"#);
        assert!(e.starts_with("rules[0].path_reg:"), "{e}");
        let e = error(r#"[{"src": "10.0.0.0/99", "deny": 403}]"#);
        assert!(e.starts_with("rules[0].src"), "{e}");
        let e = error(r#"[{"path": "/", "deny": 200}]"#);
        assert!(e.starts_with("rules[0].deny:"), "{e}");
        let e = error(r#"[{"path": "/", "redirect": {"location": "/x", "code": 200}}]"#);
        assert!(e.starts_with("rules[0].redirect.code:"), "{e}");
        let e = error(r#"[{"path": "/", "deny": 403, "backend": "app"}]"#);
        assert!(e.starts_with("rules[0].deny:"), "{e}");
        let e = error(r#"[{"paht": "/", "deny": 403}]"#);
        assert!(e.starts_with("rules[0]") && e.contains("paht"), "{e}");
        let e = error(r#"[{"header": {"name": "a", "exact": "1", "prefix": "2"}, "deny": 403}]"#);
        assert!(e.starts_with("rules[0].header:"), "{e}");
        let e = error(r#"[{"host": "a*.example.com", "deny": 403}]"#);
        assert!(e.starts_with("rules[0].host:"), "{e}");
    }

    fn connect_outcome(r: &Router, c: Connection) -> String {
        match r.on_connect(c) {
            ConnectAction::Unchanged => "-".into(),
            ConnectAction::Proceed(route) => format!("backend:{}", route.backend.unwrap()),
            ConnectAction::Close(why) => format!("close:{why}"),
        }
    }

    #[test]
    fn connections_are_routed_by_the_protocols_their_hello_offers() {
        let _h = host();
        let r = router(
            r#"[{"alpn": ["h2", "http/1.1"], "backend": "api"}, {"alpn": "redis", "deny": 403}]"#,
        );
        use weir_sdk::testing::connection;
        let offering = |p: &[&str]| {
            let mut c = connection();
            c.alpn = p.iter().map(|s| s.to_string()).collect();
            c
        };
        assert_eq!(connect_outcome(&r, offering(&["h2"])), "backend:api");
        assert_eq!(
            connect_outcome(&r, offering(&["x", "http/1.1"])),
            "backend:api"
        );
        assert_eq!(
            connect_outcome(&r, offering(&["redis"])),
            "close:denied by rule 1"
        );
        assert_eq!(connect_outcome(&r, offering(&[])), "-");
    }

    #[test]
    fn connections_are_routed_by_sni_and_source() {
        let _h = host();
        let r = router(
            r#"[{"path_beg": "/x", "backend": "static"},
                {"src": "10.0.0.0/8", "sni_not": "api.example.com", "deny": 403},
                {"sni": "api.example.com", "backend": "api"},
                {"sni": "*.eu.example.com", "backend": "eu"},
                {"host": "a.example.com", "backend": "static"}]"#,
        );
        use weir_sdk::testing::connection;
        assert_eq!(
            connect_outcome(&r, connection().with_sni("api.example.com")),
            "backend:api"
        );
        // Names compare without case, and a wildcard needs a label before its suffix.
        assert_eq!(
            connect_outcome(&r, connection().with_sni("API.Example.com")),
            "backend:api"
        );
        assert_eq!(
            connect_outcome(&r, connection().with_sni("db.eu.example.com")),
            "backend:eu"
        );
        assert_eq!(
            connect_outcome(&r, connection().with_sni("eu.example.com")),
            "-"
        );
        assert_eq!(connect_outcome(&r, connection()), "-");
        // Source blocks deny (close) unless the name is the exempted one.
        assert_eq!(
            connect_outcome(
                &r,
                connection()
                    .from_ip("10.1.2.3")
                    .with_sni("db.eu.example.com")
            ),
            "close:denied by rule 1"
        );
        assert_eq!(
            connect_outcome(
                &r,
                connection().from_ip("10.1.2.3").with_sni("api.example.com")
            ),
            "backend:api"
        );
        // The HTTP rules pass connections by, and the sni rules pass requests by.
        assert_eq!(outcome(&r, request("GET", "/x")), "backend:static");
        assert_eq!(
            outcome(&r, request("GET", "/").with_host("a.example.com")),
            "backend:static"
        );
        assert_eq!(outcome(&r, request("GET", "/")), "-");
        assert!(error(r#"[{"sni": "a.*.com", "backend": "api"}]"#).contains("rules[0].sni"));
    }
}
