//! `gorgon start`: one run from configuration to exit code. The event loop owns the
//! [`JobState`]; the broker, signals and timers feed it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gorgon_exec::rsync;
use gorgon_exec::{run_callback, ShellCommand};
use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    exit_code, names, Broker, BrokerError, CallbackName, Envelope, Inbox, JobDefinition, Message,
    SyncSettings,
};
use tokio::signal::unix::{signal, SignalKind};
use uuid::Uuid;

use crate::events::{Event, EventSink, ProblemKind, Totals};
use crate::files::{self, FilesError};
use crate::rerun::{self, Rerun, RerunError};
use crate::settings::{ConfigError, Settings};
use crate::state::{JobState, Problem, Settled};
use crate::view::{self, Ending, Progress};

/// How long the originator waits, once every file has a result, for listeners to run their
/// closing callbacks and report that they are done.
const FINISH_WAIT: Duration = Duration::from_secs(30);
/// How long a cancelled run waits for listeners to confirm that they stopped.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// How often the originator checks that the listeners working on the job are alive.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);
/// A files queue nobody consumes is removed by the broker after this, so that a crashed
/// originator leaves nothing behind for long.
const FILES_QUEUE_EXPIRY: Duration = Duration::from_secs(30 * 60);

/// What the user asked for on the command line.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    pub config: PathBuf,
    /// Files or globs that replace `files` for this run.
    pub files: Vec<String>,
    /// Overrides `job.file_timeout`, in seconds.
    pub file_timeout: Option<f64>,
    /// Write a JUnit XML report here (overrides `junit_file`).
    pub junit: Option<PathBuf>,
    /// Write newline-delimited JSON events here; `-` is stdout.
    pub events: Option<PathBuf>,
    /// Run only the files of the previous run's `failed_files` list.
    pub failed: bool,
    /// No progress lines: only the report.
    pub quiet: bool,
}

/// A run that could not start or went wrong outside the tests, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Rerun(#[from] RerunError),
    #[error("there are no files to test: no file matches {0}")]
    NoFiles(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("pushing the source tree to the file server failed: {0}")]
    Push(rsync::RsyncError),
    #[error("{0}\n{1}")]
    BeforeOriginate(gorgon_exec::CallbackFailure, String),
}

impl StartError {
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::Push(_) => exit_code::SYNC_FAILED,
            StartError::BeforeOriginate(..) => exit_code::FAILURE,
            _ => exit_code::CONFIG_OR_BROKER,
        }
    }
}

/// Runs `gorgon start` and returns its exit code; errors are printed as one sentence.
pub async fn start(options: StartOptions) -> i32 {
    let started = Instant::now();
    let mut events = match &options.events {
        None => EventSink::none(),
        Some(path) => match EventSink::open(path) {
            Ok(sink) => sink,
            Err(error) => {
                eprintln!(
                    "gorgon: cannot write the events file {}: {error}",
                    path.display()
                );
                return exit_code::CONFIG_OR_BROKER;
            }
        },
    };
    match run(options, &mut events).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gorgon: {error}");
            let code = error.exit_code();
            events.finish_after_error(code, started.elapsed().as_secs_f64(), &error.to_string());
            code
        }
    }
}

/// Why the event loop stopped before every file had a result.
enum Stop {
    Interrupted,
    Terminated,
    Failed(String),
}

