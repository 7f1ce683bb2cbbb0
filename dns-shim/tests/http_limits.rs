//! The admin listeners' bounds, over real sockets: hostile connections from one address
//! cannot take the slots another address needs, a header dribbled a byte at a time and
//! a body sent too slowly lose their connection, and a normal request is answered
//! beside them.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, routing::get};
use lifeline_dns::http::{Limits, serve};

const LIMITS: Limits = Limits {
    max_connections: 64,
    max_per_address: 8,
    header_timeout: Duration::from_secs(1),
    request_timeout: Duration::from_secs(2),
    lifetime: Duration::from_secs(30),
};

async fn start() -> SocketAddr {
    let router = Router::new()
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/echo", axum::routing::post(|b: Bytes| async move { b }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router, LIMITS, std::future::pending()));
    addr
}

/// `GET /readyz` from `source` on a fresh connection: the status line.
fn readyz_from(source: IpAddr, server: SocketAddr) -> std::io::Result<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(3))?;
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.lines().next().unwrap_or_default().to_owned())
}

/// Reads until the server closes, up to `limit`; what it sent, or `None` if still open.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    while started.elapsed() < limit {
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_from_one_address_leave_room_for_a_probe_from_another() {
    let server = start().await;
    let hostile = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..2000 {
            if let Ok(s) = TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
                held.push(s);
            }
        }
        held
    })
    .await
    .unwrap();
    assert!(hostile.len() >= 1900, "only {} opened", hostile.len());
    for n in 0..10u8 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 9, n + 1));
        let status = tokio::task::spawn_blocking(move || readyz_from(source, server))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("/readyz from {source}: {e}"));
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
    // Beyond its cap, the hostile address's connections were closed at once; the ones
    // it kept are closed once their header time runs out.
    let still_open = tokio::task::spawn_blocking(move || {
        let mut open = 0;
        for mut s in hostile {
            if wait_closed(&mut s, Duration::from_millis(1)).is_none() {
                open += 1;
            }
        }
        open
    })
    .await
    .unwrap();
    assert!(
        still_open <= LIMITS.max_per_address,
        "{still_open} idle connections from one address still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_header_and_a_slow_body_lose_their_connection() {
    let server = start().await;
    let (header, body) = tokio::task::spawn_blocking(move || {
        // A request head a byte every 300 ms: every read is quick, the head never ends.
        let mut s = TcpStream::connect(server).unwrap();
        let head =
            b"GET /readyz HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut header = None;
        for b in head {
            if s.write_all(&[*b]).is_err() {
                header = Some(String::new());
                break;
            }
            if let Some(said) = wait_closed(&mut s, Duration::from_millis(300)) {
                header = Some(said);
                break;
            }
        }
        // A body that promises 1,000 bytes and sends one a second.
        let mut s = TcpStream::connect(server).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
            .unwrap();
        let mut body = None;
        for _ in 0..20 {
            let _ = s.write_all(b"a");
            if let Some(said) = wait_closed(&mut s, Duration::from_secs(1)) {
                body = Some(said);
                break;
            }
        }
        (header, body)
    })
    .await
    .unwrap();
    let header = header.expect("the dribbled header kept its connection");
    assert!(!header.contains("200 OK"), "{header}");
    let body = body.expect("the slow body kept its connection");
    assert!(body.starts_with("HTTP/1.1 408"), "{body}");
    // And the listener still answers.
    let status =
        tokio::task::spawn_blocking(move || readyz_from(IpAddr::V4(Ipv4Addr::LOCALHOST), server))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
}
