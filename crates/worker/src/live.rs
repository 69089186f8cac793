//! Live output (`gorgon start --live-output`, and every file when the run writes events): a
//! running file's output goes to the originator as it is produced, in chunks of whole lines
//! sent at most every [`FLUSH_EVERY`], and at most [`LIVE_BYTES_PER_FILE`] of it per file run
//! (then one line saying so). The file's result still carries its whole output (head and
//! tail), as without live output.

use std::time::Duration;

/// How much of a file run's output is sent live.
pub const LIVE_BYTES_PER_FILE: usize = 64 * 1024;
/// How often held output is sent.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The live output of one file run: what was read and not sent yet, and how much was sent.
#[derive(Debug, Default)]
pub struct LiveOutput {
    held: Vec<u8>,
    sent: usize,
    cut: bool,
}

impl LiveOutput {
    /// Takes a chunk the file printed.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.cut {
            return;
        }
        // Never hold more than could still be sent (and a line of it).
        let room = (LIVE_BYTES_PER_FILE + 1024).saturating_sub(self.sent + self.held.len());
        self.held.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// The text to send now: the whole lines held (with `last`, also a last partial line),
    /// up to the cap, and once the cap is reached a line that says so; `None` when there is
    /// nothing to send.
    pub fn take(&mut self, last: bool) -> Option<String> {
        if self.cut {
            return None;
        }
        let mut end = if last {
            self.held.len()
        } else {
            self.held
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1)
        };
        let left = LIVE_BYTES_PER_FILE - self.sent;
        let over = end > left;
        if over {
            end = left;
        }
        if end == 0 && !over {
            return None;
        }
        let mut text = String::from_utf8_lossy(&self.held[..end]).into_owned();
        self.held.drain(..end);
        self.sent += end;
        if over {
            self.cut = true;
            self.held.clear();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "[gorgon] live output of this file stops here, at {} KiB; its result has the head and tail of all of it\n",
                LIVE_BYTES_PER_FILE / 1024
            ));
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_go_out_and_a_partial_one_waits_for_its_end() {
        let mut live = LiveOutput::default();
        assert_eq!(live.take(false), None);
        live.push(b"one\ntw");
        assert_eq!(live.take(false).as_deref(), Some("one\n"));
        assert_eq!(live.take(false), None);
        live.push(b"o\nthree");
        assert_eq!(live.take(false).as_deref(), Some("two\n"));
        assert_eq!(live.take(true).as_deref(), Some("three"));
        assert_eq!(live.take(true), None);
    }

    #[test]
    fn a_flood_is_cut_at_the_cap_with_a_note_and_nothing_after() {
        let mut live = LiveOutput::default();
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..10_000 {
            live.push(&line);
        }
        let sent = live.take(false).unwrap();
        assert!(sent.len() <= LIVE_BYTES_PER_FILE + 200, "{}", sent.len());
        assert!(sent.ends_with("its result has the head and tail of all of it\n"));
        live.push(&line);
        assert_eq!(live.take(true), None, "nothing after the cut");
        // What it holds stays bounded however much comes.
        assert!(live.held.len() <= LIVE_BYTES_PER_FILE + 1024);
    }
}
