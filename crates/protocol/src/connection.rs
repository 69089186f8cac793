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
    /// are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
}

/// The `connection.tls` object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file of the certificate authorities that sign the broker's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM files of a client certificate and its key, for brokers that ask for one.
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
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

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
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
