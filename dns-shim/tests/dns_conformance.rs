//! Conformance over real UDP and TCP sockets on loopback.

mod common;

use std::{collections::HashMap, net::IpAddr};

use common::*;
use hickory_proto::{
    op::{Message, OpCode, ResponseCode},
    rr::{RData, RecordType, rdata::opt::EdnsCode},
};

/// Runs a test body against a fresh shim serving `snapshot(1)`.
fn with_shim(f: impl FnOnce(&lifeline_dns::ShimHandle)) {
    let rt = rt();
    let (shim, _dir) = rt.block_on(start());
    f(&shim);
    shim.shutdown();
}

#[test]
fn a_query_is_answered_authoritatively_without_recursion() {
    with_shim(|shim| {
        for m in [
            plain_udp(shim, "www.global.example.com.", RecordType::A),
            plain_tcp(shim, "www.global.example.com.", RecordType::A),
        ] {
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative, "AA must be set");
            assert!(!m.metadata.recursion_available, "RA must be clear");
            assert!(m.metadata.recursion_desired, "RD is copied from the query");
            assert_eq!(addresses(&m), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
            assert_eq!(m.answers[0].ttl, 60);
        }
    });
}

#[test]
fn nxdomain_and_nodata_both_carry_the_soa() {
    with_shim(|shim| {
        let nx = plain_udp(shim, "nope.global.example.com.", RecordType::A);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.metadata.authoritative);
        assert!(nx.answers.is_empty());
        let serial = shim.state().zones[0].serial;
        assert!(serial.is_some());
        assert_eq!(authority_soa_serial(&nx), serial);
        assert_eq!(nx.authorities[0].name.to_ascii(), "global.example.com.");
        // Negative TTL is min(SOA TTL, MINIMUM) = 30 (RFC 2308).
        assert_eq!(nx.authorities[0].ttl, 30);

        let nodata = plain_udp(shim, "www.global.example.com.", RecordType::MX);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.metadata.authoritative);
        assert!(nodata.answers.is_empty());
        assert_eq!(authority_soa_serial(&nodata), serial);

        // AAAA on a v4-only name is NODATA, not NXDOMAIN.
        let v6 = plain_udp(shim, "www.global.example.com.", RecordType::AAAA);
        assert_eq!(v6.metadata.response_code, ResponseCode::NoError);
        assert!(v6.answers.is_empty());
        assert!(authority_soa_serial(&v6).is_some());
    });
}

#[test]
fn empty_non_terminals_are_nodata_not_nxdomain() {
    with_shim(|shim| {
        let ent = plain_udp(shim, "under.ent.global.example.com.", RecordType::A);
        assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
        assert!(ent.answers.is_empty());
        assert!(authority_soa_serial(&ent).is_some());
        let leaf = plain_udp(shim, "deep.under.ent.global.example.com.", RecordType::A);
        assert_eq!(
            addresses(&leaf),
            vec!["192.0.2.50".parse::<IpAddr>().unwrap()]
        );
    });
}

#[test]
fn names_outside_every_zone_are_refused() {
    with_shim(|shim| {
        for name in ["example.org.", "example.com.", "xglobal.example.com."] {
            let m = plain_udp(shim, name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
            assert!(!m.metadata.authoritative, "{name}");
            assert!(m.answers.is_empty());
        }
    });
}

#[test]
fn soa_and_ns_come_from_config_and_the_serial_moves_with_each_change() {
    let rt = rt();
    let (shim, _dir) = rt.block_on(start());
    let soa = plain_udp(&shim, "global.example.com.", RecordType::SOA);
    let RData::SOA(s) = &soa.answers[0].data else {
        panic!("not a SOA: {soa:?}")
    };
    assert_eq!(s.mname.to_ascii(), "ns1.global.example.com.");
    assert_eq!(s.rname.to_ascii(), "hostmaster.example.com.");
    let first = s.serial;
    assert_eq!(Some(first), shim.state().zones[0].serial);
    assert_eq!(s.minimum, 30);

    let ns = plain_udp(&shim, "GLOBAL.example.com.", RecordType::NS);
    let mut names: Vec<String> = ns
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::NS(n) => Some(n.0.to_ascii()),
            _ => None,
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["ns1.global.example.com.", "ns2.global.example.com."]
    );

    shim.apply(lifeline_dns::Update::Replace(snapshot(42)))
        .unwrap();
    let soa = plain_udp(&shim, "global.example.com.", RecordType::SOA);
    let RData::SOA(s) = &soa.answers[0].data else {
        panic!("not a SOA")
    };
    assert_eq!(Some(s.serial), shim.state().zones[0].serial);
    assert!(
        hickory_proto::rr::SerialNumber::new(s.serial)
            > hickory_proto::rr::SerialNumber::new(first),
        "a change moves the serial forward: {first} then {}",
        s.serial
    );
    shim.shutdown();
}

