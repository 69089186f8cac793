//! The `gorgon` binary: parses the command line, sets up logging, and hands over to the role
//! crates; prints the error of a command that failed and exits with its code. The worker
//! manager and the workers are hidden subcommands of this same binary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use gorgon_exec::rsync::RsyncError;
use gorgon_listener::install::InstallError;
use gorgon_listener::ListenerError;
use gorgon_originator::errors;
use gorgon_originator::init::InitError;
use gorgon_originator::settings::ReplayOptions;
use gorgon_originator::{PingError, Settings, StartError, StartOptions};
use gorgon_protocol::exit_code;
use gorgon_worker::AssignmentError;

#[derive(Parser)]
#[command(
    name = "gorgon",
    version,
    about = "Distributed test runner: spreads a suite's test files over every machine that runs `gorgon listen`",
    after_help = "Examples:\n  gorgon init --broker rabbit.internal --file-server files.internal\n  gorgon start --junit reports/junit.xml\n  gorgon help start"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the suite on the cluster's listeners and report the results.
    ///
    /// Example: gorgon start --config gorgon.json tests/math/add_test.sh
    ///
    /// Example: gorgon start --junit reports/junit.xml --events events.jsonl
    ///
    /// Example: gorgon start --failed
    ///
    /// Example: gorgon start --local -j 4
    ///
    /// Example: gorgon start --changed --explain --dry-run
    Start(StartArgs),
    /// Wait for jobs and run their files (in the foreground, for systemd).
    ///
    /// Example: gorgon listen --config /etc/gorgon/gorgon_listener.json
    ///
    /// Example: gorgon listen --check --config /etc/gorgon/gorgon_listener.json
    Listen {
        #[arg(long, default_value = "gorgon_listener.json")]
        config: PathBuf,
        /// Check the config and the broker connection, print one line, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Write a commented gorgon.json for the project in the current folder.
    ///
    /// Detects RSpec (spec/**/*_spec.rb), Minitest (test/**/*_test.rb) and pytest; anything
    /// else gets a shell command runner over tests/**/*_test.sh. Never overwrites a file.
    ///
    /// Example: gorgon init --broker rabbit.internal:5672 --file-server files.internal
    Init {
        /// RabbitMQ as HOST[:PORT] (default 127.0.0.1:5672).
        #[arg(long, value_name = "HOST[:PORT]")]
        broker: Option<String>,
        /// The file server's rsync daemon as HOST[:PORT] (default 127.0.0.1:43434).
        #[arg(long, value_name = "HOST[:PORT]")]
        file_server: Option<String>,
        /// Skip detection and write the configuration for this kind of project.
        #[arg(long, value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(gorgon_originator::init::ProjectKind::NAMES))]
        force_kind: Option<String>,
    },
    /// Write a listener's gorgon_listener.json and its systemd unit (no prompts).
    ///
    /// Example: gorgon install_listener --broker rabbit.internal --slots 8 --print
    #[command(name = "install_listener")]
    InstallListener {
        #[command(flatten)]
        options: gorgon_listener::install::InstallOptions,
        /// Show both files and write nothing.
        #[arg(long)]
        print: bool,
    },
    /// Print a shell completion script.
    ///
    /// Example: gorgon completions bash > /etc/bash_completion.d/gorgon
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run this CI node's part of a build: join build ID on the broker of gorgon.json
    /// (in this checkout, without file server or sync) and run workers until every file
    /// of the build has a result. The first node queues the files; every node checks that
    /// its checkout matches. See docs/ci-builds.md.
    ///
    /// Example: gorgon work --build-id "$CI_PIPELINE_ID" -j 4
    ///
    /// Example: gorgon work   (under GitHub Actions, GitLab CI, Buildkite or CircleCI)
    #[command(name = "work")]
    Node(NodeArgs),
    /// Report a CI build (`--build-id`) once it is over, exactly as `gorgon start` reports
    /// a run, with its exit code; or make the HTML page of a run from its saved event stream.
    ///
    /// Example: gorgon report --junit reports/junit.xml   (in a CI build's report step)
    ///
    /// Example: gorgon report --build-id nightly-42
    ///
    /// Example: gorgon report events.jsonl --html report.html
    Report(ReportArgs),
    #[command(flatten)]
    Cluster(ClusterCommand),
    /// Start an rsync daemon serving DIR as the file server, and return.
    ///
    /// Example: gorgon start_rsync ~/.gorgon/file_dir --port 43434 --secrets /etc/gorgon/gorgon_secret.json
    #[command(name = "start_rsync")]
    StartRsync {
        dir: PathBuf,
        #[arg(long, default_value_t = gorgon_exec::rsync::DEFAULT_DAEMON_PORT)]
        port: u16,
        /// Address to listen on (default: every address).
        #[arg(long)]
        address: Option<String>,
        /// A config file (such as gorgon_secret.json) with file_server.originator_password
        /// (may write) and file_server.listener_password (may only read).
        #[arg(long, conflicts_with = "anonymous")]
        secrets: Option<PathBuf>,
        /// Serve anyone who reaches the daemon, read and write, without passwords.
        #[arg(long)]
        anonymous: bool,
    },
    /// Stop the rsync daemon started on that port.
    ///
    /// Example: gorgon stop_rsync --port 43434
    #[command(name = "stop_rsync")]
    StopRsync {
        #[arg(long, default_value_t = gorgon_exec::rsync::DEFAULT_DAEMON_PORT)]
        port: u16,
    },
    /// Internal: writes the man pages (gorgon.1 and one per command) into DIR, for packages.
    #[command(name = "__man", hide = true)]
    Man { dir: PathBuf },
    /// Internal: the worker manager, started by a listener for one job.
    #[command(name = "__manage-workers", hide = true)]
    ManageWorkers {
        /// A spare, started before its job: it connects at once, and takes the job's
        /// assignment on the line after its opening.
        #[arg(long)]
        spare: bool,
    },
    /// Internal: one worker, started by a worker manager's pool (or by `start --local`'s):
    /// its assignment and files on stdin, its replies on stdout.
    #[command(name = "__work", hide = true)]
    Work,
}

