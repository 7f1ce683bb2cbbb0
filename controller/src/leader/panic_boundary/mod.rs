//! A panic boundary around the engine, so one policy that makes `decide` panic cannot
//! stop the others from being steered, and cannot take the process (and with it DNS)
//! down.
//!
//! ```text
//!  decide(all but quarantined) ──ok──► merge the quarantined policies' last decisions
//!        │ panic
//!        ▼
//!  decide each policy alone ──► the ones that panic alone are quarantined (with the
//!        │                      panic message); the rest are decided together
//!        ▼ still a panic (policies that only fail together)
//!  keep the previous decision whole: answers freeze, nothing is emptied
//! ```
//!
//! A decision that does not return is contained the same way: [`Decider`] runs it on a
//! thread of its own with a deadline. On a timeout the thread is abandoned (a thread
//! cannot be killed; it is left to finish or not) and a new one takes over; each policy
//! is then decided alone under the same deadline, and the ones that do not finish are
//! quarantined.
//!
//! A quarantined policy keeps serving the answers it had. The quarantine lasts until the
//! policy documents change (an operator's fix) or the term ends; a restart finds the
//! same panic again and quarantines the same policy, so it never crash-loops.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    panic::{AssertUnwindSafe, catch_unwind},
    time::SystemTime,
};

use lifeline_engine::{
    self as engine, Decision, EngineConfig, Override, Policy, PolicyId, Signals,
};

/// Policies taken out of deciding, with why.
pub type Quarantine = BTreeMap<PolicyId, String>;

/// A test-only fault: called inside the boundary with the policies about to be decided.
pub type Fault<'a> = dyn Fn(&[Policy]) + Send + Sync + 'a;

/// What `engine::decide` takes.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub config: &'a EngineConfig,
    pub policies: &'a [Policy],
    pub signals: &'a Signals,
    pub overrides: &'a [Override],
    pub previous: &'a Decision,
    pub now: SystemTime,
}

/// `engine::decide` behind the boundary. `quarantine` is extended with policies found
/// to panic; policies already in it are not decided and keep `previous`'s decision.
pub fn decide(
    inputs: Inputs<'_>,
    quarantine: &mut Quarantine,
    fault: Option<&Fault<'_>>,
) -> Decision {
    let Inputs {
        config,
        policies,
        signals,
        overrides,
        previous,
        now,
    } = inputs;
    // The engine sees a policy it is not given as removed; hide the quarantined ones
    // from `previous` too, so their absence is not a change on every decision.
    let without = |q: &Quarantine| -> Option<Decision> {
        (!q.is_empty()).then(|| {
            let mut d = previous.clone();
            d.policies.retain(|id, _| !q.contains_key(id));
            d
        })
    };
    let attempt = |set: &[Policy], previous: &Decision| {
        catch_unwind(AssertUnwindSafe(|| {
            if let Some(f) = fault {
                f(set);
            }
            engine::decide(config, set, signals, overrides, previous, now)
        }))
        .map_err(|payload| panic_text(payload.as_ref()))
    };
    // The policies to decide: all of them, borrowed, unless some are quarantined (a
    // copy of every policy each round was the decider's largest allocation).
    let healthy = |q: &Quarantine| -> Cow<'_, [Policy]> {
        if q.is_empty() {
            return Cow::Borrowed(policies);
        }
        Cow::Owned(
            policies
                .iter()
                .filter(|p| !q.contains_key(&p.id))
                .cloned()
                .collect(),
        )
    };
    let hidden = without(quarantine);
    let decided = match attempt(&healthy(quarantine), hidden.as_ref().unwrap_or(previous)) {
        Ok(d) => Ok(d),
        Err(_) => {
            // Find the policies that panic on their own.
            for p in healthy(quarantine).iter() {
                if let Err(reason) = attempt(std::slice::from_ref(p), previous) {
                    tracing::error!(policy = %p.id, %reason, "deciding this policy panics; quarantined, its last answers stay");
                    quarantine.insert(p.id.clone(), format!("deciding it panicked: {reason}"));
                }
            }
            let hidden = without(quarantine);
            attempt(&healthy(quarantine), hidden.as_ref().unwrap_or(previous))
        }
    };
    match decided {
        Ok(mut d) => {
            for id in quarantine.keys() {
                if let Some(last) = previous.policies.get(id) {
                    d.policies.insert(id.clone(), last.clone());
                }
            }
            d
        }
        Err(reason) => {
            tracing::error!(%reason, "deciding panics even without the quarantined policies; keeping the previous decision");
            previous.clone()
        }
    }
}

pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

mod thread;
pub use thread::{Decider, Owned};

#[cfg(test)]
pub(crate) mod tests;
