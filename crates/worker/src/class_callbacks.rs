//! Gorgon's Ruby callbacks class (`job.callbacks.callbacks_class_file`) on a host, run at
//! Gorgon's moments and in Gorgon's processes: when the job has a built-in Ruby runner,
//! `before_creating_workers` runs in the job's Ruby preload process (one per host, in the
//! workspace), which the job's Ruby runners then fork from, so that what it loaded is
//! preloaded for every file; `before_start` and `after_complete` run in each Ruby runner,
//! before its first file and after its last; `after_creating_workers` runs in the preload
//! process once every runner forked from it has ended. A job without a Ruby runner runs each
//! of those methods as a program (the shim, `ruby -e`), as it runs `after_sync`.

use std::time::Duration;

use gorgon_exec::{describe_status, run_callback, CallbackFailure, OutputBuffer, ShellCommand};
use gorgon_protocol::{CallbackName, JobDefinition, RunnerChoice, RunnerKind};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::builtin::{self, CALLBACKS_SHIM};

/// The environment variable that names the class file to a Ruby runner.
pub const CLASS_FILE_VARIABLE: &str = "GORGON_CALLBACKS_CLASS_FILE";

/// How long `after_creating_workers` may run in the preload process.
const AFTER_WORKERS_LIMIT: Duration = Duration::from_secs(600);

/// How long the output of an ended preload process is waited for, should something it
/// started still hold its stderr open.
const STDERR_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Why a method of the callbacks class cannot be run as a program: a shell cannot name it.
#[derive(Debug, thiserror::Error)]
pub enum UnquotableCallback {
    #[error("the callbacks shim cannot be quoted")]
    Shim,
    #[error("callbacks_class_file {0:?} cannot be quoted")]
    ClassFile(String),
}

/// The shell command that runs one method of the callbacks class `class_file` as a program.
pub fn shell_command(moment: CallbackName, class_file: &str) -> Result<String, UnquotableCallback> {
    let shim = shlex::try_quote(CALLBACKS_SHIM).map_err(|_| UnquotableCallback::Shim)?;
    let file = shlex::try_quote(class_file)
        .map_err(|_| UnquotableCallback::ClassFile(class_file.to_owned()))?;
    Ok(format!("ruby -e {shim} {moment} {file}"))
}

/// How a job's callbacks class runs on a host, when it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassCallbacks {
    pub class_file: String,
    /// The interpreter of the job's preload process and of the Ruby runners that fork from
    /// it (the first Ruby runner's, "" for plain `ruby`), when the job has a Ruby runner.
    pub ruby: Option<String>,
    /// The Ruby runner kinds of the job, whose frameworks the preload process loads.
    pub kinds: Vec<RunnerKind>,
}

impl ClassCallbacks {
    pub fn of(definition: &JobDefinition) -> Option<ClassCallbacks> {
        let class_file = definition.callbacks.class_file.clone()?;
        let choice = RunnerChoice::new(&definition.runner).ok();
        let ruby_runners: Vec<_> = choice
            .iter()
            .flat_map(|choice| choice.runners())
            .filter(|runner| builtin::is_ruby(runner.kind))
            .collect();
        let mut kinds: Vec<RunnerKind> = Vec::new();
        for runner in &ruby_runners {
            if !kinds.contains(&runner.kind) {
                kinds.push(runner.kind);
            }
        }
        Some(ClassCallbacks {
            class_file,
            ruby: ruby_runners
                .first()
                .map(|runner| runner.command.trim().to_owned()),
            kinds,
        })
    }

    /// Whether the Ruby runners run `before_start` and `after_complete` (and the preload
    /// process the other two), rather than the shim as a program.
    pub fn in_ruby(&self) -> bool {
        self.ruby.is_some()
    }

    /// Whether a runner of `kind` started by `interpreter` forks from the preload process.
    pub fn forks(&self, kind: RunnerKind, interpreter: &str) -> bool {
        builtin::is_ruby(kind) && self.ruby.as_deref() == Some(interpreter.trim())
    }
}

/// The command that runs callback `moment` as a program on this host: the configured shell
/// callback, or the class's method when the job's Ruby processes do not run it.
pub fn host_command(definition: &JobDefinition, moment: CallbackName) -> Option<String> {
    let callbacks = &definition.callbacks;
    let configured = match moment {
        CallbackName::AfterSync => &callbacks.after_sync,
        CallbackName::BeforeCreatingWorkers => &callbacks.before_creating_workers,
        CallbackName::BeforeStart => &callbacks.before_start,
        CallbackName::AfterComplete => &callbacks.after_complete,
        CallbackName::AfterCreatingWorkers => &callbacks.after_creating_workers,
        _ => &None,
    };
    if configured.is_some() {
        return configured.clone();
    }
    let class = ClassCallbacks::of(definition)?;
    if class.in_ruby() && moment != CallbackName::AfterSync {
        return None;
    }
    match shell_command(moment, &class.class_file) {
        Ok(command) => Some(command),
        Err(problem) => Some(format!(
            "echo {} >&2; exit 1",
            shlex::try_quote(&problem.to_string()).unwrap_or_default()
        )),
    }
}

