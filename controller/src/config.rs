//! The process configuration file, `lifeline.yaml`.
//!
//! ```yaml
//! zones: [...]          # zones served authoritatively, with SOA/NS data
//! dns: {...}            # DNS listen addresses, snapshot directory, geo table
//! admin: {listen, tokenEnv}
//! store: {type: embedded, dataDir} | {type: etcd, endpoints, prefix, tls, ...}
//! policySource: {type: files, paths} | {type: kubernetes, ...}
//! defaults: {probe: {...}, apiBudget: {...}}
//! memberCredentials: {keyFile, recheckInterval}   # sealed cache of member kubeconfigs
//! ```
//!
//! Every struct rejects unknown fields: a typo in an operator's file must be an error,
//! not a silently ignored setting.

use std::{net::SocketAddr, path::PathBuf};

use lifeline_crds::{ApiBudget, document, validate::Problem};
use lifeline_dns::{DnsConfig, ZoneConfig};
use serde::{Deserialize, Serialize};

/// Everything the `lifeline` process reads from its configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Zones served authoritatively; every policy hostname must fall inside one.
    pub zones: Vec<ZoneConfig>,
    /// The DNS server's own settings.
    #[serde(default)]
    pub dns: DnsConfig,
    /// The admin HTTP API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where decisions, policies and overrides are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// Where FailoverPolicies and MemberClusters come from.
    pub policy_source: PolicySource,
    /// Defaults applied where a policy or cluster leaves a setting out.
    #[serde(default)]
    pub defaults: Defaults,
    /// Decision engine settings (blast-radius guard, failback pacing).
    #[serde(default)]
    pub engine: lifeline_engine::EngineConfig,
    /// The guard on policy changes that would stop serving many names at once.
    #[serde(default)]
    pub policy_changes: PolicyChanges,
    /// The override audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// How member kubeconfigs read from Secrets are kept for restarts without the
    /// management API.
    #[serde(default)]
    pub member_credentials: MemberCredentials,
    /// Where DNS is answered: in this process (the default) or by a `lifeline dns` of
    /// its own.
    #[serde(default)]
    pub dns_server: DnsServer,
}

/// Where DNS is answered.
///
/// With `separate: true`, `lifeline run` opens no DNS socket: a `lifeline dns` process
/// (a container of its own, with its own limits, in Kubernetes) answers, fed through
/// etcd with the etcd store, or through `dns.sourceDir`, where `lifeline run` writes
/// each zone after every change, with the embedded store. Nothing the controller does
/// with memory, CPU or descriptors, and no crash of it, can then stop answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsServer {
    /// DNS is answered by `lifeline dns`, not by `lifeline run`.
    #[serde(default)]
    pub separate: bool,
    /// Where `lifeline dns` serves `/healthz`, `/readyz` and `/metrics`; `admin.listen`
    /// when absent. Set it when both processes share a network namespace (containers
    /// of one pod do), as the two cannot listen on one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<std::net::SocketAddr>,
}

/// Member kubeconfigs read from `kubeconfigSecretRef` Secrets are sealed with the key in
/// `keyFile` (32 bytes: raw, hex or base64; e.g. a mounted Secret) and kept in the store,
/// so a replica restarted while the management API is down still reaches its members.
/// Without `keyFile` nothing is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How often each Secret in use is read again; a change restarts its watcher.
    #[serde(
        default = "default_recheck_interval",
        with = "lifeline_model::duration::text"
    )]
    pub recheck_interval: std::time::Duration,
}

impl Default for MemberCredentials {
    fn default() -> Self {
        Self {
            key_file: None,
            recheck_interval: default_recheck_interval(),
        }
    }
}

fn default_recheck_interval() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

/// How long override audit entries are kept; older ones are pruned hourly by the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(
        default = "default_audit_retention",
        with = "lifeline_model::duration::text"
    )]
    pub retention: std::time::Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention: default_audit_retention(),
        }
    }
}

/// 90 days: long enough for a post-incident review.
fn default_audit_retention() -> std::time::Duration {
    std::time::Duration::from_secs(90 * 24 * 3600)
}

/// A new policy set that would stop serving every name, or more than
/// `maxRemovedShare` of them (and at least two), is held: the old set stays in force
/// until an operator releases the change (`lifeline ctl release`). Removing one name is
/// never held, unless it is the last one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyChanges {
    /// Share of the served names (0 to 1) one change may remove without being held.
    #[serde(default = "default_max_removed_share")]
    pub max_removed_share: f64,
}

