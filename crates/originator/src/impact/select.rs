//! `gorgon start --changed`: which of the run's files a change can break, by the impact
//! map, and why; or why it must run everything.

use std::collections::BTreeMap;

use gorgon_protocol::impact::Scope;
use gorgon_protocol::FileGlob;

use super::changes::Change;
use super::map::{ImpactMap, SourceIndex};

/// Files whose change the map cannot follow: what they do reaches every test (helpers,
/// dependencies, configuration). Matched against a file's name.
const EVERYTHING: &[&str] = &[
    "conftest.py",
    "spec_helper.rb",
    "rails_helper.rb",
    "test_helper.rb",
    ".rspec",
    "Gemfile",
    "*.gemspec",
    "*.lock",
    "requirements*.txt",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "pytest.ini",
    "tox.ini",
    ".ruby-version",
    ".python-version",
    "gorgon.json",
];

/// `job.impact`'s globs.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Test files that always run.
    pub always: Vec<FileGlob>,
    /// Changed files that select nothing.
    pub ignore: Vec<FileGlob>,
}

/// What a selection decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    /// Everything runs, for this reason.
    Everything(String),
    /// Only these units run, each with why; the rest (`left_out`, in the run's order)
    /// are not selected.
    Some {
        selected: BTreeMap<String, Vec<String>>,
        left_out: Vec<String>,
    },
}

/// Selects the units of `units` that `changes` can break.
pub fn select(map: &ImpactMap, changes: &[Change], units: &[String], rules: &Rules) -> Selection {
    let files: Vec<&str> = units.iter().map(|u| file_of(u)).collect();
    let sources = map.sources();
    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for change in changes {
        if rules.ignore.iter().any(|glob| glob.matches(&change.path)) {
            continue;
        }
        match reach(change, &files, map, &sources) {
            Reach::Everything(reason) => return Selection::Everything(reason),
            Reach::Files(reached) => {
                for (file, reason) in reached {
                    why.entry(file).or_default().push(reason);
                }
            }
        }
    }
    for file in &files {
        if let Some(glob) = rules.always.iter().find(|glob| glob.matches(file)) {
            let reason = format!("job.impact.always ({})", glob.text);
            why.entry((*file).to_owned()).or_default().push(reason);
        } else if !map.tests.contains_key(*file) && !why.contains_key(*file) {
            let reason = "not in the impact map".to_owned();
            why.entry((*file).to_owned()).or_default().push(reason);
        }
    }
    let (chosen, left_out): (Vec<&String>, Vec<&String>) =
        units.iter().partition(|u| why.contains_key(file_of(u)));
    let selected = chosen
        .into_iter()
        .map(|u| (u.clone(), why[file_of(u)].clone()))
        .collect();
    Selection::Some {
        selected,
        left_out: left_out.into_iter().cloned().collect(),
    }
}

fn file_of(unit: &str) -> &str {
    gorgon_protocol::job::unit_file(unit).unwrap_or(unit)
}

/// What one change reaches.
enum Reach {
    Everything(String),
    /// (test file, why).
    Files(Vec<(String, String)>),
}

/// The test files one change reaches: itself when it is a test file of the run, and every
/// test file that ran the code it touches.
fn reach(
    change: &Change,
    files: &[&str],
    map: &ImpactMap,
    sources: &BTreeMap<&str, SourceIndex<'_>>,
) -> Reach {
    let is_test = |path: &str| files.contains(&path);
    if let Some(now) = change.now.as_deref().filter(|now| is_test(now)) {
        // A test file's own code reaches itself only: the later files of its worker that
        // ran after it loaded do not depend on it.
        let what = if change.new {
            "new test file"
        } else {
            "changed test file"
        };
        return Reach::Files(vec![(now.to_owned(), what.to_owned())]);
    }
    let name = change.path.rsplit('/').next().unwrap_or(&change.path);
    if let Some(kind) = EVERYTHING.iter().find(|p| glob_matches(p, name)) {
        return Reach::Everything(format!(
            "{} changed, and what it does reaches every test ({kind})",
            change.path
        ));
    }
    let Some(index) = sources.get(change.path.as_str()) else {
        // A test file (of the run, or deleted) is known by its own entry; a file no test
        // ran and that the run does not test is something the map cannot see.
        if is_test(&change.path) || map.tests.contains_key(&change.path) {
            return Reach::Files(Vec::new());
        }
        return Reach::Everything(format!(
            "{} changed, and the impact map does not know it",
            change.path
        ));
    };
    if change
        .base_digest
        .as_deref()
        .is_none_or(|d| !index.digests.contains(d))
        || index.digests.len() > 1
    {
        return Reach::Everything(format!(
            "{} changed, and the impact map was recorded from another version of it",
            change.path
        ));
    }
    Reach::Files(users(change, index))
}

