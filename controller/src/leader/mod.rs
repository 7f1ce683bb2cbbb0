//! The leader: one leadership term, from being elected (or starting, with the embedded
//! store) to shutting down, being deposed, or failing.
//!
//! ```text
//!  LeaderTerm::begin   last decision ─► policies (fresh, else the last good set; with
//!        │             neither, wait: DNS keeps answering) ─► fleet, prober, status task
//!        ▼
//!  lead(): select! only dispatches ─┬─ probe result       ─► on_probe
//!                                   ├─ overrides changed  ─► round
//!                                   ├─ every second       ─► on_tick (reload, fleet, status)
//!                                   ├─ every 100 ms       ─► round when due
//!                                   └─ stop               ─► end: save the decision
//!        ▼
//!  TermEnd { Shutdown, Deposed, Failed(..) }
//!
//!  round: next decision (behind the panic boundary) ─► show (admin view, status)
//!         ─► persist (the writer) ─► publish (the writer) ─► metrics
//! ```
//!
//! | file | what |
//! |---|---|
//! | `term` | the term's state; how a policy set is put in force and compiled |
//! | `feed` | where policy documents come from, and what was last seen of them |
//! | `arbitrate` | the cross-document checks of CRs, each policy judged on its own |
//! | `round` | one decision round, in named steps |
//! | `tick` | what happens once a second, and probe results |
//! | `change_hold` | holding back a policy change that would stop serving many names |
//! | `panic_boundary` | a policy whose decision panics or hangs is quarantined |
//! | `faults` | faults tests ask for; nothing in production |
//!
//! Only the leader writes: it is handed a [`Writer`], which only the election (or the
//! embedded store, one writer by construction) gives out.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::FutureExt as _;
use tokio::sync::mpsc;

use crate::{
    admin::AdminState,
    config::Config,
    kubernetes::management::ManagementSource,
    metrics::Metrics,
    probe::ProbeResult,
    publish::{Publisher, ZoneRecords},
    store::Writer,
};

mod arbitrate;
mod change_hold;
mod faults;
mod feed;
pub mod panic_boundary;
mod round;
mod term;
mod tick;

pub use faults::TEST_FAULT;
pub(crate) use feed::PolicyFeed;
pub use panic_boundary::Quarantine;

use term::LeaderTerm;

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

/// Leads until `stop` completes (with `Shutdown` or `Deposed`) or the term fails. The
/// management cluster is watched only during the term, so its load does not grow with
/// the number of replicas.
///
/// `served` is what DNS serves as the term begins: a term that finds no decision to
/// resume starts from those answers.
pub(crate) async fn lead(
    shared: &mut Shared,
    writer: Writer<'_>,
    publisher: Publisher,
    served: ZoneRecords,
    stop: impl Future<Output = TermEnd>,
) -> TermEnd {
    if let Some((client, namespace)) = shared.policy_feed.management_client.clone() {
        let source = ManagementSource::spawn(client, namespace);
        let view = source.view();
        shared.policy_feed.management = Some((source, view));
    }
    let mut stop = std::pin::pin!(stop);
    // A panic anywhere in the term ends the term, not the process: DNS answers from its
    // own threads and the caller starts a new term.
    let end = AssertUnwindSafe(async {
        let (tx, mut results) = mpsc::channel::<ProbeResult>(4096);
        let begun = LeaderTerm::begin(shared, writer, publisher, &served, tx, &mut stop).await;
        let mut term = match begun {
            Ok(term) => term,
            Err(end) => return end,
        };
        let mut round_tick = tokio::time::interval(Duration::from_millis(100));
        let mut reload_tick = tokio::time::interval(Duration::from_secs(1));
        let state = term.shared.state.clone();
        let end = loop {
            tokio::select! {
                end = &mut stop => break end,
                Some(r) = results.recv() => term.on_probe(r),
                _ = state.overrides_changed.notified() => term.round().await,
                _ = reload_tick.tick() => term.on_tick().await,
                _ = round_tick.tick() => if term.due() { term.round().await },
            }
        };
        term.end(end).await
    })
    .catch_unwind()
    .await
    .unwrap_or_else(|payload| {
        TermEnd::Failed(TermError::Panicked(panic_boundary::panic_text(
            payload.as_ref(),
        )))
    });
    shared.policy_feed.management = None;
    if matches!(end, TermEnd::Failed(_)) {
        shared.metrics.term_failures.inc();
    }
    end
}
