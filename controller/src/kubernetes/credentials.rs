//! Member kubeconfigs that outlive the management API.
//!
//! A kubeconfig read from a `kubeconfigSecretRef` Secret is sealed and kept in the store
//! (etcd, or the embedded store's directory), so a replica restarted while the
//! management API is down still reaches its members:
//!
//! ```text
//!  Secret read ok ──► seal(key, cluster, secret, bytes) ──► store: credentials/{cluster}
//!  Secret unreadable ─► store: credentials/{cluster} ──► open(key, ...) ──► kube::Config
//! ```
//!
//! Sealing is AES-256-GCM (ring) with a fresh random nonce per value. The cluster name
//! and the Secret reference are authenticated with it, so a sealed value copied to
//! another cluster's key does not open. The key comes from a file (a mounted Secret);
//! nothing readable is ever written to disk or etcd. Without a key nothing is cached,
//! and members whose kubeconfig lives in a Secret cannot be reached by a replica that
//! restarts while the management API is down.

use std::{path::Path, time::SystemTime};

use base64::Engine as _;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};

/// A sealed kubeconfig as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedKubeconfig {
    /// `namespace/name/key` of the Secret it was read from.
    pub secret: String,
    /// Which key sealed it (a digest of the key, not the key).
    pub key_id: String,
    /// Base64 of nonce, ciphertext and tag.
    pub sealed: String,
    /// When it was read from the Secret.
    #[serde(with = "lifeline_model::time::rfc3339")]
    pub fetched_at: SystemTime,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the credential key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the credential key file {path} holds {found}; it needs 32 bytes: raw, as 64 hex digits, or in base64 (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    Shape { path: String, found: String },
}

/// The key that seals member kubeconfigs.
pub struct SealKey {
    key: LessSafeKey,
    id: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// Reads a key file: 32 raw bytes, 64 hex digits, or base64 of 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes).ok_or_else(|| KeyError::Shape {
            path: path.display().to_string(),
            // Never the content: it is a secret, even when malformed.
            found: format!("{} bytes that are not a key", bytes.len()),
        })
    }

    /// A key from the contents of a key file, if they are one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let raw = if bytes.len() == 32 {
            bytes.to_vec()
        } else {
            let text = std::str::from_utf8(bytes).ok()?.trim();
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..32)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()?
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .filter(|k| k.len() == 32)?
            }
        };
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"lifeline credential key id\0");
        ctx.update(&raw);
        let id: String = ctx.finish().as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).ok()?);
        Some(Self { key, id })
    }

    /// This key's id, as recorded in what it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals the kubeconfig of `cluster` read from `secret`.
    pub fn seal(&self, cluster: &str, secret: &str, kubeconfig: &[u8]) -> SealedKubeconfig {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut buf = kubeconfig.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated(cluster, secret)),
                &mut buf,
            )
            .expect("a kubeconfig is far below AES-GCM's length limit");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        SealedKubeconfig {
            secret: secret.to_owned(),
            key_id: self.id.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(out),
            fetched_at: SystemTime::now(),
        }
    }

    /// Opens what [`SealKey::seal`] sealed for `cluster` and `secret`.
    pub fn open(
        &self,
        cluster: &str,
        secret: &str,
        sealed: &SealedKubeconfig,
    ) -> Result<Vec<u8>, OpenError> {
        if sealed.secret != secret {
            return Err(OpenError::OtherSecret {
                read_from: sealed.secret.clone(),
                wanted: secret.to_owned(),
            });
        }
        if sealed.key_id != self.id {
            return Err(OpenError::OtherKey {
                sealed_with: sealed.key_id.clone(),
                now: self.id.clone(),
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed.sealed)
            .map_err(|_| OpenError::Base64)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Truncated);
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Truncated)?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(associated(cluster, secret)), &mut buf)
            .map_err(|_| OpenError::Altered)?;
        Ok(plain.to_vec())
    }
}

/// Why a sealed kubeconfig cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the cached kubeconfig was read from Secret {read_from}, not {wanted}")]
    OtherSecret { read_from: String, wanted: String },
    #[error(
        "the cached kubeconfig was sealed with key {sealed_with}, and the key file now holds key {now}"
    )]
    OtherKey { sealed_with: String, now: String },
    #[error("the cached kubeconfig is not valid base64")]
    Base64,
    #[error("the cached kubeconfig is truncated")]
    Truncated,
    #[error(
        "the cached kubeconfig does not open with this key (altered, or sealed for another cluster)"
    )]
    Altered,
}

/// What is authenticated besides the kubeconfig: where it belongs.
fn associated(cluster: &str, secret: &str) -> Vec<u8> {
    let mut aad = b"lifeline member kubeconfig v1\0".to_vec();
    aad.extend_from_slice(cluster.as_bytes());
    aad.push(0);
    aad.extend_from_slice(secret.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        SealKey::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_sealed_kubeconfig_opens_only_for_its_cluster_secret_and_key() {
        let k = key(7);
        let sealed = k.seal("m0", "ns/s/kubeconfig", b"apiVersion: v1\n");
        assert_eq!(
            k.open("m0", "ns/s/kubeconfig", &sealed).unwrap(),
            b"apiVersion: v1\n"
        );
        assert!(!sealed.sealed.contains("apiVersion"));
        let wrong_cluster = k
            .open("m1", "ns/s/kubeconfig", &sealed)
            .unwrap_err()
            .to_string();
        assert!(wrong_cluster.contains("another cluster"), "{wrong_cluster}");
        let wrong_secret = k
            .open("m0", "ns/t/kubeconfig", &sealed)
            .unwrap_err()
            .to_string();
        assert!(wrong_secret.contains("ns/s/kubeconfig"), "{wrong_secret}");
        let wrong_key = key(8)
            .open("m0", "ns/s/kubeconfig", &sealed)
            .unwrap_err()
            .to_string();
        assert!(wrong_key.contains("sealed with key"), "{wrong_key}");
        let mut altered = sealed.clone();
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(&altered.sealed)
            .unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        altered.sealed = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(k.open("m0", "ns/s/kubeconfig", &altered).is_err());
        altered.sealed = "AAAA".into();
        assert!(
            k.open("m0", "ns/s/kubeconfig", &altered)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
    }

    #[test]
    fn two_seals_of_the_same_kubeconfig_differ() {
        let k = key(1);
        assert_ne!(k.seal("a", "s", b"x").sealed, k.seal("a", "s", b"x").sealed);
    }

    #[test]
    fn key_files_are_raw_hex_or_base64_and_anything_else_is_refused_without_echoing_it() {
        let raw = [3u8; 32];
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let ids: Vec<String> = [
            raw.to_vec(),
            format!("{hex}\n").into_bytes(),
            b64.into_bytes(),
        ]
        .iter()
        .map(|b| SealKey::from_bytes(b).unwrap().id().to_owned())
        .collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "hunter2-not-a-key").unwrap();
        let e = SealKey::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("needs 32 bytes") && !e.contains("hunter2"),
            "{e}"
        );
        let e = SealKey::from_file(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the credential key file"), "{e}");
    }
}
