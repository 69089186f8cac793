//! Test harness for the end-to-end tests: a real rsync daemon, real listeners and the real
//! `gorgon` binary against the RabbitMQ broker on 127.0.0.1:5672, each test with its own
//! cluster id, ports and folders so that tests can run side by side.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const GORGON: &str = env!("CARGO_BIN_EXE_gorgon");

pub mod delay_proxy;
mod eventually;
pub mod rabbit_node;
pub mod tamper;
pub mod tls_broker;

// Each test binary uses its own share of the harness.
#[allow(unused_imports)]
pub use eventually::{eventually, eventually_async, none_left, poll};

/// The broker the tests use; `AMQP_HOST` / `AMQP_PORT` override it.
pub fn broker_host() -> String {
    gorgon_protocol::BrokerSettings::for_tests().host
}

pub fn broker_port() -> u16 {
    gorgon_protocol::BrokerSettings::for_tests().port
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A cluster: file server, listeners, and the folders of one test. Everything it started is
/// stopped when it is dropped.
pub struct Cluster {
    pub id: String,
    pub root: tempfile::TempDir,
    pub rsync_port: u16,
    listeners: Vec<Child>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster::serving(&["--anonymous"])
    }

    /// A cluster with a listener of each `(name, slots)` started.
    pub fn with_listeners(listeners: &[(&str, u32)]) -> Cluster {
        let mut cluster = Cluster::new();
        for (name, slots) in listeners {
            cluster.start_listener(name, *slots);
        }
        cluster
    }

    /// A cluster whose file server has an `originator` and a `listener` user with these
    /// passwords; projects and listeners must name theirs.
    pub fn with_file_server_passwords(originator: &str, listener: &str) -> Cluster {
        let secrets = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            secrets.path(),
            serde_json::json!({"file_server": {"originator_password": originator, "listener_password": listener}})
                .to_string(),
        )
        .unwrap();
        Cluster::serving(&["--secrets", secrets.path().to_str().unwrap()])
    }

    /// A cluster whose file server is started with these extra `start_rsync` arguments.
    fn serving(arguments: &[&str]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let rsync_port = free_port();
        let served = root.path().join("file_server");
        std::fs::create_dir_all(&served).unwrap();
        let output = Command::new(GORGON)
            .args(["start_rsync"])
            .arg(&served)
            .args(["--port", &rsync_port.to_string(), "--address", "127.0.0.1"])
            .args(arguments)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "start_rsync failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Cluster {
            id: format!("test-{}", uuid::Uuid::new_v4().simple()),
            root,
            rsync_port,
            listeners: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Writes a listener config and starts `gorgon listen` with it.
    pub fn start_listener(&mut self, name: &str, slots: u32) {
        self.start_listener_with(name, slots, serde_json::json!({}));
    }

    /// [`Cluster::start_listener`] with `extra` keys merged into its config.
    pub fn start_listener_with(&mut self, name: &str, slots: u32, extra: serde_json::Value) {
        self.start_listener_with_env(name, slots, extra, &[]);
    }

    /// [`Cluster::start_listener_with`], the listener with extra environment variables.
    pub fn start_listener_with_env(
        &mut self,
        name: &str,
        slots: u32,
        extra: serde_json::Value,
        env: &[(&str, &str)],
    ) {
        let dir = self.path().join("listeners").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = serde_json::json!({
            "connection": {"host": broker_host(), "port": broker_port()},
            "worker_slots": slots,
            "cluster_id": self.id,
            "name": name,
            "workspace_root": dir.join("workspaces"),
            "log_file": dir.join("listener.log"),
            // The tests run as root on CI machines that are thrown away.
            "allow_root": true,
            // A listener dropped with jobs still running (its first SIGTERM drains it) stops
            // them well within the drop's wait.
            "drain_timeout": 3,
        });
        merge(&mut config, extra);
        let path = dir.join("gorgon_listener.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let child = Command::new(GORGON)
            .args(["listen", "--config"])
            .arg(&path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.listeners.push(child);
    }

    /// The log of a listener started by [`Cluster::start_listener`].
    pub fn listener_log(&self, name: &str) -> String {
        std::fs::read_to_string(
            self.path()
                .join("listeners")
                .join(name)
                .join("listener.log"),
        )
        .unwrap_or_default()
    }

    /// Waits until `gorgon ping` counts `count` listeners, or fails the test after 30 s.
    pub fn wait_for_listeners(&self, project: &Project, count: usize) {
        let expected = format!("{count} listener(s) of cluster");
        eventually(
            Duration::from_secs(30),
            format!("gorgon ping to count {count} listeners"),
            || {
                let output = project.gorgon(&["ping", "--timeout", "0.5"]);
                let stdout = String::from_utf8_lossy(&output.stdout);
                if stdout.contains(&expected) {
                    Ok(())
                } else {
                    Err(format!(
                        "{stdout}\n{}",
                        String::from_utf8_lossy(&output.stderr)
                    ))
                }
            },
        );
    }

    /// A project folder with a `gorgon.json` for this cluster; `job` is merged into it.
    pub fn project(&self, name: &str, job: serde_json::Value) -> Project {
        let dir = self.path().join("projects").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = serde_json::json!({
            "connection": {"host": broker_host(), "port": broker_port()},
            "file_server": {"host": "127.0.0.1", "port": self.rsync_port},
            "files": ["tests/**/*_test.sh"],
            "cluster_id": self.id,
            "runtime_file": "gorgon-runtime.json",
            "failed_files": "gorgon-failed.json",
            "job": {"runner": {"command": "sh {file}"}, "listener_wait": 30},
        });
        merge(&mut config, job);
        std::fs::write(
            dir.join("gorgon.json"),
            serde_json::to_string_pretty(&config).unwrap(),
        )
        .unwrap();
        Project { dir }
    }
}

fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(base), serde_json::Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for child in &mut self.listeners {
            // A listener that does not stop gently within its grace is killed: a drop never
            // fails the test, so this wait gives up silently.
            let _ = poll(Duration::from_secs(10), || {
                matches!(child.try_wait(), Ok(Some(_)))
            });
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(GORGON)
            .args(["stop_rsync", "--port", &self.rsync_port.to_string()])
            .output();
    }
}

/// A project on the originator's side.
pub struct Project {
    pub dir: PathBuf,
}

/// What one `gorgon` command did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

impl Project {
    /// Writes a file below the project.
    pub fn write(&self, relative: &str, text: &str) {
        let path = self.dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.dir.join(relative)).unwrap()
    }

    pub fn gorgon(&self, args: &[&str]) -> Output {
        Command::new(GORGON)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs `gorgon start` with `args`, failing the test if it takes longer than `limit`.
    pub fn start(&self, args: &[&str], limit: Duration) -> Run {
        self.start_with_env(args, &[], limit)
    }

    /// [`Project::start`] with extra environment variables.
    pub fn start_with_env(&self, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.spawn_start(args, &env).wait(limit)
    }
}

impl Run {
    /// Fails the test unless the run exited with `code` and its report (stdout) says each
    /// of `report`.
    #[track_caller]
    pub fn assert_report(&self, code: i32, report: &[&str]) {
        self.assert_exit(code);
        self.assert_stdout(report);
    }

    /// Fails the test unless the run exited with `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(self.code, code, "{self:?}");
    }

    /// Fails the test unless the run's report (stdout) says each of `report`.
    #[track_caller]
    pub fn assert_stdout(&self, report: &[&str]) {
        for said in report {
            assert!(self.stdout.contains(said), "no {said:?} in: {self:?}");
        }
    }

    /// Fails the test unless the run's output (stdout, then stderr) says each of `said`.
    #[track_caller]
    pub fn assert_output(&self, said: &[&str]) {
        let all = format!("{}{}", self.stdout, self.stderr);
        for said in said {
            assert!(all.contains(said), "no {said:?} in: {self:?}");
        }
    }

    /// Fails the test unless the run's stderr says each of `said`.
    #[track_caller]
    pub fn assert_stderr(&self, said: &[&str]) {
        for said in said {
            assert!(self.stderr.contains(said), "no {said:?} in: {self:?}");
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.seconds, self.stdout, self.stderr
        )
    }
}

