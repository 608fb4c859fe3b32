//! Traffic counters per frontend, backend and server, as HAProxy's stats count them:
//! kept with atomics, added to once per request when it ends (`proxy::log::Tally` adds a
//! request's [`Ended`] to its frontend's, backend's and server's).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// One proxy's or server's counters.
#[derive(Default)]
pub struct Counters {
    /// Requests that ended (`stot`).
    pub requests: AtomicU64,
    /// Request bytes received from clients, head and body (`bin`).
    pub bytes_in: AtomicU64,
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
    /// Transfers the client broke off: it went away while the server was answering
    /// (`CH`) or while data was moving either way (`CD`) (`cli_abrt`).
    pub client_aborts: AtomicU64,
    /// Transfers the server broke off while data was moving (`SD`) (`srv_abrt`).
    pub server_aborts: AtomicU64,
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

/// Upper bounds of the plugin hook call duration buckets, in seconds: 1 µs to 100 ms.
pub const HOOK_BUCKETS: [f64; 16] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1,
];

/// Durations counted in buckets with the given upper bounds (each bucket counts only its
/// own range; the last slot is above the largest bound).
pub struct Histogram {
    bounds: &'static [f64],
    pub buckets: Box<[AtomicU64]>,
    pub sum_us: AtomicU64,
    pub count: AtomicU64,
}

impl Default for Histogram {
    /// Request durations: [`DURATION_BUCKETS`].
    fn default() -> Self {
        Self::new(&DURATION_BUCKETS)
    }
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// The buckets' upper bounds, in seconds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0 to 1) in seconds, interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does; the largest bound when it falls above it. None when
    /// nothing was observed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(read).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        self.bounds.last().copied()
    }
}

/// What one ended request adds to counters.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// From the first byte of the request to the last of the response.
    pub took: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub status: u16,
    /// HAProxy's termination state (`--`, `SC`, `PR`, ...).
    pub termination: [u8; 2],
    pub retries: u32,
    pub redispatches: u32,
}

impl Counters {
    pub fn add(&self, r: &Ended) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.durations.observe(r.took);
        self.bytes_out.fetch_add(r.bytes_out, Ordering::Relaxed);
        self.bytes_in.fetch_add(r.bytes_in, Ordering::Relaxed);
        let class = match r.status {
            // No response: a tcp connection, or a request its client left.
            0 => None,
            100..=199 => Some(0),
            200..=299 => Some(1),
            300..=399 => Some(2),
            400..=499 => Some(3),
            500..=599 => Some(4),
            _ => Some(5),
        };
        if let Some(class) = class {
            self.responses[class].fetch_add(1, Ordering::Relaxed);
        }
        let error = match &r.termination {
            // A plugin's refusal: a 4xx or 5xx of its own, or a connection it closed.
            b"LR" if r.status >= 400 || r.status == 0 => Some(&self.denied),
            b"PR" => Some(&self.request_errors),
            b"SC" => Some(&self.connect_errors),
            b"SH" | b"sH" | b"SD" => Some(&self.response_errors),
            _ => None,
        };
        if let Some(error) = error {
            error.fetch_add(1, Ordering::Relaxed);
        }
        // As HAProxy counts them: a timeout (`cD`, `sD`) is not an abort, and an error
        // the server made is an abort too (`SD` counts in both).
        let abort = match &r.termination {
            b"CH" | b"CD" => Some(&self.client_aborts),
            b"SD" => Some(&self.server_aborts),
            _ => None,
        };
        if let Some(abort) = abort {
            abort.fetch_add(1, Ordering::Relaxed);
        }
        // Most requests have neither: an atomic add of zero costs as much as any other.
        if r.retries > 0 {
            self.retries
                .fetch_add(u64::from(r.retries), Ordering::Relaxed);
        }
        if r.redispatches > 0 {
            self.redispatches
                .fetch_add(u64::from(r.redispatches), Ordering::Relaxed);
        }
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

    /// One fewer; how many were open before.
    pub fn leave(&self) -> u64 {
        self.open.fetch_sub(1, Ordering::AcqRel)
    }

    pub fn now(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }
}

/// The client connections open now on the whole process and on one frontend (the access
/// log's %ac and %fc).
#[derive(Clone, Default)]
pub struct Open {
    pub process: Arc<Gauge>,
    pub frontend: Arc<Gauge>,
}

/// Client connections open now per client IP address, on every frontend: what plugins'
/// connection limits read (the `connections` import, and `on-connect`).
pub struct PerClient {
    shards: [std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>; 16],
}

/// The process's count of client connections per address.
pub fn per_client() -> &'static PerClient {
    static COUNTS: std::sync::OnceLock<PerClient> = std::sync::OnceLock::new();
    COUNTS.get_or_init(|| PerClient {
        shards: std::array::from_fn(|_| Default::default()),
    })
}

impl PerClient {
    fn shard(
        &self,
        ip: std::net::IpAddr,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, u32>> {
        let bytes = match ip {
            std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
            std::net::IpAddr::V6(v6) => {
                let o = v6.octets();
                u64::from_le_bytes(o[8..].try_into().expect("eight bytes"))
            }
        };
        let i = (bytes.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more from `ip`: the count with it, and the guard that takes it away.
    pub fn enter(&'static self, ip: std::net::IpAddr) -> (u32, ClientConn) {
        let mut shard = self.shard(ip);
        let n = shard.entry(ip).or_insert(0);
        *n += 1;
        (*n, ClientConn(ip, self))
    }

    /// Connections open now from `ip`.
    pub fn open(&self, ip: std::net::IpAddr) -> u32 {
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }
}

/// One client connection counted in [`PerClient`], until it drops.
pub struct ClientConn(std::net::IpAddr, &'static PerClient);

impl Drop for ClientConn {
    fn drop(&mut self) {
        let mut shard = self.1.shard(self.0);
        if let Some(n) = shard.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = Histogram::new(&HOOK_BUCKETS);
        assert_eq!(h.quantile(0.5), None);
        // 98 calls of 3 µs (bucket 2.5–5 µs), 2 of 2 ms (bucket 1–2.5 ms).
        for _ in 0..98 {
            h.observe(Duration::from_micros(3));
        }
        for _ in 0..2 {
            h.observe(Duration::from_millis(2));
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((2.5e-6..=5e-6).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!((1e-3..=2.5e-3).contains(&p99), "{p99}");
        h.observe(Duration::from_secs(1));
        assert_eq!(h.quantile(1.0), Some(0.1), "above the largest bound");
    }
}
