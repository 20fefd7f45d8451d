//! The one commit path of the master.
//!
//! Every mutation — a native claim, a kill, an agent registration, a status update, a role's
//! quota — reaches the committer as a [`CommitRequest`]. Two threads carry it, one stage
//! each, so that deciding the next group overlaps writing and syncing the previous one:
//!
//! 1. the **decider** takes whatever requests are waiting (group commit), **validates and
//!    applies** each command to its cell (`Cell::commit`, the sans-IO core; a rejected
//!    command changes nothing), and whenever the writer waits (or nothing else is queued) hands
//!    it, in order, what it applied since the last hand-over: the log entries, the records
//!    they changed and a snapshot of the cell;
//! 2. the **writer** takes every hand-over waiting for it, **persists** each (one store write
//!    each), then **syncs** once (fsync) for all of them; then
//!    it **publishes** the newest snapshot to readers, **acknowledges** every request of the
//!    groups in order — only now, after the sync — and streams the entries to watchers.
//!
//! The decider may run ahead of what is durable, never its answers: every answer, a
//! rejection too, is sent by the writer after the sync of its own group and of every group
//! before it. If the store fails, the failing groups and every group decided on top of them
//! are answered 503, and the decider goes back to the last published (durable) cell: nothing
//! unpersisted is ever acknowledged or published. The writer then reopens the store (with a
//! backoff, answering 503 meanwhile) until it takes a durable write again, reloads the cell
//! from it and publishes that; the decider starts again from there. Readers load the
//! published snapshot (an `Arc` of a persistent structure) and never block the committer.
//!
//! The two stages are `Decider` and `Writer`; the threads of [`start`] run them with a
//! channel between them, and [`CommitCore`] runs them one batch at a time on its caller's
//! thread (no threads, no channels), so a simulation drives the same commit path. A group's
//! store write is made in `batch.rs`.
//!
//! [`Health`] says whether the commit path runs and the store takes writes (`/health`). If
//! either thread stops (a panic is a bug: an invariant broke), the commit path is stopped
//! for good: every command gets 503 and the master binary exits so that it is restarted.

mod batch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use shoal_core::clock::SharedClock;
use shoal_core::{Rejection, Version};
use shoal_sched::{Cell, Command, Event, LogEntry, Reply};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::limits;
use crate::store::{Store, WriteBatch};
use crate::MasterError;
use batch::write_batch;

/// Why a command did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store failed or the master is stopping: the command may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl CommitError {
    pub fn http_status(&self) -> u16 {
        match self {
            CommitError::Rejected(r) => r.http_status(),
            CommitError::Unavailable(_) => 503,
        }
    }
}

pub struct CommitRequest {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply, CommitError>>,
}

/// What the committer shares with readers.
pub struct Published {
    pub snapshot: ArcSwap<Cell>,
    pub entries: broadcast::Sender<Arc<LogEntry>>,
    pub store: Arc<dyn Store>,
    /// The oldest version a watch may resume from.
    pub log_floor: AtomicU64,
    pub stats: CommitStats,
    pub health: Health,
    /// The clock the commit path tells the core; every other part of the master (and
    /// compat) tells time by it too.
    pub clock: SharedClock,
}

/// Whether the commit path can commit: its threads run and the store takes writes.
pub struct Health {
    /// Set (for good) when the decider or the writer thread has stopped.
    stopped: watch::Sender<bool>,
    /// Why the store is failing, while it is (until a reopen takes a durable write).
    store_failure: Mutex<Option<String>>,
}

impl Health {
    fn new() -> Health {
        Health {
            stopped: watch::Sender::new(false),
            store_failure: Mutex::new(None),
        }
    }

    /// `Ok` when commands can commit; otherwise why not.
    pub fn check(&self) -> Result<(), MasterError> {
        if self.is_stopped() {
            return Err(MasterError::Stopped);
        }
        match &*self.store_failure.lock() {
            Some(why) => Err(MasterError::StoreFailing(why.clone())),
            None => Ok(()),
        }
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// Resolves once the commit path has stopped (at once if it has).
    pub async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    fn set_store_failure(&self, why: Option<String>) {
        *self.store_failure.lock() = why;
    }

    fn store_failure(&self) -> Option<String> {
        self.store_failure.lock().clone()
    }
}

/// Marks the commit path stopped when a thread of it ends, by return or by panic.
struct StopGuard {
    published: Arc<Published>,
    thread: &'static str,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                thread = self.thread,
                "the commit path panicked: it stops, every command gets 503"
            );
        }
        self.published.health.stopped.send_replace(true);
    }
}

