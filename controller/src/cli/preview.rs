//! What the DNS servers will answer once an override is in force, worked out the way
//! every replica applies it on its own (`lifeline_model::overrides::apply`), from the
//! records the leader last published: the preview `ctl --etcd` prints before it writes,
//! and the check that refuses a drain that would leave a name with no target.

use std::{collections::BTreeMap, time::SystemTime};

use lifeline_model::{NameRecords, ZoneSnapshot, overrides::Override};

/// Records per zone and name, as the store holds them.
pub type Published = BTreeMap<String, BTreeMap<String, NameRecords>>;

/// One name whose answer the override changes at the replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Absolute name (`checkout.global.example.com`).
    pub name: String,
    /// Clusters answered before and after, each sorted.
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// What an override does at replicas that apply it without a leader.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Preview {
    /// Names whose answer moves.
    pub moved: Vec<Moved>,
    /// Names a drain would leave with no target (nothing answered, nothing healthy in
    /// reserve): the replicas would keep answering the drained cluster there.
    pub emptied: Vec<String>,
}

/// The effect of adding `new` to the overrides in force (`in_force`) on `published`.
pub fn of(
    published: &Published,
    in_force: &[Override],
    new: &Override,
    now: SystemTime,
) -> Preview {
    let mut with = in_force.to_vec();
    with.push(new.clone());
    let mut preview = Preview::default();
    for (zone, names) in published {
        let snapshot = ZoneSnapshot {
            names: names.clone(),
            ..ZoneSnapshot::empty(zone.clone(), 0, now)
        };
        let before = lifeline_model::overrides::apply_reporting(&snapshot, in_force, now);
        let after = lifeline_model::overrides::apply_reporting(&snapshot, &with, now);
        let absolute = |key: &str| match key {
            "" | "@" => zone.clone(),
            key => format!("{key}.{zone}"),
        };
        preview.emptied.extend(
            (after.kept.iter())
                .filter(|n| !before.kept.contains(n))
                .map(|n| absolute(n)),
        );
        for (key, records) in &after.snapshot.names {
            let was = clusters(before.snapshot.names.get(key));
            let now = clusters(Some(records));
            if was != now {
                preview.moved.push(Moved {
                    name: absolute(key),
                    before: was,
                    after: now,
                });
            }
        }
    }
    preview
}

fn clusters(records: Option<&NameRecords>) -> Vec<String> {
    let mut out: Vec<String> = (records.and_then(|r| r.address.as_ref()))
        .map(|set| set.targets.iter().map(|t| t.cluster.clone()).collect())
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// The preview as `ctl` prints it.
pub fn render(preview: &Preview) -> String {
    if preview.moved.is_empty() {
        return "replicas without a leader: no answer changes\n".to_owned();
    }
    let mut out = String::from("replicas without a leader will answer:\n");
    for m in &preview.moved {
        out.push_str(&format!(
            "  {}: {} -> {}\n",
            m.name,
            m.before.join(","),
            m.after.join(",")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use lifeline_model::{AddressSet, Target, overrides::OverrideAction};

    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn target(cluster: &str, last: u8) -> Target {
        Target {
            address: IpAddr::from([127, 0, 0, last]),
            cluster: cluster.into(),
            region: String::new(),
            weight: 1000,
            share: None,
        }
    }

    fn name(targets: Vec<Target>, standby: Vec<Vec<Target>>) -> NameRecords {
        NameRecords {
            address: Some(AddressSet {
                ttl: 30,
                targets,
                max_answers: None,
                geo: false,
                standby,
            }),
            ..NameRecords::default()
        }
    }

    fn drain(cluster: &str) -> Override {
        Override {
            id: format!("drain-{cluster}"),
            cluster: cluster.into(),
            policy: None,
            action: OverrideAction::Drain,
            created_at: now(),
            expires_at: now() + Duration::from_secs(600),
            author: "oncall".into(),
            reason: "test".into(),
        }
    }

    #[test]
    fn a_drain_moves_tiered_names_and_names_the_ones_it_would_empty() {
        let published = Published::from([(
            "global.example.com".to_owned(),
            BTreeMap::from([
                // Failover: c1 answers, c2 waits in reserve.
                (
                    "checkout".to_owned(),
                    name(vec![target("c1", 1)], vec![vec![target("c2", 2)]]),
                ),
                // c1 alone, nothing in reserve.
                ("lonely".to_owned(), name(vec![target("c1", 3)], vec![])),
                // Not touched.
                ("other".to_owned(), name(vec![target("c3", 4)], vec![])),
            ]),
        )]);
        let p = of(&published, &[], &drain("c1"), now());
        assert_eq!(
            p.moved,
            [Moved {
                name: "checkout.global.example.com".into(),
                before: vec!["c1".into()],
                after: vec!["c2".into()],
            }]
        );
        assert_eq!(p.emptied, ["lonely.global.example.com"]);
        assert!(render(&p).contains("checkout.global.example.com: c1 -> c2"));
        // A name already kept by an earlier drain is not this drain's doing.
        let p = of(&published, &[drain("c1")], &drain("c2"), now());
        assert!(
            p.emptied
                .contains(&"checkout.global.example.com".to_owned())
        );
        assert!(!p.emptied.contains(&"lonely.global.example.com".to_owned()));
    }
}