/// The test files that ran code of `change`'s file that it touches, each with the lines.
fn users(change: &Change, index: &SourceIndex<'_>) -> Vec<(String, String)> {
    let mut reached = Vec::new();
    let touched: Vec<[u32; 2]> = if change.whole || change.now.is_none() {
        vec![[1, u32::MAX]]
    } else {
        change.lines.clone()
    };
    for lines in touched {
        let owner = owner(&index.scopes, lines);
        let place = describe(&change.path, lines, owner);
        for (test, ran) in &index.users {
            if owner.is_none_or(|scope| ran.contains(&scope)) {
                reached.push(((*test).to_owned(), place.clone()));
            }
        }
    }
    reached
}

/// The innermost recorded scope whose body holds all of `lines`; `None` when none does
/// (then every test file that ran the file is reached).
fn owner(scopes: &std::collections::BTreeSet<Scope>, [first, last]: [u32; 2]) -> Option<Scope> {
    scopes
        .iter()
        .filter(|[_, body, end]| *body <= first && last <= *end)
        .min_by_key(|[_, body, end]| end - body)
        .copied()
}

/// `lib/cart.py:12-14 (in lines 10-20)`, or `(run when the file loads)` for its module scope.
fn describe(path: &str, [first, last]: [u32; 2], owner: Option<Scope>) -> String {
    let lines = match (first, last) {
        (_, u32::MAX) => "the whole file".to_owned(),
        (first, last) if first == last => format!("{path}:{first}"),
        (first, last) => format!("{path}:{first}-{last}"),
    };
    match owner {
        Some([1, 1, _]) => format!("{lines} (run when the file loads)"),
        Some([start, _, end]) => format!("{lines} (in lines {start}-{end})"),
        None if last == u32::MAX => format!("{path}: the whole file"),
        None => format!("{lines} (outside any recorded scope)"),
    }
}

