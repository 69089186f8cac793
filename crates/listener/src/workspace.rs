//! Warm workspaces. Each project gets numbered workspaces under `workspace_root`; a job takes
//! a free one (a file lock marks it taken, so concurrent jobs of one project, or two listeners
//! sharing a root, never share one) and rsync brings it to the originator's tree: unchanged
//! files are not transferred again, while `--delete` and `--delete-excluded` remove whatever
//! the tree no longer has or a previous job wrote. A workspace whose job was cancelled or
//! could not sync is removed, so a half-written tree is never reused.

use std::collections::hash_map::DefaultHasher;
use std::fs::{File, TryLockError};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// A workspace held by one job; dropping it frees it for the project's next job.
#[derive(Debug)]
pub struct Workspace {
    pub path: PathBuf,
    _lock: File,
}

impl Workspace {
    /// Takes a free workspace of the project whose tree comes from `source`, creating one if
    /// every existing workspace is taken.
    pub fn take(root: &Path, source: &str) -> std::io::Result<Workspace> {
        let project = root.join(project_key(source));
        std::fs::create_dir_all(&project)?;
        for number in 0.. {
            let lock = File::create(project.join(format!("{number}.lock")))?;
            match lock.try_lock() {
                Ok(()) => {
                    let path = project.join(number.to_string());
                    std::fs::create_dir_all(&path)?;
                    return Ok(Workspace { path, _lock: lock });
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(error)) => return Err(error),
            }
        }
        unreachable!("the numbers run out before the locks do")
    }

    /// Removes the workspace (its tree is in an unknown state) and its digests, and frees
    /// it.
    pub fn discard(self) -> std::io::Result<()> {
        let _ = std::fs::remove_file(crate::tree_check::digests_of(&self.path));
        match std::fs::remove_dir_all(&self.path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// A folder name for a project: readable, and distinct for distinct sources.
fn project_key(source: &str) -> String {
    let readable: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let readable = readable.trim_matches('_');
    let readable = &readable[readable.len().saturating_sub(60)..];
    let mut hasher = DefaultHasher::new();
    source.hash(&mut hasher);
    format!("{readable}-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_of_one_project_get_distinct_workspaces_and_reuse_free_ones() {
        let root = tempfile::tempdir().unwrap();
        let source = "rsync://fs:43434/src/dev1_shop/";
        let first = Workspace::take(root.path(), source).unwrap();
        let second = Workspace::take(root.path(), source).unwrap();
        assert_ne!(first.path, second.path);
        std::fs::write(first.path.join("kept.txt"), "warm").unwrap();
        let first_path = first.path.clone();
        drop(first);
        let again = Workspace::take(root.path(), source).unwrap();
        assert_eq!(again.path, first_path);
        assert!(
            again.path.join("kept.txt").exists(),
            "a free workspace is reused warm"
        );
        again.discard().unwrap();
        assert!(!first_path.exists());
        let other = Workspace::take(root.path(), "rsync://fs:43434/src/dev1_other/").unwrap();
        assert_ne!(other.path.parent(), second.path.parent());
    }

    #[test]
    fn keys_are_distinct_and_safe() {
        let a = project_key("rsync://fs:1/src/a/b/");
        let b = project_key("rsync://fs:1/src/a_b/");
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains(':'));
    }
}
