//! Shell commands in their own process groups, with combined output captured into an
//! [`OutputBuffer`], and the grace-then-SIGKILL way of stopping a group.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::grace;
use crate::output::OutputBuffer;

/// How long output is still read after the command itself has exited, for grandchildren
/// that keep its stdout open (a daemon started by a callback, say).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// A shell command (started without a shell when the shell would only split it into words),
/// its working directory, extra environment and time limit.
#[derive(Clone, Debug)]
pub struct ShellCommand {
    pub command: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Past this, the command's process group is stopped and the outcome is a time-out.
    pub timeout: Option<Duration>,
    /// Where the command's process group is counted while it runs.
    pub running: RunningGroups,
    /// Gets a copy of every chunk of output as it is read (live output).
    pub output_tap: Option<OutputTap>,
}

/// Where a copy of a running command's output goes, chunk by chunk.
pub type OutputTap = tokio::sync::mpsc::UnboundedSender<Vec<u8>>;

/// How a command ended.
#[derive(Debug)]
pub struct CommandOutcome {
    /// `None` when the command could not be started, or was stopped.
    pub status: Option<ExitStatus>,
    /// `exit status 1`, `killed by signal 9 (SIGKILL)`, `could not start: ...`.
    pub description: String,
    /// Combined stdout and stderr, head and tail kept.
    pub output: String,
    pub seconds: f64,
    /// The command ran past its time limit and was stopped.
    pub timed_out: bool,
}

impl CommandOutcome {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The command died by a signal, or never ran.
    pub fn crashed(&self) -> bool {
        self.status.is_none_or(|s| s.signal().is_some())
    }
}

/// Describes an exit status the way the reports show it.
pub fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("killed by signal {number} ({})", signal.as_str()),
            Err(_) => format!("killed by signal {number}"),
        },
        None => format!("{status}"),
    }
}

/// A child's output pipe, stdout or stderr.
pub type OutputPipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// Takes the child's piped stdout and stderr, to be read concurrently.
pub fn take_output_pipes(child: &mut tokio::process::Child) -> Vec<OutputPipe> {
    let stdout = child.stdout.take().map(|p| Box::new(p) as OutputPipe);
    let stderr = child.stderr.take().map(|p| Box::new(p) as OutputPipe);
    stdout.into_iter().chain(stderr).collect()
}

/// The process groups that the commands sharing it run in right now (a worker's tests, its
/// persistent runner). A worker that is stopped asks them all to end with
/// [`RunningGroups::terminate`] while their runs go on, and kills what is left after
/// [`grace::TEST`] by dropping the runs.
#[derive(Clone, Debug, Default)]
pub struct RunningGroups(Arc<Mutex<BTreeSet<i32>>>);

impl RunningGroups {
    /// Counts `group` in while its command runs.
    pub fn add(&self, group: Pid) {
        self.lock().insert(group.as_raw());
    }

    /// `group` has ended, or is being killed.
    pub fn remove(&self, group: Pid) {
        self.lock().remove(&group.as_raw());
    }

