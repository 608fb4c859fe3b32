//! What `defaults` sections hold and proxies inherit: timeouts, retries, options, the
//! balance, `default-server`, the HTTP check, error files.

use std::collections::BTreeMap;

use super::Cx;
use super::emit::V;
use super::parse::Line;

/// An HTTP check (`option httpchk`, `http-check send` / `expect`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chk {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub expect_status: Option<V>,
    pub expect_body: Option<String>,
}

/// Settings a proxy inherits from its `defaults` section and may override.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `mode tcp`, at this line.
    pub tcp: Option<usize>,
    /// weir's timeout names → durations.
    pub timeouts: BTreeMap<&'static str, String>,
    pub check_timeout: Option<String>,
    pub retries: Option<i64>,
    pub redispatch: Option<bool>,
    pub forwardfor: Option<bool>,
    pub balance: Option<String>,
    pub allbackups: Option<bool>,
    /// The words of `default-server` lines, in order.
    pub default_server: Vec<String>,
    pub httpchk: Option<Chk>,
    pub errorfiles: BTreeMap<u16, String>,
    /// `log_format`: from `log-format`, or HAProxy's own httplog line for `option httplog`.
    pub log_format: Option<String>,
    /// `option tcp-check` with its `tcp-check send` / `expect string`.
    pub tcp_check: Option<TcpCheck>,
}

/// A TCP check's exchange.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TcpCheck {
    pub send: Option<String>,
    pub expect: Option<String>,
}

/// HAProxy's `option httplog` line in weir's `%` variables: the same fields in the same
/// places, without the header captures (`%hr %hs`, which weir has not).
pub const HTTPLOG: &str = "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r";

/// HAProxy's duration (milliseconds without a unit) in weir's form.
pub fn duration(text: &str) -> Option<String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    match &text[digits..] {
        "" => Some(format!("{text}ms")),
        "us" | "ms" | "s" | "m" | "h" | "d" => Some(text.to_owned()),
        _ => None,
    }
}

/// Statuses weir answers by itself, whose pages `errorfiles` may replace.
const OWN_STATUSES: [u16; 5] = [400, 501, 502, 503, 504];

impl Settings {
    /// Takes a line that is a setting; false when it is not one.
    pub fn take(&mut self, cx: &mut Cx, line: &Line) -> bool {
        let w = |i: usize| line.word(i);
        match (w(0), w(1)) {
            ("mode", "http") => self.tcp = None,
            ("mode", "tcp") => self.tcp = Some(line.no),
            ("mode", _) => cx.left(line, "an unknown mode"),
            ("timeout", name) => self.timeout(cx, line, name),
            ("retries", n) => match n.parse() {
                Ok(n) if (0..=100).contains(&n) => self.retries = Some(n),
                _ => cx.left(line, "not a number of retries weir takes (0 to 100)"),
            },
            ("option", "redispatch") => self.redispatch = Some(true),
            ("no", "option") if w(2) == "redispatch" => self.redispatch = Some(false),
            ("option", "forwardfor") => {
                self.forwardfor = Some(true);
                if line.words.len() > 2 {
                    cx.partly(line, "weir appends to X-Forwarded-For for every client (no except, no other header name)");
                }
            }
            ("no", "option") if w(2) == "forwardfor" => self.forwardfor = Some(false),
            ("option", "allbackups") => self.allbackups = Some(true),
            // What weir does anyway: an access log line per request, none for a connection
            // that sent nothing, keep-alive on both sides, health changes logged, the
            // logs sent where `log` says (reported there).
            ("option", "dontlognull" | "http-keep-alive" | "log-health-checks")
            | ("log", "global") => {}
            ("option", "httplog" | "httpslog") => self.log_format = Some(HTTPLOG.to_owned()),
            // A tcp frontend's text line is HAProxy's tcplog.
            ("option", "tcplog") => {}
            ("option", "tcp-check") => {
                self.tcp_check.get_or_insert_with(TcpCheck::default);
            }
            ("tcp-check", "connect") => {}
            ("tcp-check", "send") if line.words.len() == 3 => {
                self.tcp_check.get_or_insert_with(TcpCheck::default).send = Some(w(2).to_owned());
            }
            ("tcp-check", "expect") if w(2) == "string" && line.words.len() == 4 => {
                self.tcp_check.get_or_insert_with(TcpCheck::default).expect = Some(w(3).to_owned());
            }
            ("tcp-check", _) => cx.left(
                line,
                "weir's TCP check sends one string and expects one (send, expect string)",
            ),
            ("option", "splice-auto" | "splice-request" | "splice-response") => cx.partly(
                line,
                "weir relays with its own copy loop (BENCHMARKS.md, Layer 4, says why)",
            ),
            ("log-format", _) => {
                let text = line.from(1).join(" ");
                // A format weir cannot write leaves weir's own text line, not the one
                // inherited.
                self.log_format = match crate::config::log_format_problem(&text) {
                    None => Some(text),
                    Some(why) => {
                        cx.left(line, format!("{why}; weir writes its own text line there"));
                        None
                    }
                };
            }
            ("option", "http-server-close" | "httpclose") => cx.partly(
                line,
                "weir keeps client connections alive and reuses server connections from its pool",
            ),
            ("balance", _) => self.balance(cx, line),
            ("hash-type", "consistent") => {}
            ("hash-type", _) => cx.partly(
                line,
                "weir's hashing is always consistent (weighted rendezvous)",
            ),
            ("http-reuse", "never") => {
                cx.partly(line, "weir always reuses idle server connections")
            }
            ("http-reuse", _) => {}
            ("default-server", _) => self.default_server.extend(line.words[1..].iter().cloned()),
            ("option", "httpchk") => self.httpchk(line),
            ("http-check", _) => self.http_check(cx, line),
            ("errorfile", code) => self.errorfile(cx, line, code),
            _ => return false,
        }
        true
    }

