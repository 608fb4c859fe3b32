//! `random`: power of two choices. Two servers drawn at random by weight; the less loaded
//! one (in flight ÷ weight) wins. Spreads like random, avoids hot spots like leastconn.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use super::{Balancer, RequestKey, Servers};

pub struct PowerOfTwo;

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        h.finish() | 1
    });
}

/// xorshift64*: fast, and good enough for choosing servers.
fn next_u64() -> u64 {
    RNG.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A uniform random number in [0, 1), for jitter.
pub fn random_unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn weighted_draw(servers: &dyn Servers, total: u64) -> Option<usize> {
    let mut r = next_u64() % total;
    for i in 0..servers.count() {
        if !servers.usable(i) {
            continue;
        }
        let w = u64::from(servers.weight(i));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

impl Balancer for PowerOfTwo {
    fn pick(&self, servers: &dyn Servers, _key: &RequestKey<'_>) -> Option<usize> {
        let total: u64 = (0..servers.count())
            .filter(|&i| servers.usable(i))
            .map(|i| u64::from(servers.weight(i)))
            .sum();
        if total == 0 {
            return None;
        }
        let a = weighted_draw(servers, total)?;
        let b = weighted_draw(servers, total)?;
        // in_flight(b)/weight(b) < in_flight(a)/weight(a), without division.
        let b_less_loaded = u64::from(servers.in_flight(b)) * u64::from(servers.weight(a))
            < u64::from(servers.in_flight(a)) * u64::from(servers.weight(b));
        Some(if b_less_loaded { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Fake, distribution, key};
    use super::*;

    #[test]
    fn follows_weights_when_idle() {
        let servers = Fake::new(&[1, 2, 1]);
        let counts = distribution(&PowerOfTwo, &servers, 40_000);
        for (count, expected) in counts.iter().zip([10_000.0, 20_000.0, 10_000.0]) {
            assert!(
                (*count as f64 - expected).abs() / 40_000.0 < 0.02,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let mut servers = Fake::new(&[1, 1]);
        servers.in_flight = vec![10, 0];
        let counts = distribution(&PowerOfTwo, &servers, 1000);
        // Server 0 wins only when drawn twice: about a quarter of the time.
        assert!(counts[0] < 350 && counts[1] > 650, "{counts:?}");
        servers.usable[1] = false;
        assert_eq!(PowerOfTwo.pick(&servers, &key("/")), Some(0));
    }
}
