//! A loopback TCP proxy a test can cut: blocking it drops every open connection and
//! refuses new ones, as a partition between one client and a server that keeps running.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// A proxy on its own loopback address in front of `target`.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        // Port 0 on an address of our own: the listener is held from here on.
        let listener = tokio::net::TcpListener::bind((crate::loopback(), 0))
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().unwrap();
        let blocked = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = Arc::new(Mutex::new(target));
        let accept = {
            let (blocked, conns, target) = (blocked.clone(), conns.clone(), target.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let to = *target.lock();
                    conns.lock().push(tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }));
                }
            })
        };
        Proxy {
            addr,
            target,
            blocked,
            conns,
            accept,
        }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<proxy address>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `target` and drops the open ones (another server
    /// appearing behind the same endpoint).
    pub fn set_target(&self, target: SocketAddr) {
        *self.target.lock() = target;
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }

    /// Blocking drops every open connection and refuses new ones.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
        if blocked {
            for c in self.conns.lock().drain(..) {
                c.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.conns.lock().drain(..) {
            c.abort();
        }
    }
}
