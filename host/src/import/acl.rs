//! HAProxy's ACLs and `if`/`unless` conditions, turned into the `router` plugin's rules:
//! a condition becomes one rule per alternative (its `or`s, and what `unless` and `!`
//! make of them), each rule the conditions that must all hold.

use std::collections::HashMap;

use super::emit::V;

/// What an ACL declaration stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Meaning {
    /// A router condition: its key (`path_beg`, `host`, ...) and value.
    Test(String, V),
    Always,
    Never,
    /// `ssl_fc`: the connection is TLS.
    Tls,
    /// A tracked request rate over a limit: the requests it allows.
    RateOver(i64),
}

/// Declarations by name (several of one name: any of them).
pub type Acls = HashMap<String, Vec<Meaning>>;

/// A meaning, and what it does not carry over (e.g. `-i` on a path).
pub type Read = (Meaning, Option<String>);

/// One literal of a condition: a meaning, negated or not.
pub type Lit = (bool, Meaning);

/// The most rules one condition may become.
const MAX_ALTERNATIVES: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    Str,
    Beg,
    End,
    Sub,
    Reg,
    Dom,
    Found,
}

enum Fetch {
    Path,
    Header(String),
    Method,
    Src,
    Query(String),
    /// The TLS ClientHello's server name (tcp frontends).
    Sni,
}

/// The meaning of `criterion [flags] values...`.
pub fn meaning(words: &[String]) -> Result<Read, String> {
    let Some(criterion) = words.first() else {
        return Err("an ACL without a criterion".into());
    };
    let (name, arg) = match criterion.split_once('(') {
        Some((n, rest)) => {
            let arg = rest.trim_end_matches(')');
            let arg = arg.split(',').next().unwrap_or("").trim().to_owned();
            (n, Some(arg))
        }
        None => (criterion.as_str(), None),
    };
    match name {
        "TRUE" | "always_true" => return Ok((Meaning::Always, None)),
        "FALSE" | "always_false" => return Ok((Meaning::Never, None)),
        "ssl_fc" => return Ok((Meaning::Tls, None)),
        // `tcp-request content accept if { req_ssl_hello_type 1 }`: weir with
        // tls_passthrough reads the ClientHello before it routes.
        "req_ssl_hello_type" | "req.ssl_hello_type" => return Ok((Meaning::Always, None)),
        "sc_http_req_rate" | "sc0_http_req_rate" | "src_http_req_rate" => {
            return rate(arg.as_deref(), &words[1..]);
        }
        _ => {}
    }
    let header = |arg: Option<String>| match arg {
        Some(h) if !h.is_empty() => Ok(Fetch::Header(h.to_ascii_lowercase())),
        _ => Err(format!("{criterion}: a header name is needed")),
    };
    let (fetch, mut how) = match name {
        "path" => (Fetch::Path, Match::Str),
        "path_beg" | "url_beg" => (Fetch::Path, Match::Beg),
        "path_end" => (Fetch::Path, Match::End),
        "path_reg" => (Fetch::Path, Match::Reg),
        "path_sub" => (Fetch::Path, Match::Sub),
        "hdr" | "req.hdr" | "req.fhdr" => (header(arg)?, Match::Str),
        "hdr_beg" => (header(arg)?, Match::Beg),
        "hdr_end" => (header(arg)?, Match::End),
        "hdr_sub" => (header(arg)?, Match::Sub),
        "hdr_reg" => (header(arg)?, Match::Reg),
        "hdr_dom" => (header(arg)?, Match::Dom),
        "method" => (Fetch::Method, Match::Str),
        "src" => (Fetch::Src, Match::Str),
        "req_ssl_sni" | "req.ssl_sni" => (Fetch::Sni, Match::Str),
        "url_param" | "urlp" => match arg {
            Some(p) if !p.is_empty() => (Fetch::Query(p), Match::Str),
            _ => return Err(format!("{criterion}: a parameter name is needed")),
        },
        _ => {
            return Err(format!(
                "the fetch {criterion} has no equivalent in weir's router"
            ));
        }
    };
    let mut icase = false;
    let mut rest = words[1..].iter();
    let mut values = Vec::new();
    while let Some(w) = rest.next() {
        match w.as_str() {
            "-i" => icase = true,
            "-m" => {
                how = match rest.next().map(String::as_str) {
                    Some("str") => Match::Str,
                    Some("beg") => Match::Beg,
                    Some("end") => Match::End,
                    Some("sub") => Match::Sub,
                    Some("reg") => Match::Reg,
                    Some("dom") => Match::Dom,
                    Some("found") => Match::Found,
                    other => {
                        return Err(format!("-m {}: no equivalent", other.unwrap_or("")));
                    }
                }
            }
            "-n" => {}
            "-u" => {
                rest.next();
            }
            "-f" => return Err("-f: values read from a file".into()),
            "--" => {
                values.extend(rest.by_ref().cloned());
            }
            _ => values.push(w.clone()),
        }
    }
    if values.is_empty() && how != Match::Found {
        return Err(format!("{criterion} without a value"));
    }
    test(fetch, how, icase, values)
}

