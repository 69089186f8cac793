//! What the user sees: live progress on stderr (a bar with Gorgon's F/H/W title on a
//! terminal, plain lines otherwise) and the final report on stdout.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use gorgon_protocol::{FileResult, FileStatus, TestResult, TestStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::quarantine::Quarantined;
use crate::retries::Retried;
use crate::state::{JobState, Problem};

/// Whether to colour stdout: only on a terminal, and never with `NO_COLOR` set.
pub fn colour_enabled() -> bool {
    colour_wanted(std::io::stdout().is_terminal())
}

/// Whether to colour a stream: only when it is a terminal, and never when `NO_COLOR` is set
/// to a non-empty value (<https://no-color.org>). Every command decides colour through this.
pub fn colour_wanted(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }
    fn green(self, text: &str) -> String {
        self.wrap("32", text)
    }
    fn yellow(self, text: &str) -> String {
        self.wrap("33", text)
    }
    fn cyan(self, text: &str) -> String {
        self.wrap("36", text)
    }
    fn magenta(self, text: &str) -> String {
        self.wrap("35", text)
    }
}

/// Live progress of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    paint: Paint,
    /// `--quiet`: no bar and no lines; the report says it all.
    quiet: bool,
    /// `--live-output`: the files whose live output is printed (empty: every file).
    live: Option<Vec<String>>,
    /// Live output goes to stderr (stdout holds the event stream).
    live_to_stderr: bool,
}

