//! The collector: garbage collection of finished work on the one commit path.
//!
//! Every `collect_interval` it plans a collection on the published snapshot
//! (`Cell::collection`, sans-IO: the oldest terminal tasks past `--max-completed-tasks-per-owner`
//! or `--completed-task-age`, the claims they leave empty once the change log no longer names
//! them, gone agents past `--max-gone-agents`) and submits it as `Command::Collect`, which the
//! decider checks again: the store's rows go in the same write, and watchers (and every
//! client's `Mirror`) drop the same records when they fold the entry. Parts above the master
//! keep what they still need out of a plan with a [`Retainer`]: compat the tasks whose
//! terminal update a framework has not acknowledged, the batch scheduler a running job's tasks.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use shoal_core::gc::Retention;
use shoal_core::Task;

use crate::committer::{Committer, Published};

/// A part that may keep tasks out of a collection.
pub trait Retainer: Send + Sync {
    /// Whether `task` (terminal) must be kept for now.
    fn retains(&self, task: &Task) -> bool;
}

/// The collector's settings and the parts that keep tasks.
pub struct Collector {
    retention: Retention,
    interval: Duration,
    retainers: RwLock<Vec<Arc<dyn Retainer>>>,
}

impl Collector {
    pub fn new(retention: Retention, interval: Duration) -> Collector {
        Collector {
            retention,
            interval,
            retainers: RwLock::new(Vec::new()),
        }
    }

