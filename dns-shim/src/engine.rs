//! Answering: one request's bytes in, one response's bytes out (or nothing).
//!
//! [`Engine::respond`] is the whole server minus sockets: the UDP and TCP loops call it,
//! and so do the fuzz tests. It reads the live [`Compiled`] tables through an
//! `ArcSwap`, so answering never waits for a writer, and it never panics on input.

use std::{
    cell::Cell,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use arc_swap::ArcSwap;

use crate::{
    metrics::Counters,
    rrl::{RateLimiter, Verdict},
    wire::{self, Parsed, Question},
    zone::{Compiled, put_negative_soa},
};

/// The transport a request arrived on; only UDP answers are size-limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The answering core shared by all sockets.
#[derive(Debug)]
pub struct Engine {
    pub(crate) live: ArcSwap<Compiled>,
    pub(crate) counters: Counters,
    limiter: Option<RateLimiter>,
    /// Largest UDP response we send whatever the client offers (and the payload size we
    /// advertise); 1232 avoids IP fragmentation on common paths.
    max_udp_payload: u16,
    /// Zone transfers in progress, under their limits.
    pub(crate) transfers: crate::slots::Transfers,
}

thread_local! {
    /// Per-thread position on the answer wheels: rotation without shared writes.
    static SPIN: Cell<usize> = Cell::new(rand::random::<u16>() as usize);
}

fn next_spin() -> usize {
    SPIN.with(|s| {
        let v = s.get().wrapping_add(1);
        s.set(v);
        v
    })
}

impl Engine {
    pub fn new(compiled: Compiled, limiter: Option<RateLimiter>, max_udp_payload: u16) -> Self {
        Self {
            live: ArcSwap::from_pointee(compiled),
            counters: Counters::default(),
            limiter,
            max_udp_payload: max_udp_payload.max(512),
            transfers: Default::default(),
        }
    }

    /// Counters of what was answered.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The tables currently served.
    pub fn compiled(&self) -> Arc<Compiled> {
        self.live.load_full()
    }

    /// Installs new tables; queries in flight finish on the old ones.
    pub fn swap(&self, compiled: Compiled) {
        self.live.store(Arc::new(compiled));
    }

    /// Answers one request into `out`. Returns false when nothing should be sent.
    pub fn respond(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let slip = match (&self.limiter, transport) {
            (Some(l), Transport::Udp) => match l.check(src.ip()) {
                Verdict::Pass => false,
                Verdict::Slip => true,
                Verdict::Drop => {
                    self.counters.rate_limited.inc();
                    return false;
                }
            },
            _ => false,
        };
        let compiled = self.live.load();
        let (qtype, rcode) = match wire::parse_fast(raw) {
            Some(q) => (
                q.qtype,
                self.answer(&compiled, &q, src, transport, slip, out),
            ),
            None => match wire::parse_full(raw) {
                Parsed::Query(q) => (
                    q.qtype,
                    self.answer(&compiled, &q, src, transport, slip, out),
                ),
                Parsed::Error { id, flags, rcode } => {
                    wire::put_header(out, id, flags, false, false, rcode, 0, 0, 0, 0);
                    (0, u16::from(rcode))
                }
                Parsed::Drop => {
                    self.counters.dropped.inc();
                    return false;
                }
            },
        };
        if slip {
            self.counters.rate_limited.inc();
        }
        self.counters
            .record(qtype, rcode, out.len(), compiled.stale);
        true
    }

    /// Answers a parsed question; returns the full rcode.
    fn answer(
        &self,
        c: &Compiled,
        q: &Question<'_>,
        src: SocketAddr,
        transport: Transport,
        force_tc: bool,
        out: &mut Vec<u8>,
    ) -> u16 {
        let flags = (u16::from(q.rd) << 8) | (u16::from(q.cd) << 4);
        let ar = u16::from(q.edns.is_some());
        let reject = |out: &mut Vec<u8>, rcode: u8| {
            wire::put_header(out, q.id, flags, false, false, rcode, 1, 0, 0, ar);
            out.extend_from_slice(&q.echo);
            self.put_opt(out, q, 0, None);
            u16::from(rcode)
        };
        if let Some(e) = q.edns
            && e.version > 0
        {
            // RFC 6891 §6.1.3: BADVERS, telling the client the version we do speak (0).
            wire::put_header(out, q.id, flags, false, false, 0, 1, 0, 0, 1);
            out.extend_from_slice(&q.echo);
            self.put_opt(out, q, 1, None);
            return wire::RCODE_BADVERS;
        }
        match q.qtype {
            // Meta types that cannot be asked for in a question.
            wire::TYPE_OPT | wire::TYPE_TSIG | wire::TYPE_TKEY => {
                return reject(out, wire::RCODE_FORMERR);
            }
            // Zone transfers run over TCP only (see `transfer`); this is UDP.
            wire::TYPE_AXFR | wire::TYPE_IXFR => {
                self.counters.transfers_refused.inc();
                return reject(out, wire::RCODE_REFUSED);
            }
            wire::TYPE_MAILA | wire::TYPE_MAILB => return reject(out, wire::RCODE_NOTIMP),
            _ => {}
        }
        if q.qclass != wire::CLASS_IN {
            return reject(out, wire::RCODE_REFUSED);
        }
        let name = q.name();
        let Some(zone) = c.zone_of(name) else {
            if c.pending.iter().any(|apex| wire::is_within(name, apex)) {
                return reject(out, wire::RCODE_SERVFAIL);
            }
            return reject(out, wire::RCODE_REFUSED);
        };

        // NXDOMAIN and NODATA carry only the zone's SOA, written straight into `out`.
        let entry = zone.entry(name);
        let (rcode, tail, geo_scope) = match entry.as_deref() {
            Some(entry) => match entry.answer(q.qtype) {
                Some(answer) => {
                    let (region, scope) = if answer.choice.is_geo() {
                        let (ip, scope) = match q.edns.and_then(|e| e.ecs) {
                            Some((ip, prefix)) if prefix > 0 => (ip, prefix),
                            _ => (src.ip(), 0),
                        };
                        (c.geo.region_of(ip), scope)
                    } else {
                        (None, 0)
                    };
                    let tail = answer.choice.pick(region, next_spin());
                    (answer.rcode, Some(tail), scope)
                }
                None => (wire::RCODE_NOERROR, None, 0),
            },
            None => (wire::RCODE_NXDOMAIN, None, 0),
        };
        let (an, ns) = tail.map_or((0, 1), |t| (t.an, 0));
        wire::put_header(out, q.id, flags, true, false, rcode, 1, an, ns, ar);
        out.extend_from_slice(&q.echo);
        match tail {
            Some(t) => {
                for part in t.parts {
                    out.extend_from_slice(part);
                }
            }
            None => put_negative_soa(
                out,
                wire::HEADER_LEN + name.len() - zone.apex.len(),
                zone.negative_ttl,
                &zone.soa_rdata,
            ),
        }
        let ecs = q.edns.and_then(|e| e.ecs).map(|(ip, p)| (ip, p, geo_scope));
        self.put_opt(out, q, 0, ecs);

        if out.len() > usize::from(u16::MAX) {
            // Compilation refuses record sets this large; should one get through anyway,
            // fail the query rather than send a message whose length cannot be framed.
            out.truncate(wire::HEADER_LEN + q.echo.len());
            let mut head = Vec::with_capacity(wire::HEADER_LEN);
            wire::put_header(
                &mut head,
                q.id,
                flags,
                true,
                false,
                wire::RCODE_SERVFAIL,
                1,
                0,
                0,
                ar,
            );
            out[..wire::HEADER_LEN].copy_from_slice(&head);
            self.put_opt(out, q, 0, ecs);
            return u16::from(wire::RCODE_SERVFAIL);
        }
        if transport == Transport::Udp {
            let limit = match q.edns {
                Some(e) => e.payload.clamp(512, self.max_udp_payload),
                None => 512,
            };
            if force_tc || out.len() > usize::from(limit) {
                // RFC 2181 §9: set TC and drop the sections rather than send a partial
                // RRset; the client retries over TCP and gets everything.
                out.truncate(wire::HEADER_LEN + q.echo.len());
                let mut head = Vec::with_capacity(wire::HEADER_LEN);
                wire::put_header(&mut head, q.id, flags, true, true, rcode, 1, 0, 0, ar);
                out[..wire::HEADER_LEN].copy_from_slice(&head);
                self.put_opt(out, q, 0, ecs);
                if !force_tc {
                    self.counters.truncated.inc();
                }
            }
        }
        u16::from(rcode)
    }

    fn put_opt(
        &self,
        out: &mut Vec<u8>,
        q: &Question<'_>,
        ext_rcode: u8,
        ecs: Option<(IpAddr, u8, u8)>,
    ) {
        if let Some(e) = q.edns {
            wire::put_opt(out, self.max_udp_payload, ext_rcode, e.dnssec_ok, ecs);
        }
    }
}
