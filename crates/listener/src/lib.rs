//! The `gorgon listen` daemon: it waits on its cluster's jobs exchange, answers pings, and
//! runs each job it receives in a task of its own (pull the tree, `after_sync`, then a worker
//! manager process), so that it stays responsive while jobs run.

mod artifacts;
mod board;
mod check;
mod fleet;
pub mod install;
mod job;
mod metrics;
mod settings;
mod slots;
mod spare;
mod tree_check;
mod workspace;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gorgon_protocol::broker::{log_refusal, Backoff, QueueLife};
use gorgon_protocol::config_file::ConfigFileError;
use gorgon_protocol::signing;
use gorgon_protocol::{
    names, Broker, BrokerError, Envelope, Incoming, ListenerInfo, Message, RunnerSettings,
};
use gorgon_worker::{WarmKey, WarmProcess};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

pub use settings::{ListenerSettings, SettingsProblem, DEFAULT_WORKER_SLOTS};

/// How long running jobs get, once the listener is asked to stop, to stop their worker
/// managers, remove their workspaces and tell their originators. A worker manager gets
/// `gorgon_exec::grace::MANAGER` of it before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How many messages of its queue the listener holds unsettled. Taking a job costs it
/// little (a place in line, or a refusal sent apart) and settles the message at once, so
/// this bounds only what a burst of jobs holds in memory; the rest wait in the broker.
const QUEUE_PREFETCH: u16 = 64;

/// How many refusals may be on their way to originators at once: a burst's refusals share
/// the connection's one publishing channel with the answers to pings, which must not wait
/// behind hundreds of them.
const REFUSALS_AT_ONCE: usize = 4;

