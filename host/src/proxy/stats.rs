//! Traffic counters per frontend, backend and server, as HAProxy's stats count them:
//! kept with atomics, added to once per request when it ends (with its access log record).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::log::LogRecord;

/// One proxy's or server's counters.
#[derive(Default)]
pub struct Counters {
    /// Requests that ended (`stot`).
    pub requests: AtomicU64,
    /// Response bytes sent to clients (`bout`).
    pub bytes_out: AtomicU64,
    /// Requests a plugin answered with a 4xx or 5xx of its own: denied (`dreq`).
    pub denied: AtomicU64,
    /// Requests refused as malformed or unsupported (`ereq`).
    pub request_errors: AtomicU64,
    /// Requests that found no server or could not connect to one (`econ`).
    pub connect_errors: AtomicU64,
    /// Responses that failed or timed out on the server side (`eresp`).
    pub response_errors: AtomicU64,
    /// Attempts made again after a failed one (`wretr`).
    pub retries: AtomicU64,
    /// Retries that went to another server (`wredis`).
    pub redispatches: AtomicU64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other (`hrsp_*`).
    pub responses: [AtomicU64; 6],
    /// Times the balancer (or a plugin) gave a server a request (`lbtot`).
    pub selected: AtomicU64,
    /// Most requests in flight at once (`smax`).
    pub max_in_flight: AtomicU64,
    /// How long requests took, from the first byte of the request to the last of the
    /// response.
    pub durations: Histogram,
}

/// Upper bounds of the request duration buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Request durations in [`DURATION_BUCKETS`] (each bucket counts only its own range; the
/// last slot is above the largest bound).
#[derive(Default)]
pub struct Histogram {
    pub buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    pub sum_us: AtomicU64,
    pub count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Counters {
    fn add(&self, r: &LogRecord, took: std::time::Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.durations.observe(took);
        self.bytes_out.fetch_add(r.bytes, Ordering::Relaxed);
        let class = match r.status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let error = match &r.termination {
            b"LR" if r.status >= 400 => Some(&self.denied),
            b"PR" => Some(&self.request_errors),
            b"SC" => Some(&self.connect_errors),
            b"SH" | b"sH" | b"SD" => Some(&self.response_errors),
            _ => None,
        };
        if let Some(error) = error {
            error.fetch_add(1, Ordering::Relaxed);
        }
        self.retries
            .fetch_add(u64::from(r.retries), Ordering::Relaxed);
        self.redispatches
            .fetch_add(u64::from(r.redispatches), Ordering::Relaxed);
    }
}

/// A counter's value, for the statistics pages.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Client connections open on one frontend, and the most at once (`scur`, `smax`).
#[derive(Default)]
pub struct Gauge {
    pub open: AtomicU64,
    pub max: AtomicU64,
}

impl Gauge {
    pub fn enter(&self) {
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(now, Ordering::Relaxed);
    }

    pub fn leave(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters a request adds to when it ends: its frontend's, and those of the backend
/// and server it went to, once known.
#[derive(Clone, Default)]
pub struct Tally {
    pub frontend: Option<Arc<Counters>>,
    pub backend: Option<Arc<Counters>>,
    pub server: Option<Arc<Counters>>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tally")
    }
}

impl Tally {
    pub fn count(&self, r: &LogRecord) {
        let took = r.tq + r.start.elapsed();
        for c in [&self.frontend, &self.backend, &self.server]
            .into_iter()
            .flatten()
        {
            c.add(r, took);
        }
    }
}