/// `sc_http_req_rate(0) gt N` and its spellings.
fn rate(arg: Option<&str>, rest: &[String]) -> Result<Read, String> {
    if arg.is_some_and(|a| !a.is_empty() && a != "0") {
        return Err("a request rate of another tracking counter than 0".into());
    }
    let n: Option<i64> = rest.get(1).and_then(|n| n.parse().ok());
    match (rest.first().map(String::as_str), n) {
        (Some("gt"), Some(n)) => Ok((Meaning::RateOver(n), None)),
        (Some("ge"), Some(n)) => Ok((Meaning::RateOver(n - 1), None)),
        _ => Err("a request rate compared otherwise than gt or ge a number".into()),
    }
}

/// A match on a host name (`hdr(host)`, `req_ssl_sni`) as the router's name patterns,
/// lower-case: exact names, a domain and its subdomains (`-m dom`), or `*.suffix` for a
/// `-m end` on a leading dot. None for the other matches.
fn host_names(how: Match, values: &[String]) -> Option<Vec<V>> {
    let lower = values.iter().map(|v| v.to_ascii_lowercase());
    match how {
        Match::Str => Some(lower.map(V::Str).collect()),
        Match::Dom => Some(
            lower
                .flat_map(|v| {
                    let sub = format!("*.{v}");
                    [V::Str(v), V::Str(sub)]
                })
                .collect(),
        ),
        Match::End if values.iter().all(|v| v.starts_with('.')) => {
            Some(lower.map(|v| V::Str(format!("*{v}"))).collect())
        }
        _ => None,
    }
}

