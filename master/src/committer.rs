//! The one commit path of the master.
//!
//! A single committer thread owns the cell and the store's write side. Every mutation —
//! a native claim, a kill, an agent registration, a status update, a role's quota — reaches
//! it as a [`CommitRequest`]. It takes whatever requests are waiting (group commit), and for
//! the group:
//!
//! 1. **validates and applies** each command on a copy of the cell (`Cell::commit`, the
//!    sans-IO core; a rejected command changes nothing);
//! 2. **persists** the log entries and the records they changed in one store write, then
//!    one sync (fsync);
//! 3. **publishes** the new snapshot to readers, then **acknowledges** every request of the
//!    group — only now, after the sync — and streams the entries to watchers.
//!
//! If the store fails, the copy is dropped, the group is answered 503, and the cell stays as
//! it was: nothing unpersisted is ever acknowledged or published. Readers load the published
//! snapshot (an `Arc` of a persistent structure) and never block the committer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use shoal_core::{
    AgentId, Cell, Command, Event, LogEntry, Rejection, Reply, TaskId, Timestamp, Version,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::limits;
use crate::store::{Store, WriteBatch};

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

/// Starts the committer thread over a loaded cell. `clock` gives the time the core is told.
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
    let p = published.clone();
    let handle = std::thread::Builder::new()
        .name("shoal-committer".into())
        .spawn(move || run(cell, store, rx, p, clock, config))
        .expect("spawn committer thread");
    (Committer { tx }, published, handle)
}

fn run(
    mut cell: Cell,
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<CommitRequest>,
    published: Arc<Published>,
    clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    config: CommitConfig,
) {
    let retain = config.log_retain_entries.max(1);
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < limits::COMMIT_GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let now = clock();
        let mut next = cell.clone();
        let mut entries: Vec<Arc<LogEntry>> = Vec::new();
        let mut answers = Vec::with_capacity(group.len());
        for req in group {
            match next.commit(now, &req.command) {
                Ok((entry, reply)) => {
                    entries.extend(entry.map(Arc::new));
                    answers.push((req.reply, Ok(reply)));
                }
                Err(rejection) => answers.push((req.reply, Err(CommitError::Rejected(rejection)))),
            }
        }
        if !entries.is_empty() {
            let batch = write_batch(&next, &entries, &published, retain);
            let persisted = store.write(&batch).and_then(|_| store.sync());
            if let Err(e) = persisted {
                tracing::error!(error = %e, "store write failed; the group is refused and the cell unchanged");
                for (reply, _) in answers {
                    let _ = reply.send(Err(CommitError::Unavailable(e.to_string())));
                }
                continue;
            }
            if let Some(floor) = batch.trim_log_below {
                published.log_floor.store(floor, Ordering::Release);
            }
            published.stats.syncs.fetch_add(1, Ordering::Relaxed);
            cell = next;
        }
        published.stats.groups.fetch_add(1, Ordering::Relaxed);
        published
            .stats
            .commands
            .fetch_add(answers.len() as u64, Ordering::Relaxed);
        // The new snapshot is published before the answers go out, so a scheduler that reads
        // right after its acknowledgement sees its own commit (read-your-writes).
        if !entries.is_empty() {
            published.snapshot.store(Arc::new(cell.clone()));
        }
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        for e in entries {
            let _ = published.entries.send(e);
        }
        tracing::trace!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "commit group"
        );
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
                    claims.push(outcome.clone());
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
            .filter_map(|id| cell.agent(id).cloned())
            .collect(),
        tasks: tasks
            .iter()
            .filter_map(|id| cell.task(id).cloned())
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
