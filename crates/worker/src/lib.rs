//! The two processes a listener runs for a job: the worker manager (`gorgon __manage-workers`),
//! which starts the job's workers and stops them on cancel, and the workers (`gorgon __work`),
//! which take test files one at a time from the job's files queue and report each result.
//! `gorgon start --local` starts workers itself (`gorgon __work --local`), which take their
//! files on stdin and report on stdout.
//!
//! Both get their [`WorkerAssignment`] as the first line of stdin and treat the end of stdin
//! as the death of their parent (see [`read_assignment`]).

mod builtin;
pub mod class_callbacks;
mod feed;
pub mod host_job;
mod junit;
mod live;
mod local;
mod manager;
pub mod manager_process;
mod persistent;
pub mod pool;
mod runner;
mod stdin;
pub mod warm;
mod worker;

use gorgon_exec::tags::JobTags;
use gorgon_exec::ShellCommand;
use gorgon_protocol::{Broker, Envelope, Message, WorkerAssignment};

pub use local::work_local;
pub use manager::{manage_workers, WORKER_SUBCOMMAND};
pub use stdin::{
    parse_assignment, read_assignment, read_assignment_and_lines, AssignmentError, StdinClosed,
    StdinLines,
};

/// Exit code of a manager or worker that could not do its part (no broker, bad assignment).
/// Its parent reports the crash with the process's last output lines.
pub const EXIT_BROKEN: i32 = 1;

/// The base of every callback and test command, with the environment Gorgon documents.
fn command_base(assignment: &WorkerAssignment) -> ShellCommand {
    let mut tags =
        JobTags::new(assignment.job_id, &assignment.host).in_workspace(&assignment.workspace);
    if let Some(worker_id) = assignment.worker_id {
        tags = tags.of_worker(worker_id);
    }
    ShellCommand::new("", &assignment.workspace).envs(tags.pairs())
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
