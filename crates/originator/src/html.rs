//! The run as one self-contained HTML page (`gorgon start --html PATH`, `html_file`, and
//! `gorgon report EVENTS.jsonl --html PATH` from a saved event stream): a timeline with one
//! lane per host:worker, each file a bar from its start to its result coloured by verdict
//! (retried attempts, crashes and test ids of split files visible), idle time as the gaps,
//! and the run's lower bound, max(longest file, total / slots), marked; then the totals, the
//! slowest files and tests, every failure with its message and output, and the flaky and
//! quarantined tests. Inline CSS, a few lines of inline JS and SVG: it opens from a CI
//! artifact with no network access.
//!
//! The page is built from the event stream only ([`Timeline::record`] takes one line of it),
//! so a live run and a saved stream give the same page.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, FixedOffset};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::files::unit_file;

/// How many of the slowest files and tests the page lists.
const SLOWEST: usize = 20;
/// How much of a failure's output the page keeps.
const OUTPUT_CHARS: usize = 20_000;
/// The width of the timeline's drawing area, in pixels (lane names are left of it).
const PLOT_WIDTH: f64 = 1000.0;
const LABEL_WIDTH: f64 = 150.0;

/// The page cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    #[error("cannot read the event stream {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: not an event of gorgon start --events: {source}", path.display())]
    Parse {
        path: std::path::PathBuf,
        line: usize,
        #[source]
        source: EventError,
    },
    #[error("{} holds no run_started event: it is not the event stream of a run", path.display())]
    Empty { path: std::path::PathBuf },
    #[error("cannot write the HTML report {}: {source}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a line of an event stream is not an event the timeline can take.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("no \"event\" field")]
    NoKind,
    #[error("no RFC 3339 \"time\" field")]
    NoTime,
    #[error("a {0} event before run_started")]
    BeforeStart(String),
}

/// What a bar on the timeline shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarKind {
    Passed,
    Failed,
    Flaky,
    Quarantined,
    /// A result that was not final: it ran again.
    Attempt,
    /// Its worker died while running it.
    Crashed,
    TimedOut,
    /// Still running when the stream ended.
    Unfinished,
}

impl BarKind {
    fn class(self) -> &'static str {
        match self {
            BarKind::Passed => "passed",
            BarKind::Failed => "failed",
            BarKind::Flaky => "flaky",
            BarKind::Quarantined => "quarantined",
            BarKind::Attempt => "attempt",
            BarKind::Crashed => "crashed",
            BarKind::TimedOut => "timedout",
            BarKind::Unfinished => "unfinished",
        }
    }
}

/// One file's (or test id's) run on one worker.
#[derive(Clone, Debug)]
struct Bar {
    lane: String,
    file: String,
    start: f64,
    end: f64,
    kind: BarKind,
    /// Whether this run passed (an attempt may pass while its file waits for others).
    passed: bool,
    /// Its index among the failures, for a link to its details.
    failure: Option<usize>,
}

/// A failure's details.
#[derive(Clone, Debug)]
struct Failure {
    file: String,
    place: String,
    status: String,
    exit: String,
    /// Failing tests: name and message.
    tests: Vec<(String, String)>,
    output: String,
}

/// The run as the page shows it, built from its event stream.
#[derive(Debug, Default)]
pub struct Timeline {
    project: String,
    job_id: String,
    started: Option<DateTime<FixedOffset>>,
    last: f64,
    slots: u32,
    /// (lane, file) → start, in seconds since the run started.
    open: HashMap<(String, String), f64>,
    bars: Vec<Bar>,
    /// A file (or a test id) → its bars that were attempts, which its final result colours.
    attempts: HashMap<String, Vec<usize>>,
    lanes: BTreeMap<String, ()>,
    failures: Vec<Failure>,
    /// (seconds, file) of every final result, and of the tests (name, file, seconds).
    files: Vec<(f64, String)>,
    tests: Vec<(f64, String, String)>,
    total_seconds: f64,
    longest: f64,
    flaky: Vec<String>,
    quarantined: Vec<String>,
    problems: Vec<(String, String)>,
    totals: Option<Value>,
    exit_code: Option<i64>,
    seconds: Option<f64>,
}

