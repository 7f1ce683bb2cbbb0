//! Secondaries: zone transfers out (`transfer`, AXFR and IXFR) and NOTIFY of each new
//! serial (`notify`).

pub(crate) mod notify;
pub mod transfer;
