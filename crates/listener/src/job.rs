//! One job on one listener: wait for its turn at the host's slots, accept it, pull the tree
//! into a fresh workspace, run `after_sync`, run a worker manager process with the job's
//! slots until it exits, then clean up and report `JobDone`. Every step's failure is
//! reported to the originator rather than returned.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gorgon_exec::{rsync, run_callback, ShellCommand};
use gorgon_protocol::{BrokerError, CallbackName, Inbox, JobDefinition, Message, WorkerAssignment};
use gorgon_worker::{host_command, run_manager, HostReplies, ManagerEnd};
use tokio::sync::watch;
use uuid::Uuid;

use crate::metrics::{Held, JobFiles, RefusalReason};
use crate::slots::{Grant, Turn};
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

/// Tells the originator of `job` that this listener will not run it, and why.
pub async fn refuse(shared: &Shared, job: &Job, reason: String) {
    let host = shared.settings.name.clone();
    let replies = HostReplies::new(job.id, &host, &job.reply_to, || shared.broker());
    match replies.send(Message::JobRefused { host, reason }).await {
        // Its originator has gone: nobody is left to tell.
        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "cannot tell the originator that the job is refused")
        }
    }
}

/// Waits for the job's turn at the host's slots: at once, or (telling the originator that
/// the job waits) when the jobs before it are done. `None` when the job will not run here:
/// its originator has gone, or the listener stops first.
async fn wait_for_turn(
    shared: &Shared,
    job: &Job,
    replies: &HostReplies<'_>,
    turn: Turn,
    mut listener_stopping: watch::Receiver<bool>,
) -> Option<Grant> {
    let (ahead, grant) = match turn {
        Turn::Now(grant) => return Some(grant),
        Turn::Later { ahead, grant } => (ahead, grant),
    };
    let _waiting = Held::new(&shared.metrics.jobs_waiting);
    let host = shared.settings.name.clone();
    let slots = shared.slots.total();
    match replies
        .send(Message::JobQueued { host, ahead, slots })
        .await
    {
        Err(BrokerError::Unroutable(_)) => {
            tracing::info!(job = %job.id, "the originator has gone; dropping the waiting job");
            return None;
        }
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "cannot tell the originator that the job waits")
        }
        Ok(()) => {}
    }
    let mut draining = shared.draining.subscribe();
    tokio::select! {
        granted = grant => {
            let grant = granted.ok()?;
            tracing::info!(job = %job.id, slots = grant.slots(), "the job's turn has come");
            Some(grant)
        }
        () = stopped(&mut draining) => {
            shared.metrics.refused(RefusalReason::draining);
            refuse(shared, job, "the listener is draining: it takes no more jobs".into()).await;
            None
        }
        () = stopped(&mut listener_stopping) => {
            shared.metrics.refused(RefusalReason::listener_stopping);
            refuse(shared, job, "the listener stopped while the job waited for its slots".into()).await;
            None
        }
    }
}

