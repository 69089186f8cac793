//! What changed in the project since a base commit, from git: each changed file with the
//! lines of the base's version that the change touches (the map was recorded on that
//! version), its blob id at the base, and the files git does not track yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One changed file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Its path at the base (its new path when it is new).
    pub path: String,
    /// Its path now (`None` when it was deleted).
    pub now: Option<String>,
    /// Not at the base: new, or not tracked yet.
    pub new: bool,
    /// The base's lines the change touches, as `[first, last]`; an insertion after line
    /// `n` touches `[n, n + 1]`, the lines on either side.
    pub lines: Vec<[u32; 2]>,
    /// Changed with no lines to show (a binary file, a mode): the whole file counts.
    pub whole: bool,
    /// Its blob id at the base.
    pub base_digest: Option<String>,
}

/// git could not say what changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("cannot run git in {folder}: {source}")]
    Spawn {
        folder: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git {args} failed in {folder}: {stderr}")]
    Git {
        args: String,
        folder: PathBuf,
        stderr: String,
    },
    #[error("no base to compare with: {0}; name one with --changed BASE")]
    NoBase(String),
}

/// Runs git with `args` in `folder`; its stdout.
fn git(folder: &Path, args: &[&str]) -> Result<String, ChangesError> {
    let output = Command::new("git")
        .args(["-c", "core.quotePath=false"])
        .args(args)
        .current_dir(folder)
        .output()
        .map_err(|source| ChangesError::Spawn {
            folder: folder.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(ChangesError::Git {
            args: args.join(" "),
            folder: folder.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The commit `base` names, or, without one, the merge base of `HEAD` and the default
/// branch (`origin/HEAD`, else `main`, else `master`).
pub fn resolve_base(folder: &Path, base: Option<&str>) -> Result<String, ChangesError> {
    if let Some(base) = base {
        let commit = format!("{base}^{{commit}}");
        return Ok(git(folder, &["rev-parse", "--verify", "--quiet", &commit])
            .map_err(|_| {
                ChangesError::NoBase(format!("{base:?} is not a commit of this repository"))
            })?
            .trim()
            .to_owned());
    }
    let branches = ["origin/HEAD", "main", "master"];
    for branch in branches {
        if let Ok(base) = git(folder, &["merge-base", "HEAD", branch]) {
            return Ok(base.trim().to_owned());
        }
    }
    Err(ChangesError::NoBase(format!(
        "HEAD has no merge base with any of {}",
        branches.join(", ")
    )))
}

/// Every change of the work tree (committed or not, and the files git does not track yet)
/// since `base`, by path at the base, relative to `folder` (the project may be a folder of
/// its repository: only what changed below it counts).
pub fn since(folder: &Path, base: &str) -> Result<Vec<Change>, ChangesError> {
    let diff = git(
        folder,
        &[
            "diff",
            "--no-ext-diff",
            "--no-color",
            "--no-renames",
            "--relative",
            "-U0",
            base,
            "--",
            ".",
        ],
    )?;
    let mut changes = parse_diff(&diff);
    let untracked = git(
        folder,
        &["ls-files", "--others", "--exclude-standard", "--", "."],
    )?;
    changes.extend(
        untracked
            .lines()
            .filter(|l| !l.is_empty())
            .map(|path| Change {
                path: path.to_owned(),
                now: Some(path.to_owned()),
                new: true,
                whole: true,
                ..Change::default()
            }),
    );
    let digests = base_digests(folder, base, &changes)?;
    for change in &mut changes {
        change.base_digest = digests.get(&change.path).cloned();
    }
    Ok(changes)
}

/// The blob id at `base` of each changed file that was there.
fn base_digests(
    folder: &Path,
    base: &str,
    changes: &[Change],
) -> Result<BTreeMap<String, String>, ChangesError> {
    let mut args = vec!["ls-tree", "-r", base, "--"];
    let old: Vec<&str> = changes
        .iter()
        .filter(|c| !c.new)
        .map(|c| c.path.as_str())
        .collect();
    if old.is_empty() {
        return Ok(BTreeMap::new());
    }
    // Paths relative to `folder`, in and out, as the diff gave them (`--relative`).
    args.extend(old.iter().copied());
    let listing = git(folder, &args)?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let (meta, path) = line.split_once('\t')?;
            let blob = meta.split_whitespace().nth(2)?;
            Some((path.to_owned(), blob.to_owned()))
        })
        .collect())
}

/// The changes of a `git diff -U0 --no-renames` patch.
pub fn parse_diff(diff: &str) -> Vec<Change> {
    let mut changes: Vec<Change> = Vec::new();
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            changes.push(Change {
                whole: true,
                ..Change::default()
            });
            continue;
        }
        let Some(change) = changes.last_mut() else {
            continue;
        };
        if let Some(old) = line.strip_prefix("--- ") {
            change.new = old == "/dev/null";
            change.path = old.strip_prefix("a/").unwrap_or(old).to_owned();
        } else if let Some(now) = line.strip_prefix("+++ ") {
            change.now = now.strip_prefix("b/").map(str::to_owned);
            if change.new {
                change.path = change.now.clone().unwrap_or_default();
            }
        } else if let Some(hunk) = line.strip_prefix("@@ -") {
            change.whole = false;
            change.lines.push(hunk_lines(hunk));
        } else if let Some(names) = line.strip_prefix("Binary files ") {
            binary_paths(change, names.strip_suffix(" differ").unwrap_or(names));
        }
    }
    // A change with neither `---` nor a binary line (a mode change) names its path only in
    // its header; such a change keeps `whole` and is found by its header's name.
    fill_paths_from_headers(diff, &mut changes);
    changes
}

