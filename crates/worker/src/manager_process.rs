//! A worker manager run as a child process (`gorgon __manage-workers`, see `manager`), for
//! whoever runs one per job on a host: a listener, or a CI node (`gorgon work`). It hands
//! the manager its assignment on stdin and keeps stdin open (its end tells the manager that
//! its parent died), relays its output to the log, and stops it the careful way (SIGTERM to
//! its group, `grace::MANAGER`, SIGKILL) when asked. Where the host allows, the manager
//! runs in a cgroup of its own (`gorgon_exec::cgroup`), killed when the manager has exited,
//! so that nothing of the job outlives it even when the manager was killed.

use std::path::PathBuf;
use std::process::Stdio;

use gorgon_exec::cgroup::{Cgroups, JobCgroup};
use gorgon_exec::tail::{relay, relay_some, LineTail};
use gorgon_exec::{describe_status, grace, terminate_group};
use gorgon_protocol::manager_report::{SpareOpening, DRAIN_REQUEST, START_REQUEST};
use gorgon_protocol::{
    Broker, BrokerError, BrokerSettings, Envelope, ManagerReport, Message, WorkerAssignment,
};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::oneshot;

/// The hidden subcommand of the `gorgon` binary that runs a worker manager.
pub const MANAGER_SUBCOMMAND: &str = "__manage-workers";

/// How a worker manager process ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ManagerEnd {
    /// It did its part and exited 0.
    Finished,
    /// It was stopped as asked (its exit status).
    Stopped(String),
    /// It could not start, or exited non-zero on its own: its status and last output.
    Crashed { status: String, output: String },
    /// The job's tree was not ready (the host reported why): it was stopped before it
    /// started anything.
    NotStarted,
}

/// What a host that runs a job's worker manager as a child process (a listener, a CI node)
/// tells the job's originator around it: that it takes the job, that its manager crashed,
/// that it is done, each published to the originator's `reply_to` on the connection that
/// `broker` gives at the time (a listener's may have changed since the job came).
pub struct HostReplies<'a> {
    job: uuid::Uuid,
    host: String,
    reply_to: String,
    broker: Box<dyn Fn() -> Broker + Send + Sync + 'a>,
}

impl<'a> HostReplies<'a> {
    pub fn new(
        job: uuid::Uuid,
        host: impl Into<String>,
        reply_to: impl Into<String>,
        broker: impl Fn() -> Broker + Send + Sync + 'a,
    ) -> HostReplies<'a> {
        HostReplies {
            job,
            host: host.into(),
            reply_to: reply_to.into(),
            broker: Box::new(broker),
        }
    }

    /// The host's name, as its replies give it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Publishes one message to the originator.
    pub async fn send(&self, message: Message) -> Result<(), BrokerError> {
        let envelope = Envelope::new(self.job, message);
        (self.broker)()
            .send_to_queue(&self.reply_to, &envelope)
            .await
    }

    /// Takes the job with `slots` (listening on `listener_queue`, for a listener).
    pub async fn accept(
        &self,
        slots: u32,
        listener_queue: Option<String>,
    ) -> Result<(), BrokerError> {
        let accepted = Message::JobAccepted {
            host: self.host.clone(),
            slots,
            listener_queue,
        };
        self.send(accepted).await
    }

    /// Reports a worker manager that crashed.
    pub async fn manager_ended(&self, end: ManagerEnd) {
        if let ManagerEnd::Crashed { status, output } = end {
            let crashed = Message::ManagerCrashed {
                host: self.host.clone(),
                status,
                output,
            };
            self.report(crashed).await;
        }
    }

    /// Reports that the job is done on this host.
    pub async fn done(&self) {
        if let Err(error) = self
            .send(Message::JobDone {
                host: self.host.clone(),
            })
            .await
        {
            tracing::warn!(job = %self.job, %error, "cannot report the job done");
        }
    }

    /// Reports a failure to the originator; a failure to report is only logged, because
    /// the originator is the only one who could act on it.
    pub async fn report(&self, message: Message) {
        if let Err(error) = self.send(message).await {
            tracing::warn!(job = %self.job, %error, "cannot report to the originator");
        }
    }
}

