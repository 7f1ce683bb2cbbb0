//! Test support shared by every Lifeline test and benchmark. It is a dev-dependency only.
//!
//! ```text
//!  net      loopback() / free_port() / free_addr(): each call gets an address of its own
//!  etcd     Etcd::start(): a real etcd on such an address, with a temporary data dir;
//!           Etcd::store() and lead(): Lifeline's store on it and a won election
//!  control_plane  ControlPlanes::start(n): real kube-apiservers over one real etcd
//!  pki      TestCa: a CA of the test's own and the leaves it signs
//!  netns    Netns: a namespace behind a veth link, for real black holes
//!  proxy    Proxy: a TCP hop a test can cut (a partition) or point elsewhere
//!  process  Process: a child killed on drop, stopped with SIGTERM
//!  cgroup   MemoryCage: a memory limit the kernel enforces on a process
//!  disk     SmallDisk (fills up) and FreezableDisk (stalls writes and fsync)
//!  http     status_within(): GET with a deadline
//!  dns      query builders, raw UDP/TCP exchange, query_a() -> Answer
//!  backend  Backend: an HTTP server that can be killed, slowed or made to fail
//!  skip     skipped(): a skip that `cargo test` shows without --nocapture
//!  wait     within() / eventually() / init_tracing()
//!  fixtures the shared test zone, lifeline.yaml and document text, a drain override
//!  examples deploy/examples decoded into a PolicySnapshot
//! ```
//!
//! Why addresses of their own: a port found free by binding port 0 and letting it go can
//! be taken by anything else before the server binds it. Every address `net` hands out
//! is a loopback address that no other caller in this process gets, so nothing else
//! binds on it; a server that still finds its port taken (another process on the
//! machine) is started again on a new address.

#![forbid(unsafe_code)]

pub mod backend;
pub mod cgroup;
#[cfg(feature = "control-plane")]
pub mod control_plane;
pub mod disk;
pub mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "examples")]
pub mod examples;
pub mod fixtures;
pub mod http;
pub mod net;
pub mod netns;
#[cfg(feature = "etcd")]
pub mod pki;
pub mod process;
pub mod proxy;
pub mod skip;
pub mod wait;

pub use backend::Backend;
#[cfg(feature = "control-plane")]
pub use control_plane::ControlPlanes;
#[cfg(feature = "etcd")]
pub use etcd::Etcd;
pub use net::{free_addr, free_port, free_ports, loopback};
pub use proxy::Proxy;
pub use skip::skipped;
pub use wait::{eventually, eventually_async, init_tracing, poll, within};
