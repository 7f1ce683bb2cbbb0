//! Turns validated FailoverPolicy and MemberCluster documents into what the engine and
//! the prober work with: engine policies with resolved addresses, and probe specs.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lifeline_crds::{
    AddressSource, AllUnhealthyMode, FailoverPolicy, FailoverPolicySpec, MemberCluster, RecordType,
    SourceUnavailableMode, Target,
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
    sorted.sort_by_key(|p| p.id());
    for fp in sorted {
        let id = fp.id();
        let spec = &fp.spec;
        let targets = resolve_targets(&id, spec, &by_name, discovered, &mut set.warnings);
        let thresholds = Thresholds::of(spec);
        set.probes
            .extend(probe_specs(&id, spec, &targets, thresholds));
        set.policies
            .push(engine_policy(id, spec, targets, thresholds));
    }
    set
}

/// The policy's targets with their addresses; a target whose cluster is not defined is
/// left out, and it and a target without addresses are named in `warnings`.
fn resolve_targets(
    id: &str,
    spec: &FailoverPolicySpec,
    clusters: &BTreeMap<&str, &MemberCluster>,
    discovered: &BTreeMap<(String, String), Vec<IpAddr>>,
    warnings: &mut Vec<String>,
) -> Vec<engine::TargetSpec> {
    // Sized exactly: ten thousand policies hold these for as long as they are in force.
    let mut targets = Vec::with_capacity(spec.targets.as_ref().map_or(0, Vec::len));
    for t in spec.targets.iter().flatten() {
        let Some(cluster) = clusters.get(t.cluster.as_str()) else {
            warnings.push(format!(
                "{id}: target cluster {:?} is not defined",
                t.cluster
            ));
            continue;
        };
        let addresses = wanted_addresses(
            listed_addresses(id, t, cluster, discovered),
            &spec.record_types,
        );
        if addresses.is_empty() {
            warnings.push(format!(
                "{id}: target {:?} has no address for record types {:?} yet",
                t.cluster, spec.record_types
            ));
        }
        targets.push(target_spec(t, cluster, addresses));
    }
    targets
}

/// A target's addresses before filtering by record type: its own list, else its static
/// cluster's, else what discovery found for it.
fn listed_addresses(
    id: &str,
    t: &Target,
    cluster: &MemberCluster,
    discovered: &BTreeMap<(String, String), Vec<IpAddr>>,
) -> Vec<IpAddr> {
    if !t.addresses.is_empty() {
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
            .get(&(t.cluster.clone(), id.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

/// The addresses of the families the policy answers for.
fn wanted_addresses(listed: Vec<IpAddr>, record_types: &[RecordType]) -> Vec<IpAddr> {
    let want_v4 = record_types.contains(&RecordType::A);
    let want_v6 = record_types.contains(&RecordType::Aaaa);
    let mut addresses: Vec<IpAddr> = listed
        .into_iter()
        .filter(|a| (a.is_ipv4() && want_v4) || (a.is_ipv6() && want_v6))
        .collect();
    addresses.shrink_to_fit();
    addresses
}

fn target_spec(t: &Target, cluster: &MemberCluster, addresses: Vec<IpAddr>) -> engine::TargetSpec {
    engine::TargetSpec {
        cluster: t.cluster.as_str().into(),
        region: cluster.spec.region.as_str().into(),
        priority: t.priority.min(limits::PRIORITY_MAX),
        weight: t.weight.min(limits::WEIGHT_MAX),
        addresses,
    }
}

/// Probe results in a row that make a target (unhealthy, healthy); 1 each without a
/// health check.
#[derive(Clone, Copy)]
struct Thresholds {
    unhealthy: u32,
    healthy: u32,
}

impl Thresholds {
    fn of(spec: &FailoverPolicySpec) -> Self {
        spec.health_check.as_ref().map_or(
            Thresholds {
                unhealthy: 1,
                healthy: 1,
            },
            |hc| {
                let bound = |n: u32| n.clamp(limits::THRESHOLD_MIN, limits::THRESHOLD_MAX);
                Thresholds {
                    unhealthy: bound(hc.unhealthy_threshold),
                    healthy: bound(hc.healthy_threshold),
                }
            },
        )
    }
}

/// One probe per target that has addresses, when the policy has a usable health check.
fn probe_specs(
    id: &str,
    spec: &FailoverPolicySpec,
    targets: &[engine::TargetSpec],
    thresholds: Thresholds,
) -> Vec<ProbeSpec> {
    let Some(hc) = &spec.health_check else {
        return Vec::new();
    };
    let Some((check, interval, timeout)) = probe::check_from_spec(hc, &spec.hostname) else {
        return Vec::new();
    };
    let fast_interval = probe::fast_interval_from_spec(hc, interval);
    targets
        .iter()
        .filter(|t| !t.addresses.is_empty())
        .map(|t| ProbeSpec {
            key: TargetKey {
                policy: id.to_owned(),
                cluster: t.cluster.to_string(),
            },
            addresses: t.addresses.clone(),
            check: check.clone(),
            interval,
            fast_interval,
            timeout,
            unhealthy_threshold: thresholds.unhealthy,
            healthy_threshold: thresholds.healthy,
        })
        .collect()
}

/// The engine's policy, with every number held inside its bounds.
fn engine_policy(
    id: String,
    spec: &FailoverPolicySpec,
    targets: Vec<engine::TargetSpec>,
    thresholds: Thresholds,
) -> engine::Policy {
    engine::Policy {
        id,
        hostname: lifeline_model::name::canonical(&spec.hostname),
        ttl: spec.ttl.clamp(limits::TTL_MIN, limits::TTL_MAX),
        max_answers: spec
            .max_answers
            .clamp(limits::MAX_ANSWERS_MIN, limits::MAX_ANSWERS_MAX),
        strategy: spec.strategy,
        targets,
        unhealthy_threshold: thresholds.unhealthy,
        healthy_threshold: thresholds.healthy,
        when_all_unhealthy: when_all_unhealthy(spec),
        on_source_unavailable: on_source_unavailable(spec),
        hold_down: parse_or(&spec.failback.hold_down, Duration::from_secs(60)),
        ramp_duration: parse_or(&spec.failback.ramp_duration, Duration::from_secs(120)),
        ramp_steps: spec
            .failback
            .ramp_steps
            .clamp(limits::RAMP_STEPS_MIN, limits::RAMP_STEPS_MAX),
    }
}

fn when_all_unhealthy(spec: &FailoverPolicySpec) -> WhenAllUnhealthy {
    match spec.when_all_unhealthy.mode {
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
    }
}

fn on_source_unavailable(spec: &FailoverPolicySpec) -> OnSourceUnavailable {
    match spec.on_source_unavailable.mode {
        SourceUnavailableMode::Freeze => OnSourceUnavailable::Freeze,
        SourceUnavailableMode::TreatAsUnhealthy => OnSourceUnavailable::TreatAsUnhealthy {
            max_stale: parse_or(
                &spec.on_source_unavailable.max_stale,
                Duration::from_secs(300),
            ),
        },
    }
}

/// Documents were validated before compiling; the fallback and the bound only guard
/// against a document that skipped validation.
fn parse_or(d: &lifeline_crds::Duration, fallback: Duration) -> Duration {
    d.parse().unwrap_or(fallback).min(limits::LONG_DURATION_MAX)
}
