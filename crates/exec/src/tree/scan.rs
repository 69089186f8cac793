//! Scanning a tree into its manifest: one walk that does not follow links, with the digests
//! of files unchanged since the last scan taken from a cache (keyed by inode, size,
//! modification and change times: nothing can write a file without changing its change
//! time), and the others hashed on every core.

use super::{push_escaped, push_hex, unescape, unhex, Entry, Exclude, Manifest, TreeError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write;
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A file changed this recently before a scan is hashed again on the next one: a write in
/// the same tick of the file system's clock as the change the scan saw could leave its times
/// as they were (git's "racily clean"). File systems that keep nanoseconds tick every few
/// milliseconds; those that keep whole seconds (all their times end in `.000000000`) get
/// [`RACY_WHOLE_SECONDS`].
const RACY_NANOS: i64 = 100_000_000;
const RACY_WHOLE_SECONDS: i64 = 2;
/// At most this many threads read folders, or hash files, at once.
const MAX_THREADS: usize = 4;

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            inode: meta.ino(),
            size: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A SHA-256.
type Sha = [u8; 32];

/// A file's digest, with the version of the file it is the digest of.
type Known = (Stamp, Sha);

/// The digest of a file the walk found (`None`: it went away meanwhile).
type Hashed<'f> = (&'f ToHash, Option<Sha>);

/// The digests of the files a previous scan read, by path; kept in a file between scans.
#[derive(Debug, Default)]
pub struct DigestCache {
    path: Option<PathBuf>,
    known: HashMap<Vec<u8>, Known>,
    /// The file being read, while it is (on a thread of its own, during the walk).
    loading: Option<std::thread::JoinHandle<HashMap<Vec<u8>, Known>>>,
    /// Whether `known` differs from the file's: an unchanged tree writes nothing.
    changed: bool,
}

impl DigestCache {
    /// The cache kept at `path`, read on a thread of its own while a scan walks the tree;
    /// empty when it cannot be read (every file is then hashed).
    pub fn load(path: PathBuf) -> DigestCache {
        let file = path.clone();
        let loading = std::thread::spawn(move || {
            std::fs::read_to_string(&file)
                .map(|text| text.lines().filter_map(parse_known).collect())
                .unwrap_or_default()
        });
        DigestCache {
            path: Some(path),
            known: HashMap::new(),
            loading: Some(loading),
            changed: false,
        }
    }

    /// Waits for the file's digests to be read into `known`.
    fn finish_loading(&mut self) {
        if let Some(loading) = self.loading.take() {
            self.known = loading.join().unwrap_or_default();
        }
    }

    /// A cache that is not kept.
    pub fn in_memory() -> DigestCache {
        DigestCache::default()
    }

    /// Writes the cache back to its file (whole, then renamed over the old one) if a scan
    /// changed it.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = self.path.as_ref().filter(|_| self.changed) else {
            return Ok(());
        };
        let mut text = String::with_capacity(self.known.len() * 140);
        for (name, (stamp, digest)) in &self.known {
            let Stamp {
                inode,
                size,
                modified: (ms, mn),
                changed: (cs, cn),
            } = stamp;
            // Writing into a String cannot fail.
            let _ = write!(text, "{inode} {size} {ms} {mn} {cs} {cn} ");
            push_hex(&mut text, digest);
            text.push(' ');
            push_escaped(&mut text, name);
            text.push('\n');
        }
        let fresh = path.with_extension("new");
        std::fs::write(&fresh, text)?;
        std::fs::rename(&fresh, path)
    }
}

fn parse_known(line: &str) -> Option<(Vec<u8>, Known)> {
    let mut words = line.split(' ');
    let mut word = || words.next();
    let (inode, size, ms, mn) = (word()?, word()?, word()?, word()?);
    let (cs, cn, digest, name) = (word()?, word()?, word()?, word()?);
    if word().is_some() {
        return None;
    }
    let stamp = Stamp {
        inode: inode.parse().ok()?,
        size: size.parse().ok()?,
        modified: (ms.parse().ok()?, mn.parse().ok()?),
        changed: (cs.parse().ok()?, cn.parse().ok()?),
    };
    Some((unescape(name)?, (stamp, unhex(digest)?)))
}

/// A file the walk found whose digest the cache does not have.
struct ToHash {
    relative: Vec<u8>,
    stamp: Stamp,
    mode: u32,
}

