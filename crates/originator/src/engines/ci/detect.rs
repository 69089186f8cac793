//! Which CI build and node this is, from the usual CI variables (GitHub Actions, GitLab,
//! Buildkite, CircleCI) when `--build-id` and `--worker-id` are not given.

/// The build id the usual CI variables give: GitHub Actions' run id and attempt, GitLab's
/// pipeline, Buildkite's build, CircleCI's workflow.
pub fn build_id_from_env(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    if let Some(run) = var("GITHUB_RUN_ID") {
        let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".to_owned());
        return Some(format!("github-{run}-{attempt}"));
    }
    [
        ("CI_PIPELINE_ID", "gitlab"),
        ("BUILDKITE_BUILD_ID", "buildkite"),
        ("CIRCLE_WORKFLOW_ID", "circleci"),
    ]
    .into_iter()
    .find_map(|(name, ci)| var(name).map(|id| format!("{ci}-{id}")))
}

/// The node's name the usual CI variables give: the index of a parallel job (GitLab,
/// Buildkite, CircleCI). GitHub Actions has none: the host name serves there.
pub fn worker_id_from_env(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    [
        "CI_NODE_INDEX",
        "BUILDKITE_PARALLEL_JOB",
        "CIRCLE_NODE_INDEX",
    ]
    .into_iter()
    .find_map(|name| var(name).filter(|value| !value.trim().is_empty()))
    .map(|index| format!("node-{index}"))
}

pub(super) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
