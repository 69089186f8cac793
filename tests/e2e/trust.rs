//! Signed messages end to end: a listener with the cluster's key acts only on jobs signed
//! with a key it holds, and an originator with the key counts only replies signed with one
//! (`docs/security.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use gorgon_exec::tree;
use gorgon_protocol::signing::{SigningKeys, Trust};
use gorgon_protocol::{names, Broker, BrokerSettings, Envelope, JobDefinition, Message, TreeSeal};
use serde_json::json;

use crate::support::{
    eventually, eventually_async, job_id_from_events, wait_for_file, Cluster, Project,
};

const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Writes `key` to a file readable by its owner only, outside every project tree.
pub fn key_file(cluster: &Cluster, name: &str, key: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = cluster.path().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn signed(key: &str) -> BrokerSettings {
    BrokerSettings {
        signing: Some(SigningKeys {
            current: key.into(),
            previous: None,
        }),
        ..BrokerSettings::for_tests()
    }
}

/// Waits until every one of `needles` is in listener `name`'s log.
fn wait_for_log(cluster: &Cluster, name: &str, needles: &[&str], limit: Duration) -> String {
    let what = format!("{needles:?} all in the log of {name}");
    eventually(limit, what, || {
        let log = cluster.listener_log(name);
        if needles.iter().all(|needle| log.contains(needle)) {
            Ok(log)
        } else {
            Err(log)
        }
    })
}

/// Jobs crafted by hand for a guarded listener: each runs the pushed tree `source` and
/// touches its marker in `markers` after the sync, so that a test sees which ran.
struct Crafted {
    source: String,
    markers: PathBuf,
    replies: String,
    jobs: String,
    /// The cluster's key.
    trust: Trust,
    /// The seal of the tree at `source`, which a listener with keys requires.
    seal: TreeSeal,
}

/// The seal of the tree pushed to `source`, from the manifest pushed with it.
fn seal_of_pushed(source: &str, scratch: &Path) -> TreeSeal {
    let copy = scratch.join(tree::MANIFEST_NAME);
    let status = std::process::Command::new("rsync")
        .arg(format!("{source}{}", tree::MANIFEST_NAME))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "rsync could not fetch the pushed manifest"
    );
    let bytes = std::fs::read(&copy).unwrap();
    let manifest = tree::Manifest::from_bytes(&bytes).unwrap();
    TreeSeal {
        digest: tree::digest_hex(&bytes),
        entries: manifest.entries.len() as u64,
    }
}

impl Crafted {
    /// A job that touches `marker`: its id and its bytes.
    fn job(&self, marker: &str) -> (uuid::Uuid, Vec<u8>) {
        let mut definition =
            JobDefinition::with_command(&self.source, "sh {file}", Default::default());
        definition.sync.tree = Some(self.seal.clone());
        definition.callbacks.after_sync =
            Some(format!("touch {}", self.markers.join(marker).display()));
        let id = uuid::Uuid::new_v4();
        let message = Message::Job {
            definition: Box::new(definition),
            reply_to: self.replies.clone(),
        };
        (id, Envelope::new(id, message).encode())
    }

    /// Publishes a job the listener must refuse for each reason there is: unsigned, signed
    /// with a key it does not hold, changed after signing, signed ten minutes ago.
    async fn publish_refused_jobs(&self, unsigned: &Broker) {
        let jobs = &self.jobs;
        let (_, bytes) = self.job("unsigned");
        unsigned.publish_bytes(jobs, "", &bytes).await.unwrap();

        let stranger = Broker::connect(&signed(OTHER_KEY), "stranger")
            .await
            .unwrap();
        let (_, bytes) = self.job("wrong-key");
        let foreign = Trust::new(&SigningKeys {
            current: OTHER_KEY.into(),
            previous: None,
        })
        .sign(&bytes);
        stranger
            .publish_bytes_signed(jobs, "", &bytes, Some(&foreign))
            .await
            .unwrap();
        stranger.close().await;

        let (_, bytes) = self.job("tampered");
        let signature = self.trust.sign(&bytes);
        let tampered = String::from_utf8(bytes)
            .unwrap()
            .replace("touch ", "touch /tmp/x ");
        unsigned
            .publish_bytes_signed(jobs, "", tampered.as_bytes(), Some(&signature))
            .await
            .unwrap();

        let (_, bytes) = self.job("stale");
        let ten_minutes_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 600_000;
        let old = self.trust.sign_at(&bytes, ten_minutes_ago);
        unsigned
            .publish_bytes_signed(jobs, "", &bytes, Some(&old))
            .await
            .unwrap();
    }

