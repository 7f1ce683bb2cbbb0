//! Validation of Lifeline documents: the Rust mirror of the CRD schema's rules, plus the
//! checks that need several documents at once.
//!
//! Every function here collects *all* problems rather than stopping at the first, and
//! names each by its field path (`spec.targets[1].weight`) so an operator can fix a
//! whole file in one pass.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::Duration as StdDuration};

use lifeline_model::{
    limits,
    name::{canonical, in_zone as name_in_zone},
};

use crate::{
    AddressSource, AllUnhealthyMode, Duration, FailoverPolicy, FailoverPolicySpec, MemberCluster,
    RecordType,
};

/// One thing wrong with a document, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Dotted path with list indices, e.g. `spec.healthCheck.http.port`; empty for the
    /// document as a whole.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects problems under a path prefix.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(&mut self, path: &str, value: T, min: T, max: T) {
        if value < min || value > max {
            self.push(
                path,
                format!("{value} is out of range: must be between {min} and {max}"),
            );
        }
    }

    /// A duration between `min` (zero allowed only when `min` is zero; otherwise
    /// zero is "must be greater than zero") and `max`.
    fn duration(
        &mut self,
        path: &str,
        value: &Duration,
        min: StdDuration,
        max: StdDuration,
    ) -> Option<StdDuration> {
        match value.parse() {
            Ok(d) if d.is_zero() && !min.is_zero() => {
                self.push(path, "must be greater than zero");
                None
            }
            Ok(d) if d < min || d > max => {
                self.push(
                    path,
                    format!(
                        "{value} is out of range: must be between {} and {}",
                        show(min),
                        show(max)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.push(path, e.to_string());
                None
            }
        }
    }

    fn count(&mut self, path: &str, len: usize, max: usize) {
        if len > max {
            self.push(path, format!("lists {len} entries; the limit is {max}"));
        }
    }

    fn addresses(&mut self, path: &str, addresses: &[String], max: usize) {
        self.count(path, addresses.len(), max);
        for (i, a) in addresses.iter().enumerate() {
            if a.parse::<IpAddr>().is_err() {
                self.push(
                    format!("{path}[{i}]"),
                    format!("{a:?} is not an IPv4 or IPv6 address"),
                );
            }
        }
    }
}

/// A bound in the largest whole unit that states it exactly ("168h", "1s").
fn show(d: StdDuration) -> String {
    let secs = d.as_secs();
    match (secs, d.subsec_nanos()) {
        (0, 0) => "0s".to_owned(),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ns", d.as_nanos()),
    }
}

/// Why a text is not a hostname; the message follows the field's path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHostname {
    #[error("must not be empty")]
    Empty,
    /// More than 253 characters.
    #[error("is {len} characters long; the limit is 253")]
    TooLong { len: usize },
    /// A label that is empty, longer than 63, holds something other than letters, digits,
    /// `-` or `_`, or starts or ends with `-`.
    #[error(
        "{name:?} is not a valid DNS name: label {label:?} must be 1-63 letters, digits or hyphens, not starting or ending with a hyphen"
    )]
    Label { name: String, label: String },
}

/// Checks a DNS hostname (no trailing dot needed): labels of 1–63 letters, digits and
/// hyphens, not starting or ending with a hyphen, at most 253 characters.
pub fn check_hostname(name: &str) -> Result<(), InvalidHostname> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(InvalidHostname::Empty);
    }
    if name.len() > 253 {
        return Err(InvalidHostname::TooLong { len: name.len() });
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(InvalidHostname::Label {
                name: name.to_owned(),
                label: label.to_owned(),
            });
        }
    }
    Ok(())
}

/// Checks a Kubernetes object name (RFC 1123 subdomain).
fn check_object_name(problems: &mut Problems, name: Option<&str>) {
    match name {
        None | Some("") => problems.push("metadata.name", "is required"),
        Some(n) => {
            let ok = n.len() <= 253
                && n.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && n.starts_with(|c: char| c.is_ascii_alphanumeric())
                && n.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !ok {
                problems.push(
                    "metadata.name",
                    format!("{n:?} must be lower-case letters, digits, '-' or '.', starting and ending with a letter or digit"),
                );
            }
        }
    }
}

/// Validates one FailoverPolicy on its own. Returns every problem found.
pub fn failover_policy(policy: &FailoverPolicy) -> Vec<Problem> {
    let mut p = Problems::default();
    check_object_name(&mut p, policy.metadata.name.as_deref());
    policy_spec(&mut p, &policy.spec);
    p.0
}

