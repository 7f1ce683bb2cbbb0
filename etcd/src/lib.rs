//! Where Lifeline talks to etcd. Nothing else in the workspace depends on etcd-client.
//!
//! ```text
//!  source     EtcdSource: records → the DNS server's SnapshotSource (watch, resume,
//!             resync after compaction); the key layout of records, the versioned value
//!             envelope, connection options (TLS, user, timeouts)
//!  overrides  EtcdOverrides: overrides → every DNS server, leader or not (break-glass)
//!  store      EtcdStore: decision, mirrored policies, overrides and audit; Leadership
//!             (lease, campaign, keep-alive) and writes fenced by the leader key. Its
//!             module documentation lists every key.
//! ```
//!
//! The DNS server crate knows none of this: it is fed through its `SnapshotSource` seam.

#![forbid(unsafe_code)]

pub mod overrides;
pub mod source;
pub mod store;

pub use overrides::EtcdOverrides;
pub use source::{BadValue, EtcdConnect, EtcdSource, EtcdTlsFiles, VALUE_LIMIT};
pub use store::{EtcdStore, Leader, Leadership};
