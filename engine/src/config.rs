//! Engine-wide settings: the blast-radius guard and how many policies ramp at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Engine-wide settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineConfig {
    /// Freeze instead of moving traffic when many targets fail at once.
    #[serde(default)]
    pub blast_radius: BlastRadius,
    /// At most this many policies ramp traffic back at the same time.
    #[serde(default = "default_max_ramps")]
    pub max_concurrent_ramps: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            blast_radius: BlastRadius::default(),
            max_concurrent_ramps: default_max_ramps(),
        }
    }
}

fn default_max_ramps() -> usize {
    2
}

/// The blast-radius guard: when more than `fraction` of all targets turn unhealthy
/// within `window`, the observer is more likely broken than the world. Their answers
/// are held and `SystemicFailureSuspected` is raised until no more than `fraction` are
/// failing. Then every failure streak starts again, so a target still down moves its
/// answers only after `unhealthyThreshold` failures seen after the hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlastRadius {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Fraction of all targets (0..1).
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// Window over which failures are counted.
    #[serde(default = "default_window", with = "lifeline_model::duration::text")]
    pub window: Duration,
    /// Below this many targets in total the guard stays off (one of two failing is
    /// not a systemic signal).
    #[serde(default = "default_min_targets")]
    pub min_targets: usize,
}

impl Default for BlastRadius {
    fn default() -> Self {
        Self {
            enabled: true,
            fraction: default_fraction(),
            window: default_window(),
            min_targets: default_min_targets(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_fraction() -> f64 {
    0.5
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_min_targets() -> usize {
    4
}
