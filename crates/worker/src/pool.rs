//! One pool of worker processes (`gorgon __work`, which speak lines only): it starts
//! the workers its feeder asks for (at most one per slot), each in its own process group,
//! hands idle workers their files on stdin (one
//! at first, then as many as fit in one batch), reads their replies from stdout, restarts a
//! worker that crashed (within a budget) and gives back the files a dead worker held without
//! a result, and stops them all with SIGTERM, a grace period and SIGKILL, reaping each child
//! it started (it never signals a process group whose leader it has already reaped).
//!
//! The pool does not know where files come from: its feeder (the in-memory queue of
//! `gorgon start --local`, [`HandOutQueue`]) asks [`Pool::wants`] which workers are idle
//! and how many files each takes, gives them with [`Pool::give`], and takes back what
//! [`Pool::receive`] reports unfinished.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use gorgon_exec::lines::{read_line, Line};
use gorgon_exec::procs::{kill_worker_leftovers, worker_command};
use gorgon_exec::tail::{relay, LineTail};
use gorgon_exec::{describe_status, terminate_group};
use gorgon_protocol::names::WORKER_SUBCOMMAND;
use gorgon_protocol::{
    batch_size, BrokerSettings, DecodeError, Envelope, Message, WorkerAssignment,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;

/// How many times one worker slot is restarted after crashes; past that the slot stays
/// empty, so that a worker that cannot run at all does not loop.
pub const MAX_RESTARTS: u32 = 5;

/// How a worker process is started: `gorgon __work` in production, a script in tests.
#[derive(Clone, Debug)]
pub struct WorkerProgram {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl WorkerProgram {
    /// This very `gorgon` binary as a lines-only worker.
    pub fn gorgon() -> std::io::Result<WorkerProgram> {
        Ok(WorkerProgram {
            program: std::env::current_exe()?,
            args: vec![WORKER_SUBCOMMAND.to_owned()],
        })
    }
}

/// What a worker's reader task tells the pool.
pub enum PoolEvent {
    /// One line of the worker's stdout.
    Reply {
        worker_id: u32,
        envelope: Box<Result<Envelope, DecodeError>>,
        /// The line's length.
        bytes: usize,
    },
    /// The worker has exited; always its last event.
    Exited {
        worker_id: u32,
        status: std::io::Result<ExitStatus>,
        /// Its last stderr lines, for a crash report.
        output: String,
    },
}

/// What the pool made of one [`PoolEvent`].
pub enum Received {
    /// A message of the job from a worker.
    Reply {
        worker_id: u32,
        message: Message,
        /// Its length as the worker wrote it (about what it takes on the wire).
        bytes: usize,
    },
    /// A worker exited. `unfinished` are the files it held without a result, in the order it
    /// was given them; `crash` is its crash report when it ended badly without being asked
    /// to stop (it is restarted by [`Pool::restart_crashed`] if its budget allows).
    Exited {
        worker_id: u32,
        unfinished: Vec<String>,
        crash: Option<Message>,
    },
    /// Nothing for the feeder: a reply of another job or an unreadable line (logged).
    Nothing,
}

/// A running worker.
struct Worker {
    /// Process group (= pid) of the worker, for stopping it.
    group: Option<u32>,
    /// Where its files go; `None` once closed, which tells it that there are no more.
    stdin: Option<ChildStdin>,
    /// The files it was handed and has not reported finished, in the order handed.
    files: Vec<String>,
    /// The seconds and the count of the results since it was last idle, and the time per
    /// file they gave: it sizes the next hand-out the way a worker sizes its batches.
    since_idle: (f64, u32),
    seconds_per_file: Option<f64>,
    /// The task stopping it, once asked; aborted when it has exited, so that it never
    /// signals a process group whose id the system has since handed out again.
    stopper: Option<tokio::task::JoinHandle<()>>,
}

/// The worker processes of one job on one machine.
pub struct Pool {
    program: WorkerProgram,
    assignment: WorkerAssignment,
    /// `job.runner.batch_seconds`: how much expected work an idle worker is handed at once.
    batch_limit: Option<Duration>,
    workers: BTreeMap<u32, Worker>,
    restarts: HashMap<u32, u32>,
    /// Slots whose worker crashed, to start again.
    restarting: Vec<u32>,
    sender: mpsc::UnboundedSender<PoolEvent>,
    /// The pool is stopping: an exit is not a crash, and nobody is restarted.
    stopping: bool,
}

impl Pool {
    /// A pool of `program`'s workers for `assignment` (whose `worker_id` each worker gets
    /// filled in); its events arrive on the returned receiver, to pass to
    /// [`Pool::receive`].
    pub fn new(
        program: WorkerProgram,
        assignment: WorkerAssignment,
    ) -> (Pool, mpsc::UnboundedReceiver<PoolEvent>) {
        let (sender, events) = mpsc::unbounded_channel();
        // Workers never connect to the broker: no credentials on their stdin.
        let assignment = WorkerAssignment {
            broker: BrokerSettings::default(),
            ..assignment
        };
        let pool = Pool {
            program,
            batch_limit: assignment.definition.runner.batch_limit(),
            assignment,
            workers: BTreeMap::new(),
            restarts: HashMap::new(),
            restarting: Vec::new(),
            sender,
            stopping: false,
        };
        (pool, events)
    }

    /// Starts worker `worker_id` in its own process group, hands it its assignment and
    /// starts the task that reads its replies and reports its exit.
    pub async fn spawn(&mut self, worker_id: u32) -> std::io::Result<()> {
        let assignment = &self.assignment;
        let job = assignment.job_id.to_string();
        let args: Vec<&str> = self.program.args.iter().map(String::as_str).collect();
        let mut child = gorgon_exec::reaper::spawn(&mut worker_command(
            &self.program.program,
            &args,
            &assignment.workspace,
            (&job, &assignment.host, worker_id),
        ))?;
        let group = child.id();
        let tail = LineTail::default();
        let stderr = child.stderr.take().map(|pipe| {
            relay(pipe, tail.clone(), move |line| {
                // One write per line keeps lines of different workers from interleaving.
                let _ = writeln!(std::io::stderr().lock(), "[worker {worker_id}] {line}");
            })
        });
        let mut stdin = child.stdin.take();
        if let Some(pipe) = stdin.as_mut() {
            let line = assignment.encode_line(Some(worker_id));
            if let Err(error) = pipe.write_all(&line).await {
                // The worker has already exited; its status and output tell why.
                tracing::warn!(%error, "cannot hand worker {worker_id} its assignment");
            }
        }
        let stdout = child.stdout.take();
        let sender = self.sender.clone();
        tokio::spawn(async move {
            if let Some(stdout) = stdout {
                let mut reader = BufReader::new(stdout);
                while let Ok(Some(line)) =
                    read_line(&mut reader, gorgon_protocol::message::MAX_MESSAGE_BYTES).await
                {
                    let (envelope, bytes) = match line {
                        Line::Text(line) => (Envelope::decode(line.as_bytes()), line.len()),
                        Line::TooLong { bytes, .. } => (Err(DecodeError::TooLarge(bytes)), bytes),
                    };
                    let _ = sender.send(PoolEvent::Reply {
                        worker_id,
                        envelope: Box::new(envelope),
                        bytes,
                    });
                }
            }
            let status = child.wait().await;
            // Its pipes close as it exits; the bound only guards against a stray holder.
            if let Some(stderr) = stderr {
                let _ = tokio::time::timeout(Duration::from_secs(1), stderr).await;
            }
            let _ = sender.send(PoolEvent::Exited {
                worker_id,
                status,
                output: tail.text(),
            });
        });
        self.workers.insert(
            worker_id,
            Worker {
                group,
                stdin,
                files: Vec::new(),
                since_idle: (0.0, 0),
                seconds_per_file: None,
                stopper: None,
            },
        );
        Ok(())
    }

    /// Takes in one event of a worker. `restart` says whether a crashed worker should be
    /// started again (there is work left).
    pub fn receive(&mut self, event: PoolEvent, restart: bool) -> Received {
        match event {
            PoolEvent::Reply {
                worker_id,
                envelope,
                bytes,
            } => match *envelope {
                Ok(envelope) if envelope.job_id == self.assignment.job_id => {
                    if let Message::FileFinished(result) = &envelope.message {
                        if let Some(worker) = self.workers.get_mut(&worker_id) {
                            worker.finished(&result.file, result.seconds);
                        }
                    }
                    Received::Reply {
                        worker_id,
                        message: envelope.message,
                        bytes,
                    }
                }
                Ok(envelope) => {
                    tracing::warn!(job = %envelope.job_id, "dropping a reply of another job");
                    Received::Nothing
                }
                Err(error) => {
                    tracing::warn!(%error, worker_id, "dropping an unreadable reply");
                    Received::Nothing
                }
            },
            PoolEvent::Exited {
                worker_id,
                status,
                output,
            } => self.exited(worker_id, status, output, restart),
        }
    }

    /// Forgets an exited worker and reports what it left.
    fn exited(
        &mut self,
        worker_id: u32,
        status: std::io::Result<ExitStatus>,
        output: String,
        restart: bool,
    ) -> Received {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return Received::Nothing;
        };
        if let Some(stopper) = worker.stopper {
            stopper.abort();
        }
        let unfinished = worker.files;
        let status = match status {
            Ok(status) if status.success() => {
                tracing::info!("worker {worker_id} finished");
                None
            }
            Ok(status) => Some(describe_status(status)),
            Err(error) => Some(format!("could not wait for it: {error}")),
        };
        if status.is_some() {
            // What a worker that ended badly (or was killed at the end of its grace) left
            // running: a persistent runner, a test's processes, each in a group of its own.
            let job = self.assignment.job_id.to_string();
            kill_worker_leftovers(&job, &self.assignment.host, worker_id);
        }
        let crash = match status {
            None => None,
            Some(status) if self.stopping => {
                tracing::info!("worker {worker_id} stopped ({status})");
                None
            }
            Some(status) => {
                tracing::warn!("worker {worker_id} crashed ({status})");
                if restart {
                    let count = self.restarts.entry(worker_id).or_default();
                    if *count < MAX_RESTARTS {
                        *count += 1;
                        tracing::info!("restarting worker {worker_id} ({count} of {MAX_RESTARTS})");
                        self.restarting.push(worker_id);
                    } else {
                        tracing::error!(
                            "worker {worker_id} crashed {MAX_RESTARTS} times; not restarting it"
                        );
                    }
                }
                Some(Message::WorkerCrashed {
                    host: self.assignment.host.clone(),
                    worker_id,
                    status,
                    output,
                })
            }
        };
        Received::Exited {
            worker_id,
            unfinished,
            crash,
        }
    }

    /// Starts again the workers that crashed since the last call.
    pub async fn restart_crashed(&mut self) {
        for worker_id in std::mem::take(&mut self.restarting) {
            if !self.stopping {
                if let Err(error) = self.spawn(worker_id).await {
                    tracing::error!(%error, "cannot restart worker {worker_id}");
                }
            }
        }
    }

    /// The idle workers, with how many files each takes now: one until it has timed a file,
    /// then as many as fit in one batch (see [`batch_size`]).
    pub fn wants(&self) -> Vec<(u32, usize)> {
        if self.stopping {
            return Vec::new();
        }
        self.workers
            .iter()
            .filter(|(_, worker)| worker.stdin.is_some() && worker.files.is_empty())
            .map(|(&worker_id, worker)| {
                (
                    worker_id,
                    hand_out_size(worker.seconds_per_file, self.batch_limit),
                )
            })
            .collect()
    }

    /// Hands `files` to worker `worker_id` in one write, so that the worker sees them
    /// together and can run them as one batch; returns them when it could not take them
    /// (it is exiting: its exit gives back only what it was given), for the feeder to keep.
    pub async fn give(&mut self, worker_id: u32, files: Vec<String>) -> Vec<String> {
        let job = self.assignment.job_id;
        let Some(stdin) = self
            .workers
            .get_mut(&worker_id)
            .and_then(|worker| worker.stdin.as_mut())
        else {
            return files;
        };
        let lines: Vec<u8> = files
            .iter()
            .flat_map(|file| Envelope::new(job, Message::file(file.clone())).encode_line())
            .collect();
        if stdin.write_all(&lines).await.is_err() {
            return files;
        }
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.files.extend(files);
        }
        Vec::new()
    }

    /// Tells every worker that no more files come (it closes their stdin): each finishes
    /// what it holds, runs `after_complete` and exits.
    pub fn close_all(&mut self) {
        for worker in self.workers.values_mut() {
            worker.stdin = None;
        }
    }

    /// Closes the stdin of each worker that holds no file: it runs `after_complete` and exits,
    /// while the others finish their files first (a drain).
    pub fn close_idle(&mut self) {
        for worker in self.workers.values_mut() {
            if worker.files.is_empty() {
                worker.stdin = None;
            }
        }
    }

    /// Whether any worker runs or is about to be restarted.
    pub fn any_worker(&self) -> bool {
        !self.workers.is_empty() || !self.restarting.is_empty()
    }

    /// How many workers run.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Stops every worker: SIGTERM to its group, `grace`, then SIGKILL. Calling it again
    /// (a second Ctrl-C, with no grace) replaces the stops under way.
    pub fn stop_all(&mut self, grace: Duration) {
        self.stopping = true;
        for worker in self.workers.values_mut() {
            worker.stdin = None;
            if let Some(group) = worker.group {
                if let Some(previous) = worker
                    .stopper
                    .replace(tokio::spawn(terminate_group(group, grace)))
                {
                    previous.abort();
                }
            }
        }
        self.restarting.clear();
    }
}

