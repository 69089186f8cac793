//! The local engine of `gorgon start --local`: the job runs on this machine, without broker
//! or file server. The originator plays the listener's and the worker manager's parts
//! itself: it starts N `gorgon __work --local` processes (each in its own process group) in
//! the project folder, hands each one file at a time as a `File` envelope on its stdin, and
//! reads the workers' replies — the same messages a distributed worker sends to the reply
//! queue — as JSON lines on their stdout. Those replies feed the same state, progress and
//! events as a distributed run.
//!
//! A worker's stdin says when to stop: the originator closes it once every file has a result
//! (the worker runs `after_complete` and exits), and never while the worker holds a file, so
//! a worker that sees its stdin end mid-file knows the originator died. A worker that dies
//! mid-file is restarted and its file goes back to the front of the queue, with the same
//! `max_crash_retries` accounting as a distributed run.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use gorgon_exec::procs::{kill_worker_leftovers, worker_command};
use gorgon_exec::tail::{relay, LineTail};
use gorgon_exec::{describe_status, run_callback, terminate_group};
use gorgon_protocol::names::{LOCAL_WORKER_FLAG, WORKER_SUBCOMMAND};
use gorgon_protocol::{
    batch_size, CallbackName, DecodeError, Envelope, JobDefinition, Message, SyncSettings,
    SyncTransport, WorkerAssignment,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::events::EventSink;
use crate::run::{handle_reply, Plan, StartError, Stop};
use crate::state::JobState;
use crate::view::Progress;

/// How many times one worker slot is restarted after crashes (as on a listener).
const MAX_RESTARTS: u32 = 5;
/// How long a worker may take to stop after SIGTERM before it is killed.
const WORKER_GRACE: Duration = Duration::from_secs(2);
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
) -> Result<Option<Stop>, StartError> {
    let settings = &plan.settings;
    let program = std::env::current_exe().map_err(StartError::LocalWorkers)?;
    plan.before_originate().await?;
    let progress = Progress::new(state.total(), plan.options.quiet);
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
        },
        reply_to: "stdout".to_owned(),
        broker: settings.broker.clone(),
        host: host.clone(),
        workspace: root.clone(),
        slots,
        worker_id: None,
    };
    let retries = settings.max_crash_retries;
    let reply = |state: &mut JobState, events: &mut EventSink, message: Message| {
        handle_reply(state, &progress, events, retries, message)
    };

    // The listener's and the manager's parts: take the job, `before_creating_workers`.
    reply(
        state,
        events,
        Message::JobAccepted {
            host: host.clone(),
            slots,
            listener_queue: None,
        },
    );
    let base = plan
        .base_command()
        .env("GORGON_WORKSPACE", root.display().to_string());
    let callbacks = &settings.callbacks.remote;
    let before = callbacks.before_creating_workers.as_deref();
    let mut stop = None;
    if let Err(failure) = run_callback(CallbackName::BeforeCreatingWorkers, before, &base).await {
        let failed = callback_failed(&host, failure);
        stop = reply(state, events, failed).map(Stop::Failed);
    }

    let (sender, mut from_workers) = mpsc::unbounded_channel();
    let mut pool = Pool {
        program,
        batch_limit: assignment.definition.runner.batch_limit(),
        assignment,
        workers: BTreeMap::new(),
        queue: state.queued().iter().cloned().collect(),
        suspects: HashSet::new(),
        restarts: HashMap::new(),
        restarting: Vec::new(),
        sender,
        stopping: false,
    };
    if stop.is_none() {
        progress.note(&format!("Running {slots} workers on this machine"));
        for worker_id in 1..=slots {
            if let Err(error) = pool.spawn(worker_id).await {
                let crashed = Message::WorkerCrashed {
                    host: host.clone(),
                    worker_id,
                    status: format!("could not start: {error}"),
                    output: String::new(),
                };
                reply(state, events, crashed);
            }
        }
        pool.hand_out(state).await;
    }

    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while !state.all_settled() && stop.is_none() && pool.any_worker() {
        tokio::select! {
            Some(event) = from_workers.recv() => {
                let message = pool.receive(event, state);
                if let Some(reason) = message.and_then(|m| reply(state, events, m)) {
                    stop = Some(Stop::Failed(reason));
                }
                pool.hand_out(state).await;
            }
            _ = interrupt.recv() => stop = Some(Stop::Interrupted),
            _ = terminate.recv() => stop = Some(Stop::Terminated),
            _ = tick.tick() => progress.update(state),
        }
    }
    if stop.is_none() && !state.all_settled() {
        stop = Some(Stop::Failed(format!(
            "every worker has stopped, but {} files have no result",
            state.unfinished().len()
        )));
    }

    // Ending: on success the closed stdins tell the workers to finish; otherwise they are
    // stopped. Either way their last replies (an `after_complete` failure) still count.
    let wait = match &stop {
        None => FINISH_WAIT,
        Some(stop) => {
            stop.announce(events, &progress);
            pool.stop_all(WORKER_GRACE);
            CANCEL_WAIT
        }
    };
    pool.hand_out(state).await;
    let deadline = tokio::time::Instant::now() + wait;
    while !pool.workers.is_empty() {
        tokio::select! {
            Some(event) = from_workers.recv() => {
                if let Some(message) = pool.receive(event, state) {
                    reply(state, events, message);
                }
            }
            // A second Ctrl-C: no more grace.
            _ = interrupt.recv() => pool.stop_all(Duration::ZERO),
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
    if stop.is_none() {
        let after = callbacks.after_creating_workers.as_deref();
        if let Err(failure) = run_callback(CallbackName::AfterCreatingWorkers, after, &base).await {
            reply(state, events, callback_failed(&host, failure));
        }
    }
    reply(state, events, Message::JobDone { host });
    progress.finish();
    Ok(stop)
}

fn callback_failed(host: &str, failure: gorgon_exec::CallbackFailure) -> Message {
    Message::CallbackFailed {
        host: host.to_owned(),
        worker_id: None,
        callback: failure.callback,
        status: failure.status,
        output: failure.output,
    }
}

/// What a worker's reader task tells the engine.
enum FromWorker {
    /// One line of the worker's stdout.
    Reply {
        worker_id: u32,
        envelope: Box<Result<Envelope, DecodeError>>,
    },
    /// The worker has exited; always its last event.
    Exited {
        worker_id: u32,
        status: std::io::Result<ExitStatus>,
        /// Its last stderr lines, for a crash report.
        output: String,
    },
}

/// A running local worker.
struct Worker {
    /// Process group (= pid) of the worker, for stopping it.
    group: Option<u32>,
    /// Where its files go; `None` once closed, which tells it that there are no more.
    stdin: Option<ChildStdin>,
    /// The files it was handed and has not reported finished, in the order handed.
    files: Vec<String>,
    /// The seconds and the count of the results since it was last idle, and the time per
    /// file they gave: it sizes the next hand-out the way the worker sizes its batches.
    since_idle: (f64, u32),
    seconds_per_file: Option<f64>,
    /// The task stopping it, once asked; aborted when it has exited, so that it never
    /// signals a process group whose id the system has since handed out again.
    stopper: Option<tokio::task::JoinHandle<()>>,
}

/// The local workers and the files not yet handed out.
struct Pool {
    program: PathBuf,
    assignment: WorkerAssignment,
    /// `job.runner.batch_seconds`: how much expected work an idle worker is handed at once.
    batch_limit: Option<Duration>,
    workers: BTreeMap<u32, Worker>,
    /// Files to hand out, in queue order; a file whose worker died goes back to the front.
    queue: VecDeque<String>,
    /// Files whose worker died before their result: each is handed out alone from then on,
    /// so that a death during it names it (as RabbitMQ's redelivered files are).
    suspects: HashSet<String>,
    restarts: HashMap<u32, u32>,
    /// Slots whose worker crashed, to start again.
    restarting: Vec<u32>,
    sender: mpsc::UnboundedSender<FromWorker>,
    /// The run is stopping: an exit is not a crash, and nobody is restarted.
    stopping: bool,
}

impl Pool {
    /// Starts worker `worker_id` in its own process group, hands it its assignment and
    /// starts the task that reads its replies and reports its exit.
    async fn spawn(&mut self, worker_id: u32) -> std::io::Result<()> {
        let assignment = &self.assignment;
        let job = assignment.job_id.to_string();
        let mut child = worker_command(
            &self.program,
            &[WORKER_SUBCOMMAND, LOCAL_WORKER_FLAG],
            &assignment.workspace,
            (&job, &assignment.host, worker_id),
        )
        .spawn()?;
        let group = child.id();
        let tail = LineTail::default();
        let stderr = child.stderr.take().map(|pipe| {
            relay(pipe, tail.clone(), move |line| {
                // One write per line keeps lines of different workers from interleaving.
                let _ = writeln!(std::io::stderr().lock(), "[worker {worker_id}] {line}");
            })
        });
        let mut stdin = child.stdin.take();
        if let Some(pipe) = stdin.as_mut() {
            let line = assignment.encode_line(Some(worker_id));
            if let Err(error) = pipe.write_all(&line).await {
                // The worker has already exited; its status and output tell why.
                tracing::warn!(%error, "cannot hand worker {worker_id} its assignment");
            }
        }
        let stdout = child.stdout.take();
        let sender = self.sender.clone();
        tokio::spawn(async move {
            if let Some(stdout) = stdout {
                let mut reader = BufReader::new(stdout);
                let mut line = Vec::new();
                while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                    let envelope = Box::new(Envelope::decode(&line));
                    let _ = sender.send(FromWorker::Reply {
                        worker_id,
                        envelope,
                    });
                    line.clear();
                }
            }
            let status = child.wait().await;
            // Its pipes close as it exits; the bound only guards against a stray holder.
            if let Some(stderr) = stderr {
                let _ = tokio::time::timeout(Duration::from_secs(1), stderr).await;
            }
            let _ = sender.send(FromWorker::Exited {
                worker_id,
                status,
                output: tail.text(),
            });
        });
        self.workers.insert(
            worker_id,
            Worker {
                group,
                stdin,
                files: Vec::new(),
                since_idle: (0.0, 0),
                seconds_per_file: None,
                stopper: None,
            },
        );
        Ok(())
    }

    /// Takes in one event of a worker; returns the message the state must see, if any.
    fn receive(&mut self, event: FromWorker, state: &JobState) -> Option<Message> {
        match event {
            FromWorker::Reply {
                worker_id,
                envelope,
            } => match *envelope {
                Ok(envelope) if envelope.job_id == self.assignment.job_id => {
                    if let Message::FileFinished(result) = &envelope.message {
                        if let Some(worker) = self.workers.get_mut(&worker_id) {
                            if let Some(at) = worker.files.iter().position(|f| *f == result.file) {
                                worker.files.remove(at);
                                worker.since_idle.0 += result.seconds;
                                worker.since_idle.1 += 1;
                                if worker.files.is_empty() {
                                    let (seconds, count) = std::mem::take(&mut worker.since_idle);
                                    worker.seconds_per_file = Some(seconds / f64::from(count));
                                }
                            }
                        }
                    }
                    Some(envelope.message)
                }
                Ok(envelope) => {
                    tracing::warn!(job = %envelope.job_id, "dropping a reply of another job");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, worker_id, "dropping an unreadable reply");
                    None
                }
            },
            FromWorker::Exited {
                worker_id,
                status,
                output,
            } => self.exited(worker_id, status, output, state),
        }
    }

    /// Forgets an exited worker, puts its file back in the queue, and returns its crash
    /// report when it was not asked to stop and did not end well (then it is restarted by
    /// the next [`Pool::hand_out`]).
    fn exited(
        &mut self,
        worker_id: u32,
        status: std::io::Result<ExitStatus>,
        output: String,
        state: &JobState,
    ) -> Option<Message> {
        let worker = self.workers.remove(&worker_id)?;
        if let Some(stopper) = worker.stopper {
            stopper.abort();
        }
        for file in worker.files.into_iter().rev() {
            self.suspects.insert(file.clone());
            self.queue.push_front(file);
        }
        let status = match status {
            Ok(status) if status.success() => {
                tracing::info!("worker {worker_id} finished");
                return None;
            }
            Ok(status) => describe_status(status),
            Err(error) => format!("could not wait for it: {error}"),
        };
        if self.stopping {
            tracing::info!("worker {worker_id} stopped ({status})");
            return None;
        }
        tracing::warn!("worker {worker_id} crashed ({status})");
        let job = self.assignment.job_id.to_string();
        kill_worker_leftovers(&job, &self.assignment.host, worker_id);
        if !state.all_settled() {
            let count = self.restarts.entry(worker_id).or_default();
            if *count < MAX_RESTARTS {
                *count += 1;
                tracing::info!("restarting worker {worker_id} ({count} of {MAX_RESTARTS})");
                // Restarted by `hand_out`, which may await.
                self.restarting.push(worker_id);
            } else {
                tracing::error!(
                    "worker {worker_id} crashed {MAX_RESTARTS} times; not restarting it"
                );
            }
        }
        Some(Message::WorkerCrashed {
            host: self.assignment.host.clone(),
            worker_id,
            status,
            output,
        })
    }

    /// Restarts the workers waiting for it, gives every idle worker its next file, and
    /// closes every worker's stdin once every file has a result.
    async fn hand_out(&mut self, state: &JobState) {
        for worker_id in std::mem::take(&mut self.restarting) {
            if !self.stopping {
                if let Err(error) = self.spawn(worker_id).await {
                    tracing::error!(%error, "cannot restart worker {worker_id}");
                }
            }
        }
        if state.all_settled() || self.stopping {
            for worker in self.workers.values_mut() {
                worker.stdin = None;
            }
            return;
        }
        for worker in self.workers.values_mut() {
            let Some(stdin) = worker.stdin.as_mut() else {
                continue;
            };
            if !worker.files.is_empty() {
                continue;
            }
            // As many files as the worker would take into one batch: one until it has timed
            // a file, then as many as fit in the batch limit.
            let count = match (worker.seconds_per_file, self.batch_limit) {
                (Some(seconds), Some(limit)) => batch_size(seconds, limit),
                _ => 1,
            };
            for _ in 0..count {
                // A file settled meanwhile (crashed too often) is not handed out again.
                let Some(file) = std::iter::from_fn(|| self.queue.pop_front())
                    .find(|file| !state.has_result(file))
                else {
                    break;
                };
                let alone = self.suspects.contains(&file);
                if alone && !worker.files.is_empty() {
                    self.queue.push_front(file);
                    break;
                }
                let line =
                    Envelope::new(self.assignment.job_id, Message::File { file: file.clone() })
                        .encode_line();
                match stdin.write_all(&line).await {
                    Ok(()) => worker.files.push(file),
                    // It is exiting; its exit puts nothing back, so the file goes back here.
                    Err(_) => {
                        self.queue.push_front(file);
                        break;
                    }
                }
                if alone {
                    break;
                }
            }
            if self.queue.is_empty() {
                return;
            }
        }
    }

    /// Whether any worker runs or is about to be restarted.
    fn any_worker(&self) -> bool {
        !self.workers.is_empty() || !self.restarting.is_empty()
    }

    /// Stops every worker: SIGTERM to its group, `grace`, then SIGKILL.
    fn stop_all(&mut self, grace: Duration) {
        self.stopping = true;
        for worker in self.workers.values_mut() {
            worker.stdin = None;
            if let Some(group) = worker.group {
                if let Some(previous) = worker
                    .stopper
                    .replace(tokio::spawn(terminate_group(group, grace)))
                {
                    previous.abort();
                }
            }
        }
        self.restarting.clear();
    }
}
