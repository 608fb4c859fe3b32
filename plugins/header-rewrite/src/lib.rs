//! `header-rewrite`: ordered operations on request and response headers (and the request
//! path), HAProxy's `http-request` / `http-response` `set-header`, `add-header`,
//! `del-header`, `replace-header` and `set-path`. Values may use variables: `%[src]`,
//! `%[frontend]`, `%[backend]`, `%[server]`, `%[request_id]`, `%[method]`, `%[path]`,
//! `%[query]`, `%[host]`, `%[scheme]` and, in responses, `%[status]`.
//!
//! ```toml
//! [plugin.rewrite]
//! stock = "header-rewrite"
//! config = { request = [
//!   { set = "x-request-id", value = "%[request_id]" },
//!   { del = "x-internal-token" },
//! ], response = [
//!   { set = "x-served-by", value = "%[server]" },
//!   { replace = "set-cookie", regex = "; *domain=[^;]*", with = "" },
//! ] }
//! ```

use regex_lite::Regex;
use serde::Deserialize;
use std::borrow::Cow;
use weir_sdk::{
    Header, HeaderOp, Hooks, Plugin, Proceed, Request, RequestAction, RequestFields, Response,
    ResponseAction, ResponseFields, export_plugin,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpFile {
    set: Option<String>,
    add: Option<String>,
    del: Option<String>,
    replace: Option<String>,
    set_path: Option<String>,
    value: Option<String>,
    regex: Option<String>,
    with: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub request: Vec<OpFile>,
    pub response: Vec<OpFile>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Src,
    Frontend,
    Backend,
    Server,
    RequestId,
    Method,
    Path,
    Query,
    Host,
    Scheme,
    Status,
}

const VARS: [(&str, Var); 11] = [
    ("src", Var::Src),
    ("frontend", Var::Frontend),
    ("backend", Var::Backend),
    ("server", Var::Server),
    ("request_id", Var::RequestId),
    ("method", Var::Method),
    ("path", Var::Path),
    ("query", Var::Query),
    ("host", Var::Host),
    ("scheme", Var::Scheme),
    ("status", Var::Status),
];

impl Var {
    /// The request field the variable reads, if any.
    fn field(self) -> RequestFields {
        match self {
            Var::Src => RequestFields::CLIENT_IP,
            Var::Frontend => RequestFields::FRONTEND,
            Var::Backend => RequestFields::BACKEND,
            Var::Method => RequestFields::METHOD,
            Var::Path => RequestFields::PATH,
            Var::Query => RequestFields::QUERY,
            Var::Host => RequestFields::HOST,
            Var::Scheme => RequestFields::SCHEME,
            Var::Server | Var::RequestId | Var::Status => RequestFields::empty(),
        }
    }

    /// The response field the variable reads, if any.
    fn response_field(self) -> ResponseFields {
        match self {
            Var::Src => ResponseFields::CLIENT_IP,
            Var::Frontend => ResponseFields::FRONTEND,
            Var::Backend => ResponseFields::BACKEND,
            Var::Server => ResponseFields::SERVER,
            Var::Method => ResponseFields::METHOD,
            Var::Path => ResponseFields::PATH,
            Var::Scheme => ResponseFields::SCHEME,
            Var::Query | Var::Host | Var::RequestId | Var::Status => ResponseFields::empty(),
        }
    }
}

/// The variables the templates of `ops` name.
fn vars_of(ops: &[Op]) -> impl Iterator<Item = Var> + '_ {
    let templates = ops.iter().filter_map(|op| match op {
        Op::Set(_, t) | Op::Add(_, t) | Op::SetPath(t) => Some(t),
        Op::Del(_) | Op::Replace { .. } => None,
    });
    templates.flat_map(|t| &t.0).filter_map(|part| match part {
        Part::Var(v) => Some(*v),
        Part::Text(_) => None,
    })
}

enum Part {
    Text(String),
    Var(Var),
}

/// A value with variables, parsed once.
struct Template(Vec<Part>);

impl Template {
    fn parse(text: &str, field: &str, response: bool) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("%[") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find(']')
                .ok_or_else(|| format!("{field}: \"%[\" without a closing \"]\""))?;
            let name = &after[..end];
            let var = VARS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let known: Vec<_> = VARS.iter().map(|(n, _)| *n).collect();
                    format!(
                        "{field}: unknown variable %[{name}] (known: {})",
                        known.join(", ")
                    )
                })?;
            if var == Var::Status && !response {
                return Err(format!("{field}: %[status] exists only in responses"));
            }
            parts.push(Part::Var(var));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if text.contains(['\r', '\n', '\0']) {
            return Err(format!("{field}: must not contain CR, LF or NUL"));
        }
        Ok(Template(parts))
    }

    fn render<'a>(&self, vars: &dyn Fn(Var) -> Cow<'a, str>) -> String {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => out.push_str(&vars(*v)),
            }
        }
        out
    }
}

