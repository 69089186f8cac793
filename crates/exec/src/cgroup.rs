//! A job's cgroup (cgroup v2) on a host where this process may make one: a listener (or
//! a CI node) puts each job's worker manager in a cgroup of its own before the manager has
//! started anything, so that everything the job starts is born in it, and kills the whole
//! cgroup (`cgroup.kill`) at the job's end. Unlike the manager's subreaper, this also holds
//! when the manager itself was killed. Where there is no cgroup v2 hierarchy, or this
//! process may not write its own cgroup, or [`TURNED_OFF`] is set, jobs go without, and
//! [`Cgroups::available`] says so in the log once.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Set (to anything but `0` or nothing), job cgroups are not used even where they could
/// be: the worker manager's subreaper alone contains a job.
pub const TURNED_OFF: &str = "GORGON_NO_CGROUP";

/// How long a job's end waits for the processes of its killed cgroup to be gone.
const KILL_LIMIT: Duration = Duration::from_secs(5);

/// How often it looks while they die.
const KILL_POLL: Duration = Duration::from_millis(10);

/// How long the start of a listener, or a job whose end was abandoned, waits for a
/// cgroup's processes to be gone.
const SWEEP_LIMIT: Duration = Duration::from_secs(1);

/// Why job cgroups cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("turned off by GORGON_NO_CGROUP")]
    TurnedOff,
    #[error("this process is in no cgroup v2 hierarchy")]
    NoHierarchy,
    #[error("no cgroup2 file system is mounted")]
    NotMounted,
    #[error("cannot {what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} has no cgroup.kill (the kernel predates 5.14)", .path.display())]
    NoKill { path: PathBuf },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_owned();
    move |source| CgroupError::Io { what, path, source }
}

/// Where this process makes its jobs' cgroups: below its own cgroup.
#[derive(Debug)]
pub struct Cgroups {
    base: PathBuf,
}

static DETECTED: OnceLock<Option<Cgroups>> = OnceLock::new();

impl Cgroups {
    /// The job cgroups of this process, if it may make them: looked for once, and the
    /// answer (which containment a job gets) logged once.
    pub fn available() -> Option<&'static Cgroups> {
        DETECTED
            .get_or_init(|| match Cgroups::detect() {
                Ok(cgroups) => {
                    tracing::info!(
                        base = %cgroups.base.display(),
                        "each job's processes are contained by a cgroup of their own (killed at the job's end) and by the job's worker manager as their subreaper"
                    );
                    Some(cgroups)
                }
                Err(error) => {
                    tracing::info!(
                        reason = %error,
                        "no job cgroups: each job's processes are contained by the job's worker manager as their subreaper"
                    );
                    None
                }
            })
            .as_ref()
    }

    fn detect() -> Result<Cgroups, CgroupError> {
        let turned_off = std::env::var_os(TURNED_OFF).is_some_and(|v| !v.is_empty() && v != "0");
        if turned_off {
            return Err(CgroupError::TurnedOff);
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io_error("read", Path::new("/proc/self/cgroup")))?;
        let own = unified_path(&own).ok_or(CgroupError::NoHierarchy)?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_error("read", Path::new("/proc/self/mountinfo")))?;
        let (root, mount_point) = cgroup2_mount(&mounts).ok_or(CgroupError::NotMounted)?;
        let relative = own.strip_prefix(&root).unwrap_or(&own);
        let base = mount_point.join(relative.trim_start_matches('/'));
        // A trial cgroup: this process may make one, and the kernel can kill one.
        let probe = base.join(format!("gorgon-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(io_error("create", &probe))?;
        let killable = probe.join("cgroup.kill").exists();
        std::fs::remove_dir(&probe).map_err(io_error("remove", &probe))?;
        if !killable {
            return Err(CgroupError::NoKill { path: probe });
        }
        let cgroups = Cgroups { base };
        cgroups.sweep();
        Ok(cgroups)
    }

    /// Kills and removes the cgroups made here by a process that has since died without
    /// ending them (a listener killed with SIGKILL): what its jobs left goes now.
    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|name| name.strip_prefix("gorgon-"))
                .and_then(|rest| rest.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok());
            let Some(owner) = owner else {
                continue;
            };
            if !Path::new(&format!("/proc/{owner}")).exists() {
                tracing::info!(cgroup = %entry.path().display(), "ending the cgroup of a job whose listener died");
                end_cgroup(&entry.path(), SWEEP_LIMIT);
            }
        }
    }

    /// A cgroup of its own for job `name`, holding process `pid`, which must not have
    /// started anything yet (what it starts later is born in the cgroup).
    pub fn contain(&self, name: &str, pid: u32) -> Result<JobCgroup, CgroupError> {
        let path = self
            .base
            .join(format!("gorgon-{name}-{}", std::process::id()));
        match std::fs::create_dir(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io_error("create", &path)(error));
            }
            _ => {}
        }
        let cgroup = JobCgroup { path, done: false };
        let procs = cgroup.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(io_error("move a process into", &procs))?;
        Ok(cgroup)
    }
}

