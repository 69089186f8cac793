//! `job.artifacts`: what each listener's workspace produces comes back to the originator
//! under `artifacts/HOST/`, and coverage.py's own `combine` merges every host's data into
//! one report (the recipe in `docs/databases.md`, "Artifacts and coverage"); the limit names
//! what it keeps back.

use std::time::Duration;

use serde_json::json;

use crate::support::{Cluster, Project};

const LIMIT: Duration = Duration::from_secs(180);
const FUNCTIONS: [&str; 4] = ["add", "sub", "mul", "div"];

/// A project whose four pytest files each cover one function of `calc.py`, run under
/// coverage.py in parallel mode with paths relative to the workspace, and whose artifacts
/// are the coverage data files (at most `limit_mb`).
fn coverage_project(cluster: &Cluster, limit_mb: f64) -> Project {
    let command = "python3 -m coverage run -m pytest -q -p no:cacheprovider {file}";
    let project = cluster.project(
        "covered",
        json!({
            "files": ["tests/test_*.py"],
            "job": {
                "runner": {"command": command},
                "artifacts": {"paths": ["coverage/.coverage.*"], "limit_mb": limit_mb},
            },
        }),
    );
    project.write(
        ".coveragerc",
        "[run]\nparallel = True\nrelative_files = True\ndata_file = coverage/.coverage\nsource = .\nomit = tests/*\n",
    );
    project.write(
        "calc.py",
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n\
         def mul(a, b):\n    return a * b\n\n\ndef div(a, b):\n    return a / b\n",
    );
    for (i, function) in FUNCTIONS.iter().enumerate() {
        project.write(
            &format!("tests/test_{function}.py"),
            &format!(
                "import time\nfrom calc import {function}\n\n\ndef test_{function}():\n    \
                 time.sleep(1)\n    assert {function}(6, 3) == {}\n",
                [9.0, 3.0, 18.0, 2.0][i]
            ),
        );
    }
    project
}

#[test]
fn each_hosts_coverage_comes_back_and_combines_into_one_report() {
    let cluster = Cluster::with_listeners(&[("art-a", 2), ("art-b", 2)]);
    let project = coverage_project(&cluster, 100.0);
    cluster.wait_for_listeners(&project, 2);
    let run = project.start(&[], LIMIT);
    run.assert_exit(0);
    run.assert_output(&[
        "4 files: 4 passed",
        "Artifacts from art-a:",
        "Artifacts from art-b:",
    ]);
    let artifacts = project.dir.join("artifacts");
    for host in ["art-a", "art-b"] {
        let data: Vec<_> = std::fs::read_dir(artifacts.join(host).join("coverage"))
            .map(|entries| entries.flatten().collect())
            .unwrap_or_default();
        assert!(!data.is_empty(), "no coverage data came back from {host}");
    }
    // coverage.py's own merge of every host's data, on the originator.
    let combined = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "python3 -m coverage combine --keep artifacts/*/coverage && python3 -m coverage report",
        )
        .current_dir(&project.dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&combined.stdout);
    assert!(
        combined.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&combined.stderr)
    );
    let calc = report
        .lines()
        .find(|line| line.starts_with("calc.py"))
        .unwrap_or_else(|| panic!("calc.py is not in the combined report:\n{report}"));
    assert!(
        calc.ends_with("100%"),
        "every function ran on some host: {report}"
    );
}

#[test]
fn the_limit_names_what_it_keeps_back() {
    let cluster = Cluster::with_listeners(&[("art-small", 2)]);
    let project = coverage_project(&cluster, 0.000_001);
    cluster.wait_for_listeners(&project, 1);
    let run = project.start(&[], LIMIT);
    run.assert_exit(0);
    run.assert_output(&[
        "Artifacts from art-small: 0 file(s)",
        "left out by job.artifacts.limit_mb",
        "bytes: past the limit)",
    ]);
}
