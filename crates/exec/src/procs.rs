//! Finding and killing the processes of a job by the environment they inherit. Tests and
//! callbacks run with `GORGON_JOB_ID` (and, in workers, `GORGON_WORKER_ID`) set, and their
//! descendants inherit both, so a process that escaped its process group (a daemonized
//! helper, or the test of a worker that was SIGKILLed) can still be found and stopped.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pids of live processes whose environment holds every `NAME=value` pair of `tags`.
pub fn tagged_processes(tags: &[(&str, &str)]) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let wanted: Vec<Vec<u8>> = tags
        .iter()
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
pub fn kill_tagged(tags: &[(&str, &str)]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn finds_and_kills_only_tagged_processes() {
        let tag = format!("procs-test-{}", std::process::id());
        let mut tagged = std::process::Command::new("sleep")
            .arg("30")
            .env("GORGON_JOB_ID", &tag)
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .env("GORGON_JOB_ID", "someone-else")
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tagged_processes(&[("GORGON_JOB_ID", &tag)]).contains(&(tagged.id() as i32)) {
            assert!(
                Instant::now() < deadline,
                "the tagged process was not found"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(kill_tagged(&[("GORGON_JOB_ID", &tag)]), 1);
        assert!(tagged.wait().unwrap().code().is_none());
        assert!(
            other.try_wait().unwrap().is_none(),
            "an untagged process was killed"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
