//! The waits between attempts to reach the broker again, growing and jittered.

use std::time::Duration;

/// The waits between attempts to reconnect: 0.25 s, doubled after each failure up to 5 s,
/// each with up to half again of jitter, so that the hosts of a fleet do not all come back at
/// the same instant. For [`Broker::reconnect`] and for callers that cannot block in it (a
/// worker manager's event loop).
#[derive(Debug)]
pub struct Backoff {
    wait: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    pub fn new() -> Backoff {
        Backoff {
            wait: Backoff::FIRST,
        }
    }

    /// The least time an attempt gets, the last one (at a deadline) included: an attempt is
    /// otherwise cut at the deadline.
    pub const LEAST_ATTEMPT: Duration = Duration::from_millis(500);

    /// When the next attempt before `deadline` is due, after one that failed at `now`: the
    /// wait, but no later than the deadline itself, so that a broker back just before the
    /// limit is still found; `None` once the deadline has passed.
    pub fn next_attempt(
        &mut self,
        now: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        (now < deadline).then(|| (now + self.next_wait()).min(deadline))
    }

    /// Until when an attempt started at `started` may wait for its answer, with `deadline`
    /// the limit of the whole outage.
    pub fn attempt_bound(
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
    ) -> tokio::time::Instant {
        deadline.max(started + Backoff::LEAST_ATTEMPT)
    }

    /// The wait before the next attempt (jittered); the one after it is longer.
    pub fn next_wait(&mut self) -> Duration {
        let jitter = self
            .wait
            .mul_f64(f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 510.0);
        let wait = self.wait + jitter;
        self.wait = (self.wait * 2).min(Backoff::MAX);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_attempt_is_at_the_deadline_and_none_after_it() {
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_secs(4);
        let mut backoff = Backoff::new();
        // Waits grow past what is left: the attempt is due at the deadline, not given up.
        backoff.wait = Duration::from_secs(5);
        assert_eq!(backoff.next_attempt(now, deadline), Some(deadline));
        let early = backoff
            .next_attempt(now, now + Duration::from_secs(60))
            .unwrap();
        assert!(early > now && early < now + Duration::from_secs(60));
        assert_eq!(backoff.next_attempt(deadline, deadline), None);
        // An attempt at the deadline still gets its least time; one before it, the deadline.
        assert_eq!(
            Backoff::attempt_bound(deadline, deadline),
            deadline + Backoff::LEAST_ATTEMPT
        );
        assert_eq!(Backoff::attempt_bound(now, deadline), deadline);
    }
}