/// The entries one thread of a walk found, by path below the root.
type FoundList = Vec<(Vec<u8>, Found)>;

/// What a walk keeps of an entry's `stat`: a tree of 100,000 files holds them all at once.
struct Found {
    kind: FoundKind,
    mode: u32,
    stamp: Stamp,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FoundKind {
    File,
    Link,
    Special,
}

impl Found {
    fn of(meta: &Metadata) -> Found {
        let kind = meta.file_type();
        let kind = if kind.is_symlink() {
            FoundKind::Link
        } else if kind.is_file() {
            FoundKind::File
        } else {
            FoundKind::Special
        };
        Found {
            kind,
            mode: meta.mode() & 0o7777,
            stamp: Stamp::of(meta),
        }
    }
}

/// A scanned tree.
#[derive(Debug)]
pub struct Scanned {
    pub manifest: Manifest,
    /// How many files were read (the others' digests came from the cache).
    pub hashed: usize,
}

/// The manifest of the tree at `root`, without what `exclude` keeps from a push; `cache`
/// gives the digests of unchanged files and keeps those of the files found (updated in
/// place: a tree of 100,000 files holds one table of digests, not two).
pub fn scan(
    root: &Path,
    exclude: &[Exclude],
    cache: &mut DigestCache,
) -> Result<Scanned, TreeError> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let mut manifest = Manifest::default();
    let mut to_hash = Vec::new();
    let found = walk(root, exclude)?;
    cache.finish_loading();
    let known = &mut cache.known;
    for (relative, found) in found.into_iter().flatten() {
        let Found { kind, mode, stamp } = found;
        match kind {
            FoundKind::Link => {
                let link = root.join(OsStr::from_bytes(&relative));
                let target = std::fs::read_link(&link).map_err(read(&link))?;
                let target = target.as_os_str().as_bytes().to_vec();
                manifest.entries.insert(relative, Entry::Link { target });
            }
            FoundKind::File => match known.get(&relative) {
                Some((cached, digest)) if *cached == stamp => {
                    let (size, digest) = (stamp.size, *digest);
                    let file = Entry::File { mode, size, digest };
                    manifest.entries.insert(relative, file);
                }
                _ => to_hash.push(ToHash {
                    relative,
                    stamp,
                    mode,
                }),
            },
            FoundKind::Special => {
                manifest.entries.insert(relative, Entry::Special { mode });
            }
        }
    }
    let mut changed = false;
    for (file, digest) in hash_all(root, &to_hash)? {
        let Some(digest) = digest else { continue };
        let (stamp, mode) = (file.stamp, file.mode);
        if racy(stamp.changed, started) {
            changed |= known.remove(&file.relative).is_some();
        } else {
            known.insert(file.relative.clone(), (stamp, digest));
            changed = true;
        }
        let size = stamp.size;
        manifest
            .entries
            .insert(file.relative.clone(), Entry::File { mode, size, digest });
    }
    // Files gone since the last scan (or no longer files) leave the cache.
    let before_gone = known.len();
    known.retain(|name, _| matches!(manifest.entries.get(name), Some(Entry::File { .. })));
    cache.changed = changed || known.len() != before_gone;
    Ok(Scanned {
        manifest,
        hashed: to_hash.len(),
    })
}

/// Whether a file changed at `changed` (seconds, nanoseconds) may change again unseen after
/// a scan that started at `started` (nanoseconds since the epoch).
fn racy(changed: (i64, i64), started: i64) -> bool {
    let (seconds, nanos) = changed;
    let window = if nanos == 0 {
        RACY_WHOLE_SECONDS * 1_000_000_000
    } else {
        RACY_NANOS
    };
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos) > started.saturating_sub(window)
}

fn read(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Read {
        path: path.to_owned(),
        source,
    }
}

/// Every entry below `root` but folders (not following links), by its path below the root,
/// without what `exclude` keeps from a push, in one list per thread. The folders are read on up to [`MAX_THREADS`]
/// threads (a walk is mostly waiting on `stat`).
fn walk(root: &Path, exclude: &[Exclude]) -> Result<Vec<FoundList>, TreeError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS);
    let shared = Folders {
        state: std::sync::Mutex::new(Pending {
            folders: vec![Vec::new()],
            busy: 0,
            failed: None,
        }),
        changed: std::sync::Condvar::new(),
    };
    let lists: Vec<FoundList> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| read_folders(root, exclude, &shared)))
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().expect("a folder reader panicked"))
            .collect()
    });
    let state = shared.state.into_inner().expect("a folder reader panicked");
    match state.failed {
        Some(error) => Err(error),
        None => Ok(lists),
    }
}