impl Worker {
    /// Its result for `file` arrived: once it holds no more files, the time per file of
    /// what it ran since it was last idle sizes its next hand-out.
    fn finished(&mut self, file: &str, seconds: f64) {
        let Some(at) = self.files.iter().position(|f| f == file) else {
            return;
        };
        self.files.remove(at);
        self.since_idle.0 += seconds;
        self.since_idle.1 += 1;
        if self.files.is_empty() {
            let (seconds, count) = std::mem::take(&mut self.since_idle);
            self.seconds_per_file = Some(seconds / f64::from(count));
        }
    }
}

/// How many files an idle worker takes: one until it has timed a file (or when batches are
/// off), then as many as fit in one batch.
fn hand_out_size(seconds_per_file: Option<f64>, batch_limit: Option<Duration>) -> usize {
    match (seconds_per_file, batch_limit) {
        (Some(seconds), Some(limit)) => batch_size(seconds, limit),
        _ => 1,
    }
}

/// The in-memory feeder's queue: files in queue order; the suspects, files whose worker
/// died before their result, which are handed out alone from then on so that a death during
/// one names it (as RabbitMQ's redelivered files are); and retries of failures, which go
/// first, alone, to another worker than the one they failed on when there is one.
#[derive(Debug, Default)]
pub struct HandOutQueue {
    queue: VecDeque<String>,
    suspects: HashSet<String>,
    /// Retry → the worker its last attempt failed on.
    retries: HashMap<String, u32>,
}