/// What runs before a host's workers and must end after them: nothing, or the job's Ruby
/// preload process.
pub struct HostCallbacks {
    preload: Option<RubyPreload>,
}

impl HostCallbacks {
    /// Runs `before_creating_workers` as the job has it: a shell command, the class's method
    /// as a program, or the preload process (started, in `base`'s workspace, and waited for
    /// until it serves).
    pub async fn before_workers(
        definition: &JobDefinition,
        base: &ShellCommand,
    ) -> Result<HostCallbacks, CallbackFailure> {
        let moment = CallbackName::BeforeCreatingWorkers;
        let class = ClassCallbacks::of(definition).filter(ClassCallbacks::in_ruby);
        let preload = match class {
            Some(class) if definition.callbacks.before_creating_workers.is_none() => {
                Some(RubyPreload::start(&class, base).await?)
            }
            _ => {
                run_callback(moment, host_command(definition, moment).as_deref(), base).await?;
                None
            }
        };
        Ok(HostCallbacks { preload })
    }

    /// The socket the job's Ruby runners fork from, when there is a preload process.
    pub fn ruby_preload(&self) -> Option<std::path::PathBuf> {
        self.preload.as_ref().map(|preload| preload.socket.clone())
    }

    /// Runs `after_creating_workers` once the workers have ended: the preload process's end,
    /// or the command.
    pub async fn after_workers(
        self,
        definition: &JobDefinition,
        base: &ShellCommand,
    ) -> Result<(), CallbackFailure> {
        let moment = CallbackName::AfterCreatingWorkers;
        match self.preload {
            Some(preload) => preload.finish().await,
            None => run_callback(moment, host_command(definition, moment).as_deref(), base)
                .await
                .map(drop),
        }
    }
}

/// The job's Ruby preload process on a host (see the module's description and
/// `gorgon_warm.rb`). Dropped before it finished, it is killed.
struct RubyPreload {
    child: Child,
    group: Option<Pid>,
    stdin: Option<ChildStdin>,
    socket: std::path::PathBuf,
    output: std::sync::Arc<std::sync::Mutex<OutputBuffer>>,
    /// The task that copies its stderr into `output`, until the pipe closes.
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    /// Holds the scripts and the socket.
    _dir: tempfile::TempDir,
}

