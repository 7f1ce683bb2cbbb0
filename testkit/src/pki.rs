//! Certificates made by a test: a fresh CA and leaves it signs, as PEM.
//!
//! Leaves are separate from the CA (`CA:FALSE`): rustls refuses a CA certificate used as
//! a server's own (`CaUsedAsEndEntity`).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA of the test's own.
#[derive(Debug)]
pub struct TestCa(CertifiedIssuer<'static, KeyPair>);

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        TestCa(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A leaf for `names` (IP addresses or DNS names), with `common_name`; with
    /// `server_auth` it carries the server key usages.
    pub fn leaf(&self, common_name: &str, names: &[String], server_auth: bool) -> Leaf {
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if server_auth {
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
