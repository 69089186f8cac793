//! End to end for test impact (docs/impact.md) through the real path (binary, RabbitMQ,
//! rsync, a listener, warm built-in runners): a recording run writes the impact map; a run
//! with `--changed` on a project in git runs only the test files the change reaches (or
//! everything, saying why), explains each choice, and reports the files it left out as not
//! selected in the report, JUnit and the events; `--dry-run` lists the files such a run
//! runs, and runs and writes nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Cluster, Project, Run};
use serde_json::json;

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Files every project ignores: what the runs themselves write into it.
const IGNORED: &str = "gorgon-runtime*.json\ngorgon-failed*.json\n__pycache__/\n";

/// A Python package with three pytest files: one runs `cart.total`, one runs `tax.with_tax`
/// (which calls `cart.total`), one runs none of the package's code.
const PYTHON: &[(&str, &str)] = &[
    ("shop/__init__.py", ""),
    (
        "shop/cart.py",
        "RATE = 2\n\n\ndef total(prices):\n    return sum(prices) * RATE\n\n\ndef unused():\n    \"\"\"Zero.\"\"\"\n    return 0\n",
    ),
    (
        "shop/tax.py",
        "from shop.cart import total\n\n\ndef with_tax(prices):\n    return total(prices) + 1\n",
    ),
    ("conftest.py", "import sys\n"),
    ("requirements.txt", "pytest\n"),
    ("NOTES.txt", "notes\n"),
    (
        "tests/test_cart.py",
        "from shop.cart import total\n\n\ndef test_total():\n    assert total([1, 2]) == 6\n",
    ),
    (
        "tests/test_tax.py",
        "from shop.tax import with_tax\n\n\ndef test_with_tax():\n    assert with_tax([1]) == 3\n",
    ),
    ("tests/test_plain.py", "def test_plain():\n    assert 1 + 1 == 2\n"),
];

/// The same shape in Ruby, with RSpec.
const RUBY: &[(&str, &str)] = &[
    (
        "lib/cart.rb",
        "RATE = 2\n\nclass Cart\n  def total(prices)\n    prices.sum * RATE\n  end\n\n  def unused\n    0\n  end\nend\n",
    ),
    (
        "lib/tax.rb",
        "require 'cart'\n\nclass Tax\n  def with_tax(prices)\n    Cart.new.total(prices) + 1\n  end\nend\n",
    ),
    (
        "spec/spec_helper.rb",
        "$LOAD_PATH.unshift(File.expand_path('../lib', __dir__))\n",
    ),
    (
        "spec/cart_spec.rb",
        "require 'cart'\n\nRSpec.describe Cart do\n  it('totals') { expect(Cart.new.total([1, 2])).to eq(6) }\nend\n",
    ),
    (
        "spec/tax_spec.rb",
        "require 'tax'\n\nRSpec.describe Tax do\n  it('adds tax') { expect(Tax.new.with_tax([1])).to eq(3) }\nend\n",
    ),
    (
        "spec/plain_spec.rb",
        "RSpec.describe 'plain' do\n  it('adds') { expect(1 + 1).to eq(2) }\nend\n",
    ),
];

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
}

/// A project of `files` run by the built-in `runner`, committed on `main`, whose impact map
/// a recording run on the cluster's one listener has written.
fn recorded(
    cluster: &Cluster,
    name: &str,
    runner: &str,
    globs: &str,
    files: &[(&str, &str)],
) -> Project {
    let project = cluster.project(
        name,
        json!({"files": [globs],
               "job": {"runner": {"kind": runner, "command": ""},
                       "impact": {"ignore": ["docs/**"]}}}),
    );
    for (path, text) in files {
        project.write(path, text);
    }
    project.write(".gitignore", IGNORED);
    git(&project.dir, &["init", "-q", "-b", "main"]);
    git(&project.dir, &["add", "-A"]);
    git(&project.dir, &["commit", "-q", "-m", "base"]);
    cluster.wait_for_listeners(&project, 1);
    let run = project.start(&["--record-impact"], RUN_LIMIT);
    run.assert_report(0, &["3 files: 3 passed"]);
    let map: serde_json::Value =
        serde_json::from_str(&project.read("gorgon-runtime.impact.json")).unwrap();
    assert_eq!(map["tests"].as_object().unwrap().len(), 3, "{map}");
    project
}