impl Progress {
    pub fn new(total: usize, quiet: bool) -> Self {
        let stderr_is_terminal = std::io::stderr().is_terminal();
        let paint = Paint(colour_wanted(stderr_is_terminal));
        let bar = (stderr_is_terminal && !quiet).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let template = if paint.0 {
                "{prefix} [{bar:40.green}] {pos}/{len} {elapsed_precise} {wide_msg}"
            } else {
                "{prefix} [{bar:40}] {pos}/{len} {elapsed_precise} {wide_msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar.set_prefix("Loading environment and workers...");
            bar.enable_steady_tick(Duration::from_millis(500));
            bar
        });
        Progress {
            bar,
            paint,
            quiet,
            live: None,
            live_to_stderr: false,
        }
    }

    /// Prints the live output of `files` (every file when empty) as it comes, on stdout, or
    /// on stderr when stdout holds the event stream.
    pub fn with_live_output(mut self, files: Option<Vec<String>>, to_stderr: bool) -> Self {
        self.live = files;
        self.live_to_stderr = to_stderr;
        self
    }

    /// Output of a running file: printed line by line, each after `host:worker file |`,
    /// when `--live-output` asks for it; its last line shows beside the bar either way.
    pub fn live_output(&self, place: &str, file: &str, text: &str) {
        if let Some(bar) = &self.bar {
            if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
                bar.set_message(format!("{file}: {}", last.trim_end()));
            }
        }
        let wanted = self
            .live
            .as_ref()
            .is_some_and(|files| files.is_empty() || files.iter().any(|f| f == file));
        if !wanted {
            return;
        }
        let prefix = self.paint.cyan(&format!("{place} {file} |"));
        let lines: String = text
            .lines()
            .map(|line| format!("{prefix} {line}\n"))
            .collect();
        let print = || {
            if self.live_to_stderr {
                let _ = std::io::stderr().lock().write_all(lines.as_bytes());
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
            }
        };
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// A status line (pushing, waiting for listeners, ...).
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.quiet => {}
            None => eprintln!("{text}"),
        }
    }

    /// A phase of a run with phases starts with `files` files (the bar grows by as many).
    pub fn phase_started(&self, name: &str, files: usize, state: &JobState) {
        if let Some(bar) = &self.bar {
            bar.set_length(state.total() as u64);
        }
        self.note(&format!("Phase {name}: {}", counted(files, "file")));
    }

    /// Redraws the F/H/W title.
    pub fn update(&self, state: &JobState) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!(
                "F: {} H: {} W: {}",
                state.count(FileStatus::Failed)
                    + state.count(FileStatus::Crashed)
                    + state.count(FileStatus::TimedOut),
                state.hosts_that_ran(),
                state.workers_running()
            ));
            bar.set_position(state.finished() as u64);
        }
    }

    /// Reports one newly settled file.
    pub fn file_finished(&self, state: &JobState, result: &FileResult) {
        let verdict = match result.status {
            FileStatus::Passed => self.paint.green("PASS"),
            FileStatus::Failed => self.paint.red("FAIL"),
            FileStatus::Crashed => self.paint.red("CRASH"),
            FileStatus::TimedOut => self.paint.red("TIMEOUT"),
        };
        let phase = state
            .phase_of(&result.file)
            .map(|name| format!("{name} "))
            .unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                if result.status != FileStatus::Passed {
                    bar.println(format!(
                        "{verdict} {phase}{} at {}:{}",
                        result.file, result.host, result.worker_id
                    ));
                }
            }
            None if self.quiet => {}
            None => eprintln!(
                "[{phase}{:>width$}/{}] {verdict} {} ({}:{}, {:.2} s)",
                state.finished(),
                state.total(),
                result.file,
                result.host,
                result.worker_id,
                result.seconds,
                width = state.total().to_string().len()
            ),
        }
        self.update(state);
    }

    /// Reports a result that is not a verdict yet: a failure whose tests (or file) run
    /// again, or a retry while others of its file still run.
    pub fn attempt_finished(&self, result: &FileResult) {
        if self.quiet {
            return;
        }
        let verdict = match result.status {
            FileStatus::Passed => self.paint.green("PASS"),
            _ => self.paint.yellow("FAIL"),
        };
        self.note(&format!(
            "{verdict} {} at {}:{} ({}, {:.2} s), not final: retries run",
            result.file, result.host, result.worker_id, result.exit, result.seconds
        ));
    }

    /// Reports a problem as it arrives (on stderr, beside the bar).
    pub fn problem(&self, problem: &Problem) {
        let mut text = format!(
            "{} {} ({})",
            self.paint.yellow("Problem:"),
            problem.what,
            problem.status
        );
        if !problem.output.trim().is_empty() {
            text.push('\n');
            text.push_str(problem.output.trim_end());
        }
        self.note(&text);
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `count` of `noun`, plural unless one: "1 file", "3 files", "0 files". Every count of
/// files the report, the progress notes and the run's messages show is written by it.
pub fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// One line on how a phase ended (or why it did not run).
pub fn phase_line(phase: &crate::phases::Phase) -> String {
    use crate::phases::PhaseStatus;
    let what = match &phase.settings.command {
        Some(command) => format!("`{command}`"),
        None => counted(phase.units.len(), "file"),
    };
    let name = phase.name();
    match &phase.status {
        PhaseStatus::Passed => format!("Phase {name} passed ({what}, {:.1} s)", phase.seconds),
        PhaseStatus::Failed(why) => {
            format!(
                "Phase {name} failed: {why} ({what}, {:.1} s)",
                phase.seconds
            )
        }
        PhaseStatus::NotRun(not_run) => {
            format!("Phase {name} not run: {} ({what})", not_run.reason)
        }
        PhaseStatus::Waiting | PhaseStatus::Running => format!("Phase {name} ({what})"),
    }
}

/// How the run ended, for the report.
pub struct Ending<'a> {
    pub state: &'a JobState,
    /// The runtime file as the run read it: which tests were flaky before.
    pub history: &'a crate::files::History,
    pub seconds: f64,
    /// Why the run stopped before every file had a result, if it did.
    pub stopped_because: Option<String>,
}

