//! A proxy's tables: its frontend(s) and their plugins, its backend, or `[admin]`.

use super::emit::{Block, V, key};
use super::proxy::{Action, Proxy, Rule};
use super::settings::Settings;
use super::{Cx, errorfiles, rule_table, span, timeouts};

/// `line 3` or `lines 3, 7, 9`.
fn lines(nos: impl IntoIterator<Item = usize>) -> String {
    let mut nos: Vec<usize> = nos.into_iter().collect();
    nos.sort_unstable();
    nos.dedup();
    let list: Vec<String> = nos.iter().map(usize::to_string).collect();
    match list.as_slice() {
        [one] => format!("line {one}"),
        _ => format!("lines {}", list.join(", ")),
    }
}

/// A backend that exists in weir: not tcp, with servers.
/// The backend `name` with servers, in mode tcp or not as `tcp` says.
fn usable<'a>(proxies: &'a [Proxy], name: &str, tcp: bool) -> Option<&'a Proxy> {
    proxies.iter().find(|p| {
        p.holds_servers()
            && p.name == name
            && p.settings.tcp.is_some() == tcp
            && !p.servers.is_empty()
    })
}

/// The frontend's tables (one or two `[[frontend]]` and the plugins they are first to
/// use), and the backends it sends requests to.
pub fn frontend(
    cx: &mut Cx,
    p: &Proxy,
    proxies: &[Proxy],
    base: &Settings,
    plugins_written: &mut Vec<String>,
    admin: bool,
) -> (Vec<Block>, Vec<String>) {
    let header = &p.section.header;
    let tcp = p.settings.tcp.is_some();
    let usable = |proxies, name: &str| usable(proxies, name, tcp);
    if p.plain.is_empty() && p.tls.is_empty() {
        if p.kind == "frontend" {
            cx.left(header, "a frontend without a bind address");
        }
        return (Vec::new(), Vec::new());
    }
    // Where requests go: the HTTP rules first (HAProxy runs them before use_backend),
    // then the use_backend rules; a backend with no servers answers 503, as in HAProxy.
    let mut rules: Vec<V> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for r in &p.http_rules {
        rules.push(rule_table(&r.conds, &r.action));
    }
    for Rule {
        conds,
        action,
        line,
    } in &p.routes
    {
        let Action::Backend(b) = action else { continue };
        if usable(proxies, b).is_some() {
            targets.push(b.clone());
            rules.push(rule_table(conds, action));
        } else if proxies
            .iter()
            .any(|x| x.name == *b && x.holds_servers() && x.settings.tcp.is_some() != tcp)
        {
            cx.left(
                line,
                "its backend is of the other mode (tcp or http): weir sends to backends of the frontend's own",
            );
        } else {
            rules.push(rule_table(conds, &Action::Deny(503)));
        }
    }
    let named_default = match &p.default_backend {
        Some(l) => Some(l.word(1).to_owned()),
        None if p.kind == "listen" && !p.servers.is_empty() => Some(p.name.clone()),
        None => None,
    };
    let default = match named_default.as_deref().and_then(|d| usable(proxies, d)) {
        Some(d) => d.name.clone(),
        None => {
            // No default (or one without servers): HAProxy answers 503 to what no rule
            // routes; weir's router says so, and the default is never reached.
            let Some(first) = targets.first().cloned() else {
                cx.left(header, "no backend with servers to send requests to");
                return (Vec::new(), Vec::new());
            };
            rules.push(V::table([("deny", V::Int(503))]));
            first
        }
    };
    if !targets.contains(&default) {
        targets.insert(0, default.clone());
    }

    let mut blocks = Vec::new();
    let mut chain = Vec::new();
    let mut plugin = |name: String, block: Option<Block>, chain: &mut Vec<String>| {
        if !plugins_written.contains(&name) {
            plugins_written.push(name.clone());
            if let Some(b) = block {
                blocks.push(b);
            }
        }
        chain.push(name);
    };
    if let Some(b) = limit(cx, p, proxies).filter(|_| !tcp) {
        plugin(format!("{}-limit", p.name), Some(b), &mut chain);
    } else if let Some((_, _, line)) = &p.track {
        cx.left(line, "a tracking no rate limit of this frontend uses");
    }
    if !rules.is_empty() {
        let mut b = Block::new(
            format!(
                "frontend {}: routing ({})",
                p.name,
                lines(
                    p.http_rules
                        .iter()
                        .chain(&p.routes)
                        .map(|r| r.line.no)
                        .chain(p.acl_lines.iter().copied())
                )
            ),
            format!("[plugin.{}]", key(&format!("{}-router", p.name))),
        );
        b.set("stock", V::str("router"));
        b.set("config", V::table([("rules", V::List(rules))]));
        plugin(format!("{}-router", p.name), Some(b), &mut chain);
    }
    for t in &targets {
        let Some(be) = usable(proxies, t) else {
            continue;
        };
        let Some((config, line)) = &be.cookie else {
            continue;
        };
        if targets.len() > 1
            && targets.iter().any(|o| {
                usable(proxies, o).is_some_and(|x| x.cookie.as_ref().map(|c| &c.0) != Some(config))
            })
        {
            cx.partly(line, format!("weir's sticky-session acts on every backend of frontend {}, not on this one alone", p.name));
        }
        let mut b = Block::new(
            format!("backend {t}: cookie persistence ({})", lines([line.no])),
            format!("[plugin.{}]", key(&format!("sticky-{t}"))),
        );
        b.set("stock", V::str("sticky-session"));
        b.set("config", V::Table(config.clone()));
        plugin(format!("sticky-{t}"), Some(b), &mut chain);
    }
    let mut request: Vec<V> = p.req_ops.iter().map(|(v, _)| v.clone()).collect();
    let mut response: Vec<V> = p.resp_ops.iter().map(|(v, _)| v.clone()).collect();
    let mut edit_lines: Vec<usize> = p
        .req_ops
        .iter()
        .chain(&p.resp_ops)
        .map(|(_, l)| l.no)
        .collect();
    // A backend's own header edits, when this frontend sends everything there.
    if let [only] = targets.as_slice()
        && let Some(be) = usable(proxies, only)
        && be.name != p.name
    {
        request.extend(be.req_ops.iter().map(|(v, _)| v.clone()));
        response.extend(be.resp_ops.iter().map(|(v, _)| v.clone()));
        edit_lines.extend(be.req_ops.iter().chain(&be.resp_ops).map(|(_, l)| l.no));
    }
    if !request.is_empty() || !response.is_empty() {
        let mut config = Vec::new();
        if !request.is_empty() {
            config.push(("request".to_owned(), V::List(request)));
        }
        if !response.is_empty() {
            config.push(("response".to_owned(), V::List(response)));
        }
        let mut b = Block::new(
            format!("frontend {}: header edits ({})", p.name, lines(edit_lines)),
            format!("[plugin.{}]", key(&format!("{}-headers", p.name))),
        );
        b.set("stock", V::str("header-rewrite"));
        b.set("config", V::Table(config));
        plugin(format!("{}-headers", p.name), Some(b), &mut chain);
    }
    if let Some(line) = &p.prometheus {
        if admin {
            cx.partly(
                line,
                "weir serves /metrics on its [admin] listener, not on this frontend",
            );
        } else {
            cx.left(
                line,
                "weir serves /metrics on its [admin] listener: add [admin] bind",
            );
        }
    }

    let mut fronts = Vec::new();
    let both = !p.plain.is_empty() && !p.tls.is_empty();
    for tls in [false, true] {
        let binds = if tls { &p.tls } else { &p.plain };
        if binds.is_empty() {
            continue;
        }
        let name = if tls && both {
            format!("{}-tls", p.name)
        } else {
            p.name.clone()
        };
        let what = if both && tls {
            ", its TLS binds"
        } else if both {
            ", its plain binds"
        } else {
            ""
        };
        let mut b = Block::new(
            format!("{} {}{what} ({})", p.kind, p.name, span(&p.section)),
            "[[frontend]]",
        );
        b.set("name", V::Str(name));
        if tcp {
            b.set("mode", V::str("tcp"));
        }
        b.set("bind", V::one_or_list(binds.iter().map(V::str).collect()));
        b.set("default_backend", V::str(&default));
        if !chain.is_empty() {
            b.set("plugins", V::strs(chain.clone()));
        }
        let frontend_timeouts: &[&str] = match tcp {
            true => &["client"],
            false => &["client", "http_request"],
        };
        if let Some(t) = timeouts(&p.settings, base, frontend_timeouts) {
            b.set("timeout", t);
        }
        if p.accept_proxy {
            b.set("accept_proxy", V::Bool(true));
        }
        if tls {
            let certs = p
                .crts
                .iter()
                .map(|c| V::table([("cert", V::str(c))]))
                .collect();
            b.set("tls", V::one_or_list(certs));
        }
        if tcp {
            // Rules on the server name need the ClientHello: read, not decrypted.
            let by_sni = p
                .routes
                .iter()
                .any(|r| r.conds.iter().any(|(k, _)| k.starts_with("sni")));
            if !tls && (p.reads_hello || by_sni) {
                b.set("tls_passthrough", V::Bool(true));
            }
            fronts.push(b);
            continue;
        }
        if p.settings.forwardfor.unwrap_or(false) != base.forwardfor.unwrap_or(false) {
            b.set(
                "forwardfor",
                V::Bool(p.settings.forwardfor.unwrap_or(false)),
            );
        }
        if p.settings.errorfiles != base.errorfiles && !p.settings.errorfiles.is_empty() {
            b.set("errorfiles", errorfiles(&p.settings.errorfiles));
        }
        if let Some(format) = &p.settings.log_format {
            b.set("log_format", V::str(format));
        }
        if !tls && p.redirect_https.is_some() {
            b.set("redirect_https", V::Bool(true));
        }
        fronts.push(b);
    }
    fronts.extend(blocks);
    (fronts, targets)
}