async fn run(options: StartOptions, events: &mut EventSink) -> Result<i32, StartError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut settings = Settings::load(&options.config)?;
    if let Some(limit) = options.file_timeout {
        settings.runner.file_timeout = Some(limit);
    }
    let root = settings.project_root.clone();
    let explicit = !options.files.is_empty();
    let patterns = if explicit {
        options.files.clone()
    } else {
        settings.files.clone()
    };
    let found = if options.failed {
        match rerun::select(&settings.failed_files, &root)? {
            Rerun::Files { files, gone } if !files.is_empty() || !gone.is_empty() => {
                for file in &gone {
                    if !options.quiet {
                        eprintln!(
                            "Skipping {file} from the failed files list: it no longer exists"
                        );
                    }
                }
                files
            }
            _ => {
                println!(
                    "Nothing to re-run: the last run left no failed files in {}",
                    settings.failed_files.display()
                );
                return Ok(exit_code::SUCCESS);
            }
        }
    } else {
        files::expand(&root, &patterns, explicit)?
    };
    if found.is_empty() && options.failed {
        println!("Nothing to re-run: none of the failed files exists any more");
        return Ok(exit_code::SUCCESS);
    }
    if found.is_empty() {
        let described = if patterns.is_empty() {
            "the empty `files` list of the configuration".to_owned()
        } else {
            patterns.join(", ")
        };
        return Err(StartError::NoFiles(described));
    }
    let history = match &settings.runtime_file {
        Some(path) => files::read_history(path)?,
        None => files::History::new(),
    };
    let queue = files::order(found, &history, &root);

    let job_id = Uuid::new_v4();
    let project = project_name(&root);
    let originator_host = host_name();
    events.emit(Event::RunStarted {
        job_id,
        project: project.clone(),
        cluster: settings.cluster_id.clone(),
        files: queue.clone(),
    });
    let broker = Broker::connect(&settings.broker, &format!("gorgon start {project}")).await?;
    tracing::info!(%job_id, files = queue.len(), "starting run");

    let base_command = ShellCommand::new("", &root)
        .env("GORGON_JOB_ID", job_id.to_string())
        .env("GORGON_HOST", &originator_host);
    if let Err(failure) = run_callback(
        CallbackName::BeforeOriginate,
        settings.callbacks.before_originate.as_deref(),
        &base_command,
    )
    .await
    {
        broker.close().await;
        let output = failure.output.clone();
        return Err(StartError::BeforeOriginate(failure, output));
    }

    let progress = Progress::new(queue.len(), options.quiet);
    let tree_dir = format!("{}_{}", sanitize(&originator_host), sanitize(&project));
    let location = rsync::tree_location(
        &settings.file_server_host,
        settings.file_server_port,
        settings.transport,
        &tree_dir,
    );
    progress.note(&format!("Pushing the source tree to {location}"));
    let push = rsync::push(&root, &location, &settings.exclude, settings.transport);
    let pushed = tokio::select! {
        pushed = push => pushed,
        _ = tokio::signal::ctrl_c() => {
            progress.finish();
            broker.close().await;
            eprintln!("gorgon: interrupted while pushing the source tree");
            return Ok(exit_code::INTERRUPTED);
        }
    };
    if let Err(error) = pushed {
        progress.finish();
        broker.close().await;
        return Err(StartError::Push(error));
    }

    let definition = JobDefinition {
        project: project.clone(),
        originator_host,
        sync: SyncSettings {
            source: location,
            transport: settings.transport,
            exclude: settings.exclude.clone(),
        },
        runner: settings.runner.clone(),
        callbacks: settings.callbacks.remote.clone(),
    };
    let topology = Topology::new(job_id, &settings.cluster_id);
    let (mut replies, mut announcements) = topology.declare(&broker, &queue).await?;
    let job_message = Message::Job {
        definition,
        reply_to: topology.replies.clone(),
    };
    match broker
        .publish(&topology.jobs, &Envelope::new(job_id, job_message.clone()))
        .await
    {
        Ok(()) | Err(BrokerError::Unroutable(_)) => {}
        Err(error) => return Err(error.into()),
    }
    progress.note(&format!(
        "Queued {} files; waiting for listeners of cluster '{}'",
        queue.len(),
        settings.cluster_id
    ));

    let mut state = JobState::new(queue);
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut next_liveness_check = Instant::now() + LIVENESS_INTERVAL;
    let listener_deadline = Instant::now() + settings.listener_wait;

    let mut stop = None;
    while !state.all_settled() && stop.is_none() {
        tokio::select! {
            incoming = replies.next() => {
                let Some(incoming) = incoming else {
                    stop = Some(Stop::Failed(format!("lost the connection to RabbitMQ at {}", broker.address())));
                    break;
                };
                match &incoming.envelope {
                    Ok(Envelope { job_id: id, message: Message::RetryCheck { file, reply_to }, .. }) if *id == job_id => {
                        answer_retry_check(&broker, &state, job_id, file, reply_to).await;
                        let _ = incoming.ack().await;
                    }
                    Ok(envelope) if envelope.job_id == job_id => {
                        if let Some(reason) = handle_reply(&mut state, &progress, events, settings.max_crash_retries, envelope.message.clone()) {
                            stop = Some(Stop::Failed(reason));
                        }
                        let _ = incoming.ack().await;
                    }
                    Ok(envelope) => {
                        tracing::warn!(job = %envelope.job_id, "dropping a reply of another job");
                        let _ = incoming.discard().await;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "dropping an unreadable reply");
                        let _ = incoming.discard().await;
                    }
                }
            }
            incoming = announcements.next() => {
                let Some(incoming) = incoming else {
                    stop = Some(Stop::Failed(format!("lost the connection to RabbitMQ at {}", broker.address())));
                    break;
                };
                if let Ok(Envelope { message: Message::ListenerAnnounced { listener_queue, name }, .. }) = &incoming.envelope {
                    tracing::info!(listener = %name, "a listener joined; sending it the job");
                    if let Err(error) = broker.send_to_queue(listener_queue, &Envelope::new(job_id, job_message.clone())).await {
                        tracing::warn!(%error, "could not send the job to a new listener");
                    }
                    let _ = incoming.ack().await;
                } else {
                    let _ = incoming.discard().await;
                }
            }
            _ = interrupt.recv() => stop = Some(Stop::Interrupted),
            _ = terminate.recv() => stop = Some(Stop::Terminated),
            _ = tick.tick() => {
                progress.update(&state);
                if Instant::now() >= next_liveness_check {
                    next_liveness_check = Instant::now() + LIVENESS_INTERVAL;
                    check_listeners_alive(&broker, &mut state, &progress).await;
                }
                if !state.any_listener_accepted() && Instant::now() >= listener_deadline {
                    stop = Some(Stop::Failed(format!(
                        "no listener of cluster '{}' took the job within {} s (is `gorgon listen` running, with the same cluster_id and broker?)",
                        settings.cluster_id,
                        settings.listener_wait.as_secs_f64()
                    )));
                } else if state.any_listener_accepted() && state.all_listeners_done() {
                    stop = Some(Stop::Failed(format!(
                        "every listener that took the job has stopped working on it, but {} files have no result",
                        state.unfinished().len()
                    )));
                }
            }
        }
    }

    // Ending: on success, deleting the files queue tells the workers to finish; otherwise the
    // job is cancelled. Either way listeners report when they are done.
    let (wait, cancel_reason) = match &stop {
        None => (FINISH_WAIT, None),
        Some(Stop::Interrupted) => (CANCEL_WAIT, Some("interrupted (Ctrl-C)".to_owned())),
        Some(Stop::Terminated) => (CANCEL_WAIT, Some("terminated (SIGTERM)".to_owned())),
        Some(Stop::Failed(reason)) => (CANCEL_WAIT, Some(reason.clone())),
    };
    if let Some(reason) = &cancel_reason {
        events.emit(Event::Cancelled {
            reason: reason.clone(),
        });
        progress.note(&format!("Stopping the run: {reason}"));
        let cancel = Envelope::new(
            job_id,
            Message::Cancel {
                reason: reason.clone(),
            },
        );
        match broker.publish(&topology.control, &cancel).await {
            Ok(()) | Err(BrokerError::Unroutable(_)) => {}
            Err(error) => tracing::warn!(%error, "could not publish the cancel"),
        }
    }
    let _ = broker.delete_queue(&topology.files).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut second_interrupt = false;
    while !state.all_listeners_done() {
        tokio::select! {
            incoming = replies.next() => {
                let Some(incoming) = incoming else { break };
                if let Ok(Envelope { job_id: id, message: Message::RetryCheck { file, reply_to }, .. }) = &incoming.envelope {
                    if *id == job_id {
                        answer_retry_check(&broker, &state, job_id, file, reply_to).await;
                    }
                } else if let Ok(envelope) = &incoming.envelope {
                    if envelope.job_id == job_id {
                        handle_reply(&mut state, &progress, events, settings.max_crash_retries, envelope.message.clone());
                    }
                }
                let _ = incoming.ack().await;
            }
            _ = interrupt.recv() => { second_interrupt = true; break; }
            _ = tokio::time::sleep_until(deadline) => {
                progress.note(&format!(
                    "Listeners still finishing after {} s: {}",
                    wait.as_secs(),
                    state.listeners_working().join(", ")
                ));
                break;
            }
        }
    }
    if !second_interrupt {
        topology.remove(&broker).await;
    }
    broker.close().await;
    progress.finish();

    if let Some(path) = &settings.runtime_file {
        if let Err(error) = files::write_history(path, history, &state.timings()) {
            eprintln!(
                "gorgon: cannot write the runtime file {}: {error}",
                path.display()
            );
        }
    }
    if let Err(error) = files::write_failed_files(&settings.failed_files, &state.not_passed()) {
        eprintln!(
            "gorgon: cannot write the failed files list {}: {error}",
            settings.failed_files.display()
        );
    }
    if let Err(failure) = run_callback(
        CallbackName::AfterJobFinishes,
        settings.callbacks.after_job_finishes.as_deref(),
        &base_command,
    )
    .await
    {
        let problem = Problem {
            what: "after_job_finishes callback on the originator".into(),
            status: failure.status,
            output: failure.output,
            fails_run: true,
        };
        events.emit(Event::problem(ProblemKind::CallbackFailed, &problem));
        state.add_problem(problem);
    }
    if let Some(path) = options.junit.as_ref().or(settings.junit_file.as_ref()) {
        let run_info = crate::junit::RunInfo {
            project: &project,
            job_id,
            started: started_at,
            seconds: started.elapsed().as_secs_f64(),
        };
        if let Err(error) = crate::junit::write(path, &crate::junit::report(&run_info, &state)) {
            eprintln!("gorgon: {error}");
        }
    }

    let ending = Ending {
        state: &state,
        seconds: started.elapsed().as_secs_f64(),
        stopped_because: cancel_reason,
    };
    // With the events on stdout, the report moves to stderr so that stdout stays JSON.
    if options.events.as_deref() == Some(std::path::Path::new("-")) {
        let _ = view::print_report(
            &mut std::io::stderr().lock(),
            &ending,
            view::colour_wanted(std::io::stderr().is_terminal()),
        );
    } else {
        let _ = view::print_report(
            &mut std::io::stdout().lock(),
            &ending,
            view::colour_enabled(),
        );
    }
    let code = match stop {
        Some(Stop::Interrupted) => exit_code::INTERRUPTED,
        Some(Stop::Terminated) => exit_code::TERMINATED,
        _ if state.passed() => exit_code::SUCCESS,
        _ => exit_code::FAILURE,
    };
    events.emit(Event::RunFinished {
        exit_code: code,
        seconds: started.elapsed().as_secs_f64(),
        totals: Totals::of(&state),
        error: None,
    });
    Ok(code)
}

