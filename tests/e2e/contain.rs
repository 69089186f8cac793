//! End to end for "nothing of a job outlives it on a host" against processes that try to
//! escape: a daemon that drops the job's environment tags and starts a session of its own
//! (`setsid env -i`), and one that double-forks and changes its process group. Whether the
//! listener's host gives each job a cgroup or only the worker manager's subreaper contains
//! it, and in a `--local` run, neither is left once the run has ended (not even as a
//! zombie), and the listener serves the next job. Where the host has job cgroups, even a
//! killed worker manager leaves nothing, and the next listener to start ends what the
//! jobs of a killed listener left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{eventually, none_left, sigkill, wait_for_file, Cluster, Project};
use serde_json::json;

const RUN_LIMIT: Duration = Duration::from_secs(120);
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// What the listener's log says when each job gets a cgroup, and when it does not.
const WITH_CGROUPS: &str = "contained by a cgroup of their own";
const WITHOUT_CGROUPS: &str = "no job cgroups";

/// A process a test file leaves behind: it writes its pid to `pid_file` and then runs
/// `sleep <marker>`, a duration no other test uses.
#[derive(Debug)]
struct Daemon {
    pid_file: PathBuf,
    marker: String,
}

impl Daemon {
    fn new(record: &Path, name: &str) -> Daemon {
        let unique = uuid::Uuid::new_v4().as_u128() % 1_000_000_000;
        Daemon {
            pid_file: record.join(format!("{name}.pid")),
            marker: format!("1004.{unique:09}"),
        }
    }

    /// The test file's lines that wait (bounded) until the daemon has written its pid.
    fn wait_lines(&self) -> String {
        format!(
            "i=0\nwhile [ ! -s '{file}' ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done\n",
            file = self.pid_file.display()
        )
    }

    /// The test file's lines that start a daemon with a clean environment, in a session of
    /// its own and outside the workspace (the issue's `( setsid env -i sh -c 'exec sleep
    /// 1004' & )`), and wait until it has written its pid.
    fn setsid_lines(&self) -> String {
        format!(
            "( setsid env -i sh -c 'cd /; echo $$ > {file}; exec sleep {marker}' & )\n{wait}",
            file = self.pid_file.display(),
            marker = self.marker,
            wait = self.wait_lines(),
        )
    }

    /// A test file that leaves a daemon like [`Daemon::setsid_lines`] and passes.
    fn setsid_test(&self) -> String {
        format!("{}exit 0\n", self.setsid_lines())
    }

    /// A test file whose daemon double-forks, drops the environment and moves to a process
    /// group of its own, then passes.
    fn double_fork_test(&self) -> String {
        format!(
            "( ( env -i perl -e 'setpgrp(0, 0); open(my $f, \">\", \"{file}\") or die; \
             print $f \"$$\\n\"; close $f; exec \"sleep\", \"{marker}\"' & ) & )\n{wait}exit 0\n",
            file = self.pid_file.display(),
            marker = self.marker,
            wait = self.wait_lines(),
        )
    }

