//! The listener's settings, read from Gorgon's `gorgon_listener.json` and validated once, so
//! that everything past `load` works with plain, trusted values.

use std::path::{Path, PathBuf};

use gorgon_protocol::config_file::{self, ConfigFileError};
use gorgon_protocol::{names, BrokerSettings};
use serde_json::{Map, Value};

use crate::ListenerError;

/// Workers a listener runs per job when `worker_slots` is not configured (Gorgon's default).
pub const DEFAULT_WORKER_SLOTS: u32 = 2;

/// Everything `gorgon listen` needs, resolved and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSettings {
    /// Where RabbitMQ is.
    pub broker: BrokerSettings,
    /// Workers started per job (at least 1).
    pub worker_slots: u32,
    /// Where the binary sends the log; `run` itself does not use it.
    pub log_file: Option<PathBuf>,
    /// Only jobs of this cluster reach this listener.
    pub cluster_id: String,
    /// The name this listener reports as the host of every result.
    pub name: String,
    /// Absolute folder under which each job gets a workspace named after its id.
    pub workspace_root: PathBuf,
    /// Keep a warm runner for the built-in runners between jobs (`warm_runners`, default
    /// true; see `docs/runner-protocol.md`, "Warm runners").
    pub warm_runners: bool,
    /// Serve even as root (`allow_root`, default false): for hosts thrown away after use.
    pub allow_root: bool,
    /// Run `gorgon fleet` commands (`allow_fleet_commands`, default false).
    pub allow_fleet_commands: bool,
    /// `file_server.listener_password`: the file server's `listener` user, which may only
    /// read, logs in with it (`docs/security.md`).
    pub file_server_password: Option<String>,
    /// Keys of the file that gorgon-rs does not use (Gorgon's `bin_gem_path`, the connection
    /// library's `heartbeat`...), one line each, logged at start.
    pub unused_keys: Vec<String>,
}