#[derive(Default)]
pub struct CommitStats {
    pub groups: AtomicU64,
    pub commands: AtomicU64,
    pub syncs: AtomicU64,
}

impl Published {
    pub fn snapshot(&self) -> Arc<Cell> {
        self.snapshot.load_full()
    }
}

/// The sending side, cloned by every handler.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<CommitRequest>,
}

impl Committer {
    /// Submits a command and waits until it is durable (or refused).
    pub async fn submit(&self, command: Command) -> Result<Reply, CommitError> {
        let rx = self.enqueue(command).await;
        rx.await
            .map_err(|_| CommitError::Unavailable("the commit path stopped".into()))?
    }

    /// Queues a command and returns where its answer will arrive. Commands queued one after
    /// the other by one caller commit in that order (the queue is FIFO, the committer one).
    pub async fn enqueue(&self, command: Command) -> oneshot::Receiver<Result<Reply, CommitError>> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.tx.send(CommitRequest { command, reply }).await {
            let _ = e.0.reply.send(Err(CommitError::Unavailable(
                "the master is stopping".into(),
            )));
        }
        rx
    }
}

/// Settings of the commit path.
#[derive(Clone, Debug)]
pub struct CommitConfig {
    /// Log entries kept for watches to resume from; older ones are compacted away.
    pub log_retain_entries: u64,
    /// What garbage collection keeps of finished work (see `shoal_core::gc`).
    pub retention: shoal_core::gc::Retention,
    /// How often the collector looks for finished work past the retention.
    pub collect_interval: std::time::Duration,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            log_retain_entries: limits::LOG_RETAIN_ENTRIES,
            retention: shoal_core::gc::Retention::default(),
            collect_interval: std::time::Duration::from_millis(limits::COLLECT_INTERVAL_MS),
        }
    }
}

/// Starts the commit path (its decider and writer threads) over a loaded cell. `clock`
/// gives the time the core is told (its wall time) and the writer's backoff (its monotonic
/// time).
pub fn start(
    cell: Cell,
    store: Arc<dyn Store>,
    clock: SharedClock,
    config: CommitConfig,
) -> (Committer, Arc<Published>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(limits::COMMIT_QUEUE_MAX);
    let (decider, writer) = stages(cell, store, clock, config);
    let published = writer.published.clone();
    let (decided_tx, decided_rx) = std::sync::mpsc::sync_channel(limits::COMMIT_PIPELINE_GROUPS);
    let writer = {
        let p = published.clone();
        std::thread::Builder::new()
            .name("shoal-writer".into())
            .spawn(move || {
                let _stop = StopGuard {
                    published: p,
                    thread: "writer",
                };
                write_groups(writer, decided_rx)
            })
            .expect("spawn the commit writer thread")
    };
    let p = published.clone();
    let handle = std::thread::Builder::new()
        .name("shoal-committer".into())
        .spawn(move || {
            {
                let _stop = StopGuard {
                    published: p,
                    thread: "decider",
                };
                decide(decider, rx, decided_tx);
            }
            let _ = writer.join();
        })
        .expect("spawn committer thread");
    (Committer { tx }, published, handle)
}

/// The two stages of the commit path over one published state.
fn stages<R>(
    cell: Cell,
    store: Arc<dyn Store>,
    clock: SharedClock,
    config: CommitConfig,
) -> (Decider<R>, Writer) {
    let (entries, _) = broadcast::channel(limits::WATCH_BROADCAST_MAX);
    let floor = store.log_floor().unwrap_or(0).max(1);
    let published = Arc::new(Published {
        snapshot: ArcSwap::from_pointee(cell.clone()),
        entries,
        store,
        log_floor: AtomicU64::new(floor),
        stats: CommitStats::default(),
        health: Health::new(),
        clock,
    });
    let signals = Arc::new(Signals::default());
    let decider = Decider {
        cell,
        applied: Applied::default(),
        seen_failures: 0,
        seen_holds_lost: 0,
        retain: config.log_retain_entries.max(1),
        published: published.clone(),
        signals: signals.clone(),
    };
    let writer = Writer {
        backoff: Duration::from_millis(limits::STORE_REOPEN_BACKOFF_MIN_MS),
        published,
        signals,
    };
    (decider, writer)
}

