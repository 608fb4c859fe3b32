//! HAProxy-compatible statistics CSV (`GET /;csv`, `GET /stats.csv`): the same columns in
//! the same order, a FRONTEND row per frontend, then per backend a row per server and a
//! BACKEND row; status values as HAProxy writes them. Columns weir does not measure are
//! left empty, as HAProxy leaves those that do not apply.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::config::Mode;
use crate::server::Control;
use crate::stats::{Counters, read as get};
use crate::upstream::health::Detail;
use crate::upstream::{AdminState, BackendRt, ServerRt};

pub const COLUMNS: [&str; 51] = [
    "pxname",
    "svname",
    "qcur",
    "qmax",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "dreq",
    "dresp",
    "ereq",
    "econ",
    "eresp",
    "wretr",
    "wredis",
    "status",
    "weight",
    "act",
    "bck",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "qlimit",
    "pid",
    "iid",
    "sid",
    "throttle",
    "lbtot",
    "tracked",
    "type",
    "rate",
    "rate_lim",
    "rate_max",
    "check_status",
    "check_code",
    "check_duration",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
    "hanafail",
    "req_rate",
    "req_rate_max",
    "req_tot",
    "cli_abrt",
    "srv_abrt",
];

/// One CSV line being filled in, by column name.
struct Row(Vec<String>);

impl Row {
    fn new() -> Row {
        Row(vec![String::new(); COLUMNS.len()])
    }

    fn set(&mut self, column: &str, value: impl ToString) -> &mut Row {
        let i = COLUMNS
            .iter()
            .position(|c| *c == column)
            .expect("a known column");
        // Commas would shift every later column; HAProxy never writes them in values.
        self.0[i] = value.to_string().replace(',', ";");
        self
    }

    /// The traffic counters every row type shares; `req_tot` for an HTTP proxy's rows.
    fn counters(&mut self, c: &Counters, mode: Mode) -> &mut Row {
        self.set("stot", get(&c.requests))
            .set("bin", get(&c.bytes_in))
            .set("bout", get(&c.bytes_out))
            .set("dresp", 0)
            .set("cli_abrt", get(&c.client_aborts))
            .set("srv_abrt", get(&c.server_aborts));
        if mode == Mode::Http {
            self.set("req_tot", get(&c.requests));
        }
        let classes = COLUMNS
            .iter()
            .position(|c| *c == "hrsp_1xx")
            .expect("a column");
        for (i, name) in COLUMNS[classes..classes + 6].iter().enumerate() {
            self.set(name, get(&c.responses[i]));
        }
        self
    }

    fn line(&self, out: &mut String) {
        out.push_str(&self.0.join(","));
        out.push_str(",\n");
    }
}

/// A server's status as HAProxy's stats write it: the operator's state first, then
/// health (`detail`). A server without health checks shows `no check` where `no_check`
/// (the CSV, as HAProxy's), else its UP or DOWN (the JSON API, which says `checked` apart).
pub fn server_status(s: &ServerRt, detail: &Detail, no_check: bool) -> String {
    match (s.admin(), &s.cfg.health) {
        (AdminState::Maint, _) => "MAINT".into(),
        (AdminState::Drain, _) if detail.up => "DRAIN".into(),
        (_, None) if no_check => "no check".into(),
        (_, health) => {
            let (rise, fall) = health.as_ref().map_or((1, 1), |h| (h.rise, h.fall));
            detail.label(rise, fall)
        }
    }
}

