//! The worker manager's side of the job's queues: it takes files from the files queue for
//! the pool's idle workers, publishes their replies to the originator's reply queue, and
//! settles each file's message only once its result has reached the originator (publisher
//! confirm), so that a file whose worker, manager or listener dies goes back to the queue.
//! Replies do not wait for each other's confirms: many in flight share the broker's disk
//! writes, and each result's file is settled when its own confirm arrives.
//!
//! The consumer's prefetch is the host's slot count, and an idle worker takes one delivered
//! file plus, for a batch, files that are waiting right now (`basic.get`): a host never holds
//! more files than its workers can start, beyond one batch each. A far host, whose slots
//! would wait for the broker between files, holds a few more ([`LookAhead`]) through a
//! second consumer of the files queue, opened once the distance and the files' times are
//! measured, with those extra files as its prefetch; its batches are made of the files it
//! holds, since a `basic.get` would stall its every slot for a round trip.
//!
//! A batch message of quick files (`Message::Files`, see `batches`) gives each of its files
//! to the waiting ones; an idle worker's own batch takes its share of them (the batch's
//! files over the host's slots) rather than files by `basic.get`. The batch's message is
//! settled once each of its files is: its result confirmed, or sent back to the queue alone.
//!
//! A file delivered again (its worker died somewhere) is first checked with the originator (`RetryCheck`: after
//! `max_crash_retries` deaths it is settled as crashed and must not kill more workers) and
//! then runs alone, so that a death during it names it.
//!
//! A retry of a failure on this host, while another host that took the job works on it
//! (the originator says so in the retry's `RetryOf`), is not run here: it is held aside for
//! [`HAND_BACK_PAUSE`] and handed back to the queue (requeued to its head), again each time
//! it comes back, so that the next host with a free slot takes it; the broker delivers to
//! its consumers in turn, so another host with a free slot gets it at the next hand-back.
//! Held aside, it takes one of this host's prefetch slots, so the broker cannot hand it
//! straight back while other files wait. Bounded: once this host has handed it back for
//! [`RETRY_HAND_OFF`] (every other host busy or gone all that time), it runs here, on
//! another worker.
//!
//! When the broker connection is lost mid-job, the workers go on with what they run; their
//! replies wait here, and the feeder reconnects (to any node) with backoff until
//! `connection.outage_limit`. The job's queues are durable: once back, it takes files again
//! and sends what waited. The files it held went back to the queue with the connection: one
//! still running here when its message comes back is re-attached to that message (not run
//! again), one whose result is known is settled by the redelivery check, and one delivered
//! to another host meanwhile may run twice, the second result dropped by the originator.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use gorgon_protocol::{
    broker::{Backoff, ConsumerChannel},
    names, Broker, BrokerError, Envelope, Inbox, Incoming, Message, Unconfirmed, WorkerAssignment,
};

use crate::batches::{self, Batches, Source};
use crate::host_job::sleep_until_some;
use crate::look_ahead::LookAhead;

/// How long the manager waits for the originator's answer about a file delivered again
/// before running it anyway (a duplicate result is dropped, a lost one is not).
const RETRY_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// How long this host hands a retry of its own failure back for another host to take,
/// at most, before running it itself. Shorter than the originator's wait for a lost file
/// (10 s), so that a retry held aside here is never taken for lost.
const RETRY_HAND_OFF: Duration = Duration::from_secs(5);

/// How long a retry this host hands back is held aside before it goes back to the queue:
/// the hand-backs of one retry cost the broker a few messages a second, not a loop.
const HAND_BACK_PAUSE: Duration = Duration::from_millis(250);

/// Why the feeder can give no more files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The originator deleted the files queue: every file has a result.
    Finished,
    /// The originator is gone: nobody wants results any more.
    OriginatorGone,
    /// The workspace is gone: the listener ended the job here.
    WorkspaceGone,
    /// The broker failed under us.
    Broken,
}

/// Replies in flight at most: one more waits for the oldest one's confirm first.
const UNCONFIRMED_LIMIT: usize = 512;

/// Replies kept while the broker is away, at most (live output beyond it is dropped; results
/// never are).
const UNSENT_OUTPUT_LIMIT: usize = 1000;

/// Replies sent together at most: their count, and the length of their lines.
const TOGETHER_REPLIES: usize = 64;
const TOGETHER_BYTES: usize = 1024 * 1024;

/// Replies that were ready at the same time, gathered to go as one message
/// ([`Message::Replies`]), within [`TOGETHER_REPLIES`] and [`TOGETHER_BYTES`].
#[derive(Default)]
pub(crate) struct Together {
    replies: Vec<Message>,
    bytes: usize,
}

impl Together {
    /// Adds a reply of `bytes`; when it does not fit with those before, those are returned
    /// to be sent first.
    pub(crate) fn add(&mut self, reply: Message, bytes: usize) -> Option<Vec<Message>> {
        let full = !self.replies.is_empty()
            && (self.replies.len() == TOGETHER_REPLIES || self.bytes + bytes > TOGETHER_BYTES);
        let before = full.then(|| self.take());
        self.replies.push(reply);
        self.bytes += bytes;
        before
    }

    /// The replies gathered so far, in order, leaving none.
    pub(crate) fn take(&mut self) -> Vec<Message> {
        self.bytes = 0;
        std::mem::take(&mut self.replies)
    }
}

