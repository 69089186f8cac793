//! CI-native runs: the identical, short-lived machines of one CI build each run
//! `gorgon work --build-id ID` in their own checkout, and one step runs `gorgon report
//! --build-id ID`. There is no listener, file server or sync: a node's checkout is its
//! workspace, and it runs a worker manager there as a listener would (same pool, runners,
//! callbacks, timeouts and retries).
//!
//! The broker holds the build. The first node to take the build's lock (an exclusive queue)
//! fills the files queue once, in history order, and writes the build's definition (its
//! units and the digest of each test file and of the configuration) as the first message of
//! the build's **log**, a RabbitMQ stream. Every node's manager publishes its replies to the
//! log, and every node and reporter reads the log from its start, through the same state
//! machine as `gorgon start` (`JobState`, the run core): they all see one order of events
//! and reach the same verdicts, so a node that joins late, or a reporter that starts after
//! the nodes finished, knows everything. The node whose result calls for a retry queues it;
//! every node answers a redelivered file's `RetryCheck`; the first node to see every file
//! settled deletes the files queue, which ends every manager. The reporter writes what
//! `gorgon start` writes and exits with the same code, then removes the build's queues and
//! leaves a marker that the build is over, which a node that starts later finds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gorgon_exec::signals::StopSignals;
use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{
    exit_code, names, Broker, Envelope, Inbox, JobDefinition, Message, SyncSettings, SyncTransport,
    WorkerAssignment,
};
use gorgon_worker::{run_manager, HostReplies, ManagerEnd};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::distributed::{answer_retry_check, queue_retries};
use crate::engine::Plan;
use crate::errors::{StartError, Stop};
use crate::events::{Event, EventSink};
use crate::files;
use crate::quarantine::Quarantine;
use crate::run_core::Core;
use crate::settings::{Settings, StartOptions};
use crate::state::JobState;
use crate::view::Progress;

/// The environment variable that names the broker of a CI build, as `connection.url` does.
pub const BROKER_URL_VARIABLE: &str = "GORGON_BROKER_URL";

/// How long the build's log keeps its messages: a reporter must start within this.
pub const LOG_MAX_AGE: &str = "1D";

/// How long the build's files queue and markers outlive their last use.
const BUILD_QUEUE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// How long a node waits for another to finish filling the files queue.
const FILL_WAIT: Duration = Duration::from_secs(60);

/// How often a reporter looks whether any node still works on the build.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// What `gorgon work` and `gorgon report --build-id` were asked for.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// `--build-id`; without it, from the CI's environment ([`build_id_from_env`]).
    pub build_id: Option<String>,
    /// `--worker-id`: the node's name in the results; without it, from the CI's
    /// environment, else the host name.
    pub worker_id: Option<String>,
    /// `-j N`: how many workers (default: the cores).
    pub jobs: Option<u32>,
    /// `gorgon work --report`: this node also waits for the build and reports it.
    pub report: bool,
    /// The configuration and the report's outputs (JUnit, events, HTML, quiet).
    pub start: StartOptions,
}

/// The build id the usual CI variables give: GitHub Actions' run id and attempt, GitLab's
/// pipeline, Buildkite's build, CircleCI's workflow.
pub fn build_id_from_env(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
    if let Some(run) = var("GITHUB_RUN_ID") {
        let attempt = var("GITHUB_RUN_ATTEMPT").unwrap_or_else(|| "1".to_owned());
        return Some(format!("github-{run}-{attempt}"));
    }
    [
        ("CI_PIPELINE_ID", "gitlab"),
        ("BUILDKITE_BUILD_ID", "buildkite"),
        ("CIRCLE_WORKFLOW_ID", "circleci"),
    ]
    .into_iter()
    .find_map(|(name, ci)| var(name).map(|id| format!("{ci}-{id}")))
}

