//! Finding and killing the processes of a job by the environment they inherit. Workers,
//! tests and callbacks run with the job's [tags](crate::tags) set, and their descendants
//! inherit them, so a process that escaped its process group (a daemonized helper, or the
//! test of a worker that was SIGKILLed) can still be found and stopped.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::tags::JobTags;

/// The pids of live processes whose environment holds every pair of `tags`.
pub fn tagged_processes(tags: &JobTags) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let wanted: Vec<Vec<u8>> = tags
        .pairs()
        .into_iter()
        .map(|(name, value)| format!("{name}={value}").into_bytes())
        .collect();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|&pid| {
            environment_holds(
                &Path::new("/proc").join(pid.to_string()).join("environ"),
                &wanted,
            )
        })
        .collect()
}

fn environment_holds(path: &Path, wanted: &[Vec<u8>]) -> bool {
    let Ok(environment) = std::fs::read(path) else {
        return false;
    };
    wanted.iter().all(|pair| {
        environment
            .split(|&b| b == 0)
            .any(|entry| entry == pair.as_slice())
    })
}

/// Sends SIGKILL to every process tagged with `tags`; returns how many there were. Used
/// once a job (or a dead worker's share of it) is over, when nothing of it may survive.
pub fn kill_tagged(tags: &JobTags) -> usize {
    let pids = tagged_processes(tags);
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if !pids.is_empty() {
        tracing::info!(
            count = pids.len(),
            ?tags,
            "killed processes left over by the job"
        );
    }
    pids.len()
}

/// The command that starts worker `worker_id` of job `job_id` on `host`: `program args` in
/// `workspace`, in its own process group, with piped stdin, stdout and stderr, and tagged
/// like the job's tests so that what a crashed worker leaves behind can be found
/// ([`kill_worker_leftovers`]). No `kill_on_drop`: a SIGKILL would stop the worker before it
/// could kill its running test; a worker whose parent dies sees its stdin end and stops the
/// test itself.
pub fn worker_command(
    program: &Path,
    args: &[&str],
    workspace: &Path,
    (job_id, host, worker_id): (&str, &str, u32),
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(workspace)
        .envs(worker_tags(job_id, host, worker_id).pairs())
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// Kills what a crashed worker left running (its test may have outlived it in a process
/// group of its own); returns how many processes there were.
pub fn kill_worker_leftovers(job_id: &str, host: &str, worker_id: u32) -> usize {
    kill_tagged(&worker_tags(job_id, host, worker_id))
}

/// What a worker carries, and so everything it starts: the tags that find its leftovers.
fn worker_tags(job_id: &str, host: &str, worker_id: u32) -> JobTags {
    JobTags::new(job_id, host).of_worker(worker_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn finds_and_kills_only_tagged_processes() {
        let host = "procs-test-host";
        let tags = JobTags::new(format!("procs-test-{}", std::process::id()), host);
        let mut tagged = std::process::Command::new("sleep")
            .arg("30")
            .envs(tags.pairs())
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .envs(JobTags::new("someone-else", host).pairs())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tagged_processes(&tags).contains(&(tagged.id() as i32)) {
            assert!(
                Instant::now() < deadline,
                "the tagged process was not found"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(kill_tagged(&tags), 1);
        assert!(tagged.wait().unwrap().code().is_none());
        assert!(
            other.try_wait().unwrap().is_none(),
            "an untagged process was killed"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
