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
//! The folders are the roles:
//!
//! | folder | role |
//! |---|---|
//! | `kubernetes/` | every Kubernetes API call: member watchers (`member`, behind `budget`), the policy CRs (`management`), CR status and Events (`status`), member kubeconfigs from Secrets and their sealed copies (`fleet`, `credentials`) |
//! | `probe/` | the data plane: HTTP and TCP health checks |
//! | `store/` | what survives a restart: embedded files or etcd, and the leader's `Writer` |
//! | `leader/` | one leadership term: the loop, the policy feed, a round in named steps, the change hold, the panic boundary |
//! | `admin/` | the operator's HTTP API: status, overrides, releases |
//! | `cli/` | the subcommands, `lifeline ctl` and the demo |
//!
//! Beside them: `run` starts DNS, the admin API and the store, and leads or campaigns;
//! `config` and `documents` read what operators write; `policies` compiles policies for
//! the engine and the prober; `publish` turns decisions into DNS updates. etcd is
//! touched only through the `lifeline-etcd` crate, DNS sockets only in `lifeline-dns`,
//! and the decisions themselves are the pure `lifeline-engine` crate.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod documents;
pub mod kubernetes;
pub mod leader;
pub mod metrics;
pub mod policies;
pub mod probe;
pub mod publish;
pub mod run;
pub mod store;
