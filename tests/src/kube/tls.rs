//! Certificates for the HTTPS endpoint and the kubeconfig clients read.
//!
//! A fresh CA signs a separate leaf (`CA:FALSE`, SAN `IP:127.0.0.1`, `localhost`):
//! rustls refuses a CA certificate used as the server's own (`CaUsedAsEndEntity`), so
//! the two must differ. Clients trust the CA through `certificate-authority-data`.

use std::sync::Arc;

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::Error;

/// The CA and the server's leaf certificate.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The CA certificate, PEM: what clients trust.
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_der: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

impl TlsMaterial {
    /// Issues a new CA and a leaf for `ip`, 127.0.0.1 and localhost.
    pub fn generate(ip: std::net::IpAddr) -> Result<Self, Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lifeline kube-emulator CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let mut leaf_params = CertificateParams::new(vec![
            ip.to_string(),
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])?;
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

        Ok(Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            leaf_der: leaf.der().clone(),
            leaf_key: leaf_key.serialize_der(),
        })
    }

    /// A rustls server configuration serving the leaf (HTTP/1.1 only).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        // An explicit provider, so the emulator works whether or not a process-wide one
        // has been installed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone(), self.ca_der.clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A kubeconfig for `server`, trusting `ca_pem` when given.
pub fn kubeconfig(server: &str, ca_pem: Option<&str>) -> String {
    let ca_line = ca_pem
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    // A token only over TLS: clients rightly hesitate to send credentials in clear text.
    let user = if ca_pem.is_some() {
        "  user:\n    token: kube-emulator\n"
    } else {
        "  user: {}\n"
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-emulator\n  cluster:\n    server: {server}\n{ca_line}\
         users:\n- name: kube-emulator\n{user}\
         contexts:\n- name: kube-emulator\n  context:\n    cluster: kube-emulator\n    user: kube-emulator\n    namespace: default\n\
         current-context: kube-emulator\npreferences: {{}}\n"
    )
}