enum Op {
    Set(String, Template),
    Add(String, Template),
    Del(String),
    Replace {
        name: String,
        regex: Regex,
        with: String,
    },
    SetPath(Template),
}

pub struct HeaderRewrite {
    request: Vec<Op>,
    response: Vec<Op>,
}

fn header_name(field: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("{field}: \"{name}\" is not a header name"));
    }
    Ok(name.to_ascii_lowercase())
}

fn compile(op: OpFile, at: &str, response: bool) -> Result<Op, String> {
    let key = |k: &str| format!("{at}.{k}");
    let named = [
        op.set.is_some(),
        op.add.is_some(),
        op.del.is_some(),
        op.replace.is_some(),
        op.set_path.is_some(),
    ];
    if named.iter().filter(|n| **n).count() != 1 {
        return Err(format!(
            "{at}: give exactly one of `set`, `add`, `del`, `replace` or `set_path`"
        ));
    }
    let value = |what: &str| -> Result<Template, String> {
        let v = op
            .value
            .as_deref()
            .ok_or_else(|| format!("{at}: `{what}` needs a `value`"))?;
        Template::parse(v, &key("value"), response)
    };
    let compiled = if let Some(name) = &op.set {
        Op::Set(header_name(&key("set"), name)?, value("set")?)
    } else if let Some(name) = &op.add {
        Op::Add(header_name(&key("add"), name)?, value("add")?)
    } else if let Some(name) = &op.del {
        Op::Del(header_name(&key("del"), name)?)
    } else if let Some(name) = &op.replace {
        let regex = op
            .regex
            .as_deref()
            .ok_or_else(|| format!("{at}: `replace` needs a `regex`"))?;
        let regex = Regex::new(regex).map_err(|e| format!("{}: {e}", key("regex")))?;
        let with = op.with.clone().unwrap_or_default();
        if with.contains(['\r', '\n', '\0']) {
            return Err(format!("{}: must not contain CR, LF or NUL", key("with")));
        }
        Op::Replace {
            name: header_name(&key("replace"), name)?,
            regex,
            with,
        }
    } else {
        if response {
            return Err(format!("{}: only requests have a path", key("set_path")));
        }
        let path = op.set_path.as_deref().unwrap_or_default();
        if !path.starts_with('/') && !path.starts_with("%[") {
            return Err(format!("{}: must start with \"/\"", key("set_path")));
        }
        Op::SetPath(Template::parse(path, &key("set_path"), false)?)
    };
    let extra = match compiled {
        Op::Set(..) | Op::Add(..) => op.regex.is_some() || op.with.is_some(),
        Op::Del(_) | Op::SetPath(_) => {
            op.value.is_some() || op.regex.is_some() || op.with.is_some()
        }
        Op::Replace { .. } => op.value.is_some(),
    };
    if extra {
        return Err(format!("{at}: a key that this operation does not use"));
    }
    Ok(compiled)
}

/// Runs `ops` over a copy of `headers`, returning the edits for weir and the new path.
fn run<'a>(
    ops: &[Op],
    headers: &mut Vec<Header>,
    vars: &dyn Fn(Var) -> Cow<'a, str>,
) -> (Vec<HeaderOp>, Option<String>) {
    let mut edits = Vec::with_capacity(ops.len());
    let mut path = None;
    // Only a `replace` reads the headers: without one, the edits need not be mirrored
    // into them (which would copy every header set).
    let mirror = ops.iter().any(|op| matches!(op, Op::Replace { .. }));
    for op in ops {
        match op {
            Op::Set(name, t) => {
                let h = Header {
                    name: name.clone(),
                    value: t.render(vars),
                };
                if mirror {
                    headers.retain(|x| x.name != *name);
                    headers.push(h.clone());
                }
                edits.push(HeaderOp::Set(h));
            }
            Op::Add(name, t) => {
                let h = Header {
                    name: name.clone(),
                    value: t.render(vars),
                };
                if mirror {
                    headers.push(h.clone());
                }
                edits.push(HeaderOp::Append(h));
            }
            Op::Del(name) => {
                if mirror {
                    headers.retain(|x| x.name != *name);
                }
                edits.push(HeaderOp::Remove(name.clone()));
            }
            Op::Replace { name, regex, with } => {
                let mut changed = false;
                let values: Vec<Header> = headers
                    .iter()
                    .filter(|x| x.name == *name)
                    .map(|x| {
                        let value = regex.replace_all(&x.value, with.as_str()).into_owned();
                        changed |= value != x.value;
                        Header {
                            name: name.clone(),
                            value,
                        }
                    })
                    .collect();
                if changed {
                    headers.retain(|x| x.name != *name);
                    edits.push(HeaderOp::Remove(name.clone()));
                    for h in values {
                        headers.push(h.clone());
                        edits.push(HeaderOp::Append(h));
                    }
                }
            }
            Op::SetPath(t) => path = Some(t.render(vars)),
        }
    }
    (edits, path)
}

