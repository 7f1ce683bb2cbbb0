//! The changes a zone keeps for IXFR: what each name a change touched held before it,
//! newest last, bounded in bytes.

use lifeline_model::NameRecords;

/// The records each name a change touches had before it (`None`: it did not exist),
/// by key.
pub type Before = Vec<(String, Option<lifeline_model::NameRecords>)>;

/// Memory the changes kept for IXFR may take per zone, as [`Change::bytes`] counts
/// it. Past it the oldest go first; a secondary further behind gets the whole zone.
pub const HISTORY_BYTES: usize = 16 << 20;

/// One applied change, kept for IXFR: the serials it took the zone between, and the
/// records the names it touched had before it.
#[derive(Debug)]
pub struct Change {
    pub from: u32,
    pub to: u32,
    pub before: Before,
    /// About what it holds in memory.
    pub bytes: usize,
}

impl Change {
    pub fn new(from: u32, to: u32, before: Before) -> Self {
        let bytes = before
            .iter()
            .map(|(key, records)| 64 + key.len() + records.as_ref().map_or(0, footprint))
            .sum::<usize>()
            + 64;
        Self {
            from,
            to,
            before,
            bytes,
        }
    }
}

/// About the memory one name's records take.
fn footprint(records: &NameRecords) -> usize {
    let target = |t: &lifeline_model::Target| {
        std::mem::size_of::<lifeline_model::Target>() + t.cluster.len() + t.region.len()
    };
    let mut n = std::mem::size_of::<NameRecords>();
    if let Some(set) = &records.address {
        n += set.targets.iter().map(target).sum::<usize>();
        n += set.standby.iter().flatten().map(target).sum::<usize>();
        n += 24 * set.standby.len();
    }
    if let Some(srv) = &records.srv {
        n += srv
            .records
            .iter()
            .map(|r| 32 + r.target.len())
            .sum::<usize>();
    }
    if let Some(txt) = &records.txt {
        n += txt.records.iter().map(|r| 24 + r.len()).sum::<usize>();
    }
    if let Some(c) = &records.cname {
        n += c.target.len();
    }
    n
}

/// The changes that led to a table's snapshot, oldest first.
pub type History = std::sync::Arc<[std::sync::Arc<Change>]>;
