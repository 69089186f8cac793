//! What a recording run (`gorgon start --record-impact`) learns of one test file: the
//! project's code it ran, as scopes (a module, a class body, a function) of each source
//! file, with the digest of the source it was recorded from. A built-in runner sends it in
//! its `file_done` answer and the worker passes it on in the file's result; the originator
//! folds every file's into the impact map (`docs/impact.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The environment variable that asks a built-in runner to record: `1`.
pub const RECORD_ENV: &str = "GORGON_IMPACT_RECORD";

/// Per source file (relative to the workspace), what one test file ran of it.
pub type FileImpact = BTreeMap<String, SourceUse>;

/// The scopes of one source file that a test file ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceUse {
    /// The git blob id of the source as it was when recorded (`git hash-object`), so that a
    /// selection can tell whether the map still describes the tree it compares with.
    pub digest: String,
    /// Each scope that ran, as `[first, body, last]` lines (1-based): `first` is the scope's
    /// first line (a decorator or its `def`), `body` the first line of its body, `last` its
    /// last line. The file's module scope is `[1, 1, LAST]`. A line in `first..body` belongs
    /// to the scope around it: a signature or decorator runs when the file loads.
    pub ran: Vec<Scope>,
    /// Scopes of the source the recorder learned of since it last reported the source, run
    /// or not (every function the pytest recorder instrumented, every method Ruby's
    /// `Coverage` lists): each process tells them once, and the impact map keeps them once
    /// per source, so that a change in a function no test ran selects no test file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known: Vec<Scope>,
}

/// `[first, body, last]` lines of one scope.
pub type Scope = [u32; 3];

/// Merges `other` into `into`: the union of the scopes of each source; a source recorded
/// from another content keeps the newer record (`other`'s).
pub fn merge(into: &mut FileImpact, other: FileImpact) {
    for (path, used) in other {
        match into.get_mut(&path) {
            Some(held) if held.digest == used.digest => {
                unite(&mut held.ran, used.ran);
                unite(&mut held.known, used.known);
            }
            _ => {
                into.insert(path, used);
            }
        }
    }
}

/// Adds `more` to the sorted scopes `into`, each once.
pub fn unite(into: &mut Vec<Scope>, more: Vec<Scope>) {
    into.extend(more);
    into.sort_unstable();
    into.dedup();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(digest: &str, ran: &[Scope]) -> SourceUse {
        SourceUse {
            digest: digest.into(),
            ran: ran.to_vec(),
            known: Vec::new(),
        }
    }

    #[test]
    fn the_json_of_a_file_impact_is_pinned() {
        let impact: FileImpact = [(
            "lib/cart.py".to_owned(),
            used("ab12", &[[1, 1, 30], [4, 5, 9]]),
        )]
        .into_iter()
        .collect();
        let json = serde_json::to_string(&impact).unwrap();
        assert_eq!(
            json,
            r#"{"lib/cart.py":{"digest":"ab12","ran":[[1,1,30],[4,5,9]]}}"#
        );
        assert_eq!(serde_json::from_str::<FileImpact>(&json).unwrap(), impact);
        let told = SourceUse {
            known: vec![[4, 5, 9], [11, 12, 12]],
            ..used("ab12", &[[1, 1, 30]])
        };
        let json = serde_json::to_string(&told).unwrap();
        assert_eq!(
            json,
            r#"{"digest":"ab12","ran":[[1,1,30]],"known":[[4,5,9],[11,12,12]]}"#
        );
        assert_eq!(serde_json::from_str::<SourceUse>(&json).unwrap(), told);
    }

    #[test]
    fn merging_unites_the_scopes_of_one_content_and_keeps_the_newer_content() {
        let mut into: FileImpact = [
            ("a.py".to_owned(), used("1", &[[1, 1, 9], [2, 3, 4]])),
            ("b.py".to_owned(), used("old", &[[1, 1, 5]])),
        ]
        .into_iter()
        .collect();
        let mut other: FileImpact = [
            ("a.py".to_owned(), used("1", &[[6, 7, 8], [2, 3, 4]])),
            ("b.py".to_owned(), used("new", &[[1, 1, 6]])),
        ]
        .into_iter()
        .collect();
        into.get_mut("a.py").unwrap().known = vec![[2, 3, 4]];
        other.get_mut("a.py").unwrap().known = vec![[6, 7, 8], [2, 3, 4]];
        merge(&mut into, other);
        let a = SourceUse {
            known: vec![[2, 3, 4], [6, 7, 8]],
            ..used("1", &[[1, 1, 9], [2, 3, 4], [6, 7, 8]])
        };
        assert_eq!(into["a.py"], a);
        assert_eq!(into["b.py"], used("new", &[[1, 1, 6]]));
    }
}
