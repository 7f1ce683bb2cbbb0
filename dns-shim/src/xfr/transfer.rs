//! Zone transfer: secondary servers copy a zone from us over TCP (AXFR, RFC 5936), or
//! ask whether their copy is current (IXFR, RFC 1995). Lifeline is then a hidden
//! primary: BIND, NSD, Knot or a provider's secondary service answer the world, and
//! [`crate::xfr::notify`] tells them of each new serial.
//!
//! # What a secondary serves
//!
//! The zone as answers are made from it, break-glass overrides applied: every target
//! the controller lists for a name (the healthy targets of the active tier) becomes an
//! A or AAAA record. Per-query choices stay here: a secondary answers with all of them,
//! without weights, without a `geo` choice and without a `maxAnswers` subset. A policy
//! that must give fewer addresses lists fewer targets.
//!
//! # IXFR
//!
//! A secondary that sends its serial gets the current SOA alone when it is current.
//! When the changes since its serial are still kept ([`HISTORY_BYTES`] of them, also
//! rebuilt from the journal at start), it gets them condensed into one difference:
//! the records of every name touched since, as they were at its serial, deleted, and
//! as they are now, added (RFC 1995 §4), leaving out records that did not change.
//! Otherwise (history gone, a serial we never had, break-glass overrides in force, or
//! a difference larger than the zone) it gets the whole zone in AXFR form, which
//! RFC 1995 §4 allows.
//!
//! # Encoding
//!
//! Records are written with the encoders query answers use, so both say the same bytes.
//! Every message carries the question; owners inside the zone are written as their own
//! labels followed by a pointer to the question's name. A message holds at most
//! 65,535 bytes, what TCP framing can carry. Requests are read with hickory-proto
//! (the IXFR serial sits in the authority section).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_proto::{
    op::Message,
    rr::{RData, SerialNumber},
};

use crate::{
    engine::Engine,
    records::{check_records, srv_rdata, txt_rdata, wire_or_root},
    slots::{Slot, prefix_of},
    wire::{self, Parsed, Question},
    zone::{CompileOptions, ZoneTable},
};
use lifeline_model::{NameRecords, ZoneSnapshot};

/// Largest message of a transfer stream: what a TCP length prefix can say.
const MESSAGE_MAX: usize = 65_535;

/// What a transfer request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// The whole zone.
    Axfr,
    /// What changed since this serial.
    Ixfr(u32),
}

/// What a transfer request gets.
#[derive(Debug)]
pub enum Reply {
    /// One message: a refusal or an error.
    Refused(Vec<u8>),
    /// A transfer to send, message by message ([`Transfer::run`]).
    Stream(Transfer),
}

/// An allowed transfer: the table it copies, what it sends, and its places under the
/// zone's and the client prefix's limits (given back when it is dropped).
#[derive(Debug)]
pub struct Transfer {
    zone: Arc<ZoneTable>,
    served: Arc<ZoneSnapshot>,
    head: Vec<u8>,
    asked: Asked,
    engine: Arc<Engine>,
    _slots: (Slot<Box<[u8]>>, Slot<u128>),
}

impl Engine {
    /// What a zone-transfer request received over TCP gets; `None` when `raw` is not a
    /// transfer request (it is then answered as a query). Nothing is built here: an
    /// allowed transfer is built by [`Transfer::run`], on a thread of its own. Never
    /// panics on input.
    pub fn transfer(self: &Arc<Self>, raw: &[u8], peer: SocketAddr) -> Option<Reply> {
        let fast = wire::parse_fast(raw);
        let full;
        let q = match &fast {
            Some(q) => q,
            None => {
                full = wire::parse_full(raw);
                match &full {
                    Parsed::Query(q) => q,
                    _ => return None,
                }
            }
        };
        if q.qtype != wire::TYPE_AXFR && q.qtype != wire::TYPE_IXFR {
            return None;
        }
        let compiled = self.live.load();
        match self.allow(&compiled.zones, q, raw, peer.ip()) {
            Ok(transfer) => Some(Reply::Stream(transfer)),
            Err(rcode) => {
                self.counters.transfers_refused.inc();
                let mut out = Vec::new();
                wire::put_header(&mut out, q.id, 0, false, false, rcode, 1, 0, 0, 0);
                out.extend_from_slice(&q.echo);
                self.counters
                    .record(q.qtype, u16::from(rcode), out.len(), compiled.stale);
                Some(Reply::Refused(out))
            }
        }
    }

