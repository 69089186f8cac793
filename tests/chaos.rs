//! The chaos harness (`bench/chaos.sh`; ignored by `cargo test`): K runs (`CHAOS_RUNS`,
//! default 100) of a mixed suite on three listeners on loopback, against a RabbitMQ node of
//! its own, each run with one or two faults at a random moment from a seeded sequence
//! (`CHAOS_SEED`): a worker, a worker manager or a whole listener killed with SIGKILL, a
//! listener's whole process tree frozen past the heartbeat and thawed, a file that hangs past
//! its timeout, the broker restarted (`rabbitmqctl stop_app`, 1–3 s, `start_app`), a file's
//! message taken off the queue by another broker user, a burst of jobs published beside the
//! run, a test that leaves a daemon with a clean environment in a session of its own, and the
//! pushed tree changed on the file server. After each run it checks that the exit code is the
//! suite's truth, that every file has exactly one final result and that it is the file's own,
//! that no tampered code ran, that no process of the job is left, and that no queue of the job
//! is left on the broker; at the end it prints the counts and the seed to replay.
//! `CHAOS_FAULTS` (comma-separated names, as the counts print them) draws from those only.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gorgon_protocol::{names, Broker, BrokerSettings};
use nix::sys::signal::Signal;
use serde_json::json;
use support::rabbit_node::RabbitNode;
use support::tamper::Tamperer;
use support::{job_id_from_events, none_left, poll, rabbitmqctl, sigkill, Cluster, Project};

const RUN_LIMIT: Duration = Duration::from_secs(120);
const LISTENERS: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];

/// A small seeded generator (xorshift64*): the same seed gives the same runs and faults.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillWorker,
    KillManager,
    KillListener,
    FreezeListener,
    HangPastTimeout,
    RestartBroker,
    TakeMessage,
    BurstOfJobs,
    EscapingDaemon,
    TamperedTree,
}

const FAULTS: [Fault; 10] = [
    Fault::KillWorker,
    Fault::KillManager,
    Fault::KillListener,
    Fault::FreezeListener,
    Fault::HangPastTimeout,
    Fault::RestartBroker,
    Fault::TakeMessage,
    Fault::BurstOfJobs,
    Fault::EscapingDaemon,
    Fault::TamperedTree,
];

/// How many jobs a burst publishes beside the run's own.
const BURST: usize = 200;

/// What a file of the suite should end as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Truth {
    Passes,
    Fails,
    TimesOut,
}

#[derive(Default)]
struct Counts {
    runs: u32,
    faults: BTreeMap<String, u32>,
    wrong_exits: u32,
    lost_files: u32,
    duplicate_results: u32,
    wrong_results: u32,
    stray_processes: u32,
    leftover_queues: u32,
    tampered_code_ran: u32,
}

#[test]
#[ignore = "the chaos harness: run it with bench/chaos.sh"]
fn chaos() {
    let runs: u32 = env_number("CHAOS_RUNS", 100);
    let seed: u64 = env_number("CHAOS_SEED", 0x05ee_d0fc_4a05);
    let mut dice = Dice(seed | 1);
    // A node of the harness's own: its restarts and bursts trouble nobody else's tests.
    let node = RabbitNode::start_plain("chaos");
    std::env::set_var("AMQP_PORT", node.port.to_string());
    std::env::set_var(support::RABBIT_NODE, node.name());
    let mut cluster = Cluster::new();
    for name in LISTENERS {
        cluster.start_listener(name, 2);
    }
    let mut counts = Counts::default();
    let started = Instant::now();
    for run in 1..=runs {
        let failures = run_once(&mut cluster, &mut dice, run, &mut counts);
        if !failures.is_empty() {
            println!("run {run} (seed {seed}): {}", failures.join("; "));
        }
    }
    println!(
        "chaos: {} runs in {:.0} s, seed {seed}",
        counts.runs,
        started.elapsed().as_secs_f64()
    );
    for (fault, count) in &counts.faults {
        println!("  faults injected: {fault} × {count}");
    }
    println!(
        "  wrong exits {}, lost files {}, duplicate results {}, wrong results {}, stray processes {}, leftover queues {}, tampered code run {}",
        counts.wrong_exits,
        counts.lost_files,
        counts.duplicate_results,
        counts.wrong_results,
        counts.stray_processes,
        counts.leftover_queues,
        counts.tampered_code_ran
    );
    let bad = counts.wrong_exits
        + counts.lost_files
        + counts.duplicate_results
        + counts.wrong_results
        + counts.stray_processes
        + counts.leftover_queues
        + counts.tampered_code_ran;
    assert_eq!(bad, 0, "replay with CHAOS_SEED={seed}");
}

