//! Zone transfer and NOTIFY over real sockets: AXFR and IXFR over TCP read back with
//! hickory-proto's decoder and with `dig`, refusals, serials, and a NOTIFY receiver that
//! answers only the second time.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::SOA},
};
use lifeline_dns::{DnsConfig, Shim, ShimHandle, Update, ZoneConfig, ZoneSnapshot};

/// Longest wait for something that takes milliseconds when it works.
const LIMIT: Duration = Duration::from_secs(20);

fn zone_with_transfer(transfer: serde_json::Value) -> ZoneConfig {
    let mut zone = serde_json::to_value(zone_config()).unwrap();
    zone["transfer"] = transfer;
    serde_json::from_value(zone).unwrap()
}

fn start_zone(
    zone: ZoneConfig,
    snapshot: Option<ZoneSnapshot>,
) -> (ShimHandle, tempfile::TempDir, tokio::runtime::Runtime) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsConfig {
        data_dir: dir.path().to_owned(),
        ..dns_config(dir.path())
    };
    let shim = rt.block_on(Shim::start(&dns, &[zone])).unwrap();
    if let Some(s) = snapshot {
        shim.apply(Update::Replace(s)).unwrap();
    }
    (shim, dir, rt)
}

/// A transfer request for `zone` of `rtype`; an IXFR carries `serial` in its authority
/// section as RFC 1995 asks.
fn request(zone: &str, rtype: RecordType, serial: Option<u32>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    let name = Name::from_ascii(zone).unwrap();
    m.add_query(Query::query(name.clone(), rtype));
    if let Some(serial) = serial {
        let soa = SOA::new(name.clone(), name.clone(), serial, 1, 1, 1, 1);
        m.add_authority(Record::from_rdata(name, 0, RData::SOA(soa)));
    }
    m.to_vec().unwrap()
}

/// Sends `bytes` over TCP from `from` and reads the transfer's messages: until the
/// second SOA, or after a first message that is a refusal or a lone SOA.
fn transfer(server: SocketAddr, from: &str, bytes: &[u8]) -> Vec<(usize, Message)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).unwrap();
    let mut messages = Vec::new();
    let mut soas = 0;
    loop {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).unwrap();
        let m = Message::from_vec(&buf).unwrap();
        soas += m
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .count();
        let first = messages.is_empty();
        let lone_soa = m.answers.len() == 1 && soas == 1;
        let refused = m.metadata.response_code != ResponseCode::NoError;
        messages.push((buf.len(), m));
        if soas >= 2 || (first && (lone_soa || refused)) {
            return messages;
        }
    }
}

fn soa_serial(r: &Record) -> Option<u32> {
    match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    }
}

/// The big zone: the usual names plus `n` names with three addresses each.
fn big_snapshot(revision: u64, n: usize) -> ZoneSnapshot {
    let mut s = snapshot(revision);
    for i in 0..n {
        s.names.insert(
            format!("svc-{i}"),
            address(
                30,
                vec![
                    target(&format!("10.{}.{}.1", i / 256, i % 256), "c1", "eu-west", 3),
                    target(&format!("10.{}.{}.2", i / 256, i % 256), "c2", "us-east", 1),
                    target(&format!("2001:db8::{i:x}"), "c3", "ap-south", 1),
                ],
            ),
        );
    }
    s
}

