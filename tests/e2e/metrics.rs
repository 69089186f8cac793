//! `gorgon listen`'s metrics (`metrics_address`): scraped in the middle of a run, its busy
//! slots are the files that run; after the run, it counts the files by verdict, their
//! times and the pull; `promtool check metrics` has nothing to say of it.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, free_port, Cluster};

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The body of `GET /metrics` at `port`, or why there is none.
fn scrape(port: u16) -> Result<String, String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 OK\r\n") => Ok(body.to_owned()),
        _ => Err(format!("not a 200 answer: {response:?}")),
    }
}

/// The value of the sample `name` (with its labels, if any) in `metrics`.
fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (sample, value) = line.rsplit_once(' ')?;
        (sample == name).then(|| value.parse().ok())?
    })
}

/// A test file that marks that it started, then waits for `release` before it ends with
/// `code`.
fn held_test(record: &Path, name: &str, code: i32) -> String {
    format!(
        "touch '{marks}/{name}.started'\n\
         while [ ! -e '{marks}/release' ]; do sleep 0.05; done\n\
         exit {code}\n",
        marks = record.display(),
    )
}

/// How many files of `record` have started.
fn started(record: &Path) -> usize {
    std::fs::read_dir(record)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".started"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn busy_slots_are_the_files_running_and_promtool_finds_nothing() {
    let mut cluster = Cluster::new();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    cluster.start_listener_with("metered", 3, json!({"metrics_address": address}));
    let project = cluster.project("metrics", json!({}));
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    for (name, code) in [("a", 0), ("b", 0), ("c", 1)] {
        project.write(
            &format!("tests/{name}_test.sh"),
            &held_test(&record, name, code),
        );
    }
    cluster.wait_for_listeners(&project, 1);
    let config = cluster
        .path()
        .join("listeners/metered/gorgon_listener.json");
    let checked = project.gorgon(&["listen", "--check", "--config", config.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        said.contains(&format!("metrics served on http://{address}/metrics")),
        "{said}"
    );
    let idle = scrape(port).unwrap();
    assert_eq!(value(&idle, "gorgon_slots"), Some(3.0), "{idle}");
    assert_eq!(value(&idle, "gorgon_slots_busy"), Some(0.0), "{idle}");

    let run = project.spawn_start(&[], &[]);
    eventually(RUN_LIMIT, "the three files to run at once", || {
        started(&record) == 3
    });
    let running = eventually(RUN_LIMIT, "busy slots to be the files running", || {
        let metrics = scrape(port)?;
        match value(&metrics, "gorgon_slots_busy") {
            Some(busy) if busy == started(&record) as f64 => Ok(metrics),
            _ => Err(metrics),
        }
    });
    assert_eq!(value(&running, "gorgon_slots_busy"), Some(3.0), "{running}");
    assert_eq!(
        value(&running, "gorgon_jobs_running"),
        Some(1.0),
        "{running}"
    );
    assert_eq!(
        value(&running, "gorgon_jobs_taken_total"),
        Some(1.0),
        "{running}"
    );
    assert_eq!(
        value(&running, "gorgon_pull_duration_seconds_count"),
        Some(1.0),
        "{running}"
    );

    std::fs::write(record.join("release"), "").unwrap();
    run.wait(RUN_LIMIT).assert_exit(1);
    let done = eventually(RUN_LIMIT, "the job to end on the listener", || {
        let metrics = scrape(port)?;
        match value(&metrics, "gorgon_jobs_running") {
            Some(0.0) => Ok(metrics),
            _ => Err(metrics),
        }
    });
    assert_eq!(value(&done, "gorgon_slots_busy"), Some(0.0), "{done}");
    assert_eq!(
        value(&done, "gorgon_files_total{verdict=\"passed\"}"),
        Some(2.0),
        "{done}"
    );
    assert_eq!(
        value(&done, "gorgon_files_total{verdict=\"failed\"}"),
        Some(1.0),
        "{done}"
    );
    assert_eq!(
        value(&done, "gorgon_file_duration_seconds_count"),
        Some(3.0),
        "{done}"
    );
    assert!(
        !done.contains("_test.sh"),
        "no file's name in a label: {done}"
    );
    assert_promtool_is_silent(&done);
}

/// `promtool check metrics` reads `metrics` and says nothing (no lint, no error).
fn assert_promtool_is_silent(metrics: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "promtool runs (Debian's prometheus package; scripts/lib/prerequisites.sh installs it)",
        );
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.is_empty(),
        "promtool check metrics: {:?} {said}\n{metrics}",
        output.status
    );
}
