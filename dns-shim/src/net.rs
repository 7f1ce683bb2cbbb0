//! Sockets: the only module that touches the network for DNS.
//!
//! UDP: one OS thread per socket doing blocking `recv_from`/`send_to`. A DNS answer is
//! a few hundred nanoseconds of work, so an async wake-up per datagram would cost more
//! than the answer itself; a plain loop keeps a core busy answering.
//! TCP: tokio tasks, one per connection, with an idle timeout and a connection cap,
//! because TCP clients can hold resources in a way UDP clients cannot.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{Instrument, debug, info_span, warn};

use crate::engine::{Engine, Transport};

/// How long a UDP thread blocks before checking for shutdown.
const UDP_POLL: Duration = Duration::from_millis(200);
/// A TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds).
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Concurrent TCP connections per listener.
pub const TCP_MAX_CONNECTIONS: usize = 1024;

/// Socket buffer size asked for (the kernel caps it at `net.core.rmem_max`). Bursts from
/// many resolvers at once must queue, not be dropped, while the thread catches up.
const UDP_BUFFER: usize = 4 << 20;

/// Binds a UDP socket; the answering thread is started by [`spawn_udp`].
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(UDP_POLL))?;
    let sock = socket2::SockRef::from(&socket);
    for (what, r) in [
        ("receive", sock.set_recv_buffer_size(UDP_BUFFER)),
        ("send", sock.set_send_buffer_size(UDP_BUFFER)),
    ] {
        if let Err(e) = r {
            warn!(error = %e, buffer = what, "could not enlarge udp socket buffer");
        }
    }
    Ok(socket)
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
            // 64 KiB: the largest datagram; anything longer is cut by the kernel and
            // then fails to parse, which is the right outcome.
            let mut buf = vec![0u8; 65_536];
            let mut out = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                let (n, src) = match socket.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                                | io::ErrorKind::ConnectionRefused
                                | io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        continue;
                    }
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
        })
}

/// Accepts TCP connections on `listener` and answers each in its own task.
pub fn spawn_tcp(listener: TcpListener, engine: Arc<Engine>) -> JoinHandle<()> {
    let local = listener.local_addr().ok();
    let span = info_span!("dns_tcp", local = ?local);
    tokio::spawn(
        async move {
            let permits = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
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
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    debug!(%peer, "tcp connection refused: too many connections");
                    continue;
                };
                let engine = engine.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(stream, peer, &engine).await {
                        debug!(%peer, error = %e, "tcp connection ended");
                    }
                    drop(permit);
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
    engine: &Engine,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let len = usize::from(u16::from_be_bytes(len));
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "message read timed out"))??;
        if engine.respond(&buf[..len], peer, Transport::Tcp, &mut out) {
            let mut framed = Vec::with_capacity(out.len() + 2);
            framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
            framed.extend_from_slice(&out);
            stream.write_all(&framed).await?;
        }
    }
}
