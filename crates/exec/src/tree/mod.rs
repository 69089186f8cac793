//! The tree a run pushes, as a manifest: every file, link and special file below the
//! project root that `job.sync.exclude` leaves in, with its mode, size and content digest.
//! The originator pushes it beside the tree (as [`MANIFEST_NAME`]) and signs its digest with
//! the job; a listener checks its pulled workspace against it before anything of the job
//! runs, so that the file server is untrusted storage (docs/security.md). Folders are not
//! listed: only what they hold is.

mod exclude;
mod scan;

pub use exclude::{Exclude, ExcludeError};
pub use scan::{scan, DigestCache, Scanned};

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

/// The manifest's name at the root of the pushed tree and of a listener's workspace.
pub const MANIFEST_NAME: &str = ".gorgon-rs-tree";
/// The first line of a manifest: its format.
const HEADER: &str = "gorgon-rs tree 1";
/// How many differences a refusal names; the others are counted.
const NAMED: usize = 10;

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: its permission bits, size and SHA-256.
    File {
        mode: u32,
        size: u64,
        digest: [u8; 32],
    },
    /// A symbolic link and its target, as written in it.
    Link { target: Vec<u8> },
    /// A FIFO, socket or device: its permission bits (rsync `-a` copies them too).
    Special { mode: u32 },
}

/// Every entry of a tree by its path below the root (`/` between parts, bytes as on disk).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<Vec<u8>, Entry>,
}

/// Why a manifest cannot be read, or a tree cannot be scanned.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tree's manifest is malformed at line {line}")]
    Malformed { line: usize },
    #[error("the project holds a file named {MANIFEST_NAME} at its root, the name gorgon-rs gives the manifest of the tree it pushes; rename it or exclude it (job.sync.exclude)")]
    NameTaken,
}

/// How a pulled tree differs from its manifest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    /// In the manifest, not in the tree.
    Missing(String),
    /// In the tree, not in the manifest.
    Added(String),
    /// In both, with another content, size, mode, kind or target.
    Changed(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Missing(path) => write!(f, "{path} (missing)"),
            Difference::Added(path) => write!(f, "{path} (added)"),
            Difference::Changed(path) => write!(f, "{path} (changed)"),
        }
    }
}

/// The differences of a refusal, in words: the first few named, the others counted.
pub fn listed(differences: &[Difference]) -> String {
    let named: Vec<String> = differences
        .iter()
        .take(NAMED)
        .map(ToString::to_string)
        .collect();
    match differences.len().saturating_sub(NAMED) {
        0 => named.join(", "),
        more => format!("{} and {more} more", named.join(", ")),
    }
}

/// The SHA-256 of `bytes`, in lowercase hex (how a manifest's digest travels in the job).
pub fn digest_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` in lowercase hex (a manifest has 50,000 digests or more to write).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Appends a path or target as one word: bytes outside printable ASCII, spaces and `%` as
/// `%XX`.
fn push_escaped(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
    }
}

fn unescape(word: &str) -> Option<Vec<u8>> {
    let bytes = word.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(word.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

impl Manifest {
    /// The manifest as the bytes pushed beside the tree and digested into the job.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(64 + self.entries.len() * 120);
        out.push_str(HEADER);
        out.push('\n');
        for (path, entry) in &self.entries {
            // Writing into a String cannot fail.
            let _ = match entry {
                Entry::File { mode, size, digest } => {
                    let _ = write!(out, "f {mode:o} {size} ");
                    push_hex(&mut out, digest);
                    Ok(())
                }
                Entry::Link { target } => {
                    out.push_str("l ");
                    push_escaped(&mut out, target);
                    Ok(())
                }
                Entry::Special { mode } => write!(out, "s {mode:o}"),
            };
            out.push(' ');
            push_escaped(&mut out, path);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Reads what [`Manifest::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, TreeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| TreeError::Malformed { line: 1 })?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(TreeError::Malformed { line: 1 });
        }
        let mut entries = BTreeMap::new();
        for (number, line) in lines.enumerate() {
            let (path, entry) =
                parse_line(line).ok_or(TreeError::Malformed { line: number + 2 })?;
            entries.insert(path, entry);
        }
        Ok(Manifest { entries })
    }

    /// How `actual` (a pulled tree) differs from this manifest, sorted by path.
    pub fn differences(&self, actual: &Manifest) -> Vec<Difference> {
        let name = |path: &[u8]| String::from_utf8_lossy(path).into_owned();
        let mut differences = Vec::new();
        for (path, expected) in &self.entries {
            match actual.entries.get(path) {
                None => differences.push(Difference::Missing(name(path))),
                Some(found) if found != expected => {
                    differences.push(Difference::Changed(name(path)));
                }
                Some(_) => {}
            }
        }
        for path in actual.entries.keys() {
            if !self.entries.contains_key(path) {
                differences.push(Difference::Added(name(path)));
            }
        }
        differences.sort_by(|a, b| key(a).cmp(key(b)));
        differences
    }

    /// The links of the tree: each path with its target.
    pub fn links(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().filter_map(|(path, entry)| match entry {
            Entry::Link { target } => Some((path.as_slice(), target.as_slice())),
            _ => None,
        })
    }
}