    fn timeout(&mut self, cx: &mut Cx, line: &Line, name: &str) {
        let Some(d) = duration(line.word(2)) else {
            cx.left(line, "not a duration");
            return;
        };
        let weir = match name {
            "connect" => "connect",
            "client" => "client",
            "server" => "server",
            "http-request" => "http_request",
            "queue" => "queue",
            "tunnel" => "tunnel",
            "check" => {
                self.check_timeout = Some(d);
                return;
            }
            "http-keep-alive" => {
                cx.partly(
                    line,
                    "weir closes idle client connections after timeout.client",
                );
                return;
            }
            _ => {
                cx.left(line, "no such timeout in weir");
                return;
            }
        };
        self.timeouts.insert(weir, d);
    }

    fn balance(&mut self, cx: &mut Cx, line: &Line) {
        let arg = line.word(1);
        let weir = match arg {
            "roundrobin" | "static-rr" | "leastconn" | "first" | "source" | "random" => {
                arg.to_owned()
            }
            "uri" => {
                if line.words.len() > 2 {
                    cx.partly(line, "weir hashes the whole path (without the query)");
                }
                "uri".to_owned()
            }
            "url_param" if !line.word(2).is_empty() => {
                if line.words.len() > 3 {
                    cx.partly(line, "weir reads the parameter from the query only");
                }
                format!("url_param:{}", line.word(2))
            }
            a if a.starts_with("hdr(") && a.ends_with(')') => {
                format!("hdr:{}", &a[4..a.len() - 1])
            }
            _ => {
                cx.left(line, "no such balancing algorithm in weir");
                return;
            }
        };
        self.balance = Some(weir);
    }

    fn httpchk(&mut self, line: &Line) {
        let mut chk = self.httpchk.clone().unwrap_or_default();
        let args = &line.words[2..];
        match args {
            [] => {}
            [uri] => chk.path = Some(uri.clone()),
            [method, uri, rest @ ..] => {
                chk.method = Some(method.clone());
                chk.path = Some(uri.clone());
                // The old form's version may carry headers: "HTTP/1.1\r\nHost:\ x".
                if let Some(version) = rest.first() {
                    for h in version.split("\r\n").skip(1) {
                        if let Some((n, v)) = h.split_once(':') {
                            let (n, v) = (n.trim(), v.trim());
                            if n.eq_ignore_ascii_case("host") {
                                chk.host = Some(v.to_owned());
                            } else {
                                chk.headers.push((n.to_owned(), v.to_owned()));
                            }
                        }
                    }
                }
            }
        }
        self.httpchk = Some(chk);
    }

