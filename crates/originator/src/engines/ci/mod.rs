//! CI-native runs: the identical, short-lived machines of one CI build each run
//! `gorgon work --build-id ID` in their own checkout, and one step runs `gorgon report
//! --build-id ID`. There is no listener, file server or sync: a node's checkout is its
//! workspace, and it runs a worker manager there as a listener would (same pool, runners,
//! callbacks, timeouts and retries).
//!
//! The broker holds the build. The first node to take the build's lock (an exclusive queue)
//! fills the files queue once, in history order, and writes the build's definition (its
//! units and the digest of each test file and of the configuration) as the first message of
//! the build's **log**, a RabbitMQ stream. Every node's manager publishes its replies to the
//! log, and every node and reporter reads the log from its start, through the same state
//! machine as `gorgon start` (`JobState`, the run core): they all see one order of events
//! and reach the same verdicts, so a node that joins late, or a reporter that starts after
//! the nodes finished, knows everything. The node whose result calls for a retry queues it;
//! every node answers a redelivered file's `RetryCheck`; the first node to see every file
//! settled deletes the files queue, which ends every manager. The reporter writes what
//! `gorgon start` writes and exits with the same code, then removes the build's queues and
//! leaves a marker that the build is over, which a node that starts later finds.

use std::time::Duration;

use crate::settings::StartOptions;

mod build;
mod detect;
mod fill;
mod follow;
mod node;
mod report;

pub use detect::{build_id_from_env, worker_id_from_env};
#[cfg(test)]
use fill::differences;
pub use node::work;
pub use report::report;

/// The environment variable that names the broker of a CI build, as `connection.url` does.
pub const BROKER_URL_VARIABLE: &str = "GORGON_BROKER_URL";

/// How long the build's log keeps its messages: a reporter must start within this.
pub const LOG_MAX_AGE: &str = "1D";

/// How long the build's files queue and markers outlive their last use.
const BUILD_QUEUE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// How long a node waits for another to finish filling the files queue.
const FILL_WAIT: Duration = Duration::from_secs(60);

/// How often a reporter looks whether any node still works on the build.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// What `gorgon work` and `gorgon report --build-id` were asked for.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// `--build-id`; without it, from the CI's environment ([`build_id_from_env`]).
    pub build_id: Option<String>,
    /// `--worker-id`: the node's name in the results; without it, from the CI's
    /// environment, else the host name.
    pub worker_id: Option<String>,
    /// `-j N`: how many workers (default: the cores).
    pub jobs: Option<u32>,
    /// `gorgon work --report`: this node also waits for the build and reports it.
    pub report: bool,
    /// The configuration and the report's outputs (JUnit, events, HTML, quiet).
    pub start: StartOptions,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn the_build_and_node_come_from_the_usual_ci_variables() {
        let github = [("GITHUB_RUN_ID", "9001"), ("GITHUB_RUN_ATTEMPT", "2")];
        assert_eq!(
            build_id_from_env(vars(&github)).as_deref(),
            Some("github-9001-2")
        );
        assert_eq!(
            build_id_from_env(vars(&[("GITHUB_RUN_ID", "9001")])).as_deref(),
            Some("github-9001-1")
        );
        let gitlab = [("CI_PIPELINE_ID", "77"), ("CI_NODE_INDEX", "3")];
        assert_eq!(
            build_id_from_env(vars(&gitlab)).as_deref(),
            Some("gitlab-77")
        );
        assert_eq!(worker_id_from_env(vars(&gitlab)).as_deref(), Some("node-3"));
        let buildkite = [
            ("BUILDKITE_BUILD_ID", "b-1"),
            ("BUILDKITE_PARALLEL_JOB", "0"),
        ];
        assert_eq!(
            build_id_from_env(vars(&buildkite)).as_deref(),
            Some("buildkite-b-1")
        );
        assert_eq!(
            worker_id_from_env(vars(&buildkite)).as_deref(),
            Some("node-0")
        );
        let circle = [("CIRCLE_WORKFLOW_ID", "w"), ("CIRCLE_NODE_INDEX", "1")];
        assert_eq!(
            build_id_from_env(vars(&circle)).as_deref(),
            Some("circleci-w")
        );
        assert_eq!(build_id_from_env(vars(&[("GITHUB_RUN_ID", " ")])), None);
        assert_eq!(build_id_from_env(vars(&[])), None);
        assert_eq!(worker_id_from_env(vars(&github)), None);
    }

    #[test]
    fn a_checkout_that_differs_is_told_file_by_file() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let build = map(&[("a_test.sh", "1"), ("b_test.sh", "2"), ("gorgon.json", "3")]);
        assert!(differences(&build, &build).is_empty());
        let here = map(&[("a_test.sh", "1"), ("b_test.sh", "X"), ("c_test.sh", "4")]);
        assert_eq!(
            differences(&build, &here),
            [
                "b_test.sh differs",
                "gorgon.json is missing here",
                "c_test.sh is not in the build"
            ]
        );
    }
}
