//! Durable storage of the cell, behind the [`Store`] trait.
//!
//! The store keeps the current records (agents, tasks, roles, claim outcomes) and a bounded
//! log of recent [`LogEntry`]s, so a watch can resume from any version at or above the
//! log's floor, also after a restart. Writing and syncing are separate calls so that the
//! commit path can group many commands into one write and one fsync, and so that a test
//! store can drop whatever was written but not synced when it simulates a crash.
//!
//! The default backend is [redb](https://docs.rs/redb): one file, ACID, copy-on-write
//! B-trees with MVCC readers, pure Rust. The hot rows — tasks, claim outcomes and the log
//! entries of claims — are written in a compact binary form ([postcard], see [`rows`]); the
//! other records are JSON, the same encoding the native API serves. Rows written as JSON by
//! earlier versions are still read.
//!
//! A task is written once when it is placed, inside its claim's row (the claim's outcome and
//! its tasks as placed); it gets a row of its own in the task table only when it changes, and
//! loading lays those rows over the placed tasks. A claim's log entry names the claim and is
//! rebuilt from its row. A collection (garbage collection, `shoal_core::gc`) removes the rows
//! of what it forgot: a task's own row, and, while its claim's row stays (the claim's other
//! tasks are kept), a row in `collected` that says the claim's placed copy of it is gone; a
//! claim's row (with those) only once the log no longer holds its entry, so every reference
//! in the log still resolves.
//!
//! A store names its [`FORMAT`] in a meta row: a shoal opens every format up to its own
//! (upgrading older ones) and refuses, without writing to it, a store of a newer one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use redb::{
    Database, Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_core::gc::CollectedCounts;
use shoal_core::{Agent, ClaimOutcome, CollectedTask, Role, Task, Version};
use shoal_core::{
    AgentId, ClaimId, PlacementOutcome, RejectReason, ResourceSet, StatusInfo, TaskId, TaskSpec,
    TaskState,
};
use shoal_sched::batch::{Job, JobTask};
use shoal_sched::service::{Instance, Service};
use shoal_sched::Event;
use shoal_sched::LogEntry;

mod mem_store;
mod redb_store;
pub mod rows;

pub use mem_store::MemStore;
pub use redb_store::RedbStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
    /// Left as it was: a newer shoal wrote it, and this one would misread it.
    #[error(
        "the store is of format {found}, newer than this shoal knows (formats up to \
         {known}); it is left as it was: open it with a newer shoal"
    )]
    NewerFormat { found: u32, known: u32 },
}

/// The store format this shoal writes; it opens every format up to this one (a store of an
/// older format is upgraded when it is opened) and refuses newer ones. Format 1: the tables
/// of [`RedbStore`] with the binary rows of [`rows`] (and the JSON rows of earlier versions,
/// read as they are); stores made before the format row existed are of format 1.
/// Format 2 adds the `collected` table (tasks forgotten while their claim's row stays): a
/// format-1 shoal would bring them back, so it must not open a format-2 store.
pub const FORMAT: u32 = 2;

macro_rules! backend_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Backend(e.to_string())
            }
        }
    )*};
}
backend_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type StoreResult<T> = Result<T, StoreError>;

/// Everything the store holds about a cell, as loaded at start.
#[derive(Debug, Default, Clone)]
pub struct StoredCell {
    pub cell_id: Option<String>,
    pub version: Version,
    pub agents: Vec<Agent>,
    pub tasks: Vec<Task>,
    pub roles: Vec<Role>,
    pub claims: Vec<ClaimOutcome>,
    /// Jobs with their tasks' records.
    pub jobs: Vec<Job>,
    /// Services with their instances' records.
    pub services: Vec<Service>,
    /// What collections have forgotten so far.
    pub collected: CollectedCounts,
}