/// The commands that ask the cluster's listeners.
#[derive(Subcommand)]
enum ClusterCommand {
    /// Run one command on every listener of the cluster (in a scratch folder, as the
    /// listener's user) and print each host's exit and output; listeners run it only when
    /// their config sets `allow_fleet_commands: true`. Exits 1 if any host failed, refused
    /// or did not answer.
    ///
    /// Example: gorgon fleet -- bundle --version
    Fleet {
        /// The project's configuration, which names the broker and the cluster.
        #[arg(long, default_value = "gorgon.json")]
        config: PathBuf,
        /// Seconds the command may run on each listener.
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = positive_seconds)]
        timeout: f64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Ask the listener named HOST to drain, as on SIGTERM: it takes no more jobs, lets the
    /// files it runs finish, hands back the rest and exits 0. Listeners take it only when
    /// their config sets `allow_fleet_commands: true`. Exits 1 if it refused or did not
    /// answer.
    ///
    /// Example: gorgon drain build-agent-3
    Drain {
        /// The listener's name (`gorgon status` lists them).
        host: String,
        /// The project's configuration, which names the broker and the cluster.
        #[arg(long, default_value = "gorgon.json")]
        config: PathBuf,
        /// Seconds to wait for the listener's answer.
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = positive_seconds)]
        timeout: f64,
    },
    /// List the listeners of the cluster with their versions and worker slots.
    ///
    /// Example: gorgon ping --timeout 5
    Ping {
        #[arg(long, default_value = "gorgon.json")]
        config: PathBuf,
        /// Seconds to wait for answers.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
    /// The fleet view: each listener with its slots and jobs, and for each running job the
    /// files and the work left, and the hosts that would finish it in time.
    ///
    /// Example: gorgon status --within 300 --json
    Status {
        #[arg(long, default_value = "gorgon.json")]
        config: PathBuf,
        /// Seconds to wait for the listeners' answers.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = positive_seconds)]
        timeout: f64,
        /// Say how many hosts would finish each running job within SECONDS.
        #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
        within: Option<f64>,
        /// Print the view as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
}

// `gorgon start`'s arguments (their help is the variant's: no doc comment here).
#[derive(clap::Args)]
struct StartArgs {
    /// The project's configuration; its folder is the tree that is pushed.
    #[arg(long, default_value = "gorgon.json")]
    config: PathBuf,
    /// Write one JUnit XML report of the whole run to PATH (overrides `junit_file`).
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Write newline-delimited JSON events to PATH as they happen; `-` is stdout (the
    /// report then goes to stderr). See docs/events.md.
    #[arg(long, value_name = "PATH")]
    events: Option<PathBuf>,
    /// Print the output of running files as it comes, each line after `host:worker
    /// file |`; `--live-output=FILE` (repeatable) for only those files.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "", require_equals = true, action = clap::ArgAction::Append)]
    live_output: Vec<String>,
    /// Write the run as one self-contained HTML page to PATH: its timeline, totals,
    /// slowest files and tests, and failures (overrides `html_file`).
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
    /// Run only the files listed in `failed_files` by the previous run.
    #[arg(long, conflicts_with = "files")]
    failed: bool,
    /// Print no progress: only the report's failures and the totals line.
    #[arg(long, short, conflicts_with = "verbose")]
    quiet: bool,
    /// Log at info level to stderr.
    #[arg(long, short)]
    verbose: bool,
    /// Files (or globs) to run instead of the configured `files`.
    #[arg(value_parser = utf8_file())]
    files: Vec<String>,
    /// Seconds a file may run before it is killed and reported as timed out
    /// (overrides `job.file_timeout`).
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    file_timeout: Option<f64>,
    /// Run a failed test (or file) again up to N times; one that then passes is flaky
    /// and does not fail the run (overrides `job.retries`).
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Stop once N files have failed for good: what runs is stopped and the rest is
    /// reported as not run (overrides `job.max_fail`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "fail_fast")]
    max_fail: Option<u32>,
    /// Stop at the first file that fails for good (`--max-fail 1`).
    #[arg(long)]
    fail_fast: bool,
    /// Record which of the project's code each file runs (built-in runners), into the
    /// impact map beside the runtime file (as `job.impact.record`). See docs/impact.md.
    #[arg(long)]
    record_impact: bool,
    /// Run only the files a change since BASE can break, by the impact map (default
    /// BASE: the merge base of HEAD and the default branch); the rest are reported as not
    /// selected. See docs/impact.md.
    #[arg(long, value_name = "BASE", num_args = 0..=1, default_missing_value = "")]
    changed: Option<String>,
    /// With --changed, name for each selected file the change that selected it.
    #[arg(long, requires = "changed")]
    explain: bool,
    /// Print the files the run would run, one a line in its order, and run nothing: every
    /// selection applies (--changed, --failed, FILE...), what the run says about it goes
    /// to stderr; nothing is pushed or written and no broker is needed. Exits 0, or with
    /// the configuration's or the selection's error.
    #[arg(long)]
    dry_run: bool,
    /// Run on this machine only, without broker, file server or listeners: the workers
    /// run in the project folder itself (`connection` and `file_server` are not needed).
    #[arg(long)]
    local: bool,
    /// Run the files worker HOST:WORKER ran in the last run (from the run record beside
    /// `failed_files`, or from the event stream --events names, which is then read), in
    /// its order, in one worker on this machine: a failure that depends on what ran
    /// before it reproduces.
    #[arg(long, value_name = "HOST:WORKER", conflicts_with_all = ["files", "failed", "local"])]
    replay: Option<String>,
    /// With --replay: stop after this file (the one that failed).
    #[arg(long, value_name = "FILE", requires = "replay")]
    replay_until: Option<String>,
    /// With --local: how many workers (default: the number of cores).
    #[arg(long, short, value_name = "N", requires = "local", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
}

// `gorgon work`'s arguments.
#[derive(clap::Args)]
struct NodeArgs {
    #[arg(long, default_value = "gorgon.json")]
    config: PathBuf,
    /// The build's id, the same on every node (default: from the CI's environment).
    #[arg(long, value_name = "ID")]
    build_id: Option<String>,
    /// This node's name in the results (default: the CI's node index, else the host name).
    #[arg(long, value_name = "NAME")]
    worker_id: Option<String>,
    /// How many workers (default: the number of cores).
    #[arg(long, short, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Also wait for the whole build and report it, as `gorgon report --build-id` does.
    #[arg(long)]
    report: bool,
    /// With --report: write the build's JUnit XML report to PATH.
    #[arg(long, value_name = "PATH", requires = "report")]
    junit: Option<PathBuf>,
    /// With --report: write the build's event stream to PATH.
    #[arg(long, value_name = "PATH", requires = "report")]
    events: Option<PathBuf>,
    /// Print no progress lines.
    #[arg(long, short)]
    quiet: bool,
    /// Log at info level to stderr.
    #[arg(long, short)]
    verbose: bool,
}

// `gorgon report`'s arguments.
#[derive(clap::Args)]
struct ReportArgs {
    /// The event stream of one run (`start --events PATH`), to make its HTML page.
    #[arg(conflicts_with = "build_id", requires = "html")]
    events: Option<PathBuf>,
    /// Where to write the HTML page.
    #[arg(long, value_name = "PATH")]
    html: Option<PathBuf>,
    /// Wait for CI build ID and report it (default, without an event stream: the build
    /// of the CI's environment, under GitHub Actions, GitLab CI, Buildkite or CircleCI).
    #[arg(long, value_name = "ID")]
    build_id: Option<String>,
    #[arg(long, default_value = "gorgon.json")]
    config: PathBuf,
    /// Write the build's JUnit XML report to PATH (overrides `junit_file`).
    #[arg(long, value_name = "PATH")]
    junit: Option<PathBuf>,
    /// Write the build's event stream to PATH.
    #[arg(long, value_name = "PATH", conflicts_with = "events")]
    events_to: Option<PathBuf>,
    /// Print no progress: only the report's failures and the totals line.
    #[arg(long, short)]
    quiet: bool,
}

/// A flag's value that is not a positive number of seconds.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a positive number of seconds")]
struct NotSeconds(String);

/// Parses a positive number of seconds.
fn positive_seconds(text: &str) -> Result<f64, NotSeconds> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Ok(seconds),
        _ => Err(NotSeconds(text.to_owned())),
    }
}

