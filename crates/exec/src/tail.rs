//! Relaying a child's output line by line into the log while keeping its last lines, so
//! that a crash report can show what the child said before it died.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, BufReader};
use tokio::task::JoinHandle;

use crate::lines::{read_line, Line};

/// Lines kept for a crash report.
pub const KEPT_LINES: usize = 100;
/// A longer line is cut, so that one runaway line cannot fill a report.
const MAX_LINE_BYTES: usize = 4096;

/// The last [`KEPT_LINES`] lines of a child's stdout and stderr, interleaved as they came.
#[derive(Clone, Debug, Default)]
pub struct LineTail(Arc<Mutex<VecDeque<String>>>);

impl LineTail {
    pub fn push(&self, line: String) {
        // A poisoned lock only means another relay panicked mid-push; the lines are still
        // usable.
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, joined by newlines.
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        for line in lines.iter() {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// Reads `pipe` to its end, handing each line to `emit` and keeping it in `tail`.
pub fn relay(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tail: LineTail,
    emit: impl Fn(&str) + Send + 'static,
) -> JoinHandle<()> {
    relay_some(pipe, tail, move |line| {
        emit(line);
        true
    })
}

/// Reads `pipe` to its end, handing each line to `take`, and keeping in `tail` the lines
/// for which it returns true (the others were not output but messages, handled by `take`).
pub fn relay_some(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    tail: LineTail,
    take: impl Fn(&str) -> bool + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        while let Ok(Some(line)) = read_line(&mut reader, MAX_LINE_BYTES).await {
            let line = match line {
                Line::Text(line) => line,
                Line::TooLong { bytes, head } => format!("{head} [... a line of {bytes} bytes]"),
            };
            if take(&line) {
                tail.push(line);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_last_lines() {
        let tail = LineTail::default();
        let text: String = (1..=150).map(|i| format!("line {i}\n")).collect();
        relay(
            std::io::Cursor::new(text.into_bytes()),
            tail.clone(),
            |_| {},
        )
        .await
        .unwrap();
        let kept = tail.text();
        assert!(kept.starts_with("line 51\n"), "{kept}");
        assert!(kept.ends_with("line 150\n"), "{kept}");
        assert_eq!(kept.lines().count(), KEPT_LINES);
    }
}
