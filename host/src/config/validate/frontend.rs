//! `[[frontend]]`: binds, TLS, limits, the access log format.

use super::*;

pub(super) fn build_frontend(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    f: &FrontendFile,
    d: &Defaults,
    backend_names: &HashSet<&str>,
    all_binds: &mut Vec<(SocketAddr, KeyPath)>,
) -> Frontend {
    let binds_written: Vec<(KeyPath, &str)> = match &f.bind {
        OneOrMany::One(s) => vec![(path.key("bind"), s.as_str())],
        OneOrMany::Many(v) => v
            .iter()
            .enumerate()
            .map(|(i, s)| (path.key("bind").index(i), s.as_str()))
            .collect(),
    };
    if binds_written.is_empty() {
        cx.err(&path.key("bind"), "at least one bind address is required");
    }
    let mut binds = Vec::new();
    for (bp, text) in binds_written {
        match parse_addr(text, true) {
            Ok(addr) => {
                // Port 0 asks the system for any free port, so it can never clash.
                if addr.port() != 0
                    && let Some((_, first)) = all_binds.iter().find(|(a, _)| *a == addr)
                {
                    let msg = format!("{addr} is already bound by {first}");
                    cx.err(&bp, msg);
                }
                all_binds.push((addr, bp));
                binds.push(addr);
            }
            Err(msg) => cx.err(&bp, msg),
        }
    }
    let default_backend = match &f.default_backend {
        Some(b) if backend_names.contains(b.as_str()) => b.clone(),
        Some(b) => {
            cx.err(
                &path.key("default_backend"),
                format!("unknown backend \"{b}\" (no [backend.{b}] section)"),
            );
            b.clone()
        }
        None => {
            cx.err(path, "default_backend is required");
            String::new()
        }
    };
    let t = f.timeout.as_ref();
    let tp = path.key("timeout");
    let redirect_https = f.redirect_https.unwrap_or(false);
    if redirect_https && f.tls.is_some() {
        cx.err(
            &path.key("redirect_https"),
            "is for a plain-http frontend; this one has tls",
        );
    }
    let mode = mode(cx, &path.key("mode"), f.mode.as_deref());
    let tls_passthrough = f.tls_passthrough.unwrap_or(false);
    if mode == Mode::Tcp {
        // What only HTTP has.
        let http_only = [
            ("redirect_https", f.redirect_https.is_some()),
            ("forwardfor", f.forwardfor.is_some()),
            ("max_header_size", f.max_header_size.is_some()),
            ("max_headers", f.max_headers.is_some()),
            ("errorfiles", f.errorfiles.is_some()),
            (
                "timeout.http_request",
                f.timeout.as_ref().is_some_and(|t| t.http_request.is_some()),
            ),
        ];
        for (key, written) in http_only {
            if written {
                cx.err(&path.key(key), "applies to HTTP: this frontend is mode tcp");
            }
        }
        if tls_passthrough && f.tls.is_some() {
            cx.err(
                &path.key("tls_passthrough"),
                "relays TLS undecrypted; with tls = {...} weir terminates it: choose one",
            );
        }
    } else if tls_passthrough {
        cx.err(
            &path.key("tls_passthrough"),
            "is for a tcp frontend (mode = \"tcp\")",
        );
    }
    Frontend {
        name: f.name.clone(),
        binds,
        default_backend,
        plugins: f.plugins.clone(),
        timeout_client: cx.positive(
            &tp.key("client"),
            t.and_then(|t| t.client.as_ref()),
            d.client,
        ),
        timeout_http_request: cx.positive(
            &tp.key("http_request"),
            t.and_then(|t| t.http_request.as_ref()),
            d.http_request,
        ),
        forwardfor: f.forwardfor.unwrap_or(d.forwardfor),
        max_header_size: header_size(
            cx,
            &path.key("max_header_size"),
            f.max_header_size.as_ref(),
            d.max_header_size as u64,
        ),
        max_headers: cx.int(
            &path.key("max_headers"),
            f.max_headers,
            d.max_headers as i64,
            1,
            10_000,
        ) as usize,
        log_format: match log_format(
            cx,
            &path.key("log_format"),
            f.log_format.as_deref(),
            d.log_format.clone(),
        ) {
            // A tcp frontend's text line is HAProxy's tcplog.
            LogFormat::Text if mode == Mode::Tcp => LogFormat::Custom(
                custom_log_format(TCPLOG)
                    .expect("tcplog is a valid format")
                    .into(),
            ),
            format => format,
        },
        errorfiles: merged(
            &d.errorfiles,
            errorfiles(cx, &path.key("errorfiles"), f.errorfiles.as_ref()),
        ),
        tls: f.tls.as_ref().map(|t| tls(cx, &path.key("tls"), t)),
        redirect_https,
        accept_proxy: f.accept_proxy.unwrap_or(false),
        mode,
        tls_passthrough,
    }
}

