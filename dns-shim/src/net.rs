//! Sockets: the only module that touches the network for DNS.
//!
//! UDP: one OS thread per socket with a blocking loop (batched `recvmmsg`/`sendmmsg` on
//! Linux, `recv_from`/`send_to` elsewhere). A DNS answer is a few hundred nanoseconds
//! of work, so an async wake-up per datagram would cost more than the answer itself.
//! TCP: tokio tasks, one per connection, because TCP clients can hold resources in a way
//! UDP clients cannot. So a connection is bounded every way a client could stretch it:
//! an idle timeout between messages; one deadline per message, from its first byte to
//! its last (sending a byte now and then does not extend it); a write deadline (a client
//! that never reads cannot park the task); a total lifetime; a cap per listener and a
//! smaller cap per client prefix (/24 for IPv4, /56 for IPv6), so one host cannot take
//! every slot from the rest.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

#[cfg(not(target_os = "linux"))]
use std::sync::atomic::Ordering;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{Instrument, debug, info_span, warn};

use crate::{
    engine::{Engine, Transport},
    slots::{Slots, prefix_of},
    xfr::transfer::{Reply, Transfer},
};

/// How long a UDP thread blocks before checking for shutdown.
const UDP_POLL: Duration = Duration::from_millis(200);
/// A TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections per listener.
pub const TCP_MAX_CONNECTIONS: usize = 1024;
/// Concurrent TCP connections per client prefix (/24, /56).
pub const TCP_MAX_PER_PREFIX: usize = 64;
/// Longest a TCP connection may stay open, however busy.
pub const TCP_LIFETIME: Duration = Duration::from_secs(120);