/// `[plugin.<frontend>-limit]`, from the rate deny, the tracking and the stick table.
fn limit(cx: &mut Cx, p: &Proxy, proxies: &[Proxy]) -> Option<Block> {
    let l = p.limit.as_ref()?;
    let Some((by, table, track_line)) = &p.track else {
        cx.left(&l.line, "a rate limit without http-request track-sc0");
        return None;
    };
    let table = table.as_deref().unwrap_or(&p.name);
    let Some((window, table_line)) = proxies
        .iter()
        .find(|x| x.name == table)
        .and_then(|x| x.table_window.clone())
    else {
        cx.left(
            &l.line,
            format!("no stick-table with http_req_rate in {table}"),
        );
        return None;
    };
    if !p.deny_status_429 {
        cx.partly(
            &l.line,
            "weir's rate-limit answers 429 Too Many Requests (with Retry-After)",
        );
    }
    let mut config = vec![
        ("requests".to_owned(), V::Int(l.allowed.max(0))),
        ("window".to_owned(), V::Str(window)),
    ];
    if by != "src" {
        config.push(("key".into(), V::str(by)));
    }
    if !l.allow.is_empty() {
        config.push(("allow".into(), V::List(l.allow.clone())));
    }
    let mut b = Block::new(
        format!(
            "frontend {}: request rate limit ({})",
            p.name,
            lines([table_line, track_line.no, l.line.no])
        ),
        format!("[plugin.{}]", key(&format!("{}-limit", p.name))),
    );
    b.set("stock", V::str("rate-limit"));
    b.set("config", V::Table(config));
    Some(b)
}

