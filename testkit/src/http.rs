//! Plain HTTP/1.1 with a deadline, for promises like "`/readyz` answers within 1 s".

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// `GET path` from `addr`, allowing `limit` to connect and again to read the answer:
/// the status code, or why there was none.
pub fn status_within(addr: SocketAddr, path: &str, limit: Duration) -> Result<u16, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(limit))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send GET {path}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("no answer to {path} within {limit:?}: {e}"))?;
    out.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {out:?}"))
}