fn policy_spec(p: &mut Problems, spec: &FailoverPolicySpec) {
    if let Err(e) = check_hostname(&spec.hostname) {
        p.push("spec.hostname", e.to_string());
    }
    p.range("spec.ttl", spec.ttl, limits::TTL_MIN, limits::TTL_MAX);
    p.range(
        "spec.maxAnswers",
        spec.max_answers,
        limits::MAX_ANSWERS_MIN,
        limits::MAX_ANSWERS_MAX,
    );

    if spec.record_types.is_empty() {
        p.push("spec.recordTypes", "must list at least one record type");
    }
    for (i, t) in spec.record_types.iter().enumerate() {
        if spec.record_types[..i].contains(t) {
            p.push(
                format!("spec.recordTypes[{i}]"),
                format!("{t:?} is listed twice"),
            );
        }
    }
    if spec.record_types.contains(&RecordType::Srv)
        && spec
            .service
            .as_ref()
            .and_then(|s| s.port_name.as_ref())
            .is_none()
    {
        p.push(
            "spec.service.portName",
            "is required when recordTypes includes SRV",
        );
    }
    if let Some(service) = &spec.service
        && service.name.is_empty()
    {
        p.push("spec.service.name", "must not be empty");
    }

    match (&spec.targets, &spec.target_selector) {
        (Some(_), Some(_)) => p.push(
            "spec.targets",
            "exactly one of targets or targetSelector must be set, not both",
        ),
        (None, None) => p.push(
            "spec.targets",
            "exactly one of targets or targetSelector must be set",
        ),
        _ => {}
    }
    if let Some(targets) = &spec.targets {
        if targets.is_empty() {
            p.push("spec.targets", "must list at least one target");
        } else {
            p.count("spec.targets", targets.len(), limits::TARGETS_MAX);
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, t) in targets.iter().enumerate() {
            let path = format!("spec.targets[{i}]");
            if t.cluster.is_empty() {
                p.push(format!("{path}.cluster"), "must not be empty");
            } else if let Some(first) = seen.insert(&t.cluster, i) {
                seen.insert(&t.cluster, first);
                // At the entry, as the API server reports a duplicate key of a list map.
                p.push(
                    path.clone(),
                    format!(
                        "duplicate target cluster {:?} (also spec.targets[{first}])",
                        t.cluster
                    ),
                );
            }
            p.range(
                &format!("{path}.priority"),
                t.priority,
                0,
                limits::PRIORITY_MAX,
            );
            p.range(&format!("{path}.weight"), t.weight, 0, limits::WEIGHT_MAX);
            p.addresses(
                &format!("{path}.addresses"),
                &t.addresses,
                limits::ADDRESSES_MAX,
            );
        }
        if !targets.is_empty() && targets.iter().all(|t| t.weight == 0) {
            p.push(
                "spec.targets",
                "at least one target must have a weight above 0",
            );
        }
    }

    if let Some(hc) = &spec.health_check {
        match (&hc.http, &hc.tcp) {
            (Some(_), Some(_)) => p.push(
                "spec.healthCheck",
                "exactly one of http or tcp must be set, not both",
            ),
            (None, None) => p.push("spec.healthCheck", "exactly one of http or tcp must be set"),
            _ => {}
        }
        if let Some(http) = &hc.http {
            p.range("spec.healthCheck.http.port", http.port, 1, 65_535);
            if http.path.len() > 2048 {
                p.push(
                    "spec.healthCheck.http.path",
                    format!("is {} characters long; the limit is 2048", http.path.len()),
                );
            } else if !http.path.starts_with('/') {
                p.push(
                    "spec.healthCheck.http.path",
                    format!("{:?} must start with '/'", http.path),
                );
            }
            if http.expected_status.is_empty() {
                p.push(
                    "spec.healthCheck.http.expectedStatus",
                    "must list at least one status",
                );
            }
            p.count(
                "spec.healthCheck.http.expectedStatus",
                http.expected_status.len(),
                limits::EXPECTED_STATUS_MAX,
            );
            for (i, s) in http.expected_status.iter().enumerate() {
                p.range(
                    &format!("spec.healthCheck.http.expectedStatus[{i}]"),
                    *s,
                    100,
                    599,
                );
            }
            if let Some(host) = &http.host
                && let Err(e) = check_hostname(host)
            {
                p.push("spec.healthCheck.http.host", e.to_string());
            }
        }
        if let Some(tcp) = &hc.tcp {
            p.range("spec.healthCheck.tcp.port", tcp.port, 1, 65_535);
        }
        let interval = p.duration(
            "spec.healthCheck.interval",
            &hc.interval,
            limits::PROBE_INTERVAL_MIN,
            limits::PROBE_INTERVAL_MAX,
        );
        let timeout = p.duration(
            "spec.healthCheck.timeout",
            &hc.timeout,
            StdDuration::from_nanos(1),
            limits::PROBE_TIMEOUT_MAX,
        );
        if let (Some(interval), Some(timeout)) = (interval, timeout)
            && timeout > interval
        {
            p.push(
                "spec.healthCheck.timeout",
                format!("{} must not exceed interval {}", hc.timeout, hc.interval),
            );
        }
        let fast_interval = p.duration(
            "spec.healthCheck.fastInterval",
            &hc.fast_interval,
            limits::PROBE_INTERVAL_MIN,
            limits::PROBE_INTERVAL_MAX,
        );
        if let (Some(interval), Some(fast)) = (interval, fast_interval)
            && fast > interval
        {
            p.push(
                "spec.healthCheck.fastInterval",
                format!(
                    "{} must not exceed interval {}",
                    hc.fast_interval, hc.interval
                ),
            );
        }
        p.range(
            "spec.healthCheck.unhealthyThreshold",
            hc.unhealthy_threshold,
            limits::THRESHOLD_MIN,
            limits::THRESHOLD_MAX,
        );
        p.range(
            "spec.healthCheck.healthyThreshold",
            hc.healthy_threshold,
            limits::THRESHOLD_MIN,
            limits::THRESHOLD_MAX,
        );
    }

    let wau = &spec.when_all_unhealthy;
    if wau.mode == AllUnhealthyMode::Fallback && wau.fallback_addresses.is_empty() {
        p.push(
            "spec.whenAllUnhealthy.fallbackAddresses",
            "must list at least one address when mode is Fallback",
        );
    }
    p.addresses(
        "spec.whenAllUnhealthy.fallbackAddresses",
        &wau.fallback_addresses,
        limits::ADDRESSES_MAX,
    );

    let long = |p: &mut Problems, path: &str, value: &Duration, min: StdDuration| {
        p.duration(path, value, min, limits::LONG_DURATION_MAX);
    };
    long(
        p,
        "spec.onSourceUnavailable.maxStale",
        &spec.on_source_unavailable.max_stale,
        StdDuration::from_nanos(1),
    );
    long(
        p,
        "spec.failback.holdDown",
        &spec.failback.hold_down,
        StdDuration::ZERO,
    );
    long(
        p,
        "spec.failback.rampDuration",
        &spec.failback.ramp_duration,
        StdDuration::ZERO,
    );
    p.range(
        "spec.failback.rampSteps",
        spec.failback.ramp_steps,
        limits::RAMP_STEPS_MIN,
        limits::RAMP_STEPS_MAX,
    );
}

