//! How many files a far host holds beyond its slots, so that its workers never wait for the
//! broker between files.
//!
//! A busy slot's next file comes only once the slot's previous message is settled: its
//! result is published and confirmed (a round trip), then the file is acked and the broker
//! delivers the next (another). Between two files a slot thus waits about two round trips,
//! `gap`, unless the host already holds its next file. Near the broker the gap is a few
//! milliseconds and the host holds nothing extra: a file held is a file another host's
//! idle worker cannot start. Far from it (a gap of 10 ms or more), each busy slot holds
//! `⌈gap / d⌉` files more (`d`, the expected time of a file here), as soon as the gap is a
//! quarter of `d` or more: enough to cover the gap, and at most about `d` + `gap` of extra
//! work per slot. Where a worker takes a batch at once (`job.runner.batch_seconds`), the
//! slot also holds the rest of its batch: a batch taken must not leave the next idle worker
//! waiting for the broker, and a batch is, by its limit, little work.
//!
//! Both are measured here, as the job runs: the gap as twice the time from a reply's publish
//! to its confirm, `d` from the results' times; each a moving average. When the job says
//! what its files take (`expected_file_seconds`, from the runtime history), the host starts
//! from that and from a round trip it measured while it started, and holds files ahead
//! from its first delivery on, rather than after timing a few files.

use std::time::Duration;

use gorgon_protocol::batch_size;

/// The weight of the newest measure in each moving average.
const NEWEST: f64 = 0.25;

/// Below this share of a file's time, the gap is not worth holding files for.
const WORTH_HIDING: f64 = 0.25;

/// A gap below this is a near broker's (the same rack: a fraction of a millisecond each way
/// and a disk write), whatever the files: such a host holds nothing extra and tops its
/// batches up from the queue (`basic.get`), as it always did.
const NEAR_GAP_SECONDS: f64 = 0.010;

/// Extra files per slot, at most: the broker's queue, not the host, holds the rest.
const MOST_PER_SLOT: u32 = 128;

/// Files timed here before the host decides (a first file's time, its worker's start
/// included, says little).
const TIMED_FIRST: u32 = 4;

/// What a host has measured of its distance and of its files.
#[derive(Debug, Default)]
pub(crate) struct LookAhead {
    /// A reply's publish to its confirm, in seconds.
    confirm_seconds: Option<f64>,
    /// The time of a file's run here, in seconds.
    file_seconds: Option<f64>,
    files_timed: u32,
}

impl LookAhead {
    /// A reply was confirmed `latency` after it was published.
    pub(crate) fn confirmed_after(&mut self, latency: Duration) {
        average(&mut self.confirm_seconds, latency.as_secs_f64());
    }

    /// Starts from what is known before any file ran here: a `round_trip` to the broker
    /// (about a publish's time to its confirm) and the job's expected time of a file, if it
    /// has one (nothing changes otherwise).
    pub(crate) fn expect(&mut self, round_trip: Duration, file_seconds: Option<f64>) {
        let Some(file) = file_seconds.filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
        else {
            return;
        };
        self.confirm_seconds.get_or_insert(round_trip.as_secs_f64());
        self.file_seconds.get_or_insert(file);
        self.files_timed = self.files_timed.max(TIMED_FIRST);
    }

    /// A file ran `seconds` here.
    pub(crate) fn file_took(&mut self, seconds: f64) {
        average(&mut self.file_seconds, seconds);
        self.files_timed = self.files_timed.saturating_add(1);
    }

    /// The files each busy slot should hold beyond the one it runs (none until both are
    /// measured), where a worker's batches hold `batch_limit` of expected work.
    pub(crate) fn extra_per_slot(&self, batch_limit: Option<Duration>) -> u32 {
        let (Some(confirm), Some(file)) = (self.confirm_seconds, self.file_seconds) else {
            return 0;
        };
        if self.files_timed < TIMED_FIRST {
            return 0;
        }
        let gap = 2.0 * confirm;
        let share = gap / file.max(0.001);
        if gap < NEAR_GAP_SECONDS || share < WORTH_HIDING {
            return 0;
        }
        // A share below MOST_PER_SLOT fits in u32; a hair off, so that an exact 2 stays 2.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let gap_files = (share.min(f64::from(MOST_PER_SLOT)) - 1e-9).ceil() as u32;
        let batch_files = batch_limit.map_or(1, |limit| batch_size(file, limit));
        let rest_of_batch = u32::try_from(batch_files - 1).unwrap_or(MOST_PER_SLOT);
        (gap_files + rest_of_batch).min(MOST_PER_SLOT)
    }
}

