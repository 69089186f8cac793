//! Batch messages on the worker manager's side ([`Message::Files`]): several quick files the
//! originator packed into one message of the files queue. Each file of a batch is fed to the
//! host's slots like a file of its own; the batch's message is acknowledged once every one
//! of its files is settled here, that is once its result's publisher confirm has come, or
//! once it has been sent back to the queue alone. A batch delivered again (its host died
//! before settling it) runs nothing as it is: it is split, each file sent back alone and
//! marked `delivered_before`, so that each is checked with the originator (a file whose
//! result was confirmed before stays settled) and runs alone, where a death names it and
//! counts towards `max_crash_retries`.

use std::collections::HashMap;

use gorgon_protocol::{names, Broker, BrokerError, Envelope, Incoming, Message, WorkerAssignment};

/// What settles a file this host was given.
pub(crate) enum Source {
    /// A message of its own; `again` when it was delivered before (by the broker, or split
    /// out of a batch delivered before): it runs alone. Boxed: a delivery is large, and
    /// every held file has a source.
    Own {
        incoming: Box<Incoming>,
        again: bool,
    },
    /// Its share of the batch of this id ([`Batches`]).
    Batch(u64),
}

impl Source {
    /// Whether the file was delivered before, so runs alone.
    pub(crate) fn again(&self) -> bool {
        matches!(self, Source::Own { again: true, .. })
    }

    /// Whether it came in a batch.
    pub(crate) fn batched(&self) -> bool {
        matches!(self, Source::Batch(_))
    }
}

/// A batch's message, held until every file of it is settled here.
struct Batch {
    incoming: Incoming,
    /// Its files not settled yet.
    open: usize,
}

/// The batches this host holds, by an id of its own.
#[derive(Default)]
pub(crate) struct Batches {
    held: HashMap<u64, Batch>,
    next: u64,
}

impl Batches {
    /// Holds a delivered batch of `files` files; its id.
    pub(crate) fn add(&mut self, incoming: Incoming, files: usize) -> u64 {
        self.next += 1;
        self.held.insert(
            self.next,
            Batch {
                incoming,
                open: files,
            },
        );
        self.next
    }

    /// One file of batch `id` is settled here: once none is open, its message is
    /// acknowledged.
    pub(crate) async fn settled(&mut self, id: u64) {
        let Some(batch) = self.held.get_mut(&id) else {
            return;
        };
        batch.open = batch.open.saturating_sub(1);
        if batch.open == 0 {
            if let Some(batch) = self.held.remove(&id) {
                if let Err(error) = batch.incoming.ack().await {
                    tracing::warn!(%error, "cannot settle a batch message");
                }
            }
        }
    }

    /// Forgets every batch: their messages went with a lost connection, and the broker
    /// delivers them again.
    pub(crate) fn clear(&mut self) {
        self.held.clear();
    }
}

/// Sends `files` back to the job's files queue, each alone and marked `delivered_before`,
/// and waits until the broker has them all (publisher confirms): only then may the batch
/// they came in be acknowledged.
pub(crate) async fn send_alone(
    broker: &Broker,
    assignment: &WorkerAssignment,
    files: &[String],
) -> Result<(), BrokerError> {
    let job = assignment.job_id;
    // Made before the first await: an iterator over borrowed names held across it would
    // keep the manager's future from being `Send`.
    let messages: Vec<Envelope> = files
        .iter()
        .map(|file| Envelope::new(job, Message::file_delivered_before(file.clone())))
        .collect();
    broker
        .send_all_to_queue(&names::files_queue(job), messages)
        .await
}
