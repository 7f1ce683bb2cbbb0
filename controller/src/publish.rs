//! Turns decisions into DNS shim updates: one `Replace` per zone the first time, then
//! `Patch`es carrying only the names whose records changed.

use std::{collections::BTreeMap, time::SystemTime};

use lifeline_crds::Strategy;
use lifeline_model::name::in_zone as name_in_zone;
use lifeline_model::{AddressSet, NameRecords, Target, Update, ZonePatch, ZoneSnapshot};

use lifeline_engine::{Answer, Decision};

/// Records per zone (normalised apex) and owner name, as published and served.
pub type ZoneRecords = BTreeMap<String, BTreeMap<String, NameRecords>>;

/// The longest of `zones` that contains `hostname` (zones may nest).
fn zone_of<'z>(zones: &'z [String], hostname: &str) -> Option<&'z String> {
    zones
        .iter()
        .filter(|z| name_in_zone(hostname, z))
        .max_by_key(|z| z.len())
}

/// The owner key of `hostname` in `zone`: relative and lower-case (`checkout`, not
/// `checkout.global.example.com`), as the shim starts fastest from canonical keys.
pub fn key_in_zone(hostname: &str, zone: &str) -> String {
    hostname
        .strip_suffix(zone)
        .and_then(|rest| rest.strip_suffix('.'))
        .map_or_else(|| hostname.to_owned(), str::to_owned)
}

/// Remembers what was last published per zone so the next publish is a minimal patch.
#[derive(Debug)]
pub struct Publisher {
    /// Zone apexes, lower-case without a trailing dot.
    zones: Vec<String>,
    /// Last published records per zone, by owner name.
    published: BTreeMap<String, BTreeMap<String, NameRecords>>,
    /// The decision `published` was built from; `None` after a seed or a reset. A
    /// decision sharing all its entries with it has the same records, and is not
    /// rebuilt.
    built_from: Option<Decision>,
    /// Revision of the last update sent. Snapshot revisions must grow even across a
    /// lost store, so they are the publisher's own counter, started above whatever the
    /// shim already holds.
    revision: u64,
    /// Names every zone serves whatever the policies say: its in-zone name servers'
    /// addresses.
    fixed: ZoneRecords,
}

impl Publisher {
    /// `start_revision`: the highest revision the shim currently serves.
    pub fn new(zones: &[String], start_revision: u64) -> Self {
        Self {
            zones: zones
                .iter()
                .map(|z| lifeline_model::name::canonical(z))
                .collect(),
            published: BTreeMap::new(),
            built_from: None,
            revision: start_revision,
            fixed: ZoneRecords::new(),
        }
    }

    /// The answers `served` holds for `hostname` (under its canonical key or its absolute
    /// name), sorted by cluster and address; `None` when it holds none.
    pub fn served_answers(&self, served: &ZoneRecords, hostname: &str) -> Option<Vec<Answer>> {
        let hostname = lifeline_model::name::canonical(hostname);
        let zone = zone_of(&self.zones, &hostname)?;
        let names = served.get(zone)?;
        let keys = [
            key_in_zone(&hostname, zone),
            hostname.clone(),
            format!("{hostname}."),
        ];
        let set = keys
            .iter()
            .find_map(|key| names.get(key))?
            .address
            .as_ref()?;
        let mut answers: Vec<Answer> = (set.targets.iter())
            .map(|t| Answer {
                cluster: t.cluster.as_str().into(),
                address: t.address,
                region: t.region.as_str().into(),
                weight: t.weight,
            })
            .collect();
        answers.sort_by(|a, b| (&a.cluster, a.address).cmp(&(&b.cluster, b.address)));
        (!answers.is_empty()).then_some(answers)
    }

    /// Publishes `records` in every update besides the policies' names (the zones'
    /// name server addresses; validation keeps policies off those names).
    pub fn with_fixed(mut self, records: ZoneRecords) -> Self {
        self.fixed = records;
        self
    }

    /// Treats `records` as already published (a new leader seeds itself with what the
    /// store holds, so its first publish is a patch, not a rewrite of every name).
    pub fn seed(&mut self, records: BTreeMap<String, BTreeMap<String, NameRecords>>) {
        self.published = records;
        self.built_from = None;
    }

    /// Records per zone for a decision.
    pub fn records(&self, decision: &Decision) -> BTreeMap<String, BTreeMap<String, NameRecords>> {
        let mut out: BTreeMap<String, BTreeMap<String, NameRecords>> = self
            .zones
            .iter()
            .map(|z| (z.clone(), self.fixed.get(z).cloned().unwrap_or_default()))
            .collect();
        for pd in decision.policies.values() {
            let Some(zone) = zone_of(&self.zones, &pd.hostname) else {
                continue;
            };
            let target = |a: &Answer| Target {
                address: a.address,
                cluster: a.cluster.to_string(),
                region: a.region.to_string(),
                weight: a.weight,
                // A ramp's share travels with the weight it scaled, so a replica
                // applying a weight override scales that override the same way.
                share: pd
                    .targets
                    .get(&a.cluster)
                    .map(|t| t.share)
                    .filter(|share| *share < 1000),
            };
            let records = NameRecords {
                address: Some(AddressSet {
                    ttl: pd.ttl,
                    targets: pd.answers.iter().map(target).collect(),
                    max_answers: Some(pd.max_answers),
                    geo: pd.strategy == Strategy::Geo,
                    // The tiers in reserve, so a replica with no leader can still move
                    // the answer when an operator drains the answered clusters.
                    standby: (pd.standby.iter())
                        .map(|tier| tier.iter().map(target).collect())
                        .collect(),
                }),
                ..NameRecords::default()
            };
            let key = key_in_zone(&pd.hostname, zone);
            if let Some(names) = out.get_mut(zone) {
                names.insert(key, records);
            }
        }
        out
    }

