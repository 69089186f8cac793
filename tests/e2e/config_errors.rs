//! `gorgon start` on bad input: one clear sentence and the documented exit code, quickly.

use std::time::Duration;

use crate::support::{broker_port, Project, Run};

const QUICK: Duration = Duration::from_secs(20);

pub(crate) fn project(config: &str) -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().unwrap();
    let project = Project {
        dir: dir.path().to_owned(),
    };
    project.write("gorgon.json", config);
    project.write("tests/a_test.sh", "exit 0\n");
    (dir, project)
}

fn valid_config(broker_port: u16, files: &str) -> String {
    format!(
        r#"{{
            "connection": {{"host": "127.0.0.1", "port": {broker_port}}},
            "file_server": {{"host": "127.0.0.1", "port": 1}},
            "files": ["{files}"],
            "job": {{"runner": {{"command": "sh {{file}}"}}}}
        }}"#
    )
}

/// `gorgon start ARGS` in `project`: exit 3 and one sentence that says `sentence` and names
/// each of `named`.
fn start_refused(project: &Project, args: &[&str], sentence: &str, named: &[&str]) -> Run {
    let run = project.start(args, QUICK);
    run.assert_exit(3);
    assert_one_sentence(&run.stderr, sentence);
    run.assert_stderr(named);
    run
}

pub(crate) fn assert_one_sentence(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("gorgon: "), "{stderr}");
    assert!(lines[0].contains(needle), "{stderr}");
}

#[test]
fn broken_json_names_the_file_and_the_place() {
    let (_dir, project) = project("{\n  \"files\": [\"x\",\n}");
    // A dry run reads the configuration as a run does, and lists nothing.
    for args in [&[][..], &["--dry-run"], &["--dry-run", "--local"]] {
        let run = start_refused(&project, args, "gorgon.json is not valid JSON", &["line 3"]);
        assert!(run.seconds < 5.0, "{run:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }
}

#[test]
fn a_missing_file_server_is_named() {
    let (_dir, project) =
        project(r#"{"files": ["tests/*_test.sh"], "job": {"runner": {"command": "sh {file}"}}}"#);
    start_refused(&project, &[], "no file_server is configured", &[]);
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project {
        dir: dir.path().to_owned(),
    };
    start_refused(&project, &[], "cannot read", &["gorgon.json"]);
}

#[test]
fn an_unreachable_broker_is_named_within_seconds() {
    let port = crate::support::free_port();
    let (_dir, project) = project(&valid_config(port, "tests/*_test.sh"));
    let run = start_refused(
        &project,
        &[],
        &format!("cannot connect to RabbitMQ at 127.0.0.1:{port}"),
        &[],
    );
    assert!(run.seconds < 10.0, "{run:?}");
}

#[test]
fn no_matching_files_is_named() {
    let (_dir, project) = project(&valid_config(broker_port(), "spec/**/*_spec.rb"));
    start_refused(
        &project,
        &[],
        "there are no files to test",
        &["spec/**/*_spec.rb"],
    );
}

#[test]
fn a_named_file_that_does_not_exist_is_named() {
    let (_dir, project) = project(&valid_config(broker_port(), "tests/*_test.sh"));
    start_refused(
        &project,
        &["tests/nope_test.sh"],
        "tests/nope_test.sh is not a file in the project",
        &[],
    );
}

#[test]
fn an_unreachable_file_server_is_a_sync_failure() {
    let (_dir, project) = project(&valid_config(broker_port(), "tests/*_test.sh"));
    let run = project.start(&[], QUICK);
    run.assert_exit(2);
    run.assert_stderr(&["pushing the source tree to the file server failed"]);
}
