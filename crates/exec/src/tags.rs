//! The process tags of a job: the environment variables that its tests, callbacks and
//! workers carry (`GORGON_JOB_ID`, `GORGON_HOST`, `GORGON_WORKSPACE`, `GORGON_WORKER_ID`).
//! They are documented for users' commands, and they are how what a job left behind is found
//! and killed (`procs`), so every place that sets them and every place that looks for them
//! takes the names and values from here.

use std::path::Path;

/// The job's id.
pub const JOB_ID: &str = "GORGON_JOB_ID";
/// The name of the host the process runs on (the listener's name, or the originator's host).
pub const HOST: &str = "GORGON_HOST";
/// The folder the job's tree is in on this host.
pub const WORKSPACE: &str = "GORGON_WORKSPACE";
/// The worker the process belongs to (1, 2, …).
pub const WORKER_ID: &str = "GORGON_WORKER_ID";

/// The tags of a job's processes on one host, optionally narrowed to a workspace and a
/// worker. Set on a process (`pairs`), they mark it and everything it starts; looked for
/// (`procs::tagged_processes`), they find exactly the processes that carry all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTags {
    job_id: String,
    host: String,
    workspace: Option<String>,
    worker_id: Option<u32>,
}

impl JobTags {
    /// The tags of job `job_id` on `host`.
    pub fn new(job_id: impl ToString, host: impl Into<String>) -> JobTags {
        JobTags {
            job_id: job_id.to_string(),
            host: host.into(),
            workspace: None,
            worker_id: None,
        }
    }

    /// Also tagged with the job's workspace.
    pub fn in_workspace(mut self, workspace: &Path) -> JobTags {
        self.workspace = Some(workspace.display().to_string());
        self
    }

    /// Also tagged with the worker the process belongs to.
    pub fn of_worker(mut self, worker_id: u32) -> JobTags {
        self.worker_id = Some(worker_id);
        self
    }

    /// The `(name, value)` environment pairs of these tags.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = vec![(JOB_ID, self.job_id.clone()), (HOST, self.host.clone())];
        if let Some(workspace) = &self.workspace {
            pairs.push((WORKSPACE, workspace.clone()));
        }
        if let Some(worker_id) = self.worker_id {
            pairs.push((WORKER_ID, worker_id.to_string()));
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_the_documented_variables_with_their_values() {
        let tags = JobTags::new("job-1", "alpha");
        assert_eq!(
            tags.pairs(),
            [
                ("GORGON_JOB_ID", "job-1".to_string()),
                ("GORGON_HOST", "alpha".to_string())
            ]
        );
        let narrowed = tags.in_workspace(Path::new("/ws/job-1")).of_worker(3);
        assert_eq!(
            narrowed.pairs(),
            [
                ("GORGON_JOB_ID", "job-1".to_string()),
                ("GORGON_HOST", "alpha".to_string()),
                ("GORGON_WORKSPACE", "/ws/job-1".to_string()),
                ("GORGON_WORKER_ID", "3".to_string())
            ]
        );
    }
}