/// The replies a message of this manager carries: those it sent together (never nested,
/// see [`Feeder::send_together`]), or the message itself.
fn carried(message: &Message) -> &[Message] {
    match message {
        Message::Replies { replies } => replies,
        single => std::slice::from_ref(single),
    }
}

/// The files whose results `message` carries.
fn results_in(message: &Message) -> impl Iterator<Item = &str> {
    carried(message).iter().filter_map(|reply| match reply {
        Message::FileFinished(result) => Some(result.file.as_str()),
        _ => None,
    })
}

/// The broker connection lost mid-job, being got back.
struct Outage {
    /// When the job stops trying: `connection.outage_limit` after the loss.
    deadline: Instant,
    /// The next attempt, and the waits after it if it fails.
    next_attempt: Instant,
    backoff: Backoff,
}

/// The job's queues, as the worker manager uses them.
pub(crate) struct Feeder<'a> {
    broker: Broker,
    assignment: &'a WorkerAssignment,
    files: Option<Inbox>,
    /// The files queue's consumer for the extra files a far host holds ([`LookAhead`]), its
    /// prefetch, and its opening while under way.
    ahead: Option<Inbox>,
    ahead_prefetch: u16,
    opening_ahead: Option<tokio::task::JoinHandle<Result<Inbox, Ended>>>,
    look_ahead: LookAhead,
    /// The files queue's consumers once the broker ended them (the job is over): closed by
    /// [`Feeder::hand_back_all`], after the files they delivered are settled.
    spent: Vec<Inbox>,
    /// Delivered files no worker has taken yet, in delivery order.
    waiting: VecDeque<Delivered>,
    /// Files given to workers, until their result is confirmed or they come back.
    held: HashMap<String, VecDeque<Source>>,
    /// Batch messages ([`Message::Files`]), until each of their files is settled.
    batches: Batches,
    /// Where the originator answers about files delivered again; opened at the first one.
    retries: Option<RetryChannel>,
    ended: Option<Ended>,
    /// Set while the connection is lost.
    outage: Option<Outage>,
    /// Replies handed to the broker whose confirm has not come yet, oldest first.
    unconfirmed: VecDeque<InFlight>,
    /// Replies for the originator that wait for the connection to come back, in order.
    unsent: VecDeque<Message>,
    /// Files running here whose message went with a lost connection, until the message
    /// comes back (then held again) or their result is out.
    orphans: HashSet<String>,
    /// Replies handed to the broker, and the messages they went in.
    sent: Sent,
    /// Retries of failures here held aside, each until it goes back to the queue.
    aside: Vec<(Incoming, Instant)>,
    /// Retry unit → when this host first handed it back ([`RETRY_HAND_OFF`]).
    handing_off: HashMap<String, Instant>,
}

/// How many replies a manager handed to the broker, and in how many messages.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sent {
    pub(crate) replies: usize,
    pub(crate) messages: usize,
}

/// A reply handed to the broker, until its confirm.
struct InFlight {
    message: Message,
    unconfirmed: Unconfirmed,
    sent_at: Instant,
}

/// What the job's queues have for the manager (see [`Feeder::next_event`]).
pub(crate) enum FeedEvent {
    /// A delivery from the files queue; `None` when its consumer has ended.
    Delivery(Option<Incoming>),
    /// A delivery to the consumer of extra files; `None` when it has ended.
    Ahead(Option<Incoming>),
    /// The consumer of extra files is open, or could not be opened.
    AheadOpened(Result<Inbox, Ended>),
    /// The confirm of the oldest reply in flight.
    Confirm(Result<(), BrokerError>),
    /// A retry held aside goes back to the queue.
    HandBack,
}

/// A delivered file that no worker has taken yet.
struct Delivered {
    file: String,
    source: Source,
    /// A retry of a failure on this host: the worker it failed on, which leaves it to
    /// another worker when there is one.
    avoid_worker: Option<u32>,
}

impl Delivered {
    /// A file delivered again (its worker died somewhere) or a retry runs alone.
    fn alone(&self) -> bool {
        self.source.again() || self.avoid_worker.is_some()
    }

    /// A file of a batch, which may join a worker's batch at once.
    fn batched(&self) -> bool {
        self.source.batched() && !self.alone()
    }
}

/// Where the manager hears the originator's answers about files delivered again.
struct RetryChannel {
    queue: String,
    inbox: Inbox,
}