fn key(difference: &Difference) -> &str {
    match difference {
        Difference::Missing(path) | Difference::Added(path) | Difference::Changed(path) => path,
    }
}

fn parse_line(line: &str) -> Option<(Vec<u8>, Entry)> {
    let words: Vec<&str> = line.split(' ').collect();
    let mode = |word: &str| u32::from_str_radix(word, 8).ok();
    match words.as_slice() {
        ["f", m, size, digest, path] => Some((
            unescape(path)?,
            Entry::File {
                mode: mode(m)?,
                size: size.parse().ok()?,
                digest: unhex(digest)?,
            },
        )),
        ["l", target, path] => Some((
            unescape(path)?,
            Entry::Link {
                target: unescape(target)?,
            },
        )),
        ["s", m, path] => Some((unescape(path)?, Entry::Special { mode: mode(m)? })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(byte: u8) -> Entry {
        Entry::File {
            mode: 0o644,
            size: 3,
            digest: [byte; 32],
        }
    }

    fn manifest(entries: &[(&[u8], Entry)]) -> Manifest {
        Manifest {
            entries: entries
                .iter()
                .map(|(p, e)| (p.to_vec(), e.clone()))
                .collect(),
        }
    }

    #[test]
    fn a_manifest_reads_back_what_it_wrote_whatever_the_names() {
        let written = manifest(&[
            (b"tests/a test%.sh", file(1)),
            (b"lib/\xffnot-utf8\n", file(2)),
            (
                b"tests/link",
                Entry::Link {
                    target: b"../lib/x y".to_vec(),
                },
            ),
            (b"pipe", Entry::Special { mode: 0o600 }),
        ]);
        let bytes = written.to_bytes();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 5);
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), written);
    }

    #[test]
    fn malformed_manifests_are_refused_with_the_line() {
        for (text, line) in [
            ("not a manifest\n", 1),
            ("gorgon-rs tree 1\nf 644 3 abc tests/a\n", 2),
            ("gorgon-rs tree 1\nl x\n", 2),
            ("gorgon-rs tree 1\ns 9 p\n", 2),
            ("gorgon-rs tree 1\nl a b\nf 644 x 00 c\n", 3),
        ] {
            match Manifest::from_bytes(text.as_bytes()) {
                Err(TreeError::Malformed { line: at }) => assert_eq!(at, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn differences_name_what_was_changed_added_and_removed() {
        let pushed = manifest(&[(b"a", file(1)), (b"b", file(2)), (b"c", file(3))]);
        let pulled = manifest(&[
            (b"a", file(1)),
            (b"b", file(9)),
            (
                b"d",
                Entry::Link {
                    target: b"/etc".to_vec(),
                },
            ),
        ]);
        let differences = pushed.differences(&pulled);
        assert_eq!(
            differences,
            [
                Difference::Changed("b".into()),
                Difference::Missing("c".into()),
                Difference::Added("d".into()),
            ]
        );
        assert_eq!(listed(&differences), "b (changed), c (missing), d (added)");
        assert!(pushed.differences(&pushed).is_empty());
        let many: Vec<Difference> = (0..12)
            .map(|i| Difference::Added(format!("f{i:02}")))
            .collect();
        assert!(
            listed(&many).ends_with("f09 (added) and 2 more"),
            "{}",
            listed(&many)
        );
    }
}