/// Escapes a literal for a regular expression.
fn literal(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn test(fetch: Fetch, how: Match, icase: bool, values: Vec<String>) -> Result<Read, String> {
    let many = |key: &str, vals: Vec<V>| Meaning::Test(key.to_owned(), V::one_or_list(vals));
    let strs = |vals: &[String]| vals.iter().map(V::str).collect::<Vec<_>>();
    let case_caveat =
        || icase.then(|| "-i: weir compares paths and header values as written".to_owned());
    Ok(match fetch {
        Fetch::Path => match how {
            Match::Found => (Meaning::Always, None),
            Match::Str => (many("path", strs(&values)), case_caveat()),
            Match::Beg => (many("path_beg", strs(&values)), case_caveat()),
            Match::End => (many("path_end", strs(&values)), case_caveat()),
            Match::Sub | Match::Reg => {
                let flag = if icase { "(?i)" } else { "" };
                let regexes = values
                    .iter()
                    .map(|v| {
                        let r = if how == Match::Sub {
                            literal(v)
                        } else {
                            v.clone()
                        };
                        V::Str(format!("{flag}{r}"))
                    })
                    .collect();
                (many("path_reg", regexes), None)
            }
            Match::Dom => return Err("-m dom on a path".into()),
        },
        Fetch::Header(h) if h == "host" => {
            if let Some(names) = host_names(how, &values) {
                return Ok((many("host", names), None));
            }
            let header = |kind: &str, v: &String| {
                V::table([("name", V::str("host")), (kind, V::str(v.clone()))])
            };
            match how {
                Match::Beg => (
                    many(
                        "header",
                        values.iter().map(|v| header("prefix", v)).collect(),
                    ),
                    None,
                ),
                Match::Sub => (
                    many(
                        "header",
                        values.iter().map(|v| header("contains", v)).collect(),
                    ),
                    None,
                ),
                Match::Found => (Meaning::Test("header".into(), V::str("host")), None),
                _ => {
                    return Err("this match on the host has no equivalent in weir's router".into());
                }
            }
        }
        Fetch::Header(h) => {
            let kind = match how {
                Match::Found => return Ok((Meaning::Test("header".into(), V::Str(h)), None)),
                Match::Str => "exact",
                Match::Beg => "prefix",
                Match::Sub => "contains",
                Match::End | Match::Reg | Match::Dom => {
                    return Err("this match on a header has no equivalent in weir's router".into());
                }
            };
            let tables = values
                .iter()
                .map(|v| V::table([("name", V::str(h.clone())), (kind, V::str(v.clone()))]))
                .collect();
            (many("header", tables), case_caveat())
        }
        Fetch::Sni => match host_names(how, &values) {
            Some(names) => (many("sni", names), None),
            None => return Err("this match on the SNI has no equivalent in weir's router".into()),
        },
        Fetch::Method if how == Match::Str => {
            let upper = values
                .iter()
                .map(|v| V::Str(v.to_ascii_uppercase()))
                .collect();
            (many("method", upper), None)
        }
        Fetch::Src if how == Match::Str => {
            if let Some(bad) = values.iter().find(|v| {
                !v.chars()
                    .all(|c| c.is_ascii_hexdigit() || ".:/".contains(c))
            }) {
                return Err(format!("src {bad}: not an address or block"));
            }
            (many("src", strs(&values)), None)
        }
        Fetch::Query(p) => {
            let kind = match how {
                Match::Found => return Ok((Meaning::Test("query".into(), V::Str(p)), None)),
                Match::Str => "exact",
                Match::Beg => "prefix",
                Match::Sub => "contains",
                _ => return Err("this match on a query parameter has no equivalent".into()),
            };
            let tables = values
                .iter()
                .map(|v| V::table([("name", V::str(p.clone())), (kind, V::str(v.clone()))]))
                .collect();
            (many("query", tables), case_caveat())
        }
        Fetch::Method | Fetch::Src => {
            return Err("this match on a method or address has no equivalent".into());
        }
    })
}

/// The ACLs HAProxy predefines, by name.
fn predefined(name: &str) -> Option<Meaning> {
    let method = |m: &[&str]| {
        Meaning::Test(
            "method".into(),
            V::one_or_list(m.iter().map(|s| V::str(*s)).collect()),
        )
    };
    Some(match name {
        "TRUE" | "HTTP" => Meaning::Always,
        "FALSE" => Meaning::Never,
        "LOCALHOST" => Meaning::Test("src".into(), V::str("127.0.0.0/8")),
        "METH_GET" => method(&["GET", "HEAD"]),
        "METH_POST" => method(&["POST"]),
        "METH_PUT" => method(&["PUT"]),
        "METH_DELETE" => method(&["DELETE"]),
        "METH_OPTIONS" => method(&["OPTIONS"]),
        "METH_HEAD" => method(&["HEAD"]),
        _ => return None,
    })
}

/// A condition after `if` or `unless` (`words` starts there), as alternatives each of
/// literals that must all hold.
pub fn condition(words: &[String], acls: &Acls) -> Result<Vec<Vec<Lit>>, String> {
    let (unless, rest) = match words.first().map(String::as_str) {
        Some("if") => (false, &words[1..]),
        Some("unless") => (true, &words[1..]),
        _ => return Err("expected if or unless".into()),
    };
    let mut groups: Vec<Vec<Lit>> = Vec::new();
    let mut current: Vec<Vec<Lit>> = vec![Vec::new()];
    let mut i = 0;
    while i < rest.len() {
        let w = rest[i].as_str();
        if w == "or" || w == "||" {
            groups.extend(std::mem::replace(&mut current, vec![Vec::new()]));
            i += 1;
            continue;
        }
        let (negated, w) = match w.strip_prefix('!') {
            Some("") => {
                i += 1;
                (true, rest.get(i).map_or("", String::as_str))
            }
            Some(name) => (true, name),
            None => (false, w),
        };
        let alternatives: Vec<Meaning> = if w == "{" {
            let end = rest[i..]
                .iter()
                .position(|x| x == "}")
                .ok_or("an anonymous ACL without its closing }")?;
            let (m, caveat) = meaning(&rest[i + 1..i + end])?;
            if let Some(c) = caveat {
                return Err(c);
            }
            i += end;
            vec![m]
        } else if let Some(list) = acls.get(w) {
            list.clone()
        } else if let Some(m) = predefined(w) {
            vec![m]
        } else {
            return Err(format!("no ACL named {w}"));
        };
        current = if negated {
            current
                .into_iter()
                .map(|mut conj| {
                    conj.extend(alternatives.iter().map(|m| (true, m.clone())));
                    conj
                })
                .collect()
        } else {
            current
                .iter()
                .flat_map(|conj| {
                    alternatives.iter().map(move |m| {
                        let mut c = conj.clone();
                        c.push((false, m.clone()));
                        c
                    })
                })
                .collect()
        };
        if current.len() > MAX_ALTERNATIVES {
            return Err("a condition with too many alternatives".into());
        }
        i += 1;
    }
    groups.extend(current);
    let dnf = if unless { negate(&groups)? } else { groups };
    Ok(simplify(dnf))
}

/// not (A or B or ...), each a conjunction: every way of picking one negated literal from
/// each.
fn negate(dnf: &[Vec<Lit>]) -> Result<Vec<Vec<Lit>>, String> {
    let mut out: Vec<Vec<Lit>> = vec![Vec::new()];
    for conj in dnf {
        let mut next = Vec::new();
        for partial in &out {
            for (neg, m) in conj {
                let mut c = partial.clone();
                c.push((!neg, m.clone()));
                next.push(c);
            }
        }
        out = next;
        if out.len() > MAX_ALTERNATIVES {
            return Err("a condition with too many alternatives".into());
        }
    }
    Ok(out)
}

/// Drops literals that always hold and alternatives that never can.
fn simplify(dnf: Vec<Vec<Lit>>) -> Vec<Vec<Lit>> {
    dnf.into_iter()
        .filter_map(|conj| {
            let mut kept = Vec::new();
            for (neg, m) in conj {
                match (neg, &m) {
                    (false, Meaning::Always) | (true, Meaning::Never) => {}
                    (true, Meaning::Always) | (false, Meaning::Never) => return None,
                    _ => kept.push((neg, m)),
                }
            }
            Some(kept)
        })
        .collect()
}

/// The router conditions of one alternative: negated tests get `_not`; several negated
/// tests of one key merge (none of them). Fails on what the router cannot hold.
pub fn router_conditions(conj: &[Lit]) -> Result<Vec<(String, V)>, String> {
    let mut out: Vec<(String, V)> = Vec::new();
    for (neg, m) in conj {
        let Meaning::Test(key, value) = m else {
            return Err("a condition on TLS or a request rate inside a routing rule".into());
        };
        let key = if *neg {
            format!("{key}_not")
        } else {
            key.clone()
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) if *neg => {
                let mut items = match std::mem::replace(existing, V::List(Vec::new())) {
                    V::List(items) => items,
                    one => vec![one],
                };
                match value {
                    V::List(more) => items.extend(more.iter().cloned()),
                    one => items.push(one.clone()),
                }
                *existing = V::List(items);
            }
            Some(_) => return Err(format!("two conditions on {key} that must both hold")),
            None => out.push((key, value.clone())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn acls(lines: &[&str]) -> Acls {
        let mut acls = Acls::new();
        for l in lines {
            let words = w(l);
            let (m, _) = meaning(&words[1..]).unwrap();
            acls.entry(words[0].clone()).or_default().push(m);
        }
        acls
    }

    fn rules(cond: &str, acls: &Acls) -> Vec<String> {
        condition(&w(cond), acls)
            .unwrap()
            .iter()
            .map(|c| {
                router_conditions(c)
                    .unwrap()
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", super::super::emit::inline(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .collect()
    }

    #[test]
    fn criteria_become_router_conditions() {
        let a = acls(&[
            "static path_beg /static /images",
            "api hdr(host) -i api.example.com",
            "dom hdr_dom(host) example.com",
            "sub path_sub -i .php",
            "post method post",
            "internal src 10.0.0.0/8 192.168.1.1",
            "debug url_param(debug) 1",
            "bot hdr_sub(user-agent) bot",
        ]);
        assert_eq!(
            rules("if static", &a),
            [r#"path_beg = ["/static", "/images"]"#]
        );
        assert_eq!(rules("if api", &a), [r#"host = "api.example.com""#]);
        assert_eq!(
            rules("if dom", &a),
            [r#"host = ["example.com", "*.example.com"]"#]
        );
        assert_eq!(rules("if sub", &a), [r#"path_reg = "(?i)\\.php""#]);
        assert_eq!(
            rules("if post internal", &a),
            [r#"method = "POST", src = ["10.0.0.0/8", "192.168.1.1"]"#]
        );
        assert_eq!(
            rules("if debug", &a),
            [r#"query = { name = "debug", exact = "1" }"#]
        );
        assert_eq!(
            rules("if bot", &a),
            [r#"header = { name = "user-agent", contains = "bot" }"#]
        );
    }

    #[test]
    fn or_not_unless_and_anonymous_acls_become_alternatives() {
        let a = acls(&["s path_beg /s", "s path_end .css", "lan src 10.0.0.0/8"]);
        // One name declared twice: any of them.
        assert_eq!(
            rules("if s", &a),
            [r#"path_beg = "/s""#, r#"path_end = ".css""#]
        );
        assert_eq!(rules("if !lan", &a), [r#"src_not = "10.0.0.0/8""#]);
        // not (s) = neither declaration: one rule, both negated.
        assert_eq!(
            rules("unless s", &a),
            [r#"path_beg_not = "/s", path_end_not = ".css""#]
        );
        assert_eq!(
            rules("if lan or { path /x }", &a),
            [r#"src = "10.0.0.0/8""#, r#"path = "/x""#]
        );
        // unless (A or B) = not A and not B; unless (A and B) = not A, or not B.
        assert_eq!(
            rules("unless lan || { path /x }", &a),
            [r#"src_not = "10.0.0.0/8", path_not = "/x""#]
        );
        assert_eq!(
            rules("unless lan { path /x }", &a),
            [r#"src_not = "10.0.0.0/8""#, r#"path_not = "/x""#]
        );
        assert_eq!(rules("if TRUE", &a), [""]);
        assert!(rules("if FALSE", &a).is_empty());
        assert_eq!(rules("if LOCALHOST", &a), [r#"src = "127.0.0.0/8""#]);
    }

    #[test]
    fn what_the_router_cannot_hold_is_refused_with_why() {
        assert!(
            meaning(&w("path_beg -f /etc/list"))
                .unwrap_err()
                .contains("file")
        );
        assert!(
            meaning(&w("hdr_reg(host) ^a"))
                .unwrap_err()
                .contains("host")
        );
        assert!(
            meaning(&w("req.cook(x) y"))
                .unwrap_err()
                .contains("req.cook")
        );
        assert!(
            condition(&w("if nope"), &Acls::new())
                .unwrap_err()
                .contains("nope")
        );
        let a = acls(&["a path_beg /a", "b path_beg /b"]);
        let both = condition(&w("if a b"), &a).unwrap();
        assert!(
            router_conditions(&both[0])
                .unwrap_err()
                .contains("path_beg")
        );
        assert_eq!(
            meaning(&w("sc_http_req_rate(0) gt 10")).unwrap().0,
            Meaning::RateOver(10)
        );
        assert_eq!(
            meaning(&w("sc0_http_req_rate ge 10")).unwrap().0,
            Meaning::RateOver(9)
        );
    }
}
