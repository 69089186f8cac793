//! A three-node RabbitMQ cluster on loopback (`scripts/rabbitmq-cluster.sh`) with quorum
//! queues: a run goes on when the node that the originator is connected to stops, and when
//! the node of a listener's worker manager does, and ends with every file's one result.
//! Alone in its test binary, because it starts (and stops) a cluster of its own next to the
//! broker the other tests use: one test, both faults in turn on the same cluster.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{eventually, wait_for_file, Cluster, Project};

/// The script that starts and stops the cluster.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster.sh");
/// The AMQP ports of the three nodes (and, from 100 above, their distribution ports).
const BASE_PORT: u16 = 5761;

/// The cluster, stopped (and its folder removed) when dropped.
struct BrokerCluster {
    dir: PathBuf,
    nodes: Vec<String>,
    ports: Vec<u16>,
}

impl BrokerCluster {
    fn start() -> BrokerCluster {
        let dir = std::env::temp_dir().join(format!("gorgon-cluster-{}", std::process::id()));
        let output = Command::new("bash")
            .args([SCRIPT, "start"])
            .arg(&dir)
            .arg(BASE_PORT.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the cluster did not start: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let read = |name: &str| -> Vec<String> {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let ports = read("ports").iter().map(|p| p.parse().unwrap()).collect();
        BrokerCluster {
            nodes: read("nodes"),
            ports,
            dir,
        }
    }

    fn ctl(&self, node: usize, args: &[&str]) -> String {
        let output = Command::new("timeout")
            .args(["60", "rabbitmqctl", "-n", &self.nodes[node]])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} on {}: {}",
            self.nodes[node],
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The node whose AMQP port the connection named `name_start...` (its client's
    /// `connection_name`) is on; any node lists the whole cluster's connections.
    fn node_of(&self, name_start: &str) -> Option<usize> {
        let needle = format!("{{\"connection_name\",\"{name_start}");
        let listed = self.ctl(0, &["list_connections", "port", "client_properties", "-q"]);
        let port: u16 = listed
            .lines()
            .find(|line| line.contains(&needle))
            .and_then(|line| line.split('\t').next())
            .and_then(|port| port.trim().parse().ok())?;
        self.ports.iter().position(|p| *p == port)
    }

    /// `connection` for the cluster's three nodes with quorum queues.
    fn connection(&self) -> serde_json::Value {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        json!({"connection": {"hosts": hosts, "queue_type": "quorum"}})
    }
}

impl Drop for BrokerCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SCRIPT, "stop"])
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 60 files of 0.3 s, each recording its runs in `marks`.
fn suite(project: &Project, marks: &Path) {
    for i in 0..60 {
        project.write(
            &format!("tests/{i:02}_test.sh"),
            &format!(
                "echo {i} >> '{runs}'\ntouch '{marks}/{i}.started'\nsleep 0.3\n",
                runs = marks.join("runs.log").display(),
                marks = marks.display(),
            ),
        );
    }
}

/// A run of [`suite`] on two listeners of one slot (9 s of work, for `rabbitmqctl` takes a
/// second or two to find and stop the node) during which the node serving the
/// connection named `victim...` stops; it must end with exit 0 and each file's one result.
fn stop_the_node_of(brokers: &BrokerCluster, victim: &str) {
    let mut cluster = Cluster::new();
    cluster.start_listener_with("phoenix", 1, brokers.connection());
    cluster.start_listener_with("griffin", 1, brokers.connection());
    let project = cluster.project("cluster", brokers.connection());
    let marks = cluster.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    suite(&project, &marks);
    cluster.wait_for_listeners(&project, 2);
    let events = cluster.path().join("events.jsonl");
    let events_arg = format!("--events={}", events.display());
    let run = project.spawn_start(&[&events_arg], &[]);
    // The victim's connection, as soon as it exists (rabbitmqctl takes a second or two per
    // call, and the run only 9 s).
    let node = eventually(
        Duration::from_secs(30),
        format!("a connection named {victim:?}"),
        || brokers.node_of(victim),
    );
    wait_for_file(&marks.join("0.started"), Duration::from_secs(30));
    brokers.ctl(node, &["stop_app"]);
    let run = run.wait_explained(Duration::from_secs(120), || {
        format!(
            "phoenix's log:\n{}\ngriffin's log:\n{}",
            cluster.listener_log("phoenix"),
            cluster.listener_log("griffin")
        )
    });
    brokers.ctl(node, &["start_app"]);

    run.assert_report(0, &["60 files: 60 passed, 0 failed, 0 crashed, 0 not run"]);
    let mut finished: HashMap<String, usize> = HashMap::new();
    for line in std::fs::read_to_string(&events).unwrap().lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if event["event"] == "file_finished" {
            *finished
                .entry(event["file"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(finished.len(), 60, "{finished:?}");
    assert!(finished.values().all(|count| *count == 1), "{finished:?}");
    let runs = std::fs::read_to_string(marks.join("runs.log")).unwrap();
    let mut ran: HashMap<&str, usize> = HashMap::new();
    for line in runs.lines() {
        *ran.entry(line).or_default() += 1;
    }
    assert_eq!(ran.len(), 60, "every file ran: {ran:?}");
    let twice: Vec<_> = ran.iter().filter(|(_, count)| **count > 1).collect();
    println!(
        "stopping the node of {victim:?}: {} of 60 files ran twice ({twice:?})",
        twice.len()
    );
    cluster.assert_no_job_processes(Duration::from_secs(15));
}

#[test]
fn a_run_goes_on_when_the_broker_node_of_the_originator_or_of_a_listener_stops() {
    let brokers = BrokerCluster::start();
    stop_the_node_of(&brokers, "gorgon start");
    stop_the_node_of(&brokers, "gorgon worker manager of phoenix");
}
