//! A bounded buffer for a child's combined output: it keeps the head and the tail, so a
//! runaway test cannot exhaust memory or produce an oversized message, and the end of the
//! output (where the error usually is) is never lost.

/// Bytes kept from the start of the output.
const HEAD_BYTES: usize = 16 * 1024;
/// Bytes kept from the end of the output.
const TAIL_BYTES: usize = 48 * 1024;

#[derive(Debug, Default)]
pub struct OutputBuffer {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: usize,
}

impl OutputBuffer {
    pub fn push(&mut self, mut bytes: &[u8]) {
        let room = HEAD_BYTES - self.head.len();
        if room > 0 {
            let take = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(TAIL_BYTES);
        if excess > 0 {
            self.tail.drain(..excess);
            self.dropped += excess;
        }
    }

    /// The kept output as text, with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                "\n[... {} bytes of output omitted ...]\n",
                self.dropped
            ));
        }
        let (a, b) = self.tail.as_slices();
        text.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut buffer = OutputBuffer::default();
        buffer.push(b"hello ");
        buffer.push(b"world");
        assert_eq!(buffer.text(), "hello world");
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let mut buffer = OutputBuffer::default();
        buffer.push(b"START");
        for _ in 0..10_000 {
            buffer.push(&[b'x'; 100]);
        }
        buffer.push(b"THE END");
        let text = buffer.text();
        assert!(text.starts_with("START"));
        assert!(text.ends_with("THE END"));
        assert!(text.contains("bytes of output omitted"));
        assert!(text.len() < HEAD_BYTES + TAIL_BYTES + 100);
    }
}