/// Validates one MemberCluster on its own. Returns every problem found.
pub fn member_cluster(cluster: &MemberCluster) -> Vec<Problem> {
    let mut p = Problems::default();
    check_object_name(&mut p, cluster.metadata.name.as_deref());
    let spec = &cluster.spec;
    if spec.region.is_empty() {
        p.push("spec.region", "must not be empty");
    } else if spec.region.len() > 63 {
        p.push("spec.region", "must be at most 63 characters");
    }
    if spec.kubeconfig_secret_ref.is_some() && spec.kubeconfig_path.is_some() {
        p.push(
            "spec.kubeconfigPath",
            "set either kubeconfigSecretRef or kubeconfigPath, not both",
        );
    }
    if let Some(secret) = &spec.kubeconfig_secret_ref {
        if secret.name.is_empty() {
            p.push("spec.kubeconfigSecretRef.name", "must not be empty");
        }
        if secret.key.is_empty() {
            p.push("spec.kubeconfigSecretRef.key", "must not be empty");
        }
    }
    let qps = spec.api_budget.qps;
    if !(0.01..=100.0).contains(&qps) {
        p.push(
            "spec.apiBudget.qps",
            format!("{qps} is out of range: must be between 0.01 and 100"),
        );
    }
    p.range("spec.apiBudget.burst", spec.api_budget.burst, 1, 1000);
    match spec.address_source {
        AddressSource::Static => {
            if spec.addresses.is_empty() {
                p.push(
                    "spec.addresses",
                    "must list at least one address when addressSource is Static",
                );
            }
        }
        AddressSource::LoadBalancer | AddressSource::EndpointSlice => {
            if spec.kubeconfig_secret_ref.is_none() && spec.kubeconfig_path.is_none() {
                p.push(
                    "spec.kubeconfigSecretRef",
                    format!(
                        "addressSource {:?} needs API access: set kubeconfigSecretRef or kubeconfigPath, or use addressSource Static",
                        spec.address_source
                    ),
                );
            }
        }
    }
    p.addresses(
        "spec.addresses",
        &spec.addresses,
        limits::CLUSTER_ADDRESSES_MAX,
    );
    p.0
}

