//! `job.artifacts`: the files of a job's workspace that go back to its originator at the end
//! of this host's part (coverage data, screenshots, logs), read off the runtime's threads and
//! sent in messages of at most [`BATCH_BYTES`] each, up to the job's limit per host; what
//! the limit keeps back is named. Only regular files inside the workspace are sent: a link
//! is not followed.

use std::path::Path;

use gorgon_protocol::{ArtifactFile, Artifacts};

/// At most this many bytes of files in one message (4/3 of it in base64, under the
/// protocol's 16 MiB).
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// A larger file does not fit in one message, even alone.
const MAX_FILE_BYTES: u64 = 11 * 1024 * 1024;

/// What a workspace has to send back.
#[derive(Debug, Default)]
pub struct Collected {
    /// The files, in messages' worth.
    pub batches: Vec<Vec<ArtifactFile>>,
    /// Files the limit kept back (or that could not be read), each with why.
    pub left_out: Vec<String>,
}

/// The files of `workspace` that `artifacts` names, in path order, within its limit.
pub fn collect(workspace: &Path, artifacts: &Artifacts) -> Collected {
    let mut collected = Collected::default();
    let (mut batch, mut batch_bytes, mut total) = (Vec::new(), 0u64, 0u64);
    let Ok(root) = workspace.canonicalize() else {
        return collected;
    };
    for relative in matching(workspace, &artifacts.paths) {
        let path = workspace.join(&relative);
        let Some(size) = size_inside(&root, &path) else {
            continue;
        };
        if size > MAX_FILE_BYTES {
            collected.left_out.push(format!(
                "{relative} ({size} bytes: larger than {MAX_FILE_BYTES}, what one message carries)"
            ));
            continue;
        }
        if total + size > artifacts.limit_bytes {
            collected
                .left_out
                .push(format!("{relative} ({size} bytes: past the limit)"));
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            collected.left_out.push(format!("{relative} (unreadable)"));
            continue;
        };
        if batch_bytes + size > BATCH_BYTES && !batch.is_empty() {
            collected.batches.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        total += size;
        batch_bytes += size;
        batch.push(ArtifactFile::new(relative, &bytes));
    }
    if !batch.is_empty() {
        collected.batches.push(batch);
    }
    collected
}

/// The size of `path` if it is a regular file (not a link) that is inside `root` once every
/// link of its folders is followed.
fn size_inside(root: &Path, path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let inside = path.canonicalize().ok()?.starts_with(root);
    (meta.is_file() && inside).then_some(meta.len())
}

/// The paths below `workspace` (UTF-8, without `..`) that the globs match, sorted, once each.
fn matching(workspace: &Path, globs: &[String]) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    for pattern in globs {
        let Ok(paths) = glob::glob(&workspace.join(pattern).to_string_lossy()) else {
            continue;
        };
        for path in paths.flatten() {
            let Ok(relative) = path.strip_prefix(workspace) else {
                continue;
            };
            if let Some(relative) = relative.to_str() {
                found.insert(relative.to_owned());
            }
        }
    }
    found
        .into_iter()
        .filter(|relative| ArtifactFile::stays_below(relative))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace(files: &[(&str, usize)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, vec![b'x'; *size]).unwrap();
        }
        dir
    }

    fn names(collected: &Collected) -> Vec<&str> {
        collected
            .batches
            .iter()
            .flatten()
            .map(|file| file.path.as_str())
            .collect()
    }

    #[test]
    fn matching_files_come_back_within_the_limit_and_the_rest_is_named() {
        let dir = workspace(&[
            ("coverage/.resultset-2.json", 10),
            ("coverage/.resultset.json", 10),
            ("tmp/screenshots/a/shot.png", 30),
            ("log/test.log", 100),
            ("lib/code.rb", 5),
        ]);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("log/test-link.log")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("coverage/etc")).unwrap();
        let artifacts = Artifacts {
            paths: vec![
                "coverage/.resultset*.json".into(),
                "tmp/screenshots/**/*".into(),
                "log/test*.log".into(),
                "coverage/*.json".into(),
                "coverage/etc/*".into(),
            ],
            limit_bytes: 60,
        };
        let collected = collect(dir.path(), &artifacts);
        assert_eq!(
            names(&collected),
            [
                "coverage/.resultset-2.json",
                "coverage/.resultset.json",
                "tmp/screenshots/a/shot.png"
            ]
        );
        assert_eq!(
            collected.left_out,
            ["log/test.log (100 bytes: past the limit)"]
        );
        let first = &collected.batches[0][0];
        assert_eq!(first.bytes().unwrap(), vec![b'x'; 10]);
    }

    #[test]
    fn large_artifacts_are_sent_in_several_messages() {
        let size = (BATCH_BYTES / 2 + 1) as usize;
        let dir = workspace(&[("a.bin", size), ("b.bin", size), ("c.bin", 1)]);
        let artifacts = Artifacts {
            paths: vec!["*.bin".into()],
            limit_bytes: u64::MAX,
        };
        let collected = collect(dir.path(), &artifacts);
        let sizes: Vec<usize> = collected.batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 2]);
        assert!(collected.left_out.is_empty());
    }
}
