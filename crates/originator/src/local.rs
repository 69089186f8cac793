//! The local engine of `gorgon start --local`: the job runs on this machine, without broker
//! or file server. The originator plays the listener's and the worker manager's parts
//! itself: it feeds the worker pool (`gorgon_worker::pool`, the same pool as on a listener)
//! from an in-memory queue of the job's files, in the project folder, and the workers'
//! replies (the messages a distributed worker's manager publishes) feed the same state,
//! progress and events as a distributed run.
//!
//! A worker's stdin says when to stop: the pool closes it once every file has a result (the
//! worker runs `after_complete` and exits), and never while the worker holds a file, so a
//! worker that sees its stdin end mid-file knows the originator died. A worker that dies
//! mid-file is restarted and its files go back to the front of the queue, each to run alone,
//! with the same `max_crash_retries` accounting as a distributed run.

use std::time::Duration;

use gorgon_exec::signals::StopSignals;
use gorgon_exec::{grace, ShellCommand};
use gorgon_protocol::{JobDefinition, Message, SyncSettings, SyncTransport, WorkerAssignment};
use gorgon_worker::class_callbacks::HostCallbacks;
use gorgon_worker::pool::{HandOutQueue, Pool, Received, WorkerProgram};

use crate::engine::Plan;
use crate::errors::{StartError, Stop};
use crate::events::EventSink;
use crate::run_core::{Advance, Core};
use crate::state::JobState;