    /// Adds a part whose tasks a collection keeps while it says so.
    pub fn retain_with(&self, r: Arc<dyn Retainer>) {
        self.retainers.write().push(r);
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Plans and submits one collection; returns how many records it named (0: nothing due).
    pub async fn collect_once(&self, committer: &Committer, published: &Published) -> usize {
        let snap = published.snapshot();
        let floor = published.log_floor.load(Ordering::Acquire);
        let now = published.clock.wall_ms();
        let plan = {
            let retainers = self.retainers.read();
            let retained =
                |t: &Task| shoal_sched::retains(&snap, t) || retainers.iter().any(|r| r.retains(t));
            snap.collection(&self.retention, now, floor, &retained)
        };
        let Some(command) = plan else {
            return 0;
        };
        let named = match &command {
            shoal_core::Command::Collect {
                tasks,
                claims,
                agents,
                ..
            } => tasks.len() + claims.len() + agents.len(),
            _ => 0,
        };
        match committer.submit(command).await {
            Ok(_) => named,
            Err(e) => {
                tracing::warn!(error = %e, "collection not committed");
                0
            }
        }
    }
}

/// Runs the collector for the life of the master: one collection per interval, or at once
/// again while a collection was full (a backlog after a restart or a burst of work).
pub fn start(collector: Arc<Collector>, committer: Committer, published: Arc<Published>) {
    tokio::spawn(async move {
        loop {
            let named = collector.collect_once(&committer, &published).await;
            if named < collector.retention.per_collection_max.max(1) {
                tokio::time::sleep(collector.interval).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use shoal_core::clock::ManualClock;
    use shoal_core::{
        AgentId, AgentRegistration, AgentState, Claim, ClaimId, Placement, ResourceSet, StatusInfo,
        TaskId, TaskSpec, TaskState,
    };
    use shoal_sched::{Command, Reply};

    use super::*;
    use crate::committer::{CommitConfig, CommitCore};
    use crate::store::{RedbStore, Store};

    fn claim(id: &str, agent: &AgentId, tasks: &[&str], version: u64) -> Command {
        Command::Claim(Claim {
            id: ClaimId::new(id),
            role: "*".into(),
            owner: "s1".into(),
            snapshot_version: version,
            mode: Default::default(),
            check: Default::default(),
            placements: tasks
                .iter()
                .map(|t| Placement {
                    task_id: TaskId::new(t),
                    name: t.to_string(),
                    agent_id: agent.clone(),
                    resources: ResourceSet::parse("cpus:1").unwrap(),
                    spec: TaskSpec::empty(),
                })
                .collect(),
            priority: 0,
            evictions: vec![],
        })
    }

    fn finish(task: &str) -> Command {
        Command::UpdateTaskStatus {
            task_id: TaskId::new(task),
            state: TaskState::Finished,
            status: StatusInfo::default(),
        }
    }

    fn ok(replies: Vec<Result<Reply, crate::CommitError>>) -> Vec<Reply> {
        replies.into_iter().map(|r| r.expect("committed")).collect()
    }

    /// What a collection forgets leaves the redb store too, and stays forgotten when the
    /// store is loaded again: a task collected while its claim's row stays, the same task id
    /// placed again by another claim (kept), a claim collected once the log's floor passed
    /// it, and a gone agent.
    #[test]
    fn collected_rows_stay_collected_across_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cell.redb");
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let clock: shoal_core::clock::SharedClock = Arc::new(ManualClock::new(1_000));
        let config = CommitConfig {
            log_retain_entries: 2,
            ..Default::default()
        };
        let mut core = CommitCore::new(
            crate::load_cell(store.as_ref()).unwrap(),
            store.clone(),
            clock,
            config,
        );
        let reg = |host: &str| {
            Command::RegisterAgent(AgentRegistration {
                agent_id: None,
                hostname: host.into(),
                port: 0,
                attributes: Default::default(),
                domain: None,
                resources: ResourceSet::parse("cpus:8").unwrap(),
            })
        };
        let replies = ok(core.step(vec![reg("h1"), reg("h2")]));
        let agent = |r: &Reply| match r {
            Reply::Agent { agent_id } => agent_id.clone(),
            other => panic!("{other:?}"),
        };
        let (a1, a2) = (agent(&replies[0]), agent(&replies[1]));
        ok(core.step(vec![claim("c1", &a1, &["t1", "t2"], 2)]));
        ok(core.step(vec![finish("t1")]));
        let snap = core.published().snapshot();
        let keep_none = Retention {
            completed_tasks_per_owner: 0,
            gone_agents_max: 0,
            ..Default::default()
        };
        // The log still names c1: t1 goes, c1 (with t2 live) stays.
        let plan = snap.collection(&keep_none, 2_000, 0, &|_| false).unwrap();
        ok(core.step(vec![plan]));
        let snap = core.published().snapshot();
        assert!(snap.task(&TaskId::new("t1")).is_none());
        assert!(snap.claim(&ClaimId::new("c1")).is_some());
        // t1 placed again, by c2; a2 gone.
        let v = snap.version();
        ok(core.step(vec![claim("c2", &a1, &["t1"], v)]));
        ok(core.step(vec![Command::SetAgentState {
            agent_id: a2.clone(),
            state: AgentState::Gone,
        }]));
        ok(core.step(vec![finish("t2")]));
        let snap = core.published().snapshot();
        let floor = snap.version();
        let plan = snap
            .collection(&keep_none, 2_000, floor, &|_| false)
            .unwrap();
        ok(core.step(vec![plan]));
        let snap = core.published().snapshot();
        assert!(snap.task(&TaskId::new("t2")).is_none());
        assert!(
            snap.claim(&ClaimId::new("c1")).is_none(),
            "c1 is empty and below the floor"
        );
        assert!(snap.agent(&a2).is_none(), "the gone agent is collected");
        assert_eq!(
            snap.task(&TaskId::new("t1")).unwrap().claim_id.as_str(),
            "c2"
        );
        assert_eq!(snap.collected().tasks, 2);
        assert_eq!(snap.collected().claims, 1);
        assert_eq!(snap.collected().agents, 1);
        drop(core);
        let reloaded = crate::load_cell(store.as_ref()).unwrap();
        assert_eq!(reloaded.task_count(), 1);
        assert_eq!(
            reloaded.task(&TaskId::new("t1")).unwrap().claim_id.as_str(),
            "c2"
        );
        assert!(reloaded.claim(&ClaimId::new("c1")).is_none());
        assert!(reloaded.claim(&ClaimId::new("c2")).is_some());
        assert!(reloaded.agent(&a2).is_none());
        assert_eq!(reloaded.collected(), snap.collected());
        // The log reads back from its floor (no entry names a row that is gone).
        let floor = store.log_floor().unwrap();
        store.read_log(floor, 1_000).unwrap();
    }
}
