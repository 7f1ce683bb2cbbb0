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
//! | `shared`, `saved` | what every term shares and how it ends; what of a decision is saved |
//!
//! Only the leader writes: it is handed a [`Writer`], which only the election (or the
//! embedded store, one writer by construction) gives out.

use std::{panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt as _;
use tokio::sync::mpsc;

use crate::{
    kubernetes::management::ManagementSource,
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
mod saved;
mod shared;
mod term;
mod tick;

pub use faults::TEST_FAULT;
pub(crate) use feed::PolicyFeed;
pub use panic_boundary::Quarantine;
pub(crate) use shared::Shared;
pub use shared::{TermEnd, TermError};

use term::LeaderTerm;

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
