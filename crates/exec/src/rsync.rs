//! rsync: pushing the originator's tree to the file server, pulling it into a listener's
//! workspace, and the rsync daemon behind `gorgon start_rsync` / `stop_rsync`: with
//! passwords, an `originator` user that may write and a `listener` user that may only read
//! (`docs/security.md`); anonymous and read-write only when asked for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gorgon_protocol::SyncTransport;

use crate::shell::ShellCommand;

/// The port of Gorgon's rsync daemon.
pub const DEFAULT_DAEMON_PORT: u16 = 43434;
/// The daemon's module that holds every project's tree.
pub const MODULE: &str = "src";

/// A failed transfer or daemon operation.
#[derive(Debug, thiserror::Error)]
pub enum RsyncError {
    #[error("rsync failed ({status}): `{command}`\n{output}")]
    Transfer {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot serve {}: {source}", dir.display())]
    Serve {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("a gorgon rsync daemon (pid {pid}) already runs on port {port}; stop it with `gorgon stop_rsync --port {port}`")]
    AlreadyRunning { pid: i32, port: u16 },
    #[error("port {port} on {address} is not free: {source}")]
    PortTaken {
        port: u16,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `hint` says when rsync is not installed.
    #[error("rsync --daemon failed ({status}){hint}: {output}")]
    DaemonFailed {
        status: String,
        hint: &'static str,
        output: String,
    },
    #[error("the rsync daemon did not start listening on port {port}; see {}", log.display())]
    NotListening { port: u16, log: PathBuf },
    #[error(transparent)]
    Config(#[from] gorgon_protocol::config_file::ConfigFileError),
    #[error("{}: file_server.{key} is missing or empty", path.display())]
    NoPassword { path: PathBuf, key: String },
    #[error("{}: the originator's and the listener's passwords must differ, or the listeners could write", path.display())]
    SamePasswords { path: PathBuf },
    #[error("no gorgon rsync daemon is running on port {port}")]
    NotRunning { port: u16 },
    #[error("the rsync daemon (pid {pid}) did not stop")]
    DidNotStop { pid: i32 },
}

/// The daemon's user that pushes trees.
pub const ORIGINATOR_USER: &str = "originator";
/// The daemon's user that pulls them, and may not write.
pub const LISTENER_USER: &str = "listener";

/// The passwords of the daemon's two users.
#[derive(Clone, Debug)]
pub struct DaemonPasswords {
    pub originator: String,
    pub listener: String,
}

/// How a push or a pull logs in to the daemon: its user and password (the password reaches
/// rsync in `RSYNC_PASSWORD`, never on a command line).
#[derive(Clone, Debug)]
pub struct Login {
    pub user: &'static str,
    pub password: String,
}

/// `rsync://host:port/...` with the login's user (`rsync://user@host:port/...`); other
/// locations (ssh) unchanged.
pub fn with_user(location: &str, login: Option<&Login>) -> String {
    match (login, location.strip_prefix("rsync://")) {
        (Some(login), Some(rest)) if !rest.contains('@') => {
            format!("rsync://{}@{rest}", login.user)
        }
        _ => location.to_owned(),
    }
}

/// Where a project's tree lives on the file server, as an rsync path ending in `/`.
pub fn tree_location(host: &str, port: u16, transport: SyncTransport, dir: &str) -> String {
    match transport {
        SyncTransport::Daemon => format!("rsync://{host}:{port}/{MODULE}/{dir}/"),
        SyncTransport::Ssh => format!("{host}:{dir}/"),
    }
}

fn transfer_command(
    from: &[&str],
    to: &str,
    exclude: &[String],
    transport: SyncTransport,
    extra: &[&str],
) -> String {
    let mut words = vec![
        "rsync".to_owned(),
        "-a".to_owned(),
        "--delete".to_owned(),
        "--timeout=30".to_owned(),
        // Times to the nanosecond: by default rsync takes a file changed within the same
        // second at the same size for unchanged, and a listener would run the old one (or,
        // with the tree's manifest, refuse the job).
        "--modify-window=-1".to_owned(),
    ];
    words.extend(extra.iter().map(|word| word.to_string()));
    // The tree's manifest goes along whatever the patterns exclude (first match wins).
    words.push(format!("--include=/{}", crate::tree::MANIFEST_NAME));
    match transport {
        SyncTransport::Ssh => {
            words.push("-e".to_owned());
            words.push("ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new".to_owned());
        }
        // Small protocol exchanges must not wait for delayed ACKs (see the daemon's config).
        SyncTransport::Daemon => words.push("--sockopts=TCP_NODELAY".to_owned()),
    }
    for pattern in exclude {
        words.push(format!("--exclude={pattern}"));
    }
    words.extend(from.iter().map(|word| word.to_string()));
    words.push(to.to_owned());
    shlex::try_join(words.iter().map(String::as_str)).expect("rsync arguments hold no NUL byte")
}

async fn transfer(command: String, cwd: &Path, login: Option<&Login>) -> Result<(), RsyncError> {
    // Always set: without a password rsync would ask for one on the terminal and wait.
    let password = login.map_or(String::new(), |login| login.password.clone());
    let outcome = ShellCommand::new(command.clone(), cwd)
        .envs([("RSYNC_PASSWORD", password)])
        .run()
        .await;
    if outcome.success() {
        return Ok(());
    }
    let mut output = outcome.output;
    if outcome.status.and_then(|s| s.code()) == Some(127) {
        output.push_str("rsync is not installed on this machine (not found on PATH)\n");
    }
    Err(RsyncError::Transfer {
        command,
        status: outcome.description,
        output,
    })
}

/// Pushes the tree at `root` to `destination` (a [`tree_location`]), with the tree's
/// `manifest` (a file named [`crate::tree::MANIFEST_NAME`]) at its root, deleting what the
/// destination has that the tree does not.
pub async fn push(
    root: &Path,
    manifest: &Path,
    destination: &str,
    exclude: &[String],
    transport: SyncTransport,
    login: Option<&Login>,
) -> Result<(), RsyncError> {
    let destination = with_user(destination, login);
    let manifest = manifest.to_string_lossy();
    transfer(
        transfer_command(&["./", &manifest], &destination, exclude, transport, &[]),
        root,
        login,
    )
    .await
}

/// Pulls `source` into `workspace`, which must exist.
pub async fn pull(
    source: &str,
    workspace: &Path,
    exclude: &[String],
    transport: SyncTransport,
    login: Option<&Login>,
) -> Result<(), RsyncError> {
    // The workspace may hold a previous job's tree: whatever the source does not have,
    // excluded paths included, goes, so the job sees exactly the originator's tree.
    let source = with_user(source, login);
    let command = transfer_command(&[&source], "./", exclude, transport, &["--delete-excluded"]);
    transfer(command, workspace, login).await
}

/// The folder where the daemon on `port` keeps its config, pid file and log.
pub fn daemon_state_dir(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("gorgon-rsyncd-{port}"))
}

fn daemon_pid(port: u16) -> Option<i32> {
    std::fs::read_to_string(daemon_state_dir(port).join("rsyncd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Starts an rsync daemon serving `dir` as module `src` on `port`, and returns once it
/// accepts connections. With `passwords`, only its `originator` user may write and its
/// `listener` user may only read; without, anyone who reaches it may read and write.
pub async fn start_daemon(
    dir: &Path,
    port: u16,
    address: Option<&str>,
    passwords: Option<&DaemonPasswords>,
) -> Result<(), RsyncError> {
    let dir = dir.canonicalize().map_err(|source| RsyncError::Serve {
        dir: dir.to_owned(),
        source,
    })?;
    if !dir.is_dir() {
        return Err(RsyncError::NotADirectory { dir });
    }
    let state = daemon_state_dir(port);
    if let Some(pid) = daemon_pid(port).filter(|pid| alive(*pid)) {
        return Err(RsyncError::AlreadyRunning { pid, port });
    }
    let bind_address = address.unwrap_or("0.0.0.0");
    if let Err(source) = std::net::TcpListener::bind((bind_address, port)) {
        return Err(RsyncError::PortTaken {
            port,
            address: bind_address.to_owned(),
            source,
        });
    }
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).map_err(|source| RsyncError::Create {
        path: state.clone(),
        source,
    })?;
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let mut config = format!(
        // No reverse DNS lookup of each client (a lookup per transfer), and no Nagle delay:
        // rsync's small protocol exchanges otherwise wait out delayed ACKs, ~40 ms each. A
        // listen backlog for every listener of a cluster pulling at once: rsync's default of
        // 5 drops the rest of the connection attempts, which retry only after 1 s, then 3 s.
        "port = {port}\npid file = {pid}\nlog file = {log}\nreverse lookup = no\nsocket options = TCP_NODELAY\nlisten backlog = 1024\n",
        pid = state.join("rsyncd.pid").display(),
        log = state.join("rsyncd.log").display(),
    );
    if let Some(address) = address {
        config.push_str(&format!("address = {address}\n"));
    }
    config.push_str(&format!(
        "\n[{MODULE}]\n  path = {}\n  read only = false\n  use chroot = false\n  uid = {uid}\n  gid = {gid}\n",
        dir.display()
    ));
    if let Some(passwords) = passwords {
        let secrets = state.join("rsyncd.secrets");
        write_private(
            &secrets,
            &format!(
                "{ORIGINATOR_USER}:{}\n{LISTENER_USER}:{}\n",
                passwords.originator, passwords.listener
            ),
        )?;
        config.push_str(&format!(
            "  auth users = {ORIGINATOR_USER}:rw, {LISTENER_USER}:ro\n  secrets file = {}\n  strict modes = yes\n",
            secrets.display()
        ));
    }
    let config_path = state.join("rsyncd.conf");
    std::fs::write(&config_path, config).map_err(|source| RsyncError::Write {
        path: config_path.clone(),
        source,
    })?;
    let command = format!(
        "rsync --daemon --config={}",
        shlex::try_quote(&config_path.display().to_string()).expect("no NUL in a path")
    );
    let outcome = ShellCommand::new(command, &state).run().await;
    if !outcome.success() {
        let hint = if outcome.status.and_then(|s| s.code()) == Some(127) {
            " (rsync is not installed on this machine)"
        } else {
            ""
        };
        return Err(RsyncError::DaemonFailed {
            status: outcome.description,
            hint,
            output: outcome.output.trim().to_owned(),
        });
    }
    let connect_to = if bind_address == "0.0.0.0" {
        "127.0.0.1"
    } else {
        bind_address
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect((connect_to, port)).is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(RsyncError::NotListening {
        port,
        log: state.join("rsyncd.log"),
    })
}

/// Reads the daemon's passwords from a config file (JSON with comments, such as a
/// `gorgon_secret.json`): `file_server.originator_password` and
/// `file_server.listener_password`, which must differ.
pub fn passwords_from_config(path: &Path) -> Result<DaemonPasswords, RsyncError> {
    let config = gorgon_protocol::config_file::load(path)?;
    let password = |key: &str| {
        config
            .get("file_server")
            .and_then(|server| server.get(key))
            .and_then(|value| value.as_str())
            .filter(|value| !value.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| RsyncError::NoPassword {
                path: path.to_owned(),
                key: key.to_owned(),
            })
    };
    let passwords = DaemonPasswords {
        originator: password("originator_password")?,
        listener: password("listener_password")?,
    };
    if passwords.originator == passwords.listener {
        return Err(RsyncError::SamePasswords {
            path: path.to_owned(),
        });
    }
    Ok(passwords)
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), RsyncError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|source| RsyncError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Stops the daemon started on `port` and removes its state folder.
pub async fn stop_daemon(port: u16) -> Result<(), RsyncError> {
    let Some(pid) = daemon_pid(port) else {
        return Err(RsyncError::NotRunning { port });
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if alive(pid) {
        return Err(RsyncError::DidNotStop { pid });
    }
    let _ = std::fs::remove_dir_all(daemon_state_dir(port));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_follow_the_transport() {
        assert_eq!(
            tree_location("fs", 43434, SyncTransport::Daemon, "dev1_shop"),
            "rsync://fs:43434/src/dev1_shop/"
        );
        assert_eq!(
            tree_location("fs", 43434, SyncTransport::Ssh, "dev1_shop"),
            "fs:dev1_shop/"
        );
    }

    #[test]
    fn excludes_are_quoted_arguments() {
        let command = transfer_command(
            &["./"],
            "rsync://fs:1/src/p/",
            &["log dir".into(), ".git".into()],
            SyncTransport::Daemon,
            &[],
        );
        assert_eq!(
            command,
            "rsync -a --delete '--timeout=30' '--modify-window=-1' '--include=/.gorgon-rs-tree' '--sockopts=TCP_NODELAY' '--exclude=log dir' '--exclude=.git' ./ rsync://fs:1/src/p/"
        );
    }

    /// A folder holding a tree manifest to push beside a project, and the manifest's path.
    fn manifest() -> (tempfile::TempDir, std::path::PathBuf) {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join(crate::tree::MANIFEST_NAME);
        std::fs::write(&path, "the manifest").unwrap();
        (folder, path)
    }

    /// Starts a daemon serving `served` on a free port of 127.0.0.1; the port.
    async fn start_test_daemon(served: &Path) -> u16 {
        start_test_daemon_with(served, None).await
    }

    /// A port found free can be taken before the daemon binds it (as the source port of
    /// another test's rsync connection): a few tries.
    async fn start_test_daemon_with(served: &Path, passwords: Option<&DaemonPasswords>) -> u16 {
        let mut tries = 0;
        loop {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            match start_daemon(served, port, Some("127.0.0.1"), passwords).await {
                Ok(()) => return port,
                Err(error) if tries < 5 && error.to_string().contains("is not free") => tries += 1,
                Err(error) => panic!("{error}"),
            }
        }
    }

    #[tokio::test]
    async fn with_passwords_only_the_originator_writes_and_the_listener_only_reads() {
        let served = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let workspace = tempfile::tempdir().unwrap();
        std::fs::write(project.path().join("a.sh"), "exit 0").unwrap();
        let passwords = DaemonPasswords {
            originator: "pushes-the-tree".into(),
            listener: "only-reads-it".into(),
        };
        let port = start_test_daemon_with(served.path(), Some(&passwords)).await;
        let secrets = daemon_state_dir(port).join("rsyncd.secrets");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&secrets).unwrap().permissions(),
        );
        let location = tree_location("127.0.0.1", port, SyncTransport::Daemon, "me_p");
        let login = |user, password: &str| Login {
            user,
            password: password.to_owned(),
        };
        let daemon = SyncTransport::Daemon;
        let (_folder, manifest) = manifest();
        let push_as = |login: Option<Login>| {
            let (project, manifest, location) = (project.path(), manifest.clone(), &location);
            async move { push(project, &manifest, location, &[], daemon, login.as_ref()).await }
        };
        let anonymous = push_as(None).await;
        let as_listener = login(LISTENER_USER, &passwords.listener);
        let by_listener = push_as(Some(as_listener.clone())).await;
        let guessed = push_as(Some(login(ORIGINATOR_USER, "guessed"))).await;
        let pushed = push_as(Some(login(ORIGINATOR_USER, &passwords.originator))).await;
        let anonymous_pull = pull(&location, workspace.path(), &[], daemon, None).await;
        let pulled = pull(&location, workspace.path(), &[], daemon, Some(&as_listener)).await;
        stop_daemon(port).await.unwrap();
        assert_eq!(mode & 0o777, 0o600);
        assert!(anonymous.is_err(), "an anonymous push was taken");
        assert!(by_listener.is_err(), "the listener could write");
        assert!(guessed.is_err(), "a wrong password was taken");
        assert!(anonymous_pull.is_err(), "an anonymous pull was served");
        pushed.unwrap();
        pulled.unwrap();
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("a.sh")).unwrap(),
            "exit 0"
        );
        // The password is in the environment, not on the command line.
        let error = by_listener.unwrap_err().to_string();
        assert!(!error.contains(&passwords.listener), "{error}");
        assert!(error.contains("rsync://listener@127.0.0.1"), "{error}");
    }

    #[tokio::test]
    async fn daemon_push_and_pull_round_trip() {
        let served = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        let workspace = tempfile::tempdir().unwrap();
        let port = start_test_daemon(served.path()).await;
        std::fs::create_dir_all(project.path().join("t")).unwrap();
        std::fs::write(project.path().join("t/a.sh"), "exit 0").unwrap();
        std::fs::write(project.path().join("skip.log"), "x").unwrap();
        let location = tree_location("127.0.0.1", port, SyncTransport::Daemon, "me_p");
        // The manifest goes along whatever the patterns say.
        let exclude = vec!["*.log".to_owned(), ".*".to_owned()];
        let (_folder, manifest) = manifest();
        let pushed = push(
            project.path(),
            &manifest,
            &location,
            &exclude,
            SyncTransport::Daemon,
            None,
        )
        .await;
        let pulled = pull(
            &location,
            workspace.path(),
            &exclude,
            SyncTransport::Daemon,
            None,
        )
        .await;
        stop_daemon(port).await.unwrap();
        pushed.unwrap();
        pulled.unwrap();
        assert_eq!(
            std::fs::read_to_string(workspace.path().join("t/a.sh")).unwrap(),
            "exit 0"
        );
        assert!(!workspace.path().join("skip.log").exists());
        let pulled_manifest = workspace.path().join(crate::tree::MANIFEST_NAME);
        assert_eq!(
            std::fs::read_to_string(pulled_manifest).unwrap(),
            "the manifest"
        );
        assert!(!daemon_state_dir(port).exists());
    }

    #[tokio::test]
    async fn the_daemon_queues_the_connections_of_a_whole_cluster() {
        let served = tempfile::tempdir().unwrap();
        let port = start_test_daemon(served.path()).await;
        // For a listening socket, `ss` shows its backlog as the send queue.
        let listening = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output();
        stop_daemon(port).await.unwrap();
        let listening = listening.expect("ss (iproute2) is installed");
        let line = String::from_utf8_lossy(&listening.stdout).to_string();
        let backlog: u32 = line
            .split_whitespace()
            .nth(2)
            .and_then(|field| field.parse().ok())
            .unwrap_or_else(|| panic!("no listening socket on port {port}: {line:?}"));
        let most = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(4096u32);
        assert_eq!(backlog, most.min(1024), "{line}");
    }

    #[tokio::test]
    async fn pulling_from_nowhere_names_the_command() {
        let workspace = tempfile::tempdir().unwrap();
        let err = pull(
            "rsync://127.0.0.1:1/src/none/",
            workspace.path(),
            &[],
            SyncTransport::Daemon,
            None,
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("rsync failed"), "{text}");
        assert!(text.contains("rsync://127.0.0.1:1/src/none/"), "{text}");
    }
}