/// The paths of a binary change, from `a/X and b/X` (either may be `/dev/null`).
fn binary_paths(change: &mut Change, names: &str) {
    let (old, now) = names.split_once(" and ").unwrap_or((names, names));
    change.new = old == "/dev/null";
    change.now = now.strip_prefix("b/").map(str::to_owned);
    change.path = match old.strip_prefix("a/") {
        Some(old) => old.to_owned(),
        None => change.now.clone().unwrap_or_default(),
    };
}

/// `[first, last]` of the base's lines a hunk (`A[,B] +…`) touches.
fn hunk_lines(hunk: &str) -> [u32; 2] {
    let old = hunk.split_whitespace().next().unwrap_or("0");
    let (start, count) = match old.split_once(',') {
        Some((start, count)) => (start.parse().unwrap_or(0), count.parse().unwrap_or(1)),
        None => (old.parse().unwrap_or(0), 1),
    };
    if count == 0 {
        // Lines inserted after `start`: the lines on both sides.
        [start.max(1), start + 1]
    } else {
        [start, start + count - 1]
    }
}

/// The path of each change that has none yet, from its `diff --git a/X b/X` header.
fn fill_paths_from_headers(diff: &str, changes: &mut [Change]) {
    let headers = diff.lines().filter_map(|l| l.strip_prefix("diff --git a/"));
    for (change, header) in changes.iter_mut().zip(headers) {
        if change.path.is_empty() {
            let half = header.len().saturating_sub(3) / 2;
            change.path = header[..half.min(header.len())].to_owned();
            change.now = Some(change.path.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_git(folder: &Path, args: &[&str]) {
        let status = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(folder)
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    }

    #[test]
    fn a_project_in_a_folder_of_its_repository_sees_its_own_changes_by_its_own_paths() {
        let repo = tempfile::tempdir().unwrap();
        let app = repo.path().join("app");
        std::fs::create_dir_all(app.join("lib")).unwrap();
        std::fs::write(app.join("lib/a.py"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(repo.path().join("outside.txt"), "x\n").unwrap();
        run_git(repo.path(), &["init", "-q", "-b", "main"]);
        run_git(repo.path(), &["add", "-A"]);
        run_git(repo.path(), &["commit", "-q", "-m", "base"]);
        let base = resolve_base(&app, None).unwrap();
        std::fs::write(app.join("lib/a.py"), "one\n2\nthree\n").unwrap();
        std::fs::write(app.join("new.txt"), "n\n").unwrap();
        std::fs::write(repo.path().join("outside.txt"), "y\n").unwrap();

        let changes = since(&app, &base).unwrap();

        let blob = Command::new("git")
            .args(["rev-parse", &format!("{base}:app/lib/a.py")])
            .current_dir(repo.path())
            .output()
            .unwrap();
        let blob = String::from_utf8(blob.stdout).unwrap().trim().to_owned();
        assert_eq!(
            changes,
            vec![
                Change {
                    path: "lib/a.py".into(),
                    now: Some("lib/a.py".into()),
                    lines: vec![[2, 2]],
                    base_digest: Some(blob),
                    ..Change::default()
                },
                Change {
                    path: "new.txt".into(),
                    now: Some("new.txt".into()),
                    new: true,
                    whole: true,
                    ..Change::default()
                },
            ]
        );
        let error = resolve_base(&app, Some("nope")).unwrap_err().to_string();
        assert!(error.contains("\"nope\" is not a commit"), "{error}");
    }

    #[test]
    fn a_patch_gives_each_file_the_base_lines_it_touches() {
        let diff = "diff --git a/lib/cart.py b/lib/cart.py\n\
index 1..2 100644\n--- a/lib/cart.py\n+++ b/lib/cart.py\n\
@@ -12,3 +12,4 @@ def total\n-a\n+b\n@@ -30,0 +32,2 @@\n+x\n@@ -40 +43 @@\n-y\n+z\n\
diff --git a/tests/test_new.py b/tests/test_new.py\nnew file mode 100644\n\
--- /dev/null\n+++ b/tests/test_new.py\n@@ -0,0 +1,3 @@\n+def test(): pass\n\
diff --git a/old.rb b/old.rb\ndeleted file mode 100644\n--- a/old.rb\n+++ /dev/null\n\
@@ -1,2 +0,0 @@\n-x\n-y\n\
diff --git a/img.png b/img.png\nindex 1..2 100644\nBinary files a/img.png and b/img.png differ\n\
diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n";
        let changes = parse_diff(diff);
        type Summary<'a> = (&'a str, Option<&'a str>, bool, bool, Vec<[u32; 2]>);
        let summary: Vec<Summary<'_>> = changes
            .iter()
            .map(|c| {
                (
                    c.path.as_str(),
                    c.now.as_deref(),
                    c.new,
                    c.whole,
                    c.lines.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "lib/cart.py",
                    Some("lib/cart.py"),
                    false,
                    false,
                    vec![[12, 14], [30, 31], [40, 40]]
                ),
                (
                    "tests/test_new.py",
                    Some("tests/test_new.py"),
                    true,
                    false,
                    vec![[1, 1]]
                ),
                ("old.rb", None, false, false, vec![[1, 2]]),
                ("img.png", Some("img.png"), false, true, vec![]),
                ("run.sh", Some("run.sh"), false, true, vec![]),
            ]
        );
    }
}