impl Default for PolicyChanges {
    fn default() -> Self {
        Self {
            max_removed_share: default_max_removed_share(),
        }
    }
}

fn default_max_removed_share() -> f64 {
    0.25
}

/// The admin HTTP API (status, overrides, metrics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token for write endpoints.
    /// Without a token, writes are accepted only when `listen` is a loopback address.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Who changes made with that token are recorded as in the audit trail
    /// (`token:<tokenIdentity>`), whatever author a request names.
    #[serde(default = "default_token_identity")]
    pub token_identity: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_env: default_token_env(),
            token_identity: default_token_identity(),
        }
    }
}

fn default_token_identity() -> String {
    "admin".to_owned()
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_token_env() -> String {
    "LIFELINE_ADMIN_TOKEN".to_owned()
}

/// The store behind decisions and overrides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum StoreConfig {
    /// In-process store persisted to a directory: one replica, no etcd.
    #[serde(rename_all = "camelCase")]
    Embedded {
        #[serde(default = "default_store_dir")]
        data_dir: PathBuf,
    },
    /// etcd, for several replicas and break-glass control.
    #[serde(rename_all = "camelCase")]
    Etcd {
        endpoints: Vec<String>,
        #[serde(default = "default_prefix")]
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<EtcdTls>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Environment variable holding the password (never the password itself).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        /// Leader lease: a replica that stops renewing loses leadership after this long.
        #[serde(default = "default_lease_ttl", with = "lifeline_model::duration::text")]
        lease_ttl: std::time::Duration,
    },
}

fn default_lease_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

impl StoreConfig {
    /// How to reach etcd, with the password read from its environment variable.
    pub fn etcd_connect(&self) -> Option<(lifeline_etcd::source::EtcdConnect, String)> {
        let StoreConfig::Etcd {
            endpoints,
            prefix,
            tls,
            username,
            password_env,
            ..
        } = self
        else {
            return None;
        };
        let mut connect = lifeline_etcd::source::EtcdConnect::new(endpoints.clone());
        connect.tls = tls.as_ref().map(|t| lifeline_etcd::source::EtcdTlsFiles {
            ca_file: t.ca_file.clone(),
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
        });
        if let Some(user) = username {
            let password = password_env
                .as_deref()
                .map(etcd_password)
                .unwrap_or_default();
            connect.user = Some((user.clone(), password));
        }
        Some((connect, prefix.clone()))
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Embedded {
            data_dir: default_store_dir(),
        }
    }
}

/// The etcd password in environment variable `var` (empty when unset), without one
/// trailing line ending: a Secret made with `kubectl create secret --from-file` keeps
/// the file's last newline, and etcd would refuse the password with it.
pub fn etcd_password(var: &str) -> String {
    without_line_ending(std::env::var(var).unwrap_or_default())
}

fn without_line_ending(mut value: String) -> String {
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    value
}

fn default_store_dir() -> PathBuf {
    PathBuf::from("/var/lib/lifeline/store")
}
fn default_prefix() -> String {
    "/lifeline".to_owned()
}

/// TLS material for etcd client connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// Where policies and member clusters are declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum PolicySource {
    /// YAML files holding FailoverPolicy and MemberCluster documents; relative paths are
    /// resolved against the configuration file's directory.
    Files { paths: Vec<PathBuf> },
    /// CRs in the management cluster.
    #[serde(rename_all = "camelCase")]
    Kubernetes {
        /// kubeconfig for the management cluster; in-cluster configuration when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kubeconfig: Option<PathBuf>,
        /// Namespace watched for FailoverPolicies; all namespaces when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
}

/// Defaults for settings a policy or cluster leaves out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub probe: ProbeDefaults,
    /// API budget toward member clusters whose MemberCluster does not set one.
    #[serde(default)]
    pub api_budget: ApiBudget,
}

/// Prober-wide settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeDefaults {
    /// Interval for policies without a health check interval.
    #[serde(
        default = "default_probe_interval",
        with = "lifeline_model::duration::text"
    )]
    pub interval: std::time::Duration,
    /// Timeout for policies without a health check timeout.
    #[serde(
        default = "default_probe_timeout",
        with = "lifeline_model::duration::text"
    )]
    pub timeout: std::time::Duration,
    /// Probes in flight at once, across all targets.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