    /// The transfer a request may have, or the rcode of its refusal.
    fn allow(
        self: &Arc<Self>,
        zones: &[Arc<ZoneTable>],
        q: &Question<'_>,
        raw: &[u8],
        peer: IpAddr,
    ) -> Result<Transfer, u8> {
        if q.qclass != wire::CLASS_IN {
            return Err(wire::RCODE_REFUSED);
        }
        // Only a zone's apex names a zone; RFC 5936 §2.2.1 answers anything else NOTAUTH.
        let Some(zone) = zones.iter().find(|z| *z.apex == *q.name()) else {
            return Err(RCODE_NOTAUTH);
        };
        let Some(config) = zone
            .config
            .transfer
            .as_ref()
            .filter(|t| t.allow.iter().any(|net| net.contains(&unmapped(peer))))
        else {
            return Err(wire::RCODE_REFUSED);
        };
        let Some(served) = &zone.served else {
            return Err(wire::RCODE_SERVFAIL);
        };
        let asked = match q.qtype {
            wire::TYPE_IXFR => Asked::Ixfr(ixfr_serial(raw).ok_or(wire::RCODE_FORMERR)?),
            _ => Asked::Axfr,
        };
        // Over either limit: refused now, tried again by the secondary later.
        let running = &self.transfers;
        let slots = running
            .zones
            .take(zone.apex.clone(), config.max_transfers)
            .zip(
                running
                    .prefixes
                    .take(prefix_of(peer), config.max_transfers_per_prefix),
            );
        let Some(slots) = slots else {
            self.counters.transfers_busy.inc();
            return Err(wire::RCODE_REFUSED);
        };
        let mut head = Vec::with_capacity(wire::HEADER_LEN + q.echo.len());
        wire::put_header(
            &mut head,
            q.id,
            0,
            true,
            false,
            wire::RCODE_NOERROR,
            1,
            0,
            0,
            0,
        );
        head.extend_from_slice(&q.echo);
        Ok(Transfer {
            zone: zone.clone(),
            served: served.clone(),
            head,
            asked,
            engine: self.clone(),
            _slots: slots,
        })
    }
}

impl Transfer {
    /// Builds the transfer's messages in order and hands each to `send` as soon as it
    /// is full; stops early when `send` returns false (the client went away). Holds at
    /// most one message of its own at a time.
    pub fn run(self, send: &mut dyn FnMut(Vec<u8>) -> bool) {
        let Transfer {
            zone,
            served,
            head,
            asked,
            engine,
            _slots,
        } = self;
        let counters = &engine.counters;
        let mut out = Stream::new(head, send);
        let soa = soa_record(&zone);
        let qtype = match asked {
            Asked::Axfr => wire::TYPE_AXFR,
            Asked::Ixfr(_) => wire::TYPE_IXFR,
        };
        match asked {
            Asked::Ixfr(have) if SerialNumber::new(have) >= SerialNumber::new(zone.serial) => {
                // Current (or, oddly, ahead): the SOA alone says so (RFC 1995 §2).
                out.push(&soa);
                counters.transfers_current.inc();
            }
            Asked::Ixfr(have) if let Some((deleted, added)) = difference(&zone, &served, have) => {
                let mut old = soa.clone();
                let at = old.len() - 20;
                old[at..at + 4].copy_from_slice(&have.to_be_bytes());
                out.push(&soa);
                out.push(&old);
                deleted.iter().for_each(|rr| out.push(rr));
                out.push(&soa);
                added.iter().for_each(|rr| out.push(rr));
                out.push(&soa);
                counters.transfers_incremental.inc();
            }
            _ => {
                out.push(&soa);
                whole_zone(&zone, &served, &mut out);
                out.push(&soa);
                counters.transfers_full.inc();
            }
        }
        let size = out.finish();
        counters.record(
            qtype,
            u16::from(wire::RCODE_NOERROR),
            size,
            zone.ttl_cap.is_some(),
        );
    }
}

/// NOTAUTH (RFC 2136): this server is not authoritative for the zone asked for.
const RCODE_NOTAUTH: u8 = 9;