/// The commit path stepped by its caller, one batch at a time, on the caller's thread: the
/// same decider and writer stages the threads of [`start`] run, with no channel between
/// them. A batch is decided as one group, written with one sync, published, and answered.
/// A simulation drives the master's commit path through it.
pub struct CommitCore {
    decider: Decider<usize>,
    writer: Writer,
}

impl CommitCore {
    /// The commit path over a loaded cell, stepped by [`CommitCore::step`].
    pub fn new(
        cell: Cell,
        store: Arc<dyn Store>,
        clock: SharedClock,
        config: CommitConfig,
    ) -> CommitCore {
        let (decider, writer) = stages(cell, store, clock, config);
        CommitCore { decider, writer }
    }

    /// What the commit path publishes (the snapshot, the entries' stream, health).
    pub fn published(&self) -> &Arc<Published> {
        &self.writer.published
    }

    /// Commits `commands` as one group: decides each in order, persists what changed with one
    /// store write and one sync, publishes the snapshot, streams the entries, and returns each
    /// command's answer in order. When the store fails, every answer is `Unavailable` and the
    /// store is reopened (here, and at each later step until it takes a durable write); the
    /// next step starts from what is durable.
    pub fn step(&mut self, commands: Vec<Command>) -> Vec<Result<Reply, CommitError>> {
        if let Some(why) = self.writer.published.health.store_failure() {
            if self.writer.reopen().is_err() {
                let why =
                    format!("the store is failing ({why}); it is being reopened, retry later");
                return commands
                    .iter()
                    .map(|_| Err(CommitError::Unavailable(why.clone())))
                    .collect();
            }
        }
        let mut answers: Vec<Option<Result<Reply, CommitError>>> = Vec::new();
        answers.resize_with(commands.len(), || None);
        let mut deliver = |to: Option<usize>, answer| {
            if let Some(i) = to {
                answers[i] = Some(answer);
            }
        };
        let group = commands.into_iter().enumerate().map(|(i, c)| (c, i));
        for (to, answer) in self.decider.decide(group) {
            deliver(to, answer);
        }
        let decided = self.decider.hand_over();
        if !self.writer.write_round(vec![decided], &mut deliver) {
            if let Err(e) = self.writer.reopen() {
                tracing::warn!(error = %crate::error::chain(&e), "the store does not reopen yet");
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(CommitError::Unavailable("not answered".into()))))
            .collect()
    }
}

/// What the writer tells the decider.
#[derive(Default)]
struct Signals {
    /// Store writes that failed so far, and reloads after them: each one sends the decider
    /// back to the published cell.
    failures: AtomicU64,
    /// Cells reloaded from a reopened store without the holds the published cell had (holds
    /// are not stored): the decider then commits `ClearHolds`, as a new master does.
    holds_lost: AtomicU64,
    /// Set while the writer waits for the decider's next hand-over.
    writer_waits: AtomicBool,
}

/// A command's answer and where it goes (`None`: a command of the commit path's own). `R` is
/// a handler's reply channel in the threads of [`start`], an index in [`CommitCore`].
type Answered<R> = (Option<R>, Result<Reply, CommitError>);

/// A group the decider has applied, on its way to the writer.
struct Decided<R> {
    /// The count of store failures the group was decided after: a group decided before a
    /// failure may depend on what failed, and is refused.
    failures: u64,
    /// The store write and the cell after the group (`None`: nothing changed).
    change: Option<(WriteBatch, Cell)>,
    answers: Vec<Answered<R>>,
    entries: Vec<Arc<LogEntry>>,
}

type ReplyTo = oneshot::Sender<Result<Reply, CommitError>>;

/// Commands the decider has applied and not yet handed to the writer.
struct Applied<R> {
    answers: Vec<Answered<R>>,
    entries: Vec<Arc<LogEntry>>,
}

impl<R> Default for Applied<R> {
    fn default() -> Self {
        Applied {
            answers: Vec::new(),
            entries: Vec::new(),
        }
    }
}

/// The decide stage: the cell the commands are applied to, ahead of what is durable, and
/// what it applied since its last hand-over to the writer.
struct Decider<R> {
    cell: Cell,
    applied: Applied<R>,
    /// The writer's failure and lost-holds counts as of the last group.
    seen_failures: u64,
    seen_holds_lost: u64,
    /// Log entries kept for watches (at least one).
    retain: u64,
    published: Arc<Published>,
    signals: Arc<Signals>,
}