    /// A valid job runs; the same bytes and signature again do not.
    async fn publish_a_valid_job_and_its_replay(&self, cluster: &Cluster, unsigned: &Broker) {
        let (id, bytes) = self.job("valid");
        // A running job has a control exchange; without one the listener takes it as over.
        unsigned
            .declare_fanout(&names::control_exchange(id))
            .await
            .unwrap();
        let signature = self.trust.sign(&bytes);
        unsigned
            .publish_bytes_signed(&self.jobs, "", &bytes, Some(&signature))
            .await
            .unwrap();
        let valid = self.markers.join("valid");
        eventually_async(Duration::from_secs(30), "the valid job to run", || {
            if valid.exists() {
                Ok(())
            } else {
                Err(cluster.listener_log("guarded"))
            }
        })
        .await;
        wait_for_log(
            cluster,
            "guarded",
            &[&format!("job={id}")],
            Duration::from_secs(10),
        );
        std::fs::remove_file(&valid).unwrap();
        unsigned
            .publish_bytes_signed(&self.jobs, "", &bytes, Some(&signature))
            .await
            .unwrap();
        wait_for_log(
            cluster,
            "guarded",
            &["ignoring a job already taken (sent twice, or replayed)"],
            Duration::from_secs(10),
        );
    }
}

const KEY: &str = "the-cluster-key-of-this-test";

/// A project's config that signs with `key` and pushes to the test's anonymous file server
/// (which a signing config must accept in so many words).
pub fn signing_with(key: &Path) -> serde_json::Value {
    json!({"signing_key_file": key, "file_server": {"anonymous": true}})
}

/// A cluster with the `(name, slots)` listener holding [`KEY`], and a project `project`
/// signing with it.
fn signed_cluster(listener: (&str, u32), project: &str) -> (Cluster, Project) {
    let mut cluster = Cluster::new();
    let key = key_file(&cluster, "cluster.key", KEY);
    let (name, slots) = listener;
    cluster.start_listener_with(name, slots, json!({"signing_key_file": key}));
    let project = cluster.project(project, signing_with(&key));
    (cluster, project)
}
const OTHER_KEY: &str = "a-key-nobody-here-holds";

#[test]
fn a_listener_with_a_key_acts_only_on_jobs_signed_with_it() {
    let (cluster, project) = signed_cluster(("guarded", 2), "signed");
    project.write("tests/a_test.sh", "exit 0\n");
    // A signed run works, and leaves a pushed tree that crafted jobs can name.
    let run = project.start(&[], RUN_LIMIT);
    run.assert_exit(0);
    let log = cluster.listener_log("guarded");
    let source = log
        .split("source=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the listener logged the tree it pulled")
        .to_owned();

    let markers = cluster.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let unsigned = Broker::connect(&BrokerSettings::for_tests(), "unsigned")
            .await
            .unwrap();
        let crafted = Crafted {
            seal: seal_of_pushed(&source, &markers),
            source,
            markers: markers.clone(),
            // Where the listener answers the crafted jobs: a job whose originator is gone
            // is dropped.
            replies: unsigned.declare_private_queue().await.unwrap(),
            jobs: names::jobs_exchange(&cluster.id),
            trust: Trust::new(&SigningKeys {
                current: KEY.into(),
                previous: None,
            }),
        };
        crafted.publish_refused_jobs(&unsigned).await;
        crafted
            .publish_a_valid_job_and_its_replay(&cluster, &unsigned)
            .await;
        unsigned.close().await;
    });
    let log = wait_for_log(
        &cluster,
        "guarded",
        &[
            "refusing a message: it is not signed",
            "which this process does not hold",
            "its signature does not match its contents",
            "a job signed 600 s ago is refused as a replay",
        ],
        Duration::from_secs(10),
    );
    for marker in ["unsigned", "wrong-key", "tampered", "stale", "valid"] {
        assert!(!markers.join(marker).exists(), "{marker} ran: {log}");
    }
    // The listener still runs signed jobs.
    let again = project.start(&[], RUN_LIMIT);
    again.assert_exit(0);
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

#[test]
fn a_forged_result_does_not_change_a_signed_run() {
    let (cluster, project) = signed_cluster(("honest", 1), "forged");
    let started = cluster.path().join("failing.started");
    project.write(
        "tests/failing_test.sh",
        &format!(
            "touch {}\nsleep 2\necho 'really fails'\nexit 1\n",
            started.display()
        ),
    );
    let events = cluster.path().join("forged.events");
    let run = project.spawn_start(&["--events", &events.display().to_string()], &[]);
    wait_for_file(&started, Duration::from_secs(30));
    let job_id = job_id_from_events(&events);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let forger = Broker::connect(&BrokerSettings::for_tests(), "forger")
            .await
            .unwrap();
        let forged = Envelope::new(
            job_id,
            Message::FileFinished(gorgon_protocol::FileResult {
                host: "honest".into(),
                worker_id: 1,
                file: "tests/failing_test.sh".into(),
                status: gorgon_protocol::FileStatus::Passed,
                seconds: 0.1,
                exit: "exit status 0".into(),
                output: String::new(),
                tests: Vec::new(),
                impact: None,
            }),
        );
        forger
            .send_to_queue(&names::reply_queue(job_id), &forged)
            .await
            .unwrap();
        forger.close().await;
    });
    let run = run.wait(RUN_LIMIT);
    run.assert_report(1, &["1 file: 0 passed, 1 failed", "really fails"]);
}

