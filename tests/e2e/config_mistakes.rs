//! Mistakes in a project or a listener's config are loud: an unknown key is a warning that
//! names the nearest known one (an error, exit 3, where a mistake could leave the cluster
//! unguarded), a value of the wrong type names its key, a listed file that is not there or
//! whose name is not UTF-8 is named, `listen --check` looks at the workspace root and the
//! slots, and a link out of the project is refused at the push.

use std::path::Path;
use std::time::Duration;

use crate::support::{broker_host, broker_port, recorded_runs, recording_test, Cluster, Project};
use serde_json::json;

const QUICK: Duration = Duration::from_secs(30);
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// A project in a folder of its own with `config` as its `gorgon.json` and one passing test.
fn project(config: serde_json::Value) -> (tempfile::TempDir, Project) {
    crate::config_errors::project(&config.to_string())
}

/// A config for `gorgon start --local` with `extra` merged at the top.
fn local_config(extra: serde_json::Value) -> serde_json::Value {
    let mut config = json!({
        "files": ["tests/*_test.sh"],
        "job": {"runner": {"command": "sh {file}"}},
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    config
}

/// The one line of `stderr` that is not empty: it starts with `gorgon: ` and says each of
/// `said`.
#[track_caller]
fn assert_one_sentence(stderr: &str, said: &[&str]) {
    for said in said {
        crate::config_errors::assert_one_sentence(stderr, said);
    }
}

#[test]
fn a_typo_outside_the_guarded_keys_is_a_warning_with_the_nearest_key_and_the_run_goes_on() {
    let (_dir, project) = project(local_config(json!({
        "junit_fil": "junit.xml",
        "job": {"retires": 1, "runner": {"command": "sh {file}"}},
    })));

    let run = project.start(&["--local", "-j", "1"], QUICK);

    run.assert_exit(0);
    let config = project.dir.join("gorgon.json");
    run.assert_stderr(&[
        &format!(
            "gorgon: warning: {}: unknown key junit_fil (did you mean junit_file?); ignored",
            config.display()
        ),
        "unknown key job.retires (did you mean job.retries?); ignored",
    ]);
    assert!(!project.dir.join("junit.xml").exists());
}

#[test]
fn a_typo_among_the_keys_that_decide_trust_is_refused_with_exit_3() {
    let cases = [
        (
            json!({"signing_key_fil": "cluster.key"}),
            "unknown key signing_key_fil (did you mean signing_key_file?)",
        ),
        (
            json!({"connection": {"host": broker_host(), "port": broker_port(), "tsl": true}}),
            "unknown key connection.tsl (did you mean connection.tls?)",
        ),
        (
            json!({"file_server": {"host": "127.0.0.1", "originator_pasword": "p"}}),
            "unknown key file_server.originator_pasword (did you mean file_server.originator_password?)",
        ),
    ];
    for (extra, said) in cases {
        let (_dir, project) = project(local_config(extra));
        // Refused whether or not the run needs what the key is among.
        for args in [&[][..], &["--local"]] {
            let run = project.start(args, QUICK);
            run.assert_exit(3);
            assert_one_sentence(
                &run.stderr,
                &[said, "could leave the cluster unguarded", "gorgon.json"],
            );
        }
        let ping = project.gorgon(&["ping", "--timeout", "0.5"]);
        assert_eq!(ping.status.code(), Some(3), "{ping:?}");
        assert!(
            String::from_utf8_lossy(&ping.stderr).contains(said),
            "{ping:?}"
        );
    }
    // The same in a listener's config, for `listen` and `listen --check`.
    let dir = tempfile::tempdir().unwrap();
    let config = write_listener_config(dir.path(), json!({"signing_key_fil": "cluster.key"}));
    for command in [&["listen"][..], &["listen", "--check"]] {
        let (code, _, stderr) = gorgon_with_config(command, &config);
        assert_eq!(code, 3, "{stderr}");
        assert_one_sentence(
            &stderr,
            &["unknown key signing_key_fil (did you mean signing_key_file?)"],
        );
    }
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let (_dir, project) = project(local_config(json!({"files": "tests/*_test.sh"})));

    let run = project.start(&["--local"], QUICK);

    run.assert_exit(3);
    assert_one_sentence(
        &run.stderr,
        &["gorgon.json: files: invalid type: string \"tests/*_test.sh\", expected a sequence"],
    );
}

#[test]
fn a_listed_file_that_does_not_exist_is_refused_naming_it() {
    let (_dir, project) = project(local_config(json!({
        "files": ["tests/a_test.sh", "tests/gone_test.sh", "spec/*_spec.rb"],
    })));

    let run = project.start(&["--local"], QUICK);

    run.assert_exit(3);
    assert_one_sentence(
        &run.stderr,
        &["tests/gone_test.sh is listed in the configuration but is not a file in the project"],
    );
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn a_file_whose_name_is_not_utf8_is_reported_not_dropped() {
    use std::os::unix::ffi::OsStrExt;
    let (_dir, project) = project(local_config(json!({})));
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9_test.sh");
    std::fs::write(project.dir.join("tests").join(odd), "exit 1\n").unwrap();

    let run = project.start(&["--local"], QUICK);

    run.assert_exit(3);
    assert_one_sentence(
        &run.stderr,
        &["tests/caf\u{fffd}_test.sh has a path that is not UTF-8"],
    );

    // Named on the command line, it is a command line that does not parse (exit 2).
    let named = std::process::Command::new(crate::support::GORGON)
        .args(["start", "--local"])
        .arg(Path::new("tests").join(odd))
        .current_dir(&project.dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&named.stderr);
    assert_eq!(named.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tests/caf\u{fffd}_test.sh has a name that is not UTF-8"),
        "{stderr}"
    );
}

/// Writes a listener config for the test broker, with `extra` merged at the top, into
/// `dir`.
fn write_listener_config(dir: &Path, extra: serde_json::Value) -> std::path::PathBuf {
    let mut config = json!({
        "connection": {"host": broker_host(), "port": broker_port()},
        "worker_slots": 2,
        "cluster_id": format!("test-{}", uuid::Uuid::new_v4().simple()),
        "workspace_root": dir.join("workspaces"),
        // The tests run as root on machines that are thrown away.
        "allow_root": true,
    });
    for (key, value) in extra.as_object().unwrap() {
        config[key] = value.clone();
    }
    let path = dir.join("gorgon_listener.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// `gorgon COMMAND... --config CONFIG`, bounded: the exit code, stdout and stderr.
fn gorgon_with_config(command: &[&str], config: &Path) -> (i32, String, String) {
    let project = Project {
        dir: config.parent().unwrap().to_owned(),
    };
    let mut args = command.to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let run = project.spawn_gorgon(args[0], &args[1..], &[]).wait(QUICK);
    (run.code, run.stdout, run.stderr)
}

#[test]
fn listen_check_refuses_a_workspace_root_it_cannot_use_and_absurd_slots() {
    let dir = tempfile::tempdir().unwrap();
    let fine = write_listener_config(dir.path(), json!({}));
    let (code, stdout, stderr) = gorgon_with_config(&["listen", "--check"], &fine);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("is fine"), "{stdout}");

    let cases = [
        (
            json!({"workspace_root": "/proc/nope"}),
            "workspace_root /proc/nope does not exist and cannot be made: /proc does not take new folders from this user",
        ),
        (
            json!({"worker_slots": 100000}),
            "worker_slots is 100000, more than the 1024 a listener takes",
        ),
    ];
    for (extra, said) in cases {
        let config = write_listener_config(dir.path(), extra);
        let (code, stdout, stderr) = gorgon_with_config(&["listen", "--check"], &config);
        assert_eq!(code, 3, "{stdout}{stderr}");
        assert_one_sentence(&stderr, &[said, "gorgon_listener.json"]);
    }
}

#[test]
fn a_link_out_of_the_project_is_refused_at_the_push_and_one_inside_runs() {
    let cluster = Cluster::with_listeners(&[("solo", 1)]);
    let project = cluster.project("links", json!({}));
    let record = cluster.path().join("record");
    std::fs::create_dir_all(&record).unwrap();
    project.write(
        "lib/shared_check.sh",
        &recording_test(&record, "lib/shared_check.sh", false),
    );
    project.write("tests/a_test.sh", "exit 0\n");
    std::os::unix::fs::symlink("/etc/shadow", project.dir.join("tests/x_test.sh")).unwrap();
    cluster.wait_for_listeners(&project, 1);

    let run = project.start(&[], RUN_LIMIT);

    run.assert_exit(3);
    run.assert_stderr(&[
        "refusing to push the symbolic link tests/x_test.sh -> /etc/shadow, which leads out of the project",
    ]);
    // Refused before anything left this machine.
    let served = cluster.path().join("file_server");
    assert_eq!(std::fs::read_dir(&served).unwrap().count(), 0, "{run:?}");
    assert!(recorded_runs(&record).is_empty());

    std::fs::remove_file(project.dir.join("tests/x_test.sh")).unwrap();
    std::os::unix::fs::symlink(
        "../lib/shared_check.sh",
        project.dir.join("tests/y_test.sh"),
    )
    .unwrap();

    let run = project.start(&[], RUN_LIMIT);

    run.assert_exit(0);
    assert_eq!(
        recorded_runs(&record).len(),
        1,
        "the linked test ran once: {run:?}"
    );
}
