//! The impact map: per test file, the project's code it ran in the last recording run
//! (`docs/impact.md`). Read before a selecting run, written after a recording run, merged
//! with what it held as the runtime file is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gorgon_protocol::impact::{self, FileImpact, Scope};
use serde::{Deserialize, Serialize};

/// The version of the map's format; a map of another version is not used.
pub const MAP_VERSION: u32 = 1;

/// The map as stored: `{"version":1,"tests":{TEST_FILE:{SOURCE:{"digest":…,"ran":[…]}}}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImpactMap {
    pub version: u32,
    pub tests: BTreeMap<String, FileImpact>,
}

/// The map could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot read the impact map {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the impact map {path} is not a map gorgon wrote: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the impact map {path} has version {found}, not {MAP_VERSION}: record it again with --record-impact")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write the impact map {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImpactMap {
    /// The map at `path`; `None` when there is no file there.
    pub fn read(path: &Path) -> Result<Option<ImpactMap>, MapError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MapError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let map: ImpactMap = serde_json::from_str(&text).map_err(|source| MapError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if map.version != MAP_VERSION {
            return Err(MapError::Version {
                path: path.to_owned(),
                found: map.version,
            });
        }
        Ok(Some(map))
    }

    /// Replaces what the map held for each test file of `recorded` (a fresh recording of a
    /// file says all it depends on now) and drops the test files that no longer exist.
    pub fn update(
        &mut self,
        recorded: BTreeMap<String, FileImpact>,
        exists: impl Fn(&str) -> bool,
    ) {
        self.version = MAP_VERSION;
        self.tests.extend(recorded);
        self.tests.retain(|file, _| exists(file));
    }

    /// Writes the map (through a temporary file, so that a reader never sees half of it).
    pub fn write(&self, path: &Path) -> Result<(), MapError> {
        let error = |source| MapError::Write {
            path: path.to_owned(),
            source,
        };
        let text = serde_json::to_string(self).expect("a map always serializes");
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        let folder = folder.unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(folder).map_err(error)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(error)?;
        file.persist(path).map_err(|e| error(e.error))?;
        Ok(())
    }

    /// For each source file, what the map knows of it: its recorded digests and, per test
    /// file that ran it, the scopes it ran.
    pub fn sources(&self) -> BTreeMap<&str, SourceIndex<'_>> {
        let mut sources: BTreeMap<&str, SourceIndex<'_>> = BTreeMap::new();
        for (test, impact) in &self.tests {
            for (source, used) in impact {
                let index = sources.entry(source.as_str()).or_default();
                index.digests.insert(used.digest.as_str());
                index.users.insert(test.as_str(), &used.ran);
                index.scopes.extend(used.ran.iter().copied());
            }
        }
        sources
    }
}

/// One source file of the map, across every test file that ran it.
#[derive(Debug, Default)]
pub struct SourceIndex<'a> {
    pub digests: BTreeSet<&'a str>,
    /// Every scope any test file ran.
    pub scopes: BTreeSet<Scope>,
    pub users: BTreeMap<&'a str, &'a Vec<Scope>>,
}

/// What one run recorded, per test file, merged as the results come (a file that ran more
/// than once, or in split parts, gets the union).
#[derive(Debug, Default)]
pub struct Recording(pub BTreeMap<String, FileImpact>);

impl Recording {
    /// Adds what `unit` (a file or a test id of one) ran.
    pub fn add(&mut self, unit: &str, ran: FileImpact) {
        let file = gorgon_protocol::job::unit_file(unit).unwrap_or(unit);
        impact::merge(self.0.entry(file.to_owned()).or_default(), ran);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gorgon_protocol::SourceUse;

    fn ran(source: &str, digest: &str, scopes: &[Scope]) -> FileImpact {
        let used = SourceUse {
            digest: digest.into(),
            ran: scopes.to_vec(),
        };
        [(source.to_owned(), used)].into_iter().collect()
    }

    #[test]
    fn a_map_round_trips_through_its_file_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("impact.json");
        assert!(ImpactMap::read(&path).unwrap().is_none());
        let mut map = ImpactMap::default();
        let recorded = [("t/a.py".to_owned(), ran("lib/x.py", "d1", &[[1, 1, 9]]))];
        map.update(recorded.into_iter().collect(), |_| true);
        map.write(&path).unwrap();
        assert_eq!(ImpactMap::read(&path).unwrap(), Some(map));
    }

    #[test]
    fn a_map_of_another_version_or_not_json_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("impact.json");
        std::fs::write(&path, r#"{"version":7,"tests":{}}"#).unwrap();
        let error = ImpactMap::read(&path).unwrap_err().to_string();
        assert!(error.contains("has version 7, not 1"), "{error}");
        std::fs::write(&path, "nonsense").unwrap();
        let error = ImpactMap::read(&path).unwrap_err().to_string();
        assert!(error.contains("is not a map gorgon wrote"), "{error}");
    }

    #[test]
    fn an_update_replaces_recorded_files_keeps_others_and_drops_deleted_ones() {
        let mut map = ImpactMap::default();
        let first = [
            ("t/a.py".to_owned(), ran("lib/x.py", "d1", &[[1, 1, 9]])),
            ("t/b.py".to_owned(), ran("lib/y.py", "d2", &[[1, 1, 5]])),
            ("t/gone.py".to_owned(), ran("lib/y.py", "d2", &[[1, 1, 5]])),
        ];
        map.update(first.into_iter().collect(), |_| true);
        let second = [("t/a.py".to_owned(), ran("lib/z.py", "d3", &[[1, 1, 2]]))];
        map.update(second.into_iter().collect(), |file| file != "t/gone.py");
        assert_eq!(map.tests.len(), 2);
        assert_eq!(map.tests["t/a.py"], ran("lib/z.py", "d3", &[[1, 1, 2]]));
        assert_eq!(map.tests["t/b.py"], ran("lib/y.py", "d2", &[[1, 1, 5]]));
    }

    #[test]
    fn a_recording_unites_the_parts_of_a_split_file() {
        let mut recording = Recording::default();
        recording.add("t/a.py::test_one", ran("lib/x.py", "d", &[[3, 4, 5]]));
        recording.add("t/a.py::test_two", ran("lib/x.py", "d", &[[7, 8, 9]]));
        assert_eq!(
            recording.0["t/a.py"]["lib/x.py"].ran,
            vec![[3, 4, 5], [7, 8, 9]]
        );
    }
}
