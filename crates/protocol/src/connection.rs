//! Where the broker is and how to log in to it: the `connection` object of Gorgon's config
//! files, as plain data that the config readers, the job's stdin and the broker client share.

use serde::{Deserialize, Serialize};

/// Where the broker is, as in the `connection` object of Gorgon's config files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerSettings {
    #[serde(alias = "hostname")]
    pub host: String,
    pub port: u16,
    #[serde(alias = "user")]
    pub username: String,
    #[serde(alias = "pass", alias = "pwd")]
    pub password: String,
    #[serde(alias = "virtual_host")]
    pub vhost: String,
    /// The cluster's signing keys, when it has them (`signing_key`, `signing_key_file` and,
    /// on listeners, `previous_signing_key[_file]` at the top of the config files; see
    /// `docs/security.md`): every message published is signed, and only signed ones are
    /// accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<crate::signing::SigningKeys>,
    /// Connect over TLS (`amqps`), checking the broker's certificate against `ca_file`
    /// (or the system's roots), with a client certificate when `cert_file` and `key_file`
    /// are set. Gorgon's `"tls": true` (or `"ssl": true`) turns it on with the system's roots.
    #[serde(
        default,
        alias = "ssl",
        deserialize_with = "tls_or_flag",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls: Option<TlsSettings>,
    /// Gorgon's (Bunny's) TLS file keys, folded into `tls` by [`BrokerSettings::resolve_url`].
    #[serde(flatten, skip_serializing)]
    pub gorgon_tls: GorgonTlsKeys,
    /// `amqp://` or `amqps://user:password@host:port/vhost`, in place of the other keys
    /// ([`BrokerSettings::resolve_url`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Several nodes of one RabbitMQ cluster (`connection.hosts`, each `HOST` or
    /// `HOST:PORT`, the port defaulting to `port`), in place of `host`: a process connects
    /// to one of them, beginning at a random one so that the load spreads, and tries the
    /// others when it cannot reach it (at the start and when it reconnects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Seconds of the AMQP heartbeat asked of the broker (`connection.heartbeat`, default
    /// [`DEFAULT_HEARTBEAT`]): a process that stops answering (frozen, partitioned) loses its
    /// connection after about twice this, and its unacknowledged files go back to the queue.
    pub heartbeat: u16,
    /// What the job's queues are on the broker (`connection.queue_type`): durable classic
    /// queues with persistent messages, which a restart of a single broker keeps, or quorum
    /// queues, replicated over a cluster's nodes, which a node's loss keeps.
    pub queue_type: QueueType,
    /// Seconds a process goes on trying to reconnect after losing the broker mid-run
    /// (`connection.outage_limit`, default [`DEFAULT_OUTAGE_LIMIT`]): within it a run
    /// resumes where it was; past it, it stops, naming the broker and what did not run.
    pub outage_limit: u64,
}

/// A `connection` object whose keys cannot be used. Each message is the second half of a
/// sentence that starts with the config file's path.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection.tls_ca_certificates names more than one file; put the certificates in one PEM file and name it as connection.tls.ca_file")]
    SeveralCaFiles,
    #[error("connection.hosts has {0:?}; give each node as \"HOST\" or \"HOST:PORT\"")]
    BadNode(String),
    /// lapin's URI parser says why in words only, so there is no error to keep as a source.
    #[error("connection.url is not an AMQP URL: {0}")]
    BadUrl(String),
}

/// How long a broker may be away before a run stops, unless `connection.outage_limit` says.
pub const DEFAULT_OUTAGE_LIMIT: u64 = 60;

/// `connection.queue_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Durable classic queues, persistent messages: what a single broker needs.
    #[default]
    Classic,
    /// Quorum queues (RabbitMQ 3.8+), replicated over the cluster's nodes.
    Quorum,
}

/// The AMQP heartbeat gorgon-rs asks for unless `connection.heartbeat` says otherwise: low,
/// so that a frozen host's files run elsewhere within seconds.
pub const DEFAULT_HEARTBEAT: u16 = 3;

/// `tls_cert`, `tls_key` and `tls_ca_certificates` of a Gorgon listener's `connection`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GorgonTlsKeys {
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_ca_certificates: Vec<std::path::PathBuf>,
}

/// `tls` as an object, or as Gorgon's flag (`true`: TLS with the system's roots).
fn tls_or_flag<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<TlsSettings>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null | serde_json::Value::Bool(false) => Ok(None),
        serde_json::Value::Bool(true) => Ok(Some(TlsSettings::default())),
        // Config files are read with the key's path (`config_file::from_value`), which
        // names `connection.tls` before these messages.
        object @ serde_json::Value::Object(_) => serde_json::from_value(object)
            .map(Some)
            .map_err(D::Error::custom),
        _ => Err(D::Error::custom(
            "must be true, false or an object such as {\"ca_file\": \"ca.pem\"}",
        )),
    }
}