fn server_row(out: &mut String, b: &BackendRt, iid: usize, sid: usize, s: &ServerRt) {
    let detail = s.health.snapshot();
    let c = &s.stats;
    let mut row = Row::new();
    row.set("pxname", &b.name)
        .set("svname", &s.name)
        .set("qcur", 0)
        .set("qmax", 0)
        .set("scur", s.in_flight.load(Ordering::Relaxed))
        .set("smax", get(&c.max_in_flight))
        .set("econ", get(&c.connect_errors))
        .set("eresp", get(&c.response_errors))
        .set("wretr", get(&c.retries))
        .set("wredis", get(&c.redispatches))
        .set("status", server_status(s, &detail, true))
        .set("weight", s.weight.load(Ordering::Relaxed))
        .set("act", u8::from(!s.cfg.backup))
        .set("bck", u8::from(s.cfg.backup))
        .set(
            "lastchg",
            detail
                .last_change
                .elapsed()
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
        .set("pid", std::process::id())
        .set("iid", iid)
        .set("sid", sid)
        .set("lbtot", get(&c.selected))
        .set("type", 2)
        .counters(c, b.cfg.mode);
    if let Some(max) = s.cfg.maxconn {
        row.set("slim", max);
    }
    if s.cfg.health.is_some() {
        row.set("chkfail", detail.check_failures)
            .set("chkdown", detail.down_transitions)
            .set("downtime", detail.downtime().as_secs());
        if let Some(last) = &detail.last_check {
            row.set("check_status", last.status.code())
                .set("check_duration", last.duration.as_millis());
            if let Some(code) = last.code {
                row.set("check_code", code);
            }
        }
    }
    row.line(out);
}

/// What a backend's total row sums up from its servers.
pub struct Totals {
    /// Some server may take requests.
    pub up: bool,
    /// The weights of the servers that may take requests.
    pub weight: u32,
    pub in_flight: u32,
    /// Active and backup servers that may take requests.
    pub active: usize,
    pub backup: usize,
    /// Times a server was given a request.
    pub lbtot: u64,
}

pub fn totals(b: &BackendRt) -> Totals {
    let usable = |backup: bool| {
        b.servers
            .iter()
            .filter(move |s| s.cfg.backup == backup && s.available())
    };
    Totals {
        up: b.servers.iter().any(|s| s.available()),
        weight: usable(false)
            .chain(usable(true))
            .map(|s| s.weight.load(Ordering::Relaxed))
            .sum(),
        in_flight: b
            .servers
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum(),
        active: usable(false).count(),
        backup: usable(true).count(),
        lbtot: b.servers.iter().map(|s| get(&s.stats.selected)).sum(),
    }
}

fn backend_row(out: &mut String, b: &BackendRt, iid: usize) {
    let (qcur, qmax) = b.queue_len();
    let c = &b.stats;
    let t = totals(b);
    let mut row = Row::new();
    row.set("pxname", &b.name)
        .set("svname", "BACKEND")
        .set("qcur", qcur)
        .set("qmax", qmax)
        .set("scur", t.in_flight)
        .set("dreq", get(&c.denied))
        .set("econ", get(&c.connect_errors))
        .set("eresp", get(&c.response_errors))
        .set("wretr", get(&c.retries))
        .set("wredis", get(&c.redispatches))
        .set("status", if t.up { "UP" } else { "DOWN" })
        .set("weight", t.weight)
        .set("act", t.active)
        .set("bck", t.backup)
        .set("pid", std::process::id())
        .set("iid", iid)
        .set("sid", 0)
        .set("lbtot", t.lbtot)
        .set("type", 1)
        .counters(c, b.cfg.mode);
    row.line(out);
}

/// The whole CSV document.
pub fn render(control: &Control) -> String {
    let proxy = control.proxy();
    let mut out = String::new();
    let _ = writeln!(out, "# {},", COLUMNS.join(","));
    for (i, fe) in proxy.frontends.iter().enumerate() {
        let (gauge, maxconn) = control.connections(&fe.name);
        let c = &fe.stats;
        let mut row = Row::new();
        row.set("pxname", &fe.name)
            .set("svname", "FRONTEND")
            .set("scur", get(&gauge.open))
            .set("smax", get(&gauge.max))
            .set("slim", maxconn)
            .set("dreq", get(&c.denied))
            .set("ereq", get(&c.request_errors))
            .set("status", "OPEN")
            .set("pid", std::process::id())
            .set("iid", i + 1)
            .set("sid", 0)
            .set("type", 0)
            .counters(c, fe.cfg.mode);
        row.line(&mut out);
    }
    for (j, b) in proxy.backends.iter().enumerate() {
        let iid = proxy.frontends.len() + j + 1;
        for (k, s) in b.servers.iter().enumerate() {
            server_row(&mut out, b, iid, k + 1, s);
        }
        backend_row(&mut out, b, iid);
    }
    out
}
