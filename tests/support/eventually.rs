//! The tests' one way of waiting: poll a condition until it holds, and fail the test with
//! what it waited for (and what it saw last) once a limit has passed. No test sleeps to
//! synchronize; each waits for the thing it needs, with a bound that keeps it from hanging.

use std::fmt::{Debug, Display};
use std::time::{Duration, Instant};

/// How long [`eventually`] rests between two looks: short enough that a test goes on soon
/// after the condition holds, long enough not to load the machine the processes run on.
const POLL: Duration = Duration::from_millis(20);

/// What a condition of [`eventually`] answers: `true`, `Some(value)` or `Ok(value)` when it
/// holds; `false`, `None` or `Err(seen)` when not yet (`seen` goes into the failure).
pub trait Outcome {
    /// What the wait returns once the condition holds.
    type Value;
    /// What the condition saw while it did not hold.
    type Seen: Debug;

    /// The value once the condition holds; what was seen instead while it does not.
    fn settled(self) -> Result<Self::Value, Self::Seen>;
}

impl Outcome for bool {
    type Value = ();
    type Seen = ();

    fn settled(self) -> Result<(), ()> {
        if self {
            Ok(())
        } else {
            Err(())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    type Seen = ();

    fn settled(self) -> Result<T, ()> {
        self.ok_or(())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    type Seen = E;

    fn settled(self) -> Result<T, E> {
        self
    }
}

/// `Ok` when `left` is empty, else `Err(left)`: a condition that nothing is left, which
/// names what still is when the wait fails.
pub fn none_left<T: Debug>(left: Vec<T>) -> Result<(), Vec<T>> {
    if left.is_empty() {
        Ok(())
    } else {
        Err(left)
    }
}

/// Polls `condition` until it holds and returns its value; fails the test, naming `what`
/// it waited for and what it saw last, once `limit` has passed.
#[track_caller]
pub fn eventually<O: Outcome>(
    limit: Duration,
    what: impl Display,
    condition: impl FnMut() -> O,
) -> O::Value {
    // A match, not a closure, so that the failure names the test's line.
    match poll(limit, condition) {
        Ok(value) => value,
        Err(seen) => give_up(limit, &what, &seen),
    }
}

/// Polls `condition` until it holds or `limit` has passed: its value, or what it saw last.
/// For the places that do something else than fail when the limit passes: the chaos
/// test's tally, a run killed before its output is shown, a listener killed after its
/// grace.
pub fn poll<O: Outcome>(
    limit: Duration,
    mut condition: impl FnMut() -> O,
) -> Result<O::Value, O::Seen> {
    let deadline = Instant::now() + limit;
    loop {
        match condition().settled() {
            Ok(value) => return Ok(value),
            Err(seen) if Instant::now() >= deadline => return Err(seen),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`eventually`] inside a tokio runtime: rests without blocking the runtime's thread.
pub async fn eventually_async<O: Outcome>(
    limit: Duration,
    what: impl Display,
    mut condition: impl FnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + limit;
    loop {
        match condition().settled() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => give_up(limit, &what, &seen),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

#[track_caller]
fn give_up(limit: Duration, what: &dyn Display, seen: &dyn Debug) -> ! {
    let seen = format!("{seen:?}");
    if seen == "()" {
        panic!("waited {limit:?} in vain for {what}");
    }
    panic!("waited {limit:?} in vain for {what}; last seen: {seen}");
}