/// Runs the whole job and returns its id. Once `stopping` turns true, the current step is
/// abandoned (dropping a shell command kills its process group) or the worker manager is
/// terminated, and the job is cleaned up and reported done. The job counts as taken
/// (`JobAccepted`) only once its turn has come: a job waiting for slots holds nothing on
/// the broker, and one whose originator has gone meanwhile is dropped when its turn comes.
pub async fn run_job(
    shared: Arc<Shared>,
    job: Job,
    turn: Turn,
    listener_stopping: watch::Receiver<bool>,
) -> Uuid {
    let host = shared.settings.name.clone();
    let replies = HostReplies::new(job.id, &host, &job.reply_to, || shared.broker());
    let on_board = shared.board.enter(
        job.id,
        &job.definition.project,
        &job.definition.originator_host,
    );
    let turn = wait_for_turn(&shared, &job, &replies, turn, listener_stopping.clone());
    let Some(grant) = turn.await else {
        return job.id;
    };
    on_board.running(grant.slots());
    let running = Held::new(&shared.metrics.jobs_running);
    // Taken (confirmed) before anything else is said of the job and before its workers
    // start, while the manager checks the job: a round trip to a far broker saved.
    let gone = AtomicBool::new(false);
    let mut accepting = Some(accept(&shared, &job, &replies, grant.slots(), &gone));
    // The job stops early when the listener stops or the originator cancels it, at any
    // step: during the pull and after_sync too, before any worker exists.
    let (stop, mut stopping) = watch::channel(false);
    let (over, job_over) = watch::channel(false);
    let listener_stopped = listener_stopping.clone();
    let forwarder = tokio::spawn(forward_stop(listener_stopping, stop.clone()));
    let cancel_watch = tokio::spawn(watch_for_cancel(shared.clone(), job.id, stop, job_over));
    let workspace = take_workspace(&shared, &job, &replies, &mut accepting, &gone).await;
    let mut keep_workspace = false;
    if let Some(workspace) = &workspace {
        // The worker manager starts now and connects to the broker while the tree comes;
        // it starts its workers once the tree is ready.
        let mut stopping_early = stopping.clone();
        let accepting = accepting.take();
        let ready = async {
            if let Some(accepting) = accepting {
                accepting.await;
            }
            if gone.load(Ordering::Relaxed) {
                return false;
            }
            let prepared = tokio::select! {
                () = stopped(&mut stopping_early) => Err(Reported),
                prepared = prepare(&shared, &job, &replies, &workspace.path) => prepared,
            };
            // A job whose tree arrived once the listener drains runs none of its files here.
            let draining = *shared.draining.borrow();
            prepared.is_ok() && !*stopping_early.borrow() && !draining
        };
        let assignment = assignment(&shared, &job, &workspace.path, grant.slots());
        let files = Arc::new(JobFiles::new(shared.metrics.clone()));
        on_board.files(files.clone());
        let reports = files.clone();
        let reports = move |report| reports.report(report);
        let mut draining = shared.draining.subscribe();
        let drain = stopped(&mut draining);
        let spare = shared.spare.take();
        let stop = stopped(&mut stopping);
        let end = run_manager(&assignment, spare, ready, stop, drain, reports).await;
        files.end();
        if end != ManagerEnd::NotStarted {
            replies.manager_ended(end).await;
            send_artifacts(&job, &replies, &workspace.path).await;
            // A job that ran to its end leaves a tree worth keeping warm; a cancelled one
            // may have stopped anywhere.
            keep_workspace = !*stopping.borrow();
        }
    }
    forwarder.abort();
    let _ = over.send(true);
    // Nothing of the job may outlive it on this host, even a process that left its group.
    // Reading every process's environment takes a while on a busy host: off the runtime's
    // threads, so that pings and other jobs are not held up meanwhile.
    let tags = JobTags::new(job.id, &host);
    let _ = tokio::task::spawn_blocking(move || gorgon_exec::procs::kill_tagged(&tags)).await;
    // The job's slots go to the next job in line only now that nothing of it runs.
    drop(grant);
    drop(running);
    drop(on_board);
    // A job whose originator had gone before it was taken touched nothing of the tree.
    let keep_workspace = keep_workspace || gone.load(Ordering::Relaxed);
    if let Some(workspace) = workspace.filter(|_| !keep_workspace) {
        let path = workspace.path.clone();
        // A large tree takes a while to remove: off the runtime's threads too.
        let discarded = tokio::task::spawn_blocking(move || workspace.discard()).await;
        if let Ok(Err(error)) = discarded {
            tracing::warn!(job = %job.id, workspace = %path.display(), %error, "cannot remove the workspace");
        }
    }
    if !gone.load(Ordering::Relaxed) {
        replies.done().await;
    }
    // The next job's manager connects now, while this listener waits for it (a draining
    // listener keeps none).
    if !*listener_stopped.borrow() {
        shared.spare.refill(&shared.settings);
    }
    // The cancel watch closes its consumer itself (an aborted one would leave lapin to close
    // its channel later, which it logs as an error); it is bounded by the broker's calls,
    // and the originator need not wait for it: a round trip to a far broker.
    let _ = cancel_watch.await;
    job.id
}