impl Timeline {
    /// Reads a saved event stream (`gorgon start --events PATH`).
    pub fn from_file(path: &Path) -> Result<Timeline, HtmlError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtmlError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut timeline = Timeline::default();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parse = |source| HtmlError::Parse {
                path: path.to_owned(),
                line: number + 1,
                source,
            };
            let event: Value = serde_json::from_str(line).map_err(|e| parse(e.into()))?;
            timeline.record(&event).map_err(parse)?;
        }
        if timeline.started.is_none() {
            return Err(HtmlError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(timeline)
    }

    /// Takes one event of the stream (as `docs/events.md` describes it); events of kinds it
    /// does not know are ignored, as the format asks.
    pub fn record(&mut self, event: &Value) -> Result<(), EventError> {
        let kind = event["event"].as_str().ok_or(EventError::NoKind)?;
        let time = event["time"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .ok_or(EventError::NoTime)?;
        if kind == "run_started" {
            self.started = Some(time);
            self.project = text(event, "project");
            self.job_id = text(event, "job_id");
            return Ok(());
        }
        let Some(started) = self.started else {
            return Err(EventError::BeforeStart(kind.to_owned()));
        };
        let at = ((time - started).num_milliseconds() as f64 / 1000.0).max(0.0);
        self.last = self.last.max(at);
        let lane = || format!("{}:{}", text(event, "host"), event["worker_id"]);
        match kind {
            "listener_joined" => self.slots += event["slots"].as_u64().unwrap_or(0) as u32,
            "file_started" => {
                let lane = lane();
                self.lanes.insert(lane.clone(), ());
                self.open.insert((lane, text(event, "file")), at);
            }
            "attempt_finished" => {
                let bar = self.close(event, lane(), at, BarKind::Attempt);
                let file = self.bars[bar].file.clone();
                // A test id's attempts belong to its file too.
                if let Some(owner) = unit_file(&file) {
                    self.attempts.entry(owner.to_owned()).or_default().push(bar);
                }
                self.attempts.entry(file).or_default().push(bar);
            }
            "file_finished" => {
                let kind = match (event["verdict"].as_str(), event["status"].as_str()) {
                    (Some("flaky"), _) => BarKind::Flaky,
                    (Some("quarantined"), _) => BarKind::Quarantined,
                    (_, Some("passed")) => BarKind::Passed,
                    (_, Some("crashed")) => BarKind::Crashed,
                    (_, Some("timed_out")) => BarKind::TimedOut,
                    _ => BarKind::Failed,
                };
                self.finished(event, lane(), at, kind);
            }
            "problem" => {
                self.problems
                    .push((text(event, "what"), text(event, "status")));
                // A worker that died ends the bar of what it was running.
                if event["kind"] == "worker_crashed" {
                    let what = text(event, "what");
                    let crashed: Vec<(String, String)> = self
                        .open
                        .keys()
                        .filter(|(lane, _)| crashed_lane(&what, lane))
                        .cloned()
                        .collect();
                    for key in crashed {
                        let start = self.open.remove(&key).unwrap_or(at);
                        self.bars.push(Bar {
                            lane: key.0,
                            file: key.1,
                            start,
                            end: at,
                            kind: BarKind::Crashed,
                            passed: false,
                            failure: None,
                        });
                    }
                }
            }
            "run_finished" => {
                self.totals = Some(event["totals"].clone());
                self.exit_code = event["exit_code"].as_i64();
                self.seconds = event["seconds"].as_f64();
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends the bar of a result on its lane.
    fn close(&mut self, event: &Value, lane: String, at: f64, kind: BarKind) -> usize {
        let file = text(event, "file");
        let seconds = event["seconds"].as_f64().unwrap_or(0.0);
        let start = self
            .open
            .remove(&(lane.clone(), file.clone()))
            .unwrap_or((at - seconds).max(0.0));
        self.lanes.insert(lane.clone(), ());
        self.bars.push(Bar {
            lane,
            file,
            start,
            end: at.max(start),
            kind,
            passed: event["status"] == "passed",
            failure: None,
        });
        self.bars.len() - 1
    }

    /// A file's final result: its bar (or, for a file whose runs were attempts, the colour
    /// of those), its times, and its failure.
    fn finished(&mut self, event: &Value, lane: String, at: f64, kind: BarKind) {
        let file = text(event, "file");
        let ran_here = self.open.contains_key(&(lane.clone(), file.clone()));
        let attempts = self.attempts.remove(&file).unwrap_or_default();
        let bar = match attempts.last() {
            Some(&last) if !ran_here => {
                // The retries that passed show the verdict; a file that failed every
                // attempt shows it on its last one.
                for &attempt in &attempts {
                    if self.bars[attempt].passed {
                        self.bars[attempt].kind = kind;
                    }
                }
                if !self.bars[last].passed {
                    self.bars[last].kind = kind;
                }
                last
            }
            _ => self.close(event, lane.clone(), at, kind),
        };
        let seconds = event["seconds"].as_f64().unwrap_or(0.0);
        self.total_seconds += seconds;
        self.longest = self.longest.max(seconds);
        keep_slowest(&mut self.files, (seconds, file.clone()));
        for test in event["tests"].as_array().into_iter().flatten() {
            let seconds = test["seconds"].as_f64().unwrap_or(0.0);
            keep_slowest(&mut self.tests, (seconds, text(test, "name"), file.clone()));
        }
        match kind {
            BarKind::Flaky => self.flaky.push(file.clone()),
            BarKind::Quarantined => self.quarantined.push(file.clone()),
            _ => {}
        }
        if matches!(kind, BarKind::Failed | BarKind::Crashed | BarKind::TimedOut) {
            let tests = event["tests"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| matches!(t["status"].as_str(), Some("failed" | "errored")))
                .map(|t| (text(t, "name"), text(t, "message")))
                .collect();
            let mut output = text(event, "output");
            if output.len() > OUTPUT_CHARS {
                let mut cut = OUTPUT_CHARS;
                while !output.is_char_boundary(cut) {
                    cut -= 1;
                }
                output.truncate(cut);
                output.push_str("\n[…]");
            }
            self.failures.push(Failure {
                file,
                place: lane,
                status: text(event, "status"),
                exit: text(event, "exit"),
                tests,
                output,
            });
            self.bars[bar].failure = Some(self.failures.len() - 1);
        }
    }

    /// The run's lower bound: its longest file, or its work spread over every slot.
    fn lower_bound(&self) -> f64 {
        let spread = if self.slots > 0 {
            self.total_seconds / f64::from(self.slots)
        } else {
            0.0
        };
        self.longest.max(spread)
    }

    /// The page.
    pub fn render(&self) -> String {
        let duration = self.seconds.unwrap_or(self.last).max(self.last).max(0.001);
        let page: Markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "gorgon: " (self.project) }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    h1 { "gorgon-rs run of " (self.project) }
                    p.meta {
                        "job " code { (self.job_id) }
                        @if let Some(started) = self.started { ", started " (started.to_rfc3339()) }
                        ", " (format!("{duration:.1}")) " s"
                        @if let Some(code) = self.exit_code { ", exit code " (code) }
                    }
                    (self.totals_table())
                    h2 { "Timeline" }
                    p.legend {
                        @for (kind, label) in LEGEND { span class=(format!("key {}", kind.class())) {} (label) " " }
                        span.key.bound {} "lower bound: " (format!("{:.1}", self.lower_bound())) " s (longest file, or the work over " (self.slots) " slots)"
                    }
                    div.timeline { (PreEscaped(self.svg(duration))) }
                    div #details { "Hover over a bar for its file; click it to keep its details here." }
                    (self.slowest())
                    (self.failures_section())
                    (self.named_list("Flaky", "flaky: failed, then passed on a retry", &self.flaky))
                    (self.named_list("Quarantined", "failed only in quarantined tests: they do not fail the run", &self.quarantined))
                    @if !self.problems.is_empty() {
                        h2 { "Problems" }
                        ul { @for (what, status) in &self.problems { li { (what) " (" (status) ")" } } }
                    }
                    script { (PreEscaped(SCRIPT)) }
                }
            }
        };
        page.into_string()
    }

    fn totals_table(&self) -> Markup {
        let Some(totals) = self.totals.as_ref().and_then(Value::as_object) else {
            return html! { p { "The stream ended before the run finished." } };
        };
        html! {
            table.totals {
                tr { @for key in totals.keys() { th { (key.replace('_', " ")) } } }
                tr { @for value in totals.values() { td { (value) } } }
            }
        }
    }

    /// The timeline as SVG: one lane per host:worker, one bar per run of a file.
    fn svg(&self, duration: f64) -> String {
        let lanes: Vec<&String> = self.lanes.keys().collect();
        let index: HashMap<&str, usize> = lanes
            .iter()
            .enumerate()
            .map(|(i, lane)| (lane.as_str(), i))
            .collect();
        let lane_height = (900.0 / lanes.len().max(1) as f64).clamp(4.0, 20.0);
        let height = lane_height * lanes.len() as f64 + 30.0;
        let scale = PLOT_WIDTH / duration;
        let mut svg = String::with_capacity(200 * self.bars.len() + 4096);
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {w} {height}">"#,
            w = LABEL_WIDTH + PLOT_WIDTH + 10.0
        );
        let show_labels = lane_height >= 9.0;
        for (i, lane) in lanes.iter().enumerate() {
            let y = i as f64 * lane_height;
            let _ = write!(
                svg,
                r#"<rect class="lane" x="{LABEL_WIDTH}" y="{y:.1}" width="{PLOT_WIDTH}" height="{h:.1}"/>"#,
                h = lane_height - 1.0
            );
            if show_labels {
                let _ = write!(
                    svg,
                    r#"<text class="label" x="{x}" y="{ty:.1}">{name}</text>"#,
                    x = LABEL_WIDTH - 4.0,
                    ty = y + lane_height * 0.75,
                    name = escape(lane)
                );
            }
        }
        for (number, bar) in self.bars.iter().enumerate() {
            let Some(&lane) = index.get(bar.lane.as_str()) else {
                continue;
            };
            let x = LABEL_WIDTH + bar.start * scale;
            let width = ((bar.end - bar.start) * scale).max(1.0);
            let y = lane as f64 * lane_height;
            let _ = write!(
                svg,
                r#"<rect class="bar {class}" data-n="{number}"{link} x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{h:.1}"><title>{file}&#10;{lane}, {start:.2}–{end:.2} s ({secs:.2} s), {verdict}</title></rect>"#,
                class = bar.kind.class(),
                link = bar
                    .failure
                    .map(|f| format!(r##" data-failure="#failure-{f}""##))
                    .unwrap_or_default(),
                h = lane_height - 1.0,
                file = escape(&bar.file),
                lane = escape(&bar.lane),
                start = bar.start,
                end = bar.end,
                secs = bar.end - bar.start,
                verdict = bar.kind.class()
            );
        }
        // Still running when the stream ended.
        for ((lane_name, file), start) in &self.open {
            let Some(&lane) = index.get(lane_name.as_str()) else {
                continue;
            };
            let _ = write!(
                svg,
                r#"<rect class="bar {class}" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}"><title>{file}&#10;{lane}, from {start:.2} s: no result</title></rect>"#,
                class = BarKind::Unfinished.class(),
                x = LABEL_WIDTH + start * scale,
                y = lane as f64 * lane_height,
                w = ((self.last - start) * scale).max(1.0),
                h = lane_height - 1.0,
                file = escape(file),
                lane = escape(lane_name),
            );
        }
        let plot_bottom = lane_height * lanes.len() as f64;
        let bound = LABEL_WIDTH + self.lower_bound() * scale;
        let _ = write!(
            svg,
            r#"<line class="bound" x1="{bound:.1}" x2="{bound:.1}" y1="0" y2="{plot_bottom:.1}"><title>lower bound {lb:.2} s</title></line>"#,
            lb = self.lower_bound()
        );
        let step = tick_step(duration);
        let ticks = (duration / step + 1e-9).floor() as usize;
        for number in 0..=ticks {
            let tick = number as f64 * step;
            let x = LABEL_WIDTH + tick * scale;
            let _ = write!(
                svg,
                r#"<line class="tick" x1="{x:.1}" x2="{x:.1}" y1="{plot_bottom:.1}" y2="{y2:.1}"/><text class="tick" x="{x:.1}" y="{ty:.1}">{tick} s</text>"#,
                y2 = plot_bottom + 5.0,
                ty = plot_bottom + 18.0,
                tick = (tick * 1000.0).round() / 1000.0,
            );
        }
        svg.push_str("</svg>");
        svg
    }

    fn slowest(&self) -> Markup {
        html! {
            h2 { "Slowest files" }
            table.slowest { @for (seconds, file) in &self.files { tr { td.num { (format!("{seconds:.2} s")) } td { (file) } } } }
            @if !self.tests.is_empty() {
                h2 { "Slowest tests" }
                table.slowest { @for (seconds, name, file) in &self.tests { tr { td.num { (format!("{seconds:.2} s")) } td { (name) } td.file { (file) } } } }
            }
        }
    }

    fn failures_section(&self) -> Markup {
        html! {
            h2 { "Failures (" (self.failures.len()) ")" }
            @if self.failures.is_empty() { p { "None." } }
            @for (number, failure) in self.failures.iter().enumerate() {
                div.failure id=(format!("failure-{number}")) {
                    h3 { (failure.file) " " span.status { (failure.status) " at " (failure.place) ", " (failure.exit) } }
                    @for (name, message) in &failure.tests { p.message { b { (name) } ": " (message) } }
                    @if !failure.output.is_empty() { pre { (failure.output) } }
                }
            }
        }
    }

    fn named_list(&self, title: &str, what: &str, files: &[String]) -> Markup {
        html! {
            @if !files.is_empty() {
                h2 { (title) " (" (files.len()) ")" }
                p { "Files " (what) "; the report of gorgon start lists each attempt." }
                ul { @for file in files { li { (file) } } }
            }
        }
    }
}

/// Writes the page of `timeline` to `path`, creating its folder.
pub fn write(path: &Path, timeline: &Timeline) -> Result<(), HtmlError> {
    let written = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
    .and_then(|()| std::fs::write(path, timeline.render()));
    written.map_err(|source| HtmlError::Write {
        path: path.to_owned(),
        source,
    })
}

const LEGEND: [(BarKind, &str); 7] = [
    (BarKind::Passed, "passed"),
    (BarKind::Failed, "failed"),
    (BarKind::Flaky, "flaky"),
    (BarKind::Quarantined, "quarantined"),
    (BarKind::Attempt, "attempt that ran again"),
    (BarKind::Crashed, "crashed"),
    (BarKind::TimedOut, "timed out"),
];

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.meta { color: #555; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.file { color: #666; }
.timeline { border: 1px solid #ddd; padding: 6px; } .timeline svg { display: block; max-width: 1400px; }
rect.lane { fill: #f4f4f4; }
rect.bar { stroke: #fff; stroke-width: 0.3; cursor: pointer; }
.passed { fill: #4caf50; background: #4caf50; } .failed { fill: #e53935; background: #e53935; }
.flaky { fill: #fbc02d; background: #fbc02d; } .quarantined { fill: #9575cd; background: #9575cd; }
.attempt { fill: #ff8a65; background: #ff8a65; } .crashed { fill: #6d1b1b; background: #6d1b1b; }
.timedout { fill: #8d6e63; background: #8d6e63; } .unfinished { fill: #90a4ae; background: #90a4ae; }
line.bound { stroke: #1565c0; stroke-width: 1.5; stroke-dasharray: 5 3; } .key.bound { border-top: 2px dashed #1565c0; height: 0; }
line.tick { stroke: #999; } text.tick { font-size: 10px; fill: #555; text-anchor: middle; }
text.label { font-size: 10px; fill: #444; text-anchor: end; }
.key { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 10px; vertical-align: middle; }
#details { margin: 8px 0; padding: 6px 10px; background: #fafafa; border: 1px solid #eee; min-height: 1.4em; white-space: pre-wrap; }
.failure { border-left: 4px solid #e53935; padding: 2px 12px; margin: 12px 0; }
.failure h3 { font-size: 1em; margin: 4px 0; } .message { white-space: pre-wrap; } .status { color: #b71c1c; font-weight: normal; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; max-height: 30em; }
";

/// Shows a clicked bar's details, and jumps to a failure's.
const SCRIPT: &str = "
document.querySelectorAll('rect.bar').forEach(function (bar) {
  bar.addEventListener('click', function () {
    var title = bar.querySelector('title');
    document.getElementById('details').textContent = title ? title.textContent : '';
    var failure = bar.getAttribute('data-failure');
    if (failure) { location.hash = failure; }
  });
});
document.body.setAttribute('data-ready', 'yes');
";

fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether a `worker N on HOST died` problem is about `lane` (`HOST:N`).
fn crashed_lane(what: &str, lane: &str) -> bool {
    let Some(rest) = what.strip_prefix("worker ") else {
        return false;
    };
    let Some((id, rest)) = rest.split_once(" on ") else {
        return false;
    };
    let host = rest.strip_suffix(" died").unwrap_or(rest);
    lane == format!("{host}:{id}")
}

/// Keeps the [`SLOWEST`] largest entries, largest first.
fn keep_slowest<T: PartialOrd>(list: &mut Vec<T>, entry: T) {
    let at = list.partition_point(|e| *e > entry);
    if at < SLOWEST {
        list.insert(at, entry);
        list.truncate(SLOWEST);
    }
}

/// A step between axis ticks that gives about ten ticks.
fn tick_step(duration: f64) -> f64 {
    let rough = duration / 10.0;
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= rough)
        .unwrap_or(rough)
        .max(0.001)
}

/// `text` escaped for the SVG written by hand, as maud escapes the rest of the page.
fn escape(text: &str) -> String {
    html! { (text) }.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(seconds: f64) -> String {
        let start = DateTime::parse_from_rfc3339("2026-01-01T10:00:00.000Z").unwrap();
        let time = start + chrono::Duration::milliseconds((seconds * 1000.0) as i64);
        time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// A generated run: `files` files of one second each over `lanes` workers on 20 hosts,
    /// every 50th failing, as its event stream.
    fn generated(files: usize, lanes: usize) -> Vec<Value> {
        let mut events = vec![json!({"schema": 1, "time": at(0.0), "event": "run_started",
            "job_id": "j", "project": "big", "cluster": "c", "files": []})];
        for host in 0..20 {
            events.push(
                json!({"schema": 1, "time": at(0.1), "event": "listener_joined",
                "host": format!("host{host}"), "slots": lanes / 20}),
            );
        }
        for file in 0..files {
            let lane = file % lanes;
            let (host, worker) = (format!("host{}", lane % 20), lane / 20 + 1);
            let start = 0.2 + (file / lanes) as f64;
            let name = format!("spec/f{file:05}_spec.rb");
            events.push(
                json!({"schema": 1, "time": at(start), "event": "file_started",
                "file": name, "host": host, "worker_id": worker}),
            );
            let failed = file % 50 == 7;
            events.push(json!({"schema": 1, "time": at(start + 0.9), "event": "file_finished",
                "verdict": if failed { "failed" } else { "passed" },
                "file": name, "host": host, "worker_id": worker,
                "status": if failed { "failed" } else { "passed" }, "seconds": 0.9,
                "exit": "exit status 0", "output": if failed { "boom <script>" } else { "" },
                "tests": [{"name": format!("test {file}"), "status": if failed { "failed" } else { "passed" },
                           "seconds": 0.8, "message": "expected 1"}]}));
        }
        let end = 0.2 + (files / lanes) as f64 + 1.0;
        events.push(json!({"schema": 1, "time": at(end), "event": "run_finished",
            "exit_code": 1, "seconds": end, "totals": {"files": files, "passed": files - files / 50, "failed": files / 50}}));
        events
    }

    #[test]
    fn a_run_of_ten_thousand_files_on_two_hundred_lanes_renders_every_bar() {
        let mut timeline = Timeline::default();
        for event in generated(10_000, 200) {
            timeline.record(&event).unwrap();
        }
        let page = timeline.render();
        assert_eq!(page.matches(r#"<rect class="bar "#).count(), 10_000);
        assert_eq!(page.matches(r#"<rect class="lane""#).count(), 200);
        assert_eq!(page.matches(r#"class="failure""#).count(), 200);
        // Output is escaped, and the page needs nothing from the network.
        assert!(page.contains("boom &lt;script&gt;"));
        assert!(
            !page.contains("http://") || page.matches("http://").count() == 1,
            "only the SVG namespace"
        );
        assert!(!page.contains("https://"));
        // 10,000 bars in a few megabytes at most.
        assert!(page.len() < 8 * 1024 * 1024, "{} bytes", page.len());
        // The lower bound: 10,000 files of 0.9 s over 200 slots.
        assert!((timeline.lower_bound() - 45.0).abs() < 1e-6);
        assert_eq!(timeline.slowest_files_count(), SLOWEST);
    }

    #[test]
    fn retries_crashes_and_an_unfinished_file_are_drawn() {
        let events = vec![
            json!({"schema": 1, "time": at(0.0), "event": "run_started", "job_id": "j", "project": "p", "cluster": "c", "files": []}),
            json!({"schema": 1, "time": at(0.1), "event": "listener_joined", "host": "h", "slots": 2}),
            json!({"schema": 1, "time": at(0.2), "event": "file_started", "file": "a", "host": "h", "worker_id": 1}),
            json!({"schema": 1, "time": at(0.5), "event": "attempt_finished", "file": "a", "host": "h", "worker_id": 1, "status": "failed", "seconds": 0.3, "exit": "", "output": "", "tests": []}),
            json!({"schema": 1, "time": at(0.6), "event": "file_started", "file": "a", "host": "h", "worker_id": 2}),
            json!({"schema": 1, "time": at(0.9), "event": "attempt_finished", "file": "a", "host": "h", "worker_id": 2, "status": "passed", "seconds": 0.3, "exit": "", "output": "", "tests": []}),
            json!({"schema": 1, "time": at(0.9), "event": "file_finished", "verdict": "flaky", "file": "a", "host": "h", "worker_id": 2, "status": "passed", "seconds": 0.3, "exit": "", "output": "", "tests": []}),
            json!({"schema": 1, "time": at(1.0), "event": "file_started", "file": "b", "host": "h", "worker_id": 1}),
            json!({"schema": 1, "time": at(1.5), "event": "problem", "kind": "worker_crashed", "what": "worker 1 on h died", "status": "killed", "output": "", "fails_run": false}),
            json!({"schema": 1, "time": at(1.6), "event": "file_started", "file": "c", "host": "h", "worker_id": 2}),
            json!({"schema": 1, "time": at(2.0), "event": "something_new", "whatever": 1}),
        ];
        let mut timeline = Timeline::default();
        for event in &events {
            timeline.record(event).unwrap();
        }
        let page = timeline.render();
        assert!(page.contains(r#"class="bar attempt""#));
        assert!(page.contains(r#"class="bar flaky""#));
        // The final result of a retried file draws no bar of its own: its attempts are it.
        assert_eq!(page.matches(r#"class="bar "#).count(), 4, "{page}");
        assert!(page.contains(r#"class="bar crashed""#));
        assert!(page.contains(r#"class="bar unfinished""#));
        assert!(page.contains("The stream ended before the run finished."));
        // An event before run_started is refused.
        let mut fresh = Timeline::default();
        assert!(fresh.record(&events[2]).is_err());
    }

    #[test]
    fn ticks_come_in_round_steps() {
        assert_eq!(tick_step(100.0), 10.0);
        assert_eq!(tick_step(3.0), 0.5);
        assert_eq!(tick_step(42.0), 5.0);
    }

    impl Timeline {
        fn slowest_files_count(&self) -> usize {
            self.files.len()
        }
    }
}