/// Writes the final report: each file that did not pass with its output, the problems,
/// files that never ran, and a one-line total.
pub fn print_report(out: &mut impl Write, ending: &Ending, colour: bool) -> std::io::Result<()> {
    let paint = Paint(colour);
    let state = ending.state;
    for result in state.failed_results() {
        write_failure(out, state, result, paint)?;
    }
    write_quarantined(out, state, paint)?;
    write_flaky(out, ending, paint)?;
    if state.retries().exhausted() {
        let (budget, _) = state.retries().budget(state.tests_reported());
        writeln!(out)?;
        writeln!(
            out,
            "{} the run's {budget} retries were spent: later failures were not run again",
            paint.yellow("Retry budget:")
        )?;
    }
    write_problems(out, state, paint)?;
    write_phases(out, state, paint)?;
    // The files of phases that did not run are listed under their phase, above.
    let unfinished = state.unfinished_queued();
    if !unfinished.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{} ({} did not run or did not finish):",
            paint.yellow("Unfinished files"),
            counted(unfinished.len(), "file")
        )?;
        for file in &unfinished {
            writeln!(out, "\t{file}")?;
        }
    }
    if let Some(reason) = &ending.stopped_because {
        writeln!(out)?;
        writeln!(out, "{} {reason}", paint.red("Run stopped:"))?;
    }
    writeln!(out)?;
    write_summary(out, ending, paint)
}

/// The rule above each section of the report, after a blank line.
fn write_rule(out: &mut impl Write, paint: Paint) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{}", paint.magenta(&"*".repeat(80)))
}

/// The rule and the title line of a section that lists things: `Title (what):`.
fn write_section(
    out: &mut impl Write,
    paint: Paint,
    title: &str,
    what: &str,
) -> std::io::Result<()> {
    write_rule(out, paint)?;
    writeln!(out, "{} ({what}):", paint.yellow(title))
}

/// One file that did not pass: where and how, how to replay it, its tests and output.
fn write_failure(
    out: &mut impl Write,
    state: &JobState,
    result: &FileResult,
    paint: Paint,
) -> std::io::Result<()> {
    write_rule(out, paint)?;
    let verb = match result.status {
        FileStatus::Crashed => "crashed",
        FileStatus::TimedOut => "timed out",
        _ => "failed",
    };
    writeln!(
        out,
        "File '{}' {verb} at '{}:{}' ({}, {:.2} s)",
        paint.cyan(&result.file),
        result.host,
        result.worker_id,
        result.exit,
        result.seconds
    )?;
    // A failure that may depend on what ran before it in the same worker.
    if let Some(worker) = state.run_record().worker_before(&result.file) {
        let file = shlex::try_quote(&result.file).unwrap_or_default();
        writeln!(
            out,
            "  Replay this worker's files up to it here: {}",
            paint.cyan(&format!(
                "gorgon start --replay {worker} --replay-until {file}"
            ))
        )?;
    }
    write_failed_tests(out, result, paint)?;
    if !result.output.is_empty() {
        writeln!(out, "{}", result.output.trim_end())?;
    }
    let retried = state.retries().retried().iter();
    for failing in retried.filter(|r| r.file == result.file && !r.flaky()) {
        writeln!(out, "  {} failed every attempt:", paint.red(&failing.name))?;
        write_attempts(out, failing, paint)?;
    }
    Ok(())
}

/// The quarantined tests or files that ran, and how they did.
fn write_quarantined(out: &mut impl Write, state: &JobState, paint: Paint) -> std::io::Result<()> {
    let quarantined: Vec<Quarantined> = state
        .quarantined_results()
        .chain(
            state
                .queued()
                .iter()
                .filter_map(|f| state.result(f))
                .filter(|r| r.status == FileStatus::Passed),
        )
        .flat_map(|result| state.quarantine().found_in(result))
        .collect();
    if quarantined.is_empty() {
        return Ok(());
    }
    let count = quarantined.len();
    let what = format!("{count} quarantined tests or files ran; they do not fail the run");
    write_section(out, paint, "Quarantined", &what)?;
    for entry in &quarantined {
        let how = if entry.passed {
            paint.green("passed (it may be released from the quarantine)")
        } else {
            paint.red("failed")
        };
        if entry.name == entry.file {
            writeln!(out, "  {} {how}", entry.file)?;
        } else {
            writeln!(out, "  {} in {} {how}", entry.name, entry.file)?;
        }
    }
    Ok(())
}