/// One group commit: the new log entries and the records they changed, as of their end.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub cell_id: String,
    pub version: Version,
    pub entries: Vec<Arc<LogEntry>>,
    /// Records shared with the cell they were read from (writing copies no record).
    pub agents: Vec<Arc<Agent>>,
    pub tasks: Vec<Arc<Task>>,
    pub roles: Vec<Role>,
    pub claims: Vec<ClaimCommit>,
    /// Jobs whose own record changed (written without their tasks), and changed task records
    /// by job id: a job's tasks are records of their own, so one task's change writes one row.
    pub jobs: Vec<Job>,
    pub job_tasks: Vec<(String, JobTask)>,
    /// Services whose own record changed (written without their instances), changed instance
    /// records by service id, and removed instances (service id, index): one row per instance.
    pub services: Vec<Service>,
    pub service_instances: Vec<(String, Instance)>,
    pub service_instances_removed: Vec<(String, u32)>,
    /// Drop log entries below this version (the new floor), if set.
    pub trim_log_below: Option<Version>,
    /// What the group's collections forgot (removed before anything above is written, so
    /// an id placed again in the same group is written after its old record is gone).
    pub collected: Collected,
}

/// The records a group's collections forgot, and the cell's counts after them.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    pub tasks: Vec<CollectedTask>,
    pub claims: Vec<ClaimId>,
    pub agents: Vec<AgentId>,
    /// Set when anything was collected.
    pub counts: Option<CollectedCounts>,
}

/// A claim's commit: its outcome and its tasks as placed (shared with its log entry).
#[derive(Debug, Clone)]
pub struct ClaimCommit {
    pub outcome: ClaimOutcome,
    pub tasks: Vec<Arc<Task>>,
}

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> StoreResult<StoredCell>;
    /// Writes a batch. It may stay volatile until the next [`Store::sync`].
    fn write(&self, batch: &WriteBatch) -> StoreResult<()>;
    /// Makes everything written so far durable.
    fn sync(&self) -> StoreResult<()>;
    /// Log entries with version >= `from`, in order, at most `max` of them.
    fn read_log(&self, from: Version, max: usize) -> StoreResult<Vec<LogEntry>>;
    /// The oldest version still in the log (the compaction floor); entries below are gone.
    fn log_floor(&self) -> StoreResult<Version>;
    /// After a failed write or sync: reopens the store, which recovers to the last durable
    /// commit (what was written since the last successful sync is gone), and checks that it
    /// takes a durable write again. Until this succeeds, writes may keep failing.
    fn recover(&self) -> StoreResult<()>;
}

fn job_task_key(job: &str, task: &str) -> String {
    format!("{job}/{task}")
}

fn instance_key(service: &str, index: u32) -> String {
    format!("{service}/{index}")
}

/// A service as stored: its record without the instances (they have rows of their own).
fn service_header(s: &Service) -> Service {
    Service {
        instances: Default::default(),
        ..s.clone()
    }
}

/// Puts stored services and their instance rows back together.
fn assemble_services(headers: Vec<Service>, instances: Vec<(String, Instance)>) -> Vec<Service> {
    let mut services: BTreeMap<String, Service> =
        headers.into_iter().map(|s| (s.id.clone(), s)).collect();
    for (id, i) in instances {
        if let Some(s) = services.get_mut(&id) {
            s.instances.insert(i.index, i);
        }
    }
    services.into_values().collect()
}

/// A job as stored: its record without the tasks (they have rows of their own).
fn job_header(job: &Job) -> Job {
    Job {
        tasks: Default::default(),
        ..job.clone()
    }
}

/// Puts stored jobs and their task rows back together.
fn assemble_jobs(headers: Vec<Job>, tasks: Vec<(String, JobTask)>) -> Vec<Job> {
    let mut jobs: BTreeMap<String, Job> = headers.into_iter().map(|j| (j.id.clone(), j)).collect();
    for (job_id, t) in tasks {
        if let Some(j) = jobs.get_mut(&job_id) {
            j.tasks.insert(t.name.clone(), t);
        }
    }
    jobs.into_values().collect()
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}
