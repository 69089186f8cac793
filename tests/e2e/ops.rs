//! End to end for operating gorgon-rs: the JUnit report and the event stream of real runs,
//! `--failed`, `--quiet`, output without escape codes, `init`, `install_listener`,
//! `listen --check`, completions and the examples in every command's help.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{recorded_runs, recording_test, Cluster, Project, GORGON};
use serde_json::{json, Value};

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A project `name` of `passing` passing and `failing` failing recording tests, with its
/// record; the failing files.
fn suite(
    cluster: &Cluster,
    name: &str,
    passing: usize,
    failing: usize,
) -> (Project, std::path::PathBuf, Vec<String>) {
    let project = cluster.project(name, json!({}));
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    let mut failed = Vec::new();
    for i in 0..passing + failing {
        let fail = i >= passing;
        let file = format!("tests/t{i:02}_test.sh");
        project.write(&file, &recording_test(&record, &file, fail));
        if fail {
            failed.push(file);
        }
    }
    (project, record, failed)
}

fn events_of(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["event"].as_str()).collect()
}

/// The test files of a project, relative to it.
fn project_files(project: &Project) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(project.dir.join("tests"))
        .unwrap()
        .map(|entry| format!("tests/{}", entry.unwrap().file_name().to_string_lossy()))
        .collect();
    files.sort();
    files
}

