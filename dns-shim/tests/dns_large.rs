//! Names backed by thousands of addresses, over real sockets and checked with `dig`:
//! replies are bounded by `maxAnswers`, rotate through every address, never exceed the
//! client's UDP size without TC, and a record set no message can frame is refused
//! while the name keeps its last good answer.

mod common;

use std::{collections::BTreeSet, net::Ipv4Addr};

use common::*;
use lifeline_dns::{AddressSet, NameRecords, ShimHandle, Update, ZoneSnapshot};
use lifeline_testkit::dns::Dig;

fn many(n: u32) -> Vec<lifeline_dns::Target> {
    (0..n)
        .map(|i| {
            target(
                &Ipv4Addr::from(0x0a00_0000 + i).to_string(),
                "c1",
                "eu-west",
                1,
            )
        })
        .collect()
}

fn set(n: u32, max_answers: Option<u16>) -> NameRecords {
    NameRecords {
        address: Some(AddressSet {
            ttl: 30,
            targets: many(n),
            max_answers,
            geo: false,
            standby: Vec::new(),
        }),
        ..NameRecords::default()
    }
}

fn zone(revision: u64, names: Vec<(&str, NameRecords)>) -> ZoneSnapshot {
    let mut s = snapshot(revision);
    for (name, recs) in names {
        s.names.insert(name.to_owned(), recs);
    }
    s
}

fn dig(shim: &ShimHandle, name: &str, transport: &[&str]) -> Option<Dig> {
    let server = if transport.contains(&"+tcp") {
        shim.tcp_addrs()[0]
    } else {
        shim.udp_addrs()[0]
    };
    Dig::query(server, &format!("{name}.{ZONE}"), transport)
}

fn have_dig() -> bool {
    Dig::available()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_addresses_are_answered_max_answers_at_a_time_over_every_transport() {
    if !have_dig() {
        eprintln!("dig not installed; skipped");
        return;
    }
    let (shim, _dir) = start_serving(Some(zone(1, vec![("big", set(10_000, Some(8)))]))).await;
    let shim2 = shim.clone();
    tokio::task::spawn_blocking(move || {
        let shim = shim2;
        for transport in [
            &["+bufsize=1232"][..],
            &["+bufsize=512"],
            &["+noedns"],
            &["+tcp"],
        ] {
            let mut seen = BTreeSet::new();
            for _ in 0..20 {
                let d = dig(&shim, "big", transport).expect("dig runs");
                assert_eq!(d.status(), "NOERROR", "{transport:?}: {}", d.text);
                assert!(!d.truncated(), "{transport:?}: {}", d.text);
                let answers = d.answers();
                assert_eq!(answers.len(), 8, "{transport:?}: {}", d.text);
                assert!(d.size() <= 512, "{transport:?}: {} bytes", d.size());
                seen.extend(answers);
            }
            // Replies rotate: 20 replies of 8 are not all the same 8 addresses.
            assert!(
                seen.len() > 8,
                "{transport:?}: only {} distinct",
                seen.len()
            );
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_the_client_allows_is_truncated_and_whole_over_tcp() {
    if !have_dig() {
        eprintln!("dig not installed; skipped");
        return;
    }
    // 2,000 addresses and no maxAnswers: 32 KB, framed only over TCP.
    let (shim, _dir) = start_serving(Some(zone(
        1,
        vec![("wide", set(2_000, None)), ("mid", set(50, None))],
    )))
    .await;
    tokio::task::spawn_blocking(move || {
        for (transport, limit) in [
            ("+bufsize=1232", 1232),
            ("+bufsize=512", 512),
            ("+noedns", 512),
        ] {
            let d = dig(&shim, "wide", &[transport]).expect("dig runs");
            assert!(d.truncated(), "{transport}: {}", d.text);
            assert!(
                d.answers().is_empty(),
                "{transport}: a partial RRset was sent"
            );
            assert!(d.size() <= limit, "{transport}: {} bytes", d.size());
        }
        // 50 A records (812 bytes) fit 1232 but not 512.
        let fits = dig(&shim, "mid", &["+bufsize=1232"]).unwrap();
        assert!(
            !fits.truncated() && fits.answers().len() == 50,
            "{}",
            fits.text
        );
        let small = dig(&shim, "mid", &["+bufsize=512"]).unwrap();
        assert!(small.truncated() && small.size() <= 512, "{}", small.text);

        let full = dig(&shim, "wide", &["+tcp"]).expect("dig runs");
        assert!(!full.truncated(), "{}", full.text);
        assert_eq!(full.answers().len(), 2_000, "{}", full.status());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_set_no_message_can_frame_is_refused_and_the_last_good_answer_kept() {
    let (shim, _dir) = start_serving(Some(zone(1, vec![("huge", set(3, None))]))).await;
    // 10,000 addresses with no maxAnswers: 160 KB, more than any DNS message holds.
    let applied = shim
        .apply(Update::Replace(zone(2, vec![("huge", set(10_000, None))])))
        .unwrap();
    let (_, problem) = applied
        .rejected
        .iter()
        .find(|(name, _)| name == "huge")
        .expect("the name is reported");
    assert!(
        problem.contains("10000 A records take 160000 bytes")
            && problem.contains("previous records are still served"),
        "{problem}"
    );
    let state = shim.state();
    assert!(
        state.zones.iter().any(|z| z.rejected == 1),
        "the zone's state counts the refused name: {state:?}"
    );

    for reply in [
        plain_udp(
            &shim,
            "huge.global.example.com.",
            hickory_proto::rr::RecordType::A,
        ),
        plain_tcp(
            &shim,
            "huge.global.example.com.",
            hickory_proto::rr::RecordType::A,
        ),
    ] {
        let mut got = addresses(&reply);
        got.sort();
        let want: Vec<std::net::IpAddr> = many(3).iter().map(|t| t.address).collect();
        assert_eq!(got, want, "the last good answer is served");
    }

    // A name that never had a good answer is refused outright, never cut.
    let applied = shim
        .apply(Update::Replace(zone(
            3,
            vec![("huge", set(3, None)), ("fresh", set(10_000, None))],
        )))
        .unwrap();
    assert!(
        applied
            .rejected
            .iter()
            .any(|(n, p)| n == "fresh" && p.contains("A records take"))
    );
    let reply = plain_tcp(
        &shim,
        "fresh.global.example.com.",
        hickory_proto::rr::RecordType::A,
    );
    assert_eq!(
        reply.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
}
