//! `job.artifacts`: the files of a job's workspace that go back to its originator at the end
//! of this host's part (coverage data, screenshots, logs), up to the job's limit per host;
//! what the limit keeps back is named. The files are planned by their sizes first, then read
//! one message's worth at a time ([`BATCH_BYTES`], a file larger than that in pieces), so
//! that a host holds at most one message of them, whatever their total. Only regular files
//! inside the workspace are sent: a link is not followed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use gorgon_protocol::{ArtifactFile, Artifacts};

/// At most this many bytes of files in one message (4/3 of it in base64, under the
/// protocol's 16 MiB).
pub const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes of one file to send in a message: the whole file, or a piece of a larger one.
#[derive(Debug, PartialEq)]
pub struct Piece {
    relative: String,
    offset: u64,
    len: u64,
}

/// What a workspace has to send back, before anything is read.
#[derive(Debug, Default)]
pub struct Plan {
    /// Each message's pieces, at most [`BATCH_BYTES`] of them together.
    pub batches: Vec<Vec<Piece>>,
    /// Files the limit kept back, each with why.
    pub left_out: Vec<String>,
}

/// The files of `workspace` that `artifacts` names, in path order, within its limit, in
/// messages' worth.
pub fn plan(workspace: &Path, artifacts: &Artifacts) -> Plan {
    let mut plan = Plan::default();
    let Ok(root) = workspace.canonicalize() else {
        return plan;
    };
    let (mut batch, mut batch_bytes, mut total) = (Vec::new(), 0u64, 0u64);
    for relative in matching(workspace, &artifacts.paths) {
        let Some(size) = size_inside(&root, &workspace.join(&relative)) else {
            continue;
        };
        if total + size > artifacts.limit_bytes {
            plan.left_out.push(format!(
                "{relative} ({size} bytes: past job.artifacts.limit_mb)"
            ));
            continue;
        }
        total += size;
        // A file that fits in one message is never cut: it starts the next one if need be.
        if size <= BATCH_BYTES && batch_bytes + size > BATCH_BYTES {
            plan.batches.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        let mut offset = 0;
        loop {
            if batch_bytes == BATCH_BYTES {
                plan.batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            let len = (size - offset).min(BATCH_BYTES - batch_bytes);
            batch.push(Piece {
                relative: relative.clone(),
                offset,
                len,
            });
            batch_bytes += len;
            offset += len;
            if offset == size {
                break;
            }
        }
    }
    if !batch.is_empty() {
        plan.batches.push(batch);
    }
    plan
}

/// Reads one message's pieces; the files that could not be read as planned, each with why.
pub fn read(workspace: &Path, batch: &[Piece]) -> (Vec<ArtifactFile>, Vec<String>) {
    let mut files = Vec::with_capacity(batch.len());
    let mut problems = Vec::new();
    let root = workspace.canonicalize();
    for piece in batch {
        let bytes = match &root {
            Ok(root) => read_piece(root, &workspace.join(&piece.relative), piece),
            Err(_) => Err("the workspace is gone"),
        };
        match bytes {
            Ok(bytes) => files.push(ArtifactFile::piece(
                piece.relative.clone(),
                piece.offset,
                &bytes,
            )),
            Err(why) => problems.push(format!("{} ({why})", piece.relative)),
        }
    }
    (files, problems)
}

/// The piece's bytes, once `path` is checked again to be a regular file inside `root`.
fn read_piece(root: &Path, path: &Path, piece: &Piece) -> Result<Vec<u8>, &'static str> {
    size_inside(root, path).ok_or("no longer a regular file in the workspace")?;
    let mut file = std::fs::File::open(path).map_err(|_| "unreadable")?;
    let mut bytes = Vec::with_capacity(piece.len as usize);
    file.seek(SeekFrom::Start(piece.offset))
        .and_then(|_| file.take(piece.len).read_to_end(&mut bytes))
        .map_err(|_| "unreadable")?;
    if bytes.len() as u64 != piece.len {
        return Err("it changed while it was sent");
    }
    Ok(bytes)
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

    /// Reads every batch of `plan` as the listener sends them.
    fn read_all(dir: &Path, plan: &Plan) -> Vec<Vec<ArtifactFile>> {
        plan.batches
            .iter()
            .map(|batch| {
                let (files, problems) = read(dir, batch);
                assert!(problems.is_empty(), "{problems:?}");
                files
            })
            .collect()
    }

    fn names(batches: &[Vec<ArtifactFile>]) -> Vec<&str> {
        batches
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
        let plan = plan(dir.path(), &artifacts);
        let batches = read_all(dir.path(), &plan);
        assert_eq!(
            names(&batches),
            [
                "coverage/.resultset-2.json",
                "coverage/.resultset.json",
                "tmp/screenshots/a/shot.png"
            ]
        );
        assert_eq!(
            plan.left_out,
            ["log/test.log (100 bytes: past job.artifacts.limit_mb)"]
        );
        assert_eq!(batches[0][0].bytes().unwrap(), vec![b'x'; 10]);
    }

    #[test]
    fn files_go_in_messages_of_at_most_the_batch_and_a_larger_one_in_pieces() {
        let half = (BATCH_BYTES / 2 + 1) as usize;
        let large = (2 * BATCH_BYTES + 7) as usize;
        let dir = workspace(&[
            ("a.bin", half),
            ("b.bin", half),
            ("c.bin", 1),
            ("d.bin", large),
        ]);
        std::fs::write(
            dir.path().join("d.bin"),
            (0..large).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        )
        .unwrap();
        let artifacts = Artifacts {
            paths: vec!["*.bin".into()],
            limit_bytes: u64::MAX,
        };
        let plan = plan(dir.path(), &artifacts);
        assert!(plan.left_out.is_empty());
        for batch in &plan.batches {
            let bytes: u64 = batch.iter().map(|piece| piece.len).sum();
            assert!(bytes <= BATCH_BYTES, "a message of {bytes} bytes");
        }
        let batches = read_all(dir.path(), &plan);
        // b.bin starts a message of its own rather than being cut; d.bin fills what is left
        // of it and goes on in pieces.
        let shapes: Vec<Vec<(&str, u64)>> = batches
            .iter()
            .map(|batch| {
                batch
                    .iter()
                    .map(|f| (f.path.as_str(), f.offset()))
                    .collect()
            })
            .collect();
        let rest = BATCH_BYTES - half as u64 - 1;
        assert_eq!(
            shapes,
            [
                vec![("a.bin", 0)],
                vec![("b.bin", 0), ("c.bin", 0), ("d.bin", 0)],
                vec![("d.bin", rest)],
                vec![("d.bin", rest + BATCH_BYTES)],
            ]
        );
        let whole: Vec<u8> = batches
            .iter()
            .flatten()
            .filter(|file| file.path == "d.bin")
            .flat_map(|file| file.bytes().unwrap())
            .collect();
        assert_eq!(whole, std::fs::read(dir.path().join("d.bin")).unwrap());
    }

    #[test]
    fn a_file_that_changed_since_the_plan_is_named_not_sent_short() {
        let dir = workspace(&[("a.log", 10), ("b.log", 10)]);
        let artifacts = Artifacts {
            paths: vec!["*.log".into()],
            limit_bytes: 100,
        };
        let plan = plan(dir.path(), &artifacts);
        std::fs::write(dir.path().join("a.log"), b"short").unwrap();
        std::fs::remove_file(dir.path().join("b.log")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("b.log")).unwrap();
        let (files, problems) = read(dir.path(), &plan.batches[0]);
        assert!(files.is_empty(), "{files:?}");
        assert_eq!(
            problems,
            [
                "a.log (it changed while it was sent)",
                "b.log (no longer a regular file in the workspace)"
            ]
        );
    }
}
