//! Lifeline's test support: harnesses that start real servers on loopback, and helpers
//! shared by the end-to-end tests and benchmarks.

pub mod harness;
pub mod kube;
pub mod storm;
