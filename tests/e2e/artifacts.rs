//! `job.artifacts`: what each listener's workspace produces comes back to the originator
//! under `artifacts/HOST/`, and coverage.py's own `combine` and SimpleCov's own `collate`
//! merge every host's data into one report (the recipes in `docs/databases.md`, "Artifacts
//! and coverage"); the limit names what it keeps back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
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
    let report = run_in(
        &project,
        "python3 -m coverage combine --keep artifacts/*/coverage && python3 -m coverage report",
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
        "; left out: coverage/.coverage.",
        "bytes: past job.artifacts.limit_mb)",
    ]);
}

/// The SimpleCov part of a suite's helper, as `docs/databases.md` shows it: each worker has a
/// command name and a coverage folder of its own.
const SIMPLECOV_HELPER: &str = "require 'simplecov'
SimpleCov.command_name \"worker#{ENV['TEST_ENV_NUMBER']}\"
SimpleCov.coverage_dir \"coverage/worker#{ENV['TEST_ENV_NUMBER']}\"
SimpleCov.start
require 'geometry'
";

/// A small library with a branch for each spec file below, and a method no spec calls.
const GEOMETRY: &str = "module Geometry
  def self.name_of(sides)
    if sides == 3
      'triangle'
    elsif sides == 4
      'square'
    elsif sides == 5
      'pentagon'
    else
      'polygon'
    end
  end

  def self.area(kind, size)
    if kind == 'square'
      size * size
    elsif kind == 'circle'
      (3.14159 * size * size).round(2)
    elsif kind == 'triangle'
      (size * size * Math.sqrt(3) / 4).round(2)
    else
      raise ArgumentError, \"unknown kind #{kind}\"
    end
  end

  def self.never_called
    :never
  end
end
";

/// Each spec file's name and expectation: each runs one branch of `Geometry` that no other
/// file runs, so a worker's coverage is its files' only.
const SPECS: [(&str, &str); 8] = [
    ("triangle", "expect(Geometry.name_of(3)).to eq('triangle')"),
    ("square", "expect(Geometry.name_of(4)).to eq('square')"),
    ("pentagon", "expect(Geometry.name_of(5)).to eq('pentagon')"),
    ("polygon", "expect(Geometry.name_of(9)).to eq('polygon')"),
    ("square_area", "expect(Geometry.area('square', 3)).to eq(9)"),
    (
        "circle_area",
        "expect(Geometry.area('circle', 1)).to eq(3.14)",
    ),
    (
        "triangle_area",
        "expect(Geometry.area('triangle', 2)).to eq(1.73)",
    ),
    (
        "unknown_area",
        "expect { Geometry.area('star', 1) }.to raise_error(ArgumentError)",
    ),
];

/// An RSpec suite under SimpleCov, run by the built-in RSpec runner, whose artifacts are its
/// workers' result sets. Each spec takes a second, so that every worker gets files.
fn simplecov_project(cluster: &Cluster) -> Project {
    let project = cluster.project(
        "simplecov",
        json!({
            "files": ["spec/*_spec.rb"],
            "job": {
                "runner": {"kind": "rspec", "command": ""},
                "artifacts": {"paths": ["coverage/*/.resultset.json"]},
            },
        }),
    );
    project.write(".rspec", "--require spec_helper\n");
    project.write("spec/spec_helper.rb", SIMPLECOV_HELPER);
    project.write("lib/geometry.rb", GEOMETRY);
    for (name, expectation) in SPECS {
        project.write(
            &format!("spec/{name}_spec.rb"),
            &format!(
                "RSpec.describe Geometry do\n  it '{name}' do\n    sleep 1\n    {expectation}\n  end\nend\n"
            ),
        );
    }
    project.write(
        "simplecov_collate.rb",
        include_str!("../../examples/simplecov_collate.rb"),
    );
    project
}

/// Per file below `root` (relative paths), the lines a SimpleCov result set counts as run
/// (`covered`) or as not run (`missed`), over all of its command names.
#[derive(Debug, Default, PartialEq)]
struct Lines {
    covered: BTreeSet<usize>,
    missed: BTreeSet<usize>,
}

fn result_set_lines(set: &Path, root: &Path) -> BTreeMap<String, Lines> {
    let text = std::fs::read_to_string(set)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", set.display()));
    let results: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut files: BTreeMap<String, Lines> = BTreeMap::new();
    for result in results.as_object().unwrap().values() {
        for (file, coverage) in result["coverage"].as_object().unwrap() {
            let relative = Path::new(file).strip_prefix(root).map_or_else(
                |_| file.clone(),
                |relative| relative.to_string_lossy().into_owned(),
            );
            let lines = files.entry(relative).or_default();
            for (index, count) in coverage["lines"].as_array().unwrap().iter().enumerate() {
                match count.as_u64() {
                    Some(0) => lines.missed.insert(index + 1),
                    Some(_) => lines.covered.insert(index + 1),
                    None => false,
                };
            }
        }
    }
    // A line some process ran is covered, whatever the others say.
    for lines in files.values_mut() {
        let covered = lines.covered.clone();
        lines.missed.retain(|line| !covered.contains(line));
    }
    files
}

