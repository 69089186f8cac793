//! A RabbitMQ node of a test's own with only a TLS listener, its certificate signed by a
//! certificate authority made for the test (with `openssl`), stopped when dropped. Debian's
//! `rabbitmq-server` drops to the `rabbitmq` user, so the node's folders belong to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct TlsBroker {
    pub port: u16,
    /// The CA that signed the node's certificate.
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing the node shows.
    pub wrong_ca_file: PathBuf,
    node: String,
    _dir: tempfile::TempDir,
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

/// Makes in `dir` the test's CA (`ca.pem`), another CA that signed nothing the node shows
/// (`wrong-ca.pem`), and the node's key and certificate (`server.key`, `server.pem`), valid
/// for localhost, broker.gorgon.test and 127.0.0.1.
fn make_certificates(dir: &Path) {
    for (name, subject) in [("ca", "/CN=gorgon test CA"), ("wrong-ca", "/CN=another CA")] {
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(
            dir,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
                "-days", "2", "-subj", subject,
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,DNS:broker.gorgon.test,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
}

/// Writes the node's config (a plain listener on `node_port` for its own tools, TLS on
/// `port`) and folders into `dir`, and hands `dir` to the `rabbitmq` user.
fn prepare_node(dir: &Path, port: u16, node_port: u16) {
    std::fs::write(
        dir.join("rabbitmq.conf"),
        format!(
            "listeners.tcp.default = 127.0.0.1:{node_port}\nlisteners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.pem\nssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
    for folder in ["mnesia", "log"] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
    }
    run(Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(dir));
    run(Command::new("chmod").arg("755").arg(dir));
}

impl TlsBroker {
    pub fn start() -> TlsBroker {
        let dir = tempfile::Builder::new()
            .prefix("gorgon-tls-broker-")
            .tempdir()
            .unwrap();
        let path = dir.path();
        make_certificates(path);
        let port = super::free_port();
        let node_port = super::free_port();
        let dist_port = super::free_port();
        let node = format!("gorgontls{}@localhost", std::process::id());
        prepare_node(path, port, node_port);
        run(Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", node_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            ));
        let broker = TlsBroker {
            port,
            ca_file: path.join("ca.pem"),
            wrong_ca_file: path.join("wrong-ca.pem"),
            node,
            _dir: dir,
        };
        super::eventually(
            Duration::from_secs(60),
            format!("the TLS node to listen on {port}"),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        broker
    }

    /// The `connection` object of a config that reaches this node at 127.0.0.1 with
    /// `ca_file`, checking its certificate against `server_name` when given (the certificate
    /// is valid for localhost, broker.gorgon.test and 127.0.0.1).
    pub fn connection(&self, ca_file: &Path, server_name: Option<&str>) -> serde_json::Value {
        let mut tls = serde_json::json!({"ca_file": ca_file});
        if let Some(name) = server_name {
            tls["server_name"] = name.into();
        }
        serde_json::json!({"host": "127.0.0.1", "port": self.port, "tls": tls})
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
    }
}
