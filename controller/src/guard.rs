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
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
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

/// What one decision needs, owned, so it can run on the decider thread.
#[derive(Clone)]
pub struct Owned {
    pub config: EngineConfig,
    pub policies: Arc<Vec<Policy>>,
    pub signals: Arc<Signals>,
    pub overrides: Arc<Vec<Override>>,
    pub previous: Arc<Decision>,
    pub now: SystemTime,
    pub fault: Option<Arc<Fault<'static>>>,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("policies", &self.policies.len())
            .field("fault", &self.fault.is_some())
            .finish_non_exhaustive()
    }
}

impl Owned {
    fn run(&self, policies: &[Policy], quarantine: &mut Quarantine) -> Decision {
        let inputs = Inputs {
            config: &self.config,
            policies,
            signals: &self.signals,
            overrides: &self.overrides,
            previous: &self.previous,
            now: self.now,
        };
        decide(inputs, quarantine, self.fault.as_deref())
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that decides, so a decision that never returns stalls that thread only.
#[derive(Debug)]
pub struct Decider {
    jobs: mpsc::Sender<Job>,
    /// Threads abandoned because a decision on them did not finish.
    abandoned: usize,
}

impl Default for Decider {
    fn default() -> Self {
        Self::new()
    }
}

impl Decider {
    pub fn new() -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        // Ends when its sender is dropped (the decider replaced or gone).
        let spawned = std::thread::Builder::new()
            .name("lifeline-decide".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the decider thread");
        }
        Self { jobs, abandoned: 0 }
    }

    /// Threads given up on so far.
    pub fn abandoned(&self) -> usize {
        self.abandoned
    }

    /// Runs `f` on the decider thread. `None` when it did not finish within `limit`
    /// (the thread is then abandoned and a fresh one used from here on) or could not run.
    async fn run<T: Send + 'static>(
        &mut self,
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        if self.jobs.send(job).is_err() {
            // The thread is gone (it could not start): start another for next time.
            self.replace();
            return None;
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(_)) => {
                self.replace();
                None
            }
            Err(_) => {
                self.abandoned += 1;
                self.replace();
                None
            }
        }
    }

    fn replace(&mut self) {
        let abandoned = self.abandoned;
        *self = Decider::new();
        self.abandoned = abandoned;
    }

    /// [`decide`] on the decider thread, each attempt within `limit`. When the whole set
    /// does not finish, each policy is decided alone and the ones that do not finish are
    /// quarantined; when even the rest does not finish, the previous decision is kept.
    pub async fn decide(
        &mut self,
        inputs: Owned,
        quarantine: &mut Quarantine,
        limit: Duration,
    ) -> Decision {
        let full = |inputs: Owned, mut q: Quarantine| {
            move || {
                let d = inputs.run(&inputs.policies, &mut q);
                (d, q)
            }
        };
        if let Some((d, q)) = self
            .run(limit, full(inputs.clone(), quarantine.clone()))
            .await
        {
            *quarantine = q;
            return d;
        }
        tracing::error!(
            ?limit,
            "a decision did not finish; finding the policy that hangs"
        );
        let candidates: Vec<Policy> = inputs
            .policies
            .iter()
            .filter(|p| !quarantine.contains_key(&p.id))
            .cloned()
            .collect();
        for p in candidates {
            let (one, id) = (inputs.clone(), p.id.clone());
            let solo = move || {
                let mut q = Quarantine::new();
                one.run(std::slice::from_ref(&p), &mut q);
            };
            if self.run(limit, solo).await.is_none() {
                tracing::error!(policy = %id, ?limit, "deciding this policy does not finish; quarantined, its last answers stay");
                quarantine.insert(id, format!("deciding it did not finish within {limit:?}"));
            }
        }
        match self
            .run(limit, full(inputs.clone(), quarantine.clone()))
            .await
        {
            Some((d, q)) => {
                *quarantine = q;
                d
            }
            None => {
                tracing::error!(
                    "deciding does not finish even without the quarantined policies; keeping the previous decision"
                );
                (*inputs.previous).clone()
            }
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

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::IpAddr, time::Duration};

    use lifeline_engine::{OnSourceUnavailable, TargetSpec, WhenAllUnhealthy};
    use lifeline_model::Strategy;

    use super::*;

    /// A one-cluster Failover policy `shop/{name}` answering 192.0.2.`last`.
    pub(crate) fn policy(name: &str, last: u8) -> Policy {
        Policy {
            id: format!("shop/{name}"),
            hostname: format!("{name}.global.example.com"),
            ttl: 30,
            max_answers: 8,
            strategy: Strategy::Failover,
            targets: vec![TargetSpec {
                cluster: "one".into(),
                region: "eu".into(),
                priority: 0,
                weight: 100,
                addresses: vec![IpAddr::from([192, 0, 2, last])],
            }],
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            when_all_unhealthy: WhenAllUnhealthy::ServeAll,
            on_source_unavailable: OnSourceUnavailable::Freeze,
            hold_down: Duration::from_secs(30),
            ramp_duration: Duration::ZERO,
            ramp_steps: 1,
        }
    }

    fn run(
        policies: &[Policy],
        previous: &Decision,
        quarantine: &mut Quarantine,
        fault: Option<&Fault<'_>>,
    ) -> Decision {
        let config = EngineConfig::default();
        let signals = Signals::default();
        let inputs = Inputs {
            config: &config,
            policies,
            signals: &signals,
            overrides: &[],
            previous,
            now: SystemTime::now(),
        };
        decide(inputs, quarantine, fault)
    }

    #[test]
    fn a_policy_that_panics_is_quarantined_keeps_its_answers_and_the_rest_are_decided() {
        let before = [policy("a", 1), policy("b", 2)];
        let mut quarantine = Quarantine::new();
        let first = run(&before, &Decision::default(), &mut quarantine, None);
        assert!(quarantine.is_empty());
        let a_answers = first.policies["shop/a"].answers.clone();
        assert!(!a_answers.is_empty());

        // `a` now panics; `b` changes address and must still be decided.
        let after = [policy("a", 1), policy("b", 3)];
        let poison = |set: &[Policy]| {
            if set.iter().any(|p| p.id == "shop/a") {
                panic!("poisoned");
            }
        };
        let next = run(&after, &first, &mut quarantine, Some(&poison));
        assert_eq!(quarantine.keys().collect::<Vec<_>>(), ["shop/a"]);
        assert!(quarantine["shop/a"].contains("poisoned"));
        assert_eq!(
            next.policies["shop/a"].answers, a_answers,
            "last answers kept"
        );
        assert_eq!(
            next.policies["shop/b"].answers[0].address,
            IpAddr::from([192, 0, 2, 3])
        );

        // Once quarantined it is not retried, and its absence is not a change.
        let again = run(&after, &next, &mut quarantine, Some(&poison));
        assert_eq!(again.revision, next.revision);
        assert_eq!(again.policies.len(), 2);
    }

    #[test]
    fn policies_that_only_panic_together_freeze_the_previous_decision() {
        let set = [policy("a", 1), policy("b", 2)];
        let mut quarantine = Quarantine::new();
        let first = run(&set, &Decision::default(), &mut quarantine, None);
        let together = |set: &[Policy]| {
            if set.len() > 1 {
                panic!("only together");
            }
        };
        let next = run(&set, &first, &mut quarantine, Some(&together));
        assert!(quarantine.is_empty(), "neither panics alone");
        assert_eq!(next, first, "nothing is emptied or moved");
    }

    #[tokio::test]
    async fn a_policy_whose_decision_never_returns_is_quarantined_on_its_own() {
        let set = Arc::new(vec![policy("a", 1), policy("b", 2)]);
        let mut quarantine = Quarantine::new();
        let mut decider = Decider::new();
        let owned = |previous: Arc<Decision>, fault: Option<Arc<Fault<'static>>>| Owned {
            config: EngineConfig::default(),
            policies: set.clone(),
            signals: Arc::default(),
            overrides: Arc::default(),
            previous,
            now: SystemTime::now(),
            fault,
        };
        // Far above what deciding two policies takes, even on a loaded machine.
        let limit = Duration::from_secs(2);
        let first = decider
            .decide(owned(Arc::default(), None), &mut quarantine, limit)
            .await;
        assert_eq!(first.policies.len(), 2);

        let hang: Arc<Fault<'static>> = Arc::new(|set: &[Policy]| {
            if set.iter().any(|p| p.id == "shop/a") {
                // Bounded so the abandoned thread ends with the test process anyway.
                std::thread::sleep(Duration::from_secs(30));
            }
        });
        let next = decider
            .decide(
                owned(Arc::new(first.clone()), Some(hang)),
                &mut quarantine,
                limit,
            )
            .await;
        assert_eq!(quarantine.keys().collect::<Vec<_>>(), ["shop/a"]);
        assert!(quarantine["shop/a"].contains("did not finish"));
        assert_eq!(next.policies["shop/a"], first.policies["shop/a"]);
        assert_eq!(next.policies.len(), 2);
        assert_eq!(
            decider.abandoned(),
            2,
            "the full attempt and a's own attempt"
        );
    }
}
