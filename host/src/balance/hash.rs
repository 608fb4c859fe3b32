//! Hash-based algorithms (`source`, `uri`, `hdr:<name>`, `url_param:<name>`, `sni`) by weighted
//! rendezvous hashing: every server scores the key, the best score wins. Removing one of
//! N servers moves only the keys it held (about 1/N); weights are followed exactly in
//! expectation, without the imbalance of a ring with virtual nodes. A pick costs one
//! hash per usable server, which is small next to a request for any realistic backend.

use http::HeaderName;

use super::roundrobin::SmoothRoundRobin;
use super::{Balancer, RequestKey, Servers};

pub enum KeySource {
    Source,
    Uri,
    Header(HeaderName),
    UrlParam(String),
    Sni,
}

pub struct Rendezvous {
    source: KeySource,
    /// For requests without the key (no such header or parameter), as HAProxy does.
    fallback: SmoothRoundRobin,
}

impl Rendezvous {
    pub fn new(source: KeySource, n: usize) -> Self {
        Self {
            source,
            fallback: SmoothRoundRobin::new(n),
        }
    }

    fn key_hash(&self, key: &RequestKey<'_>) -> Option<u64> {
        match &self.source {
            KeySource::Source => Some(match key.client_ip {
                std::net::IpAddr::V4(ip) => hash_bytes(&ip.octets()),
                std::net::IpAddr::V6(ip) => hash_bytes(&ip.octets()),
            }),
            KeySource::Uri => Some(hash_bytes(key.path.as_bytes())),
            KeySource::Header(name) => key.headers.get(name).map(|v| hash_bytes(v.as_bytes())),
            KeySource::UrlParam(name) => {
                query_param(key.query?, name).map(|v| hash_bytes(v.as_bytes()))
            }
            KeySource::Sni => key.sni.map(|name| hash_bytes(name.as_bytes())),
        }
    }
}

/// The first value of `name` in a query string, as written (not percent-decoded).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// FNV-1a, then a finaliser so that near keys spread.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The splitmix64 finaliser: every input bit affects every output bit.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Weighted rendezvous score: weight / -ln(u) with u uniform in (0, 1) from the hash.
fn score(hash: u64, weight: u32) -> f64 {
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

impl Balancer for Rendezvous {
    fn pick(&self, servers: &dyn Servers, key: &RequestKey<'_>) -> Option<usize> {
        let Some(h) = self.key_hash(key) else {
            return self.fallback.pick(servers, key);
        };
        (0..servers.count())
            .filter(|&i| servers.usable(i))
            .map(|i| (i, score(mix64(h ^ servers.id_hash(i)), servers.weight(i))))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Fake, distribution};
    use super::*;

    #[test]
    fn uri_hash_follows_weights() {
        let servers = Fake::new(&[1, 2, 1]);
        let counts = distribution(&Rendezvous::new(KeySource::Uri, 3), &servers, 40_000);
        for (count, expected) in counts.iter().zip([10_000.0, 20_000.0, 10_000.0]) {
            assert!(
                (*count as f64 - expected).abs() / 40_000.0 < 0.02,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn removing_one_server_moves_only_its_keys() {
        let mut servers = Fake::new(&[1, 1, 1, 1, 1]);
        let b = Rendezvous::new(KeySource::Uri, 5);
        let paths: Vec<String> = (0..10_000).map(|i| format!("/item/{i}")).collect();
        let before: Vec<usize> = paths
            .iter()
            .map(|p| b.pick(&servers, &super::super::fake::key(p)).unwrap())
            .collect();
        servers.usable[2] = false;
        let mut moved = 0;
        for (p, &was) in paths.iter().zip(&before) {
            let now = b.pick(&servers, &super::super::fake::key(p)).unwrap();
            if now != was {
                assert_eq!(was, 2, "a key moved off a server that stayed");
                moved += 1;
            }
        }
        assert!(moved as f64 <= 1.5 * 10_000.0 / 5.0, "moved {moved}");
    }

    #[test]
    fn query_param_finds_the_value() {
        assert_eq!(query_param("a=1&user=bob&c", "user"), Some("bob"));
        assert_eq!(query_param("a=1&c", "c"), Some(""));
        assert_eq!(query_param("a=1", "user"), None);
    }
}
