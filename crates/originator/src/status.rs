//! `gorgon status`: the fleet view. Asks every listener of the cluster (the `gorgon ping`
//! question, whose answer carries each listener's slots and jobs), then, for each running
//! job, counts its files left: those waiting in the job's files queue (a passive declare
//! reads its message count) and those its workers run now. The work left is estimated from
//! the files the job's workers have finished so far (the runtime history stays with the
//! originator), and from it the hosts that would finish the job within `--within` seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use gorgon_protocol::{names, Broker, BrokerError, ListenerInfo};
use serde::Serialize;
use uuid::Uuid;

use crate::ping::{collect, PingError};
use crate::settings::Settings;

/// What `gorgon status` prints (as JSON with `--json`).
#[derive(Debug, Serialize)]
pub struct FleetStatus {
    pub cluster: String,
    /// The listeners that answered, by name.
    pub listeners: Vec<ListenerInfo>,
    /// The jobs running on them, oldest first.
    pub jobs: Vec<JobStatus>,
}

/// One running job across the listeners that run it.
#[derive(Debug, PartialEq, Serialize)]
pub struct JobStatus {
    pub job_id: Uuid,
    pub project: String,
    pub originator_host: String,
    /// Seconds since it began to run on its first listener.
    pub seconds: u64,
    /// The listeners that run it, and the slots they give it together.
    pub hosts: Vec<String>,
    pub slots: u32,
    pub files_running: u32,
    pub files_done: u32,
    /// The seconds the finished files took together.
    pub file_seconds: f64,
    /// Files not yet taken by a worker; `None` when its files queue is gone (the job is
    /// ending, or its originator has gone).
    pub files_waiting: Option<u32>,
    /// Files waiting and running.
    pub files_left: Option<u32>,
    /// The mean seconds of a file finished so far, on every listener of the job.
    pub seconds_per_file: Option<f64>,
    /// Seconds of work left (one worker's time): files left times the mean.
    pub seconds_left: Option<f64>,
    /// The time `--within` asked for, and the hosts (with as many slots each as the job's
    /// hosts have on average) that would finish the work left within it.
    pub within_seconds: Option<f64>,
    pub hosts_needed: Option<u32>,
}

/// Asks the listeners of the cluster configured in `config` (waiting `wait` for answers)
/// and the broker what they run.
pub async fn status(
    config: &std::path::Path,
    wait: Duration,
    within: Option<f64>,
) -> Result<FleetStatus, PingError> {
    let (settings, cluster) = Settings::load_connection(config)?;
    let broker = Broker::connect(&settings, "gorgon status").await?;
    let mut listeners = collect(&broker, &cluster, wait).await?;
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    let mut jobs = running_jobs(&listeners);
    let counted = count_waiting_files(&broker, &mut jobs).await;
    broker.close().await;
    counted?;
    for job in &mut jobs {
        estimate(job, within);
    }
    Ok(FleetStatus {
        cluster,
        listeners,
        jobs,
    })
}

/// Reads each job's waiting files from its files queue.
async fn count_waiting_files(broker: &Broker, jobs: &mut [JobStatus]) -> Result<(), BrokerError> {
    for job in jobs {
        let counts = broker.queue_counts(&names::files_queue(job.job_id)).await?;
        job.files_waiting = counts.map(|(ready, _consumers)| ready);
    }
    Ok(())
}

/// The running jobs of `listeners`, each once with what its listeners run of it.
fn running_jobs(listeners: &[ListenerInfo]) -> Vec<JobStatus> {
    let mut jobs: BTreeMap<Uuid, JobStatus> = BTreeMap::new();
    for listener in listeners {
        for job in listener.jobs.iter().filter(|job| job.running) {
            let status = jobs.entry(job.job_id).or_insert_with(|| JobStatus {
                job_id: job.job_id,
                project: job.project.clone(),
                originator_host: job.originator_host.clone(),
                seconds: 0,
                hosts: Vec::new(),
                slots: 0,
                files_running: 0,
                files_done: 0,
                file_seconds: 0.0,
                files_waiting: None,
                files_left: None,
                seconds_per_file: None,
                seconds_left: None,
                within_seconds: None,
                hosts_needed: None,
            });
            status.seconds = status.seconds.max(job.seconds);
            status.hosts.push(listener.name.clone());
            status.slots += job.slots;
            status.files_running += job.files_running;
            status.files_done += job.files_done;
            status.file_seconds += job.file_seconds;
        }
    }
    let mut jobs: Vec<JobStatus> = jobs.into_values().collect();
    jobs.sort_by_key(|job| std::cmp::Reverse(job.seconds));
    jobs
}

/// Fills in the files left, the work left and the hosts needed within `within` seconds.
fn estimate(job: &mut JobStatus, within: Option<f64>) {
    job.files_left = job.files_waiting.map(|waiting| waiting + job.files_running);
    job.seconds_per_file =
        (job.files_done > 0).then(|| job.file_seconds / f64::from(job.files_done));
    job.seconds_left = job
        .files_left
        .zip(job.seconds_per_file)
        .map(|(files, mean)| f64::from(files) * mean);
    job.within_seconds = within;
    let slots_per_host = f64::from(job.slots) / job.hosts.len().max(1) as f64;
    job.hosts_needed = job
        .seconds_left
        .zip(within)
        .filter(|_| slots_per_host > 0.0)
        .map(|(left, within)| {
            let hosts = (left / (within * slots_per_host)).ceil();
            // At least one host, even for no work left.
            hosts.clamp(1.0, f64::from(u32::MAX)) as u32
        });
}

