//! Which test files a run queues, and in what order: the configured globs (or the files named
//! on the command line), slowest first by the recorded history, and the runtime file itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A file pattern that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("the file pattern {pattern:?} is not a valid glob: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("{0} is not a file in the project")]
    Missing(String),
    /// A file the configuration names by its path (no wildcard) that is not there.
    #[error("{0} is listed in the configuration but is not a file in the project; fix the name or remove it")]
    Listed(String),
    /// A file a pattern matches whose path is not UTF-8, written with U+FFFD for the bytes
    /// that are not.
    #[error("{0} has a path that is not UTF-8 (shown with \u{fffd} for the bytes that are not), so it cannot be named to a worker; rename it, or narrow the file patterns that match it")]
    NotUtf8(String),
    #[error("{0} is outside the project root {1}")]
    Outside(String, PathBuf),
    #[error("cannot read the runtime file {path}: {reason}")]
    Runtime { path: PathBuf, reason: String },
}

/// Expands `patterns` relative to `root` into file paths relative to `root`, in pattern
/// order, each file once. With `explicit` (files named on the command line) a pattern that
/// matches nothing is an error; from the configuration, a path without wildcards that is
/// not a file is one (a glob that matches nothing is not: another may match, and a run with
/// no file at all is refused by its caller). A file a pattern matches whose path is not
/// UTF-8 is an error naming it, not a file left out.
pub fn expand(root: &Path, patterns: &[String], explicit: bool) -> Result<Vec<String>, FilesError> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for pattern in patterns {
        let relative = relative_pattern(root, pattern)?;
        let full = root.join(&relative);
        let matches = glob::glob(&full.to_string_lossy()).map_err(|e| FilesError::BadPattern {
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
        let mut found = false;
        for path in matches.flatten() {
            if !path.is_file() {
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            found = true;
            let rel = rel
                .to_str()
                .ok_or_else(|| FilesError::NotUtf8(rel.to_string_lossy().into_owned()))?
                .to_owned();
            if seen.insert(rel.clone()) {
                files.push(rel);
            }
        }
        let literal = !relative.contains(['*', '?', '[']);
        match (found, explicit, literal) {
            (false, true, _) => return Err(FilesError::Missing(pattern.clone())),
            (false, false, true) => return Err(FilesError::Listed(pattern.clone())),
            (_, _, false) => {
                if let Some(lossy) = not_utf8_match(root, &relative) {
                    return Err(FilesError::NotUtf8(lossy));
                }
            }
            _ => {}
        }
    }
    Ok(files)
}

/// The first file `pattern` (relative to `root`, with wildcards) would match whose path is
/// not UTF-8, lossily written: the glob crate passes over such names without a word, so
/// they are looked for apart, in the folders the pattern reaches (every level below its
/// literal part with `**`, else as many levels as it has parts).
fn not_utf8_match(root: &Path, pattern: &str) -> Option<String> {
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let compiled = glob::Pattern::new(pattern).ok()?;
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts
        .iter()
        .take_while(|part| !part.contains(['*', '?', '[']))
        .count();
    let depth = match pattern.contains("**") {
        true => usize::MAX,
        false => parts.len() - literal,
    };
    let mut folders = vec![(root.join(parts[..literal].join("/")), 1)];
    while let Some((folder, level)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if level < depth && entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                folders.push((path.clone(), level + 1));
            }
            let Ok(relative) = path.strip_prefix(root) else {
                continue;
            };
            if relative.to_str().is_some() {
                continue;
            }
            let lossy = relative.to_string_lossy();
            if compiled.matches_with(&lossy, options) && path.is_file() {
                return Some(lossy.into_owned());
            }
        }
    }
    None
}

/// Turns a command-line path (absolute, or relative to the current directory when it exists
/// there) into a pattern relative to the project root.
fn relative_pattern(root: &Path, pattern: &str) -> Result<String, FilesError> {
    let path = Path::new(pattern);
    if path.is_absolute() {
        return path
            .strip_prefix(root)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| FilesError::Outside(pattern.to_owned(), root.to_owned()));
    }
    let escapes = path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        return Err(FilesError::Outside(pattern.to_owned(), root.to_owned()));
    }
    Ok(pattern.to_owned())
}

