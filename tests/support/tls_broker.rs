//! A RabbitMQ node of a test's own with only a TLS listener, its certificate signed by a
//! certificate authority made for the test (with `openssl`), stopped when dropped (a
//! [`RabbitNode`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::rabbit_node::{node_dir, run, RabbitNode};

pub struct TlsBroker {
    pub port: u16,
    /// The CA that signed the node's certificate.
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing the node shows.
    pub wrong_ca_file: PathBuf,
    _node: RabbitNode,
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

/// The node's config: a plain listener on `node_port` for its own tools, TLS on `port` with
/// the certificates in `dir`.
fn node_config(dir: &Path, port: u16, node_port: u16) -> String {
    format!(
        "listeners.tcp.default = 127.0.0.1:{node_port}\nlisteners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {d}/ca.pem\nssl_options.certfile = {d}/server.pem\nssl_options.keyfile = {d}/server.key\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
        d = dir.display()
    )
}

impl TlsBroker {
    pub fn start() -> TlsBroker {
        let dir = node_dir("gorgon-tls-broker-");
        let path = dir.path().to_owned();
        make_certificates(&path);
        let port = super::free_port();
        let node_port = super::free_port();
        let config = node_config(&path, port, node_port);
        TlsBroker {
            port,
            ca_file: path.join("ca.pem"),
            wrong_ca_file: path.join("wrong-ca.pem"),
            _node: RabbitNode::start("tls", dir, (node_port, port), &config),
        }
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