/// Where log lines go.
enum LogTarget<'a> {
    Stderr,
    File(&'a Path),
}

/// The log filter: `GORGON_LOG` (e.g. `debug`) when set, else `default_level`; lapin's own
/// lines stay off unless the filter names lapin (`GORGON_LOG=info,lapin=debug`).
fn log_filter(gorgon_log: Option<&str>, default_level: &str) -> String {
    let wanted = gorgon_log
        .map(str::trim)
        .filter(|filter| !filter.is_empty())
        .unwrap_or(default_level);
    // lapin logs every returned message as a warning with a dump of its bytes (an
    // announcement that no originator waits for), and errors about channels it closes
    // after the connection (a job's end); gorgon-rs reports what matters from the results
    // of its calls, so lapin's own lines are only noise, at any level the user picks.
    if wanted.contains("lapin") {
        wanted.to_owned()
    } else {
        format!("{wanted},lapin=off")
    }
}

/// Installs the tracing subscriber with [`log_filter`].
fn init_logging(default_level: &str, target: LogTarget) {
    let gorgon_log = std::env::var("GORGON_LOG").ok();
    let filter =
        tracing_subscriber::EnvFilter::try_new(log_filter(gorgon_log.as_deref(), default_level))
            .unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(log_filter(None, default_level))
            });
    // A manager whose listener died writes to a broken pipe; that must not panic it.
    let builder = tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_env_filter(filter)
        .with_ansi(colour_wanted(std::io::stderr().is_terminal()));
    match target {
        LogTarget::File(path) if path == Path::new("-") => builder
            .with_ansi(colour_wanted(std::io::stdout().is_terminal()))
            .with_writer(std::io::stdout)
            .init(),
        LogTarget::File(path) => {
            // A log folder that does not exist yet (Gorgon's `log/gorgon-originator.log` in a
            // fresh checkout) is made.
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(parent);
            }
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(file) => builder
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(file))
                    .init(),
                Err(error) => {
                    builder.with_writer(std::io::stderr).init();
                    tracing::warn!(path = %path.display(), %error, "cannot open the log file; logging to stderr");
                }
            }
        }
        LogTarget::Stderr => builder.with_writer(std::io::stderr).init(),
    }
}

