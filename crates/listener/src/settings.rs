//! The listener's settings, read from Gorgon's `gorgon_listener.json` and validated once, so
//! that everything past `load` works with plain, trusted values.

use std::path::{Path, PathBuf};

use gorgon_protocol::config_file::{self, ConfigFileError};
use gorgon_protocol::{names, BrokerSettings};
use serde_json::{Map, Value};

use crate::ListenerError;

/// Workers a listener runs per job when `worker_slots` is not configured (Gorgon's default).
pub const DEFAULT_WORKER_SLOTS: u32 = 2;

/// The most `worker_slots` a listener takes. Each slot is a worker process (with its test's
/// processes) and a file the broker hands the listener at once; no host runs this many tests
/// at once to any profit, so more is a slip (a slot per test file, an extra zero) that would
/// start a process per file.
pub const MAX_WORKER_SLOTS: u32 = 1024;

/// The keys of `gorgon_listener.json`, by object, for [`config_file::check_keys`]. A key
/// nobody reads is a warning, and an error in `connection` (and its `tls`), in
/// `file_server`, and near the signing keys at the top (docs/configuration.md, "Unknown
/// keys"). Gorgon's `bin_gem_path` is only told at info level.
const SECTIONS: [config_file::Section; 4] = config_file::shared_sections(
    &[
        "allow_fleet_commands",
        "worker_slots",
        "cluster_id",
        "name",
        "log_file",
        "workspace_root",
        "warm_runners",
        "allow_root",
        "metrics_address",
        "drain_timeout",
    ],
    &["listener_password"],
    // A config written from a project's or a shared secrets file may name the rest.
    &["host", "port", "originator_password"],
);

/// How long a draining listener lets the files it runs finish when `drain_timeout` is not
/// set: within the packaged unit's `TimeoutStopSec` (60 s), with room for the stop after it.
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

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
    /// Where `gorgon listen` serves its metrics, `GET /metrics` in Prometheus' text format
    /// (`metrics_address`, off unless set).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// How long the first SIGTERM lets the running files finish before the listener stops
    /// as the second does (`drain_timeout`, seconds).
    pub drain_timeout: std::time::Duration,
    /// `file_server.listener_password`: the file server's `listener` user, which may only
    /// read, logs in with it (`docs/security.md`).
    pub file_server_password: Option<String>,
    /// What the file's keys say besides their values: keys of Gorgon's that gorgon-rs does
    /// not use (`bin_gem_path`, the amqp gem's `connection.timeout`...) and unknown keys
    /// ([`ListenerSettings::warn_unknown_keys`]).
    pub config_keys: config_file::KeyReport,
}

impl ListenerSettings {
    /// Warns on stderr of each unknown key of the file at `path`, naming the nearest known
    /// one: where `listen --check` and a service manager show it, whatever the log's place.
    /// (Gorgon's keys that are not used are told in the log, by [`crate::run`].)
    pub fn warn_unknown_keys(&self, path: &Path) {
        for line in self.config_keys.warning_lines() {
            eprintln!("gorgon: warning: {}: {line}", path.display());
        }
    }

