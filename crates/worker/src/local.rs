//! A local worker's [`Transport`] (`gorgon __work --local`, started by `gorgon start
//! --local`): one `File` envelope per line on stdin, after the assignment, handed by the
//! originator when the previous files are finished (several at once, sized like a batch,
//! once the worker has timed a file); reply envelopes as JSON lines on stdout.
//! The end of stdin between files means there are no more; during a file, that the
//! originator died (it never closes stdin while a worker holds a file).

use std::collections::VecDeque;

use gorgon_protocol::{Envelope, Message, WorkerAssignment};
use std::os::fd::AsFd;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::stdin::StdinLines;

use crate::worker::{work_with, End, Transport};
use crate::StdinClosed;

/// Runs a local worker (see [`work_with`]) on stdin's `files` and stdout.
pub async fn work_local(
    assignment: WorkerAssignment,
    files: StdinLines,
    mut stdin: StdinClosed,
) -> i32 {
    let mut transport = LocalTransport {
        assignment: &assignment,
        files,
        read: VecDeque::new(),
        stdout: reply_output(),
    };
    work_with(&mut transport, &assignment, &mut stdin).await
}

struct LocalTransport<'a> {
    assignment: &'a WorkerAssignment,
    files: StdinLines,
    /// Lines that arrived with the last one taken (a hand-out written at once), not yet
    /// taken: a batch takes them without waiting.
    read: VecDeque<String>,
    stdout: Box<dyn AsyncWrite + Unpin + Send>,
}

/// Where a worker's replies go: its stdout, written straight from the event loop when it is
/// a pipe (as the pool starts workers); anything else goes through tokio's blocking pool,
/// which costs two thread hand-offs for every reply.
fn reply_output() -> Box<dyn AsyncWrite + Unpin + Send> {
    crate::pipe_or::<dyn AsyncWrite + Unpin + Send>(
        std::io::stdout().as_fd(),
        |fd| Ok(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?)),
        || Box::new(tokio::io::stdout()),
    )
}

impl Transport for LocalTransport<'_> {
    /// The originator keeps the file until its result arrives or this worker exits.
    type Taken = ();

    async fn next_file(&mut self) -> Result<(String, ()), End> {
        loop {
            if self.read.is_empty() {
                let Some(group) = self.files.recv().await else {
                    return Err(End::Finished);
                };
                self.read.extend(group);
            }
            if let Some(file) = self.read.pop_front().and_then(|line| self.accept(&line)) {
                return Ok((file, ()));
            }
        }
    }

    async fn try_next_file(&mut self) -> Option<(String, ())> {
        loop {
            if self.read.is_empty() {
                self.read.extend(self.files.try_recv().ok()?);
            }
            if let Some(file) = self.read.pop_front().and_then(|line| self.accept(&line)) {
                return Some((file, ()));
            }
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        let line = Envelope::new(self.assignment.job_id, message).encode_line();
        let written = async {
            self.stdout.write_all(&line).await?;
            self.stdout.flush().await
        };
        written.await.map_err(|error| {
            tracing::info!(%error, "the originator has gone; stopping");
            End::OriginatorGone
        })
    }

    async fn done(&mut self, (): ()) {}

    async fn hand_back(&mut self, (): ()) {}
}

impl LocalTransport<'_> {
    /// The file a line from the originator hands over; anything else is logged and dropped.
    fn accept(&self, line: &str) -> Option<String> {
        match Envelope::decode(line.as_bytes()) {
            Ok(envelope) if envelope.job_id != self.assignment.job_id => {
                tracing::warn!(job = %envelope.job_id, "dropping a file of another job");
            }
            Ok(Envelope {
                message: Message::File { file, .. },
                ..
            }) => return Some(file),
            Ok(envelope) => {
                tracing::warn!(body = ?envelope.message, "dropping a message that is not a file");
            }
            Err(error) => tracing::warn!(%error, "dropping an unreadable line on stdin"),
        }
        None
    }
}
