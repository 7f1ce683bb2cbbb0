//! Lifeline's authoritative DNS shim.
//!
//! The shim answers DNS for the zones Lifeline steers, from an in-memory snapshot that
//! is also on disk, so it keeps answering when every control plane, the store and the
//! controller are gone.
//!
//! # Record model
//!
//! ```text
//!  controller ──Update::Replace(ZoneSnapshot)──┐      (or a source: directory, etcd)
//!             ──Update::Patch(ZonePatch)───────┤
//!                                              ▼
//!                                   ShimHandle::apply ──► persister thread: the change
//!                                              │           appended to <zone>@<base>.journal,
//!                                              │           folded now and then into
//!                                              │           <zone>@<rev>.snapshot
//!                                       compile_zone
//!                                              │ per (name, type): pre-serialised answers
//!                                              ▼
//!                              ArcSwap<Compiled> ◄── readers never lock
//!                                              │
//!                     UDP threads / TCP tasks ─┴─► Engine::respond(bytes) -> bytes
//!
//!  ZoneSnapshot { zone, revision, decidedAt, names: { "www": NameRecords } }
//!  NameRecords  { address?: AddressSet { ttl, targets: [Target], maxAnswers?, geo },
//!                 srv?: { ttl, records: [{priority, weight, port, target}] },
//!                 txt?: { ttl, records: [string] },
//!                 cname?: { ttl, target } }
//!  Target       { address (v4 → A, v6 → AAAA), cluster, region, weight }
//! ```
//!
//! A snapshot is the whole zone at one revision; the SOA serial is the revision. A
//! patch upserts or deletes single names on top of the current snapshot, so the
//! controller never has to resend a large zone for a one-name change. Updates with a
//! revision not above the served one are refused, so a replayed or reordered update
//! cannot roll answers back.
//!
//! Per query, the shim picks among an address set's targets: targets lead the answer
//! in proportion to their weight (equal weights rotate), and with `geo` set the
//! client's region (EDNS Client Subnet, else the source address, mapped by the
//! configured prefix table) narrows the choice to that region's targets when it has
//! any. The controller lists only healthy targets, so "fall back to all" is safe.
//!
//! # Start-up
//!
//! At start the newest valid generation of each zone is read from disk (a corrupt or
//! truncated file is reported and the previous generation used), installed, and only
//! then are sockets opened. Large zones are merely indexed at this point and answered
//! by building each answer on demand; a background compile then swaps in the
//! pre-serialised tables. Either way the first query after start is answered from disk.
//!
//! # Staleness
//!
//! Data is current while a source is connected. Once none has been for `staleAfter`,
//! answers keep flowing with TTLs capped at `staleTtl` (RFC 8767) and are counted as
//! stale; nothing is ever removed because a source went away.
//!
//! # Secondaries
//!
//! A zone with a `transfer` section can be copied by other DNS servers: AXFR and IXFR
//! over TCP ([`xfr::transfer`]), and a NOTIFY to each listed secondary on every new serial
//! (`xfr::notify`).

#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf};

pub mod admin;
pub mod config;
pub mod disk;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod net;
pub mod records;
pub mod rrl;
pub mod shim;
mod slots;
pub mod source;
pub mod standalone;
pub mod wire;
pub mod xfr;
pub mod zone;

pub use config::{
    DnsConfig, GeoPrefix, JournalConfig, RateLimitConfig, TransferConfig, ZoneConfig,
};
pub use disk::{files, journal, snapshots};
pub use engine::{Engine, Transport};
pub use lifeline_model::{
    AddressSet, Cname, NameRecords, Srv, SrvSet, Target, TxtSet, Update, ZonePatch, ZoneSnapshot,
};
pub use metrics::ShimMetrics;
pub use shim::{Applied, Shim, ShimHandle, ShimState, SourceState, StartOptions, ZoneState};
pub use source::{DirectorySource, SnapshotSource};
pub use zone::serial;

/// Errors of the DNS shim.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration problems, each with its field path.
    #[error("invalid dns configuration: {}", .0.iter().map(|(p, m)| format!("{p}: {m}")).collect::<Vec<_>>().join("; "))]
    Config(Vec<(String, String)>),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("zone {0} is not served by this shim")]
    UnknownZone(String),
    #[error("zone {zone}: revision {got} is not newer than served revision {have}")]
    StaleRevision { zone: String, have: u64, got: u64 },
    #[error(
        "zone {zone}: revision {got} is {} past served revision {have}; the SOA serial (RFC 1982) can move at most 2^31-1 at once, so secondaries would take it for an older zone",
        got.wrapping_sub(*have)
    )]
    SerialJump { zone: String, have: u64, got: u64 },
    #[error("zone {0}: a patch needs a snapshot to apply to")]
    NoBase(String),
    #[error("snapshot format version {0} is not supported")]
    Format(u32),
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    /// True when the update was refused only because it is not newer than what is served.
    pub fn is_stale_revision(&self) -> bool {
        matches!(self, Error::StaleRevision { .. })
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
