//! Helpers shared by the controller's integration tests: loopback HTTP backends that can
//! be killed and restarted, a small DNS client, and free ports.

#![allow(dead_code)]

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use hickory_proto::{
    op::{Message, Query},
    rr::{Name, RData, RecordType},
};

/// A port free on every address in `ips` at the time of the call (TCP and UDP).
pub fn free_port(ips: &[IpAddr]) -> u16 {
    for _ in 0..50 {
        let port = std::net::TcpListener::bind((ips[0], 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let all_free = ips.iter().all(|ip| {
            std::net::TcpListener::bind((*ip, port)).is_ok() && UdpSocket::bind((*ip, port)).is_ok()
        });
        if all_free {
            return port;
        }
    }
    panic!("no free port found on {ips:?}");
}

/// An HTTP backend answering `GET /healthz` with 200, on a loopback address.
/// Dropping it (or calling `kill`) closes the listener: connections are refused.
pub struct Backend {
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Backend {
    pub async fn start(addr: SocketAddr) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind backend");
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            addr,
            task: Some(task),
        }
    }

    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Sends one A query over UDP; returns the response code name and the A addresses.
pub fn query_a(server: SocketAddr, name: &str) -> Option<(String, Vec<IpAddr>)> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket.send_to(&msg.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    let resp = Message::from_vec(&buf[..n]).ok()?;
    let ips = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    Some((format!("{:?}", resp.metadata.response_code), ips))
}

fn rand_id() -> u16 {
    use std::time::SystemTime;
    (SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}