impl HandOutQueue {
    pub fn new(files: impl IntoIterator<Item = String>) -> HandOutQueue {
        HandOutQueue {
            queue: files.into_iter().collect(),
            ..HandOutQueue::default()
        }
    }

    /// Adds files at the end, in their order (the next phase's).
    pub fn extend(&mut self, files: impl IntoIterator<Item = String>) {
        self.queue.extend(files);
    }

    /// Up to `count` files for worker `worker_id`, in queue order, skipping those `settled`
    /// says have a result; a suspect or a retry goes alone (first, or left for the next
    /// worker), and a retry that failed on this worker is left for another when `others`
    /// (another worker runs).
    pub fn take(
        &mut self,
        worker_id: u32,
        count: usize,
        others: bool,
        settled: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut taken = Vec::new();
        let mut left = Vec::new();
        while taken.len() < count {
            let Some(file) = self.queue.pop_front() else {
                break;
            };
            if settled(&file) {
                self.retries.remove(&file);
                continue;
            }
            let retry = self.retries.get(&file).copied();
            if others && retry == Some(worker_id) {
                left.push(file);
                continue;
            }
            let alone = retry.is_some() || self.suspects.contains(&file);
            if alone && !taken.is_empty() {
                self.queue.push_front(file);
                break;
            }
            self.retries.remove(&file);
            taken.push(file);
            if alone {
                break;
            }
        }
        self.put_back(left);
        taken
    }