/// Test files that record each run in `record_dir` (one line per run), pass, or fail with
/// a message naming themselves.
pub fn recording_test(record_dir: &Path, name: &str, fail: bool) -> String {
    let record = record_dir.join("runs.log");
    let verdict = if fail {
        format!("echo \"assertion failed in {name}: expected 1, got 2\"\nexit 1\n")
    } else {
        "exit 0\n".to_owned()
    };
    format!(
        "echo \"{name} $GORGON_HOST $GORGON_WORKER_ID\" >> '{}'\n{verdict}",
        record.display()
    )
}

/// A test file that records its run in `record`, marks that it has started, then takes
/// `seconds`.
pub fn slow_test(record: &Path, name: &str, seconds: f64) -> String {
    format!(
        "echo \"{name}\" >> '{runs}'\ntouch '{marks}/{mark}.started'\nsleep {seconds}\n",
        runs = record.join("runs.log").display(),
        marks = record.display(),
        mark = name.replace('/', "_"),
    )
}

/// A test file that walks up to its worker process (`gorgon __work`) and SIGKILLs it: a
/// crash every time it runs.
pub const WORKER_KILLER: &str = "p=$$\n\
     while [ \"$p\" -gt 1 ]; do\n\
       if tr '\\0' ' ' < /proc/$p/cmdline | grep -q __work; then kill -9 $p; sleep 5; fi\n\
       p=$(awk '{print $4}' /proc/$p/stat)\n\
     done\n\
     echo 'no worker found'; exit 3\n";

