//! `gorgon report --build-id`: waits for the build, then reports it as `gorgon start` does
//! and leaves the marker that it is over.

use gorgon_exec::signals::StopSignals;
use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::names;

use super::build::Build;
use super::follow::{follow_to_end, Follower};
use super::{BuildOptions, BUILD_QUEUE_EXPIRY};
use crate::engine::Plan;
use crate::errors::{StartError, Stop};
use crate::view::counted;

/// `gorgon report --build-id`: waits for the build (it may start before the nodes, or
/// after they finished), then writes and prints what `gorgon start` would and exits with
/// its code.
pub async fn report(options: BuildOptions) -> Result<i32, StartError> {
    let mut signals = StopSignals::install();
    let (build, mut log) = Build::join(&options, "report").await?;
    if build.is_over().await? {
        build.broker.close().await;
        return Err(StartError::BuildLost(format!(
            "build {} was reported already (its results are gone from the broker)",
            build.build_id
        )));
    }
    let defined = build.definition(&mut log).await?;
    let mut events = crate::engine::open_events(options.start.events.as_deref())?;
    if options.start.html.is_some() || build.settings.html_file.is_some() {
        events = events.with_timeline();
    }
    let history = build.settings.history()?;
    let (plan, state, progress) =
        build.plan(&options.start, &defined, history, &mut events, |total| {
            format!(
                "Build {}: {}, queued by {}; waiting for its results",
                build.build_id,
                counted(total, "file"),
                defined.host
            )
        })?;
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

/// Writes and prints the build's report (as `gorgon start` does), then removes the build's
/// queues and leaves the marker that it is over; the exit code.
pub(super) async fn report_and_clean(
    build: Build,
    plan: Plan,
    follower: Follower,
    stop: Option<Stop>,
) -> i32 {
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
