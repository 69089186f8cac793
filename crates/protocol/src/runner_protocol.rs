//! The runner protocol: line-oriented JSON between a worker and a persistent test runner on
//! the runner's stdin and stdout (see `docs/runner-protocol.md`). The runner says hello with
//! its protocol version, then answers each [`RunRequest`] with one [`FileDone`], and each
//! [`BatchRequest`] (when its hello offers batches) with one [`FileDone`] per file.

use serde::{Deserialize, Serialize};

use crate::job::Isolation;
use crate::message::TestResult;

/// Version of the runner protocol. A worker refuses a runner whose hello names another one.
pub const RUNNER_PROTOCOL_VERSION: u32 = 1;

/// A line from the runner to the worker (its stdout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunnerMessage {
    /// The first line: the runner has booted and waits for files.
    Hello {
        protocol: u32,
        /// Free-form name and version, e.g. `rspec 3.12.0 (ruby 3.1.2)`, for the logs.
        #[serde(default)]
        runner: String,
        /// The runner also takes [`BatchRequest`]s.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batches: bool,
    },
    /// The answer to one [`RunRequest`].
    FileDone(FileDone),
    /// A callback of the job's callbacks class that runs inside the runner
    /// (`before_start` instead of the hello, `after_complete` when stdin ends) raised; the
    /// runner exits after this line.
    CallbackFailed {
        callback: String,
        /// The exception's class and message, and its backtrace.
        message: String,
    },
}

/// A line from the worker to the runner (its stdin). The end of stdin asks the runner to exit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerRequest {
    Run(RunRequest),
    RunBatch(BatchRequest),
}

/// Run one test file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The file, relative to the runner's working directory (the workspace).
    pub file: String,
    /// Extra arguments for the test framework (`job.runner.args`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A fresh file the runner should send the test's stdout and stderr to, so that the
    /// worker can report them even when the runner dies or the file times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    /// `job.runner.isolation`: `fork` asks for a fresh process for this request.
    #[serde(default, skip_serializing_if = "Isolation::is_shared")]
    pub isolation: Isolation,
}

/// Run several quick files together, for a runner whose hello offers batches: the runner
/// answers with one [`FileDone`] per file, in any order, and how it keeps the files apart
/// is its own business (the built-in ones run the batch in one forked child and run the
/// files again one by one when anything in the batch goes wrong).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The files, relative to the runner's working directory (the workspace).
    pub files: Vec<String>,
    /// Extra arguments for the test framework (`job.runner.args`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A fresh file for the stdout and stderr of the whole batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    /// `job.runner.isolation`, as for [`RunRequest`].
    #[serde(default, skip_serializing_if = "Isolation::is_shared")]
    pub isolation: Isolation,
}

/// What happened to one file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileDone {
    pub file: String,
    pub outcome: RunOutcome,
    /// Why the file did not complete: the load error, the exit status, the signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub tests: Vec<TestResult>,
    /// Output not already written to the request's `output_path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// In a recording run (`GORGON_IMPACT_RECORD=1`), the project's code the file ran
    /// ([`crate::impact`]); absent otherwise, and from runners that do not record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<crate::FileImpact>,
}

/// How a file's run ended, as the runner saw it. The worker turns it and the tests into the
/// file's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The file loaded and its tests ran; the tests tell whether it passed.
    Completed,
    /// The file could not be loaded (syntax error, exception or import error at top level).
    LoadError,
    /// The file or one of its tests ended the process (`exit`, `exit!`, `os._exit`).
    Exited,
    /// The process running the file was killed by a signal.
    Killed,
    /// The runner itself failed on this file.
    RunnerError,
}

impl RunnerMessage {
    /// Decodes one line from a runner.
    pub fn decode(line: &str) -> Result<RunnerMessage, serde_json::Error> {
        serde_json::from_str(line.trim_end())
    }
}

impl WorkerRequest {
    /// One line for the runner's stdin, newline included.
    pub fn encode_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a request always serializes");
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::TestStatus;

