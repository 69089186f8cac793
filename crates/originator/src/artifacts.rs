//! `job.artifacts` on the originator's side: the files each listener sends back at the end
//! of its part are written under `artifacts_folder/HOST/`, each path checked to stay below
//! it, and the folder of a host emptied before the run's first files from it, so that it
//! holds this run's files only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gorgon_protocol::ArtifactFile;

/// Where a run's artifacts go.
#[derive(Debug)]
pub(crate) struct ArtifactsFolder {
    root: PathBuf,
    /// The hosts whose folder this run has emptied.
    cleared: HashSet<String>,
}

impl ArtifactsFolder {
    pub(crate) fn new(root: PathBuf) -> ArtifactsFolder {
        ArtifactsFolder {
            root,
            cleared: HashSet::new(),
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
            match write_one(&folder, file) {
                Ok(()) => written += 1,
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

/// Writes one file below `folder`; a path that would leave it, or a content that is not
/// base64, is refused and named.
fn write_one(folder: &Path, file: &ArtifactFile) -> Result<(), String> {
    let relative = file
        .relative_path()
        .ok_or_else(|| format!("{} (a path that leaves the folder)", file.path))?;
    let bytes = file
        .bytes()
        .ok_or_else(|| format!("{} (not base64)", file.path))?;
    let path = folder.join(relative);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, bytes));
    written.map_err(|error| format!("{} ({error})", file.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_under_the_host_and_nothing_leaves_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut folder = ArtifactsFolder::new(dir.path().join("artifacts"));
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
        // A second message of the same host adds to the folder.
        folder.keep("h1", &[ArtifactFile::new("b.txt".into(), b"b")], &[]);
        assert!(dir
            .path()
            .join("artifacts/h1/coverage/.coverage.2")
            .exists());
        assert_eq!(folder_name("../x"), "_.._x");
        assert_eq!(folder_name("a/b"), "a_b");
    }
}