use gorgon_originator::view::colour_wanted;

fn main() {
    let cli = Cli::parse();
    // Every gorgon process waits on sockets, pipes and children; one thread does that with
    // fewer cross-thread wake-ups (a 1-slot run of 500 empty files: 15 % less CPU than two
    // worker threads). Blocking work goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            for line in error_lines(&error) {
                eprintln!("{line}");
            }
            if let CliError::ListenerStopped(error) = &error {
                // A listener under a service manager logs to its log file, where whoever
                // reads it should find why it stopped too.
                tracing::error!(%error, "listener stopped");
            }
            error.exit_code()
        }
    };
    // Do not wait for detached tasks (a stdin reader, say) before exiting.
    runtime.shutdown_timeout(Duration::from_millis(100));
    std::process::exit(code);
}

/// The lines that tell a failed command's error on stderr: `gorgon: <error>`, then each of
/// its causes on a line of its own, `  caused by: <cause>`. A cause whose text the lines
/// above already hold (an error that says its source's message, as most of gorgon's do) is
/// not told twice.
fn error_lines(error: &dyn std::error::Error) -> Vec<String> {
    let mut told = error.to_string();
    let mut lines = vec![format!("gorgon: {told}")];
    let mut cause = error.source();
    while let Some(source) = cause {
        let text = source.to_string();
        if !told.contains(&text) {
            lines.push(format!("  caused by: {text}"));
            told.push_str(&text);
        }
        cause = source.source();
    }
    lines
}