/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`). Bursts from
/// many resolvers at once must queue, not be dropped, while the thread catches up.
const UDP_BUFFER: usize = 4 << 20;
/// Socket buffers each way on a TCP connection. A message is at most 64 KiB, so this
/// holds a whole answer; without it the kernel grows a busy connection's buffers to
/// megabytes, kernel memory a client that never reads would pin, 64 times per prefix.
const TCP_BUFFER: usize = 64 << 10;

/// Binds a UDP socket; the answering thread is started by [`spawn_udp`].
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(UDP_POLL))?;
    size_buffers(socket2::SockRef::from(&socket), UDP_BUFFER, "udp");
    Ok(socket)
}

/// Sets a socket's receive and send buffers to `size`; a refusal is logged, not fatal
/// (the socket still works with the kernel's default).
fn size_buffers(sock: socket2::SockRef<'_>, size: usize, transport: &str) {
    for (what, r) in [
        ("receive", sock.set_recv_buffer_size(size)),
        ("send", sock.set_send_buffer_size(size)),
    ] {
        if let Err(e) = r {
            warn!(error = %e, transport, buffer = what, size, "could not size socket buffer");
        }
    }
}

/// Answers on `socket` until `stop` is set.
pub fn spawn_udp(
    socket: UdpSocket,
    engine: Arc<Engine>,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let local = socket.local_addr()?;
    std::thread::Builder::new()
        .name(format!("dns-udp-{}", local.port()))
        .spawn(move || {
            let span = info_span!("dns_udp", %local);
            let _enter = span.enter();
            #[cfg(target_os = "linux")]
            batch::serve(&socket, &engine, &stop);
            #[cfg(not(target_os = "linux"))]
            serve_one_by_one(&socket, &engine, &stop);
        })
}

/// The portable loop: one `recv_from`, one answer, one `send_to`.
#[cfg(not(target_os = "linux"))]
fn serve_one_by_one(socket: &UdpSocket, engine: &Engine, stop: &AtomicBool) {
    // 64 KiB: the largest datagram; anything longer is cut by the kernel and then fails
    // to parse, which is the right outcome.
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if is_transient(e.kind()) => continue,
            Err(e) => {
                warn!(error = %e, "udp receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Port 0 cannot be answered; replies there only feed reflection.
        if src.port() == 0 {
            continue;
        }
        if engine.respond(&buf[..n], src, Transport::Udp, &mut out)
            && let Err(e) = socket.send_to(&out, src)
        {
            debug!(error = %e, %src, "udp send failed");
        }
    }
}

/// Errors after which the loop simply goes on: timeouts (our shutdown poll), signals,
/// and ICMP errors from earlier sends reported on this socket.
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn is_transient(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    )
}

/// Linux: receive and send in batches (`recvmmsg`/`sendmmsg`). Under load one system
/// call moves up to [`batch::BATCH`] datagrams each way and the client is woken once
/// per batch instead of once per answer; with a single query waiting it behaves like
/// the plain loop.
#[cfg(target_os = "linux")]
mod batch {
    use std::{
        io::{IoSlice, IoSliceMut},
        net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
        os::fd::AsRawFd,
        sync::atomic::{AtomicBool, Ordering},
        time::Duration,
    };

    use nix::{
        errno::Errno,
        sys::socket::{
            ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
        },
    };
    use tracing::{debug, warn};

    use crate::engine::{Engine, Transport};

    pub const BATCH: usize = 32;
    /// Receive slot size: larger than any sane query. A longer datagram arrives
    /// truncated and is dropped (it could not have been a valid query anyway).
    const SLOT: usize = 4096;

    pub fn serve(socket: &UdpSocket, engine: &Engine, stop: &AtomicBool) {
        let fd = socket.as_raw_fd();
        let mut bufs = vec![[0u8; SLOT]; BATCH];
        let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1500)).collect();
        let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut got: Vec<(usize, Option<SockaddrStorage>, bool)> = Vec::with_capacity(BATCH);
        let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
        while !stop.load(Ordering::Relaxed) {
            got.clear();
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(&mut b[..])])
                    .collect();
                match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                    Ok(results) => {
                        for r in results {
                            got.push((r.bytes, r.address, r.flags.contains(MsgFlags::MSG_TRUNC)));
                        }
                    }
                    Err(
                        Errno::EAGAIN
                        | Errno::EINTR
                        | Errno::ETIMEDOUT
                        | Errno::ECONNREFUSED
                        | Errno::ECONNRESET,
                    ) => continue,
                    Err(e) => {
                        warn!(error = %e, "udp receive failed");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            to.clear();
            for (i, (len, addr, truncated)) in got.iter().enumerate() {
                let Some(addr) = addr else { continue };
                let Some(src) = std_addr(addr) else { continue };
                // Port 0 cannot be answered; replies there only feed reflection.
                if *truncated || src.port() == 0 {
                    continue;
                }
                let out = &mut outs[to.len()];
                if engine.respond(&bufs[i][..*len], src, Transport::Udp, out) {
                    to.push(Some(*addr));
                }
            }
            let mut sent = 0;
            while sent < to.len() {
                let iovs: Vec<[IoSlice<'_>; 1]> = outs[sent..to.len()]
                    .iter()
                    .map(|o| [IoSlice::new(o)])
                    .collect();
                let cmsgs: [ControlMessage<'_>; 0] = [];
                match sendmmsg(fd, &mut tx, &iovs, &to[sent..], cmsgs, MsgFlags::empty()) {
                    Ok(results) => {
                        let n = results.count();
                        if n == 0 {
                            break;
                        }
                        sent += n;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(e) => {
                        // The datagram that failed is skipped; the rest still go out.
                        debug!(error = %e, "udp send failed");
                        sent += 1;
                    }
                }
            }
        }
    }

    fn std_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = a.as_sockaddr_in() {
            return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
        }
        a.as_sockaddr_in6()
            .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
    }
}

/// Accepts TCP connections on `listener` and answers each in its own task.
pub fn spawn_tcp(listener: TcpListener, engine: Arc<Engine>) -> JoinHandle<()> {
    let local = listener.local_addr().ok();
    let span = info_span!("dns_tcp", local = ?local);
    // Accepted connections take their buffer sizes from the listener.
    size_buffers(socket2::SockRef::from(&listener), TCP_BUFFER, "tcp");
    tokio::spawn(
        async move {
            let permits = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
            let prefixes = Slots::default();
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        warn!(error = %e, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = prefixes.take(prefix_of(peer.ip()), TCP_MAX_PER_PREFIX) else {
                    debug!(%peer, "tcp connection refused: too many from this prefix");
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    debug!(%peer, "tcp connection refused: too many connections");
                    continue;
                };
                let engine = engine.clone();
                tokio::spawn(async move {
                    let served =
                        tokio::time::timeout(TCP_LIFETIME, serve_connection(stream, peer, &engine))
                            .await;
                    match served {
                        Err(_) => debug!(%peer, "tcp connection closed: lifetime reached"),
                        Ok(Err(e)) => debug!(%peer, error = %e, "tcp connection ended"),
                        Ok(Ok(())) => {}
                    }
                    drop(permit);
                    drop(slot);
                });
            }
        }
        .instrument(span),
    )
}

/// Serves length-prefixed messages on one connection until idle, closed or broken.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    engine: &Arc<Engine>,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        // Idle until the first byte of the next message.
        let mut first = [0u8; 1];
        match tokio::time::timeout(TCP_IDLE, stream.read(&mut first)).await {
            Err(_) | Ok(Ok(0)) => return Ok(()),
            Ok(r) => r?,
        };
        // From there, one deadline for the rest of the message.
        let deadline = tokio::time::Instant::now() + TCP_IDLE;
        let mut second = [0u8; 1];
        tokio::time::timeout_at(deadline, stream.read_exact(&mut second))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "message read timed out"))??;
        let len = usize::from(u16::from_be_bytes([first[0], second[0]]));
        tokio::time::timeout_at(deadline, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "message read timed out"))??;
        match engine.transfer(&buf[..len], peer) {
            Some(Reply::Refused(message)) => {
                write_framed(&mut stream, &message).await?;
                continue;
            }
            Some(Reply::Stream(transfer)) => {
                stream_transfer(&mut stream, transfer).await?;
                continue;
            }
            None => {}
        }
        if engine.respond(&buf[..len], peer, Transport::Tcp, &mut out) {
            write_framed(&mut stream, &out).await?;
        }
    }
}

/// Sends a zone transfer message by message as a blocking thread builds them: the
/// runtime's workers never build one, and a client that stops reading holds at most
/// [`TRANSFER_AHEAD`] built messages (it is dropped after [`TCP_IDLE`], which stops the
/// builder).
async fn stream_transfer(stream: &mut TcpStream, transfer: Transfer) -> io::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(TRANSFER_AHEAD);
    let builder = tokio::task::spawn_blocking(move || {
        transfer.run(&mut |message| tx.blocking_send(message).is_ok());
    });
    while let Some(message) = rx.recv().await {
        if let Err(e) = write_framed(stream, &message).await {
            // Dropping the receiver stops the builder at its next message.
            drop(rx);
            let _ = builder.await;
            return Err(e);
        }
    }
    let _ = builder.await;
    Ok(())
}

/// Transfer messages built ahead of what the client has read.
const TRANSFER_AHEAD: usize = 2;

/// Writes one message with its length prefix; a client that stops reading is dropped.
async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    // The engine never builds a message longer than a length prefix can say.
    let Ok(prefix) = u16::try_from(message.len()) else {
        return Err(io::Error::other("response too long for TCP framing"));
    };
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&prefix.to_be_bytes());
    framed.extend_from_slice(message);
    tokio::time::timeout(TCP_IDLE, stream.write_all(&framed))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))?
}