/// `--html` writes one page that needs nothing from the network, with a bar per file on
/// the timeline and each failure's details; `gorgon report` makes the same page from the
/// saved event stream.
#[test]
fn a_run_writes_an_html_report_and_gorgon_report_makes_it_again_from_the_events() {
    let cluster = Cluster::with_listeners(&[("solo", 2), ("duo", 2)]);
    let (project, _record, _) = suite(&cluster, "html", 4, 2);
    cluster.wait_for_listeners(&project, 2);

    let run = project.start(
        &["--html", "reports/run.html", "--events", "events.jsonl"],
        RUN_LIMIT,
    );
    run.assert_exit(1);
    let page = project.read("reports/run.html");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert_eq!(page.matches(r#"<rect class="bar "#).count(), 6, "{page}");
    assert_eq!(
        page.matches(r#"<rect class="bar failed""#).count(),
        2,
        "{page}"
    );
    assert_eq!(page.matches(r#"class="failure""#).count(), 2, "{page}");
    for file in project_files(&project) {
        assert!(page.contains(&file), "{file} in {page}");
    }
    // Self-contained: no script, style or image from anywhere.
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "{page}"
    );
    assert!(!page.contains("https://"), "{page}");

    let made = project.gorgon(&["report", "events.jsonl", "--html", "again.html"]);
    assert!(made.status.success(), "{made:?}");
    assert_eq!(project.read("again.html"), page);

    // Chromium parses it, runs its script to the end (which marks the body), and draws it.
    let path = project.dir.join("reports/run.html");
    let url = format!("file://{}", path.display());
    let profile = cluster.path().join("chromium-profile");
    let chromium = |extra: &[&str]| {
        let output = std::process::Command::new("timeout")
            .args([
                "60",
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium is installed (scripts/lib/prerequisites.sh)");
        assert!(output.status.success(), "chromium: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dom = chromium(&["--dump-dom"]);
    assert!(
        dom.contains(r#"data-ready="yes""#),
        "the page's script did not finish: {dom}"
    );
    let screenshot = cluster.path().join("report.png");
    chromium(&[
        &format!("--screenshot={}", screenshot.display()),
        "--window-size=1200,900",
    ]);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // A blank 1200 x 900 page compresses to a few kilobytes; this one has text and bars.
    assert!(
        png.len() > 20_000,
        "a blank-looking screenshot: {} bytes",
        png.len()
    );

    // A file that is not an event stream is a clear error.
    project.write("notes.txt", "hello\n");
    let refused = project.gorgon(&["report", "notes.txt", "--html", "x.html"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("notes.txt:1: not an event of gorgon start --events"),
        "{stderr}"
    );
}

#[test]
fn a_run_writes_a_junit_report_and_an_event_stream() {
    let cluster = Cluster::with_listeners(&[("solo", 2)]);
    let (project, _record, failing) = suite(&cluster, "reports", 4, 2);

    let run = project.start(
        &["--junit", "reports/junit.xml", "--events", "events.jsonl"],
        RUN_LIMIT,
    );
    run.assert_exit(1);

    check_junit_report(&project.read("reports/junit.xml"), &failing);
    check_event_stream(&project.read("events.jsonl"), &failing);
}

#[test]
fn failed_reruns_exactly_the_failed_files() {
    let cluster = Cluster::with_listeners(&[("again", 2)]);
    let (project, record, failing) = suite(&cluster, "rerun", 5, 2);

    let first = project.start(&[], RUN_LIMIT);
    first.assert_exit(1);
    assert_eq!(recorded_runs(&record).len(), 7);

    // The re-run, with its events on stdout (the report then goes to stderr).
    let second = project.start(&["--failed", "--events", "-"], RUN_LIMIT);
    second.assert_exit(1);
    let runs = recorded_runs(&record);
    let mut rerun: Vec<String> = runs[7..]
        .iter()
        .map(|line| line.split(' ').next().unwrap().to_owned())
        .collect();
    rerun.sort();
    assert_eq!(rerun, failing);
    let events = events_of(&second.stdout);
    let mut queued: Vec<String> = serde_json::from_value(events[0]["files"].clone()).unwrap();
    queued.sort();
    assert_eq!(queued, failing);
    second.assert_stderr(&["2 files: 0 passed, 2 failed, 0 crashed, 0 not run"]);

    // Fixed, one file removed: the survivor runs, the removed one is skipped with a note.
    project.write(&failing[0], "exit 0\n");
    std::fs::remove_file(project.dir.join(&failing[1])).unwrap();
    let third = project.start(&["--failed"], RUN_LIMIT);
    third.assert_exit(0);
    third.assert_stderr(&[&format!(
        "Skipping {} from the failed files list: it no longer exists",
        failing[1]
    )]);
    third.assert_stdout(&["1 file: 1 passed"]);

    // Nothing left to re-run: a clear message and exit 0.
    let fourth = project.start(&["--failed"], RUN_LIMIT);
    fourth.assert_exit(0);
    assert!(
        fourth
            .stdout
            .starts_with("Nothing to re-run: the last run left no failed files"),
        "{fourth:?}"
    );
}

#[test]
fn piped_output_has_no_escape_codes_and_quiet_prints_only_the_report() {
    let cluster = Cluster::with_listeners(&[("plain", 2)]);
    let (project, _record, _) = suite(&cluster, "plain", 2, 1);

    let run = project.start_with_env(&["--verbose"], &[("NO_COLOR", "1")], RUN_LIMIT);
    run.assert_exit(1);
    assert!(!run.stdout.contains('\x1b'), "{run:?}");
    assert!(!run.stderr.contains('\x1b'), "{run:?}");
    // Progress lines and info logs go to stderr; the report to stdout.
    run.assert_stderr(&["[3/3]", "INFO"]);
    run.assert_stdout(&["3 files: 2 passed, 1 failed"]);

    let quiet = project.start(&["--quiet"], RUN_LIMIT);
    quiet.assert_exit(1);
    assert_eq!(quiet.stderr, "", "{quiet:?}");
    quiet.assert_stdout(&["File 'tests/t02_test.sh' failed at 'plain:"]);
    assert!(
        quiet.stdout.trim_end().ends_with(" s")
            && quiet.stdout.contains("3 files: 2 passed, 1 failed"),
        "{quiet:?}"
    );
}

fn gorgon(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(GORGON)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `gorgon listen --check --config CONFIG`.
fn listen_check(config: &std::path::Path) -> (i32, String, String) {
    let dir = config.parent().unwrap();
    gorgon(
        &["listen", "--check", "--config", config.to_str().unwrap()],
        dir,
    )
}

#[test]
fn install_listener_prints_without_writing_and_writes_a_config_that_checks() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let units = dir.path().join("units");
    let broker = format!(
        "{}:{}",
        crate::support::broker_host(),
        crate::support::broker_port()
    );
    let flags = [
        "--broker",
        broker.as_str(),
        "--slots",
        "3",
        "--name",
        "builder-9",
        "--cluster-id",
        "ops-test",
        "--workspace-root",
        "/var/tmp/ws",
        "--user",
        "tester",
        "--config-dir",
        etc.to_str().unwrap(),
        "--unit-dir",
        units.to_str().unwrap(),
        "--binary",
        "/opt/gorgon/bin/gorgon",
    ];
    let mut printing = vec!["install_listener", "--print"];
    printing.extend(flags);
    let (code, stdout, stderr) = gorgon(&printing, dir.path());
    assert_eq!(code, 0, "{stderr}");
    let config_path = etc.join("gorgon_listener.json");
    assert!(
        stdout.starts_with(&format!("# {}\n", config_path.display())),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "# {}\n",
        units.join("gorgon-listener.service").display()
    )));
    assert!(stdout.contains("\"worker_slots\": 3"), "{stdout}");
    assert!(stdout.contains("\"name\": \"builder-9\""), "{stdout}");
    assert!(stdout.contains("\"cluster_id\": \"ops-test\""), "{stdout}");
    assert!(
        stdout.contains("\"workspace_root\": \"/var/tmp/ws\""),
        "{stdout}"
    );
    assert!(stdout.contains("\nUser=tester\n"), "{stdout}");
    assert!(stdout.contains(&format!(
        "\nExecStart=/opt/gorgon/bin/gorgon listen --config {}\n",
        config_path.display()
    )));
    assert!(stdout.contains("ExecStartPre=/opt/gorgon/bin/gorgon listen --check --config"));
    assert!(!etc.exists() && !units.exists(), "--print wrote files");

    let mut writing = vec!["install_listener"];
    writing.extend(flags);
    let (code, stdout, stderr) = gorgon(&writing, dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("Wrote {}", config_path.display())),
        "{stdout}"
    );
    assert!(units.join("gorgon-listener.service").is_file());
    let (code, stdout, stderr) = gorgon(&writing, dir.path());
    assert_eq!(code, 1, "{stdout}");
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");

    // The written config is for the unprivileged user the unit runs the listener as: as
    // root, the listener and its check refuse it, saying why and what to change.
    if nix::unistd::geteuid().is_root() {
        let config = config_path.to_str().unwrap();
        for command in [
            &["listen", "--config", config][..],
            &["listen", "--check", "--config", config],
        ] {
            let (code, stdout, stderr) = gorgon(command, dir.path());
            assert_eq!(code, 3, "{command:?}: {stdout}");
            assert!(
                stderr.contains("gorgon listen refuses to run as root"),
                "{stderr}"
            );
            assert!(
                stderr.contains(&format!("\"allow_root\": true in {config}")),
                "{stderr}"
            );
        }
        let text = std::fs::read_to_string(&config_path).unwrap();
        let allowed = text.replacen('{', "{\n  \"allow_root\": true,", 1);
        std::fs::write(&config_path, allowed).unwrap();
    }
    // The written config passes the check the unit runs before starting.
    let (code, stdout, stderr) = listen_check(&config_path);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains("is fine: listener builder-9 with 3 worker slot(s) on cluster 'ops-test'"),
        "{stdout}"
    );
}

#[test]
fn listen_check_names_a_broken_config_or_an_unreachable_broker_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"worker_slots\": 2,,}").unwrap();
    let (code, stdout, stderr) = gorgon(
        &["listen", "--check", "--config", broken.to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(code, 3);
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("gorgon: ") && stderr.contains("broken.json is not valid JSON"),
        "{stderr}"
    );

    let port = crate::support::free_port();
    let unreachable = dir.path().join("unreachable.json");
    std::fs::write(
        &unreachable,
        json!({"connection": {"host": "127.0.0.1", "port": port}, "allow_root": true}).to_string(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, _, stderr) = listen_check(&unreachable);
    assert_eq!(code, 3);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to RabbitMQ at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn init_writes_once_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("spec")).unwrap();
    std::fs::write(dir.path().join("spec/cart_spec.rb"), "").unwrap();
    let (code, stdout, stderr) = gorgon(&["init", "--broker", "mq:5673"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("Wrote gorgon.json (RSpec project, detected)"),
        "{stdout}"
    );
    let written = std::fs::read_to_string(dir.path().join("gorgon.json")).unwrap();
    assert!(written.contains("\"kind\": \"rspec\""));
    let (code, _, stderr) = gorgon(&["init"], dir.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("gorgon.json already exists; gorgon init never overwrites it"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("gorgon.json")).unwrap(),
        written
    );
}

#[test]
fn every_command_has_an_example_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    for command in [
        "start",
        "listen",
        "ping",
        "start_rsync",
        "stop_rsync",
        "init",
        "install_listener",
        "completions",
        "work",
        "report",
    ] {
        let (code, stdout, _) = gorgon(&[command, "--help"], dir.path());
        assert_eq!(code, 0, "{command}");
        assert!(
            stdout.contains(&format!("Example: gorgon {command}")),
            "{command}: {stdout}"
        );
    }
    for (shell, marker) in [
        ("bash", "_gorgon()"),
        ("zsh", "#compdef gorgon"),
        ("fish", "complete -c gorgon"),
    ] {
        let (code, stdout, _) = gorgon(&["completions", shell], dir.path());
        assert_eq!(code, 0, "{shell}");
        assert!(stdout.contains(marker), "{shell}: {stdout}");
        assert!(stdout.contains("install_listener"), "{shell}");
        // The hidden commands (`__work`, `__manage-workers`) are not offered; `work` is.
        assert!(!stdout.contains("manage-workers"), "{shell}");
        assert!(!stdout.contains("____work"), "{shell}");
        assert!(!stdout.contains("\"__work\""), "{shell}");
        assert!(stdout.contains("work"), "{shell}");
    }
}

/// A test that fails only after another ran before it in the same worker (they share a file
/// outside the workspace): the report prints the replay command, which runs that worker's
/// files in order on this machine and reproduces the failure; `--replay-until` stops there.
#[test]
fn a_failure_that_depends_on_the_files_before_it_is_replayed_in_their_order() {
    let cluster = Cluster::with_listeners(&[("solo", 1)]);
    let project = cluster.project("replay", json!({}));
    let shared = cluster.path().join("shared-state");
    let shared = shared.display().to_string();
    // Largest first: a, then b, then c, all in the one worker.
    project.write(
        "tests/a_test.sh",
        &format!(
            "# leaves state behind for whatever runs next\necho dirty > '{shared}'\n{}",
            "# (the largest file: it runs first)\n".repeat(20)
        ),
    );
    project.write(
        "tests/b_test.sh",
        &format!(
            "if [ -e '{shared}' ]; then echo 'found state left by another test'; exit 1; fi\n"
        ),
    );
    project.write("tests/c_test.sh", "true\n");

    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(1, &["File 'tests/b_test.sh' failed"]);
    let command = "gorgon start --replay solo:1 --replay-until tests/b_test.sh";
    run.assert_stdout(&[command]);
    let failed_list = project.read("gorgon-failed.json");

    // The listener's run wrote its worker's order; the printed command replays it.
    std::fs::remove_file(&shared).unwrap();
    let run = project.start(
        &["--replay", "solo:1", "--replay-until", "tests/b_test.sh"],
        RUN_LIMIT,
    );
    run.assert_exit(1);
    run.assert_stderr(&["Replaying the 2 files worker solo:1 ran"]);
    run.assert_stdout(&[
        "2 files: 1 passed, 1 failed",
        "found state left by another test",
    ]);
    // The replay leaves the listener run's failed files as they were.
    assert_eq!(project.read("gorgon-failed.json"), failed_list);
    // Alone, b passes: its failure depends on what ran before it.
    std::fs::remove_file(&shared).unwrap();
    let alone = project.start(&["--local", "tests/b_test.sh"], RUN_LIMIT);
    alone.assert_exit(0);

    // Without --replay-until, the whole sequence; from a saved event stream too. (Without
    // the timings of the runs before, the largest file goes first again.)
    std::fs::remove_file(project.dir.join("gorgon-runtime.json")).unwrap();
    let run = project.start(&["--events", "events.jsonl"], RUN_LIMIT);
    run.assert_exit(1);
    std::fs::remove_file(&shared).unwrap();
    let run = project.start(
        &["--replay", "solo:1", "--events", "events.jsonl"],
        RUN_LIMIT,
    );
    run.assert_report(1, &["3 files: 2 passed, 1 failed"]);
    // An unknown worker is named with the ones there are.
    let run = project.start(&["--replay", "other:3"], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&["no worker other:3", "solo:1"]);
}

/// Live output: a file that prints a line every 0.2 s shows its lines on the originator (and
/// as `file_output` events) while it runs, long before its result; a file that prints 100 MB
/// is cut to the documented cap and the run goes on. The same on the listeners and locally.
#[test]
fn running_files_stream_their_output_and_a_flood_is_cut_at_the_cap() {
    let cluster = Cluster::with_listeners(&[("solo", 2)]);
    let project = cluster.project("live", json!({}));
    project.write(
        "tests/ticker_test.sh",
        "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"tick $i\"; sleep 0.2; done\n",
    );
    project.write(
        "tests/flood_test.sh",
        "head -c 100000000 /dev/zero | tr '\\0' 'x' | fold -w 99\n",
    );
    for args in [
        vec!["--live-output", "--events", "events.jsonl"],
        vec![
            "--live-output",
            "--events",
            "events.jsonl",
            "--local",
            "-j",
            "2",
        ],
    ] {
        let run = project.start(&args, RUN_LIMIT);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        run.assert_stdout(&["2 files: 2 passed"]);
        let place = if args.contains(&"--local") {
            ":"
        } else {
            "solo:"
        };
        let line = run
            .stdout
            .lines()
            .find(|l| l.ends_with("tests/ticker_test.sh | tick 1"))
            .unwrap_or_else(|| panic!("no live line of the ticker: {run:?}"));
        assert!(line.contains(place), "{line}");
        let events: Vec<serde_json::Value> = project
            .read("events.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let time = |e: &serde_json::Value| {
            chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap()
        };
        let of = |kind: &str, file: &str| -> Vec<&serde_json::Value> {
            events
                .iter()
                .filter(|e| e["event"] == kind && e["file"] == file)
                .collect()
        };
        // The ticker's first lines arrived a second or more before its result.
        let ticks = of("file_output", "tests/ticker_test.sh");
        let finished = of("file_finished", "tests/ticker_test.sh")[0];
        assert!(ticks.len() >= 3, "{ticks:?}");
        assert!(
            ticks[0]["text"].as_str().unwrap().starts_with("tick 1\n"),
            "{ticks:?}"
        );
        let ahead = time(finished) - time(ticks[0]);
        assert!(ahead.num_milliseconds() >= 1000, "only {ahead} ahead");
        let all: String = ticks.iter().map(|t| t["text"].as_str().unwrap()).collect();
        assert_eq!(
            all.lines().filter(|l| l.starts_with("tick ")).count(),
            10,
            "{all}"
        );
        // The flood: at most the cap and one line saying so.
        let flood: String = of("file_output", "tests/flood_test.sh")
            .iter()
            .map(|t| t["text"].as_str().unwrap())
            .collect();
        assert!(flood.len() <= 64 * 1024 + 200, "{} bytes", flood.len());
        assert!(flood.len() >= 60 * 1024, "{} bytes", flood.len());
        assert!(
            flood.contains("live output of this file stops here, at 64 KiB"),
            "{}",
            &flood[flood.len() - 300..]
        );
    }
}

/// `gorgon fleet -- COMMAND`: every listener that allows it runs the command and each host's
/// answer is printed; a listener without `allow_fleet_commands` refuses, named, and the
/// command fails.
#[test]
fn fleet_runs_a_command_on_every_listener_that_allows_it() {
    let mut cluster = Cluster::new();
    cluster.start_listener_with("east", 1, json!({"allow_fleet_commands": true}));
    cluster.start_listener_with("west", 1, json!({"allow_fleet_commands": true}));
    let project = cluster.project("fleet", json!({}));
    cluster.wait_for_listeners(&project, 2);
    let output = project.gorgon(&["fleet", "--", "sh", "-c", "echo ran in $(basename $PWD)"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    for host in ["east", "west"] {
        assert!(
            stdout.contains(&format!("== {host}: exit status 0")),
            "{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("ran in gorgon-fleet-").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("2 of 2 listener(s)"), "{stdout}");

    let mut cluster = Cluster::new();
    cluster.start_listener_with("east", 1, json!({"allow_fleet_commands": true}));
    cluster.start_listener("west", 1);
    let project = cluster.project("fleet-refused", json!({}));
    cluster.wait_for_listeners(&project, 2);
    let output = project.gorgon(&["fleet", "--", "uname", "-n"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stdout.contains("== east: exit status 0"), "{stdout}");
    assert!(
        stdout.contains("== west refused: this listener does not run fleet commands"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 2 listener(s)"), "{stdout}");
}

/// The JUnit report of a run of [`suite`] on listener `solo`: testsuites > testsuite >
/// testcase, one case per file, the `failing` ones with their failure.
fn check_junit_report(text: &str, failing: &[String]) {
    // The JUnit report: testsuites > testsuite > testcase, one case per file.
    let doc = roxmltree::Document::parse(text).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("6"));
    assert_eq!(root.attribute("failures"), Some("2"));
    assert_eq!(root.attribute("errors"), Some("0"));
    let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
    assert_eq!(suites.len(), 6);
    let mut failures = Vec::new();
    for suite in &suites {
        assert!(suite.has_tag_name("testsuite"));
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 1);
        let case = cases[0];
        let file = case.attribute("file").unwrap();
        assert_eq!(case.attribute("name"), Some(file));
        assert_eq!(suite.attribute("name"), Some(file));
        assert!(case.attribute("classname").unwrap().starts_with("tests.t"));
        assert!(case.attribute("time").unwrap().parse::<f64>().unwrap() >= 0.0);
        let worker = case
            .descendants()
            .find(|n| n.has_tag_name("property"))
            .and_then(|p| p.attribute("value"))
            .unwrap();
        assert!(worker == "solo:1" || worker == "solo:2", "{worker}");
        if let Some(failure) = case.children().find(|n| n.has_tag_name("failure")) {
            assert_eq!(failure.attribute("message"), Some("exit status 1"));
            assert!(failure
                .text()
                .unwrap()
                .contains(&format!("assertion failed in {file}: expected 1, got 2")));
            failures.push(file.to_owned());
        }
    }
    failures.sort();
    assert_eq!(failures, failing);
}

/// The event stream of a run of [`suite`]: run_started first, run_finished last, one
/// file_finished per file after its file_started, the `failing` ones failed.
fn check_event_stream(text: &str, failing: &[String]) {
    // The event stream: run_started first, run_finished last, one file_finished per file.
    let events = events_of(text);
    let kinds = kinds(&events);
    assert_eq!(kinds.first(), Some(&"run_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"run_finished"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "run_started").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "run_finished").count(), 1);
    for event in &events {
        assert_eq!(event["schema"], 1, "{event}");
        let time = event["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    }
    let queued: Vec<String> = serde_json::from_value(events[0]["files"].clone()).unwrap();
    assert_eq!(queued.len(), 6);
    assert!(events[0]["job_id"].as_str().unwrap().len() == 36);
    let joined = kinds.iter().position(|k| *k == "listener_joined").unwrap();
    let mut finished: BTreeMap<String, usize> = BTreeMap::new();
    let mut started_at: BTreeMap<String, usize> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        let file = event["file"].as_str().unwrap_or_default().to_owned();
        match event["event"].as_str() {
            Some("file_started") => {
                assert!(index > joined);
                started_at.entry(file).or_insert(index);
            }
            Some("file_finished") => {
                assert!(started_at.get(&file).is_some_and(|s| *s < index), "{file}");
                let expected = if failing.contains(&file) {
                    "failed"
                } else {
                    "passed"
                };
                assert_eq!(event["status"], expected, "{event}");
                *finished.entry(file).or_default() += 1;
            }
            _ => {}
        }
    }
    let mut sorted = queued.clone();
    sorted.sort();
    assert_eq!(finished.keys().cloned().collect::<Vec<_>>(), sorted);
    assert!(finished.values().all(|n| *n == 1), "{finished:?}");
    let last = events.last().unwrap();
    assert_eq!(last["exit_code"], 1);
    assert_eq!(
        last["totals"],
        json!({"files": 6, "passed": 4, "failed": 2, "crashed": 0, "timed_out": 0, "not_run": 0, "flaky": 0, "quarantined": 0})
    );
}
