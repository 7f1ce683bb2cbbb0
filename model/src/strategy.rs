//! How a policy picks its answers among healthy targets. Shared by the API types (where
//! operators write it) and the engine (which carries it out).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Answer selection strategy.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// All healthy targets of the lowest priority tier that has any.
    #[default]
    Failover,
    /// All healthy targets, chosen per query in proportion to their weights.
    Weighted,
    /// All healthy targets, rotated per query.
    RoundRobin,
    /// Healthy targets in the client's region (by EDNS Client Subnet or source address),
    /// falling back to all healthy targets.
    Geo,
}
