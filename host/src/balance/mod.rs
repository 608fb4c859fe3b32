//! Choosing a server within a backend. One trait, one file per algorithm family.
//!
//! A balancer sees the servers through [`Servers`]: which may take a request now, their
//! weights and their in-flight counts. Everything that makes a server unusable (excluded
//! after a failed attempt, weight 0, at its maxconn, down) is decided by the caller, so
//! the algorithms stay small and are unit-tested against a plain fake.

mod first;
mod hash;
mod leastconn;
mod random;
mod roundrobin;

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::Balance;

pub use hash::hash_bytes;
pub use random::random_unit;
pub use roundrobin::SmoothRoundRobin as RoundRobin;

/// The servers of one backend as a balancer sees them at the moment of a pick.
pub trait Servers {
    fn count(&self) -> usize;
    /// May take this request now.
    fn usable(&self, i: usize) -> bool;
    /// Current effective weight (> 0 for every usable server).
    fn weight(&self, i: usize) -> u32;
    /// Requests currently in flight on the server.
    fn in_flight(&self, i: usize) -> u32;
    /// A stable hash of the server's name, so hashing survives reordering the config.
    fn id_hash(&self, i: usize) -> u64;
}

/// What hash-based algorithms may read from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestKey<'a> {
    pub client_ip: IpAddr,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The TLS ClientHello's server name, on a tcp frontend that reads it.
    pub sni: Option<&'a str>,
}

pub trait Balancer: Send + Sync {
    /// The index of the chosen server, or None when no server is usable.
    fn pick(&self, servers: &dyn Servers, key: &RequestKey<'_>) -> Option<usize>;
}

/// Builds the balancer for a backend; `weights` are the configured weights, used by the
/// algorithms that plan ahead (static-rr).
pub fn build(balance: &Balance, weights: &[u32]) -> Box<dyn Balancer> {
    let n = weights.len();
    match balance {
        Balance::RoundRobin => Box::new(roundrobin::SmoothRoundRobin::new(n)),
        Balance::StaticRr => Box::new(roundrobin::StaticRoundRobin::new(weights)),
        Balance::LeastConn => Box::new(leastconn::LeastConn::new(n)),
        Balance::Random => Box::new(random::PowerOfTwo),
        Balance::Source => Box::new(hash::Rendezvous::new(hash::KeySource::Source, n)),
        Balance::Uri => Box::new(hash::Rendezvous::new(hash::KeySource::Uri, n)),
        Balance::Hdr(name) => Box::new(hash::Rendezvous::new(
            hash::KeySource::Header(name.clone()),
            n,
        )),
        Balance::UrlParam(name) => Box::new(hash::Rendezvous::new(
            hash::KeySource::UrlParam(name.clone()),
            n,
        )),
        Balance::First => Box::new(first::First),
        Balance::Sni => Box::new(hash::Rendezvous::new(hash::KeySource::Sni, n)),
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// A backend in a test: weights, in-flight counts, and which servers are usable.
    pub struct Fake {
        pub weights: Vec<u32>,
        pub in_flight: Vec<u32>,
        pub usable: Vec<bool>,
        pub names: Vec<String>,
    }

    impl Fake {
        pub fn new(weights: &[u32]) -> Self {
            Self {
                weights: weights.to_vec(),
                in_flight: vec![0; weights.len()],
                usable: vec![true; weights.len()],
                names: (0..weights.len()).map(|i| format!("s{i}")).collect(),
            }
        }
    }

    impl Servers for Fake {
        fn count(&self) -> usize {
            self.weights.len()
        }
        fn usable(&self, i: usize) -> bool {
            self.usable[i] && self.weights[i] > 0
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn in_flight(&self, i: usize) -> u32 {
            self.in_flight[i]
        }
        fn id_hash(&self, i: usize) -> u64 {
            hash_bytes(self.names[i].as_bytes())
        }
    }

    pub fn key(path: &str) -> RequestKey<'_> {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        RequestKey {
            client_ip: IpAddr::from([127, 0, 0, 1]),
            path,
            query: None,
            headers: EMPTY.get_or_init(HeaderMap::new),
            sni: None,
        }
    }

    /// Counts picks per server over `n` sequential requests with distinct paths.
    pub fn distribution(b: &dyn Balancer, servers: &Fake, n: usize) -> Vec<usize> {
        let mut counts = vec![0; servers.count()];
        for i in 0..n {
            let path = format!("/k/{i}");
            counts[b.pick(servers, &key(&path)).expect("a server")] += 1;
        }
        counts
    }
}
