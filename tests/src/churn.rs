//! A zone history known in advance, for crash tests and benchmarks of the DNS server's
//! persistence: revision 1 holds `names` names `n0…`, one address each; every later
//! revision `r` moves two names (`n{r % names}` and `n{(r + 1) % names}`) to addresses
//! derived from `r` and sets the TXT name `rev` to `r`. A server that stopped anywhere
//! must hold exactly [`expected`] of the revision it reports: a patch half applied
//! shows as a name out of step with `rev`.

use std::{collections::BTreeMap, net::Ipv4Addr, time::SystemTime};

use lifeline_model::{AddressSet, NameRecords, Target, TxtSet, ZonePatch, ZoneSnapshot};
use lifeline_testkit::fixtures::ZONE;

fn address(a: Ipv4Addr) -> NameRecords {
    NameRecords {
        address: Some(AddressSet {
            ttl: 30,
            targets: vec![Target {
                address: a.into(),
                cluster: "c1".into(),
                region: "r1".into(),
                weight: 1,
                share: None,
            }],
            max_answers: None,
            geo: false,
            standby: Vec::new(),
        }),
        ..NameRecords::default()
    }
}

fn counter(r: u64) -> NameRecords {
    NameRecords {
        txt: Some(TxtSet {
            ttl: 30,
            records: vec![r.to_string()],
        }),
        ..NameRecords::default()
    }
}

/// The address name `i` gets at revision `r` (1 for the first snapshot).
fn at(i: usize, r: u64) -> Ipv4Addr {
    let v = (r as u32).wrapping_mul(7919) ^ (i as u32);
    Ipv4Addr::from(0x0A00_0000 | (v & 0x00FF_FFFF))
}

/// Revision 1.
pub fn first(names: usize) -> ZoneSnapshot {
    let mut s = ZoneSnapshot::empty(ZONE, 1, SystemTime::now());
    for i in 0..names {
        s.names.insert(format!("n{i}"), address(at(i, 1)));
    }
    s.names.insert("rev".into(), counter(1));
    s
}

/// The names revision `r` moves.
fn moved(names: usize, r: u64) -> [usize; 2] {
    let i = (r as usize) % names;
    [i, (i + 1) % names]
}

/// The patch making revision `r` (2 or more).
pub fn patch(names: usize, r: u64) -> ZonePatch {
    let mut upsert = BTreeMap::new();
    for i in moved(names, r) {
        upsert.insert(format!("n{i}"), address(at(i, r)));
    }
    upsert.insert("rev".into(), counter(r));
    ZonePatch {
        zone: ZONE.into(),
        revision: r,
        decided_at: SystemTime::now(),
        upsert,
        delete: Vec::new(),
    }
}

/// Every name's records at revision `r`.
pub fn expected(names: usize, r: u64) -> BTreeMap<String, NameRecords> {
    let mut last = vec![1u64; names];
    for rev in 2..=r {
        for i in moved(names, rev) {
            last[i] = rev;
        }
    }
    let mut out: BTreeMap<String, NameRecords> = (0..names)
        .map(|i| (format!("n{i}"), address(at(i, last[i]))))
        .collect();
    out.insert("rev".into(), counter(r));
    out
}
