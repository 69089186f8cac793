//! The chaos harness (`bench/chaos.sh`; ignored by `cargo test`): K runs (`CHAOS_RUNS`,
//! default 100) of a mixed suite on three listeners on loopback, each with one or two faults
//! at a random moment from a seeded sequence (`CHAOS_SEED`): a worker, a worker manager or a
//! whole listener killed with SIGKILL, a listener's whole process tree frozen past the
//! heartbeat and thawed, a file that hangs past its timeout, the broker restarted
//! (`rabbitmqctl stop_app`, 1–3 s, `start_app`). After each run it checks that
//! the exit code is the suite's truth, that every file has exactly one final result and that
//! it is the file's own, that no process of the job is left, and that no queue of the job is
//! left on the broker; at the end it prints the counts and the seed to replay.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use support::{none_left, poll, rabbitmqctl, sigkill, Cluster, Project};

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
}

const FAULTS: [Fault; 6] = [
    Fault::KillWorker,
    Fault::KillManager,
    Fault::KillListener,
    Fault::FreezeListener,
    Fault::HangPastTimeout,
    Fault::RestartBroker,
];

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
}

#[test]
#[ignore = "the chaos harness: run it with bench/chaos.sh"]
fn chaos() {
    let runs: u32 = env_number("CHAOS_RUNS", 100);
    let seed: u64 = env_number("CHAOS_SEED", 0x05ee_d0fc_4a05);
    let mut dice = Dice(seed | 1);
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
        "  wrong exits {}, lost files {}, duplicate results {}, wrong results {}, stray processes {}, leftover queues {}",
        counts.wrong_exits,
        counts.lost_files,
        counts.duplicate_results,
        counts.wrong_results,
        counts.stray_processes,
        counts.leftover_queues
    );
    let bad = counts.wrong_exits
        + counts.lost_files
        + counts.duplicate_results
        + counts.wrong_results
        + counts.stray_processes
        + counts.leftover_queues;
    assert_eq!(bad, 0, "replay with CHAOS_SEED={seed}");
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
    let mut faults = vec![FAULTS[dice.below(FAULTS.len() as u64) as usize]];
    if dice.below(3) == 0 {
        faults.push(FAULTS[dice.below(FAULTS.len() as u64) as usize]);
    }
    faults.sort();
    faults.dedup();
    let with_failures = dice.below(2) == 0;
    let (project, truth) = suite(
        cluster,
        run,
        with_failures,
        faults.contains(&Fault::HangPastTimeout),
    );
    let events = project.dir.join("events.ndjson");
    let events_arg = events.display().to_string();
    let started = project.spawn_start(&["--events", &events_arg, "-q"], &[]);
    // The faults strike at a random moment of the first seconds of the run.
    std::thread::sleep(Duration::from_millis(300 + dice.below(1500)));
    strike(cluster, dice, &faults, counts);
    let result = started.wait(RUN_LIMIT);
    let mut problems = Vec::new();
    let expected_exit = if truth.values().all(|t| *t == Truth::Passes) {
        0
    } else {
        1
    };
    if result.code != expected_exit {
        counts.wrong_exits += 1;
        problems.push(format!(
            "exit {} where the suite says {expected_exit}: {result:?}",
            result.code
        ));
    }
    check_results(&truth, &finished_statuses(&events), counts, &mut problems);
    let job = std::fs::read_to_string(&events)
        .ok()
        .and_then(|text| text.lines().next().map(str::to_owned))
        .and_then(|line| serde_json::from_str::<serde_json::Value>(&line).ok())
        .and_then(|first| first["job_id"].as_str().map(str::to_owned));
    let strays = poll(Duration::from_secs(20), || {
        none_left(cluster.job_processes())
    })
    .err()
    .unwrap_or_default();
    if !strays.is_empty() {
        counts.stray_processes += strays.len() as u32;
        let commands: Vec<&str> = strays.iter().map(|p| p.command.as_str()).collect();
        problems.push(format!("processes left: {commands:?}"));
    }
    if let Some(job) = job {
        let leftovers = queues_of(&job);
        if !leftovers.is_empty() {
            counts.leftover_queues += leftovers.len() as u32;
            problems.push(format!("queues left: {leftovers:?}"));
        }
    }
    problems
}

/// A run's suite: a dozen shell files of 0.1–0.5 s (two failing when `with_failures`), and
/// one that hangs past the 2 s file timeout when `hang`; what each should end as.
fn suite(
    cluster: &Cluster,
    run: u32,
    with_failures: bool,
    hang: bool,
) -> (Project, BTreeMap<String, Truth>) {
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
    if hang {
        let file = "tests/99_test.sh".to_owned();
        project.write(&file, "sleep 30\n");
        truth.insert(file, Truth::TimesOut);
    }
    (project, truth)
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
    for fault in faults {
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
            Fault::HangPastTimeout => true,
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
