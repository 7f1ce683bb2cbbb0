//! The decider thread: [`decide`](super::decide) run on a thread of its own with a
//! deadline, so a decision that never returns stalls that thread only.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, SystemTime},
};

use lifeline_engine::{Decision, EngineConfig, Override, Policy, Signals};

use super::{Fault, Inputs, Quarantine, decide};

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
