//! A listener's worker slots across all its jobs: a job runs only with slots of its own, so
//! the workers of every job on the host together never outnumber `worker_slots`; the jobs
//! that find no slot free wait their turn in one line, first come, first served, and a job
//! beyond [`MAX_WAITING_JOBS`] waiting ones is refused with the reason.
//!
//! A job's grant is every slot free when its turn comes (at least one: a job starts only
//! when one is free), and it holds them until it ends: a job's worker manager is started
//! with a fixed number of workers, and the first job in line is the one that waited
//! longest. Bookkeeping only; the job tasks wait on the grants it hands out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// How many jobs may wait for a listener's slots. A job beyond them is refused (the
/// originator is told why), so that a burst of jobs costs the listener a bounded line,
/// not one task and one broker consumer per job.
pub const MAX_WAITING_JOBS: usize = 100;

/// The slots of one listener and the line of jobs waiting for them. Clones share both.
#[derive(Clone)]
pub struct Slots {
    line: Arc<Mutex<Line>>,
}

struct Line {
    total: u32,
    busy: u32,
    max_waiting: usize,
    /// Oldest first. A waiter whose job went away (its receiver dropped) is skipped.
    waiting: VecDeque<oneshot::Sender<Grant>>,
}

/// Slots held by one job; they go back to the listener, and to the next job in line, when
/// the grant is dropped.
#[must_use]
pub struct Grant {
    slots: u32,
    /// `None` once the slots went back (or for a grant that never left the line).
    line: Option<Arc<Mutex<Line>>>,
}

/// Where a new job stands.
pub enum Turn {
    /// Slots were free: the job runs now.
    Now(Grant),
    /// Every slot is taken, or other jobs wait already: the grant comes when the job's
    /// turn does.
    Later {
        /// Jobs waiting ahead of this one.
        ahead: u32,
        grant: oneshot::Receiver<Grant>,
    },
}

/// Why a job does not join the line: too many wait already.
#[derive(Debug, thiserror::Error)]
#[error("{waiting} jobs already wait for this listener's {slots} busy slot(s), the most it keeps waiting; the job is refused")]
pub struct LineFull {
    pub waiting: usize,
    pub slots: u32,
}

impl Slots {
    pub fn new(total: u32) -> Slots {
        Slots::with_line(total, MAX_WAITING_JOBS)
    }