    /// A failure to run again, before everything else, away from `failed_on` (a worker).
    pub fn push_retry(&mut self, file: String, failed_on: u32) {
        self.retries.insert(file.clone(), failed_on);
        self.queue.push_front(file);
    }

    /// Files a worker could not take, back at the front, in their order.
    pub fn put_back(&mut self, files: Vec<String>) {
        for file in files.into_iter().rev() {
            self.queue.push_front(file);
        }
    }

    /// Files a worker held when it died, back at the front as suspects.
    pub fn put_back_suspects(&mut self, files: Vec<String>) {
        self.suspects.extend(files.iter().cloned());
        self.put_back(files);
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// How many files wait to be handed out.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::{Callbacks, JobDefinition};

    #[tokio::test]
    async fn workers_get_no_broker_credentials() {
        let workspace = tempfile::tempdir().unwrap();
        let assignment = WorkerAssignment {
            job_id: uuid::Uuid::new_v4(),
            definition: JobDefinition::with_command("unused/", "true", Callbacks::default()),
            reply_to: "unused".into(),
            broker: BrokerSettings {
                username: "manager".into(),
                password: "s3cret-of-the-manager".into(),
                ..BrokerSettings::default()
            },
            host: "h1".into(),
            workspace: workspace.path().to_owned(),
            slots: 1,
            worker_id: None,
            warm_runner: None,
            ruby_preload: None,
        };
        // The worker keeps the assignment it was given and exits.
        let program = WorkerProgram {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "read line; printf '%s' \"$line\" > assignment".into(),
            ],
        };
        let (mut pool, mut events) = Pool::new(program, assignment);
        pool.spawn(1).await.unwrap();
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("the worker exits")
                .expect("the pool's events are open");
            if let Received::Exited { .. } = pool.receive(event, false) {
                break;
            }
        }
        let given = std::fs::read_to_string(workspace.path().join("assignment")).unwrap();
        let given: WorkerAssignment = serde_json::from_str(&given).unwrap();
        assert_eq!(given.worker_id, Some(1));
        assert_eq!(given.broker, BrokerSettings::default());
    }

    fn queue(files: &[&str]) -> HandOutQueue {
        HandOutQueue::new(files.iter().map(|f| f.to_string()))
    }

    #[test]
    fn a_worker_gets_one_file_until_it_has_timed_one_then_a_batch() {
        let limit = Some(Duration::from_millis(250));
        assert_eq!(hand_out_size(None, limit), 1);
        assert_eq!(hand_out_size(Some(0.05), limit), 5);
        assert_eq!(hand_out_size(Some(2.0), limit), 1);
        // Batches off: one file at a time, however quick.
        assert_eq!(hand_out_size(Some(0.001), None), 1);
    }

    #[test]
    fn files_are_handed_in_queue_order_and_settled_ones_are_skipped() {
        let mut files = queue(&["a", "b", "c", "d"]);
        assert_eq!(files.take(1, 2, false, |f| f == "a"), ["b", "c"]);
        assert_eq!(files.take(1, 5, false, |_| false), ["d"]);
        assert!(files.take(1, 1, false, |_| false).is_empty());
        assert!(files.is_empty());
    }

    #[test]
    fn a_suspect_is_handed_out_alone() {
        let mut files = queue(&["c", "d"]);
        files.put_back_suspects(vec!["a".into(), "b".into()]);
        // Both suspects go alone, in their order, before the rest.
        assert_eq!(files.take(1, 3, false, |_| false), ["a"]);
        assert_eq!(files.take(1, 3, false, |_| false), ["b"]);
        assert_eq!(files.take(1, 3, false, |_| false), ["c", "d"]);
        // A suspect behind other files ends the hand-out before it.
        let mut files = queue(&["x", "s", "y"]);
        files.suspects.insert("s".into());
        assert_eq!(files.take(1, 3, false, |_| false), ["x"]);
        assert_eq!(files.take(1, 3, false, |_| false), ["s"]);
    }

    #[test]
    fn files_a_worker_could_not_take_go_back_in_front_in_order() {
        let mut files = queue(&["c"]);
        files.put_back(vec!["a".into(), "b".into()]);
        assert_eq!(files.take(1, 3, false, |_| false), ["a", "b", "c"]);
    }

    #[test]
    fn a_retry_goes_first_alone_and_to_another_worker_than_the_one_it_failed_on() {
        let mut files = queue(&["c", "d"]);
        files.push_retry("a:3".into(), 2);
        // Worker 2 leaves it for another worker, and takes what follows.
        assert_eq!(files.take(2, 3, true, |_| false), ["c", "d"]);
        // Worker 1 takes it, alone.
        files.put_back(vec!["e".into()]);
        files.push_retry("b:7".into(), 2);
        assert_eq!(files.take(1, 3, true, |_| false), ["b:7"]);
        assert_eq!(files.take(1, 3, true, |_| false), ["e"]);
        assert_eq!(files.take(1, 3, true, |_| false), ["a:3"]);
        // With no other worker, the one it failed on runs it.
        files.push_retry("f:1".into(), 2);
        assert_eq!(files.take(2, 3, false, |_| false), ["f:1"]);
    }

    #[test]
    fn a_worker_is_timed_over_what_it_ran_since_it_was_last_idle() {
        let mut worker = Worker {
            group: None,
            stdin: None,
            files: vec!["a".into(), "b".into()],
            since_idle: (0.0, 0),
            seconds_per_file: None,
            stopper: None,
        };
        worker.finished("b", 0.1);
        assert_eq!(worker.seconds_per_file, None);
        worker.finished("unknown", 5.0);
        worker.finished("a", 0.3);
        assert!(worker.files.is_empty());
        assert!((worker.seconds_per_file.unwrap() - 0.2).abs() < 1e-9);
    }
}