impl Default for ProbeDefaults {
    fn default() -> Self {
        Self {
            interval: default_probe_interval(),
            timeout: default_probe_timeout(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_probe_interval() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_probe_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}
fn default_concurrency() -> u32 {
    64
}

impl Config {
    /// Reads and validates a configuration file, returning every problem found.
    pub fn load(path: &std::path::Path) -> Result<Config, Vec<Problem>> {
        let bytes = std::fs::read(path)
            .map_err(|e| vec![Problem::new("", format!("cannot read file: {e}"))])?;
        Self::from_bytes(&bytes)
    }

    /// Parses and validates configuration text.
    pub fn from_bytes(bytes: &[u8]) -> Result<Config, Vec<Problem>> {
        document::check_size(bytes).map_err(|p| vec![p])?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| vec![Problem::new("", format!("file is not UTF-8: {e}"))])?;
        let mut docs = document::parse_yaml_stream(text).map_err(|p| vec![p])?;
        if docs.len() != 1 {
            return Err(vec![Problem::new(
                "",
                format!(
                    "a configuration file holds exactly one YAML document, found {}",
                    docs.len()
                ),
            )]);
        }
        Self::from_value(docs.remove(0))
    }

    /// Decodes and validates one already-parsed document.
    pub fn from_value(value: serde_json::Value) -> Result<Config, Vec<Problem>> {
        let config: Config = document::decode(value).map_err(|p| vec![p])?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// Zone apexes served, for checking policy hostnames.
    pub fn zone_origins(&self) -> Vec<String> {
        self.zones.iter().map(|z| z.origin.clone()).collect()
    }

    /// The address records of each zone's in-zone name servers, by normalised apex and
    /// owner key: published beside the policies' names (no policy may claim them).
    pub fn nameserver_records(&self) -> crate::publish::ZoneRecords {
        self.zones
            .iter()
            .filter(|z| !z.nameserver_addresses.is_empty())
            .map(|z| {
                let apex = lifeline_model::name::canonical(&z.origin);
                let names = z
                    .nameserver_addresses
                    .iter()
                    .map(|(name, addresses)| {
                        let records = lifeline_model::NameRecords {
                            address: Some(lifeline_model::AddressSet {
                                ttl: z.ttl,
                                targets: addresses
                                    .iter()
                                    .map(|a| lifeline_model::Target {
                                        address: *a,
                                        cluster: String::new(),
                                        region: String::new(),
                                        weight: 1,
                                        share: None,
                                    })
                                    .collect(),
                                max_answers: None,
                                geo: false,
                                standby: Vec::new(),
                            }),
                            ..Default::default()
                        };
                        (
                            crate::publish::key_in_zone(
                                &lifeline_model::name::canonical(name),
                                &apex,
                            ),
                            records,
                        )
                    })
                    .collect();
                (apex, names)
            })
            .collect()
    }

    /// Zones as the cross-document checks see them: apex and allowed namespaces.
    pub fn zone_rules(&self) -> Vec<lifeline_crds::validate::ZoneRule> {
        self.zones
            .iter()
            .map(|z| lifeline_crds::validate::ZoneRule {
                apex: z.origin.clone(),
                namespaces: z.namespaces.clone(),
                reserved: z
                    .nameservers
                    .iter()
                    .chain([&z.primary_ns])
                    .cloned()
                    .collect(),
                cross_namespace_services: z.allow_cross_namespace_services,
            })
            .collect()
    }

    /// Every problem in the configuration, with field paths.
    pub fn validate(&self) -> Vec<Problem> {
        // The DNS shim owns the rules for its own sections.
        let mut out: Vec<Problem> = lifeline_dns::config::validate(&self.dns, &self.zones)
            .into_iter()
            .map(|(path, message)| Problem::new(path, message))
            .collect();
        self.check_dns_server(&mut out);
        self.check_credentials(&mut out);
        self.check_store(&mut out);
        self.check_policy_source(&mut out);
        self.check_probe_defaults(&mut out);
        self.check_limits(&mut out);
        self.check_api_budget(&mut out);
        out
    }

    /// A separate `lifeline dns` needs a way to be fed and a port of its own.
    fn check_dns_server(&self, out: &mut Vec<Problem>) {
        if self.dns_server.separate
            && matches!(self.store, StoreConfig::Embedded { .. })
            && self.dns.source_dir.is_none()
        {
            out.push(Problem::new(
                "dns.sourceDir",
                "is required when dnsServer.separate is set with the embedded store: lifeline run writes each zone there for lifeline dns to serve",
            ));
        }
        if let Some(dns_admin) = self.dns_server.admin
            && dns_admin == self.admin.listen
        {
            out.push(Problem::new(
                "dnsServer.admin",
                format!(
                    "{dns_admin} is admin.listen already; lifeline run and lifeline dns cannot share it"
                ),
            ));
        }
    }

    /// How member kubeconfigs are rechecked and how admin callers are authenticated.
    fn check_credentials(&self, out: &mut Vec<Problem>) {
        if self.member_credentials.recheck_interval < std::time::Duration::from_secs(1) {
            out.push(Problem::new(
                "memberCredentials.recheckInterval",
                "must be at least 1s",
            ));
        }
        if self.admin.token_identity.trim().is_empty() {
            out.push(Problem::new("admin.tokenIdentity", "must not be empty"));
        }
        if self.admin.token_env.is_empty() {
            out.push(Problem::new(
                "admin.tokenEnv",
                "must name an environment variable",
            ));
        }
    }

    /// The etcd store's settings (the embedded store has none that can be wrong).
    fn check_store(&self, out: &mut Vec<Problem>) {
        let StoreConfig::Etcd {
            endpoints,
            prefix,
            lease_ttl,
            ..
        } = &self.store
        else {
            return;
        };
        if *lease_ttl < std::time::Duration::from_secs(1) {
            out.push(Problem::new("store.leaseTtl", "must be at least 1s"));
        }
        if endpoints.is_empty() {
            out.push(Problem::new(
                "store.endpoints",
                "must list at least one etcd endpoint",
            ));
        }
        if !prefix.starts_with('/') {
            out.push(Problem::new(
                "store.prefix",
                format!("{prefix:?} must start with '/'"),
            ));
        }
    }

    fn check_policy_source(&self, out: &mut Vec<Problem>) {
        if let PolicySource::Files { paths } = &self.policy_source
            && paths.is_empty()
        {
            out.push(Problem::new(
                "policySource.paths",
                "must list at least one file",
            ));
        }
    }

    fn check_probe_defaults(&self, out: &mut Vec<Problem>) {
        let probe = &self.defaults.probe;
        for (field, d) in [("interval", probe.interval), ("timeout", probe.timeout)] {
            if d.is_zero() {
                out.push(Problem::new(
                    format!("defaults.probe.{field}"),
                    "must be greater than zero",
                ));
            }
        }
        if !(1..=10_000).contains(&probe.concurrency) {
            out.push(Problem::new(
                "defaults.probe.concurrency",
                format!(
                    "{} is out of range: must be between 1 and 10000",
                    probe.concurrency
                ),
            ));
        }
    }

    /// The bounds on what the engine, the policy-change guard and the audit trail do.
    fn check_limits(&self, out: &mut Vec<Problem>) {
        let guard = &self.engine.blast_radius;
        if !(guard.fraction > 0.0 && guard.fraction <= 1.0) {
            out.push(Problem::new(
                "engine.blastRadius.fraction",
                format!(
                    "{} is out of range: must be above 0 and at most 1",
                    guard.fraction
                ),
            ));
        }
        if self.audit.retention < std::time::Duration::from_secs(3600) {
            out.push(Problem::new(
                "audit.retention",
                "must be at least 1h (entries are pruned hourly)",
            ));
        }
        let share = self.policy_changes.max_removed_share;
        if !(0.0..=1.0).contains(&share) {
            out.push(Problem::new(
                "policyChanges.maxRemovedShare",
                format!("{share} is out of range: must be between 0 and 1"),
            ));
        }
        if self.engine.max_concurrent_ramps == 0 {
            out.push(Problem::new(
                "engine.maxConcurrentRamps",
                "must be at least 1",
            ));
        }
    }

    fn check_api_budget(&self, out: &mut Vec<Problem>) {
        let budget = &self.defaults.api_budget;
        if !(0.01..=100.0).contains(&budget.qps) {
            out.push(Problem::new(
                "defaults.apiBudget.qps",
                format!(
                    "{} is out of range: must be between 0.01 and 100",
                    budget.qps
                ),
            ));
        }
        if !(1..=1000).contains(&budget.burst) {
            out.push(Problem::new(
                "defaults.apiBudget.burst",
                format!(
                    "{} is out of range: must be between 1 and 1000",
                    budget.burst
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::without_line_ending;

    #[test]
    fn a_password_from_a_file_loses_its_last_line_ending_and_nothing_else() {
        for (value, want) in [
            ("s3cret", "s3cret"),
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("s3cret\n\n", "s3cret\n"),
            (" s3cret ", " s3cret "),
            ("", ""),
        ] {
            assert_eq!(without_line_ending(value.to_owned()), want, "{value:?}");
        }
    }
}
