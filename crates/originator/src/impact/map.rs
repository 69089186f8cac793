//! The impact map: per test file, the project's code it ran in the last recording run,
//! and per source file every scope the recorders know of it (`docs/impact.md`). Read
//! before a selecting run, written after a recording run, merged with what it held as the
//! runtime file is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gorgon_protocol::impact::{self, FileImpact, Scope};
use serde::{Deserialize, Serialize};

/// The version of the map's format; a map of another version is not used.
pub const MAP_VERSION: u32 = 1;

/// The map as stored: `{"version":1,"tests":{TEST_FILE:{SOURCE:{"digest":…,"ran":[…]}}},
/// "known":{SOURCE:{"digest":…,"scopes":[…]}}}`. A map written before `known` existed has
/// none, and selects as it always did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImpactMap {
    pub version: u32,
    pub tests: BTreeMap<String, FileImpact>,
    /// Per source file, every scope the recorders know of it, run or not.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub known: BTreeMap<String, KnownScopes>,
}

/// The scopes of one source file that the recorders know (every function or method, run
/// or not), as of the content with the git blob id `digest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownScopes {
    pub digest: String,
    pub scopes: Vec<Scope>,
}

/// Adds the known scopes `more` of `source` to `into`: united with those of the same
/// content, replacing those of another.
fn add_known(into: &mut BTreeMap<String, KnownScopes>, source: String, more: KnownScopes) {
    match into.get_mut(&source) {
        Some(held) if held.digest == more.digest => impact::unite(&mut held.scopes, more.scopes),
        _ => {
            into.insert(source, more);
        }
    }
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
    /// file says all it depends on now), adds the scopes it learned of each source, and
    /// drops the files that no longer exist.
    pub fn update(&mut self, recorded: Recording, exists: impl Fn(&str) -> bool) {
        self.version = MAP_VERSION;
        self.tests.extend(recorded.tests);
        for (source, known) in recorded.known {
            add_known(&mut self.known, source, known);
        }
        self.tests.retain(|file, _| exists(file));
        self.known.retain(|file, _| exists(file));
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
                let index = sources
                    .entry(source.as_str())
                    .or_insert_with(|| SourceIndex {
                        known: self.known.get(source),
                        ..SourceIndex::default()
                    });
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
    /// Every scope the recorders know of the file, run or not (none in an older map).
    pub known: Option<&'a KnownScopes>,
}

/// What one run recorded, merged as the results come: per test file what it ran (a file
/// that ran more than once, or in split parts, gets the union), and per source file the
/// scopes the recorders know of it.
#[derive(Debug, Default)]
pub struct Recording {
    pub tests: BTreeMap<String, FileImpact>,
    pub known: BTreeMap<String, KnownScopes>,
}

impl Recording {
    /// Adds what `unit` (a file or a test id of one) ran; the known scopes it brings go to
    /// their source, once.
    pub fn add(&mut self, unit: &str, mut ran: FileImpact) {
        for (source, used) in &mut ran {
            let scopes = std::mem::take(&mut used.known);
            if !scopes.is_empty() {
                let digest = used.digest.clone();
                add_known(
                    &mut self.known,
                    source.clone(),
                    KnownScopes { digest, scopes },
                );
            }
        }
        let file = gorgon_protocol::job::unit_file(unit).unwrap_or(unit);
        impact::merge(self.tests.entry(file.to_owned()).or_default(), ran);
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
            known: Vec::new(),
        };
        [(source.to_owned(), used)].into_iter().collect()
    }

    /// A recording of `tests`, each with what it ran.
    fn recording<const N: usize>(tests: [(&str, FileImpact); N]) -> Recording {
        let mut recording = Recording::default();
        for (test, ran) in tests {
            recording.add(test, ran);
        }
        recording
    }

    fn known(digest: &str, scopes: &[Scope]) -> KnownScopes {
        KnownScopes {
            digest: digest.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn a_map_round_trips_through_its_file_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("impact.json");
        assert!(ImpactMap::read(&path).unwrap().is_none());
        let mut map = ImpactMap::default();
        let mut told = ran("lib/x.py", "d1", &[[1, 1, 9]]);
        told.get_mut("lib/x.py").unwrap().known = vec![[2, 3, 4]];
        map.update(recording([("t/a.py", told)]), |_| true);
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
            ("t/a.py", ran("lib/x.py", "d1", &[[1, 1, 9]])),
            ("t/b.py", ran("lib/y.py", "d2", &[[1, 1, 5]])),
            ("t/gone.py", ran("lib/y.py", "d2", &[[1, 1, 5]])),
        ];
        map.update(recording(first), |_| true);
        let second = [("t/a.py", ran("lib/z.py", "d3", &[[1, 1, 2]]))];
        map.update(recording(second), |file| file != "t/gone.py");
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
            recording.tests["t/a.py"]["lib/x.py"].ran,
            vec![[3, 4, 5], [7, 8, 9]]
        );
    }

    /// `ran(…)` of `source` at `digest` telling `known` scopes.
    fn telling(source: &str, digest: &str, known: &[Scope]) -> FileImpact {
        let mut told = ran(source, digest, &[[1, 1, 20]]);
        told.get_mut(source).unwrap().known = known.to_vec();
        told
    }

    #[test]
    fn known_scopes_are_kept_once_per_source_united_per_content_and_replaced_by_a_new_one() {
        // Two workers tell the scopes of `lib/x.py`, each those it learned.
        let mut map = ImpactMap::default();
        let first = [
            ("t/a.py", telling("lib/x.py", "d1", &[[2, 3, 4], [6, 7, 9]])),
            (
                "t/b.py",
                telling("lib/x.py", "d1", &[[6, 7, 9], [11, 12, 12]]),
            ),
            ("t/c.py", telling("lib/gone.py", "d9", &[[2, 3, 3]])),
        ];
        map.update(recording(first), |_| true);
        assert!(map
            .tests
            .values()
            .flat_map(|t| t.values())
            .all(|u| u.known.is_empty()));
        assert_eq!(
            map.known["lib/x.py"],
            known("d1", &[[2, 3, 4], [6, 7, 9], [11, 12, 12]])
        );
        // The next recording adds to the same content, replaces another, drops a deleted
        // source.
        map.update(
            recording([("t/a.py", telling("lib/x.py", "d1", &[[14, 15, 16]]))]),
            |_| true,
        );
        assert_eq!(map.known["lib/x.py"].scopes.len(), 4);
        let newer = [("t/a.py", telling("lib/x.py", "d2", &[[3, 4, 5]]))];
        map.update(recording(newer), |file| file != "lib/gone.py");
        assert_eq!(map.known["lib/x.py"], known("d2", &[[3, 4, 5]]));
        assert!(!map.known.contains_key("lib/gone.py"));
    }

    #[test]
    fn a_map_written_before_known_scopes_reads_and_writes_as_it_was() {
        let old =
            r#"{"version":1,"tests":{"t/a.py":{"lib/x.py":{"digest":"d1","ran":[[1,1,9]]}}}}"#;
        let map: ImpactMap = serde_json::from_str(old).unwrap();
        assert!(map.known.is_empty());
        assert_eq!(map.sources()["lib/x.py"].known, None);
        assert_eq!(serde_json::to_string(&map).unwrap(), old);
    }
}