/// Every `tests/NN_test.sh` of a [`slow_test`] suite of `files` ran to a result at least
/// once (a file whose worker died runs again).
pub fn assert_every_file_ran(record: &Path, files: usize) {
    let runs = recorded_runs(record);
    for i in 0..files {
        let file = format!("tests/{i:02}_test.sh");
        assert!(runs.contains(&file), "{file} never ran: {runs:?}");
    }
}

/// Waits until the first file of a [`slow_test`] suite recorded in `record` has started.
#[track_caller]
pub fn wait_for_first_start(record: &Path) {
    wait_for_file(
        &record.join("tests_00_test.sh.started"),
        Duration::from_secs(30),
    );
}

/// SIGKILLs `pid`, as a crash would.
pub fn sigkill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// The run passed with all `files` files passed, and each of a [`slow_test`] suite ran.
pub fn assert_all_passed(run: &Run, record: &Path, files: usize) {
    assert_eq!(run.code, 0, "{run:?}");
    let totals = format!("{files} files: {files} passed, 0 failed, 0 crashed, 0 not run");
    assert!(run.stdout.contains(&totals), "{run:?}");
    assert_every_file_ran(record, files);
}

/// Ctrl-C once the first file of a [`slow_test`] suite of `files` has started: the run
/// ends within seconds with 130, and reports every file as not run.
pub fn interrupt_once_started(run: Started, record: &Path, files: usize) -> Run {
    wait_for_first_start(record);
    run.interrupt();
    let run = run.wait(Duration::from_secs(15));
    assert_eq!(run.code, 130, "{run:?}");
    assert!(run.stdout.contains("Run stopped: interrupted"), "{run:?}");
    let totals = format!("{files} files: 0 passed, 0 failed, 0 crashed, {files} not run");
    assert!(run.stdout.contains(&totals), "{run:?}");
    run
}

/// The lines of the record written by [`recording_test`] files.
pub fn recorded_runs(record_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(record_dir.join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A process that belongs to a cluster's jobs.
#[derive(Debug)]
pub struct JobProcess {
    pub pid: i32,
    pub command: String,
}

fn process_command(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn process_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
        })
        .unwrap_or(true)
}

/// The parent of process `pid`, while it lives.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
}

/// Whether process `pid` still lives (a zombie does not).
pub fn process_lives(pid: i32) -> bool {
    !process_is_zombie(pid)
}

/// The pids of the machine's live processes (not zombies).
fn live_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !process_is_zombie(*pid))
        .collect()
}

/// Live processes (not zombies) working under `dir`: by working directory, or by a
/// `GORGON_WORKSPACE` below it in their environment (tests and callbacks that changed
/// directory).
fn processes_under(dir: &Path) -> Vec<JobProcess> {
    let workspace_tag = format!("{}={}", gorgon_exec::tags::WORKSPACE, dir.display());
    let mut found = Vec::new();
    for pid in live_pids() {
        let in_cwd =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir));
        let tagged = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|&b| b == 0)
                .any(|entry| entry.starts_with(workspace_tag.as_bytes()))
        });
        if in_cwd || tagged {
            found.push(JobProcess {
                pid,
                command: process_command(pid),
            });
        }
    }
    found
}

/// Processes (not zombies) whose command line is `command` (its words joined by spaces).
pub fn processes_running(command: &str) -> Vec<JobProcess> {
    live_pids()
        .into_iter()
        .map(|pid| JobProcess {
            pid,
            command: process_command(pid),
        })
        .filter(|process| process.command == command)
        .collect()
}

