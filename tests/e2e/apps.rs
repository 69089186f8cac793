//! Real applications: every worker carries the variables suites already read to tell their
//! workers apart (parallel_tests' `TEST_ENV_NUMBER` and `PARALLEL_TEST_GROUPS`,
//! pytest-xdist's `PYTEST_XDIST_WORKER`, `PYTEST_XDIST_WORKER_COUNT` and `worker_id`
//! fixture), on listeners, `gorgon start --local` and CI nodes alike; and a database per
//! worker, made as `docs/databases.md` says, on the project's own PostgreSQL server
//! (started by `.ci/run`, `start_postgresql` in `scripts/lib/prerequisites.sh`), with no
//! worker seeing another's rows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::support::{Cluster, Project, Started};

const LIMIT: Duration = Duration::from_secs(180);

/// Shell, pytest and RSpec files of the conventions' projects.
const SHELL_FILES: usize = 8;
const PYTEST_FILES: usize = 2;
const RSPEC_FILES: usize = 2;

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

/// An RSpec file that records the same line as [`shell_test`], as a Rails `database.yml`
/// would read the variables: from `ENV` in the built-in runner's Ruby process.
fn rspec_test(record: &Path) -> String {
    format!(
        r#"RSpec.describe "a worker's variables" do
  it "names its database" do
    sleep 0.5
    names = %w[GORGON_HOST GORGON_WORKER_ID TEST_ENV_NUMBER PARALLEL_TEST_GROUPS
               PYTEST_XDIST_WORKER PYTEST_XDIST_WORKER_COUNT]
    File.write({record:?}, (names.map {{ |name| ENV.fetch(name) }} + ["rspec"]).join("|") + "\n", mode: "a")
  end
end
"#,
        record = record.display().to_string()
    )
}

/// A project of `cluster` whose shell, pytest and RSpec files record their workers' variables in
/// `record`.
fn conventions_project(cluster: &Cluster, name: &str, record: &Path) -> Project {
    let project = cluster.project(
        name,
        json!({
            "files": ["tests/**/*_test.sh", "tests/**/test_*.py", "spec/**/*_spec.rb"],
            "job": {"runner": {"by_glob": {
                "tests/**/*_test.sh": {"command": "sh {file}"},
                "tests/**/test_*.py": {"kind": "pytest"},
                "spec/**/*_spec.rb": {"kind": "rspec"},
            }}},
        }),
    );
    for i in 0..SHELL_FILES {
        project.write(&format!("tests/{i:02}_test.sh"), &shell_test(record));
    }
    for i in 0..PYTEST_FILES {
        project.write(&format!("tests/test_db{i}.py"), &pytest_test(record));
    }
    for i in 0..RSPEC_FILES {
        project.write(&format!("spec/db{i}_spec.rb"), &rspec_test(record));
    }
    project
}

