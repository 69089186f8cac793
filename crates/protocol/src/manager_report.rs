//! What a worker manager tells the host process that started it (a listener) about the
//! files its workers run, for the host's metrics: one JSON line per event on the manager's
//! stdout, among whatever else is written there (which the host logs as before). Only the
//! verdict and the time travel: no file name, so nothing of a suite ends up in a metric.

use serde::{Deserialize, Serialize};

use crate::{FileStatus, Message};

/// The line a host writes on its worker manager's stdin (after the assignment) to drain it:
/// the manager takes no more files, its workers finish the files they hold, the files it
/// fetched and did not hand out go back to the queue, and it exits as when the job is done.
pub const DRAIN_REQUEST: &str = r#"{"gorgon_manager_request":"drain"}"#;

/// The line a host writes on its worker manager's stdin (after the assignment) once the
/// job's tree is ready (pulled, checked, `after_sync` done): the manager, which connects to
/// the broker and checks the job meanwhile, then starts its workers and takes files. A host
/// thus starts its manager when it takes the job, and the manager's round trips to a far
/// broker overlap the pull's to the file server.
pub const START_REQUEST: &str = r#"{"gorgon_manager_request":"start"}"#;

/// The first line a host writes on the stdin of a spare worker manager
/// (`__manage-workers --spare`), one started before any job so that its broker connection
/// is open when a job comes: the broker to connect to and the host's name. The job's
/// [`crate::WorkerAssignment`] follows as the next line when a job takes the spare, then the
/// requests above, as for any manager.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpareOpening {
    pub broker: crate::BrokerSettings,
    pub host: String,
}

/// One event of a worker manager's files.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "gorgon_manager_report", rename_all = "snake_case")]
pub enum ManagerReport {
    /// A worker started a file.
    FileStarted { worker_id: u32 },
    /// A worker finished a file with this verdict, after `seconds`.
    FileFinished {
        worker_id: u32,
        status: FileStatus,
        seconds: f64,
    },
    /// A worker exited: whatever file it ran has ended without a result.
    WorkerExited { worker_id: u32 },
}

impl ManagerReport {
    /// The reports of the files that `message` (a worker's reply, maybe several at once)
    /// starts and finishes.
    pub fn of(message: &Message) -> Vec<ManagerReport> {
        match message {
            Message::FileStarted { worker_id, .. } => vec![ManagerReport::FileStarted {
                worker_id: *worker_id,
            }],
            Message::FileFinished(result) => vec![ManagerReport::FileFinished {
                worker_id: result.worker_id,
                status: result.status,
                seconds: result.seconds,
            }],
            Message::Replies { replies } => replies.iter().flat_map(ManagerReport::of).collect(),
            _ => Vec::new(),
        }
    }

    /// The line written for this report (without its newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("a manager report encodes")
    }

    /// The report a line of the manager's stdout holds, if it holds one.
    pub fn parse(line: &str) -> Option<ManagerReport> {
        if !line.starts_with("{\"gorgon_manager_report\"") {
            return None;
        }
        serde_json::from_str(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_keep_their_shape() {
        let finished = ManagerReport::FileFinished {
            worker_id: 2,
            status: FileStatus::TimedOut,
            seconds: 1.5,
        };
        assert_eq!(
            finished.line(),
            r#"{"gorgon_manager_report":"file_finished","worker_id":2,"status":"timed_out","seconds":1.5}"#
        );
        let started = ManagerReport::FileStarted { worker_id: 1 };
        assert_eq!(
            started.line(),
            r#"{"gorgon_manager_report":"file_started","worker_id":1}"#
        );
        let exited = ManagerReport::WorkerExited { worker_id: 3 };
        assert_eq!(
            exited.line(),
            r#"{"gorgon_manager_report":"worker_exited","worker_id":3}"#
        );
        for report in [finished, started, exited] {
            assert_eq!(ManagerReport::parse(&report.line()), Some(report));
        }
        assert_eq!(ManagerReport::parse("INFO worker 1 started"), None);
        assert_eq!(ManagerReport::parse(r#"{"other":1}"#), None);
    }

    #[test]
    fn a_spare_opening_round_trips_and_keeps_its_shape() {
        let opening = SpareOpening {
            broker: crate::BrokerSettings::default(),
            host: "far-1".into(),
        };
        let line = serde_json::to_string(&opening).unwrap();
        assert!(line.starts_with(r#"{"broker":{"#), "{line}");
        assert!(line.ends_with(r#""host":"far-1"}"#), "{line}");
        let back: SpareOpening = serde_json::from_str(&line).unwrap();
        assert_eq!(back, opening);
    }

    #[test]
    fn a_batch_of_replies_gives_each_file_event() {
        let started = |file: &str| Message::FileStarted {
            host: "h".into(),
            worker_id: 1,
            file: file.into(),
        };
        let batch = Message::Replies {
            replies: vec![started("a"), started("b")],
        };
        assert_eq!(
            ManagerReport::of(&batch),
            [ManagerReport::FileStarted { worker_id: 1 }; 2]
        );
        assert!(ManagerReport::of(&Message::JobDone { host: "h".into() }).is_empty());
    }
}