    /// The daemon's pid, once it has written it.
    fn pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(&self.pid_file).ok()?;
        text.trim().parse().ok()
    }

    /// The daemon as it still is (`pid state command`), live or a zombie; `None` once gone
    /// (or before it has written its pid).
    fn left(&self) -> Option<String> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        // A pid the system gave to some other program since is not the daemon.
        let ours = ["sleep", "perl", "sh", "env", "setsid"].contains(&name);
        ours.then(|| format!("{pid} {} {name}", rest.chars().next().unwrap_or('?')))
    }

    /// Any live process still running the daemon's unique command.
    fn running(&self) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(command) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let command = String::from_utf8_lossy(&command).replace('\0', " ");
            if command.contains(&self.marker) {
                found.push(format!(
                    "{}: {command}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
        found
    }
}

/// Fails the test unless each of `daemons` has written its pid (the test file waited for
/// it): a daemon that never started proves nothing.
#[track_caller]
fn assert_started(daemons: &[Daemon]) {
    for daemon in daemons {
        assert!(
            daemon.pid().is_some(),
            "no pid in {}",
            daemon.pid_file.display()
        );
    }
}

/// Waits until nothing of `daemons` is left, live or zombie.
#[track_caller]
fn assert_gone(daemons: &[Daemon]) {
    assert_started(daemons);
    eventually(
        CLEANUP_LIMIT,
        "the job's escaped daemons to be gone, not even zombies",
        || {
            let mut left: Vec<String> = daemons.iter().filter_map(Daemon::left).collect();
            left.extend(daemons.iter().flat_map(Daemon::running));
            none_left(left)
        },
    );
}

/// Waits until none of `daemons` runs; a zombie may be left to init, which adopted it
/// when its job's worker manager died.
#[track_caller]
fn assert_killed(daemons: &[Daemon]) {
    assert_started(daemons);
    eventually(
        CLEANUP_LIMIT,
        "the job's escaped daemons to be killed",
        || {
            let mut left: Vec<String> = daemons
                .iter()
                .filter_map(Daemon::left)
                .filter(|left| !left.contains(" Z "))
                .collect();
            left.extend(daemons.iter().flat_map(Daemon::running));
            none_left(left)
        },
    );
}

/// Writes a test file of each escape into `project`; their daemons record in `record`.
fn escaping_suite(project: &Project, record: &Path) -> [Daemon; 2] {
    let setsid = Daemon::new(record, "setsid");
    let double_fork = Daemon::new(record, "double_fork");
    project.write("tests/setsid_test.sh", &setsid.setsid_test());
    project.write("tests/double_fork_test.sh", &double_fork.double_fork_test());
    [setsid, double_fork]
}

/// Whether this host can give jobs cgroups: a cgroup2 file system, and root to write it
/// (as the tests' listeners run).
fn host_has_job_cgroups() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts.lines().any(|line| line.contains(" - cgroup2 ")) && nix::unistd::geteuid().is_root()
}

/// Runs the escaping suite twice on one listener started with `env`: each time the run
/// passes and both daemons are gone once it has ended. Returns the listener's log.
fn daemons_do_not_outlive_their_jobs(name: &str, env: &[(&str, &str)]) -> String {
    let mut cluster = Cluster::new();
    cluster.start_listener_with_env(name, 2, json!({}), env);
    let project = cluster.project("escapes", json!({}));
    cluster.wait_for_listeners(&project, 1);
    // The second run: the listener serves the next job, contained the same way.
    for (done, round) in ["first", "second"].into_iter().enumerate() {
        let record = cluster.path().join(format!("record-{round}"));
        std::fs::create_dir_all(&record).unwrap();
        let daemons = escaping_suite(&project, &record);
        let run = project.start(&[], RUN_LIMIT);
        run.assert_report(0, &["2 files: 2 passed"]);
        eventually(
            CLEANUP_LIMIT,
            "the listener to be done with the job",
            || cluster.listener_log(name).matches("job finished").count() > done,
        );
        assert_gone(&daemons);
    }
    cluster.listener_log(name)
}

#[test]
fn escaped_daemons_do_not_outlive_the_job_with_the_subreaper_alone() {
    let log = daemons_do_not_outlive_their_jobs("reaping", &[("GORGON_NO_CGROUP", "1")]);
    assert!(log.contains(WITHOUT_CGROUPS), "{log}");
    assert!(log.contains("turned off by GORGON_NO_CGROUP"), "{log}");
    assert!(
        log.contains("killed processes the job left (found as descendants)"),
        "{log}"
    );
}

#[test]
fn escaped_daemons_do_not_outlive_the_job_with_what_the_host_offers() {
    let log = daemons_do_not_outlive_their_jobs("containing", &[]);
    let expected = if host_has_job_cgroups() {
        WITH_CGROUPS
    } else {
        WITHOUT_CGROUPS
    };
    assert!(log.contains(expected), "{log}");
}

