//! The multi-cluster harness and the incident scenarios, shared by the `incident_*`
//! tests (which assert on each [`ScenarioReport`]) and the `incident-replay` binary
//! (which runs them longer and prints a table).
//!
//! ```text
//!  scenarios::incident(scale) ─► Fleet::start(spec)      fleet.rs: emulators, backends,
//!        │                        LoadGen::start(..)      etcd, in-process replicas
//!        │ faults, kills, restarts  (dns.rs: every answer, timestamped)
//!        ▼
//!  ScenarioReport { queries, failed, empty, latencies, API requests, violations }
//! ```
//!
//! Everything binds loopback only: 127.0.0.1 for DNS, admin, etcd and the management
//! emulator, 127.0.0.(10+i) for member `i`'s API emulator and backend.

pub mod dns;
pub mod etcd;
pub mod fleet;
pub mod scenarios;

pub use scenarios::{Scale, ScenarioReport};