/// Runs the worker manager of `assignment` (in its workspace) until it exits, or until
/// `stop` resolves, which stops it. The manager starts at once and connects to the broker
/// while `ready` brings the job's tree; it starts its workers once `ready` gives true, and
/// is stopped when it gives false (its failure already reported by the host), which ends
/// as [`ManagerEnd::NotStarted`]. Once `drain` resolves, the manager is asked to drain
/// (its workers finish what they hold, take no more files, and it exits). Each report of
/// its files goes to `reports`; the rest of its output to the log.
pub async fn run_manager(
    assignment: &WorkerAssignment,
    spare: Option<SpareManager>,
    ready: impl std::future::Future<Output = bool>,
    stop: impl std::future::Future<Output = ()>,
    drain: impl std::future::Future<Output = ()>,
    reports: impl Fn(ManagerReport) + Send + 'static,
) -> ManagerEnd {
    let job = assignment.job_id;
    let crashed = |status: String, output: String| ManagerEnd::Crashed { status, output };
    let mut line = match serde_json::to_vec(assignment) {
        Ok(line) => line,
        Err(error) => {
            let status = format!("could not start: cannot encode the assignment: {error}");
            return crashed(status, String::new());
        }
    };
    line.push(b'\n');
    let spare = match spare {
        Some(spare) => spare.take().await,
        None => None,
    };
    let taken = spare.is_some();
    let started = spare.map_or_else(|| spawn_manager(&assignment.workspace, false), Ok);
    let mut child = match started {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(%job, %error, "cannot start the worker manager");
            return crashed(format!("could not start: {error}"), String::new());
        }
    };
    let pid = child.id();
    if taken {
        tracing::info!(%job, pid, "the spare worker manager takes the job");
    } else {
        tracing::info!(%job, pid, "worker manager started");
    }
    // Before it has its assignment, the manager has started nothing: all the job starts
    // is born in its cgroup.
    let cgroup = pid.and_then(|pid| contain(job, pid));
    let tail = LineTail::default();
    let relays = relay_output(&mut child, job, &tail, reports);
    // The manager reads its assignment from stdin, then takes the end of stdin to mean that
    // its parent has died: `stdin` must stay open until the manager has exited.
    let mut stdin = child.stdin.take();
    if !write_line(&mut stdin, &line).await {
        // The manager has already exited; its status and output tell why.
        tracing::warn!(%job, "cannot hand the assignment to the worker manager");
    }
    let mut stop = std::pin::pin!(stop);
    let opening = wait_for_tree(&mut child, ready, &mut stop).await;
    let not_started = opening.is_none();
    let (status, stopped) = match opening {
        Some(Some(status)) => (status, false),
        None => (stop_child(&mut child, pid).await, true),
        Some(None) => {
            let request = format!("{START_REQUEST}\n");
            write_line(&mut stdin, request.as_bytes()).await;
            follow(&mut child, pid, &mut stdin, stop, drain, job).await
        }
    };
    drop(stdin);
    // What the manager did not stop (it was killed, say) goes with the job's cgroup.
    if let Some(cgroup) = cgroup {
        cgroup.kill().await;
    }
    // The manager's pipes close when it exits; a bound keeps a stray holder from stalling us.
    for relay in relays {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), relay).await;
    }
    if not_started {
        tracing::info!(%job, "the job's tree is not ready here: its worker manager stopped before it started anything");
        return ManagerEnd::NotStarted;
    }
    ended(job, status, stopped, &tail)
}

