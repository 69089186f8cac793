//! A CI build on a RabbitMQ node that has never held a stream: the build's log is the node's
//! first stream, and a consume right after its declare may be refused while the stream
//! starts; the nodes and the reporter try again within `STREAM_START_LIMIT`.

use std::time::Duration;

use serde_json::json;

use crate::support::rabbit_node::RabbitNode;
use crate::support::{Cluster, Project, Started};

const LIMIT: Duration = Duration::from_secs(120);

/// A node of the test's own, fresh: a reporter and two nodes (`gorgon work --build-id`, each
/// in a checkout of its own) run the first build it sees, and it passes.
#[test]
fn the_first_ci_build_on_a_fresh_broker_passes() {
    let broker = RabbitNode::start_plain("fresh");
    let cluster = Cluster::new();
    let project = cluster.project(
        "fresh-build",
        json!({
            "connection": {"host": "127.0.0.1", "port": broker.port},
            "job": {"listener_wait": 10},
        }),
    );
    for i in 0..6 {
        project.write(&format!("tests/{i:02}_test.sh"), "sleep 0.1\n");
    }
    let copy = Project {
        dir: cluster.path().join("projects").join("fresh-build-copy"),
    };
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(&project.dir)
        .arg(&copy.dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let build = format!("fresh-{}", uuid::Uuid::new_v4());
    // The reporter first: its consume is the first the node sees, right after the declare.
    let report = project.spawn_gorgon("report", &["--build-id", &build], &[]);
    let nodes: Vec<Started> = [(&project, "one"), (&copy, "two")]
        .into_iter()
        .map(|(checkout, name)| {
            checkout.spawn_gorgon(
                "work",
                &["--build-id", &build, "--worker-id", name, "-j", "2"],
                &[],
            )
        })
        .collect();
    for node in nodes {
        let node = node.wait_explained(LIMIT, || broker.log());
        assert_eq!(node.code, 0, "{node:?}\nbroker log:\n{}", broker.log());
    }
    let report = report.wait_explained(LIMIT, || broker.log());
    assert_eq!(report.code, 0, "{report:?}\nbroker log:\n{}", broker.log());
    report.assert_stdout(&["6 files: 6 passed, 0 failed, 0 crashed, 0 not run"]);
}
