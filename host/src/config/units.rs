//! Durations and sizes as the config writes them: `"250ms"`, `"3s"`, `"16MiB"`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration as written (`"250ms"`), parsed by validation so that its error joins the others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dur(pub String);

/// A size as written (`"16MiB"`), parsed by validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size(pub String);

/// Parses `"250ms"`, `"1.5s"`, `"2m"`. Zero is allowed here; callers that need a positive
/// duration say so with the key path.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\": expected a number and a unit (us, ms, s, m, h, d), e.g. \"250ms\""))?;
    let seconds_per_unit = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => {
            return Err(format!(
                "invalid duration \"{text}\": a unit is required (us, ms, s, m, h, d), e.g. \"{text}s\""
            ));
        }
        other => {
            return Err(format!(
                "invalid duration \"{text}\": unknown unit \"{other}\" (use us, ms, s, m, h or d)"
            ));
        }
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&seconds) {
        return Err(format!("invalid duration \"{text}\": out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `"64KiB"`, `"16MiB"`, `"512B"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size \"{text}\": expected a whole number and a unit (B, KiB, MiB, GiB), e.g. \"64KiB\""))?;
    let multiplier: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "" => {
            return Err(format!(
                "invalid size \"{text}\": a unit is required (B, KiB, MiB, GiB), e.g. \"{text}KiB\""
            ));
        }
        other => {
            return Err(format!(
                "invalid size \"{text}\": unknown unit \"{other}\" (use B, KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size \"{text}\": out of range"))
}

fn split_number(text: &str) -> (&str, &str) {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    (&text[..split], text[split..].trim())
}

/// Accepts only strings, and says what was meant when given a bare number.
struct Text(&'static str, &'static str);

impl Visitor<'_> for Text {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as a string with a unit, e.g. \"{}\"", self.0, self.1)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Err(E::custom(format!(
            "expected {} as a string with a unit, e.g. \"{v}{}\"",
            self.0,
            self.1.trim_start_matches(char::is_numeric)
        )))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Text("a duration", "5s")).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Text("a size", "64KiB")).map(Size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
    }

    #[test]
    fn durations_without_a_known_unit_are_rejected() {
        assert!(
            parse_duration("5")
                .unwrap_err()
                .contains("unit is required")
        );
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("2kB"), Ok(2000));
        assert!(parse_size("1.5MiB").is_err());
        assert!(
            parse_size("99999999999999GiB")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
