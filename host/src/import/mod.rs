//! `weir import`: an HAProxy configuration read as HAProxy reads it ([`parse`]) and
//! written as weir's TOML, with a note for every line not carried over or carried over in
//! part. Sections keep their order; each TOML table says which HAProxy lines it came from.
//!
//! What maps where: `global` → `[global]` (and `hard-stop-after` → `timeout.shutdown`);
//! the `defaults` section → `[defaults]` (several: each proxy gets its own values);
//! `frontend` → `[[frontend]]` (its plain and TLS binds as two frontends when it has
//! both) with a plugin chain: `rate-limit` (stick table + `track-sc0` + a rate deny),
//! `router` (`http-request deny`/`redirect`, `use_backend`), `sticky-session` (the
//! backend's `cookie ... insert`), `header-rewrite` (`http-request`/`http-response`
//! header edits); `backend` → `[backend.<name>]`; `listen` → both; a statistics-only
//! `listen` → `[admin]`.

mod acl;
mod emit;
pub mod parse;
mod proxy;
mod server;
mod settings;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use emit::{Block, V};
pub use parse::SyntaxError;
use parse::{Line, Section};
use proxy::{Action, Proxy};
use settings::{Settings, duration};

/// A line not carried over, or carried over in part, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub text: String,
    pub partly: bool,
    pub why: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.partly { "in part" } else { "left out" };
        write!(f, "{}: {what}: {}: {}", self.line, self.text, self.why)
    }
}

/// The TOML, and the notes in line order.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<Note>,
}

/// What the translation keeps across sections: the notes, the base directories.
#[derive(Default)]
pub struct Cx {
    notes: Vec<Note>,
    crt_base: Option<String>,
    ca_base: Option<String>,
}

impl Cx {
    fn note(&mut self, line: &Line, partly: bool, why: String) {
        self.notes.push(Note {
            line: line.no,
            text: line.text.clone(),
            partly,
            why,
        });
    }

    pub fn left(&mut self, line: &Line, why: impl Into<String>) {
        self.note(line, false, why.into());
    }

    pub fn partly(&mut self, line: &Line, why: impl Into<String>) {
        self.note(line, true, why.into());
    }

    /// A certificate (or, `ca`, an authority) file, under `crt-base` / `ca-base`.
    pub fn path(&self, file: &str, ca: bool) -> String {
        let base = if ca { &self.ca_base } else { &self.crt_base };
        match base {
            Some(b) if !file.starts_with('/') => format!("{}/{file}", b.trim_end_matches('/')),
            _ => file.to_owned(),
        }
    }
}

fn span(s: &Section) -> String {
    match s.span() {
        (a, b) if a == b => format!("line {a}"),
        (a, b) => format!("lines {a}-{b}"),
    }
}