/// The faults a run draws from: those `CHAOS_FAULTS` names (comma-separated, as the counts
/// print them), or all.
fn drawable_faults() -> Vec<Fault> {
    let Ok(names) = std::env::var("CHAOS_FAULTS") else {
        return FAULTS.to_vec();
    };
    let chosen: Vec<Fault> = FAULTS
        .into_iter()
        .filter(|fault| {
            names
                .split(',')
                .any(|name| name.trim() == format!("{fault:?}"))
        })
        .collect();
    assert!(!chosen.is_empty(), "CHAOS_FAULTS names none of {FAULTS:?}");
    chosen
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One run with its faults; what went wrong, if anything (also counted).
fn run_once(cluster: &mut Cluster, dice: &mut Dice, run: u32, counts: &mut Counts) -> Vec<String> {
    counts.runs += 1;
    let drawn = drawable_faults();
    let mut faults = vec![drawn[dice.below(drawn.len() as u64) as usize]];
    if dice.below(3) == 0 {
        faults.push(drawn[dice.below(drawn.len() as u64) as usize]);
    }
    faults.sort();
    faults.dedup();
    let with_failures = dice.below(2) == 0;
    let suite = Suite::new(cluster, run, with_failures, &faults);
    let events = suite.project.dir.join("events.ndjson");
    let events_arg = events.display().to_string();
    // Someone with write access to the file server keeps the pushed tree changed.
    let tamperer = faults.contains(&Fault::TamperedTree).then(|| {
        let owned = format!("touch '{}'; exit 0\n", suite.owned.display());
        let served = cluster.path().join("file_server");
        Tamperer::start(&served, &format!("_chaos-{run}"), "tests/00_test.sh", owned)
    });
    let started = suite
        .project
        .spawn_start(&["--events", &events_arg, "-q"], &[]);
    // A neighbour takes a message as soon as the files queue has one that no host holds.
    let taking = faults.contains(&Fault::TakeMessage).then(|| {
        let events = events.clone();
        std::thread::spawn(move || take_a_message(&events))
    });
    // The other faults strike at a random moment of the first seconds of the run.
    std::thread::sleep(Duration::from_millis(300 + dice.below(1500)));
    strike(cluster, dice, &faults, counts);
    if let Some(taking) = taking {
        let kind = if taking.join().unwrap() {
            "TakeMessage"
        } else {
            "TakeMessage (nothing to take: every message was held by a host)"
        };
        *counts.faults.entry(kind.into()).or_default() += 1;
    }
    let result = started.wait(RUN_LIMIT);
    let tampered = tamperer.map(Tamperer::stop).is_some();
    let mut problems = Vec::new();
    check_exit(&suite, tampered, &result, counts, &mut problems);
    // A refused tree ends the run before its files: only those that ran have results.
    let finished = finished_statuses(&events);
    if !tampered {
        check_results(&suite.truth, &finished, counts, &mut problems);
    }
    let job = std::fs::read_to_string(&events)
        .ok()
        .and_then(|text| text.lines().next().map(str::to_owned))
        .and_then(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .and_then(|first| first["job_id"].as_str().map(str::to_owned));
    check_processes(cluster, &suite, counts, &mut problems);
    if let Some(job) = job {
        let leftovers = queues_of(&job);
        if !leftovers.is_empty() {
            counts.leftover_queues += leftovers.len() as u32;
            problems.push(format!("queues left: {leftovers:?}"));
        }
    }
    problems
}

/// A run's suite and what each of its files should end as.
struct Suite {
    project: Project,
    truth: BTreeMap<String, Truth>,
    /// What a tampered test file touches: it must never exist.
    owned: std::path::PathBuf,
    /// The command line of the daemon that a file leaves behind, when one does.
    daemon: Option<String>,
}

impl Suite {
    /// A dozen shell files of 0.1–0.5 s (two failing when `with_failures`), one that hangs
    /// past the 2 s file timeout for [`Fault::HangPastTimeout`], one that starts a daemon
    /// with a clean environment in a session of its own outside the workspace for
    /// [`Fault::EscapingDaemon`].
    fn new(cluster: &Cluster, run: u32, with_failures: bool, faults: &[Fault]) -> Suite {
        let project = cluster.project(
            &format!("chaos-{run}"),
            json!({"job": {"runner": {"command": "sh {file}", "file_timeout": 2}, "listener_wait": 30}}),
        );
        let mut truth = BTreeMap::new();
        for i in 0..12u32 {
            let file = format!("tests/{i:02}_test.sh");
            let seconds = 0.1 + f64::from(i % 5) * 0.1;
            let fails = with_failures && (i == 3 || i == 8);
            let end = if fails {
                "echo 'expected 1, got 2'; exit 1"
            } else {
                "exit 0"
            };
            project.write(&file, &format!("sleep {seconds}\n{end}\n"));
            truth.insert(file, if fails { Truth::Fails } else { Truth::Passes });
        }
        if faults.contains(&Fault::HangPastTimeout) {
            let file = "tests/99_test.sh".to_owned();
            project.write(&file, "sleep 30\n");
            truth.insert(file, Truth::TimesOut);
        }
        let daemon = faults.contains(&Fault::EscapingDaemon).then(|| {
            // A sleep no other process runs: the harness finds it by its command line.
            let command = format!("sleep {}", 900_000 + run);
            let file = "tests/50_test.sh".to_owned();
            project.write(
                &file,
                &format!("( setsid env -i sh -c 'cd /; exec {command}' & )\nexit 0\n"),
            );
            truth.insert(file, Truth::Passes);
            command
        });
        let owned = cluster.path().join(format!("owned-{run}"));
        Suite {
            project,
            truth,
            owned,
            daemon,
        }
    }
}

/// The run's exit code against the suite's truth (a refused tree fails the run), and that no
/// tampered code ran.
fn check_exit(
    suite: &Suite,
    tampered: bool,
    result: &support::Run,
    counts: &mut Counts,
    problems: &mut Vec<String>,
) {
    let all_pass = suite.truth.values().all(|t| *t == Truth::Passes);
    let expected_exit = if all_pass && !tampered { 0 } else { 1 };
    if result.code != expected_exit {
        counts.wrong_exits += 1;
        problems.push(format!(
            "exit {} where the suite says {expected_exit}: {result:?}",
            result.code
        ));
    }
    if suite.owned.exists() {
        counts.tampered_code_ran += 1;
        problems.push("the tampered test ran".into());
    }
}

/// Counts (and kills) what the job left running: processes under the listeners' folders,
/// and the suite's escaping daemon wherever it is.
fn check_processes(
    cluster: &Cluster,
    suite: &Suite,
    counts: &mut Counts,
    problems: &mut Vec<String>,
) {
    let strays = poll(Duration::from_secs(20), || {
        let mut left = cluster.job_processes();
        if let Some(daemon) = &suite.daemon {
            left.extend(support::processes_running(daemon));
        }
        none_left(left)
    })
    .err()
    .unwrap_or_default();
    if !strays.is_empty() {
        counts.stray_processes += strays.len() as u32;
        let commands: Vec<&str> = strays.iter().map(|p| p.command.as_str()).collect();
        problems.push(format!("processes left: {commands:?}"));
        for stray in strays {
            sigkill(stray.pid);
        }
    }
}

/// SIGKILLs one process of listener `name` whose command line contains `needle`, waiting up
/// to 3 s for one to run; false when none did.
fn kill_one(cluster: &Cluster, name: &str, needle: &str) -> bool {
    let root = cluster.path().join("listeners").join(name);
    poll(Duration::from_secs(3), || {
        support::processes_working_in(&root)
            .into_iter()
            .find(|p| p.command.contains(needle))
    })
    .map(|victim| sigkill(victim.pid))
    .is_ok()
}

/// The queues of job `job` still on the broker, after up to 10 s for them to go.
fn queues_of(job: &str) -> Vec<String> {
    poll(Duration::from_secs(10), || {
        none_left(support::left_on_broker("list_queues", job))
    })
    .err()
    .unwrap_or_default()
}

/// Strikes `faults` at listeners the dice pick, counting each; a frozen listener is thawed
/// once it is past the heartbeat.
fn strike(cluster: &mut Cluster, dice: &mut Dice, faults: &[Fault], counts: &mut Counts) {
    let mut frozen = Vec::new();
    for fault in faults.iter().filter(|fault| **fault != Fault::TakeMessage) {
        let victim = LISTENERS[dice.below(LISTENERS.len() as u64) as usize];
        let struck = match fault {
            Fault::KillWorker => kill_one(cluster, victim, "__work"),
            Fault::KillManager => kill_one(cluster, victim, "__manage-workers"),
            Fault::KillListener => {
                cluster.kill_listener(victim);
                cluster.start_listener(victim, 2);
                true
            }
            Fault::FreezeListener => {
                cluster.signal_listener(victim, Signal::SIGSTOP);
                frozen.push(victim);
                true
            }
            // Struck by the suite's files, or from the run's start.
            Fault::HangPastTimeout | Fault::EscapingDaemon | Fault::TamperedTree => true,
            Fault::TakeMessage => unreachable!("taken from the run's start"),
            Fault::BurstOfJobs => {
                burst_of_jobs(cluster);
                true
            }
            Fault::RestartBroker => {
                rabbitmqctl("stop_app");
                std::thread::sleep(Duration::from_millis(1000 + dice.below(2000)));
                rabbitmqctl("start_app");
                true
            }
        };
        // A worker or manager that was not running at that moment (its host had no file
        // then) is counted apart.
        let kind = if struck {
            format!("{fault:?}")
        } else {
            format!("{fault:?} (nothing to kill at that moment)")
        };
        *counts.faults.entry(kind).or_default() += 1;
    }
    if !frozen.is_empty() {
        // Past the heartbeat (3 s, so dropped after 6–9 s), then thawed.
        std::thread::sleep(Duration::from_secs(10));
        for victim in frozen {
            cluster.signal_listener(victim, Signal::SIGCONT);
        }
    }
}

/// Another user of the broker takes a file's message off the run's files queue
/// (`basic.get`, ack) within the run's first 5 s; false when there was none to take.
fn take_a_message(events: &Path) -> bool {
    let Ok(job) = poll(Duration::from_secs(5), || {
        std::fs::read_to_string(events)
            .ok()
            .filter(|text| text.contains('\n'))
            .map(|_| job_id_from_events(events))
    }) else {
        return false;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let Ok(neighbour) = Broker::connect(&BrokerSettings::for_tests(), "a neighbour").await
        else {
            return false;
        };
        let queue = names::files_queue(job);
        let started = Instant::now();
        let mut taken = false;
        while !taken && started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(message)) = neighbour.take_one(&queue).await {
                taken = message.ack().await.is_ok();
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        neighbour.close().await;
        taken
    })
}

/// [`BURST`] jobs published at once to every listener beside the run: each has its control
/// exchange, as a running originator's has, and a tree nobody serves, so that it ends at its
/// pull; the control exchanges go when all are published.
fn burst_of_jobs(cluster: &Cluster) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = Broker::connect(&BrokerSettings::for_tests(), "a burst")
            .await
            .unwrap();
        let replies = broker.declare_private_queue().await.unwrap();
        let source = format!("rsync://127.0.0.1:{}/nothing/", support::free_port());
        let ids: Vec<uuid::Uuid> = (0..BURST).map(|_| uuid::Uuid::new_v4()).collect();
        let jobs = names::jobs_exchange(&cluster.id);
        support::publish_jobs(broker.clone(), jobs, ids.clone(), source, replies).await;
        // Long enough for the listeners to take them all and bind to their exchanges.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for id in ids {
            let _ = broker.delete_exchange(&names::control_exchange(id)).await;
        }
        broker.close().await;
    });
}

