//! Lifeline's controller: configuration, document loading and the `lifeline` command.
//!
//! ```text
//!   lifeline.yaml ──► config::Config ─┐
//!   policy files  ──► documents::load ┴─► (later) engine::decide ─► DNS shim
//! ```

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod documents;
pub mod engine;
pub mod probe;
