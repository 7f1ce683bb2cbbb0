//! What the DNS server keeps on disk: whole files written atomically (`files`), zone
//! snapshots and break-glass overrides (`snapshots`), the journal of changes beside each
//! snapshot (`journal`), and the thread that writes them all (`writer`).

pub mod files;
pub mod journal;
pub mod snapshots;
pub(crate) mod writer;
