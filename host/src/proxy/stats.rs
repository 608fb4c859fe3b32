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
}

impl Counters {
    fn add(&self, r: &LogRecord) {
        self.requests.fetch_add(1, Ordering::Relaxed);
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
        let errors = match &r.termination {
            b"LR" if r.status >= 400 => &self.denied,
            b"PR" => &self.request_errors,
            b"SC" => &self.connect_errors,
            b"SH" | b"sH" | b"SD" => &self.response_errors,
            _ => return self.add_retries(r),
        };
        errors.fetch_add(1, Ordering::Relaxed);
        self.add_retries(r);
    }

    fn add_retries(&self, r: &LogRecord) {
        self.retries
            .fetch_add(u64::from(r.retries), Ordering::Relaxed);
        self.redispatches
            .fetch_add(u64::from(r.redispatches), Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
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
        for c in [&self.frontend, &self.backend, &self.server]
            .into_iter()
            .flatten()
        {
            c.add(r);
        }
    }
}