/// Applies one reply to the state; returns a reason when it means the run must stop.
fn handle_reply(
    state: &mut JobState,
    progress: &Progress,
    events: &mut EventSink,
    max_crash_retries: u32,
    message: Message,
) -> Option<String> {
    match message {
        Message::JobAccepted {
            host,
            slots,
            listener_queue,
        } => {
            tracing::info!(%host, slots, "listener took the job");
            events.emit(Event::ListenerJoined {
                host: host.clone(),
                slots,
            });
            state.listener_accepted(&host, listener_queue);
        }
        Message::FileStarted {
            host,
            worker_id,
            file,
        } => {
            if state.file_started(&host, worker_id, &file) {
                events.emit(Event::FileStarted {
                    file,
                    host,
                    worker_id,
                });
            }
            progress.update(state);
        }
        Message::FileFinished(result) => {
            let shown = result.clone();
            match state.file_finished(result) {
                Settled::New => {
                    events.emit(Event::file_finished(&shown));
                    progress.file_finished(state, &shown)
                }
                Settled::Duplicate => {
                    tracing::info!(file = %shown.file, "dropping a second result for a settled file")
                }
                Settled::Unknown => {
                    tracing::warn!(file = %shown.file, "dropping a result for a file this run did not queue")
                }
            }
        }
        Message::CallbackFailed {
            host,
            worker_id,
            callback,
            status,
            output,
        } => {
            let place = match worker_id {
                Some(id) => format!("{host}:{id}"),
                None => host,
            };
            let problem = Problem {
                what: format!("{callback} callback failed on {place}"),
                status,
                output,
                fails_run: true,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::CallbackFailed, &problem));
            let reason = problem.what.clone();
            state.add_problem(problem);
            if !state.all_settled() {
                return Some(reason);
            }
        }
        Message::SyncFailed { host, output } => {
            let problem = Problem {
                what: format!("{host} could not pull the source tree"),
                status: "rsync failed".into(),
                output,
                fails_run: false,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::SyncFailed, &problem));
            state.add_problem(problem);
        }
        Message::WorkerCrashed {
            host,
            worker_id,
            status,
            output,
        } => {
            if let Some(settled) =
                state.worker_crashed(&host, worker_id, &status, &output, max_crash_retries)
            {
                events.emit(Event::file_finished(&settled));
                progress.file_finished(state, &settled);
            }
            let problem = Problem {
                what: format!("worker {worker_id} on {host} died"),
                status,
                output,
                fails_run: false,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::WorkerCrashed, &problem));
            state.add_problem(problem);
        }
        Message::ManagerCrashed {
            host,
            status,
            output,
        } => {
            let problem = Problem {
                what: format!("the worker manager on {host} died"),
                status,
                output,
                fails_run: false,
            };
            progress.problem(&problem);
            events.emit(Event::problem(ProblemKind::ManagerCrashed, &problem));
            state.add_problem(problem);
        }
        Message::JobDone { host } => {
            tracing::info!(%host, "listener finished its part");
            events.emit(Event::ListenerDone { host: host.clone() });
            state.listener_done(&host);
            progress.update(state);
        }
        other => tracing::warn!(
            ?other,
            "dropping a message that does not belong on the reply queue"
        ),
    }
    None
}