impl<'a> Feeder<'a> {
    /// Opens the files queue's consumer on `channel` (opened with [`files_channel`]);
    /// `Err(Finished)` when the job is already over.
    pub(crate) async fn open(
        broker: &Broker,
        assignment: &'a WorkerAssignment,
        channel: ConsumerChannel,
    ) -> Result<Feeder<'a>, Ended> {
        let consumed = channel
            .consume(&names::files_queue(assignment.job_id))
            .await;
        let files = consumed_files(consumed)?;
        Ok(Feeder {
            broker: broker.clone(),
            assignment,
            files: Some(files),
            ahead: None,
            ahead_prefetch: 0,
            opening_ahead: None,
            look_ahead: LookAhead::default(),
            spent: Vec::new(),
            waiting: VecDeque::new(),
            held: HashMap::new(),
            batches: Batches::default(),
            retries: None,
            ended: None,
            outage: None,
            unconfirmed: VecDeque::new(),
            unsent: VecDeque::new(),
            orphans: HashSet::new(),
            sent: Sent::default(),
            aside: Vec::new(),
            handing_off: HashMap::new(),
        })
    }

    /// The connection in use (a new one after an outage).
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// True while files may come from the files queue (not in an outage, not ended).
    pub(crate) fn taking(&self) -> bool {
        self.files.is_some() && self.ended.is_none()
    }

    /// True while the connection is lost and being got back.
    pub(crate) fn in_outage(&self) -> bool {
        self.outage.is_some()
    }

    /// Takes note that the connection was lost: what it delivered went back to the queue
    /// with it (so nothing held or waiting can be settled any more), the replies without a
    /// confirm are sent again once it is back, and the feeder will try to reconnect until
    /// `connection.outage_limit`.
    fn lose_connection(&mut self) {
        for in_flight in self.unconfirmed.drain(..).rev() {
            self.unsent.push_front(in_flight.message);
        }
        if self.outage.is_some() || self.ended.is_some() {
            return;
        }
        let limit = self.broker.outage_limit();
        tracing::warn!(
            "lost the connection to RabbitMQ at {}; the workers go on, and the manager reconnects for up to {} s",
            self.broker.address(),
            limit.as_secs()
        );
        let now = Instant::now();
        self.outage = Some(Outage {
            deadline: now + limit,
            next_attempt: now,
            backoff: Backoff::new(),
        });
        self.files = None;
        // Its consumer went with the connection.
        drop(self.stop_looking_ahead());
        self.retries = None;
        self.orphans.extend(self.held.drain().map(|(file, _)| file));
        self.batches.clear();
        self.waiting.clear();
        self.aside.clear();
    }

    /// When the next reconnection attempt is due, in an outage.
    pub(crate) fn reconnect_at(&self) -> Option<Instant> {
        self.outage.as_ref().map(|outage| outage.next_attempt)
    }

    /// One attempt to get the connection back: on success the feeder takes files again and
    /// sends the replies that waited; past the outage limit, the job ends here as broken.
    pub(crate) async fn try_reconnect(&mut self) {
        let Some(outage) = self.outage.as_mut() else {
            return;
        };
        // An attempt still waiting for its answer at the limit (a silent link) ends there.
        let bound = Backoff::attempt_bound(Instant::now(), outage.deadline);
        let connecting = tokio::time::timeout_at(bound, Broker::connect_like(&self.broker));
        let attempt = match connecting.await {
            Ok(Ok(broker)) => match consume_files(&broker, self.assignment).await {
                Ok(files) => Ok((broker, Some(files))),
                Err(Ended::Finished) => Ok((broker, None)),
                Err(_) => Err("cannot take files again".to_owned()),
            },
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer before the limit".to_owned()),
        };
        match attempt {
            Ok((broker, files)) => {
                tracing::info!(
                    "reconnected to RabbitMQ at {}; the job goes on here",
                    broker.address()
                );
                self.broker = broker;
                self.outage = None;
                match files {
                    Some(files) => self.files = Some(files),
                    None => self.ended = Some(Ended::Finished),
                }
                // In order, until done or the connection is lost again.
                while self.outage.is_none() {
                    let Some(message) = self.unsent.pop_front() else {
                        break;
                    };
                    if self.send(message).await.is_err() {
                        break;
                    }
                }
            }
            Err(reason) => {
                // The last attempt is at the limit itself.
                if let Some(next) = outage.backoff.next_attempt(Instant::now(), outage.deadline) {
                    tracing::info!("cannot reconnect yet: {reason}");
                    outage.next_attempt = next;
                    return;
                }
                tracing::error!(
                    "RabbitMQ at {} stayed away past connection.outage_limit ({} s): {reason}; stopping the job here",
                    self.broker.address(),
                    self.broker.outage_limit().as_secs()
                );
                self.outage = None;
                self.unsent.clear();
                self.ended = Some(Ended::Broken);
            }
        }
    }

    /// Why no more files come, once that is known.
    pub(crate) fn ended(&self) -> Option<Ended> {
        self.ended
    }

    /// How many delivered files wait for an idle worker.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True while the queues may have something for the manager: files to take (when
    /// `taking_files`), or confirms of replies in flight.
    pub(crate) fn expecting(&self, taking_files: bool) -> bool {
        (taking_files && self.taking()) || self.confirming() || !self.aside.is_empty()
    }

    /// The next delivery of a file (when `taking_files`) or confirm of a reply. Cancel-safe:
    /// nothing is lost when another event wins the race; pass what it returns to
    /// [`Feeder::handle`], which is not.
    pub(crate) async fn next_event(&mut self, taking_files: bool) -> FeedEvent {
        let take = taking_files && self.taking();
        let delivery = next_file(self.files.as_mut().filter(|_| take));
        let ahead = next_file(self.ahead.as_mut().filter(|_| take));
        let opened = async {
            match self.opening_ahead.as_mut() {
                Some(opening) => opening.await.unwrap_or(Err(Ended::Broken)),
                None => std::future::pending().await,
            }
        };
        let confirm = oldest_confirm(&mut self.unconfirmed);
        let hand_back = self.aside.iter().map(|(_, at)| *at).min();
        tokio::select! {
            incoming = delivery => FeedEvent::Delivery(incoming),
            incoming = ahead => FeedEvent::Ahead(incoming),
            opened = opened => FeedEvent::AheadOpened(opened),
            confirm = confirm => FeedEvent::Confirm(confirm),
            () = sleep_until_some(hand_back), if hand_back.is_some() => FeedEvent::HandBack,
        }
    }

    /// Acts on what [`Feeder::next_event`] returned: a delivered file is kept for a worker,
    /// a confirm settles its reply; the end of the consumer ends the feed (then
    /// [`Feeder::ended`] says why) or starts an outage.
    pub(crate) async fn handle(&mut self, event: FeedEvent) {
        match event {
            FeedEvent::Delivery(Some(incoming)) | FeedEvent::Ahead(Some(incoming)) => {
                let delivered = self.accept(incoming).await;
                self.waiting.extend(delivered);
            }
            // The files queue's end, or the connection's, comes to the first consumer too.
            FeedEvent::Ahead(None) => self.spent.extend(self.ahead.take()),
            FeedEvent::AheadOpened(opened) => self.ahead_opened(opened).await,
            FeedEvent::Delivery(None) => {
                // A consumer ends cleanly when the originator deletes the queue; an error
                // (the connection dropped) is not the end of the job.
                let failed = self.files.as_ref().is_some_and(Inbox::failed);
                if failed || !self.broker.is_connected() {
                    self.lose_connection();
                } else {
                    self.ended = Some(Ended::Finished);
                }
                self.spent.extend(self.files.take());
            }
            FeedEvent::Confirm(confirm) => self.confirmed(confirm).await,
            FeedEvent::HandBack => self.hand_back_retries(false).await,
        }
    }

    /// Sends the retries held aside back to the queue: those due (all, with `all`).
    async fn hand_back_retries(&mut self, all: bool) {
        let now = Instant::now();
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.aside)
            .into_iter()
            .partition(|(_, at)| all || *at <= now);
        self.aside = kept;
        for (incoming, _) in due {
            settle(incoming.requeue().await);
        }
    }

    /// Files for idle worker `worker_id`, which takes `count`: the next delivered one that
    /// it may run (a retry that failed on it is left for another worker when `others`,
    /// another worker runs), then (unless that one runs alone: delivered again, or a retry)
    /// files waiting in the queue right now (on a far host, delivered ones), up to `count`.
    /// They are held until [`Feeder::done`] or [`Feeder::hand_back`].
    pub(crate) async fn take(&mut self, worker_id: u32, count: usize, others: bool) -> Vec<String> {
        let Some(at) = self
            .waiting
            .iter()
            .position(|d| !others || d.avoid_worker != Some(worker_id))
        else {
            return Vec::new();
        };
        let Some(first) = self.waiting.remove(at) else {
            return Vec::new();
        };
        let alone = first.alone();
        let mut taken = vec![first.file.clone()];
        self.hold(first.file, first.source);
        // The files of batch messages here are spread over the host's slots: a worker takes
        // its share of them at most (and nothing by `basic.get` then), the rest wait for
        // the next idle one.
        let slots = usize::try_from(self.assignment.slots.max(1)).unwrap_or(1);
        let batched = self.waiting.iter().filter(|d| d.batched()).count();
        let mut share = batched.div_ceil(slots);
        while !alone && taken.len() < count {
            let next = if batched > 0 {
                if share == 0 {
                    break;
                }
                share -= 1;
                self.take_waiting(Delivered::batched)
            } else if self.ahead_prefetch > 0 {
                // A far host's `basic.get` would stall every slot here for a round trip: its
                // batches come from the files it holds ahead.
                self.take_waiting(|d| !d.alone())
            } else {
                self.try_take().await
            };
            let Some(delivered) = next else {
                break;
            };
            taken.push(delivered.file.clone());
            self.hold(delivered.file, delivered.source);
        }
        taken
    }

    /// The first delivered file that is `fit` to join a batch.
    fn take_waiting(&mut self, fit: impl Fn(&Delivered) -> bool) -> Option<Delivered> {
        let at = self.waiting.iter().position(fit)?;
        self.waiting.remove(at)
    }

    fn hold(&mut self, file: String, source: Source) {
        self.held.entry(file).or_default().push_back(source);
    }

    /// A file waiting in the queue right now, never one delivered again (it runs alone, as
    /// the first file of a later hand-out) or a retry (kept for a later hand-out).
    async fn try_take(&mut self) -> Option<Delivered> {
        loop {
            let incoming = match self.files.as_ref()?.try_next().await {
                Ok(incoming) => incoming?,
                Err(error) => {
                    tracing::warn!(%error, "cannot take another file for the batch");
                    if !self.broker.is_connected() {
                        self.lose_connection();
                    }
                    return None;
                }
            };
            if incoming.redelivered {
                settle(incoming.requeue().await);
                return None;
            }
            let mut delivered = self.accept(incoming).await.into_iter();
            let Some(first) = delivered.next() else {
                continue;
            };
            // One that runs alone waits for a later hand-out, the rest of a batch for the
            // next ones.
            let first = if first.alone() {
                self.waiting.push_back(first);
                None
            } else {
                Some(first)
            };
            self.waiting.extend(delivered);
            return first;
        }
    }

    /// Files a worker could not take: back in front of the waiting ones (a retry among
    /// them runs alone, wherever it lands).
    pub(crate) fn refused(&mut self, files: Vec<String>) {
        for file in files.into_iter().rev() {
            if let Some(source) = self.release(&file) {
                self.waiting.push_front(Delivered {
                    file,
                    source,
                    avoid_worker: None,
                });
            }
        }
    }

    /// The held message of `file`, no longer held.
    fn release(&mut self, file: &str) -> Option<Source> {
        let messages = self.held.get_mut(file)?;
        let source = messages.pop_front();
        if messages.is_empty() {
            self.held.remove(file);
        }
        source
    }

    /// `file`'s result has reached the originator: its message is settled (a batch's, once
    /// all its files are).
    pub(crate) async fn done(&mut self, file: &str) {
        match self.release(file) {
            Some(Source::Own { incoming, .. }) => settle(incoming.ack().await),
            Some(Source::Batch(batch)) => self.batches.settled(batch).await,
            None => {}
        }
    }

    /// Files that did not run to a result here go back to the queue, for any host, once the
    /// replies sent before (a worker's crash) have reached the originator.
    pub(crate) async fn hand_back(&mut self, files: Vec<String>) {
        self.flush().await;
        let mut sources = Vec::new();
        for file in files {
            self.orphans.remove(&file);
            if let Some(source) = self.release(&file) {
                sources.push((file, source));
            }
        }
        self.send_back(sources).await;
    }

    /// Files go back to the queue: a file's own message is requeued; the files of a batch
    /// are sent back alone (marked delivered before, so each is checked and runs alone),
    /// and once the broker has them, the batch counts them as settled.
    async fn send_back(&mut self, sources: Vec<(String, Source)>) {
        let mut alone = Vec::new();
        for (file, source) in sources {
            match source {
                Source::Own { incoming, .. } => settle(incoming.requeue().await),
                Source::Batch(batch) => alone.push((file, batch)),
            }
        }
        if alone.is_empty() {
            return;
        }
        let files: Vec<String> = alone.iter().map(|(file, _)| file.clone()).collect();
        match batches::send_alone(&self.broker, self.assignment, &files).await {
            Ok(()) => {
                for (_, batch) in alone {
                    self.batches.settled(batch).await;
                }
            }
            // Unsettled, its batch goes back whole with the connection (or the queue is gone
            // with the job).
            Err(error) => tracing::warn!(%error, "cannot send files of a batch back alone"),
        }
    }

    /// Every file this host holds or has waiting goes back to the queue (a file whose result
    /// is confirmed first is settled instead), and the consumers close: the job is over here.
    pub(crate) async fn hand_back_all(&mut self) {
        self.flush().await;
        let mut sources: Vec<(String, Source)> = self
            .held
            .drain()
            .flat_map(|(file, held)| held.into_iter().map(move |source| (file.clone(), source)))
            .collect();
        sources.extend(
            std::mem::take(&mut self.waiting)
                .into_iter()
                .map(|delivered| (delivered.file, delivered.source)),
        );
        self.send_back(sources).await;
        // The retries held aside go back to the queue while their channels are open.
        self.hand_back_retries(true).await;
        // Closed now, before the connection: a dropped consumer's channel is closed by lapin
        // after it, which lapin logs as an error on every job's end. All at once: a far
        // host's job would end a round trip or two later for each in turn.
        let ahead = self.stop_looking_ahead();
        let retries = self.retries.take().map(|r| r.inbox);
        let consumers = [self.files.take(), ahead, retries];
        let mut closing = tokio::task::JoinSet::new();
        for inbox in consumers.into_iter().flatten().chain(self.spent.drain(..)) {
            closing.spawn(inbox.close());
        }
        while closing.join_next().await.is_some() {}
    }

    /// Sends one message to the originator without waiting for its confirm (which comes
    /// through [`Feeder::next_event`]; a `FileFinished` settles its file once confirmed).
    /// `Err` when nobody can take results any more.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), Ended> {
        // Its result is out (or waits to be): its run no longer needs its message back.
        for reply in carried(&message) {
            if let Message::FileFinished(result) = reply {
                self.orphans.remove(&result.file);
                self.look_ahead.file_took(result.seconds);
            }
        }
        if self.outage.is_none() && self.unconfirmed.len() >= UNCONFIRMED_LIMIT {
            let oldest = self.next_confirm().await;
            self.confirmed(oldest).await;
        }
        if self.outage.is_some() {
            let output = matches!(message, Message::FileOutput { .. });
            if !output || self.unsent.len() < UNSENT_OUTPUT_LIMIT {
                self.unsent.push_back(message);
            }
            return Ok(());
        }
        let envelope = Envelope::new(self.assignment.job_id, message.clone());
        match self
            .broker
            .hand_to_queue(&self.assignment.reply_to, &envelope)
            .await
        {
            Ok(unconfirmed) => {
                self.sent.replies += carried(&message).len();
                self.sent.messages += 1;
                self.unconfirmed.push_back(InFlight {
                    message,
                    unconfirmed,
                    sent_at: Instant::now(),
                });
                Ok(())
            }
            Err(error) if self.lost_with_connection(&error) => {
                // Sent again once the connection is back, after the replies before it.
                self.unsent.push_front(message);
                self.lose_connection();
                Ok(())
            }
            Err(error) => Err(self.end_with(&error)),
        }
    }

    /// Sends replies that were ready together as one message, as [`Feeder::send`] does one
    /// (while the connection is lost, they wait one by one, as they came).
    pub(crate) async fn send_together(&mut self, replies: Vec<Message>) -> Result<(), Ended> {
        if self.outage.is_some() {
            for reply in replies {
                self.send(reply).await?;
            }
            return Ok(());
        }
        match Message::coalesce(replies) {
            Some(message) => self.send(message).await,
            None => Ok(()),
        }
    }

    /// How many replies were handed to the broker, and in how many messages.
    pub(crate) fn sent(&self) -> Sent {
        self.sent
    }

    /// True while replies wait for their confirm.
    fn confirming(&self) -> bool {
        !self.unconfirmed.is_empty()
    }

    /// The confirm of the oldest reply in flight (never without one).
    async fn next_confirm(&mut self) -> Result<(), BrokerError> {
        oldest_confirm(&mut self.unconfirmed).await
    }

    /// Acts on the oldest reply's confirm: a confirmed result settles its file; a reply lost
    /// with the connection is sent again once it is back; a reply nobody takes ends the job
    /// here.
    async fn confirmed(&mut self, confirm: Result<(), BrokerError>) {
        match confirm {
            Ok(()) => {
                if let Some(in_flight) = self.unconfirmed.pop_front() {
                    self.look_ahead.confirmed_after(in_flight.sent_at.elapsed());
                    for file in results_in(&in_flight.message) {
                        self.done(file).await;
                    }
                }
                self.look_further_ahead();
            }
            Err(error) if self.lost_with_connection(&error) => self.lose_connection(),
            Err(error) => {
                self.unconfirmed.pop_front();
                self.end_with(&error);
            }
        }
    }

    /// Waits until every reply in flight is confirmed (or lost with the connection).
    async fn flush(&mut self) {
        while self.confirming() {
            let oldest = self.next_confirm().await;
            self.confirmed(oldest).await;
        }
    }

    /// Whether a failed publish or confirm went with the connection (the reply is to be
    /// sent again), rather than refused.
    fn lost_with_connection(&self, error: &BrokerError) -> bool {
        !matches!(error, BrokerError::Unroutable(_)) && !self.broker.is_connected()
    }

    /// Ends the feed for a reply the broker refused: nobody takes the job's results.
    fn end_with(&mut self, error: &BrokerError) -> Ended {
        let ended = if matches!(error, BrokerError::Unroutable(_)) {
            tracing::info!("the originator has gone; stopping");
            // Its reply queue is gone: nothing else in flight will reach it either.
            self.unconfirmed.clear();
            Ended::OriginatorGone
        } else {
            tracing::error!(%error, "cannot report to the originator");
            Ended::Broken
        };
        self.ended = Some(ended);
        ended
    }

    /// Starts the look-ahead from a `round_trip` to the broker measured at start-up and the
    /// job's expected time of a file (when the runtime history gave one): a far host then
    /// holds files ahead at once.
    pub(crate) fn expect(&mut self, round_trip: Duration) {
        let expected = self.assignment.definition.expected_file_seconds;
        self.look_ahead.expect(round_trip, expected);
        self.look_further_ahead();
    }

    /// Opens the consumer of extra files in the background once the host has measured that
    /// it is far ([`LookAhead`]). Once: its messages are settled on its channel, so it
    /// stays until the job's end here (or the connection's).
    fn look_further_ahead(&mut self) {
        let batch_limit = self.assignment.definition.runner.batch_limit();
        let extra = self.look_ahead.extra_per_slot(batch_limit);
        let wanted = u16::try_from(extra.saturating_mul(self.assignment.slots)).unwrap_or(u16::MAX);
        if wanted == 0 || self.ahead_prefetch > 0 || !self.taking() {
            return;
        }
        tracing::info!(
            "the broker is far: each busy slot holds {extra} file(s) more ({wanted} in all)"
        );
        self.ahead_prefetch = wanted;
        let broker = self.broker.clone();
        let assignment = self.assignment.clone();
        self.opening_ahead = Some(tokio::spawn(async move {
            consume_files_with(&broker, &assignment, wanted).await
        }));
    }

    /// Takes the consumer of extra files in use, while the job still takes files here.
    async fn ahead_opened(&mut self, opened: Result<Inbox, Ended>) {
        self.opening_ahead = None;
        match opened {
            Ok(inbox) if self.taking() => self.ahead = Some(inbox),
            Ok(inbox) => inbox.close().await,
            Err(ended) => tracing::info!("cannot hold more files ({ended:?}); going on without"),
        }
    }

    /// No consumer of extra files any more (the connection went, or the job is over here;
    /// measured again after a reconnection): the one in use, for the caller to close.
    fn stop_looking_ahead(&mut self) -> Option<Inbox> {
        if let Some(opening) = self.opening_ahead.take() {
            opening.abort();
        }
        self.ahead_prefetch = 0;
        self.ahead.take()
    }

    /// Checks a delivered message: the files to run (one, or a batch's), or none when the
    /// message was settled here (foreign, unreadable, a malformed batch, a batch delivered
    /// again, which is split, a file that already has a result, a retry of a failure here
    /// that another host should take, or the workspace is gone, which ends the feed).
    async fn accept(&mut self, incoming: Incoming) -> Vec<Delivered> {
        let (file, retry, delivered_before) = match &incoming.envelope {
            Ok(envelope) if envelope.job_id != self.assignment.job_id => {
                tracing::warn!(job = %envelope.job_id, "dropping a file of another job");
                settle(incoming.discard().await);
                return Vec::new();
            }
            Ok(Envelope {
                message:
                    Message::File {
                        file,
                        retry,
                        delivered_before,
                    },
                ..
            }) => (file.clone(), retry.clone(), *delivered_before),
            Ok(Envelope {
                message: Message::Files { files },
                ..
            }) => {
                let files = files.clone();
                return self.accept_batch(incoming, files).await;
            }
            Ok(envelope) => {
                tracing::warn!(body = ?envelope.message, "dropping a message that is not a file");
                settle(incoming.discard().await);
                return Vec::new();
            }
            Err(error) => {
                if !error.is_untrusted() {
                    tracing::warn!(%error, "dropping an unreadable message");
                }
                settle(incoming.discard().await);
                return Vec::new();
            }
        };
        // A retry of a failure on this host goes to another host when one works on the job:
        // held aside and handed back until one takes it, or for `RETRY_HAND_OFF` at most.
        let failed_here = retry.as_ref().filter(|r| r.host == self.assignment.host);
        if failed_here.is_some_and(|r| r.other_hosts) && self.hands_off(&file) {
            self.aside
                .push((incoming, Instant::now() + HAND_BACK_PAUSE));
            return Vec::new();
        }
        // Whatever copy of it runs here, a later retry of it gets its own hand-off.
        self.handing_off.remove(&file);
        let avoid_worker = failed_here.map(|r| r.worker_id);
        let again = incoming.redelivered || delivered_before;
        if self.orphans.remove(&file) {
            // It still runs here: its result will settle this message.
            tracing::info!(
                file,
                "the file's message is back after the outage; re-attached to its run here"
            );
            self.hold(
                file,
                Source::Own {
                    incoming: Box::new(incoming),
                    again,
                },
            );
            return Vec::new();
        }
        if again && !self.retry_allowed(&file).await {
            tracing::info!(file, "the file already has a result; not running it again");
            settle(incoming.ack().await);
            return Vec::new();
        }
        if !self.workspace_left(&file) {
            settle(incoming.requeue().await);
            return Vec::new();
        }
        vec![Delivered {
            file,
            source: Source::Own {
                incoming: Box::new(incoming),
                again,
            },
            avoid_worker,
        }]
    }

    /// Checks a delivered batch: its files, each to be fed like a file of its own; none when
    /// it is malformed (refused, with the reason), delivered again (split: its files go back
    /// to the queue alone), or the workspace is gone.
    async fn accept_batch(&mut self, incoming: Incoming, files: Vec<String>) -> Vec<Delivered> {
        if let Some(problem) = Message::batch_problem(&files) {
            tracing::warn!("refusing a batch of files: {problem}");
            settle(incoming.discard().await);
            return Vec::new();
        }
        if incoming.redelivered {
            tracing::info!(
                files = files.len(),
                "a batch delivered again: its files go back to the queue alone"
            );
            match batches::send_alone(&self.broker, self.assignment, &files).await {
                Ok(()) => settle(incoming.ack().await),
                // Unsettled, it comes back whole with the connection.
                Err(error) => tracing::warn!(%error, "cannot split a batch delivered again"),
            }
            return Vec::new();
        }
        if !self.workspace_left(&files[0]) {
            settle(incoming.requeue().await);
            return Vec::new();
        }
        let batch = self.batches.add(incoming, files.len());
        files
            .into_iter()
            .map(|file| Delivered {
                file,
                source: Source::Batch(batch),
                avoid_worker: None,
            })
            .collect()
    }

    /// Whether the job's workspace is still here; when the listener has removed it (this
    /// manager outlived its job here), the feed ends and `file` goes back to the queue.
    fn workspace_left(&mut self, file: &str) -> bool {
        if self.assignment.workspace.is_dir() {
            return true;
        }
        tracing::warn!(file, "the workspace is gone; handing the file back");
        self.ended = Some(Ended::WorkspaceGone);
        false
    }

    /// Whether this host still hands retry `unit` back for another host: for
    /// [`RETRY_HAND_OFF`] from the first time it did.
    fn hands_off(&mut self, unit: &str) -> bool {
        let first = *self.handing_off.entry(unit.to_owned()).or_insert_with(|| {
            tracing::info!(
                unit,
                "a retry of a failure here: handing it back for another host"
            );
            Instant::now()
        });
        if first.elapsed() < RETRY_HAND_OFF {
            return true;
        }
        tracing::info!(
            unit,
            "no other host took a retry of a failure here within {} s; running it here",
            RETRY_HAND_OFF.as_secs()
        );
        false
    }

    /// Asks the originator whether a file delivered again still needs a run. Without an
    /// answer the file runs: a duplicate result is dropped, a lost one is not.
    async fn retry_allowed(&mut self, file: &str) -> bool {
        if self.retries.is_none() {
            let opened = async {
                let queue = self.broker.declare_private_queue().await?;
                let inbox = self.broker.consume(&queue, None).await?;
                Ok::<_, BrokerError>(RetryChannel { queue, inbox })
            };
            match opened.await {
                Ok(channel) => self.retries = Some(channel),
                Err(error) => {
                    tracing::warn!(%error, "cannot open the answers queue; running the file again");
                    return true;
                }
            }
        }
        let Some(retries) = self.retries.as_mut() else {
            return true;
        };
        let job = self.assignment.job_id;
        let ask = Message::RetryCheck {
            file: file.to_owned(),
            reply_to: retries.queue.clone(),
        };
        let asked = self
            .broker
            .send_to_queue(&self.assignment.reply_to, &Envelope::new(job, ask))
            .await;
        if asked.is_err() {
            return true;
        }
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
}

