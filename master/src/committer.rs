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
//! [`Health`] says whether the commit path runs and the store takes writes (`/health`). If
//! either thread stops (a panic is a bug: an invariant broke), the commit path is stopped
//! for good: every command gets 503 and the master binary exits so that it is restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shoal_core::{AgentId, Rejection, TaskId, Timestamp, Version};
use shoal_sched::{Cell, Command, Event, LogEntry, Reply, SchedulerEvent};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::limits;
use crate::store::{ClaimCommit, Store, WriteBatch};

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
    pub fn check(&self) -> Result<(), String> {
        if self.is_stopped() {
            return Err("the commit path has stopped".into());
        }
        match &*self.store_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(format!("the store is failing: {why}")),
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
        *self.store_failure.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn store_failure(&self) -> Option<String> {
        self.store_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            log_retain_entries: limits::LOG_RETAIN_ENTRIES,
        }
    }
}

/// Starts the commit path (its decider and writer threads) over a loaded cell. `clock`
/// gives the time the core is told.
pub fn start(
    cell: Cell,
    store: Arc<dyn Store>,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    config: CommitConfig,
) -> (Committer, Arc<Published>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(limits::COMMIT_QUEUE_MAX);
    let (entries, _) = broadcast::channel(limits::WATCH_BROADCAST_MAX);
    let floor = store.log_floor().unwrap_or(0).max(1);
    let published = Arc::new(Published {
        snapshot: ArcSwap::from_pointee(cell.clone()),
        entries,
        store: store.clone(),
        log_floor: AtomicU64::new(floor),
        stats: CommitStats::default(),
        health: Health::new(),
    });
    let signals = Arc::new(Signals::default());
    let (decided_tx, decided_rx) = std::sync::mpsc::sync_channel(limits::COMMIT_PIPELINE_GROUPS);
    let writer = {
        let (p, signals) = (published.clone(), signals.clone());
        std::thread::Builder::new()
            .name("shoal-writer".into())
            .spawn(move || {
                let _stop = StopGuard {
                    published: p.clone(),
                    thread: "writer",
                };
                write_groups(store, decided_rx, p, signals)
            })
            .expect("spawn the commit writer thread")
    };
    let p = published.clone();
    let handle = std::thread::Builder::new()
        .name("shoal-committer".into())
        .spawn(move || {
            {
                let _stop = StopGuard {
                    published: p.clone(),
                    thread: "decider",
                };
                decide(cell, rx, decided_tx, p, signals, clock, config);
            }
            let _ = writer.join();
        })
        .expect("spawn committer thread");
    (Committer { tx }, published, handle)
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

/// A group the decider has applied, on its way to the writer.
struct Decided {
    /// The count of store failures the group was decided after: a group decided before a
    /// failure may depend on what failed, and is refused.
    failures: u64,
    /// The store write and the cell after the group (`None`: nothing changed).
    change: Option<(WriteBatch, Cell)>,
    answers: Vec<(ReplyTo, Result<Reply, CommitError>)>,
    entries: Vec<Arc<LogEntry>>,
}

type ReplyTo = oneshot::Sender<Result<Reply, CommitError>>;

/// Commands the decider has applied and not yet handed to the writer.
#[derive(Default)]
struct Applied {
    answers: Vec<(ReplyTo, Result<Reply, CommitError>)>,
    entries: Vec<Arc<LogEntry>>,
}

/// The decider: applies each group of waiting commands to its cell as it arrives, and hands
/// what it has applied to the writer whenever the writer waits (or nothing else is waiting):
/// while the writer syncs, the groups decided meanwhile gather into its next write. A
/// snapshot of the cell is taken only at the hand-over, so the persistent maps copy the
/// nodes a write changes once per sync, not once per group.
fn decide(
    mut cell: Cell,
    mut rx: mpsc::Receiver<CommitRequest>,
    decided: std::sync::mpsc::SyncSender<Decided>,
    published: Arc<Published>,
    signals: Arc<Signals>,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    config: CommitConfig,
) {
    let retain = config.log_retain_entries.max(1);
    let mut seen_failures = signals.failures.load(Ordering::Acquire);
    let mut seen_holds_lost = signals.holds_lost.load(Ordering::Acquire);
    let mut applied = Applied::default();
    let hand_over = |applied: &mut Applied, cell: &Cell, seen_failures: u64| {
        let Applied { answers, entries } = std::mem::take(applied);
        let change = (!entries.is_empty()).then(|| {
            (
                write_batch(cell, &entries, &published, retain),
                cell.clone(),
            )
        });
        decided
            .send(Decided {
                failures: seen_failures,
                change,
                answers,
                entries,
            })
            .is_ok()
    };
    loop {
        let first = if applied.answers.is_empty() {
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
                    if !hand_over(&mut applied, &cell, seen_failures)
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
        // This count first: the writer counts lost holds after the failure that goes with them.
        let holds_lost = signals.holds_lost.load(Ordering::Acquire);
        let failed = signals.failures.load(Ordering::Acquire);
        if failed != seen_failures {
            // A write failed: what was applied on top of it is refused, and the decider goes
            // back to what is durable (the writer publishes nothing after a failure until
            // groups decided after it arrive).
            refuse_answers(
                std::mem::take(&mut applied).answers,
                "an earlier commit group failed to persist; retry",
            );
            cell = Cell::clone(&*published.snapshot());
            seen_failures = failed;
        }
        let now = clock();
        if holds_lost != seen_holds_lost {
            // The cell was reloaded from the reopened store, which holds no holds: say so to
            // watchers (the frameworks' offers are rescinded), as a new master does.
            seen_holds_lost = holds_lost;
            if let Ok((Some(entry), _)) = cell.commit(now, &Command::ClearHolds) {
                let (reply, _) = oneshot::channel();
                applied.entries.push(Arc::new(entry));
                applied.answers.push((reply, Ok(Reply::Done)));
            }
        }
        for req in group {
            match cell.commit(now, &req.command) {
                Ok((entry, reply)) => {
                    applied.entries.extend(entry.map(Arc::new));
                    applied.answers.push((req.reply, Ok(reply)));
                }
                Err(rejection) => applied
                    .answers
                    .push((req.reply, Err(CommitError::Rejected(rejection)))),
            }
        }
        if (signals.writer_waits.load(Ordering::Acquire)
            || applied.answers.len() >= limits::COMMIT_GROUP_MAX)
            && !hand_over(&mut applied, &cell, seen_failures)
        {
            return;
        }
    }
}

/// The writer: persists the groups waiting for it with one sync, then publishes and answers
/// them in order.
fn write_groups(
    store: Arc<dyn Store>,
    decided: std::sync::mpsc::Receiver<Decided>,
    published: Arc<Published>,
    signals: Arc<Signals>,
) {
    // The pause before the next reopen of a failing store: doubled after each failure, back
    // to the least after a sync succeeds.
    let mut backoff = Duration::from_millis(limits::STORE_REOPEN_BACKOFF_MIN_MS);
    loop {
        signals.writer_waits.store(true, Ordering::Release);
        let first = decided.recv();
        signals.writer_waits.store(false, Ordering::Release);
        let Ok(first) = first else {
            return;
        };
        let started = Instant::now();
        let mut groups = vec![first];
        groups.extend(decided.try_iter().take(limits::COMMIT_PIPELINE_GROUPS));
        let failed = signals.failures.load(Ordering::Relaxed);
        // Groups decided before a failure are refused (they may build on what failed).
        let (stale, mut groups): (Vec<_>, Vec<_>) =
            groups.into_iter().partition(|g| g.failures != failed);
        refuse(stale, "an earlier commit group failed to persist; retry");
        let mut persisted = Ok(());
        let mut trim = None;
        let mut writes = 0;
        for (batch, _) in groups.iter().filter_map(|g| g.change.as_ref()) {
            persisted = store.write(batch);
            if persisted.is_err() {
                break;
            }
            trim = batch.trim_log_below.or(trim);
            writes += 1;
        }
        if writes > 0 && persisted.is_ok() {
            persisted = store.sync();
        }
        if let Err(e) = persisted {
            tracing::error!(error = %e, "store write failed; the groups are refused and the cell goes back to what is durable");
            published.health.set_store_failure(Some(e.to_string()));
            signals.failures.fetch_add(1, Ordering::Release);
            refuse(
                groups,
                &format!("the store failed ({e}); nothing of this commit was acknowledged, retry"),
            );
            if !recover(&*store, &decided, &published, &signals, &mut backoff) {
                return;
            }
            continue;
        }
        if writes > 0 {
            backoff = Duration::from_millis(limits::STORE_REOPEN_BACKOFF_MIN_MS);
        }
        if let Some(floor) = trim {
            published.log_floor.store(floor, Ordering::Release);
        }
        if writes > 0 {
            published.stats.syncs.fetch_add(1, Ordering::Relaxed);
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
                let _ = reply.send(answer);
            }
            for e in g.entries {
                let _ = published.entries.send(e);
            }
        }
        tracing::trace!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "commit groups written"
        );
    }
}

