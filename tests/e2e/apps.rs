//! Real applications: every worker carries the variables suites already read to tell their
//! workers apart (parallel_tests' `TEST_ENV_NUMBER` and `PARALLEL_TEST_GROUPS`,
//! pytest-xdist's `PYTEST_XDIST_WORKER`, `PYTEST_XDIST_WORKER_COUNT` and `worker_id`
//! fixture), on listeners, `gorgon start --local` and CI nodes alike.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::support::{Cluster, Project, Started};

const LIMIT: Duration = Duration::from_secs(180);

/// Shell files and pytest files of the conventions' projects.
const SHELL_FILES: usize = 8;
const PYTEST_FILES: usize = 2;

/// A shell test that takes a second and records, as one line of `record`, its worker's
/// variables: `HOST|WORKER|TEST_ENV_NUMBER|PARALLEL_TEST_GROUPS|PYTEST_XDIST_WORKER|
/// PYTEST_XDIST_WORKER_COUNT|sh`.
fn shell_test(record: &Path) -> String {
    format!(
        "sleep 1\necho \"$GORGON_HOST|$GORGON_WORKER_ID|$TEST_ENV_NUMBER|$PARALLEL_TEST_GROUPS|\
         $PYTEST_XDIST_WORKER|$PYTEST_XDIST_WORKER_COUNT|sh\" >> '{}'\n",
        record.display()
    )
}

/// A pytest file written as pytest-xdist's documentation has a per-worker database named
/// (from the `worker_id` fixture), which records the same line as [`shell_test`], with the
/// fixture's value in place of `PYTEST_XDIST_WORKER`.
fn pytest_test(record: &Path) -> String {
    format!(
        r#"import os
import time

import pytest


@pytest.fixture(scope="session")
def database_name(worker_id):
    if worker_id == "master":
        return "app_test"
    return "app_test_" + worker_id


def test_each_worker_has_its_own_database(worker_id, database_name):
    time.sleep(0.5)
    assert database_name == "app_test_" + os.environ["PYTEST_XDIST_WORKER"]
    fields = [os.environ[name] for name in ("GORGON_HOST", "GORGON_WORKER_ID", "TEST_ENV_NUMBER",
                                            "PARALLEL_TEST_GROUPS")]
    fields += [worker_id, os.environ["PYTEST_XDIST_WORKER_COUNT"], "pytest"]
    with open({record:?}, "a") as out:
        out.write("|".join(fields) + "\n")
"#,
        record = record.display().to_string()
    )
}

/// A project of `cluster` whose shell and pytest files record their workers' variables in
/// `record`.
fn conventions_project(cluster: &Cluster, name: &str, record: &Path) -> Project {
    let project = cluster.project(
        name,
        json!({
            "files": ["tests/**/*_test.sh", "tests/**/test_*.py"],
            "job": {"runner": {"by_glob": {
                "tests/**/*_test.sh": {"command": "sh {file}"},
                "tests/**/test_*.py": {"kind": "pytest"},
            }}},
        }),
    );
    for i in 0..SHELL_FILES {
        project.write(&format!("tests/{i:02}_test.sh"), &shell_test(record));
    }
    for i in 0..PYTEST_FILES {
        project.write(&format!("tests/test_db{i}.py"), &pytest_test(record));
    }
    project
}

/// Checks every recorded line against its worker and returns, by host, the
/// `TEST_ENV_NUMBER`s seen there.
fn conventions_by_host(record: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), SHELL_FILES + PYTEST_FILES, "{text}");
    let mut by_host: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split('|').collect();
        let [host, worker, number, groups, xdist, xdist_count, _kind] = fields[..] else {
            panic!("a record line has seven fields: {line:?}");
        };
        let worker: u32 = worker.parse().unwrap();
        let expected_number = if worker == 1 {
            String::new()
        } else {
            worker.to_string()
        };
        assert_eq!(number, expected_number, "{line}");
        assert_eq!(groups, "2", "{line}");
        assert_eq!(xdist, format!("gw{}", worker - 1), "{line}");
        assert_eq!(xdist_count, "2", "{line}");
        by_host
            .entry(host.to_owned())
            .or_default()
            .insert(number.to_owned());
    }
    by_host
}

/// Fails the test unless `hosts` hosts each ran files on both of their workers, numbered
/// `""` and `"2"`.
#[track_caller]
fn assert_two_workers_on_each_of(record: &Path, hosts: usize) {
    let by_host = conventions_by_host(record);
    assert_eq!(by_host.len(), hosts, "{by_host:?}");
    for (host, numbers) in &by_host {
        let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
        assert_eq!(numbers, ["", "2"], "the workers of {host}");
    }
}

fn record_path(cluster: &Cluster, name: &str) -> PathBuf {
    cluster.path().join(format!("{name}.record"))
}

#[test]
fn listener_workers_carry_parallel_tests_and_xdist_variables() {
    let cluster = Cluster::with_listeners(&[("apps-a", 2), ("apps-b", 2)]);
    let record = record_path(&cluster, "listeners");
    let project = conventions_project(&cluster, "conventions", &record);
    cluster.wait_for_listeners(&project, 2);
    project
        .start(&[], LIMIT)
        .assert_report(0, &["10 files: 10 passed"]);
    assert_two_workers_on_each_of(&record, 2);
}

#[test]
fn local_workers_carry_parallel_tests_and_xdist_variables() {
    let cluster = Cluster::new();
    let record = record_path(&cluster, "local");
    let project = conventions_project(&cluster, "conventions-local", &record);
    project
        .start(&["--local", "-j", "2"], LIMIT)
        .assert_report(0, &["10 files: 10 passed"]);
    assert_two_workers_on_each_of(&record, 1);
}

#[test]
fn ci_node_workers_carry_parallel_tests_and_xdist_variables() {
    let cluster = Cluster::new();
    let record = record_path(&cluster, "ci");
    let first = conventions_project(&cluster, "conventions-ci", &record);
    let second = cluster.project("conventions-ci-2", json!({}));
    copy_tree(&first, &second);
    let build = format!("apps-{}", uuid::Uuid::new_v4());
    let report = first.spawn_gorgon("report", &["--build-id", &build], &[]);
    let nodes: Vec<Started> = [&first, &second]
        .iter()
        .enumerate()
        .map(|(i, project)| {
            project.spawn_gorgon(
                "work",
                &[
                    "--build-id",
                    &build,
                    "--worker-id",
                    &format!("node-{i}"),
                    "-j",
                    "2",
                ],
                &[],
            )
        })
        .collect();
    for node in nodes {
        node.wait(LIMIT).assert_exit(0);
    }
    report
        .wait(LIMIT)
        .assert_report(0, &["10 files: 10 passed"]);
    assert_two_workers_on_each_of(&record, 2);
}

/// Makes `to` a checkout of `from`: the same files and configuration.
fn copy_tree(from: &Project, to: &Project) {
    let copied = std::process::Command::new("cp")
        .arg("-rT")
        .arg(&from.dir)
        .arg(&to.dir)
        .status()
        .unwrap();
    assert!(copied.success());
}