/// The `connection` object and its `tls`, for [`crate::config_file::check_keys`] (in every
/// config file): both decide whom a process trusts, so a key nobody reads in them is refused.
/// Gorgon's others (the amqp gem's and Bunny's `timeout`, `frame_max`,
/// `automatically_recover`...) are accepted and not used.
pub const CONNECTION_SECTIONS: [crate::config_file::Section; 2] = [
    crate::config_file::Section {
        at: "connection",
        known: &[
            "heartbeat",
            "queue_type",
            "outage_limit",
            "hosts",
            "tls_ca_certificates",
            "host",
            "hostname",
            "port",
            "username",
            "user",
            "password",
            "pass",
            "pwd",
            "vhost",
            "virtual_host",
            "tls",
            "ssl",
            "url",
            "tls_cert",
            "tls_key",
        ],
        ignored: &[
            "timeout",
            "frame_max",
            "channel_max",
            "auth_mechanism",
            "logging",
            "continuation_timeout",
            "connection_timeout",
            "read_timeout",
            "write_timeout",
            "automatically_recover",
            "network_recovery_interval",
            "recover_from_connection_close",
            "recovery_attempts",
            "locale",
            "verify_peer",
            "log_file",
            "log_level",
        ],
        guarded: true,
        guarded_keys: &[],
    },
    crate::config_file::Section {
        at: "connection.tls",
        known: &["ca_file", "cert_file", "key_file", "server_name"],
        ignored: &[],
        guarded: true,
        guarded_keys: &[],
    },
];

/// The `connection.tls` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the certificate authorities that sign the broker's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key, for brokers that ask for one.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name the broker's certificate must be valid for, when it is not the host
    /// connected to (a broker reached by its address, or through a tunnel or load balancer).
    pub server_name: Option<String>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            host: "127.0.0.1".into(),
            port: 5672,
            username: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            signing: None,
            tls: None,
            gorgon_tls: GorgonTlsKeys::default(),
            url: None,
            hosts: Vec::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            queue_type: QueueType::Classic,
            outage_limit: DEFAULT_OUTAGE_LIMIT,
        }
    }
}

impl BrokerSettings {
    /// The broker the project's own tests use: `AMQP_HOST` and `AMQP_PORT` when set, else
    /// the default (127.0.0.1:5672, guest/guest).
    pub fn for_tests() -> BrokerSettings {
        let mut settings = BrokerSettings::default();
        if let Ok(host) = std::env::var("AMQP_HOST") {
            settings.host = host;
        }
        if let Some(port) = std::env::var("AMQP_PORT").ok().and_then(|p| p.parse().ok()) {
            settings.port = port;
        }
        settings
    }

    /// Folds Gorgon's TLS file keys into `tls` (they mean TLS, with them) and checks the
    /// nodes of `hosts`: the part of [`BrokerSettings::resolve_url`] that needs no URL parser
    /// (the one of lapin, so that this and the rest of `resolve_url` come with `broker`).
    #[cfg(feature = "broker")]
    pub(crate) fn fold_gorgon_keys(&mut self) -> Result<(), ConnectionError> {
        let gorgon = std::mem::take(&mut self.gorgon_tls);
        if gorgon != GorgonTlsKeys::default() {
            if gorgon.tls_ca_certificates.len() > 1 {
                return Err(ConnectionError::SeveralCaFiles);
            }
            let tls = self.tls.get_or_insert_with(TlsSettings::default);
            tls.ca_file = tls
                .ca_file
                .take()
                .or(gorgon.tls_ca_certificates.into_iter().next());
            tls.cert_file = tls.cert_file.take().or(gorgon.tls_cert);
            tls.key_file = tls.key_file.take().or(gorgon.tls_key);
        }
        if let Some(bad) = self.hosts.iter().find(|node| {
            let host = node
                .rsplit_once(':')
                .map_or(node.as_str(), |(host, _)| host);
            host.trim().is_empty() || node.contains(char::is_whitespace)
        }) {
            return Err(ConnectionError::BadNode(bad.clone()));
        }
        Ok(())
    }

