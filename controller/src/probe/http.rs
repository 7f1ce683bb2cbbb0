//! One HTTP(S) GET to one address, on a connection of its own.
//!
//! Written on hyper's connection API rather than a reqwest client because an HTTPS probe
//! must connect to one address while presenting the policy's name (SNI and certificate
//! name), and reqwest takes the name only from the URL: that meant a client per address,
//! each with the trust roots parsed again (about 100 KB each, and 10,000 addresses are
//! allowed). Here every probe shares one TLS configuration per verification mode, built
//! once, and a probe holds only its own connection.

use std::{io, net::SocketAddr, sync::Arc};

use http::{Request, header};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::net::TcpStream;

use super::{Failure, connect_failure, describe_chain, describe_io};

const USER_AGENT: &str = concat!("lifeline-probe/", env!("CARGO_PKG_VERSION"));

/// The TLS settings every HTTPS probe shares.
#[derive(Clone)]
pub(super) struct Tls {
    /// Verifies certificates against the system's roots and any extra ones; `Err` says
    /// why there is nothing to verify against (no CA bundle on the machine), which every
    /// verified HTTPS probe then reports as its failure.
    verified: Result<Arc<ClientConfig>, Failure>,
    /// Accepts any certificate (`insecureSkipVerify`), still checking the handshake's
    /// signatures, so the server holds the key of what it presented.
    unverified: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("verified", &self.verified.as_ref().map(|_| "ready"))
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the system's trust roots once and adds the certificates of `extra_pem` (a PEM
    /// bundle, may be empty). A broken extra bundle is an error; a system without roots
    /// is not (HTTP and TCP probes need none).
    pub(super) fn new(extra_pem: &[u8]) -> Result<Self, super::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (system, _unusable) = roots.add_parsable_certificates(native.certs);
        let mut extra = 0usize;
        for cert in CertificateDer::pem_slice_iter(extra_pem) {
            let cert = cert.map_err(|e| super::Error::Certificate(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| super::Error::Certificate(e.to_string()))?;
            extra += 1;
        }
        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| super::Error::Tls(e.to_string()))
        };
        let verified = if roots.is_empty() {
            let why = native
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            tracing::warn!(
                "no trusted CA certificates on this machine{why}; HTTPS checks that verify certificates will fail until some are installed"
            );
            Err(Failure::NoTrustRoots(why))
        } else {
            tracing::debug!(system, extra, "trust roots loaded for HTTPS probes");
            Ok(Arc::new(
                builder()?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            ))
        };
        let unverified = Arc::new(
            builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth(),
        );
        Ok(Self {
            verified,
            unverified,
        })
    }

    fn config(&self, insecure_skip_verify: bool) -> Result<Arc<ClientConfig>, Failure> {
        if insecure_skip_verify {
            Ok(self.unverified.clone())
        } else {
            self.verified.clone()
        }
    }
}

/// What one GET is: where, how, and under which name.
#[derive(Debug)]
pub(super) struct Get<'a> {
    pub addr: SocketAddr,
    /// `Some` for HTTPS: skip certificate verification?
    pub tls: Option<bool>,
    /// Host header and, for HTTPS, the TLS server name; `None` uses the address.
    pub host: Option<&'a str>,
    /// Starts with `/`.
    pub path: &'a str,
}

/// Sends one GET and returns the status; `Err` is a short reason ("connect refused",
/// "tls: invalid peer certificate: UnknownIssuer", ...). The connection is closed when it
/// returns; the body is never read.
pub(super) async fn get(tls: &Tls, get: Get<'_>) -> Result<http::StatusCode, Failure> {
    // A check that cannot verify anything (no trust roots) says so without connecting.
    let config = get.tls.map(|skip| tls.config(skip)).transpose()?;
    let tcp = TcpStream::connect(get.addr)
        .await
        .map_err(|e| connect_failure(&e))?;
    // Nagle would hold the request behind the handshake's last segment for nothing.
    let _ = tcp.set_nodelay(true);
    let host_header = match get.host {
        Some(host) => host.to_owned(),
        None => get.addr.to_string(),
    };
    match config {
        None => exchange(TokioIo::new(tcp), &host_header, get.path).await,
        Some(config) => {
            // A host that is itself an IP literal is verified as that address, as is no host.
            let name = match get
                .host
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty() && h.parse::<std::net::IpAddr>().is_err())
            {
                Some(name) => {
                    ServerName::try_from(name).map_err(|e| Failure::ServerName(e.to_string()))?
                }
                None => ServerName::IpAddress(get.addr.ip().into()),
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| describe_tls(&e))?;
            exchange(TokioIo::new(stream), &host_header, get.path).await
        }
    }
}

/// HTTP/1.1 over an open connection: one request, its status, then close.
async fn exchange<I>(io: I, host: &str, path: &str) -> Result<http::StatusCode, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, String>(io)
        .await
        .map_err(|e| describe_hyper(&e))?;
    let request = Request::get(path)
        .header(header::HOST, host)
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(String::new())
        .map_err(|e| Failure::Exchange(format!("request failed: {e}")))?;
    // The connection is driven here rather than on a task of its own, so dropping the
    // probe (its timeout, or the target being removed) closes it at once.
    let send = sender.send_request(request);
    let mut connection = std::pin::pin!(connection);
    let mut send = std::pin::pin!(send);
    tokio::select! {
        biased;
        response = &mut send => response
            .map(|r| r.status())
            .map_err(|e| describe_hyper(&e)),
        // The connection can end as the response arrives (we asked it to close); the
        // response, or why none came, is then in the request's future.
        ended = &mut connection => match send.await {
            Ok(response) => Ok(response.status()),
            Err(e) => Err(describe_hyper(ended.as_ref().err().unwrap_or(&e))),
        },
    }
}

fn describe_tls(e: &io::Error) -> Failure {
    Failure::Handshake(describe_io(e).unwrap_or_else(|| describe_chain(e, "tls handshake failed")))
}

fn describe_hyper(e: &hyper::Error) -> Failure {
    Failure::Exchange(describe_chain(e, "request failed"))
}

/// `insecureSkipVerify`: any certificate is accepted; handshake signatures are still
/// checked with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}