/// Reopens a failed store, after `backoff` and again with a longer one until it takes a
/// durable write, answering 503 to every group that arrives meanwhile; then reloads the cell
/// from it (the last durable commit), publishes it, and sends the decider back to it. Entries
/// the store kept beyond the published cell (a sync that failed after all) go to watchers.
/// Returns false when the decider is gone.
fn recover(
    store: &dyn Store,
    decided: &std::sync::mpsc::Receiver<Decided>,
    published: &Published,
    signals: &Signals,
    backoff: &mut Duration,
) -> bool {
    let mut next_try = Instant::now() + *backoff;
    let cell = loop {
        match decided.recv_timeout(next_try.saturating_duration_since(Instant::now())) {
            Ok(g) => {
                let why = published.health.store_failure().unwrap_or_default();
                refuse_answers(
                    g.answers,
                    &format!("the store is failing ({why}); it is being reopened, retry later"),
                );
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
        }
        *backoff = (*backoff * 2).min(Duration::from_millis(limits::STORE_REOPEN_BACKOFF_MAX_MS));
        next_try = Instant::now() + *backoff;
        match store
            .recover()
            .map_err(anyhow::Error::from)
            .and_then(|()| crate::load_cell(store))
        {
            Ok(cell) => {
                published.health.set_store_failure(None);
                break cell;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "the store does not reopen yet");
                published.health.set_store_failure(Some(format!("{e:#}")));
            }
        }
    };
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
    // Publish first, then send the decider back (it starts from the reloaded cell), then ask
    // for the holds to be cleared (the decider reads this count before the failures).
    signals.failures.fetch_add(1, Ordering::Release);
    if lost_holds {
        signals.holds_lost.fetch_add(1, Ordering::Release);
    }
    true
}