/// A problem found by [`cross_check`], tied to the document it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetProblem {
    /// Index into the slice of policies (`Policy`) or clusters (`Cluster`).
    pub document: DocumentRef,
    pub problem: Problem,
    /// What kind of problem, as a status condition reason says it.
    pub reason: SetReason,
}

/// Kinds of [`SetProblem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetReason {
    /// Another policy serves the same hostname and owns it (it is older).
    HostnameConflict,
    /// The hostname is in no served zone.
    OutsideZones,
    /// The hostname's zone does not accept names from the policy's namespace.
    NamespaceNotAllowed,
    /// The hostname is one of its zone's own name servers.
    ReservedName,
    /// The service is in another namespace and the zone does not allow that.
    ServiceNamespaceNotAllowed,
    /// SRV records are asked of a target whose addresses have no ports.
    SrvWithoutPorts,
    /// A target names a MemberCluster that does not exist.
    UnknownCluster,
    /// Two documents of the same kind and name.
    Duplicate,
}

impl SetReason {
    /// The condition reason (`HostnameConflict`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SetReason::HostnameConflict => "HostnameConflict",
            SetReason::OutsideZones => "HostnameOutsideZones",
            SetReason::NamespaceNotAllowed => "NamespaceNotAllowed",
            SetReason::ReservedName => "HostnameReserved",
            SetReason::ServiceNamespaceNotAllowed => "ServiceNamespaceNotAllowed",
            SetReason::SrvWithoutPorts => "SrvWithoutPorts",
            SetReason::UnknownCluster => "UnknownCluster",
            SetReason::Duplicate => "Duplicate",
        }
    }

    /// Whether the policy cannot be served at all (as opposed to serving with a
    /// problem reported).
    pub fn excludes(self) -> bool {
        !matches!(self, SetReason::UnknownCluster)
    }
}

/// Which document of a set a [`SetProblem`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentRef {
    Policy(usize),
    Cluster(usize),
}

/// A served zone as the cross-document checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneRule {
    /// Zone apex (`global.example.com`).
    pub apex: String,
    /// Namespaces whose policies may publish names in the zone; `None`: every one.
    pub namespaces: Option<Vec<String>>,
    /// Names no policy may claim: the zone's own name servers (its NS targets and SOA
    /// primary). Answering for them would hijack the zone's delegation.
    pub reserved: Vec<String>,
    /// Policies may look for their service in a namespace other than their own. Off
    /// unless a zone says so: on a shared management cluster one team's policy must not
    /// publish another team's service.
    pub cross_namespace_services: bool,
}

impl ZoneRule {
    /// A zone open to every namespace, with no reserved names (what a policy file
    /// checked without a configuration is held to).
    pub fn open(apex: impl Into<String>) -> Self {
        Self {
            apex: apex.into(),
            namespaces: None,
            reserved: Vec::new(),
            cross_namespace_services: true,
        }
    }
}

