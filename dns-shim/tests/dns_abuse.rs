//! TCP under abuse, over real sockets: 2,000 connections that send nothing, or a byte
//! now and then, cannot keep a legitimate client from being answered, and a connection
//! dribbling one byte at a time is closed at its message deadline, measured from the
//! message's first byte, and clients that never read their answers lose their slots at
//! the write deadline.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::{op::Message, rr::RecordType};
use lifeline_dns::net::{TCP_IDLE, TCP_MAX_PER_PREFIX};

/// A TCP connection from `source` (3 s to connect), with `buffers` bytes of socket
/// buffer each way when given.
fn connect_from(
    source: IpAddr,
    server: SocketAddr,
    buffers: Option<usize>,
) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(size) = buffers {
        socket.set_recv_buffer_size(size)?;
        socket.set_send_buffer_size(size)?;
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(3))?;
    Ok(socket.into())
}

/// An A query for the test name, with its TCP length prefix.
fn framed_query() -> std::io::Result<Vec<u8>> {
    let query = message("www.global.example.com.", RecordType::A, &Ask::default())
        .to_vec()
        .map_err(std::io::Error::other)?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    Ok(framed)
}

/// One query over TCP from `source`, with a 3 s limit on the whole exchange.
fn query_from(source: IpAddr, server: SocketAddr) -> std::io::Result<Message> {
    let mut stream = connect_from(source, server, None)?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(&framed_query()?)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply)?;
    Message::from_vec(&reply).map_err(std::io::Error::other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_hostile_connections_leave_room_for_a_real_client() {
    let (shim, _dir) = start().await;
    let server = shim.tcp_addrs()[0];

    // 2,000 connections from one host (127.0.0.1): half silent, half sending one byte.
    let mut hostile = Vec::new();
    for i in 0..2000 {
        let Ok(mut s) = tokio::net::TcpStream::connect(server).await else {
            continue;
        };
        if i % 2 == 1 {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(&[0]).await;
        }
        hostile.push(s);
    }
    assert!(
        hostile.len() >= 1900,
        "only {} connections opened",
        hostile.len()
    );

    // A client on another prefix is answered at once, every time.
    let started = Instant::now();
    for n in 0..20u8 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 77, n, 1));
        let reply = tokio::task::spawn_blocking(move || query_from(source, server))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("query {n} from {source} failed: {e}"));
        assert_eq!(addresses(&reply), [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
    }
    eprintln!(
        "20 queries beside 2,000 hostile connections took {:?}",
        started.elapsed()
    );

    // The hostile host holds at most its prefix's share: the rest were closed.
    let mut open = 0;
    for s in &hostile {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(20), s.peek(&mut byte)).await {
            Err(_) => open += 1,         // still open, nothing to read
            Ok(Ok(0)) | Ok(Err(_)) => {} // closed by the server
            Ok(Ok(_)) => open += 1,
        }
    }
    assert!(
        open <= TCP_MAX_PER_PREFIX,
        "{open} hostile connections still open"
    );
    drop(hostile);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dribbles_bytes_is_closed_at_its_message_deadline() {
    let (shim, _dir) = start().await;
    let server = shim.tcp_addrs()[0];
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        // The length prefix a byte at a time, just inside the idle timeout, then the
        // body a byte a second: each read alone would beat a per-read timeout. The
        // message as a whole must not outlive its deadline by much.
        let mut sent = 0;
        let limit = TCP_IDLE + TCP_IDLE / 2;
        while started.elapsed() < limit {
            let due = if sent == 1 {
                TCP_IDLE - Duration::from_secs(1)
            } else {
                Duration::from_secs(1)
            };
            let wrote = s.write_all(&[0xff]);
            sent += 1;
            let waited = Instant::now();
            while waited.elapsed() < due {
                let mut b = [0u8; 1];
                if wrote.is_err() || matches!(s.read(&mut b), Ok(0)) {
                    return Some(started.elapsed());
                }
            }
        }
        None
    })
    .await
    .unwrap();
    let after = closed.expect("the dribbling connection was never closed");
    eprintln!("dribbling connection closed after {after:?}");
}

/// A connection from `source` that sends queries and never reads an answer, until its
/// writes block: both directions' buffers are then full and the server's write of an
/// answer is stuck. The stream is returned open, with the bytes the server took first.
fn stuck_reader(source: IpAddr, server: SocketAddr) -> std::io::Result<(TcpStream, usize)> {
    // Small buffers, so the server's answers fill them soon.
    let mut stream = connect_from(source, server, Some(4096))?;
    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
    let framed = framed_query()?;
    let batch: Vec<u8> = framed.repeat(256);
    // Bounded: a few MiB at most, long after every buffer on the way is full.
    for written in (0..1000).map(|n| n * batch.len()) {
        if stream.write_all(&batch).is_err() {
            return Ok((stream, written));
        }
    }
    Err(std::io::Error::other(
        "the server kept reading without its answers being read",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answers_lose_their_slots_at_the_write_deadline() {
    let (shim, _dir) = start().await;
    let server = shim.tcp_addrs()[0];
    let host = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 78, 0, n));

    // A whole prefix's share of connections, each stuck writing an answer its client
    // does not read; made at once, well inside the write deadline.
    let started = Instant::now();
    let stuck = tokio::task::spawn_blocking(move || {
        let makers: Vec<_> = (0..TCP_MAX_PER_PREFIX)
            .map(|i| std::thread::spawn(move || stuck_reader(host(1 + (i % 200) as u8), server)))
            .collect();
        makers
            .into_iter()
            .map(|m| m.join().unwrap())
            .collect::<std::io::Result<Vec<(TcpStream, usize)>>>()
    })
    .await
    .unwrap()
    .expect("stuck connections");
    let blocked_at = Instant::now();
    // The server's buffers for one connection are bounded: a client that never reads
    // pins little kernel memory, and gets stuck soon (unbounded, the kernel grew them
    // to megabytes, and making these connections outlasted the write deadline).
    let most = stuck.iter().map(|(_, taken)| *taken).max().unwrap_or(0);
    eprintln!(
        "{} stuck connections made in {:?}; the server took at most {most} bytes of one",
        stuck.len(),
        started.elapsed()
    );
    assert!(
        most < 1 << 20,
        "the server took {most} bytes from a client that never read its answers"
    );

    // The prefix is full: another host in it is not served now.
    let refused = tokio::task::spawn_blocking(move || query_from(host(250), server))
        .await
        .unwrap();
    assert!(
        refused.is_err(),
        "a 65th connection from the prefix was served: {refused:?}"
    );

    // The write deadline frees the slots (the connection lifetime, 120 s, would be
    // much later): bounded by count and time, try until a query from the prefix is
    // answered again.
    let mut answered = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reply = tokio::task::spawn_blocking(move || query_from(host(251), server))
            .await
            .unwrap();
        if let Ok(reply) = reply {
            answered = Some((blocked_at.elapsed(), reply));
            break;
        }
    }
    let (after, reply) = answered.expect("the prefix was never served again within 20 s");
    assert_eq!(addresses(&reply), [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
    eprintln!("slots of clients that do not read were freed after {after:?}");
    drop(stuck);
}
