//! Member kubeconfigs: read from a file or from a Secret in the management cluster, a
//! Secret's copy sealed into the store, and each Secret in use read again to notice a
//! rotation.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use lifeline_crds::{MemberCluster, SecretKeyRef};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    kubernetes::credentials::{OpenError, SealKey},
    kubernetes::member,
    store::{Store, Writer},
};

/// The store and key that keep member kubeconfigs read from Secrets.
#[derive(Clone, Debug)]
pub struct CredentialCache {
    pub store: Store,
    pub key: Arc<SealKey>,
}

pub(super) type Digest = [u8; 32];

fn digest(bytes: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Why a member's kubeconfig could not be loaded; its MemberCluster status shows it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("kubeconfigSecretRef needs policySource kubernetes; use kubeconfigPath with files")]
    NoManagement,
    #[error("no kubeconfig for a cluster that needs API access")]
    NoKubeconfig,
    #[error("{0}")]
    File(member::Error),
    #[error("timed out reading the Secret")]
    Timeout,
    #[error("cannot read Secret {secret}: {source}")]
    Read { secret: String, source: kube::Error },
    #[error("Secret {secret} has no key {key:?}")]
    NoKey { secret: String, key: String },
    #[error("Secret {secret} key {key:?}: {source}")]
    Invalid {
        secret: String,
        key: String,
        source: member::Error,
    },
    /// The Secret failed, and so did its cached copy.
    #[error("{fresh}; {cached}")]
    NoCachedCopy {
        fresh: Box<LoadError>,
        cached: CacheError,
    },
    #[error("cannot start the watcher: {0}")]
    Start(member::Error),
}

/// Why the cached copy of a kubeconfig cannot stand in for its Secret.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cached copy")]
    Absent,
    #[error("cannot read the cached copy: {0}")]
    Read(crate::store::Error),
    #[error("{0}")]
    Open(OpenError),
    #[error("the cached copy is unusable: {0}")]
    Unusable(member::Error),
}

/// A kubeconfig loaded, with the digest of the Secret's bytes when it came from one.
pub(super) type Loaded = (kube::Config, Option<Digest>);

/// Where kubeconfigs come from, and what is known of the Secrets among them.
pub(super) struct Kubeconfigs {
    /// The management cluster's client, to read `kubeconfigSecretRef` Secrets.
    pub management: Option<kube::Client>,
    /// Where a `kubeconfigSecretRef` without a namespace points: Lifeline's own.
    pub namespace: String,
    /// Where kubeconfigs read from Secrets are kept, sealed; `None`: not kept.
    pub cache: Option<CredentialCache>,
    /// How often a Secret in use is read again.
    pub recheck: Duration,
    /// Digest of the bytes each cluster's Secret last held, as last read.
    seen: BTreeMap<String, Digest>,
    /// Clusters whose kubeconfig this term has sealed into the store.
    sealed: BTreeSet<String>,
}

impl Kubeconfigs {
    pub fn new(management: Option<kube::Client>, namespace: String) -> Self {
        Self {
            management,
            namespace,
            cache: None,
            recheck: Duration::from_secs(30),
            seen: BTreeMap::new(),
            sealed: BTreeSet::new(),
        }
    }

    /// The kubeconfig of `cluster` named `name`, from its file or its Secret.
    pub async fn load(
        &mut self,
        name: &str,
        cluster: &MemberCluster,
        writer: Writer<'_>,
    ) -> Result<Loaded, LoadError> {
        let spec = &cluster.spec;
        match (&spec.kubeconfig_path, &spec.kubeconfig_secret_ref) {
            (Some(path), _) => member::kube_config_from_path(std::path::Path::new(path))
                .await
                .map(|c| (c, None))
                .map_err(LoadError::File),
            (None, Some(r)) => self
                .load_from_secret(name, r, writer)
                .await
                .map(|(c, d)| (c, Some(d))),
            (None, None) => Err(LoadError::NoKubeconfig),
        }
    }

    /// Forgets what is kept of clusters that are no longer `wanted`: their digests and
    /// their sealed copies in the store.
    pub async fn forget(&mut self, wanted: impl Fn(&str) -> bool, writer: Writer<'_>) {
        self.seen.retain(|name, _| wanted(name));
        let gone: Vec<String> = (self.sealed.iter())
            .filter(|n| !wanted(n))
            .cloned()
            .collect();
        for name in gone {
            self.sealed.remove(&name);
            if self.cache.is_some()
                && let Err(e) = writer.save_credential(&name, None).await
            {
                warn!(cluster = %name, error = %e, "cannot forget the cached member kubeconfig");
            }
        }
    }

    /// What notices that the Secret `cluster` was loaded from changes; `None` for a
    /// kubeconfig that came from no Secret.
    pub(super) fn follower(
        &self,
        name: &str,
        cluster: &MemberCluster,
        in_use: Option<Digest>,
    ) -> Option<SecretFollower> {
        let (Some(client), Some(r), Some(in_use)) = (
            &self.management,
            &cluster.spec.kubeconfig_secret_ref,
            in_use,
        ) else {
            return None;
        };
        let seen = self.seen.get(name).copied().unwrap_or(in_use);
        Some(follow_secret(
            client.clone(),
            r.clone(),
            self.namespace.clone(),
            Some(seen),
            self.recheck,
        ))
    }

