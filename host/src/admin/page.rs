//! `GET /`: the statistics page, in the spirit of HAProxy's: a table per frontend and per
//! backend (a row per server, then the backend's totals), a table of plugins, a legend, and
//! a refresh every few seconds. Self-contained: styles and the one script are inline, so it
//! works offline. With `stats_admin`, each server row has ready / drain / maint buttons
//! that call the runtime API.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::server::Control;
use crate::stats::{Counters, read as get};
use crate::upstream::{AdminState, BackendRt, ServerRt};

use super::csv::server_status;

/// Text made safe for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`: the two largest units, as HAProxy shows durations.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m{secs}s"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// A latency in seconds, with a unit that suits it.
fn latency(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        Some(s) => format!("{:.2} ms", s * 1e3),
    }
}

/// The CSS class of a server row, by its status (see the legend).
fn row_class(s: &ServerRt, status: &str) -> &'static str {
    let backup = s.cfg.backup;
    match status {
        "MAINT" => "maint",
        "DRAIN" => "drain",
        "no check" if backup => "backup-up",
        "no check" => "nocheck",
        "UP" if backup => "backup-up",
        "UP" => "up",
        "DOWN" if backup => "backup-down",
        "DOWN" => "down",
        s if s.starts_with("UP ") => "going-down",
        _ => "going-up",
    }
}