/// The node's name the usual CI variables give: the index of a parallel job (GitLab,
/// Buildkite, CircleCI). GitHub Actions has none: the host name serves there.
pub fn worker_id_from_env(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    [
        "CI_NODE_INDEX",
        "BUILDKITE_PARALLEL_JOB",
        "CIRCLE_NODE_INDEX",
    ]
    .into_iter()
    .find_map(|name| var(name).filter(|value| !value.trim().is_empty()))
    .map(|index| format!("node-{index}"))
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The build as a node or a reporter joins it.
struct Build {
    settings: Settings,
    broker: Broker,
    build_id: String,
    job: Uuid,
    project: String,
}

impl Build {
    async fn join(options: &BuildOptions, role: &str) -> Result<Build, StartError> {
        let mut settings = Settings::for_start(&options.start)?;
        let invalid = |problem: String| StartError::Build(problem);
        // A CI's secret variable may name the broker, in place of the checkout's config.
        if let Some(url) = env_var(BROKER_URL_VARIABLE).filter(|url| !url.trim().is_empty()) {
            let broker = gorgon_protocol::BrokerSettings {
                url: Some(url),
                ..settings.broker.clone()
            };
            settings.broker = broker
                .resolve_url()
                .map_err(|problem| invalid(format!("{BROKER_URL_VARIABLE}: {problem}")))?;
        }
        if !settings.phases.is_empty() {
            return Err(invalid(format!(
                "{}: phases do not run on CI nodes yet; run them with `gorgon start`",
                settings.config_path.display()
            )));
        }
        let build_id = options
            .build_id
            .clone()
            .or_else(|| build_id_from_env(env_var))
            .ok_or_else(|| {
                invalid("no build id: give --build-id, or run under a CI that sets GITHUB_RUN_ID, CI_PIPELINE_ID, BUILDKITE_BUILD_ID or CIRCLE_WORKFLOW_ID".into())
            })?;
        if build_id.trim().is_empty() || build_id.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "the build id {build_id:?} must be a word without spaces"
            )));
        }
        let project = crate::run::project_name(&settings.project_root);
        let job = names::build_job_id(&settings.cluster_id, &build_id);
        let broker = Broker::connect(
            &settings.broker,
            &format!("gorgon {role} {project} {build_id}"),
        )
        .await?;
        broker
            .declare_stream(&names::build_log(job), LOG_MAX_AGE)
            .await?;
        Ok(Build {
            settings,
            broker,
            build_id,
            job,
            project,
        })
    }

    /// Why the build cannot be followed any more: its broker went away.
    fn connection_lost(&self) -> String {
        format!(
            "lost the connection to RabbitMQ at {}",
            self.broker.address()
        )
    }

    /// Whether a reporter already reported the build.
    async fn is_over(&self) -> Result<bool, StartError> {
        Ok(self
            .broker
            .queue_counts(&names::build_over(self.job))
            .await?
            .is_some())
    }

    /// Reads the log from its start up to the build's definition.
    async fn definition(&self, log: &mut Inbox) -> Result<Defined, StartError> {
        let wait = self.settings.listener_wait;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let incoming = tokio::time::timeout_at(deadline, log.next())
                .await
                .map_err(|_| {
                    StartError::BuildLost(format!(
                        "no node of build {} queued its files within {} s (is `gorgon work --build-id {}` running on the CI nodes?)",
                        self.build_id,
                        wait.as_secs_f64(),
                        self.build_id
                    ))
                })?
                .ok_or_else(|| StartError::BuildLost(self.connection_lost()))?;
            let message = incoming.envelope.as_ref().ok().map(|e| e.message.clone());
            let _ = incoming.ack().await;
            if let Some(Message::BuildDefined {
                host,
                units,
                digests,
                queued_at,
                ..
            }) = message
            {
                return Ok(Defined {
                    host,
                    units,
                    digests,
                    queued_at,
                });
            }
        }
    }

    /// The plan and state of the build, as `gorgon start` would have them for its units;
    /// the build started when its files were queued.
    fn plan(
        &self,
        options: &StartOptions,
        defined: &Defined,
        history: files::History,
        events: &mut EventSink,
    ) -> Result<(Plan, JobState), StartError> {
        let units = &defined.units;
        let settings = self.settings.clone();
        let quarantine = settings.quarantine()?;
        events.emit(Event::RunStarted {
            job_id: self.job,
            project: self.project.clone(),
            cluster: settings.cluster_id.clone(),
            files: units.to_vec(),
        });
        let state = JobState::new(units.to_vec())
            .with_retries(settings.retries)
            .with_quarantine(quarantine)
            .with_max_fail(settings.max_fail);
        let ago = Duration::from_secs_f64((unix_now() - defined.queued_at).max(0.0));
        let plan = Plan {
            options: options.clone(),
            settings,
            history,
            // The state has taken it.
            quarantine: Quarantine::default(),
            job_id: self.job,
            project: self.project.clone(),
            host: crate::run::host_name(),
            started: Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
            started_at: chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap_or_default(),
        };
        Ok((plan, state))
    }
}