/// Runs `--changed --explain` with a JUnit report and events beside the project.
fn changed_run(project: &Project) -> (Run, String, Vec<serde_json::Value>) {
    let junit = project.dir.with_extension("junit.xml");
    let events = project.dir.with_extension("events.jsonl");
    let run = project.start(
        &[
            "--changed",
            "--explain",
            "--junit",
            junit.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
        RUN_LIMIT,
    );
    let events = std::fs::read_to_string(events)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (
        run,
        std::fs::read_to_string(junit).unwrap_or_default(),
        events,
    )
}

/// The files the events say finished.
fn finished(events: &[serde_json::Value]) -> Vec<String> {
    let mut files: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "file_finished")
        .map(|e| e["file"].as_str().unwrap().to_owned())
        .collect();
    files.sort();
    files
}

/// Asserts that the JUnit report and the events give `files` (and only them) as not
/// selected, never as run.
fn assert_not_selected(files: &[&str], junit: &str, events: &[serde_json::Value]) {
    let doc = roxmltree::Document::parse(junit).unwrap();
    for file in files {
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(file))
            .unwrap_or_else(|| panic!("no case for {file} in {junit}"));
        let skipped = case
            .children()
            .find(|n| n.has_tag_name("skipped"))
            .unwrap_or_else(|| panic!("{file} is not skipped in {junit}"));
        assert_eq!(skipped.attribute("type"), Some("not selected"), "{junit}");
        assert!(
            skipped
                .attribute("message")
                .unwrap()
                .starts_with("not selected: no change since "),
            "{junit}"
        );
        assert!(
            !finished(events).contains(&(*file).to_owned()),
            "{events:?}"
        );
    }
    let left_out: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "not_selected")
        .collect();
    assert_eq!(left_out.len(), 1, "{events:?}");
    let mut named: Vec<&str> = left_out[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    named.sort_unstable();
    assert_eq!(named, files, "{events:?}");
}

#[test]
fn a_change_to_one_python_function_runs_only_the_test_files_that_ran_it() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    let project = recorded(&cluster, "py", "pytest", "tests/test_*.py", PYTHON);
    project.write(
        "shop/cart.py",
        &PYTHON[1]
            .1
            .replace("sum(prices) * RATE", "RATE * sum(prices)"),
    );

    let (run, junit, events) = changed_run(&project);

    run.assert_report(0, &["2 files: 2 passed", "Not selected: 1 file"]);
    run.assert_stderr(&[
        "Running 2 of 3 files: those the changes since ",
        "  tests/test_cart.py: shop/cart.py:5 (in lines 4-5)\n",
        "  tests/test_tax.py: shop/cart.py:5 (in lines 4-5)\n",
    ]);
    assert_eq!(
        finished(&events),
        ["tests/test_cart.py", "tests/test_tax.py"]
    );
    assert_not_selected(&["tests/test_plain.py"], &junit, &events);
}

#[test]
fn a_change_to_one_ruby_method_runs_only_the_spec_files_that_ran_it() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    let project = recorded(&cluster, "rb", "rspec", "spec/*_spec.rb", RUBY);
    project.write("lib/tax.rb", &RUBY[1].1.replace("+ 1", "+ 2 - 1"));

    let (run, junit, events) = changed_run(&project);

    run.assert_report(0, &["1 file: 1 passed", "Not selected: 2 files"]);
    run.assert_stderr(&[
        "Running 1 of 3 files: those the changes since ",
        "  spec/tax_spec.rb: lib/tax.rb:5 (in lines 4-6)\n",
    ]);
    assert_eq!(finished(&events), ["spec/tax_spec.rb"]);
    let left_out = events
        .iter()
        .find(|e| e["event"] == "not_selected")
        .unwrap();
    assert_eq!(
        left_out["files"],
        json!(["spec/cart_spec.rb", "spec/plain_spec.rb"])
    );
    assert!(junit.contains("not selected: no change since "), "{junit}");
}

#[test]
fn a_change_the_map_cannot_follow_runs_everything_and_says_why() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    let project = recorded(&cluster, "all", "pytest", "tests/test_*.py", PYTHON);
    // (what changes, its new text, what the run says)
    let cases = [
        (
            "requirements.txt",
            "pytest\nrequests\n",
            "requirements.txt changed, and what it does reaches every test",
        ),
        (
            "conftest.py",
            "import os\n",
            "conftest.py changed, and what it does reaches every test",
        ),
        (
            "NOTES.txt",
            "more notes\n",
            "NOTES.txt changed, and the impact map does not know it",
        ),
        (
            "data/new.csv",
            "a,b\n",
            "data/new.csv changed, and the impact map does not know it",
        ),
    ];
    for (path, text, why) in cases {
        let before = std::fs::read_to_string(project.dir.join(path)).ok();
        project.write(path, text);

        let (run, _, events) = changed_run(&project);

        run.assert_report(0, &["3 files: 3 passed"]);
        run.assert_stderr(&["Running all 3 files: ", why]);
        assert_eq!(finished(&events).len(), 3, "{path}: {run:?}");
        assert!(
            !events.iter().any(|e| e["event"] == "not_selected"),
            "{events:?}"
        );
        match before {
            Some(text) => project.write(path, &text),
            None => std::fs::remove_file(project.dir.join(path)).unwrap(),
        }
    }
}

