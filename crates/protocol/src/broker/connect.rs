//! Connecting to RabbitMQ: the AMQP URI of the settings, the TLS configuration read from
//! their files, one of a cluster's nodes tried after another, and reconnecting with backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};

use super::{bounded, Backoff, Broker, BrokerError};
use crate::connection::{BrokerSettings, ConnectionError, TlsSettings};
use crate::signing::Trust;

/// How long a connection attempt may take before the broker counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest AMQP frame. The client keeps send and receive buffers of 32 frames each, so
/// RabbitMQ's default of 128 KiB would cost every process (each worker included) 8 MiB;
/// messages larger than a frame are split, so this limits memory, not message size.
const FRAME_MAX: u32 = 16 * 1024;

/// The AMQP URI of `settings`, with the frame size this client wants.
fn uri(settings: &BrokerSettings, host: &str, port: u16) -> String {
    format!(
        "{}://{}:{}@{}:{}/{}?frame_max={FRAME_MAX}&heartbeat={}",
        if settings.tls.is_some() {
            "amqps"
        } else {
            "amqp"
        },
        percent_encode(&settings.username),
        percent_encode(&settings.password),
        host,
        port,
        percent_encode(&settings.vhost),
        settings.heartbeat
    )
}

/// A TLS file of the settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA file {} is not PEM text", path.display())]
    NotPem {
        path: PathBuf,
        #[source]
        source: std::string::FromUtf8Error,
    },
    #[error("connection.tls needs both cert_file and key_file, or neither")]
    HalfIdentity,
}

/// Why a connection to the broker (or to each of its nodes) failed: the second half of
/// [`BrokerError::Connect`]'s message.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Runtime(#[source] lapin::Error),
    /// `over` is "over TLS: " for a connection over TLS, so that the reason says so.
    #[error("{over}no answer within {seconds} s")]
    NoAnswer { over: &'static str, seconds: u64 },
    #[error("{over}{source}")]
    Refused {
        over: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// Each node's failure, in the order they were tried.
    #[error("no node answered: {}", .0.join("; "))]
    NoNode(Vec<String>),
}

/// The TLS configuration of `settings`: its CA file and client certificate, read now.
fn tls_config(settings: &BrokerSettings) -> Result<lapin::tcp::OwnedTLSConfig, TlsError> {
    let Some(tls) = &settings.tls else {
        return Ok(lapin::tcp::OwnedTLSConfig::default());
    };
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let cert_chain =
        match &tls.ca_file {
            Some(path) => Some(String::from_utf8(read("CA file", path)?).map_err(|source| {
                TlsError::NotPem {
                    path: path.to_owned(),
                    source,
                }
            })?),
            None => None,
        };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("client certificate", cert)?,
            key: read("client key", key)?,
        }),
        (None, None) => None,
        _ => return Err(TlsError::HalfIdentity),
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

/// How a connection failure's reason starts: "over TLS: " for a connection over TLS.
fn over_tls(settings: &BrokerSettings) -> &'static str {
    if settings.tls.is_some() {
        "over TLS: "
    } else {
        ""
    }
}

