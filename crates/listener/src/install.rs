//! `gorgon install_listener`: writes a listener's `gorgon_listener.json` and its systemd unit
//! from flags alone (no prompts), or prints both with `--print`.

use std::path::{Path, PathBuf};

use gorgon_protocol::config_file::host_port;

/// The unit's file name, as shipped in `dist/systemd/`.
pub const UNIT_NAME: &str = "gorgon-listener.service";
/// The listener's configuration file name.
pub const CONFIG_NAME: &str = "gorgon_listener.json";

/// Why nothing (or not everything) was written.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("--broker: {0}")]
    BadBroker(String),
    #[error("--slots must be at least 1")]
    NoSlots,
    #[error("--slots is {0}, more than the {max} a listener takes (see worker_slots in docs/configuration.md)", max = crate::settings::MAX_WORKER_SLOTS)]
    TooManySlots(u32),
    #[error(
        "{0} already exists; pass --force to replace it, or --print to see what would be written"
    )]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every value of the installation, each a flag of `gorgon install_listener` (the flags and
/// their defaults are declared here, once).
#[derive(Clone, Debug, clap::Args)]
pub struct InstallOptions {
    /// RabbitMQ as HOST[:PORT].
    #[arg(long, value_name = "HOST[:PORT]", default_value = "127.0.0.1:5672")]
    pub broker: String,
    /// RabbitMQ user.
    #[arg(long = "broker-user", default_value = "guest")]
    pub username: String,
    /// RabbitMQ password (written to the config, readable by root and the user's group).
    #[arg(long = "broker-password", default_value = "guest")]
    pub password: String,
    /// Worker slots: test files this machine runs at once.
    #[arg(long, default_value_t = crate::DEFAULT_WORKER_SLOTS)]
    pub slots: u32,
    /// The listener's name (default: the host name, at run time).
    #[arg(long)]
    pub name: Option<String>,
    /// Takes only jobs of originators with the same cluster id.
    #[arg(long, default_value = gorgon_protocol::names::DEFAULT_CLUSTER)]
    pub cluster_id: String,
    /// Where job workspaces are created.
    #[arg(long, default_value = "/var/lib/gorgon/workspaces")]
    pub workspace_root: PathBuf,
    /// The unprivileged user the service runs as.
    #[arg(long, default_value = "gorgon")]
    pub user: String,
    /// Where gorgon_listener.json is written.
    #[arg(long, default_value = "/etc/gorgon")]
    pub config_dir: PathBuf,
    /// Where gorgon-listener.service is written.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// The gorgon executable the unit starts (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

impl Default for InstallOptions {
    /// The defaults of the flags.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            options: InstallOptions,
        }
        <Flags as clap::Parser>::parse_from(["gorgon"]).options
    }
}

/// The executable the unit starts when `--binary` is not given: this one.
fn default_binary() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/local/bin/gorgon"))
}

/// The two files of an installation, with where they go.
#[derive(Debug)]
pub struct Installation {
    pub config_path: PathBuf,
    pub config: String,
    pub unit_path: PathBuf,
    pub unit: String,
}

impl InstallOptions {
    /// Renders both files; writes nothing.
    pub fn render(&self) -> Result<Installation, InstallError> {
        if self.slots == 0 {
            return Err(InstallError::NoSlots);
        }
        if self.slots > crate::settings::MAX_WORKER_SLOTS {
            return Err(InstallError::TooManySlots(self.slots));
        }
        let (host, port) =
            host_port(&self.broker, 5672).map_err(|e| InstallError::BadBroker(e.to_string()))?;
        let config_path = self.config_dir.join(CONFIG_NAME);
        Ok(Installation {
            config: self.render_config(&host, port),
            unit: render_unit(
                &self.binary.clone().unwrap_or_else(default_binary),
                &config_path,
                &self.user,
                &self.workspace_root,
            ),
            unit_path: self.unit_dir.join(UNIT_NAME),
            config_path,
        })
    }