#[test]
fn a_new_test_file_runs_and_an_ignored_change_runs_nothing() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    let project = recorded(&cluster, "new", "pytest", "tests/test_*.py", PYTHON);
    project.write("tests/test_new.py", "def test_new():\n    assert True\n");
    project.write("docs/guide.md", "# Guide\n");

    let (run, _, events) = changed_run(&project);

    run.assert_report(0, &["1 file: 1 passed", "Not selected: 3 files"]);
    run.assert_stderr(&[
        "Running 1 of 4 files: ",
        "  tests/test_new.py: new test file\n",
    ]);
    assert_eq!(finished(&events), ["tests/test_new.py"]);

    // Only the ignored change is left: nothing runs, and the reports still say so, with
    // every file as not selected.
    std::fs::remove_file(project.dir.join("tests/test_new.py")).unwrap();
    let (run, junit, events) = changed_run(&project);
    run.assert_report(
        0,
        &[
            "Nothing to run: no change since ",
            "Not selected: 3 files (no change since ",
        ],
    );
    run.assert_stderr(&["Running none of 3 files: no change since "]);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["run_started", "not_selected", "run_finished"]);
    assert_eq!(events[0]["files"], json!([]), "{events:?}");
    assert_eq!(events[2]["exit_code"], 0, "{events:?}");
    assert_not_selected(
        &[
            "tests/test_cart.py",
            "tests/test_plain.py",
            "tests/test_tax.py",
        ],
        &junit,
        &events,
    );
}

/// Every file below `dir` (but git's own) with its bytes.
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with(".git") {
                folders.push(path);
            } else if path.is_file() {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn a_dry_run_prints_the_files_a_changed_run_then_runs_and_writes_nothing() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    let project = recorded(&cluster, "dry", "pytest", "tests/test_*.py", PYTHON);
    // The same project with a broker and a file server nobody listens on (committed, so
    // that it is no change): a dry run that connected to either, or pushed, would fail.
    let mut config: serde_json::Value = serde_json::from_str(&project.read("gorgon.json")).unwrap();
    config["connection"]["port"] = json!(crate::support::free_port());
    config["file_server"]["port"] = json!(crate::support::free_port());
    project.write("dry.json", &config.to_string());
    git(&project.dir, &["add", "dry.json"]);
    git(&project.dir, &["commit", "-q", "-m", "dry"]);
    project.write("shop/tax.py", &PYTHON[2].1.replace("+ 1", "+ 2 - 1"));
    let events = project.dir.with_extension("dry.events.jsonl");
    let junit = project.dir.with_extension("dry.junit.xml");
    let before = snapshot(&project.dir);

    let mut listed = Vec::new();
    for local in [&[][..], &["--local", "-j", "1"]] {
        let mut args = vec![
            "--config",
            "dry.json",
            "--changed",
            "--explain",
            "--dry-run",
        ];
        args.extend(["--events", events.to_str().unwrap()]);
        args.extend(["--junit", junit.to_str().unwrap()]);
        args.extend(local);
        let dry = project.start(&args, RUN_LIMIT);

        dry.assert_exit(0);
        dry.assert_stderr(&[
            "Running 1 of 3 files: those the changes since ",
            "  tests/test_tax.py: shop/tax.py:5 (in lines 4-5)\n",
            "Not selected: 2 files (no change since ",
        ]);
        listed.push(dry.stdout);
    }
    assert_eq!(listed, ["tests/test_tax.py\n"; 2]);
    assert!(!events.exists() && !junit.exists());
    assert_eq!(
        snapshot(&project.dir),
        before,
        "the dry run wrote below the project"
    );

    let (run, _, events) = changed_run(&project);
    run.assert_report(0, &["1 file: 1 passed", "Not selected: 2 files"]);
    let queued: Vec<&str> = events[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(listed[0].lines().collect::<Vec<_>>(), queued);
    assert_eq!(finished(&events), queued);
}

/// `files` with `path` replaced by `text` (or added).
fn with_file<'a>(
    files: &[(&'a str, &'a str)],
    path: &'a str,
    text: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut changed: Vec<(&str, &str)> =
        files.iter().copied().filter(|(p, _)| *p != path).collect();
    changed.push((path, text));
    changed
}

