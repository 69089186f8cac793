//! Replaying one worker's sequence (`gorgon start --replay HOST:WORKER`): every run records
//! the order in which each worker started its files, in the event stream and in a small run
//! record next to the failed files list; a replay runs that worker's files again on this
//! machine, in that order, in one worker, so that a failure that depends on what ran before
//! it in the same process reproduces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The order in which each worker of a run started its files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub job_id: String,
    /// `host:worker` → the files (or test ids) it started, in order.
    pub workers: BTreeMap<String, Vec<String>>,
}

/// A replay that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read {}: {source} (a run writes it; --events FILE reads a saved event stream instead)", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a run record or an event stream of gorgon start: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("no worker {worker} in the run of {}; its workers are: {known}", path.display())]
    NoWorker {
        worker: String,
        path: PathBuf,
        known: String,
    },
    #[error("worker {worker} did not run {until}")]
    NotRun { worker: String, until: String },
}

impl RunRecord {
    /// Records that `lane` (`host:worker`) started `file`.
    pub fn started(&mut self, lane: String, file: &str) {
        self.workers.entry(lane).or_default().push(file.to_owned());
    }

    /// Where a run writes its record: beside `failed_files`, `NAME.workers.json`.
    pub fn path_for(failed_files: &Path) -> PathBuf {
        let stem = failed_files
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "gorgon-failed-files".to_owned());
        failed_files.with_file_name(format!("{stem}.workers.json"))
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a record serializes");
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text + "\n")
    }

    /// Reads a run record, or an event stream (`gorgon start --events`): its
    /// `file_started` events give the same order.
    pub fn read(path: &Path) -> Result<RunRecord, ReplayError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parse_error = |reason: String| ReplayError::Parse {
            path: path.to_owned(),
            reason,
        };
        if let Ok(record) = serde_json::from_str::<RunRecord>(&text) {
            return Ok(record);
        }
        let mut record = RunRecord::default();
        for (number, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let event: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| parse_error(format!("line {}: {e}", number + 1)))?;
            match event["event"].as_str() {
                Some("run_started") => {
                    record.job_id = event["job_id"].as_str().unwrap_or_default().to_owned();
                }
                Some("file_started") => {
                    let (Some(host), Some(worker), Some(file)) = (
                        event["host"].as_str(),
                        event["worker_id"].as_u64(),
                        event["file"].as_str(),
                    ) else {
                        return Err(parse_error(format!(
                            "line {}: a file_started without host, worker_id and file",
                            number + 1
                        )));
                    };
                    record.started(format!("{host}:{worker}"), file);
                }
                _ => {}
            }
        }
        if record.job_id.is_empty() {
            return Err(parse_error("no run_started event".into()));
        }
        Ok(record)
    }

    /// What a replay of `worker` runs: its files in the order it started them (each once),
    /// up to and with `until` when given.
    pub fn replay(
        &self,
        worker: &str,
        until: Option<&str>,
        source: &Path,
    ) -> Result<Vec<String>, ReplayError> {
        let Some(started) = self.workers.get(worker) else {
            return Err(ReplayError::NoWorker {
                worker: worker.to_owned(),
                path: source.to_owned(),
                known: self.workers.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let mut files: Vec<String> = Vec::new();
        for file in started {
            if !files.contains(file) {
                files.push(file.clone());
            }
            if Some(file.as_str()) == until {
                return Ok(files);
            }
        }
        match until {
            Some(until) => Err(ReplayError::NotRun {
                worker: worker.to_owned(),
                until: until.to_owned(),
            }),
            None => Ok(files),
        }
    }

    /// The worker that started `file` last, when it ran other files before it: where a
    /// failure of `file` may depend on what ran before.
    pub fn worker_before(&self, file: &str) -> Option<&str> {
        self.workers
            .iter()
            .filter(|(_, files)| {
                files
                    .iter()
                    .position(|f| f == file)
                    .is_some_and(|at| at > 0)
            })
            .map(|(worker, _)| worker.as_str())
            .next_back()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RunRecord {
        let mut record = RunRecord {
            job_id: "j".into(),
            ..RunRecord::default()
        };
        for file in ["a", "b", "c", "b"] {
            record.started("h1:1".into(), file);
        }
        record.started("h2:1".into(), "d");
        record
    }

    #[test]
    fn a_replay_runs_the_workers_files_in_order_up_to_the_one_asked_for() {
        let record = record();
        let source = Path::new("run.json");
        assert_eq!(
            record.replay("h1:1", None, source).unwrap(),
            ["a", "b", "c"]
        );
        assert_eq!(
            record.replay("h1:1", Some("b"), source).unwrap(),
            ["a", "b"]
        );
        let error = record
            .replay("h1:1", Some("d"), source)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "worker h1:1 did not run d");
        let error = record.replay("h3:1", None, source).unwrap_err().to_string();
        assert!(
            error.contains("no worker h3:1") && error.contains("h1:1, h2:1"),
            "{error}"
        );
        assert_eq!(record.worker_before("b"), Some("h1:1"));
        assert_eq!(record.worker_before("a"), None, "nothing ran before it");
        assert_eq!(record.worker_before("d"), None);
    }

    #[test]
    fn a_record_and_an_event_stream_give_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("run.workers.json");
        record().write(&saved).unwrap();
        assert_eq!(RunRecord::read(&saved).unwrap(), record());
        let events = dir.path().join("events.jsonl");
        let lines = [
            r#"{"schema":1,"time":"t","event":"run_started","job_id":"j","project":"p","cluster":"c","files":[]}"#,
            r#"{"schema":1,"time":"t","event":"file_started","file":"a","host":"h1","worker_id":1}"#,
            r#"{"schema":1,"time":"t","event":"file_finished","file":"a","host":"h1","worker_id":1}"#,
            r#"{"schema":1,"time":"t","event":"file_started","file":"b","host":"h1","worker_id":1}"#,
            r#"{"schema":1,"time":"t","event":"file_started","file":"c","host":"h1","worker_id":1}"#,
            r#"{"schema":1,"time":"t","event":"file_started","file":"b","host":"h1","worker_id":1}"#,
            r#"{"schema":1,"time":"t","event":"file_started","file":"d","host":"h2","worker_id":1}"#,
        ];
        std::fs::write(&events, lines.join("\n")).unwrap();
        assert_eq!(RunRecord::read(&events).unwrap(), record());
        assert_eq!(
            RunRecord::path_for(Path::new("tmp/gorgon-failed.json")),
            Path::new("tmp/gorgon-failed.workers.json")
        );
        std::fs::write(&events, "nonsense").unwrap();
        assert!(RunRecord::read(&events).is_err());
    }
}
