//! One persistent runner process: started once in its own process group (or forked from a
//! warm runner, see `warm.rs`), it says hello, then answers one file at a time over the
//! runner protocol (`docs/runner-protocol.md`) on its stdin and stdout. Its stderr is
//! collected as the runner's own output.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gorgon_exec::lines::{read_line, Line};
use gorgon_exec::{
    describe_status, grace, terminate_group, OutputBuffer, RunningGroups, ShellCommand,
};
use gorgon_protocol::{FileDone, RunnerMessage, WorkerRequest, RUNNER_PROTOCOL_VERSION};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;

use crate::warm::{fork_runner, ForkedRunner};

/// How long a runner that closed its stdout gets to exit by itself before its group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Why a runner could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("could not start the runner `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the runner `{command}` ended before saying hello ({status})")]
    Ended { command: String, status: String },
    #[error("the runner `{command}` did not say hello within {seconds} s")]
    Silent { command: String, seconds: u64 },
    #[error("the runner `{command}` did not open with a hello line: {line}")]
    NoHello { command: String, line: String },
    #[error(
        "the runner `{command}` speaks runner protocol {version}, this worker speaks {RUNNER_PROTOCOL_VERSION}"
    )]
    WrongVersion { command: String, version: u32 },
    #[error("the {} callback raised in the runner: {}", .0.callback, .0.message)]
    Callback(RunnerCallbackFailure),
}

/// A method of the job's Gorgon callbacks class that raised inside the runner
/// (`before_start` as it booted, `after_complete` as it ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerCallbackFailure {
    pub callback: String,
    /// The exception's class, message and backtrace.
    pub message: String,
}

/// The end of one request's run (a file or a batch), as seen from the worker.
#[derive(Debug)]
pub enum Answer {
    /// The runner answered for every file of the request; `stray` holds stdout lines that
    /// were not protocol lines.
    Done { done: Vec<FileDone>, stray: String },
    /// The runner ended, or broke the protocol, before answering; the session is over.
    Died { status: String },
    /// The file ran past its limit; the runner's group was stopped (SIGTERM, grace, SIGKILL)
    /// and the session is over.
    TimedOut,
}

/// Where a session may fork its runner from instead of booting it (see `warm.rs`).
#[derive(Clone, Debug)]
pub struct WarmFork {
    /// The warm runner's socket.
    pub socket: PathBuf,
    /// The adapter script the forked runner runs.
    pub script: PathBuf,
}

/// The runner's process: booted by the worker, or forked from a warm runner.
enum RunnerProcess {
    Booted(Child),
    Forked(ForkedRunner),
}

impl RunnerProcess {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            RunnerProcess::Booted(child) => child.wait().await,
            RunnerProcess::Forked(forked) => forked.wait().await,
        }
    }
}

type Input = Box<dyn AsyncWrite + Unpin + Send>;
type Output = Box<dyn AsyncRead + Unpin + Send>;

/// A runner process just started, with its pipes and its process group.
struct Started {
    process: RunnerProcess,
    group: Pid,
    stdin: Input,
    stdout: Output,
    stderr: Output,
}

/// A running runner process.
pub struct Session {
    process: RunnerProcess,
    group: Option<Pid>,
    /// Where its group is counted while it runs, for a stopping worker to end it.
    running: RunningGroups,
    stdin: Option<Input>,
    lines: mpsc::UnboundedReceiver<Line>,
    stderr: Arc<Mutex<OutputBuffer>>,
    /// The runner's name and version from its hello.
    pub name: String,
    /// The runner takes batches of files (its hello said so).
    pub batches: bool,
}

