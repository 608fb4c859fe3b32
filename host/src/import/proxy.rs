//! The lines of `frontend`, `backend` and `listen` sections, read into a [`Proxy`]: what
//! each side of it becomes in weir (listeners, routing rules, rate limit, header edits,
//! statistics; servers, cookie, stick table).

use super::Cx;
use super::acl::{self, Acls, Lit};
use super::emit::V;
use super::parse::{Line, Section};
use super::server::{self, Server};
use super::settings::{Settings, duration};

mod http;

/// What a routing rule does.
#[derive(Debug, Clone)]
pub enum Action {
    Backend(String),
    Deny(i64),
    Redirect(String, i64),
}

/// A router rule: conditions that must all hold, an action, and the line it came from.
#[derive(Debug, Clone)]
pub struct Rule {
    pub conds: Vec<(String, V)>,
    pub action: Action,
    pub line: Line,
}

/// A request-rate limit: `http-request deny if { sc_http_req_rate(0) gt N }`.
#[derive(Debug, Clone)]
pub struct Limit {
    pub allowed: i64,
    pub allow: Vec<V>,
    pub line: Line,
}

/// `stats ...` lines.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub refresh: Option<String>,
    pub auth: Option<(String, String)>,
    pub admin: bool,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub kind: String,
    pub name: String,
    pub section: Section,
    pub settings: Settings,
    pub plain: Vec<String>,
    pub tls: Vec<String>,
    pub crts: Vec<String>,
    pub accept_proxy: bool,
    pub default_backend: Option<Line>,
    pub acls: Acls,
    /// The lines of the ACLs carried over.
    pub acl_lines: Vec<usize>,
    /// ACLs declared but not carried over, by name: the line that said why.
    pub broken_acls: std::collections::HashMap<String, usize>,
    /// `http-request deny` / `redirect location` rules, in order.
    pub http_rules: Vec<Rule>,
    /// `use_backend` rules, in order.
    pub routes: Vec<Rule>,
    pub redirect_https: Option<Line>,
    /// `http-request track-sc0 KEY [table T]`: weir's key, the table, the line.
    pub track: Option<(String, Option<String>, Line)>,
    pub limit: Option<Limit>,
    pub deny_status_429: bool,
    pub req_ops: Vec<(V, Line)>,
    pub resp_ops: Vec<(V, Line)>,
    pub stats: Option<Stats>,
    pub prometheus: Option<Line>,
    pub servers: Vec<Server>,
    pub cookie: Option<(Vec<(String, V)>, Line)>,
    /// The period of the stick table's `http_req_rate`, and its line.
    pub table_window: Option<(String, usize)>,
    /// tcp: it reads the TLS ClientHello before routing (`tcp-request inspect-delay`).
    pub reads_hello: bool,
}

impl Proxy {
    pub fn new(section: &Section, settings: Settings) -> Proxy {
        Proxy {
            kind: section.kind.clone(),
            name: section.name.clone(),
            section: section.clone(),
            settings,
            plain: Vec::new(),
            tls: Vec::new(),
            crts: Vec::new(),
            accept_proxy: false,
            default_backend: None,
            acls: Acls::new(),
            acl_lines: Vec::new(),
            broken_acls: Default::default(),
            http_rules: Vec::new(),
            routes: Vec::new(),
            redirect_https: None,
            track: None,
            limit: None,
            deny_status_429: true,
            req_ops: Vec::new(),
            resp_ops: Vec::new(),
            stats: None,
            prometheus: None,
            servers: Vec::new(),
            cookie: None,
            table_window: None,
            reads_hello: false,
        }
    }

    pub fn serves(&self) -> bool {
        self.kind != "backend"
    }

    pub fn holds_servers(&self) -> bool {
        self.kind != "frontend"
    }

    /// A statistics listener and nothing else: weir's `[admin]`.
    pub fn stats_only(&self) -> bool {
        self.stats.is_some()
            && self.servers.is_empty()
            && self.default_backend.is_none()
            && self.routes.is_empty()
    }

    /// Reads every line of the section.
    pub fn read(&mut self, cx: &mut Cx) {
        let lines = self.section.lines.clone();
        for line in &lines {
            if self.settings.take(cx, line) {
                continue;
            }
            self.line(cx, line);
        }
    }

    fn line(&mut self, cx: &mut Cx, line: &Line) {
        let front = self.serves();
        let back = self.holds_servers();
        match line.word(0) {
            "bind" if front => self.bind(cx, line),
            "default_backend" if front => self.default_backend = Some(line.clone()),
            "use_backend" if front => self.use_backend(cx, line),
            "acl" => self.acl(cx, line),
            "http-request" => self.http_request(cx, line),
            "redirect" if front => self.redirect(cx, line, 1),
            "http-response" => self.http_response(cx, line),
            "stick-table" => self.stick_table(cx, line),
            "cookie" if back => self.cookie(cx, line),
            "server" if back => {
                let defaults = self.settings.default_server.clone();
                if let Some(s) = server::server(cx, line, &defaults) {
                    self.servers.push(s);
                }
            }
            "stats" => self.stats(cx, line),
            "maxconn" if front => cx.partly(
                line,
                "weir limits connections for the whole process ([global] maxconn), not per frontend",
            ),
            "log" => cx.left(line, "weir's access log goes where [global] access_log says, for every frontend"),
            "tcp-request" if front => self.tcp_request(cx, line),
            _ => cx.left(line, "no equivalent in weir"),
        }
    }

