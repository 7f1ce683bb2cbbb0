//! Time adapters: how instants are written in every document Lifeline stores or
//! serves (snapshots, decisions, overrides, audit entries, status).

use std::time::{Duration, SystemTime};

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST: Duration = Duration::from_millis(253_402_300_799_999);

/// `t` as RFC 3339 text. Instants outside what the format can hold (before 1970 or
/// after 9999, which only a broken clock or hostile input produces) are written as the
/// nearest one it can, instead of failing the whole document.
pub fn format(t: SystemTime) -> impl std::fmt::Display {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .min(LAST);
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + since)
}

/// Serde adapter: `SystemTime` as an RFC 3339 string, readable in files and logs.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&super::format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn instants_outside_the_format_are_written_at_its_edges() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            super::format(before).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(super::format(after).to_string(), "9999-12-31T23:59:59.999Z");
    }
}