impl Session {
    /// Starts `command` (or forks it from `warm`, booting it when that fails) and waits at
    /// most `boot_limit` for its hello. On failure, the returned output is what the runner
    /// printed.
    pub async fn start(
        command: &ShellCommand,
        warm: Option<&WarmFork>,
        boot_limit: Duration,
    ) -> Result<Session, (BootError, String)> {
        let forked = match warm {
            Some(warm) => match fork(command, warm).await {
                Ok(started) => Some(started),
                Err(error) => {
                    tracing::warn!(%error, socket = %warm.socket.display(), "cannot fork the runner from the warm runner; booting it");
                    None
                }
            },
            None => None,
        };
        let started = match forked {
            Some(started) => started,
            None => boot(command).map_err(|source| {
                let error = BootError::Spawn {
                    command: command.command.clone(),
                    source,
                };
                (error, String::new())
            })?,
        };
        let Started {
            process,
            group,
            stdin,
            stdout,
            stderr: stderr_pipe,
        } = started;
        command.running.add(group);
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            while let Ok(Some(line)) = read_line(&mut reader, MAX_RUNNER_LINE_BYTES).await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(OutputBuffer::default()));
        {
            let stderr = Arc::clone(&stderr);
            let mut pipe = stderr_pipe;
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    lock(&stderr).push(&chunk[..n]);
                }
            });
        }
        let session = Session {
            stdin: Some(stdin),
            process,
            group: Some(group),
            running: command.running.clone(),
            lines,
            stderr,
            name: String::new(),
            batches: false,
        };
        session.hello(command.command.clone(), boot_limit).await
    }

    /// Waits at most `boot_limit` for the hello of runner `name`, just started; on failure,
    /// kills it and returns what it printed.
    async fn hello(
        mut self,
        name: String,
        boot_limit: Duration,
    ) -> Result<Session, (BootError, String)> {
        let session = &mut self;
        let mut stray = String::new();
        let hello = tokio::time::timeout(boot_limit, async {
            loop {
                match session.lines.recv().await {
                    Some(Line::Text(line)) if !is_protocol_line(&line) => {
                        stray.push_str(&line);
                        stray.push('\n');
                    }
                    other => return other,
                }
            }
        })
        .await;
        let failure = match hello {
            Ok(Some(Line::TooLong { bytes, .. })) => BootError::NoHello {
                command: name,
                line: too_long(bytes),
            },
            Ok(Some(Line::Text(line))) => match RunnerMessage::decode(&line) {
                Ok(RunnerMessage::Hello {
                    protocol,
                    runner,
                    batches,
                }) if protocol == RUNNER_PROTOCOL_VERSION => {
                    self.name = runner;
                    self.batches = batches;
                    return Ok(self);
                }
                Ok(RunnerMessage::Hello { protocol, .. }) => BootError::WrongVersion {
                    command: name,
                    version: protocol,
                },
                Ok(RunnerMessage::CallbackFailed { callback, message }) => {
                    BootError::Callback(RunnerCallbackFailure { callback, message })
                }
                _ => BootError::NoHello {
                    command: name,
                    line: line.chars().take(200).collect(),
                },
            },
            Ok(None) => BootError::Ended {
                command: name,
                status: self.end().await,
            },
            Err(_) => BootError::Silent {
                command: name,
                seconds: boot_limit.as_secs(),
            },
        };
        self.kill();
        let mut output = stray;
        output.push_str(&self.take_stderr());
        Err((failure, output))
    }

    /// Sends one request (a file, or a batch the runner takes) and waits at most `limit`
    /// for an answer about each of its files.
    pub async fn run(&mut self, request: WorkerRequest, limit: Option<Duration>) -> Answer {
        let mut waiting = match &request {
            WorkerRequest::Run(run) => vec![run.file.clone()],
            WorkerRequest::RunBatch(batch) => batch.files.clone(),
        };
        let line = request.encode_line();
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(line.as_bytes())
                .await
                .and(stdin.flush().await),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if written.is_err() {
            return Answer::Died {
                status: self.end().await,
            };
        }
        let mut stray = String::new();
        let mut done = Vec::with_capacity(waiting.len());
        let answers = async {
            while !waiting.is_empty() {
                let line = match self.lines.recv().await {
                    None => return Err(None),
                    Some(Line::TooLong { bytes, .. }) => {
                        return Err(Some(format!(
                            "broke the runner protocol: {}",
                            too_long(bytes)
                        )))
                    }
                    Some(Line::Text(line)) => line,
                };
                if !is_protocol_line(&line) {
                    stray.push_str(&line);
                    stray.push('\n');
                    continue;
                }
                let broken = |problem: String| {
                    let line: String = line.chars().take(200).collect();
                    Err(Some(format!(
                        "broke the runner protocol ({problem}): {line}"
                    )))
                };
                match RunnerMessage::decode(&line) {
                    Ok(RunnerMessage::FileDone(answer)) => {
                        match waiting.iter().position(|f| *f == answer.file) {
                            Some(at) => {
                                waiting.swap_remove(at);
                                done.push(answer);
                            }
                            None => {
                                return broken("a result for a file it was not asked to run".into())
                            }
                        }
                    }
                    Ok(_) => return broken("expected a file's result".into()),
                    Err(error) => return broken(error.to_string()),
                }
            }
            Ok(())
        };
        let answered = match limit {
            Some(limit) => match tokio::time::timeout(limit, answers).await {
                Ok(answered) => answered,
                Err(_) => {
                    self.terminate().await;
                    return Answer::TimedOut;
                }
            },
            None => answers.await,
        };
        match answered {
            Ok(()) => Answer::Done { done, stray },
            Err(Some(status)) => {
                self.kill();
                Answer::Died { status }
            }
            Err(None) => Answer::Died {
                status: self.end().await,
            },
        }
    }

    /// It was forked from a warm runner.
    pub fn forked(&self) -> bool {
        matches!(self.process, RunnerProcess::Forked(_))
    }

    /// What the runner printed on stderr since the last call.
    pub fn take_stderr(&self) -> String {
        std::mem::take(&mut *lock(&self.stderr)).text()
    }

    /// Asks the runner to exit by closing its stdin, waits up to `exit_limit` (what its end
    /// may take: the suite's at_exit hooks, `after_complete`), then stops its group the
    /// careful way. Returns the callback that raised as it ended, if one did.
    pub async fn stop(mut self, exit_limit: Duration) -> Option<RunnerCallbackFailure> {
        drop(self.stdin.take());
        let mut failure = None;
        let ended = tokio::time::timeout(exit_limit, async {
            while let Some(line) = self.lines.recv().await {
                if let Line::Text(line) = line {
                    if let Ok(RunnerMessage::CallbackFailed { callback, message }) =
                        RunnerMessage::decode(&line)
                    {
                        failure = Some(RunnerCallbackFailure { callback, message });
                    }
                }
            }
            self.process.wait().await
        })
        .await;
        if ended.is_err() {
            tracing::warn!("the runner did not exit when its stdin closed");
        }
        if let Some(group) = self.forget_group() {
            terminate_group(group.as_raw() as u32, EXIT_GRACE).await;
        }
        failure
    }

    /// After the runner's stdout closed: waits briefly for it to exit, kills what is left of
    /// its group, and describes how it ended.
    async fn end(&mut self) -> String {
        let status = match tokio::time::timeout(EXIT_GRACE, self.process.wait()).await {
            Ok(Ok(status)) => describe_status(status),
            Ok(Err(error)) => format!("could not wait for it: {error}"),
            Err(_) => "closed its stdout without exiting".to_owned(),
        };
        self.kill();
        let _ = self.process.wait().await;
        status
    }

    /// Stops the runner's group the careful way, as a timed-out test command is stopped:
    /// SIGTERM, up to `grace::TEST` for the whole group to exit, then SIGKILL. The leader is
    /// reaped meanwhile, so that the group empties when its last member exits.
    async fn terminate(&mut self) {
        match self.forget_group() {
            Some(group) => {
                let _ = tokio::join!(
                    self.process.wait(),
                    terminate_group(group.as_raw() as u32, grace::TEST)
                );
            }
            None => {
                let _ = self.process.wait().await;
            }
        }
    }

    fn kill(&mut self) {
        if let Some(group) = self.forget_group() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }

    /// Its process group, no longer counted as running.
    fn forget_group(&mut self) -> Option<Pid> {
        let group = self.group.take()?;
        self.running.remove(group);
        Some(group)
    }
}

