//! `GET /metrics`: Prometheus text exposition (format 0.0.4), every name prefixed `weir_`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::server::Control;
use crate::stats::{Counters, Histogram, read as get};
use crate::upstream::AdminState;

/// A metric family being written: `# HELP`, `# TYPE`, then its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP weir_{name} {help}");
        let _ = writeln!(self.0, "# TYPE weir_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.0, "weir_{name}");
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (i, bound) in h.bounds().iter().enumerate() {
            cumulative += get(&h.buckets[i]);
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, get(&h.count));
        self.sample(&format!("{name}_sum"), labels, get(&h.sum_us) as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, get(&h.count));
    }
}

/// A label value, escaped as the exposition format asks.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// A counter family: its name, its help text, and where a row's value is.
type Family<T> = (&'static str, &'static str, fn(&T) -> &AtomicU64);

/// The counters frontends, backends and servers share, one family per counter.
fn counter_families(
    out: &mut Out,
    scope: &str,
    rows: &[(Vec<(&str, &str)>, &Counters)],
    kinds: &[&str],
) {
    let all: [Family<Counters>; 12] = [
        ("requests_total", "Requests that ended.", |c| &c.requests),
        (
            "bytes_in_total",
            "Request bytes received from clients, head and body.",
            |c| &c.bytes_in,
        ),
        ("bytes_out_total", "Response bytes sent to clients.", |c| {
            &c.bytes_out
        }),
        (
            "denied_total",
            "Requests a plugin answered with a 4xx or 5xx of its own.",
            |c| &c.denied,
        ),
        (
            "request_errors_total",
            "Requests refused as malformed or unsupported.",
            |c| &c.request_errors,
        ),
        (
            "connect_errors_total",
            "Requests that found no server or could not connect to one.",
            |c| &c.connect_errors,
        ),
        (
            "response_errors_total",
            "Responses that failed or timed out on the server side.",
            |c| &c.response_errors,
        ),
        (
            "retries_total",
            "Attempts made again after a failed one.",
            |c| &c.retries,
        ),
        (
            "redispatches_total",
            "Retries that went to another server.",
            |c| &c.redispatches,
        ),
        (
            "selected_total",
            "Times the server was given a request.",
            |c| &c.selected,
        ),
        (
            "client_aborts_total",
            "Transfers the client broke off (CH, CD).",
            |c| &c.client_aborts,
        ),
        (
            "server_aborts_total",
            "Transfers the server broke off (SD).",
            |c| &c.server_aborts,
        ),
    ];
    for (name, help, field) in all {
        if !kinds.contains(&name) {
            continue;
        }
        let family = format!("{scope}_{name}");
        out.family(&family, "counter", help);
        for (labels, c) in rows {
            out.sample(&family, labels, get(field(c)));
        }
    }
    let family = format!("{scope}_responses_total");
    out.family(&family, "counter", "Responses by status class.");
    for (labels, c) in rows {
        for (i, class) in CLASSES.iter().enumerate() {
            let mut l = labels.clone();
            l.push(("class", class));
            out.sample(&family, &l, get(&c.responses[i]));
        }
    }
    let family = format!("{scope}_request_duration_seconds");
    out.family(
        &family,
        "histogram",
        "Time from the first byte of a request to the last of its response.",
    );
    for (labels, c) in rows {
        out.histogram(&family, labels, &c.durations);
    }
}