    /// The updates that bring the shim from what was last published to `decision`.
    /// Empty when nothing changed.
    pub fn updates(&mut self, decision: &Decision, now: SystemTime) -> Vec<Update> {
        // Records come from the policies' entries alone: none changed, none to send.
        if self
            .built_from
            .as_ref()
            .is_some_and(|b| b.shares_entries_with(decision))
        {
            return Vec::new();
        }
        let mut updates = Vec::new();
        for (zone, names) in self.records(decision) {
            match self.published.get(&zone) {
                None => {
                    self.revision += 1;
                    updates.push(Update::Replace(ZoneSnapshot {
                        names: names.clone(),
                        ..ZoneSnapshot::empty(zone.clone(), self.revision, now)
                    }));
                }
                Some(old) => {
                    let upsert: BTreeMap<String, NameRecords> = names
                        .iter()
                        .filter(|(n, r)| old.get(*n) != Some(*r))
                        .map(|(n, r)| (n.clone(), r.clone()))
                        .collect();
                    let delete: Vec<String> = old
                        .keys()
                        .filter(|n| !names.contains_key(*n))
                        .cloned()
                        .collect();
                    if upsert.is_empty() && delete.is_empty() {
                        continue;
                    }
                    self.revision += 1;
                    updates.push(Update::Patch(ZonePatch {
                        zone: zone.clone(),
                        revision: self.revision,
                        decided_at: now,
                        upsert,
                        delete,
                    }));
                }
            }
            self.published.insert(zone, names);
        }
        // Only the entries are kept (shared with the decision): cheap to hold.
        self.built_from = Some(Decision {
            policies: decision.policies.clone(),
            ..Decision::default()
        });
        updates
    }

    /// Forgets what was published, so the next call replaces every zone (after the shim
    /// rejected an update, for instance).
    pub fn reset(&mut self) {
        self.published.clear();
        self.built_from = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use lifeline_engine::{
        EngineConfig, OnSourceUnavailable, Override, OverrideAction, Policy, Signals, TargetSpec,
        WhenAllUnhealthy, decide,
    };

    use super::*;

    const ZONE: &str = "global.example.com";

    fn policy(name: &str) -> Policy {
        Policy {
            id: format!("shop/{name}"),
            hostname: format!("{name}.{ZONE}"),
            ttl: 30,
            max_answers: 8,
            strategy: Strategy::Failover,
            targets: (1..=2u8)
                .map(|i| TargetSpec {
                    cluster: format!("c{i}").into(),
                    region: "r".into(),
                    priority: u32::from(i),
                    weight: 100,
                    addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))],
                })
                .collect(),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            when_all_unhealthy: WhenAllUnhealthy::ServeAll,
            on_source_unavailable: OnSourceUnavailable::Freeze,
            hold_down: Duration::ZERO,
            ramp_duration: Duration::ZERO,
            ramp_steps: 1,
        }
    }

    #[test]
    fn only_what_changed_is_sent_and_a_reset_sends_the_whole_zone_again() {
        let config = EngineConfig::default();
        let policies = [policy("cart"), policy("search")];
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let first = decide(
            &config,
            &policies,
            &Signals::default(),
            &[],
            &Decision::default(),
            now,
        );
        let mut publisher = Publisher::new(&[ZONE.to_owned()], 0);
        let sent = publisher.updates(&first, now);
        assert!(
            matches!(sent.as_slice(), [Update::Replace(s)] if s.names.len() == 2),
            "{sent:?}"
        );

        // Nothing new: every entry is shared with the published decision, nothing sent.
        let quiet = decide(&config, &policies, &Signals::default(), &[], &first, now);
        assert!(quiet.shares_entries_with(&first));
        assert!(publisher.updates(&quiet, now).is_empty());

        // A drain on one policy's first cluster moves its answer: one name patched.
        let drain = Override {
            id: "d".into(),
            cluster: "c1".into(),
            policy: Some("shop/cart".into()),
            action: OverrideAction::Drain,
            created_at: now,
            expires_at: now + Duration::from_secs(600),
            author: "t".into(),
            reason: "t".into(),
        };
        let drained = decide(
            &config,
            &policies,
            &Signals::default(),
            &[drain],
            &quiet,
            now,
        );
        assert!(!drained.shares_entries_with(&quiet));
        let sent = publisher.updates(&drained, now);
        match sent.as_slice() {
            [Update::Patch(p)] => {
                assert_eq!(p.upsert.keys().collect::<Vec<_>>(), ["cart"]);
                assert!(p.delete.is_empty());
            }
            other => panic!("expected one patch, got {other:?}"),
        }

        // After a reset (the shim refused an update), the same decision is sent whole.
        publisher.reset();
        let sent = publisher.updates(&drained, now);
        assert!(
            matches!(sent.as_slice(), [Update::Replace(s)] if s.names.len() == 2),
            "{sent:?}"
        );
    }
}