/// Tells a worker whether a file delivered again still needs a run.
async fn answer_retry_check(
    broker: &Broker,
    state: &JobState,
    job_id: Uuid,
    file: &str,
    reply_to: &str,
) {
    let run = !state.has_result(file);
    let answer = Envelope::new(
        job_id,
        Message::RetryAnswer {
            file: file.to_owned(),
            run,
        },
    );
    if let Err(error) = broker.send_to_queue(reply_to, &answer).await {
        tracing::warn!(%error, file, "cannot answer a worker's retry check");
    }
}

/// Marks as done the listeners whose queue has vanished: they died (their connection
/// ended) without finishing their part. Their unacknowledged files are back in the queue.
async fn check_listeners_alive(broker: &Broker, state: &mut JobState, progress: &Progress) {
    for (host, queue) in state.working_listener_queues() {
        match broker.queue_exists(&queue).await {
            Ok(true) => {}
            Ok(false) => {
                let problem = Problem {
                    what: format!("listener {host} disappeared"),
                    status: "its connection to RabbitMQ ended".into(),
                    output: String::new(),
                    fails_run: false,
                };
                progress.problem(&problem);
                state.add_problem(problem);
                state.listener_done(&host);
            }
            Err(error) => tracing::warn!(%host, %error, "cannot check whether a listener is alive"),
        }
    }
}