/// An IPv4 peer seen through an IPv6 socket, as its IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The serial an IXFR request says the secondary holds: the SOA in its authority
/// section (RFC 1995 §3).
fn ixfr_serial(raw: &[u8]) -> Option<u32> {
    let message = Message::from_vec(raw).ok()?;
    message.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// The TTLs a transfer carries: those queries get, the stale cap included, so a
/// secondary never serves longer TTLs than its primary.
fn served_as(zone: &ZoneTable) -> CompileOptions {
    CompileOptions {
        ttl_cap: zone.ttl_cap,
        serial: None,
    }
}

/// Owner bytes of a record of the zone's apex: a pointer to the question's name.
const APEX: [u8; 2] = [0xC0, wire::HEADER_LEN as u8];

fn soa_record(zone: &ZoneTable) -> Vec<u8> {
    let mut rr = Vec::new();
    let ttl = served_as(zone).ttl(zone.config.ttl);
    wire::put_rr(&mut rr, &APEX, wire::TYPE_SOA, ttl, &zone.soa_rdata);
    rr
}

/// Records as a transfer writes them, one after the other.
type Records = Vec<Vec<u8>>;

/// The records to delete and to add to take a secondary at serial `have` to the
/// table's revision, from the kept changes; `None` when they do not reach back to
/// `have` or the difference is larger than the zone.
fn difference(zone: &ZoneTable, served: &ZoneSnapshot, have: u32) -> Option<(Records, Records)> {
    let history = zone.history.as_ref()?;
    let last = history.last()?;
    if last.to != zone.serial {
        return None;
    }
    let start = history.iter().rposition(|c| c.from == have)?;
    // The kept changes must follow each other from there.
    if history[start..].windows(2).any(|w| w[0].to != w[1].from) {
        return None;
    }
    let mut first_seen: std::collections::BTreeMap<&str, &Option<NameRecords>> =
        std::collections::BTreeMap::new();
    for change in &history[start..] {
        for (key, before) in &change.before {
            first_seen.entry(key.as_str()).or_insert(before);
        }
    }
    if first_seen.len() > served.names.len() {
        return None;
    }
    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    for (key, before) in first_seen {
        let old = servable_records(zone, key, before.as_ref());
        let new = servable_records(zone, key, served.names.get(key));
        deleted.extend(old.iter().filter(|rr| !new.contains(rr)).cloned());
        added.extend(new.iter().filter(|rr| !old.contains(rr)).cloned());
    }
    // Never more records than the whole zone: counted only when it could be (a zone
    // has at least one record per name).
    let records = deleted.len() + added.len();
    if records >= served.names.len() && records > zone_records(zone, served) {
        return None;
    }
    Some((deleted, added))
}

/// Records of the whole zone as an AXFR sends them, SOA and apex NS included.
fn zone_records(zone: &ZoneTable, served: &ZoneSnapshot) -> usize {
    let mut n = 2 + zone.config.nameservers.len();
    for (key, recs) in &served.names {
        if compressed_owner(zone, key, recs).is_none() {
            continue;
        }
        if recs.cname.is_some() {
            n += 1;
            continue;
        }
        if let Some(set) = &recs.address {
            let mut addresses: Vec<IpAddr> = set.targets.iter().map(|t| t.address).collect();
            addresses.sort();
            addresses.dedup();
            n += addresses.len();
        }
        n += recs.srv.as_ref().map_or(0, |s| s.records.len());
        n += recs.txt.as_ref().map_or(0, |t| t.records.len());
    }
    n
}

/// The records of `key` as a transfer sends them; none when the name cannot be served.
fn servable_records(zone: &ZoneTable, key: &str, recs: Option<&NameRecords>) -> Records {
    let Some(recs) = recs else {
        return Vec::new();
    };
    let Some(owner) = compressed_owner(zone, key, recs) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    records_of(&owner, recs, served_as(zone), &mut |rr| {
        out.push(rr.to_vec())
    });
    out
}

/// The owner of `key`'s records in a transfer message (its labels, then a pointer to
/// the question's name), when the name can be served.
fn compressed_owner(zone: &ZoneTable, key: &str, recs: &NameRecords) -> Option<Vec<u8>> {
    let owner = wire::owner_to_wire(key, &zone.apex).ok()?;
    if check_records(recs, *owner == *zone.apex).is_some() {
        return None;
    }
    let mut compressed = owner[..owner.len() - zone.apex.len()].to_vec();
    compressed.extend_from_slice(&APEX);
    Some(compressed)
}

/// Every record of the zone but the SOA: the apex NS set, then each servable name's
/// records. Names are checked as compiling checks them, so a name no query can get is
/// not sent to secondaries either.
fn whole_zone(zone: &ZoneTable, served: &ZoneSnapshot, out: &mut Stream<'_>) {
    let opts = served_as(zone);
    let mut rr = Vec::new();
    for ns in &zone.config.nameservers {
        rr.clear();
        let ttl = opts.ttl(zone.config.ttl);
        wire::put_rr(&mut rr, &APEX, wire::TYPE_NS, ttl, &wire_or_root(ns));
        out.push(&rr);
    }
    let mut seen = std::collections::HashSet::new();
    for (name, recs) in &served.names {
        if out.stopped {
            return;
        }
        let Some(owner) = compressed_owner(zone, name, recs) else {
            continue;
        };
        if !seen.insert(owner.clone()) {
            continue;
        }
        records_of(&owner, recs, opts, &mut |rr| out.push(rr));
    }
}

/// The records of one name, owned by `owner`.
fn records_of(owner: &[u8], recs: &NameRecords, opts: CompileOptions, out: &mut dyn FnMut(&[u8])) {
    let mut rr = Vec::new();
    let mut put = |rtype: u16, ttl: u32, rdata: &[u8]| {
        rr.clear();
        wire::put_rr(&mut rr, owner, rtype, opts.ttl(ttl), rdata);
        out(&rr);
    };
    if let Some(c) = &recs.cname {
        put(wire::TYPE_CNAME, c.ttl, &wire_or_root(&c.target));
        return;
    }
    if let Some(set) = &recs.address {
        let mut sent: Vec<IpAddr> = Vec::with_capacity(set.targets.len());
        for t in &set.targets {
            if sent.contains(&t.address) {
                continue;
            }
            sent.push(t.address);
            match t.address {
                IpAddr::V4(a) => put(wire::TYPE_A, set.ttl, &a.octets()),
                IpAddr::V6(a) => put(wire::TYPE_AAAA, set.ttl, &a.octets()),
            }
        }
    }
    if let Some(srv) = &recs.srv {
        for r in &srv.records {
            put(wire::TYPE_SRV, srv.ttl, &srv_rdata(r));
        }
    }
    if let Some(txt) = &recs.txt {
        for r in &txt.records {
            put(wire::TYPE_TXT, txt.ttl, &txt_rdata(r));
        }
    }
}

/// Transfer messages being filled: each starts with the header and the question, and
/// takes records until the next would not fit; a full one goes to `send` at once.
struct Stream<'s> {
    head: Vec<u8>,
    current: Vec<u8>,
    count: u16,
    send: &'s mut dyn FnMut(Vec<u8>) -> bool,
    /// The receiver is gone: nothing more is built.
    stopped: bool,
    /// Bytes sent so far.
    sent: usize,
}

impl<'s> Stream<'s> {
    fn new(head: Vec<u8>, send: &'s mut dyn FnMut(Vec<u8>) -> bool) -> Self {
        Self {
            current: head.clone(),
            head,
            count: 0,
            send,
            stopped: false,
            sent: 0,
        }
    }

    fn push(&mut self, rr: &[u8]) {
        if self.stopped {
            return;
        }
        if self.count > 0 && (self.current.len() + rr.len() > MESSAGE_MAX || self.count == u16::MAX)
        {
            self.seal();
        }
        self.current.extend_from_slice(rr);
        self.count += 1;
    }

    /// Ends the current message: its answer count written, sent, a fresh one begun.
    fn seal(&mut self) {
        self.current[6..8].copy_from_slice(&self.count.to_be_bytes());
        let next = self.head.clone();
        let message = std::mem::replace(&mut self.current, next);
        self.sent += message.len();
        self.stopped = !(self.send)(message);
        self.count = 0;
    }

    /// Sends what is left; the bytes sent in all.
    fn finish(mut self) -> usize {
        if self.count > 0 && !self.stopped {
            self.seal();
        }
        self.sent
    }
}
