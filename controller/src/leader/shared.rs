//! What every term of a process shares, and how a term ends.

use std::sync::Arc;

use super::feed::PolicyFeed;
use crate::{admin::AdminState, config::Config, metrics::Metrics};

/// How a leadership term ended.
#[derive(Debug)]
pub enum TermEnd {
    /// The process is shutting down.
    Shutdown,
    /// Leadership was lost (the lease expired or another replica took over).
    Deposed,
    /// The term could not go on.
    Failed(TermError),
}

/// Why a term could not go on.
#[derive(Debug, thiserror::Error)]
pub enum TermError {
    #[error("reading the last decision: {0}")]
    ReadDecision(crate::store::Error),
    #[error("starting the prober: {0}")]
    Prober(crate::probe::Error),
    #[error("saving the decision: {0}")]
    SaveDecision(crate::store::Error),
    #[error("the leader term panicked: {0}")]
    Panicked(String),
}

/// What every term of this process shares.
pub(crate) struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub state: Arc<AdminState>,
    pub policy_feed: PolicyFeed,
    /// This replica's name in leader election, status and Events.
    pub identity: String,
    /// The namespace Lifeline runs in.
    pub namespace: String,
    /// The key that seals cached member kubeconfigs, when one is configured and loads.
    pub credential_key: Option<Arc<crate::kubernetes::credentials::SealKey>>,
    /// Honour the test-only fault annotation ([`TEST_FAULT`]). Tests set it; nothing
    /// else does.
    pub test_faults: bool,
}
