//! The record model: what the controller publishes and the shim serves.
//!
//! A [`ZoneSnapshot`] is the complete, versioned content of one zone. The controller may
//! send a whole snapshot or a [`ZonePatch`] that upserts and deletes single names; either
//! way the shim ends up holding one full snapshot per zone, which is what it persists.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

/// Version of the serialised format; bumped on incompatible changes so an old shim
/// refuses a file it would misread instead of serving something wrong.
pub const FORMAT_VERSION: u32 = 1;

/// Everything the shim serves for one zone at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneSnapshot {
    /// Format version of this document; must equal [`FORMAT_VERSION`].
    #[serde(default = "format_version")]
    pub format: u32,
    /// Zone apex this snapshot belongs to (must match a configured zone).
    pub zone: String,
    /// Monotonic revision of the decision that produced this snapshot. The SOA serial
    /// follows it (truncated to 32 bits); an update with a lower revision is ignored.
    pub revision: u64,
    /// When the controller decided this content. The shim's "age of data" is measured
    /// from here, not from when the shim received it.
    #[serde(with = "crate::time::rfc3339")]
    pub decided_at: SystemTime,
    /// Records by owner name. Names are absolute or relative to `zone`; a trailing dot is
    /// optional; matching is case-insensitive.
    #[serde(default)]
    pub names: BTreeMap<String, NameRecords>,
}

fn format_version() -> u32 {
    FORMAT_VERSION
}

/// All RRsets of one owner name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameRecords {
    /// A and AAAA answers, chosen per query among the targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<AddressSet>,
    /// SRV records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<SrvSet>,
    /// TXT records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txt: Option<TxtSet>,
    /// An alias. A name with a CNAME has no other data (RFC 1034 §3.6.2); the snapshot
    /// validation rejects the combination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cname: Option<Cname>,
}

/// The address targets of a name. IPv4 targets answer A queries, IPv6 targets AAAA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressSet {
    /// TTL of the A/AAAA answers, seconds.
    pub ttl: u32,
    /// Candidate targets; every one listed is eligible (the controller leaves out the
    /// unhealthy ones).
    pub targets: Vec<Target>,
    /// At most this many addresses per answer (after selection); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answers: Option<u16>,
    /// Use the client's region (EDNS Client Subnet or source address) to prefer targets
    /// of that region. Without a match, all targets are used.
    #[serde(default)]
    pub geo: bool,
    /// Healthy targets held in reserve, tier by tier, the next to answer first (a
    /// Failover policy's lower-priority tiers, a Weighted policy's weight-0 targets).
    /// Never answered while `targets` are; a replica that drains every cluster in
    /// `targets` by itself, with no leader to decide again, answers the first tier
    /// with a target left (see [`crate::overrides::apply`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standby: Vec<Vec<Target>>,
}

/// One address that may be handed out, with where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    pub address: IpAddr,
    /// Member cluster the address belongs to.
    #[serde(default)]
    pub cluster: String,
    /// Region of that cluster, matched against the geo prefix table.
    #[serde(default)]
    pub region: String,
    /// Relative share of answers that list this target first; 0 means "only if nothing
    /// else has weight".
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The part of its weight a recovering target is ramped to, in thousandths; absent
    /// when whole. `weight` already includes it; a replica that applies a weight override
    /// itself scales the override by it, so a break-glass weight never undoes a ramp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

/// SRV records of a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SrvSet {
    pub ttl: u32,
    pub records: Vec<Srv>,
}

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Absolute host name.
    pub target: String,
}

/// TXT records of a name; each entry is one record (split into 255-byte strings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TxtSet {
    pub ttl: u32,
    pub records: Vec<String>,
}

/// A CNAME record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cname {
    pub ttl: u32,
    /// Absolute target name.
    pub target: String,
}

/// A change to what the shim serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Update {
    /// Replace the whole zone.
    Replace(ZoneSnapshot),
    /// Change single names of a zone the shim already holds.
    Patch(ZonePatch),
}

impl Update {
    /// The zone this update is about.
    pub fn zone(&self) -> &str {
        match self {
            Update::Replace(s) => &s.zone,
            Update::Patch(p) => &p.zone,
        }
    }