/// The tests that failed, then passed on a retry, with their attempts.
fn write_flaky(out: &mut impl Write, ending: &Ending, paint: Paint) -> std::io::Result<()> {
    let flaky: Vec<&Retried> = ending.state.retries().flaky().collect();
    if flaky.is_empty() {
        return Ok(());
    }
    let what = format!(
        "{} failed, then passed on a retry; they do not fail the run",
        flaky.len()
    );
    write_section(out, paint, "Flaky", &what)?;
    for test in flaky {
        let before = match crate::files::flaky_before(ending.history, &test.unit) {
            0 => String::new(),
            1 => " (flaky once before)".to_owned(),
            runs => format!(" (flaky in {runs} runs before)"),
        };
        if test.name == test.file {
            writeln!(out, "  {}{before}", paint.cyan(&test.file))?;
        } else {
            writeln!(
                out,
                "  {} ({}){before}",
                paint.yellow(&test.name),
                test.unit
            )?;
        }
        write_attempts(out, test, paint)?;
    }
    Ok(())
}

/// The problems outside the test files.
fn write_problems(out: &mut impl Write, state: &JobState, paint: Paint) -> std::io::Result<()> {
    let problems: Vec<&Problem> = state.problems().iter().collect();
    if problems.is_empty() {
        return Ok(());
    }
    write_rule(out, paint)?;
    for problem in problems {
        writeln!(
            out,
            "{} {} ({})",
            paint.yellow("Problem:"),
            problem.what,
            problem.status
        )?;
        if !problem.output.trim().is_empty() {
            writeln!(out, "{}", problem.output.trim_end())?;
        }
    }
    Ok(())
}

/// How each phase ended, with the files of those that did not run.
fn write_phases(out: &mut impl Write, state: &JobState, paint: Paint) -> std::io::Result<()> {
    if state.phases().is_empty() {
        return Ok(());
    }
    write_rule(out, paint)?;
    writeln!(out, "{}", paint.yellow("Phases:"))?;
    for phase in state.phases().list() {
        let line = phase_line(phase);
        let line = match &phase.status {
            crate::phases::PhaseStatus::Passed => paint.green(&line),
            crate::phases::PhaseStatus::Failed(_) => paint.red(&line),
            _ => line,
        };
        writeln!(out, "  {line}")?;
        if matches!(phase.status, crate::phases::PhaseStatus::NotRun(_)) {
            for unit in &phase.units {
                writeln!(out, "\t{unit}")?;
            }
        }
    }
    Ok(())
}

/// The one-line total (and the tests' line, when the runner reports tests).
fn write_summary(out: &mut impl Write, ending: &Ending, paint: Paint) -> std::io::Result<()> {
    let state = ending.state;
    let failed = state.count(FileStatus::Failed);
    // A timed-out file was killed: it counts with the crashes in the totals.
    let crashed = state.count(FileStatus::Crashed) + state.count(FileStatus::TimedOut);
    let mut flaky = String::new();
    if state.retries().policy().retries > 0 {
        flaky.push_str(&format!(", {} flaky", state.retries().flaky().count()));
    }
    if !state.quarantine().is_empty() {
        flaky.push_str(&format!(", {} quarantined", state.quarantined_count()));
    }
    let summary = format!(
        "{}: {} passed, {} failed, {} crashed, {} not run{flaky} in {:.1} s",
        counted(state.files_counted(), "file"),
        state.count(FileStatus::Passed),
        failed,
        crashed,
        state.unfinished().len(),
        ending.seconds
    );
    let summary = if state.passed() {
        paint.green(&summary)
    } else {
        paint.red(&summary)
    };
    writeln!(out, "{summary}")?;
    if state.has_tests() {
        writeln!(out, "{}", tests_line(state))?;
    }
    Ok(())
}