/// Seconds per file from earlier runs.
pub type History = BTreeMap<String, f64>;

/// The mean time of a file of `queued` in `history`, when the history knows at least half
/// of them (a far host's first guess of its files' time, `JobDefinition::expected_file_seconds`).
/// The mean rather than the median: a few slow files raise it, and a host that expects
/// longer files holds fewer ahead.
pub fn expected_file_seconds(queued: &[String], history: &History) -> Option<f64> {
    let known: Vec<f64> = queued
        .iter()
        .filter_map(|unit| history.get(unit).copied())
        .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        .collect();
    if known.is_empty() || known.len() * 2 < queued.len() {
        return None;
    }
    Some(known.iter().sum::<f64>() / known.len() as f64)
}

/// Reads the runtime file; a missing file is an empty history.
pub fn read_history(path: &Path) -> Result<History, FilesError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| FilesError::Runtime {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::new()),
        Err(e) => Err(FilesError::Runtime {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The runtime file's entry for the number of worker slots of the run that wrote it. It is
/// not a file; with the per-test entries (`file:LINE`, `file::name`) it tells which files
/// are long enough to split.
pub const SLOTS_KEY: &str = "gorgon:slots";

/// A file's tests are recorded in the history (by their ids, `file:LINE` or `file::name`)
/// only when the file took at least this long, so that the runtime file stays small.
pub const UNIT_RECORD_SECONDS: f64 = 1.0;

/// The recorded tests of `file` (`file:LINE` or `file::name` keys) and their seconds.
fn recorded_units(history: &History, file: &str) -> Vec<(String, f64)> {
    let prefix = format!("{file}:");
    history
        .range(prefix.clone()..)
        .take_while(|(key, _)| key.starts_with(&prefix))
        .filter(|(key, _)| unit_file(key) == Some(file))
        .map(|(key, seconds)| (key.clone(), *seconds))
        .collect()
}

/// A file is split only when splitting could shorten its part of the run by at least this
/// share of its time: its tests cannot end sooner than its slowest one, and each session a
/// split file's tests land in pays again for what they share (a test class's fixtures).
const SPLIT_MIN_GAIN: f64 = 0.25;

/// A file whose tests, run split, took together more than this many times what the whole
/// file took is not split again ([`KEEP_WHOLE_PREFIX`]): its tests share setup that each
/// part paid again.
const SPLIT_COST_LIMIT: f64 = 1.5;

/// History entries `gorgon:whole:FILE`: the seconds of the file's last run in one piece,
/// kept for the files whose tests are recorded, to judge a split run of it against.
pub const WHOLE_PREFIX: &str = "gorgon:whole:";

/// History entries `gorgon:flaky:UNIT` (a test's id, or a file): how many runs found it
/// flaky, so that the report can say a flaky test was flaky before.
pub const FLAKY_PREFIX: &str = "gorgon:flaky:";

/// Counts one more flaky run for each of `units` in `history`.
pub fn record_flaky<'a>(history: &mut History, units: impl IntoIterator<Item = &'a str>) {
    for unit in units {
        *history.entry(format!("{FLAKY_PREFIX}{unit}")).or_default() += 1.0;
    }
}

/// How many earlier runs found `unit` flaky.
pub fn flaky_before(history: &History, unit: &str) -> u32 {
    history
        .get(&format!("{FLAKY_PREFIX}{unit}"))
        .map_or(0, |count| *count as u32)
}

/// History entries `gorgon:keep-whole:FILE`: the file is never split again; the value is how
/// many times its whole time its split run cost. Removing the entry lets it be split again.
pub const KEEP_WHOLE_PREFIX: &str = "gorgon:keep-whole:";

/// Replaces each file that would bound the run by its recorded tests, so that they spread
/// over the slots like files (RSpec runs one example as `file:LINE`, pytest one test by its
/// node id `file::name`). A file is split when its recorded time exceeds the run's lower
/// bound without it, max(the longest other file, total / slots), with the slot count of the
/// last run, so that the threshold follows the history and the cluster instead of a
/// setting; and only when that gains enough ([`SPLIT_MIN_GAIN`]: the file's time against
/// the larger of that bound and its slowest test), and its last split run did not cost more
/// than [`SPLIT_COST_LIMIT`] times its whole run.
pub fn split_slow_files(files: Vec<String>, history: &History) -> Vec<String> {
    let Some(slots) = history.get(SLOTS_KEY).filter(|s| **s >= 1.0) else {
        return files;
    };
    let mut known: Vec<f64> = files
        .iter()
        .filter_map(|f| history.get(f).copied())
        .collect();
    known.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = known.iter().sum();
    let (longest, second) = (
        known.first().copied().unwrap_or(0.0),
        known.get(1).copied().unwrap_or(0.0),
    );
    let mut split = Vec::with_capacity(files.len());
    for file in files {
        let seconds = history.get(&file).copied().unwrap_or(0.0);
        let longest_other = if seconds >= longest { second } else { longest };
        let bound = longest_other.max(total / slots);
        let units = recorded_units(history, &file);
        let slowest = units.iter().map(|(_, s)| *s).fold(0.0, f64::max);
        let gain = seconds - bound.max(slowest);
        let kept_whole = history.contains_key(&format!("{KEEP_WHOLE_PREFIX}{file}"));
        if seconds > bound && units.len() >= 2 && !kept_whole && gain >= SPLIT_MIN_GAIN * seconds {
            tracing::info!(
                file,
                seconds,
                bound,
                slowest,
                tests = units.len(),
                "splitting a slow file into its tests"
            );
            split.extend(units.into_iter().map(|(unit, _)| unit));
        } else {
            if seconds > bound && units.len() >= 2 {
                tracing::info!(
                    file,
                    seconds,
                    bound,
                    slowest,
                    kept_whole,
                    "not splitting a slow file: too little to gain"
                );
            }
            split.push(file);
        }
    }
    split
}

pub use gorgon_protocol::job::unit_file;

/// Orders files slowest first. Files with a recorded time are sorted by it; files without
/// one are estimated from their size relative to the recorded files (a larger file usually
/// holds more tests), and with no history at all they go largest first. Ties keep the glob
/// order, so the queue is deterministic.
pub fn order(files: Vec<String>, history: &History, root: &Path) -> Vec<String> {
    let sizes: HashMap<String, u64> = files
        .iter()
        .map(|f| {
            let size = std::fs::metadata(root.join(unit_file(f).unwrap_or(f)))
                .map(|m| m.len())
                .unwrap_or(0);
            (f.clone(), size)
        })
        .collect();
    // Seconds per byte over the files that have both, to put unknown files among known ones.
    let (known_seconds, known_bytes) = files
        .iter()
        .filter_map(|f| history.get(f).map(|s| (*s, sizes[f])))
        .fold((0.0, 0u64), |(s, b), (fs, fb)| (s + fs, b + fb));
    let seconds_per_byte = if known_bytes > 0 {
        known_seconds / known_bytes as f64
    } else {
        // No history: only the relative order matters.
        1.0
    };
    let estimates: Vec<f64> = files
        .iter()
        .map(|f| {
            history
                .get(f)
                .copied()
                .unwrap_or_else(|| sizes[f] as f64 * seconds_per_byte)
        })
        .collect();
    // The tests of a split file stay together, slowest first, where their slowest one would
    // go: interleaved with other files, each would pay again in its session for what the
    // file's tests share there (Active Record loads a test class's fixtures once for all its
    // tests in a row; a test of another class in between can make the next one load them
    // again).
    let group_of = |f: &str| unit_file(f).unwrap_or(f).to_owned();
    let mut groups: HashMap<String, (f64, usize)> = HashMap::new();
    for (index, (f, estimate)) in files.iter().zip(&estimates).enumerate() {
        let group = groups.entry(group_of(f)).or_insert((*estimate, index));
        group.0 = group.0.max(*estimate);
    }
    let mut keyed: Vec<(f64, usize, f64, usize, String)> = files
        .into_iter()
        .zip(estimates)
        .enumerate()
        .map(|(index, (f, estimate))| {
            let (group_estimate, group_index) = groups[&group_of(&f)];
            (group_estimate, group_index, estimate, index, f)
        })
        .collect();
    keyed.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(b.2.total_cmp(&a.2))
            .then(a.3.cmp(&b.3))
    });
    keyed.into_iter().map(|(.., f)| f).collect()
}

