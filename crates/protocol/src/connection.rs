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
    /// `amqp://` or `amqps://user:password@host:port/vhost`, in place of the other keys
    /// ([`BrokerSettings::resolve_url`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
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
            url: None,
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
    /// With `url` set: its parts replace the host, port, user, password and virtual host,
    /// and an `amqps` URL connects over TLS (with `tls`'s files when given, else the system's
    /// roots). The error is the second half of a sentence that starts with the file's path.
    pub fn resolve_url(mut self) -> Result<BrokerSettings, String> {
        let Some(url) = self.url.take() else {
            return Ok(self);
        };
        let parsed: lapin::uri::AMQPUri = url
            .parse()
            .map_err(|e: String| format!("connection.url is not an AMQP URL: {e}"))?;
        self.host = parsed.authority.host;
        self.port = parsed.authority.port;
        self.username = parsed.authority.userinfo.username;
        self.password = parsed.authority.userinfo.password;
        // `amqp://host/` names the empty virtual host in the URI spec; nobody means that.
        self.vhost = if parsed.vhost.is_empty() {
            "/".to_owned()
        } else {
            parsed.vhost
        };
        if parsed.scheme == lapin::uri::AMQPScheme::AMQPS && self.tls.is_none() {
            self.tls = Some(TlsSettings::default());
        }
        Ok(self)
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
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