/// `Tests: 5 passed, 1 failed, 0 errored, 2 skipped, 0 pending`, then pytest's xfailed and
/// xpassed counts when there are any.
fn tests_line(state: &JobState) -> String {
    let counts = TestStatus::ALL
        .iter()
        .map(|&status| (status, state.test_count(status)))
        .filter(|&(status, count)| {
            count > 0 || !matches!(status, TestStatus::Xfailed | TestStatus::Xpassed)
        })
        .map(|(status, count)| format!("{count} {}", status.as_str()))
        .collect::<Vec<_>>();
    format!("Tests: {}", counts.join(", "))
}

/// Backtrace lines shown per failed test; the whole output follows anyway.
const BACKTRACE_LINES: usize = 8;

/// Each failed or errored test of a file: its full name, where it is, its message and the
/// start of its backtrace.
fn write_failed_tests(
    out: &mut impl Write,
    result: &FileResult,
    paint: Paint,
) -> std::io::Result<()> {
    let failing = result.tests.iter().filter(|t| t.status.is_failure());
    for (number, test) in failing.enumerate() {
        let verb = match test.status {
            TestStatus::Errored => "errored",
            _ => "failed",
        };
        writeln!(
            out,
            "  {}) {} {verb}{}",
            number + 1,
            paint.red(&test.name),
            location(test, result)
        )?;
        if let Some(message) = test.message.as_deref().filter(|m| !m.trim().is_empty()) {
            for line in message.trim_end().lines() {
                writeln!(out, "     {line}")?;
            }
        }
        if let Some(details) = test.details.as_deref() {
            write_first_lines(out, details, "     # ")?;
        }
    }
    Ok(())
}

/// Every attempt of a retried test or file: where and how long it ran, and how it failed.
fn write_attempts(out: &mut impl Write, retried: &Retried, paint: Paint) -> std::io::Result<()> {
    for (number, attempt) in retried.attempts.iter().enumerate() {
        let verdict = if attempt.passed {
            paint.green("passed")
        } else {
            paint.red("failed")
        };
        let message = attempt
            .message
            .as_deref()
            .and_then(|m| m.trim().lines().next())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        writeln!(
            out,
            "    attempt {} at {}:{} ({:.2} s) {verdict}{message}",
            number + 1,
            attempt.place.host,
            attempt.place.worker_id,
            attempt.seconds
        )?;
        write_first_lines(out, &attempt.output, "      ")?;
    }
    Ok(())
}

/// The first [`BACKTRACE_LINES`] lines of `text`, each after `prefix`, and how many more
/// there are.
fn write_first_lines(out: &mut impl Write, text: &str, prefix: &str) -> std::io::Result<()> {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    for line in lines.iter().take(BACKTRACE_LINES) {
        writeln!(out, "{prefix}{line}")?;
    }
    if lines.len() > BACKTRACE_LINES {
        writeln!(
            out,
            "{prefix}... {} more lines",
            lines.len() - BACKTRACE_LINES
        )?;
    }
    Ok(())
}