fn average(kept: &mut Option<f64>, newest: f64) {
    *kept = Some(match *kept {
        Some(old) => old + NEWEST * (newest - old),
        None => newest,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(confirm_ms: u64, file_seconds: f64) -> LookAhead {
        let mut look_ahead = LookAhead::default();
        look_ahead.confirmed_after(Duration::from_millis(confirm_ms));
        for _ in 0..TIMED_FIRST {
            look_ahead.file_took(file_seconds);
        }
        look_ahead
    }

    #[test]
    fn a_host_holds_enough_to_cover_two_round_trips_when_they_matter() {
        for (confirm_ms, file_seconds, batch_seconds, extra) in [
            // Near: a few milliseconds against files of 50 ms or more.
            (2, 0.05, None, 0),
            (3, 0.5, Some(0.25), 0),
            (3, 8.0, None, 0),
            // Near, however quick the files.
            (4, 0.001, Some(0.25), 0),
            // 5 ms each way: the gap is 20 ms, 0.4 of a 50 ms file.
            (10, 0.05, None, 1),
            // 25 ms each way: the gap is two files of 50 ms.
            (50, 0.05, None, 2),
            (50, 2.0, Some(0.25), 0),
            // The gap's files, then the rest of a batch of 6.
            (50, 0.04, Some(0.25), 3 + 5),
            // Bounded, however quick the files.
            (50, 0.0, Some(0.25), MOST_PER_SLOT),
        ] {
            let batch_limit = batch_seconds.map(Duration::from_secs_f64);
            assert_eq!(
                measured(confirm_ms, file_seconds).extra_per_slot(batch_limit),
                extra,
                "{confirm_ms} ms to a confirm, files of {file_seconds} s"
            );
        }
    }

    #[test]
    fn nothing_extra_until_both_are_measured_and_a_few_files_timed() {
        let mut look_ahead = LookAhead::default();
        look_ahead.confirmed_after(Duration::from_millis(50));
        assert_eq!(look_ahead.extra_per_slot(None), 0);
        for _ in 1..TIMED_FIRST {
            look_ahead.file_took(0.05);
            assert_eq!(look_ahead.extra_per_slot(None), 0);
        }
        look_ahead.file_took(0.05);
        assert_eq!(look_ahead.extra_per_slot(None), 2);
        let mut look_ahead = LookAhead::default();
        for _ in 0..TIMED_FIRST {
            look_ahead.file_took(0.05);
        }
        assert_eq!(look_ahead.extra_per_slot(None), 0);
    }

    #[test]
    fn an_expected_file_time_decides_before_any_file_is_timed() {
        let mut look_ahead = LookAhead::default();
        look_ahead.expect(Duration::from_millis(50), None);
        assert_eq!(look_ahead.extra_per_slot(None), 0, "nothing expected");
        look_ahead.expect(Duration::from_millis(50), Some(0.05));
        assert_eq!(look_ahead.extra_per_slot(None), 2);
        let mut near = LookAhead::default();
        near.expect(Duration::from_millis(1), Some(0.05));
        assert_eq!(near.extra_per_slot(None), 0);
        // The measures then take over.
        for _ in 0..40 {
            look_ahead.file_took(1.0);
        }
        assert_eq!(look_ahead.extra_per_slot(None), 0);
    }

    #[test]
    fn the_averages_follow_the_newest_measures() {
        let mut look_ahead = measured(50, 0.05);
        for _ in 0..40 {
            look_ahead.confirmed_after(Duration::from_millis(1));
        }
        assert_eq!(look_ahead.extra_per_slot(None), 0);
    }
}
