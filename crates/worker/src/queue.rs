//! A distributed worker's [`Transport`]: files from the job's files queue on RabbitMQ
//! (prefetch 1), messages to the originator's reply queue. A file is acknowledged only once
//! its result has reached the originator (publisher confirm), so a file whose worker dies
//! goes back to the queue; a file delivered again is first checked with the originator.

use gorgon_protocol::{
    names, Broker, BrokerError, Envelope, Inbox, Incoming, Message, WorkerAssignment,
};

use crate::worker::{work_with, End, Transport};
use crate::{StdinClosed, EXIT_BROKEN};

/// How long a worker waits for the originator's answer before running the file anyway.
const RETRY_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a worker of a listener's job (see [`work_with`]) on the job's queues.
pub async fn work(assignment: WorkerAssignment, mut stdin: StdinClosed) -> i32 {
    let worker_id = assignment.worker_id.unwrap_or_default();
    let job = assignment.job_id;
    let name = format!(
        "gorgon worker {} of {} job {job}",
        worker_id, assignment.host
    );
    let broker = match Broker::connect(&assignment.broker, &name).await {
        Ok(broker) => broker,
        Err(error) => {
            tracing::error!(%error, "worker {worker_id} cannot start");
            return EXIT_BROKEN;
        }
    };
    let mut transport = QueueTransport {
        broker: &broker,
        assignment: &assignment,
        files: None,
        retries: None,
    };
    let code = work_with(&mut transport, &assignment, &mut stdin).await;
    broker.close().await;
    code
}

struct QueueTransport<'a> {
    broker: &'a Broker,
    assignment: &'a WorkerAssignment,
    /// The files queue's consumer, opened at the first file so that `before_start` runs
    /// before this worker holds a file.
    files: Option<Inbox>,
    /// Opened at the first redelivered file: most workers never need it, and 200 workers
    /// declaring a queue each at start is load the broker can do without.
    retries: Option<RetryChannel>,
}

/// Where a worker hears the originator's answers about files delivered again.
struct RetryChannel {
    queue: String,
    inbox: Inbox,
}

impl Transport for QueueTransport<'_> {
    type Taken = Incoming;

    async fn next_file(&mut self) -> Result<(String, Incoming), End> {
        if self.files.is_none() {
            let queue = names::files_queue(self.assignment.job_id);
            match self.broker.consume(&queue, Some(1)).await {
                Ok(inbox) => self.files = Some(inbox),
                // The originator deletes the files queue once every file has a result.
                Err(error) if error.is_not_found() => return Err(End::Finished),
                Err(error) => {
                    tracing::error!(%error, "cannot take files");
                    return Err(End::Broken);
                }
            }
        }
        loop {
            let files = self.files.as_mut().expect("the consumer was opened above");
            let Some(incoming) = files.next().await else {
                // A consumer ends cleanly when the originator deletes the queue; an error
                // (the connection dropped) is not the end of the job.
                return Err(if files.failed() {
                    End::Broken
                } else {
                    End::Finished
                });
            };
            if let Some(file) = self.accept(&incoming).await? {
                return Ok((file, incoming));
            }
        }
    }

    async fn try_next_file(&mut self) -> Option<(String, Incoming)> {
        loop {
            let incoming = match self.files.as_ref()?.try_next().await {
                Ok(incoming) => incoming?,
                Err(error) => {
                    tracing::warn!(%error, "cannot take another file for the batch");
                    return None;
                }
            };
            if incoming.redelivered {
                // It runs alone, as the first file of a later request.
                settle(incoming.requeue().await);
                return None;
            }
            match self.accept(&incoming).await {
                Ok(Some(file)) => return Some((file, incoming)),
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
    }

    async fn send_all(&mut self, messages: Vec<Message>) -> Result<(), End> {
        let job = self.assignment.job_id;
        let envelopes = messages
            .into_iter()
            .map(|message| Envelope::new(job, message));
        let sent = self
            .broker
            .send_all_to_queue(&self.assignment.reply_to, envelopes)
            .await;
        reported(sent)
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        let envelope = Envelope::new(self.assignment.job_id, message);
        let sent = self
            .broker
            .send_to_queue(&self.assignment.reply_to, &envelope)
            .await;
        reported(sent)
    }

    fn delivered_again(taken: &Incoming) -> bool {
        taken.redelivered
    }

    async fn done(&mut self, taken: Incoming) {
        settle(taken.ack().await);
    }

    async fn hand_back(&mut self, taken: Incoming) {
        settle(taken.requeue().await);
    }
}

impl QueueTransport<'_> {
    /// Checks a delivered message: the file to run, `None` when the message was settled
    /// here (foreign, unreadable, or a file that already has a result), or how the worker
    /// must end (its workspace is gone; the file went back to the queue).
    async fn accept(&mut self, incoming: &Incoming) -> Result<Option<String>, End> {
        let file = match &incoming.envelope {
            Ok(envelope) if envelope.job_id != self.assignment.job_id => {
                tracing::warn!(job = %envelope.job_id, "dropping a file of another job");
                settle(incoming.discard().await);
                return Ok(None);
            }
            Ok(Envelope {
                message: Message::File { file },
                ..
            }) => file.clone(),
            Ok(envelope) => {
                tracing::warn!(body = ?envelope.message, "dropping a message that is not a file");
                settle(incoming.discard().await);
                return Ok(None);
            }
            Err(error) => {
                tracing::warn!(%error, "dropping an unreadable message");
                settle(incoming.discard().await);
                return Ok(None);
            }
        };
        if incoming.redelivered
            && !retry_allowed(self.broker, self.assignment, &mut self.retries, &file).await
        {
            tracing::info!(file, "the file already has a result; not running it again");
            settle(incoming.ack().await);
            return Ok(None);
        }
        if !self.assignment.workspace.is_dir() {
            // The listener removed the workspace: this worker outlived its job here.
            tracing::warn!(file, "the workspace is gone; handing the file back");
            settle(incoming.requeue().await);
            return Err(End::Stopped);
        }
        Ok(Some(file))
    }
}

