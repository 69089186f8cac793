//! `gorgon start`: one run from configuration to exit code. A run is planned (settings,
//! files, order), handed to an engine that feeds the [`JobState`] — `distributed` (RabbitMQ
//! and listeners) or `local` (worker processes on this machine) — and finished the same way
//! whichever engine ran it: runtime file, failed files, `after_job_finishes`, JUnit, report,
//! exit code (`--dry-run` stops after the plan and prints its files). What the engines
//! share with it is in `engine` (the plan), `errors` (the stop, the errors, the exit
//! codes) and `run_core` (the handling of replies, retries and phases).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use gorgon_exec::run_callback;
use gorgon_exec::signals::StopSignals;
use gorgon_protocol::{exit_code, CallbackName};
use uuid::Uuid;

use crate::engine::Plan;
use crate::errors::{self, StartError, Stop};
use crate::events::{Event, EventSink, ProblemKind, Totals};
use crate::files;
use crate::impact::{self, Chosen};
use crate::phases::Phases;
use crate::quarantine::Quarantine;
use crate::replay::RunRecord;
use crate::rerun::{self, Rerun};
use crate::run_core::Core;
use crate::settings::{ConfigError, Settings, StartOptions};
use crate::state::{JobState, Problem};
use crate::view::{self, Ending};

/// Runs `gorgon start` and returns the run's exit code, or the error that ended it (for the
/// caller to print; the event stream has already recorded it). `settings` are those the
/// caller resolved from `options` with [`Settings::for_start`], once: it needs `log_file`
/// before anything logs. A configuration that did not load is only reported here, after the
/// events file is opened, so that whoever waits for that file finds it whatever went wrong.
pub async fn start(
    options: StartOptions,
    settings: Result<Settings, ConfigError>,
) -> Result<i32, StartError> {
    let started = Instant::now();
    // A replay reads its `--events` file: the stream of the run it replays. A dry run
    // writes nothing.
    let writes_events = options
        .events
        .as_deref()
        .filter(|_| options.replay.is_none() && !options.dry_run);
    let mut events = crate::engine::open_events(writes_events)?;
    let html = options
        .html
        .clone()
        .or_else(|| settings.as_ref().ok().and_then(|s| s.html_file.clone()));
    if html.is_some() {
        events = events.with_timeline();
    }
    let ran = match settings {
        Ok(settings) => {
            settings.tell_keys();
            run(options, settings, &mut events).await
        }
        Err(error) => Err(error.into()),
    };
    ran.inspect_err(|error| {
        let seconds = started.elapsed().as_secs_f64();
        events.finish_after_error(error.exit_code(), seconds, &error.to_string());
    })
}

async fn run(
    options: StartOptions,
    settings: Settings,
    events: &mut EventSink,
) -> Result<i32, StartError> {
    let Some((mut plan, queue, phases)) = plan(options, settings, events)? else {
        return Ok(exit_code::SUCCESS);
    };
    if plan.options.dry_run {
        return Ok(dry_run(&plan, queue, &phases));
    }
    if plan.chosen.as_ref().is_some_and(Chosen::reaches_nothing) {
        // Nothing to run: the reports still say so, every file as not selected.
        return Ok(finish(plan, JobState::new(queue), None, events).await);
    }
    let mut state = JobState::new(queue)
        .with_phases(phases)
        .with_retries(plan.settings.retries)
        .with_quarantine(std::mem::take(&mut plan.quarantine))
        .with_max_fail(plan.settings.max_fail);
    // Installed once, before anything of the job starts: a signal at any moment from here on
    // stops the run (it waits in the streams until the engine looks).
    let mut signals = StopSignals::install();
    let stop = match plan.options.local {
        Some(workers) => {
            crate::engines::local::run(&plan, workers, &mut state, events, &mut signals).await?
        }
        None => crate::engines::distributed::run(&plan, &mut state, events, &mut signals).await?,
    };
    Ok(finish(plan, state, stop, events).await)
}

/// `--dry-run`: prints the units the run would queue, in its order (phase after phase),
/// one a line on stdout, and on stderr what `--changed` left out (what it chose was told
/// while planning). Nothing runs, nothing is pushed or written.
fn dry_run(plan: &Plan, queue: Vec<String>, phases: &Phases) -> i32 {
    let units = if phases.is_empty() {
        queue
    } else {
        phases
            .list()
            .iter()
            .flat_map(|phase| phase.units.iter().cloned())
            .collect()
    };
    let mut out = std::io::stdout().lock();
    for unit in &units {
        // A reader that went away (`| head`) has what it wanted.
        if writeln!(out, "{unit}").is_err() {
            break;
        }
    }
    let _ = out.flush();
    eprint!("{}", left_out_line(plan).unwrap_or_default());
    exit_code::SUCCESS
}