/// Processes (not zombies) working in `dir` or below it: what a local run in `dir` starts
/// (workers, tests, callbacks).
pub fn processes_working_in(dir: &Path) -> Vec<JobProcess> {
    processes_under(dir)
}

impl Cluster {
    /// Processes working inside this cluster's listener folders: worker managers, workers,
    /// tests and callbacks (by working directory or `GORGON_WORKSPACE`). Listeners
    /// themselves run elsewhere and are not counted.
    pub fn job_processes(&self) -> Vec<JobProcess> {
        processes_under(&self.path().join("listeners"))
    }

    /// Waits up to `limit` until no process of the cluster's jobs is left; fails the test
    /// with the survivors otherwise.
    pub fn assert_no_job_processes(&self, limit: Duration) {
        eventually(limit, "no process of the job to be left", || {
            none_left(self.job_processes())
        });
    }

    /// Runs jobs of 12 quick files until one of them runs a file on listener `name` (back
    /// from a freeze or a partition, it takes jobs like the others); fails the test after
    /// 60 s.
    pub fn assert_takes_a_next_job(&self, name: &str) {
        let next = self.project(&format!("after-{name}"), serde_json::json!({}));
        for i in 0..12 {
            next.write(
                &format!("tests/{i:02}_test.sh"),
                "echo \"ran on $GORGON_HOST\"; sleep 0.3\n",
            );
        }
        let host = format!("\"host\":\"{name}\"");
        eventually(
            Duration::from_secs(60),
            format!("listener {name} to take a job"),
            || {
                let run = next.start(&["--events", "events.ndjson"], Duration::from_secs(120));
                run.assert_report(0, &["12 files: 12 passed"]);
                if next.read("events.ndjson").contains(&host) {
                    Ok(())
                } else {
                    Err(self.listener_log(name))
                }
            },
        );
    }

    /// Waits until a process of listener `name` whose command line contains `needle` runs,
    /// and returns its pid.
    pub fn wait_for_process(&self, name: &str, needle: &str, limit: Duration) -> i32 {
        let root = self.path().join("listeners").join(name);
        let what = format!("a process `{needle}` of listener {name}");
        eventually(limit, what, || {
            let found = self.job_processes().into_iter().find(|p| {
                p.command.contains(needle)
                    && std::fs::read_link(format!("/proc/{}/cwd", p.pid))
                        .is_ok_and(|cwd| cwd.starts_with(&root))
            });
            found.map(|process| process.pid)
        })
    }

    /// Where listener `name` is in `self.listeners`.
    fn listener_index(&self, name: &str) -> usize {
        let config = self
            .path()
            .join("listeners")
            .join(name)
            .join("gorgon_listener.json");
        self.listeners
            .iter()
            .position(|child| {
                process_command(child.id() as i32).contains(&config.display().to_string())
            })
            .expect("the listener runs")
    }

    /// The pid of listener `name`.
    fn listener_pid(&self, name: &str) -> i32 {
        self.listeners[self.listener_index(name)].id() as i32
    }

    /// The command lines of the warm runners listener `name` keeps (its children running
    /// `gorgon_warm.rb` or `gorgon_warm.py`).
    pub fn warm_runners(&self, name: &str) -> Vec<String> {
        let listener = self.listener_pid(name);
        let mut found = Vec::new();
        for pid in live_pids() {
            let command = process_command(pid);
            if parent_of(pid) == Some(listener)
                && command.contains("gorgon_warm.")
                && !process_is_zombie(pid)
            {
                found.push(command);
            }
        }
        found
    }