/// The folders a walk has still to read, shared by its threads.
struct Folders {
    state: std::sync::Mutex<Pending>,
    changed: std::sync::Condvar,
}

struct Pending {
    folders: Vec<Vec<u8>>,
    /// How many threads are reading a folder (and may add more).
    busy: usize,
    failed: Option<TreeError>,
}

/// One thread of a walk: takes folders until none is left and no other thread may add one;
/// what it found that is not a folder.
fn read_folders(root: &Path, exclude: &[Exclude], shared: &Folders) -> FoundList {
    let mut entries = Vec::new();
    let mut state = shared.state.lock().expect("a folder reader panicked");
    loop {
        if state.failed.is_some() {
            break;
        }
        let Some(folder) = state.folders.pop() else {
            if state.busy == 0 {
                break;
            }
            state = shared
                .changed
                .wait(state)
                .expect("a folder reader panicked");
            continue;
        };
        state.busy += 1;
        drop(state);
        let read = read_folder(root, &folder, exclude, &mut entries);
        state = shared.state.lock().expect("a folder reader panicked");
        state.busy -= 1;
        match read {
            Ok(subfolders) => state.folders.extend(subfolders),
            Err(error) => state.failed = Some(error),
        }
        shared.changed.notify_all();
    }
    entries
}

/// Reads one folder: its entries that are not folders go to `entries`; its folders are
/// returned.
fn read_folder(
    root: &Path,
    folder: &[u8],
    exclude: &[Exclude],
    entries: &mut FoundList,
) -> Result<Vec<Vec<u8>>, TreeError> {
    let full = root.join(OsStr::from_bytes(folder));
    let mut subfolders = Vec::new();
    for entry in std::fs::read_dir(&full).map_err(read(&full))? {
        let entry = entry.map_err(read(&full))?;
        let mut relative = folder.to_vec();
        if !relative.is_empty() {
            relative.push(b'/');
        }
        relative.extend_from_slice(entry.file_name().as_bytes());
        let meta = entry.metadata().map_err(read(&entry.path()))?;
        let is_folder = meta.is_dir();
        if !exclude.is_empty() {
            let name = String::from_utf8_lossy(&relative);
            if exclude.iter().any(|e| e.matches(&name, is_folder)) {
                continue;
            }
        }
        if is_folder {
            subfolders.push(relative);
        } else {
            entries.push((relative, Found::of(&meta)));
        }
    }
    Ok(subfolders)
}

/// The digest of each file, hashed on up to [`MAX_THREADS`] threads; `None` for a file that
/// went away meanwhile.
fn hash_all<'f>(root: &Path, files: &'f [ToHash]) -> Result<Vec<Hashed<'f>>, TreeError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS)
        .min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let hashers: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || hash_part(root, part)))
            .collect();
        let mut all = Vec::with_capacity(files.len());
        for hasher in hashers {
            all.extend(hasher.join().expect("a hashing thread panicked")?);
        }
        Ok(all)
    })
}

fn hash_part<'f>(root: &Path, part: &'f [ToHash]) -> Result<Vec<Hashed<'f>>, TreeError> {
    let mut buffer = vec![0u8; 64 * 1024];
    part.iter()
        .map(|file| {
            let path = root.join(OsStr::from_bytes(&file.relative));
            match hash_file(&path, &mut buffer) {
                Ok(digest) => Ok((file, Some(digest))),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok((file, None)),
                Err(source) => Err(TreeError::Read { path, source }),
            }
        })
        .collect()
}