/// Runs `command` in the project with `sh -c`; its output, failing the test unless it
/// succeeds.
fn run_in(project: &Project, command: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&project.dir)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "`{command}` failed:\n{said}");
    said
}

#[test]
fn each_workers_simplecov_result_comes_back_and_collates_into_the_serial_runs_lines() {
    let cluster = Cluster::with_listeners(&[("cov-a", 2), ("cov-b", 2)]);
    let project = simplecov_project(&cluster);
    cluster.wait_for_listeners(&project, 2);
    let run = project.start(&[], LIMIT);
    run.assert_exit(0);
    run.assert_output(&[
        "8 files: 8 passed",
        "Artifacts from cov-a: 2 file(s)",
        "Artifacts from cov-b: 2 file(s)",
    ]);
    let root = project.dir.canonicalize().unwrap();
    let sets: Vec<String> = ["cov-a", "cov-b"]
        .iter()
        .flat_map(|host| ["worker", "worker2"].map(|worker| format!("{host}/coverage/{worker}")))
        .collect();
    let mut merged_lines = BTreeSet::new();
    let mut each_set = Vec::new();
    for set in &sets {
        let path = root.join("artifacts").join(set).join(".resultset.json");
        let lines = result_set_lines(&path, &root);
        let library = lines
            .iter()
            .find(|(file, _)| file.ends_with("lib/geometry.rb"))
            .unwrap_or_else(|| panic!("{set} has no lib/geometry.rb: {lines:?}"));
        merged_lines.extend(library.1.covered.iter().copied());
        each_set.push((set, library.1.covered.clone()));
    }
    // Each worker ran some of the files only: its own result set misses lines that the
    // others ran.
    for (set, covered) in each_set {
        assert!(
            covered.len() < merged_lines.len(),
            "{set} covers every line the four cover together: {covered:?}"
        );
    }
    // SimpleCov's own collate, on the originator, of the four result sets; then the same
    // suite run serially by rspec, under the same helper.
    let collated = run_in(&project, "ruby simplecov_collate.rb");
    assert!(
        collated.contains("Coverage report generated for"),
        "{collated}"
    );
    run_in(&project, "rspec");
    let merged = result_set_lines(&root.join("coverage/.resultset.json"), &root);
    let serial = result_set_lines(&root.join("coverage/worker/.resultset.json"), &root);
    assert_eq!(
        merged, serial,
        "the merged report's lines differ from the serial run's"
    );
    let library = &serial["lib/geometry.rb"];
    assert!(
        !library.missed.is_empty() && library.covered.len() > SPECS.len(),
        "the comparison is meaningless: {library:?}"
    );
}

/// Bytes that differ from place to place, so that a piece out of place would show.
fn varied_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        })
        .collect()
}

#[test]
fn artifacts_larger_than_a_message_arrive_whole() {
    let cluster = Cluster::with_listeners(&[("art-large", 1)]);
    let project = cluster.project(
        "large",
        json!({"job": {"artifacts": {"paths": ["data/*.bin"]}}}),
    );
    project.write("tests/a_test.sh", "true\n");
    // 12 MiB, three messages of 4 MiB (more than a message could carry whole), and three
    // files that fit in one each.
    let files: Vec<(String, Vec<u8>)> = [(12 << 20, 1), (3 << 19, 2), (3 << 19, 3), (100, 4)]
        .iter()
        .map(|(len, seed)| (format!("data/f{seed}.bin"), varied_bytes(*len, *seed)))
        .collect();
    for (path, bytes) in &files {
        let path = project.dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    cluster.wait_for_listeners(&project, 1);
    let run = project.start(&[], LIMIT);
    run.assert_exit(0);
    run.assert_output(&["1 file: 1 passed", "Artifacts from art-large: 4 file(s)"]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(
        said.matches("Artifacts from art-large").count(),
        1,
        "one line for the host, whatever its number of messages:\n{said}"
    );
    for (path, bytes) in &files {
        let back = std::fs::read(project.dir.join("artifacts/art-large").join(path))
            .unwrap_or_else(|error| panic!("{path} did not come back: {error}"));
        assert!(back == *bytes, "{path} came back with other bytes");
    }
}
