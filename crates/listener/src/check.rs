//! What `gorgon listen --check` finds out about this host beyond the config's values: that
//! `workspace_root` is a folder this user can make workspaces in, and how the worker slots
//! compare with the host's cores.

use std::path::{Path, PathBuf};

/// More slots than this per core is told as a warning by `listen --check`: tests that use the
/// CPU would wait for it, and their time limits would be spent waiting.
pub const SLOTS_PER_CORE: usize = 8;

/// Why `workspace_root` cannot hold the workspaces of jobs.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceProblem {
    #[error("workspace_root {} is not a folder: {} is a file", root.display(), file.display())]
    NotAFolder { root: PathBuf, file: PathBuf },
    /// The folder (or, when it does not exist, the one it would be made in) does not take a
    /// new folder from this user.
    #[error("workspace_root {} {}: {source}; set workspace_root to a folder the listener's user can write, or give that user the right", root.display(), where_made(root, at))]
    NotWritable {
        root: PathBuf,
        at: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the folder that refused a new folder relates to the root, in words.
fn where_made(root: &Path, at: &Path) -> String {
    if root == at {
        "does not take new folders from this user".to_owned()
    } else {
        format!(
            "does not exist and cannot be made: {} does not take new folders from this user",
            at.display()
        )
    }
}

/// Checks that jobs can have workspaces under `root`: the folder exists and takes a new
/// folder from this user, or the nearest folder above it that exists does (a listener makes
/// the root when its first job comes). It makes and removes a folder there, since neither
/// the mode bits nor `access(2)` tell it for root or for file systems such as `/proc`.
pub fn workspace_root(root: &Path) -> Result<(), WorkspaceProblem> {
    let mut at = root;
    loop {
        match std::fs::metadata(at) {
            Ok(found) if found.is_dir() => break,
            Ok(_) => {
                return Err(WorkspaceProblem::NotAFolder {
                    root: root.to_owned(),
                    file: at.to_owned(),
                })
            }
            Err(_) => match at.parent() {
                Some(parent) => at = parent,
                None => break,
            },
        }
    }
    tempfile::Builder::new()
        .prefix(".gorgon-check-")
        .tempdir_in(at)
        .map(drop)
        .map_err(|source| WorkspaceProblem::NotWritable {
            root: root.to_owned(),
            at: at.to_owned(),
            source,
        })
}

/// A warning when `slots` is more than [`SLOTS_PER_CORE`] per core of this host; `None`
/// otherwise (or when the cores cannot be counted). More slots than a listener takes at all
/// is refused when the config is read (`MAX_WORKER_SLOTS`).
pub fn slots_per_core(slots: u32) -> Option<String> {
    let cores = std::thread::available_parallelism().ok()?.get();
    per_core_warning(slots, cores)
}

fn per_core_warning(slots: u32, cores: usize) -> Option<String> {
    (slots as usize > SLOTS_PER_CORE * cores).then(|| {
        format!(
            "warning: worker_slots is {slots}, more than {SLOTS_PER_CORE} per core of this host's {cores}: tests that use the CPU will wait for it and may time out; fewer slots usually finish sooner"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_folder_or_one_that_can_be_made_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        workspace_root(dir.path()).unwrap();
        workspace_root(&dir.path().join("not/yet/there")).unwrap();
        // Nothing is left behind by the check.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_or_a_folder_that_takes_nothing_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let problem = workspace_root(&file.join("ws")).unwrap_err().to_string();
        assert_eq!(
            problem,
            format!(
                "workspace_root {}/ws is not a folder: {} is a file",
                file.display(),
                file.display()
            )
        );
        // /proc takes no folder, not even from root.
        let problem = workspace_root(Path::new("/proc/nope")).unwrap_err();
        assert!(
            problem
                .to_string()
                .starts_with("workspace_root /proc/nope does not exist and cannot be made: /proc does not take new folders from this user"),
            "{problem}"
        );
    }

    #[test]
    fn slots_beyond_eight_per_core_are_a_warning() {
        assert_eq!(per_core_warning(16, 2), None);
        let warning = per_core_warning(17, 2).unwrap();
        assert!(
            warning
                .starts_with("warning: worker_slots is 17, more than 8 per core of this host's 2"),
            "{warning}"
        );
    }
}
