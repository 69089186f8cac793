//! Phases (`phases` in `gorgon.json`, as Distribot's workflows have them): an ordered list of
//! steps, each a set of files (with its own runner, if it names one) or a command run once on
//! the originator. The run starts with the first phase; when every file of a phase has its
//! result, it goes on to the phase's `transitions_to` (by default the next one in the list,
//! unless the phase `is_final`) if none failed for good, else to its
//! `on_error_transition_to`, or stops. Every phase runs in the same job on the same listeners.
//! This module is the synchronous part: the settings, their check, which phase a file
//! belongs to, and the walk from phase to phase (`Phases`), with unit tests; the engines
//! drive it through the run core (`run_core::Core::advance_phases`).

use std::collections::HashMap;
use std::time::Instant;

use gorgon_protocol::{FileGlob, PhaseRunner, RunnerSettings};
use serde::Deserialize;

/// One phase as `gorgon.json` gives it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSettings {
    pub name: String,
    /// Globs of the phase's files, as the top-level `files`.
    #[serde(default)]
    pub files: Vec<String>,
    /// The runner of the phase's files, in place of `job.runner`.
    #[serde(default)]
    pub runner: Option<RunnerSettings>,
    #[serde(default)]
    pub transitions_to: Option<String>,
    #[serde(default)]
    pub on_error_transition_to: Option<String>,
    #[serde(default)]
    pub is_final: bool,
    /// A shell command run once on the originator, in the project root, instead of files.
    #[serde(default)]
    pub command: Option<String>,
}

/// What is wrong with a list of phases.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("phases[{0}].name must be a non-empty word without spaces")]
    BadName(usize),
    #[error("two phases are named \"{0}\"")]
    TwoNamed(String),
    #[error("phase \"{0}\" has neither files nor a command; give one")]
    NeitherFilesNorCommand(String),
    #[error("phase \"{0}\" has both files and a command; give one")]
    FilesAndCommand(String),
    #[error("phase \"{0}\" runs a command: it takes no runner")]
    CommandWithRunner(String),
    #[error("phase \"{0}\": the command is empty")]
    EmptyCommand(String),
    #[error("phase \"{phase}\": {glob} is not a glob: {source}")]
    BadGlob {
        phase: String,
        glob: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("phase \"{0}\" is final and has transitions_to; keep one")]
    FinalWithTransition(String),
    #[error("phase \"{0}\": {1} names the phase itself")]
    ToItself(String, &'static str),
    #[error("phase \"{phase}\": {key} names \"{target}\", which is not a phase (phases: {})", names.join(", "))]
    NoSuchPhase {
        phase: String,
        key: &'static str,
        target: String,
        names: Vec<String>,
    },
}

/// What is wrong with a list of phases, if anything.
pub fn check(phases: &[PhaseSettings]) -> Result<(), PhaseError> {
    for (at, phase) in phases.iter().enumerate() {
        let name = phase.name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(PhaseError::BadName(at));
        }
        let named = || name.to_owned();
        if phases[..at].iter().any(|other| other.name == phase.name) {
            return Err(PhaseError::TwoNamed(named()));
        }
        match (phase.files.is_empty(), &phase.command) {
            (true, None) => return Err(PhaseError::NeitherFilesNorCommand(named())),
            (false, Some(_)) => return Err(PhaseError::FilesAndCommand(named())),
            _ => {}
        }
        if phase.command.is_some() && phase.runner.is_some() {
            return Err(PhaseError::CommandWithRunner(named()));
        }
        if phase
            .command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(PhaseError::EmptyCommand(named()));
        }
        for glob in &phase.files {
            FileGlob::new(glob).map_err(|source| PhaseError::BadGlob {
                phase: named(),
                glob: glob.clone(),
                source,
            })?;
        }
        if phase.is_final && phase.transitions_to.is_some() {
            return Err(PhaseError::FinalWithTransition(named()));
        }
        check_transitions(phases, phase)?;
    }
    Ok(())
}

/// Whether the phases `phase` leads to are other phases of the list.
fn check_transitions(phases: &[PhaseSettings], phase: &PhaseSettings) -> Result<(), PhaseError> {
    let name = phase.name.trim();
    for (key, target) in [
        ("transitions_to", &phase.transitions_to),
        ("on_error_transition_to", &phase.on_error_transition_to),
    ] {
        let Some(target) = target else { continue };
        if target == &phase.name {
            return Err(PhaseError::ToItself(name.to_owned(), key));
        }
        if !phases.iter().any(|other| &other.name == target) {
            return Err(PhaseError::NoSuchPhase {
                phase: name.to_owned(),
                key,
                target: target.clone(),
                names: phases.iter().map(|p| p.name.clone()).collect(),
            });
        }
    }
    Ok(())
}

