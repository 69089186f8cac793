//! The listener's spare worker manager: one manager process started before any job, already
//! connected to the broker when a job comes, so that a far broker's connection round trips
//! are off the job's start (`gorgon_worker::SpareManager`). A job takes it; the next one is
//! started once that job has ended, so that its start competes with no job's start. None is
//! kept once the listener drains or stops.

use gorgon_worker::SpareManager;

use crate::settings::ListenerSettings;

/// Where the listener keeps its spare manager.
#[derive(Default)]
pub(crate) struct Spare {
    state: std::sync::Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    spare: Option<SpareManager>,
    /// Set once the listener drains or stops: no spare is started any more.
    closed: bool,
    /// The spare being stopped since the drain began.
    stopping: Option<tokio::task::JoinHandle<()>>,
}

impl Spare {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a spare for the next job, unless one is kept or the listener drains or stops.
    pub(crate) fn refill(&self, settings: &ListenerSettings) {
        let mut kept = self.kept();
        if kept.closed || kept.spare.is_some() {
            return;
        }
        match SpareManager::start(&settings.broker, &settings.name) {
            Ok(spare) => kept.spare = Some(spare),
            Err(error) => tracing::warn!(%error, "cannot start a spare worker manager"),
        }
    }

    /// The spare for a job that starts now, if one is kept.
    pub(crate) fn take(&self) -> Option<SpareManager> {
        self.kept().spare.take()
    }

    /// Keeps no spare from now on, and begins to stop the one kept (a drain):
    /// [`Spare::close`] waits for it.
    pub(crate) fn close_soon(&self) {
        let mut kept = self.kept();
        kept.closed = true;
        if let Some(spare) = kept.spare.take() {
            kept.stopping = Some(tokio::spawn(spare.stop()));
        }
    }

    /// Keeps no spare from now on, and stops the one kept, waiting until it has exited.
    pub(crate) async fn close(&self) {
        self.close_soon();
        let stopping = self.kept().stopping.take();
        if let Some(stopping) = stopping {
            let _ = stopping.await;
        }
    }
}
