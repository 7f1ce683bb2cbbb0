//! A thin fault-injecting proxy in front of a real kube-apiserver, for the faults a real
//! server cannot be asked for: every request answered 429 with `Retry-After`, every
//! request hanging, every open connection (and so every watch) dropped.
//!
//! ```text
//!  Lifeline ──HTTP──► FaultProxy (counts requests, applies the fault)
//!                        └──HTTPS, bearer token──► kube-apiserver
//! ```
//!
//! Clients speak plain HTTP to the proxy and carry no credentials; the proxy adds the
//! token of the user it stands for and checks the server against its CA. Requests and
//! responses stream through, watches included. A new upstream connection is made per
//! request: simple, and enough for tests.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::body::Body;
use hyper::{Request, Response, StatusCode, body::Incoming, header::HeaderValue};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::pki_types::ServerName;
use tokio::{net::TcpStream, sync::watch, task::JoinHandle};

use super::{Error, Fault};

/// What the proxy does to each request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Forward,
    TooManyRequests {
        retry_after_seconds: u64,
    },
    Hang,
}

struct Shared {
    upstream: SocketAddr,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    authorization: HeaderValue,
    mode: Mutex<Mode>,
    requests: AtomicU64,
    /// Bumped to end every open connection.
    kill: watch::Sender<u64>,
}

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// A proxy on a loopback address of its own, in front of `upstream` (whose
    /// certificate `ca_pem` signed, for the IP `upstream` names), as the user of `token`.
    pub async fn start(upstream: SocketAddr, ca_pem: &str, token: &str) -> Result<Self, Error> {
        super::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(ca_pem)? {
            roots
                .add(cert)
                .map_err(|e| Error::Client(format!("the CA: {e}")))?;
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind((lifeline_testkit::loopback(), 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            server_name: ServerName::IpAddress(upstream.ip().into()),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            authorization: HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| Error::Client(e.to_string()))?,
            mode: Mutex::new(Mode::Forward),
            requests: AtomicU64::new(0),
            kill: watch::channel(0).0,
        });
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(shared.clone(), stream));
                }
            })
        };
        Ok(Self {
            addr,
            shared,
            accept,
        })
    }

    /// `http://<proxy address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for the proxy: plain HTTP, no credentials (the proxy adds them).
    pub fn kubeconfig_yaml(&self) -> String {
        super::tls::kubeconfig(&self.url(), None)
    }

    /// From now on every request gets `fault` (only `TooManyRequests` and `Hang` are
    /// offered; anything else forwards).
    pub fn inject(&self, fault: &Fault) {
        *self.shared.mode.lock() = match fault {
            Fault::TooManyRequests {
                retry_after_seconds,
            } => Mode::TooManyRequests {
                retry_after_seconds: *retry_after_seconds,
            },
            Fault::Hang => Mode::Hang,
            _ => Mode::Forward,
        };
    }

    /// Requests are forwarded again.
    pub fn clear_faults(&self) {
        *self.shared.mode.lock() = Mode::Forward;
    }

    /// Ends every open connection, open watches included.
    pub fn drop_connections(&self) {
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// Requests received so far (faulted ones included; a watch counts when opened).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

fn rustls_pemfile_certs(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Client(format!("the CA PEM: {e}")))
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut kill = shared.kill.subscribe();
    let _ = stream.set_nodelay(true);
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(shared, req).await) }
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = kill.changed() => {}
    }
}

async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let mode = shared.mode.lock().clone();
    match mode {
        Mode::Hang => {
            // Until the connection is dropped.
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::TooManyRequests {
            retry_after_seconds,
        } => {
            let body = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too many requests (injected by the test's fault proxy)",
                "reason": "TooManyRequests", "code": 429,
                "details": {"retryAfterSeconds": retry_after_seconds}
            });
            let mut resp = Response::new(Body::from(body.to_string()));
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds),
            );
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Mode::Forward => {
            req.headers_mut()
                .insert(hyper::header::AUTHORIZATION, shared.authorization.clone());
            match forward(&shared, req).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => {
                    let mut resp = Response::new(Body::from(format!("fault proxy: {e}")));
                    *resp.status_mut() = StatusCode::BAD_GATEWAY;
                    resp
                }
            }
        }
    }
}

async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let tcp = TcpStream::connect(shared.upstream).await?;
    let tls = shared.tls.connect(shared.server_name.clone(), tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    let mut kill = shared.kill.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = conn => {}
            _ = kill.changed() => {}
        }
    });
    Ok(sender.send_request(req).await?)
}
