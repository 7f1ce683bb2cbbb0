//! The one retry schedule: exponential pauses with jitter between a least and a greatest
//! pause, never giving up. Jitter spreads the retries of many clients (members,
//! replicas, sources) that failed together, so a recovery does not stampede.

use std::time::Duration;

use backon::BackoffBuilder as _;

/// Pauses between failed attempts: a base that starts at `min` and doubles, plus up to
/// as much again at random, never above `max`; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    /// Pauses from `min` up to `max` (a `max` below `min` is taken as `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_jitter(min, max, true)
    }

    /// The same schedule without jitter (`min`, twice `min`, ... up to `max`), for a
    /// retry only one client makes, where spreading has nothing to spread.
    pub fn unjittered(min: Duration, max: Duration) -> Self {
        Self::with_jitter(min, max, false)
    }

    fn with_jitter(min: Duration, max: Duration, jitter: bool) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            jitter,
            delays: Self::schedule(min, max, jitter),
        }
    }

    fn schedule(min: Duration, max: Duration, jitter: bool) -> backon::ExponentialBackoff {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .without_max_times();
        match jitter {
            true => builder.with_jitter().build(),
            false => builder.build(),
        }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // The schedule has no limit on attempts, so `None` never comes; `max` is a guard.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// The longest pause.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Starts again from `min` (after a success).
    pub fn reset(&mut self) {
        self.delays = Self::schedule(self.min, self.max, self.jitter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_within_their_bounds_and_start_over_after_a_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max);
        let first: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        // The first pause is `min` plus jitter; none is past `max`.
        assert!(first.iter().all(|d| *d <= max), "{first:?}");
        assert!((min..=min * 2).contains(&first[0]), "{first:?}");
        assert!(first.iter().any(|d| *d > min * 2), "never grew: {first:?}");
        b.reset();
        assert!((min..=min * 2).contains(&b.next_delay()));
        assert_eq!(b.max(), max);
    }

    #[test]
    fn without_jitter_pauses_double_up_to_the_greatest() {
        let mut b = Backoff::unjittered(Duration::from_secs(1), Duration::from_secs(60));
        let pauses: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