    /// The pids of the spare worker managers listener `name` keeps: its children started
    /// as `__manage-workers --spare` that no job has taken yet (a job's manager works in
    /// the job's workspace, a spare in `/`).
    pub fn spare_managers(&self, name: &str) -> Vec<i32> {
        let listener = self.listener_pid(name);
        live_pids()
            .into_iter()
            .filter(|pid| {
                parent_of(*pid) == Some(listener)
                    && process_command(*pid).contains("__manage-workers --spare")
                    && std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd == Path::new("/"))
            })
            .collect()
    }

    /// Waits until listener `name` keeps one spare worker manager: its pid.
    pub fn wait_for_spare_manager(&self, name: &str, limit: Duration) -> i32 {
        let what = format!("listener {name} to keep a spare worker manager");
        eventually(limit, what, || match self.spare_managers(name)[..] {
            [pid] => Ok(pid),
            ref spares => Err(spares.to_vec()),
        })
    }

    /// Waits until listener `name` keeps a warm runner running `script` that listens on its
    /// socket (the last word of its command line).
    pub fn wait_for_warm_runner(&self, name: &str, script: &str, limit: Duration) {
        let what = format!("listener {name} to keep a warm runner {script}");
        eventually(limit, what, || {
            let runners = self.warm_runners(name);
            let serving = runners.iter().any(|command| {
                command.contains(script)
                    && command
                        .split_whitespace()
                        .last()
                        .is_some_and(|socket| Path::new(socket).exists())
            });
            if serving {
                Ok(())
            } else {
                Err(runners)
            }
        });
    }

    /// Sends `signal` to listener `name` and every process of it (SIGSTOP: the whole host
    /// freezes, as in a swap storm or a partition; SIGCONT: it thaws).
    pub fn signal_listener(&self, name: &str, signal: nix::sys::signal::Signal) -> usize {
        let root = self.path().join("listeners").join(name);
        let mut pids = vec![self.listeners[self.listener_index(name)].id() as i32];
        pids.extend(processes_under(&root).into_iter().map(|p| p.pid));
        for pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal);
        }
        pids.len()
    }

    /// Sends SIGTERM to listener `name` (itself, as a service manager does) and waits for it
    /// to exit, failing the test after `limit`: its exit status and how long it took.
    pub fn terminate_listener(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let pid = self.listeners[self.listener_index(name)].id();
        let asked = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.wait_for_listener_exit(name, limit);
        (status, asked.elapsed())
    }

    /// Waits for listener `name` to exit (a drain asked otherwise than by a signal, say),
    /// failing the test after `limit`: its exit status.
    pub fn wait_for_listener_exit(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> std::process::ExitStatus {
        let position = self.listener_index(name);
        let mut listener = self.listeners.remove(position);
        eventually(limit, format!("listener {name} to exit"), || {
            listener.try_wait().unwrap()
        })
    }

    /// SIGKILLs listener `name` and every process of it: the whole host dies at once.
    pub fn kill_listener(&mut self, name: &str) {
        let root = self.path().join("listeners").join(name);
        let position = self.listener_index(name);
        let mut listener = self.listeners.remove(position);
        let mut victims = vec![listener.id() as i32];
        victims.extend(processes_under(&root).into_iter().map(|p| p.pid));
        for pid in victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = listener.wait();
    }

    /// The workspaces listener `name` has on disk right now (one folder per project and
    /// concurrent job: `workspace_root/<project>/<n>`).
    pub fn workspaces(&self, name: &str) -> Vec<PathBuf> {
        let root = self.path().join("listeners").join(name).join("workspaces");
        let mut found = Vec::new();
        for project in std::fs::read_dir(root).into_iter().flatten().flatten() {
            for entry in std::fs::read_dir(project.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.path().is_dir() {
                    found.push(entry.path());
                }
            }
        }
        found
    }
}

/// A `gorgon start` running in the background.
pub struct Started {
    child: Child,
    out: std::thread::JoinHandle<String>,
    /// Its stderr so far, read line by line, so that a test can wait for a line.
    err: std::sync::Arc<std::sync::Mutex<String>>,
    err_reader: std::thread::JoinHandle<()>,
    started: Instant,
}

impl Project {
    /// Starts `gorgon start` in the background, with extra environment.
    pub fn spawn_start(&self, args: &[&str], env: &[(&str, String)]) -> Started {
        self.spawn_gorgon("start", args, env)
    }

    /// Starts `gorgon COMMAND` in the project's folder in the background, with extra
    /// environment.
    pub fn spawn_gorgon(&self, command: &str, args: &[&str], env: &[(&str, String)]) -> Started {
        let mut child = Command::new(GORGON)
            .arg(command)
            .args(args)
            .current_dir(&self.dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let lines = std::sync::Arc::clone(&err);
        let err_reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = lines.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Started {
            out: std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default()),
            err,
            err_reader,
            child,
            started: Instant::now(),
        }
    }
}

impl Started {
    /// The process id of the `gorgon` process.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGINT, as Ctrl-C in a terminal would.
    pub fn interrupt(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }

    /// Waits until the run has printed a stderr line containing `needle`, failing the test
    /// after `limit`.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) {
        eventually(limit, format!("gorgon to print {needle:?}"), || {
            let err = self.err.lock().unwrap();
            if err.contains(needle) {
                Ok(())
            } else {
                Err(format!("stderr:\n{err}"))
            }
        });
    }

    /// Waits for the run to end, failing the test after `limit`.
    pub fn wait(self, limit: Duration) -> Run {
        self.wait_explained(limit, String::new)
    }

    /// [`Started::wait`], adding what `explain` says (logs of the other parties) when the
    /// run does not end in time.
    pub fn wait_explained(mut self, limit: Duration, explain: impl FnOnce() -> String) -> Run {
        // Not [`eventually`]: a run that does not end is killed before its output is shown.
        let Ok(status) = poll(limit, || self.child.try_wait().unwrap()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = self.err_reader.join();
            panic!(
                "gorgon did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}\n{}",
                self.out.join().unwrap(),
                self.err.lock().unwrap(),
                explain()
            );
        };
        let _ = self.err_reader.join();
        let stderr = std::mem::take(&mut *self.err.lock().unwrap());
        Run {
            code: status.code().unwrap_or(-1),
            stdout: self.out.join().unwrap(),
            stderr,
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// The job id of a run, from the first event of its `--events` file.
pub fn job_id_from_events(events: &Path) -> uuid::Uuid {
    let text = std::fs::read_to_string(events).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    uuid::Uuid::parse_str(first["job_id"].as_str().unwrap()).unwrap()
}

/// Waits until `path` exists, failing the test after `limit`.
#[track_caller]
pub fn wait_for_file(path: &Path, limit: Duration) {
    eventually(limit, format!("{} to appear", path.display()), || {
        path.exists()
    });
}

/// Runs `rabbitmqctl COMMAND`, failing the test if it fails.
/// The environment variable naming the broker node that [`rabbitmqctl`] and
/// [`left_on_broker`] talk to, where a harness runs a node of its own.
pub const RABBIT_NODE: &str = "GORGON_TEST_RABBIT_NODE";

/// `rabbitmqctl`, for the node [`RABBIT_NODE`] names, or the default one.
fn rabbitmqctl_command() -> Command {
    let mut command = Command::new("rabbitmqctl");
    if let Ok(node) = std::env::var(RABBIT_NODE) {
        command.args(["-n", &node]);
    }
    command
}

pub fn rabbitmqctl(command: &str) {
    let output = rabbitmqctl_command().arg(command).output().unwrap();
    assert!(
        output.status.success(),
        "rabbitmqctl {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The names of job `job`'s `what` (`"list_queues"`, `"list_exchanges"`) still on the broker.
pub fn left_on_broker(what: &str, job: &str) -> Vec<String> {
    let output = rabbitmqctl_command()
        .args([what, "name", "-q"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|name| name.contains(job))
        .map(str::to_owned)
        .collect()
}

/// Waits up to `limit` until nothing of job `job` (queue or exchange) is left on the broker,
/// failing the test otherwise.
pub fn assert_nothing_left_on_broker(job: &str, limit: Duration) {
    eventually(limit, "nothing of the job to be left on the broker", || {
        let mut left = left_on_broker("list_queues", job);
        left.extend(left_on_broker("list_exchanges", job));
        none_left(left)
    });
}

/// Publishes a job for each of `ids` on the cluster's jobs exchange, all at once (each
/// publish waits for its confirm in a task of its own). Each job has its control exchange,
/// as a running originator's has.
pub async fn publish_jobs(
    broker: gorgon_protocol::Broker,
    jobs: String,
    ids: Vec<uuid::Uuid>,
    source: String,
    replies: String,
) {
    let mut publishing = tokio::task::JoinSet::new();
    for id in ids {
        let job = gorgon_protocol::Message::Job {
            definition: Box::new(gorgon_protocol::JobDefinition::with_command(
                &source,
                "sh {file}",
                Default::default(),
            )),
            reply_to: replies.clone(),
        };
        let (broker, jobs) = (broker.clone(), jobs.clone());
        publishing.spawn(async move {
            broker
                .declare_fanout(&gorgon_protocol::names::control_exchange(id))
                .await?;
            broker
                .publish(&jobs, &gorgon_protocol::Envelope::new(id, job))
                .await
        });
    }
    while let Some(published) = publishing.join_next().await {
        published.unwrap().unwrap();
    }
}