#[test]
fn axfr_sends_every_address_of_every_name_in_messages_tcp_can_frame() {
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.2/32"]}));
    let names = 3000;
    let (shim, _dir, _rt) = start_zone(zone, Some(big_snapshot(7, names)));
    let server = shim.tcp_addrs()[0];
    let messages = transfer(
        server,
        "127.0.0.2",
        &request("global.example.com.", RecordType::AXFR, None),
    );

    assert!(
        messages.len() > 1,
        "a zone of this size spans several messages"
    );
    let records: Vec<&Record> = messages
        .iter()
        .flat_map(|(_, m)| m.answers.iter())
        .collect();
    for (len, m) in &messages {
        assert!(*len <= 65_535);
        assert_eq!(m.metadata.id, 4242);
        assert!(m.metadata.authoritative);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    let serial = shim.state().zones[0].serial;
    assert!(serial.is_some());
    assert_eq!(
        soa_serial(records[0]),
        serial,
        "the stream opens with the SOA"
    );
    assert_eq!(
        soa_serial(records[records.len() - 1]),
        serial,
        "and closes with it"
    );
    let a = |name: &str| -> Vec<String> {
        let name = Name::from_ascii(name).unwrap();
        let mut v: Vec<String> = records
            .iter()
            .filter(|r| {
                r.name == name && matches!(r.record_type(), RecordType::A | RecordType::AAAA)
            })
            .map(|r| r.data.to_string())
            .collect();
        v.sort();
        v
    };
    // Every target, with no geo choice and no maxAnswers subset.
    assert_eq!(
        a("geo.global.example.com."),
        ["192.0.2.41", "192.0.2.42", "192.0.2.43"]
    );
    assert_eq!(
        a("svc-2999.global.example.com."),
        ["10.11.183.1", "10.11.183.2", "2001:db8::bb7"]
    );
    let addresses = records
        .iter()
        .filter(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA))
        .count();
    assert_eq!(addresses, names * 3 + 1 + 2 + 3 + 2 + 3 + 40 + 1);
    let of = |t: RecordType| records.iter().filter(|r| r.record_type() == t).count();
    assert_eq!(of(RecordType::NS), 2);
    assert_eq!(of(RecordType::SRV), 1);
    assert_eq!(of(RecordType::TXT), 1);
    assert_eq!(of(RecordType::CNAME), 1);
    assert_eq!(of(RecordType::SOA), 2);
    assert_eq!(shim.engine().counters().transfers_full.get(), 1);
}

#[test]
fn transfers_are_refused_unless_allowed_over_tcp_for_a_zone_apex() {
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.2/32"]}));
    let (shim, _dir, _rt) = start_zone(zone, Some(snapshot(3)));
    let server = shim.tcp_addrs()[0];
    let axfr = request("global.example.com.", RecordType::AXFR, None);

    let refused = transfer(server, "127.0.0.1", &axfr);
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].1.metadata.response_code,
        ResponseCode::Refused,
        "127.0.0.1 is not allowed"
    );
    assert!(refused[0].1.answers.is_empty());

    let not_apex = transfer(
        server,
        "127.0.0.2",
        &request("www.global.example.com.", RecordType::AXFR, None),
    );
    assert_eq!(not_apex[0].1.metadata.response_code, ResponseCode::NotAuth);

    let udp = lifeline_testkit::dns::raw_udp_from("127.0.0.2", shim.udp_addrs()[0], &axfr).unwrap();
    let udp = Message::from_vec(&udp).unwrap();
    assert_eq!(
        udp.metadata.response_code,
        ResponseCode::Refused,
        "no transfer over UDP"
    );
    assert!(udp.answers.is_empty());

    assert_eq!(shim.engine().counters().transfers_refused.get(), 3);
    assert_eq!(shim.engine().counters().transfers_full.get(), 0);
    // Queries go on as before on the same connection type.
    assert_eq!(
        addresses(&plain_tcp(&shim, "www.global.example.com.", RecordType::A)),
        ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
    );

    // A zone with no transfer section refuses everyone.
    let (closed, _dir2, _rt2) = start_zone(zone_config(), Some(snapshot(3)));
    let none = transfer(closed.tcp_addrs()[0], "127.0.0.2", &axfr);
    assert_eq!(none[0].1.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn ixfr_is_one_soa_for_a_current_secondary_and_the_whole_zone_otherwise() {
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.0/8"]}));
    let (shim, _dir, _rt) = start_zone(zone, Some(snapshot(5)));
    let server = shim.tcp_addrs()[0];
    let serial = shim.state().zones[0].serial.unwrap();

    let current = transfer(
        server,
        "127.0.0.1",
        &request("global.example.com.", RecordType::IXFR, Some(serial)),
    );
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].1.answers.len(), 1);
    assert_eq!(soa_serial(&current[0].1.answers[0]), Some(serial));
    assert_eq!(shim.engine().counters().transfers_current.get(), 1);

    let behind = transfer(
        server,
        "127.0.0.1",
        &request(
            "global.example.com.",
            RecordType::IXFR,
            Some(serial.wrapping_sub(3)),
        ),
    );
    let records: Vec<&Record> = behind.iter().flat_map(|(_, m)| m.answers.iter()).collect();
    assert_eq!(soa_serial(records[0]), Some(serial));
    assert_eq!(soa_serial(records[records.len() - 1]), Some(serial));
    assert!(
        records
            .iter()
            .any(|r| r.name == Name::from_ascii("www.global.example.com.").unwrap())
    );
    assert_eq!(shim.engine().counters().transfers_full.get(), 1);

    // An IXFR without the secondary's SOA is malformed.
    let bare = transfer(
        server,
        "127.0.0.1",
        &request("global.example.com.", RecordType::IXFR, None),
    );
    assert_eq!(bare[0].1.metadata.response_code, ResponseCode::FormErr);
}