impl<R> Decider<R> {
    /// Applies one group of commands to the cell, in order. Returns the answers a store
    /// failure since the last group voids (what was applied on top of it, to be refused).
    fn decide(&mut self, group: impl IntoIterator<Item = (Command, R)>) -> Vec<Answered<R>> {
        let mut voided = Vec::new();
        // This count first: the writer counts lost holds after the failure that goes with them.
        let holds_lost = self.signals.holds_lost.load(Ordering::Acquire);
        let failed = self.signals.failures.load(Ordering::Acquire);
        if failed != self.seen_failures {
            // A write failed: what was applied on top of it is refused, and the decider goes
            // back to what is durable (the writer publishes nothing after a failure until
            // groups decided after it arrive).
            voided = std::mem::take(&mut self.applied).answers;
            for (_, answer) in &mut voided {
                *answer = Err(CommitError::Unavailable(
                    "an earlier commit group failed to persist; retry".into(),
                ));
            }
            self.cell = Cell::clone(&*self.published.snapshot());
            self.seen_failures = failed;
        }
        let now = self.published.clock.wall_ms();
        let applied = &mut self.applied;
        if holds_lost != self.seen_holds_lost {
            // The cell was reloaded from the reopened store, which holds no holds: say so to
            // watchers (the frameworks' offers are rescinded), as a new master does.
            self.seen_holds_lost = holds_lost;
            if let Ok((Some(entry), _)) = self.cell.commit(now, &Command::ClearHolds) {
                applied.entries.push(Arc::new(entry));
                applied.answers.push((None, Ok(Reply::Done)));
            }
        }
        for (command, reply) in group {
            match self.cell.commit(now, &command) {
                Ok((entry, answer)) => {
                    applied.entries.extend(entry.map(Arc::new));
                    applied.answers.push((Some(reply), Ok(answer)));
                }
                Err(rejection) => applied
                    .answers
                    .push((Some(reply), Err(CommitError::Rejected(rejection)))),
            }
        }
        voided
    }

    /// Commands applied and not yet handed over.
    fn applied_count(&self) -> usize {
        self.applied.answers.len()
    }

    /// What was applied since the last hand-over, for the writer: a snapshot of the cell is
    /// taken only here, so the persistent maps copy the nodes a write changes once per
    /// hand-over, not once per group.
    fn hand_over(&mut self) -> Decided<R> {
        let Applied { answers, entries } = std::mem::take(&mut self.applied);
        let change = (!entries.is_empty()).then(|| {
            (
                write_batch(&self.cell, &entries, &self.published, self.retain),
                self.cell.clone(),
            )
        });
        Decided {
            failures: self.seen_failures,
            change,
            answers,
            entries,
        }
    }
}

/// The decider thread: applies each group of waiting commands as it arrives, and hands
/// what it has applied to the writer whenever the writer waits (or nothing else is waiting):
/// while the writer syncs, the groups decided meanwhile gather into its next write.
fn decide(
    mut decider: Decider<ReplyTo>,
    mut rx: mpsc::Receiver<CommitRequest>,
    decided: std::sync::mpsc::SyncSender<Decided<ReplyTo>>,
) {
    decider.seen_failures = decider.signals.failures.load(Ordering::Acquire);
    decider.seen_holds_lost = decider.signals.holds_lost.load(Ordering::Acquire);
    loop {
        let first = if decider.applied_count() == 0 {
            match rx.blocking_recv() {
                Some(r) => r,
                None => return,
            }
        } else {
            match rx.try_recv() {
                Ok(r) => r,
                // Nothing more to decide now: the writer gets what there is (waiting for it
                // if it is still busy).
                Err(e) => {
                    if decided.send(decider.hand_over()).is_err()
                        || e == mpsc::error::TryRecvError::Disconnected
                    {
                        return;
                    }
                    continue;
                }
            }
        };
        let mut group = vec![first];
        while group.len() < limits::COMMIT_GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let voided = decider.decide(group.into_iter().map(|r| (r.command, r.reply)));
        send_answers(voided);
        if (decider.signals.writer_waits.load(Ordering::Acquire)
            || decider.applied_count() >= limits::COMMIT_GROUP_MAX)
            && decided.send(decider.hand_over()).is_err()
        {
            return;
        }
    }
}

