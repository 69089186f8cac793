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
    /// are not selected. `unreached` says why each change that reaches no test file does
    /// not (a change in a function no test file ran).
    Some {
        selected: BTreeMap<String, Vec<String>>,
        left_out: Vec<String>,
        unreached: Vec<String>,
    },
}

/// Selects the units of `units` that `changes` can break.
pub fn select(map: &ImpactMap, changes: &[Change], units: &[String], rules: &Rules) -> Selection {
    let files: Vec<&str> = units.iter().map(|u| file_of(u)).collect();
    let sources = map.sources();
    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unreached = Vec::new();
    for change in changes {
        if rules.ignore.iter().any(|glob| glob.matches(&change.path)) {
            continue;
        }
        match reach(change, &files, map, &sources) {
            Reach::Everything(reason) => return Selection::Everything(reason),
            Reach::Files(reached) => {
                for (file, reason) in reached.files {
                    why.entry(file).or_default().push(reason);
                }
                unreached.extend(reached.nothing);
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
        unreached,
    }
}

fn file_of(unit: &str) -> &str {
    gorgon_protocol::job::unit_file(unit).unwrap_or(unit)
}

/// What one change reaches.
enum Reach {
    Everything(String),
    Files(Reached),
}

/// The test files a change reaches, and why the parts of it that reach none do not.
#[derive(Default)]
struct Reached {
    /// (test file, why).
    files: Vec<(String, String)>,
    nothing: Vec<String>,
}

impl Reached {
    fn only(file: &str, why: &str) -> Reached {
        Reached {
            files: vec![(file.to_owned(), why.to_owned())],
            nothing: Vec::new(),
        }
    }
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
        return Reach::Files(Reached::only(now, what));
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
            return Reach::Files(Reached::default());
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
fn users(change: &Change, index: &SourceIndex<'_>) -> Reached {
    let mut reached = Reached::default();
    let touched: Vec<[u32; 2]> = if change.whole || change.now.is_none() {
        vec![[1, u32::MAX]]
    } else {
        change.lines.clone()
    };
    let unrun = unrun_scopes(change, index);
    for lines in touched {
        let owner = owner(index.scopes.iter().chain(&unrun), lines);
        if let Some(scope) = owner.filter(|scope| unrun.contains(scope)) {
            reached
                .nothing
                .push(describe_unrun(&change.path, lines, scope));
            continue;
        }
        let place = describe(&change.path, lines, owner);
        for (test, ran) in &index.users {
            if owner.is_none_or(|scope| ran.contains(&scope)) {
                reached.files.push(((*test).to_owned(), place.clone()));
            }
        }
    }
    reached
}

/// The scopes the recorders know of `change`'s file that no test file ran: none unless
/// they were recorded from the base's version of the file (an older map has none). A known
/// scope that a recorded one stands for (the same first and last line, its body told
/// apart by another recorder's version) counts as run.
fn unrun_scopes(change: &Change, index: &SourceIndex<'_>) -> Vec<Scope> {
    let Some(known) = index
        .known
        .filter(|known| change.base_digest.as_deref() == Some(known.digest.as_str()))
    else {
        return Vec::new();
    };
    let ran: std::collections::BTreeSet<[u32; 2]> = index
        .scopes
        .iter()
        .map(|[first, _, last]| [*first, *last])
        .collect();
    known
        .scopes
        .iter()
        .filter(|[first, _, last]| !ran.contains(&[*first, *last]))
        .copied()
        .collect()
}

/// The innermost scope of `scopes` whose body holds all of `lines`; `None` when none does
/// (then every test file that ran the file is reached). A scope's lines before its body
/// (decorators, signature) run when the scope around it runs, so they are not its own.
fn owner<'a>(scopes: impl Iterator<Item = &'a Scope>, [first, last]: [u32; 2]) -> Option<Scope> {
    scopes
        .filter(|[_, body, end]| *body <= first && last <= *end)
        .min_by_key(|[_, body, end]| end - body)
        .copied()
}

/// `lib/cart.py:12-14`, or `the whole file`.
fn describe_lines(path: &str, [first, last]: [u32; 2]) -> String {
    match (first, last) {
        (_, u32::MAX) => "the whole file".to_owned(),
        (first, last) if first == last => format!("{path}:{first}"),
        (first, last) => format!("{path}:{first}-{last}"),
    }
}

/// `lib/cart.py:12-14 (in lines 10-20)`, or `(run when the file loads)` for its module scope.
fn describe(path: &str, lines: [u32; 2], owner: Option<Scope>) -> String {
    let place = describe_lines(path, lines);
    match owner {
        Some([1, 1, _]) => format!("{place} (run when the file loads)"),
        Some([start, _, end]) => format!("{place} (in lines {start}-{end})"),
        None if lines[1] == u32::MAX => format!("{path}: the whole file"),
        None => format!("{place} (outside any recorded scope)"),
    }
}

/// Why a change in the body of a scope no test file ran reaches none.
fn describe_unrun(path: &str, lines: [u32; 2], [start, _, end]: Scope) -> String {
    format!(
        "{} (in the function or method of lines {start}-{end}, which no recorded test file ran)",
        describe_lines(path, lines)
    )
}

fn glob_matches(pattern: &str, name: &str) -> bool {
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impact::map::KnownScopes;
    use gorgon_protocol::{FileImpact, SourceUse};

    /// A map of three test files over `lib/cart.py` (blob `c1`: a module of 20 lines with
    /// `total` at 4-9, and `tax` at 11-15 with a nested `round` at 13-14).
    fn map() -> ImpactMap {
        let uses = |scopes: &[Scope]| -> FileImpact {
            let used = SourceUse {
                digest: "c1".into(),
                ran: scopes.to_vec(),
                known: Vec::new(),
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
            known: BTreeMap::new(),
        }
    }

    /// `map()` with the scopes the recorders know of `lib/cart.py` at `digest`: those that
    /// ran (`tax` as a recorder of another version told its body), `fmt` at 7-8 in `total`,
    /// and `discount` at 16-19 with a nested `inner` at 18-19, which no test file ran.
    fn map_knowing(digest: &str) -> ImpactMap {
        let mut map = map();
        let scopes = vec![
            [4, 5, 9],
            [7, 8, 8],
            [11, 13, 15],
            [13, 14, 14],
            [16, 17, 19],
            [18, 19, 19],
        ];
        let digest = digest.to_owned();
        let known = KnownScopes { digest, scopes };
        map.known.insert("lib/cart.py".into(), known);
        map
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
                left_out: units(),
                unreached: Vec::new(),
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
        let Selection::Some {
            selected, left_out, ..
        } = select(&map(), &changes, &units, &Rules::default())
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

    /// What a change of `lines` of `lib/cart.py` selects by `map`, and why the parts of it
    /// that reach no file do not.
    fn selecting(
        map: &ImpactMap,
        lines: &[[u32; 2]],
    ) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        let changes = [change("lib/cart.py", lines)];
        match select(map, &changes, &units(), &Rules::default()) {
            Selection::Some {
                selected,
                unreached,
                ..
            } => (selected, unreached),
            Selection::Everything(reason) => panic!("{lines:?}: everything ({reason})"),
        }
    }

    /// (changed lines, the files selected, each changed line that reaches none with the
    /// lines of the unrun function it is in)
    type UnrunCase<'a> = (&'a [[u32; 2]], &'a [&'a str], &'a [(u32, &'a str)]);

    #[test]
    fn a_change_in_the_body_of_a_function_no_test_ran_selects_nothing() {
        let all: &[&str] = &["t/test_plain.py", "t/test_tax.py", "t/test_total.py"];
        let cases: &[UnrunCase<'_>] = &[
            (&[[17, 17]], &[], &[(17, "16-19")]),
            // Nested: `inner`'s body, and its `def` line, which runs when `discount` does.
            (&[[19, 19]], &[], &[(19, "18-19")]),
            (&[[18, 18]], &[], &[(18, "16-19")]),
            (&[[8, 8]], &[], &[(8, "7-8")]),
            // A `def` line runs with the scope around it: the module's, or `total`'s.
            (&[[16, 16]], all, &[]),
            (&[[7, 7]], &["t/test_total.py"], &[]),
            // Lines across the end of `tax` and the start of `discount`: the module's.
            (&[[15, 17]], all, &[]),
            // A recorded scope stands for a known one of the same lines.
            (&[[13, 13]], &["t/test_tax.py"], &[]),
            (&[[6, 6], [17, 17]], &["t/test_total.py"], &[(17, "16-19")]),
        ];
        for (lines, files, unrun) in cases {
            let (selected, unreached) = selecting(&map_knowing("c1"), lines);
            assert_eq!(
                selected.into_keys().collect::<Vec<_>>(),
                *files,
                "{lines:?}"
            );
            let why: Vec<String> = unrun
                .iter()
                .map(|(line, scope)| {
                    format!("lib/cart.py:{line} (in the function or method of lines {scope}, which no recorded test file ran)")
                })
                .collect();
            assert_eq!(unreached, why, "{lines:?}");
        }
    }

    #[test]
    fn known_scopes_of_another_version_of_the_file_are_not_used() {
        let (selected, unreached) = selecting(&map_knowing("c0"), &[[17, 17]]);
        assert_eq!(selected.len(), 3, "{selected:?}");
        assert_eq!(
            selected["t/test_plain.py"],
            ["lib/cart.py:17 (run when the file loads)"]
        );
        assert!(unreached.is_empty());
    }
}
