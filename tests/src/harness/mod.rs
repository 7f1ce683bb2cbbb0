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
//! Everything binds loopback only: addresses of their own from the test kit for DNS,
//! admin and etcd, 127.0.0.1 for the management emulator, 127.0.0.(10+i) for member `i`'s
//! API emulator and backend (fleets run one at a time, so those fixed addresses are
//! never shared).

pub mod dns;
pub mod fleet;
pub mod inprocess;
pub mod scenarios;

pub use scenarios::{Scale, ScenarioReport};