    /// Sends SIGTERM to every group that runs now; how many there were.
    pub fn terminate(&self) -> usize {
        let groups = self.lock().clone();
        for &group in &groups {
            let _ = killpg(Pid::from_raw(group), Signal::SIGTERM);
        }
        groups.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        // A poisoned lock only means a holder panicked; the set is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Kills the process group on drop unless disarmed, so that a dropped (cancelled) run never
/// leaves its command running; it is counted in `running` meanwhile.
struct GroupGuard {
    group: Option<Pid>,
    running: RunningGroups,
}

impl GroupGuard {
    fn new(group: Option<Pid>, running: &RunningGroups) -> GroupGuard {
        if let Some(group) = group {
            running.add(group);
        }
        GroupGuard {
            group,
            running: running.clone(),
        }
    }

    /// The command has exited: nothing to kill any more.
    fn disarm(&mut self) {
        if let Some(group) = self.group.take() {
            self.running.remove(group);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            self.running.remove(group);
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl ShellCommand {
    pub fn new(command: impl Into<String>, cwd: impl Into<PathBuf>) -> Self {
        ShellCommand {
            command: command.into(),
            cwd: cwd.into(),
            env: Vec::new(),
            timeout: None,
            running: RunningGroups::default(),
            output_tap: None,
        }
    }

    pub fn timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets every `(name, value)` pair, as [`ShellCommand::env`] does one.
    pub fn envs<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env.extend(
            vars.into_iter()
                .map(|(key, value)| (key.into(), value.into())),
        );
        self
    }

    fn spawn_with_shell(&self) -> std::io::Result<tokio::process::Child> {
        crate::reaper::spawn(self.prepare(Command::new("sh").arg("-c").arg(&self.command)))
    }

    /// The working directory, environment, pipes and process group of every start.
    fn prepare<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .current_dir(&self.cwd)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
    }

    /// Starts the command: directly when it is simple (the `bool` says so), else, or when
    /// that fails (not found, not executable, a script without `#!`), with `sh -c`, which
    /// then says why exactly as it would have.
    fn spawn(&self) -> std::io::Result<(tokio::process::Child, bool)> {
        if let Some(argv) = simple_argv(&self.command) {
            if let Ok(child) =
                crate::reaper::spawn(self.prepare(Command::new(&argv[0]).args(&argv[1..])))
            {
                return Ok((child, true));
            }
        }
        self.spawn_with_shell().map(|child| (child, false))
    }

    /// Keeps a chunk of output, and copies it to the tap.
    fn keep(&self, output: &mut OutputBuffer, chunk: &[u8]) {
        if let Some(tap) = &self.output_tap {
            let _ = tap.send(chunk.to_vec());
        }
        output.push(chunk);
    }

    /// Runs the command to its end. If the returned future is dropped, the command's whole
    /// process group is killed.
    pub async fn run(&self) -> CommandOutcome {
        let started = Instant::now();
        let (mut child, direct) = match self.spawn() {
            Ok(spawned) => spawned,
            Err(error) => {
                return CommandOutcome {
                    status: None,
                    description: format!(
                        "could not start `sh -c` in {}: {error}",
                        self.cwd.display()
                    ),
                    output: String::new(),
                    seconds: started.elapsed().as_secs_f64(),
                    timed_out: false,
                }
            }
        };
        let mut guard =
            GroupGuard::new(child.id().map(|id| Pid::from_raw(id as i32)), &self.running);
        let mut rx = read_output(&mut child);
        let mut output = OutputBuffer::default();
        let deadline = self
            .timeout
            .map(|limit| tokio::time::Instant::now() + limit);
        let mut timed_out = false;
        let mut stopper = None;
        let status = loop {
            tokio::select! {
                chunk = rx.recv() => match chunk {
                    Some(chunk) => self.keep(&mut output, &chunk),
                    None => break child.wait().await,
                },
                status = child.wait() => break status,
                () = sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    // Stopped in a task, so that output is still collected meanwhile.
                    if let Some(group) = guard.group {
                        stopper = Some(tokio::spawn(terminate_group(group.as_raw() as u32, grace::TEST)));
                    }
                }
            }
        };
        if let Some(stopper) = stopper {
            stopper.abort();
        }
        // The command has exited: collect what its pipes still hold, but do not wait on
        // grandchildren that keep them open.
        let deadline = tokio::time::Instant::now() + OUTPUT_GRACE;
        while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            self.keep(&mut output, &chunk);
        }
        guard.disarm();
        self.outcome(status, direct, timed_out, output, started)
    }

    /// How the command ended, from its exit status (or the failure to wait for it).
    fn outcome(
        &self,
        status: std::io::Result<ExitStatus>,
        direct: bool,
        timed_out: bool,
        output: OutputBuffer,
        started: Instant,
    ) -> CommandOutcome {
        let (status, description) = match status {
            Ok(_) if timed_out => (
                None,
                format!(
                    "timed out after {} s",
                    self.timeout.unwrap_or_default().as_secs_f64()
                ),
            ),
            Ok(status) => {
                // `sh -c` turns its command's death by signal N into exit status 128 + N; a
                // command started directly must read the same.
                let status = match status.signal() {
                    Some(signal) if direct => ExitStatus::from_raw((128 + signal) << 8),
                    _ => status,
                };
                (Some(status), describe_status(status))
            }
            Err(error) => (None, format!("could not wait for the command: {error}")),
        };
        CommandOutcome {
            status,
            description,
            output: output.text(),
            seconds: started.elapsed().as_secs_f64(),
            timed_out,
        }
    }
}

/// Reads the child's stdout and stderr in tasks of their own, which send each chunk as it
/// comes; the channel closes once both pipes have.
fn read_output(child: &mut tokio::process::Child) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    for mut pipe in take_output_pipes(child) {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// The words of a command that the shell would only split and run: no quoting beyond plain
/// single quotes, no expansion, redirection, operator, assignment or builtin. Such a command
/// is started directly, which saves a shell process per test file; anything else, or
/// anything unsure, goes through `sh -c`.
fn simple_argv(command: &str) -> Option<Vec<String>> {
    const SHELL_WORDS: &[&str] = &[
        ".", ":", "[", "alias", "bg", "break", "case", "cd", "chdir", "command", "continue", "do",
        "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fc",
        "fg", "fi", "for", "function", "getopts", "hash", "if", "in", "jobs", "kill", "local",
        "printf", "pwd", "read", "readonly", "return", "select", "set", "shift", "test", "then",
        "time", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "until",
        "wait", "while",
    ];
    let plain = |c: char| c.is_ascii_alphanumeric() || " \t'-_./:,+%@^".contains(c);
    if !command.chars().all(plain) {
        return None;
    }
    let argv = shlex::split(command)?;
    let program = argv.first()?;
    if SHELL_WORDS.contains(&program.as_str()) {
        return None;
    }
    Some(argv)
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Stops a process group the careful way: SIGTERM, up to `grace` for it to go, then SIGKILL.
pub async fn terminate_group(group: u32, grace: Duration) {
    let group = Pid::from_raw(group as i32);
    if killpg(group, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if killpg(group, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = killpg(group, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> PathBuf {
        std::env::temp_dir()
    }

    #[test]
    fn only_commands_the_shell_would_just_split_start_directly() {
        let argv = |words: &[&str]| Some(words.iter().map(|w| w.to_string()).collect());
        assert_eq!(
            simple_argv("sh tests/a_test.sh"),
            argv(&["sh", "tests/a_test.sh"])
        );
        assert_eq!(
            simple_argv("rspec 'spec/a b_spec.rb' --seed 4"),
            argv(&["rspec", "spec/a b_spec.rb", "--seed", "4"])
        );
        for shell_only in [
            "cd x && rspec a",
            "echo $HOME",
            "FOO=1 rspec a",
            "rspec a > out",
            "rspec a; true",
            "exec ruby a.rb",
            "true",
            "rspec \"a\"",
            "rspec a*",
            "ls ~",
            "",
            "rspec 'unterminated",
        ] {
            assert_eq!(simple_argv(shell_only), None, "{shell_only}");
        }
    }

    #[tokio::test]
    async fn a_direct_start_that_fails_is_left_to_the_shell() {
        let outcome = ShellCommand::new("ls -d /", here()).run().await;
        assert!(outcome.success());
        assert_eq!(outcome.output, "/\n");
        let outcome = ShellCommand::new("no-such-program-here arg", here())
            .run()
            .await;
        assert_eq!(outcome.status.and_then(|s| s.code()), Some(127));
        assert!(outcome.output.contains("not found"), "{outcome:?}");
        // A script without `#!` is run by the shell, as `sh -c` always did.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "echo from the script\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let outcome = ShellCommand::new("./script", dir.path()).run().await;
        assert!(outcome.success(), "{outcome:?}");
        assert_eq!(outcome.output, "from the script\n");
        // Death by a signal reads as `sh -c` would report it: exit status 128 + N.
        std::fs::write(&script, "#!/bin/sh\nkill -9 $$\n").unwrap();
        let outcome = ShellCommand::new("./script", dir.path()).run().await;
        assert_eq!(
            outcome.status.and_then(|s| s.code()),
            Some(137),
            "{outcome:?}"
        );
        assert!(!outcome.crashed());
    }

    #[tokio::test]
    async fn captures_both_streams_and_the_exit_status() {
        let outcome = ShellCommand::new("echo out; echo err >&2; exit 3", here())
            .run()
            .await;
        assert!(!outcome.success());
        assert!(!outcome.crashed());
        assert_eq!(outcome.description, "exit status 3");
        assert!(outcome.output.contains("out\n"));
        assert!(outcome.output.contains("err\n"));
    }

    #[tokio::test]
    async fn a_signal_is_a_crash() {
        let outcome = ShellCommand::new("kill -9 $$", here()).run().await;
        assert!(outcome.crashed());
        assert_eq!(outcome.description, "killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn environment_and_directory_are_passed() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = ShellCommand::new("echo $GORGON_X; pwd", dir.path())
            .env("GORGON_X", "forty-two")
            .run()
            .await;
        assert!(outcome.success());
        assert!(outcome.output.contains("forty-two"));
        assert!(outcome
            .output
            .contains(&dir.path().canonicalize().unwrap().display().to_string()));
    }

    #[tokio::test]
    async fn a_command_past_its_limit_is_stopped_with_its_output_so_far() {
        let started = Instant::now();
        let outcome = ShellCommand::new("echo started; sleep 30; echo never", here())
            .timeout(Some(Duration::from_millis(300)))
            .run()
            .await;
        assert!(outcome.timed_out);
        assert!(!outcome.success());
        assert_eq!(outcome.description, "timed out after 0.3 s");
        assert!(outcome.output.contains("started"));
        assert!(!outcome.output.contains("never"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn a_background_grandchild_does_not_hold_the_run() {
        let started = Instant::now();
        let outcome = ShellCommand::new("sleep 30 & echo done", here())
            .run()
            .await;
        assert!(outcome.success());
        assert!(outcome.output.contains("done"));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        let command = format!("echo $$ > {}; sleep 30", marker.display());
        let run = ShellCommand::new(command, here());
        let _ = tokio::time::timeout(Duration::from_millis(500), run.run()).await;
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The group leader is killed; give the kernel a moment to deliver the signal. Dead
        // but not yet reaped (a zombie: this blocked test does not let the runtime reap it)
        // is dead.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() {
            assert!(Instant::now() < deadline, "process {pid} survived the drop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