    fn render_config(&self, host: &str, port: u16) -> String {
        let json = |value: &str| serde_json::Value::from(value).to_string();
        let name = match &self.name {
            Some(name) => format!("  \"name\": {},\n", json(name)),
            None => "  // \"name\": \"build-agent-1\",   (default: the host name)\n".to_owned(),
        };
        format!(
            r#"// gorgon_listener.json, written by `gorgon install_listener`; read by `gorgon listen`.
// `//` comments are allowed; config/gorgon_listener.json.sample describes every key.
{{
  // The RabbitMQ broker, the same one the originators use.
  "connection": {{ "host": {host}, "port": {port}, "username": {username}, "password": {password}, "vhost": "/" }},
  // How many test files this machine runs at once.
  "worker_slots": {slots},
  // Takes only jobs of originators with the same cluster_id.
  "cluster_id": {cluster},
{name}  // Where each job's workspace is created (and removed after the job).
  "workspace_root": {workspace}
}}
"#,
            host = json(host),
            username = json(&self.username),
            password = json(&self.password),
            slots = self.slots,
            cluster = json(&self.cluster_id),
            workspace = json(&self.workspace_root.to_string_lossy()),
        )
    }
}

/// The systemd unit that runs `binary listen --config config` as `user`, with job
/// workspaces under `workspace_root`. `dist/systemd/gorgon-listener.service`, which the
/// Debian package installs, is this unit with the defaults and `/usr/bin/gorgon` (a test
/// keeps the two the same).
pub fn render_unit(binary: &Path, config: &Path, user: &str, workspace_root: &Path) -> String {
    let binary = systemd_word(&binary.to_string_lossy());
    let config = systemd_word(&config.to_string_lossy());
    let workspace_root = systemd_word(&workspace_root.to_string_lossy());
    format!(
        r#"# gorgon-listener.service: runs a gorgon-rs listener in the foreground.
# Installed by the gorgon Debian package, or written by `gorgon install_listener`. Then:
#   systemctl daemon-reload && systemctl enable --now gorgon-listener
[Unit]
Description=gorgon-rs listener (distributed test runner)
Documentation=man:gorgon-listen(1)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
# /var/lib/gorgon, owned by the user, holds the job workspaces; /var/log/gorgon its log_file.
StateDirectory=gorgon
LogsDirectory=gorgon
WorkingDirectory=/var/lib/gorgon
# Refuses to start, with one clear sentence in the journal, on a broken config or an
# unreachable broker.
ExecStartPre={binary} listen --check --config {config}
ExecStart={binary} listen --config {config}
Restart=always
RestartSec=5
# A listener exits 0 only once drained (`gorgon drain`, or a SIGTERM from outside systemd):
# it stays down, its machine on its way out, until started again. A failure restarts it.
RestartPreventExitStatus=0
# SIGTERM drains the listener: its running files finish within drain_timeout (40 s by
# default), then what is left is stopped. Signal it alone, and give it the time.
KillMode=mixed
TimeoutStopSec=60
# Hardening that fits a test runner (docs/security.md#least-privilege-on-the-listener). The
# whole file system is read-only but the state, log and workspace folders (a workspace_root
# elsewhere must exist, or the listener cannot make it) and a private /tmp; homes are
# hidden; no privileges gained through set-uid programs, no capabilities, no devices but
# the pseudo ones; the kernel, its clock, logs and control groups out of reach. Left
# allowed, because tests need them: any network (brokers, databases, browsers), namespaces
# (browser sandboxes), ptrace (sanitizers, debuggers), writable and executable memory (JIT
# compilers), setrlimit and nice, and the whole of /proc (core counts, memory sizes).
ReadWritePaths=-{workspace_root}
ProtectSystem=strict
ProtectHome=yes
PrivateMounts=yes
PrivateTmp=yes
PrivateDevices=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictSUIDSGID=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictRealtime=yes
LockPersonality=yes
RemoveIPC=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=~@clock @cpu-emulation @module @mount @obsolete @raw-io @reboot @swap
SystemCallErrorNumber=EPERM
UMask=0027

[Install]
WantedBy=multi-user.target
"#
    )
}

/// Quotes a word for a systemd command line when it needs it.
fn systemd_word(word: &str) -> String {
    if word
        .chars()
        .any(|c| c.is_whitespace() || "\"'\\;$%".contains(c))
    {
        format!(
            "\"{}\"",
            word.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('%', "%%")
                .replace('$', "$$")
        )
    } else {
        word.to_owned()
    }
}

impl Installation {
    /// Writes both files (creating their folders). Without `force`, an existing file stops
    /// everything before anything is written. The config holds the broker password, so it is
    /// readable only by root and the listener's group.
    pub fn write(&self, force: bool, user: &str) -> Result<(), InstallError> {
        if !force {
            for path in [&self.config_path, &self.unit_path] {
                if path.exists() {
                    return Err(InstallError::Exists(path.clone()));
                }
            }
        }
        write_file(&self.config_path, &self.config, 0o640)?;
        if let Ok(Some(account)) = nix::unistd::User::from_name(user) {
            // Best effort: without it the listener cannot read its config, which
            // `listen --check` then says in one sentence.
            let _ = std::os::unix::fs::chown(&self.config_path, None, Some(account.gid.as_raw()));
        }
        write_file(&self.unit_path, &self.unit, 0o644)
    }
}