/// What a failed report means for the worker.
fn reported(sent: Result<(), BrokerError>) -> Result<(), End> {
    match sent {
        Ok(()) => Ok(()),
        Err(BrokerError::Unroutable(_)) => {
            tracing::info!("the originator has gone; stopping");
            Err(End::OriginatorGone)
        }
        Err(error) => {
            tracing::error!(%error, "cannot report to the originator");
            Err(End::Broken)
        }
    }
}

/// Asks the originator whether a redelivered file still needs a run: after its worker
/// died `max_crash_retries` times the file is settled as crashed and must not kill more
/// workers. Without an answer the file runs: a duplicate result is dropped, a lost one
/// is not.
async fn retry_allowed(
    broker: &Broker,
    assignment: &WorkerAssignment,
    retries: &mut Option<RetryChannel>,
    file: &str,
) -> bool {
    if retries.is_none() {
        let opened = async {
            let queue = broker.declare_private_queue().await?;
            let inbox = broker.consume(&queue, None).await?;
            Ok::<_, BrokerError>(RetryChannel { queue, inbox })
        };
        match opened.await {
            Ok(channel) => *retries = Some(channel),
            Err(error) => {
                tracing::warn!(%error, "cannot open the answers queue; running the file again");
                return true;
            }
        }
    }
    let Some(retries) = retries.as_mut() else {
        return true;
    };
    let ask = Message::RetryCheck {
        file: file.to_owned(),
        reply_to: retries.queue.clone(),
    };
    let envelope = Envelope::new(assignment.job_id, ask);
    let asked = broker.send_to_queue(&assignment.reply_to, &envelope).await;
    if asked.is_err() {
        return true;
    }
    let job = assignment.job_id;
    let inbox = &mut retries.inbox;
    let answer = tokio::time::timeout(RETRY_ANSWER_WAIT, async {
        while let Some(incoming) = inbox.next().await {
            let _ = incoming.ack().await;
            if let Ok(envelope) = &incoming.envelope {
                if let Message::RetryAnswer {
                    file: answered,
                    run,
                } = &envelope.message
                {
                    if answered == file && envelope.job_id == job {
                        return *run;
                    }
                }
            }
        }
        true
    })
    .await;
    answer.unwrap_or(true)
}

fn settle(result: Result<(), BrokerError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "cannot settle a file message");
    }
}