/// The whole exposition.
pub fn render(control: &Control) -> String {
    let proxy = control.proxy();
    let mut out = Out(String::new());

    out.family("build_info", "gauge", "weir's version.");
    out.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    out.family("uptime_seconds", "gauge", "Seconds since weir started.");
    out.sample("uptime_seconds", &[], control.uptime().as_secs());
    out.family(
        "config_generation",
        "gauge",
        "The configuration generation serving: 1 at start, one more per reload.",
    );
    out.sample("config_generation", &[], control.generation());
    out.family("reloads_total", "counter", "Reloads, by result.");
    out.sample("reloads_total", &[("result", "ok")], get(&control.reloads));
    out.sample(
        "reloads_total",
        &[("result", "failed")],
        get(&control.reloads_failed),
    );

    // Frontends.
    out.family("frontend_connections", "gauge", "Client connections open.");
    for fe in &proxy.frontends {
        out.sample(
            "frontend_connections",
            &[("frontend", &fe.name)],
            get(&control.connections(&fe.name).0.open),
        );
    }
    let rows: Vec<(Vec<(&str, &str)>, &Counters)> = proxy
        .frontends
        .iter()
        .map(|fe| (vec![("frontend", &*fe.name)], &*fe.stats))
        .collect();
    counter_families(
        &mut out,
        "frontend",
        &rows,
        &[
            "requests_total",
            "bytes_in_total",
            "bytes_out_total",
            "denied_total",
            "request_errors_total",
            "client_aborts_total",
            "server_aborts_total",
        ],
    );

    // Backends.
    out.family(
        "backend_up",
        "gauge",
        "1 when at least one server of the backend can take requests.",
    );
    for b in &proxy.backends {
        let up = b.servers.iter().any(|s| s.available());
        out.sample("backend_up", &[("backend", &b.name)], u8::from(up));
    }
    out.family("backend_queue", "gauge", "Requests waiting for a server.");
    for b in &proxy.backends {
        out.sample("backend_queue", &[("backend", &b.name)], b.queue_len().0);
    }
    out.family(
        "backend_queue_max",
        "gauge",
        "Most requests ever waiting at once.",
    );
    for b in &proxy.backends {
        out.sample(
            "backend_queue_max",
            &[("backend", &b.name)],
            b.queue_len().1,
        );
    }
    let rows: Vec<(Vec<(&str, &str)>, &Counters)> = proxy
        .backends
        .iter()
        .map(|b| (vec![("backend", &*b.name)], &*b.stats))
        .collect();
    counter_families(
        &mut out,
        "backend",
        &rows,
        &[
            "requests_total",
            "bytes_in_total",
            "bytes_out_total",
            "denied_total",
            "connect_errors_total",
            "response_errors_total",
            "retries_total",
            "redispatches_total",
            "client_aborts_total",
            "server_aborts_total",
        ],
    );

    // Servers.
    let servers: Vec<_> = proxy
        .backends
        .iter()
        .flat_map(|b| b.servers.iter().map(move |s| (b, s)))
        .collect();
    out.family(
        "server_up",
        "gauge",
        "1 when health checks (or their absence) say the server is UP.",
    );
    for (b, s) in &servers {
        out.sample(
            "server_up",
            &[("backend", &b.name), ("server", &s.name)],
            u8::from(s.health.is_up()),
        );
    }
    out.family(
        "server_admin_state",
        "gauge",
        "The state an operator set: 1 for the current one of ready, drain and maint.",
    );
    for (b, s) in &servers {
        for state in AdminState::ALL {
            let name = state.name();
            out.sample(
                "server_admin_state",
                &[("backend", &b.name), ("server", &s.name), ("state", name)],
                u8::from(s.admin() == state),
            );
        }
    }
    out.family("server_weight", "gauge", "The weight the server has now.");
    for (b, s) in &servers {
        let l = [("backend", &*b.name), ("server", &*s.name)];
        out.sample("server_weight", &l, s.weight.load(Ordering::Relaxed));
    }
    out.family(
        "server_in_flight",
        "gauge",
        "Requests in flight on the server.",
    );
    for (b, s) in &servers {
        let l = [("backend", &*b.name), ("server", &*s.name)];
        out.sample("server_in_flight", &l, s.in_flight.load(Ordering::Relaxed));
    }
    // Health checks, for checked servers: one family at a time, as the format requires.
    let checked: Vec<_> = servers
        .iter()
        .filter(|(_, s)| s.cfg.health.is_some())
        .map(|(b, s)| (&*b.name, &*s.name, s.health.snapshot()))
        .collect();
    out.family(
        "server_check_failures_total",
        "counter",
        "Failed health checks.",
    );
    for (b, s, d) in &checked {
        out.sample(
            "server_check_failures_total",
            &[("backend", b), ("server", s)],
            d.check_failures,
        );
    }
    out.family(
        "server_down_transitions_total",
        "counter",
        "Times the server went DOWN.",
    );
    for (b, s, d) in &checked {
        out.sample(
            "server_down_transitions_total",
            &[("backend", b), ("server", s)],
            d.down_transitions,
        );
    }
    let last: Vec<_> = checked
        .iter()
        .filter_map(|(b, s, d)| d.last_check.as_ref().map(|c| (*b, *s, c)))
        .collect();
    out.family(
        "server_last_check_ok",
        "gauge",
        "1 when the last health check passed, 0 when it failed.",
    );
    for (b, s, c) in &last {
        out.sample(
            "server_last_check_ok",
            &[("backend", b), ("server", s)],
            u8::from(c.status.is_ok()),
        );
    }
    out.family(
        "server_last_check_duration_seconds",
        "gauge",
        "How long the last health check took.",
    );
    for (b, s, c) in &last {
        out.sample(
            "server_last_check_duration_seconds",
            &[("backend", b), ("server", s)],
            c.duration.as_secs_f64(),
        );
    }
    out.family(
        "server_last_check",
        "gauge",
        "The last health check's status, as HAProxy names it (L7OK, L4CON, ...).",
    );
    for (b, s, c) in &last {
        out.sample(
            "server_last_check",
            &[("backend", b), ("server", s), ("status", c.status.code())],
            1,
        );
    }
    let rows: Vec<(Vec<(&str, &str)>, &Counters)> = servers
        .iter()
        .map(|(b, s)| (vec![("backend", &*b.name), ("server", &*s.name)], &*s.stats))
        .collect();
    counter_families(
        &mut out,
        "server",
        &rows,
        &[
            "requests_total",
            "bytes_in_total",
            "bytes_out_total",
            "connect_errors_total",
            "response_errors_total",
            "retries_total",
            "redispatches_total",
            "selected_total",
            "client_aborts_total",
            "server_aborts_total",
        ],
    );

    // Plugins, each candidate version as a plugin of its own ("<name> (candidate)").
    let plugins: Vec<&std::sync::Arc<crate::plugin::Plugin>> = proxy
        .plugins
        .iter()
        .flat_map(|p| std::iter::once(p).chain(p.candidate.as_ref().map(|c| &c.plugin)))
        .collect();
    let plugins = &plugins;
    let plugin_counters: [Family<crate::plugin::PluginStats>; 4] = [
        ("plugin_calls_total", "Hook calls.", |p| &p.calls),
        ("plugin_traps_total", "Hook calls that trapped.", |p| {
            &p.traps
        }),
        (
            "plugin_timeouts_total",
            "Hook calls stopped at their CPU deadline.",
            |p| &p.timeouts,
        ),
        (
            "plugin_invalid_total",
            "Hook calls whose output was refused.",
            |p| &p.invalid,
        ),
    ];
    for (name, help, field) in plugin_counters {
        out.family(name, "counter", help);
        for p in plugins {
            out.sample(name, &[("plugin", &p.name)], get(field(&p.stats)));
        }
    }
    out.family(
        "plugin_candidate_comparisons_total",
        "counter",
        "A shadow candidate's decisions compared with its plugin's, by hook and outcome.",
    );
    for p in &proxy.plugins {
        if let Some(c) = p.candidate.as_ref() {
            for (hook, counts) in [
                ("on-request", &c.stats.request),
                ("on-response", &c.stats.response),
            ] {
                for (outcome, n) in counts.all() {
                    out.sample(
                        "plugin_candidate_comparisons_total",
                        &[("plugin", &p.name), ("hook", hook), ("outcome", outcome)],
                        n,
                    );
                }
            }
        }
    }
    out.family(
        "plugin_candidate_shadow_cpu_seconds_total",
        "counter",
        "CPU time a shadow candidate's calls used, apart from the requests they shadowed.",
    );
    for p in &proxy.plugins {
        if let Some(c) = p.candidate.as_ref() {
            out.sample(
                "plugin_candidate_shadow_cpu_seconds_total",
                &[("plugin", &p.name)],
                get(&c.stats.cpu_ns) as f64 / 1e9,
            );
        }
    }
    out.family(
        "plugin_candidate_running",
        "gauge",
        "1 while a plugin's candidate version runs, 0 once it was taken out.",
    );
    for p in &proxy.plugins {
        if let Some(c) = p.candidate.as_ref() {
            out.sample(
                "plugin_candidate_running",
                &[("plugin", &p.name), ("mode", c.mode.name())],
                u8::from(!c.aborted()),
            );
        }
    }
    out.family(
        "access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer could not keep up.",
    );
    out.sample("access_log_dropped_total", &[], control.log().dropped());
    out.family(
        "log_dropped_total",
        "counter",
        "weir's own log lines (stderr) dropped because stderr did not keep up.",
    );
    out.sample("log_dropped_total", &[], crate::logging::dropped());
    let (store, status) = match crate::state::store_status() {
        Some(s) => ("redis", s),
        None => ("memory", crate::state::StoreStatus::memory()),
    };
    let label = [("store", store)];
    out.family(
        "store_up",
        "gauge",
        "1 while plugins' shared state store answers (always 1 for the memory store).",
    );
    out.sample("store_up", &label, u8::from(status.up));
    out.family(
        "store_errors_total",
        "counter",
        "Exchanges with the shared state store that failed or timed out.",
    );
    out.sample("store_errors_total", &label, status.errors);
    out.family(
        "store_syncs_total",
        "counter",
        "Syncs that pushed counts to the shared state store and read totals back.",
    );
    out.sample("store_syncs_total", &label, status.syncs);
    out.family(
        "plugin_call_duration_seconds",
        "histogram",
        "Wall time of a hook call, waiting for an instance included.",
    );
    for p in plugins {
        out.histogram(
            "plugin_call_duration_seconds",
            &[("plugin", &p.name)],
            &p.stats.latency,
        );
    }
    out.family(
        "plugin_timeout_cpu_seconds_max",
        "gauge",
        "The most CPU time a call stopped at its deadline had used.",
    );
    for p in plugins {
        out.sample(
            "plugin_timeout_cpu_seconds_max",
            &[("plugin", &p.name)],
            get(&p.stats.timeout_cpu_max_ns) as f64 / 1e9,
        );
    }
    out.family(
        "plugin_pooled_instances",
        "gauge",
        "Configured instances ready in the plugin's pool.",
    );
    for p in plugins {
        out.sample(
            "plugin_pooled_instances",
            &[("plugin", &p.name)],
            p.pooled(),
        );
    }
    out.0
}