/// Merges this run's timings into the history and writes it, slowest first, creating the
/// parent folders. Files that did not run this time keep their old timings. `run` holds
/// files and tests (`file:LINE`, `file::name`): a file that ran whole comes with its tests'
/// times and keeps its own, recorded also as [`WHOLE_PREFIX`]; a file that ran split into
/// its tests gets their sum, and is kept whole from then on ([`KEEP_WHOLE_PREFIX`]) when that
/// sum exceeds [`SPLIT_COST_LIMIT`] times its last whole run. `slots` is the run's worker
/// slot count ([`SLOTS_KEY`]).
pub fn write_history(
    path: &Path,
    mut history: History,
    run: &[(String, f64)],
    slots: u32,
) -> std::io::Result<()> {
    let round = |seconds: f64| (seconds * 1000.0).round() / 1000.0;
    let whole: HashSet<&str> = run
        .iter()
        .map(|(file, _)| file.as_str())
        .filter(|file| unit_file(file).is_none())
        .collect();
    let mut split_files: BTreeMap<String, f64> = BTreeMap::new();
    let mut with_tests: BTreeMap<&str, f64> = BTreeMap::new();
    for (file, seconds) in run {
        history.insert(file.clone(), round(*seconds));
        match unit_file(file) {
            Some(owner) if whole.contains(owner) => {
                with_tests.insert(owner, 0.0);
            }
            Some(owner) => *split_files.entry(owner.to_owned()).or_default() += seconds,
            None => {}
        }
    }
    for (file, _) in with_tests {
        let seconds = history[file];
        history.insert(format!("{WHOLE_PREFIX}{file}"), seconds);
    }
    for (file, seconds) in split_files {
        let whole_seconds = history.get(&format!("{WHOLE_PREFIX}{file}")).copied();
        if let Some(whole_seconds) = whole_seconds.filter(|w| *w > 0.0) {
            let cost = seconds / whole_seconds;
            if cost > SPLIT_COST_LIMIT {
                history.insert(
                    format!("{KEEP_WHOLE_PREFIX}{file}"),
                    (cost * 100.0).round() / 100.0,
                );
            }
        }
        history.insert(file, round(seconds));
    }
    if slots > 0 {
        history.insert(SLOTS_KEY.to_owned(), f64::from(slots));
    }
    let mut entries: Vec<(&String, &f64)> = history.iter().collect();
    entries.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    // Written by hand because a JSON map would sort the files by name.
    let lines: Vec<String> = entries
        .iter()
        .map(|(file, seconds)| {
            format!(
                "  {}: {}",
                serde_json::to_string(file).expect("a string serializes"),
                serde_json::to_string(seconds).expect("a number serializes")
            )
        })
        .collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = if lines.is_empty() {
        "{}\n".to_owned()
    } else {
        format!("{{\n{}\n}}\n", lines.join(",\n"))
    };
    write_atomically(path, &text)
}