/// Checks every recorded line against its worker (numbered from `1` with `first_is_1`)
/// and returns, by host, the `TEST_ENV_NUMBER`s seen there.
fn conventions_by_host(record: &Path, first_is_1: bool) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        SHELL_FILES + PYTEST_FILES + RSPEC_FILES,
        "{text}"
    );
    let mut by_host: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in lines {
        let fields: Vec<&str> = line.split('|').collect();
        let [host, worker, number, groups, xdist, xdist_count, _kind] = fields[..] else {
            panic!("a record line has seven fields: {line:?}");
        };
        let worker: u32 = worker.parse().unwrap();
        let expected_number = if worker == 1 && !first_is_1 {
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
    assert_numbered_workers(record, hosts, false);
}

/// Fails the test unless `hosts` hosts each ran files on both of their workers, numbered
/// `""` (`"1"` with `first_is_1`) and `"2"`.
#[track_caller]
fn assert_numbered_workers(record: &Path, hosts: usize, first_is_1: bool) {
    let by_host = conventions_by_host(record, first_is_1);
    assert_eq!(by_host.len(), hosts, "{by_host:?}");
    let first = if first_is_1 { "1" } else { "" };
    for (host, numbers) in &by_host {
        let numbers: Vec<&str> = numbers.iter().map(String::as_str).collect();
        assert_eq!(numbers, [first, "2"], "the workers of {host}");
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
        .assert_report(0, &["12 files: 12 passed"]);
    assert_two_workers_on_each_of(&record, 2);
}

#[test]
fn local_workers_carry_parallel_tests_and_xdist_variables() {
    let cluster = Cluster::new();
    let record = record_path(&cluster, "local");
    let project = conventions_project(&cluster, "conventions-local", &record);
    project
        .start(&["--local", "-j", "2"], LIMIT)
        .assert_report(0, &["12 files: 12 passed"]);
    assert_two_workers_on_each_of(&record, 1);
}

#[test]
fn first_is_1_numbers_the_first_worker_too() {
    let cluster = Cluster::new();
    let record = record_path(&cluster, "first-is-1");
    let project = conventions_project(&cluster, "conventions-first-is-1", &record);
    let config = project.read("gorgon.json");
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["job"]["first_is_1"] = json!(true);
    project.write("gorgon.json", &config.to_string());
    project
        .start(&["--local", "-j", "2"], LIMIT)
        .assert_report(0, &["12 files: 12 passed"]);
    assert_numbered_workers(&record, 1, true);
}

#[test]
fn ci_node_workers_carry_parallel_tests_and_xdist_variables() {
    let cluster = Cluster::new();
    let record = record_path(&cluster, "ci");
    let first = conventions_project(&cluster, "conventions-ci", &record);
    let second = cluster.project("conventions-ci-2", json!({}));
    copy_tree(&first, &second);
    ci_build(&[&first, &second]).assert_report(0, &["12 files: 12 passed"]);
    assert_two_workers_on_each_of(&record, 2);
}

/// Runs a CI build of `projects` (each a checkout of the same project), a node of two
/// workers on each, and returns the report's run once every node has exited 0.
fn ci_build(projects: &[&Project]) -> crate::support::Run {
    let build = format!("apps-{}", uuid::Uuid::new_v4());
    let report = projects[0].spawn_gorgon("report", &["--build-id", &build], &[]);
    let nodes: Vec<Started> = projects
        .iter()
        .enumerate()
        .map(|(i, project)| {
            let name = format!("node{i}");
            project.spawn_gorgon(
                "work",
                &["--build-id", &build, "--worker-id", &name, "-j", "2"],
                &[],
            )
        })
        .collect();
    for node in nodes {
        node.wait(LIMIT).assert_exit(0);
    }
    report.wait(LIMIT)
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

/// The port of the project's own PostgreSQL server (`GORGON_TEST_PGPORT`, as the scripts
/// read it).
fn postgres_port() -> String {
    std::env::var("GORGON_TEST_PGPORT").unwrap_or_else(|_| "54329".into())
}

/// `psql` on the project's server as `postgres`, `sql` in the `postgres` database: its
/// stdout, or what psql said on stderr.
fn try_psql(sql: &str) -> Result<String, String> {
    let output = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &postgres_port(), "-U", "postgres"])
        .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .map_err(|error| format!("psql cannot run ({error}): run install_postgresql"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// [`try_psql`], failing the test when psql fails.
#[track_caller]
fn psql(sql: &str) -> String {
    try_psql(sql).unwrap_or_else(|error| panic!("psql -c {sql:?} failed: {error}"))
}

/// The databases of one test on the project's server, named from a prefix of its own so
/// that tests running side by side never meet; dropped when the value is.
struct Databases {
    prefix: String,
}

impl Databases {
    /// Fails the test, saying how to start it, when the project's server is not reachable.
    fn new() -> Databases {
        if let Err(error) = try_psql("SELECT 1") {
            panic!(
                "the project's PostgreSQL is not reachable on 127.0.0.1:{} ({error}); start it \
                 with `. scripts/lib/prerequisites.sh; install_postgresql; start_postgresql 60` \
                 (.ci/run does)",
                postgres_port()
            );
        }
        Databases {
            prefix: format!("g{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        }
    }

    /// The names of this test's databases on the server.
    fn names(&self) -> Vec<String> {
        psql(&format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname, '{}_') ORDER BY 1",
            self.prefix
        ))
        .lines()
        .map(str::to_owned)
        .collect()
    }
}

impl Drop for Databases {
    fn drop(&mut self) {
        // Best effort: a drop never fails the test (nor panics while one is failing).
        let listed = try_psql(&format!(
            "SELECT datname FROM pg_database WHERE starts_with(datname, '{}_')",
            self.prefix
        ));
        for name in listed.unwrap_or_default().lines() {
            let _ = try_psql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        }
    }
}

/// Test files of the database projects.
const DATABASE_FILES: usize = 12;

/// A project whose callbacks make a template database once per host (where the host's
/// worker count, 2, is in `PARALLEL_TEST_GROUPS`) and a copy of it for each worker, named from `TEST_ENV_NUMBER` as a `database.yml` would (and from the host,
/// since every host here shares one server: docs/databases.md), and whose test files each
/// write rows tagged with their worker into their worker's database, fail if they find
/// another worker's there, and record the database they used in `record`.
fn database_project(
    cluster: &Cluster,
    name: &str,
    databases: &Databases,
    record: &Path,
) -> Project {
    let project = cluster.project(
        name,
        json!({"job": {"callbacks": {
            "before_creating_workers": ". ./db/env.sh && [ \"$PARALLEL_TEST_GROUPS\" = 2 ] \
                && dropdb --if-exists \"$TEMPLATE\" && createdb \"$TEMPLATE\" \
                && psql -v ON_ERROR_STOP=1 -q -d \"$TEMPLATE\" -c 'CREATE TABLE marks (worker text NOT NULL, file text NOT NULL)'",
            "before_start": ". ./db/env.sh && dropdb --if-exists \"$DATABASE\" && createdb -T \"$TEMPLATE\" \"$DATABASE\"",
        }}}),
    );
    project.write(
        "db/env.sh",
        &format!(
            "export PGHOST=127.0.0.1 PGPORT={port} PGUSER=postgres\n\
             TEMPLATE=\"{prefix}_${{GORGON_HOST}}_template\"\n\
             DATABASE=\"{prefix}_${{GORGON_HOST}}_test${{TEST_ENV_NUMBER}}\"\n",
            port = postgres_port(),
            prefix = databases.prefix,
        ),
    );
    for i in 0..DATABASE_FILES {
        project.write(
            &format!("tests/{i:02}_test.sh"),
            &format!(
                ". ./db/env.sh\n\
                 me=\"$GORGON_HOST:$GORGON_WORKER_ID\"\n\
                 sql() {{ psql -v ON_ERROR_STOP=1 -qAt -d \"$DATABASE\" -c \"$1\"; }}\n\
                 sql \"INSERT INTO marks VALUES ('$me', '$0'), ('$me', '$0')\" || exit 1\n\
                 sleep 1\n\
                 others=$(sql \"SELECT count(*) FROM marks WHERE worker <> '$me'\") || exit 1\n\
                 mine=$(sql \"SELECT count(*) FROM marks WHERE worker = '$me' AND file = '$0'\") || exit 1\n\
                 echo \"$DATABASE\" >> '{record}'\n\
                 [ \"$others\" = 0 ] || {{ echo \"$DATABASE has $others rows of other workers\"; exit 1; }}\n\
                 [ \"$mine\" = 2 ] || {{ echo \"$DATABASE has $mine of this file's 2 rows\"; exit 1; }}\n",
                record = record.display()
            ),
        );
    }
    project
}

/// Fails the test unless the files used exactly `expected` databases, each a worker's.
#[track_caller]
fn assert_databases_used(record: &Path, databases: &Databases, expected: usize) {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    assert_eq!(text.lines().count(), DATABASE_FILES, "{text}");
    let used: BTreeSet<&str> = text.lines().collect();
    assert_eq!(used.len(), expected, "{used:?}");
    let made = databases.names();
    for database in &used {
        assert!(
            made.iter().any(|name| name == database),
            "{database} not in {made:?}"
        );
    }
}

#[test]
fn each_listener_worker_writes_to_its_own_postgresql_database() {
    let databases = Databases::new();
    let cluster = Cluster::with_listeners(&[("pga", 2), ("pgb", 2)]);
    let record = record_path(&cluster, "pg-listeners");
    let project = database_project(&cluster, "pg", &databases, &record);
    cluster.wait_for_listeners(&project, 2);
    project
        .start(&[], LIMIT)
        .assert_report(0, &["12 files: 12 passed"]);
    assert_databases_used(&record, &databases, 4);
}

#[test]
fn each_local_worker_writes_to_its_own_postgresql_database() {
    let databases = Databases::new();
    let cluster = Cluster::new();
    let record = record_path(&cluster, "pg-local");
    let project = database_project(&cluster, "pg-local", &databases, &record);
    project
        .start(&["--local", "-j", "2"], LIMIT)
        .assert_report(0, &["12 files: 12 passed"]);
    assert_databases_used(&record, &databases, 2);
}

#[test]
fn each_ci_node_worker_writes_to_its_own_postgresql_database() {
    let databases = Databases::new();
    let cluster = Cluster::new();
    let record = record_path(&cluster, "pg-ci");
    let first = database_project(&cluster, "pg-ci", &databases, &record);
    let second = cluster.project("pg-ci-2", json!({}));
    copy_tree(&first, &second);
    ci_build(&[&first, &second]).assert_report(0, &["12 files: 12 passed"]);
    assert_databases_used(&record, &databases, 4);
}

/// The per-worker copy of the template in `job.worker_setup` rather than `before_start`, as
/// `docs/databases.md` shows it; on `broken` (`HOST:TEST_ENV_NUMBER`) it copies a template
/// that does not exist, so PostgreSQL refuses it.
fn with_worker_setup(project: &Project, broken: &str) {
    let mut config: serde_json::Value = serde_json::from_str(&project.read("gorgon.json")).unwrap();
    let callbacks = config["job"]["callbacks"].as_object_mut().unwrap();
    callbacks.remove("before_start");
    config["job"]["worker_setup"] = json!(format!(
        ". ./db/env.sh && {{ [ \"$GORGON_HOST:$TEST_ENV_NUMBER\" != '{broken}' ] || TEMPLATE=no_such_template; }} \
         && createdb -T \"$TEMPLATE\" \"$DATABASE\""
    ));
    project.write("gorgon.json", &config.to_string());
}

#[test]
fn a_workers_failed_setup_fails_only_the_file_it_took() {
    let databases = Databases::new();
    let cluster = Cluster::with_listeners(&[("setup-a", 2), ("setup-b", 2)]);
    let record = record_path(&cluster, "pg-setup");
    let project = database_project(&cluster, "pg-setup", &databases, &record);
    with_worker_setup(&project, "setup-b:2");
    cluster.wait_for_listeners(&project, 2);
    let run = project.start(&[], LIMIT);
    run.assert_report(
        1,
        &[
            "12 files: 11 passed, 1 failed",
            "failed at 'setup-b:2' (job.worker_setup failed on setup-b worker 2 (exit status 1)",
            "template database \"no_such_template\" does not exist",
        ],
    );
    // The other three workers ran the other eleven files, each in its own database; the
    // broken worker's database was never made.
    let text = std::fs::read_to_string(&record).unwrap_or_default();
    assert_eq!(text.lines().count(), DATABASE_FILES - 1, "{text}");
    let used: BTreeSet<&str> = text.lines().collect();
    let made = databases.names();
    let prefix = &databases.prefix;
    let expected: BTreeSet<String> = ["setup-a_test", "setup-a_test2", "setup-b_test"]
        .iter()
        .map(|name| format!("{prefix}_{name}"))
        .collect();
    assert_eq!(
        used,
        expected.iter().map(String::as_str).collect(),
        "{text}"
    );
    assert!(
        !made.contains(&format!("{prefix}_setup-b_test2")),
        "{made:?}"
    );
}