    fn http_check(&mut self, cx: &mut Cx, line: &Line) {
        let mut chk = self.httpchk.clone().unwrap_or_default();
        let words = &line.words;
        match line.word(1) {
            "send" => {
                let mut i = 2;
                while i + 1 < words.len() {
                    match words[i].as_str() {
                        "meth" => chk.method = Some(words[i + 1].clone()),
                        "uri" => chk.path = Some(words[i + 1].clone()),
                        "ver" => {}
                        "hdr" if i + 2 < words.len() => {
                            let (n, v) = (&words[i + 1], &words[i + 2]);
                            if n.eq_ignore_ascii_case("host") {
                                chk.host = Some(v.clone());
                            } else {
                                chk.headers.push((n.clone(), v.clone()));
                            }
                            i += 1;
                        }
                        _ => {
                            cx.partly(line, format!("{}: not carried over", words[i]));
                        }
                    }
                    i += 2;
                }
            }
            "expect" => match (line.word(2), line.word(3)) {
                ("status", codes) => match expect_status(codes) {
                    Some(v) => chk.expect_status = Some(v),
                    None => cx.left(line, "a status weir's check cannot expect"),
                },
                ("rstatus", re) => match re {
                    "^2" | "^2.." | "^2[0-9][0-9]" | "^2\\d\\d" => {
                        chk.expect_status = Some(V::str("2xx"))
                    }
                    "^3" | "^3.." => chk.expect_status = Some(V::str("3xx")),
                    _ => cx.left(
                        line,
                        "weir's check takes a status, a list or a class, not a regex",
                    ),
                },
                ("string", s) => chk.expect_body = Some(s.to_owned()),
                _ => cx.left(
                    line,
                    "weir's check expects a status or a string in the body",
                ),
            },
            "disable-on-404" | "connect" => cx.left(line, "no equivalent in weir's checks"),
            _ => cx.left(line, "no equivalent in weir's checks"),
        }
        self.httpchk = Some(chk);
    }

    fn errorfile(&mut self, cx: &mut Cx, line: &Line, code: &str) {
        let Ok(code) = code.parse::<u16>() else {
            cx.left(line, "not a status");
            return;
        };
        if !OWN_STATUSES.contains(&code) {
            cx.left(
                line,
                format!("weir writes no {code} of its own (errorfiles: 400, 501, 502, 503, 504)"),
            );
            return;
        }
        self.errorfiles.insert(code, cx.path(line.word(2), false));
        cx.partly(
            line,
            "HAProxy's errorfile is a whole HTTP response; weir's page is the body alone: strip the status line and headers from the file",
        );
    }
}

/// `200`, `200-399`, `200,204`: what weir's `expect_status` takes.
fn expect_status(codes: &str) -> Option<V> {
    if let Ok(c) = codes.parse::<i64>() {
        return Some(V::Int(c));
    }
    if let Some((a, b)) = codes.split_once('-') {
        let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
        if a % 100 == 0 && b == a + 99 {
            return Some(V::Str(format!("{}xx", a / 100)));
        }
        if b >= a && b - a < 100 {
            return Some(V::List((a..=b).map(V::Int).collect()));
        }
        return None;
    }
    let list: Option<Vec<V>> = codes
        .split(',')
        .map(|c| c.parse().ok().map(V::Int))
        .collect();
    list.filter(|l| !l.is_empty()).map(V::List)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_statuses_read_as_haproxy_writes_them() {
        assert_eq!(duration("5000").as_deref(), Some("5000ms"));
        assert_eq!(duration("30s").as_deref(), Some("30s"));
        assert_eq!(duration("1m").as_deref(), Some("1m"));
        assert_eq!(duration("s"), None);
        assert_eq!(duration("5x"), None);
        assert_eq!(expect_status("200"), Some(V::Int(200)));
        assert_eq!(expect_status("200-299"), Some(V::str("2xx")));
        assert_eq!(
            expect_status("200,204"),
            Some(V::List(vec![V::Int(200), V::Int(204)]))
        );
        assert_eq!(expect_status("abc"), None);
    }
}
