//! The tree a run pushes, sealed: its manifest (every file with its digest, `gorgon_exec::tree`)
//! written where the push takes it along, its links checked, and its seal (the manifest's
//! digest) for the signed job. The digests of unchanged files come from a cache kept per
//! project in the user's cache folder, so an unchanged tree costs one walk.

use std::path::{Path, PathBuf};

use gorgon_exec::tree::{self, DigestCache, Exclude, ExcludeError, TreeError, MANIFEST_NAME};
use gorgon_protocol::TreeSeal;

use crate::links::LinkError;

/// Why a tree is not pushed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Exclude(#[from] ExcludeError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Links of the tree that lead out of the project.
    #[error(transparent)]
    Links(#[from] LinkError),
    #[error("cannot write the tree's manifest to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A tree ready to push.
#[derive(Debug)]
pub struct SealedTree {
    pub seal: TreeSeal,
    /// The manifest, to push beside the tree (its name is [`MANIFEST_NAME`]).
    pub manifest: PathBuf,
    /// How many files were read for their digests (the others came from the cache).
    pub hashed: usize,
    /// Where the manifest is when the user's cache folder cannot hold it.
    _scratch: Option<tempfile::TempDir>,
}

/// Lists the tree at `root` as `exclude` leaves it, refuses it if a link leads out of it,
/// and writes its manifest, keeping the digests in the user's cache folder.
pub fn seal(root: &Path, exclude: &[String]) -> Result<SealedTree, SealError> {
    seal_with_cache_in(root, exclude, user_cache().as_deref())
}

/// The user's cache folder: `$XDG_CACHE_HOME`, or `~/.cache`.
fn user_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
}

/// [`seal`], with the digests kept under `cache` (if given and writable).
fn seal_with_cache_in(
    root: &Path,
    exclude: &[String],
    cache: Option<&Path>,
) -> Result<SealedTree, SealError> {
    // The push takes the manifest along whatever the patterns say: a file of the project
    // by that name would be pushed twice.
    if std::fs::symlink_metadata(root.join(MANIFEST_NAME)).is_ok() {
        return Err(TreeError::NameTaken.into());
    }
    let exclude = Exclude::all(exclude)?;
    let (folder, scratch) = cache_folder(root, cache);
    let mut cache = DigestCache::load(folder.join("digests"));
    let scanned = tree::scan(root, &exclude, &mut cache)?;
    if let Err(error) = cache.save() {
        tracing::debug!(%error, folder = %folder.display(), "cannot keep the tree's digests");
    }
    // A tree of 100,000 files: its digests' table need not sit beside the manifest's bytes.
    drop(cache);
    crate::links::refuse_outside(root, scanned.manifest.links())?;
    let bytes = scanned.manifest.to_bytes();
    let manifest = folder.join("push").join(MANIFEST_NAME);
    write_if_changed(&manifest, &bytes).map_err(|source| SealError::Write {
        path: manifest.clone(),
        source,
    })?;
    let entries = scanned.manifest.entries.len() as u64;
    Ok(SealedTree {
        seal: TreeSeal {
            digest: tree::digest_hex(&bytes),
            entries,
        },
        manifest,
        hashed: scanned.hashed,
        _scratch: scratch,
    })
}

/// The folder of the project's digests and manifest: in the user's cache folder, or a
/// scratch folder of this run when that cannot be made.
fn cache_folder(root: &Path, base: Option<&Path>) -> (PathBuf, Option<tempfile::TempDir>) {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_owned());
    let key = tree::digest_hex(root.as_os_str().as_encoded_bytes());
    if let Some(base) = base {
        let folder = base.join("gorgon-rs/trees").join(&key[..16]);
        if std::fs::create_dir_all(folder.join("push")).is_ok() {
            return (folder, None);
        }
    }
    let scratch = tempfile::tempdir().expect("the temporary folder is writable");
    let folder = scratch.path().to_owned();
    std::fs::create_dir_all(folder.join("push")).expect("a fresh temporary folder is writable");
    (folder, Some(scratch))
}

/// Writes `bytes` to `path` unless it holds them already: an unchanged manifest keeps its
/// times, so rsync does not send it again.
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if holds(path, bytes).unwrap_or(false) {
        return Ok(());
    }
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, bytes)?;
    std::fs::rename(&fresh, path)
}

/// Whether the file at `path` holds `bytes`, read a piece at a time (a manifest of 100,000
/// files is megabytes that need not be in memory twice).
fn holds(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    if file.metadata()?.len() != bytes.len() as u64 {
        return Ok(false);
    }
    let mut piece = vec![0u8; 64 * 1024];
    let mut rest = bytes;
    loop {
        let read = file.read(&mut piece)?;
        if read == 0 {
            return Ok(rest.is_empty());
        }
        match rest.split_at_checked(read) {
            Some((expected, after)) if expected == &piece[..read] => rest = after,
            _ => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_tree_lists_what_is_pushed_and_its_manifest_is_rewritten_only_when_it_changes() {
        let project = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let seal =
            |root: &Path, exclude: &[String]| seal_with_cache_in(root, exclude, Some(cache.path()));
        std::fs::create_dir_all(project.path().join("tests")).unwrap();
        std::fs::write(project.path().join("tests/a_test.sh"), "exit 0").unwrap();
        std::fs::write(project.path().join("debug.log"), "x").unwrap();
        let exclude = vec!["*.log".to_owned()];
        let first = seal(project.path(), &exclude).unwrap();
        assert_eq!(first.seal.entries, 1);
        assert!(first.manifest.starts_with(cache.path()), "{first:?}");
        let written = std::fs::read(&first.manifest).unwrap();
        assert_eq!(tree::digest_hex(&written), first.seal.digest);
        let modified = std::fs::metadata(&first.manifest)
            .unwrap()
            .modified()
            .unwrap();
        let again = seal(project.path(), &exclude).unwrap();
        assert_eq!(again.seal, first.seal);
        let unchanged = std::fs::metadata(&again.manifest)
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            unchanged, modified,
            "an unchanged manifest was written again"
        );
        std::fs::write(project.path().join("tests/b_test.sh"), "exit 1").unwrap();
        let changed = seal(project.path(), &exclude).unwrap();
        assert_eq!(changed.seal.entries, 2);
        assert_ne!(changed.seal.digest, first.seal.digest);
    }

    #[test]
    fn a_project_file_with_the_manifests_name_and_unmatchable_patterns_are_refused() {
        let project = tempfile::tempdir().unwrap();
        let error = seal(project.path(), &["a**b".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("\"a**b\""), "{error}");
        std::fs::write(project.path().join(MANIFEST_NAME), "mine").unwrap();
        let error = seal(project.path(), &[MANIFEST_NAME.to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("holds a file named .gorgon-rs-tree"),
            "{error}"
        );
    }

    #[test]
    fn a_file_holds_exactly_its_bytes_across_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert!(holds(&path, &bytes).unwrap());
        let mut other = bytes.clone();
        other[150_000] ^= 1;
        assert!(
            !holds(&path, &other).unwrap(),
            "a byte differs past the first piece"
        );
        assert!(!holds(&path, &bytes[..199_999]).unwrap(), "shorter");
        assert!(holds(&dir.path().join("absent"), &bytes).is_err());
    }
}