/// Why a command failed: each command's error, printed in one place (`main`, with its
/// causes, by [`error_lines`]) and mapped to its exit code in one place
/// ([`CliError::exit_code`], which leaves a run's errors to the originator's table,
/// `gorgon_originator::errors::exit_code`). A command that ran returns its own exit code instead (a run
/// with failures, a worker's end).
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Start(#[from] StartError),
    /// The listener's configuration, or what `listen --check` found wrong.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// A listener that could not go on (its broker unreachable when it starts).
    #[error(transparent)]
    ListenerStopped(ListenerError),
    #[error(transparent)]
    Init(#[from] InitError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Ping(#[from] PingError),
    #[error("--timeout must be a positive number of seconds")]
    PingTimeout,
    /// `start_rsync` and `stop_rsync`.
    #[error(transparent)]
    Rsync(#[from] RsyncError),
    /// The assignment a worker manager or a worker reads from stdin.
    #[error(transparent)]
    Assignment(#[from] AssignmentError),
    #[error(transparent)]
    Html(#[from] gorgon_originator::html::HtmlError),
    #[error("start_rsync needs the file server's passwords, --secrets FILE with file_server.originator_password and file_server.listener_password (docs/security.md), or --anonymous to serve anyone who reaches it")]
    FileServerWithoutPasswords,
    #[error("cannot write the man pages in {dir}: {source}")]
    ManPages {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The exit code of `gorgon` for this error (`gorgon_protocol::exit_code`, documented in
    /// README.md).
    fn exit_code(&self) -> i32 {
        match self {
            CliError::Start(error) => errors::exit_code(errors::Ending::Error(error)),
            CliError::Listener(_)
            | CliError::ListenerStopped(_)
            | CliError::Ping(_)
            | CliError::PingTimeout
            | CliError::FileServerWithoutPasswords => exit_code::CONFIG_OR_BROKER,
            // A bad flag is a bad configuration; a file in the way, or one that could not
            // be written, is a failure to install.
            CliError::Install(
                InstallError::BadBroker(_) | InstallError::NoSlots | InstallError::TooManySlots(_),
            ) => exit_code::CONFIG_OR_BROKER,
            CliError::Install(InstallError::Exists(_) | InstallError::Write { .. })
            | CliError::Init(_)
            | CliError::Html(_)
            | CliError::Rsync(_)
            | CliError::ManPages { .. }
            | CliError::Assignment(_) => exit_code::FAILURE,
        }
    }
}

async fn dispatch(command: Command) -> Result<i32, CliError> {
    match command {
        Command::Start(args) => start(args).await,
        Command::Listen { config, check } => listen(&config, check).await,
        Command::Init {
            broker,
            file_server,
            force_kind,
        } => {
            init_logging("warn", LogTarget::Stderr);
            init_project(broker, file_server, force_kind)?;
            Ok(exit_code::SUCCESS)
        }
        Command::InstallListener { options, print } => {
            init_logging("warn", LogTarget::Stderr);
            install_listener(&options, print)?;
            Ok(exit_code::SUCCESS)
        }
        Command::Completions { shell } => {
            completions(shell);
            Ok(exit_code::SUCCESS)
        }
        Command::Man { dir } => {
            man_pages(&dir)?;
            Ok(exit_code::SUCCESS)
        }
        Command::Cluster(command) => cluster(command).await,
        Command::Node(args) => node(args).await,
        Command::Report(args) => report(args).await,
        Command::StartRsync {
            dir,
            port,
            address,
            secrets,
            anonymous,
        } => {
            init_logging("warn", LogTarget::Stderr);
            start_rsync(
                &dir,
                port,
                address.as_deref(),
                secrets.as_deref(),
                anonymous,
            )
            .await?;
            Ok(exit_code::SUCCESS)
        }
        Command::StopRsync { port } => {
            init_logging("warn", LogTarget::Stderr);
            gorgon_exec::rsync::stop_daemon(port).await?;
            println!("rsync daemon on port {port} stopped");
            Ok(exit_code::SUCCESS)
        }
        Command::ManageWorkers { spare: false } => {
            init_logging("info", LogTarget::Stderr);
            let (assignment, stdin_closed) = gorgon_worker::read_assignment().await?;
            Ok(gorgon_worker::manage_workers(assignment, stdin_closed).await)
        }
        Command::ManageWorkers { spare: true } => {
            init_logging("info", LogTarget::Stderr);
            let (opening, assignment, stdin_closed) = gorgon_worker::read_spare_opening().await?;
            Ok(gorgon_worker::manage_spare(opening, assignment, stdin_closed).await)
        }
        Command::Work => {
            // Its stderr shows beside the run's progress or in the listener's log: only what
            // matters.
            init_logging("warn", LogTarget::Stderr);
            let (assignment, files, stdin_closed) =
                gorgon_worker::read_assignment_and_lines().await?;
            Ok(gorgon_worker::work_local(assignment, files, stdin_closed).await)
        }
    }
}

/// `gorgon fleet`, `ping`, `drain` and `status`.
async fn cluster(command: ClusterCommand) -> Result<i32, CliError> {
    init_logging("warn", LogTarget::Stderr);
    match command {
        ClusterCommand::Fleet {
            config,
            timeout,
            command,
        } => {
            let limit = std::time::Duration::from_secs_f64(timeout);
            Ok(gorgon_originator::fleet::fleet(&config, &command, limit).await?)
        }
        ClusterCommand::Ping { config, timeout } => {
            if !(timeout.is_finite() && timeout > 0.0) {
                return Err(CliError::PingTimeout);
            }
            gorgon_originator::ping(&config, Duration::from_secs_f64(timeout)).await?;
            Ok(exit_code::SUCCESS)
        }
        ClusterCommand::Drain {
            host,
            config,
            timeout,
        } => {
            let wait = Duration::from_secs_f64(timeout);
            Ok(gorgon_originator::drain::drain(&config, &host, wait).await?)
        }
        ClusterCommand::Status {
            config,
            timeout,
            within,
            json,
        } => {
            let wait = Duration::from_secs_f64(timeout);
            let fleet = gorgon_originator::status::status(&config, wait, within).await?;
            if json {
                println!("{}", fleet.to_json());
            } else {
                print!("{}", fleet.render());
            }
            Ok(exit_code::SUCCESS)
        }
    }
}

/// `gorgon start`.
async fn start(args: StartArgs) -> Result<i32, CliError> {
    let verbose = args.verbose;
    let options = args.options();
    // Resolved once, here: where to log must be known before anything logs, and the run
    // goes on with these same settings.
    let settings = Settings::for_start(&options);
    match settings.as_ref().ok().and_then(|s| s.log_file.as_deref()) {
        _ if verbose => init_logging("info", LogTarget::Stderr),
        // A dry run writes nothing, not even the originator's log.
        _ if options.dry_run => init_logging("warn", LogTarget::Stderr),
        Some(path) => init_logging("info", LogTarget::File(path)),
        None => init_logging("warn", LogTarget::Stderr),
    }
    Ok(gorgon_originator::start(options, settings).await?)
}

impl StartArgs {
    /// What the command line asks of the run.
    fn options(self) -> StartOptions {
        let replay = self.replay.map(|worker| ReplayOptions {
            worker,
            until: self.replay_until,
        });
        // A replay runs in one worker on this machine.
        let (local, jobs) = if replay.is_some() {
            (true, Some(1))
        } else {
            (self.local, self.jobs)
        };
        let live_output = self.live_output;
        StartOptions {
            config: self.config,
            files: self.files,
            file_timeout: self.file_timeout,
            retries: self.retries,
            max_fail: self.max_fail.or(self.fail_fast.then_some(1)),
            record_impact: self.record_impact,
            // A bare `--changed` compares with the merge base of the default branch.
            changed: self
                .changed
                .map(|base| Some(base).filter(|b| !b.is_empty())),
            explain: self.explain,
            dry_run: self.dry_run,
            junit: self.junit,
            events: self.events,
            html: self.html,
            // A bare `--live-output` asks for every file.
            live_output: match live_output.iter().any(|file| file.is_empty()) {
                true => Some(Vec::new()),
                false => (!live_output.is_empty()).then_some(live_output),
            },
            failed: self.failed,
            quiet: self.quiet,
            replay,
            local: local.then(|| match jobs {
                Some(jobs) => jobs as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            }),
        }
    }
}

/// A file named on the command line, refused with its name (written with U+FFFD for the
/// bytes that are not UTF-8) when it is not UTF-8: a worker could not be told it.
fn utf8_file() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().try_map(|name| {
        name.into_string().map_err(|name| {
            format!(
                "{} has a name that is not UTF-8 (shown with \u{fffd} for the bytes that are not), so it cannot be named to a worker; rename it",
                name.to_string_lossy()
            )
        })
    })
}

/// `gorgon listen` (`--check`: check the config and the broker, and exit).
async fn listen(config: &Path, check: bool) -> Result<i32, CliError> {
    if check {
        init_logging("error", LogTarget::Stderr);
        println!("{}", gorgon_listener::check(config).await?);
        return Ok(exit_code::SUCCESS);
    }
    let settings = gorgon_listener::ListenerSettings::load(config)?;
    settings.warn_unknown_keys(config);
    gorgon_listener::refuse_root(&settings, config)?;
    match &settings.log_file {
        Some(path) => init_logging("info", LogTarget::File(path)),
        None => init_logging("info", LogTarget::Stderr),
    }
    // The first SIGTERM (or Ctrl-C) drains the listener, the second stops it.
    let (drain, drain_requested) = tokio::sync::oneshot::channel::<()>();
    let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::spawn(async move {
        for request in [drain, stop] {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            let _ = request.send(());
        }
    });
    let drain = async {
        let _ = drain_requested.await;
    };
    let shutdown = async {
        let _ = stop_requested.await;
    };
    gorgon_listener::run(settings, drain, shutdown)
        .await
        .map_err(CliError::ListenerStopped)?;
    Ok(exit_code::SUCCESS)
}

/// `gorgon completions`: prints the script, without the hidden subcommands.
fn completions(shell: clap_complete::Shell) {
    // Some shells' generators offer hidden subcommands; leave the internal ones out.
    let full = Cli::command();
    let mut visible = clap::Command::new("gorgon")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible, "gorgon", &mut script);
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
}

/// `gorgon __man DIR`: the man pages of every command users see, made from the same
/// definitions as `--help` (hidden commands are left out).
fn man_pages(dir: &Path) -> Result<(), CliError> {
    let write = |source| CliError::ManPages {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(write)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(write)
}

/// `gorgon work`: this CI node's part of a build.
async fn node(args: NodeArgs) -> Result<i32, CliError> {
    let level = if args.verbose { "info" } else { "warn" };
    init_logging(level, LogTarget::Stderr);
    let options = gorgon_originator::ci::BuildOptions {
        build_id: args.build_id,
        worker_id: args.worker_id,
        jobs: args.jobs,
        report: args.report,
        start: StartOptions {
            config: args.config,
            junit: args.junit,
            events: args.events,
            quiet: args.quiet,
            ..StartOptions::default()
        },
    };
    Ok(gorgon_originator::ci::work(options).await?)
}

/// `gorgon report`: a run's HTML page from its event stream, or a CI build's report.
async fn report(args: ReportArgs) -> Result<i32, CliError> {
    if let (Some(events), Some(html)) = (&args.events, &args.html) {
        let timeline = gorgon_originator::html::Timeline::from_file(events)?;
        gorgon_originator::html::write(html, &timeline)?;
        println!("Wrote {}", html.display());
        return Ok(exit_code::SUCCESS);
    }
    init_logging("warn", LogTarget::Stderr);
    let options = gorgon_originator::ci::BuildOptions {
        build_id: args.build_id,
        start: StartOptions {
            config: args.config,
            junit: args.junit,
            events: args.events_to,
            html: args.html,
            quiet: args.quiet,
            ..StartOptions::default()
        },
        ..Default::default()
    };
    Ok(gorgon_originator::ci::report(options).await?)
}

/// `gorgon start_rsync`: an rsync daemon serving `dir`, with passwords or anonymous.
async fn start_rsync(
    dir: &Path,
    port: u16,
    address: Option<&str>,
    secrets: Option<&Path>,
    anonymous: bool,
) -> Result<(), CliError> {
    let passwords = match (secrets, anonymous) {
        (Some(path), _) => Some(gorgon_exec::rsync::passwords_from_config(path)?),
        (None, true) => {
            eprintln!("gorgon: warning: the file server is anonymous: anyone who reaches port {port} can read and write every project's tree");
            None
        }
        (None, false) => return Err(CliError::FileServerWithoutPasswords),
    };
    gorgon_exec::rsync::start_daemon(dir, port, address, passwords.as_ref()).await?;
    println!(
        "rsync daemon serving {} on port {port} (stop it with `gorgon stop_rsync --port {port}`)",
        dir.display()
    );
    Ok(())
}

/// `gorgon init` in the current folder.
fn init_project(
    broker: Option<String>,
    file_server: Option<String>,
    force_kind: Option<String>,
) -> Result<(), InitError> {
    use gorgon_originator::init::{self, InitOptions, ProjectKind};
    let options = InitOptions {
        dir: PathBuf::from("."),
        broker,
        file_server,
        force_kind: force_kind.as_deref().and_then(ProjectKind::from_name),
    };
    let done = init::init(&options)?;
    let how = if done.detected {
        "detected"
    } else if options.force_kind.is_some() {
        "as asked"
    } else {
        "no RSpec, Minitest or pytest tests found"
    };
    println!(
        "Wrote {} ({} project, {how}); files: {}",
        init::CONFIG_FILE,
        done.kind.title(),
        done.files.join(", ")
    );
    println!("Check the broker and file server in it, then run `gorgon ping` and `gorgon start`.");
    Ok(())
}

/// `gorgon install_listener`: prints or writes the listener's config and unit.
fn install_listener(
    options: &gorgon_listener::install::InstallOptions,
    print: bool,
) -> Result<(), InstallError> {
    let installation = options.render()?;
    if print {
        let text = format!(
            "# {}\n{}\n# {}\n{}",
            installation.config_path.display(),
            installation.config,
            installation.unit_path.display(),
            installation.unit
        );
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
        return Ok(());
    }
    installation.write(options.force, &options.user)?;
    println!("Wrote {}", installation.config_path.display());
    println!("Wrote {}", installation.unit_path.display());
    if !gorgon_listener::install::user_exists(&options.user) {
        println!(
            "The user {} does not exist yet: create it with `useradd --system --home-dir /var/lib/gorgon {}`.",
            options.user, options.user
        );
    }
    println!("Start it with: systemctl daemon-reload && systemctl enable --now gorgon-listener");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_stays_quiet_unless_the_log_filter_names_it() {
        assert_eq!(log_filter(None, "warn"), "warn,lapin=off");
        assert_eq!(log_filter(Some("info"), "warn"), "info,lapin=off");
        assert_eq!(log_filter(Some(" "), "info"), "info,lapin=off");
        assert_eq!(
            log_filter(Some("info,lapin=debug"), "warn"),
            "info,lapin=debug"
        );
    }

    #[test]
    fn each_error_exits_with_its_documented_code() {
        let install = |error| CliError::Install(error).exit_code();
        assert_eq!(install(InstallError::NoSlots), exit_code::CONFIG_OR_BROKER);
        assert_eq!(
            install(InstallError::TooManySlots(2000)),
            exit_code::CONFIG_OR_BROKER
        );
        assert_eq!(
            install(InstallError::BadBroker("h:x".into())),
            exit_code::CONFIG_OR_BROKER
        );
        assert_eq!(
            install(InstallError::Exists(PathBuf::from("/etc/gorgon"))),
            exit_code::FAILURE
        );
        assert_eq!(
            CliError::PingTimeout.exit_code(),
            exit_code::CONFIG_OR_BROKER
        );
        let interrupted = StartError::Stopped {
            signal: gorgon_exec::signals::StopSignal::Interrupt,
            during: "pushing the source tree",
        };
        assert_eq!(
            CliError::Start(interrupted).exit_code(),
            exit_code::INTERRUPTED
        );
        let init = InitError::Exists(PathBuf::from("gorgon.json"));
        assert_eq!(CliError::Init(init).exit_code(), exit_code::FAILURE);
        let assignment = CliError::Assignment(AssignmentError::Missing);
        assert_eq!(assignment.exit_code(), exit_code::FAILURE);
    }

    #[test]
    fn an_error_is_told_with_each_cause_not_already_said() {
        /// An error with a source, saying it (or not) in its own message.
        #[derive(Debug, thiserror::Error)]
        #[error("{message}")]
        struct Layer {
            message: String,
            #[source]
            source: Option<Box<Layer>>,
        }
        let layer = |message: &str, source: Option<Layer>| Layer {
            message: message.to_owned(),
            source: source.map(Box::new),
        };
        let root = layer("connection refused", None);
        let says_its_source = layer("cannot connect to h:1: connection refused", Some(root));
        let error = layer("the run cannot start", Some(says_its_source));
        assert_eq!(
            error_lines(&error),
            [
                "gorgon: the run cannot start",
                "  caused by: cannot connect to h:1: connection refused"
            ]
        );
        let io = std::io::Error::other("permission denied");
        let start = StartError::EventsFile {
            path: PathBuf::from("/e.jsonl"),
            source: io,
        };
        assert_eq!(
            error_lines(&CliError::Start(start)),
            ["gorgon: cannot write the events file /e.jsonl: permission denied"]
        );
    }
}
