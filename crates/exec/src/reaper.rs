//! A host process that holds a job (the worker manager, or the originator of a `--local`
//! run) as the child subreaper of everything the job starts: a process whose parent dies is
//! re-parented to it rather than to init, whatever it did to its environment, session or
//! process group (`setsid`, `env -i`, a double fork), so it stays a descendant of the job's
//! host process. [`Subreaper::end`] kills every descendant left at the job's end and reaps
//! it.
//!
//! A subreaper must wait for the orphans it adopts, or they stay zombies. It must also
//! never take the exit status of a child that tokio's process module waits for (by its pid,
//! on its pidfd): so orphans are reaped by their own pids too, never with `waitpid(-1)`,
//! and the children this process starts itself are told apart by being started through
//! [`spawn`], which records them while the process adopts orphans.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// How long [`Subreaper::end`] keeps killing and reaping before it gives up on what is
/// left (a process in uninterruptible sleep): the job's end is bounded.
const END_LIMIT: Duration = Duration::from_secs(5);

/// The least time between two looks for exited orphans.
const REAP_PAUSE: Duration = Duration::from_millis(100);

/// How often [`Subreaper::end`] looks again while processes are dying.
const END_POLL: Duration = Duration::from_millis(10);

/// Whether this process adopts orphans now ([`Subreaper::start`]).
static ADOPTING: AtomicBool = AtomicBool::new(false);

/// The live children this process started itself through [`spawn`] while it adopts
/// orphans: tokio waits for each of them, so the reaper never does. Held while a child is
/// started and while orphans are reaped, so that a child just started is always recorded
/// before the reaper looks at it.
static OWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn own_children() -> MutexGuard<'static, BTreeSet<i32>> {
    OWN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why this process cannot adopt the orphans of its job.
#[derive(Debug, thiserror::Error)]
pub enum SubreaperError {
    #[error("the system refuses to make this process a child subreaper")]
    Refused(#[source] nix::Error),
    #[error("cannot listen for SIGCHLD")]
    Signal(#[source] std::io::Error),
}

/// Starts `command`. Every child a process that may adopt orphans starts goes through
/// here, so that its reaper knows it for tokio's and leaves its exit status to tokio.
pub fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut own = own_children();
    let child = command.spawn()?;
    if ADOPTING.load(Ordering::SeqCst) {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            own.insert(pid);
        }
    }
    Ok(child)
}

/// This process as the child subreaper of its job: it reaps the orphans it adopts as they
/// exit, and [`Subreaper::end`] kills and reaps whatever of the job is left.
pub struct Subreaper {
    reaping: tokio::task::JoinHandle<()>,
}

impl Subreaper {
    /// Makes this process the child subreaper of what it starts from now on, reaping
    /// adopted orphans on every SIGCHLD. Call it inside the runtime, before the job's
    /// first child starts.
    pub fn start() -> Result<Subreaper, SubreaperError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut exits = signal(SignalKind::child()).map_err(SubreaperError::Signal)?;
        nix::sys::prctl::set_child_subreaper(true).map_err(SubreaperError::Refused)?;
        ADOPTING.store(true, Ordering::SeqCst);
        let reaping = tokio::spawn(async move {
            while exits.recv().await.is_some() {
                reap_orphans();
                // The exits meanwhile make one wake-up: a job whose orphans end by the
                // thousand costs at most a few looks at the process table a second.
                tokio::time::sleep(REAP_PAUSE).await;
            }
        });
        Ok(Subreaper { reaping })
    }

    /// Kills every descendant of this process that is still there (the job is over: its
    /// workers and callbacks have exited) and reaps them, within a bound; this process
    /// adopts no more orphans. Returns how many processes were killed.
    pub async fn end(self) -> usize {
        self.reaping.abort();
        let killed = kill_descendants(END_LIMIT).await;
        let _ = nix::sys::prctl::set_child_subreaper(false);
        ADOPTING.store(false, Ordering::SeqCst);
        own_children().clear();
        if killed > 0 {
            tracing::info!(
                count = killed,
                "killed processes the job left (found as descendants)"
            );
        }
        killed
    }
}

