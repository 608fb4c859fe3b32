//! The `http-request` and `http-response` lines of a proxy section: routing rules, denials,
//! redirects, rate limits and header edits.

use super::super::Cx;
use super::super::acl::{self, Lit, Meaning};
use super::super::emit::V;
use super::super::parse::Line;
use super::{Action, Limit, Proxy, Rule};

impl Proxy {
    pub(super) fn http_request(&mut self, cx: &mut Cx, line: &Line) {
        let words = Self::before_condition(&line.words);
        match line.word(1) {
            "deny" if self.serves() => self.deny(cx, line, words),
            "redirect" if self.serves() => self.redirect(cx, line, 2),
            "set-header" | "add-header" | "del-header" | "set-path" => {
                if let Some(op) = header_op(cx, line, &line.words[1..]) {
                    self.req_ops.push((op, line.clone()));
                }
            }
            "track-sc0" if self.serves() => {
                let key = match words.get(2).map(String::as_str) {
                    Some("src") => Some("src".to_owned()),
                    Some(k) => inner(k, &["req.hdr", "hdr"])
                        .map(|h| format!("header:{h}"))
                        .or_else(|| inner(k, &["req.cook", "cook"]).map(|c| format!("cookie:{c}"))),
                    None => None,
                };
                let table = words
                    .iter()
                    .position(|w| w == "table")
                    .and_then(|i| words.get(i + 1))
                    .cloned();
                match key {
                    Some(k) if words.len() == line.words.len() => {
                        self.track = Some((k, table, line.clone()))
                    }
                    Some(_) => cx.left(
                        line,
                        "a conditional tracking: weir's rate-limit counts every request",
                    ),
                    None => cx.left(
                        line,
                        "weir's rate-limit counts by address, header or cookie",
                    ),
                }
            }
            "use-service" if line.word(2) == "prometheus-exporter" => {
                self.prometheus = Some(line.clone());
            }
            _ => cx.left(line, "no equivalent in weir"),
        }
    }

    pub(super) fn deny(&mut self, cx: &mut Cx, line: &Line, words: &[String]) {
        let mut status = 403;
        let mut extra = Vec::new();
        let mut i = 2;
        while i < words.len() {
            match words[i].as_str() {
                "deny_status" => {
                    status = words.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    i += 2;
                }
                w => {
                    extra.push(w.to_owned());
                    i += 1;
                }
            }
        }
        if !(400..=599).contains(&status) {
            cx.left(
                line,
                "a deny_status weir's router cannot answer (4xx or 5xx)",
            );
            return;
        }
        let dnf = match self.condition(&line.words, 2) {
            Ok(d) => d,
            Err(why) => return cx.left(line, why),
        };
        // A request rate over a limit: weir's rate-limit.
        if let Some((allowed, allow)) = rate_condition(&dnf) {
            if self.limit.is_some() {
                return cx.left(line, "a second rate limit in one frontend");
            }
            if status != 429 {
                self.deny_status_429 = false;
            }
            self.limit = Some(Limit {
                allowed,
                allow,
                line: line.clone(),
            });
            return;
        }
        if !extra.is_empty() {
            cx.partly(
                line,
                format!(
                    "weir's router answers with a short text body ({} not carried over)",
                    extra.join(" ")
                ),
            );
        }
        let mut rules = Vec::new();
        for conj in &dnf {
            match acl::router_conditions(conj) {
                Ok(conds) => rules.push(Rule {
                    conds,
                    action: Action::Deny(status),
                    line: line.clone(),
                }),
                Err(why) => return cx.left(line, why),
            }
        }
        self.http_rules.extend(rules);
    }

    /// `redirect ...` (`at` = 1) or `http-request redirect ...` (`at` = 2).
    pub(super) fn redirect(&mut self, cx: &mut Cx, line: &Line, at: usize) {
        let words = Self::before_condition(&line.words);
        let (kind, target) = (line.word(at), line.word(at + 1));
        let mut code = 302;
        let mut extra = Vec::new();
        let mut i = at + 2;
        while i < words.len() {
            if words[i] == "code" {
                code = words.get(i + 1).and_then(|c| c.parse().ok()).unwrap_or(0);
                i += 2;
            } else {
                extra.push(words[i].clone());
                i += 1;
            }
        }
        let dnf = match self.condition(&line.words, at + 2) {
            Ok(d) => d,
            Err(why) => return cx.left(line, why),
        };
        match kind {
            "scheme" if target == "https" => {
                let plain_only = dnf == [vec![(true, Meaning::Tls)]];
                if !plain_only && dnf != [Vec::new()] {
                    return cx.left(line, "weir redirects plain http to https on a whole frontend, without other conditions");
                }
                if code != 301 {
                    cx.partly(
                        line,
                        format!("weir's redirect to https answers 301, not {code}"),
                    );
                }
                if !extra.is_empty() {
                    cx.partly(line, format!("{} not carried over", extra.join(" ")));
                }
                self.redirect_https = Some(line.clone());
            }
            "location" if [301, 302, 303, 307, 308].contains(&code) => {
                if !extra.is_empty() {
                    cx.partly(line, format!("{} not carried over", extra.join(" ")));
                }
                match self.rules(line, at + 2, Action::Redirect(target.to_owned(), code)) {
                    Ok(rules) => self.http_rules.extend(rules),
                    Err(why) => cx.left(line, why),
                }
            }
            _ => cx.left(
                line,
                "weir's router redirects to a location with 301, 302, 303, 307 or 308",
            ),
        }
    }