#[test]
fn keys_rotate_without_a_stop_and_a_removed_key_is_refused() {
    let mut cluster = Cluster::new();
    let old = key_file(&cluster, "old.key", "the-old-cluster-key");
    let new = key_file(&cluster, "new.key", "the-new-cluster-key");
    let listener = |current: &Path, previous: Option<&Path>| match previous {
        Some(previous) => {
            json!({"signing_key_file": current, "previous_signing_key_file": previous})
        }
        None => json!({"signing_key_file": current}),
    };
    // During the rotation every process accepts both keys.
    cluster.start_listener_with("rotating", 1, listener(&new, Some(&old)));
    let by_old = cluster.project(
        "by-old",
        json!({"signing_key_file": old, "previous_signing_key_file": new, "job": {"listener_wait": 5}, "file_server": {"anonymous": true}}),
    );
    by_old.write("tests/a_test.sh", "exit 0\n");
    let by_new = cluster.project(
        "by-new",
        json!({"signing_key_file": new, "previous_signing_key_file": old, "file_server": {"anonymous": true}}),
    );
    by_new.write("tests/a_test.sh", "exit 0\n");
    for project in [&by_old, &by_new] {
        let run = project.start(&[], RUN_LIMIT);
        run.assert_exit(0);
    }
    // The old key removed from the listener: a job signed with it is refused.
    cluster.kill_listener("rotating");
    cluster.start_listener_with("rotating", 1, listener(&new, None));
    let run = by_old.start(&[], RUN_LIMIT);
    assert_ne!(run.code, 0, "{run:?}");
    wait_for_log(
        &cluster,
        "rotating",
        &["which this process does not hold"],
        Duration::from_secs(10),
    );
    let run = by_new.start(&[], RUN_LIMIT);
    run.assert_exit(0);
}

#[test]
fn a_file_server_with_passwords_serves_a_run_whose_originator_and_listeners_name_theirs() {
    let mut cluster = Cluster::with_file_server_passwords("pushes-the-tree", "only-reads-it");
    cluster.start_listener_with(
        "reader",
        2,
        json!({"file_server": {"listener_password": "only-reads-it"}}),
    );
    let project = cluster.project("guarded-tree", json!({}));
    project.write("tests/a_test.sh", "exit 0\n");
    project.write("tests/b_test.sh", "exit 1\n");
    // Without the originator's password the push is refused (a sync failure, exit 2),
    // without waiting for a password on a terminal.
    let refused = project.start(&[], RUN_LIMIT);
    refused.assert_exit(2);
    refused.assert_stderr(&["pushing the source tree to the file server failed"]);
    project.write(
        "gorgon_secret.json",
        &json!({"file_server": {"originator_password": "pushes-the-tree"}}).to_string(),
    );
    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(1, &["2 files: 1 passed, 1 failed"]);
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

/// A RabbitMQ node of the test's own with a TLS listener and a CA made for the test: a full
/// run over `amqps` passes, with the certificate checked against the host connected to or
/// against `server_name`; a CA that did not sign the broker's certificate, or a server name
/// the certificate is not valid for, is one clear error and exit 3.
#[test]
fn a_run_over_tls_passes_and_a_wrong_ca_or_name_is_a_clear_error() {
    let broker = crate::support::tls_broker::TlsBroker::start();
    let mut cluster = Cluster::new();
    // The listener names the broker by an amqps URL, the originator by host and port.
    let url = format!("amqps://guest:guest@127.0.0.1:{}/", broker.port);
    cluster.start_listener_with(
        "secure",
        2,
        json!({"connection": {"url": url, "tls": {"ca_file": broker.ca_file}}}),
    );
    let project = cluster.project(
        "over-tls",
        json!({"connection": broker.connection(&broker.ca_file, Some("broker.gorgon.test"))}),
    );
    project.write("tests/a_test.sh", "exit 0\n");
    project.write("tests/b_test.sh", "exit 0\n");
    let run = project.start(&[], RUN_LIMIT);
    run.assert_report(0, &["2 files: 2 passed"]);

    for (name, connection, reason) in [
        (
            "wrong-ca",
            broker.connection(&broker.wrong_ca_file, None),
            "certificate",
        ),
        (
            "wrong-name",
            broker.connection(&broker.ca_file, Some("elsewhere.gorgon.test")),
            "not valid for name",
        ),
    ] {
        let wrong = cluster.project(name, json!({ "connection": connection }));
        wrong.write("tests/a_test.sh", "exit 0\n");
        let run = wrong.start(&[], RUN_LIMIT);
        assert_eq!(run.code, 3, "{name}: {run:?}");
        assert!(
            run.stderr.contains(&format!(
                "cannot connect to RabbitMQ at 127.0.0.1:{}",
                broker.port
            )),
            "{name}: {run:?}"
        );
        assert!(run.stderr.contains("over TLS"), "{name}: {run:?}");
        assert!(run.stderr.contains(reason), "{name}: {run:?}");
    }
    cluster.assert_no_job_processes(Duration::from_secs(15));
}
