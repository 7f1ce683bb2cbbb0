//! A zone as it is served: the tables answers are copied from (`compile`), the SOA
//! serial's rule (`serial`), and the changes kept for IXFR (`history`).

mod compile;
pub mod history;
pub mod serial;

pub use compile::*;