/// The records of a transfer between its opening SOA and its closing one.
fn sections(messages: &[(usize, Message)]) -> Vec<Record> {
    messages
        .iter()
        .flat_map(|(_, m)| m.answers.iter().cloned())
        .collect()
}

fn patch(revision: u64, upsert: &[(&str, &str)], delete: &[&str]) -> Update {
    Update::Patch(lifeline_dns::ZonePatch {
        zone: ZONE.into(),
        revision,
        decided_at: std::time::SystemTime::now(),
        upsert: upsert
            .iter()
            .map(|(n, a)| {
                (
                    n.to_string(),
                    address(60, vec![target(a, "c1", "eu-west", 1)]),
                )
            })
            .collect(),
        delete: delete.iter().map(|d| d.to_string()).collect(),
    })
}

#[test]
fn ixfr_sends_only_what_changed_since_the_secondary_serial_even_after_a_restart() {
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.0/8"]}));
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let dns = dns_config(dir.path());
    let ixfr = |shim: &ShimHandle, serial| {
        sections(&transfer(
            shim.tcp_addrs()[0],
            "127.0.0.1",
            &request("global.example.com.", RecordType::IXFR, Some(serial)),
        ))
    };
    let shown = |r: &Record| format!("{} {} {}", r.name, r.record_type(), r.data);
    let serials_seen;
    {
        let shim = rt
            .block_on(Shim::start(&dns, std::slice::from_ref(&zone)))
            .unwrap();
        // Each change waits for the disk, so the journal holds each one (changes queued
        // behind a busy disk are folded into one snapshot, which offers no history).
        let serial = |shim: &ShimHandle| {
            assert_eq!(shim.flush(Duration::from_secs(30)), Some(true));
            shim.state().zones[0].serial.unwrap()
        };
        shim.apply(Update::Replace(snapshot(5))).unwrap();
        let s5 = serial(&shim);
        shim.apply(patch(6, &[("www", "192.0.2.6")], &["info"]))
            .unwrap();
        let s6 = serial(&shim);
        shim.apply(patch(
            7,
            &[("www", "192.0.2.7"), ("new", "192.0.2.70")],
            &[],
        ))
        .unwrap();
        let s7 = serial(&shim);
        assert!(s5 != s6 && s6 != s7 && s5 != s7, "{s5} {s6} {s7}");
        serials_seen = [s5, s6, s7];
        let records = ixfr(&shim, s5);
        let serials: Vec<Option<u32>> = records
            .iter()
            .map(soa_serial)
            .filter(Option::is_some)
            .collect();
        assert_eq!(
            serials,
            [Some(s7), Some(s5), Some(s7), Some(s7)],
            "new, old, new, new"
        );
        let lines: Vec<String> = records
            .iter()
            .filter(|r| r.record_type() != RecordType::SOA)
            .map(shown)
            .collect();
        assert_eq!(
            lines,
            [
                // Deleted, as at serial 5.
                "info.global.example.com. TXT v=lifeline1",
                "www.global.example.com. A 192.0.2.1",
                // Added, as now; the address www had at 6 never shows.
                "new.global.example.com. A 192.0.2.70",
                "www.global.example.com. A 192.0.2.7",
            ]
        );
        assert_eq!(shim.engine().counters().transfers_incremental.get(), 1);
        // A serial never served here: the whole zone.
        let whole = ixfr(&shim, s5.wrapping_sub(1));
        assert!(whole.len() > 10);
        assert_eq!(shim.engine().counters().transfers_full.get(), 1);
        assert_eq!(shim.flush(Duration::from_secs(30)), Some(true));
        shim.shutdown();
    }
    // The journal brings the history back, and the kept serial with it.
    let shim = rt
        .block_on(Shim::start(&dns, std::slice::from_ref(&zone)))
        .unwrap();
    let [_, s6, s7] = serials_seen;
    assert_eq!(
        shim.state().zones[0].serial,
        Some(s7),
        "a restart keeps the serial"
    );
    let records = ixfr(&shim, s6);
    let lines: Vec<String> = records
        .iter()
        .filter(|r| r.record_type() != RecordType::SOA)
        .map(shown)
        .collect();
    assert_eq!(
        lines,
        [
            "www.global.example.com. A 192.0.2.6",
            "new.global.example.com. A 192.0.2.70",
            "www.global.example.com. A 192.0.2.7"
        ]
    );
    assert_eq!(shim.engine().counters().transfers_incremental.get(), 1);
    assert_eq!(shim.engine().counters().transfers_full.get(), 0);
}