/// The confirm of the oldest of `unconfirmed` (never when there is none). Cancel-safe.
async fn oldest_confirm(unconfirmed: &mut VecDeque<InFlight>) -> Result<(), BrokerError> {
    match unconfirmed.front_mut() {
        Some(oldest) => oldest.unconfirmed.confirmed().await,
        None => std::future::pending().await,
    }
}

/// The next delivery of a files queue's consumer; never without one. Cancel-safe.
async fn next_file(files: Option<&mut Inbox>) -> Option<Incoming> {
    match files {
        Some(files) => files.next().await,
        None => std::future::pending().await,
    }
}

/// Consumes the job's files queue, with the host's slot count as prefetch.
async fn consume_files(broker: &Broker, assignment: &WorkerAssignment) -> Result<Inbox, Ended> {
    consume_files_with(broker, assignment, files_prefetch(assignment)).await
}

/// A channel for the files queue's consumer, its prefetch the job's slots, for
/// [`Feeder::open`].
pub(crate) async fn files_channel(
    broker: &Broker,
    assignment: &WorkerAssignment,
) -> Result<ConsumerChannel, BrokerError> {
    broker.consumer_channel(files_prefetch(assignment)).await
}

/// The files a host holds without looking ahead: one per slot.
fn files_prefetch(assignment: &WorkerAssignment) -> u16 {
    u16::try_from(assignment.slots.max(1)).unwrap_or(u16::MAX)
}

