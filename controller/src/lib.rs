//! Lifeline's controller: it decides which member clusters answer for each global name
//! and feeds those answers to the embedded DNS shim.
//!
//! ```text
//!  lifeline.yaml ─► config ─┐                     overrides (admin API, store)
//!  policy files ─► documents ─► policies::compile ─┐            │
//!                                  │ probe specs    ▼            ▼
//!                                  └──► probe ─► engine::decide(.., previous, now)
//!                                                   │ Decision
//!                        store (decision, overrides) ◄┤
//!                                                   ▼
//!                                     publish ─► lifeline_dns::ShimHandle ─► DNS
//! ```
//!
//! `engine` is pure (no I/O, no clock); `probe` is the only module that talks to the data
//! plane; `run` wires everything together; `admin` and `ctl` are the operator's surface.

#![forbid(unsafe_code)]

pub mod admin;
pub mod budget;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod documents;
pub mod engine;
pub mod etcd;
pub mod fleet;
pub mod management;
pub mod member;
pub mod policies;
pub mod probe;
pub mod publish;
pub mod run;
pub mod status;
pub mod store;