#[test]
fn a_revision_jump_the_serial_cannot_express_is_refused_and_answers_stay() {
    let (shim, _dir, _rt) = start_zone(zone_config(), Some(snapshot(10)));
    let mut jump = snapshot(10 + (1 << 31));
    jump.names.insert(
        "www".into(),
        address(60, vec![target("192.0.2.99", "c1", "eu-west", 1)]),
    );
    let err = shim.apply(Update::Replace(jump)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("global.example.com") && text.contains("2^31"),
        "{text}"
    );
    assert_eq!(shim.state().zones[0].revision, Some(10));
    let www = addresses(&plain_udp(&shim, "www.global.example.com.", RecordType::A));
    assert_eq!(www, ["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]);
    // The largest step RFC 1982 allows is taken.
    shim.apply(Update::Replace(snapshot(10 + (1 << 31) - 1)))
        .unwrap();
    assert_eq!(shim.state().zones[0].revision, Some(10 + (1 << 31) - 1));
}

/// Waits for the next NOTIFY on `secondary`; returns it with its sender.
fn next_notify(secondary: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = [0u8; 512];
    let (n, from) = secondary
        .recv_from(&mut buf)
        .expect("a NOTIFY within the limit");
    (Message::from_vec(&buf[..n]).unwrap(), from)
}

fn acknowledge(secondary: &UdpSocket, notify: &Message, to: SocketAddr) {
    let mut reply = Message::response(notify.metadata.id, OpCode::Notify);
    reply.metadata.authoritative = true;
    reply.add_queries(notify.queries.clone());
    secondary.send_to(&reply.to_vec().unwrap(), to).unwrap();
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < LIMIT,
            "{what} did not happen within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_secondary_is_told_each_new_serial_until_it_acknowledges() {
    let secondary = UdpSocket::bind("127.0.0.1:0").unwrap();
    secondary.set_read_timeout(Some(LIMIT)).unwrap();
    let zone = zone_with_transfer(
        serde_json::json!({"notify": [secondary.local_addr().unwrap().to_string()]}),
    );
    let (shim, _dir, _rt) = start_zone(zone, Some(snapshot(1)));

    let (first, from) = next_notify(&secondary);
    assert_eq!(first.metadata.op_code, OpCode::Notify);
    assert_eq!(first.metadata.message_type, MessageType::Query);
    assert!(first.metadata.authoritative);
    assert_eq!(
        first.queries[0].name(),
        &Name::from_ascii("global.example.com.").unwrap()
    );
    assert_eq!(first.queries[0].query_type(), RecordType::SOA);
    // Unanswered, it comes again.
    let (again, from_again) = next_notify(&secondary);
    assert_eq!(again.queries, first.queries);
    acknowledge(&secondary, &again, from_again);
    let engine = shim.engine();
    let counters = engine.counters();
    wait_until("the acknowledgement counted", || {
        counters.notifies_acknowledged.get() == 1
    });
    assert!(counters.notifies_failed.get() >= 1);
    let _ = from;

    // A new serial is told anew.
    shim.apply(Update::Replace(snapshot(2))).unwrap();
    let (second, to) = next_notify(&secondary);
    assert_eq!(second.metadata.op_code, OpCode::Notify);
    acknowledge(&secondary, &second, to);
    wait_until("the second acknowledgement counted", || {
        counters.notifies_acknowledged.get() == 2
    });
}

#[test]
fn dig_reads_the_whole_zone_by_axfr() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        lifeline_testkit::skip::skipped("dig is not installed");
        return;
    }
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.0/8"]}));
    let (shim, _dir, _rt) = start_zone(zone, Some(big_snapshot(9, 2000)));
    let server = shim.tcp_addrs()[0];
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
        ])
        .args(["+time=10", "+tries=1", "AXFR", "global.example.com."])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let records: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        records.iter().filter(|l| l.contains("\tSOA\t")).count(),
        2,
        "{text}"
    );
    assert!(
        records
            .iter()
            .any(|l| l.starts_with("www.global.example.com.") && l.ends_with("192.0.2.1")),
        "{text}"
    );
    assert!(
        records
            .iter()
            .any(|l| l.starts_with("svc-1999.global.example.com.") && l.ends_with("2001:db8::7cf")),
        "{text}"
    );
    // dig counts the messages it read: more than one for this zone.
    // ";; XFR size: N records (messages M, bytes B)"
    let messages: usize = text
        .split("(messages ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(messages > 1, "{text}");
    assert_eq!(
        records.len(),
        2 + 2 + 2000 * 3 + 1 + 2 + 3 + 2 + 3 + 40 + 1 + 1 + 1 + 1
    );
}