/// Why the listener could not start or could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    #[error("{}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        problem: settings::SettingsProblem,
    },
    /// What `listen --check` found wrong on this host.
    #[error("{}: {problem}", path.display())]
    Check {
        path: PathBuf,
        #[source]
        problem: check::WorkspaceProblem,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot serve metrics on metrics_address {address}: {source}")]
    MetricsAddress {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gorgon listen refuses to run as root: every job it takes runs its callbacks and tests with the listener's rights, so any job could change anything on this host. Run it as an unprivileged user (`gorgon install_listener` sets one up), or, on a host that is thrown away after use (a container, a CI machine), set \"allow_root\": true in {}", path.display())]
    Root { path: PathBuf },
}

/// Refuses to serve as root unless the config allows it (`allow_root`).
pub fn refuse_root(
    settings: &ListenerSettings,
    path: &std::path::Path,
) -> Result<(), ListenerError> {
    if nix::unistd::geteuid().is_root() && !settings.allow_root {
        return Err(ListenerError::Root {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Warnings about files that others can read: the config holds the broker password.
fn readable_by_others(path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o004 != 0).then(|| {
        format!(
            "warning: {} can be read by every user of this host (mode {mode:o}) and holds the broker password; chmod 640 it",
            path.display()
        )
    })
}

/// `gorgon listen --check`: loads the config at `path` and connects to its broker. Returns
/// the line to print when both work.
pub async fn check(path: &std::path::Path) -> Result<String, ListenerError> {
    let settings = ListenerSettings::load(path)?;
    settings.warn_unknown_keys(path);
    refuse_root(&settings, path)?;
    check::workspace_root(&settings.workspace_root).map_err(|problem| ListenerError::Check {
        path: path.to_owned(),
        problem,
    })?;
    let broker = Broker::connect(
        &settings.broker,
        &format!("gorgon listen --check {}", settings.name),
    )
    .await?;
    let reached = broker.address().to_owned();
    broker.close().await;
    let metrics = settings
        .metrics_address
        .map(|address| format!(", metrics served on http://{address}/metrics"))
        .unwrap_or_default();
    let mut report = format!(
        "{} is fine: listener {} with {} worker slot(s) on cluster '{}'{metrics}, RabbitMQ at {} is reachable; {}",
        path.display(),
        settings.name,
        settings.worker_slots,
        settings.cluster_id,
        reached,
        trust_line(&settings)
    );
    if let Some(warning) = check::slots_per_core(settings.worker_slots) {
        report.push('\n');
        report.push_str(&warning);
    }
    if let Some(warning) = readable_by_others(path) {
        report.push('\n');
        report.push_str(&warning);
    }
    Ok(report)
}

/// What the listener trusts, in words: its keys, or the warning that it has none.
fn trust_line(settings: &ListenerSettings) -> String {
    match &settings.broker.signing {
        Some(keys) => {
            let id = |key: &str| signing::key_id(key.as_bytes());
            match &keys.previous {
                Some(previous) => format!(
                    "it runs only jobs signed with key {} or the previous key {}",
                    id(&keys.current),
                    id(previous)
                ),
                None => format!("it runs only jobs signed with key {}", id(&keys.current)),
            }
        }
        None => "warning: it has no signing key, so it runs jobs from anyone who can publish on the broker (set signing_key_file; see docs/security.md)".into(),
    }
}

/// What every job task shares with the listener.
struct Shared {
    /// The connection in use: a new one after each reconnection, which job tasks see.
    broker: watch::Sender<Broker>,
    settings: ListenerSettings,
    /// The listener's own queue, named in `JobAccepted`.
    queue: String,
    /// Worker slots taken by running jobs and the line of jobs waiting for them (kept
    /// across reconnections).
    slots: slots::Slots,
    /// Permits to send a refusal ([`REFUSALS_AT_ONCE`]).
    refusals: tokio::sync::Semaphore,
    /// The warm runner kept for the built-in runners (kept across reconnections).
    warm: WarmSlot,
    /// What `GET /metrics` on `metrics_address` shows.
    metrics: Arc<metrics::Metrics>,
    /// True once the listener drains: no job is taken, and the running ones take no files.
    draining: watch::Sender<bool>,
    /// What its jobs are doing, for `gorgon status`.
    board: board::Board,
    /// Notified by `gorgon drain` naming this listener: it drains as on the first SIGTERM.
    drain_requested: tokio::sync::Notify,
    /// The worker manager started and connected before the next job comes.
    spare: spare::Spare,
}

/// Where the listener keeps its warm runner.
type WarmSlot = Arc<std::sync::Mutex<Option<WarmProcess>>>;

impl Shared {
    /// What the listener answers to a ping: who it is, and what its jobs are doing.
    fn info(&self) -> ListenerInfo {
        ListenerInfo {
            name: self.settings.name.clone(),
            version: gorgon_protocol::VERSION.to_owned(),
            slots: self.settings.worker_slots,
            busy_slots: self.board.busy_slots(),
            uptime_seconds: self.board.uptime_seconds(),
            draining: *self.draining.borrow(),
            jobs: self.board.snapshot(),
        }
    }

    /// The connection in use now.
    fn broker(&self) -> Broker {
        self.broker.borrow().clone()
    }

    /// The socket of the warm runner that serves `runner`, if one does. Otherwise, for a
    /// built-in runner that can run warm, starts one for the jobs to come (this job boots its
    /// runners as usual), retiring the one kept for another kind or interpreter. One that
    /// failed to boot is not started again for a while (its output is in the log).
    fn warm_runner_for(&self, runner: &RunnerSettings) -> Option<PathBuf> {
        if !self.settings.warm_runners {
            return None;
        }
        let key = WarmKey::of(runner)?;
        let mut warm = self.warm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = warm.as_mut() {
            if current.key == key && (!current.has_ended() || current.failed_recently()) {
                let socket = current.socket_if_serving();
                if socket.is_some() {
                    self.metrics.warm_runner_reuses.inc();
                }
                return socket;
            }
        }
        if let Some(old) = warm.take() {
            old.retire();
        }
        match WarmProcess::start(key.clone()) {
            Ok(started) => {
                tracing::info!(kind = ?key.kind, interpreter = key.interpreter, "starting a warm runner for the jobs to come");
                *warm = Some(started);
            }
            Err(error) => tracing::warn!(kind = ?key.kind, %error, "cannot start a warm runner"),
        }
        None
    }
}

/// Runs the listener until `shutdown` completes, then stops every job and returns `Ok`.
/// Once `drain` completes, it takes no more jobs and lets its jobs finish the files they
/// run (the rest go back to their queues): it returns when they have ended, or stops them
/// as `shutdown` does after `drain_timeout`. It fails only when the broker cannot be
/// reached at start; a connection lost later is re-established with backoff.
pub async fn run(
    settings: ListenerSettings,
    drain: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ListenerError> {
    let mut settings = settings;
    for line in settings.config_keys.ignored_lines() {
        tracing::info!("{line}");
    }
    // Workspaces are handed to other processes and callbacks as absolute paths.
    if let Ok(root) = std::path::absolute(&settings.workspace_root) {
        settings.workspace_root = root;
    }
    // One name for the listener's queue across reconnections: the originators of running
    // jobs check that it exists to tell whether this listener lives.
    let queue = names::listener_queue(&settings.cluster_id, Uuid::new_v4());
    // The first connection must work: a listener that cannot reach its broker at start is
    // misconfigured, and says so. Later losses are retried with backoff.
    let (broker, inbox) = connect(&settings, &queue).await?;
    // The server stops when the listener returns (and drops it).
    let (metrics, _metrics_server) = serve_metrics(&settings).await?;
    let shared = Arc::new(Shared {
        broker: watch::channel(broker).0,
        settings: settings.clone(),
        queue,
        slots: slots::Slots::new(settings.worker_slots),
        refusals: tokio::sync::Semaphore::new(REFUSALS_AT_ONCE),
        warm: WarmSlot::default(),
        metrics,
        draining: watch::channel(false).0,
        board: board::Board::new(),
        drain_requested: tokio::sync::Notify::new(),
        spare: spare::Spare::default(),
    });
    shared.spare.refill(&shared.settings);
    let mut connection = Some(inbox);
    let (stop, stopping) = watch::channel(false);
    let mut jobs: JoinSet<Uuid> = JoinSet::new();
    let mut taken: HashSet<Uuid> = HashSet::new();
    // Reconnecting waits as a worker manager does (jittered, so a fleet does not come back
    // at one instant); the next attempt's time survives the loop's other wake-ups.
    let mut backoff = Backoff::new();
    let mut retry_at = tokio::time::Instant::now();
    // The first SIGTERM, or `gorgon drain` naming this listener.
    let asked = shared.clone();
    let drain = async move {
        tokio::select! {
            () = drain => {}
            () = asked.drain_requested.notified() => {}
        }
    };
    let mut ending = Ending {
        shutdown: Box::pin(shutdown),
        drain: Some(Box::pin(drain)),
        deadline: None,
        timeout: settings.drain_timeout,
    };

    let result = loop {
        let Some(inbox) = connection.as_mut() else {
            // Reconnecting, while jobs already running go on as they can.
            tokio::select! {
                end = ending.next() => if end == End::Stop || start_drain(&shared, &jobs) {
                    break Ok(());
                },
                Some(finished) = jobs.join_next(), if !jobs.is_empty() => {
                    log_job_end(finished);
                    if ending.drained(&jobs) {
                        break Ok(());
                    }
                }
                () = tokio::time::sleep_until(retry_at) => {
                    connection = reconnect(&shared, &mut backoff, &mut retry_at).await;
                }
            }
            continue;
        };
        tokio::select! {
            end = ending.next() => if end == End::Stop || start_drain(&shared, &jobs) {
                tracing::info!("shutting down");
                break Ok(());
            },
            incoming = inbox.next() => match incoming {
                Some(incoming) => {
                    handle(&shared, incoming, &mut taken, &mut jobs, &stopping).await;
                }
                None => {
                    tracing::error!(
                        "lost the connection to RabbitMQ at {}; reconnecting",
                        shared.broker().address()
                    );
                    connection = None;
                    retry_at = tokio::time::Instant::now() + backoff.next_wait();
                }
            },
            Some(finished) = jobs.join_next(), if !jobs.is_empty() => {
                log_job_end(finished);
                if ending.drained(&jobs) {
                    tracing::info!("drained: every job has ended");
                    break Ok(());
                }
            }
        }
    };

    let _ = stop.send(true);
    stop_jobs(&mut jobs, &shared).await;
    result
}

/// Tries to connect again (the listener's queue and consumer too); the new inbox, or
/// `None` and the time of the next attempt.
async fn reconnect(
    shared: &Shared,
    backoff: &mut Backoff,
    retry_at: &mut tokio::time::Instant,
) -> Option<gorgon_protocol::Inbox> {
    match connect(&shared.settings, &shared.queue).await {
        Ok((broker, inbox)) => {
            tracing::info!("reconnected to RabbitMQ at {}", broker.address());
            shared.metrics.broker_reconnections.inc();
            shared.broker.send_replace(broker);
            *backoff = Backoff::new();
            Some(inbox)
        }
        Err(error) => {
            let wait = backoff.next_wait();
            tracing::warn!(%error, "cannot reconnect yet; retrying in {wait:?}");
            *retry_at = tokio::time::Instant::now() + wait;
            None
        }
    }
}

/// Once the stop is sent: each job task sees it and terminates its worker manager; the ones
/// that take too long are aborted, and dropping them kills their managers
/// (`kill_on_drop`). Then the connection is closed and the warm runner retired.
async fn stop_jobs(jobs: &mut JoinSet<Uuid>, shared: &Shared) {
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while jobs.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        tracing::warn!("some jobs did not stop in time; killing their worker managers");
        jobs.shutdown().await;
    }
    shared.spare.close().await;
    shared.broker().close().await;
    if let Some(kept) = shared.warm.lock().unwrap_or_else(|e| e.into_inner()).take() {
        kept.retire();
    }
}

/// The listener's way out: the first request drains it (it takes no more jobs, and its jobs
/// finish the files they run), the second request or the drain's timeout stops it.
struct Ending<S, D> {
    shutdown: std::pin::Pin<Box<S>>,
    /// `None` once the drain has begun.
    drain: Option<std::pin::Pin<Box<D>>>,
    /// When the drain gives up, once it has begun.
    deadline: Option<tokio::time::Instant>,
    timeout: Duration,
}

/// What [`Ending::next`] asks for.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Drain,
    Stop,
}

impl<S: Future<Output = ()>, D: Future<Output = ()>> Ending<S, D> {
    /// The next request: a drain (once), then a stop.
    async fn next(&mut self) -> End {
        let deadline = self.deadline;
        let timed_out = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let drain = async {
            match self.drain.as_mut() {
                Some(drain) => drain.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut self.shutdown => End::Stop,
            () = drain => {
                self.drain = None;
                self.deadline = Some(tokio::time::Instant::now() + self.timeout);
                End::Drain
            }
            () = timed_out => {
                tracing::warn!("drain_timeout ({:?}) has passed; stopping the jobs left", self.timeout);
                End::Stop
            }
        }
    }

    /// Whether the listener drains and has no job left.
    fn drained(&self, jobs: &JoinSet<Uuid>) -> bool {
        self.drain.is_none() && jobs.is_empty()
    }
}

/// Begins the drain: new jobs are refused, waiting ones too, running ones finish the files
/// they run. True when no job runs, so that the listener may go at once.
fn start_drain(shared: &Shared, jobs: &JoinSet<Uuid>) -> bool {
    tracing::info!(
        jobs = jobs.len(),
        "draining: taking no more jobs; the running ones finish their files (a second SIGTERM stops them)"
    );
    shared.draining.send_replace(true);
    shared.spare.close_soon();
    jobs.is_empty()
}

/// The listener's metrics, served on `metrics_address` (when set) until the returned
/// server is dropped.
async fn serve_metrics(
    settings: &ListenerSettings,
) -> Result<(Arc<metrics::Metrics>, Option<AbortOnDrop>), ListenerError> {
    let metrics = Arc::new(metrics::Metrics::new(settings.worker_slots));
    let Some(address) = settings.metrics_address else {
        return Ok((metrics, None));
    };
    let listener = metrics::bind(address)
        .await
        .map_err(|source| ListenerError::MetricsAddress { address, source })?;
    tracing::info!("serving metrics on http://{address}/metrics");
    let server = tokio::spawn(metrics::serve(listener, metrics.clone()));
    Ok((metrics, Some(AbortOnDrop(server))))
}

/// A task that stops when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn log_job_end(finished: Result<Uuid, tokio::task::JoinError>) {
    match finished {
        Ok(job_id) => tracing::info!(job = %job_id, "job finished"),
        Err(error) => tracing::error!(%error, "a job task failed"),
    }
}

/// Connects to the broker, declares the cluster's exchanges and the listener's `queue`
/// (again, after a reconnection), consumes it and announces the listener, so that the
/// originators of running jobs send it their job again (it is taken once).
async fn connect(
    settings: &ListenerSettings,
    queue: &str,
) -> Result<(Broker, gorgon_protocol::Inbox), ListenerError> {
    let cluster = &settings.cluster_id;
    let broker = Broker::connect(
        &settings.broker,
        &format!("gorgon listen {}", settings.name),
    )
    .await?;
    let jobs_exchange = names::jobs_exchange(cluster);
    let announcements = names::announcements_exchange(cluster);
    broker.declare_fanout(&jobs_exchange).await?;
    broker.declare_fanout(&announcements).await?;
    // It lives as long as this listener consumes it: originators check that it exists to
    // tell a listener that died (or froze, past the heartbeat) from a busy one.
    broker
        .declare_queue(queue, QueueLife::WhileConsumed)
        .await?;
    broker.bind(queue, &jobs_exchange).await?;
    let inbox = broker.consume(queue, Some(QUEUE_PREFETCH)).await?;
    let announcement = Envelope::new(
        Uuid::new_v4(),
        Message::ListenerAnnounced {
            listener_queue: queue.to_owned(),
            name: settings.name.clone(),
        },
    );
    // Nobody listens for announcements unless a job is running: that is normal, so the
    // announcement is offered, not sent (the broker drops it rather than returning it).
    if let Err(error) = broker.offer(&announcements, &announcement).await {
        tracing::warn!(%error, "cannot announce this listener");
    }
    tracing::info!(
        "listening as {} with {} slots on cluster {}",
        settings.name,
        settings.worker_slots,
        cluster
    );
    // How its jobs' processes are contained, found (and said) once.
    gorgon_exec::cgroup::Cgroups::available();
    if settings.broker.signing.is_some() {
        tracing::info!("{}", trust_line(settings));
    } else {
        tracing::warn!("{}", trust_line(settings));
    }
    Ok((broker, inbox))
}

/// Why a signed job is refused as a replay: signed longer ago than
/// [`signing::JOB_MAX_AGE`] (or that far in the future). Only a listener with keys has a
/// checked signature to go by.
fn stale_job(incoming: &Incoming) -> Option<String> {
    let signature = incoming.signature.as_ref()?;
    let age = signing::age_ms(signature);
    let bound = signing::JOB_MAX_AGE.as_millis() as i128;
    (age.abs() > bound).then(|| {
        format!(
            "a job signed {} s {} is refused as a replay (the bound is {} s)",
            age.abs() / 1000,
            if age > 0 { "ago" } else { "in the future" },
            signing::JOB_MAX_AGE.as_secs()
        )
    })
}

/// Handles one message from the listener's queue and settles it.
async fn handle(
    shared: &Arc<Shared>,
    incoming: Incoming,
    taken: &mut HashSet<Uuid>,
    jobs: &mut JoinSet<Uuid>,
    stopping: &watch::Receiver<bool>,
) {
    let envelope = match &incoming.envelope {
        Ok(envelope) => envelope,
        Err(error) => {
            if !error.is_untrusted() {
                tracing::warn!(%error, "dropping an unreadable message");
            }
            settle(incoming.discard().await);
            return;
        }
    };
    let job_id = envelope.job_id;
    match &envelope.message {
        Message::Ping { reply_to } => {
            let reply = Envelope::new(job_id, Message::PingReply(shared.info()));
            if let Err(error) = shared.broker().send_to_queue(reply_to, &reply).await {
                tracing::warn!(%error, "cannot answer a ping");
            }
        }
        Message::Drain { host, reply_to } => {
            if *host == shared.settings.name {
                answer_drain(shared, job_id, reply_to).await;
            }
        }
        Message::FleetCommand {
            argv,
            timeout_seconds,
            reply_to,
        } => {
            // Run apart, so that the listener goes on taking jobs and pings meanwhile.
            let shared = shared.clone();
            let (argv, reply_to, timeout) = (argv.clone(), reply_to.clone(), *timeout_seconds);
            tokio::spawn(async move {
                let outcome = fleet::run(&shared.settings, &argv, timeout).await;
                let reply = Envelope::new(
                    job_id,
                    Message::FleetResult {
                        host: shared.settings.name.clone(),
                        outcome,
                    },
                );
                if let Err(error) = shared.broker().send_to_queue(&reply_to, &reply).await {
                    tracing::warn!(%error, "cannot answer a fleet command");
                }
            });
        }
        Message::Job {
            definition,
            reply_to,
        } => {
            if let Some(stale) = stale_job(&incoming) {
                shared.metrics.refused(metrics::RefusalReason::stale);
                log_refusal(&definition.originator_host, "stale job", &stale);
                settle(incoming.discard().await);
                return;
            }
            // The originator sends a running job both on the fanout and straight to a
            // listener that announces itself late; the same job must be taken once (a
            // replayed one too).
            if taken.contains(&job_id) {
                tracing::info!(job = %job_id, "ignoring a job already taken (sent twice, or replayed)");
            } else {
                let job = job::Job {
                    id: job_id,
                    definition: definition.as_ref().clone(),
                    reply_to: reply_to.clone(),
                };
                if take_job(shared, job, jobs, stopping) {
                    taken.insert(job_id);
                }
            }
        }
        other => {
            tracing::warn!(job = %job_id, body = ?other, "dropping a message that is not for a listener");
            settle(incoming.discard().await);
            return;
        }
    }
    settle(incoming.ack().await);
}

/// `gorgon drain` names this listener: it drains (the loop sees the request) when its
/// config allows fleet commands, and says so, or why not, on `reply_to`.
async fn answer_drain(shared: &Shared, id: Uuid, reply_to: &str) {
    let refused = (!shared.settings.allow_fleet_commands).then(|| {
        "this listener does not take fleet commands, gorgon drain among them (set \"allow_fleet_commands\": true in its gorgon_listener.json, or send it SIGTERM)".to_owned()
    });
    if refused.is_none() {
        tracing::info!("gorgon drain asks this listener to drain");
        shared.drain_requested.notify_one();
    }
    let jobs = shared
        .board
        .snapshot()
        .iter()
        .filter(|job| job.running)
        .count();
    let answer = Message::DrainAnswer {
        host: shared.settings.name.clone(),
        jobs: u32::try_from(jobs).unwrap_or(u32::MAX),
        refused,
    };
    if let Err(error) = shared
        .broker()
        .send_to_queue(reply_to, &Envelope::new(id, answer))
        .await
    {
        tracing::warn!(%error, "cannot answer gorgon drain");
    }
}

/// Takes a job into the line for this host's slots (it starts at once when slots are free)
/// or refuses it when the line is full; false when refused. Nothing here waits on the
/// broker: the message is settled as soon as this returns, whatever the job then waits
/// for, so that a burst of jobs never holds up pings or the listener's queue.
fn take_job(
    shared: &Arc<Shared>,
    job: job::Job,
    jobs: &mut JoinSet<Uuid>,
    stopping: &watch::Receiver<bool>,
) -> bool {
    let (id, project, originator) = (
        job.id,
        job.definition.project.clone(),
        job.definition.originator_host.clone(),
    );
    if *shared.draining.borrow() {
        shared.metrics.refused(metrics::RefusalReason::draining);
        tracing::info!(job = %id, %project, %originator, "refusing a job: the listener is draining");
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = shared.refusals.acquire().await;
            job::refuse(
                &shared,
                &job,
                "the listener is draining: it takes no more jobs".into(),
            )
            .await;
        });
        return false;
    }
    match shared.slots.join() {
        Ok(turn) => {
            shared.metrics.jobs_taken.inc();
            match &turn {
                slots::Turn::Now(grant) => tracing::info!(
                    job = %id, %project, %originator, slots = grant.slots(), "taking a job"
                ),
                slots::Turn::Later { ahead, .. } => tracing::info!(
                    job = %id, %project, %originator, ahead,
                    "taking a job, which waits its turn: every slot is busy"
                ),
            }
            jobs.spawn(job::run_job(shared.clone(), job, turn, stopping.clone()));
            true
        }
        Err(full) => {
            shared.metrics.refused(metrics::RefusalReason::line_full);
            let reason = full.to_string();
            tracing::info!(job = %id, %project, %originator, "{reason}");
            let shared = shared.clone();
            tokio::spawn(async move {
                let _permit = shared.refusals.acquire().await;
                job::refuse(&shared, &job, reason).await;
            });
            false
        }
    }
}

fn settle(result: Result<(), BrokerError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "cannot settle a message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_request_drains_and_the_drain_timeout_stops() {
        let mut ending = Ending {
            shutdown: Box::pin(std::future::pending::<()>()),
            drain: Some(Box::pin(std::future::ready(()))),
            deadline: None,
            timeout: Duration::from_millis(50),
        };
        assert_eq!(ending.next().await, End::Drain);
        let drained = std::time::Instant::now();
        assert_eq!(ending.next().await, End::Stop);
        assert!(drained.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_stop_during_the_drain_stops_at_once() {
        let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
        let mut ending = Ending {
            shutdown: Box::pin(async {
                let _ = stop_requested.await;
            }),
            drain: Some(Box::pin(std::future::ready(()))),
            deadline: None,
            timeout: Duration::from_secs(3600),
        };
        assert_eq!(ending.next().await, End::Drain);
        stop.send(()).unwrap();
        assert_eq!(ending.next().await, End::Stop);
    }
}
