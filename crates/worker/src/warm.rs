//! Warm runners: a listener keeps one process per built-in runner kind and interpreter that
//! has loaded the interpreter and the test framework but nothing of any project, and every
//! worker of a later job forks its persistent runner from it instead of booting one, so that
//! a small job pays no framework boot. The process and its protocol (a Unix socket, the
//! runner's stdin, stdout and stderr sent with SCM_RIGHTS, "pid N" then "status RAW") are
//! described in `docs/runner-protocol.md`, "Warm runners".

use std::io::{IoSlice, Write as _};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use gorgon_exec::tail::{relay, LineTail};
use gorgon_protocol::{RunnerKind, RunnerSettings};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;

use crate::builtin;

/// How long a warm runner may take to fork a runner before the worker boots one itself.
const FORK_LIMIT: Duration = Duration::from_secs(5);

/// How long a listener waits before starting a warm runner again after one failed to boot.
const RETRY_FAILED_BOOT: Duration = Duration::from_secs(600);

/// Environment variables that an interpreter reads when it starts: a job that sets any of
/// them gets runners booted afresh, since a warm runner started without them.
const STARTUP_VARIABLES: &[&str] = &["RUBY", "GEM_", "BUNDLE", "PYTHON", "LD_", "PATH"];

/// Which warm runner serves a job: its built-in runner kind and interpreter command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmKey {
    pub kind: RunnerKind,
    /// The interpreter, as `job.runner.command` names it ("" for the default).
    pub interpreter: String,
}

impl WarmKey {
    /// The key of a job's runner, or `None` when it cannot run warm: not a built-in runner,
    /// or an interpreter command with arguments (`bundle exec ruby`, `ruby -r./helper`),
    /// whose start-up may load the project or depend on where it starts.
    pub fn of(settings: &RunnerSettings) -> Option<WarmKey> {
        if !builtin::is_built_in(settings.kind) {
            return None;
        }
        let interpreter = settings.command.trim();
        if interpreter.split_whitespace().count() > 1 {
            return None;
        }
        Some(WarmKey {
            kind: settings.kind,
            interpreter: interpreter.to_owned(),
        })
    }
}

/// Whether a runner with these extra environment variables may fork from a warm runner.
pub fn environment_allows_warm(env: &[(String, String)]) -> bool {
    !env.iter().any(|(name, _)| {
        STARTUP_VARIABLES
            .iter()
            .any(|prefix| name.starts_with(prefix))
    })
}

/// A warm runner kept by a listener.
pub struct WarmProcess {
    pub key: WarmKey,
    child: Child,
    /// Kept open while the process serves; closing it asks it to end once its forks end.
    stdin: Option<ChildStdin>,
    socket: PathBuf,
    ready: watch::Receiver<bool>,
    started: std::time::Instant,
    /// Holds the socket and the script.
    _dir: tempfile::TempDir,
}