    /// Reads and validates `gorgon_listener.json` (JSON with comments). Gorgon's keys that
    /// gorgon-rs does not use are accepted, so a file written for Gorgon (with
    /// `bin_gem_path`, say) still loads; other unknown keys are warnings, and errors where a
    /// mistake could leave the listener unguarded ([`SECTIONS`]).
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
    /// A value of the wrong type in `connection`, named by its key's path.
    #[error(transparent)]
    Connection(#[from] config_file::WrongType),
    /// A key nobody reads where a mistake could leave the listener unguarded.
    #[error(transparent)]
    Key(#[from] config_file::GuardedKey),
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
    #[error("worker_slots is {0}, more than the {max} a listener takes: each slot is a worker process and a file this host runs at once, and slots are reused from file to file, so set about the number of tests this host can run side by side (its cores, or a few times that for tests that mostly wait)", max = MAX_WORKER_SLOTS)]
    TooManySlots(u64),
    #[error("{key} must be a non-empty string")]
    NotText { key: String },
    #[error("{key} must be true or false")]
    NotAFlag { key: String },
    #[error("metrics_address must be an IP address and a port, such as \"0.0.0.0:9464\" (every address) or \"127.0.0.1:9464\"; {0:?} is not")]
    MetricsAddress(String),
    #[error("drain_timeout must be a positive number of seconds")]
    DrainTimeout,
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
    let config = Value::Object(object.clone());
    let keys = config_file::check_keys(&config, &SECTIONS)?;
    let mut broker = match object.get("connection") {
        None | Some(Value::Null) => BrokerSettings::default(),
        Some(value @ Value::Object(_)) => config_file::from_value(value.clone(), "connection")?,
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
        Some(value) => match value.as_u64().filter(|slots| *slots >= 1) {
            None => return Err(SettingsProblem::WorkerSlots),
            Some(slots) => u32::try_from(slots)
                .ok()
                .filter(|slots| *slots <= MAX_WORKER_SLOTS)
                .ok_or(SettingsProblem::TooManySlots(slots))?,
        },
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
    let metrics_address = optional_text(object, "metrics_address")?
        .map(|address| {
            address
                .trim()
                .parse()
                .map_err(|_| SettingsProblem::MetricsAddress(address))
        })
        .transpose()?;
    let drain_timeout = match object.get("drain_timeout") {
        None | Some(Value::Null) => DEFAULT_DRAIN_TIMEOUT,
        Some(value) => value
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e9)
            .map(std::time::Duration::from_secs_f64)
            .ok_or(SettingsProblem::DrainTimeout)?,
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
        metrics_address,
        drain_timeout,
        file_server_password,
        config_keys: keys,
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
        assert_eq!(settings.metrics_address, None);
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
        let unused = settings.config_keys.ignored_lines().join("\n");
        assert_eq!(settings.config_keys.ignored.len(), 2, "{unused}");
        assert!(
            settings.config_keys.unknown.is_empty(),
            "{:?}",
            settings.config_keys
        );
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
    fn an_unknown_key_elsewhere_is_a_warning_with_the_nearest_key() {
        let settings = parse(
            r#"{"worker_slot": 4, "allow_fleet_command": true, "file_server": {"host": "fs"}}"#,
        )
        .unwrap();
        assert_eq!(
            settings.config_keys.warning_lines(),
            [
                "unknown key allow_fleet_command (did you mean allow_fleet_commands?); ignored",
                "unknown key worker_slot (did you mean worker_slots?); ignored",
            ]
        );
        assert_eq!(settings.config_keys.ignored, ["file_server.host"]);
        assert_eq!(settings.worker_slots, DEFAULT_WORKER_SLOTS);
    }

    #[test]
    fn the_sample_config_has_no_unknown_key() {
        let sample =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/gorgon_listener.json.sample");
        let settings = ListenerSettings::load(&sample).unwrap();
        assert_eq!(settings.config_keys, config_file::KeyReport::default());
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
            (
                r#"{"metrics_address": "localhost:9464"}"#,
                "metrics_address must be an IP address and a port, such as \"0.0.0.0:9464\" (every address) or \"127.0.0.1:9464\"; \"localhost:9464\" is not",
            ),
            (
                r#"{"drain_timeout": 0}"#,
                "drain_timeout must be a positive number of seconds",
            ),
            (
                r#"{"metrics_address": 9464}"#,
                "metrics_address must be a non-empty string",
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
            (
                r#"{"connection": {"port": "x"}}"#,
                "connection.port: invalid type: string \"x\", expected u16",
            ),
            (
                r#"{"worker_slots": 100000}"#,
                "worker_slots is 100000, more than the 1024 a listener takes",
            ),
            (
                r#"{"signing_key_fil": "k"}"#,
                "unknown key signing_key_fil (did you mean signing_key_file?)",
            ),
            (
                r#"{"connection": {"tsl": true}}"#,
                "unknown key connection.tsl (did you mean connection.tls?)",
            ),
            (
                r#"{"file_server": {"listener_pasword": "p"}}"#,
                "unknown key file_server.listener_pasword (did you mean file_server.listener_password?)",
            ),
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