/// Opens an AMQP connection to one node within [`CONNECT_TIMEOUT`], over TLS when the
/// settings say so.
async fn open(
    settings: &BrokerSettings,
    host: &str,
    port: u16,
    name: &str,
) -> Result<Connection, ConnectFailure> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let tls = tls_config(settings)?;
    let over = over_tls(settings);
    let runtime = lapin::runtime::default_runtime().map_err(ConnectFailure::Runtime)?;
    let connecting = async {
        match settings
            .tls
            .as_ref()
            .and_then(|tls| tls.server_name.clone())
        {
            // lapin's own connectors check the certificate against the URI's host.
            Some(server_name) => {
                let uri: lapin::uri::AMQPUri = uri(settings, host, port)
                    .parse()
                    .map_err(std::io::Error::other)?;
                let open = async move |uri: lapin::uri::AMQPUri,
                                       runtime: async_rs::TokioRuntime| {
                    let address =
                        runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
                    let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, address).await?;
                    Ok(stream.into_tls(&server_name, tls.as_ref()).await?)
                };
                Connection::connector(uri, runtime, open, properties).await
            }
            None => {
                Connection::connect_with_config(
                    &uri(settings, host, port),
                    properties,
                    tls,
                    runtime,
                )
                .await
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| ConnectFailure::NoAnswer {
            over,
            seconds: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|source| ConnectFailure::Refused { over, source })
}

impl BrokerSettings {
    /// The settings to connect with: Gorgon's TLS file keys folded into `tls`, the nodes of
    /// `hosts` checked and, with `url` set, its parts in place of the host, port, user,
    /// password and virtual host; an `amqps` URL connects over TLS (with `tls`'s files when
    /// given, else the system's roots). The error is the second half of a sentence that
    /// starts with the file's path.
    pub fn resolve_url(mut self) -> Result<BrokerSettings, ConnectionError> {
        self.fold_gorgon_keys()?;
        let Some(url) = self.url.take() else {
            return Ok(self);
        };
        let parsed: lapin::uri::AMQPUri = url.parse().map_err(ConnectionError::BadUrl)?;
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
}

impl Broker {
    /// Connects within [`CONNECT_TIMEOUT`] to one of the broker's nodes (see
    /// [`BrokerSettings::hosts`]: beginning at a random one, then the others in turn); `name`
    /// shows in RabbitMQ's management tools. [`Broker::address`] is the node it reached.
    pub async fn connect(settings: &BrokerSettings, name: &str) -> Result<Broker, BrokerError> {
        let nodes = settings.nodes();
        let first = if nodes.len() > 1 {
            usize::from(uuid::Uuid::new_v4().as_bytes()[0]) % nodes.len()
        } else {
            0
        };
        let mut failures = Vec::new();
        for at in 0..nodes.len() {
            let (host, port) = &nodes[(first + at) % nodes.len()];
            match Broker::connect_node(settings, host, *port, name).await {
                Ok(broker) => return Ok(broker),
                Err(error) if nodes.len() == 1 => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "cannot reach this broker node; trying the next");
                    failures.push(error.to_string());
                }
            }
        }
        Err(BrokerError::Connect {
            address: settings.address(),
            reason: ConnectFailure::NoNode(failures),
        })
    }

    async fn connect_node(
        settings: &BrokerSettings,
        host: &str,
        port: u16,
        name: &str,
    ) -> Result<Broker, BrokerError> {
        let address = format!("{host}:{port}");
        let connection =
            open(settings, host, port, name)
                .await
                .map_err(|reason| BrokerError::Connect {
                    address: address.clone(),
                    reason,
                })?;
        let channel = bounded("channel.open", connection.create_channel()).await?;
        bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Broker {
            connection: std::sync::Arc::new(connection),
            channel,
            address,
            name: name.to_owned(),
            trust: settings
                .signing
                .as_ref()
                .map(|keys| Arc::new(Trust::new(keys))),
            queue_type: settings.queue_type,
            settings: Arc::new(settings.clone()),
        })
    }

    /// A new connection, under the same name, after this one was lost: any of the broker's
    /// nodes, tried again with backoff and jitter until `deadline`; the last failure then.
    /// The last attempt is at the deadline (a broker back just before it is found); an
    /// attempt still waiting for its answer at the deadline (a broker behind a silent link
    /// accepts nothing, refuses nothing) ends there, or [`Backoff::LEAST_ATTEMPT`] after it
    /// started, so the deadline is kept to.
    pub async fn reconnect(&self, deadline: tokio::time::Instant) -> Result<Broker, BrokerError> {
        let mut backoff = Backoff::new();
        loop {
            let tried_at = tokio::time::Instant::now();
            let bound = Backoff::attempt_bound(tried_at, deadline);
            let attempt = tokio::time::timeout_at(bound, Broker::connect_like(self)).await;
            let Ok(attempt) = attempt else {
                return Err(BrokerError::Connect {
                    address: self.address.clone(),
                    reason: ConnectFailure::NoAnswer {
                        over: over_tls(&self.settings),
                        seconds: tried_at.elapsed().as_secs(),
                    },
                });
            };
            match attempt {
                Ok(broker) => return Ok(broker),
                Err(error) => {
                    let now = tokio::time::Instant::now();
                    let Some(next) = backoff.next_attempt(now, deadline) else {
                        return Err(error);
                    };
                    let wait = next - now;
                    tracing::warn!(%error, "cannot reconnect yet; trying again in {wait:?}");
                    tokio::time::sleep_until(next).await;
                }
            }
        }
    }

    /// One new connection with the settings and name of `other` (to any node), at once.
    pub async fn connect_like(other: &Broker) -> Result<Broker, BrokerError> {
        Broker::connect(&other.settings, &other.name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_is_not_not_found() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nowhere = BrokerSettings {
            host: "127.0.0.1".into(),
            port,
            ..BrokerSettings::default()
        };
        let error = match Broker::connect(&nowhere, "gorgon-protocol test: nowhere").await {
            Ok(_) => panic!("connected to {}", nowhere.address()),
            Err(error) => error,
        };
        assert!(matches!(error, BrokerError::Connect { .. }), "{error}");
        assert!(!error.is_not_found(), "{error}");
    }

    #[test]
    fn uri_escapes_credentials_and_the_default_vhost() {
        let settings = BrokerSettings {
            username: "me".into(),
            password: "p@ss/word".into(),
            ..BrokerSettings::default()
        };
        assert_eq!(
            uri(&settings, "127.0.0.1", 5672),
            "amqp://me:p%40ss%2fword@127.0.0.1:5672/%2f?frame_max=16384&heartbeat=3"
        );
    }
}