/// The phases' runners, for [`RunnerSettings::by_phase`]: empty when no phase names one.
pub fn runners(phases: &[PhaseSettings]) -> Vec<PhaseRunner> {
    if phases.iter().all(|phase| phase.runner.is_none()) {
        return Vec::new();
    }
    phases
        .iter()
        .filter(|phase| phase.command.is_none())
        .map(|phase| PhaseRunner {
            files: phase.files.clone(),
            runner: phase.runner.clone().map(Box::new),
        })
        .collect()
}

/// Which phase a file belongs to: the phases' globs, compiled once.
pub struct PhaseGlobs(Vec<Vec<FileGlob>>);

impl PhaseGlobs {
    /// The globs of `phases` (already checked by [`check`]; a broken one matches nothing).
    pub fn new(phases: &[PhaseSettings]) -> PhaseGlobs {
        PhaseGlobs(
            phases
                .iter()
                .map(|phase| {
                    let globs = phase.files.iter();
                    globs.filter_map(|glob| FileGlob::new(glob).ok()).collect()
                })
                .collect(),
        )
    }

    /// The index of the first phase whose globs match `unit`'s file.
    pub fn phase_of(&self, unit: &str) -> Option<usize> {
        self.0
            .iter()
            .position(|globs| globs.iter().any(|glob| glob.matches(unit)))
    }
}

fn file_of(unit: &str) -> &str {
    gorgon_protocol::job::unit_file(unit).unwrap_or(unit)
}

/// Where a phase stands.
#[derive(Clone, Debug, PartialEq)]
pub enum PhaseStatus {
    Waiting,
    Running,
    Passed,
    /// Some of its files failed for good, or its command failed: why.
    Failed(String),
    NotRun(NotRun),
}

/// Why a phase never ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotRun {
    pub reason: String,
    /// It was skipped because the run failed or stopped (its files count as not run), rather
    /// than because no transition led to it.
    pub fails_run: bool,
}

/// One phase of a run: its settings and units (files, or test ids of split files, in queue
/// order).
#[derive(Clone, Debug)]
pub struct Phase {
    pub settings: PhaseSettings,
    pub units: Vec<String>,
    pub status: PhaseStatus,
    started: Option<Instant>,
    pub seconds: f64,
}

impl Phase {
    pub fn name(&self) -> &str {
        &self.settings.name
    }
}

/// What the run does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Queue the units of phase `phase` (perhaps none: then the phase passes at once).
    Files { phase: usize, units: Vec<String> },
    /// Run the command of phase `phase` on the originator.
    Command { phase: usize, command: String },
    /// No phase is left.
    End,
}

/// The phases of a run and the walk through them; empty for a run without phases.
#[derive(Clone, Debug, Default)]
pub struct Phases {
    list: Vec<Phase>,
    /// file → the index of its phase.
    by_file: HashMap<String, usize>,
    current: Option<usize>,
    begun: bool,
}