/// Each file's `file_finished` statuses in the event stream `events`.
fn finished_statuses(events: &std::path::Path) -> BTreeMap<String, Vec<String>> {
    let mut finished: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(events).unwrap_or_default().lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if event["event"] == "file_finished" {
            let file = event["file"].as_str().unwrap_or_default().to_owned();
            let status = event["status"].as_str().unwrap_or_default().to_owned();
            finished.entry(file).or_default().push(status);
        }
    }
    finished
}

/// Compares each file's results with what the suite says it should end as; counts and
/// names what differs.
fn check_results(
    truth: &BTreeMap<String, Truth>,
    finished: &BTreeMap<String, Vec<String>>,
    counts: &mut Counts,
    problems: &mut Vec<String>,
) {
    for (file, truth) in truth {
        match finished.get(file).map(Vec::as_slice) {
            None | Some([]) => {
                counts.lost_files += 1;
                problems.push(format!("{file} has no result"));
            }
            Some([status]) => {
                let expected = match truth {
                    Truth::Passes => "passed",
                    Truth::Fails => "failed",
                    Truth::TimesOut => "timed_out",
                };
                // A passing file may crash only if its worker was killed under it as often
                // as `max_crash_retries` allows, which one or two faults cannot do.
                if status != expected {
                    counts.wrong_results += 1;
                    problems.push(format!("{file} {status}, expected {expected}"));
                }
            }
            Some(more) => {
                counts.duplicate_results += 1;
                problems.push(format!("{file} has {} results", more.len()));
            }
        }
    }
}
