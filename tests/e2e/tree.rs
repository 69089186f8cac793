//! The tree is part of what is signed: a listener runs nothing of a tree that someone
//! changed on the file server between the push and the pull, and says which files
//! (`docs/security.md`, "The file server is untrusted storage").

use std::time::Duration;

use serde_json::json;

use crate::support::tamper::Tamperer;
use crate::support::Cluster;
use crate::trust::{key_file, signing_with};

const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_tree_changed_on_the_file_server_is_refused_before_any_of_it_runs() {
    let mut cluster = Cluster::new();
    let key = key_file(&cluster, "cluster.key", "the-key-of-a-tree-test");
    cluster.start_listener_with("guarded", 2, json!({"signing_key_file": key}));
    let synced = cluster.path().join("after_sync.ran");
    let mut config = signing_with(&key);
    config["job"] = json!({"callbacks": {"after_sync": format!("touch '{}'", synced.display())}});
    let project = cluster.project("tampered", config);
    project.write("tests/a_test.sh", "exit 0\n");
    project.write("tests/b_test.sh", "exit 0\n");
    cluster.wait_for_listeners(&project, 1);
    // The first run pushes the tree, which then sits on the file server.
    project.start(&[], RUN_LIMIT).assert_exit(0);
    assert!(synced.exists(), "after_sync did not run on a clean tree");
    std::fs::remove_file(&synced).unwrap();

    let owned = cluster.path().join("owned");
    let evil = format!("touch '{}'; exit 0\n", owned.display());
    let served = cluster.path().join("file_server");
    let tamperer = Tamperer::start(&served, "_tampered", "tests/a_test.sh", evil);
    let run = project.start(&[], RUN_LIMIT);
    let writes = tamperer.stop();
    assert!(writes >= 1, "the tamperer never changed the tree");
    assert_ne!(run.code, 0, "{}", run.stdout);
    run.assert_output(&[
        "guarded refused the source tree it pulled",
        "lib/evil.sh (added)",
        "tests/a_test.sh (changed)",
    ]);
    assert!(!owned.exists(), "the tampered test ran");
    assert!(!synced.exists(), "after_sync ran on a tampered tree");
    let log = cluster.listener_log("guarded");
    assert!(log.contains("refusing the pulled tree"), "{log}");
    // Nothing of the refused tree stays in a workspace; the next clean run passes.
    assert!(cluster
        .workspaces("guarded")
        .iter()
        .all(|w| !w.join("lib/evil.sh").exists()));
    project.start(&[], RUN_LIMIT).assert_exit(0);
    assert!(!owned.exists(), "the tampered test ran");
}

/// A warm workspace that holds the job's sealed tree already is not pulled again (an
/// unchanged tree costs a far host no round trip to the file server); once the project
/// changed, it is pulled, and what runs is the new tree.
#[test]
fn an_unchanged_tree_is_not_pulled_again_and_a_changed_one_is() {
    let mut cluster = Cluster::new();
    cluster.start_listener("warm", 2);
    // The runtime file and the failed files list stay out of the tree, which is then the
    // same for each run.
    let (runtime, failed) = (
        cluster.path().join("rt.json"),
        cluster.path().join("f.json"),
    );
    let outside = json!({"runtime_file": runtime, "failed_files": failed});
    let project = cluster.project("unchanged", outside);
    project.write("tests/a_test.sh", "exit 0\n");
    cluster.wait_for_listeners(&project, 1);
    project.start(&[], RUN_LIMIT).assert_exit(0);
    project.start(&[], RUN_LIMIT).assert_exit(0);
    let log = cluster.listener_log("warm");
    assert_eq!(log.matches("pulling the tree").count(), 1, "{log}");
    assert_eq!(
        log.matches("sealed tree already: no pull").count(),
        1,
        "{log}"
    );
    project.write("tests/a_test.sh", "exit 1\n");
    project.start(&[], RUN_LIMIT).assert_exit(1);
    let log = cluster.listener_log("warm");
    assert_eq!(log.matches("pulling the tree").count(), 2, "{log}");
}

#[test]
fn a_signing_config_refuses_an_anonymous_file_server_unless_it_says_so() {
    let mut cluster = Cluster::new();
    let key = key_file(&cluster, "cluster.key", "the-key-of-an-anonymous-test");
    cluster.start_listener_with("guarded", 1, json!({"signing_key_file": key}));
    let project = cluster.project("anonymous", json!({"signing_key_file": key}));
    project.write("tests/a_test.sh", "exit 0\n");
    let run = project.start(&[], RUN_LIMIT);
    run.assert_exit(3);
    run.assert_stderr(&[
        "names no file_server.originator_password",
        "\"file_server\": {\"anonymous\": true}",
    ]);
    let accepted = cluster.project("accepted", signing_with(&key));
    accepted.write("tests/a_test.sh", "exit 0\n");
    cluster.wait_for_listeners(&accepted, 1);
    accepted.start(&[], RUN_LIMIT).assert_exit(0);
}