/// Checks that need the whole set of documents and the served zones: unknown target
/// clusters, hostnames outside every zone or in a zone closed to the policy's
/// namespace, two policies on one hostname, duplicate names.
///
/// A hostname claimed twice belongs to the policy created first (oldest
/// `creationTimestamp`, then namespace/name order, as Gateway API resolves conflicts);
/// each other claimant gets a `HostnameConflict` naming the owner.
///
/// `zones` empty skips the zone checks (no configuration was given).
pub fn cross_check(
    policies: &[&FailoverPolicy],
    clusters: &[&MemberCluster],
    zones: &[ZoneRule],
) -> Vec<SetProblem> {
    let mut out = Vec::new();
    let mut push = |document, path: &str, message: String, reason| {
        out.push(SetProblem {
            document,
            problem: Problem::new(path, message),
            reason,
        })
    };

    let mut cluster_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in clusters.iter().enumerate() {
        let Some(name) = c.metadata.name.as_deref() else {
            continue;
        };
        if let Some(&first) = cluster_names.get(name) {
            push(
                DocumentRef::Cluster(i),
                "metadata.name",
                format!(
                    "MemberCluster {name:?} is defined twice (first as document {})",
                    first + 1
                ),
                SetReason::Duplicate,
            );
        } else {
            cluster_names.insert(name, i);
        }
    }

    // Owner of each hostname: the oldest claimant.
    let age = |p: &FailoverPolicy| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            policy_id(p),
        )
    };
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for (i, policy) in policies.iter().enumerate() {
        let host = canonical(&policy.spec.hostname);
        match owners.get(&host) {
            // Without timestamps (files) namespace/name order decides.
            Some(&o) if age(policies[o]) <= age(policy) => {}
            _ => {
                owners.insert(host, i);
            }
        }
    }

    let mut policy_names: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, policy) in policies.iter().enumerate() {
        let id = policy_id(policy);
        if let Some(&first) = policy_names.get(&id) {
            push(
                DocumentRef::Policy(i),
                "metadata.name",
                format!(
                    "FailoverPolicy {}/{} is defined twice (first as document {})",
                    id.0,
                    id.1,
                    first + 1
                ),
                SetReason::Duplicate,
            );
        } else {
            policy_names.insert(id.clone(), i);
        }

        let host = canonical(&policy.spec.hostname);
        if let Some(&owner) = owners.get(&host)
            && owner != i
        {
            let (ns, name) = policy_id(policies[owner]);
            push(
                DocumentRef::Policy(i),
                "spec.hostname",
                format!("{host:?} is already claimed by FailoverPolicy {ns}/{name}"),
                SetReason::HostnameConflict,
            );
        }

        // A name server of any served zone is reserved, whichever zone holds the name:
        // `ns1.sub.example` serving `example` is not a policy's of `sub.example`.
        let serves = zones
            .iter()
            .find(|z| z.reserved.iter().any(|r| canonical(r) == host));
        if let Some(ZoneRule { apex, .. }) = serves {
            push(
                DocumentRef::Policy(i),
                "spec.hostname",
                format!(
                    "{host:?} is a name server of zone {} and is reserved for it",
                    canonical(apex)
                ),
                SetReason::ReservedName,
            )
        } else if !zones.is_empty() {
            // The most specific zone holding the name decides (zones may nest).
            match zones
                .iter()
                .filter(|z| name_in_zone(&host, &z.apex))
                .max_by_key(|z| canonical(&z.apex).len())
            {
                None => {
                    let list = zones
                        .iter()
                        .map(|z| canonical(&z.apex))
                        .collect::<Vec<_>>()
                        .join(", ");
                    push(
                        DocumentRef::Policy(i),
                        "spec.hostname",
                        format!("{host:?} is not inside any served zone (zones: {list})"),
                        SetReason::OutsideZones,
                    );
                }
                Some(ZoneRule {
                    apex,
                    namespaces: Some(allowed),
                    ..
                }) if !allowed.contains(&id.0) => push(
                    DocumentRef::Policy(i),
                    "spec.hostname",
                    format!(
                        "namespace {:?} may not publish names in zone {} (allowed: {})",
                        id.0,
                        canonical(apex),
                        allowed.join(", ")
                    ),
                    SetReason::NamespaceNotAllowed,
                ),
                Some(ZoneRule {
                    apex,
                    cross_namespace_services: false,
                    ..
                }) if policy
                    .spec
                    .service
                    .as_ref()
                    .and_then(|s| s.namespace.as_deref())
                    .is_some_and(|ns| ns != id.0) =>
                {
                    push(
                        DocumentRef::Policy(i),
                        "spec.service.namespace",
                        format!(
                            "must be the policy's own namespace {:?}: zone {} does not allow services of other namespaces (allowCrossNamespaceServices)",
                            id.0,
                            canonical(apex)
                        ),
                        SetReason::ServiceNamespaceNotAllowed,
                    )
                }
                Some(_) => {}
            }
        }

        // Without any MemberCluster in the set (a policy file checked alone) there is
        // nothing to resolve targets against.
        if !clusters.is_empty() {
            for (t, target) in policy.spec.targets.iter().flatten().enumerate() {
                if !target.cluster.is_empty()
                    && !cluster_names.contains_key(target.cluster.as_str())
                {
                    push(
                        DocumentRef::Policy(i),
                        &format!("spec.targets[{t}].cluster"),
                        format!("unknown MemberCluster {:?}", target.cluster),
                        SetReason::UnknownCluster,
                    );
                } else if policy.spec.record_types.contains(&crate::RecordType::Srv)
                    && cluster_names
                        .get(target.cluster.as_str())
                        .is_some_and(|&c| {
                            clusters[c].spec.address_source == crate::AddressSource::Static
                        })
                {
                    push(
                        DocumentRef::Policy(i),
                        &format!("spec.targets[{t}].cluster"),
                        format!(
                            "MemberCluster {:?} lists static addresses, which have no ports: SRV records cannot be made for it",
                            target.cluster
                        ),
                        SetReason::SrvWithoutPorts,
                    );
                }
            }
        }
    }
    out
}