/// One line of the process table: a process's parent and whether it is a zombie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    parent: i32,
    zombie: bool,
}

/// The machine's processes, by pid, from `/proc/<pid>/stat`. A process that ends while it
/// is read is left out.
fn process_table() -> BTreeMap<i32, Entry> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&stat)?))
        })
        .collect()
}

/// The state and parent of a `/proc/<pid>/stat` line: `pid (comm) state ppid …`, where
/// the command name may hold spaces and parentheses, so the fields are read after the last
/// `)`.
fn parse_stat(stat: &str) -> Option<Entry> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    Some(Entry {
        parent,
        zombie: state == "Z" || state == "X",
    })
}

/// The live descendants of `root` in `table`, and the zombies among its children.
fn descendants(root: i32, table: &BTreeMap<i32, Entry>) -> (Vec<i32>, Vec<i32>) {
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for (&pid, entry) in table {
        children.entry(entry.parent).or_default().push(pid);
    }
    let mut live = Vec::new();
    let mut zombies = Vec::new();
    let mut next = vec![root];
    while let Some(parent) = next.pop() {
        for &pid in children.get(&parent).into_iter().flatten() {
            if table[&pid].zombie {
                // A zombie has no children: they went to their subreaper when it exited.
                if parent == root {
                    zombies.push(pid);
                }
            } else {
                live.push(pid);
                next.push(pid);
            }
        }
    }
    (live, zombies)
}

fn own_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// Reaps the exited orphans this process adopted, each by its pid, leaving the children
/// it started itself to tokio.
fn reap_orphans() {
    let me = own_pid();
    let mut own = own_children();
    let table = process_table();
    // A child that tokio has reaped is gone (or its pid is someone else's now).
    own.retain(|pid| table.get(pid).is_some_and(|entry| entry.parent == me));
    for (&pid, entry) in &table {
        if entry.parent == me && entry.zombie && !own.contains(&pid) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Kills the descendants of this process until none is left, reaping its zombie children
/// (by then every child tokio waited for has been waited for), for at most `limit`;
/// returns how many processes were killed.
async fn kill_descendants(limit: Duration) -> usize {
    let me = own_pid();
    let deadline = Instant::now() + limit;
    let mut killed = BTreeSet::new();
    loop {
        let (live, zombies) = descendants(me, &process_table());
        for &pid in &live {
            // Killed again each round: a process may have forked before it died.
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        for &pid in &zombies {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        if live.is_empty() && zombies.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                ?live,
                ?zombies,
                "processes of the job are still there after {limit:?}; leaving them"
            );
            break;
        }
        tokio::time::sleep(END_POLL).await;
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let entry = parse_stat("42 (a (b) c) S 7 42 42 0 -1 4194560").unwrap();
        assert_eq!(
            entry,
            Entry {
                parent: 7,
                zombie: false
            }
        );
        assert!(parse_stat("43 (sleep) Z 1 43 43 0").unwrap().zombie);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn descendants_are_found_through_every_generation() {
        let table: BTreeMap<i32, Entry> = [
            (10, 1, false),  // the root
            (11, 10, false), // its child
            (12, 11, false), // a grandchild
            (13, 12, false), // and its child
            (14, 10, true),  // a zombie child of the root
            (15, 11, true),  // a zombie grandchild: its parent reaps it
            (20, 1, false),  // someone else's
            (21, 20, false),
        ]
        .into_iter()
        .map(|(pid, parent, zombie)| (pid, Entry { parent, zombie }))
        .collect();
        let (mut live, zombies) = descendants(10, &table);
        live.sort_unstable();
        assert_eq!(live, [11, 12, 13]);
        assert_eq!(zombies, [14]);
        assert_eq!(descendants(13, &table), (Vec::new(), Vec::new()));
    }
}