impl WarmProcess {
    /// Starts the warm runner of `key`; it serves once it says "ready". It works in a
    /// folder of its own, outside every workspace, until a fork moves into one.
    pub fn start(key: WarmKey) -> std::io::Result<WarmProcess> {
        let dir = tempfile::Builder::new().prefix("gorgon-warm-").tempdir()?;
        let socket = dir.path().join("warm.sock");
        let command = builtin::write_warm_runner(key.kind, &key.interpreter, dir.path(), &socket)?
            .ok_or_else(|| std::io::Error::other("the runner kind has no warm runner"))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let (said_ready, ready) = watch::channel(false);
        let tail = LineTail::default();
        if let Some(stdout) = child.stdout.take() {
            relay(stdout, tail.clone(), move |line| {
                if line.trim() == "ready" {
                    let _ = said_ready.send(true);
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let kind = key.kind;
            relay(stderr, tail, move |line| {
                tracing::info!(runner = ?kind, "the warm runner said: {line}");
            });
        }
        Ok(WarmProcess {
            key,
            stdin: child.stdin.take(),
            child,
            socket,
            ready,
            started: std::time::Instant::now(),
            _dir: dir,
        })
    }

    /// It ended without ever serving (the interpreter or the framework is missing, say)
    /// less than `RETRY_FAILED_BOOT` ago: starting another now would fail the same way.
    pub fn failed_recently(&mut self) -> bool {
        self.has_ended() && !*self.ready.borrow() && self.started.elapsed() < RETRY_FAILED_BOOT
    }

    /// Its socket, when it serves: it said "ready" and has not ended.
    pub fn socket_if_serving(&mut self) -> Option<PathBuf> {
        (!self.has_ended() && *self.ready.borrow()).then(|| self.socket.clone())
    }

    /// Whether it has ended.
    pub fn has_ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks it to end once the runners forked from it have ended (a job may still use it),
    /// and reaps it then.
    pub fn retire(mut self) {
        drop(self.stdin.take());
        tokio::spawn(async move {
            let _ = self.child.wait().await;
            drop(self._dir);
        });
    }
}

/// The worker's ends of a forked runner's standard streams.
pub struct RunnerPipes {
    pub stdin: pipe::Sender,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// A persistent runner forked from a warm runner, and its end as the warm runner reports it
/// (it is the warm runner's child, not the worker's).
pub struct ForkedRunner {
    pub pid: Pid,
    status: watch::Receiver<Option<ExitStatus>>,
    /// The connection to the warm runner: closing it kills the runner's group.
    _connection: tokio::net::unix::OwnedWriteHalf,
}

impl ForkedRunner {
    /// Waits for the runner to end; an error if the warm runner went away first.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self.status.wait_for(Option::is_some).await {
            Ok(status) => Ok(status.expect("waited for a status")),
            Err(_) => Err(std::io::Error::other(
                "the warm runner it was forked from ended first",
            )),
        }
    }
}

/// Asks the warm runner at `socket` to fork a runner that runs `script` in `cwd` with
/// exactly `env`.
pub async fn fork_runner(
    socket: &Path,
    cwd: &Path,
    env: Vec<(String, String)>,
    script: &Path,
) -> std::io::Result<(ForkedRunner, RunnerPipes)> {
    let (stdin_reader, stdin_writer) = std::io::pipe()?;
    let (stdout_reader, stdout_writer) = std::io::pipe()?;
    let (stderr_reader, stderr_writer) = std::io::pipe()?;
    let request = serde_json::json!({
        "cwd": cwd,
        "env": env.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "script": script,
    });
    let mut line = serde_json::to_vec(&request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let child_ends: [OwnedFd; 3] = [
        stdin_reader.into(),
        stdout_writer.into(),
        stderr_writer.into(),
    ];
    let raw: Vec<RawFd> = child_ends.iter().map(AsRawFd::as_raw_fd).collect();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let sent = sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[IoSlice::new(&line)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    stream.write_all(&line[sent..])?;
    // The warm runner holds them now; the runner's ends stay with the runner only.
    drop(child_ends);
    stream.set_nonblocking(true)?;
    let (read, write) = tokio::net::UnixStream::from_std(stream)?.into_split();
    let mut lines = BufReader::new(read).lines();
    let first = tokio::time::timeout(FORK_LIMIT, lines.next_line())
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the warm runner did not answer",
            )
        })??
        .ok_or_else(|| std::io::Error::other("the warm runner closed the connection"))?;
    let pid = first
        .strip_prefix("pid ")
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .ok_or_else(|| std::io::Error::other(format!("the warm runner answered {first:?}")))?;
    let (report, status) = watch::channel(None);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let raw = line
                .strip_prefix("status ")
                .and_then(|raw| raw.trim().parse::<i32>().ok());
            if let Some(raw) = raw {
                let _ = report.send(Some(ExitStatus::from_raw(raw)));
                return;
            }
        }
    });
    let pipes = RunnerPipes {
        stdin: pipe::Sender::from_owned_fd(stdin_writer.into())?,
        stdout: pipe::Receiver::from_owned_fd(stdout_reader.into())?,
        stderr: pipe::Receiver::from_owned_fd(stderr_reader.into())?,
    };
    let forked = ForkedRunner {
        pid: Pid::from_raw(pid),
        status,
        _connection: write,
    };
    Ok((forked, pipes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(kind: RunnerKind, command: &str) -> RunnerSettings {
        let mut settings: RunnerSettings = serde_json::from_value(serde_json::json!({
            "command": command
        }))
        .unwrap();
        settings.kind = kind;
        settings
    }

    #[test]
    fn only_built_in_runners_started_by_a_bare_interpreter_run_warm() {
        let key = WarmKey::of(&runner(RunnerKind::Rspec, "")).unwrap();
        assert_eq!(key.interpreter, "");
        let key = WarmKey::of(&runner(RunnerKind::Pytest, " /usr/bin/python3 ")).unwrap();
        assert_eq!(key.interpreter, "/usr/bin/python3");
        assert!(WarmKey::of(&runner(RunnerKind::Rspec, "bundle exec ruby")).is_none());
        assert!(WarmKey::of(&runner(RunnerKind::Minitest, "ruby -r./test/env")).is_none());
        assert!(WarmKey::of(&runner(RunnerKind::Command, "sh {file}")).is_none());
        assert!(WarmKey::of(&runner(RunnerKind::Persistent, "./my-runner")).is_none());
        assert_ne!(
            WarmKey::of(&runner(RunnerKind::Rspec, "")),
            WarmKey::of(&runner(RunnerKind::Minitest, ""))
        );
    }

    #[tokio::test]
    async fn a_warm_runner_that_cannot_boot_is_not_started_again_at_once() {
        let key = WarmKey {
            kind: RunnerKind::Rspec,
            interpreter: "/nonexistent/ruby".into(),
        };
        let mut warm = WarmProcess::start(key).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !warm.has_ended() {
            assert!(
                std::time::Instant::now() < deadline,
                "the shell did not end"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(warm.failed_recently());
        assert_eq!(warm.socket_if_serving(), None);
        // Nothing answers on its socket, so a worker falls back to booting.
        let dir = tempfile::tempdir().unwrap();
        let forked = fork_runner(&warm.socket, dir.path(), Vec::new(), Path::new("x.rb")).await;
        assert!(forked.is_err());
    }

    #[test]
    fn an_environment_that_changes_how_the_interpreter_starts_runs_cold() {
        let pair = |name: &str| vec![(name.to_owned(), "x".to_owned())];
        assert!(environment_allows_warm(&pair("GORGON_JOB_ID")));
        assert!(environment_allows_warm(&pair("DATABASE_URL")));
        for name in [
            "RUBYOPT",
            "RUBYLIB",
            "GEM_HOME",
            "BUNDLE_GEMFILE",
            "PYTHONPATH",
            "LD_PRELOAD",
            "PATH",
        ] {
            assert!(!environment_allows_warm(&pair(name)), "{name}");
        }
    }
}