impl Phases {
    /// The phases, each with its units.
    pub fn new(phases: Vec<(PhaseSettings, Vec<String>)>) -> Phases {
        let mut by_file = HashMap::new();
        for (at, (_, units)) in phases.iter().enumerate() {
            for unit in units {
                by_file.insert(file_of(unit).to_owned(), at);
            }
        }
        Phases {
            by_file,
            list: phases
                .into_iter()
                .map(|(settings, units)| Phase {
                    settings,
                    units,
                    status: PhaseStatus::Waiting,
                    started: None,
                    seconds: 0.0,
                })
                .collect(),
            current: None,
            begun: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[Phase] {
        &self.list
    }

    /// The phase that runs now.
    pub fn current(&self) -> Option<&Phase> {
        self.current.map(|at| &self.list[at])
    }

    /// The most units any phase has (how many workers a local run may use).
    pub fn largest(&self) -> usize {
        self.list.iter().map(|p| p.units.len()).max().unwrap_or(0)
    }

    /// The phase `unit` belongs to.
    pub fn phase_of(&self, unit: &str) -> Option<&Phase> {
        self.by_file.get(file_of(unit)).map(|at| &self.list[*at])
    }

    /// The first step: the first phase starts. Later calls end the current phase
    /// (`failure`: why it failed, if it did) and start the one its transitions lead to.
    pub fn advance(&mut self, failure: Option<String>) -> Step {
        let next = if !self.begun {
            self.begun = true;
            Some(0).filter(|_| !self.list.is_empty())
        } else {
            let Some(at) = self.current.take() else {
                return Step::End;
            };
            let phase = &mut self.list[at];
            phase.seconds = phase.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            let settings = phase.settings.clone();
            let next = match &failure {
                None if settings.is_final => None,
                None => match &settings.transitions_to {
                    Some(name) => self.index_of(name),
                    None => Some(at + 1).filter(|next| *next < self.list.len()),
                },
                Some(_) => settings
                    .on_error_transition_to
                    .as_ref()
                    .and_then(|name| self.index_of(name)),
            };
            self.list[at].status = match failure {
                None => PhaseStatus::Passed,
                Some(why) => PhaseStatus::Failed(why),
            };
            // A phase runs once: a transition back to one that ran ends the walk.
            next.filter(|next| self.list[*next].status == PhaseStatus::Waiting)
        };
        let Some(at) = next else {
            self.end(None);
            return Step::End;
        };
        self.current = Some(at);
        let phase = &mut self.list[at];
        phase.status = PhaseStatus::Running;
        phase.started = Some(Instant::now());
        match &phase.settings.command {
            Some(command) => Step::Command {
                phase: at,
                command: command.clone(),
            },
            None => Step::Files {
                phase: at,
                units: phase.units.clone(),
            },
        }
    }

    /// The run stopped early (`reason`), or the walk ended: every phase that has not run
    /// is marked as not run, the running one too when the run stopped.
    pub fn end(&mut self, stopped: Option<&str>) {
        let failed = self
            .list
            .iter()
            .find(|p| matches!(p.status, PhaseStatus::Failed(_)))
            .map(|p| format!("phase {} failed", p.name()));
        let (reason, fails_run) = match (stopped, failed) {
            (Some(reason), _) => (format!("the run stopped: {reason}"), true),
            (None, Some(failed)) => (failed, true),
            (None, None) => ("no phase of the run led to it".to_owned(), false),
        };
        if stopped.is_some() {
            if let Some(at) = self.current.take() {
                self.list[at].status = PhaseStatus::Failed(reason.clone());
            }
        }
        for phase in &mut self.list {
            if phase.status == PhaseStatus::Waiting {
                phase.status = PhaseStatus::NotRun(NotRun {
                    reason: reason.clone(),
                    fails_run,
                });
            }
        }
    }

    /// The units of phases that did not run because the run failed or stopped: they count
    /// as not run.
    pub fn not_run_units(&self) -> impl Iterator<Item = &String> {
        self.list
            .iter()
            .filter(|p| matches!(&p.status, PhaseStatus::NotRun(n) if n.fails_run))
            .flat_map(|p| p.units.iter())
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|p| p.settings.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(name: &str, globs: &[&str]) -> PhaseSettings {
        PhaseSettings {
            name: name.into(),
            files: globs.iter().map(|g| g.to_string()).collect(),
            ..PhaseSettings::default()
        }
    }

    fn command(name: &str, command: &str) -> PhaseSettings {
        PhaseSettings {
            name: name.into(),
            command: Some(command.into()),
            ..PhaseSettings::default()
        }
    }

    /// unit → integration → report, with an error phase that unit and integration lead to.
    fn workflow() -> Phases {
        let mut unit = files("unit", &["test/unit/*.rb"]);
        unit.on_error_transition_to = Some("error".into());
        let mut integration = files("integration", &["test/integration/*.rb"]);
        integration.on_error_transition_to = Some("error".into());
        let mut report = command("report", "echo done");
        report.is_final = true;
        let error = command("error", "collect-logs");
        Phases::new(vec![
            (
                unit,
                vec!["test/unit/a.rb".into(), "test/unit/b.rb:3".into()],
            ),
            (integration, vec!["test/integration/c.rb".into()]),
            (report, vec![]),
            (error, vec![]),
        ])
    }

    fn status(phases: &Phases, name: &str) -> PhaseStatus {
        phases
            .list()
            .iter()
            .find(|p| p.name() == name)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn when_all_pass_every_phase_on_the_path_runs_in_order() {
        let mut phases = workflow();
        assert_eq!(
            phases.advance(None),
            Step::Files {
                phase: 0,
                units: vec!["test/unit/a.rb".into(), "test/unit/b.rb:3".into()]
            }
        );
        assert_eq!(phases.current().unwrap().name(), "unit");
        assert_eq!(
            phases.advance(None),
            Step::Files {
                phase: 1,
                units: vec!["test/integration/c.rb".into()]
            }
        );
        assert_eq!(
            phases.advance(None),
            Step::Command {
                phase: 2,
                command: "echo done".into()
            }
        );
        assert_eq!(phases.advance(None), Step::End);
        assert_eq!(status(&phases, "report"), PhaseStatus::Passed);
        // The error phase was not on the path: not run, and that fails nothing.
        assert!(matches!(
            status(&phases, "error"),
            PhaseStatus::NotRun(NotRun {
                fails_run: false,
                ..
            })
        ));
        assert_eq!(phases.not_run_units().count(), 0);
        assert_eq!(phases.advance(None), Step::End);
    }

    #[test]
    fn a_failure_leads_to_the_error_phase_and_the_rest_is_not_run() {
        let mut phases = workflow();
        phases.advance(None);
        assert_eq!(
            phases.advance(Some("1 file failed".into())),
            Step::Command {
                phase: 3,
                command: "collect-logs".into()
            }
        );
        assert_eq!(phases.advance(None), Step::End);
        assert_eq!(
            status(&phases, "unit"),
            PhaseStatus::Failed("1 file failed".into())
        );
        assert_eq!(status(&phases, "error"), PhaseStatus::Passed);
        let not_run = NotRun {
            reason: "phase unit failed".into(),
            fails_run: true,
        };
        assert_eq!(
            status(&phases, "integration"),
            PhaseStatus::NotRun(not_run.clone())
        );
        assert_eq!(status(&phases, "report"), PhaseStatus::NotRun(not_run));
        let units: Vec<&String> = phases.not_run_units().collect();
        assert_eq!(units, ["test/integration/c.rb"]);
    }

    #[test]
    fn without_an_error_phase_a_failure_stops_and_a_stop_marks_what_is_left() {
        let mut phases = Phases::new(vec![
            (files("a", &["a/*"]), vec!["a/1".into()]),
            (files("b", &["b/*"]), vec!["b/1".into()]),
        ]);
        phases.advance(None);
        assert_eq!(phases.advance(Some("a/1 failed".into())), Step::End);
        assert!(matches!(
            status(&phases, "b"),
            PhaseStatus::NotRun(NotRun {
                fails_run: true,
                ..
            })
        ));

        let mut stopped = Phases::new(vec![
            (files("a", &["a/*"]), vec!["a/1".into()]),
            (files("b", &["b/*"]), vec!["b/1".into()]),
        ]);
        stopped.advance(None);
        stopped.end(Some("interrupted (Ctrl-C)"));
        assert_eq!(
            status(&stopped, "a"),
            PhaseStatus::Failed("the run stopped: interrupted (Ctrl-C)".into())
        );
        assert_eq!(stopped.not_run_units().collect::<Vec<_>>(), ["b/1"]);
        assert_eq!(stopped.advance(None), Step::End);
    }

    #[test]
    fn a_transition_back_to_a_phase_that_ran_ends_the_walk() {
        let mut a = files("a", &["a/*"]);
        a.transitions_to = Some("b".into());
        let mut b = files("b", &["b/*"]);
        b.transitions_to = Some("a".into());
        let mut phases = Phases::new(vec![(a, vec![]), (b, vec![])]);
        assert!(matches!(phases.advance(None), Step::Files { phase: 0, .. }));
        assert!(matches!(phases.advance(None), Step::Files { phase: 1, .. }));
        assert_eq!(phases.advance(None), Step::End);
    }

    #[test]
    fn a_file_belongs_to_the_first_phase_whose_globs_match_it() {
        let list = vec![
            files("smoke", &["spec/smoke/**/*_spec.rb"]),
            files("all", &["spec/**/*_spec.rb"]),
        ];
        let globs = PhaseGlobs::new(&list);
        assert_eq!(globs.phase_of("spec/smoke/a_spec.rb"), Some(0));
        assert_eq!(globs.phase_of("spec/smoke/a_spec.rb:4"), Some(0));
        assert_eq!(globs.phase_of("spec/b_spec.rb"), Some(1));
        assert_eq!(globs.phase_of("test/c_test.rb"), None);
    }

    #[test]
    fn broken_phases_are_named() {
        let problem = |list: Vec<PhaseSettings>| check(&list).unwrap_err().to_string();
        assert!(problem(vec![files("a", &["x"]), files("a", &["y"])])
            .contains("two phases are named \"a\""));
        assert!(problem(vec![PhaseSettings {
            name: "a".into(),
            ..PhaseSettings::default()
        }])
        .contains("neither files nor a command"));
        let mut both = files("a", &["x"]);
        both.command = Some("true".into());
        assert!(problem(vec![both]).contains("both files and a command"));
        let mut dangling = files("a", &["x"]);
        dangling.on_error_transition_to = Some("cleanup".into());
        assert!(
            problem(vec![dangling]).contains("names \"cleanup\", which is not a phase (phases: a)")
        );
        let mut contradiction = files("a", &["x"]);
        contradiction.is_final = true;
        contradiction.transitions_to = Some("b".into());
        assert!(problem(vec![contradiction, files("b", &["y"])])
            .contains("is final and has transitions_to"));
        assert!(problem(vec![files("a b", &["x"])]).contains("without spaces"));
        assert!(check(&[files("a", &["x"]), command("b", "true")]).is_ok());
    }
}
