//! Turns validated FailoverPolicy and MemberCluster documents into what the engine and
//! the prober work with: engine policies with resolved addresses, and probe specs.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lifeline_crds::{
    AddressSource, AllUnhealthyMode, FailoverPolicy, MemberCluster, RecordType,
    SourceUnavailableMode,
};

use lifeline_engine::{self as engine, OnSourceUnavailable, WhenAllUnhealthy};
use lifeline_model::limits;

use crate::probe::{self, ProbeSpec, TargetKey};

/// The compiled form of a set of documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    pub policies: Vec<engine::Policy>,
    pub probes: Vec<ProbeSpec>,
    /// Things that will not work as written (e.g. a target without any address), for
    /// logs and status. They do not stop the rest from running.
    pub warnings: Vec<String>,
}

/// `namespace/name` of a policy (namespace `default` when absent).
pub fn policy_id(p: &FailoverPolicy) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Compiles documents that have already passed validation.
///
/// `discovered` holds addresses found through member-cluster APIs, by (cluster, policy
/// id); static clusters and explicit target addresses need none.
pub fn compile(
    policies: &[FailoverPolicy],
    clusters: &[MemberCluster],
    discovered: &BTreeMap<(String, String), Vec<IpAddr>>,
) -> PolicySet {
    let by_name: BTreeMap<&str, &MemberCluster> = clusters
        .iter()
        .filter_map(|c| Some((c.metadata.name.as_deref()?, c)))
        .collect();
    let mut set = PolicySet::default();
    let mut sorted: Vec<&FailoverPolicy> = policies.iter().collect();
    sorted.sort_by_key(|p| policy_id(p));
    for fp in sorted {
        let id = policy_id(fp);
        let spec = &fp.spec;
        let want_v4 = spec.record_types.contains(&RecordType::A);
        let want_v6 = spec.record_types.contains(&RecordType::Aaaa);
        // Sized exactly: ten thousand policies hold these for as long as they are in force.
        let mut targets = Vec::with_capacity(spec.targets.as_ref().map_or(0, Vec::len));
        for t in spec.targets.iter().flatten() {
            let Some(cluster) = by_name.get(t.cluster.as_str()) else {
                set.warnings.push(format!(
                    "{id}: target cluster {:?} is not defined",
                    t.cluster
                ));
                continue;
            };
            let listed: Vec<IpAddr> = if !t.addresses.is_empty() {
                t.addresses.iter().filter_map(|a| a.parse().ok()).collect()
            } else if cluster.spec.address_source == AddressSource::Static {
                cluster
                    .spec
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            } else {
                discovered
                    .get(&(t.cluster.clone(), id.clone()))
                    .cloned()
                    .unwrap_or_default()
            };
            let mut addresses: Vec<IpAddr> = listed
                .into_iter()
                .filter(|a| (a.is_ipv4() && want_v4) || (a.is_ipv6() && want_v6))
                .collect();
            addresses.shrink_to_fit();
            if addresses.is_empty() {
                set.warnings.push(format!(
                    "{id}: target {:?} has no address for record types {:?} yet",
                    t.cluster, spec.record_types
                ));
            }
            targets.push(engine::TargetSpec {
                cluster: t.cluster.as_str().into(),
                region: cluster.spec.region.as_str().into(),
                priority: t.priority.min(limits::PRIORITY_MAX),
                weight: t.weight.min(limits::WEIGHT_MAX),
                addresses,
            });
        }

        let (unhealthy_threshold, healthy_threshold) =
            spec.health_check.as_ref().map_or((1, 1), |hc| {
                let bound = |n: u32| n.clamp(limits::THRESHOLD_MIN, limits::THRESHOLD_MAX);
                (bound(hc.unhealthy_threshold), bound(hc.healthy_threshold))
            });
        if let Some(hc) = &spec.health_check
            && let Some((check, interval, timeout)) = probe::check_from_spec(hc, &spec.hostname)
        {
            let fast_interval = probe::fast_interval_from_spec(hc, interval);
            for t in &targets {
                if t.addresses.is_empty() {
                    continue;
                }
                set.probes.push(ProbeSpec {
                    key: TargetKey {
                        policy: id.clone(),
                        cluster: t.cluster.to_string(),
                    },
                    addresses: t.addresses.clone(),
                    check: check.clone(),
                    interval,
                    fast_interval,
                    timeout,
                    unhealthy_threshold,
                    healthy_threshold,
                });
            }
        }

        let when_all_unhealthy = match spec.when_all_unhealthy.mode {
            AllUnhealthyMode::ServeAll => WhenAllUnhealthy::ServeAll,
            AllUnhealthyMode::LastKnownGood => WhenAllUnhealthy::LastKnownGood,
            AllUnhealthyMode::Empty => WhenAllUnhealthy::Empty,
            AllUnhealthyMode::Fallback => WhenAllUnhealthy::Fallback(
                spec.when_all_unhealthy
                    .fallback_addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect(),
            ),
        };
        let on_source_unavailable = match spec.on_source_unavailable.mode {
            SourceUnavailableMode::Freeze => OnSourceUnavailable::Freeze,
            SourceUnavailableMode::TreatAsUnhealthy => OnSourceUnavailable::TreatAsUnhealthy {
                max_stale: parse_or(
                    &spec.on_source_unavailable.max_stale,
                    Duration::from_secs(300),
                ),
            },
        };
        set.policies.push(engine::Policy {
            id,
            hostname: lifeline_crds::validate::normalize_name(&spec.hostname),
            ttl: spec.ttl.clamp(limits::TTL_MIN, limits::TTL_MAX),
            max_answers: spec
                .max_answers
                .clamp(limits::MAX_ANSWERS_MIN, limits::MAX_ANSWERS_MAX),
            strategy: spec.strategy,
            targets,
            unhealthy_threshold,
            healthy_threshold,
            when_all_unhealthy,
            on_source_unavailable,
            hold_down: parse_or(&spec.failback.hold_down, Duration::from_secs(60)),
            ramp_duration: parse_or(&spec.failback.ramp_duration, Duration::from_secs(120)),
            ramp_steps: spec
                .failback
                .ramp_steps
                .clamp(limits::RAMP_STEPS_MIN, limits::RAMP_STEPS_MAX),
        });
    }
    set
}

/// Documents were validated before compiling; the fallback and the bound only guard
/// against a document that skipped validation.
fn parse_or(d: &lifeline_crds::Duration, fallback: Duration) -> Duration {
    d.parse().unwrap_or(fallback).min(limits::LONG_DURATION_MAX)
}