/// The build's definition, from its log.
struct Defined {
    host: String,
    units: Vec<String>,
    digests: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    queued_at: f64,
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// `gorgon work`: runs this node's part of the build; with `--report`, also waits for the
/// whole build and reports it. Exits 0 when the node did its part (the build's verdict is
/// the reporter's), 130/143 when stopped by a signal.
pub async fn work(options: BuildOptions) -> Result<i32, StartError> {
    let mut signals = StopSignals::install();
    let build = Build::join(&options, "work").await?;
    let host = options
        .worker_id
        .clone()
        .or_else(|| worker_id_from_env(env_var))
        .unwrap_or_else(crate::run::host_name);
    if build.is_over().await? {
        println!(
            "Build {} is over (it was reported); nothing to run",
            build.build_id
        );
        build.broker.close().await;
        return Ok(exit_code::SUCCESS);
    }
    let history = build.settings.history()?;
    let (units, digests) = local_units(&build.settings, &history)?;
    let filled = fill_once(&build, &host, &units, &digests).await?;
    let mut log = build
        .broker
        .consume_stream(&names::build_log(build.job))
        .await?;
    let defined = build.definition(&mut log).await?;
    if !filled {
        let differences = differences(&defined.digests, &digests);
        if !differences.is_empty() {
            build.broker.close().await;
            return Err(StartError::Build(format!(
                "this checkout differs from the one build {} was queued from (by {}), so it would run other code; it takes no part:\n  {}",
                build.build_id,
                defined.host,
                differences.join("\n  ")
            )));
        }
    }
    let mut events = match (&options.start.events, options.report) {
        (Some(path), true) => EventSink::open(path).map_err(|source| StartError::EventsFile {
            path: path.clone(),
            source,
        })?,
        _ => EventSink::none(),
    };
    let (plan, state) = build.plan(&options.start, &defined, history, &mut events)?;
    let progress = plan.progress(state.total());
    progress.note(&format!(
        "Build {}: {} files; this node is {host}{}",
        build.build_id,
        state.total(),
        if filled { " (it queued them)" } else { "" }
    ));
    let slots = options
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let assignment = node_assignment(&build, &defined, &host, slots);
    let mut follower = Follower {
        state,
        progress,
        events,
        own_host: Some(host.clone()),
        stop: None,
        told: false,
    };
    let signalled = run_node(&build, assignment, &mut log, &mut follower, &mut signals).await?;
    if let Some(signal) = signalled {
        build.broker.close().await;
        follower.progress.finish();
        return Ok(signal.exit_code());
    }
    if !options.report {
        follower.progress.finish();
        follower.progress.note(&format!(
            "This node's part of build {} is done",
            build.build_id
        ));
        build.broker.close().await;
        return Ok(exit_code::SUCCESS);
    }
    let stop = follow_to_end(&build, &mut log, &mut follower, &mut signals).await;
    Ok(report_and_clean(build, plan, follower, stop).await)
}

/// The assignment of this node's worker manager: its checkout is its workspace.
fn node_assignment(build: &Build, defined: &Defined, host: &str, slots: u32) -> WorkerAssignment {
    let definition = JobDefinition {
        project: build.project.clone(),
        originator_host: defined.host.clone(),
        sync: SyncSettings {
            source: String::new(),
            transport: SyncTransport::Daemon,
            exclude: Vec::new(),
        },
        runner: build.settings.runner.clone(),
        callbacks: build.settings.callbacks.remote.clone(),
        live_output: gorgon_protocol::LiveOutput::default(),
    };
    WorkerAssignment::new(
        build.job,
        definition,
        names::build_log(build.job),
        build.settings.broker.clone(),
        host,
        build.settings.project_root.clone(),
        slots,
    )
}

/// Runs this node's worker manager (as a listener would: it takes the job, runs the
/// manager, reports its crash and that it is done) while following the build's log, which
/// may stop it; returns the stop a signal asked for, if one did.
async fn run_node(
    build: &Build,
    assignment: WorkerAssignment,
    log: &mut Inbox,
    follower: &mut Follower,
    signals: &mut StopSignals,
) -> Result<Option<Stop>, StartError> {
    let replies = HostReplies::new(build.job, &assignment.host, &assignment.reply_to, || {
        build.broker.clone()
    });
    replies.accept(assignment.slots, None).await?;
    let (stop_manager, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop_manager = Some(stop_manager);
    let mut stop = move || {
        if let Some(stop) = stop_manager.take() {
            let _ = stop.send(());
        }
    };
    let mut manager = tokio::spawn(async move {
        run_manager(&assignment, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut signalled = None;
    let mut log_open = true;
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    let mut watch = Watch::default();
    let ended = loop {
        tokio::select! {
            _ = tick.tick(), if follower.stop.is_none() => {
                if let Some(reason) = watch.check(build, &follower.state).await {
                    follower.stop = Some(Stop::Failed(reason));
                    follower.end_managers_when_over(build).await;
                    stop();
                }
            }
            incoming = log.next(), if log_open => {
                let Some(incoming) = incoming else {
                    log_open = false;
                    follower.stop.get_or_insert(Stop::Failed(build.connection_lost()));
                    stop();
                    continue;
                };
                follower.take(build, incoming).await;
                if follower.stop.is_some() {
                    stop();
                }
            }
            ended = &mut manager => break ended,
            signal = signals.recv() => {
                signalled = Some(Stop::from(signal));
                stop();
            }
        }
    };
    let end = ended.unwrap_or_else(|error| ManagerEnd::Crashed {
        status: format!("the manager's task failed: {error}"),
        output: String::new(),
    });
    replies.manager_ended(end).await;
    replies.done().await;
    Ok(signalled)
}

/// `gorgon report --build-id`: waits for the build (it may start before the nodes, or
/// after they finished), then writes and prints what `gorgon start` would and exits with
/// its code.
pub async fn report(options: BuildOptions) -> Result<i32, StartError> {
    let mut signals = StopSignals::install();
    let build = Build::join(&options, "report").await?;
    if build.is_over().await? {
        build.broker.close().await;
        return Err(StartError::BuildLost(format!(
            "build {} was reported already (its results are gone from the broker)",
            build.build_id
        )));
    }
    let mut log = build
        .broker
        .consume_stream(&names::build_log(build.job))
        .await?;
    let defined = build.definition(&mut log).await?;
    let mut events = crate::engine::open_events(options.start.events.as_deref())?;
    if options.start.html.is_some() || build.settings.html_file.is_some() {
        events = events.with_timeline();
    }
    let history = build.settings.history()?;
    let (plan, state) = build.plan(&options.start, &defined, history, &mut events)?;
    let progress = plan.progress(state.total());
    progress.note(&format!(
        "Build {}: {} files, queued by {}; waiting for its results",
        build.build_id,
        state.total(),
        defined.host
    ));
    let mut follower = Follower {
        state,
        progress,
        events,
        own_host: None,
        stop: None,
        told: true,
    };
    let stop = follow_to_end(&build, &mut log, &mut follower, &mut signals).await;
    Ok(report_and_clean(build, plan, follower, stop).await)
}

/// Whoever follows the build's log: its state, and what it does about each message.
struct Follower {
    state: JobState,
    progress: Progress,
    events: EventSink,
    /// A node: the retries its own failures call for are its to queue.
    own_host: Option<String>,
    stop: Option<Stop>,
    /// The files queue was deleted (every file settled, or the build stopped).
    told: bool,
}

impl Follower {
    /// Applies one message of the log.
    async fn take(&mut self, build: &Build, incoming: gorgon_protocol::Incoming) {
        let envelope = match &incoming.envelope {
            Ok(envelope) if envelope.job_id == build.job => Some(envelope.clone()),
            _ => None,
        };
        let _ = incoming.ack().await;
        let Some(envelope) = envelope else { return };
        let max_crash_retries = build.settings.max_crash_retries;
        match envelope.message {
            Message::BuildDefined { .. } => {}
            Message::RetryCheck { file, reply_to } => {
                if self.own_host.is_some() {
                    answer_retry_check(&build.broker, &self.state, build.job, &file, &reply_to)
                        .await;
                }
            }
            message => {
                let from = reply_host(&message).map(str::to_owned);
                let own = from.is_some() && from == self.own_host;
                let mut core = Core::new(
                    &mut self.state,
                    &mut self.events,
                    &self.progress,
                    max_crash_retries,
                );
                let mut stop = core.reply(message);
                if own {
                    if let Err(error) = queue_retries(&build.broker, build.job, &mut core).await {
                        stop =
                            stop.or(Some(Stop::Failed(format!("cannot queue a retry: {error}"))));
                    }
                } else {
                    // Another node queues them; the state takes them all the same.
                    core.retries();
                }
                if let Some(stop) = stop {
                    self.stop.get_or_insert(stop);
                }
            }
        }
        self.end_managers_when_over(build).await;
    }

    /// Once every file is settled or the build stops, deletes the build's files queue (once):
    /// every manager of the build ends with it.
    async fn end_managers_when_over(&mut self, build: &Build) {
        if !self.told && (self.state.all_settled() || self.stop.is_some()) {
            self.told = true;
            let _ = build
                .broker
                .delete_queue(&names::files_queue(build.job))
                .await;
        }
    }
}

/// The host a reply comes from, if it names one.
fn reply_host(message: &Message) -> Option<&str> {
    match message {
        // One manager's: all from one host.
        Message::Replies { replies } => replies.first().and_then(reply_host),
        Message::FileFinished(result) => Some(&result.host),
        Message::FileStarted { host, .. }
        | Message::JobAccepted { host, .. }
        | Message::JobDone { host }
        | Message::WorkerCrashed { host, .. }
        | Message::ManagerCrashed { host, .. }
        | Message::CallbackFailed { host, .. } => Some(host),
        _ => None,
    }
}

/// Follows the log until every file has its result, the build stops, or no node has
/// worked on it for `job.listener_wait` while files are left.
async fn follow_to_end(
    build: &Build,
    log: &mut Inbox,
    follower: &mut Follower,
    signals: &mut StopSignals,
) -> Option<Stop> {
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    let mut watch = Watch::default();
    while follower.stop.is_none() && !follower.state.all_settled() {
        tokio::select! {
            incoming = log.next() => match incoming {
                Some(incoming) => follower.take(build, incoming).await,
                None => {
                    follower.stop = Some(Stop::Failed(build.connection_lost()));
                }
            },
            signal = signals.recv() => follower.stop = Some(signal.into()),
            _ = tick.tick() => {
                follower.progress.update(&follower.state);
                if let Some(reason) = watch.check(build, &follower.state).await {
                    follower.stop = Some(Stop::Failed(reason));
                }
            }
        }
    }
    follower.progress.finish();
    follower.stop.take()
}

/// Whether anything still works on a build whose files do not all have results: a node
/// consuming its files queue; and, when every file left only waits for its retries, a retry
/// queued or running. Either missing for `job.listener_wait` (every node died; the node that
/// was to queue a retry died first) ends the build.
#[derive(Default)]
struct Watch {
    idle_since: Option<Instant>,
    stalled_since: Option<Instant>,
}

impl Watch {
    /// Why the build must stop, once it has waited long enough.
    async fn check(&mut self, build: &Build, state: &JobState) -> Option<String> {
        if state.all_settled() {
            return None;
        }
        let wait = build.settings.listener_wait;
        let counts = build
            .broker
            .queue_counts(&names::files_queue(build.job))
            .await;
        let (queued, consumers) = match counts {
            Ok(Some(counts)) => counts,
            Ok(None) => (0, 0),
            // The broker did not answer: the log's end says so, if it is gone.
            Err(_) => return None,
        };
        let left = state.unfinished().len();
        if consumers > 0 {
            self.idle_since = None;
        } else if self.idle_since.get_or_insert_with(Instant::now).elapsed() >= wait {
            return Some(format!(
                "no node has worked on build {} for {} s, and {left} files have no result",
                build.build_id,
                wait.as_secs_f64()
            ));
        }
        // Files that have not run yet may wait on a node's long `before_creating_workers`;
        // a file that waits only for its retries waits for nothing else.
        let only_retries = state
            .unfinished()
            .iter()
            .all(|file| state.retries().waits_for_retries(file));
        if queued > 0 || state.workers_running() > 0 || !only_retries {
            self.stalled_since = None;
        } else if self
            .stalled_since
            .get_or_insert_with(Instant::now)
            .elapsed()
            >= wait
        {
            return Some(format!(
                "for {} s no file of build {} was queued or running, and {left} files have no result (was a node lost as it queued a retry?)",
                wait.as_secs_f64(),
                build.build_id
            ));
        }
        None
    }
}

/// Writes and prints the build's report (as `gorgon start` does), then removes the build's
/// queues and leaves the marker that it is over; the exit code.
async fn report_and_clean(build: Build, plan: Plan, follower: Follower, stop: Option<Stop>) -> i32 {
    let Follower {
        state, mut events, ..
    } = follower;
    let job = build.job;
    let broker = &build.broker;
    let code = crate::run::finish(plan, state, stop, &mut events).await;
    let over = QueueLife::Shared {
        unused_expiry: BUILD_QUEUE_EXPIRY,
    };
    if let Err(error) = broker.declare_queue(&names::build_over(job), over).await {
        tracing::warn!(%error, "cannot mark the build as over");
    }
    let _ = broker.delete_queue(&names::files_queue(job)).await;
    let _ = broker.delete_queue(&names::build_filled(job)).await;
    let _ = broker.delete_queue(&names::build_log(job)).await;
    let _ = broker.delete_exchange(&names::control_exchange(job)).await;
    broker.close().await;
    code
}

/// This checkout's units (the configured files, in history order) and the digests of its
/// test files and configuration.
fn local_units(
    settings: &Settings,
    history: &files::History,
) -> Result<(Vec<String>, BTreeMap<String, String>), StartError> {
    let root = &settings.project_root;
    let found = files::expand(root, &settings.files, false)?;
    if found.is_empty() {
        return Err(StartError::NoFiles(settings.files.join(", ")));
    }
    settings.check_runners(&found)?;
    let mut digests = BTreeMap::new();
    for file in &found {
        digests.insert(file.clone(), digest_of(&root.join(file))?);
    }
    let config = &settings.config_path;
    let config_name = config
        .strip_prefix(root)
        .unwrap_or(config)
        .to_string_lossy()
        .into_owned();
    digests.insert(config_name, digest_of(config)?);
    Ok((files::order(found, history, root), digests))
}

/// The SHA-256 of a file's content, in hex.
fn digest_of(path: &Path) -> Result<String, StartError> {
    let bytes = std::fs::read(path).map_err(|source| StartError::BuildFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// How this checkout (`here`) differs from the build's (`build`), file by file.
fn differences(build: &BTreeMap<String, String>, here: &BTreeMap<String, String>) -> Vec<String> {
    let mut differences = Vec::new();
    for (file, digest) in build {
        match here.get(file) {
            None => differences.push(format!("{file} is missing here")),
            Some(local) if local != digest => differences.push(format!("{file} differs")),
            Some(_) => {}
        }
    }
    for file in here.keys().filter(|file| !build.contains_key(*file)) {
        differences.push(format!("{file} is not in the build"));
    }
    differences
}

/// Fills the build's files queue unless another node did (or does): under the build's lock,
/// the node that finds no "filled" marker declares the job's queues, writes the build's
/// definition to the log, queues the units and sets the marker. True when this node filled.
async fn fill_once(
    build: &Build,
    host: &str,
    units: &[String],
    digests: &BTreeMap<String, String>,
) -> Result<bool, StartError> {
    let job = build.job;
    let broker = &build.broker;
    let lock = names::build_lock(job);
    let deadline = Instant::now() + FILL_WAIT;
    while !broker.try_declare_exclusive(&lock).await? {
        if Instant::now() >= deadline {
            return Err(StartError::BuildLost(format!(
                "another node has held build {}'s lock for {} s without queueing its files",
                build.build_id,
                FILL_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let filled_marker = names::build_filled(job);
    let filled =
        matches!(broker.queue_counts(&filled_marker).await?, Some((count, _)) if count > 0);
    let life = QueueLife::Shared {
        unused_expiry: BUILD_QUEUE_EXPIRY,
    };
    if !filled {
        let defined = Message::BuildDefined {
            build_id: build.build_id.clone(),
            host: host.to_owned(),
            units: units.to_vec(),
            digests: digests.clone(),
            queued_at: unix_now(),
        };
        broker
            .declare_job_exchange(&names::control_exchange(job))
            .await?;
        broker.declare_queue(&names::files_queue(job), life).await?;
        broker
            .send_to_queue(&names::build_log(job), &Envelope::new(job, defined.clone()))
            .await?;
        let messages = units
            .iter()
            .map(|unit| Envelope::new(job, Message::file(unit.clone())));
        broker
            .send_all_to_queue(&names::files_queue(job), messages)
            .await?;
        broker.declare_queue(&filled_marker, life).await?;
        broker
            .send_to_queue(&filled_marker, &Envelope::new(job, defined))
            .await?;
    } else {
        // The manager checks that the job's control exchange exists.
        broker
            .declare_job_exchange(&names::control_exchange(job))
            .await?;
    }
    broker.delete_queue(&lock).await?;
    Ok(!filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn the_build_and_node_come_from_the_usual_ci_variables() {
        let github = [("GITHUB_RUN_ID", "9001"), ("GITHUB_RUN_ATTEMPT", "2")];
        assert_eq!(
            build_id_from_env(vars(&github)).as_deref(),
            Some("github-9001-2")
        );
        assert_eq!(
            build_id_from_env(vars(&[("GITHUB_RUN_ID", "9001")])).as_deref(),
            Some("github-9001-1")
        );
        let gitlab = [("CI_PIPELINE_ID", "77"), ("CI_NODE_INDEX", "3")];
        assert_eq!(
            build_id_from_env(vars(&gitlab)).as_deref(),
            Some("gitlab-77")
        );
        assert_eq!(worker_id_from_env(vars(&gitlab)).as_deref(), Some("node-3"));
        let buildkite = [
            ("BUILDKITE_BUILD_ID", "b-1"),
            ("BUILDKITE_PARALLEL_JOB", "0"),
        ];
        assert_eq!(
            build_id_from_env(vars(&buildkite)).as_deref(),
            Some("buildkite-b-1")
        );
        assert_eq!(
            worker_id_from_env(vars(&buildkite)).as_deref(),
            Some("node-0")
        );
        let circle = [("CIRCLE_WORKFLOW_ID", "w"), ("CIRCLE_NODE_INDEX", "1")];
        assert_eq!(
            build_id_from_env(vars(&circle)).as_deref(),
            Some("circleci-w")
        );
        assert_eq!(build_id_from_env(vars(&[("GITHUB_RUN_ID", " ")])), None);
        assert_eq!(build_id_from_env(vars(&[])), None);
        assert_eq!(worker_id_from_env(vars(&github)), None);
    }

    #[test]
    fn a_checkout_that_differs_is_told_file_by_file() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let build = map(&[("a_test.sh", "1"), ("b_test.sh", "2"), ("gorgon.json", "3")]);
        assert!(differences(&build, &build).is_empty());
        let here = map(&[("a_test.sh", "1"), ("b_test.sh", "X"), ("c_test.sh", "4")]);
        assert_eq!(
            differences(&build, &here),
            [
                "b_test.sh differs",
                "gorgon.json is missing here",
                "c_test.sh is not in the build"
            ]
        );
    }
}