impl RubyPreload {
    /// Starts it in `base`'s workspace with `base`'s environment, and waits until it serves
    /// (its `before_creating_workers` is done) or ends (which is that callback's failure).
    async fn start(
        class: &ClassCallbacks,
        base: &ShellCommand,
    ) -> Result<RubyPreload, CallbackFailure> {
        let moment = CallbackName::BeforeCreatingWorkers;
        let failed = |status: String, output: String| CallbackFailure {
            callback: moment,
            status,
            output,
        };
        let dir = tempfile::Builder::new()
            .prefix("gorgon-preload-")
            .tempdir()
            .map_err(|e| {
                failed(
                    format!("cannot make a folder for the preload process: {e}"),
                    String::new(),
                )
            })?;
        let socket = dir.path().join("preload.sock");
        let interpreter = class.ruby.clone().unwrap_or_default();
        let command = builtin::write_ruby_preload(
            &class.kinds,
            &interpreter,
            dir.path(),
            &socket,
            &class.class_file,
        )
        .map_err(|e| {
            failed(
                format!("cannot write the preload process: {e}"),
                String::new(),
            )
        })?;
        tracing::info!(%moment, command, "starting the job's Ruby preload process");
        let mut child =
            gorgon_exec::reaper::spawn(crate::piped_shell(&command, base).kill_on_drop(true))
                .map_err(|e| failed(format!("could not start `{command}`: {e}"), String::new()))?;
        let group = child.id().map(|id| Pid::from_raw(id as i32));
        let output = std::sync::Arc::new(std::sync::Mutex::new(OutputBuffer::default()));
        let stderr_reader = child.stderr.take().map(|mut stderr| {
            let output = output.clone();
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 8192];
                while let Ok(n) = stderr.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(&chunk[..n]);
                }
            })
        });
        let mut preload = RubyPreload {
            stdin: child.stdin.take(),
            group,
            socket,
            output,
            stderr_reader,
            _dir: dir,
            child,
        };
        let mut lines = match preload.child.stdout.take() {
            Some(stdout) => BufReader::new(stdout).lines(),
            None => {
                return Err(failed(
                    "the preload process has no stdout".into(),
                    String::new(),
                ))
            }
        };
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) if line.trim() == "ready" => break,
                    Ok(Some(_)) => continue,
                    _ => {
                        let status = preload.wait_status().await;
                        return Err(failed(status, preload.output_at_exit().await));
                    }
                },
                status = preload.child.wait() => {
                    let status = status.map_or_else(|e| format!("could not wait for it: {e}"), describe_status);
                    return Err(failed(status, preload.output_at_exit().await));
                }
            }
        }
        // What `before_creating_workers` printed is logged, not kept for the end.
        let said = preload.take_output();
        if !said.trim().is_empty() {
            tracing::info!(%moment, output = said.trim_end(), "callback output");
        }
        Ok(preload)
    }

    /// Asks it to end (its forks have ended with the workers) and waits while it runs
    /// `after_creating_workers`.
    async fn finish(mut self) -> Result<(), CallbackFailure> {
        drop(self.stdin.take());
        let status = match tokio::time::timeout(AFTER_WORKERS_LIMIT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                self.group = None;
                return Ok(());
            }
            Ok(Ok(status)) => describe_status(status),
            Ok(Err(error)) => format!("could not wait for it: {error}"),
            Err(_) => format!(
                "still running after {} s; killed",
                AFTER_WORKERS_LIMIT.as_secs()
            ),
        };
        Err(CallbackFailure {
            callback: CallbackName::AfterCreatingWorkers,
            status,
            output: self.output_at_exit().await,
        })
    }

    async fn wait_status(&mut self) -> String {
        match self.child.wait().await {
            Ok(status) => describe_status(status),
            Err(error) => format!("could not wait for it: {error}"),
        }
    }

    /// Everything it wrote, once it has ended: its stderr is read to the end first (a
    /// process that dies of a raise writes the backtrace just before), within a bound, in
    /// case something it started still holds the pipe.
    async fn output_at_exit(&mut self) -> String {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN_LIMIT, reader).await;
        }
        self.take_output()
    }

    fn take_output(&self) -> String {
        std::mem::take(&mut *self.output.lock().unwrap_or_else(|e| e.into_inner())).text()
    }
}

impl Drop for RubyPreload {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(json: serde_json::Value) -> JobDefinition {
        let mut definition = JobDefinition::with_command("unused/", "true", Default::default());
        definition.runner = serde_json::from_value(json).unwrap();
        definition.callbacks.class_file = Some("test/gorgon_callbacks.rb".into());
        definition
    }

    #[test]
    fn a_job_with_a_ruby_runner_runs_the_class_in_its_ruby_processes() {
        let mixed = definition(serde_json::json!({"by_glob": {
            "spec/**/*_spec.rb": {"kind": "rspec"},
            "test/**/*_test.rb": {"kind": "minitest"},
            "tests/*.sh": {"command": "sh {file}"}
        }}));
        let class = ClassCallbacks::of(&mixed).unwrap();
        assert!(class.in_ruby());
        assert_eq!(class.ruby.as_deref(), Some(""));
        assert!(
            class.kinds.contains(&RunnerKind::Rspec) && class.kinds.contains(&RunnerKind::Minitest)
        );
        assert!(class.forks(RunnerKind::Minitest, ""));
        assert!(!class.forks(RunnerKind::Minitest, "bundle exec ruby"));
        assert!(!class.forks(RunnerKind::Pytest, ""));
        for moment in [
            CallbackName::BeforeCreatingWorkers,
            CallbackName::BeforeStart,
            CallbackName::AfterComplete,
            CallbackName::AfterCreatingWorkers,
        ] {
            assert_eq!(host_command(&mixed, moment), None, "{moment}");
        }
        let after_sync = host_command(&mixed, CallbackName::AfterSync).unwrap();
        assert!(
            after_sync.starts_with("ruby -e ")
                && after_sync.ends_with(" after_sync test/gorgon_callbacks.rb")
        );
    }

    #[test]
    fn a_job_without_a_ruby_runner_runs_each_method_as_a_program() {
        let shell = definition(serde_json::json!({"command": "sh {file}"}));
        assert!(!ClassCallbacks::of(&shell).unwrap().in_ruby());
        let before_start = host_command(&shell, CallbackName::BeforeStart).unwrap();
        assert!(
            before_start.ends_with(" before_start test/gorgon_callbacks.rb"),
            "{before_start}"
        );
        let mut without = shell.clone();
        without.callbacks.class_file = None;
        assert_eq!(host_command(&without, CallbackName::BeforeStart), None);
        without.callbacks.before_start = Some("touch x".into());
        assert_eq!(
            host_command(&without, CallbackName::BeforeStart).as_deref(),
            Some("touch x")
        );
    }
}