/// Checks that the settings fit the run and finds, orders and announces the files; `None`
/// when there is nothing to re-run (already said). In a run with phases the
/// files come in its phases and the first queue is empty (the engine starts the first
/// phase).
fn plan(
    options: StartOptions,
    settings: Settings,
    events: &mut EventSink,
) -> Result<Option<(Plan, Vec<String>, Phases)>, StartError> {
    let clock = (Instant::now(), chrono::Utc::now());
    if options.local.is_none() {
        settings.file_server()?;
    }
    let quarantine = settings.quarantine()?;
    if let Some(replay) = &options.replay {
        let files = replayed(&options, &settings, replay)?;
        let history = files::History::new();
        let (plan, queue) = planned(options, settings, events, files, history, quarantine, clock);
        return Ok(Some((plan, queue, Phases::default())));
    }
    let Some(found) = found(&options, &settings)? else {
        return Ok(None);
    };
    let Some((found, chosen)) = changed(&options, &settings, found)? else {
        return Ok(None);
    };
    let history = settings.history()?;
    let groups = by_phase(&options, &settings, found, &history)?;
    if settings.phases.is_empty() {
        let queue = groups.into_iter().next().unwrap_or_default();
        let (mut plan, queue) =
            planned(options, settings, events, queue, history, quarantine, clock);
        not_selected(&mut plan, chosen, events);
        return Ok(Some((plan, queue, Phases::default())));
    }
    let phases = Phases::new(settings.phases.iter().cloned().zip(groups).collect());
    let every_unit: Vec<String> = phases
        .list()
        .iter()
        .flat_map(|phase| phase.units.iter().cloned())
        .collect();
    let (mut plan, _) = planned(
        options, settings, events, every_unit, history, quarantine, clock,
    );
    not_selected(&mut plan, chosen, events);
    Ok(Some((plan, Vec::new(), phases)))
}

/// The files that run, and what `--changed` chose.
type Narrowed = (Vec<String>, Option<Chosen>);

/// With `--changed`, the files of `found` a change reaches (all of them when the change
/// reaches what the impact map cannot see, none when it reaches no test file), told on
/// stderr, and the choice.
fn changed(
    options: &StartOptions,
    settings: &Settings,
    found: Vec<String>,
) -> Result<Option<Narrowed>, StartError> {
    let Some(base) = &options.changed else {
        return Ok(Some((found, None)));
    };
    let root = &settings.project_root;
    let chosen = impact::choose(root, &settings.impact, base.as_deref(), &found)?;
    eprint!("{}", impact::tell(&chosen, found.len(), options.explain));
    if chosen.everything.is_some() {
        return Ok(Some((found, Some(chosen))));
    }
    let selected = found
        .into_iter()
        .filter(|unit| chosen.selected.contains_key(unit))
        .collect();
    Ok(Some((selected, Some(chosen))))
}

/// Keeps `chosen` in the plan and tells the event stream which files it left out.
fn not_selected(plan: &mut Plan, chosen: Option<Chosen>, events: &mut EventSink) {
    let Some(chosen) = chosen else {
        return;
    };
    if !chosen.left_out.is_empty() {
        events.emit(Event::NotSelected {
            files: chosen.left_out.clone(),
            reason: chosen.left_out_reason(),
            seconds_saved: saved_seconds(&plan.history, &chosen.left_out),
        });
    }
    plan.chosen = Some(chosen);
}

/// The time the runtime file says `left_out` takes.
fn saved_seconds(history: &files::History, left_out: &[String]) -> f64 {
    left_out.iter().filter_map(|file| history.get(file)).sum()
}

/// The files worker `replay.worker` ran in the run `--replay` replays, in its order.
fn replayed(
    options: &StartOptions,
    settings: &Settings,
    replay: &crate::settings::ReplayOptions,
) -> Result<Vec<String>, StartError> {
    let source = options
        .events
        .clone()
        .unwrap_or_else(|| RunRecord::path_for(&settings.failed_files));
    let record = RunRecord::read(&source)?;
    let files = record.replay(&replay.worker, replay.until.as_deref(), &source)?;
    if !options.quiet {
        eprintln!(
            "Replaying the {} worker {} ran in job {}, in its order, on this machine",
            crate::view::counted(files.len(), "file"),
            replay.worker,
            record.job_id
        );
    }
    Ok(files)
}

