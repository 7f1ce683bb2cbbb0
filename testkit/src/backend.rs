//! HTTP backends on loopback that a test can kill, revive, slow down or make fail.
//!
//! A [`Behaviour`] is what a backend does (status, delay) and what it saw (requests,
//! Host headers, paths, peak concurrency); clones share it, so several servers can
//! answer alike and count together. A [`Backend`] is one listener serving a behaviour.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::IntoResponse,
};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// What a backend answers, and what it has seen. Every path gets the same answer.
#[derive(Clone, Debug)]
pub struct Behaviour {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    status: AtomicU16,
    delay_ms: AtomicU64,
    hosts: Mutex<Vec<String>>,
    paths: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: AtomicUsize,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour::new(200)
    }
}

impl Behaviour {
    /// Answers every request with `status`.
    pub fn new(status: u16) -> Self {
        let inner = Inner::default();
        inner.status.store(status, Ordering::SeqCst);
        Behaviour {
            inner: Arc::new(inner),
        }
    }

    /// Waits `delay` before each answer.
    pub fn slow(self, delay: Duration) -> Self {
        self.set_delay(delay);
        self
    }

    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight.load(Ordering::SeqCst)
    }

    /// `Host` headers received, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.inner.hosts.lock().clone()
    }

    /// Paths requested, in order.
    pub fn paths(&self) -> Vec<String> {
        self.inner.paths.lock().clone()
    }

    /// Forgets the paths seen so far.
    pub fn clear_paths(&self) {
        self.inner.paths.lock().clear();
    }
}

async fn answer(State(b): State<Behaviour>, uri: Uri, headers: HeaderMap) -> impl IntoResponse {
    let b = &b.inner;
    b.requests.fetch_add(1, Ordering::SeqCst);
    let host = headers
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("<invalid>").to_owned())
        .unwrap_or_default();
    b.hosts.lock().push(host);
    b.paths.lock().push(uri.path().to_owned());
    let now = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    b.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = b.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    b.in_flight.fetch_sub(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(b.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // A followed redirect would lead to a closed port and fail differently.
    (
        status,
        [(header::LOCATION, "http://127.0.0.1:1/elsewhere")],
        "ok",
    )
}

/// One HTTP listener. Killing it (or dropping it) closes the listener, so connections
/// are refused, as when the pods behind a load balancer die.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    behaviour: Behaviour,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    /// A backend answering 200 on `addr` (port 0 picks one).
    pub async fn start(addr: SocketAddr) -> Backend {
        Self::serve(&Behaviour::default(), addr).await
    }

    /// One backend answering 200 on each address, all on the same port (the way a
    /// policy's health check names one port for every cluster). The port is chosen by
    /// binding port 0 on the first address and held from then on; when another address
    /// has it taken, the whole set is tried again on a new port.
    pub async fn start_on<const N: usize>(ips: [IpAddr; N]) -> [Backend; N] {
        // Bounded: 20 ports.
        'port: for _ in 0..20 {
            let mut out = Vec::with_capacity(N);
            let mut port = 0;
            for ip in ips {
                match Self::try_serve(&Behaviour::default(), SocketAddr::new(ip, port)).await {
                    Ok(b) => {
                        port = b.addr.port();
                        out.push(b);
                    }
                    Err(_) => continue 'port,
                }
            }
            return out.try_into().unwrap_or_else(|_| unreachable!());
        }
        panic!("no port free on all of {ips:?}");
    }

    /// Serves `behaviour` on `addr` (port 0 picks one); panics when it cannot bind.
    pub async fn serve(behaviour: &Behaviour, addr: SocketAddr) -> Backend {
        Self::try_serve(behaviour, addr)
            .await
            .unwrap_or_else(|e| panic!("binding backend {addr}: {e}"))
    }

    /// Like [`Backend::serve`], with the bind error returned.
    pub async fn try_serve(behaviour: &Behaviour, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(behaviour.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Backend {
            addr,
            behaviour: behaviour.clone(),
            task: Some(task),
        })
    }

    /// What this backend answers and has seen.
    pub fn behaviour(&self) -> &Behaviour {
        &self.behaviour
    }

    /// Closes the listener and every connection; waits (at most 5 s) until it is gone.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Listens again on the same address, with the same behaviour.
    pub async fn revive(&mut self) -> std::io::Result<()> {
        if self.task.is_none() {
            *self = Self::try_serve(&self.behaviour, self.addr).await?;
        }
        Ok(())
    }

    pub fn is_alive(&self) -> bool {
        self.task.is_some()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