/// The broker entities of one run.
struct Topology {
    job_id: Uuid,
    jobs: String,
    announcements_exchange: String,
    files: String,
    replies: String,
    control: String,
    announcements: String,
}

impl Topology {
    fn new(job_id: Uuid, cluster: &str) -> Self {
        Topology {
            job_id,
            jobs: names::jobs_exchange(cluster),
            announcements_exchange: names::announcements_exchange(cluster),
            files: names::files_queue(job_id),
            replies: names::reply_queue(job_id),
            control: names::control_exchange(job_id),
            announcements: names::announcement_queue(job_id),
        }
    }

    /// Declares everything, queues the files, and starts consuming replies and
    /// announcements, before the job is published, so that no reply can be missed.
    async fn declare(
        &self,
        broker: &Broker,
        files: &[String],
    ) -> Result<(Inbox, Inbox), BrokerError> {
        broker.declare_fanout(&self.jobs).await?;
        broker.declare_fanout(&self.announcements_exchange).await?;
        broker.declare_fanout(&self.control).await?;
        broker
            .declare_queue(&self.replies, QueueLife::Exclusive)
            .await?;
        broker
            .declare_queue(&self.announcements, QueueLife::Exclusive)
            .await?;
        broker
            .bind(&self.announcements, &self.announcements_exchange)
            .await?;
        broker
            .declare_queue(
                &self.files,
                QueueLife::Shared {
                    unused_expiry: FILES_QUEUE_EXPIRY,
                },
            )
            .await?;
        broker
            .send_all_to_queue(
                &self.files,
                files
                    .iter()
                    .map(|file| Envelope::new(self.job_id, Message::File { file: file.clone() })),
            )
            .await?;
        let replies = broker.consume(&self.replies, None).await?;
        let announcements = broker.consume(&self.announcements, None).await?;
        Ok((replies, announcements))
    }

    /// Deletes what the run declared; exclusive queues go with the connection.
    async fn remove(&self, broker: &Broker) {
        let _ = broker.delete_queue(&self.files).await;
        let _ = broker.delete_exchange(&self.control).await;
    }
}

/// The project's name: the name of its folder.
fn project_name(root: &std::path::Path) -> String {
    root.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(root)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned())
}

/// This machine's host name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Keeps a name safe as one path component on the file server.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_on_the_file_server_are_single_safe_components() {
        assert_eq!(sanitize("my host/../x y"), "my_host_.._x_y");
    }
}
