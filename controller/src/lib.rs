//! Lifeline's controller: it decides which member clusters answer for each global name
//! and feeds those answers to the DNS servers.
//!
//! ```text
//!  lifeline.yaml ─► config            overrides (admin API, ctl, store)
//!  policies: documents (files) | management (CRs) ─┐          │
//!                                 policies::compile ◄─ fleet (member watchers, behind budget)
//!                                   │ probe specs        │ addresses, readiness, reachability
//!                                   ▼                    ▼
//!                                 probe ─► lifeline_engine::decide(.., previous, now)
//!                                                 │ Decision
//!        store: embedded | etcd (fenced leader) ◄─┤──► status (CR status, Events)
//!                                                 ▼
//!                                 publish ─► DNS server in process, or etcd ─► every replica
//! ```
//!
//! Where each outside system is touched, in one module or crate each:
//!
//! | system | where |
//! |---|---|
//! | Kubernetes APIs | `member` (member clusters, behind `budget`); `management`, `status` and `fleet`'s Secret reads (the management cluster) |
//! | the data plane | `probe` |
//! | etcd | the `lifeline-etcd` crate |
//! | DNS sockets | the `lifeline-dns` crate |
//!
//! The decisions themselves are the pure `lifeline-engine` crate. `run` starts DNS, the
//! admin API and the store, and campaigns; `leader` is one leadership term (one method
//! per event, a round in named steps, the change hold and the panic boundary); `admin`
//! and `ctl` are the operator's surface; `cli` holds the subcommands.

#![forbid(unsafe_code)]

pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod ctl;
pub mod demo;
pub mod documents;
pub mod fleet;
pub mod leader;
pub mod management;
pub mod member;
pub mod metrics;
pub mod policies;
pub mod probe;
pub mod publish;
pub mod run;
pub mod status;
pub mod store;
