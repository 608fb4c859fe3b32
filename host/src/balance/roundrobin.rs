//! Round robin: smooth weighted (`roundrobin`, follows weight changes at once) and static
//! (`static-rr`, a schedule planned once from the configured weights).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, RequestKey, Servers};

/// Smooth weighted round robin: each pick adds every usable server's weight to its
/// credit, takes the server with the most credit and charges it the total. Picks
/// interleave (5:1:1 gives a a b a c a a, not a a a a a b c) and follow the weights exactly.
pub struct SmoothRoundRobin {
    credit: Mutex<Vec<i64>>,
}

impl SmoothRoundRobin {
    pub fn new(n: usize) -> Self {
        Self {
            credit: Mutex::new(vec![0; n]),
        }
    }

    /// Picks among the servers for which `eligible` holds (all usable ones by default).
    pub fn pick_where(
        &self,
        servers: &dyn Servers,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        if credit.len() != servers.count() {
            credit.resize(servers.count(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..servers.count() {
            if !eligible(i) {
                continue;
            }
            let w = i64::from(servers.weight(i));
            credit[i] += w;
            total += w;
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        credit[b] -= total;
        Some(b)
    }
}

impl Balancer for SmoothRoundRobin {
    fn pick(&self, servers: &dyn Servers, _key: &RequestKey<'_>) -> Option<usize> {
        self.pick_where(servers, |i| servers.usable(i))
    }
}

/// A fixed schedule of server indices computed once from the configured weights; each
/// pick takes the next usable entry. Cheaper than smooth round robin (no lock), but
/// ignores weight changes made at run time, as HAProxy's static-rr does.
pub struct StaticRoundRobin {
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl StaticRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut credit = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                credit[i] += i64::from(w);
                if credit[i] > credit[best] {
                    best = i;
                }
            }
            credit[best] -= total as i64;
            schedule.push(best);
        }
        Self {
            schedule,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balancer for StaticRoundRobin {
    fn pick(&self, servers: &dyn Servers, _key: &RequestKey<'_>) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[(start + k) % len])
            .find(|&i| i < servers.count() && servers.usable(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Fake, distribution, key};
    use super::*;

    #[test]
    fn smooth_round_robin_follows_weights_exactly() {
        let servers = Fake::new(&[1, 2, 3]);
        let counts = distribution(&SmoothRoundRobin::new(3), &servers, 600);
        assert_eq!(counts, vec![100, 200, 300]);
    }

    #[test]
    fn smooth_round_robin_interleaves() {
        let servers = Fake::new(&[5, 1, 1]);
        let rr = SmoothRoundRobin::new(3);
        let seq: Vec<usize> = (0..7)
            .map(|_| rr.pick(&servers, &key("/")).unwrap())
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_unusable_servers() {
        let mut servers = Fake::new(&[1, 1, 1]);
        servers.usable[1] = false;
        let counts = distribution(&SmoothRoundRobin::new(3), &servers, 100);
        assert_eq!(counts, vec![50, 0, 50]);
        servers.usable = vec![false; 3];
        assert_eq!(SmoothRoundRobin::new(3).pick(&servers, &key("/")), None);
    }

    #[test]
    fn static_round_robin_follows_configured_weights() {
        let servers = Fake::new(&[1, 3]);
        let counts = distribution(&StaticRoundRobin::new(&[1, 3]), &servers, 400);
        assert_eq!(counts, vec![100, 300]);
    }
}