/// How long the workers get, once every file has a result, to run `after_complete`.
const FINISH_WAIT: Duration = Duration::from_secs(30);
/// How long a cancelled run waits for its workers to stop (they are killed after the grace).
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Runs the planned job with `slots` local workers, feeding `state`; returns why it stopped
/// early, if it did. `after_sync` has no place here: nothing is synced.
pub(crate) async fn run(
    plan: &Plan,
    slots: usize,
    state: &mut JobState,
    events: &mut EventSink,
    signals: &mut StopSignals,
) -> Result<Option<Stop>, StartError> {
    let settings = &plan.settings;
    let program = WorkerProgram::gorgon().map_err(StartError::LocalWorkers)?;
    plan.before_originate(signals).await?;
    let progress = plan.progress(state.total());
    let root = settings.project_root.clone();
    let host = plan.host.clone();
    let slots = u32::try_from(slots.max(1)).unwrap_or(u32::MAX);
    let assignment = WorkerAssignment {
        job_id: plan.job_id,
        definition: JobDefinition {
            project: plan.project.clone(),
            originator_host: host.clone(),
            // Nothing is synced: the workers run in the project itself.
            sync: SyncSettings {
                source: root.display().to_string(),
                transport: SyncTransport::Daemon,
                exclude: settings.exclude.clone(),
            },
            runner: settings.runner.clone(),
            callbacks: settings.callbacks.remote.clone(),
            live_output: plan.live_output(),
        },
        reply_to: "stdout".to_owned(),
        broker: settings.broker.clone(),
        host: host.clone(),
        workspace: root.clone(),
        slots,
        worker_id: None,
        warm_runner: None,
        ruby_preload: None,
    };
    let mut core = Core::new(state, events, &progress, settings.max_crash_retries);

    // The listener's and the manager's parts: take the job, `before_creating_workers`.
    core.reply(Message::JobAccepted {
        host: host.clone(),
        slots,
        listener_queue: None,
    });
    // The manager's callbacks also see the workspace, which here is the project itself.
    let base = ShellCommand::new("", &root).envs(plan.tags().in_workspace(&root).pairs());
    let mut stop = None;
    let mut host_callbacks = None;
    match HostCallbacks::before_workers(&assignment.definition, &base).await {
        Ok(started) => host_callbacks = Some(started),
        Err(failure) => {
            let failed = callback_failed(&host, failure);
            stop = core.reply(failed);
        }
    }
    let assignment = WorkerAssignment {
        ruby_preload: host_callbacks
            .as_ref()
            .and_then(HostCallbacks::ruby_preload),
        ..assignment
    };
    let definition = assignment.definition.clone();
    let (mut pool, mut from_workers) = Pool::new(program, assignment);
    let mut queue = HandOutQueue::new(core.state.queued().iter().cloned());
    if stop.is_none() {
        // No more workers than files (than the largest phase has, with phases).
        let most = core.state.queued().len().max(core.state.phases().largest());
        let workers = slots.min(u32::try_from(most).unwrap_or(u32::MAX));
        let plural = if workers == 1 { "" } else { "s" };
        progress.note(&format!("Running {workers} worker{plural} on this machine"));
        for worker_id in 1..=workers {
            if let Err(error) = pool.spawn(worker_id).await {
                let crashed = Message::WorkerCrashed {
                    host: host.clone(),
                    worker_id,
                    status: format!("could not start: {error}"),
                    output: String::new(),
                };
                core.reply(crashed);
            }
        }
    }

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while stop.is_none() {
        if core.state.all_settled() {
            // The next phase's files, in a run with phases.
            match core.advance_phases(plan, signals).await {
                Advance::Queue(units) => queue.extend(units),
                Advance::Over => break,
                Advance::Stopped(stopped) => {
                    stop = Some(stopped);
                    break;
                }
            }
        }
        hand_out(&mut pool, &mut queue, core.state).await;
        if !pool.any_worker() {
            break;
        }
        tokio::select! {
            Some(event) = from_workers.recv() => {
                let received = pool.receive(event, !core.state.all_settled());
                if let Some(stopped) = take_in(received, &mut queue).and_then(|m| core.reply(m)) {
                    stop = Some(stopped);
                }
                for retry in core.retries() {
                    queue.push_retry(retry.unit, retry.avoid.worker_id);
                }
            }
            signal = signals.recv() => stop = Some(signal.into()),
            _ = tick.tick() => progress.update(core.state),
        }
    }
    if stop.is_none() && !core.state.all_settled() {
        stop = Some(Stop::Failed(format!(
            "every worker has stopped, but {} files have no result",
            core.state.unfinished().len()
        )));
    }

    // Ending: on success the closed stdins tell the workers to finish; otherwise they are
    // stopped. Either way their last replies (an `after_complete` failure) still count.
    let wait = match &stop {
        None => FINISH_WAIT,
        Some(stop) => {
            core.stopping(stop);
            pool.stop_all(grace::WORKER);
            CANCEL_WAIT
        }
    };
    hand_out(&mut pool, &mut queue, core.state).await;
    let deadline = tokio::time::Instant::now() + wait;
    while !pool.is_empty() {
        tokio::select! {
            Some(event) = from_workers.recv() => {
                let received = pool.receive(event, false);
                if let Some(message) = take_in(received, &mut queue) {
                    core.reply(message);
                }
            }
            // A second Ctrl-C: no more grace.
            () = signals.interrupt() => pool.stop_all(Duration::ZERO),
            _ = tokio::time::sleep_until(deadline) => {
                progress.note(&format!(
                    "Workers still running after {} s: stopping them",
                    wait.as_secs()
                ));
                pool.stop_all(Duration::ZERO);
                break;
            }
        }
    }
    if let (None, Some(host_callbacks)) = (&stop, host_callbacks) {
        if let Err(failure) = host_callbacks.after_workers(&definition, &base).await {
            core.reply(callback_failed(&host, failure));
        }
    }
    core.reply(Message::JobDone { host });
    progress.finish();
    Ok(stop)
}

/// A callback of this machine's part (no worker's) that failed.
fn callback_failed(host: &str, failure: gorgon_exec::CallbackFailure) -> Message {
    gorgon_worker::callback_failed(host, None, failure)
}

/// The message the state must see of what the pool received, if any; the files a dead
/// worker held go back to the queue, each to run alone.
fn take_in(received: Received, queue: &mut HandOutQueue) -> Option<Message> {
    match received {
        Received::Reply { message, .. } => Some(message),
        Received::Exited {
            unfinished, crash, ..
        } => {
            queue.put_back_suspects(unfinished);
            crash
        }
        Received::Nothing => None,
    }
}

/// Restarts the workers that crashed, gives every idle worker its next files, and tells
/// every worker to finish once every file has a result.
async fn hand_out(pool: &mut Pool, queue: &mut HandOutQueue, state: &JobState) {
    pool.restart_crashed().await;
    if state.all_settled() {
        pool.close_all();
        return;
    }
    let others = pool.worker_count() > 1;
    for (worker_id, count) in pool.wants() {
        // A file settled meanwhile (crashed too often) is not handed out again.
        let files = queue.take(worker_id, count, others, |file| state.has_result(file));
        if files.is_empty() {
            continue;
        }
        let refused = pool.give(worker_id, files).await;
        queue.put_back(refused);
    }
}