fn hash_file(path: &Path, buffer: &mut [u8]) -> std::io::Result<Sha> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    loop {
        let read = file.read(buffer)?;
        if read == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..read]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for folder in ["tests", "lib/deep", "log", "vendor/x"] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        }
        std::fs::write(dir.path().join("tests/a_test.sh"), "exit 0").unwrap();
        std::fs::write(dir.path().join("lib/deep/h.sh"), "echo").unwrap();
        std::fs::write(dir.path().join("log/run.log"), "x").unwrap();
        std::fs::write(dir.path().join("vendor/x/v.rb"), "v").unwrap();
        symlink("../lib/deep/h.sh", dir.path().join("tests/h.sh")).unwrap();
        dir
    }

    fn names(manifest: &Manifest) -> Vec<String> {
        manifest
            .entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    #[test]
    fn a_scan_lists_files_and_links_without_what_is_excluded() {
        let dir = project();
        let exclude = Exclude::all(&["/log".into(), "vendor/".into()]).unwrap();
        let manifest = scan(dir.path(), &exclude, &mut DigestCache::in_memory())
            .unwrap()
            .manifest;
        assert_eq!(
            names(&manifest),
            ["lib/deep/h.sh", "tests/a_test.sh", "tests/h.sh"]
        );
        let expected: [u8; 32] = Sha256::digest(b"exit 0").into();
        assert_eq!(
            manifest.entries[b"tests/a_test.sh".as_slice()],
            Entry::File {
                mode: std::fs::metadata(dir.path().join("tests/a_test.sh"))
                    .unwrap()
                    .mode()
                    & 0o7777,
                size: 6,
                digest: expected
            }
        );
        assert_eq!(
            manifest.entries[b"tests/h.sh".as_slice()],
            Entry::Link {
                target: b"../lib/deep/h.sh".to_vec()
            }
        );
    }

    #[test]
    fn a_file_is_racy_within_its_file_systems_tick_of_the_scan() {
        let second = 1_000_000_000;
        let started = 1_000 * second;
        // Nanosecond times: 100 ms.
        assert!(racy((999, 950_000_000), started));
        assert!(!racy((999, 850_000_000), started));
        // Whole seconds: 2 s.
        assert!(racy((999, 0), started));
        assert!(!racy((997, 0), started));
        // A time ahead of the scan's clock is racy too.
        assert!(racy((1_001, 5), started));
    }

    #[test]
    fn a_cached_digest_is_used_only_for_the_same_version_of_a_file() {
        let dir = project();
        let cache_file = dir.path().join(".digests");
        let exclude = Exclude::all(&["/.digests".into()]).unwrap();
        let scan_again = || {
            let mut cache = DigestCache::load(cache_file.clone());
            let scanned = scan(dir.path(), &exclude, &mut cache).unwrap();
            cache.save().unwrap();
            scanned
        };
        let first = scan_again();
        assert_eq!(first.hashed, 4);
        // Files changed just before a scan are read again (their times may not show a
        // write in the same tick); older ones come from the cache.
        assert_eq!(scan_again().hashed, 4);
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert_eq!(scan_again().hashed, 4);
        let unchanged = scan_again();
        assert_eq!(
            (unchanged.hashed, &unchanged.manifest),
            (0, &first.manifest)
        );
        // A write that keeps the size and the modification time is still seen: the change
        // time moves.
        let old = dir.path().join("tests/a_test.sh");
        let modified = std::fs::metadata(&old).unwrap().modified().unwrap();
        std::fs::write(&old, "exit 1").unwrap();
        let file = std::fs::File::options().write(true).open(&old).unwrap();
        file.set_modified(modified).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        let second = scan_again();
        assert_eq!(second.hashed, 1);
        let expected: [u8; 32] = Sha256::digest(b"exit 1").into();
        assert_eq!(
            second.manifest.entries[b"tests/a_test.sh".as_slice()],
            Entry::File {
                mode: 0o755,
                size: 6,
                digest: expected
            }
        );
    }

    #[test]
    fn the_cache_drops_files_gone_and_an_unchanged_tree_rewrites_nothing() {
        let dir = project();
        let cache_file = dir.path().join(".digests");
        let exclude = Exclude::all(&["/.digests".into()]).unwrap();
        let scan_again = || {
            let mut cache = DigestCache::load(cache_file.clone());
            scan(dir.path(), &exclude, &mut cache).unwrap();
            cache.save().unwrap();
            cache.changed
        };
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(scan_again());
        assert!(!scan_again(), "an unchanged tree changed the cache");
        let cached = || std::fs::read_to_string(&cache_file).unwrap();
        assert!(cached().contains("log/run.log"));
        std::fs::remove_file(dir.path().join("log/run.log")).unwrap();
        assert!(scan_again(), "a file gone left the cache as it was");
        assert!(!cached().contains("log/run.log"), "{}", cached());
        assert_eq!(cached().lines().count(), 3, "{}", cached());
        assert!(!scan_again());
    }
}
