//! Lifeline's model: the plain data every other crate agrees on. No I/O, no runtime.
//!
//! ```text
//!  records    ZoneSnapshot { zone, revision, decidedAt, names: { "www": NameRecords } }
//!             ZonePatch (upserts/deletes), Update = Replace | Patch: controller → shim
//!  overrides  Override { cluster, policy?, action: Drain | Pin | Weight, expiresAt, .. }
//!             and the part a shim can apply alone (break-glass)
//!  hold       PolicyHold / PolicyRelease: a sweeping policy change held, and its release
//!  limits     the bound of every number a document can hold, with the reasons
//!  backoff    Backoff: jittered exponential pauses between retries, the one schedule
//!  duration   Duration: the Go grammar the CRDs use ("500ms", "1m30s"), one parser
//!  name       normalize / encode / canonical / in_zone: the one DNS-name grammar
//!  strategy   Strategy: Failover | Weighted | RoundRobin | Geo
//!  time       rfc3339: how instants are written in every stored document
//! ```
//!
//! Crates above this one: the engine (pure decisions), the DNS server, the etcd store,
//! the API types and the controller.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod duration;
pub mod hold;
pub mod limits;
pub mod name;
pub mod overrides;
pub mod records;
pub mod strategy;
pub mod time;

pub use backoff::Backoff;
pub use duration::{DURATION_PATTERN, Duration, parse_duration};
pub use overrides::{Override, OverrideAction};
pub use records::{
    AddressSet, Cname, FORMAT_VERSION, NameRecords, Srv, SrvSet, Target, TxtSet, Update, ZonePatch,
    ZoneSnapshot,
};
pub use strategy::Strategy;