/// Loads every certificate and key of a frontend's `tls`, checking they belong together.
pub(super) fn tls(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    t: &TlsFile,
) -> Vec<Arc<rustls::sign::CertifiedKey>> {
    let entries: Vec<(KeyPath, &CertFile)> = match t {
        TlsFile::One(c) => vec![(path.clone(), c)],
        TlsFile::Many(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| (path.index(i), c))
            .collect(),
    };
    if entries.is_empty() {
        cx.err(
            path,
            "needs at least one { cert, key } (or a combined PEM: { cert })",
        );
    }
    let mut certs = Vec::new();
    for (p, c) in entries {
        let cert = cx.base.join(&c.cert);
        let key = c
            .key
            .as_ref()
            .map_or_else(|| cert.clone(), |k| cx.base.join(k));
        // A combined file's key problems are the file's: said at `cert`.
        let key_path = if c.key.is_some() { "key" } else { "cert" };
        match crate::tls::load(&cert, &key) {
            Ok(certified) => certs.push(certified),
            Err((crate::tls::File::Cert, msg)) => cx.err(&p.key("cert"), msg),
            Err((crate::tls::File::Key, msg)) => cx.err(&p.key(key_path), msg),
        }
    }
    certs
}

pub(super) fn header_size(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    value: Option<&Size>,
    default: u64,
) -> usize {
    let v = cx.size(path, value).unwrap_or(default);
    if !(1024..=1024 * 1024).contains(&v) {
        cx.err(
            path,
            format!("must be between 1KiB and 1MiB, got {v} bytes"),
        );
        return default as usize;
    }
    v as usize
}

pub(super) fn log_format(
    cx: &mut Ctx<'_>,
    path: &KeyPath,
    value: Option<&str>,
    default: LogFormat,
) -> LogFormat {
    match value {
        None => default,
        Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(custom) if custom.contains('%') => match custom_log_format(custom) {
            Ok(pieces) => LogFormat::Custom(pieces.into()),
            Err(why) => {
                cx.err(path, why);
                default
            }
        },
        Some(other) => {
            cx.err(
                path,
                format!(
                    "unknown log format \"{other}\" (expected \"text\", \"json\" or a string with HAProxy's % variables)"
                ),
            );
            default
        }
    }
}

/// HAProxy's tcplog line: a tcp frontend's `text` format.
pub(super) const TCPLOG: &str =
    "%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq";

/// A format string with HAProxy's `%` variables: `%ci:%cp [%tr] %ft %{+Q}r`.
pub(in crate::config) fn custom_log_format(
    text: &str,
) -> Result<Vec<crate::config::LogPiece>, String> {
    use crate::config::{LogPiece, LogVar};
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            literal.push('%');
            rest = after;
            continue;
        }
        let mut quoted = false;
        if let Some(flags) = rest.strip_prefix('{') {
            let end = flags.find('}').ok_or("an unclosed %{...}")?;
            match &flags[..end] {
                "+Q" => quoted = true,
                "" => {}
                other => return Err(format!("%{{{other}}}: weir knows the +Q flag only")),
            }
            rest = &flags[end + 1..];
        }
        if rest.starts_with('[') {
            return Err("%[...] (sample fetches): weir's log has the named variables only".into());
        }
        let len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let name = &rest[..len];
        let var = LogVar::by_name(name).ok_or_else(|| {
            format!("%{name}: not a variable weir has (see the README's access log section)")
        })?;
        if !literal.is_empty() {
            pieces.push(LogPiece::Text(std::mem::take(&mut literal)));
        }
        pieces.push(LogPiece::Var(var, quoted));
        rest = &rest[len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(LogPiece::Text(literal));
    }
    Ok(pieces)
}
