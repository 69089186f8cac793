//! Reading newline-terminated lines with a bound on their length, for every pipe whose lines
//! another process writes (a worker's stdin and stdout, a runner's protocol lines): a line
//! longer than the bound is skipped to its end and reported by its length, never held whole.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read, without its newline (nor a `\r` before it).
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// A line longer than the bound, `bytes` long, skipped past its first `limit` bytes
    /// (`head`).
    TooLong {
        bytes: usize,
        head: String,
    },
}

/// The state of one line being read, fed chunk by chunk.
struct LineLimiter {
    limit: usize,
    kept: Vec<u8>,
    length: usize,
    started: bool,
}

impl LineLimiter {
    fn new(limit: usize) -> LineLimiter {
        LineLimiter {
            limit,
            kept: Vec::new(),
            length: 0,
            started: false,
        }
    }

    /// Takes what `chunk` holds of the line; returns how much it took and whether the line
    /// ended there.
    fn feed(&mut self, chunk: &[u8]) -> (usize, bool) {
        self.started = true;
        let (taken, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (&chunk[..at], true),
            None => (chunk, false),
        };
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&taken[..taken.len().min(room)]);
        self.length += taken.len();
        (taken.len() + usize::from(ended), ended)
    }

    /// The line, at its newline or at the end of the input (`None` if nothing came).
    fn finish(self) -> Option<Line> {
        if !self.started {
            return None;
        }
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.length > self.limit {
            return Some(Line::TooLong {
                bytes: self.length,
                head: text,
            });
        }
        if text.ends_with('\r') {
            text.pop();
        }
        Some(Line::Text(text))
    }
}

/// Reads the next line of at most `limit` bytes; `None` at the end of the input.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = LineLimiter::new(limit);
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(line.finish());
        }
        let (taken, ended) = line.feed(chunk);
        reader.consume(taken);
        if ended {
            return Ok(line.finish());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_within_the_bound_are_read_and_longer_ones_skipped_by_length() {
        let input = format!("short\r\n{}\nafter\nlast", "x".repeat(100));
        // A small buffer, so that a line spans several chunks.
        let mut reader = tokio::io::BufReader::with_capacity(7, input.as_bytes());
        let mut got = Vec::new();
        while let Some(line) = read_line(&mut reader, 50).await.unwrap() {
            got.push(line);
        }
        let expected = vec![
            Line::Text("short".into()),
            Line::TooLong {
                bytes: 100,
                head: "x".repeat(50),
            },
            Line::Text("after".into()),
            Line::Text("last".into()),
        ];
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn an_empty_input_has_no_line_and_an_empty_line_is_one() {
        let mut reader = tokio::io::BufReader::new(&b""[..]);
        assert_eq!(read_line(&mut reader, 10).await.unwrap(), None);
        let mut reader = tokio::io::BufReader::new(&b"\n"[..]);
        assert_eq!(
            read_line(&mut reader, 10).await.unwrap(),
            Some(Line::Text(String::new()))
        );
        assert_eq!(read_line(&mut reader, 10).await.unwrap(), None);
    }
}
