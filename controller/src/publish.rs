//! Turns decisions into DNS shim updates: one `Replace` per zone the first time, then
//! `Patch`es carrying only the names whose records changed.

use std::{collections::BTreeMap, time::SystemTime};

use lifeline_crds::{Strategy, validate::name_in_zone};
use lifeline_model::{AddressSet, NameRecords, Target, Update, ZonePatch, ZoneSnapshot};

use lifeline_engine::Decision;

/// Remembers what was last published per zone so the next publish is a minimal patch.
#[derive(Debug)]
pub struct Publisher {
    /// Zone apexes, lower-case without a trailing dot.
    zones: Vec<String>,
    /// Last published records per zone, by owner name.
    published: BTreeMap<String, BTreeMap<String, NameRecords>>,
    /// Revision of the last update sent. Snapshot revisions must grow even across a
    /// lost store, so they are the publisher's own counter, started above whatever the
    /// shim already holds.
    revision: u64,
}

impl Publisher {
    /// `start_revision`: the highest revision the shim currently serves.
    pub fn new(zones: &[String], start_revision: u64) -> Self {
        Self {
            zones: zones
                .iter()
                .map(|z| lifeline_crds::validate::normalize_name(z))
                .collect(),
            published: BTreeMap::new(),
            revision: start_revision,
        }
    }

    /// Treats `records` as already published (a new leader seeds itself with what the
    /// store holds, so its first publish is a patch, not a rewrite of every name).
    pub fn seed(&mut self, records: BTreeMap<String, BTreeMap<String, NameRecords>>) {
        self.published = records;
    }

    /// Records per zone for a decision.
    pub fn records(&self, decision: &Decision) -> BTreeMap<String, BTreeMap<String, NameRecords>> {
        let mut out: BTreeMap<String, BTreeMap<String, NameRecords>> = self
            .zones
            .iter()
            .map(|z| (z.clone(), BTreeMap::new()))
            .collect();
        for pd in decision.policies.values() {
            // Longest zone that contains the name (zones may nest).
            let Some(zone) = self
                .zones
                .iter()
                .filter(|z| name_in_zone(&pd.hostname, z))
                .max_by_key(|z| z.len())
            else {
                continue;
            };
            let targets = pd
                .answers
                .iter()
                .map(|a| Target {
                    address: a.address,
                    cluster: a.cluster.to_string(),
                    region: a.region.to_string(),
                    weight: a.weight,
                })
                .collect();
            let records = NameRecords {
                address: Some(AddressSet {
                    ttl: pd.ttl,
                    targets,
                    max_answers: Some(pd.max_answers),
                    geo: pd.strategy == Strategy::Geo,
                }),
                ..NameRecords::default()
            };
            // Keys relative to the zone and lower-case (`checkout`, not
            // `checkout.global.example.com`): the shim starts fastest from canonical keys.
            let key = pd
                .hostname
                .strip_suffix(zone.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .map_or_else(|| pd.hostname.clone(), str::to_owned);
            if let Some(names) = out.get_mut(zone) {
                names.insert(key, records);
            }
        }
        out
    }

    /// The updates that bring the shim from what was last published to `decision`.
    /// Empty when nothing changed.
    pub fn updates(&mut self, decision: &Decision, now: SystemTime) -> Vec<Update> {
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
        updates
    }

    /// Forgets what was published, so the next call replaces every zone (after the shim
    /// rejected an update, for instance).
    pub fn reset(&mut self) {
        self.published.clear();
    }
}
