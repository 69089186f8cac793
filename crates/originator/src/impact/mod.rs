//! Test impact: a recording run (`--record-impact`) keeps, per test file, the project's
//! code it ran (`map`); a selecting run (`--changed [BASE]`) runs only the files a change
//! since BASE can reach (`changes`, `select`) and reports the rest as not selected.
//! `docs/impact.md` has the rules.

pub mod changes;
pub mod map;
pub mod select;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use map::{ImpactMap, Recording};
pub use select::{Rules, Selection};

/// `job.impact`, resolved.
#[derive(Clone, Debug, Default)]
pub struct ImpactSettings {
    /// `job.impact.record`: every run records (as `--record-impact` does).
    pub record: bool,
    pub rules: Rules,
    /// `job.impact.file`, else beside the runtime file (`NAME.impact.json`), else
    /// `gorgon-impact.json` in the project.
    pub file: PathBuf,
}

impl ImpactSettings {
    /// Where the map is when `job.impact.file` does not say.
    pub fn default_file(project_root: &Path, runtime_file: Option<&Path>) -> PathBuf {
        match runtime_file {
            Some(runtime) => {
                let stem = runtime.file_stem().unwrap_or_default().to_string_lossy();
                runtime.with_file_name(format!("{stem}.impact.json"))
            }
            None => project_root.join("gorgon-impact.json"),
        }
    }
}

/// A selection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ImpactError {
    #[error(transparent)]
    Changes(#[from] changes::ChangesError),
    #[error(transparent)]
    Map(#[from] map::MapError),
}

/// What `--changed` decided, for the run's reports.
#[derive(Clone, Debug, Default)]
pub struct Chosen {
    /// The commit the change is measured from.
    pub base: String,
    /// Why everything runs, when it does.
    pub everything: Option<String>,
    /// Each selected unit and why.
    pub selected: BTreeMap<String, Vec<String>>,
    /// The units left out, in the run's order.
    pub left_out: Vec<String>,
    /// Why each change that reaches no test file does not.
    pub unreached: Vec<String>,
}

impl Chosen {
    /// The change reaches no test file: nothing runs, every file is left out.
    pub fn reaches_nothing(&self) -> bool {
        self.everything.is_none() && self.selected.is_empty()
    }

    /// The reason a left-out file gives in the reports.
    pub fn left_out_reason(&self) -> String {
        format!(
            "not selected: no change since {} reaches it",
            short(&self.base)
        )
    }
}

/// Chooses, among `units`, those a change of the project since `base` (default: the merge
/// base with the default branch) can break.
pub fn choose(
    root: &Path,
    settings: &ImpactSettings,
    base: Option<&str>,
    units: &[String],
) -> Result<Chosen, ImpactError> {
    let base = changes::resolve_base(root, base)?;
    let mut chosen = Chosen {
        base: base.clone(),
        ..Chosen::default()
    };
    let Some(map) = ImpactMap::read(&settings.file)? else {
        chosen.everything = Some(format!(
            "there is no impact map at {} (a run with --record-impact writes one)",
            settings.file.display()
        ));
        return Ok(chosen);
    };
    let found = changes::since(root, &base)?;
    match select::select(&map, &found, units, &settings.rules) {
        Selection::Everything(reason) => chosen.everything = Some(reason),
        Selection::Some {
            selected,
            left_out,
            unreached,
        } => {
            chosen.selected = selected;
            chosen.left_out = left_out;
            chosen.unreached = unreached;
        }
    }
    Ok(chosen)
}

/// What `--changed` tells before the run (with `--explain`, each file and its reasons).
pub fn tell(chosen: &Chosen, total: usize, explain: bool) -> String {
    let base = short(&chosen.base);
    if let Some(reason) = &chosen.everything {
        return format!("Running all {total} files: {reason} (changes since {base})\n");
    }
    let mut text = if chosen.selected.is_empty() {
        format!("Running none of {total} files: no change since {base} reaches one\n")
    } else {
        format!(
            "Running {} of {total} files: those the changes since {base} reach\n",
            chosen.selected.len()
        )
    };
    if explain {
        for (unit, reasons) in &chosen.selected {
            text.push_str(&format!("  {unit}: {}\n", reasons.join("; ")));
        }
        for why in &chosen.unreached {
            text.push_str(&format!("  no test file: {why}\n"));
        }
    }
    text
}

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Writes what the run recorded into the map (merged with what it held).
pub fn save(path: &Path, root: &Path, recording: Recording) -> Result<usize, ImpactError> {
    let recorded = recording.tests.len();
    if recorded == 0 {
        return Ok(0);
    }
    let mut map = ImpactMap::read(path)?.unwrap_or_default();
    map.update(recording, |file| root.join(file).is_file());
    map.write(path)?;
    Ok(recorded)
}