impl ListenerSettings {
    /// Reads and validates `gorgon_listener.json` (JSON with comments). Unknown keys are
    /// ignored, so a file written for Gorgon (with `bin_gem_path`, say) still loads.
    ///
    /// Relative paths in the file (`workspace_root`, `log_file`) are taken relative to the
    /// folder that holds the file, so the daemon behaves the same whatever folder it is
    /// started from.
    pub fn load(path: &Path) -> Result<ListenerSettings, ListenerError> {
        let value = config_file::load(path)?;
        let object = match value {
            Value::Object(object) => object,
            // `config_file::load` only returns objects; this keeps the error honest anyway.
            _ => {
                return Err(ListenerError::Config(ConfigFileError::NotAnObject {
                    path: path.to_owned(),
                }))
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        from_object(&object, base, default_name).map_err(|problem| ListenerError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }
}

/// What is wrong in `gorgon_listener.json`: the second half of one sentence that starts
/// with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum SettingsProblem {
    #[error("connection is invalid: {0}")]
    Connection(#[source] serde_json::Error),
    #[error("connection must be an object such as {{\"host\": \"rabbit\"}}")]
    ConnectionNotAnObject,
    /// The signing keys (the protocol crate's words).
    #[error(transparent)]
    Signing(#[from] gorgon_protocol::signing::KeyConfigError),
    /// The broker's URL (the protocol crate's words).
    #[error(transparent)]
    BrokerUrl(#[from] gorgon_protocol::connection::ConnectionError),
    #[error("worker_slots must be a whole number of at least 1")]
    WorkerSlots,
    #[error("{key} must be a non-empty string")]
    NotText { key: String },
    #[error("{key} must be true or false")]
    NotAFlag { key: String },
    #[error("file_server.listener_password must be a non-empty string")]
    ListenerPassword,
    #[error("workspace_root {} cannot be made absolute: {source}", path.display())]
    WorkspaceRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the host name cannot be read ({0}); set \"name\"")]
    HostName(#[source] nix::Error),
    #[error("the host name is not valid UTF-8; set \"name\"")]
    HostNameNotUtf8,
}

/// The machine's host name, the listener's name unless the file sets one.
fn default_name() -> Result<String, SettingsProblem> {
    nix::unistd::gethostname()
        .map_err(SettingsProblem::HostName)?
        .into_string()
        .map_err(|_| SettingsProblem::HostNameNotUtf8)
}

/// Validates the parsed file. Each error is the second half of one sentence that starts with
/// the file's path.
fn from_object(
    object: &Map<String, Value>,
    base: &Path,
    default_name: impl FnOnce() -> Result<String, SettingsProblem>,
) -> Result<ListenerSettings, SettingsProblem> {
    const KEYS: [&str; 14] = [
        "allow_fleet_commands",
        "connection",
        "worker_slots",
        "cluster_id",
        "name",
        "log_file",
        "workspace_root",
        "warm_runners",
        "allow_root",
        "file_server",
        "signing_key",
        "signing_key_file",
        "previous_signing_key",
        "previous_signing_key_file",
    ];
    let config = Value::Object(object.clone());
    let mut unused_keys = gorgon_protocol::config_file::unknown_keys(&config, "", &KEYS);
    unused_keys.extend(BrokerSettings::unused_keys(&config["connection"]));
    let unused_keys = unused_keys
        .iter()
        .map(|key| gorgon_protocol::config_file::unused_key_line(key))
        .collect();
    let mut broker = match object.get("connection") {
        None | Some(Value::Null) => BrokerSettings::default(),
        Some(value @ Value::Object(_)) => {
            serde_json::from_value(value.clone()).map_err(SettingsProblem::Connection)?
        }
        Some(_) => return Err(SettingsProblem::ConnectionNotAnObject),
    };
    // As in Gorgon, `RABBITMQ_URL` in the listener's environment names the broker.
    if let Ok(url) = std::env::var("RABBITMQ_URL") {
        broker.url = Some(url);
    }
    broker.signing = gorgon_protocol::signing::keys_from_config(&config, base)?;
    let broker = broker.resolve_url()?;
    let worker_slots = match object.get("worker_slots") {
        None | Some(Value::Null) => DEFAULT_WORKER_SLOTS,
        Some(value) => value
            .as_u64()
            .filter(|slots| *slots >= 1)
            .and_then(|slots| u32::try_from(slots).ok())
            .ok_or(SettingsProblem::WorkerSlots)?,
    };
    let cluster_id =
        optional_text(object, "cluster_id")?.unwrap_or_else(|| names::DEFAULT_CLUSTER.to_owned());
    let name = match optional_text(object, "name")? {
        Some(name) => name,
        None => default_name()?,
    };
    let flag = |key: &str, default: bool| match object.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(SettingsProblem::NotAFlag {
            key: key.to_owned(),
        }),
    };
    let warm_runners = flag("warm_runners", true)?;
    let allow_root = flag("allow_root", false)?;
    let allow_fleet_commands = flag("allow_fleet_commands", false)?;
    let file_server_password = match object
        .get("file_server")
        .map(|server| server.get("listener_password"))
    {
        None | Some(None) | Some(Some(Value::Null)) => None,
        Some(Some(Value::String(password))) if !password.is_empty() => Some(password.clone()),
        Some(Some(_)) => return Err(SettingsProblem::ListenerPassword),
    };
    let log_file = optional_text(object, "log_file")?.map(|file| base.join(file));
    let workspace_root = optional_text(object, "workspace_root")?
        .map(|root| base.join(root))
        .unwrap_or_else(|| std::env::temp_dir().join("gorgon-workspaces"));
    let workspace_root =
        std::path::absolute(&workspace_root).map_err(|source| SettingsProblem::WorkspaceRoot {
            path: workspace_root.clone(),
            source,
        })?;
    Ok(ListenerSettings {
        broker,
        worker_slots,
        log_file,
        cluster_id,
        name,
        workspace_root,
        warm_runners,
        allow_root,
        allow_fleet_commands,
        file_server_password,
        unused_keys,
    })
}

/// A key holding a non-empty string, or absent (`null` counts as absent).
fn optional_text(
    object: &Map<String, Value>,
    key: &str,
) -> Result<Option<String>, SettingsProblem> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(Some(text.clone())),
        Some(_) => Err(SettingsProblem::NotText {
            key: key.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gorgon_listener.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn parse(text: &str) -> Result<ListenerSettings, String> {
        let value: Value = serde_json::from_str(text).unwrap();
        from_object(value.as_object().unwrap(), Path::new("/etc/gorgon"), || {
            Ok("box".to_owned())
        })
        .map_err(|problem| problem.to_string())
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let settings = parse("{}").unwrap();
        assert_eq!(settings.broker, BrokerSettings::default());
        assert_eq!(settings.worker_slots, 2);
        assert_eq!(settings.log_file, None);
        assert_eq!(settings.cluster_id, "default");
        assert_eq!(settings.name, "box");
        assert_eq!(
            settings.workspace_root,
            std::env::temp_dir().join("gorgon-workspaces")
        );
    }

    #[test]
    fn a_gorgon_file_with_comments_and_unknown_keys_loads() {
        let (dir, path) = write(
            r#"{
                // Written for Ruby's Gorgon.
                "connection": {"host": "rabbit", "port": 5673, "user": "u", "pass": "p", "heartbeat": 30, "timeout": 5},
                "worker_slots": 8, /* eight cores */
                "allow_fleet_commands": true,
                "log_file": "listener.log",
                "bin_gem_path": "/usr/local/bin",
                "cluster_id": "ci",
                "name": "builder-1",
                "workspace_root": "ws"
            }"#,
        );
        let settings = ListenerSettings::load(&path).unwrap();
        assert_eq!(settings.broker.host, "rabbit");
        assert_eq!(settings.broker.port, 5673);
        assert_eq!(settings.broker.username, "u");
        assert_eq!(settings.broker.password, "p");
        assert_eq!(settings.broker.heartbeat, 30);
        assert_eq!(settings.worker_slots, 8);
        assert_eq!(settings.log_file, Some(dir.path().join("listener.log")));
        assert_eq!(settings.cluster_id, "ci");
        assert_eq!(settings.name, "builder-1");
        assert_eq!(settings.workspace_root, dir.path().join("ws"));
        assert!(settings.allow_fleet_commands);
        // Gorgon's keys that do not apply are named, the ones gorgon-rs reads are not.
        let unused = settings.unused_keys.join("\n");
        assert_eq!(settings.unused_keys.len(), 2, "{unused}");
        assert!(
            unused.contains("bin_gem_path is not used by gorgon-rs"),
            "{unused}"
        );
        assert!(
            unused.contains("connection.timeout is not used by gorgon-rs"),
            "{unused}"
        );
    }

    #[test]
    fn the_default_name_is_the_host_name() {
        let (_dir, path) = write("{}");
        let settings = ListenerSettings::load(&path).unwrap();
        let host = nix::unistd::gethostname().unwrap();
        assert_eq!(settings.name, host.to_string_lossy());
    }

    #[test]
    fn bad_values_are_named_in_one_sentence() {
        for (text, expected) in [
            (
                r#"{"worker_slots": 0}"#,
                "worker_slots must be a whole number of at least 1",
            ),
            (
                r#"{"warm_runners": "yes"}"#,
                "warm_runners must be true or false",
            ),
            (r#"{"allow_root": 1}"#, "allow_root must be true or false"),
            (
                r#"{"worker_slots": "4"}"#,
                "worker_slots must be a whole number of at least 1",
            ),
            (
                r#"{"worker_slots": 2.5}"#,
                "worker_slots must be a whole number of at least 1",
            ),
            (
                r#"{"cluster_id": 3}"#,
                "cluster_id must be a non-empty string",
            ),
            (r#"{"name": ""}"#, "name must be a non-empty string"),
            (
                r#"{"connection": "rabbit"}"#,
                "connection must be an object",
            ),
            (r#"{"connection": {"port": "x"}}"#, "connection is invalid"),
        ] {
            let problem = parse(text).unwrap_err();
            assert!(problem.starts_with(expected), "{text}: {problem}");
        }
        let (_dir, path) = write(r#"{"worker_slots": -1}"#);
        let message = ListenerSettings::load(&path).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "{}: worker_slots must be a whole number of at least 1",
                path.display()
            )
        );
    }

    #[test]
    fn a_missing_or_broken_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gorgon_listener.json");
        let message = ListenerSettings::load(&missing).unwrap_err().to_string();
        assert!(message.contains("gorgon_listener.json"), "{message}");
        assert!(message.starts_with("cannot read"), "{message}");
        let (_dir, path) = write("{\"worker_slots\": 2,, }");
        let message = ListenerSettings::load(&path).unwrap_err().to_string();
        assert!(message.contains("gorgon_listener.json"), "{message}");
        assert!(message.contains("not valid JSON"), "{message}");
        let (_dir, path) = write("[2]");
        let message = ListenerSettings::load(&path).unwrap_err().to_string();
        assert!(message.contains("must hold a JSON object"), "{message}");
    }
}