/// A test file that starts a daemon like [`Daemon::setsid_test`], then SIGKILLs its worker
/// manager, which thus never gets to kill what its job left.
fn manager_killer(daemon: &Daemon) -> String {
    format!(
        "{daemon}\
         p=$$\n\
         while [ \"$p\" -gt 1 ]; do\n\
           if tr '\\0' ' ' < /proc/$p/cmdline | grep -q __manage-workers; then kill -9 $p; exit 0; fi\n\
           p=$(awk '{{print $4}}' /proc/$p/stat)\n\
         done\n\
         echo 'no worker manager found'; exit 3\n",
        daemon = daemon.setsid_lines(),
    )
}

/// On a host that gives jobs cgroups (else `None`, the test skipped): a cluster with a
/// 1-slot listener `name` and a project of one test file, `test_file` of its daemon.
fn one_daemon_job(
    name: &str,
    test_file: impl FnOnce(&Daemon) -> String,
) -> Option<(Cluster, Project, Daemon)> {
    if !host_has_job_cgroups() {
        eprintln!("skipped: this host gives jobs no cgroup (no cgroup2 file system, or not root)");
        return None;
    }
    let mut cluster = Cluster::new();
    cluster.start_listener(name, 1);
    let project = cluster.project(name, json!({}));
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    let daemon = Daemon::new(&record, "left");
    project.write("tests/daemon_test.sh", &test_file(&daemon));
    cluster.wait_for_listeners(&project, 1);
    Some((cluster, project, daemon))
}

#[test]
fn a_killed_worker_manager_leaves_nothing_where_the_job_has_a_cgroup() {
    let Some((cluster, project, daemon)) = one_daemon_job("killed", manager_killer) else {
        return;
    };
    let run = project.start(&[], RUN_LIMIT);
    // The manager died before the file's result was sent: the file has no result.
    assert_ne!(run.code, 0, "{run:?}");
    assert_killed(std::slice::from_ref(&daemon));
    let log = cluster.listener_log("killed");
    assert!(log.contains(WITH_CGROUPS), "{log}");
    assert!(log.contains("worker manager crashed"), "{log}");
    assert!(
        log.contains("killed processes the job left (found in its cgroup)"),
        "{log}"
    );
    // The listener serves the next job.
    let next = cluster.project("afterwards", json!({}));
    next.write("tests/a_test.sh", "exit 0\n");
    next.write("tests/b_test.sh", "exit 0\n");
    next.start(&[], RUN_LIMIT)
        .assert_report(0, &["2 files: 2 passed"]);
}

#[test]
fn escaped_daemons_do_not_outlive_a_local_run() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("project");
    let record = root.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let config = json!({
        "files": ["tests/**/*_test.sh"],
        "job": {"runner": {"command": "sh {file}"}},
    });
    std::fs::write(dir.join("gorgon.json"), config.to_string()).unwrap();
    let project = Project { dir };
    let daemons = escaping_suite(&project, &record);
    let run = project.start(&["--local", "-j", "2"], RUN_LIMIT);
    run.assert_report(0, &["2 files: 2 passed"]);
    assert_gone(&daemons);
}

#[test]
fn a_listener_that_starts_ends_what_the_jobs_of_a_killed_listener_left() {
    // The file leaves its daemon, then runs on until its host dies.
    let runs_on = |daemon: &Daemon| format!("{}exec sleep 60\n", daemon.setsid_lines());
    let Some((mut cluster, project, daemon)) = one_daemon_job("doomed", runs_on) else {
        return;
    };
    let run = project.spawn_start(&[], &[]);
    wait_for_file(&daemon.pid_file, Duration::from_secs(30));
    eventually(CLEANUP_LIMIT, "the daemon to write its pid", || {
        daemon.left().is_some()
    });
    // The whole host dies: the originator, then the listener with its manager, workers
    // and test; the daemon, outside the workspace and without tags, survives them.
    sigkill(run.pid());
    let _ = run.wait(RUN_LIMIT);
    cluster.kill_listener("doomed");
    let survivor = daemon.left().expect("the daemon outlived its listener");
    assert!(!survivor.contains(" Z "), "{survivor}");
    // The next listener to start on the host ends the dead listener's job cgroup.
    cluster.start_listener("heir", 1);
    assert_killed(std::slice::from_ref(&daemon));
}
