//! The broker's side of a large fleet (`bench/broker_scale.sh`; ignored by `cargo test`):
//! for each K of `SCALE_HOSTS` (default 10, 100, 1000), K simulated hosts, each speaking the
//! listener's and worker manager's protocol on two connections of its own as a real host
//! does (its listener queue, `JobAccepted`, the files queue with a prefetch of one,
//! `FileStarted` and `FileFinished` for each file at once, in one `Replies` message as a
//! manager sends replies that are ready together, or as two with `SCALE_APART` set; `JobDone`), serve one real
//! `gorgon start` of `SCALE_FILES` files (default 2,000). The project's runtime file says each
//! file took 2 ms, as a first run of these files records, so the originator packs them
//! several to a message (`job.pack_seconds`); a simulated manager answers a batch's files at
//! once, their replies gathered as a manager gathers replies ready together (at most 64 to
//! a message), acknowledges the batch once they are confirmed, and splits a batch delivered
//! again as a manager does. It prints the run's wall time, the
//! files per second, the most broker connections seen, and the broker's memory and CPU
//! during the run, so that what the broker pays per host and per file shows without the
//! cost of running tests; each run must end with every file passed.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{names, Broker, BrokerSettings, Envelope, FileResult, FileStatus, Message};
use serde_json::json;
use support::{eventually, Cluster};

/// One simulated host: its listener connection, and a manager connection per job.
async fn simulated_host(
    settings: BrokerSettings,
    cluster: String,
    name: String,
    ready: Arc<AtomicUsize>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let listen = Broker::connect(&settings, &format!("gorgon listen {name}"))
        .await
        .expect("the simulated host connects");
    let jobs = names::jobs_exchange(&cluster);
    listen.declare_fanout(&jobs).await.unwrap();
    let queue = names::listener_queue(&cluster, uuid::Uuid::new_v4());
    listen
        .declare_queue(&queue, QueueLife::WhileConsumed)
        .await
        .unwrap();
    listen.bind(&queue, &jobs).await.unwrap();
    let mut inbox = listen.consume(&queue, None).await.unwrap();
    ready.fetch_add(1, Ordering::SeqCst);
    loop {
        let incoming = tokio::select! {
            incoming = inbox.next() => incoming,
            _ = stop.wait_for(|stop| *stop) => None,
        };
        let Some(incoming) = incoming else { break };
        if let Ok(Envelope {
            job_id,
            message: Message::Job { reply_to, .. },
            ..
        }) = &incoming.envelope
        {
            let work = work(
                settings.clone(),
                listen.clone(),
                name.clone(),
                queue.clone(),
                *job_id,
                reply_to.clone(),
            );
            tokio::spawn(work);
        }
        let _ = incoming.ack().await;
    }
    listen.close().await;
}

/// A simulated worker manager: every file it is given passes at once.
async fn work(
    settings: BrokerSettings,
    listen: Broker,
    host: String,
    queue: String,
    job: uuid::Uuid,
    reply_to: String,
) {
    let accepted = Message::JobAccepted {
        host: host.clone(),
        slots: 1,
        listener_queue: Some(queue),
    };
    if listen
        .send_to_queue(&reply_to, &Envelope::new(job, accepted))
        .await
        .is_err()
    {
        return;
    }
    let manager = Broker::connect(
        &settings,
        &format!("gorgon worker manager of {host} job {job}"),
    )
    .await
    .expect("the simulated manager connects");
    let queue = names::files_queue(job);
    if let Ok(mut files) = manager.consume(&queue, Some(1)).await {
        while let Some(incoming) = files.next().await {
            let Ok(envelope) = &incoming.envelope else {
                let _ = incoming.discard().await;
                continue;
            };
            match &envelope.message {
                Message::File { file, .. } => {
                    answer(&manager, &host, job, &reply_to, std::slice::from_ref(file)).await;
                }
                // Delivered again: split, each file back to the queue alone.
                Message::Files { files } if incoming.redelivered => {
                    let alone: Vec<Envelope> = files
                        .iter()
                        .map(|file| Envelope::new(job, Message::file_delivered_before(file)))
                        .collect();
                    let _ = manager.send_all_to_queue(&queue, alone).await;
                }
                Message::Files { files } => answer(&manager, &host, job, &reply_to, files).await,
                _ => {}
            }
            let _ = incoming.ack().await;
        }
    }
    manager.close().await;
    let done = Message::JobDone { host };
    let _ = listen
        .send_to_queue(&reply_to, &Envelope::new(job, done))
        .await;
}

/// Replies to the originator that `files` passed at once, and waits for their confirms: each
/// file's start and result together, as many as a manager sends in one message (64 replies),
/// or one file's in each message with `SCALE_FILE_BY_FILE` set (as a manager whose slot
/// runs a batch's files one after the other sends them), or as two messages each with
/// `SCALE_APART` set.
async fn answer(manager: &Broker, host: &str, job: uuid::Uuid, reply_to: &str, files: &[String]) {
    const TOGETHER_REPLIES: usize = 64;
    let apart = std::env::var_os("SCALE_APART").is_some();
    let replies: Vec<Message> = files
        .iter()
        .flat_map(|file| {
            let started = Message::FileStarted {
                host: host.to_owned(),
                worker_id: 1,
                file: file.clone(),
            };
            let finished = Message::FileFinished(FileResult {
                host: host.to_owned(),
                worker_id: 1,
                file: file.clone(),
                status: FileStatus::Passed,
                seconds: 0.0,
                exit: "exit status 0".into(),
                output: String::new(),
                tests: Vec::new(),
                impact: None,
            });
            [started, finished]
        })
        .collect();
    let file_by_file = std::env::var_os("SCALE_FILE_BY_FILE").is_some();
    let together = match (apart, file_by_file) {
        (true, _) => 1,
        (false, true) => 2,
        (false, false) => TOGETHER_REPLIES,
    };
    let messages: Vec<Envelope> = replies
        .chunks(together)
        .filter_map(|chunk| Message::coalesce(chunk.to_vec()))
        .map(|message| Envelope::new(job, message))
        .collect();
    let _ = manager.send_all_to_queue(reply_to, messages).await;
}