#[test]
fn transfer_settings_are_checked_with_their_path() {
    let empty = zone_with_transfer(serde_json::json!({}));
    let problems = empty.validate("zones[0]");
    assert!(
        problems
            .iter()
            .any(|(p, m)| p == "zones[0].transfer" && m.contains("no allowed prefix")),
        "{problems:?}"
    );
    let unusable =
        zone_with_transfer(serde_json::json!({"notify": ["0.0.0.0:53", "192.0.2.53:0"]}));
    let problems = unusable.validate("zones[0]");
    assert!(
        problems
            .iter()
            .any(|(p, _)| p == "zones[0].transfer.notify[0]"),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|(p, _)| p == "zones[0].transfer.notify[1]"),
        "{problems:?}"
    );
    // The same secondary twice would be told every change twice.
    let twice = zone_with_transfer(serde_json::json!({
        "notify": ["192.0.2.53:53", "192.0.2.54:53", "192.0.2.53:53"],
        "maxTransfers": 0, "maxTransfersPerPrefix": 100_000,
    }));
    let problems = twice.validate("zones[0]");
    assert!(
        problems
            .iter()
            .any(|(p, m)| p == "zones[0].transfer.notify[2]"
                && m.contains("listed already (notify[0])")),
        "{problems:?}"
    );
    assert!(
        !problems
            .iter()
            .any(|(p, _)| p == "zones[0].transfer.notify[1]"),
        "{problems:?}"
    );
    for field in ["maxTransfers", "maxTransfersPerPrefix"] {
        assert!(
            problems
                .iter()
                .any(|(p, _)| *p == format!("zones[0].transfer.{field}")),
            "{field}: {problems:?}"
        );
    }
    let mut zone = serde_json::to_value(zone_config()).unwrap();
    zone["transfer"] = serde_json::json!({"allow": ["192.0.2.0/24"], "tsig": {"name": "k"}});
    let err = serde_json::from_value::<ZoneConfig>(zone)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tsig"), "{err}");
}

/// Opens a connection from `from`, asks for an AXFR, and reads only the first two bytes
/// of the answer: a secondary that stalls with the transfer started.
fn stalled_axfr(server: SocketAddr, from: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // A small receive window, so the stall reaches the server soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let bytes = request("global.example.com.", RecordType::AXFR, None);
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    s
}