/// The files to run: those the command line names, the failed files of the last run, or
/// the configured ones (of every phase); `None` when there is nothing to re-run.
fn found(options: &StartOptions, settings: &Settings) -> Result<Option<Vec<String>>, StartError> {
    let root = &settings.project_root;
    let explicit = !options.files.is_empty();
    let patterns = if explicit {
        &options.files
    } else {
        &settings.files
    };
    let phased = !settings.phases.is_empty();
    let found = if options.failed {
        match rerun::select(&settings.failed_files, root)? {
            Rerun::Files { files, gone } if !files.is_empty() || !gone.is_empty() => {
                for file in gone.iter().filter(|_| !options.quiet) {
                    eprintln!("Skipping {file} from the failed files list: it no longer exists");
                }
                files
            }
            _ => {
                say_report(
                    options,
                    &format!(
                        "Nothing to re-run: the last run left no failed files in {}",
                        settings.failed_files.display()
                    ),
                );
                return Ok(None);
            }
        }
    } else if phased && !explicit {
        let mut all: Vec<String> = Vec::new();
        for phase in &settings.phases {
            for file in files::expand(root, &phase.files, false)? {
                if !all.contains(&file) {
                    all.push(file);
                }
            }
        }
        all
    } else {
        files::expand(root, patterns, explicit)?
    };
    if found.is_empty() && options.failed {
        say_report(
            options,
            "Nothing to re-run: none of the failed files exists any more",
        );
        return Ok(None);
    }
    if found.is_empty() {
        let described = if phased && !explicit {
            let globs: Vec<&str> = settings
                .phases
                .iter()
                .flat_map(|phase| phase.files.iter().map(String::as_str))
                .collect();
            format!("the globs of the phases ({})", globs.join(", "))
        } else if patterns.is_empty() {
            "the empty `files` list of the configuration".to_owned()
        } else {
            patterns.join(", ")
        };
        return Err(StartError::NoFiles(described));
    }
    Ok(Some(found))
}

