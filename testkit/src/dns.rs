//! A small DNS client for tests, built on hickory-proto's encoder and decoder, so a
//! test sees exactly the bytes the server sent.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{
        Name, RData, RecordType,
        rdata::opt::{ClientSubnet, EdnsOption},
    },
};

/// Options of one test query.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// EDNS(0) with this UDP payload size; `None` (and no `ecs`) sends no OPT record.
    pub payload: Option<u16>,
    /// EDNS Client Subnet: address and source prefix length.
    pub ecs: Option<(IpAddr, u8)>,
    pub id: u16,
}

/// A query message for `name` and `rtype`.
pub fn message(name: &str, rtype: RecordType, ask: &Ask) -> Message {
    let mut m = Message::query();
    m.metadata.id = ask.id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if ask.payload.is_some() || ask.ecs.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(ask.payload.unwrap_or(1232));
        if let Some((ip, prefix)) = ask.ecs {
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(ip, prefix, 0)));
        }
        m.set_edns(edns);
    }
    m
}

/// Sends raw bytes over UDP from 127.0.0.1 and returns the raw reply, or `None` after
/// 1.5 s.
pub fn raw_udp(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    raw_udp_from("127.0.0.1", server, bytes)
}

/// Like [`raw_udp`], from the local address `local`.
pub fn raw_udp_from(local: &str, server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind((local, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    sock.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65_536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Sends one length-prefixed message over a new TCP connection and reads one reply
/// (3 s read timeout; panics on failure).
pub fn raw_tcp(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

/// One query over UDP, decoded; panics when no reply comes.
pub fn udp(server: SocketAddr, name: &str, rtype: RecordType, ask: &Ask) -> Message {
    let m = message(name, rtype, ask);
    let reply = raw_udp(server, &m.to_vec().unwrap()).expect("no UDP reply");
    Message::from_vec(&reply).unwrap()
}

/// One query over TCP, decoded.
pub fn tcp(server: SocketAddr, name: &str, rtype: RecordType, ask: &Ask) -> Message {
    let m = message(name, rtype, ask);
    let reply = raw_tcp(server, &m.to_vec().unwrap());
    Message::from_vec(&reply).unwrap()
}

/// Addresses (A and AAAA) in the answer section, in order.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// Serial of the SOA in the authority section, if any.
pub fn authority_soa_serial(m: &Message) -> Option<u32> {
    m.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// What one A query got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// No reply within the timeout, or an undecodable one.
    NoReply,
    /// A reply with an error response code (SERVFAIL, REFUSED, NXDOMAIN...).
    Error(String),
    /// NOERROR with these A addresses, sorted (empty: NODATA).
    Addresses(Vec<IpAddr>),
}

impl Answer {
    /// No reply or an error code.
    pub fn is_failed(&self) -> bool {
        !matches!(self, Answer::Addresses(_))
    }

    /// NOERROR without an address.
    pub fn is_empty(&self) -> bool {
        matches!(self, Answer::Addresses(a) if a.is_empty())
    }

    /// The addresses, empty for failures.
    pub fn addresses(&self) -> &[IpAddr] {
        match self {
            Answer::Addresses(a) => a,
            _ => &[],
        }
    }

    /// The addresses of a NOERROR answer, `None` for failures.
    pub fn ok(self) -> Option<Vec<IpAddr>> {
        match self {
            Answer::Addresses(a) => Some(a),
            _ => None,
        }
    }
}

/// One A query over UDP with a 500 ms timeout.
pub fn query_a(server: SocketAddr, name: &str) -> Answer {
    query_a_within(server, name, Duration::from_millis(500))
}

/// The A answer `server` gives now, for a check of what it answers rather than how fast:
/// up to three UDP tries of 1 s each, so a machine busy with other tests does not turn
/// a slow reply into a wrong one. A server that never replies still gives `NoReply`.
pub fn answer_a(server: SocketAddr, name: &str) -> Answer {
    let mut last = Answer::NoReply;
    for _ in 0..3 {
        last = query_a_within(server, name, Duration::from_secs(1));
        if last != Answer::NoReply {
            break;
        }
    }
    last
}

/// One A query over UDP, waiting at most `timeout` for the reply.
pub fn query_a_within(server: SocketAddr, name: &str, timeout: Duration) -> Answer {
    query_within(server, name, RecordType::A, false, timeout)
}

/// One query for `rtype` (A or AAAA) over UDP, or over a new TCP connection when `tcp`,
/// waiting at most `timeout` for the reply (and, over TCP, for the connection).
pub fn query_within(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    tcp: bool,
    timeout: Duration,
) -> Answer {
    let mut msg = Message::query();
    msg.metadata.id = rand::random();
    let Ok(qname) = Name::from_ascii(name) else {
        return Answer::Error(format!("bad name {name:?}"));
    };
    msg.add_query(Query::query(qname, rtype));
    let Ok(bytes) = msg.to_vec() else {
        return Answer::Error("cannot encode the query".into());
    };
    let reply = if tcp {
        tcp_exchange(server, &bytes, timeout)
    } else {
        udp_exchange(server, &bytes, msg.metadata.id, timeout)
    };
    let Some(resp) = reply else {
        return Answer::NoReply;
    };
    if resp.metadata.response_code != ResponseCode::NoError {
        return Answer::Error(format!("{:?}", resp.metadata.response_code));
    }
    let mut ips: Vec<IpAddr> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) if rtype == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if rtype == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    ips.sort();
    Answer::Addresses(ips)
}

fn udp_exchange(server: SocketAddr, bytes: &[u8], id: u16, timeout: Duration) -> Option<Message> {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.set_read_timeout(Some(timeout)).ok()?;
    socket.send_to(bytes, server).ok()?;
    let mut buf = [0u8; 4096];
    // Skip replies to other ids (a late reply to an earlier query on a reused port).
    for _ in 0..4 {
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        let resp = Message::from_vec(&buf[..n]).ok()?;
        if resp.metadata.id == id {
            return Some(resp);
        }
    }
    None
}

fn tcp_exchange(server: SocketAddr, bytes: &[u8], timeout: Duration) -> Option<Message> {
    let mut s = TcpStream::connect_timeout(&server, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Message::from_vec(&buf).ok()
}

/// Polls `name` on `server` every 20 ms until its A addresses (sorted) satisfy `want`,
/// for at most `limit`; returns them and how long it took. Panics with the last answer.
pub fn wait_for_answer(
    server: SocketAddr,
    name: &str,
    limit: Duration,
    want: impl Fn(&[IpAddr]) -> bool,
) -> (Vec<IpAddr>, Duration) {
    let start = std::time::Instant::now();
    let mut last = Answer::NoReply;
    // Bounded by `limit` and by a count.
    let max = limit.as_millis() / 20 + 1;
    for _ in 0..max {
        last = query_a(server, name);
        if let Answer::Addresses(ips) = &last
            && want(ips)
        {
            return (ips.clone(), start.elapsed());
        }
        if start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{server}: {name} did not reach the expected answer within {limit:?}; last {last:?}");
}

/// [`wait_for_answer`] from async code (on a blocking thread).
pub async fn await_answer(
    server: SocketAddr,
    name: &str,
    limit: Duration,
    want: impl Fn(&[IpAddr]) -> bool + Send + 'static,
) -> (Vec<IpAddr>, Duration) {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || wait_for_answer(server, &name, limit, want))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// [`await_answer`] for "exactly `want`".
pub async fn await_exactly(server: SocketAddr, name: &str, want: IpAddr, limit: Duration) {
    await_answer(server, name, limit, move |ips| ips == [want]).await;
}

/// What `dig` printed for one A query, parsed down to what tests look at.
#[derive(Debug)]
pub struct Dig {
    pub text: String,
}

impl Dig {
    /// Whether `dig` is installed here.
    pub fn available() -> bool {
        std::process::Command::new("dig").arg("-v").output().is_ok()
    }

    /// Runs `dig @server -p port +norec +ignore <args> name A` (UDP unless `args` holds
    /// `+tcp`); `None` when dig cannot run.
    pub fn query(server: SocketAddr, name: &str, args: &[&str]) -> Option<Self> {
        let out = std::process::Command::new("dig")
            .arg(format!("@{}", server.ip()))
            .args(["-p", &server.port().to_string()])
            .args(["+norec", "+time=5", "+tries=1", "+ignore"])
            .args(args)
            .args([name, "A"])
            .output()
            .ok()?;
        Some(Self {
            text: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }

    /// Addresses of the A records in the answer section.
    pub fn answers(&self) -> Vec<String> {
        self.text
            .lines()
            .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
            .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
            .collect()
    }

    /// The TC flag of the reply.
    pub fn truncated(&self) -> bool {
        self.text.lines().any(|l| {
            l.starts_with(";; flags:") && l.split(';').nth(2).is_some_and(|f| f.contains(" tc"))
        })
    }

    /// The response code, `NOERROR` and so on.
    pub fn status(&self) -> &str {
        self.text
            .split("status: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or("")
    }

    /// Bytes of the reply (`MSG SIZE  rcvd: N`).
    pub fn size(&self) -> usize {
        self.text
            .split("MSG SIZE  rcvd: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}
