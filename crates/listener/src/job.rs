//! One job on one listener: accept it, pull the tree into a fresh workspace, run
//! `after_sync`, run a worker manager process until it exits, then clean up and report
//! `JobDone`. Every step's failure is reported to the originator rather than returned.

use std::path::Path;
use std::sync::Arc;

use gorgon_exec::{rsync, run_callback, ShellCommand};
use gorgon_protocol::{
    BrokerError, CallbackName, Envelope, JobDefinition, Message, WorkerAssignment,
};
use gorgon_worker::class_callbacks::host_command;
use gorgon_worker::manager_process::{run_manager, ManagerEnd};
use tokio::sync::watch;
use uuid::Uuid;

use crate::workspace::Workspace;
use crate::Shared;
use gorgon_exec::tags::JobTags;

/// A job as the listener received it.
pub struct Job {
    pub id: Uuid,
    pub definition: JobDefinition,
    pub reply_to: String,
}

/// Why the job ended before its workers could run; already reported to the originator.
struct Reported;

/// Runs the whole job and returns its id. Once `stopping` turns true, the current step is
/// abandoned (dropping a shell command kills its process group) or the worker manager is
/// terminated, and the job is cleaned up and reported done.
pub async fn run_job(
    shared: Arc<Shared>,
    job: Job,
    listener_stopping: watch::Receiver<bool>,
) -> Uuid {
    let host = shared.settings.name.clone();
    let accepted = Message::JobAccepted {
        host: host.clone(),
        slots: shared.settings.worker_slots,
        listener_queue: Some(shared.queue.clone()),
    };
    match send(&shared, &job, accepted).await {
        Err(BrokerError::Unroutable(_)) => {
            tracing::info!(job = %job.id, "the originator has gone; dropping the job");
            return job.id;
        }
        Err(error) => tracing::warn!(job = %job.id, %error, "cannot accept the job"),
        Ok(()) => {}
    }
    // The job stops early when the listener stops or the originator cancels it, at any
    // step: during the pull and after_sync too, before any worker exists.
    let (stop, mut stopping) = watch::channel(false);
    let watchers = [
        tokio::spawn(forward_stop(listener_stopping, stop.clone())),
        tokio::spawn(watch_for_cancel(shared.clone(), job.id, stop)),
    ];
    let taken = Workspace::take(&shared.settings.workspace_root, &job.definition.sync.source);
    let mut keep_workspace = false;
    let workspace = match taken {
        Ok(workspace) => Some(workspace),
        Err(error) => {
            let output = format!(
                "cannot create a workspace under {}: {error}",
                shared.settings.workspace_root.display()
            );
            tracing::error!(job = %job.id, "{output}");
            report(
                &shared,
                &job,
                Message::SyncFailed {
                    host: host.clone(),
                    output,
                },
            )
            .await;
            None
        }
    };
    if let Some(workspace) = &workspace {
        let prepared = tokio::select! {
            () = stopped(&mut stopping) => Err(Reported),
            prepared = prepare(&shared, &job, &workspace.path) => prepared,
        };
        if prepared.is_ok() && !*stopping.borrow() {
            let slots = shared.take_slots();
            manage(&shared, &job, &workspace.path, slots, &mut stopping).await;
            shared.release_slots(slots);
            // A job that ran to its end leaves a tree worth keeping warm; a cancelled one
            // may have stopped anywhere.
            keep_workspace = !*stopping.borrow();
        }
    }
    for watcher in watchers {
        watcher.abort();
    }
    // Nothing of the job may outlive it on this host, even a process that left its group.
    gorgon_exec::procs::kill_tagged(&JobTags::new(job.id, &host));
    if let Some(workspace) = workspace.filter(|_| !keep_workspace) {
        let path = workspace.path.clone();
        if let Err(error) = workspace.discard() {
            tracing::warn!(job = %job.id, workspace = %path.display(), %error, "cannot remove the workspace");
        }
    }
    if let Err(error) = send(&shared, &job, Message::JobDone { host }).await {
        tracing::warn!(job = %job.id, %error, "cannot report the job done");
    }
    job.id
}

/// Resolves once the job must stop (or nobody can tell it any more).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Turns the listener's stop into the job's stop.
async fn forward_stop(mut listener_stopping: watch::Receiver<bool>, stop: watch::Sender<bool>) {
    stopped(&mut listener_stopping).await;
    let _ = stop.send(true);
}

