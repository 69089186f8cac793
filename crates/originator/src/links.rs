//! The symbolic links of the tree a run pushes. rsync copies a link as a link (`-a`), and a
//! listener follows it on its own host: `tests/x_test.sh -> /etc/shadow` would print that
//! host's `/etc/shadow`. So the push refuses every link that leads out of the project,
//! naming each; a link that stays inside it is pushed as it is. The check reads the links of
//! the tree's manifest (`crate::tree`), which lists what `job.sync.exclude` leaves in.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
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

/// Refuses the tree at `root` when one of its `links` (each path below the root with its
/// target) leads out of it, naming every such link.
pub fn refuse_outside<'a>(
    root: &Path,
    links: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(), LinkError> {
    let root = root.canonicalize().map_err(|source| LinkError::Read {
        path: root.to_owned(),
        source,
    })?;
    let mut outside: Vec<OutsideLink> = links
        .filter_map(|(link, target)| {
            let link = Path::new(OsStr::from_bytes(link));
            let folder = root.join(link.parent().unwrap_or(Path::new("")));
            let target = Path::new(OsStr::from_bytes(target));
            leaves(&root, &folder, target).then(|| OutsideLink {
                link: link.to_string_lossy().into_owned(),
                target: target.to_string_lossy().into_owned(),
            })
        })
        .collect();
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
        match check(dir, exclude) {
            Ok(()) => Vec::new(),
            Err(LinkError::Outside(links)) => links.into_iter().map(|l| l.link).collect(),
            Err(other) => panic!("{other}"),
        }
    }

    /// `refuse_outside` on the links of the tree at `dir` as a push would list it.
    fn check(dir: &Path, exclude: &[&str]) -> Result<(), LinkError> {
        let exclude: Vec<String> = exclude.iter().map(|p| p.to_string()).collect();
        let exclude = gorgon_exec::tree::Exclude::all(&exclude).unwrap();
        let mut cache = gorgon_exec::tree::DigestCache::in_memory();
        let scanned = gorgon_exec::tree::scan(dir, &exclude, &mut cache).unwrap();
        refuse_outside(dir, scanned.manifest.links())
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
        let error = check(dir.path(), &[]).unwrap_err().to_string();
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
}