    /// The revision the zone will have once applied.
    pub fn revision(&self) -> u64 {
        match self {
            Update::Replace(s) => s.revision,
            Update::Patch(p) => p.revision,
        }
    }
}

/// Per-name changes on top of the zone's current snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZonePatch {
    pub zone: String,
    /// Revision after the patch; must be greater than the current one.
    pub revision: u64,
    #[serde(with = "crate::time::rfc3339")]
    pub decided_at: SystemTime,
    /// Names whose records are replaced (or created).
    #[serde(default)]
    pub upsert: BTreeMap<String, NameRecords>,
    /// Names removed entirely.
    #[serde(default)]
    pub delete: Vec<String>,
}

impl ZonePatch {
    /// Applies the patch to `base`, producing the next snapshot. Keys are matched
    /// case-insensitively and with or without the zone suffix, the way the server does.
    pub fn apply_to(&self, base: &ZoneSnapshot) -> ZoneSnapshot {
        let origin = crate::name::normalize(&base.zone, "").unwrap_or_default();
        let key = |n: &str| crate::name::normalize(n, &origin).unwrap_or_else(|_| n.into());
        let mut names: BTreeMap<String, (String, NameRecords)> = base
            .names
            .iter()
            .map(|(n, r)| (key(n), (n.clone(), r.clone())))
            .collect();
        for n in &self.delete {
            names.remove(&key(n));
        }
        for (n, r) in &self.upsert {
            names.insert(key(n), (n.clone(), r.clone()));
        }
        ZoneSnapshot {
            format: FORMAT_VERSION,
            zone: base.zone.clone(),
            revision: self.revision,
            decided_at: self.decided_at,
            names: names.into_values().collect(),
        }
    }
}

impl ZonePatch {
    /// Applies the patch to `base` where it lies, touching only the names it lists.
    /// `base` must have its keys in key form (see [`ZoneSnapshot::normalize_keys`]);
    /// it keeps them so. Same result as [`Self::apply_to`], at the cost of the change
    /// rather than of the zone.
    pub fn apply_in_place(&self, base: &mut ZoneSnapshot) {
        let origin = crate::name::normalize(&base.zone, "").unwrap_or_default();
        for n in &self.delete {
            base.names.remove(&key_form(n, &origin));
        }
        for (n, r) in &self.upsert {
            base.names.insert(key_form(n, &origin), r.clone());
        }
        base.revision = self.revision;
        base.decided_at = self.decided_at;
        base.format = FORMAT_VERSION;
    }
}

/// The one spelling a name is kept under: lower case, relative to the zone (`www`),
/// the apex as the zone's name, a name outside the zone absolute with its trailing dot
/// (`other.example.`), and a name that is not valid as it came.
fn key_form(name: &str, origin: &str) -> String {
    let Ok(n) = crate::name::normalize(name, origin) else {
        return name.to_owned();
    };
    if n == origin {
        return n;
    }
    match n.strip_suffix(origin).and_then(|r| r.strip_suffix('.')) {
        Some(relative) if !origin.is_empty() => relative.to_owned(),
        _ => format!("{n}."),
    }
}