#[test]
fn a_change_to_a_function_run_while_a_file_loads_runs_every_file_that_ran_after_it() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    // `RATE` comes from a function that runs once, when the first file that needs the
    // cart loads it: every later file of the worker uses what it computed.
    let python = with_file(PYTHON, "shop/config.py", "def load_rate():\n    return 2\n");
    let python = with_file(
        &python,
        "shop/cart.py",
        "from shop.config import load_rate\n\nRATE = load_rate()\n\n\ndef total(prices):\n    return sum(prices) * RATE\n",
    );
    let ruby = with_file(
        RUBY,
        "lib/config.rb",
        "class Config\n  def self.load_rate\n    2\n  end\nend\n",
    );
    let ruby = with_file(
        &ruby,
        "lib/cart.rb",
        "require_relative 'config'\nRATE = Config.load_rate\n\nclass Cart\n  def total(prices)\n    prices.sum * RATE\n  end\nend\n",
    );
    let cases = [
        (
            "load-py",
            "pytest",
            "tests/test_*.py",
            python,
            "shop/config.py",
            ["tests/test_cart.py", "tests/test_tax.py"],
        ),
        (
            "load-rb",
            "rspec",
            "spec/*_spec.rb",
            ruby,
            "lib/config.rb",
            ["spec/cart_spec.rb", "spec/tax_spec.rb"],
        ),
    ];
    for (name, runner, globs, files, config, users) in cases {
        let project = recorded(&cluster, name, runner, globs, &files);
        let text = files.iter().find(|(p, _)| *p == config).unwrap().1;
        project.write(config, &text.replace('2', "1 + 1"));

        let (run, _, events) = changed_run(&project);

        run.assert_exit(0);
        let ran = finished(&events);
        for user in users {
            assert!(ran.contains(&user.to_owned()), "{user} should run: {run:?}");
        }
        run.assert_stderr(&[&format!("{config}:")]);
    }
}

#[test]
fn a_change_in_a_function_no_test_ran_runs_nothing_and_its_def_line_runs_the_loaders() {
    let cluster = Cluster::with_listeners(&[("impact", 1)]);
    // (project, runner, globs, files, the test files, the source, its unused body line and
    // its new text, its def line and its new text, why the body's change reaches no file,
    // the files that load the source)
    let cases = [
        (
            "unrun-py",
            "pytest",
            "tests/test_*.py",
            PYTHON,
            ["tests/test_cart.py", "tests/test_plain.py", "tests/test_tax.py"],
            "shop/cart.py",
            ["    return 0", "    return -1"],
            ["def unused():", "def unused(start=0):"],
            "shop/cart.py:10 (in the function or method of lines 8-10, which no recorded test file ran)",
            ["tests/test_cart.py", "tests/test_tax.py"],
        ),
        (
            "unrun-rb",
            "rspec",
            "spec/*_spec.rb",
            RUBY,
            ["spec/cart_spec.rb", "spec/plain_spec.rb", "spec/tax_spec.rb"],
            "lib/cart.rb",
            ["    0\n", "    -1\n"],
            ["def unused\n", "def unused(start = 0)\n"],
            "lib/cart.rb:9 (in the function or method of lines 8-10, which no recorded test file ran)",
            ["spec/cart_spec.rb", "spec/tax_spec.rb"],
        ),
    ];
    for (name, runner, globs, files, tests, source, body, def, why, loaders) in cases {
        let project = recorded(&cluster, name, runner, globs, files);
        let map: serde_json::Value =
            serde_json::from_str(&project.read("gorgon-runtime.impact.json")).unwrap();
        assert!(
            map["known"][source]["scopes"]
                .as_array()
                .is_some_and(|scopes| scopes.len() >= 2),
            "{map}"
        );
        let text = files.iter().find(|(p, _)| *p == source).unwrap().1;
        project.write(source, &text.replace(body[0], body[1]));

        let (run, junit, events) = changed_run(&project);

        run.assert_report(0, &["Nothing to run: no change since "]);
        run.assert_stderr(&[
            "Running none of 3 files: no change since ",
            &format!("  no test file: {why}\n"),
        ]);
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["run_started", "not_selected", "run_finished"]);
        assert_not_selected(&tests, &junit, &events);

        // The `def` line runs when the file loads, and a Python docstring is made then
        // (the function's `__doc__`): every file that loaded it runs.
        let mut loading_changes = vec![(def, 8)];
        if runner == "pytest" {
            loading_changes.push((["Zero.", "Nothing."], 9));
        }
        for (change, line) in loading_changes {
            project.write(source, &text.replace(change[0], change[1]));
            let (run, _, events) = changed_run(&project);
            run.assert_exit(0);
            run.assert_stderr(&[&format!("{source}:{line} (run when the file loads)")]);
            let ran = finished(&events);
            for loader in loaders {
                assert!(
                    ran.contains(&loader.to_owned()),
                    "{loader} should run: {run:?}"
                );
            }
        }
    }
}