/// Writes the JSON array of files that did not pass.
pub fn write_failed_files<'a>(
    path: &Path,
    files: &[String],
    phase_of: impl Fn(&str) -> Option<&'a str>,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Gorgon's plain list of names, or each file with its phase in a run with phases.
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|file| match phase_of(file) {
            Some(phase) => serde_json::json!({"file": file, "phase": phase}),
            None => serde_json::Value::String(file.clone()),
        })
        .collect();
    write_atomically(path, &(serde_json::to_string(&entries)? + "\n"))
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp-gorgon");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x".repeat(*size)).unwrap();
        }
        dir
    }

    #[test]
    fn the_expected_file_time_is_the_mean_of_a_history_that_knows_most_files() {
        let queued: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let history = History::from([("a".into(), 0.1), ("b".into(), 0.3)]);
        assert_eq!(expected_file_seconds(&queued, &history), Some(0.2));
        let history = History::from([("a".into(), 0.1), ("x".into(), 0.3)]);
        assert_eq!(
            expected_file_seconds(&queued, &history),
            None,
            "one of four"
        );
        assert_eq!(expected_file_seconds(&queued, &History::new()), None);
        assert_eq!(expected_file_seconds(&[], &History::new()), None);
    }

    #[test]
    fn globs_expand_in_pattern_order_without_duplicates() {
        let dir = project(&[
            ("t/a_test.sh", 1),
            ("t/b_test.sh", 1),
            ("u/c_test.sh", 1),
            ("t/x.txt", 1),
        ]);
        let files = expand(
            dir.path(),
            &["u/*_test.sh".into(), "**/*_test.sh".into()],
            false,
        )
        .unwrap();
        assert_eq!(files, ["u/c_test.sh", "t/a_test.sh", "t/b_test.sh"]);
        assert!(expand(dir.path(), &["nothing/*".into()], false)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn explicit_files_must_exist_inside_the_project() {
        let dir = project(&[("t/a_test.sh", 1)]);
        assert_eq!(
            expand(dir.path(), &["t/a_test.sh".into()], true).unwrap(),
            ["t/a_test.sh"]
        );
        let absolute = dir.path().join("t/a_test.sh").display().to_string();
        assert_eq!(
            expand(dir.path(), &[absolute], true).unwrap(),
            ["t/a_test.sh"]
        );
        assert!(matches!(
            expand(dir.path(), &["t/missing.sh".into()], true),
            Err(FilesError::Missing(_))
        ));
        assert!(matches!(
            expand(dir.path(), &["../etc/passwd".into()], true),
            Err(FilesError::Outside(..))
        ));
    }

    #[test]
    fn a_listed_path_that_is_not_a_file_is_an_error_and_an_empty_glob_is_not() {
        let dir = project(&[("t/a_test.sh", 1)]);
        let listed = |patterns: &[&str]| {
            let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            expand(dir.path(), &patterns, false)
        };
        assert_eq!(listed(&["t/a_test.sh"]).unwrap(), ["t/a_test.sh"]);
        assert_eq!(
            listed(&["t/*_test.sh", "spec/*_spec.rb"]).unwrap(),
            ["t/a_test.sh"]
        );
        for missing in ["t/gone_test.sh", "t"] {
            let error = listed(&["t/*_test.sh", missing]).unwrap_err();
            assert!(matches!(&error, FilesError::Listed(name) if name == missing));
            assert!(error.to_string().starts_with(&format!(
                "{missing} is listed in the configuration but is not a file"
            )));
        }
    }

    #[test]
    fn a_matched_file_whose_name_is_not_utf8_is_named_not_dropped() {
        use std::os::unix::ffi::OsStrExt;
        let dir = project(&[("t/a_test.sh", 1), ("u/deep/b_test.sh", 1)]);
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9_test.sh");
        std::fs::write(dir.path().join("t").join(odd), "exit 0").unwrap();
        std::fs::create_dir(dir.path().join("u").join(odd)).unwrap();
        std::fs::write(dir.path().join("u").join(odd).join("c_test.sh"), "x").unwrap();
        let expanded = |pattern: &str| expand(dir.path(), &[pattern.to_owned()], false);
        for pattern in ["t/*_test.sh", "t/caf?_test.sh"] {
            let error = expanded(pattern).unwrap_err();
            assert!(
                matches!(&error, FilesError::NotUtf8(name) if name == "t/caf\u{fffd}_test.sh"),
                "{pattern}: {error}"
            );
        }
        let error = expanded("**/*_test.sh").unwrap_err();
        assert!(
            matches!(&error, FilesError::NotUtf8(name) if name.contains("caf\u{fffd}_test.sh")),
            "{error}"
        );
        // A folder whose name is not UTF-8 hides the files below it from the glob too.
        let error = expanded("u/*/c_test.sh").unwrap_err();
        assert!(
            matches!(&error, FilesError::NotUtf8(name) if name == "u/caf\u{fffd}_test.sh/c_test.sh"),
            "{error}"
        );
        // Patterns that do not reach it are not refused.
        assert_eq!(expanded("u/*/b_test.sh").unwrap(), ["u/deep/b_test.sh"]);
        assert_eq!(expanded("t/a_*.sh").unwrap(), ["t/a_test.sh"]);
    }

    #[test]
    fn history_orders_slowest_first_and_estimates_the_rest_by_size() {
        let dir = project(&[("a", 10), ("b", 10), ("c", 1000), ("d", 10)]);
        let files: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let history: History = [("a".to_string(), 1.0), ("b".to_string(), 3.0)].into();
        // 20 bytes took 4 s, so c (1000 bytes) is estimated at 200 s, d at 2 s.
        assert_eq!(
            order(files.clone(), &history, dir.path()),
            ["c", "b", "d", "a"]
        );
        // Without history the largest goes first, ties in glob order.
        assert_eq!(
            order(files, &History::new(), dir.path()),
            ["c", "a", "b", "d"]
        );
    }

    #[test]
    fn the_tests_of_a_split_file_stay_together_slowest_first() {
        let root = project(&[("a_test.rb", 10), ("b_test.rb", 10), ("c_test.rb", 10)]);
        let history: History = [
            ("a_test.rb::A#test_1", 5.0),
            ("a_test.rb::A#test_2", 0.1),
            ("a_test.rb::A#test_3", 3.0),
            ("b_test.rb", 4.0),
            ("c_test.rb", 0.2),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let queued = [
            "c_test.rb",
            "a_test.rb::A#test_1",
            "a_test.rb::A#test_2",
            "a_test.rb::A#test_3",
            "b_test.rb",
        ];
        let ordered = order(
            queued.iter().map(|f| f.to_string()).collect(),
            &history,
            root.path(),
        );
        assert_eq!(
            ordered,
            [
                "a_test.rb::A#test_1",
                "a_test.rb::A#test_3",
                "a_test.rb::A#test_2",
                "b_test.rb",
                "c_test.rb"
            ]
        );
    }

    #[test]
    fn a_file_longer_than_the_rest_of_the_run_is_split_into_its_tests() {
        let mut history: History = [
            ("slow.rb".to_string(), 30.0),
            ("slow.rb:3".to_string(), 10.0),
            ("slow.rb:7".to_string(), 10.0),
            ("slow.rb:11".to_string(), 10.0),
            ("slowish.rb".to_string(), 2.0),
            ("slowish.rb:1".to_string(), 1.0),
            ("slowish.rb:2".to_string(), 1.0),
        ]
        .into();
        let files: Vec<String> = ["fast.rb", "slow.rb", "slowish.rb"]
            .map(String::from)
            .to_vec();
        // Without the last run's slots nothing is split.
        assert_eq!(split_slow_files(files.clone(), &history), files);
        // On 8 slots the bound is max(2 s, 32 s / 8) = 4 s: only slow.rb exceeds it.
        history.insert(SLOTS_KEY.into(), 8.0);
        assert_eq!(
            split_slow_files(files.clone(), &history),
            [
                "fast.rb",
                "slow.rb:11",
                "slow.rb:3",
                "slow.rb:7",
                "slowish.rb"
            ]
        );
        // On 1 slot the bound is 32 s: nothing bounds the run more than the total.
        history.insert(SLOTS_KEY.into(), 1.0);
        assert_eq!(
            split_slow_files(files, &history),
            ["fast.rb", "slow.rb", "slowish.rb"]
        );
        assert_eq!(unit_file("spec/a_spec.rb:12"), Some("spec/a_spec.rb"));
        assert_eq!(unit_file("spec/a_spec.rb"), None);
        assert_eq!(
            unit_file("tests/test_a.py::TestA::test_b[x:1]"),
            Some("tests/test_a.py")
        );
        assert_eq!(unit_file("c:/x"), None);
    }

    #[test]
    fn a_file_that_its_slowest_test_bounds_is_not_split() {
        // slow.rb is 20 s of the run but one test takes 18 s of it: split, it would still
        // take 18 s and pay again for what its tests share.
        let mut history: History = [
            ("slow.rb".to_string(), 20.0),
            ("slow.rb:3".to_string(), 18.0),
            ("slow.rb:7".to_string(), 1.0),
            ("slow.rb:11".to_string(), 1.0),
            ("other.rb".to_string(), 2.0),
            (SLOTS_KEY.to_string(), 4.0),
        ]
        .into();
        let files: Vec<String> = ["slow.rb", "other.rb"].map(String::from).to_vec();
        assert_eq!(split_slow_files(files.clone(), &history), files);
        // With its tests more even it is split.
        history.insert("slow.rb:3".into(), 8.0);
        assert_eq!(
            split_slow_files(files, &history),
            ["slow.rb:11", "slow.rb:3", "slow.rb:7", "other.rb"]
        );
    }

    #[test]
    fn a_file_whose_split_run_cost_more_than_its_whole_run_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.json");
        // A whole run: the file keeps its own time (its tests' sum leaves out what they
        // share) and remembers it.
        let whole = [
            ("slow.rb".to_string(), 12.0),
            ("slow.rb:3".to_string(), 3.0),
            ("slow.rb:7".to_string(), 3.0),
            ("slow.rb:11".to_string(), 3.0),
            ("other.rb".to_string(), 1.0),
        ];
        write_history(&path, History::new(), &whole, 4).unwrap();
        let history = read_history(&path).unwrap();
        assert_eq!(history["slow.rb"], 12.0);
        assert_eq!(history["gorgon:whole:slow.rb"], 12.0);
        let files: Vec<String> = ["slow.rb", "other.rb"].map(String::from).to_vec();
        assert_eq!(split_slow_files(files.clone(), &history).len(), 4);

        // Split, each test paid the shared setup again: 3 × 7 s = 21 s > 1.5 × 12 s.
        let split = [
            ("slow.rb:3".to_string(), 7.0),
            ("slow.rb:7".to_string(), 7.0),
            ("slow.rb:11".to_string(), 7.0),
            ("other.rb".to_string(), 1.0),
        ];
        write_history(&path, history, &split, 4).unwrap();
        let history = read_history(&path).unwrap();
        assert_eq!(history["slow.rb"], 21.0);
        assert_eq!(history["gorgon:keep-whole:slow.rb"], 1.75);
        assert_eq!(split_slow_files(files.clone(), &history), files);

        // Run whole again, it stays whole: no back and forth between the two.
        write_history(&path, history, &whole, 4).unwrap();
        let history = read_history(&path).unwrap();
        assert_eq!(history["slow.rb"], 12.0);
        assert_eq!(split_slow_files(files.clone(), &history), files);

        // A split run that cost little more than the whole one marks nothing.
        let mut history = History::new();
        history.insert("gorgon:whole:fair.rb".into(), 12.0);
        let fair = [
            ("fair.rb:1".to_string(), 6.5),
            ("fair.rb:2".to_string(), 6.5),
        ];
        write_history(&path, history, &fair, 4).unwrap();
        let history = read_history(&path).unwrap();
        assert_eq!(history["fair.rb"], 13.0);
        assert!(
            !history.contains_key("gorgon:keep-whole:fair.rb"),
            "{history:?}"
        );
    }

    #[test]
    fn split_runs_are_recorded_per_test_and_summed_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.json");
        let run = [
            ("slow.rb:3".to_string(), 1.5),
            ("slow.rb:7".to_string(), 2.5),
            ("b".to_string(), 1.0),
        ];
        write_history(&path, History::new(), &run, 8).unwrap();
        let history = read_history(&path).unwrap();
        assert_eq!(history["slow.rb"], 4.0);
        assert_eq!(history["slow.rb:7"], 2.5);
        assert_eq!(history[SLOTS_KEY], 8.0);
    }

    #[test]
    fn history_is_merged_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/runtime.json");
        let old: History = [("old".to_string(), 9.0), ("a".to_string(), 1.0)].into();
        write_history(&path, old, &[("a".into(), 2.5), ("new".into(), 0.1234)], 0).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\n  \"old\": 9.0,\n  \"a\": 2.5,\n  \"new\": 0.123\n}\n"
        );
        assert_eq!(read_history(&path).unwrap().len(), 3);
        assert!(read_history(&dir.path().join("none.json"))
            .unwrap()
            .is_empty());
    }
}
