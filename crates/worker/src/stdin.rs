//! stdin of a worker manager or worker: the first line is its assignment, and the end of
//! stdin means that its parent has died, so it must stop. Both are read by one buffered
//! reader, so nothing written after the first line is lost between the two. A local worker
//! also takes its files from the following lines (see `local`).

use std::os::fd::AsFd;

use gorgon_exec::lines::{read_line, Line};

use gorgon_protocol::manager_report::{SpareOpening, DRAIN_REQUEST, START_REQUEST};
use gorgon_protocol::WorkerAssignment;
use tokio::io::{AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

/// Resolves once stdin has reached its end (or failed), i.e. once the parent is gone; and
/// tells when the parent asked a worker manager to drain
/// ([`gorgon_protocol::manager_report::DRAIN_REQUEST`]) or to start
/// ([`gorgon_protocol::manager_report::START_REQUEST`]).
#[derive(Clone, Debug)]
pub struct StdinClosed {
    closed: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
    /// Whether the parent said that the job's tree is ready; given already where there is
    /// no parent to say it.
    start: watch::Receiver<bool>,
    // Held by [`StdinClosed::never`] so that its channel never ends.
    _keep_open: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl StdinClosed {
    /// A watcher that never resolves: for running a manager or worker without a parent.
    pub fn never() -> StdinClosed {
        let (sender, closed) = watch::channel(false);
        StdinClosed {
            closed,
            drain: watch::channel(false).1,
            start: watch::channel(true).1,
            _keep_open: Some(std::sync::Arc::new(sender)),
        }
    }

    /// A watcher and the switch that resolves it (by sending `true`, or by being dropped),
    /// for tests and embedders.
    pub fn manual() -> (watch::Sender<bool>, StdinClosed) {
        let (sender, closed) = watch::channel(false);
        (
            sender,
            StdinClosed {
                closed,
                drain: watch::channel(false).1,
                start: watch::channel(true).1,
                _keep_open: None,
            },
        )
    }

    /// Resolves once the parent has asked to drain; never, if it does not. Cancel-safe.
    pub fn drain_requested(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut drain = self.drain.clone();
        async move {
            // An error means the reader is gone without a request: no drain will come.
            if drain.wait_for(|drain| *drain).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves true once the parent has said that the job's tree is ready (at once for a
    /// manager without a parent), false if stdin ends first. Cancel-safe.
    pub fn start_requested(&self) -> impl std::future::Future<Output = bool> + 'static {
        let mut start = self.start.clone();
        async move { start.wait_for(|start| *start).await.is_ok() }
    }

    /// Waits for the end of stdin. Cancel-safe, and resolves at once when already closed.
    pub async fn wait(&mut self) {
        // An error means the reader is gone, which only happens once stdin ended.
        let _ = self.closed.wait_for(|closed| *closed).await;
    }

    /// True once stdin has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// Why a worker manager or worker has no assignment to work on.
#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    /// The task that reads stdin ended without handing over the first line.
    #[error("cannot read the assignment from stdin: the reader stopped")]
    ReaderStopped,
    #[error("cannot read the assignment from stdin: {0}")]
    Read(#[source] std::io::Error),
    /// The parent closed stdin (or died) before writing the assignment.
    #[error("stdin ended before an assignment arrived")]
    Missing,
    #[error("the assignment on stdin is not valid: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("the assignment on stdin is a line of {0} bytes, over the limit of {MAX_LINE_BYTES}")]
    TooLong(usize),
}

/// The longest line read from stdin (an assignment, or a message from the parent).
const MAX_LINE_BYTES: usize = gorgon_protocol::message::MAX_MESSAGE_BYTES;

/// Reads the assignment from the first line of stdin and starts watching stdin for its end.
pub async fn read_assignment() -> Result<(WorkerAssignment, StdinClosed), AssignmentError> {
    let (line, closed) = watch_reader(BufReader::new(stdin_reader()), None);
    Ok((parse_assignment(&first_line(line).await?)?, closed))
}

/// stdin, read by the event loop itself when it is a pipe (as a parent starts its manager
/// or workers), with no thread hand-off for each hand-out of files; anything else through
/// tokio's blocking pool (whose read of a stdin that stays open `main` does not wait for).
fn stdin_reader() -> Box<dyn AsyncRead + Unpin + Send> {
    crate::pipe_or::<dyn AsyncRead + Unpin + Send>(
        std::io::stdin().as_fd(),
        |fd| {
            Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(
                fd,
            )?))
        },
        || Box::new(tokio::io::stdin()),
    )
}

/// The lines of stdin after the assignment, in order, in groups: the lines that one read
/// brought in arrive together (a parent that writes several lines at once, such as a
/// batch of files, has them seen together); the channel ends with stdin.
pub type StdinLines = mpsc::UnboundedReceiver<Vec<String>>;

/// Room for what a parent writes at once: a hand-out of the largest batch fits.
const STDIN_BUFFER: usize = 64 * 1024;

/// [`read_assignment`] for a local worker, which also takes the lines that follow.
pub async fn read_assignment_and_lines(
) -> Result<(WorkerAssignment, StdinLines, StdinClosed), AssignmentError> {
    let (sender, lines) = mpsc::unbounded_channel();
    let stdin = BufReader::with_capacity(STDIN_BUFFER, stdin_reader());
    let (line, closed) = watch_reader(stdin, Some(sender));
    Ok((parse_assignment(&first_line(line).await?)?, lines, closed))
}

async fn first_line(
    line: oneshot::Receiver<std::io::Result<Option<Line>>>,
) -> Result<String, AssignmentError> {
    match line
        .await
        .map_err(|_| AssignmentError::ReaderStopped)?
        .map_err(AssignmentError::Read)?
    {
        None => Ok(String::new()),
        Some(Line::Text(line)) => Ok(line),
        Some(Line::TooLong { bytes, .. }) => Err(AssignmentError::TooLong(bytes)),
    }
}

/// A spare worker manager's assignment, the line after its opening: it comes when a job
/// takes the spare.
pub struct SpareAssignment(oneshot::Receiver<std::io::Result<Option<Line>>>);

impl SpareAssignment {
    /// Waits for the assignment; [`AssignmentError::Missing`] when stdin ends first (the
    /// host stopped its spare, or died).
    pub async fn next(self) -> Result<WorkerAssignment, AssignmentError> {
        parse_assignment(&first_line(self.0).await?)
    }
}

/// Reads a spare worker manager's opening from the first line of stdin, and starts watching
/// stdin for its assignment, then its requests and its end.
pub async fn read_spare_opening(
) -> Result<(SpareOpening, SpareAssignment, StdinClosed), AssignmentError> {
    let (second, assignment) = oneshot::channel();
    let stdin = BufReader::new(stdin_reader());
    let (line, closed) = watch_reader_with(stdin, None, Some(second));
    let opening = parse_line(&first_line(line).await?)?;
    Ok((opening, SpareAssignment(assignment), closed))
}

/// Parses the assignment line.
pub fn parse_assignment(line: &str) -> Result<WorkerAssignment, AssignmentError> {
    parse_line(line)
}

/// Parses a line of JSON from the host: an assignment, or a spare's opening.
fn parse_line<T: serde::de::DeserializeOwned>(line: &str) -> Result<T, AssignmentError> {
    if line.trim().is_empty() {
        return Err(AssignmentError::Missing);
    }
    serde_json::from_str(line.trim_end()).map_err(AssignmentError::Invalid)
}

/// Starts a task that reads the first line of `reader`, hands it over, then reads on to the
/// end (handing the lines to `lines`, when given, each group of lines already read at once
/// together) and signals it. The lines channel ends before the end is signalled, so a
/// reader that sees the end has every line already.
fn watch_reader<R: AsyncRead + Unpin + Send + 'static>(
    reader: BufReader<R>,
    lines: Option<mpsc::UnboundedSender<Vec<String>>>,
) -> (
    oneshot::Receiver<std::io::Result<Option<Line>>>,
    StdinClosed,
) {
    watch_reader_with(reader, lines, None)
}

/// [`watch_reader`] that also hands the second line over to `second`, when given, before
/// it reads on: a spare manager's assignment, which follows its opening.
fn watch_reader_with<R: AsyncRead + Unpin + Send + 'static>(
    mut reader: BufReader<R>,
    lines: Option<mpsc::UnboundedSender<Vec<String>>>,
    second: Option<oneshot::Sender<std::io::Result<Option<Line>>>>,
) -> (
    oneshot::Receiver<std::io::Result<Option<Line>>>,
    StdinClosed,
) {
    let (line_sender, line) = oneshot::channel();
    let (closed_sender, mut closed) = StdinClosed::manual();
    let (drain_sender, drain) = watch::channel(false);
    let (start_sender, start) = watch::channel(false);
    closed.drain = drain;
    closed.start = start;
    tokio::spawn(async move {
        let result = read_line(&mut reader, MAX_LINE_BYTES).await;
        let mut failed = result.is_err();
        let _ = line_sender.send(result);
        if let Some(second) = second.filter(|_| !failed) {
            let result = read_line(&mut reader, MAX_LINE_BYTES).await;
            failed = !matches!(result, Ok(Some(_)));
            let _ = second.send(result);
        }
        match lines {
            _ if failed => {}
            Some(lines) => {
                while let Some(group) = read_group(&mut reader).await {
                    let _ = lines.send(group);
                }
            }
            None => {
                while let Ok(Some(line)) = read_line(&mut reader, MAX_LINE_BYTES).await {
                    match &line {
                        Line::Text(text) if text.trim_end() == DRAIN_REQUEST => {
                            let _ = drain_sender.send(true);
                        }
                        Line::Text(text) if text.trim_end() == START_REQUEST => {
                            let _ = start_sender.send(true);
                        }
                        _ => {}
                    }
                }
            }
        }
        let _ = closed_sender.send(true);
    });
    (line, closed)
}