/// Says `line` where the report goes: stdout, or stderr in a dry run (whose stdout is
/// the list of files, for scripts).
fn say_report(options: &StartOptions, line: &str) {
    if options.dry_run {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Each phase's files (all of them, in one group, for a run without phases), split and
/// ordered by the history; every file has its runner.
fn by_phase(
    options: &StartOptions,
    settings: &Settings,
    found: Vec<String>,
    history: &files::History,
) -> Result<Vec<Vec<String>>, StartError> {
    let phased = !settings.phases.is_empty();
    let mut groups: Vec<Vec<String>> = vec![Vec::new(); settings.phases.len().max(1)];
    let phase_globs = crate::phases::PhaseGlobs::new(&settings.phases);
    for file in found {
        let at = if phased {
            phase_globs
                .phase_of(&file)
                .ok_or_else(|| StartError::NoPhase(file.clone()))?
        } else {
            0
        };
        groups[at].push(file);
    }
    let groups: Vec<Vec<String>> = groups
        .into_iter()
        .map(|found| {
            // Only runners that run one test alone by its id can split a file (see the
            // ending).
            let found = if settings.runner.runs_single_tests() {
                files::split_slow_files(found, &split_history(history, options.local))
            } else {
                found
            };
            files::order(found, history, &settings.project_root)
        })
        .collect();
    // Every file has its runner, or nothing runs.
    settings.check_runners(groups.iter().flatten())?;
    Ok(groups)
}

/// The plan of a run of `queue`, in that order, started at `clock`, announced on the event
/// stream.
fn planned(
    options: StartOptions,
    settings: Settings,
    events: &mut EventSink,
    queue: Vec<String>,
    history: files::History,
    quarantine: Quarantine,
    clock: (Instant, chrono::DateTime<chrono::Utc>),
) -> (Plan, Vec<String>) {
    let (started, started_at) = clock;
    let root = settings.project_root.clone();
    let job_id = Uuid::new_v4();
    let project = project_name(&root);
    events.emit(Event::RunStarted {
        job_id,
        project: project.clone(),
        cluster: settings.cluster_id.clone(),
        files: queue.clone(),
    });
    tracing::info!(%job_id, files = queue.len(), "starting run");
    let plan = Plan {
        options,
        settings,
        history,
        quarantine,
        job_id,
        project,
        host: host_name(),
        started,
        started_at,
        chosen: None,
    };
    (plan, queue)
}

/// Ends a run whichever engine ran it: the runtime file, the failed files list,
/// `after_job_finishes`, the JUnit report, the report and the exit code.
pub(crate) async fn finish(
    plan: Plan,
    mut state: JobState,
    stop: Option<Stop>,
    events: &mut EventSink,
) -> i32 {
    let stopped_because = stop.as_ref().map(Stop::reason);
    // The progress lines are over: what the run does now is in the events and the report.
    let silent = crate::view::Progress::new(0, true);
    let mut core = Core::new(&mut state, events, &silent, plan.settings.max_crash_retries);
    if !core.state.phases().is_empty() {
        core.end_phases(stopped_because.as_deref());
    }
    write_history(&plan, core.state);
    write_impact(&plan, core.state);
    // A replay leaves the lists of the run it replays as they are.
    if plan.options.replay.is_none() {
        write_lists(&plan, core.state);
    }
    after_job_finishes(&plan, &mut core).await;
    write_junit(&plan, &state);
    print_report(&plan, &state, stopped_because);
    let code = errors::exit_code(errors::Ending::Run {
        passed: state.passed(),
        stop: stop.as_ref(),
    });
    events.emit(Event::RunFinished {
        exit_code: code,
        seconds: plan.started.elapsed().as_secs_f64(),
        totals: Totals::of(&state),
        error: None,
    });
    let html = plan
        .options
        .html
        .as_ref()
        .or(plan.settings.html_file.as_ref());
    if let Some(path) = html {
        if let Some(timeline) = events.take_timeline() {
            if let Err(error) = crate::html::write(path, &timeline) {
                eprintln!("gorgon: {error}");
            }
        }
    }
    code
}

/// The runtime file, with this run's timings and flaky tests.
fn write_history(plan: &Plan, state: &JobState) {
    let settings = &plan.settings;
    let Some(path) = &settings.runtime_file else {
        return;
    };
    // Only runners that run one test alone by its id (`file:LINE`, `file::name`) record
    // tests; for the others the runtime file stays Gorgon's plain map of seconds per file.
    let splits = settings.runner.runs_single_tests();
    let slots = if splits { state.slots() } else { 0 };
    let mut history = plan.history.clone();
    files::record_flaky(
        &mut history,
        state.retries().flaky().map(|r| r.unit.as_str()),
    );
    if let Err(error) = files::write_history(path, history, &state.timings(splits), slots) {
        eprintln!(
            "gorgon: cannot write the runtime file {}: {error}",
            path.display()
        );
    }
}

/// The impact map, with what a recording run's files ran.
fn write_impact(plan: &Plan, state: &mut JobState) {
    let settings = &plan.settings;
    if !settings.impact.record {
        return;
    }
    let path = &settings.impact.file;
    match impact::save(path, &settings.project_root, state.take_impact()) {
        Ok(0) => eprintln!(
            "gorgon: no file recorded what it ran (only the built-in rspec, minitest and pytest runners record); {} is unchanged",
            path.display()
        ),
        Ok(recorded) => tracing::info!(recorded, path = %path.display(), "wrote the impact map"),
        Err(error) => eprintln!("gorgon: {error}"),
    }
}

/// The failed files list and the run record, for `--failed` and `--replay`.
fn write_lists(plan: &Plan, state: &JobState) {
    let settings = &plan.settings;
    let listed = files::write_failed_files(&settings.failed_files, &state.not_passed(), |file| {
        state.phase_of(file)
    });
    if let Err(error) = listed {
        eprintln!(
            "gorgon: cannot write the failed files list {}: {error}",
            settings.failed_files.display()
        );
    }
    let mut record = state.run_record().clone();
    record.job_id = plan.job_id.to_string();
    let path = RunRecord::path_for(&settings.failed_files);
    if let Err(error) = record.write(&path) {
        eprintln!(
            "gorgon: cannot write the run record {}: {error}",
            path.display()
        );
    }
}

/// Runs `after_job_finishes`; its failure is a problem that fails the run.
async fn after_job_finishes(plan: &Plan, core: &mut Core<'_>) {
    let ran = run_callback(
        CallbackName::AfterJobFinishes,
        plan.settings.callbacks.after_job_finishes.as_deref(),
        &plan.base_command(),
    )
    .await;
    if let Err(failure) = ran {
        let problem = Problem {
            what: "after_job_finishes callback on the originator".into(),
            status: failure.status,
            output: failure.output,
            fails_run: true,
        };
        core.problem(Some(ProblemKind::CallbackFailed), problem);
    }
}

/// The JUnit report, when one is asked for.
fn write_junit(plan: &Plan, state: &JobState) {
    let Some(path) = plan
        .options
        .junit
        .as_ref()
        .or(plan.settings.junit_file.as_ref())
    else {
        return;
    };
    let run_info = crate::junit::RunInfo {
        project: &plan.project,
        job_id: plan.job_id,
        started: plan.started_at,
        seconds: plan.started.elapsed().as_secs_f64(),
        not_selected: plan
            .chosen
            .as_ref()
            .map(|chosen| (chosen.left_out.as_slice(), chosen.left_out_reason())),
    };
    if let Err(error) = crate::junit::write(path, &crate::junit::report(&run_info, state)) {
        eprintln!("gorgon: {error}");
    }
}

/// Prints the report: on stdout, or on stderr when stdout holds the event stream. A run
/// whose change reached no test file says so instead of the counts.
fn print_report(plan: &Plan, state: &JobState, stopped_because: Option<String>) {
    let ending = Ending {
        state,
        history: &plan.history,
        seconds: plan.started.elapsed().as_secs_f64(),
        stopped_because,
    };
    let chosen = plan.chosen.as_ref();
    let nothing = chosen.filter(|c| c.reaches_nothing()).map(|c| {
        format!(
            "Nothing to run: no change since {} reaches a test file\n",
            impact::short(&c.base)
        )
    });
    let left_out = left_out_line(plan).unwrap_or_default();
    let to_stderr = plan.options.events.as_deref() == Some(std::path::Path::new("-"));
    let (mut out, colour): (Box<dyn Write>, bool) = if to_stderr {
        let colour = view::colour_wanted(std::io::stderr().is_terminal());
        (Box::new(std::io::stderr().lock()), colour)
    } else {
        (Box::new(std::io::stdout().lock()), view::colour_enabled())
    };
    let _ = match &nothing {
        Some(line) => out.write_all(line.as_bytes()),
        None => view::print_report(&mut out, &ending, colour),
    };
    let _ = out.write_all(left_out.as_bytes());
}

/// The report's line on the files `--changed` left out and the time that saves, if any.
fn left_out_line(plan: &Plan) -> Option<String> {
    let chosen = plan.chosen.as_ref().filter(|c| !c.left_out.is_empty())?;
    Some(format!(
        "Not selected: {} (no change since {} reaches them; about {:.1} s saved)\n",
        view::counted(chosen.left_out.len(), "file"),
        impact::short(&chosen.base),
        saved_seconds(&plan.history, &chosen.left_out)
    ))
}

/// The project's name: the name of its folder.
pub(crate) fn project_name(root: &std::path::Path) -> String {
    root.canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(root)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".to_owned())
}

/// This machine's host name.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The history that decides which files to split: a `--local` run knows its own slot count,
/// which replaces the one recorded by the run that wrote the history (a distributed run only
/// learns its slots as listeners take the job, so it goes by the last run's).
fn split_history(
    history: &files::History,
    local_workers: Option<usize>,
) -> std::borrow::Cow<'_, files::History> {
    match local_workers {
        Some(workers) => {
            let mut history = history.clone();
            history.insert(files::SLOTS_KEY.to_owned(), workers.max(1) as f64);
            std::borrow::Cow::Owned(history)
        }
        None => std::borrow::Cow::Borrowed(history),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_run_splits_files_by_its_own_slot_count() {
        let mut history = files::History::new();
        history.insert(files::SLOTS_KEY.to_owned(), 4.0);
        history.insert("spec/a_spec.rb".to_owned(), 3.0);
        assert_eq!(split_history(&history, Some(1))[files::SLOTS_KEY], 1.0);
        assert_eq!(split_history(&history, None)[files::SLOTS_KEY], 4.0);
        assert_eq!(split_history(&history, Some(1))["spec/a_spec.rb"], 3.0);
    }
}
