//! The subreaper in a process of its own: a subreaper adopts the orphans of its whole
//! process and its end kills every descendant, so this test binary holds this one test.
//! It checks what `gorgon_exec::reaper` promises: an orphan that left its environment,
//! session and parent is adopted; one that exits is reaped while the job runs; the exit
//! status of a child tokio waits for is never taken; and the end leaves nothing, not even
//! a zombie.

use std::path::Path;
use std::time::{Duration, Instant};

use gorgon_exec::reaper::{spawn, Subreaper};

const LIMIT: Duration = Duration::from_secs(10);

/// Waits until `condition` holds, failing the test after [`LIMIT`] with `what`.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "waited {LIMIT:?} in vain for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The pid a script wrote to `path`, once it has.
async fn written_pid(path: &Path) -> i32 {
    let mut pid = None;
    until(&format!("a pid in {}", path.display()), || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.unwrap()
}

/// The parent of `pid`, while it exists (even as a zombie).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn exit_code(script: &str) -> Option<i32> {
    let mut command = tokio::process::Command::new("sh");
    command.arg("-c").arg(script);
    spawn(&mut command).unwrap().wait().await.unwrap().code()
}

#[tokio::test]
async fn orphans_are_adopted_reaped_and_killed_at_the_end_and_tokio_keeps_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let me = i32::try_from(std::process::id()).unwrap();
    let subreaper = Subreaper::start().expect("this process may be a child subreaper");
    let daemon_file = dir.path().join("daemon.pid");
    let short_file = dir.path().join("short.pid");
    // A daemon with a clean environment in a session of its own, and an orphan that ends
    // soon; the script itself exits 3, which tokio must be the one to see.
    let script = format!(
        "( setsid env -i sh -c 'echo $$ > {daemon}; exec sleep 1007' & )\n\
         ( sh -c 'echo $$ > {short}; exec sleep 0.2' & )\n\
         exit 3",
        daemon = daemon_file.display(),
        short = short_file.display(),
    );
    assert_eq!(exit_code(&script).await, Some(3));
    let daemon = written_pid(&daemon_file).await;
    let short = written_pid(&short_file).await;
    until("the daemon to be adopted by this process", || {
        parent_of(daemon) == Some(me)
    })
    .await;
    let environment = std::fs::read(format!("/proc/{daemon}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environment).contains("GORGON"),
        "the daemon's environment is clean"
    );
    until(
        "the orphan that ended to be reaped, not left a zombie",
        || !exists(short),
    )
    .await;
    // Children of this process's own, each leaving an orphan that ends at once, while
    // orphans are reaped: each exit status still reaches its waiter.
    for code in 1..=20 {
        let script = format!("( sh -c 'exit 0' & )\nexit {code}");
        assert_eq!(exit_code(&script).await, Some(code));
    }
    assert!(exists(daemon), "the daemon runs until the end");
    let killed = subreaper.end().await;
    assert!(killed >= 1, "the daemon was killed at the end");
    assert!(
        !exists(daemon),
        "the daemon is gone, not even a zombie, once the end returns"
    );
    // No more adopting: an orphan now goes to init, as it would without a subreaper.
    assert!(!nix::sys::prctl::get_child_subreaper().unwrap());
}
