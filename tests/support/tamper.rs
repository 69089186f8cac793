//! Someone with write access to the file server and nothing else: a thread that keeps a
//! pushed tree changed (a test file rewritten, a file added) whenever a push has undone it,
//! for the tests and the chaos harness that show a listener runs nothing of such a tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The file a tamperer adds beside the files it rewrites.
pub const ADDED: &str = "lib/evil.sh";

pub struct Tamperer {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The pushed tree in `served` (a file server's folder) whose folder name ends with
/// `suffix`, once there is one.
fn find_tree(served: &Path, suffix: &str) -> Option<PathBuf> {
    std::fs::read_dir(served)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().ends_with(suffix))
        })
}

impl Tamperer {
    /// Until stopped, puts `evil` into the file `test` of the tree in `served` whose folder
    /// name ends with `suffix` (which may not be pushed yet), and adds [`ADDED`].
    pub fn start(served: &Path, suffix: &str, test: &str, evil: String) -> Tamperer {
        let (stop, writes) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (served, suffix, test) = (served.to_owned(), suffix.to_owned(), test.to_owned());
        let (stopping, written) = (stop.clone(), writes.clone());
        let thread = std::thread::spawn(move || {
            let mut tree = None;
            while !stopping.load(Ordering::Relaxed) {
                if tree.is_none() {
                    tree = find_tree(&served, &suffix);
                }
                if let Some(tree) = &tree {
                    if tamper_once(tree, &test, &evil) {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        Tamperer {
            stop,
            writes,
            thread: Some(thread),
        }
    }

    /// Stops it; how many times it rewrote the test.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.writes.load(Ordering::Relaxed)
    }
}

/// Changes `tree` where a push undid it; whether the test file was rewritten.
fn tamper_once(tree: &Path, test: &str, evil: &str) -> bool {
    let (test, added) = (tree.join(test), tree.join(ADDED));
    let mut rewrote = false;
    if test.exists() && std::fs::read_to_string(&test).ok().as_deref() != Some(evil) {
        rewrote = std::fs::write(&test, evil).is_ok();
    }
    if !added.exists() {
        let _ = std::fs::create_dir_all(added.parent().unwrap());
        let _ = std::fs::write(&added, evil);
    }
    rewrote
}