/// Sends answers to the handlers waiting for them.
fn send_answers(answers: Vec<Answered<ReplyTo>>) {
    for (reply, answer) in answers {
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

/// The write stage: persists what the decider handed over, publishes it, answers it.
struct Writer {
    /// The pause before the next reopen of a failing store: doubled after each failure, back
    /// to the least after a sync succeeds.
    backoff: Duration,
    published: Arc<Published>,
    signals: Arc<Signals>,
}

impl Writer {
    /// Persists `groups` (one store write each, one sync for all), publishes the newest
    /// snapshot, then gives every answer to `deliver` in order and streams the entries. A
    /// group decided before the last failure is refused unwritten. False when the store
    /// failed: every group is refused, health says why, and the decider is sent back to the
    /// published cell.
    fn write_round<R>(
        &mut self,
        groups: Vec<Decided<R>>,
        deliver: &mut impl FnMut(Option<R>, Result<Reply, CommitError>),
    ) -> bool {
        let published = &self.published;
        let started = published.clock.monotonic();
        let failed = self.signals.failures.load(Ordering::Relaxed);
        // Groups decided before a failure are refused (they may build on what failed).
        let (stale, mut groups): (Vec<_>, Vec<_>) =
            groups.into_iter().partition(|g| g.failures != failed);
        refuse(
            stale,
            "an earlier commit group failed to persist; retry",
            deliver,
        );
        let persisted = Writer::persist(&*published.store, &groups);
        let (writes, trim) = match persisted {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "store write failed; the groups are refused and the cell goes back to what is durable");
                published.health.set_store_failure(Some(e.to_string()));
                self.signals.failures.fetch_add(1, Ordering::Release);
                let why = format!(
                    "the store failed ({e}); nothing of this commit was acknowledged, retry"
                );
                refuse(groups, &why, deliver);
                return false;
            }
        };
        if writes > 0 {
            self.backoff = Duration::from_millis(limits::STORE_REOPEN_BACKOFF_MIN_MS);
            published.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(floor) = trim {
            published.log_floor.store(floor, Ordering::Release);
        }
        // The new snapshot is published before the answers go out, so a scheduler that reads
        // right after its acknowledgement sees its own commit (read-your-writes).
        if let Some((_, cell)) = groups.iter_mut().rev().find_map(|g| g.change.take()) {
            published.snapshot.store(Arc::new(cell));
        }
        let stats = &published.stats;
        for g in groups {
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats
                .commands
                .fetch_add(g.answers.len() as u64, Ordering::Relaxed);
            for (reply, answer) in g.answers {
                deliver(reply, answer);
            }
            for e in g.entries {
                let _ = published.entries.send(e);
            }
        }
        tracing::trace!(
            elapsed_us = published
                .clock
                .monotonic()
                .saturating_duration_since(started)
                .as_micros() as u64,
            "commit groups written"
        );
        true
    }

    /// Writes the groups' changes (one store write each) and syncs once if anything was
    /// written. Returns the count of writes and the log trim they asked for.
    fn persist<R>(
        store: &dyn Store,
        groups: &[Decided<R>],
    ) -> Result<(usize, Option<Version>), crate::store::StoreError> {
        let mut trim = None;
        let mut writes = 0;
        for (batch, _) in groups.iter().filter_map(|g| g.change.as_ref()) {
            store.write(batch)?;
            trim = batch.trim_log_below.or(trim);
            writes += 1;
        }
        if writes > 0 {
            store.sync()?;
        }
        Ok((writes, trim))
    }

    /// One try at reopening the failed store: when it takes a durable write, the cell is
    /// reloaded from it (the last durable commit) and published, entries the store kept
    /// beyond the published cell (a sync that failed after all) go to watchers, and the
    /// decider is sent back to it.
    fn reopen(&mut self) -> Result<(), MasterError> {
        let published = &*self.published;
        let store = &*published.store;
        let reloaded = store
            .recover()
            .map_err(MasterError::from)
            .and_then(|()| crate::load_cell(store));
        let cell = match reloaded {
            Ok(cell) => cell,
            Err(e) => {
                published
                    .health
                    .set_store_failure(Some(crate::error::chain(&e)));
                return Err(e);
            }
        };
        published.health.set_store_failure(None);
        let before = published.snapshot();
        let was = before.version();
        let cell = if cell.version() == 0 {
            // Nothing durable yet: the cell as it started (it holds the id chosen then).
            Cell::clone(&before)
        } else {
            cell
        };
        let kept = if cell.version() > was {
            store.read_log(was + 1, usize::MAX).unwrap_or_default()
        } else {
            Vec::new()
        };
        tracing::info!(
            version = cell.version(),
            published = was,
            "the store is reopened; the cell is reloaded from it"
        );
        if let Ok(floor) = store.log_floor() {
            published.log_floor.store(floor.max(1), Ordering::Release);
        }
        // Watchers saw holds the reloaded cell does not have: they hear HOLDS_CLEARED next.
        let lost_holds = (before.holds().next().is_some() && cell.version() > 0)
            || kept
                .iter()
                .flat_map(|e| &e.events)
                .any(|ev| matches!(ev, Event::HoldsPlaced { .. }));
        published.snapshot.store(Arc::new(cell));
        for e in kept {
            let _ = published.entries.send(Arc::new(e));
        }
        // Publish first, then send the decider back (it starts from the reloaded cell), then
        // ask for the holds to be cleared (the decider reads this count before the failures).
        self.signals.failures.fetch_add(1, Ordering::Release);
        if lost_holds {
            self.signals.holds_lost.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }
}

/// The writer thread: persists the groups waiting for it with one sync, then publishes and
/// answers them in order; after a store failure, reopens the store before going on.
fn write_groups(mut writer: Writer, decided: std::sync::mpsc::Receiver<Decided<ReplyTo>>) {
    let mut deliver = |reply: Option<ReplyTo>, answer| {
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    };
    loop {
        writer.signals.writer_waits.store(true, Ordering::Release);
        let first = decided.recv();
        writer.signals.writer_waits.store(false, Ordering::Release);
        let Ok(first) = first else {
            return;
        };
        let mut groups = vec![first];
        groups.extend(decided.try_iter().take(limits::COMMIT_PIPELINE_GROUPS));
        if !writer.write_round(groups, &mut deliver) && !recover(&mut writer, &decided) {
            return;
        }
    }
}

/// Reopens a failed store, after the writer's backoff and again with a longer one until it
/// takes a durable write, answering 503 to every group that arrives meanwhile. Returns false
/// when the decider is gone.
fn recover(writer: &mut Writer, decided: &std::sync::mpsc::Receiver<Decided<ReplyTo>>) -> bool {
    let clock = writer.published.clock.clone();
    let mut next_try = clock.monotonic() + writer.backoff;
    loop {
        match decided.recv_timeout(next_try.saturating_duration_since(clock.monotonic())) {
            Ok(g) => {
                let why = writer.published.health.store_failure().unwrap_or_default();
                let why =
                    format!("the store is failing ({why}); it is being reopened, retry later");
                refuse(vec![g], &why, &mut |reply, answer| {
                    if let Some(reply) = reply {
                        let _ = reply.send(answer);
                    }
                });
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
        }
        writer.backoff =
            (writer.backoff * 2).min(Duration::from_millis(limits::STORE_REOPEN_BACKOFF_MAX_MS));
        next_try = clock.monotonic() + writer.backoff;
        match writer.reopen() {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), retry_in_ms = writer.backoff.as_millis() as u64, "the store does not reopen yet");
            }
        }
    }
}