/// ` (file:line)` for a test, falling back on the test's file for a runner that gives no path.
fn location(test: &TestResult, result: &FileResult) -> String {
    let file = test.file.as_deref().unwrap_or(&result.file);
    match test.line {
        Some(line) => format!(" ({file}:{line})"),
        None => format!(" ({file})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_is_one_file_and_others_are_files() {
        let said: Vec<String> = [0, 1, 2, 10].map(|n| counted(n, "file")).into();
        assert_eq!(said, ["0 files", "1 file", "2 files", "10 files"]);
    }

    fn finished(file: &str, status: FileStatus, output: &str) -> FileResult {
        FileResult {
            host: "h1".into(),
            worker_id: 2,
            file: file.into(),
            status,
            seconds: 0.25,
            exit: match status {
                FileStatus::Passed => "exit status 0".into(),
                FileStatus::Failed => "exit status 1".into(),
                FileStatus::Crashed => "killed by signal 9 (SIGKILL)".into(),
                FileStatus::TimedOut => "timed out after 1 s".into(),
            },
            output: output.into(),
            tests: Vec::new(),
            impact: None,
        }
    }

    #[test]
    fn the_report_names_each_failure_and_totals_the_run() {
        let mut state = JobState::new(vec!["a".into(), "b".into(), "c".into(), "d".into()]);
        state.file_finished(finished("a", FileStatus::Passed, ""));
        state.file_finished(finished("b", FileStatus::Failed, "expected 2, got 3\n"));
        state.file_finished(finished("c", FileStatus::Crashed, "segfault"));
        let mut out = Vec::new();
        let ending = Ending {
            history: &crate::files::History::new(),
            state: &state,
            seconds: 1.25,
            stopped_because: Some("interrupted".into()),
        };
        print_report(&mut out, &ending, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("File 'b' failed at 'h1:2' (exit status 1, 0.25 s)\nexpected 2, got 3\n")
        );
        assert!(text.contains(
            "File 'c' crashed at 'h1:2' (killed by signal 9 (SIGKILL), 0.25 s)\nsegfault"
        ));
        assert!(text.contains("\td\n"));
        assert!(text.contains("Run stopped: interrupted"));
        assert!(text.ends_with("4 files: 1 passed, 1 failed, 1 crashed, 1 not run in 1.2 s\n"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn failed_tests_are_named_under_their_file_and_totalled() {
        let test = |name: &str, status, line| TestResult {
            name: name.into(),
            classname: "Cart".into(),
            file: Some("spec/cart_spec.rb".into()),
            line,
            status,
            seconds: 0.0,
            message: (status != TestStatus::Passed).then(|| "expected: 121\n     got: 120".into()),
            details: (status == TestStatus::Failed).then(|| {
                (1..=10)
                    .map(|i| format!("spec/cart_spec.rb:{i}\n"))
                    .collect()
            }),
            id: None,
        };
        let mut state = JobState::new(vec!["spec/cart_spec.rb".into(), "spec/ok_spec.rb".into()]);
        let mut cart = finished("spec/cart_spec.rb", FileStatus::Failed, "");
        cart.tests = vec![
            test("Cart counts", TestStatus::Passed, Some(3)),
            test("Cart adds tax", TestStatus::Failed, Some(7)),
            test("Cart charges", TestStatus::Errored, None),
            test("Cart prints", TestStatus::Skipped, Some(12)),
        ];
        state.file_finished(cart);
        let mut ok = finished("spec/ok_spec.rb", FileStatus::Passed, "");
        ok.tests = vec![test("Ok works", TestStatus::Pending, Some(1))];
        state.file_finished(ok);
        let mut out = Vec::new();
        let ending = Ending {
            history: &crate::files::History::new(),
            state: &state,
            seconds: 2.0,
            stopped_because: None,
        };
        print_report(&mut out, &ending, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "File 'spec/cart_spec.rb' failed at 'h1:2' (exit status 1, 0.25 s)\n  \
                 1) Cart adds tax failed (spec/cart_spec.rb:7)\n     expected: 121\n          got: 120\n     \
                 # spec/cart_spec.rb:1\n"
            ),
            "{text}"
        );
        assert!(text.contains("     # ... 2 more lines\n"), "{text}");
        assert!(
            text.contains("  2) Cart charges errored (spec/cart_spec.rb)\n"),
            "{text}"
        );
        assert!(!text.contains("Cart counts"), "{text}");
        assert!(text.ends_with(
            "2 files: 1 passed, 1 failed, 0 crashed, 0 not run in 2.0 s\n\
             Tests: 1 passed, 1 failed, 1 errored, 1 skipped, 1 pending\n"
        ));
    }
}