/// Waits for the job's tree while the manager connects: `Some(None)` once it is ready and
/// the manager runs, `Some(Some(status))` when the tree is ready but the manager has
/// already exited, `None` when the tree is not to be (or `stop` came first).
async fn wait_for_tree(
    child: &mut tokio::process::Child,
    ready: impl std::future::Future<Output = bool>,
    stop: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Option<Option<std::io::Result<std::process::ExitStatus>>> {
    let mut ready = std::pin::pin!(ready);
    let opening = tokio::select! {
        ready = &mut ready => ready.then_some(None),
        status = child.wait() => Some(Some(status)),
        () = &mut *stop => None,
    };
    // A manager that ended before the tree was ready: the tree's outcome still comes first
    // (the host reports its failure), then the manager's end.
    match opening {
        Some(Some(status)) => {
            let ready = tokio::select! {
                ready = &mut ready => ready,
                () = stop => false,
            };
            ready.then_some(Some(status))
        }
        opening => opening,
    }
}

/// Follows a started manager until it exits (its status), asking it to drain once `drain`
/// resolves and stopping it once `stop` does (true then).
async fn follow(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    stdin: &mut Option<tokio::process::ChildStdin>,
    stop: impl std::future::Future<Output = ()>,
    drain: impl std::future::Future<Output = ()>,
    job: uuid::Uuid,
) -> (std::io::Result<std::process::ExitStatus>, bool) {
    // Resolves only as the manager's exit does: the drain asks, the manager then exits.
    let drained = async {
        drain.await;
        tracing::info!(%job, "asking the worker manager to drain");
        let request = format!("{DRAIN_REQUEST}\n");
        write_line(stdin, request.as_bytes()).await;
        std::future::pending().await
    };
    tokio::select! {
        status = child.wait() => (status, false),
        status = drained => (status, false),
        () = stop => (stop_child(child, pid).await, true),
    }
}

/// Stops the manager `pid` the careful way and waits for its exit.
async fn stop_child(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
) -> std::io::Result<std::process::ExitStatus> {
    match pid {
        // Reaping the manager as soon as it exits matters: an unreaped (zombie) manager
        // still counts as a member of its group, so `terminate_group` alone would wait out
        // the whole grace period.
        Some(pid) => tokio::select! {
            status = child.wait() => status,
            () = terminate_group(pid, grace::MANAGER) => child.wait().await,
        },
        None => child.wait().await,
    }
}

/// Writes `line` to the manager's stdin; false when it cannot (the manager has exited).
async fn write_line(stdin: &mut Option<tokio::process::ChildStdin>, line: &[u8]) -> bool {
    let Some(pipe) = stdin.as_mut() else {
        return false;
    };
    let written = pipe.write_all(line).await.is_ok();
    let _ = pipe.flush().await;
    written
}

/// Relays the manager's output: its reports to `reports`, the rest to the log (and `tail`).
fn relay_output(
    child: &mut tokio::process::Child,
    job: uuid::Uuid,
    tail: &LineTail,
    reports: impl Fn(ManagerReport) + Send + 'static,
) -> Vec<tokio::task::JoinHandle<()>> {
    let log_line = move |line: &str| {
        tracing::info!(target: "gorgon::manager", %job, "{line}");
    };
    let mut relays = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let take = move |line: &str| match ManagerReport::parse(line) {
            Some(report) => {
                reports(report);
                false
            }
            None => {
                log_line(line);
                true
            }
        };
        relays.push(relay_some(stdout, tail.clone(), take));
    }
    if let Some(stderr) = child.stderr.take() {
        relays.push(relay(stderr, tail.clone(), log_line));
    }
    relays
}

/// Puts the manager `pid` of job `job` in a cgroup of its own, where this host may make one.
fn contain(job: uuid::Uuid, pid: u32) -> Option<JobCgroup> {
    let cgroups = Cgroups::available()?;
    cgroups
        .contain(&format!("job-{job}"), pid)
        .map_err(|error| {
            tracing::warn!(%job, %error, "the job's processes are not contained by a cgroup");
        })
        .ok()
}

/// How the manager of job `job` ended, from its exit `status`; `stopped` says whether it
/// was asked to stop, `tail` holds its last output lines.
fn ended(
    job: uuid::Uuid,
    status: std::io::Result<std::process::ExitStatus>,
    stopped: bool,
    tail: &LineTail,
) -> ManagerEnd {
    let crashed = |status: String, output: String| ManagerEnd::Crashed { status, output };
    match status {
        Ok(status) if status.success() => {
            tracing::info!(%job, "worker manager finished");
            ManagerEnd::Finished
        }
        Ok(status) if stopped => {
            let status = describe_status(status);
            tracing::info!(%job, %status, "worker manager stopped");
            ManagerEnd::Stopped(status)
        }
        Ok(status) => {
            let status = describe_status(status);
            tracing::error!(%job, %status, "worker manager crashed");
            crashed(status, tail.text())
        }
        Err(error) => {
            tracing::error!(%job, %error, "cannot wait for the worker manager");
            crashed(format!("could not wait for it: {error}"), tail.text())
        }
    }
}

