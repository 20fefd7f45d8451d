//! Garbage collection: which terminal tasks, claim outcomes and gone agents a cell may forget,
//! and after what bound.
//!
//! The cell would otherwise grow with every task it ever ran. A collection is a command like
//! any other ([`crate::Command::Collect`]): [`crate::Cell::collection`] plans one from a
//! snapshot (the oldest terminal tasks past a count per owner or an age, the claims whose
//! every task is gone, gone agents past a count), `decide` re-checks each id against the
//! current state, and the entry's [`crate::Event::Collected`] tells the store and every
//! watcher what to drop. Nothing live is ever collected; what a caller above the cell still
//! needs (a framework's unacknowledged terminal update, a running job's task) it keeps out of
//! a plan with the `retained` predicate.

use serde::{Deserialize, Serialize};

/// How much finished work a cell keeps. Mesos keeps 1,000 completed tasks per framework
/// (`--max_completed_tasks_per_framework`) and 100 × 1,024 agents in its registry
/// (`--registry_max_agent_count`); Nomad collects terminal jobs and allocations older than
/// 4 h (`job_gc_threshold`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Terminal tasks kept per owner (a framework id or a scheduler's name), newest first.
    pub completed_tasks_per_owner: usize,
    /// Terminal tasks whose last status is older than this are collected whatever their
    /// count, in milliseconds.
    pub completed_task_age_ms: u64,
    /// Gone agents kept (those with no live task), newest first.
    pub gone_agents_max: usize,
    /// Most records one collection removes: a bound on one log entry and one store write.
    pub per_collection_max: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            completed_tasks_per_owner: crate::limits::COMPLETED_TASKS_PER_OWNER,
            completed_task_age_ms: crate::limits::COMPLETED_TASK_AGE_MS,
            gone_agents_max: crate::limits::GONE_AGENTS_MAX,
            per_collection_max: crate::limits::COLLECT_RECORDS_MAX,
        }
    }
}

/// What the cell has collected since it was created: counts, for the state endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedCounts {
    pub tasks: u64,
    pub claims: u64,
    pub agents: u64,
}