fn refuse(groups: Vec<Decided>, why: &str) {
    for g in groups {
        refuse_answers(g.answers, why);
    }
}

fn refuse_answers(answers: Vec<(ReplyTo, Result<Reply, CommitError>)>, why: &str) {
    for (reply, _) in answers {
        let _ = reply.send(Err(CommitError::Unavailable(why.to_string())));
    }
}

/// The records the group's entries changed, read from the cell as of the group's end.
fn write_batch(
    cell: &Cell,
    entries: &[Arc<LogEntry>],
    published: &Published,
    retain: u64,
) -> WriteBatch {
    let mut agents: BTreeSet<AgentId> = BTreeSet::new();
    let mut tasks: BTreeSet<TaskId> = BTreeSet::new();
    let mut roles: BTreeSet<String> = BTreeSet::new();
    let mut claims = Vec::new();
    let mut jobs: BTreeSet<&str> = BTreeSet::new();
    let mut job_tasks: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut services: BTreeSet<&str> = BTreeSet::new();
    // Per instance (service, index): written (true) or removed (false), as of the last event.
    let mut instances: BTreeMap<(&str, u32), bool> = BTreeMap::new();
    for e in entries {
        for ev in &e.events {
            match ev {
                Event::AgentRegistered { agent } => {
                    agents.insert(agent.id.clone());
                }
                Event::AgentResourcesUpdated { agent_id, .. }
                | Event::AgentStateChanged { agent_id, .. } => {
                    agents.insert(agent_id.clone());
                }
                Event::ClaimCommitted {
                    outcome, tasks: ts, ..
                } => {
                    claims.push(ClaimCommit {
                        outcome: outcome.clone(),
                        tasks: ts.clone(),
                    });
                    for t in ts {
                        tasks.insert(t.id.clone());
                        agents.insert(t.agent_id.clone());
                        roles.insert(t.role.clone());
                    }
                }
                Event::TaskStatusChanged { task_id, .. } => {
                    if let Some(t) = cell.task(task_id) {
                        agents.insert(t.agent_id.clone());
                    }
                    tasks.insert(task_id.clone());
                }
                Event::RoleConfigured { name, .. } => {
                    roles.insert(name.clone());
                }
                // Holds are not persisted; the agents' versions they moved are.
                Event::HoldsPlaced { holds } => {
                    agents.extend(holds.iter().map(|h| h.agent_id.clone()));
                }
                Event::HoldsReleased { agent_ids, .. } | Event::HoldsCleared { agent_ids } => {
                    agents.extend(agent_ids.iter().cloned());
                }
                Event::Records(SchedulerEvent::JobSubmitted { job }) => {
                    jobs.insert(&job.id);
                    job_tasks.extend(job.tasks.keys().map(|n| (job.id.as_str(), n.as_str())));
                }
                Event::Records(SchedulerEvent::JobUpdated {
                    job_id,
                    state,
                    tasks: ts,
                    ..
                }) => {
                    if state.is_some() {
                        jobs.insert(job_id);
                    }
                    job_tasks.extend(ts.iter().map(|t| (job_id.as_str(), t.name.as_str())));
                }
                Event::Records(SchedulerEvent::ServiceSubmitted { service }) => {
                    services.insert(&service.id);
                }
                Event::Records(SchedulerEvent::ServiceUpdated {
                    service_id,
                    spec,
                    count,
                    state,
                    message,
                    instances: is,
                    removed,
                    ..
                }) => {
                    if spec.is_some() || count.is_some() || state.is_some() || message.is_some() {
                        services.insert(service_id);
                    }
                    // As `apply` does: removals first, then the written records.
                    for i in removed {
                        instances.insert((service_id.as_str(), *i), false);
                    }
                    for i in is {
                        instances.insert((service_id.as_str(), i.index), true);
                    }
                }
            }
        }
    }
    let version = cell.version();
    let floor = published.log_floor.load(Ordering::Acquire);
    // Trim in steps of an eighth of the window, so that most commits delete nothing.
    let trim_log_below: Option<Version> = (version.saturating_sub(floor)
        >= retain + retain.div_ceil(8))
    .then(|| version + 1 - retain);
    WriteBatch {
        cell_id: cell.cell_id().to_string(),
        version,
        entries: entries.to_vec(),
        agents: agents
            .iter()
            .filter_map(|id| cell.agent_record(id).cloned())
            .collect(),
        tasks: tasks
            .iter()
            .filter_map(|id| cell.task_record(id).cloned())
            .collect(),
        roles: roles.iter().filter_map(|n| cell.role(n).cloned()).collect(),
        claims,
        jobs: jobs
            .iter()
            .filter_map(|id| cell.records().job(id).cloned())
            .collect(),
        job_tasks: job_tasks
            .iter()
            .filter_map(|(j, t)| {
                let task = cell.records().job(j)?.tasks.get(*t)?.clone();
                Some((j.to_string(), task))
            })
            .collect(),
        services: services
            .iter()
            .filter_map(|id| cell.records().service(id).cloned())
            .collect(),
        service_instances: instances
            .iter()
            .filter(|(_, written)| **written)
            .filter_map(|((id, index), _)| {
                let i = cell.records().service(id)?.instances.get(index)?.clone();
                Some((id.to_string(), i))
            })
            .collect(),
        service_instances_removed: instances
            .iter()
            .filter(|(_, written)| !**written)
            .map(|((id, index), _)| (id.to_string(), *index))
            .collect(),
        trim_log_below,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use axum::extract::State;
    use shoal_core::{AgentRegistration, Hold, OfferId, Quota, ResourceSet};

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

    fn start_on(
        store: Arc<dyn Store>,
        clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    ) -> (Committer, Arc<Published>) {
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

    /// Issue 11, item 1: the commit path died and `/health` kept answering 200.
    #[tokio::test]
    async fn commit_thread_dies_and_health_says_so() {
        // The writer panics.
        let store = PanickyStore::default();
        let (committer, published) = start_on(Arc::new(store.clone()), Arc::new(|| 1));
        committer.submit(role("a")).await.unwrap();
        assert_eq!(health_status(&published).await, 200);
        store.panic.store(true, Ordering::Relaxed);
        let r = committer.submit(role("b")).await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");
        assert_stopped(&committer, &published).await;

        // The decider panics (here in the clock it is told).
        let broken = Arc::new(AtomicBool::new(false));
        let b = broken.clone();
        let clock = Arc::new(move || {
            assert!(!b.load(Ordering::Relaxed), "a bug in the decider");
            1
        });
        let (committer, published) = start_on(Arc::new(MemStore::new()), clock);
        committer.submit(role("a")).await.unwrap();
        assert_eq!(health_status(&published).await, 200);
        broken.store(true, Ordering::Relaxed);
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
        let (committer, published) = start_on(Arc::new(store.clone()), Arc::new(|| 1));
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
            .contains("store is failing"));
        let r = committer.submit(role("lost")).await;
        assert!(matches!(r, Err(CommitError::Unavailable(_))), "{r:?}");

        store.reboot();
        let until = Instant::now() + Duration::from_secs(10);
        while published.health.check().is_err() {
            assert!(Instant::now() < until, "the store is reopened");
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