/// The edits of `ops` when they are the same for every message of `frontend`: `set`,
/// `add` and `del` with values whose only variable is `%[frontend]` (none at all for an
/// empty list).
fn fixed(ops: &[Op], frontend: &str) -> Option<Vec<HeaderOp>> {
    let constant = ops.iter().all(|op| match op {
        Op::Set(_, t) | Op::Add(_, t) => t.0.iter().all(|p| match p {
            Part::Text(_) | Part::Var(Var::Frontend) => true,
            Part::Var(_) => false,
        }),
        Op::Del(_) => true,
        Op::Replace { .. } | Op::SetPath(_) => false,
    });
    constant.then(|| run(ops, &mut Vec::new(), &|_| Cow::Borrowed(frontend)).0)
}

fn request_id(id: u64) -> String {
    format!("{id:016x}")
}

impl Plugin for HeaderRewrite {
    type Config = Config;
    const NAME: &'static str = "header-rewrite";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HOOKS: Hooks = Hooks::ON_REQUEST.union(Hooks::ON_RESPONSE);

    fn configure(c: Config) -> Result<Self, String> {
        let compile_all = |ops: Vec<OpFile>, side: &str, response: bool| {
            ops.into_iter()
                .enumerate()
                .map(|(i, op)| compile(op, &format!("{side}[{i}]"), response))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(HeaderRewrite {
            request: compile_all(c.request, "request", false)?,
            response: compile_all(c.response, "response", true)?,
        })
    }

    /// Only `replace` reads a header's values; `set`, `add` and `del` need none.
    fn request_headers(&self) -> Option<Vec<String>> {
        Some(replaced(&self.request))
    }

    fn response_headers(&self) -> Option<Vec<String>> {
        Some(replaced(&self.response))
    }

    /// The fields its request templates name.
    fn request_fields(&self) -> Option<RequestFields> {
        Some(vars_of(&self.request).fold(RequestFields::empty(), |all, v| all | v.field()))
    }

    /// The fields its response templates name.
    fn response_fields(&self) -> Option<ResponseFields> {
        Some(
            vars_of(&self.response)
                .fold(ResponseFields::empty(), |all, v| all | v.response_field()),
        )
    }

    /// Without `replace`, `set_path` or variables other than `%[frontend]`, the edits
    /// are the same for every request of a frontend, and weir makes them without calling
    /// the plugin.
    fn request_edits(&self, frontend: &str) -> Option<Vec<HeaderOp>> {
        fixed(&self.request, frontend)
    }

    fn response_edits(&self, frontend: &str) -> Option<Vec<HeaderOp>> {
        fixed(&self.response, frontend)
    }

    fn on_request(&self, mut request: Request) -> RequestAction {
        if self.request.is_empty() {
            return RequestAction::Proceed(Proceed::unchanged());
        }
        let mut headers = std::mem::take(&mut request.headers);
        let r = &request;
        let vars = |v: Var| -> Cow<'_, str> {
            match v {
                Var::Src => Cow::Borrowed(&r.client_ip),
                Var::Frontend => Cow::Borrowed(&r.frontend),
                Var::Backend => Cow::Borrowed(&r.backend),
                Var::Server | Var::Status => Cow::Borrowed(""),
                Var::RequestId => Cow::Owned(request_id(r.id)),
                Var::Method => Cow::Borrowed(&r.method),
                Var::Path => Cow::Borrowed(&r.path),
                Var::Query => Cow::Borrowed(r.query.as_deref().unwrap_or_default()),
                Var::Host => Cow::Borrowed(r.host.as_deref().unwrap_or_default()),
                Var::Scheme => Cow::Borrowed(&r.scheme),
            }
        };
        let (edits, path) = run(&self.request, &mut headers, &vars);
        let mut p = Proceed::unchanged();
        p.edits = edits;
        p.set_path = path;
        RequestAction::Proceed(p)
    }