impl Drop for Session {
    /// A dropped session (the worker stops mid-file) never leaves its runner running.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Boots `command` in a process group of its own.
fn boot(command: &ShellCommand) -> std::io::Result<Started> {
    let mut child = crate::piped_shell(&command.command, command).spawn()?;
    let missing = || std::io::Error::other("the runner's pipes were not set up");
    let group = child.id().ok_or_else(missing)?;
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    Ok(Started {
        process: RunnerProcess::Booted(child),
        group: Pid::from_raw(group as i32),
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
    })
}

/// Forks the runner from a warm runner, with the environment `command` would have had.
async fn fork(command: &ShellCommand, warm: &WarmFork) -> std::io::Result<Started> {
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    env.extend(command.env.iter().cloned());
    let (forked, pipes) = fork_runner(
        &warm.socket,
        &command.cwd,
        env.into_iter().collect(),
        &warm.script,
    )
    .await?;
    Ok(Started {
        group: forked.pid,
        process: RunnerProcess::Forked(forked),
        stdin: Box::new(pipes.stdin),
        stdout: Box::new(pipes.stdout),
        stderr: Box::new(pipes.stderr),
    })
}

/// A runner's stdout line may be this long at most (an answer's tests and output): a worker
/// never holds more of one line.
const MAX_RUNNER_LINE_BYTES: usize = gorgon_protocol::message::MAX_MESSAGE_BYTES;

fn too_long(bytes: usize) -> String {
    format!("a line of {bytes} bytes, over the limit of {MAX_RUNNER_LINE_BYTES}")
}

/// Protocol lines are JSON objects; anything else a runner prints on stdout is kept as
/// output, so that a helper that prints on load does not break the runner.
fn is_protocol_line(line: &str) -> bool {
    line.trim_start().starts_with('{')
}

fn lock(buffer: &Mutex<OutputBuffer>) -> std::sync::MutexGuard<'_, OutputBuffer> {
    // A poisoned lock only means the reader task panicked mid-push; the text is still usable.
    buffer.lock().unwrap_or_else(|e| e.into_inner())
}
