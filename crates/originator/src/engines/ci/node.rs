//! `gorgon work`: a node's part of a build, its worker manager started and followed as a
//! listener's is, the build's log followed meanwhile.

use gorgon_exec::signals::StopSignals;
use gorgon_protocol::{
    exit_code, names, Inbox, JobDefinition, SyncSettings, SyncTransport, WorkerAssignment,
};
use gorgon_worker::{run_manager, HostReplies, ManagerEnd, SpareManager};

use super::build::{Build, Defined};
use super::detect::{env_var, worker_id_from_env};
use super::fill::{differences, fill_once, local_units};
use super::follow::{follow_to_end, Follower, Watch};
use super::report::report_and_clean;
use super::{BuildOptions, LIVENESS_INTERVAL};
use crate::errors::{StartError, Stop};
use crate::view::counted;

/// `gorgon work`: runs this node's part of the build; with `--report`, also waits for the
/// whole build and reports it. Exits 0 when the node did its part (the build's verdict is
/// the reporter's), 130/143 when stopped by a signal.
pub async fn work(options: BuildOptions) -> Result<i32, StartError> {
    let mut signals = StopSignals::install();
    let host = options
        .worker_id
        .clone()
        .or_else(|| worker_id_from_env(env_var))
        .unwrap_or_else(crate::run::host_name);
    let settings = Build::settings(&options)?;
    // This node's worker manager starts now and connects while the node joins the build
    // and fills or reads it: a far broker's round trips of its connection overlap those.
    let spare = SpareManager::start(&settings.broker, &host)
        .map_err(|error| tracing::warn!(%error, "cannot start the worker manager early"))
        .ok();
    let (build, mut log) = Build::join_with(settings, &options, "work").await?;
    // Whether the build is over and the first try for its lock go together: two round
    // trips to a far broker for the price of one.
    let lock = names::build_lock(build.job);
    let (over, locked) = tokio::join!(build.is_over(), build.broker.try_declare_exclusive(&lock));
    if over? {
        println!(
            "Build {} is over (it was reported); nothing to run",
            build.build_id
        );
        build.broker.close().await;
        return Ok(exit_code::SUCCESS);
    }
    let history = build.settings.history()?;
    let (units, digests) = local_units(&build.settings, &history)?;
    let filled = fill_once(&build, &host, &units, &digests, locked?).await?;
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
    // Only a node that reports the build writes its event stream.
    let events_file = options.start.events.as_deref().filter(|_| options.report);
    let slots = options
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32));
    let assignment = node_assignment(&build, &defined, &history, &host, slots);
    let mut events = crate::engine::open_events(events_file)?;
    let (plan, state, progress) =
        build.plan(&options.start, &defined, history, &mut events, |total| {
            format!(
                "Build {}: {}; this node is {host}{}",
                build.build_id,
                counted(total, "file"),
                if filled { " (it queued them)" } else { "" }
            )
        })?;
    let mut follower = Follower {
        state,
        progress,
        events,
        own_host: Some(host.clone()),
        stop: None,
        told: false,
    };
    let node = Node {
        build: &build,
        assignment,
        spare,
    };
    let signalled = run_node(node, &mut log, &mut follower, &mut signals).await?;
    if let Some(signal) = signalled {
        build.broker.close().await;
        follower.progress.finish();
        return Ok(signal.exit_code());
    }
    if let (false, Some(stop @ Stop::BrokerLost(reason))) = (options.report, &follower.stop) {
        // Its manager stopped with the connection: the files it had not finished go back
        // to the queue (the broker dropped its connection too) and run on the other nodes.
        follower.progress.finish();
        follower.progress.note(&format!(
            "{reason}; this node stopped its part of build {}, and the other nodes run what it had not finished",
            build.build_id
        ));
        return Ok(stop.exit_code());
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
pub(super) fn node_assignment(
    build: &Build,
    defined: &Defined,
    history: &crate::files::History,
    host: &str,
    slots: u32,
) -> WorkerAssignment {
    let definition = JobDefinition {
        project: build.project.clone(),
        originator_host: defined.host.clone(),
        sync: SyncSettings {
            source: String::new(),
            transport: SyncTransport::Daemon,
            exclude: Vec::new(),
            tree: None,
        },
        runner: build.settings.runner.clone(),
        callbacks: build.settings.callbacks.remote.clone(),
        live_output: gorgon_protocol::LiveOutput::default(),
        first_is_1: build.settings.first_is_1,
        // A CI node's artifacts stay in its checkout, for its CI to upload.
        artifacts: Default::default(),
        worker_setup: build.settings.worker_setup.clone(),
        expected_file_seconds: crate::files::expected_file_seconds(&defined.units, history),
        // A CI build keeps no impact map yet: its nodes report to a build, not to a run.
        record_impact: false,
        // Nobody consumes the replies as an originator would: nothing to wait for.
        originator_outage_limit: None,
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

/// This node's part of the build: its worker manager's assignment, and the manager
/// started before it (if one could be).
pub(super) struct Node<'a> {
    pub(super) build: &'a Build,
    pub(super) assignment: WorkerAssignment,
    pub(super) spare: Option<SpareManager>,
}

/// Runs this node's worker manager (as a listener would: it takes the job, runs the
/// manager, reports its crash and that it is done) while following the build's log, which
/// may stop it; returns the stop a signal asked for, if one did. The manager checks the
/// job and opens its files channel while the node's `JobAccepted` goes to the build's log,
/// and starts its workers once that is confirmed.
pub(super) async fn run_node(
    node: Node<'_>,
    log: &mut Inbox,
    follower: &mut Follower,
    signals: &mut StopSignals,
) -> Result<Option<Stop>, StartError> {
    let Node {
        build,
        assignment,
        spare,
    } = node;
    let (host, reply_to) = (assignment.host.clone(), assignment.reply_to.clone());
    let replies = HostReplies::new(build.job, host, reply_to, || build.broker.clone());
    let accepting = {
        let (job, slots, broker) = (build.job, assignment.slots, build.broker.clone());
        let (host, reply_to) = (assignment.host.clone(), assignment.reply_to.clone());
        async move {
            let replies = HostReplies::new(job, host, reply_to, move || broker.clone());
            replies.accept(slots, None).await
        }
    };
    let (tell_accepted, accepted) = tokio::sync::oneshot::channel();
    let (stop_manager, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut stop_manager = Some(stop_manager);
    let mut stop = move || {
        if let Some(stop) = stop_manager.take() {
            let _ = stop.send(());
        }
    };
    let mut manager = tokio::spawn(async move {
        // A CI node keeps no metrics: the reports of the manager's files are not needed.
        let reports = |_| {};
        // A node's checkout is its tree, ready before the manager starts: the manager
        // starts its workers once the node has taken the job.
        let ready = async move {
            let accepted = accepting.await;
            let taken = accepted.is_ok();
            let _ = tell_accepted.send(accepted);
            taken
        };
        let stopped = async {
            let _ = stopped.await;
        };
        // A CI node stops or runs to the end: it has no drain.
        let drain = std::future::pending();
        run_manager(&assignment, spare, ready, stopped, drain, reports).await
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
                    follower.stop.get_or_insert(build.log_ended());
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
    if let Ok(Err(error)) = accepted.await {
        return Err(error.into());
    }
    let end = ended.unwrap_or_else(|error| ManagerEnd::Crashed {
        status: format!("the manager's task failed: {error}"),
        output: String::new(),
    });
    replies.manager_ended(end).await;
    replies.done().await;
    Ok(signalled)
}
