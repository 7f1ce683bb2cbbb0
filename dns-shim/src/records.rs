//! What a name's records must be to be served, and how each is written on the wire:
//! the rules and encoders that query answers (`zone`) and zone transfers (`xfr`) share,
//! so both say the same bytes about the same records.

use lifeline_model::{NameRecords, ZoneSnapshot};

use crate::{config::ZoneConfig, wire};

/// Most bytes the sections after the question may take: a message is at most 65,535
/// bytes (the TCP length prefix), less the header, the longest question, an alias's
/// CNAME record and the OPT record.
pub const MAX_TAIL: usize = 65_535 - wire::HEADER_LEN - (wire::MAX_NAME + 4) - 512;

/// SRV rdata: priority, weight, port, then the target uncompressed (RFC 2782).
pub(crate) fn srv_rdata(r: &lifeline_model::Srv) -> Vec<u8> {
    let mut rdata = Vec::new();
    for v in [r.priority, r.weight, r.port] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    rdata.extend(wire_or_root(&r.target));
    rdata
}

/// TXT rdata of one record: the text in character-strings of at most 255 bytes.
pub(crate) fn txt_rdata(text: &str) -> Vec<u8> {
    let mut rdata = Vec::new();
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        rdata.push(0);
    }
    for chunk in bytes.chunks(255) {
        rdata.push(chunk.len() as u8);
        rdata.extend_from_slice(chunk);
    }
    rdata
}

pub(crate) fn wire_or_root(name: &str) -> Vec<u8> {
    wire::normalize(name, "")
        .and_then(|n| wire::encode(&n))
        .unwrap_or_else(|_| vec![0])
}

/// Problems that make a name's records unservable as a whole.
pub(crate) fn check_records(recs: &NameRecords, apex: bool) -> Option<String> {
    if recs.cname.is_some() {
        if apex {
            return Some("CNAME at the zone apex".into());
        }
        if recs.address.is_some() || recs.srv.is_some() || recs.txt.is_some() {
            return Some("CNAME together with other data".into());
        }
    }
    if let Some(c) = &recs.cname {
        wire::normalize(&c.target, "")
            .and_then(|n| wire::encode(&n))
            .err()?;
        return Some(format!("bad CNAME target {:?}", c.target));
    }
    if let Some(s) = &recs.srv
        && let Some(r) = s
            .records
            .iter()
            .find(|r| wire::normalize(&r.target, "").is_err())
    {
        return Some(format!("bad SRV target {:?}", r.target));
    }
    let (bytes, what) = largest_rrset(recs);
    if bytes > MAX_TAIL {
        return Some(format!(
            "{what} take {bytes} bytes in one reply; a DNS message has room for {MAX_TAIL} (lower maxAnswers or split the name)"
        ));
    }
    None
}

/// Gives each name of `next` whose records cannot be served, but whose records in
/// `current` can, its `current` records back: one bad update to a name must not take
/// away its last good answer. Only the names `only` lists are looked at when given (a
/// patch's names: the others did not change). Returns those names with what was wrong.
pub fn keep_last_good(
    zone: &ZoneConfig,
    next: &mut ZoneSnapshot,
    current: &ZoneSnapshot,
    only: Option<&[String]>,
) -> Vec<(String, String)> {
    let origin = wire::normalize(&zone.origin, "").unwrap_or_default();
    let apex = wire::encode(&origin).unwrap_or_else(|_| vec![0]);
    let mut kept = Vec::new();
    let mut keep = |name: &String, recs: &mut NameRecords| {
        let is_apex = wire::owner_to_wire(name, &apex).is_ok_and(|w| *w == *apex);
        let Some(problem) = check_records(recs, is_apex) else {
            return;
        };
        if let Some(old) = current.names.get(name)
            && check_records(old, is_apex).is_none()
        {
            *recs = old.clone();
            kept.push((
                name.clone(),
                format!("{problem}; the previous records are still served"),
            ));
        }
    };
    match only {
        Some(keys) => {
            for name in keys {
                if let Some(recs) = next.names.get_mut(name) {
                    keep(name, recs);
                }
            }
        }
        None => next.names.iter_mut().for_each(|(n, r)| keep(n, r)),
    }
    kept
}

/// Bytes of the largest answer section the records can produce, and what it holds.
/// Owners are 2-byte pointers and each record has 10 bytes of type, class, TTL and
/// length before its data.
fn largest_rrset(recs: &NameRecords) -> (usize, String) {
    const FIXED: usize = 2 + 10;
    let mut worst = (0, String::new());
    let mut consider = |bytes: usize, what: String| {
        if bytes > worst.0 {
            worst = (bytes, what);
        }
    };
    if let Some(set) = &recs.address {
        let max = set.max_answers.map_or(usize::MAX, usize::from).max(1);
        // A tier in reserve answers when a replica drains the answer by itself: it
        // must fit as well as the answer does.
        for tier in std::iter::once(&set.targets).chain(&set.standby) {
            for (v4, rtype, data) in [(true, "A", 4), (false, "AAAA", 16)] {
                let family = || tier.iter().filter(|t| t.address.is_ipv4() == v4);
                let weighted = family().filter(|t| t.weight > 0).count();
                let pool = if weighted == 0 {
                    family().count()
                } else {
                    weighted
                };
                let take = pool.min(max);
                consider(take * (FIXED + data), format!("{take} {rtype} records"));
            }
        }
    }
    if let Some(srv) = &recs.srv {
        let bytes = srv
            .records
            .iter()
            .map(|r| FIXED + 6 + wire_or_root(&r.target).len())
            .sum();
        consider(bytes, format!("{} SRV records", srv.records.len()));
    }
    if let Some(txt) = &recs.txt {
        let bytes = txt
            .records
            .iter()
            .map(|r| FIXED + (r.len() + r.len().div_ceil(255)).max(1))
            .sum();
        consider(bytes, format!("{} TXT records", txt.records.len()));
    }
    worst
}
