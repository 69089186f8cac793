//! `gorgon start --failed`: the files of the previous run's `failed_files` list that still
//! exist, to run again.

use std::path::{Path, PathBuf};

/// The failed files list could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    #[error("cannot read the failed files list {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the failed files list {path} is not a JSON array of file names (or of {{\"file\", \"phase\"}} objects): {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What the previous run left to re-run.
#[derive(Debug, PartialEq, Eq)]
pub enum Rerun {
    /// No list was written yet.
    NoList,
    /// The files to run again, and those listed that no longer exist (skipped).
    Files {
        files: Vec<String>,
        gone: Vec<String>,
    },
}

/// One entry of the list: a file name, or, from a run with phases, the file and its phase
/// (which `--failed` finds again from the phases' globs).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Listed {
    File(String),
    InPhase {
        file: String,
        #[allow(dead_code)]
        phase: Option<String>,
    },
}

/// Reads `list` (the `failed_files` JSON array) and keeps the files that still exist under
/// `root`, each once, in the list's order.
pub fn select(list: &Path, root: &Path) -> Result<Rerun, RerunError> {
    let text = match std::fs::read_to_string(list) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Rerun::NoList),
        Err(source) => {
            return Err(RerunError::Read {
                path: list.to_owned(),
                source,
            })
        }
    };
    let listed: Vec<Listed> = serde_json::from_str(&text).map_err(|source| RerunError::Parse {
        path: list.to_owned(),
        source,
    })?;
    let listed = listed.into_iter().map(|entry| match entry {
        Listed::File(file) | Listed::InPhase { file, .. } => file,
    });
    let mut files = Vec::new();
    let mut gone = Vec::new();
    for file in listed {
        if files.contains(&file) || gone.contains(&file) {
            continue;
        }
        // The list holds paths relative to the project root; anything else is not ours.
        let inside = Path::new(&file).is_relative()
            && !Path::new(&file)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        // A test of a split file (`spec/a_spec.rb:12`) stands for its file.
        let path = crate::files::unit_file(&file).unwrap_or(&file);
        if inside && root.join(path).is_file() {
            files.push(file);
        } else {
            gone.push(file);
        }
    }
    Ok(Rerun::Files { files, gone })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_files_are_kept_in_order_and_gone_ones_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/b_test.sh"), "").unwrap();
        std::fs::write(dir.path().join("t/a_test.sh"), "").unwrap();
        std::fs::write(dir.path().join("outside.sh"), "").unwrap();
        let list = dir.path().join("failed.json");
        std::fs::write(
            &list,
            r#"["t/b_test.sh", "t/gone_test.sh", "t/a_test.sh:12", "t/b_test.sh", "../outside.sh", "t/gone_test.sh:3"]"#,
        )
        .unwrap();
        assert_eq!(
            select(&list, dir.path()).unwrap(),
            Rerun::Files {
                files: vec!["t/b_test.sh".into(), "t/a_test.sh:12".into()],
                gone: vec![
                    "t/gone_test.sh".into(),
                    "../outside.sh".into(),
                    "t/gone_test.sh:3".into()
                ],
            }
        );
    }

    #[test]
    fn a_missing_list_and_a_broken_one_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("failed.json");
        assert_eq!(select(&list, dir.path()).unwrap(), Rerun::NoList);
        std::fs::write(&list, r#"{"a": 1}"#).unwrap();
        let message = select(&list, dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("failed.json is not a JSON array of file names"),
            "{message}"
        );
    }
}
