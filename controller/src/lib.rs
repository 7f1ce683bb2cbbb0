//! Lifeline's controller: it decides which member clusters answer for each global name
//! and feeds those answers to the DNS shims.
//!
//! ```text
//!  lifeline.yaml ─► config            overrides (admin API, ctl, store)
//!  policies: documents (files) | management (CRs) ─┐          │
//!                                 policies::compile ◄─ fleet (member watchers, behind budget)
//!                                   │ probe specs        │ addresses, readiness, reachability
//!                                   ▼                    ▼
//!                                 probe ─► engine::decide(.., previous, now) ─► Decision
//!                                                 │
//!        store (embedded) | etcd (fenced leader) ◄┤──► status (CR status, Events)
//!                                                 ▼
//!                                 publish ─► shim in process, or etcd ─► every replica's shim
//! ```
//!
//! `engine` is pure (no I/O, no clock); `probe` is the only module that talks to the data
//! plane, `member` and `management` the only ones that talk to Kubernetes APIs, `etcd`
//! the only one that talks to etcd; `run` wires everything together; `admin` and `ctl`
//! are the operator's surface.

#![forbid(unsafe_code)]

pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod documents;
pub mod fleet;
pub mod management;
pub mod member;
pub mod policies;
pub mod probe;
pub mod publish;
pub mod run;
pub mod status;
pub mod store;
pub mod term;
