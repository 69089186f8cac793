//! Lost files: a file's message can leave the files queue without reaching a worker (another
//! broker user's `basic.get`, an administrator's purge), and the run would wait for its
//! result forever. The originator knows every file; this finds those that have had no
//! result, while the files queue held no message and no worker ran them, for
//! [`LOST_FILE_WAIT`], so that the engine queues them again. Kept synchronous (fed the time
//! and the queue's count) so that it can be tested without a broker.
//!
//! What "queued" and "running" mean here: the broker tells how many messages are ready in
//! the files queue, not which; so while it holds any, every file without a result may be
//! one of them and none is lost. Once it holds none, a file without a result is either
//! running (a worker's `FileStarted` came from a host that took the job and has not
//! finished or been found dead, and no result yet), held by a manager for a worker that has
//! not started it yet (for a moment, or while a new worker starts), or lost. A host that
//! took the job and has started nothing yet may hold files while its first workers start
//! (`before_start`, a runner's boot): while one does, for up to [`STARTUP_GRACE`] after it
//! was first seen, nothing is taken for lost. A file queued again that was only held runs
//! twice; the second result is dropped by the state, as any duplicate is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::retries::Retry;
use crate::state::JobState;

/// How long a file without a result may be neither queued nor running before it is queued
/// again (`docs/reliability.md`). Longer than a worker manager hands a retry back for
/// (`gorgon_worker`'s `RETRY_HAND_OFF`, 5 s), so that a retry waiting there for another
/// host is not taken for lost.
pub const LOST_FILE_WAIT: Duration = Duration::from_secs(10);

/// How long a host that took the job and has started no file yet counts as starting (its
/// first workers may hold files they have not started).
pub const STARTUP_GRACE: Duration = Duration::from_secs(30);

/// A unit to queue again.
#[derive(Clone, Debug, PartialEq)]
pub enum Requeue {
    /// A queued unit that never got a result.
    File(String),
    /// A retry that never got its attempt's result.
    Retry(Retry),
}

impl Requeue {
    pub fn unit(&self) -> &str {
        match self {
            Requeue::File(unit) => unit,
            Requeue::Retry(retry) => &retry.unit,
        }
    }
}

/// The watch for lost files over a run.
#[derive(Debug)]
pub struct LostFiles {
    wait: Duration,
    /// Unit → since when it has had no result while nothing was queued and it did not run.
    idle_since: HashMap<String, Instant>,
    /// Host → when this watch first saw it working on the job.
    seen: HashMap<String, Instant>,
    /// Units queued again so far.
    requeued: usize,
}

impl LostFiles {
    pub fn new(wait: Duration) -> LostFiles {
        LostFiles {
            wait,
            idle_since: HashMap::new(),
            seen: HashMap::new(),
            requeued: 0,
        }
    }

    /// How many units were queued again so far.
    pub fn requeued(&self) -> usize {
        self.requeued
    }

    /// One look at the run at `now`, when the files queue holds `queued` ready messages:
    /// the units lost for the wait, to queue again (each then gets the wait anew).
    pub fn look(&mut self, state: &JobState, queued: u32, now: Instant) -> Vec<Requeue> {
        let working = state.listeners_working();
        for host in &working {
            self.seen.entry(host.clone()).or_insert(now);
        }
        let starting = working.iter().any(|host| {
            !state.has_run_files(host) && now.duration_since(self.seen[host]) < STARTUP_GRACE
        });
        if queued > 0 || starting || working.is_empty() {
            self.idle_since.clear();
            return Vec::new();
        }
        let mut lost = Vec::new();
        let mut idle_since = HashMap::new();
        for unit in awaited(state) {
            let since = self.idle_since.get(unit.unit()).copied().unwrap_or(now);
            if now.duration_since(since) >= self.wait {
                idle_since.insert(unit.unit().to_owned(), now);
                lost.push(unit);
            } else {
                idle_since.insert(unit.unit().to_owned(), since);
            }
        }
        self.idle_since = idle_since;
        self.requeued += lost.len();
        lost
    }
}

