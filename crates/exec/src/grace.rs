//! How long each process of a job gets between SIGTERM and SIGKILL when it is stopped, one
//! level inside the next: a test file's processes (its command, or the persistent runner
//! running it) get [`TEST`], the worker that runs them gets [`WORKER`] to give its test that
//! time and exit, and the worker manager gets [`MANAGER`] to stop its workers so.

use std::time::Duration;

/// What runs a test file: on a timeout, and when its worker is stopped (a cancel, a signal).
pub const TEST: Duration = Duration::from_secs(2);

/// A worker: [`TEST`] for its test, and a second to report and exit.
pub const WORKER: Duration = Duration::from_secs(3);

/// A worker manager: [`WORKER`] for its workers, and a second to exit.
pub const MANAGER: Duration = Duration::from_secs(4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_outlasts_the_one_inside_it() {
        assert!(
            TEST < WORKER,
            "a worker is killed before its test's grace ends"
        );
        assert!(
            WORKER < MANAGER,
            "a manager is killed before its workers' grace ends"
        );
    }
}