/// `1h 02m`, `3m 05s`, `12s`.
fn duration(seconds: u64) -> String {
    match seconds {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl FleetStatus {
    /// The report for scripts.
    pub fn to_json(&self) -> String {
        // Plain data: strings, numbers and ids serialize without fail.
        serde_json::to_string_pretty(self).expect("the fleet status serializes")
    }

    /// The report for a terminal: each listener with its jobs, then each running job.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            out.push_str(&listener_lines(listener));
        }
        let slots: u32 = self.listeners.iter().map(|l| l.slots).sum();
        let busy: u32 = self.listeners.iter().map(|l| l.busy_slots).sum();
        out.push_str(&format!(
            "{} listener(s) of cluster '{}' answered: {busy} of {slots} slot(s) busy.\n",
            self.listeners.len(),
            self.cluster
        ));
        for job in &self.jobs {
            out.push_str(&job_line(job));
        }
        out
    }
}

fn listener_lines(listener: &ListenerInfo) -> String {
    let draining = if listener.draining { ", draining" } else { "" };
    let mut lines = format!(
        "{}: gorgon-rs {}, {}/{} slot(s) busy, up {}{draining}\n",
        listener.name,
        listener.version,
        listener.busy_slots,
        listener.slots,
        duration(listener.uptime_seconds)
    );
    for job in &listener.jobs {
        let what = if job.running {
            format!(
                "runs {} for {} with {} slot(s), {} file(s) running, {} done",
                job.project,
                duration(job.seconds),
                job.slots,
                job.files_running,
                job.files_done
            )
        } else {
            format!("waits with {} for {}", job.project, duration(job.seconds))
        };
        lines.push_str(&format!(
            "  {what} (job {} from {})\n",
            job.job_id, job.originator_host
        ));
    }
    lines
}

fn job_line(job: &JobStatus) -> String {
    let left = match (job.files_left, job.seconds_left) {
        (Some(files), Some(seconds)) => {
            format!("{files} file(s) left, about {seconds:.0} s of work")
        }
        (Some(files), None) => format!("{files} file(s) left, no file finished yet to time"),
        (None, _) => "its files queue is gone: it is ending".into(),
    };
    let hosts = match (job.hosts_needed, job.within_seconds) {
        (Some(hosts), Some(within)) => {
            format!("; {hosts} host(s) would finish it within {within} s")
        }
        _ => String::new(),
    };
    format!(
        "Job {} ({} from {}) on {}: {left}{hosts}.\n",
        job.job_id,
        job.project,
        job.originator_host,
        job.hosts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::ListenerJob;

    fn listener(name: &str, job: Uuid, slots: u32, done: u32, seconds: f64) -> ListenerInfo {
        ListenerInfo {
            name: name.into(),
            version: "0.1.0".into(),
            slots,
            busy_slots: slots,
            uptime_seconds: 3700,
            draining: false,
            jobs: vec![ListenerJob {
                job_id: job,
                project: "shop".into(),
                originator_host: "dev1".into(),
                running: true,
                seconds: 30,
                slots,
                files_running: slots,
                files_done: done,
                file_seconds: seconds,
            }],
        }
    }

    #[test]
    fn a_job_on_two_listeners_adds_up_and_predicts_the_hosts_needed() {
        let id = Uuid::new_v4();
        let listeners = [listener("a", id, 2, 3, 6.0), listener("b", id, 2, 1, 2.0)];
        let mut jobs = running_jobs(&listeners);
        assert_eq!(jobs.len(), 1);
        let job = &mut jobs[0];
        job.files_waiting = Some(16);
        estimate(job, Some(10.0));
        assert_eq!(job.hosts, ["a", "b"]);
        assert_eq!((job.slots, job.files_running, job.files_done), (4, 4, 4));
        assert_eq!(job.files_left, Some(20));
        assert_eq!(job.seconds_per_file, Some(2.0));
        assert_eq!(job.seconds_left, Some(40.0));
        // 40 s of work on hosts of 2 slots within 10 s: 2 hosts.
        assert_eq!(job.hosts_needed, Some(2));
    }

    #[test]
    fn without_a_finished_file_there_is_no_prediction() {
        let id = Uuid::new_v4();
        let mut jobs = running_jobs(&[listener("a", id, 2, 0, 0.0)]);
        estimate(&mut jobs[0], Some(10.0));
        assert_eq!(jobs[0].files_left, None);
        jobs[0].files_waiting = Some(3);
        estimate(&mut jobs[0], Some(10.0));
        assert_eq!(jobs[0].files_left, Some(5));
        assert_eq!((jobs[0].seconds_left, jobs[0].hosts_needed), (None, None));
        let text = FleetStatus {
            cluster: "c".into(),
            listeners: vec![listener("a", id, 2, 0, 0.0)],
            jobs,
        }
        .render();
        assert!(
            text.contains("a: gorgon-rs 0.1.0, 2/2 slot(s) busy, up 1h 01m"),
            "{text}"
        );
        assert!(
            text.contains("5 file(s) left, no file finished yet"),
            "{text}"
        );
    }
}