/// The job's workspace; `None` when none can be made (reported to the originator once
/// the job is taken, unless it has gone).
async fn take_workspace<F: std::future::Future<Output = ()>>(
    shared: &Shared,
    job: &Job,
    replies: &HostReplies<'_>,
    accepting: &mut Option<F>,
    gone: &AtomicBool,
) -> Option<Workspace> {
    let taken = Workspace::take(&shared.settings.workspace_root, &job.definition.sync.source);
    let error = match taken {
        Ok(workspace) => return Some(workspace),
        Err(error) => error,
    };
    let output = format!(
        "cannot create a workspace under {}: {error}",
        shared.settings.workspace_root.display()
    );
    tracing::error!(job = %job.id, "{output}");
    if let Some(accepting) = accepting.take() {
        accepting.await;
    }
    if !gone.load(Ordering::Relaxed) {
        let host = shared.settings.name.clone();
        replies.report(Message::SyncFailed { host, output }).await;
    }
    None
}

/// Takes `job` with `slots` (`JobAccepted`); sets `gone` when its originator has gone.
async fn accept(
    shared: &Shared,
    job: &Job,
    replies: &HostReplies<'_>,
    slots: u32,
    gone: &AtomicBool,
) {
    match replies.accept(slots, Some(shared.queue.clone())).await {
        Err(BrokerError::Unroutable(_)) => {
            tracing::info!(job = %job.id, "the originator has gone; dropping the job");
            gone.store(true, Ordering::Relaxed);
        }
        Err(error) => tracing::warn!(job = %job.id, %error, "cannot accept the job"),
        Ok(()) => {}
    }
}