    fn done() -> FileDone {
        FileDone {
            file: "spec/cart_spec.rb".into(),
            outcome: RunOutcome::Completed,
            message: None,
            tests: vec![TestResult {
                name: "Cart adds tax".into(),
                classname: "Cart".into(),
                file: Some("spec/cart_spec.rb".into()),
                line: Some(4),
                status: TestStatus::Failed,
                seconds: 0.5,
                message: Some("expected 2, got 3".into()),
                details: Some("spec/cart_spec.rb:5".into()),
                id: None,
            }],
            output: "F".into(),
            impact: None,
        }
    }

    #[test]
    fn messages_round_trip() {
        for message in [
            RunnerMessage::Hello {
                protocol: 1,
                runner: "rspec 3.12.0".into(),
                batches: true,
            },
            RunnerMessage::FileDone(done()),
        ] {
            let line = serde_json::to_string(&message).unwrap();
            assert_eq!(RunnerMessage::decode(&line).unwrap(), message);
        }
        let request = WorkerRequest::Run(RunRequest {
            file: "a.rb".into(),
            args: vec!["--tag".into(), "~slow".into()],
            output_path: Some("/tmp/o".into()),
            isolation: Isolation::Fork,
        });
        let line = request.encode_line();
        assert!(line.ends_with('\n'));
        assert_eq!(
            serde_json::from_str::<WorkerRequest>(&line).unwrap(),
            request
        );
    }

    #[test]
    fn json_shape_is_pinned() {
        let request = WorkerRequest::Run(RunRequest {
            file: "t/a_test.rb".into(),
            args: vec!["-n".into(), "test_x".into()],
            output_path: Some("/tmp/out".into()),
            isolation: Isolation::Shared,
        });
        assert_eq!(
            request.encode_line(),
            "{\"type\":\"run\",\"file\":\"t/a_test.rb\",\"args\":[\"-n\",\"test_x\"],\"output_path\":\"/tmp/out\"}\n"
        );
        let batch = WorkerRequest::RunBatch(BatchRequest {
            files: vec!["spec/a_spec.rb".into(), "spec/b_spec.rb".into()],
            args: Vec::new(),
            output_path: Some("/tmp/out".into()),
            isolation: Isolation::Fork,
        });
        assert_eq!(
            batch.encode_line(),
            "{\"type\":\"run_batch\",\"files\":[\"spec/a_spec.rb\",\"spec/b_spec.rb\"],\"output_path\":\"/tmp/out\",\"isolation\":\"fork\"}\n"
        );
        let hello = RunnerMessage::Hello {
            protocol: 1,
            runner: "rspec".into(),
            batches: true,
        };
        assert_eq!(
            serde_json::to_string(&hello).unwrap(),
            r#"{"type":"hello","protocol":1,"runner":"rspec","batches":true}"#
        );
        assert_eq!(
            serde_json::to_string(&RunnerMessage::FileDone(done())).unwrap(),
            r#"{"type":"file_done","file":"spec/cart_spec.rb","outcome":"completed","tests":[{"name":"Cart adds tax","classname":"Cart","file":"spec/cart_spec.rb","line":4,"status":"failed","seconds":0.5,"message":"expected 2, got 3","details":"spec/cart_spec.rb:5"}],"output":"F"}"#
        );
    }

    #[test]
    fn minimal_lines_from_a_hand_written_runner_decode() {
        assert_eq!(
            RunnerMessage::decode("{\"type\":\"hello\",\"protocol\":1}\n").unwrap(),
            RunnerMessage::Hello {
                protocol: 1,
                runner: String::new(),
                batches: false,
            }
        );
        let decoded = RunnerMessage::decode(
            r#"{"type":"file_done","file":"x","outcome":"load_error","message":"SyntaxError"}"#,
        )
        .unwrap();
        assert_eq!(
            decoded,
            RunnerMessage::FileDone(FileDone {
                file: "x".into(),
                outcome: RunOutcome::LoadError,
                message: Some("SyntaxError".into()),
                tests: Vec::new(),
                output: String::new(),
                impact: None,
            })
        );
        assert!(RunnerMessage::decode(r#"{"type":"bye"}"#).is_err());
    }
}