/// Listens on the job's control exchange and stops the job when the originator cancels it,
/// again on each new connection after one was lost. A control exchange that no longer
/// exists means the job is already over.
async fn watch_for_cancel(shared: Arc<Shared>, job_id: Uuid, stop: watch::Sender<bool>) {
    let mut connections = shared.broker.subscribe();
    loop {
        let broker = connections.borrow_and_update().clone();
        let control = async {
            let queue = broker.declare_private_queue().await?;
            broker
                .bind(&queue, &gorgon_protocol::names::control_exchange(job_id))
                .await?;
            broker.consume(&queue, None).await
        };
        match control.await {
            Ok(mut inbox) => {
                while let Some(incoming) = inbox.next().await {
                    let cancelled = matches!(
                        &incoming.envelope,
                        Ok(envelope) if envelope.job_id == job_id && matches!(envelope.message, Message::Cancel { .. })
                    );
                    if cancelled {
                        let _ = incoming.ack().await;
                        tracing::info!(job = %job_id, "the originator cancelled the job");
                        let _ = stop.send(true);
                        return;
                    }
                    tracing::warn!(job = %job_id, "dropping an unexpected control message");
                    let _ = incoming.discard().await;
                }
            }
            Err(error) if error.is_not_found() => {
                tracing::info!(job = %job_id, "the job is already over");
                let _ = stop.send(true);
                return;
            }
            Err(error) if broker.is_connected() => {
                tracing::warn!(job = %job_id, %error, "cannot listen for a cancel of the job");
                return;
            }
            Err(_) => {}
        }
        // The connection was lost: listen again on the next one.
        if connections.changed().await.is_err() {
            return;
        }
    }
}

/// Publishes one reply to the job's originator.
async fn send(shared: &Shared, job: &Job, message: Message) -> Result<(), BrokerError> {
    shared
        .broker()
        .send_to_queue(&job.reply_to, &Envelope::new(job.id, message))
        .await
}

/// Reports a failure to the originator; a failure to report is only logged.
async fn report(shared: &Shared, job: &Job, message: Message) {
    if let Err(error) = send(shared, job, message).await {
        tracing::warn!(job = %job.id, %error, "cannot report to the originator");
    }
}

/// The base of every callback the listener runs, with the environment Gorgon documents.
fn callback_base(shared: &Shared, job: &Job, workspace: &Path) -> ShellCommand {
    let tags = JobTags::new(job.id, &shared.settings.name).in_workspace(workspace);
    ShellCommand::new("", workspace).envs(tags.pairs())
}

/// Creates the workspace afresh, pulls the tree into it and runs `after_sync`.
async fn prepare(shared: &Shared, job: &Job, workspace: &Path) -> Result<(), Reported> {
    let host = shared.settings.name.clone();
    let sync = &job.definition.sync;
    tracing::info!(job = %job.id, source = %sync.source, workspace = %workspace.display(), "pulling the tree");
    let login = shared
        .settings
        .file_server_password
        .as_ref()
        .map(|password| rsync::Login {
            user: rsync::LISTENER_USER,
            password: password.clone(),
        });
    let pulled = rsync::pull(
        &sync.source,
        workspace,
        &sync.exclude,
        sync.transport,
        login.as_ref(),
    )
    .await;
    if let Err(error) = pulled {
        tracing::error!(job = %job.id, %error, "cannot pull the tree");
        let output = error.to_string();
        report(shared, job, Message::SyncFailed { host, output }).await;
        return Err(Reported);
    }
    let base = callback_base(shared, job, workspace);
    let after_sync = host_command(&job.definition, CallbackName::AfterSync);
    if let Err(failure) = run_callback(CallbackName::AfterSync, after_sync.as_deref(), &base).await
    {
        tracing::error!(job = %job.id, %failure);
        let message = gorgon_worker::callback_failed(&host, None, failure);
        report(shared, job, message).await;
        return Err(Reported);
    }
    Ok(())
}

/// Runs the worker manager until it exits, reporting a crash; on stop, terminates it.
async fn manage(
    shared: &Shared,
    job: &Job,
    workspace: &Path,
    slots: u32,
    stopping: &mut watch::Receiver<bool>,
) {
    let host = shared.settings.name.clone();
    let assignment = WorkerAssignment {
        job_id: job.id,
        definition: job.definition.clone(),
        reply_to: job.reply_to.clone(),
        broker: shared.settings.broker.clone(),
        host: host.clone(),
        workspace: workspace.to_owned(),
        slots,
        worker_id: None,
        warm_runner: shared.warm_runner_for(&job.definition.runner),
        ruby_preload: None,
    };
    if let ManagerEnd::Crashed { status, output } =
        run_manager(&assignment, stopped(stopping)).await
    {
        let crashed = Message::ManagerCrashed {
            host,
            status,
            output,
        };
        report(shared, job, crashed).await;
    }
}