/// Translates `text` (read from `source`, for the header comment); `env` answers `${VAR}`.
pub fn import(
    text: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Imported, SyntaxError> {
    let sections = parse::sections(text, env)?;
    let mut cx = Cx::default();
    let mut global = Block::new("", "[global]");
    let mut shutdown = None;
    let mut global_spans = Vec::new();
    for s in sections.iter().filter(|s| s.kind == "global") {
        global_spans.push(span(s));
        global_section(&mut cx, s, &mut global, &mut shutdown);
    }
    global.comment = format!("global ({})", global_spans.join(", "));

    let mut current = Settings::default();
    let mut named: HashMap<String, Settings> = HashMap::new();
    let mut defaults: Vec<(Settings, &Section)> = Vec::new();
    let mut proxies: Vec<Proxy> = Vec::new();
    for s in &sections {
        match s.kind.as_str() {
            "global" => {}
            "defaults" => {
                let mut d = match from(s) {
                    Some(parent) => inherited(&named, parent, s)?,
                    None => Settings::default(),
                };
                for line in &s.lines {
                    if !d.take(&mut cx, line) {
                        cx.left(line, "no equivalent in weir's [defaults]");
                    }
                }
                if !s.name.is_empty() {
                    named.insert(s.name.clone(), d.clone());
                }
                defaults.push((d.clone(), s));
                current = d;
            }
            "frontend" | "backend" | "listen" => {
                let base = match from(s) {
                    Some(parent) => inherited(&named, parent, s)?,
                    None => current.clone(),
                };
                let mut p = Proxy::new(s, base);
                p.read(&mut cx);
                proxies.push(p);
            }
            kind => {
                let why = match kind {
                    "userlist" => "weir's [admin] has one user (auth); plugins do the rest",
                    "peers" => "weir shares state between nodes through Redis ([state])",
                    "resolvers" => "weir resolves server names once, at load",
                    _ => "no equivalent in weir",
                };
                for line in std::iter::once(&s.header).chain(&s.lines) {
                    cx.left(line, format!("in a {kind} section: {why}"));
                }
            }
        }
    }
    check_references(&proxies)?;

    // weir's [defaults]: the one defaults section's values when there is one; with
    // several, each proxy says its own.
    let base = match defaults.as_slice() {
        [(d, _)] => d.clone(),
        _ => Settings::default(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "# Written by weir import from {source}. Each table says which lines it came from;\n# every line not carried over, or carried over in part, is listed on stderr.\n\n"
    ));
    if !global.entries.is_empty() {
        global.render(&mut out);
    }
    let spans: Vec<String> = defaults.iter().map(|(_, s)| span(s)).collect();
    let comment = if spans.is_empty() {
        "weir's defaults where HAProxy's differ".to_owned()
    } else {
        format!("defaults ({})", spans.join(", "))
    };
    let mut d = Block::new(comment, "[defaults]");
    let mut timeouts: Vec<(String, V)> = base
        .timeouts
        .iter()
        .map(|(k, v)| (k.to_string(), V::str(v)))
        .collect();
    if let Some(s) = shutdown {
        timeouts.push(("shutdown".into(), V::Str(s)));
    }
    if !timeouts.is_empty() {
        d.set("timeout", V::Table(timeouts));
    }
    if let Some(r) = base.retries {
        d.set("retries", V::Int(r));
    }
    d.set("redispatch", V::Bool(base.redispatch.unwrap_or(false)));
    d.set("forwardfor", V::Bool(base.forwardfor.unwrap_or(false)));
    if !base.errorfiles.is_empty() {
        d.set("errorfiles", errorfiles(&base.errorfiles));
    }
    d.render(&mut out);

    let mut plugins_written = Vec::new();
    let mut admin_written = false;
    let mut reach: Vec<(String, Vec<String>)> = Vec::new();
    for p in &proxies {
        if p.stats_only() {
            if admin_written {
                cx.left(&p.section.header, "weir has one [admin] listener");
            } else {
                admin_written = admin(&mut cx, p, &mut out);
            }
            continue;
        }
        if p.serves() {
            let (blocks, targets) = frontend(
                &mut cx,
                p,
                &proxies,
                &base,
                &mut plugins_written,
                admin_written,
            );
            for b in blocks {
                b.render(&mut out);
            }
            reach.push((p.name.clone(), targets));
        }
        if p.holds_servers()
            && let Some(b) = backend(&mut cx, p, &base)
        {
            b.render(&mut out);
        }
    }
    // A backend's header edits went to the frontends that send everything there; said
    // here when some frontend mixes it with other backends.
    for b in proxies.iter().filter(|p| p.kind == "backend") {
        let mixed: Vec<&str> = reach
            .iter()
            .filter(|(_, t)| t.contains(&b.name) && t.len() > 1)
            .map(|(f, _)| f.as_str())
            .collect();
        let reached = reach.iter().any(|(_, t)| t.contains(&b.name));
        let why = if !reached {
            "no frontend sends requests to this backend".to_owned()
        } else if !mixed.is_empty() {
            format!(
                "weir edits headers per frontend, and {} also sends requests to other backends",
                mixed.join(", ")
            )
        } else {
            continue;
        };
        let took = reach.iter().any(|(_, t)| t.as_slice() == [b.name.clone()]);
        for (_, line) in b.req_ops.iter().chain(&b.resp_ops) {
            if took {
                cx.partly(line, why.clone());
            } else {
                cx.left(line, why.clone());
            }
        }
    }
    cx.notes.sort_by_key(|n| n.line);
    Ok(Imported {
        toml: out,
        notes: cx.notes,
    })
}

/// `defaults NAME from PARENT`, `frontend NAME from PARENT`: the parent's name.
fn from(s: &Section) -> Option<&str> {
    let w = &s.header.words;
    (w.get(2).map(String::as_str) == Some("from")).then(|| w.get(3).map_or("", String::as_str))
}

fn inherited(
    named: &HashMap<String, Settings>,
    parent: &str,
    s: &Section,
) -> Result<Settings, SyntaxError> {
    named.get(parent).cloned().ok_or_else(|| SyntaxError {
        line: s.header.no,
        message: format!("no defaults section named \"{parent}\""),
    })
}

/// Every backend a frontend names exists (HAProxy refuses the file otherwise).
fn check_references(proxies: &[Proxy]) -> Result<(), SyntaxError> {
    for p in proxies {
        let named = p
            .default_backend
            .iter()
            .map(|l| (l.no, l.word(1).to_owned()))
            .chain(p.routes.iter().filter_map(|r| match &r.action {
                Action::Backend(b) => Some((r.line.no, b.clone())),
                _ => None,
            }));
        for (line, b) in named {
            if !proxies.iter().any(|x| x.holds_servers() && x.name == b) {
                return Err(SyntaxError {
                    line,
                    message: format!("no backend named \"{b}\""),
                });
            }
        }
        if let Some((_, Some(t), l)) = &p.track
            && !proxies.iter().any(|x| x.name == *t)
        {
            return Err(SyntaxError {
                line: l.no,
                message: format!("no stick table named \"{t}\""),
            });
        }
    }
    Ok(())
}

fn global_section(cx: &mut Cx, s: &Section, global: &mut Block, shutdown: &mut Option<String>) {
    for line in &s.lines {
        let arg = line.word(1);
        let number = arg.parse::<i64>().ok();
        match (line.word(0), number) {
            ("maxconn", Some(n)) if n > 0 => global.set("maxconn", V::Int(n)),
            ("nbthread", Some(n)) if n > 0 => global.set("threads", V::Int(n)),
            ("grace", _) if duration(arg).is_some() => {
                global.set("grace", V::Str(duration(arg).unwrap_or_default()))
            }
            ("hard-stop-after", _) if duration(arg).is_some() => *shutdown = duration(arg),
            ("crt-base", _) => cx.crt_base = Some(arg.to_owned()),
            ("ca-base", _) => cx.ca_base = Some(arg.to_owned()),
            ("ssl-default-bind-options" | "ssl-default-server-options", _) => {
                let benign = |w: &str| {
                    ["no-sslv3", "no-tlsv10", "no-tlsv11", "no-tls-tickets", "ssl-min-ver", "TLSv1.2"]
                        .contains(&w)
                };
                if !line.words[1..].iter().all(|w| benign(w)) {
                    cx.partly(line, "weir speaks TLS 1.2 and 1.3 only, with rustls's defaults");
                }
            }
            ("log", _) if global.has("access_log") => cx.left(
                line,
                "weir sends its access log to one place: the first `log` line's",
            ),
            ("log", _) => match syslog_target(line) {
                Ok((target, caveats)) => {
                    global.set("access_log", target);
                    if !caveats.is_empty() {
                        cx.partly(line, caveats.join("; "));
                    }
                }
                Err(why) => cx.left(line, why),
            },
            ("stats", _) if arg == "socket" || arg == "timeout" => {
                cx.left(line, "weir's runtime API is HTTP, on the [admin] listener")
            }
            ("daemon" | "master-worker", _) => cx.left(
                line,
                "weir runs in the foreground: run it under systemd (examples/systemd/weir.service)",
            ),
            ("user" | "group" | "uid" | "gid" | "chroot" | "pidfile", _) => cx.left(
                line,
                "weir does not change user or root itself: systemd's unit does (User=, RootDirectory=)",
            ),
            _ => cx.left(line, "no equivalent in weir's [global]"),
        }
    }
}

/// A `log <target> [len N] [format F] [sample S] <facility> [level [minlevel]]` line as
/// `access_log`, with what weir does otherwise than it says.
fn syslog_target(line: &Line) -> Result<(V, Vec<String>), String> {
    let words = line.from(1);
    let target = words.first().map_or("", String::as_str);
    let mut caveats = Vec::new();
    let mut format = None;
    let mut rest = words.get(1..).unwrap_or(&[]);
    while let [option, value, more @ ..] = rest {
        match option.as_str() {
            "len" => caveats.push("weir does not cut its lines to a length".to_owned()),
            "sample" => caveats.push("weir logs every request (no sampling)".to_owned()),
            "format" => match value.as_str() {
                "rfc3164" | "rfc5424" => format = Some(value.clone()),
                other => caveats.push(format!(
                    "weir writes syslog as RFC 3164 or RFC 5424, not {other}"
                )),
            },
            _ => break,
        }
        rest = more;
    }
    let facility = rest.first().map_or("", String::as_str);
    if !crate::config::SYSLOG_FACILITIES.contains(&facility) {
        return Err(format!(
            "\"{facility}\" is not a syslog facility weir knows"
        ));
    }
    if let Some(level) = rest.get(1)
        && !["info", "debug"].contains(&level.as_str())
    {
        caveats.push(format!(
            "weir sends every request's line, at level info, where HAProxy sends only those at {level} or above"
        ));
    }
    let unix = (target.strip_prefix("unix@")).or_else(|| target.starts_with('/').then_some(target));
    let to = if let Some(path) = unix {
        path.to_owned()
    } else if target == "stdout" || target == "stderr" {
        caveats.push("weir writes its access log to stderr, as plain lines".to_owned());
        return Ok((V::str("stderr"), caveats));
    } else {
        let addr = ["udp4@", "udp6@", "udp@", "ipv4@", "ipv6@"]
            .iter()
            .find_map(|p| target.strip_prefix(p))
            .unwrap_or(target);
        let parsed = addr.parse::<std::net::SocketAddr>().ok().or_else(|| {
            let ip = addr.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| std::net::SocketAddr::new(ip, 514))
        });
        match parsed {
            Some(a) => format!("udp://{a}"),
            None => {
                return Err(format!(
                    "weir sends syslog to a Unix socket path or an IP address over UDP, not {target}"
                ));
            }
        }
    };
    let mut table = vec![("syslog", V::Str(to)), ("facility", V::str(facility))];
    if let Some(f) = format {
        table.push(("format", V::Str(f)));
    }
    Ok((V::table(table), caveats))
}

fn errorfiles(files: &BTreeMap<u16, String>) -> V {
    V::Table(
        files
            .iter()
            .map(|(c, f)| (c.to_string(), V::str(f)))
            .collect(),
    )
}

/// The timeouts among `names` where `own` differs from `base`.
fn timeouts(own: &Settings, base: &Settings, names: &[&'static str]) -> Option<V> {
    let pairs: Vec<(String, V)> = names
        .iter()
        .filter_map(|n| {
            let v = own.timeouts.get(n)?;
            (base.timeouts.get(n) != Some(v)).then(|| (n.to_string(), V::str(v)))
        })
        .collect();
    (!pairs.is_empty()).then_some(V::Table(pairs))
}

fn rule_table(conds: &[(String, V)], action: &Action) -> V {
    let mut pairs = conds.to_vec();
    match action {
        Action::Backend(b) => pairs.push(("backend".into(), V::str(b))),
        Action::Deny(s) => pairs.push(("deny".into(), V::Int(*s))),
        Action::Redirect(l, c) => pairs.push((
            "redirect".into(),
            V::table([("location", V::str(l)), ("code", V::Int(*c))]),
        )),
    }
    V::Table(pairs)
}

mod write;
use write::{admin, backend, frontend};