/// Whether the system knows the user `name`.
pub fn user_exists(name: &str) -> bool {
    matches!(nix::unistd::User::from_name(name), Ok(Some(_)))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let error = |source| InstallError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    std::fs::write(path, text).map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_unit_is_the_default_installation() {
        let shipped = include_str!("../../../dist/systemd/gorgon-listener.service");
        let rendered = InstallOptions {
            binary: Some("/usr/bin/gorgon".into()),
            ..InstallOptions::default()
        }
        .render()
        .unwrap();
        assert_eq!(rendered.unit, shipped);
        assert_eq!(
            rendered.unit_path,
            Path::new("/etc/systemd/system/gorgon-listener.service")
        );
        assert!(shipped.contains("\nUser=gorgon\n"));
        assert!(shipped.contains("\nNoNewPrivileges=yes\n"));
        assert!(shipped.contains("\nProtectSystem=strict\n"));
        assert!(shipped.contains("\nReadWritePaths=-/var/lib/gorgon/workspaces\n"));
        assert!(shipped.contains("\nRestart=always\n"));
        assert!(shipped.contains("\nRestartPreventExitStatus=0\n"));
        assert!(shipped.contains(
            "\nExecStartPre=/usr/bin/gorgon listen --check --config /etc/gorgon/gorgon_listener.json\n"
        ));
        assert!(shipped.contains(
            "\nExecStart=/usr/bin/gorgon listen --config /etc/gorgon/gorgon_listener.json\n"
        ));
    }

    #[test]
    fn the_config_holds_every_flag_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let options = InstallOptions {
            broker: "rabbit.internal:5673".into(),
            username: "ci".into(),
            password: "s\"3".into(),
            slots: 6,
            name: Some("builder-7".into()),
            cluster_id: "nightly".into(),
            workspace_root: "/srv/gorgon ws".into(),
            user: "gorgon-nobody-here".into(),
            config_dir: dir.path().join("etc"),
            unit_dir: dir.path().join("units"),
            binary: Some("/opt/my tools/gorgon".into()),
            force: false,
        };
        let installation = options.render().unwrap();
        installation.write(false, &options.user).unwrap();
        let settings = crate::ListenerSettings::load(&installation.config_path).unwrap();
        assert_eq!(settings.broker.host, "rabbit.internal");
        assert_eq!(settings.broker.port, 5673);
        assert_eq!(settings.broker.username, "ci");
        assert_eq!(settings.broker.password, "s\"3");
        assert_eq!(settings.worker_slots, 6);
        assert_eq!(settings.name, "builder-7");
        assert_eq!(settings.cluster_id, "nightly");
        assert_eq!(settings.workspace_root, Path::new("/srv/gorgon ws"));
        let unit = std::fs::read_to_string(dir.path().join("units").join(UNIT_NAME)).unwrap();
        assert!(unit.contains(&format!(
            "ExecStart=\"/opt/my tools/gorgon\" listen --config {}\n",
            installation.config_path.display()
        )));
        assert!(unit.contains("User=gorgon-nobody-here\n"));
        assert!(unit.contains("ReadWritePaths=-\"/srv/gorgon ws\"\n"));

        // A second installation refuses to replace the files, unless forced.
        let again = installation.write(false, &options.user).unwrap_err();
        assert!(again.to_string().contains("already exists; pass --force"));
        installation.write(true, &options.user).unwrap();
    }

    #[test]
    fn bad_flags_are_named() {
        let options = InstallOptions {
            broker: "rabbit:amqp".into(),
            ..InstallOptions::default()
        };
        assert_eq!(
            options.render().unwrap_err().to_string(),
            "--broker: rabbit:amqp is not HOST[:PORT]: amqp is not a port number"
        );
        let options = InstallOptions {
            slots: 0,
            ..InstallOptions::default()
        };
        assert_eq!(
            options.render().unwrap_err().to_string(),
            "--slots must be at least 1"
        );
        let options = InstallOptions {
            slots: 10_000,
            ..InstallOptions::default()
        };
        assert_eq!(
            options.render().unwrap_err().to_string(),
            "--slots is 10000, more than the 1024 a listener takes (see worker_slots in docs/configuration.md)"
        );
    }
}