/// The cgroup v2 path of a `/proc/<pid>/cgroup` text (its `0::` line).
fn unified_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The root and mount point of the first cgroup2 mount of a `/proc/<pid>/mountinfo` text
/// (`id parent major:minor root mount-point options … - type source super-options`).
fn cgroup2_mount(text: &str) -> Option<(String, PathBuf)> {
    text.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace().skip(3);
        let root = fields.next()?.to_owned();
        let mount_point = PathBuf::from(fields.next()?);
        Some((root, mount_point))
    })
}

/// One job's cgroup, named `gorgon-<job>-<pid of this process>` (so that another process
/// can tell when it was abandoned). [`JobCgroup::kill`] ends it; dropped without that, it
/// is ended at once, with a shorter wait.
#[derive(Debug)]
pub struct JobCgroup {
    path: PathBuf,
    done: bool,
}

impl JobCgroup {
    /// The pids in the cgroup now.
    pub fn processes(&self) -> Vec<u32> {
        processes_in(&self.path)
    }

    /// Kills every process in the cgroup, waits (bounded) until they are gone and removes
    /// the cgroup; returns how many processes there were.
    pub async fn kill(mut self) -> usize {
        self.done = true;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || end_cgroup(&path, KILL_LIMIT))
            .await
            .unwrap_or(0)
    }
}

/// Kills every process in the cgroup at `path`, waits at most `limit` until they are gone,
/// and removes it; returns how many processes there were.
fn end_cgroup(path: &Path, limit: Duration) -> usize {
    let left = processes_in(path);
    if let Err(error) = std::fs::write(path.join("cgroup.kill"), "1") {
        tracing::warn!(cgroup = %path.display(), %error, "cannot kill the job's cgroup");
    }
    let populated = || {
        std::fs::read_to_string(path.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|line| line == "populated 1"))
    };
    let deadline = Instant::now() + limit;
    while populated() && Instant::now() < deadline {
        std::thread::sleep(KILL_POLL);
    }
    if !left.is_empty() {
        tracing::info!(
            count = left.len(),
            "killed processes the job left (found in its cgroup)"
        );
    }
    // Another process may have ended it first (two listeners sweeping at their start).
    match remove_cgroup(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(cgroup = %path.display(), %error, "cannot remove the job's cgroup");
        }
        _ => {}
    }
    left.len()
}

/// The pids in the cgroup at `path`.
fn processes_in(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Removes the cgroup at `path` and those the job made inside it (a listener under test,
/// say), deepest first: a cgroup with children cannot be removed.
fn remove_cgroup(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)?.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_cgroup(&entry.path())?;
        }
    }
    std::fs::remove_dir(path)
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        if !self.done {
            end_cgroup(&self.path, SWEEP_LIMIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_hierarchy_is_found_in_a_hybrid_setup() {
        let own = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/gorgon.service\n";
        assert_eq!(
            unified_path(own).as_deref(),
            Some("/system.slice/gorgon.service")
        );
        assert_eq!(unified_path("4:memory:/x\n"), None);
        let mounts = "\
            30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            35 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(("/".to_owned(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let optional = "36 25 0:32 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(optional),
            Some(("/".to_owned(), PathBuf::from("/sys/fs/cgroup")))
        );
        assert_eq!(
            cgroup2_mount("30 25 0:26 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[tokio::test]
    async fn a_job_cgroup_holds_all_its_process_starts_and_kills_it_at_once() {
        let Some(cgroups) = Cgroups::available() else {
            eprintln!("skipped: this host gives jobs no cgroup");
            return;
        };
        // It starts nothing before it reads a line: all it starts is born in the cgroup,
        // even what leaves its session.
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("read go; ( setsid sleep 1009 & ); exec sleep 1009")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let name = format!("test-{}", std::process::id());
        let cgroup = cgroups.contain(&name, child.id().unwrap()).unwrap();
        let path = cgroup.path.clone();
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while cgroup.processes().len() < 2 {
            assert!(Instant::now() < deadline, "{:?}", cgroup.processes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let escaped: Vec<u32> = cgroup
            .processes()
            .into_iter()
            .filter(|&pid| Some(pid) != child.id())
            .collect();
        assert_eq!(cgroup.kill().await, 2);
        let status = child.wait().await.unwrap();
        assert!(status.code().is_none(), "killed by a signal: {status:?}");
        for pid in escaped {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "the escaped sleep was killed: {stat}"
            );
        }
        assert!(!path.exists(), "the cgroup was removed");
    }
}