    /// [`BrokerSettings::outage_limit`] as a duration.
    pub fn outage_limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.outage_limit)
    }

    /// `host:port`, or each node's of `hosts`, for messages.
    pub fn address(&self) -> String {
        let nodes: Vec<String> = self
            .nodes()
            .iter()
            .map(|(host, port)| format!("{host}:{port}"))
            .collect();
        nodes.join(", ")
    }

    /// The broker nodes to try, in `hosts` order (or `host` alone), each with its port.
    pub fn nodes(&self) -> Vec<(String, u16)> {
        if self.hosts.is_empty() {
            return vec![(self.host.clone(), self.port)];
        }
        self.hosts
            .iter()
            .map(|node| match node.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => {
                    (host.to_owned(), port.parse().expect("checked above"))
                }
                _ => (node.clone(), self.port),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "broker")]
    #[test]
    fn several_nodes_are_tried_each_with_its_port() {
        let settings: super::BrokerSettings = serde_json::from_str(
            r#"{"hosts": ["rmq1", "rmq2:5673", "10.0.0.3:5674"], "port": 5680}"#,
        )
        .unwrap();
        let settings = settings.resolve_url().unwrap();
        assert_eq!(
            settings.nodes(),
            [
                ("rmq1".to_owned(), 5680),
                ("rmq2".to_owned(), 5673),
                ("10.0.0.3".to_owned(), 5674)
            ]
        );
        assert_eq!(settings.address(), "rmq1:5680, rmq2:5673, 10.0.0.3:5674");
        assert_eq!(
            super::BrokerSettings::default().nodes(),
            [("127.0.0.1".to_owned(), 5672)]
        );
        let broken: super::BrokerSettings =
            serde_json::from_str(r#"{"hosts": ["rmq1", ":5672"]}"#).unwrap();
        assert!(broken
            .resolve_url()
            .unwrap_err()
            .to_string()
            .contains("connection.hosts has \":5672\""));
    }

    #[cfg(feature = "broker")]
    #[test]
    fn gorgons_tls_keys_and_flag_turn_tls_on_and_other_keys_are_only_listed() {
        let parse = |text: &str| -> super::BrokerSettings {
            serde_json::from_str::<super::BrokerSettings>(text)
                .unwrap()
                .resolve_url()
                .unwrap()
        };
        assert_eq!(
            parse(r#"{"tls": true}"#).tls,
            Some(super::TlsSettings::default())
        );
        assert_eq!(parse(r#"{"ssl": false}"#).tls, None);
        let bunny = parse(
            r#"{"host": "rabbit", "tls": true, "tls_cert": "c.pem", "tls_key": "k.pem", "tls_ca_certificates": ["ca.pem"], "heartbeat": 30}"#,
        );
        assert_eq!(bunny.heartbeat, 30, "Gorgon's heartbeat is honoured");
        assert_eq!(parse("{}").heartbeat, super::DEFAULT_HEARTBEAT);
        let tls = bunny.tls.unwrap();
        assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        assert_eq!(
            tls.cert_file.as_deref(),
            Some(std::path::Path::new("c.pem"))
        );
        assert_eq!(tls.key_file.as_deref(), Some(std::path::Path::new("k.pem")));
        let raw = serde_json::json!({"connection": {"host": "rabbit", "heartbeat": 30, "timeout": 5, "tls_cert": "c"}});
        let report = crate::config_file::check_keys(&raw, &super::CONNECTION_SECTIONS).unwrap();
        assert_eq!(report.ignored, ["connection.timeout"]);
        assert!(report.unknown.is_empty(), "{report:?}");
        let two =
            serde_json::from_str::<super::BrokerSettings>(r#"{"tls_ca_certificates": ["a", "b"]}"#)
                .unwrap();
        assert!(two
            .resolve_url()
            .unwrap_err()
            .to_string()
            .contains("more than one file"));
    }

    #[cfg(feature = "broker")]
    #[test]
    fn a_url_names_the_broker_and_amqps_turns_tls_on() {
        let settings = super::BrokerSettings {
            url: Some("amqps://ci:s3cret@rabbit.internal/builds".into()),
            ..super::BrokerSettings::default()
        }
        .resolve_url()
        .unwrap();
        assert_eq!(settings.address(), "rabbit.internal:5671");
        assert_eq!(
            (settings.username.as_str(), settings.password.as_str()),
            ("ci", "s3cret")
        );
        assert_eq!(settings.vhost, "builds");
        assert_eq!(settings.tls, Some(super::TlsSettings::default()));
        let plain = super::BrokerSettings {
            url: Some("amqp://rabbit:5673/".into()),
            ..super::BrokerSettings::default()
        }
        .resolve_url()
        .unwrap();
        assert_eq!((plain.address().as_str(), plain.tls), ("rabbit:5673", None));
        assert_eq!(plain.vhost, "/");
        let broken = super::BrokerSettings {
            url: Some("http://rabbit".into()),
            ..super::BrokerSettings::default()
        }
        .resolve_url();
        assert!(broken
            .unwrap_err()
            .to_string()
            .starts_with("connection.url is not an AMQP URL"));
    }

    use super::*;

    #[test]
    fn settings_accept_gorgon_spellings() {
        let settings: BrokerSettings =
            serde_json::from_str(r#"{"host": "mq", "user": "u", "pass": "p"}"#).unwrap();
        assert_eq!(settings.host, "mq");
        assert_eq!(settings.username, "u");
        assert_eq!(settings.password, "p");
        assert_eq!(settings.port, 5672);
        assert_eq!(settings.address(), "mq:5672");
    }
}