/// The units the run waits for that no worker runs: each queued unit without a result, or,
/// for one that failed and waits for its retries, those retries.
fn awaited(state: &JobState) -> Vec<Requeue> {
    let mut units = Vec::new();
    for file in state.unfinished_queued() {
        if state.retries().is_pending(&file) {
            units.extend(
                state
                    .retries()
                    .in_flight(&file)
                    .into_iter()
                    .filter(|retry| !state.is_running(&retry.unit))
                    .map(Requeue::Retry),
            );
        } else if !state.is_running(&file) {
            units.push(Requeue::File(file));
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retries::{Place, RetryPolicy};
    use crate::state::tests::result;
    use gorgon_protocol::FileStatus;

    fn files(names: &[&str]) -> JobState {
        let mut state = JobState::new(names.iter().map(|f| f.to_string()).collect());
        state.listener_accepted("h1", 1, None);
        state
    }

    #[test]
    fn a_file_neither_queued_nor_running_for_the_wait_is_lost_and_gets_the_wait_anew() {
        let mut state = files(&["a", "b", "c"]);
        let mut lost = LostFiles::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        state.file_started("h1", 1, "a");
        // Files in the queue: nothing can be lost.
        assert!(lost.look(&state, 2, at(0)).is_empty());
        assert!(lost.look(&state, 0, at(1)).is_empty());
        // Still waiting from the first look with an empty queue.
        assert!(lost.look(&state, 0, at(10)).is_empty());
        state.file_finished(result("a", "h1", FileStatus::Passed));
        state.file_started("h1", 1, "b");
        assert_eq!(lost.look(&state, 0, at(11)), [Requeue::File("c".into())]);
        assert_eq!(lost.requeued(), 1);
        // Queued again: another wait before it counts as lost again.
        assert!(lost.look(&state, 0, at(20)).is_empty());
        // b, running all along, is never lost, however long it runs; c is, again.
        assert_eq!(lost.look(&state, 0, at(21)), [Requeue::File("c".into())]);
        // A message in the queue starts every wait again.
        assert!(lost.look(&state, 1, at(22)).is_empty());
        assert!(lost.look(&state, 0, at(23)).is_empty());
        assert!(lost.look(&state, 0, at(32)).is_empty());
        assert_eq!(lost.look(&state, 0, at(33)), [Requeue::File("c".into())]);
    }

    #[test]
    fn a_host_that_has_started_nothing_yet_holds_off_the_watch_for_its_grace() {
        let mut state = files(&["a"]);
        let mut lost = LostFiles::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(lost.look(&state, 0, at(0)).is_empty());
        assert!(lost.look(&state, 0, at(20)).is_empty());
        // Past the grace, a host that never ran anything no longer holds it off.
        assert!(lost.look(&state, 0, at(30)).is_empty());
        assert_eq!(lost.look(&state, 0, at(40)), [Requeue::File("a".into())]);
        // No host works on the job: the engine stops the run, nothing is queued.
        state.listener_done("h1");
        assert!(lost.look(&state, 0, at(60)).is_empty());
    }

    #[test]
    fn a_lost_retry_is_queued_again_as_the_retry_it_was() {
        let mut state = files(&["a", "b"]).with_retries(RetryPolicy {
            retries: 2,
            budget: None,
        });
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        state.file_finished(result("b", "h1", FileStatus::Passed));
        state.file_started("h1", 1, "a");
        state.file_finished(result("a", "h1", FileStatus::Failed));
        assert_eq!(state.take_retries().len(), 1);
        let mut lost = LostFiles::new(Duration::from_secs(10));
        assert!(lost.look(&state, 0, at(0)).is_empty());
        let retry = Retry {
            unit: "a".into(),
            attempt: 2,
            avoid: Place {
                host: "h1".into(),
                worker_id: 1,
            },
        };
        assert_eq!(lost.look(&state, 0, at(10)), [Requeue::Retry(retry)]);
        // Running, the retry is not lost; its result settles the file.
        state.file_started("h1", 2, "a");
        assert!(lost.look(&state, 0, at(30)).is_empty());
        state.file_finished(result("a", "h1", FileStatus::Passed));
        assert!(state.all_settled());
        assert!(lost.look(&state, 0, at(60)).is_empty());
    }
}