    pub(super) fn http_response(&mut self, cx: &mut Cx, line: &Line) {
        match line.word(1) {
            "set-header" | "add-header" | "del-header" => {
                if let Some(op) = header_op(cx, line, &line.words[1..]) {
                    self.resp_ops.push((op, line.clone()));
                }
            }
            _ => cx.left(line, "no equivalent in weir"),
        }
    }
}

/// `hdr(x)` → x, for the fetch names given.
fn inner<'a>(fetch: &'a str, names: &[&str]) -> Option<&'a str> {
    let (name, rest) = fetch.split_once('(')?;
    names
        .contains(&name)
        .then(|| rest.trim_end_matches(')'))
        .filter(|h| !h.is_empty() && !h.contains(','))
}

/// A rate condition (`{ sc_http_req_rate(0) gt N }`, perhaps with `!<src>` exemptions): the
/// requests allowed and the blocks never limited.
fn rate_condition(dnf: &[Vec<Lit>]) -> Option<(i64, Vec<V>)> {
    let [conj] = dnf else { return None };
    let allowed = conj.iter().find_map(|(neg, m)| match m {
        Meaning::RateOver(n) if !neg => Some(*n),
        _ => None,
    })?;
    let mut allow = Vec::new();
    for (neg, m) in conj {
        match (neg, m) {
            (false, Meaning::RateOver(_)) => {}
            (true, Meaning::Test(k, v)) if k == "src" => match v {
                V::List(items) => allow.extend(items.iter().cloned()),
                one => allow.push(one.clone()),
            },
            _ => return None,
        }
    }
    Some((allowed, allow))
}

/// HAProxy's log-format value in header-rewrite's variables, or None.
fn value(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (var, len) = if let Some(body) = rest.strip_prefix('[') {
            let end = body.find(']')?;
            let fetch = &body[..end];
            let var = match fetch {
                "src" => "src",
                "req.hdr(host)" | "hdr(host)" => "host",
                "path" => "path",
                "query" => "query",
                "method" => "method",
                "fe_name" => "frontend",
                "be_name" => "backend",
                "srv_name" => "server",
                "unique-id" => "request_id",
                "status" => "status",
                _ => return None,
            };
            (var, end + 2)
        } else {
            match rest.as_bytes().first()? {
                b'f' => ("frontend", 1),
                b'b' => ("backend", 1),
                b's' => ("server", 1),
                b'%' => {
                    out.push('%');
                    rest = &rest[1..];
                    continue;
                }
                _ if rest.starts_with("ci") => ("src", 2),
                _ if rest.starts_with("ST") => ("status", 2),
                _ if rest.starts_with("ID") => ("request_id", 2),
                _ => return None,
            }
        };
        out.push_str(&format!("%[{var}]"));
        rest = &rest[len..];
    }
    out.push_str(rest);
    Some(out)
}

/// `set-header N V`, `add-header N V`, `del-header N`, `set-path V` (no condition): a
/// header-rewrite operation.
fn header_op(cx: &mut Cx, line: &Line, words: &[String]) -> Option<V> {
    if words.iter().any(|w| w == "if" || w == "unless") {
        cx.left(
            line,
            "a conditional header edit: weir's header-rewrite edits every request or response",
        );
        return None;
    }
    let (verb, name, text) = (words[0].as_str(), words.get(1)?, words.get(2));
    let mut converted = |t: &String| {
        let v = value(t);
        if v.is_none() {
            cx.left(line, "a fetch weir's header-rewrite has no variable for");
        }
        v
    };
    let op = match verb {
        "set-header" | "add-header" => {
            let key = if verb == "set-header" { "set" } else { "add" };
            let v = converted(text?)?;
            V::table([
                (key, V::str(name.to_ascii_lowercase())),
                ("value", V::Str(v)),
            ])
        }
        "del-header" => V::table([("del", V::str(name.to_ascii_lowercase()))]),
        "set-path" => {
            let v = value(name);
            if v.is_none() {
                cx.left(line, "a fetch weir's header-rewrite has no variable for");
            }
            V::table([("set_path", V::Str(v?))])
        }
        _ => return None,
    };
    if words.len()
        > if verb == "del-header" || verb == "set-path" {
            2
        } else {
            3
        }
    {
        cx.partly(line, "options after the value are not carried over");
    }
    Some(op)
}

#[cfg(test)]
mod tests {
    use super::value;

    #[test]
    fn log_format_values_become_header_rewrite_variables() {
        assert_eq!(value("%[src]").as_deref(), Some("%[src]"));
        assert_eq!(
            value("x-%[req.hdr(host)]-%b").as_deref(),
            Some("x-%[host]-%[backend]")
        );
        assert_eq!(value("100%%").as_deref(), Some("100%"));
        assert_eq!(
            value("max-age=31536000").as_deref(),
            Some("max-age=31536000")
        );
        assert_eq!(value("%[ssl_fc_sni]"), None);
    }
}