#[test]
fn stalled_transfers_hold_at_most_their_places_and_one_more_is_refused() {
    let zone = zone_with_transfer(serde_json::json!({
        "allow": ["127.0.0.0/8"], "maxTransfers": 6, "maxTransfersPerPrefix": 4,
    }));
    let (shim, _dir, _rt) = start_zone(zone, Some(big_snapshot(7, 20_000)));
    let server = shim.tcp_addrs()[0];
    let counters = || shim.engine().counters().transfers_busy.get();

    // Four stalled secondaries in 127.0.0.0/24 take that prefix's places.
    let held: Vec<TcpStream> = (0..4).map(|_| stalled_axfr(server, "127.0.0.3")).collect();
    let axfr = request("global.example.com.", RecordType::AXFR, None);
    let refused = transfer(server, "127.0.0.4", &axfr);
    assert_eq!(refused[0].1.metadata.response_code, ResponseCode::Refused);
    assert_eq!(counters(), 1);
    // Another prefix still has places, up to the zone's six.
    let other: Vec<TcpStream> = (0..2).map(|_| stalled_axfr(server, "127.0.1.3")).collect();
    let refused = transfer(server, "127.0.2.3", &axfr);
    assert_eq!(refused[0].1.metadata.response_code, ResponseCode::Refused);
    assert_eq!(counters(), 2, "the zone's limit holds across prefixes");
    // Queries are answered meanwhile, over UDP and TCP.
    let www = || addresses(&plain_udp(&shim, "www.global.example.com.", RecordType::A));
    assert_eq!(www().len(), 1);
    assert_eq!(
        addresses(&plain_tcp(&shim, "www.global.example.com.", RecordType::A)).len(),
        1
    );

    // The stalled secondaries go away: their places come back.
    drop(held);
    drop(other);
    let start = Instant::now();
    loop {
        let messages = transfer(server, "127.0.0.4", &axfr);
        if messages[0].1.metadata.response_code == ResponseCode::NoError {
            let records: usize = messages.iter().map(|(_, m)| m.answers.len()).sum();
            assert!(records > 60_000, "the whole zone: {records} records");
            break;
        }
        assert!(start.elapsed() < LIMIT, "the places never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn transfers_carry_the_capped_ttls_a_stale_primary_answers() {
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.0/8"]}));
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut old = snapshot(1);
    old.decided_at = std::time::SystemTime::now() - Duration::from_secs(3600);
    lifeline_dns::snapshots::write(dir.path(), &old).unwrap();
    let mut dns = dns_config(dir.path());
    dns.stale_after = Duration::from_secs(300);
    let shim = rt.block_on(Shim::start(&dns, &[zone])).unwrap();
    assert!(shim.state().stale);
    let messages = transfer(
        shim.tcp_addrs()[0],
        "127.0.0.1",
        &request("global.example.com.", RecordType::AXFR, None),
    );
    let ttls: Vec<u32> = messages
        .iter()
        .flat_map(|(_, m)| m.answers.iter().map(|r| r.ttl))
        .collect();
    assert!(ttls.len() > 10);
    assert!(
        ttls.iter().all(|t| *t <= dns.stale_ttl),
        "every TTL capped at {}: {ttls:?}",
        dns.stale_ttl
    );
    shim.shutdown();
}

#[test]
fn an_ixfr_larger_than_the_zone_goes_out_as_the_whole_zone() {
    // One name with many addresses, replaced whole: the difference deletes and adds
    // each of them, twice the records the zone holds.
    let zone = zone_with_transfer(serde_json::json!({"allow": ["127.0.0.0/8"]}));
    let many = |base: u8| -> Vec<lifeline_dns::Target> {
        (0..200u8)
            .map(|i| target(&format!("10.{base}.0.{i}"), "c1", "eu-west", 1))
            .collect()
    };
    let mut first = lifeline_dns::ZoneSnapshot::empty(ZONE, 1, std::time::SystemTime::now());
    first.names.insert("wide".into(), address(30, many(1)));
    let (shim, _dir, _rt) = start_zone(zone, Some(first));
    let before = shim.state().zones[0].serial.unwrap();
    let mut upsert = std::collections::BTreeMap::new();
    upsert.insert("wide".to_owned(), address(30, many(2)));
    shim.apply(Update::Patch(lifeline_dns::ZonePatch {
        zone: ZONE.into(),
        revision: 2,
        decided_at: std::time::SystemTime::now(),
        upsert,
        delete: Vec::new(),
    }))
    .unwrap();
    let messages = transfer(
        shim.tcp_addrs()[0],
        "127.0.0.1",
        &request("global.example.com.", RecordType::IXFR, Some(before)),
    );
    let records: usize = messages.iter().map(|(_, m)| m.answers.len()).sum();
    assert_eq!(shim.engine().counters().transfers_incremental.get(), 0);
    assert_eq!(shim.engine().counters().transfers_full.get(), 1);
    assert!(
        records < 300,
        "the zone, not a 400-record difference: {records}"
    );
}
