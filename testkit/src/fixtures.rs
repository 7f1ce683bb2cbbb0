//! Fixtures that tests of several crates share: the zone most tests serve, the YAML
//! text of `lifeline.yaml` entries and policy documents, and an override.
//!
//! ```text
//!  ZONE / zone_config()   global.example.com, SOA ns1, NS ns1 + ns2  (lifeline-dns)
//!  zone_line(origin)      the same shape as one `zones:` entry of lifeline.yaml
//!  static_cluster(..)     a MemberCluster document with a fixed address
//!  drain(cluster)         a ten-minute drain override, set now
//! ```

use std::{
    fmt::Display,
    time::{Duration, SystemTime},
};

use lifeline_dns::ZoneConfig;
use lifeline_model::{Override, OverrideAction};

// === the DNS zone ===

/// The zone the DNS shim's and the etcd source's tests serve.
pub const ZONE: &str = "global.example.com";

/// [`ZONE`] with SOA primary `ns1` and name servers `ns1` and `ns2`.
pub fn zone_config() -> ZoneConfig {
    serde_json::from_value(serde_json::json!({
        "origin": ZONE,
        "primaryNs": "ns1.global.example.com",
        "hostmaster": "hostmaster.example.com",
        "nameservers": ["ns1.global.example.com", "ns2.global.example.com"],
    }))
    .expect("the test zone is a valid ZoneConfig")
}

// === lifeline.yaml and policy documents, as text ===

/// The `zones:` entry of a zone named `origin`, with its SOA and NS names under it.
pub fn zone_line(origin: &str) -> String {
    format!(
        "  - {{origin: {origin}, primaryNs: ns1.{origin}, hostmaster: h.{origin}, nameservers: [ns1.{origin}]}}\n"
    )
}

/// A MemberCluster document: cluster `name` in `region`, at the fixed `address`.
pub fn static_cluster(name: &str, region: &str, address: impl Display) -> String {
    format!(
        "apiVersion: lifeline.dev/v1alpha1\nkind: MemberCluster\nmetadata: {{name: {name}}}\nspec: {{region: {region}, addressSource: Static, addresses: [\"{address}\"]}}\n"
    )
}

// === overrides ===

/// A drain of `cluster` set now for ten minutes by `oncall`, with id `drain-<cluster>`.
pub fn drain(cluster: &str) -> Override {
    let now = SystemTime::now();
    Override {
        id: format!("drain-{cluster}"),
        cluster: cluster.to_owned(),
        policy: None,
        action: OverrideAction::Drain,
        created_at: now,
        expires_at: now + Duration::from_secs(600),
        author: "oncall".to_owned(),
        reason: "maintenance".to_owned(),
    }
}