/// Consumes the job's files queue with `prefetch`.
async fn consume_files_with(
    broker: &Broker,
    assignment: &WorkerAssignment,
    prefetch: u16,
) -> Result<Inbox, Ended> {
    let queue = names::files_queue(assignment.job_id);
    consumed_files(broker.consume(&queue, Some(prefetch)).await)
}

/// The files queue's consumer, or why there is none.
fn consumed_files(consumed: Result<Inbox, BrokerError>) -> Result<Inbox, Ended> {
    match consumed {
        Ok(inbox) => Ok(inbox),
        // The originator deletes the files queue once every file has a result.
        Err(error) if error.is_not_found() => Err(Ended::Finished),
        Err(error) => {
            tracing::error!(%error, "cannot take files");
            Err(Ended::Broken)
        }
    }
}

fn settle(result: Result<(), BrokerError>) {
    if let Err(error) = result {
        tracing::warn!(%error, "cannot settle a file message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(file: &str) -> Message {
        Message::FileStarted {
            host: "h1".into(),
            worker_id: 1,
            file: file.into(),
        }
    }

    fn finished(file: &str) -> Message {
        Message::FileFinished(gorgon_protocol::FileResult {
            host: "h1".into(),
            worker_id: 1,
            file: file.into(),
            status: gorgon_protocol::FileStatus::Passed,
            seconds: 0.1,
            exit: "exit status 0".into(),
            output: String::new(),
            tests: Vec::new(),
            impact: None,
        })
    }

    #[test]
    fn replies_are_gathered_in_order_until_a_count_or_size_is_reached() {
        let mut together = Together::default();
        assert_eq!(together.add(started("a"), 100), None);
        assert_eq!(together.add(finished("a"), 100), None);
        assert_eq!(together.take(), vec![started("a"), finished("a")]);
        assert!(together.take().is_empty());

        // The 65th reply does not fit with the 64 before it: they go first.
        for i in 0..TOGETHER_REPLIES {
            assert_eq!(together.add(started(&i.to_string()), 10), None);
        }
        let before = together.add(started("last"), 10).unwrap();
        assert_eq!(before.len(), TOGETHER_REPLIES);
        assert_eq!(before[0], started("0"));
        assert_eq!(together.take(), vec![started("last")]);

        // A large one goes on its own once what came before is full enough.
        assert_eq!(together.add(started("small"), 10), None);
        let before = together.add(finished("large"), TOGETHER_BYTES).unwrap();
        assert_eq!(before, vec![started("small")]);
        // Alone, however large: it is never held back.
        assert_eq!(together.take(), vec![finished("large")]);
    }

    #[test]
    fn the_results_a_message_carries_are_found_inside_replies_sent_together() {
        assert_eq!(results_in(&finished("a")).collect::<Vec<_>>(), ["a"]);
        assert_eq!(results_in(&started("a")).count(), 0);
        let together = Message::coalesce(vec![
            finished("a"),
            started("b"),
            finished("b"),
            started("c"),
        ])
        .unwrap();
        assert_eq!(results_in(&together).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(carried(&together).len(), 4);
    }
}