fn policy_id(p: &FailoverPolicy) -> (String, String) {
    let name = p.metadata.name.clone().unwrap_or_default();
    (p.namespace_or_default().to_owned(), name)
}

/// The id of a policy as an operator may write it: `namespace/name`, or a bare `name`
/// in the `default` namespace, as a document without a namespace is.
pub fn policy_id_from_text(text: &str) -> String {
    let text = text.trim();
    if text.contains('/') {
        text.to_owned()
    } else {
        format!("{}/{text}", crate::DEFAULT_NAMESPACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A policy with every bounded value at its maximum.
    fn at_the_limits() -> Value {
        let l = |n: usize, f: &dyn Fn(usize) -> Value| (0..n).map(f).collect::<Vec<_>>();
        json!({
            "apiVersion": "lifeline.dev/v1alpha1",
            "kind": "FailoverPolicy",
            "metadata": {"name": "edge", "namespace": "shop"},
            "spec": {
                "hostname": "edge.global.example.com",
                "ttl": limits::TTL_MAX,
                "maxAnswers": limits::MAX_ANSWERS_MAX,
                "targets": l(limits::TARGETS_MAX, &|i| json!({
                    "cluster": format!("c{i}"),
                    "priority": limits::PRIORITY_MAX,
                    "weight": limits::WEIGHT_MAX,
                    "addresses": l(limits::ADDRESSES_MAX, &|a| json!(format!("10.{i}.0.{a}"))),
                })),
                "healthCheck": {
                    "http": {"port": 65535, "expectedStatus": l(limits::EXPECTED_STATUS_MAX, &|i| json!(200 + i))},
                    "interval": limits::PROBE_INTERVAL_MAX_TEXT,
                    "fastInterval": limits::PROBE_INTERVAL_MAX_TEXT,
                    "timeout": limits::PROBE_INTERVAL_MAX_TEXT,
                    "unhealthyThreshold": limits::THRESHOLD_MAX,
                    "healthyThreshold": limits::THRESHOLD_MAX,
                },
                "whenAllUnhealthy": {"mode": "Fallback", "fallbackAddresses": l(limits::ADDRESSES_MAX, &|a| json!(format!("192.0.2.{a}")))},
                "onSourceUnavailable": {"mode": "TreatAsUnhealthy", "maxStale": limits::LONG_DURATION_MAX_TEXT},
                "failback": {
                    "holdDown": limits::LONG_DURATION_MAX_TEXT,
                    "rampDuration": limits::LONG_DURATION_MAX_TEXT,
                    "rampSteps": limits::RAMP_STEPS_MAX,
                },
            }
        })
    }

    fn problems(doc: Value) -> Vec<Problem> {
        failover_policy(&serde_json::from_value(doc).unwrap())
    }

    #[test]
    fn every_value_at_its_limit_is_accepted() {
        assert_eq!(problems(at_the_limits()), []);
        let mut fastest = at_the_limits();
        fastest["spec"]["healthCheck"]["interval"] = json!(limits::PROBE_INTERVAL_MIN_TEXT);
        fastest["spec"]["healthCheck"]["fastInterval"] = json!(limits::PROBE_INTERVAL_MIN_TEXT);
        fastest["spec"]["healthCheck"]["timeout"] = json!(limits::PROBE_INTERVAL_MIN_TEXT);
        assert_eq!(problems(fastest), []);
    }

    #[test]
    fn every_value_past_its_limit_is_named() {
        let past: [(&str, Value, &str); 16] = [
            ("/spec/ttl", json!(limits::TTL_MAX + 1), "spec.ttl"),
            (
                "/spec/maxAnswers",
                json!(limits::MAX_ANSWERS_MAX + 1),
                "spec.maxAnswers",
            ),
            ("/spec/maxAnswers", json!(0), "spec.maxAnswers"),
            (
                "/spec/targets/0/priority",
                json!(limits::PRIORITY_MAX + 1),
                "spec.targets[0].priority",
            ),
            (
                "/spec/targets/3/weight",
                json!(limits::WEIGHT_MAX + 1),
                "spec.targets[3].weight",
            ),
            (
                "/spec/healthCheck/interval",
                json!("61m"),
                "spec.healthCheck.interval",
            ),
            (
                "/spec/healthCheck/interval",
                json!("99ms"),
                "spec.healthCheck.interval",
            ),
            (
                "/spec/healthCheck/fastInterval",
                json!("99ms"),
                "spec.healthCheck.fastInterval",
            ),
            (
                "/spec/healthCheck/fastInterval",
                json!("61m"),
                "spec.healthCheck.fastInterval",
            ),
            (
                "/spec/healthCheck/unhealthyThreshold",
                json!(limits::THRESHOLD_MAX + 1),
                "spec.healthCheck.unhealthyThreshold",
            ),
            (
                "/spec/onSourceUnavailable/maxStale",
                json!("169h"),
                "spec.onSourceUnavailable.maxStale",
            ),
            (
                "/spec/failback/holdDown",
                json!("168h1ns"),
                "spec.failback.holdDown",
            ),
            (
                "/spec/failback/rampDuration",
                json!("9999999999999999999999h"),
                "spec.failback.rampDuration",
            ),
            (
                "/spec/failback/rampDuration",
                json!("1".repeat(40) + "s"),
                "spec.failback.rampDuration",
            ),
            (
                "/spec/failback/rampSteps",
                json!(limits::RAMP_STEPS_MAX + 1),
                "spec.failback.rampSteps",
            ),
            (
                "/spec/healthCheck/http/expectedStatus/32",
                json!(204),
                "spec.healthCheck.http.expectedStatus",
            ),
        ];
        for (pointer, value, path) in past {
            let mut doc = at_the_limits();
            match doc.pointer_mut(pointer) {
                Some(slot) => *slot = value.clone(),
                None => {
                    // One past the end of a list: append.
                    let (list, _) = pointer.rsplit_once('/').unwrap();
                    doc.pointer_mut(list)
                        .unwrap()
                        .as_array_mut()
                        .unwrap()
                        .push(value.clone());
                }
            }
            let found = problems(doc);
            assert!(
                found.iter().any(|p| p.path == path),
                "{pointer} = {value}: expected a problem at {path}, got {found:?}"
            );
        }
    }

    #[test]
    fn lists_past_their_limit_are_named() {
        let mut doc = at_the_limits();
        doc["spec"]["targets"][0]["addresses"]
            .as_array_mut()
            .unwrap()
            .push(json!("10.9.9.9"));
        doc["spec"]["whenAllUnhealthy"]["fallbackAddresses"]
            .as_array_mut()
            .unwrap()
            .push(json!("192.0.2.200"));
        let extra = json!({"cluster": "extra"});
        doc["spec"]["targets"].as_array_mut().unwrap().push(extra);
        let paths: Vec<String> = problems(doc).into_iter().map(|p| p.path).collect();
        for want in [
            "spec.targets",
            "spec.targets[0].addresses",
            "spec.whenAllUnhealthy.fallbackAddresses",
        ] {
            assert!(
                paths.iter().any(|p| p == want),
                "{want} missing from {paths:?}"
            );
        }

        let cluster = |n: usize| -> MemberCluster {
            serde_json::from_value(json!({
                "apiVersion": "lifeline.dev/v1alpha1",
                "kind": "MemberCluster",
                "metadata": {"name": "static"},
                "spec": {"region": "eu", "addressSource": "Static",
                    "addresses": (0..n).map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)).collect::<Vec<_>>()},
            }))
            .unwrap()
        };
        assert_eq!(member_cluster(&cluster(limits::CLUSTER_ADDRESSES_MAX)), []);
        let over = member_cluster(&cluster(limits::CLUSTER_ADDRESSES_MAX + 1));
        assert!(over.iter().any(|p| p.path == "spec.addresses"), "{over:?}");
    }

    #[test]
    fn srv_records_are_refused_for_a_target_whose_addresses_have_no_ports() {
        let cluster = |name: &str, source: &str| -> MemberCluster {
            serde_json::from_value(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": name},
                "spec": {"region": "r", "addressSource": source, "addresses": if source == "Static" { json!(["192.0.2.1"]) } else { json!([]) }},
            }))
            .unwrap()
        };
        let (fixed, balanced) = (cluster("fixed", "Static"), cluster("lb", "LoadBalancer"));
        let policy: FailoverPolicy = serde_json::from_value(json!({
            "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"hostname": "web.global.example.com", "recordTypes": ["A", "SRV"],
                     "service": {"name": "web", "portName": "https"},
                     "targets": [{"cluster": "lb"}, {"cluster": "fixed"}]},
        }))
        .unwrap();
        let zones = [ZoneRule::open("global.example.com")];
        let found = cross_check(&[&policy], &[&fixed, &balanced], &zones);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, SetReason::SrvWithoutPorts);
        assert_eq!(found[0].problem.path, "spec.targets[1].cluster");
        assert!(
            found[0].reason.excludes(),
            "the policy is not served half-made"
        );
        let mut a_only = policy.clone();
        a_only
            .spec
            .record_types
            .retain(|t| *t != crate::RecordType::Srv);
        assert!(cross_check(&[&a_only], &[&fixed, &balanced], &zones).is_empty());
    }

    #[test]
    fn the_oldest_claimant_owns_a_hostname_and_zones_choose_namespaces() {
        let fp = |ns: &str, created: &str, host: &str| -> FailoverPolicy {
            serde_json::from_value(json!({
                "apiVersion": "lifeline.dev/v1alpha1", "kind": "FailoverPolicy",
                "metadata": {"name": "web", "namespace": ns, "creationTimestamp": created},
                "spec": {"hostname": host, "targets": [{"cluster": "a"}]},
            }))
            .unwrap()
        };
        let newer = fp("aaa", "2026-02-01T00:00:00Z", "web.global.example.com");
        let older = fp("zzz", "2026-01-01T00:00:00Z", "Web.Global.Example.com.");
        let zones = [
            ZoneRule::open("global.example.com"),
            ZoneRule {
                apex: "closed.example.com".into(),
                namespaces: Some(vec!["zzz".into()]),
                reserved: vec!["ns1.closed.example.com.".into()],
                cross_namespace_services: false,
            },
        ];
        let found = cross_check(&[&newer, &older], &[], &zones);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].document, DocumentRef::Policy(0));
        assert_eq!(found[0].reason, SetReason::HostnameConflict);
        assert!(found[0].problem.message.contains("zzz/web"), "{found:?}");

        let outsider = fp("aaa", "2026-01-01T00:00:00Z", "shop.closed.example.com");
        let insider = fp("zzz", "2026-01-01T00:00:00Z", "api.closed.example.com");
        let found = cross_check(&[&outsider, &insider], &[], &zones);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, SetReason::NamespaceNotAllowed);
        assert_eq!(found[0].document, DocumentRef::Policy(0));

        // A zone's own name server is no policy's to answer for.
        let hijack = fp("zzz", "2026-01-01T00:00:00Z", "NS1.closed.example.com");
        let found = cross_check(&[&hijack], &[], &zones);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, SetReason::ReservedName);
        assert!(
            found[0]
                .problem
                .message
                .contains("name server of zone closed.example.com"),
            "{found:?}"
        );

        // A name server in a nested zone is reserved for the zone it serves, not
        // claimable by a policy of the nested one.
        let nested = [
            ZoneRule {
                apex: "example.org".into(),
                namespaces: None,
                reserved: vec!["ns1.sub.example.org".into()],
                cross_namespace_services: false,
            },
            ZoneRule::open("sub.example.org"),
        ];
        let claim = fp("zzz", "2026-01-01T00:00:00Z", "ns1.sub.example.org");
        let found = cross_check(&[&claim], &[], &nested);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, SetReason::ReservedName);
        assert!(
            found[0].problem.message.contains("zone example.org"),
            "{found:?}"
        );

        // Another namespace's service only where the zone allows it.
        let mut borrower = fp("zzz", "2026-01-01T00:00:00Z", "b.closed.example.com");
        borrower.spec.service = Some(crate::ServiceRef {
            name: "api".into(),
            namespace: Some("other".into()),
            port_name: None,
        });
        let found = cross_check(&[&borrower], &[], &zones);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, SetReason::ServiceNamespaceNotAllowed);
        assert_eq!(found[0].problem.path, "spec.service.namespace");
        borrower.spec.hostname = "b.global.example.com".into();
        assert!(
            cross_check(&[&borrower], &[], &zones).is_empty(),
            "an open zone allows it"
        );
        borrower.spec.hostname = "b.closed.example.com".into();
        borrower.spec.service.as_mut().unwrap().namespace = Some("zzz".into());
        assert!(
            cross_check(&[&borrower], &[], &zones).is_empty(),
            "its own namespace, spelled out"
        );
    }

    #[test]
    fn names_are_matched_to_zones_on_label_boundaries() {
        assert!(name_in_zone("a.global.example.com", "global.example.com."));
        assert!(name_in_zone("Global.Example.com.", "global.example.com"));
        assert!(!name_in_zone("aglobal.example.com", "global.example.com"));
        assert!(!name_in_zone("example.com", "global.example.com"));
    }

    #[test]
    fn hostnames_with_bad_labels_are_rejected() {
        assert!(check_hostname("checkout.global.example.com").is_ok());
        assert!(check_hostname("-bad.example.com").is_err());
        assert!(check_hostname("a..b").is_err());
        assert!(check_hostname(&"a".repeat(64)).is_err());
        assert!(check_hostname("").is_err());
    }
}
