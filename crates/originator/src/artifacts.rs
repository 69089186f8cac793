//! `job.artifacts` on the originator's side: the files each listener sends back at the end
//! of its part are written under `artifacts_folder/HOST/`, each path checked to stay below
//! it, and the folder of a host emptied before the run's first files from it, so that it
//! holds this run's files only. The limit per host holds here too: a host that sends more
//! than it should fills nobody's disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use gorgon_protocol::ArtifactFile;

/// Where a run's artifacts go.
#[derive(Debug)]
pub(crate) struct ArtifactsFolder {
    root: PathBuf,
    /// `job.artifacts.limit_mb`, in bytes.
    limit_bytes: u64,
    /// The hosts whose folder this run has emptied.
    cleared: HashSet<String>,
    /// How many bytes each host's files have taken.
    written: HashMap<String, u64>,
}

impl ArtifactsFolder {
    pub(crate) fn new(root: PathBuf, limit_bytes: u64) -> ArtifactsFolder {
        ArtifactsFolder {
            root,
            limit_bytes,
            cleared: HashSet::new(),
            written: HashMap::new(),
        }
    }

    /// Writes the `files` that `host` sent; the line that tells the user what came and what
    /// the limit kept back.
    pub(crate) fn keep(
        &mut self,
        host: &str,
        files: &[ArtifactFile],
        left_out: &[String],
    ) -> String {
        let folder = self.root.join(folder_name(host));
        if self.cleared.insert(host.to_owned()) {
            let _ = std::fs::remove_dir_all(&folder);
        }
        let mut written = 0;
        let mut problems = Vec::new();
        for file in files {
            let taken = self.written.entry(host.to_owned()).or_default();
            match write_one(
                &folder,
                file,
                self.limit_bytes - (*taken).min(self.limit_bytes),
            ) {
                Ok(size) => {
                    *taken += size;
                    written += 1;
                }
                Err(problem) => problems.push(problem),
            }
        }
        let mut line = format!(
            "Artifacts from {host}: {written} file(s) in {}",
            folder.display()
        );
        if !left_out.is_empty() {
            line.push_str(&format!(
                "; left out by job.artifacts.limit_mb or the message size: {}",
                left_out.join(", ")
            ));
        }
        if !problems.is_empty() {
            line.push_str(&format!("; not written: {}", problems.join(", ")));
        }
        line
    }
}

/// A host's name as one folder name (a name with `/` or a leading `.` cannot climb out).
fn folder_name(host: &str) -> String {
    let name: String = host
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

/// Writes one file below `folder`, if it fits in `room` bytes; its size. A path that would
/// leave the folder, a content that is not base64 or one past the limit is refused and named.
fn write_one(folder: &Path, file: &ArtifactFile, room: u64) -> Result<u64, String> {
    let relative = file
        .relative_path()
        .ok_or_else(|| format!("{} (a path that leaves the folder)", file.path))?;
    let bytes = file
        .bytes()
        .ok_or_else(|| format!("{} (not base64)", file.path))?;
    let size = bytes.len() as u64;
    if size > room {
        return Err(format!("{} ({size} bytes: past the limit)", file.path));
    }
    let path = folder.join(relative);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, bytes));
    written
        .map(|()| size)
        .map_err(|error| format!("{} ({error})", file.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_under_the_host_and_nothing_leaves_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut folder = ArtifactsFolder::new(dir.path().join("artifacts"), 5);
        let stale = dir.path().join("artifacts/h1/old.txt");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, "from a run before").unwrap();
        let files = [
            ArtifactFile::new("coverage/.coverage.2".into(), b"data"),
            ArtifactFile::new("../escape.txt".into(), b"x"),
            ArtifactFile::new("/etc/evil".into(), b"x"),
        ];
        let line = folder.keep(
            "h1",
            &files,
            &["log/test.log (9 bytes: past the limit)".into()],
        );
        assert_eq!(
            std::fs::read(dir.path().join("artifacts/h1/coverage/.coverage.2")).unwrap(),
            b"data"
        );
        assert!(
            !stale.exists(),
            "the folder still holds a run before's files"
        );
        assert!(!dir.path().join("escape.txt").exists());
        assert!(line.contains("Artifacts from h1: 1 file(s)"), "{line}");
        assert!(
            line.contains("log/test.log (9 bytes: past the limit)"),
            "{line}"
        );
        assert!(
            line.contains("../escape.txt (a path that leaves the folder)"),
            "{line}"
        );
        assert!(
            line.contains("/etc/evil (a path that leaves the folder)"),
            "{line}"
        );
        // A second message of the same host adds to the folder, within the host's limit
        // (5 bytes: 4 taken).
        folder.keep("h1", &[ArtifactFile::new("b.txt".into(), b"b")], &[]);
        let kept = dir.path().join("artifacts/h1");
        assert!(kept.join("coverage/.coverage.2").exists());
        assert!(kept.join("b.txt").exists());
        let line = folder.keep("h1", &[ArtifactFile::new("c.txt".into(), b"c")], &[]);
        assert!(line.contains("c.txt (1 bytes: past the limit)"), "{line}");
        assert!(!kept.join("c.txt").exists());
        assert_eq!(folder_name("../x"), "_.._x");
        assert_eq!(folder_name("a/b"), "a_b");
    }
}
