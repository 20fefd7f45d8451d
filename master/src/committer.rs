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
//! unpersisted is ever acknowledged or published. Readers load the published snapshot (an
//! `Arc` of a persistent structure) and never block the committer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use shoal_core::{
    AgentId, Cell, Command, Event, LogEntry, Rejection, Reply, TaskId, Timestamp, Version,
};
use tokio::sync::{broadcast, mpsc, oneshot};

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
    });
    let signals = Arc::new(Signals::default());
    let (decided_tx, decided_rx) = std::sync::mpsc::sync_channel(limits::COMMIT_PIPELINE_GROUPS);
    let writer = {
        let (p, signals) = (published.clone(), signals.clone());
        std::thread::Builder::new()
            .name("shoal-writer".into())
            .spawn(move || write_groups(store, decided_rx, p, signals))
            .expect("spawn the commit writer thread")
    };
    let p = published.clone();
    let handle = std::thread::Builder::new()
        .name("shoal-committer".into())
        .spawn(move || {
            decide(cell, rx, decided_tx, p, signals, clock, config);
            let _ = writer.join();
        })
        .expect("spawn committer thread");
    (Committer { tx }, published, handle)
}

/// What the writer tells the decider.
#[derive(Default)]
struct Signals {
    /// Store writes that failed so far.
    failures: AtomicU64,
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
            signals.failures.fetch_add(1, Ordering::Release);
            refuse(groups, &e.to_string());
            continue;
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
                Event::JobSubmitted { job } => {
                    jobs.insert(&job.id);
                    job_tasks.extend(job.tasks.keys().map(|n| (job.id.as_str(), n.as_str())));
                }
                Event::JobUpdated {
                    job_id,
                    state,
                    tasks: ts,
                    ..
                } => {
                    if state.is_some() {
                        jobs.insert(job_id);
                    }
                    job_tasks.extend(ts.iter().map(|t| (job_id.as_str(), t.name.as_str())));
                }
                Event::ServiceSubmitted { service } => {
                    services.insert(&service.id);
                }
                Event::ServiceUpdated {
                    service_id,
                    spec,
                    count,
                    state,
                    message,
                    instances: is,
                    removed,
                    ..
                } => {
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
        jobs: jobs.iter().filter_map(|id| cell.job(id).cloned()).collect(),
        job_tasks: job_tasks
            .iter()
            .filter_map(|(j, t)| {
                let task = cell.job(j)?.tasks.get(*t)?.clone();
                Some((j.to_string(), task))
            })
            .collect(),
        services: services
            .iter()
            .filter_map(|id| cell.service(id).cloned())
            .collect(),
        service_instances: instances
            .iter()
            .filter(|(_, written)| **written)
            .filter_map(|((id, index), _)| {
                let i = cell.service(id)?.instances.get(index)?.clone();
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
