//! The variables test suites already read to tell a host's workers apart: parallel_tests'
//! (`TEST_ENV_NUMBER`, `PARALLEL_TEST_GROUPS`), which a Rails `database.yml` reads to name
//! each worker's database, and pytest-xdist's (`PYTEST_XDIST_WORKER`,
//! `PYTEST_XDIST_WORKER_COUNT`), which conftests read for the same purpose. Every worker of
//! a host carries them, with `GORGON_WORKER_ID`, in its callbacks and its tests.

/// parallel_tests' number of the worker: empty for a host's first worker, then `2`, `3`, …
pub const TEST_ENV_NUMBER: &str = "TEST_ENV_NUMBER";
/// parallel_tests' count of workers: the host's worker count.
pub const PARALLEL_TEST_GROUPS: &str = "PARALLEL_TEST_GROUPS";
/// parallel_tests' list of its running test processes, which a suite that loaded
/// parallel_tests reads in its last worker (`TEST_ENV_NUMBER` equal to
/// `PARALLEL_TEST_GROUPS`) to wait for the others: SimpleCov does, before it merges its
/// result, and raises `KeyError` when the variable is missing, losing that worker's
/// coverage. A host's workers all end at the job's end, so the list is always empty:
/// `/dev/null`.
pub const PARALLEL_PID_FILE: &str = "PARALLEL_PID_FILE";
/// pytest-xdist's name of the worker: `gw0`, `gw1`, …
pub const PYTEST_XDIST_WORKER: &str = "PYTEST_XDIST_WORKER";
/// pytest-xdist's count of workers.
pub const PYTEST_XDIST_WORKER_COUNT: &str = "PYTEST_XDIST_WORKER_COUNT";

/// The conventions' `(name, value)` environment pairs of worker `worker_id` (1-based) of a
/// host with `workers` workers. `first_is_1` numbers the first worker `1` instead of
/// leaving `TEST_ENV_NUMBER` empty (parallel_tests' `--first-is-1`, `job.first_is_1`).
pub fn worker_pairs(worker_id: u32, workers: u32, first_is_1: bool) -> Vec<(&'static str, String)> {
    let test_env_number = if worker_id == 1 && !first_is_1 {
        String::new()
    } else {
        worker_id.to_string()
    };
    vec![
        (TEST_ENV_NUMBER, test_env_number),
        (PARALLEL_TEST_GROUPS, workers.to_string()),
        (PARALLEL_PID_FILE, "/dev/null".to_owned()),
        (
            PYTEST_XDIST_WORKER,
            format!("gw{}", worker_id.saturating_sub(1)),
        ),
        (PYTEST_XDIST_WORKER_COUNT, workers.to_string()),
    ]
}

/// The conventions' pairs of a host's own commands (the worker manager's callbacks,
/// `before_creating_workers` and `after_creating_workers`): the host's worker count, which
/// says how many databases to make (`rake "parallel:setup[$PARALLEL_TEST_GROUPS]"`). No
/// worker's number: they belong to no worker.
pub fn host_pairs(workers: u32) -> Vec<(&'static str, String)> {
    vec![
        (PARALLEL_TEST_GROUPS, workers.to_string()),
        (PYTEST_XDIST_WORKER_COUNT, workers.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(pairs: &[(&'static str, String)], name: &str) -> String {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_else(|| panic!("{name} is missing"))
    }

    #[test]
    fn the_first_worker_has_an_empty_test_env_number_as_in_parallel_tests() {
        let numbers: Vec<String> = (1..=3)
            .map(|id| value(&worker_pairs(id, 3, false), TEST_ENV_NUMBER))
            .collect();
        assert_eq!(numbers, ["", "2", "3"]);
    }

    #[test]
    fn first_is_1_numbers_every_worker() {
        let numbers: Vec<String> = (1..=2)
            .map(|id| value(&worker_pairs(id, 2, true), TEST_ENV_NUMBER))
            .collect();
        assert_eq!(numbers, ["1", "2"]);
    }

    #[test]
    fn a_hosts_own_commands_get_its_worker_count_and_no_worker_number() {
        let pairs = host_pairs(3);
        assert_eq!(value(&pairs, PARALLEL_TEST_GROUPS), "3");
        assert_eq!(value(&pairs, PYTEST_XDIST_WORKER_COUNT), "3");
        assert!(!pairs.iter().any(|(name, _)| *name == TEST_ENV_NUMBER));
    }

    #[test]
    fn counts_and_xdist_names_follow_the_host_and_the_worker() {
        let pairs = worker_pairs(2, 4, false);
        assert_eq!(value(&pairs, PARALLEL_TEST_GROUPS), "4");
        assert_eq!(value(&pairs, PARALLEL_PID_FILE), "/dev/null");
        assert_eq!(value(&pairs, PYTEST_XDIST_WORKER), "gw1");
        assert_eq!(value(&pairs, PYTEST_XDIST_WORKER_COUNT), "4");
        assert_eq!(
            value(&worker_pairs(1, 4, false), PYTEST_XDIST_WORKER),
            "gw0"
        );
    }
}