/// Sends the originator the files of `workspace` that `job.artifacts` names, and those its
/// limit kept back; nothing when the job names none or none matched. Each message's files
/// are read (off the runtime's threads) just before it is sent, so the host holds one
/// message of them at a time.
async fn send_artifacts(job: &Job, replies: &HostReplies<'_>, workspace: &Path) {
    let artifacts = job.definition.artifacts.clone();
    if artifacts.is_off() {
        return;
    }
    let path = workspace.to_owned();
    let Ok(plan) =
        tokio::task::spawn_blocking(move || crate::artifacts::plan(&path, &artifacts)).await
    else {
        return;
    };
    let mut left_out = plan.left_out;
    let mut batches = plan.batches;
    if batches.is_empty() && !left_out.is_empty() {
        batches.push(Vec::new());
    }
    let count = batches.len();
    for (index, batch) in batches.into_iter().enumerate() {
        let path = workspace.to_owned();
        let read = move || crate::artifacts::read(&path, &batch);
        let Ok((files, problems)) = tokio::task::spawn_blocking(read).await else {
            return;
        };
        left_out.extend(problems);
        let message = Message::Artifacts {
            host: replies.host().to_owned(),
            files,
            left_out: std::mem::take(&mut left_out),
            more: index + 1 < count,
        };
        if let Err(error) = replies.send(message).await {
            tracing::warn!(job = %job.id, %error, "cannot send the job's artifacts");
            return;
        }
    }
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
/// again on each new connection after one was lost, until `job_over`. A control exchange
/// that no longer exists means the job is already over.
async fn watch_for_cancel(
    shared: Arc<Shared>,
    job_id: Uuid,
    stop: watch::Sender<bool>,
    mut job_over: watch::Receiver<bool>,
) {
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
        let control = tokio::select! {
            () = stopped(&mut job_over) => return,
            control = control => control,
        };
        match control {
            Ok(inbox) => {
                if read_control(inbox, job_id, &stop, &mut job_over).await {
                    return;
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
        let changed = tokio::select! {
            () = stopped(&mut job_over) => return,
            changed = connections.changed() => changed,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// Reads the job's control queue until the originator cancels the job (then stops it) or
/// the job is over, and closes the consumer: true then. False when the consumer ended
/// first (its connection was lost).
async fn read_control(
    mut inbox: Inbox,
    job_id: Uuid,
    stop: &watch::Sender<bool>,
    job_over: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        let incoming = tokio::select! {
            () = stopped(job_over) => break,
            incoming = inbox.next() => incoming,
        };
        let Some(incoming) = incoming else {
            return false;
        };
        let cancelled = matches!(
            &incoming.envelope,
            Ok(envelope) if envelope.job_id == job_id && matches!(envelope.message, Message::Cancel { .. })
        );
        if cancelled {
            let _ = incoming.ack().await;
            tracing::info!(job = %job_id, "the originator cancelled the job");
            let _ = stop.send(true);
            break;
        }
        tracing::warn!(job = %job_id, "dropping an unexpected control message");
        let _ = incoming.discard().await;
    }
    // Closed here, not dropped: a dropped consumer leaves lapin to close its channel later,
    // racing the job's end, which it logs as an error.
    inbox.close().await;
    true
}

/// The base of every callback the listener runs, with the environment Gorgon documents.
fn callback_base(shared: &Shared, job: &Job, workspace: &Path) -> ShellCommand {
    let tags = JobTags::new(job.id, &shared.settings.name).in_workspace(workspace);
    ShellCommand::new("", workspace).envs(tags.pairs())
}

/// Brings the workspace to the job's tree, checked against the job's manifest, and runs
/// `after_sync`.
async fn prepare(
    shared: &Shared,
    job: &Job,
    replies: &HostReplies<'_>,
    workspace: &Path,
) -> Result<(), Reported> {
    let host = shared.settings.name.clone();
    let (path, seal) = (workspace.to_owned(), job.definition.sync.tree.clone());
    let held =
        tokio::task::spawn_blocking(move || crate::tree_check::already_holds(&path, seal.as_ref()))
            .await
            .unwrap_or(false);
    if held {
        tracing::info!(job = %job.id, workspace = %workspace.display(), "the workspace holds the job's sealed tree already: no pull");
    } else {
        pull(shared, job, replies, workspace).await?;
        check_pulled(shared, job, replies, workspace).await?;
    }
    let base = callback_base(shared, job, workspace);
    let after_sync = host_command(&job.definition, CallbackName::AfterSync);
    if let Err(failure) = run_callback(CallbackName::AfterSync, after_sync.as_deref(), &base).await
    {
        tracing::error!(job = %job.id, %failure);
        let message = gorgon_worker::callback_failed(&host, None, failure);
        replies.report(message).await;
        return Err(Reported);
    }
    Ok(())
}

/// Pulls the tree into the workspace.
async fn pull(
    shared: &Shared,
    job: &Job,
    replies: &HostReplies<'_>,
    workspace: &Path,
) -> Result<(), Reported> {
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
    let pulling = std::time::Instant::now();
    let pulled = rsync::pull(
        &sync.source,
        workspace,
        &sync.exclude,
        sync.transport,
        login.as_ref(),
    )
    .await;
    match pulled {
        Ok(()) => {
            let seconds = pulling.elapsed().as_secs_f64();
            shared.metrics.pull_seconds.observe(seconds);
            Ok(())
        }
        Err(error) => {
            tracing::error!(job = %job.id, %error, "cannot pull the tree");
            let (host, output) = (shared.settings.name.clone(), error.to_string());
            replies.report(Message::SyncFailed { host, output }).await;
            Err(Reported)
        }
    }
}

/// Checks the pulled workspace against the job's seal.
async fn check_pulled(
    shared: &Shared,
    job: &Job,
    replies: &HostReplies<'_>,
    workspace: &Path,
) -> Result<(), Reported> {
    let (path, seal) = (workspace.to_owned(), job.definition.sync.tree.clone());
    let required = shared.settings.broker.signing.is_some();
    let checked = tokio::task::spawn_blocking(move || {
        crate::tree_check::check(&path, seal.as_ref(), required)
    })
    .await
    .expect("the tree's check does not panic");
    if let Err(refusal) = checked {
        tracing::error!(job = %job.id, %refusal, "refusing the pulled tree");
        let (host, reason) = (shared.settings.name.clone(), refusal.to_string());
        replies.report(Message::TreeRefused { host, reason }).await;
        return Err(Reported);
    }
    Ok(())
}

/// The assignment of the job's worker manager, in `workspace` with `slots` workers.
fn assignment(shared: &Shared, job: &Job, workspace: &Path, slots: u32) -> WorkerAssignment {
    WorkerAssignment::new(
        job.id,
        job.definition.clone(),
        job.reply_to.clone(),
        shared.settings.broker.clone(),
        shared.settings.name.clone(),
        workspace,
        slots,
    )
    .with_warm_runner(shared.warm_runner_for(&job.definition.runner))
}
