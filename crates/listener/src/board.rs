//! What the listener's jobs are doing, for `gorgon status`: each job is on the board from
//! the moment it is taken (waiting for slots) until its task ends, with the slots it holds
//! once its turn comes and the files its workers run and have run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use gorgon_protocol::ListenerJob;
use uuid::Uuid;

use crate::metrics::{FileCounts, JobFiles};

/// The listener's jobs, and when the listener started.
pub struct Board {
    started: Instant,
    jobs: Mutex<HashMap<Uuid, Entry>>,
}

struct Entry {
    project: String,
    originator_host: String,
    /// When it was taken, or, once it runs, when its turn came.
    since: Instant,
    /// Slots it holds: none while it waits.
    slots: u32,
    files: Option<Arc<JobFiles>>,
}

/// A job's place on the board; it leaves the board when this is dropped.
pub struct OnBoard<'a> {
    board: &'a Board,
    id: Uuid,
}

impl Board {
    pub fn new() -> Board {
        Board {
            started: Instant::now(),
            jobs: Mutex::default(),
        }
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts job `id` on the board as waiting for its slots.
    pub fn enter(&self, id: Uuid, project: &str, originator_host: &str) -> OnBoard<'_> {
        let entry = Entry {
            project: project.to_owned(),
            originator_host: originator_host.to_owned(),
            since: Instant::now(),
            slots: 0,
            files: None,
        };
        self.jobs().insert(id, entry);
        OnBoard { board: self, id }
    }

    /// Seconds since the listener started.
    pub fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The jobs: running ones first, then the waiting ones, each group oldest first.
    pub fn snapshot(&self) -> Vec<ListenerJob> {
        let jobs = self.jobs();
        let mut entries: Vec<(&Uuid, &Entry)> = jobs.iter().collect();
        entries.sort_by_key(|(_, entry)| (entry.slots == 0, entry.since));
        entries
            .into_iter()
            .map(|(id, entry)| {
                let files = entry.files.as_ref().map(|f| f.counts()).unwrap_or_default();
                listener_job(*id, entry, files)
            })
            .collect()
    }

    /// Slots held by running jobs.
    pub fn busy_slots(&self) -> u32 {
        self.jobs().values().map(|entry| entry.slots).sum()
    }
}

fn listener_job(id: Uuid, entry: &Entry, files: FileCounts) -> ListenerJob {
    ListenerJob {
        job_id: id,
        project: entry.project.clone(),
        originator_host: entry.originator_host.clone(),
        running: entry.slots > 0,
        seconds: entry.since.elapsed().as_secs(),
        slots: entry.slots,
        files_running: files.running,
        files_done: files.done,
        file_seconds: files.seconds,
    }
}

impl OnBoard<'_> {
    fn update(&self, change: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.board.jobs().get_mut(&self.id) {
            change(entry);
        }
    }

    /// The job's turn has come: it holds `slots` from now on.
    pub fn running(&self, slots: u32) {
        self.update(|entry| {
            entry.slots = slots;
            entry.since = Instant::now();
        });
    }

    /// The job's workers run their files: `files` counts them.
    pub fn files(&self, files: Arc<JobFiles>) {
        self.update(|entry| entry.files = Some(files));
    }
}

impl Drop for OnBoard<'_> {
    fn drop(&mut self) {
        self.board.jobs().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use gorgon_protocol::ManagerReport;

    #[test]
    fn running_jobs_come_first_with_their_slots_and_files() {
        let board = Board::new();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let waiting = board.enter(first, "shop", "dev1");
        let running = board.enter(second, "blog", "dev2");
        running.running(3);
        let files = Arc::new(JobFiles::new(Arc::new(Metrics::new(3))));
        files.report(ManagerReport::FileStarted { worker_id: 1 });
        running.files(files);
        let jobs = board.snapshot();
        assert_eq!(board.busy_slots(), 3);
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].job_id, jobs[0].running), (second, true));
        assert_eq!((jobs[0].slots, jobs[0].files_running), (3, 1));
        assert_eq!((jobs[1].job_id, jobs[1].running), (first, false));
        assert_eq!(jobs[1].project, "shop");
        drop(running);
        drop(waiting);
        assert!(board.snapshot().is_empty());
        assert_eq!(board.busy_slots(), 0);
    }
}
