//! The build as a node or a reporter joins it: its broker connection, its job id, whether it
//! is over, its definition from the log, and the plan a node or reporter follows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gorgon_protocol::{names, Broker, Inbox, Message};
use uuid::Uuid;

use super::detect::{build_id_from_env, env_var};
use super::{BuildOptions, BROKER_URL_VARIABLE, LOG_MAX_AGE};
use crate::engine::Plan;
use crate::errors::{StartError, Stop};
use crate::events::{Event, EventSink};
use crate::files;
use crate::quarantine::Quarantine;
use crate::settings::{Settings, StartOptions};
use crate::state::JobState;
use crate::view::Progress;

/// The build as a node or a reporter joins it.
pub(super) struct Build {
    pub(super) settings: Settings,
    pub(super) broker: Broker,
    pub(super) build_id: String,
    pub(super) job: Uuid,
    pub(super) project: String,
}

impl Build {
    /// Joins the build as `role`: the build and the reader of its log (from its start).
    pub(super) async fn join(
        options: &BuildOptions,
        role: &str,
    ) -> Result<(Build, Inbox), StartError> {
        Build::join_with(Build::settings(options)?, options, role).await
    }

    /// The settings of the checkout, with the broker a CI's secret variable may name.
    pub(super) fn settings(options: &BuildOptions) -> Result<Settings, StartError> {
        let mut settings = Settings::for_start(&options.start)?;
        settings.tell_keys();
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
        Ok(settings)
    }

    /// [`Build::join`] with the checkout's `settings`.
    pub(super) async fn join_with(
        settings: Settings,
        options: &BuildOptions,
        role: &str,
    ) -> Result<(Build, Inbox), StartError> {
        let invalid = |problem: String| StartError::Build(problem);
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
        let mut broker = Broker::connect(
            &settings.broker,
            &format!("gorgon {role} {project} {build_id}"),
        )
        .await?;
        // The reader that waits for the stream to start reads the build's log.
        let log = broker
            .declare_and_read_stream(&names::build_log(job), LOG_MAX_AGE)
            .await?;
        let build = Build {
            settings,
            broker,
            build_id,
            job,
            project,
        };
        Ok((build, log))
    }

    /// Why the build cannot be followed any more once its log ended: the connection went
    /// away (the broker stopped, or dropped it after missed heartbeats: a partition), or the
    /// log itself did (the reporter removed it, the build being over).
    pub(super) fn log_ended(&self) -> Stop {
        if self.broker.is_connected() {
            Stop::Failed(format!("the log of build {} was removed", self.build_id))
        } else {
            Stop::BrokerLost(format!(
                "lost the connection to RabbitMQ at {}",
                self.broker.address()
            ))
        }
    }

    /// Whether a reporter already reported the build.
    pub(super) async fn is_over(&self) -> Result<bool, StartError> {
        Ok(self
            .broker
            .queue_counts(&names::build_over(self.job))
            .await?
            .is_some())
    }

    /// Reads the log from its start up to the build's definition.
    pub(super) async fn definition(&self, log: &mut Inbox) -> Result<Defined, StartError> {
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
                .ok_or_else(|| StartError::BuildLost(self.log_ended().reason()))?;
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

    /// The plan, state and progress view of the build, as `gorgon start` would have them for
    /// its units (the build started when its files were queued); the view opens with `note`,
    /// given the number of files.
    pub(super) fn plan(
        &self,
        options: &StartOptions,
        defined: &Defined,
        history: files::History,
        events: &mut EventSink,
        note: impl FnOnce(usize) -> String,
    ) -> Result<(Plan, JobState, Progress), StartError> {
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
            chosen: None,
        };
        let progress = plan.progress(state.total());
        progress.note(&note(state.total()));
        Ok((plan, state, progress))
    }
}

/// The build's definition, from its log.
pub(super) struct Defined {
    pub(super) host: String,
    pub(super) units: Vec<String>,
    pub(super) digests: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub(super) queued_at: f64,
}

/// Seconds since the Unix epoch, now.
pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}