    /// `tcp-request inspect-delay` and the `content accept` of a TLS hello: what weir's
    /// `tls_passthrough` does (it waits for the ClientHello within timeout.client).
    fn tcp_request(&mut self, cx: &mut Cx, line: &Line) {
        let hello = |w: &str| w.contains("req_ssl_hello_type") || w.contains("req.ssl_hello_type");
        match line.word(1) {
            "inspect-delay" => {
                self.reads_hello = true;
                cx.partly(line, "weir waits for the ClientHello up to timeout.client");
            }
            "content" if line.word(2) == "accept" && line.words.iter().any(|w| hello(w)) => {
                self.reads_hello = true;
            }
            _ => cx.left(line, "weir's tcp frontends run plugins' on-connect instead"),
        }
    }

    fn bind(&mut self, cx: &mut Cx, line: &Line) {
        let mut addrs = Vec::new();
        for a in line.word(1).split(',') {
            let a = a
                .strip_prefix("ipv4@")
                .or_else(|| a.strip_prefix("ipv6@"))
                .unwrap_or(a);
            let (host, port) = match a.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => {
                    cx.left(
                        line,
                        "an address weir cannot listen on (weir binds ip:port)",
                    );
                    return;
                }
            };
            if a.contains('@')
                || !port.bytes().all(|b| b.is_ascii_digit())
                || port.parse::<u16>().is_err()
            {
                cx.left(
                    line,
                    "an address weir cannot listen on (a socket path, a port range)",
                );
                return;
            }
            let host = if host.is_empty() || host == "*" {
                "0.0.0.0"
            } else {
                host
            };
            addrs.push(format!("{host}:{port}"));
        }
        let mut ssl = false;
        let mut missing = Vec::new();
        let words = line.from(2);
        let mut i = 0;
        while i < words.len() {
            let (w, arg) = (
                words[i].as_str(),
                words.get(i + 1).map_or("", String::as_str),
            );
            i += 1;
            match w {
                "ssl" => ssl = true,
                "crt" => {
                    self.crts.push(cx.path(arg, false));
                    i += 1;
                }
                "accept-proxy" => self.accept_proxy = true,
                "alpn" => {
                    i += 1;
                    if !arg.split(',').any(|p| p == "h2") {
                        missing.push(format!("alpn {arg} (weir offers h2 and http/1.1)"));
                    }
                }
                "ssl-min-ver" if arg == "TLSv1.2" => i += 1,
                "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "no-tls-tickets" | "v4v6" => {}
                "crt-list" | "ca-file" | "verify" | "ciphers" | "ciphersuites" | "ssl-min-ver"
                | "ssl-max-ver" | "curves" | "name" | "maxconn" | "backlog" | "process"
                | "thread" | "interface" | "mss" | "tcp-ut" | "npn" | "crl-file" | "id"
                | "nice" | "level" | "mode" | "user" | "group" | "uid" | "gid" => {
                    missing.push(format!("{w} {arg}"));
                    i += 1;
                }
                _ => missing.push(w.to_owned()),
            }
        }
        if !missing.is_empty() {
            cx.partly(
                line,
                format!("no equivalent in weir for {}", missing.join(", ")),
            );
        }
        if ssl {
            if self.crts.is_empty() {
                cx.left(line, "ssl without crt");
                return;
            }
            self.tls.extend(addrs);
        } else {
            self.plain.extend(addrs);
        }
    }

    fn acl(&mut self, cx: &mut Cx, line: &Line) {
        let name = line.word(1).to_owned();
        match acl::meaning(line.from(2)) {
            Ok((m, caveat)) => {
                if let Some(c) = caveat {
                    cx.partly(line, c);
                }
                self.acls.entry(name).or_default().push(m);
                self.acl_lines.push(line.no);
            }
            Err(why) => {
                cx.left(line, why);
                self.broken_acls.insert(name, line.no);
            }
        }
    }

    /// The condition from `words[at..]` (none: always), or the note's reason.
    fn condition(&self, words: &[String], at: usize) -> Result<Vec<Vec<Lit>>, String> {
        let Some(start) = words
            .get(at..)
            .unwrap_or(&[])
            .iter()
            .position(|w| w == "if" || w == "unless")
            .map(|p| p + at)
        else {
            return Ok(vec![Vec::new()]);
        };
        acl::condition(&words[start..], &self.acls).map_err(|e| {
            match e
                .strip_prefix("no ACL named ")
                .and_then(|n| self.broken_acls.get(n))
            {
                Some(l) => format!("its ACL could not be carried over (line {l})"),
                None => e,
            }
        })
    }

    /// `words` before `if`/`unless`.
    fn before_condition(words: &[String]) -> &[String] {
        let end = words
            .iter()
            .position(|w| w == "if" || w == "unless")
            .unwrap_or(words.len());
        &words[..end]
    }

    /// Router rules for `action` under the condition from `at`.
    fn rules(&self, line: &Line, at: usize, action: Action) -> Result<Vec<Rule>, String> {
        self.condition(&line.words, at)?
            .iter()
            .map(|conj| {
                Ok(Rule {
                    conds: acl::router_conditions(conj)?,
                    action: action.clone(),
                    line: line.clone(),
                })
            })
            .collect()
    }

    fn use_backend(&mut self, cx: &mut Cx, line: &Line) {
        let target = line.word(1);
        if target.contains("%[") || target.is_empty() {
            cx.left(
                line,
                "a backend named by an expression: weir's router names its backends",
            );
            return;
        }
        match self.rules(line, 2, Action::Backend(target.to_owned())) {
            Ok(rules) => self.routes.extend(rules),
            Err(why) => cx.left(line, why),
        }
    }

    fn stick_table(&mut self, cx: &mut Cx, line: &Line) {
        let words = &line.words;
        let store = words
            .iter()
            .position(|w| w == "store")
            .and_then(|i| words.get(i + 1));
        let rate = store.and_then(|s| {
            s.split(',')
                .find_map(|d| d.strip_prefix("http_req_rate(")?.strip_suffix(')'))
        });
        match rate.and_then(duration) {
            Some(window) => {
                if store.is_some_and(|s| s.split(',').count() > 1) {
                    cx.partly(line, "weir's rate-limit keeps the request rate only");
                }
                self.table_window = Some((window, line.no));
            }
            None => cx.left(
                line,
                "weir keeps request rates only (store http_req_rate(<period>))",
            ),
        }
    }

    fn cookie(&mut self, cx: &mut Cx, line: &Line) {
        let words = &line.words;
        let name = line.word(1);
        let mut config = vec![("cookie".to_owned(), V::str(name))];
        let (mut indirect, mut nocache, mut insert) = (false, false, false);
        let mut i = 2;
        while i < words.len() {
            let arg = words.get(i + 1).map_or("", String::as_str);
            match words[i].as_str() {
                "insert" => insert = true,
                "indirect" => indirect = true,
                "nocache" => nocache = true,
                "httponly" => config.push(("httponly".into(), V::Bool(true))),
                "secure" => config.push(("secure".into(), V::Bool(true))),
                "domain" => {
                    config.push(("domain".into(), V::str(arg)));
                    i += 1;
                }
                "maxidle" | "maxlife" => {
                    let key = if words[i] == "maxidle" {
                        "max_idle"
                    } else {
                        "max_life"
                    };
                    match duration(arg) {
                        Some(d) => config.push((key.into(), V::Str(d))),
                        None => cx.partly(line, format!("{} {arg}: not a duration", words[i])),
                    }
                    i += 1;
                }
                "attr" => {
                    match arg.split_once('=') {
                        Some(("SameSite", v)) => config.push(("samesite".into(), V::str(v))),
                        _ => cx.partly(line, format!("attr {arg}: not carried over")),
                    }
                    i += 1;
                }
                w => cx.partly(line, format!("{w}: not carried over")),
            }
            i += 1;
        }
        if !insert {
            return cx.left(line, "weir's sticky-session inserts its cookie (rewrite and prefix modes have no equivalent)");
        }
        config.push(("indirect".into(), V::Bool(indirect)));
        config.push(("nocache".into(), V::Bool(nocache)));
        self.cookie = Some((config, line.clone()));
    }

    fn stats(&mut self, cx: &mut Cx, line: &Line) {
        let stats = self.stats.get_or_insert_with(Stats::default);
        match (line.word(1), line.word(2)) {
            ("enable" | "hide-version" | "show-legends" | "show-node" | "realm", _) => {}
            ("uri", "/") => {}
            ("uri", _) => cx.partly(
                line,
                "weir serves its statistics page at / (and /;csv, /metrics) of [admin]",
            ),
            ("refresh", r) => match duration(r) {
                Some(d) => stats.refresh = Some(d),
                None => cx.left(line, "not a duration"),
            },
            ("auth", pair) => match pair.split_once(':') {
                Some((u, p)) if stats.auth.is_none() => {
                    stats.auth = Some((u.to_owned(), p.to_owned()))
                }
                _ => cx.left(line, "weir's [admin] takes one user and password"),
            },
            ("admin", _) => {
                stats.admin = true;
                if !matches!(line.word(3), "TRUE" | "always_true") {
                    cx.partly(line, "weir's stats_admin has no condition: anyone who passes [admin] auth may act");
                }
            }
            _ => cx.left(line, "no equivalent in weir's [admin]"),
        }
    }
}
