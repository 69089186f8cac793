//! The two processes a listener runs for a job: the worker manager (`gorgon __manage-workers`),
//! which starts the job's workers and stops them on cancel, and the workers (`gorgon __work`),
//! which take test files one at a time from the job's files queue and report each result.
//! `gorgon start --local` starts workers itself (`gorgon __work --local`), which take their
//! files on stdin and report on stdout.
//!
//! Both get their [`WorkerAssignment`] as the first line of stdin and treat the end of stdin
//! as the death of their parent (see [`read_assignment`]).
//!
//! A job's life on one host (callbacks, the pool, feeding it, the stop in two stages, the
//! end) is written once, in [`HostJob`], driven by a [`Feed`]: the worker manager's feeds
//! from the broker, `--local`'s from memory. A listener or a CI node runs the manager as a
//! child process ([`run_manager`]) and tells the originator about it ([`HostReplies`]).

mod batches;
mod builtin;
mod class_callbacks;
mod conventions;
mod feed;
mod host_job;
mod junit;
mod live;
mod local;
mod look_ahead;
mod manager;
mod manager_process;
mod persistent;
mod pool;
mod runner;
mod stdin;
mod warm;
mod worker;

use gorgon_exec::tags::JobTags;
use gorgon_exec::ShellCommand;
use gorgon_protocol::{Broker, Envelope, Message, WorkerAssignment};

pub use class_callbacks::{host_command, shell_command, UnquotableCallback};
pub use host_job::{Ending, Feed, FeedEnd, HostJob, Kill, Stage};
pub use local::work_local;
pub use manager::{manage_spare, manage_workers, WORKER_SUBCOMMAND};
pub use manager_process::{run_manager, HostReplies, ManagerEnd, SpareManager};
pub use pool::{HandOutQueue, Received, WorkerProgram};
pub use stdin::{
    parse_assignment, read_assignment, read_assignment_and_lines, read_spare_opening,
    AssignmentError, SpareAssignment, StdinClosed, StdinLines,
};
pub use warm::{WarmKey, WarmProcess};

/// Exit code of a manager or worker that could not do its part (no broker, bad assignment).
/// Its parent reports the crash with the process's last output lines.
pub const EXIT_BROKEN: i32 = 1;

/// The base of every callback and test command, with the environment Gorgon documents: the
/// job's tags and the variables of parallel_tests and pytest-xdist (`conventions`): a
/// worker's, or the host's worker count in the host's own commands.
fn command_base(assignment: &WorkerAssignment) -> ShellCommand {
    let mut tags =
        JobTags::new(assignment.job_id, &assignment.host).in_workspace(&assignment.workspace);
    let mut conventions = conventions::host_pairs(assignment.slots);
    if let Some(worker_id) = assignment.worker_id {
        tags = tags.of_worker(worker_id);
        conventions = conventions::worker_pairs(
            worker_id,
            assignment.slots,
            assignment.definition.first_is_1,
        );
    }
    let recording = assignment
        .definition
        .record_impact
        .then(|| (gorgon_protocol::impact::RECORD_ENV, "1".to_owned()));
    ShellCommand::new("", &assignment.workspace)
        .envs(tags.pairs())
        .envs(conventions)
        .envs(recording)
}

/// `command` run by `sh -c` in `base`'s folder and environment, in a process group of its
/// own (so that it can be stopped with everything it started), with its three pipes.
fn piped_shell(command: &str, base: &ShellCommand) -> tokio::process::Command {
    let mut shell = tokio::process::Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .current_dir(&base.cwd)
        .envs(base.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    shell
}

/// `fd` read or written by the event loop itself when it is a pipe, with no thread hand-off
/// for each line; anything else through `fallback` (tokio's blocking pool).
fn pipe_or<T: ?Sized>(
    fd: std::os::fd::BorrowedFd<'_>,
    pipe: impl FnOnce(std::os::fd::OwnedFd) -> std::io::Result<Box<T>>,
    fallback: impl FnOnce() -> Box<T>,
) -> Box<T> {
    fd.try_clone_to_owned()
        .and_then(pipe)
        .unwrap_or_else(|_| fallback())
}

/// The message that tells the originator a callback failed on `host` (in worker
/// `worker_id`, for a worker's callbacks).
pub fn callback_failed(
    host: &str,
    worker_id: Option<u32>,
    failure: gorgon_exec::CallbackFailure,
) -> Message {
    Message::CallbackFailed {
        host: host.to_owned(),
        worker_id,
        callback: failure.callback,
        status: failure.status,
        output: failure.output,
    }
}

/// Sends one message to the job's originator; a failure is only logged, because the
/// originator is the only one who could act on it.
async fn report(broker: &Broker, assignment: &WorkerAssignment, message: Message) {
    let envelope = Envelope::new(assignment.job_id, message);
    if let Err(error) = broker.send_to_queue(&assignment.reply_to, &envelope).await {
        tracing::warn!(job = %assignment.job_id, %error, "cannot report to the originator");
    }
}