/// The broker's process (Erlang's `beam.smp`): its pid.
fn broker_pid() -> Option<u32> {
    let output = std::process::Command::new("pgrep")
        .args(["-o", "beam.smp"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// Resident memory of `pid` in MiB, and its CPU seconds so far.
fn memory_and_cpu(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11..13)
        .map(|t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    (rss_kib / 1024.0, ticks / 100.0)
}

/// Established connections to the broker's AMQP port.
fn broker_connections() -> usize {
    let port = support::broker_port();
    let output = std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output();
    output.map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count())
}

/// The most open files the broker may have (its soft limit), if it can be read.
fn broker_open_files_limit(pid: u32) -> Option<usize> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
#[ignore = "a benchmark: run it with bench/broker_scale.sh"]
fn broker_scale() {
    let hosts: Vec<usize> = std::env::var("SCALE_HOSTS")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .map(|k| {
            k.trim()
                .parse()
                .expect("SCALE_HOSTS: numbers separated by commas")
        })
        .collect();
    let files: usize = std::env::var("SCALE_FILES")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or(2000);
    let pid = broker_pid().expect("RabbitMQ (beam.smp) runs on this machine");
    let limit = broker_open_files_limit(pid);
    println!(
        "broker_scale: {files} files of no work each; the broker (pid {pid}) may open {} files",
        limit.map_or("an unknown number of".to_owned(), |l| l.to_string())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for k in hosts {
        // Two connections per host, the originator's, and the broker's own files.
        if let Some(limit) = limit.filter(|limit| 2 * k + 100 > *limit) {
            println!(
                "K = {k}: skipped: {} connections need more than the broker's {limit} open files \
                 (start it with a higher `ulimit -n`: scripts/lib/prerequisites.sh does)",
                2 * k + 1
            );
            continue;
        }
        measure(&runtime, pid, k, files);
    }
}

/// Runs `files` files of no work with `k` simulated hosts connected, and prints how long it
/// took and what the broker (pid `pid`) spent.
fn measure(runtime: &tokio::runtime::Runtime, pid: u32, k: usize, files: usize) {
    let cluster = Cluster::new();
    let project = cluster.project("scale", json!({"job": {"listener_wait": 120}}));
    let mut history = serde_json::Map::new();
    for i in 0..files {
        let file = format!("tests/{i:05}_test.sh");
        project.write(&file, "true\n");
        history.insert(file, json!(0.002));
    }
    let history = serde_json::Value::Object(history).to_string();
    project.write("gorgon-runtime.json", &history);
    let ready = Arc::new(AtomicUsize::new(0));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let settings = BrokerSettings::for_tests();
    let started_hosts = Instant::now();
    let tasks: Vec<_> = (0..k)
        .map(|i| {
            runtime.spawn(simulated_host(
                settings.clone(),
                cluster.id.clone(),
                format!("sim-{i:04}"),
                ready.clone(),
                stopping.clone(),
            ))
        })
        .collect();
    let what = format!("all {k} simulated hosts to connect");
    eventually(Duration::from_secs(300), what, || {
        let connected = ready.load(Ordering::SeqCst);
        if connected >= k {
            Ok(())
        } else {
            Err(format!("{connected} connected"))
        }
    });
    let hosts_up = started_hosts.elapsed();
    let (memory_before, cpu_before) = memory_and_cpu(pid);
    let (sampling, sampler) = sample_broker(pid);
    let run = project.start(&["-q"], Duration::from_secs(900));
    sampling.store(false, Ordering::SeqCst);
    let (connections, memory_peak) = sampler.join().unwrap();
    let (_, cpu_after) = memory_and_cpu(pid);
    let _ = stop.send(true);
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    run.assert_exit(0);
    let totals = format!("{files} files: {files} passed, 0 failed, 0 crashed, 0 not run");
    run.assert_stdout(&[&totals]);
    println!(
        "K = {k:>4} hosts: {files} files in {:.2} s ({:.0} files/s); hosts connected in {:.1} s; \
         most broker connections {connections}; broker memory {:.0} MiB before, {:.0} MiB at most; \
         broker CPU {:.2} s",
        run.seconds,
        files as f64 / run.seconds,
        hosts_up.as_secs_f64(),
        memory_before,
        memory_peak,
        cpu_after - cpu_before
    );
}

/// Samples the broker's connections and memory every 200 ms until the returned flag is
/// cleared; the thread answers the most of each it saw.
fn sample_broker(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<(usize, f64)>) {
    let sampling = Arc::new(AtomicBool::new(true));
    let flag = sampling.clone();
    let sampler = std::thread::spawn(move || {
        let (mut connections, mut memory) = (0, 0.0f64);
        while flag.load(Ordering::SeqCst) {
            connections = connections.max(broker_connections());
            memory = memory.max(memory_and_cpu(pid).0);
            // A sampling period, not a wait for an event.
            std::thread::sleep(Duration::from_millis(200));
        }
        (connections, memory)
    });
    (sampling, sampler)
}
