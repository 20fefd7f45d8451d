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
            let retained = |t: &Task| {
                shoal_sched::retains(&snap, t) || retainers.iter().any(|r| r.retains(t))
            };
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
