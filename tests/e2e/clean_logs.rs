//! Clean runs log cleanly: on a run where nothing went wrong, no process logs a warning, an
//! error or a raw dump of a message's bytes, and the report counts "1 file", not "1 files".

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, Cluster, Run};

const LIMIT: Duration = Duration::from_secs(120);

/// The lines of `log` a clean run must not have: a warning or an error (also one a listener
/// relays from its worker manager, or one printed to the user), or a dump of a message's
/// fields or bytes.
fn noise(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| {
            line.contains(" WARN ")
                || line.contains(" ERROR ")
                || line.contains("warning:")
                || line.contains("ShortString(")
                || line.contains("Delivery {")
                || has_byte_dump(line)
        })
        .collect()
}

/// True when `line` holds a list of eight or more small numbers, `[123, 34, 118, …`: how a
/// message's body looks when its bytes are printed.
fn has_byte_dump(line: &str) -> bool {
    line.split('[').skip(1).any(|list| {
        list.split(", ")
            .take(8)
            .filter(|item| !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit()))
            .count()
            == 8
    })
}

/// True when `text` counts "1 files" (not "11 files", nor a field such as `…751 files=1`).
fn says_one_files(text: &str) -> bool {
    text.match_indices("1 files").any(|(at, _)| {
        let before = text[..at].chars().next_back();
        !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !text[at..].starts_with("1 files=")
    })
}

#[test]
fn the_noise_finder_finds_warnings_errors_and_byte_dumps() {
    let log = "2026-12-07T04:59:21Z  INFO gorgon_listener: listening as a\n\
               2026-12-07T04:59:21Z  WARN io_loop: lapin::returned_messages: Server returned us a message\n\
               2026-12-07T04:59:21Z  INFO gorgon::manager: 2026-12-07T04:59:21Z ERROR lapin::channels: Connection error\n\
               data: [123, 34, 118, 101, 114, 115, 105, 111, 110]\n\
               gorgon: warning: the file server is anonymous\n\
               tests [1, 2] ran\n";
    assert_eq!(noise(log).len(), 4, "{:?}", noise(log));
    assert!(noise("INFO taking a job job=1 (3 of [4, 5] files)").is_empty());
    assert!(says_one_files("1 files: 1 passed") && says_one_files("Queued 1 files;"));
    assert!(!says_one_files("11 files: 11 passed") && !says_one_files("job=c751 files=1"));
}

/// Two listeners with the cluster's key and a file server with passwords (nothing here is
/// set up loosely enough to deserve a warning), every process at `GORGON_LOG=info` (the
/// listener's own level, and more than the originator's; before, that level showed the AMQP
/// client's dump of a returned announcement and its errors at each job's end): a run of
/// five files and a run of one leave no warning, error or byte dump in the listeners' logs
/// or the originator's output, and the one-file run's report says "1 file". (The AMQP
/// client's own lines stay off: with them on, it logs as an error every refusal gorgon-rs
/// expects and handles, such as a manager finding its job's queue already gone.)
#[test]
fn a_clean_run_logs_no_warning_error_or_byte_dump_and_counts_one_file() {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = Cluster::with_file_server_passwords("pushes-the-tree", "reads-it");
    let key = cluster.path().join("cluster.key");
    std::fs::write(&key, "the-key-of-a-quiet-cluster\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let info = [("GORGON_LOG", "info")];
    for name in ["quiet-a", "quiet-b"] {
        let config =
            json!({"signing_key_file": key, "file_server": {"listener_password": "reads-it"}});
        cluster.start_listener_with_env(name, 2, config, &info);
    }
    let secret = json!({"file_server": {"originator_password": "pushes-the-tree"}}).to_string();
    let five = cluster.project("quiet-five", json!({"signing_key_file": key}));
    five.write("gorgon_secret.json", &secret);
    for i in 0..5 {
        five.write(&format!("tests/{i:02}_test.sh"), "sleep 0.2\n");
    }
    let one = cluster.project("quiet-one", json!({"signing_key_file": key}));
    one.write("gorgon_secret.json", &secret);
    one.write("tests/only_test.sh", "exit 0\n");
    cluster.wait_for_listeners(&five, 2);
    let runs: Vec<Run> = [&five, &one]
        .into_iter()
        .map(|project| project.start_with_env(&[], &info, LIMIT))
        .collect();
    runs[0].assert_report(0, &["5 files: 5 passed, 0 failed, 0 crashed, 0 not run"]);
    runs[1].assert_report(0, &["1 file: 1 passed, 0 failed, 0 crashed, 0 not run"]);
    runs[1].assert_stderr(&["Queued 1 file;"]);
    for run in &runs {
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(!says_one_files(&said), "{run:?}");
        assert_eq!(noise(&said), Vec::<&str>::new(), "{run:?}");
    }
    // Both listeners took both jobs; their logs are complete once each logged both ends.
    for name in ["quiet-a", "quiet-b"] {
        let log = eventually(LIMIT, format!("{name} to finish both jobs"), || {
            let log = cluster.listener_log(name);
            if log.matches("job finished").count() >= 2 {
                Ok(log)
            } else {
                Err(log)
            }
        });
        assert_eq!(noise(&log), Vec::<&str>::new(), "{name}'s log:\n{log}");
    }
}