    fn on_response(&self, mut response: Response) -> ResponseAction {
        if self.response.is_empty() {
            return ResponseAction::Proceed(Vec::new());
        }
        let mut headers = std::mem::take(&mut response.headers);
        let r = &response;
        let vars = |v: Var| -> Cow<'_, str> {
            match v {
                Var::Src => Cow::Borrowed(&r.client_ip),
                Var::Frontend => Cow::Borrowed(&r.frontend),
                Var::Backend => Cow::Borrowed(r.backend.as_deref().unwrap_or_default()),
                Var::Server => Cow::Borrowed(r.server.as_deref().unwrap_or_default()),
                Var::RequestId => Cow::Owned(request_id(r.id)),
                Var::Method => Cow::Borrowed(&r.method),
                Var::Path => Cow::Borrowed(&r.path),
                Var::Query | Var::Host => Cow::Borrowed(""),
                Var::Scheme => Cow::Borrowed(&r.scheme),
                Var::Status => Cow::Owned(r.status.to_string()),
            }
        };
        let (edits, _) = run(&self.response, &mut headers, &vars);
        ResponseAction::Proceed(edits)
    }
}

/// The headers the `replace` operations of `ops` read, sorted, each once.
fn replaced(ops: &[Op]) -> Vec<String> {
    let mut names: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Replace { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

export_plugin!(HeaderRewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::{apply_edits as apply, request, response};

    fn plugin(config: &str) -> HeaderRewrite {
        weir_sdk::parse_config::<HeaderRewrite>(config).unwrap()
    }

    #[test]
    fn reads_only_the_headers_it_replaces() {
        let p = plugin(
            r#"{"request": [{"set": "x-a", "value": "1"}, {"replace": "x-b", "regex": "a", "with": "b"}],
                "response": [{"del": "server"}, {"replace": "set-cookie", "regex": "a", "with": "b"}]}"#,
        );
        assert_eq!(p.request_headers(), Some(vec!["x-b".to_owned()]));
        assert_eq!(p.response_headers(), Some(vec!["set-cookie".to_owned()]));
        assert_eq!(p.request_fields(), Some(RequestFields::empty()));
        assert_eq!(p.response_fields(), Some(ResponseFields::empty()));
        let p = plugin(
            r#"{"request": [{"set": "x-a", "value": "%[src] %[path]"}, {"set_path": "/v2%[host]"}],
                "response": [{"set": "x-by", "value": "%[server] for %[method] (%[status])"}]}"#,
        );
        assert_eq!(
            p.request_fields(),
            Some(RequestFields::CLIENT_IP | RequestFields::PATH | RequestFields::HOST)
        );
        assert_eq!(
            p.response_fields(),
            Some(ResponseFields::SERVER | ResponseFields::METHOD)
        );
    }

    #[test]
    fn fixed_edits_are_declared_so_that_weir_makes_them_without_a_call() {
        let p = plugin(
            r#"{"request": [{"del": "x-internal"}, {"set": "X-A", "value": "1"}],
                "response": [{"del": "x-powered-by"}, {"add": "x-b", "value": "2"}]}"#,
        );
        let headers = [Header {
            name: "x-internal".into(),
            value: "secret".into(),
        }];
        let called = match p.on_request(request("GET", "/").with_header("x-internal", "secret")) {
            RequestAction::Proceed(p) => p.edits,
            _ => panic!("proceed"),
        };
        let fixed = p.request_edits("www").expect("fixed request edits");
        assert_eq!(apply(&headers, fixed), apply(&headers, called));
        assert_eq!(apply(&headers, p.request_edits("www").unwrap()), ["x-a: 1"]);
        let powered = [Header {
            name: "x-powered-by".into(),
            value: "php".into(),
        }];
        assert_eq!(
            apply(&powered, p.response_edits("www").unwrap()),
            ["x-b: 2"]
        );
        assert!(plugin("{}").request_edits("www").unwrap().is_empty());
        // The frontend is the same for every message of a frontend: its edits are fixed
        // there, and the same as a call on that frontend makes.
        let p = plugin(
            r#"{"request": [{"set": "x-fe", "value": "fe=%[frontend]!"}],
                "response": [{"add": "x-fe", "value": "%[frontend]%[frontend]"}]}"#,
        );
        let called = match p.on_request(request("GET", "/")) {
            RequestAction::Proceed(p) => p.edits,
            _ => panic!("proceed"),
        };
        assert_eq!(
            apply(&[], p.request_edits("www").unwrap()),
            ["x-fe: fe=www!"]
        );
        assert_eq!(
            apply(&[], p.request_edits("www").unwrap()),
            apply(&[], called)
        );
        assert_eq!(
            apply(&[], p.response_edits("api").unwrap()),
            ["x-fe: apiapi"]
        );
        // Any other variable, a `replace` or a new path depends on the message: calls.
        for request in [
            r#"{"set": "x-a", "value": "%[frontend] %[backend]"}"#,
            r#"{"add": "x-a", "value": "%[src]"}"#,
            r#"{"replace": "x-a", "regex": "a", "with": "b"}"#,
            r#"{"set_path": "/v2"}"#,
        ] {
            let p = plugin(&format!(r#"{{"request": [{{"del": "x-b"}}, {request}]}}"#));
            assert!(p.request_edits("www").is_none(), "{request}");
            assert!(p.response_edits("www").unwrap().is_empty());
        }
        let p = plugin(r#"{"response": [{"set": "x-s", "value": "%[status]"}]}"#);
        assert!(p.response_edits("www").is_none());
    }

    #[test]
    fn request_operations_in_order_with_variables() {
        let p = plugin(
            r#"{"request": [
                {"set": "X-Client", "value": "%[src] via %[frontend] to %[backend]"},
                {"add": "x-trace", "value": "id=%[request_id]"},
                {"add": "x-trace", "value": "%[method] %[scheme]://%[host]%[path]?%[query]"},
                {"del": "x-secret"},
                {"replace": "x-client", "regex": "192\\.0\\.2\\.([0-9]+)", "with": "net-$1"},
                {"set_path": "/v2%[path]"}
            ]}"#,
        );
        let req = request("GET", "/users?page=2")
            .with_host("example.com")
            .with_header("x-secret", "s3cr3t")
            .with_header("x-client", "spoofed");
        let before = req.headers.clone();
        let RequestAction::Proceed(action) = p.on_request(req) else {
            panic!()
        };
        assert_eq!(action.set_path.as_deref(), Some("/v2/users"));
        assert_eq!(
            apply(&before, action.edits),
            [
                "x-trace: id=0000000000000001",
                "x-trace: GET http://example.com/users?page=2",
                "x-client: net-1 via www to app",
            ]
        );
    }

    #[test]
    fn response_operations_see_the_server_and_status() {
        let p = plugin(
            r#"{"response": [
                {"set": "x-served-by", "value": "%[backend]/%[server] %[status]"},
                {"replace": "set-cookie", "regex": "; *[Dd]omain=[^;]*", "with": ""},
                {"del": "x-powered-by"}
            ]}"#,
        );
        let resp = response(201)
            .from_server("s2")
            .with_header("set-cookie", "a=1; Domain=internal.local; Path=/")
            .with_header("set-cookie", "b=2")
            .with_header("x-powered-by", "PHP");
        let before = resp.headers.clone();
        let ResponseAction::Proceed(ops) = p.on_response(resp) else {
            panic!()
        };
        assert_eq!(
            apply(&before, ops),
            [
                "x-served-by: app/s2 201",
                "set-cookie: a=1; Path=/",
                "set-cookie: b=2",
            ]
        );
    }

    #[test]
    fn a_replace_that_changes_nothing_edits_nothing() {
        let p = plugin(r#"{"response": [{"replace": "server", "regex": "nginx", "with": "web"}]}"#);
        let ResponseAction::Proceed(ops) =
            p.on_response(response(200).with_header("server", "apache"))
        else {
            panic!()
        };
        assert!(ops.is_empty());
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |c: &str| weir_sdk::parse_config::<HeaderRewrite>(c).err().unwrap();
        assert!(
            e(r#"{"request": [{"set": "a"}]}"#).starts_with("request[0]: `set` needs a `value`")
        );
        assert!(
            e(r#"{"request": [{"set": "a", "add": "b", "value": "1"}]}"#)
                .starts_with("request[0]:")
        );
        assert!(
            e(r#"{"request": [{"set": "a", "value": "%[nope]"}]}"#)
                .starts_with("request[0].value: unknown variable %[nope]")
        );
        assert!(
            e(r#"{"request": [{"set": "a", "value": "%[status]"}]}"#)
                .starts_with("request[0].value:")
        );
        assert!(e(r#"{"response": [{"set_path": "/x"}]}"#).starts_with("response[0].set_path:"));
        assert!(
            e(r#"{"response": [{"replace": "a", "regex": "("}]}"#)
                .starts_with("response[0].regex:")
        );
        assert!(
            e(r#"{"response": [{"add": "bad name", "value": "x"}]}"#)
                .starts_with("response[0].add:")
        );
        assert!(e(r#"{"request": [{"del": "a", "value": "x"}]}"#).starts_with("request[0]:"));
        assert!(e(r#"{"request": [{"sett": "a"}]}"#).contains("sett"));
    }
}
