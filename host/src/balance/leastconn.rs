//! `leastconn`: the server with the fewest in-flight requests relative to its weight;
//! ties (the common case at low load) go round robin by weight, so weights hold then too.

use super::roundrobin::SmoothRoundRobin;
use super::{Balancer, RequestKey, Servers};

pub struct LeastConn {
    ties: SmoothRoundRobin,
}

impl LeastConn {
    pub fn new(n: usize) -> Self {
        Self {
            ties: SmoothRoundRobin::new(n),
        }
    }
}

/// a/wa < b/wb without division.
fn less_loaded(servers: &dyn Servers, a: usize, b: usize) -> bool {
    u64::from(servers.in_flight(a)) * u64::from(servers.weight(b))
        < u64::from(servers.in_flight(b)) * u64::from(servers.weight(a))
}

fn equally_loaded(servers: &dyn Servers, a: usize, b: usize) -> bool {
    !less_loaded(servers, a, b) && !less_loaded(servers, b, a)
}

impl Balancer for LeastConn {
    fn pick(&self, servers: &dyn Servers, _key: &RequestKey<'_>) -> Option<usize> {
        let least = (0..servers.count())
            .filter(|&i| servers.usable(i))
            .reduce(|best, i| {
                if less_loaded(servers, i, best) {
                    i
                } else {
                    best
                }
            })?;
        self.ties.pick_where(servers, |i| {
            servers.usable(i) && equally_loaded(servers, i, least)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Fake, distribution, key};
    use super::*;

    #[test]
    fn picks_the_least_loaded_relative_to_weight() {
        let mut servers = Fake::new(&[1, 2]);
        servers.in_flight = vec![1, 1];
        // 1/1 vs 1/2: the heavier server is less loaded.
        assert_eq!(LeastConn::new(2).pick(&servers, &key("/")), Some(1));
        servers.in_flight = vec![0, 3];
        assert_eq!(LeastConn::new(2).pick(&servers, &key("/")), Some(0));
    }

    #[test]
    fn ties_follow_weights() {
        let servers = Fake::new(&[1, 3]);
        assert_eq!(
            distribution(&LeastConn::new(2), &servers, 400),
            vec![100, 300]
        );
    }
}