    /// The kubeconfig of `name` from its Secret, or else from the sealed copy in the
    /// store; a fresh read is sealed into the store when it differs from that copy.
    async fn load_from_secret(
        &mut self,
        name: &str,
        r: &SecretKeyRef,
        writer: Writer<'_>,
    ) -> Result<(kube::Config, Digest), LoadError> {
        let fresh = self.read_secret(name, r).await;
        let Some(cache) = self.cache.clone() else {
            return fresh.map(|(config, bytes)| (config, digest(&bytes)));
        };
        let secret = secret_text(r, &self.namespace);
        let cached = match cache.store.credential(name).await {
            Ok(Some(sealed)) => (cache.key)
                .open(name, &secret, &sealed)
                .map(|plain| (plain, sealed.fetched_at))
                .map_err(CacheError::Open),
            Ok(None) => Err(CacheError::Absent),
            Err(e) => Err(CacheError::Read(e)),
        };
        let (problem, (plain, fetched_at)) = match (fresh, cached) {
            (Ok((config, bytes)), cached) => {
                let copy = cached.ok().map(|(plain, _)| plain);
                self.seal(&cache, name, &secret, &bytes, copy, writer).await;
                return Ok((config, digest(&bytes)));
            }
            (Err(fresh), Err(cached)) => return Err(no_copy(fresh, cached)),
            (Err(fresh), Ok(copy)) => (fresh, copy),
        };
        let config = match member::kube_config_from_bytes(&plain).await {
            Ok(config) => config,
            Err(e) => return Err(no_copy(problem, CacheError::Unusable(e))),
        };
        warn!(
            cluster = %name,
            error = %problem,
            fetched_at = %lifeline_model::time::format(fetched_at),
            "using the cached member kubeconfig"
        );
        Ok((config, digest(&plain)))
    }

    /// Seals a fresh read of a Secret into the store, unless `copy` already holds it.
    async fn seal(
        &mut self,
        cache: &CredentialCache,
        name: &str,
        secret: &str,
        bytes: &[u8],
        copy: Option<Vec<u8>>,
        writer: Writer<'_>,
    ) {
        if copy.as_deref() != Some(bytes) {
            let sealed = cache.key.seal(name, secret, bytes);
            match writer.save_credential(name, Some(&sealed)).await {
                Ok(()) => info!(cluster = %name, "member kubeconfig cached, sealed"),
                Err(e) => warn!(cluster = %name, error = %e, "cannot cache the member kubeconfig"),
            }
        }
        self.sealed.insert(name.to_owned());
    }

    /// Reads the Secret and parses the kubeconfig it holds, within a bound: a hanging
    /// management API must not stall the leader.
    async fn read_secret(
        &mut self,
        name: &str,
        r: &SecretKeyRef,
    ) -> Result<(kube::Config, Vec<u8>), LoadError> {
        let Some(client) = &self.management else {
            return Err(LoadError::NoManagement);
        };
        let read = secret_bytes(client, r, &self.namespace);
        let bytes = tokio::time::timeout(Duration::from_secs(3), read)
            .await
            .unwrap_or(Err(LoadError::Timeout))?;
        self.seen.insert(name.to_owned(), digest(&bytes));
        match member::kube_config_from_bytes(&bytes).await {
            Ok(config) => Ok((config, bytes)),
            Err(source) => Err(LoadError::Invalid {
                secret: format!("{}/{}", namespace_of(r, &self.namespace), r.name),
                key: r.key.clone(),
                source,
            }),
        }
    }
}

fn no_copy(fresh: LoadError, cached: CacheError) -> LoadError {
    LoadError::NoCachedCopy {
        fresh: Box::new(fresh),
        cached,
    }
}

fn namespace_of<'a>(r: &'a SecretKeyRef, default_namespace: &'a str) -> &'a str {
    r.namespace.as_deref().unwrap_or(default_namespace)
}

/// Where a Secret reference points, as `namespace/name/key`.
fn secret_text(r: &SecretKeyRef, default_namespace: &str) -> String {
    let ns = namespace_of(r, default_namespace);
    format!("{ns}/{}/{}", r.name, r.key)
}

/// Reads the bytes a Secret holds under its key, in the management cluster.
async fn secret_bytes(
    client: &kube::Client,
    r: &SecretKeyRef,
    default_namespace: &str,
) -> Result<Vec<u8>, LoadError> {
    let ns = namespace_of(r, default_namespace);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), ns);
    let secret = format!("{ns}/{}", r.name);
    let read = secrets.get(&r.name).await;
    let read = read.map_err(|source| LoadError::Read {
        secret: secret.clone(),
        source,
    })?;
    (read.data)
        .and_then(|mut d| d.remove(&r.key))
        .map(|b| b.0)
        .ok_or_else(|| LoadError::NoKey {
            secret,
            key: r.key.clone(),
        })
}

/// Reads a Secret again every `every` and counts changes of its bytes (from `seen`).
/// Unreadable moments change nothing: only bytes that differ count.
fn follow_secret(
    client: kube::Client,
    r: SecretKeyRef,
    namespace: String,
    mut seen: Option<Digest>,
    every: Duration,
) -> SecretFollower {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let read = secret_bytes(&client, &r, &namespace);
            let read = tokio::time::timeout(Duration::from_secs(10), read).await;
            if let Ok(Ok(bytes)) = read {
                let d = digest(&bytes);
                if seen != Some(d) {
                    seen = Some(d);
                    if tx.send(Some(d)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    SecretFollower { rx, task }
}

/// A task that notices when a Secret in use changes.
#[derive(Debug)]
pub(super) struct SecretFollower {
    rx: watch::Receiver<Option<Digest>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SecretFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SecretFollower {
    pub fn changed(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }
}
