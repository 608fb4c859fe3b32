//! Helpers the stock plugins share and plugin authors tend to need: values that may be
//! one or a list, CIDR blocks, durations written as text, and cookies.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

/// A config value written either as one item or as a list of them (any of which may match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            // A list is tried first, so a list of JSON values is a list, not one value.
            Many(Vec<T>),
            One(T),
        }
        match Either::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a value or a list of values"))?
        {
            Either::One(v) => Ok(OneOrMany(vec![v])),
            Either::Many(v) => Ok(OneOrMany(v)),
        }
    }
}

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("\"{text}\" is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{text}\": the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `ip` (as weir writes a client address) lies in any of `blocks`.
pub fn in_any(blocks: &[Cidr], ip: &str) -> bool {
    // No blocks, no parse: parsing an address costs more than the rest of most hooks.
    !blocks.is_empty()
        && ip
            .parse::<IpAddr>()
            .is_ok_and(|ip| blocks.iter().any(|b| b.contains(ip)))
}

/// A duration written as text, as in weir's own config: `"250ms"`, `"10s"`, `"5m"`, `"1h"`,
/// `"1d"`, or a bare number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub u64);

impl Millis {
    pub fn parse(text: &str) -> Result<Millis, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("\"{text}\" is not a duration (e.g. \"10s\")"))?;
        let scale = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("\"{text}\": unknown unit (use ms, s, m, h or d)")),
        };
        n.checked_mul(scale)
            .map(Millis)
            .ok_or_else(|| format!("\"{text}\" is too long"))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration such as \"10s\""))?
        {
            Raw::Number(n) => Ok(Millis(n)),
            Raw::Text(t) => Millis::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// The `name=value` pairs of `Cookie` header values, in order.
pub fn cookies<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    values.into_iter().flat_map(|v| {
        v.split(';').filter_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((n.trim(), v))
        })
    })
}

impl crate::Request {
    /// Every value of a header, in order (names are matched case-insensitively).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// The value of a cookie the request carries.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        cookies(self.headers_named("cookie"))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The value of a query parameter, as written (not percent-decoded); `Some("")` for a
    /// parameter without a value.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (n == name).then_some(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks() {
        let b = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(b.contains("10.2.3.4".parse().unwrap()));
        assert!(!b.contains("11.0.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.9.9.9".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope/8").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(Millis::parse("10s"), Ok(Millis(10_000)));
        assert_eq!(Millis::parse("250ms"), Ok(Millis(250)));
        assert_eq!(Millis::parse("2m"), Ok(Millis(120_000)));
        assert_eq!(Millis::parse("1500"), Ok(Millis(1500)));
        assert!(Millis::parse("10 parsecs").is_err());
        assert!(Millis::parse("s").is_err());
    }

    #[test]
    fn cookie_pairs() {
        let got: Vec<_> = cookies(["a=1; b=\"two\"", "c=3;bad; d="]).collect();
        assert_eq!(got, [("a", "1"), ("b", "two"), ("c", "3"), ("d", "")]);
    }

    #[test]
    fn one_or_many() {
        let one: OneOrMany<String> = serde_json::from_str("\"x\"").unwrap();
        assert_eq!(one.0, ["x"]);
        let many: OneOrMany<String> = serde_json::from_str("[\"x\", \"y\"]").unwrap();
        assert_eq!(many.0, ["x", "y"]);
        assert!(serde_json::from_str::<OneOrMany<String>>("3").is_err());
    }
}
