//! The symbolic links of the tree a run pushes. rsync copies a link as a link (`-a`), and a
//! listener follows it on its own host: `tests/x_test.sh -> /etc/shadow` would print that
//! host's `/etc/shadow`. So the push refuses every link that leads out of the project,
//! naming each; a link that stays inside it is pushed as it is. The check walks the tree once
//! without following links and reads only the links themselves, skipping what
//! `job.sync.exclude` keeps from the push.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// How many links a refusal names; the others are counted.
const NAMED: usize = 10;
/// How many links one path may pass through before it is taken for a loop: the kernel's own
/// limit (`MAXSYMLINKS`), past which it resolves nothing.
const MAX_HOPS: usize = 40;

/// Why a tree is not pushed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("refusing to push {}; see docs/security.md", listed(.0))]
    Outside(Vec<OutsideLink>),
    #[error("cannot read {} to look for links that leave the project: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A link of the tree that leads out of the project.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutsideLink {
    /// The link, relative to the project root (written lossily if it is not UTF-8).
    pub link: String,
    /// Its target, as written in the link.
    pub target: String,
}

/// The links of a refusal, in words.
fn listed(links: &[OutsideLink]) -> String {
    let named: Vec<String> = links
        .iter()
        .take(NAMED)
        .map(|link| format!("{} -> {}", link.link, link.target))
        .collect();
    let more = match links.len().saturating_sub(NAMED) {
        0 => String::new(),
        more => format!(" and {more} more"),
    };
    match links.len() {
        1 => format!(
            "the symbolic link {}, which leads out of the project: a listener would follow it on its own host; replace it by the file it points to, point it inside the project with a relative path, or exclude it (job.sync.exclude)",
            named[0]
        ),
        count => format!(
            "{count} symbolic links that lead out of the project: {}{more}: a listener would follow them on its own host; replace each by the file it points to, point it inside the project with a relative path, or exclude it (job.sync.exclude)",
            named.join(", ")
        ),
    }
}

/// Refuses the tree at `root` when a link in it (outside the paths `exclude` keeps from
/// the push, rsync's patterns) leads out of it, naming every such link.
pub fn refuse_outside(root: &Path, exclude: &[String]) -> Result<(), LinkError> {
    let read = |path: &Path| {
        let path = path.to_owned();
        move |source| LinkError::Read { path, source }
    };
    let root = root.canonicalize().map_err(read(root))?;
    let excludes: Vec<Exclude> = exclude.iter().filter_map(|p| Exclude::new(p)).collect();
    let mut outside = Vec::new();
    let mut folders = vec![PathBuf::new()];
    while let Some(folder) = folders.pop() {
        let full = root.join(&folder);
        for entry in std::fs::read_dir(&full).map_err(read(&full))? {
            let entry = entry.map_err(read(&full))?;
            let relative = folder.join(entry.file_name());
            let kind = entry.file_type().map_err(read(&entry.path()))?;
            let name = relative.to_string_lossy();
            if excludes.iter().any(|e| e.matches(&name, kind.is_dir())) {
                continue;
            }
            if kind.is_dir() {
                folders.push(relative);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).map_err(read(&entry.path()))?;
                if leaves(&root, &full, &target) {
                    outside.push(OutsideLink {
                        link: name.into_owned(),
                        target: target.to_string_lossy().into_owned(),
                    });
                }
            }
        }
    }
    if outside.is_empty() {
        return Ok(());
    }
    outside.sort();
    Err(LinkError::Outside(outside))
}

/// One step of a path being followed.
enum Step {
    Up,
    Into(OsString),
}

/// Puts the steps of `target` in front of those `pending` holds (it is a stack: the next
/// step last); `false` for an absolute target, which a listener resolves on its own host.
fn push_steps(pending: &mut Vec<Step>, target: &Path) -> bool {
    for part in target.components().rev() {
        match part {
            Component::RootDir | Component::Prefix(_) => return false,
            Component::CurDir => {}
            Component::ParentDir => pending.push(Step::Up),
            Component::Normal(name) => pending.push(Step::Into(name.to_owned())),
        }
    }
    true
}

/// Whether `target`, the target of a link in `folder` (a folder of the tree below `root`,
/// both canonical), leads out of `root` when followed as the kernel follows it: through the
/// tree's other links, as far as the path exists, and by its words past that. Reading the
/// target's words alone would miss `deep/d/c -> x/../..` where `deep/d/x -> ../..`.
fn leaves(root: &Path, folder: &Path, target: &Path) -> bool {
    let mut at = folder.to_owned();
    let mut pending = Vec::new();
    if !push_steps(&mut pending, target) {
        return true;
    }
    let mut hops = 0;
    while let Some(step) = pending.pop() {
        match step {
            Step::Up if at == root => return true,
            Step::Up => {
                at.pop();
            }
            Step::Into(name) => {
                let next = at.join(&name);
                let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_symlink());
                if !is_link {
                    at = next;
                    continue;
                }
                hops += 1;
                // A loop resolves to nothing, on a listener as here.
                let Some(inner) = std::fs::read_link(&next).ok().filter(|_| hops <= MAX_HOPS)
                else {
                    return false;
                };
                if !push_steps(&mut pending, &inner) {
                    return true;
                }
            }
        }
    }
    false
}

/// One `job.sync.exclude` pattern, matched as rsync matches it: a trailing `/` matches only
/// folders; a leading `/` anchors it at the project root; a pattern with a `/` or `**` is
/// matched against the end of the path, at a folder boundary, and one without against the
/// name alone; `*` stops at `/`, `**` does not.
struct Exclude {
    pattern: glob::Pattern,
    anchored: bool,
    folders_only: bool,
    whole_path: bool,
}