/// `[backend.<name>]`, unless it has no servers (a frontend's rules then answer 503).
pub fn backend(cx: &mut Cx, p: &Proxy, base: &Settings) -> Option<Block> {
    if p.servers.is_empty() {
        return None;
    }
    let mut servers = p.servers.clone();
    let mut renamed = Vec::new();
    if let Some((_, line)) = &p.cookie {
        let values: Vec<Option<&String>> = servers.iter().map(|s| s.cookie.as_ref()).collect();
        let mut unique: Vec<&String> = values.iter().flatten().copied().collect();
        unique.sort();
        unique.dedup();
        if values.iter().all(Option::is_some) && unique.len() == values.len() {
            for s in &mut servers {
                let v = s.cookie.clone().unwrap_or_default();
                if v != s.name {
                    renamed.push(format!("{} is named {v}", s.haproxy_name));
                    s.name = v;
                }
            }
        } else {
            cx.partly(line, "weir's cookie holds the server's name: servers without a cookie value of their own are sticky by name");
        }
    }
    let mut comment = format!("{} {} ({})", p.kind, p.name, span(&p.section));
    if !renamed.is_empty() {
        comment.push_str(&format!(
            "\nits servers are named by their cookie values: {}",
            renamed.join(", ")
        ));
    }
    let mut b = Block::new(comment, format!("[backend.{}]", key(&p.name)));
    let tcp = p.settings.tcp.is_some();
    if tcp {
        b.set("mode", V::str("tcp"));
    }
    if let Some(bal) = &p.settings.balance
        && bal != "roundrobin"
    {
        b.set("balance", V::str(bal));
    }
    if let Some(t) = timeouts(&p.settings, base, &["connect", "server", "queue", "tunnel"]) {
        b.set("timeout", t);
    }
    if p.settings.retries.is_some() && p.settings.retries != base.retries {
        b.set("retries", V::Int(p.settings.retries.unwrap_or(3)));
    }
    if p.settings.redispatch.unwrap_or(false) != base.redispatch.unwrap_or(false) {
        b.set(
            "redispatch",
            V::Bool(p.settings.redispatch.unwrap_or(false)),
        );
    }
    if p.settings.allbackups == Some(true) {
        b.set("allbackups", V::Bool(true));
    }
    if !tcp && p.settings.errorfiles != base.errorfiles && !p.settings.errorfiles.is_empty() {
        b.set("errorfiles", errorfiles(&p.settings.errorfiles));
    }
    // The check: what the backend says, with each checked server's timings.
    let mut check: Vec<(String, V)> = Vec::new();
    if let Some(c) = p
        .settings
        .tcp_check
        .as_ref()
        .filter(|_| p.settings.httpchk.is_none())
    {
        if let Some(s) = &c.send {
            check.push(("send".into(), V::str(s)));
        }
        if let Some(s) = &c.expect {
            check.push(("expect".into(), V::str(s)));
        }
    }
    if let Some(c) = &p.settings.httpchk {
        check.push((
            "method".into(),
            V::str(c.method.clone().unwrap_or_else(|| "OPTIONS".into())),
        ));
        check.push((
            "path".into(),
            V::str(c.path.clone().unwrap_or_else(|| "/".into())),
        ));
        if let Some(h) = &c.host {
            check.push(("host".into(), V::str(h)));
        }
        if !c.headers.is_empty() {
            check.push((
                "headers".into(),
                V::Table(
                    c.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), V::str(v)))
                        .collect(),
                ),
            ));
        }
        if let Some(s) = &c.expect_status {
            check.push(("expect_status".into(), s.clone()));
        }
        if let Some(s) = &c.expect_body {
            check.push(("expect_body".into(), V::str(s)));
        }
    }
    if let Some(t) = &p.settings.check_timeout {
        check.push(("timeout".into(), V::str(t)));
    }
    let all_checked = servers.iter().all(|s| s.checked);
    let same_timings = servers.windows(2).all(|w| w[0].health == w[1].health);
    let on_backend = all_checked && same_timings;
    if on_backend {
        let mut h = check.clone();
        h.extend(servers[0].health.iter().cloned());
        b.set("health", V::Table(h));
    }
    let list = servers
        .iter()
        .map(|s| {
            let mut t = vec![("name".to_owned(), V::str(&s.name))];
            t.extend(s.entries.iter().cloned());
            if s.checked && !on_backend {
                let mut h = check.clone();
                h.extend(s.health.iter().cloned());
                t.push(("health".into(), V::Table(h)));
            }
            V::Table(t)
        })
        .collect();
    b.set("servers", V::List(list));
    Some(b)
}

/// `[admin]` from a statistics-only section; false when it has no usable bind.
pub fn admin(cx: &mut Cx, p: &Proxy, out: &mut String) -> bool {
    let Some(bind) = p.plain.first() else {
        cx.left(
            &p.section.header,
            "weir's [admin] listens in plain http on one address",
        );
        return false;
    };
    let stats = p.stats.clone().unwrap_or_default();
    let mut b = Block::new(
        format!("{} {}: statistics ({})", p.kind, p.name, span(&p.section)),
        "[admin]",
    );
    b.set("bind", V::str(bind));
    if let Some((u, pw)) = &stats.auth {
        b.set(
            "auth",
            V::table([("user", V::str(u)), ("password", V::str(pw))]),
        );
    }
    if stats.admin {
        b.set("stats_admin", V::Bool(true));
    }
    if let Some(r) = &stats.refresh {
        b.set("refresh", V::str(r));
    }
    b.render(out);
    true
}
