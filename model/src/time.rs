//! Time adapters: how instants are written in every document Lifeline stores or
//! serves (snapshots, decisions, overrides, audit entries, status).

/// Serde adapter: `SystemTime` as an RFC 3339 string, readable in files and logs.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(D::Error::custom)
    }
}
