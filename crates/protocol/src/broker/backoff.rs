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