#[test]
fn srv_txt_and_cname_records_are_served() {
    with_shim(|shim| {
        let srv = plain_udp(shim, "_http._tcp.svc.global.example.com.", RecordType::SRV);
        let RData::SRV(s) = &srv.answers[0].data else {
            panic!("not SRV: {srv:?}")
        };
        assert_eq!((s.priority, s.weight, s.port), (10, 5, 8080));
        assert_eq!(s.target.to_ascii(), "www.global.example.com.");

        let txt = plain_udp(shim, "info.global.example.com.", RecordType::TXT);
        let RData::TXT(t) = &txt.answers[0].data else {
            panic!("not TXT")
        };
        assert_eq!(&*t.txt_data[0], b"v=lifeline1");

        // An alias answers any type with the CNAME, and chases it inside the zone.
        let a = plain_udp(shim, "alias.global.example.com.", RecordType::A);
        assert_eq!(a.answers.len(), 2, "{a:?}");
        assert!(
            matches!(&a.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "www.global.example.com.")
        );
        assert_eq!(a.answers[1].name.to_ascii(), "www.global.example.com.");
        assert_eq!(addresses(&a), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        let cname = plain_udp(shim, "alias.global.example.com.", RecordType::CNAME);
        assert_eq!(cname.answers.len(), 1);
        let mx = plain_udp(shim, "alias.global.example.com.", RecordType::MX);
        assert!(matches!(&mx.answers[0].data, RData::CNAME(_)));
    });
}

#[test]
fn matching_is_case_insensitive_and_the_question_case_is_echoed() {
    with_shim(|shim| {
        for name in [
            "WwW.GlObAl.ExAmPlE.CoM.",
            "NoPe.GLOBAL.example.com.",
            "Under.Ent.Global.Example.Com.",
        ] {
            for m in [
                plain_udp(shim, name, RecordType::A),
                plain_tcp(shim, name, RecordType::A),
            ] {
                assert_eq!(m.queries[0].name().to_ascii(), name, "question case echoed");
            }
        }
        let m = plain_udp(shim, "WWW.GLOBAL.EXAMPLE.COM.", RecordType::A);
        assert_eq!(addresses(&m), vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    });
}

/// A header-only request with the given flags and counts, plus `rest`.
fn raw_request(id: u16, flags: u16, counts: [u16; 4], rest: &[u8]) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(rest);
    out
}

const WWW_A: &[u8] = b"\x03www\x06global\x07example\x03com\x00\x00\x01\x00\x01";

#[test]
fn wrong_opcodes_get_notimp_and_bad_question_counts_get_formerr() {
    with_shim(|shim| {
        let server = shim.udp_addrs()[0];
        // NOTIFY (4), UPDATE (5), STATUS (2): NOTIMP.
        for opcode in [2u16, 4, 5] {
            let req = raw_request(0x1234, opcode << 11, [1, 0, 0, 0], WWW_A);
            let m = Message::from_vec(&raw_udp(server, &req).unwrap()).unwrap();
            assert_eq!(m.metadata.id, 0x1234);
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NotImp,
                "opcode {opcode}"
            );
            assert_eq!(m.metadata.op_code, OpCode::from_u8(opcode as u8));
        }
        // QDCOUNT 0 and 2: FORMERR.
        let zero = raw_request(7, 0, [0, 0, 0, 0], b"");
        let two = raw_request(8, 0, [2, 0, 0, 0], &[WWW_A, WWW_A].concat());
        for (req, id) in [(zero, 7), (two, 8)] {
            let m = Message::from_vec(&raw_udp(server, &req).unwrap()).unwrap();
            assert_eq!(m.metadata.id, id);
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        }
        // Truncated question: FORMERR. Header says one question, bytes stop early.
        let cut = raw_request(9, 0, [1, 0, 0, 0], &WWW_A[..7]);
        let m = Message::from_vec(&raw_udp(server, &cut).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // A compression loop: the name points at itself.
        let looped = raw_request(10, 0, [1, 0, 0, 0], b"\xC0\x0C\x00\x01\x00\x01");
        let m = Message::from_vec(&raw_udp(server, &looped).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Too short for a header, and responses: dropped.
        assert!(raw_udp(server, b"\x00\x01\x02").is_none());
        let response = raw_request(11, 0x8000, [1, 0, 0, 0], WWW_A);
        assert!(raw_udp(server, &response).is_none());
        // And the server still answers.
        let ok = plain_udp(shim, "www.global.example.com.", RecordType::A);
        assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
    });
}

#[test]
fn zone_transfers_are_refused_and_other_classes_too() {
    with_shim(|shim| {
        let axfr = plain_tcp(shim, "global.example.com.", RecordType::AXFR);
        assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
        let mut ch = WWW_A.to_vec();
        let n = ch.len();
        ch[n - 1] = 3; // class CH
        let req = raw_request(5, 0, [1, 0, 0, 0], &ch);
        let m = Message::from_vec(&raw_udp(shim.udp_addrs()[0], &req).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    });
}

#[test]
fn edns_opt_is_echoed_and_its_version_checked() {
    with_shim(|shim| {
        let plain = plain_udp(shim, "www.global.example.com.", RecordType::A);
        assert!(plain.edns.is_none(), "no OPT without one in the query");
        let ask = Ask {
            payload: Some(4096),
            ..Ask::default()
        };
        let m = udp(shim, "www.global.example.com.", RecordType::A, &ask);
        let edns = m.edns.as_ref().expect("OPT echoed");
        assert_eq!(edns.version(), 0);
        assert_eq!(edns.max_payload(), 1232, "we advertise our own limit");
        let nx = udp(shim, "nope.global.example.com.", RecordType::A, &ask);
        assert!(nx.edns.is_some(), "negative answers carry OPT too");

        // EDNS version 1: BADVERS (extended rcode 16).
        let mut q = message("www.global.example.com.", RecordType::A, &ask);
        q.edns.as_mut().unwrap().set_version(1);
        let reply = raw_udp(shim.udp_addrs()[0], &q.to_vec().unwrap()).unwrap();
        let m = Message::from_vec(&reply).unwrap();
        // 16 is both BADVERS and BADSIG; hickory names it the latter.
        assert_eq!(u16::from(m.metadata.response_code), 16);
        assert!(m.answers.is_empty());
    });
}

#[test]
fn udp_answers_that_do_not_fit_are_truncated_and_tcp_gives_them_in_full() {
    with_shim(|shim| {
        // No EDNS: 512 bytes. Forty A records need ~700.
        let small = plain_udp(shim, "big.global.example.com.", RecordType::A);
        assert!(small.metadata.truncation, "TC set");
        assert!(small.answers.is_empty(), "no partial RRset");
        assert_eq!(small.metadata.response_code, ResponseCode::NoError);
        // The client's payload size is honoured: 1232 is enough.
        let ask = Ask {
            payload: Some(1232),
            ..Ask::default()
        };
        let fits = udp(shim, "big.global.example.com.", RecordType::A, &ask);
        assert!(!fits.metadata.truncation);
        assert_eq!(addresses(&fits).len(), 40);
        // A payload below 512 counts as 512 (RFC 6891 §6.2.5): still truncated, OPT kept.
        let tiny = Ask {
            payload: Some(256),
            ..Ask::default()
        };
        let t = udp(shim, "big.global.example.com.", RecordType::A, &tiny);
        assert!(t.metadata.truncation);
        assert!(t.edns.is_some());
        // TCP has no such limit.
        let full = plain_tcp(shim, "big.global.example.com.", RecordType::A);
        assert!(!full.metadata.truncation);
        assert_eq!(addresses(&full).len(), 40);
    });
}

#[test]
fn any_is_answered_with_a_single_rrset() {
    with_shim(|shim| {
        let m = plain_udp(shim, "dual.global.example.com.", RecordType::ANY);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let types: std::collections::BTreeSet<RecordType> =
            m.answers.iter().map(|r| r.record_type()).collect();
        assert_eq!(types.len(), 1, "one RRset only (RFC 8482): {types:?}");
        let apex = plain_udp(shim, "global.example.com.", RecordType::ANY);
        assert_eq!(apex.answers.len(), 1);
        assert_eq!(apex.answers[0].record_type(), RecordType::SOA);
    });
}

#[test]
fn equal_weights_rotate_which_target_leads() {
    with_shim(|shim| {
        let mut leads: HashMap<IpAddr, usize> = HashMap::new();
        for _ in 0..30 {
            let m = plain_udp(shim, "rr.global.example.com.", RecordType::A);
            let a = addresses(&m);
            assert_eq!(a.len(), 3, "all targets listed");
            *leads.entry(a[0]).or_default() += 1;
        }
        // One UDP thread cycles through the three rotations in order: 10 each.
        assert_eq!(leads.len(), 3, "{leads:?}");
        assert!(leads.values().all(|n| *n == 10), "{leads:?}");
    });
}

#[test]
fn weights_decide_how_often_a_target_leads() {
    with_shim(|shim| {
        let mut leads: HashMap<IpAddr, usize> = HashMap::new();
        for _ in 0..40 {
            let m = plain_udp(shim, "weighted.global.example.com.", RecordType::A);
            *leads.entry(addresses(&m)[0]).or_default() += 1;
        }
        let heavy = leads[&"192.0.2.31".parse::<IpAddr>().unwrap()];
        let light = leads[&"192.0.2.32".parse::<IpAddr>().unwrap()];
        // Weights 3:1 over whole wheels of 4: exactly 30 and 10.
        assert_eq!((heavy, light), (30, 10));
    });
}

#[test]
fn geo_selection_uses_the_client_subnet_option() {
    with_shim(|shim| {
        let eu = Ask {
            ecs: Some(("10.1.2.0".parse().unwrap(), 24)),
            ..Ask::default()
        };
        for _ in 0..5 {
            let m = udp(shim, "geo.global.example.com.", RecordType::A, &eu);
            assert_eq!(addresses(&m), vec!["192.0.2.41".parse::<IpAddr>().unwrap()]);
            // The ECS option is echoed with a scope: the answer depends on the subnet.
            let edns = m.edns.as_ref().unwrap();
            match edns.option(EdnsCode::Subnet) {
                Some(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(s)) => {
                    assert_eq!(s.source_prefix(), 24);
                    assert_eq!(s.scope_prefix(), 24);
                }
                other => panic!("no ECS echoed: {other:?}"),
            }
        }
        // A subnet in no configured region falls back to all targets (max 1 answer).
        let nowhere = Ask {
            ecs: Some(("203.0.113.0".parse().unwrap(), 24)),
            ..Ask::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..9 {
            let m = udp(shim, "geo.global.example.com.", RecordType::A, &nowhere);
            seen.extend(addresses(&m));
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
    });
}

#[test]
fn geo_selection_falls_back_to_the_source_address() {
    with_shim(|shim| {
        // 127.0.0.0/8 maps to us-east in the test config.
        for _ in 0..5 {
            let m = plain_udp(shim, "geo.global.example.com.", RecordType::A);
            assert_eq!(addresses(&m), vec!["192.0.2.42".parse::<IpAddr>().unwrap()]);
        }
    });
}

#[test]
fn rate_limiting_drops_excess_responses_when_turned_on() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let mut dns = dns_config(dir.path());
    dns.rate_limit = Some(lifeline_dns::RateLimitConfig {
        responses_per_second: 5,
        ipv4_prefix_len: 24,
        ipv6_prefix_len: 56,
    });
    let (shim, _dir) = rt.block_on(start_with(dns, Some(snapshot(1))));
    let query = message("www.global.example.com.", RecordType::A, &Ask::default())
        .to_vec()
        .unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let sent = std::time::Instant::now();
    for _ in 0..40 {
        sock.send_to(&query, shim.udp_addrs()[0]).unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1500];
    let mut last = sent;
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        last = std::time::Instant::now();
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.truncation {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    // A burst of 5 passes, plus what the bucket refills (5 a second) while the server
    // works through the rest; of those, half slip out truncated and half are dropped.
    let refilled = (last.duration_since(sent).as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=6 + refilled).contains(&full),
        "full answers: {full}, with {refilled} refilled"
    );
    assert!(truncated >= 10, "truncated (slipped) answers: {truncated}");
    assert!(full + truncated < 40, "some were dropped");
    // TCP is never limited.
    let m = plain_tcp(&shim, "www.global.example.com.", RecordType::A);
    assert_eq!(addresses(&m).len(), 1);
    shim.shutdown();
}

#[test]
fn rate_limiting_is_off_by_default() {
    with_shim(|shim| {
        let query = message("www.global.example.com.", RecordType::A, &Ask::default())
            .to_vec()
            .unwrap();
        for _ in 0..50 {
            let reply = raw_udp(shim.udp_addrs()[0], &query).expect("every query answered");
            assert!(!Message::from_vec(&reply).unwrap().metadata.truncation);
        }
    });
}

#[test]
fn hickory_resolver_resolves_over_udp_and_tcp() {
    use hickory_resolver::{
        Resolver,
        config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
        net::runtime::TokioRuntimeProvider,
    };
    let rt = rt();
    let (shim, _dir) = rt.block_on(start());
    for (port, mut conn) in [
        (shim.udp_addrs()[0].port(), ConnectionConfig::udp()),
        (shim.tcp_addrs()[0].port(), ConnectionConfig::tcp()),
    ] {
        conn.port = port;
        let ns = NameServerConfig::new("127.0.0.1".parse().unwrap(), true, vec![conn]);
        let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .unwrap();
        let ips: Vec<IpAddr> = rt
            .block_on(resolver.lookup_ip("dual.global.example.com."))
            .unwrap()
            .iter()
            .collect();
        assert!(ips.contains(&"192.0.2.10".parse().unwrap()), "{ips:?}");
        assert!(ips.contains(&"2001:db8::10".parse().unwrap()), "{ips:?}");
        let nx = rt.block_on(resolver.lookup_ip("nope.global.example.com."));
        assert!(nx.is_err());
    }
    shim.shutdown();
}

#[test]
fn dig_agrees_when_installed() {
    let Ok(out) = std::process::Command::new("dig").arg("-v").output() else {
        eprintln!("dig not installed; skipped");
        return;
    };
    let _ = out;
    with_shim(|shim| {
        let addr = shim.udp_addrs()[0];
        let dig = |args: &[&str]| {
            let out = std::process::Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &addr.port().to_string(),
                    "+norec",
                    "+time=2",
                    "+tries=1",
                ])
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let a = dig(&["www.global.example.com", "A"]);
        assert!(a.contains("status: NOERROR"), "{a}");
        assert!(a.contains("flags: qr aa"), "{a}");
        assert!(a.contains("192.0.2.1"), "{a}");
        let nx = dig(&["nope.global.example.com", "A"]);
        assert!(nx.contains("status: NXDOMAIN"), "{nx}");
        assert!(nx.contains("SOA"), "{nx}");
        let big = dig(&["+ignore", "+noedns", "big.global.example.com", "A"]);
        assert!(big.contains(" tc"), "{big}");
        let tcp_port = shim.tcp_addrs()[0].port().to_string();
        let full = std::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &tcp_port,
                "+tcp",
                "+norec",
                "+time=2",
                "+tries=1",
                "big.global.example.com",
                "A",
            ])
            .output()
            .unwrap();
        let full = String::from_utf8_lossy(&full.stdout);
        assert!(full.contains("ANSWER: 40"), "{full}");
    });
}