/// The next line (waiting for it), with every further whole line already in the buffer;
/// `None` at the end.
async fn read_group<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Option<Vec<String>> {
    let mut group = Vec::new();
    loop {
        match read_line(reader, MAX_LINE_BYTES).await {
            Ok(Some(Line::Text(line))) => group.push(line),
            Ok(Some(Line::TooLong { bytes, .. })) => {
                tracing::warn!(
                    bytes,
                    "dropping a line of stdin over the limit of {MAX_LINE_BYTES} bytes"
                );
                if group.is_empty() {
                    continue;
                }
            }
            _ => return (!group.is_empty()).then_some(group),
        }
        if !reader.buffer().contains(&b'\n') {
            return Some(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// The reading end of a pipe, as the event loop reads stdin.
    fn test_pipe(reader: std::io::PipeReader) -> tokio::net::unix::pipe::Receiver {
        tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).unwrap()
    }

    #[tokio::test]
    async fn the_first_line_is_handed_over_and_the_end_is_seen() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let (line, mut closed) = watch_reader(BufReader::new(test_pipe(reader)), None);
        writer.write_all(b"{\"a\":1}\nmore\n").unwrap();
        assert_eq!(first_line(line).await.unwrap(), "{\"a\":1}");
        assert!(!closed.is_closed());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), closed.wait())
                .await
                .is_err(),
            "stdin is still open"
        );
        drop(writer);
        tokio::time::timeout(Duration::from_secs(5), closed.wait())
            .await
            .expect("the end of stdin is seen");
        assert!(closed.is_closed());
        // Waiting again resolves at once.
        closed.wait().await;
    }

    #[tokio::test]
    async fn a_manager_starts_only_when_told_and_not_once_stdin_ends() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let (line, closed) = watch_reader(BufReader::new(test_pipe(reader)), None);
        writer.write_all(b"{\"a\":1}\n").unwrap();
        first_line(line).await.unwrap();
        let start = closed.start_requested();
        let mut start = std::pin::pin!(start);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut start)
                .await
                .is_err(),
            "nobody said start"
        );
        writer
            .write_all(format!("{START_REQUEST}\n").as_bytes())
            .unwrap();
        let started = tokio::time::timeout(Duration::from_secs(5), start).await;
        assert_eq!(started.ok(), Some(true));

        let (reader, mut writer) = std::io::pipe().unwrap();
        let (line, closed) = watch_reader(BufReader::new(test_pipe(reader)), None);
        writer.write_all(b"{\"a\":1}\n").unwrap();
        first_line(line).await.unwrap();
        drop(writer);
        let started = tokio::time::timeout(Duration::from_secs(5), closed.start_requested()).await;
        assert_eq!(started.ok(), Some(false), "stdin ended before a start");
        assert!(
            StdinClosed::never().start_requested().await,
            "no parent to wait for"
        );
    }

    #[tokio::test]
    async fn the_lines_after_the_first_are_handed_over_before_the_end() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let (sender, mut lines) = mpsc::unbounded_channel();
        let (line, mut closed) = watch_reader(BufReader::new(test_pipe(reader)), Some(sender));
        writer.write_all(b"first\nsecond\nthird\n").unwrap();
        drop(writer);
        assert_eq!(first_line(line).await.unwrap(), "first");
        tokio::time::timeout(Duration::from_secs(5), closed.wait())
            .await
            .expect("the end of stdin is seen");
        // Written at once, read at once: they arrive together.
        assert_eq!(lines.try_recv().unwrap(), ["second", "third"]);
        assert!(lines.recv().await.is_none());
    }

    #[tokio::test]
    async fn an_overlong_line_is_skipped_unheld_and_an_overlong_assignment_refused() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let (reader, mut writer) = std::io::pipe().unwrap();
        let (sender, mut lines) = mpsc::unbounded_channel();
        let (line, _closed) = watch_reader(BufReader::new(test_pipe(reader)), Some(sender));
        let written = std::thread::spawn(move || {
            writer.write_all(b"{}\n").unwrap();
            writer.write_all(&long).unwrap();
            writer.write_all(b"\nafter\n").unwrap();
        });
        assert_eq!(first_line(line).await.unwrap(), "{}");
        let mut received = Vec::new();
        while let Some(group) = lines.recv().await {
            received.extend(group);
        }
        written.join().unwrap();
        assert_eq!(received, ["after"]);

        let (reader, mut writer) = std::io::pipe().unwrap();
        let (line, _closed) = watch_reader(BufReader::new(test_pipe(reader)), None);
        let long = vec![b'y'; MAX_LINE_BYTES + 1];
        std::thread::spawn(move || writer.write_all(&long));
        let error = first_line(line).await.unwrap_err();
        assert!(
            matches!(error, AssignmentError::TooLong(n) if n == MAX_LINE_BYTES + 1),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_immediate_end_is_an_error_and_a_closed_stdin() {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(writer);
        let (line, mut closed) = watch_reader(BufReader::new(test_pipe(reader)), None);
        let line = first_line(line).await.unwrap();
        let error = parse_assignment(&line).unwrap_err();
        assert!(matches!(error, AssignmentError::Missing), "{error:?}");
        assert_eq!(
            error.to_string(),
            "stdin ended before an assignment arrived"
        );
        tokio::time::timeout(Duration::from_secs(5), closed.wait())
            .await
            .unwrap();
    }

    #[test]
    fn a_bad_assignment_is_explained() {
        let error = parse_assignment("{\"job_id\": 3}\n").unwrap_err();
        assert!(matches!(error, AssignmentError::Invalid(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("the assignment on stdin is not valid"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn never_never_resolves() {
        let mut never = StdinClosed::never();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), never.wait())
                .await
                .is_err()
        );
    }
}
