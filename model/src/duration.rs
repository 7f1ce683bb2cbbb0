//! Human-readable durations as used in Kubernetes manifests: `"500ms"`, `"30s"`, `"1m30s"`.
//!
//! The accepted grammar is the one Go's `time.ParseDuration` accepts for non-negative
//! values: one or more `<number><unit>` pairs with units `ns`, `us`, `ms`, `s`, `m`, `h`,
//! no spaces. The CRD schema carries the same rule as a `pattern`, so the API server
//! rejects what this module rejects. Numbers are handed to `humantime` for the arithmetic.

use std::{borrow::Cow, fmt, time::Duration as StdDuration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The regular expression (ECMA-262 flavour, as used by OpenAPI) that the schema enforces.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// Longest duration text accepted ("1h30m15s500ms" is 13).
pub const MAX_TEXT: usize = 32;

/// A duration kept as the string the operator wrote, parsed on demand.
///
/// Keeping the text means a document round-trips unchanged and a bad value is reported
/// with its field path by validation instead of failing deserialisation of the whole
/// document at the first problem.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

impl Duration {
    /// Wraps a duration string without checking it; see [`Duration::parse`].
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text, explaining what is wrong when it is not a valid duration.
    pub fn parse(&self) -> Result<StdDuration, InvalidDuration> {
        parse_duration(&self.0)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": MAX_TEXT,
            "description": "A duration such as \"500ms\", \"30s\", \"5m\" or \"1h30m\"."
        })
    }
}

/// Serde adapter for settings that are parsed once, when the file is read: a
/// `std::time::Duration` written in the same grammar (`"500ms"`, `"10s"`), so a bad value
/// fails decoding with its field path and the code using it never parses again.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

/// Why a text is not a duration; the message is what an operator reads beside the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDuration {
    /// Not the grammar: a sign, a space, a missing number or an unknown unit.
    #[error(
        "invalid duration {text:?}: expected a number and unit such as \"500ms\", \"30s\", \"5m\" or \"1h30m\" (units ns, us, ms, s, m, h)"
    )]
    Syntax { text: String },
    /// Longer than [`MAX_TEXT`] characters.
    #[error("invalid duration: {len} characters long; the limit is {MAX_TEXT}")]
    TooLong { len: usize },
}

/// Parses a Go-style duration (`"1m30s"`), rejecting signs, spaces and unknown units.
pub fn parse_duration(text: &str) -> Result<StdDuration, InvalidDuration> {
    let bad = || InvalidDuration::Syntax {
        text: text.to_owned(),
    };
    if text.is_empty() {
        return Err(bad());
    }
    if text.len() > MAX_TEXT {
        return Err(InvalidDuration::TooLong { len: text.len() });
    }
    // humantime accepts a wider language ("5 minutes", "1sec"); check the narrow grammar
    // first so the Rust check and the schema pattern agree.
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let frac = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i == frac {
                return Err(bad());
            }
        }
        let unit = &text[i..];
        let len = ["ns", "us", "ms", "h", "m", "s"]
            .iter()
            .find(|u| unit.starts_with(**u))
            .map(|u| u.len())
            .ok_or_else(bad)?;
        i += len;
    }
    if text.contains('.') {
        // humantime has no fractions; compute those pairs ourselves.
        return parse_with_fractions(text).ok_or_else(bad);
    }
    humantime::parse_duration(text).map_err(|_| bad())
}

fn parse_with_fractions(text: &str) -> Option<StdDuration> {
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let (unit_secs, unit_len) = [
            ("ns", 1e-9),
            ("us", 1e-6),
            ("ms", 1e-3),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ]
        .iter()
        .find(|(u, _)| rest.starts_with(u))
        .map(|(u, s)| (*s, u.len()))?;
        total += value * unit_secs;
        rest = &rest[unit_len..];
    }
    StdDuration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_style_durations() {
        let cases = [
            ("500ms", StdDuration::from_millis(500)),
            ("30s", StdDuration::from_secs(30)),
            ("5m", StdDuration::from_secs(300)),
            ("1h30m", StdDuration::from_secs(5400)),
            ("1.5s", StdDuration::from_millis(1500)),
            ("0s", StdDuration::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_prose_signs_and_unknown_units() {
        for text in [
            "",
            "5 minutes",
            "-1s",
            "10",
            "s",
            "1d",
            "1.s",
            "5sec",
            " 5s",
            "1m 30s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be rejected");
        }
    }
}
