//! A RabbitMQ node of a test's own: fresh folders (it has never held a queue or a stream),
//! its own node name and ports, stopped when dropped. Debian's `rabbitmq-server` drops to the
//! `rabbitmq` user, so the node's folder is given to it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub struct RabbitNode {
    /// The port of its AMQP listener the test connects to (plain or TLS).
    pub port: u16,
    name: String,
    dir: tempfile::TempDir,
}

/// Runs `command`, failing the test if it fails.
pub fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A folder for a node's files (certificates, config), named after `prefix`.
pub fn node_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

impl RabbitNode {
    /// A node with only a plain AMQP listener on a free port of 127.0.0.1.
    pub fn start_plain(tag: &str) -> RabbitNode {
        let port = super::free_port();
        let config = format!("listeners.tcp.default = 127.0.0.1:{port}\n");
        RabbitNode::start(tag, node_dir("gorgon-broker-"), (port, port), &config)
    }

    /// Starts a node named after `tag` in `dir`, with `config` (`rabbitmq.conf`, which may
    /// name files in `dir`), and waits until it listens on `port`. `node_port` is its plain
    /// AMQP port (the config's plain listener, which its tools use too).
    pub fn start(
        tag: &str,
        dir: tempfile::TempDir,
        (node_port, port): (u16, u16),
        config: &str,
    ) -> RabbitNode {
        let path = dir.path();
        std::fs::write(path.join("rabbitmq.conf"), config).unwrap();
        std::fs::write(path.join("enabled_plugins"), "[].\n").unwrap();
        for folder in ["mnesia", "log"] {
            std::fs::create_dir_all(path.join(folder)).unwrap();
        }
        run(Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(path));
        run(Command::new("chmod").arg("755").arg(path));
        let name = format!("gorgon{tag}{}@localhost", std::process::id());
        run(Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_PORT", node_port.to_string())
            .env("RABBITMQ_DIST_PORT", super::free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            ));
        let node = RabbitNode { port, name, dir };
        super::eventually(
            Duration::from_secs(60),
            format!("the node {} to listen on {port}", node.name),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        node
    }

    /// The node's name, for `rabbitmqctl -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// What the node logged so far (its log folder's files), for a failing test to show.
    pub fn log(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.path().join("log"))
            .into_iter()
            .flatten()
            .flatten()
        {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
        text
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .output();
    }
}
