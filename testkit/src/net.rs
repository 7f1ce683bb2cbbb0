//! Addresses that parallel tests cannot race for.
//!
//! Each [`loopback`] call returns a new address in 127.0.0.0/8: the second octet comes
//! from the process id (so two test processes rarely share a block), the last two from
//! a counter (so two callers in one process never share an address). Outgoing loopback
//! connections take their source port on 127.0.0.1, not on these addresses, so ephemeral
//! ports of other tests never land on them either.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback address that no earlier call in this process returned.
///
/// Addresses are 127.B.x.y with B in 64..=191 (from the process id), x.y counting up and
/// skipping .0 and .255 in the last octet. After 64,000 calls the counter wraps; no test
/// process comes near that.
pub fn loopback() -> IpAddr {
    let block = 64 + (std::process::id() % 128) as u8;
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (254 * 252);
    let (x, y) = ((n / 254) as u8 + 1, (n % 254) as u8 + 1);
    IpAddr::V4(Ipv4Addr::new(127, block, x, y))
}

/// A port free for both TCP and UDP on every address in `ips` at the time of the call.
///
/// Use it with addresses from [`loopback`], which no one else binds; on a shared
/// address such as 127.0.0.1 the port may be taken before it is used.
pub fn free_port(ips: &[IpAddr]) -> u16 {
    let first = ips
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    // Bounded: 50 candidates.
    for _ in 0..50 {
        let port = TcpListener::bind((first, 0))
            .and_then(|l| l.local_addr())
            .expect("binding a loopback port")
            .port();
        let free = ips.iter().all(|ip| {
            TcpListener::bind((*ip, port)).is_ok() && UdpSocket::bind((*ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// `n` distinct ports free for TCP on `ip` at the time of the call (held together while
/// they are chosen, so no two are the same).
pub fn free_ports(ip: IpAddr, n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).expect("binding a loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A fresh loopback address with a port free for TCP and UDP on it.
pub fn free_addr() -> SocketAddr {
    let ip = loopback();
    SocketAddr::new(ip, free_port(&[ip]))
}

/// True when an error (or a server's log) says an address was already taken, the one
/// start-up failure worth retrying on a new address.
pub fn is_addr_in_use(text: &str) -> bool {
    text.contains("address already in use") || text.contains("Address already in use")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_distinct_and_bindable() {
        let ips: Vec<IpAddr> = (0..300).map(|_| loopback()).collect();
        let mut sorted = ips.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ips.len(), "every call gets its own address");
        for ip in &ips[..20] {
            assert!(ip.is_loopback(), "{ip}");
            TcpListener::bind((*ip, 0)).expect("bindable");
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(loopback(), 4);
        let mut sorted = ports.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{ports:?}");
    }

    #[test]
    fn free_port_is_free_for_tcp_and_udp_on_every_address() {
        let ips = [loopback(), loopback()];
        let port = free_port(&ips);
        for ip in ips {
            TcpListener::bind((ip, port)).unwrap();
            UdpSocket::bind((ip, port)).unwrap();
        }
    }
}