const STYLE: &str = "
body { font-family: sans-serif; font-size: 13px; margin: 12px; color: #111; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 18px 0 4px; }
.info { color: #444; margin-bottom: 8px; }
table { border-collapse: collapse; margin-bottom: 6px; }
th, td { border: 1px solid #999; padding: 2px 5px; text-align: right; white-space: nowrap; }
th { background: #20405f; color: #fff; font-weight: normal; }
th.group { background: #385a7b; }
td.name { text-align: left; font-weight: bold; }
tr.total td { background: #b8c8da; font-weight: bold; }
tr.frontend td, span.frontend { background: #d0e0f0; }
tr.up td, span.up { background: #c0f0c0; }
tr.going-down td, span.going-down { background: #ffffa0; }
tr.going-up td, span.going-up { background: #e0f0a0; }
tr.down td, span.down { background: #ff9f9f; }
tr.backup-up td, span.backup-up { background: #b0d0ff; }
tr.backup-down td, span.backup-down { background: #d0a0a0; }
tr.drain td, span.drain { background: #f0b0f0; }
tr.maint td, span.maint { background: #c8b8a0; }
tr.nocheck td, span.nocheck { background: #e4e4e4; }
.legend td { text-align: left; border: none; padding: 1px 8px 1px 0; }
.legend span { display: inline-block; width: 14px; height: 10px; border: 1px solid #999; margin-right: 4px; }
button { font-size: 11px; margin: 0 1px; }
#error { color: #a00; font-weight: bold; }
";

/// Runs the ready / drain / maint buttons through the runtime API, then reloads the page.
const SCRIPT: &str = "
document.addEventListener('click', function (e) {
  var b = e.target.closest('button[data-state]');
  if (!b) return;
  var url = '/api/backends/' + encodeURIComponent(b.dataset.backend) +
    '/servers/' + encodeURIComponent(b.dataset.server) + '/state';
  fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json' },
               body: JSON.stringify({ state: b.dataset.state }) })
    .then(function (r) {
      if (r.ok) { location.reload(); return; }
      return r.json().then(function (j) { document.getElementById('error').textContent = j.error; });
    });
});
";

const LEGEND: [(&str, &str); 9] = [
    ("up", "active UP"),
    ("going-down", "active UP, going down"),
    ("going-up", "active DOWN, going up"),
    ("down", "active DOWN"),
    ("backup-up", "backup UP"),
    ("backup-down", "backup DOWN"),
    ("drain", "DRAIN (no new traffic)"),
    ("maint", "MAINT (stopped by the operator)"),
    ("nocheck", "active, not checked"),
];

/// The column groups of a proxy table, and their columns.
const GROUPS: [(&str, &[&str]); 9] = [
    ("Queue", &["Cur", "Max"]),
    ("Sessions", &["Cur", "Max", "Limit", "Total", "LbTot"]),
    ("Bytes", &["In", "Out"]),
    ("Denied", &["Req"]),
    ("Errors", &["Req", "Conn", "Resp"]),
    ("Warnings", &["Retr", "Redis"]),
    ("Responses", &["1xx", "2xx", "3xx", "4xx", "5xx", "other"]),
    (
        "Server",
        &[
            "Status", "LastChk", "Wght", "Act", "Bck", "Chk", "Dwn", "Dwntme", "LastChg",
        ],
    ),
    ("", &[]),
];

fn header(out: &mut String, admin: bool) {
    out.push_str("<tr><th rowspan=\"2\">Name</th>");
    for (group, columns) in GROUPS.iter().filter(|(g, _)| !g.is_empty()) {
        let _ = write!(
            out,
            "<th class=\"group\" colspan=\"{}\">{group}</th>",
            columns.len()
        );
    }
    if admin {
        out.push_str("<th rowspan=\"2\">Action</th>");
    }
    out.push_str("</tr><tr>");
    for (_, columns) in GROUPS {
        for c in columns {
            let _ = write!(out, "<th>{c}</th>");
        }
    }
    out.push_str("</tr>\n");
}

/// One table row: its class, name, and the cells in [`GROUPS`] order.
fn row(out: &mut String, class: &str, name: &str, cells: &[String], action: Option<String>) {
    let _ = write!(
        out,
        "<tr class=\"{class}\"><td class=\"name\">{}</td>",
        esc(name)
    );
    for c in cells {
        let _ = write!(out, "<td>{}</td>", esc(c));
    }
    if let Some(a) = action {
        let _ = write!(out, "<td>{a}</td>");
    }
    out.push_str("</tr>\n");
}

/// The Bytes … Responses cells every row has.
fn traffic(c: &Counters, denied: bool, request_errors: bool) -> Vec<String> {
    let or_blank = |show: bool, v: u64| if show { v.to_string() } else { String::new() };
    let mut cells = vec![
        get(&c.bytes_in).to_string(),
        get(&c.bytes_out).to_string(),
        or_blank(denied, get(&c.denied)),
        or_blank(request_errors, get(&c.request_errors)),
        get(&c.connect_errors).to_string(),
        get(&c.response_errors).to_string(),
        get(&c.retries).to_string(),
        get(&c.redispatches).to_string(),
    ];
    cells.extend(c.responses.iter().map(|r| get(r).to_string()));
    cells
}

fn buttons(backend: &str, server: &ServerRt) -> String {
    let current = server.admin();
    AdminState::ALL
        .iter()
        .map(|&state| {
            let label = state.name();
        format!(
            "<button data-backend=\"{}\" data-server=\"{}\" data-state=\"{label}\"{}>{label}</button>",
            esc(backend),
            esc(&server.name),
            if state == current { " disabled" } else { "" }
        )
    })
    .collect()
}

fn server_row(out: &mut String, b: &BackendRt, s: &ServerRt, admin: bool) {
    let detail = s.health.snapshot();
    let status = server_status(s, &detail, true);
    let c = &s.stats;
    let checked = s.cfg.health.is_some();
    let last_check = match (&detail.last_check, checked) {
        (Some(r), true) => match r.code {
            Some(code) => format!("{}/{code} in {}ms", r.status.code(), r.duration.as_millis()),
            None => format!("{} in {}ms", r.status.code(), r.duration.as_millis()),
        },
        _ => String::new(),
    };
    let since_change = detail.last_change.elapsed().unwrap_or_default();
    let mut cells = vec![
        String::new(),
        String::new(),
        s.in_flight.load(Ordering::Relaxed).to_string(),
        get(&c.max_in_flight).to_string(),
        s.cfg.maxconn.map(|m| m.to_string()).unwrap_or_default(),
        get(&c.requests).to_string(),
        get(&c.selected).to_string(),
    ];
    cells.extend(traffic(c, false, false));
    cells.extend([
        status.clone(),
        last_check,
        s.weight.load(Ordering::Relaxed).to_string(),
        if s.cfg.backup { "-" } else { "Y" }.into(),
        if s.cfg.backup { "Y" } else { "-" }.into(),
        if checked {
            detail.check_failures.to_string()
        } else {
            String::new()
        },
        if checked {
            detail.down_transitions.to_string()
        } else {
            String::new()
        },
        if checked {
            human(detail.downtime())
        } else {
            String::new()
        },
        human(since_change),
    ]);
    row(
        out,
        row_class(s, &status),
        &s.name,
        &cells,
        admin.then(|| buttons(&b.name, s)),
    );
}

fn backend_table(out: &mut String, b: &BackendRt, admin: bool) {
    let _ = writeln!(out, "<h2>Backend {}</h2>\n<table>", esc(&b.name));
    header(out, admin);
    for s in &b.servers {
        server_row(out, b, s, admin);
    }
    let (qcur, qmax) = b.queue_len();
    let c = &b.stats;
    let t = super::csv::totals(b);
    let mut cells = vec![
        qcur.to_string(),
        qmax.to_string(),
        t.in_flight.to_string(),
        String::new(),
        String::new(),
        get(&c.requests).to_string(),
        t.lbtot.to_string(),
    ];
    cells.extend(traffic(c, true, false));
    cells.extend([
        if t.up { "UP" } else { "DOWN" }.to_string(),
        String::new(),
        t.weight.to_string(),
        t.active.to_string(),
        t.backup.to_string(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    row(out, "total", "Backend", &cells, admin.then(String::new));
    out.push_str("</table>\n");
}

fn frontend_table(out: &mut String, control: &Control, fe: &crate::proxy::FrontendRt) {
    let (gauge, maxconn) = control.connections(&fe.name);
    let c = &fe.stats;
    let _ = writeln!(out, "<h2>Frontend {}</h2>\n<table>", esc(&fe.name));
    header(out, false);
    let mut cells = vec![
        String::new(),
        String::new(),
        get(&gauge.open).to_string(),
        get(&gauge.max).to_string(),
        maxconn.to_string(),
        get(&c.requests).to_string(),
        String::new(),
    ];
    cells.extend(traffic(c, true, true));
    cells.extend(["OPEN".to_string()]);
    cells.extend(std::iter::repeat_n(String::new(), 8));
    row(out, "frontend", "Frontend", &cells, None);
    out.push_str("</table>\n");
}

fn plugin_table(out: &mut String, plugins: &[std::sync::Arc<crate::plugin::Plugin>]) {
    out.push_str("<h2>Plugins</h2>\n<table>\n<tr><th>Name</th><th>Plugin</th><th>Version</th>");
    out.push_str("<th>Calls</th><th>Traps</th><th>Timeouts</th><th>Invalid</th>");
    out.push_str("<th>p50</th><th>p99</th><th>Pooled</th><th>On error</th></tr>\n");
    if plugins.is_empty() {
        out.push_str("<tr><td class=\"name\" colspan=\"11\">no plugins configured</td></tr>\n");
    }
    // Each plugin, then its candidate version (if any) on a row of its own.
    let versions = plugins.iter().flat_map(|p| {
        std::iter::once((p, None)).chain(p.candidate.as_ref().map(|c| (&c.plugin, Some(c))))
    });
    for (p, candidate) in versions {
        let st = &p.stats;
        let cells = [
            p.describe().0.to_owned(),
            p.describe().1.to_owned(),
            get(&st.calls).to_string(),
            get(&st.traps).to_string(),
            get(&st.timeouts).to_string(),
            get(&st.invalid).to_string(),
            latency(st.latency.quantile(0.5)),
            latency(st.latency.quantile(0.99)),
            p.pooled().to_string(),
            match candidate {
                Some(c) => candidate_cell(c),
                None => match p.on_error {
                    crate::config::FailPolicy::Closed => "fail-closed",
                    crate::config::FailPolicy::Open => "fail-open",
                }
                .to_string(),
            },
        ];
        let class = match candidate {
            Some(c) if c.aborted() => "maint",
            _ if st.failures() > 0 => "going-down",
            _ => "up",
        };
        row(out, class, &p.name, &cells, None);
    }
    out.push_str("</table>\n");
}

/// The latest disagreements of each shadow candidate (none: no table).
fn disagreements(out: &mut String, plugins: &[std::sync::Arc<crate::plugin::Plugin>]) {
    for p in plugins {
        let Some(c) = &p.candidate else { continue };
        let sample = c.stats.sample();
        if sample.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<h2>{} (candidate): latest disagreements</h2>\n<table>\n<tr><th>Hook</th>\
             <th>Kind</th><th>Request</th><th>Current</th><th>Candidate</th></tr>\n",
            esc(&p.name)
        );
        for d in sample.iter().rev() {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"name\">{} {}</td><td>{}</td><td>{}</td></tr>",
                d.hook,
                d.kind,
                esc(&d.method),
                esc(&d.path),
                esc(&d.current),
                esc(&d.candidate)
            );
        }
        out.push_str("</table>\n");
    }
}

/// A candidate's mode and how it fares: agreements for a shadow, its share for a canary.
fn candidate_cell(c: &crate::plugin::Candidate) -> String {
    let state = match c.taken() {
        Some(crate::plugin::Taken::ByHand) => " · taken out",
        Some(crate::plugin::Taken::ByFailures) => " · taken out by failures",
        None => "",
    };
    match c.mode {
        crate::config::CandidateMode::Shadow => {
            let (request, response) = (c.stats.request.compared(), c.stats.response.compared());
            let (compared, disagreed) = (request.0 + response.0, request.1 + response.1);
            format!("shadow: {disagreed} of {compared} disagree{state}")
        }
        crate::config::CandidateMode::Canary { percent, .. } => {
            format!("canary {percent}%{state}")
        }
    }
}

/// The whole page.
pub fn render(control: &Control, refresh: Duration, admin: bool) -> String {
    let proxy = control.proxy();
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{}\">\
         <title>weir statistics</title><style>{STYLE}</style></head><body>\n",
        refresh.as_secs().max(1)
    );
    let _ = writeln!(
        out,
        "<h1>weir statistics</h1>\n<div class=\"info\">version {} · pid {} · uptime {} · \
         config generation {}{} · refreshed every {}s · <a href=\"/;csv\">CSV</a> · \
         <a href=\"/metrics\">metrics</a></div><div id=\"error\"></div>",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        human(control.uptime()),
        control.generation(),
        control
            .source()
            .map(|p| format!(" ({})", esc(&p.display().to_string())))
            .unwrap_or_default(),
        refresh.as_secs().max(1),
    );
    out.push_str("<table class=\"legend\"><tr>");
    for (class, label) in LEGEND {
        let _ = write!(out, "<td><span class=\"{class}\"></span>{label}</td>");
    }
    out.push_str("</tr></table>\n");
    for fe in &proxy.frontends {
        frontend_table(&mut out, control, fe);
    }
    for b in proxy.backends.iter() {
        backend_table(&mut out, b, admin);
    }
    plugin_table(&mut out, &proxy.plugins);
    disagreements(&mut out, &proxy.plugins);
    if admin {
        let _ = write!(out, "<script>{SCRIPT}</script>");
    }
    out.push_str("</body></html>\n");
    out
}