    fn with_line(total: u32, max_waiting: usize) -> Slots {
        Slots {
            line: Arc::new(Mutex::new(Line {
                total: total.max(1),
                busy: 0,
                max_waiting,
                waiting: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listener's slot count.
    pub fn total(&self) -> u32 {
        self.lock().total
    }

    /// A new job: its slots now when some are free and no job waits before it, otherwise
    /// a place in line, or [`LineFull`].
    pub fn join(&self) -> Result<Turn, LineFull> {
        let mut line = self.lock();
        line.waiting.retain(|waiter| !waiter.is_closed());
        if line.waiting.is_empty() && line.busy < line.total {
            return Ok(Turn::Now(line.grant(&self.line)));
        }
        if line.waiting.len() >= line.max_waiting {
            return Err(LineFull {
                waiting: line.waiting.len(),
                slots: line.total,
            });
        }
        let (sender, grant) = oneshot::channel();
        let ahead = u32::try_from(line.waiting.len()).unwrap_or(u32::MAX);
        line.waiting.push_back(sender);
        Ok(Turn::Later { ahead, grant })
    }

    /// Slots held by running jobs now.
    #[cfg(test)]
    fn busy(&self) -> u32 {
        self.lock().busy
    }
}

impl Line {
    /// Every free slot, for one job.
    fn grant(&mut self, shared: &Arc<Mutex<Line>>) -> Grant {
        let slots = self.total - self.busy;
        self.busy = self.total;
        Grant {
            slots,
            line: Some(shared.clone()),
        }
    }

    /// Hands the free slots to the first job in line whose task still waits.
    fn hand_out(&mut self, shared: &Arc<Mutex<Line>>) {
        while self.busy < self.total {
            let Some(waiter) = self.waiting.pop_front() else {
                return;
            };
            let grant = self.grant(shared);
            if let Err(mut unused) = waiter.send(grant) {
                // Its job went away: the slots stay here (dropping the grant while the
                // line is locked must not give them back a second time).
                unused.line = None;
                self.busy -= unused.slots;
            }
        }
    }
}

impl Grant {
    /// How many slots (so workers) the job has.
    pub fn slots(&self) -> u32 {
        self.slots
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let Some(shared) = self.line.take() else {
            return;
        };
        let mut line = shared.lock().unwrap_or_else(|e| e.into_inner());
        line.busy = line.busy.saturating_sub(self.slots);
        line.hand_out(&shared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(turn: Turn) -> (u32, oneshot::Receiver<Grant>) {
        match turn {
            Turn::Later { ahead, grant } => (ahead, grant),
            Turn::Now(_) => panic!("the job was expected to wait"),
        }
    }

    fn now(turn: Turn) -> Grant {
        match turn {
            Turn::Now(grant) => grant,
            Turn::Later { .. } => panic!("the job was expected to run at once"),
        }
    }

    #[test]
    fn a_job_takes_every_free_slot_and_the_next_ones_wait_in_order() {
        let slots = Slots::new(2);
        let first = now(slots.join().unwrap());
        assert_eq!(first.slots(), 2);
        let (ahead, mut second) = later(slots.join().unwrap());
        assert_eq!(ahead, 0);
        let (ahead, mut third) = later(slots.join().unwrap());
        assert_eq!(ahead, 1);
        assert!(second.try_recv().is_err(), "no slot is free yet");
        drop(first);
        let second = second.try_recv().expect("the first in line gets the slots");
        assert_eq!(second.slots(), 2);
        assert!(third.try_recv().is_err(), "the second job holds every slot");
        assert_eq!(slots.busy(), 2);
        drop(second);
        let third = third.try_recv().unwrap();
        assert_eq!(third.slots(), 2);
        drop(third);
        assert_eq!(slots.busy(), 0);
    }

    #[test]
    fn a_job_that_went_away_is_skipped_and_its_slots_go_to_the_next() {
        let slots = Slots::new(3);
        let first = now(slots.join().unwrap());
        let (_, gone) = later(slots.join().unwrap());
        let (ahead, mut next) = later(slots.join().unwrap());
        assert_eq!(ahead, 1);
        drop(gone);
        drop(first);
        assert_eq!(next.try_recv().unwrap().slots(), 3);
    }

    #[test]
    fn beyond_the_longest_line_a_job_is_refused_with_the_reason() {
        let slots = Slots::with_line(1, 2);
        let _running = now(slots.join().unwrap());
        let _a = later(slots.join().unwrap());
        let _b = later(slots.join().unwrap());
        let refused = slots.join().err().expect("the line is full");
        assert_eq!(refused.waiting, 2);
        assert_eq!(
            refused.to_string(),
            "2 jobs already wait for this listener's 1 busy slot(s), the most it keeps waiting; the job is refused"
        );
    }

    /// Whatever order jobs come and end in, the slots held never exceed the total, and
    /// every waiting job gets its turn.
    #[test]
    fn the_slots_held_never_exceed_the_total() {
        let slots = Slots::new(2);
        let mut running: Vec<Grant> = Vec::new();
        let mut waiting: VecDeque<oneshot::Receiver<Grant>> = VecDeque::new();
        let mut started = 0;
        // A fixed pseudo-random walk: jobs arrive and end in a mixed order.
        let mut seed: u32 = 7;
        for _ in 0..500 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if seed.is_multiple_of(3) && !running.is_empty() {
                drop(running.remove((seed as usize / 3) % running.len()));
            } else if let Ok(turn) = slots.join() {
                match turn {
                    Turn::Now(grant) => running.push(grant),
                    Turn::Later { grant, .. } => waiting.push_back(grant),
                }
            }
            while let Some(Ok(grant)) = waiting.front_mut().map(|next| next.try_recv()) {
                waiting.pop_front();
                running.push(grant);
                started += 1;
            }
            let held: u32 = running.iter().map(Grant::slots).sum();
            assert!(held <= 2, "{held} slots held");
            assert_eq!(held, slots.busy());
        }
        running.clear();
        while let Some(mut next) = waiting.pop_front() {
            let grant = next.try_recv().expect("each waiting job gets its turn");
            assert!(grant.slots() >= 1);
            started += 1;
        }
        assert!(started > 0);
    }
}