/// Starts `gorgon __manage-workers` (a spare, with `--spare`) in its own process group, so
/// that a terminal's Ctrl-C reaches only its parent, which stops managers itself.
fn spawn_manager(
    workspace: &std::path::Path,
    spare: bool,
) -> std::io::Result<tokio::process::Child> {
    let program: PathBuf = std::env::current_exe()?;
    Command::new(program)
        .arg(MANAGER_SUBCOMMAND)
        .args(spare.then_some("--spare"))
        .current_dir(workspace)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

/// A worker manager started before its job (`__manage-workers --spare`), so that its broker
/// connection (a TCP connect, the AMQP handshake, a channel in confirm mode: six round
/// trips to a far broker) is open when a job comes rather than on the job's critical path.
/// It has started nothing else and belongs to no job: a job takes it ([`run_manager`]),
/// hands it its assignment and puts it in the job's cgroup, as it would a manager it had
/// just started. Until then a task of its own holds the process, reaping it when it dies
/// (its job then starts a manager as before), and stopping it the careful way when the
/// spare is dropped or [`SpareManager::stop`]ped; a host that dies closes its stdin, which
/// the spare takes for the end too.
pub struct SpareManager {
    handoff: Option<oneshot::Sender<oneshot::Sender<tokio::process::Child>>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl SpareManager {
    /// Starts a spare that connects to `broker` for the host named `host`.
    pub fn start(broker: &BrokerSettings, host: &str) -> std::io::Result<SpareManager> {
        let opening = SpareOpening {
            broker: broker.clone(),
            host: host.to_owned(),
        };
        let mut line = serde_json::to_vec(&opening).map_err(std::io::Error::other)?;
        line.push(b'\n');
        // It enters the job's workspace when it has one.
        let child = spawn_manager(std::path::Path::new("/"), true)?;
        let (handoff, asked) = oneshot::channel();
        let keeper = tokio::spawn(keep_spare(child, line, asked));
        Ok(SpareManager {
            handoff: Some(handoff),
            keeper,
        })
    }

    /// The spare's process for a job; `None` when it has exited meanwhile.
    async fn take(mut self) -> Option<tokio::process::Child> {
        let (reply, child) = oneshot::channel();
        self.handoff.take()?.send(reply).ok()?;
        child.await.ok()
    }

    /// Stops the spare and waits until it has exited.
    pub async fn stop(mut self) {
        self.handoff.take();
        let _ = (&mut self.keeper).await;
    }
}

/// What became of a spare while it waited.
enum SpareEnd {
    Exited(std::io::Result<std::process::ExitStatus>),
    Asked(Result<oneshot::Sender<tokio::process::Child>, oneshot::error::RecvError>),
}

/// Holds the spare `child` (after writing its opening `line`) until a job asks for it, it
/// exits, or nobody can ask any more (then it is stopped).
async fn keep_spare(
    mut child: tokio::process::Child,
    line: Vec<u8>,
    asked: oneshot::Receiver<oneshot::Sender<tokio::process::Child>>,
) {
    let pid = child.id();
    // Held apart: `Child::wait` closes the stdin it holds, which the spare takes for the end.
    let mut stdin = child.stdin.take();
    write_line(&mut stdin, &line).await;
    let end = tokio::select! {
        status = child.wait() => SpareEnd::Exited(status),
        asked = asked => SpareEnd::Asked(asked),
    };
    match end {
        SpareEnd::Exited(status) => {
            let status = status.map_or_else(|error| error.to_string(), describe_status);
            tracing::warn!(pid, %status, "the spare worker manager exited before a job took it");
        }
        SpareEnd::Asked(Ok(reply)) => {
            child.stdin = stdin;
            if let Err(mut child) = reply.send(child) {
                stop_child(&mut child, pid).await.ok();
            }
        }
        SpareEnd::Asked(Err(_)) => {
            // Its stdin's end alone would stop it; the signal bounds the wait.
            drop(stdin);
            stop_child(&mut child, pid).await.ok();
        }
    }
}
