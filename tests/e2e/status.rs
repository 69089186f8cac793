//! `gorgon status` in the middle of a run held on two listeners: each listener shows its busy
//! slots and the job it runs, the job its files left (waiting in its queue and running),
//! and `--json` parses with the same numbers; once files have finished, the work left is
//! timed and the hosts to finish it within `--within` counted; once the run is over, every
//! slot is free.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Cluster, Project};

const RUN_LIMIT: Duration = Duration::from_secs(120);
const FILES: usize = 10;

/// A test file that marks that it started, then waits for `release` (every file) or
/// `NAME.release` (this one) in `marks`.
fn held_test(marks: &Path, name: &str) -> String {
    format!(
        "touch '{marks}/{name}.started'\n\
         while [ ! -e '{marks}/release' ] && [ ! -e '{marks}/{name}.release' ]; do sleep 0.05; done\n",
        marks = marks.display(),
    )
}

/// Releases the files that have started so far; how many.
fn release_started(marks: &Path) -> usize {
    let started: Vec<String> = std::fs::read_dir(marks)
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".started").map(str::to_owned)
        })
        .collect();
    for name in &started {
        std::fs::write(marks.join(format!("{name}.release")), "").unwrap();
    }
    started.len()
}

/// `gorgon status --json --within 60`, parsed.
fn status_json(project: &Project) -> Result<Value, String> {
    let output = project.gorgon(&["status", "--json", "--within", "60", "--timeout", "1"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "{output:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_str(&stdout).map_err(|error| format!("{error}: {stdout}"))
}

/// The status once both listeners run two files of the job each, `done` have finished and
/// the files left are counted.
fn held_status(project: &Project, done: usize) -> Value {
    eventually(RUN_LIMIT, "both listeners to run two files each", || {
        let status = status_json(project)?;
        let listeners = status["listeners"].as_array().cloned().unwrap_or_default();
        let all_busy = listeners.len() == 2
            && listeners
                .iter()
                .all(|l| l["busy_slots"] == 2 && l["jobs"][0]["files_running"] == 2);
        let job = &status["jobs"][0];
        if all_busy && job["files_done"] == done && job["files_left"] == FILES - done {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
}

#[test]
fn status_shows_each_listeners_busy_slots_and_the_jobs_files_left() {
    let cluster = Cluster::with_listeners(&[("one", 2), ("two", 2)]);
    let project = cluster.project("status", json!({}));
    let marks = cluster.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    for i in 0..FILES {
        let name = format!("{i:02}");
        project.write(&format!("tests/{name}_test.sh"), &held_test(&marks, &name));
    }
    cluster.wait_for_listeners(&project, 2);
    let run = project.spawn_start(&[], &[]);

    let status = held_status(&project, 0);
    let names: Vec<&str> = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"], "{status:#}");
    for listener in status["listeners"].as_array().unwrap() {
        assert_eq!(listener["slots"], 2, "{status:#}");
        assert_eq!(listener["jobs"][0]["project"], "status", "{status:#}");
        assert_eq!(listener["jobs"][0]["running"], true, "{status:#}");
    }
    let job = &status["jobs"][0];
    assert_eq!(status["jobs"].as_array().unwrap().len(), 1, "{status:#}");
    assert_eq!(job["hosts"], json!(["one", "two"]), "{status:#}");
    assert_eq!(job["slots"], 4, "{status:#}");
    assert_eq!(job["files_running"], 4, "{status:#}");
    assert_eq!(job["files_waiting"], FILES - 4, "{status:#}");
    // No file has finished: there is nothing yet to time the work left by.
    assert_eq!(job["seconds_left"], Value::Null, "{status:#}");
    assert_eq!(job["within_seconds"], 60.0, "{status:#}");

    let text = project.gorgon(&["status", "--timeout", "1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    for said in [
        "one: gorgon-rs",
        "two: gorgon-rs",
        "2/2 slot(s) busy",
        "runs status for",
        "2 listener(s) of cluster",
        "4 of 4 slot(s) busy",
        &format!("{FILES} file(s) left"),
    ] {
        assert!(text.contains(said), "{said:?} in:\n{text}");
    }

    // Four files finish: the work left is timed by them.
    assert_eq!(release_started(&marks), 4);
    let status = held_status(&project, 4);
    let job = &status["jobs"][0];
    assert_eq!(job["files_waiting"], FILES - 8, "{status:#}");
    let per_file = job["seconds_per_file"]
        .as_f64()
        .expect("a mean time per file");
    let left = job["seconds_left"].as_f64().expect("the work left");
    assert!(
        (left - per_file * (FILES - 4) as f64).abs() < 1e-6,
        "{status:#}"
    );
    assert!(
        job["hosts_needed"].as_u64().is_some_and(|n| n >= 1),
        "{status:#}"
    );
    let text = project.gorgon(&["status", "--within", "60", "--timeout", "1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("host(s) would finish it within 60 s"),
        "{text}"
    );

    std::fs::write(marks.join("release"), "").unwrap();
    let run = run.wait(RUN_LIMIT);
    run.assert_exit(0);
    let after = eventually(RUN_LIMIT, "every slot to be free again", || {
        let status = status_json(&project)?;
        let idle = status["listeners"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|l| l["busy_slots"] == 0));
        if idle {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(after["jobs"], json!([]), "{after:#}");
}
