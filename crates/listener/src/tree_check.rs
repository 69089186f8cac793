//! Checking a pulled workspace against the job's tree manifest before anything of the job
//! runs: the manifest pulled beside the tree must be the one whose digest the originator
//! put in the (signed) job, and the workspace must hold exactly what it lists, so that
//! whoever can write to the file server cannot change the code a listener runs
//! (docs/security.md). Only files rsync changed are read: the others' digests come from the
//! workspace's digest cache.

use std::path::{Path, PathBuf};

use gorgon_exec::tree::{self, Difference, DigestCache, Manifest, TreeError, MANIFEST_NAME};
use gorgon_protocol::TreeSeal;

/// Why a pulled tree is refused.
#[derive(Debug, thiserror::Error)]
pub enum TreeRefusal {
    #[error("the job carries no digest of its tree, and this listener checks the tree of every signed job; is its originator older than this listener?")]
    Unsealed,
    #[error("the tree's manifest on the file server is not the one the originator signed (it lists another tree)")]
    ManifestChanged,
    #[error("cannot check the pulled tree: {0}")]
    Unreadable(#[from] TreeError),
    #[error("the pulled tree is not the one the originator pushed: {}; nothing of it ran", tree::listed(.0))]
    Differs(Vec<Difference>),
}

/// Where the digests of a workspace's files are kept between jobs: beside it.
pub fn digests_of(workspace: &Path) -> PathBuf {
    workspace.with_extension("digests")
}

/// True when `workspace` already holds exactly the tree of `seal` (a warm workspace whose
/// last job had the same tree, and nothing changed in it since): its manifest has the
/// seal's digest and the workspace passes [`check`], so the pull can be skipped, a dozen
/// round trips to a far file server. A job without a seal always pulls.
pub fn already_holds(workspace: &Path, seal: Option<&TreeSeal>) -> bool {
    // `check` compares the manifest's digest first, and scans nothing when it differs.
    seal.is_some_and(|seal| check(workspace, Some(seal), true).is_ok())
}

/// Checks the tree pulled into `workspace` against `seal`; without a seal, the check is
/// skipped unless `required` (a listener with signing keys).
pub fn check(workspace: &Path, seal: Option<&TreeSeal>, required: bool) -> Result<(), TreeRefusal> {
    let Some(seal) = seal else {
        return if required {
            Err(TreeRefusal::Unsealed)
        } else {
            Ok(())
        };
    };
    let manifest_path = workspace.join(MANIFEST_NAME);
    let bytes = std::fs::read(&manifest_path).map_err(|source| TreeError::Read {
        path: manifest_path,
        source,
    })?;
    if tree::digest_hex(&bytes) != seal.digest {
        return Err(TreeRefusal::ManifestChanged);
    }
    let mut cache = DigestCache::load(digests_of(workspace));
    let mut pulled = tree::scan(workspace, &[], &mut cache)?;
    pulled.manifest.entries.remove(MANIFEST_NAME.as_bytes());
    // The same tree writes the same bytes: only when they differ is the manifest read, to
    // say how (an originator of another version may write the same tree otherwise).
    if pulled.manifest.to_bytes() != bytes {
        let differences = Manifest::from_bytes(&bytes)?.differences(&pulled.manifest);
        if !differences.is_empty() {
            return Err(TreeRefusal::Differs(differences));
        }
    }
    if let Err(error) = cache.save() {
        tracing::warn!(%error, workspace = %workspace.display(), "cannot keep the workspace's digests");
    }
    tracing::debug!(
        entries = pulled.manifest.entries.len(),
        hashed = pulled.hashed,
        "the pulled tree is the one pushed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace holding `files` and the manifest of `pushed`; the seal of that manifest.
    fn workspace_with(
        files: &[(&str, &str)],
        pushed: &[(&str, &str)],
    ) -> (tempfile::TempDir, TreeSeal) {
        let root = tempfile::tempdir().unwrap();
        let workspace = root.path().join("0");
        let project = root.path().join("project");
        for (dir, list) in [(&workspace, files), (&project, pushed)] {
            for (name, text) in list {
                let path = dir.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
        }
        let manifest = tree::scan(&project, &[], &mut DigestCache::in_memory())
            .unwrap()
            .manifest;
        let bytes = manifest.to_bytes();
        std::fs::write(workspace.join(MANIFEST_NAME), &bytes).unwrap();
        let seal = TreeSeal {
            digest: tree::digest_hex(&bytes),
            entries: manifest.entries.len() as u64,
        };
        (root, seal)
    }

    #[test]
    fn the_pushed_tree_passes_and_any_change_is_named() {
        let pushed = [("tests/a_test.sh", "exit 0"), ("lib/h.sh", "echo")];
        let (root, seal) = workspace_with(&pushed, &pushed);
        let workspace = root.path().join("0");
        // Past the file system's tick of their writes, the files' digests are kept.
        std::thread::sleep(std::time::Duration::from_millis(150));
        check(&workspace, Some(&seal), true).unwrap();
        assert!(digests_of(&workspace).exists());
        std::fs::write(workspace.join("tests/a_test.sh"), "touch /tmp/owned").unwrap();
        std::fs::write(workspace.join("lib/evil.sh"), "x").unwrap();
        std::fs::remove_file(workspace.join("lib/h.sh")).unwrap();
        let error = check(&workspace, Some(&seal), true)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "the pulled tree is not the one the originator pushed: lib/evil.sh (added), lib/h.sh (missing), tests/a_test.sh (changed); nothing of it ran");
    }

    #[test]
    fn only_a_workspace_that_holds_the_sealed_tree_skips_the_pull() {
        let pushed = [("tests/a_test.sh", "exit 0"), ("lib/h.sh", "echo")];
        let (root, seal) = workspace_with(&pushed, &pushed);
        let workspace = root.path().join("0");
        assert!(already_holds(&workspace, Some(&seal)));
        assert!(!already_holds(&workspace, None), "an unsealed job pulls");
        let other = TreeSeal {
            digest: "00".repeat(32),
            ..seal.clone()
        };
        assert!(!already_holds(&workspace, Some(&other)), "another tree");
        // What an earlier job left, or any change since, sends it to the file server.
        std::fs::write(workspace.join("tests/out.log"), "left").unwrap();
        assert!(!already_holds(&workspace, Some(&seal)));
        std::fs::remove_file(workspace.join("tests/out.log")).unwrap();
        assert!(already_holds(&workspace, Some(&seal)));
        std::fs::write(workspace.join("lib/h.sh"), "ECHO").unwrap();
        assert!(!already_holds(&workspace, Some(&seal)));
        let empty = root.path().join("1");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(!already_holds(&empty, Some(&seal)), "a new workspace");
    }

    #[test]
    fn a_manifest_other_than_the_signed_one_or_no_seal_is_refused() {
        let pushed = [("tests/a_test.sh", "exit 0")];
        let (root, seal) = workspace_with(&pushed, &pushed);
        let workspace = root.path().join("0");
        let forged = TreeSeal {
            digest: "00".repeat(32),
            ..seal.clone()
        };
        assert!(matches!(
            check(&workspace, Some(&forged), false),
            Err(TreeRefusal::ManifestChanged)
        ));
        assert!(matches!(
            check(&workspace, None, true),
            Err(TreeRefusal::Unsealed)
        ));
        check(&workspace, None, false).unwrap();
        std::fs::remove_file(workspace.join(MANIFEST_NAME)).unwrap();
        let error = check(&workspace, Some(&seal), false)
            .unwrap_err()
            .to_string();
        assert!(error.contains(".gorgon-rs-tree"), "{error}");
    }
}
