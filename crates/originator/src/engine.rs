//! What the engines of `gorgon start` share with the run that hands them the job: the
//! [`Plan`] they run. It sits below `run` and the engines (`run` → `distributed`/`local` →
//! `engine`), so no engine needs `run`; their replies go through `run_core`, their errors
//! are in `errors`.

use std::time::Instant;

use gorgon_exec::signals::StopSignals;
use gorgon_exec::tags::JobTags;
use gorgon_exec::{run_callback, ShellCommand};
use gorgon_protocol::CallbackName;
use uuid::Uuid;

use crate::errors::StartError;
use crate::events::EventSink;
use crate::files;
use crate::settings::{Settings, StartOptions};
use crate::view::Progress;

/// The event stream a run writes to `path` (`-`: stdout), or none without a path.
pub(crate) fn open_events(path: Option<&std::path::Path>) -> Result<EventSink, StartError> {
    let Some(path) = path else {
        return Ok(EventSink::none());
    };
    EventSink::open(path).map_err(|source| StartError::EventsFile {
        path: path.to_owned(),
        source,
    })
}

/// After how long a running file whose output nobody asked for sends it anyway, so that a
/// file that hangs shows its last lines beside the progress bar (and in the events).
pub const LIVE_AFTER_SECONDS: f64 = 2.0;

/// Everything a run knows before an engine takes it: the settings and the files.
pub(crate) struct Plan {
    pub options: StartOptions,
    pub settings: Settings,
    /// The runtime file as read, updated with this run's timings at the end.
    pub history: files::History,
    /// The `quarantine_file` as read, until the run's state takes it.
    pub quarantine: crate::quarantine::Quarantine,
    pub job_id: Uuid,
    pub project: String,
    /// This machine's host name.
    pub host: String,
    pub started: Instant,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// What `--changed` selected and left out (`None` without it).
    pub chosen: Option<crate::impact::Chosen>,
}

impl Plan {
    /// Which files' output the workers stream: those `--live-output` names (every file
    /// when it names none), and every file when the run writes events.
    pub(crate) fn live_output(&self) -> gorgon_protocol::LiveOutput {
        let shown = &self.options.live_output;
        gorgon_protocol::LiveOutput {
            enabled: shown.is_some() || self.options.events.is_some(),
            files: match (shown, &self.options.events) {
                (Some(files), None) => files.clone(),
                _ => Vec::new(),
            },
            others_after_seconds: Some(LIVE_AFTER_SECONDS),
        }
    }

    /// The progress display of this run, with the live output `--live-output` asks for.
    pub(crate) fn progress(&self, total: usize) -> Progress {
        let events_on_stdout = self.options.events.as_deref() == Some(std::path::Path::new("-"));
        Progress::new(total, self.options.quiet)
            .with_live_output(self.options.live_output.clone(), events_on_stdout)
    }

    /// The tags of what the originator starts: this job on this host.
    pub(crate) fn tags(&self) -> JobTags {
        JobTags::new(self.job_id, &self.host)
    }

    /// The base of the originator's callbacks, run in the project with Gorgon's environment.
    pub(crate) fn base_command(&self) -> ShellCommand {
        ShellCommand::new("", &self.settings.project_root).envs(self.tags().pairs())
    }

    /// Runs `before_originate`; its failure, or a stop signal meanwhile (which kills it),
    /// ends the run before anything is handed out. Returns the cluster id it named, if it
    /// did (a Gorgon callbacks class's `before_originate` returns it).
    pub(crate) async fn before_originate(
        &self,
        signals: &mut StopSignals,
    ) -> Result<Option<String>, StartError> {
        let command = self.settings.callbacks.before_originate.as_deref();
        let base = self.base_command();
        let callback = run_callback(CallbackName::BeforeOriginate, command, &base);
        let ran = tokio::select! {
            ran = callback => ran,
            signal = signals.recv() => {
                return Err(StartError::Stopped { signal, during: "running before_originate" })
            }
        };
        let output = ran.map_err(|failure| StartError::BeforeOriginate {
            output: failure.output.clone(),
            failure,
        })?;
        Ok(output
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(crate::settings::CLUSTER_ID_LINE))
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty()))
    }
}