/// Whether `key` is already spelled as [`key_form`] spells it, told without
/// allocating: a start checks every key of a large zone. `false` may only mean "not
/// sure" (the caller then respells).
fn is_key_form(key: &str, origin: &str) -> bool {
    if key == origin {
        return true;
    }
    if key.is_empty()
        || key == "@"
        || key
            .bytes()
            .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
    {
        return false;
    }
    let within = |name: &str| {
        name == origin
            || name
                .strip_suffix(origin)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    match key.strip_suffix('.') {
        // Absolute: only names outside the zone keep that spelling.
        Some(absolute) => !absolute.is_empty() && !within(absolute),
        // Relative: must not spell the zone's suffix out.
        None => !within(key),
    }
}

impl ZoneSnapshot {
    /// The key `name` has in a snapshot whose keys are in key form.
    pub fn key_of(&self, name: &str) -> String {
        key_form(
            name,
            &crate::name::normalize(&self.zone, "").unwrap_or_default(),
        )
    }

    /// Respells every key in key form, so that one name has one key and a patch can
    /// find it without a scan. Of two spellings of one name the first in key order is
    /// kept, as the server keeps it; returns the spellings dropped.
    pub fn normalize_keys(&mut self) -> Vec<String> {
        let origin = crate::name::normalize(&self.zone, "").unwrap_or_default();
        if self.names.keys().all(|k| is_key_form(k, &origin)) {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        let mut names = BTreeMap::new();
        for (k, r) in std::mem::take(&mut self.names) {
            let key = key_form(&k, &origin);
            match names.entry(key) {
                std::collections::btree_map::Entry::Occupied(_) => dropped.push(k),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(r);
                }
            }
        }
        self.names = names;
        dropped
    }

    /// An empty snapshot of `zone` (SOA and NS only).
    pub fn empty(zone: impl Into<String>, revision: u64, decided_at: SystemTime) -> Self {
        Self {
            format: FORMAT_VERSION,
            zone: zone.into(),
            revision,
            decided_at,
            names: BTreeMap::new(),
        }
    }

    /// Age of the decision behind this snapshot at `now` (zero if it is from the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.decided_at).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(address: &str) -> NameRecords {
        NameRecords {
            address: Some(AddressSet {
                ttl: 30,
                targets: vec![Target {
                    address: address.parse().unwrap(),
                    cluster: "c".into(),
                    region: "r".into(),
                    weight: 1,
                    share: None,
                }],
                max_answers: None,
                geo: false,
                standby: Vec::new(),
            }),
            ..NameRecords::default()
        }
    }

    #[test]
    fn a_patch_in_place_gives_what_a_patch_on_a_copy_gives() {
        let mut base = ZoneSnapshot::empty("Zone.Example", 1, SystemTime::UNIX_EPOCH);
        for (k, a) in [
            ("WWW", "192.0.2.1"),
            ("api.zone.example.", "192.0.2.2"),
            ("old", "192.0.2.3"),
            ("www.zone.example", "192.0.2.9"),
        ] {
            base.names.insert(k.into(), at(a));
        }
        let patch = ZonePatch {
            zone: "zone.example".into(),
            revision: 2,
            decided_at: SystemTime::UNIX_EPOCH,
            upsert: [
                ("Api".to_owned(), at("192.0.2.20")),
                ("new.zone.example.".to_owned(), at("192.0.2.4")),
            ]
            .into(),
            delete: vec!["OLD.zone.example".into()],
        };
        let mut copied = patch.apply_to(&base);
        copied.normalize_keys();
        let dropped = base.normalize_keys();
        assert_eq!(
            dropped,
            ["www.zone.example"],
            "one name, two spellings: the first is kept"
        );
        patch.apply_in_place(&mut base);
        assert_eq!(base.names.keys().collect::<Vec<_>>(), ["api", "new", "www"]);
        assert_eq!(base.names["api"], at("192.0.2.20"));
        assert_eq!(base.revision, 2);
        assert_eq!(base.key_of("NEW.zone.example."), "new");
        assert_eq!(base.key_of("zone.example"), "zone.example");
        assert_eq!(
            copied.names.keys().collect::<Vec<_>>(),
            ["api", "new", "www"]
        );
    }

    #[test]
    fn the_quick_check_never_calls_a_respelled_key_settled() {
        let origin = "zone.example";
        for k in [
            "www",
            "WWW",
            "www.zone.example",
            "www.zone.example.",
            "zone.example",
            "zone.example.",
            "@",
            "other.example.",
            "other.example",
            "a.b",
            "xzone.example",
            "a..b",
            " www",
            "",
            ".",
        ] {
            if is_key_form(k, origin) {
                assert_eq!(key_form(k, origin), k, "{k:?}");
            }
        }
        assert!(is_key_form("www", origin));
        assert!(is_key_form("zone.example", origin));
        assert!(is_key_form("other.example.", origin));
        assert!(!is_key_form("www.zone.example", origin));
    }
}