/// Refuses every command of `groups` (503): `why` goes to each.
fn refuse<R>(
    groups: Vec<Decided<R>>,
    why: &str,
    deliver: &mut impl FnMut(Option<R>, Result<Reply, CommitError>),
) {
    for g in groups {
        for (reply, _) in g.answers {
            deliver(reply, Err(CommitError::Unavailable(why.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use axum::extract::State;
    use shoal_core::{AgentRegistration, Hold, OfferId, Quota, ResourceSet, TaskId};

    use shoal_core::clock::Clock;

    use super::*;
    use crate::store::{MemStore, StoreResult, StoredCell};

    /// A store over a [`MemStore`] whose `write` panics once `panic` is set.
    #[derive(Clone, Default)]
    struct PanickyStore {
        mem: MemStore,
        panic: Arc<AtomicBool>,
    }

    impl Store for PanickyStore {
        fn load(&self) -> StoreResult<StoredCell> {
            self.mem.load()
        }
        fn write(&self, batch: &WriteBatch) -> StoreResult<()> {
            assert!(!self.panic.load(Ordering::Relaxed), "a bug in the writer");
            self.mem.write(batch)
        }
        fn sync(&self) -> StoreResult<()> {
            self.mem.sync()
        }
        fn read_log(&self, from: Version, max: usize) -> StoreResult<Vec<LogEntry>> {
            self.mem.read_log(from, max)
        }
        fn log_floor(&self) -> StoreResult<Version> {
            self.mem.log_floor()
        }
        fn recover(&self) -> StoreResult<()> {
            self.mem.recover()
        }
    }

    fn role(name: &str) -> Command {
        Command::ConfigureRole {
            name: name.into(),
            weight: 1.0,
            quota: Quota::default(),
            preemptible: true,
        }
    }

    async fn health_status(published: &Arc<Published>) -> u16 {
        crate::health::health(State(published.clone()))
            .await
            .status()
            .as_u16()
    }

    /// A clock that stands still at 1 ms, and panics once `broken` is set (a bug in the
    /// decider, which reads it).
    #[derive(Debug)]
    struct TestClock {
        broken: AtomicBool,
        still: shoal_core::clock::ManualClock,
    }

    impl Clock for TestClock {
        fn wall_ms(&self) -> shoal_core::Timestamp {
            assert!(!self.broken.load(Ordering::Relaxed), "a bug in the decider");
            1
        }
        fn monotonic(&self) -> std::time::Instant {
            self.still.monotonic()
        }
    }

    fn still() -> SharedClock {
        Arc::new(shoal_core::clock::ManualClock::new(1))
    }

    fn start_on(store: Arc<dyn Store>, clock: SharedClock) -> (Committer, Arc<Published>) {
        let cell = crate::load_cell(store.as_ref()).unwrap();
        let (committer, published, _thread) = start(cell, store, clock, CommitConfig::default());
        (committer, published)
    }

    async fn assert_stopped(committer: &Committer, published: &Arc<Published>) {
        tokio::time::timeout(Duration::from_secs(5), published.health.stopped())
            .await
            .expect("the commit path reports that it stopped");
        assert!(published.health.is_stopped());
        assert_eq!(health_status(published).await, 503);
        let r = committer.submit(role("after")).await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");
    }

    fn agent(hostname: &str) -> Command {
        Command::RegisterAgent(AgentRegistration {
            agent_id: None,
            hostname: hostname.into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse("cpus:4").unwrap(),
        })
    }

    /// The commit path stepped one batch at a time on the test's thread: each step decides,
    /// writes durably, publishes and answers; a store failure refuses the batch and the next
    /// step after the store is back commits again on what is durable.
    #[test]
    fn the_commit_path_steps_one_batch_at_a_time_without_threads() {
        let store = MemStore::new();
        let cell = crate::load_cell(&store).unwrap();
        let clock = Arc::new(shoal_core::clock::ManualClock::new(5_000));
        let mut core = CommitCore::new(
            cell,
            Arc::new(store.clone()),
            clock.clone(),
            CommitConfig::default(),
        );
        let published = core.published().clone();
        let mut watch = published.entries.subscribe();

        let answers = core.step(vec![
            agent("h1"),
            role("a"),
            Command::KillTask {
                task_id: TaskId::new("nope"),
            },
        ]);
        assert!(matches!(answers[0], Ok(Reply::Agent { .. })), "{answers:?}");
        assert!(answers[1].is_ok(), "{answers:?}");
        assert!(
            matches!(
                answers[2],
                Err(CommitError::Rejected(Rejection::NotFound(_)))
            ),
            "{answers:?}"
        );
        let snap = published.snapshot();
        assert_eq!(snap.version(), 2, "one version per committed command");
        assert!(snap.role("a").is_some());
        assert_eq!(
            snap.agents().next().map(|a| a.registered_at),
            Some(5_000),
            "the core is told the clock's time"
        );
        let streamed: Vec<Version> = std::iter::from_fn(|| watch.try_recv().ok())
            .map(|e| e.version)
            .collect();
        assert_eq!(streamed, vec![1, 2]);
        assert_eq!(published.stats.syncs.load(Ordering::Relaxed), 1);

        // What was answered is durable: a crash loses nothing of it.
        store.crash();
        clock.advance(Duration::from_secs(1));
        let answers = core.step(vec![role("lost")]);
        assert!(
            matches!(answers[..], [Err(CommitError::Unavailable(_))]),
            "{answers:?}"
        );
        assert_eq!(published.snapshot().version(), 2);
        assert!(published.health.check().is_err());
        let answers = core.step(vec![role("lost")]);
        assert!(matches!(answers[..], [Err(CommitError::Unavailable(_))]));

        store.reboot();
        let answers = core.step(vec![role("b")]);
        assert!(answers[0].is_ok(), "{answers:?}");
        let snap = published.snapshot();
        assert_eq!(snap.version(), 3);
        assert!(snap.role("lost").is_none() && snap.role("b").is_some());
        assert!(published.health.check().is_ok());
        let reloaded = crate::load_cell(&store).unwrap();
        assert_eq!(reloaded.version(), 3);
        assert!(reloaded.role("a").is_some());
        snap.check_invariants().unwrap();
    }

    /// Issue 11, item 1: the commit path died and `/health` kept answering 200.
    #[tokio::test]
    async fn commit_thread_dies_and_health_says_so() {
        // The writer panics.
        let store = PanickyStore::default();
        let (committer, published) = start_on(Arc::new(store.clone()), still());
        committer.submit(role("a")).await.unwrap();
        assert_eq!(health_status(&published).await, 200);
        store.panic.store(true, Ordering::Relaxed);
        let r = committer.submit(role("b")).await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");
        assert_stopped(&committer, &published).await;

        // The decider panics (here in the clock it is told).
        let clock = Arc::new(TestClock {
            broken: AtomicBool::new(false),
            still: shoal_core::clock::ManualClock::new(1),
        });
        let (committer, published) = start_on(Arc::new(MemStore::new()), clock.clone());
        committer.submit(role("a")).await.unwrap();
        assert_eq!(health_status(&published).await, 200);
        clock.broken.store(true, Ordering::Relaxed);
        let r = committer.submit(role("b")).await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");
        assert_stopped(&committer, &published).await;
    }

    /// Issue 11, item 8: after a store failure the store was never reopened. Now writes get
    /// 503 and `/health` says why while it fails; once it takes writes again the cell is
    /// reloaded from it (holds, which are not stored, are cleared for watchers) and commands
    /// commit again, with everything acknowledged before still there.
    #[tokio::test]
    async fn store_io_failure_is_permanent() {
        let store = MemStore::new();
        let (committer, published) = start_on(Arc::new(store.clone()), still());
        let reply = committer
            .submit(Command::RegisterAgent(AgentRegistration {
                agent_id: None,
                hostname: "h".into(),
                port: 0,
                attributes: Default::default(),
                domain: None,
                resources: ResourceSet::parse("cpus:4").unwrap(),
            }))
            .await
            .unwrap();
        let Reply::Agent { agent_id } = reply else {
            panic!("{reply:?}")
        };
        committer.submit(role("kept")).await.unwrap();
        committer
            .submit(Command::PlaceHolds {
                holds: vec![Hold {
                    id: OfferId::new("o1"),
                    framework_id: "fw".into(),
                    role: "*".into(),
                    agent_id: agent_id.clone(),
                    resources: ResourceSet::parse("cpus:1").unwrap(),
                    created_at: 1,
                }],
            })
            .await
            .unwrap();
        let mut watch = published.entries.subscribe();
        let acked = published.snapshot().version();

        store.crash();
        let r = committer.submit(role("lost")).await;
        let Err(CommitError::Unavailable(why)) = r else {
            panic!("{r:?}")
        };
        assert!(why.contains("store"), "{why}");
        assert_eq!(health_status(&published).await, 503);
        assert!(published
            .health
            .check()
            .unwrap_err()
            .to_string()
            .contains("store is failing"));
        let r = committer.submit(role("lost")).await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");

        store.reboot();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while published.health.check().is_err() {
            assert!(std::time::Instant::now() < until, "the store is reopened");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health_status(&published).await, 200);
        committer.submit(role("after")).await.unwrap();
        let cell = published.snapshot();
        assert!(cell.role("kept").is_some() && cell.role("after").is_some());
        assert!(
            cell.role("lost").is_none(),
            "a refused command is not there"
        );
        assert_eq!(cell.holds().count(), 0, "holds are not stored");
        assert_eq!(cell.version(), acked + 2, "HOLDS_CLEARED, then the role");
        // Entries are streamed after they are acknowledged: the holds' own entry may still
        // come after this watch subscribed.
        let cleared = loop {
            let e = watch.recv().await.unwrap();
            if e.version > acked {
                break e;
            }
        };
        assert!(
            matches!(cleared.events[0], Event::HoldsCleared { .. }),
            "{cleared:?}"
        );
        cell.check_invariants().unwrap();
        let reloaded = crate::load_cell(&store).unwrap();
        assert_eq!(reloaded.version(), cell.version());
    }
}