fn glob_matches(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::{FileImpact, SourceUse};

    /// A map of three test files over `lib/cart.py` (blob `c1`: a module of 20 lines with
    /// `total` at 4-9, and `tax` at 11-15 with a nested `round` at 13-14).
    fn map() -> ImpactMap {
        let uses = |scopes: &[Scope]| -> FileImpact {
            let used = SourceUse {
                digest: "c1".into(),
                ran: scopes.to_vec(),
            };
            [("lib/cart.py".to_owned(), used)].into_iter().collect()
        };
        let module = [1, 1, 21];
        let tests = [
            ("t/test_total.py", uses(&[module, [4, 5, 9]])),
            ("t/test_tax.py", uses(&[module, [11, 12, 15], [13, 14, 14]])),
            ("t/test_plain.py", uses(&[module])),
        ];
        ImpactMap {
            version: 1,
            tests: tests.into_iter().map(|(t, u)| (t.to_owned(), u)).collect(),
        }
    }

    fn units() -> Vec<String> {
        ["t/test_total.py", "t/test_tax.py", "t/test_plain.py"]
            .map(String::from)
            .to_vec()
    }

    fn change(path: &str, lines: &[[u32; 2]]) -> Change {
        Change {
            path: path.into(),
            now: Some(path.into()),
            lines: lines.to_vec(),
            base_digest: Some("c1".into()),
            ..Change::default()
        }
    }

    /// The selected files, or `everything: REASON`.
    fn chosen(changes: &[Change], rules: &Rules) -> Vec<String> {
        match select(&map(), changes, &units(), rules) {
            Selection::Everything(reason) => vec![format!("everything: {reason}")],
            Selection::Some { selected, .. } => selected.into_keys().collect(),
        }
    }

    #[test]
    fn a_changed_line_selects_the_files_that_ran_its_innermost_scope() {
        let rules = Rules::default();
        // (changed lines, the files selected)
        let cases: &[(&[[u32; 2]], &[&str])] = &[
            (&[[6, 7]], &["t/test_total.py"]),
            (&[[14, 14]], &["t/test_tax.py"]),
            (&[[12, 12]], &["t/test_tax.py"]),
            // A `def` line runs when the module loads: every file that loaded it.
            (
                &[[4, 4]],
                &["t/test_plain.py", "t/test_tax.py", "t/test_total.py"],
            ),
            // Lines added between two functions, and after the last line.
            (
                &[[9, 10]],
                &["t/test_plain.py", "t/test_tax.py", "t/test_total.py"],
            ),
            (
                &[[20, 21]],
                &["t/test_plain.py", "t/test_tax.py", "t/test_total.py"],
            ),
            (&[[6, 6], [13, 14]], &["t/test_tax.py", "t/test_total.py"]),
        ];
        for (lines, expected) in cases {
            assert_eq!(
                chosen(&[change("lib/cart.py", lines)], &rules),
                *expected,
                "{lines:?}"
            );
        }
    }

    #[test]
    fn what_the_map_cannot_follow_selects_everything_with_its_reason() {
        let rules = Rules::default();
        let mut stale = change("lib/cart.py", &[[6, 6]]);
        stale.base_digest = Some("c0".into());
        let cases = [
            (
                change("poetry.lock", &[[1, 1]]),
                "poetry.lock changed, and what it does reaches every test (*.lock)",
            ),
            (
                change("tests/conftest.py", &[[1, 1]]),
                "tests/conftest.py changed, and what it does reaches every test (conftest.py)",
            ),
            (
                change("lib/other.py", &[[1, 1]]),
                "lib/other.py changed, and the impact map does not know it",
            ),
            (
                stale,
                "lib/cart.py changed, and the impact map was recorded from another version of it",
            ),
        ];
        for (change, reason) in cases {
            assert_eq!(chosen(&[change], &rules), [format!("everything: {reason}")]);
        }
    }

    #[test]
    fn test_files_select_themselves_and_the_rules_add_or_ignore() {
        let rules = Rules {
            always: vec![FileGlob::new("t/test_plain.py").unwrap()],
            ignore: vec![FileGlob::new("docs/**").unwrap()],
        };
        let changes = [
            change("t/test_total.py", &[[1, 1]]),
            change("docs/guide.md", &[[1, 1]]),
        ];
        assert_eq!(
            chosen(&changes, &rules),
            ["t/test_plain.py", "t/test_total.py"]
        );
        let deleted_test = Change {
            now: None,
            ..change("t/test_gone.py", &[[1, 3]])
        };
        let mut map = map();
        map.tests.insert("t/test_gone.py".into(), FileImpact::new());
        let selection = select(&map, &[deleted_test], &units(), &Rules::default());
        assert_eq!(
            selection,
            Selection::Some {
                selected: BTreeMap::new(),
                left_out: units()
            }
        );
    }

    #[test]
    fn a_test_file_the_map_does_not_know_runs_and_split_units_follow_their_file() {
        let units = vec![
            "t/test_total.py::test_a".to_owned(),
            "t/test_total.py::test_b".to_owned(),
            "t/test_unknown.py".to_owned(),
        ];
        let changes = [change("lib/cart.py", &[[6, 6]])];
        let Selection::Some { selected, left_out } =
            select(&map(), &changes, &units, &Rules::default())
        else {
            panic!("a selection was expected");
        };
        assert!(left_out.is_empty());
        assert_eq!(
            selected["t/test_total.py::test_b"],
            ["lib/cart.py:6 (in lines 4-9)"]
        );
        assert_eq!(selected["t/test_unknown.py"], ["not in the impact map"]);
    }
}
