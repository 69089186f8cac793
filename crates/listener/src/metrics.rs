//! The listener's metrics, and `GET /metrics` on `metrics_address` to read them in
//! Prometheus' text format (0.0.4, which every scraper reads and `promtool` checks): its slots and how many run a file,
//! its jobs, the files its workers ran by verdict and how long they took, its pulls,
//! reconnections and warm-runner reuses. Labels never hold a test's or a file's name:
//! only a verdict or a refusal's reason, a handful of values each.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gorgon_protocol::{FileStatus, ManagerReport};
use prometheus_client::encoding::prometheus_text::{self, CONTENT_TYPE};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a scraper has to send its request, and how much of it is read.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);
const REQUEST_MAX_BYTES: usize = 8 * 1024;

/// Why a job was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefusalReason {
    /// Too many jobs already waited for the slots.
    line_full,
    /// Its signature was too old (or too new): a replay.
    stale,
    /// The listener stopped while the job waited for its slots.
    listener_stopping,
    /// The listener drains: it takes no more jobs.
    draining,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Refusal {
    reason: RefusalReason,
}

/// A file's verdict, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Verdict {
    passed,
    failed,
    crashed,
    timed_out,
}

impl From<FileStatus> for Verdict {
    fn from(status: FileStatus) -> Verdict {
        match status {
            FileStatus::Passed => Verdict::passed,
            FileStatus::Failed => Verdict::failed,
            FileStatus::Crashed => Verdict::crashed,
            FileStatus::TimedOut => Verdict::timed_out,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    verdict: Verdict,
}

/// Every metric of one listener. Each field is a handle on its registered metric.
pub struct Metrics {
    registry: Registry,
    slots_busy: Gauge,
    pub jobs_running: Gauge,
    pub jobs_waiting: Gauge,
    pub jobs_taken: Counter,
    jobs_refused: Family<Refusal, Counter>,
    files: Family<FileLabels, Counter>,
    file_seconds: Histogram,
    pub pull_seconds: Histogram,
    pub broker_reconnections: Counter,
    pub warm_runner_reuses: Counter,
}

impl Metrics {
    /// The metrics of a listener with `slots` worker slots, all at zero.
    pub fn new(slots: u32) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("gorgon"),
            slots_busy: Gauge::default(),
            jobs_running: Gauge::default(),
            jobs_waiting: Gauge::default(),
            jobs_taken: Counter::default(),
            jobs_refused: Family::default(),
            files: Family::default(),
            // From 50 ms to about 27 minutes, doubling.
            file_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            // From 50 ms to about 100 s, doubling.
            pull_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            broker_reconnections: Counter::default(),
            warm_runner_reuses: Counter::default(),
        };
        let total = Gauge::<i64>::default();
        total.set(i64::from(slots));
        let registry = &mut metrics.registry;
        registry.register("slots", "Worker slots of this listener", total);
        let gauges = [
            (
                "slots_busy",
                "Worker slots running a test file now",
                &metrics.slots_busy,
            ),
            (
                "jobs_running",
                "Jobs running on this listener",
                &metrics.jobs_running,
            ),
            (
                "jobs_waiting",
                "Jobs waiting for this listener's slots",
                &metrics.jobs_waiting,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        let counters = [
            (
                "jobs_taken",
                "Jobs taken (run, or put in line for the slots)",
                &metrics.jobs_taken,
            ),
            (
                "broker_reconnections",
                "Connections to RabbitMQ made again after one was lost",
                &metrics.broker_reconnections,
            ),
            (
                "warm_runner_reuses",
                "Jobs whose built-in runners forked from a warm runner kept from an earlier job",
                &metrics.warm_runner_reuses,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        // Every label value shows from the start, at 0: a rate over a series that appears
        // only at its first event would miss that event.
        for reason in [
            RefusalReason::line_full,
            RefusalReason::stale,
            RefusalReason::listener_stopping,
            RefusalReason::draining,
        ] {
            let _ = metrics.jobs_refused.get_or_create(&Refusal { reason });
        }
        for verdict in [
            Verdict::passed,
            Verdict::failed,
            Verdict::crashed,
            Verdict::timed_out,
        ] {
            let _ = metrics.files.get_or_create(&FileLabels { verdict });
        }
        let refused = metrics.jobs_refused.clone();
        registry.register("jobs_refused", "Jobs refused, by reason", refused);
        registry.register("files", "Test files run, by verdict", metrics.files.clone());
        let histograms = [
            (
                "file_duration",
                "Time a test file ran",
                &metrics.file_seconds,
            ),
            (
                "pull_duration",
                "Time a job's tree took to pull from the file server",
                &metrics.pull_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
        }
        metrics
    }

    /// Counts a refused job.
    pub fn refused(&self, reason: RefusalReason) {
        self.jobs_refused.get_or_create(&Refusal { reason }).inc();
    }

    /// Every metric, in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// Holds a gauge one higher while it lives: a job running, or one waiting.
pub struct Held(Gauge);

impl Held {
    pub fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The files one job's worker manager runs, from its reports: which of its workers run a
/// file now (each is a busy slot), and the verdicts and times of those that finished.
pub struct JobFiles {
    metrics: Arc<Metrics>,
    /// `None` once the job's manager has ended: its workers run nothing any more.
    running: Mutex<Option<HashSet<u32>>>,
    /// The files finished and the seconds they took together, for `gorgon status`.
    done: Mutex<(u32, f64)>,
}

/// What [`JobFiles::counts`] says of a job's files on this host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FileCounts {
    pub running: u32,
    pub done: u32,
    pub seconds: f64,
}

impl JobFiles {
    pub fn new(metrics: Arc<Metrics>) -> JobFiles {
        JobFiles {
            metrics,
            running: Mutex::new(Some(HashSet::new())),
            done: Mutex::default(),
        }
    }

    /// Takes in one report of the job's manager.
    pub fn report(&self, report: ManagerReport) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(running) = running.as_mut() else {
            return;
        };
        let (worker_id, busy) = match report {
            ManagerReport::FileStarted { worker_id } => (worker_id, true),
            ManagerReport::FileFinished {
                worker_id,
                status,
                seconds,
            } => {
                let labels = FileLabels {
                    verdict: status.into(),
                };
                self.metrics.files.get_or_create(&labels).inc();
                self.metrics.file_seconds.observe(seconds);
                let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
                *done = (done.0 + 1, done.1 + seconds);
                (worker_id, false)
            }
            ManagerReport::WorkerExited { worker_id } => (worker_id, false),
        };
        if busy {
            if running.insert(worker_id) {
                self.metrics.slots_busy.inc();
            }
        } else if running.remove(&worker_id) {
            self.metrics.slots_busy.dec();
        }
    }

    /// The files running now, and those finished with their seconds.
    pub fn counts(&self) -> FileCounts {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let (done, seconds) = *self.done.lock().unwrap_or_else(|e| e.into_inner());
        FileCounts {
            running: running
                .as_ref()
                .map_or(0, |r| u32::try_from(r.len()).unwrap_or(u32::MAX)),
            done,
            seconds,
        }
    }

    /// The job's manager has ended: none of its workers runs a file any more.
    pub fn end(&self) {
        let ended = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let busy = ended.map_or(0, |running| running.len());
        self.metrics
            .slots_busy
            .dec_by(i64::try_from(busy).unwrap_or(i64::MAX));
    }
}

/// Binds `address` for [`serve`]: a listener whose metrics cannot be served does not start.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Answers `GET /metrics` on `listener` with the metrics, anything else with 404, until
/// dropped. Each connection gets one answer and is closed.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_LIMIT, answer(stream, &metrics)).await;
        });
    }
}

/// Reads one request's head and answers it.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|end| end == b"\r\n\r\n") && head.len() < REQUEST_MAX_BYTES {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = request_line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next());
    let (status, content_type, body) = match (method, target) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", CONTENT_TYPE, metrics.render()),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "gorgon listen serves GET /metrics only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_slots_follow_the_workers_that_run_a_file() {
        let metrics = Arc::new(Metrics::new(4));
        let job = JobFiles::new(metrics.clone());
        job.report(ManagerReport::FileStarted { worker_id: 1 });
        job.report(ManagerReport::FileStarted { worker_id: 2 });
        assert_eq!(metrics.slots_busy.get(), 2);
        job.report(ManagerReport::FileFinished {
            worker_id: 1,
            status: FileStatus::Passed,
            seconds: 0.2,
        });
        job.report(ManagerReport::FileStarted { worker_id: 1 });
        job.report(ManagerReport::WorkerExited { worker_id: 2 });
        assert_eq!(metrics.slots_busy.get(), 1);
        let counts = job.counts();
        assert_eq!((counts.running, counts.done), (1, 1));
        assert!((counts.seconds - 0.2).abs() < 1e-9);
        job.end();
        job.report(ManagerReport::FileStarted { worker_id: 3 });
        assert_eq!(metrics.slots_busy.get(), 0);
        let text = metrics.render();
        assert!(
            text.contains("gorgon_files_total{verdict=\"passed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("gorgon_file_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.contains("gorgon_slots 4\n"), "{text}");
        assert!(
            text.contains("gorgon_files_total{verdict=\"timed_out\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn held_gauges_and_refusals_show() {
        let metrics = Metrics::new(2);
        let waiting = Held::new(&metrics.jobs_waiting);
        metrics.refused(RefusalReason::line_full);
        let text = metrics.render();
        assert!(text.contains("gorgon_jobs_waiting 1\n"), "{text}");
        assert!(
            text.contains("gorgon_jobs_refused_total{reason=\"line_full\"} 1\n"),
            "{text}"
        );
        drop(waiting);
        assert_eq!(metrics.jobs_waiting.get(), 0);
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics_only() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Metrics::new(3))));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("\r\n\r\n# HELP gorgon_slots "),
            "{metrics}"
        );
        assert!(
            metrics.contains("\r\nContent-Type: text/plain; version=0.0.4"),
            "{metrics}"
        );
        assert!(get("/").await.starts_with("HTTP/1.1 404 Not Found\r\n"));
    }
}
