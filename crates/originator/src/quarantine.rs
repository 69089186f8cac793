//! The quarantine (`quarantine_file`): test ids and files that still run and are reported,
//! but whose failures never fail the run. A quarantined test that passes is reported too, so
//! that people know when to release it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gorgon_protocol::{FileResult, FileStatus, TestResult};

use crate::files::unit_file;

/// The quarantine file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("cannot read the quarantine file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the quarantine file {} is not a JSON list of test ids and files: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The quarantined test ids and files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quarantine {
    entries: BTreeSet<String>,
}

/// A quarantined test or file of one result, with how it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The queued file it belongs to.
    pub file: String,
    /// The test's name, or the file when the file is quarantined.
    pub name: String,
    pub passed: bool,
}

impl Quarantine {
    pub fn new(entries: impl IntoIterator<Item = String>) -> Quarantine {
        Quarantine {
            entries: entries.into_iter().collect(),
        }
    }

    /// Reads `path`: a JSON list of strings. A file that does not exist is an empty
    /// quarantine (nothing is quarantined yet).
    pub fn load(path: &Path) -> Result<Quarantine, QuarantineError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Quarantine::default())
            }
            Err(source) => {
                return Err(QuarantineError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let entries: Vec<String> =
            serde_json::from_str(&text).map_err(|source| QuarantineError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Ok(Quarantine::new(entries))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the queued unit `file` (a file, or a test id of a split file) is quarantined
    /// as a whole.
    fn covers_unit(&self, file: &str) -> bool {
        self.entries.contains(file) || unit_file(file).is_some_and(|f| self.entries.contains(f))
    }

    /// Whether `test` of `result` is quarantined: by its id, or with its whole file.
    pub fn covers_test(&self, result: &FileResult, test: &TestResult) -> bool {
        self.covers_unit(&result.file)
            || test.id.as_ref().is_some_and(|id| self.entries.contains(id))
    }

    /// Whether a result that did not pass failed only where the quarantine says it may: its
    /// file is quarantined, or it failed in tests (not outside them) that all are.
    pub fn covers_failure(&self, result: &FileResult) -> bool {
        if self.covers_unit(&result.file) {
            return true;
        }
        let mut failing = result
            .tests
            .iter()
            .filter(|t| t.status.is_failure())
            .peekable();
        result.status == FileStatus::Failed
            && failing.peek().is_some()
            && failing.all(|t| self.covers_test(result, t))
    }

    /// The quarantined tests (or the file) of a result, with how each did.
    pub fn found_in(&self, result: &FileResult) -> Vec<Quarantined> {
        if self.covers_unit(&result.file) {
            return vec![Quarantined {
                file: result.file.clone(),
                name: result.file.clone(),
                passed: result.status == FileStatus::Passed,
            }];
        }
        result
            .tests
            .iter()
            .filter(|t| self.covers_test(result, t))
            .map(|t| Quarantined {
                file: result.file.clone(),
                name: t.id.clone().unwrap_or_else(|| t.name.clone()),
                passed: !t.status.is_failure(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::TestStatus;

    fn test(id: &str, status: TestStatus) -> TestResult {
        TestResult {
            name: format!("name of {id}"),
            classname: String::new(),
            file: None,
            line: None,
            status,
            seconds: 0.1,
            message: None,
            details: None,
            id: Some(id.into()),
        }
    }

    fn result(file: &str, status: FileStatus, tests: Vec<TestResult>) -> FileResult {
        FileResult {
            host: "h".into(),
            worker_id: 1,
            file: file.into(),
            status,
            seconds: 1.0,
            exit: "exit status 1".into(),
            output: String::new(),
            tests,
            impact: None,
        }
    }

    #[test]
    fn a_failure_is_quarantined_only_when_every_failing_test_is() {
        let quarantine = Quarantine::new(["a_spec.rb:3".to_owned(), "t/b.sh".to_owned()]);
        let one = result(
            "a_spec.rb",
            FileStatus::Failed,
            vec![
                test("a_spec.rb:3", TestStatus::Failed),
                test("a_spec.rb:9", TestStatus::Passed),
            ],
        );
        assert!(quarantine.covers_failure(&one));
        assert_eq!(quarantine.found_in(&one).len(), 1);
        let two = result(
            "a_spec.rb",
            FileStatus::Failed,
            vec![
                test("a_spec.rb:3", TestStatus::Failed),
                test("a_spec.rb:9", TestStatus::Failed),
            ],
        );
        assert!(!quarantine.covers_failure(&two));
        // A failure outside the tests is not the quarantined test's.
        let outside = result(
            "a_spec.rb",
            FileStatus::Crashed,
            vec![test("a_spec.rb:3", TestStatus::Failed)],
        );
        assert!(!quarantine.covers_failure(&outside));
        // A quarantined file covers whatever it does, and its split tests.
        assert!(quarantine.covers_failure(&result("t/b.sh", FileStatus::Crashed, vec![])));
        let passed = result(
            "a_spec.rb",
            FileStatus::Passed,
            vec![test("a_spec.rb:3", TestStatus::Passed)],
        );
        assert_eq!(
            quarantine.found_in(&passed),
            [Quarantined {
                file: "a_spec.rb".into(),
                name: "a_spec.rb:3".into(),
                passed: true
            }]
        );
    }

    #[test]
    fn a_missing_file_quarantines_nothing_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Quarantine::load(&dir.path().join("none.json"))
            .unwrap()
            .is_empty());
        let broken = dir.path().join("q.json");
        std::fs::write(&broken, "{\"not\": \"a list\"}").unwrap();
        let error = Quarantine::load(&broken).unwrap_err().to_string();
        assert!(error.contains("q.json is not a JSON list"), "{error}");
    }
}