impl Exclude {
    /// `None` for a pattern the glob syntax cannot hold (`a**b`): it then excludes nothing
    /// here, so a link it would keep from the push is still looked at (refused at worst).
    fn new(raw: &str) -> Option<Exclude> {
        let (raw, folders_only) = match raw.strip_suffix('/') {
            Some(raw) => (raw, true),
            None => (raw, false),
        };
        let (raw, anchored) = match raw.strip_prefix('/') {
            Some(raw) => (raw, true),
            None => (raw, false),
        };
        Some(Exclude {
            pattern: glob::Pattern::new(raw).ok()?,
            anchored,
            folders_only,
            whole_path: anchored || raw.contains('/') || raw.contains("**"),
        })
    }

    /// Whether it keeps `relative` (a path below the root, `/` between its parts) from the
    /// push.
    fn matches(&self, relative: &str, is_folder: bool) -> bool {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        if self.folders_only && !is_folder {
            return false;
        }
        if !self.whole_path {
            let name = relative.rsplit('/').next().unwrap_or(relative);
            return self.pattern.matches_with(name, options);
        }
        if self.anchored {
            return self.pattern.matches_with(relative, options);
        }
        std::iter::once(relative)
            .chain(
                relative
                    .match_indices('/')
                    .map(|(at, _)| &relative[at + 1..]),
            )
            .any(|tail| self.pattern.matches_with(tail, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A project with a few folders and `links` (`(link, target)`) in it.
    fn tree_with(links: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for folder in ["tests", "lib", "deep/d", "vendor", "log"] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        std::fs::write(dir.path().join("lib/helper.sh"), "x").unwrap();
        for (at, target) in links {
            symlink(target, dir.path().join(at)).unwrap();
        }
        dir
    }

    /// The links `refuse_outside` names in `dir`, none when it pushes the tree.
    fn refused(dir: &Path, exclude: &[&str]) -> Vec<String> {
        let exclude: Vec<String> = exclude.iter().map(|p| p.to_string()).collect();
        match refuse_outside(dir, &exclude) {
            Ok(()) => Vec::new(),
            Err(LinkError::Outside(links)) => links.into_iter().map(|l| l.link).collect(),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn links_inside_the_project_are_fine() {
        let dir = tree_with(&[
            ("tests/helper.sh", "../lib/helper.sh"),
            ("tests/lib", "../lib"),
            ("deep/d/top", "../.."),
            ("deep/d/via", "top/lib/./helper.sh"),
            ("tests/loop_a", "loop_b"),
            ("tests/loop_b", "loop_a"),
            ("tests/not_built_yet", "../build/out.sh"),
        ]);
        assert_eq!(refused(dir.path(), &[]), Vec::<String>::new());
    }

    #[test]
    fn links_out_of_the_project_are_refused_and_named() {
        let dir = tree_with(&[
            ("tests/x_test.sh", "/etc/shadow"),
            ("tests/up", "../../elsewhere"),
            // Lexically inside, out through another link: top is the root, top/.. its
            // parent.
            ("deep/d/top", "../.."),
            ("deep/d/sneaky", "top/../sibling"),
            ("tests/lib", "../lib"),
            ("tests/through", "lib/../../.."),
        ]);
        // Absolute, even into the project: a listener resolves it on its own host.
        let inside = dir.path().join("lib").display().to_string();
        symlink(&inside, dir.path().join("lib/self")).unwrap();
        assert_eq!(
            refused(dir.path(), &[]),
            [
                "deep/d/sneaky",
                "lib/self",
                "tests/through",
                "tests/up",
                "tests/x_test.sh"
            ]
        );
        let error = refuse_outside(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("refusing to push 5 symbolic links that lead out of the project: deep/d/sneaky -> top/../sibling, lib/self -> /"),
            "{error}"
        );
        assert!(error.contains("tests/x_test.sh -> /etc/shadow"), "{error}");
    }

    #[test]
    fn excluded_paths_are_not_looked_at() {
        let exclude = ["vendor/", "/log", "*.key", "deep/d"];
        let dir = tree_with(&[
            ("vendor/out", "/etc"),
            ("log/current", "/var/log/syslog"),
            ("tests/secret.key", "/etc/ssl/private/k.key"),
            ("deep/d/out", "/"),
        ]);
        assert_eq!(refused(dir.path(), &exclude), Vec::<String>::new());
        // A folder-only pattern does not exclude a link of that name; an anchored one only
        // at the root.
        let dir = tree_with(&[("tests/vendor", "/etc"), ("tests/log", "/etc")]);
        assert_eq!(refused(dir.path(), &exclude), ["tests/log", "tests/vendor"]);
    }

    #[test]
    fn exclude_patterns_match_as_rsync_matches_them() {
        let cases = [
            (".git", ".git", true, true),
            (".git", "a/.git", true, true),
            ("tmp/", "tmp", false, false),
            ("tmp/", "a/tmp", true, true),
            ("/log", "log", false, true),
            ("/log", "a/log", false, false),
            ("a/b", "x/a/b", false, true),
            ("a/b", "xa/b", false, false),
            ("*.key", "d/e/k.key", false, true),
            ("cache/*", "cache/x/y", false, false),
            ("cache/**", "cache/x/y", false, true),
        ];
        for (pattern, path, is_folder, expected) in cases {
            let exclude = Exclude::new(pattern).unwrap();
            assert_eq!(
                exclude.matches(path, is_folder),
                expected,
                "{pattern} on {path}"
            );
        }
    }
}
