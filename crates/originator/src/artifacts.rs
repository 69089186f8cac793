//! `job.artifacts` on the originator's side: the files each listener sends back at the end
//! of its part are written under `artifacts_folder/HOST/`, each path checked to stay below
//! it, and the folder of a host emptied before the run's first files from it, so that it
//! holds this run's files only. A file larger than one message comes in pieces, each
//! written after the one before. The limit per host holds here too: a host that sends more
//! than it should fills nobody's disk. One line per host tells what came, once its last
//! message has.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
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
    /// What each host's messages have brought so far.
    tally: HashMap<String, Tally>,
}

/// What one host's artifacts have brought so far.
#[derive(Debug, Default)]
struct Tally {
    /// Bytes written.
    bytes: u64,
    /// Files written (a file in pieces counts once, with its first piece).
    files: usize,
    /// What the host left out, and why.
    left_out: Vec<String>,
    /// What could not be written here, and why.
    problems: Vec<String>,
}

impl ArtifactsFolder {
    pub(crate) fn new(root: PathBuf, limit_bytes: u64) -> ArtifactsFolder {
        ArtifactsFolder {
            root,
            limit_bytes,
            cleared: HashSet::new(),
            tally: HashMap::new(),
        }
    }

    /// Writes the `files` that `host` sent; once its last message has come (`more` false),
    /// the line that tells the user what came and what the limit kept back.
    pub(crate) fn keep(
        &mut self,
        host: &str,
        files: &[ArtifactFile],
        left_out: &[String],
        more: bool,
    ) -> Option<String> {
        let folder = self.root.join(folder_name(host));
        if self.cleared.insert(host.to_owned()) {
            let _ = std::fs::remove_dir_all(&folder);
        }
        let tally = self.tally.entry(host.to_owned()).or_default();
        tally.left_out.extend_from_slice(left_out);
        for file in files {
            let room = self.limit_bytes - tally.bytes.min(self.limit_bytes);
            match write_one(&folder, file, room) {
                Ok(size) => {
                    tally.bytes += size;
                    tally.files += usize::from(file.offset() == 0);
                }
                Err(problem) => tally.problems.push(problem),
            }
        }
        if more {
            return None;
        }
        let tally = self.tally.remove(host).unwrap_or_default();
        Some(tally.line(host, &folder))
    }

    /// The line of a host that is done but whose last message of artifacts never came (it
    /// could not send it), if some came.
    pub(crate) fn unfinished(&mut self, host: &str) -> Option<String> {
        let tally = self.tally.remove(host)?;
        let folder = self.root.join(folder_name(host));
        Some(tally.line(host, &folder) + "; its last message of them never came")
    }
}

impl Tally {
    fn line(&self, host: &str, folder: &Path) -> String {
        let mut line = format!(
            "Artifacts from {host}: {} file(s) in {}",
            self.files,
            folder.display()
        );
        if !self.left_out.is_empty() {
            line.push_str(&format!("; left out: {}", self.left_out.join(", ")));
        }
        if !self.problems.is_empty() {
            line.push_str(&format!("; not written: {}", self.problems.join(", ")));
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

/// Writes one file (or a piece of one, after the pieces before it) below `folder`, if it
/// fits in `room` bytes; its size. A path that would leave the folder, a content that is not
/// base64, one past the limit or a piece that does not follow the file's end is refused and
/// named.
fn write_one(folder: &Path, file: &ArtifactFile, room: u64) -> Result<u64, String> {
    let relative = file
        .relative_path()
        .ok_or_else(|| format!("{} (a path that leaves the folder)", file.path))?;
    let bytes = file
        .bytes()
        .ok_or_else(|| format!("{} (not base64)", file.path))?;
    let size = bytes.len() as u64;
    if size > room {
        return Err(format!(
            "{} ({size} bytes: past job.artifacts.limit_mb)",
            file.path
        ));
    }
    let path = folder.join(relative);
    let written = match file.offset() {
        0 => path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, bytes)),
        offset => append_at(&path, offset, &bytes),
    };
    written
        .map(|()| size)
        .map_err(|error| format!("{} ({error})", file.path))
}

/// Adds `bytes` to the file at `path`, which must hold exactly `offset` bytes: the pieces
/// before this one.
fn append_at(path: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let len = file.metadata()?.len();
    if len != offset {
        return Err(std::io::Error::other(format!(
            "a piece at byte {offset} of a file that has {len}"
        )));
    }
    file.write_all(bytes)
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
        let left_out = ["log/test.log (9 bytes: past job.artifacts.limit_mb)".into()];
        // Nothing is told until the host's last message.
        assert_eq!(folder.keep("h1", &files, &left_out, true), None);
        assert_eq!(
            std::fs::read(dir.path().join("artifacts/h1/coverage/.coverage.2")).unwrap(),
            b"data"
        );
        assert!(
            !stale.exists(),
            "the folder still holds a run before's files"
        );
        assert!(!dir.path().join("escape.txt").exists());
        // A second message of the same host adds to the folder, within the host's limit
        // (5 bytes: 4 taken).
        let more = [
            ArtifactFile::new("b.txt".into(), b"b"),
            ArtifactFile::new("c.txt".into(), b"c"),
        ];
        let line = folder.keep("h1", &more, &[], false).unwrap();
        let kept = dir.path().join("artifacts/h1");
        assert!(kept.join("coverage/.coverage.2").exists());
        assert!(kept.join("b.txt").exists());
        assert!(!kept.join("c.txt").exists());
        for said in [
            "Artifacts from h1: 2 file(s)",
            "left out: log/test.log (9 bytes: past job.artifacts.limit_mb)",
            "../escape.txt (a path that leaves the folder)",
            "/etc/evil (a path that leaves the folder)",
            "c.txt (1 bytes: past job.artifacts.limit_mb)",
        ] {
            assert!(line.contains(said), "{said:?} is not in {line}");
        }
        assert_eq!(folder_name("../x"), "_.._x");
        assert_eq!(folder_name("a/b"), "a_b");
    }

    #[test]
    fn a_file_in_pieces_is_written_whole_and_a_piece_out_of_place_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut folder = ArtifactsFolder::new(dir.path().join("artifacts"), 100);
        let first = [ArtifactFile::piece("big.json".into(), 0, b"abc")];
        assert_eq!(folder.keep("h1", &first, &[], true), None);
        let rest = [
            ArtifactFile::piece("big.json".into(), 3, b"def"),
            ArtifactFile::piece("big.json".into(), 9, b"zzz"),
        ];
        let line = folder.keep("h1", &rest, &[], false).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("artifacts/h1/big.json")).unwrap(),
            b"abcdef"
        );
        assert!(line.contains("Artifacts from h1: 1 file(s)"), "{line}");
        assert!(
            line.contains("big.json (a piece at byte 9 of a file that has 6)"),
            "{line}"
        );
        assert_eq!(folder.unfinished("h1"), None, "h1's line was told already");
        folder.keep("h2", &first, &[], true);
        let line = folder.unfinished("h2").unwrap();
        assert!(line.contains("Artifacts from h2: 1 file(s)"), "{line}");
        assert!(
            line.ends_with("its last message of them never came"),
            "{line}"
        );
    }
}
