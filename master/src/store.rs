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
//! rebuilt from its row. No row is ever removed, so every reference resolves.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_core::jobs::{Job, JobTask};
use shoal_core::services::{Instance, Service};
use shoal_core::{Agent, ClaimOutcome, LogEntry, Role, Task, Version};
use shoal_core::{
    AgentId, ClaimId, Event, PlacementOutcome, RejectReason, ResourceSet, StatusInfo, TaskId,
    TaskSpec, TaskState,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
}

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

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Key: `<job id>/<task name>` (neither has a slash).
const JOB_TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_tasks");

/// Key: `<service id>/<index>` (service ids have no slash).
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const SERVICE_INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("service_instances");

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

/// The embedded store: one redb file.
///
/// redb latches an IO error (a full disk, a failed fsync): every later transaction of that
/// `Database`, reads too, fails with `PreviousIo`. [`Store::recover`] closes it and opens
/// the file again, which recovers to the last durable commit.
pub struct RedbStore {
    path: PathBuf,
    /// `None` only while a reopen failed (until the next one succeeds). Readers hold the read
    /// lock for the life of their transaction, so a reopen never closes the file under them.
    db: RwLock<Option<Database>>,
    /// The buffer rows are encoded in, kept between writes: a claim's row is tens of KiB,
    /// and a buffer grown afresh at each write took new pages from the kernel each time.
    scratch: Mutex<Vec<u8>>,
}

impl RedbStore {
    pub fn open(path: &Path) -> StoreResult<RedbStore> {
        Ok(RedbStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(RedbStore::open_db(path)?)),
            scratch: Mutex::default(),
        })
    }

    /// Opens (or creates) the file and its tables, with one durable commit.
    fn open_db(path: &Path) -> StoreResult<Database> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(AGENTS)?;
            txn.open_table(TASKS)?;
            txn.open_table(ROLES)?;
            txn.open_table(CLAIMS)?;
            txn.open_table(LOG)?;
            txn.open_table(JOBS)?;
            txn.open_table(JOB_TASKS)?;
            txn.open_table(SERVICES)?;
            txn.open_table(SERVICE_INSTANCES)?;
        }
        txn.commit()?;
        Ok(db)
    }

    /// The open database (shared with a reopen, which waits for the guard).
    fn db(&self) -> StoreResult<DbGuard<'_>> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(StoreError::Backend(
                "the store is closed after a failure; it is being reopened".into(),
            ));
        }
        Ok(DbGuard(guard))
    }
}

struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when the guard was taken")
    }
}

fn load_table<T>(
    txn: &redb::ReadTransaction,
    def: TableDefinition<&str, &[u8]>,
    decode: impl Fn(&[u8]) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let table = txn.open_table(def)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, v) = row?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

impl Store for RedbStore {
    fn load(&self) -> StoreResult<StoredCell> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let cell_id = match meta.get("cell_id")? {
            Some(v) => Some(
                String::from_utf8(v.value().to_vec())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ),
            None => None,
        };
        let version = match meta.get("version")? {
            Some(v) => decode("version", v.value())?,
            None => 0,
        };
        // Tasks as their claims placed them, then the rows of those that changed since.
        let mut claims = Vec::new();
        let mut tasks = BTreeMap::new();
        for (outcome, placed) in load_table(&txn, CLAIMS, rows::decode_claim_commit)? {
            tasks.extend(placed.into_iter().flatten().map(|t| (t.id.clone(), t)));
            claims.push(outcome);
        }
        tasks.extend(
            load_table(&txn, TASKS, rows::decode_task)?
                .into_iter()
                .map(|t| (t.id.clone(), t)),
        );
        Ok(StoredCell {
            cell_id,
            version,
            agents: load_table(&txn, AGENTS, |v| decode("agent", v))?,
            tasks: tasks.into_values().collect(),
            roles: load_table(&txn, ROLES, |v| decode("role", v))?,
            claims,
            jobs: {
                let headers = load_table(&txn, JOBS, |v| decode("job", v))?;
                let table = txn.open_table(JOB_TASKS)?;
                let mut tasks = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    let job_id = k.value().split('/').next().unwrap_or_default().to_string();
                    tasks.push((job_id, decode("job task", v.value())?));
                }
                assemble_jobs(headers, tasks)
            },
            services: {
                let headers = load_table(&txn, SERVICES, |v| decode("service", v))?;
                let table = txn.open_table(SERVICE_INSTANCES)?;
                let mut instances = Vec::new();
                for row in table.iter()? {
                    let (k, v) = row?;
                    let id = k.value().split('/').next().unwrap_or_default().to_string();
                    instances.push((id, decode("service instance", v.value())?));
                }
                assemble_services(headers, instances)
            },
        })
    }

    fn write(&self, batch: &WriteBatch) -> StoreResult<()> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("cell_id", batch.cell_id.as_bytes())?;
            meta.insert("version", encode(&batch.version).as_slice())?;
            let mut agents = txn.open_table(AGENTS)?;
            for a in &batch.agents {
                agents.insert(a.id.as_str(), encode(a).as_slice())?;
            }
            // A claim's row holds its tasks as placed: a task is written once when it is
            // placed, and gets a row of its own only when it changes.
            let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
            let mut buf = std::mem::take(&mut *scratch);
            let mut placed: HashMap<&str, &Arc<Task>> = HashMap::new();
            let mut claims = txn.open_table(CLAIMS)?;
            for c in &batch.claims {
                buf = rows::encode_claim_commit(c, buf);
                claims.insert(c.outcome.claim_id.as_str(), buf.as_slice())?;
                placed.extend(c.tasks.iter().map(|t| (t.id.as_str(), t)));
            }
            let mut tasks = txn.open_table(TASKS)?;
            for t in &batch.tasks {
                let as_placed = placed
                    .get(t.id.as_str())
                    .is_some_and(|p| Arc::ptr_eq(p, t) || p == &t);
                if !as_placed {
                    buf = rows::encode(&rows::TaskRow::from(t.as_ref()), buf);
                    tasks.insert(t.id.as_str(), buf.as_slice())?;
                }
            }
            let mut roles = txn.open_table(ROLES)?;
            for r in &batch.roles {
                roles.insert(r.name.as_str(), encode(r).as_slice())?;
            }
            let mut jobs = txn.open_table(JOBS)?;
            for j in &batch.jobs {
                jobs.insert(j.id.as_str(), encode(&job_header(j)).as_slice())?;
            }
            let mut job_tasks = txn.open_table(JOB_TASKS)?;
            for (job_id, t) in &batch.job_tasks {
                job_tasks.insert(job_task_key(job_id, &t.name).as_str(), encode(t).as_slice())?;
            }
            let mut services = txn.open_table(SERVICES)?;
            for sv in &batch.services {
                services.insert(sv.id.as_str(), encode(&service_header(sv)).as_slice())?;
            }
            let mut instances = txn.open_table(SERVICE_INSTANCES)?;
            for (id, i) in &batch.service_instances {
                instances.insert(instance_key(id, i.index).as_str(), encode(i).as_slice())?;
            }
            for (id, index) in &batch.service_instances_removed {
                instances.remove(instance_key(id, *index).as_str())?;
            }
            let mut log = txn.open_table(LOG)?;
            for e in &batch.entries {
                buf = rows::encode(&rows::LogRow::from(e.as_ref()), buf);
                log.insert(e.version, buf.as_slice())?;
            }
            *scratch = buf;
            if let Some(floor) = batch.trim_log_below {
                log.retain_in(..floor, |_, _| false)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn sync(&self) -> StoreResult<()> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    fn recover(&self) -> StoreResult<()> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = db.take() {
            // Closing a failed database reports the failure again: it is known.
            if let Err(e) = old.close() {
                tracing::debug!(error = %e, "closing the failed store");
            }
        }
        let reopened = RedbStore::open_db(&self.path)?;
        // A durable write of its own: the disk takes writes again (or the reopen fails).
        let txn = reopened.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let stamp = crate::wall_clock_ms().to_string();
            meta.insert("reopened_at", stamp.as_bytes())?;
        }
        txn.commit()?;
        *db = Some(reopened);
        Ok(())
    }

    fn read_log(&self, from: Version, max: usize) -> StoreResult<Vec<LogEntry>> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut records = StoredRecords {
            claims: txn.open_table(CLAIMS)?,
            tasks: txn.open_table(TASKS)?,
        };
        let mut out = Vec::new();
        for row in log.range(from..)? {
            let (k, v) = row?;
            out.push(rows::decode_log_entry(k.value(), v.value(), &mut records)?);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    fn log_floor(&self) -> StoreResult<Version> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let first = log.first()?.map(|(k, _)| k.value());
        Ok(first.unwrap_or(0))
    }
}

/// The claim and task rows a log entry refers to, read in the log read's transaction.
struct StoredRecords {
    claims: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    tasks: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl rows::Records for StoredRecords {
    fn claim(&mut self, id: &str) -> StoreResult<Option<(ClaimOutcome, Option<Vec<Task>>)>> {
        self.claims
            .get(id)?
            .map(|v| rows::decode_claim_commit(v.value()))
            .transpose()
    }
    fn task(&mut self, id: &str) -> StoreResult<Option<Task>> {
        self.tasks
            .get(id)?
            .map(|v| rows::decode_task(v.value()))
            .transpose()
    }
}

/// The binary rows of the hot tables: tasks, claim outcomes and log entries, in [postcard]
/// behind a leading format byte. The records' own serde form is made for JSON (skipped
/// fields, internally tagged enums, text resources) and postcard can only read a fixed
/// layout, so each row has a mirror type here; a JSON row (first byte `{`) is read as JSON.
pub mod rows {
    use super::*;

    /// The first byte of a binary row.
    const FORMAT_V1: u8 = 1;
    /// The first byte of a claim's row that holds its tasks as placed ([`ClaimCommitRow`]).
    const FORMAT_CLAIM_WITH_TASKS: u8 = 2;

    /// Encodes `row` into `buf` (cleared first), returning it for reuse.
    pub fn encode<T: Serialize>(row: &T, buf: Vec<u8>) -> Vec<u8> {
        encode_as(FORMAT_V1, row, buf)
    }

    fn encode_as<T: Serialize>(format: u8, row: &T, mut buf: Vec<u8>) -> Vec<u8> {
        buf.clear();
        buf.push(format);
        postcard::to_extend(row, buf).expect("rows serialize")
    }

    /// The row's binary body, or `None` for a JSON row.
    fn binary<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> StoreResult<Option<T>> {
        match bytes.split_first() {
            Some((&FORMAT_V1, body)) => postcard::from_bytes(body)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))),
            Some((b'{', _)) => Ok(None),
            _ => Err(StoreError::Corrupt(format!("{what}: unknown row format"))),
        }
    }

    fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt(format!("{what}: {e}"))
    }

    #[derive(Serialize, Deserialize)]
    pub struct StatusRow<'a> {
        #[serde(borrow)]
        message: Option<Cow<'a, str>>,
        #[serde(borrow)]
        reason: Option<Cow<'a, str>>,
        #[serde(borrow)]
        source: Option<Cow<'a, str>>,
        healthy: Option<bool>,
        exit_code: Option<i32>,
        timestamp: u64,
    }

    #[derive(Serialize, Deserialize)]
    pub struct TaskRow<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(borrow)]
        name: Cow<'a, str>,
        #[serde(borrow)]
        agent_id: Cow<'a, str>,
        #[serde(borrow)]
        role: Cow<'a, str>,
        #[serde(borrow)]
        owner: Cow<'a, str>,
        #[serde(borrow)]
        claim_id: Cow<'a, str>,
        /// The text form (`cpus:0.1;mem:100`).
        resources: String,
        state: TaskState,
        #[serde(borrow)]
        status: StatusRow<'a>,
        #[serde(borrow)]
        spec: Cow<'a, str>,
        version: u64,
        priority: i64,
        #[serde(borrow)]
        preempted_by: Option<Cow<'a, str>>,
    }

    impl<'a> From<&'a Task> for TaskRow<'a> {
        fn from(t: &'a Task) -> TaskRow<'a> {
            let s = &t.status;
            TaskRow {
                id: t.id.as_str().into(),
                name: t.name.as_str().into(),
                agent_id: t.agent_id.as_str().into(),
                role: t.role.as_str().into(),
                owner: t.owner.as_str().into(),
                claim_id: t.claim_id.as_str().into(),
                resources: t.resources.to_string(),
                state: t.state,
                status: StatusRow {
                    message: s.message.as_deref().map(Cow::Borrowed),
                    reason: s.reason.as_deref().map(Cow::Borrowed),
                    source: s.source.as_deref().map(Cow::Borrowed),
                    healthy: s.healthy,
                    exit_code: s.exit_code,
                    timestamp: s.timestamp,
                },
                spec: Cow::Borrowed(t.spec.as_str()),
                version: t.version,
                priority: t.priority,
                preempted_by: t.preempted_by.as_ref().map(|c| Cow::Borrowed(c.as_str())),
            }
        }
    }

    impl TaskRow<'_> {
        fn into_task(self) -> StoreResult<Task> {
            let s = self.status;
            Ok(Task {
                resources: ResourceSet::parse(&self.resources).map_err(|e| corrupt("task", e))?,
                id: TaskId::new(self.id),
                name: self.name.into_owned(),
                agent_id: AgentId::new(self.agent_id),
                role: self.role.into_owned(),
                owner: self.owner.into_owned(),
                claim_id: ClaimId::new(self.claim_id),
                state: self.state,
                status: StatusInfo {
                    message: s.message.map(Cow::into_owned),
                    reason: s.reason.map(Cow::into_owned),
                    source: s.source.map(Cow::into_owned),
                    healthy: s.healthy,
                    exit_code: s.exit_code,
                    timestamp: s.timestamp,
                },
                spec: TaskSpec::from_canonical(self.spec),
                version: self.version,
                priority: self.priority,
                preempted_by: self.preempted_by.map(ClaimId::new),
            })
        }
    }

    #[derive(Serialize, Deserialize)]
    pub struct PlacementRow<'a> {
        #[serde(borrow)]
        task_id: Cow<'a, str>,
        #[serde(borrow)]
        agent_id: Cow<'a, str>,
        committed: bool,
        /// The reason as JSON (its serde form is an internally tagged enum).
        rejected: Option<String>,
    }

    #[derive(Serialize, Deserialize)]
    pub struct ClaimRow<'a> {
        #[serde(borrow)]
        claim_id: Cow<'a, str>,
        committed_version: Option<u64>,
        #[serde(borrow)]
        placements: Vec<PlacementRow<'a>>,
    }

    impl<'a> From<&'a ClaimOutcome> for ClaimRow<'a> {
        fn from(c: &'a ClaimOutcome) -> ClaimRow<'a> {
            ClaimRow {
                claim_id: c.claim_id.as_str().into(),
                committed_version: c.committed_version,
                placements: c
                    .placements
                    .iter()
                    .map(|p| PlacementRow {
                        task_id: p.task_id.as_str().into(),
                        agent_id: p.agent_id.as_str().into(),
                        committed: p.committed,
                        rejected: p
                            .rejected
                            .as_ref()
                            .map(|r| serde_json::to_string(r).expect("reasons serialize")),
                    })
                    .collect(),
            }
        }
    }

    impl ClaimRow<'_> {
        fn into_outcome(self) -> StoreResult<ClaimOutcome> {
            let mut placements = Vec::with_capacity(self.placements.len());
            for p in self.placements {
                let rejected = match p.rejected {
                    Some(r) => Some(
                        serde_json::from_str::<RejectReason>(&r)
                            .map_err(|e| corrupt("claim", e))?,
                    ),
                    None => None,
                };
                placements.push(PlacementOutcome {
                    task_id: TaskId::new(p.task_id),
                    agent_id: AgentId::new(p.agent_id),
                    committed: p.committed,
                    rejected,
                });
            }
            Ok(ClaimOutcome {
                claim_id: ClaimId::new(self.claim_id),
                committed_version: self.committed_version,
                placements,
            })
        }
    }

    /// A claim's row: its outcome and its tasks as placed.
    #[derive(Serialize, Deserialize)]
    pub struct ClaimCommitRow<'a> {
        #[serde(borrow)]
        outcome: ClaimRow<'a>,
        #[serde(borrow)]
        tasks: Vec<TaskRow<'a>>,
    }

    pub fn encode_claim_commit(c: &ClaimCommit, buf: Vec<u8>) -> Vec<u8> {
        let row = ClaimCommitRow {
            outcome: (&c.outcome).into(),
            tasks: c.tasks.iter().map(|t| TaskRow::from(t.as_ref())).collect(),
        };
        encode_as(FORMAT_CLAIM_WITH_TASKS, &row, buf)
    }

    /// A claim's outcome and, in rows that hold them, its tasks as placed.
    pub fn decode_claim_commit(bytes: &[u8]) -> StoreResult<(ClaimOutcome, Option<Vec<Task>>)> {
        let Some((&FORMAT_CLAIM_WITH_TASKS, body)) = bytes.split_first() else {
            return Ok((decode_claim(bytes)?, None));
        };
        let row: ClaimCommitRow = postcard::from_bytes(body).map_err(|e| corrupt("claim", e))?;
        let tasks = row
            .tasks
            .into_iter()
            .map(TaskRow::into_task)
            .collect::<StoreResult<_>>()?;
        Ok((row.outcome.into_outcome()?, Some(tasks)))
    }

    /// A log entry's event: a claim's commit by reference, anything else as its JSON.
    #[derive(Serialize, Deserialize)]
    pub enum EventRow<'a> {
        /// A claim's commit with its records in full, as earlier versions wrote it (read only).
        ClaimCommitted {
            #[serde(borrow)]
            outcome: ClaimRow<'a>,
            #[serde(borrow)]
            tasks: Vec<TaskRow<'a>>,
            #[serde(borrow)]
            evictions: Vec<Cow<'a, str>>,
        },
        Json(#[serde(borrow)] Cow<'a, str>),
        /// A claim's commit by reference: its outcome and its tasks as placed are the claim's
        /// row (in a claim row of an older store without tasks, the task rows of the committed
        /// placements, as placed: [`Task::as_placed`]). The row is written in the same store
        /// write as the entry and never removed, so the entry holds only what the row does not.
        ClaimCommittedRef {
            #[serde(borrow)]
            claim_id: Cow<'a, str>,
            #[serde(borrow)]
            evictions: Vec<Cow<'a, str>>,
        },
    }

    /// A log entry (its version is the row's key).
    #[derive(Serialize, Deserialize)]
    pub struct LogRow<'a> {
        #[serde(borrow)]
        events: Vec<EventRow<'a>>,
    }

    impl<'a> From<&'a LogEntry> for LogRow<'a> {
        fn from(e: &'a LogEntry) -> LogRow<'a> {
            LogRow {
                events: e
                    .events
                    .iter()
                    .map(|ev| match ev {
                        Event::ClaimCommitted {
                            outcome, evictions, ..
                        } => EventRow::ClaimCommittedRef {
                            claim_id: outcome.claim_id.as_str().into(),
                            evictions: evictions.iter().map(|t| t.as_str().into()).collect(),
                        },
                        other => EventRow::Json(
                            serde_json::to_string(other)
                                .expect("events serialize")
                                .into(),
                        ),
                    })
                    .collect(),
            }
        }
    }

    pub fn decode_task(bytes: &[u8]) -> StoreResult<Task> {
        match binary::<TaskRow>("task", bytes)? {
            Some(row) => row.into_task(),
            None => decode("task", bytes),
        }
    }

    pub fn decode_claim(bytes: &[u8]) -> StoreResult<ClaimOutcome> {
        match binary::<ClaimRow>("claim", bytes)? {
            Some(row) => row.into_outcome(),
            None => decode("claim", bytes),
        }
    }

    /// Where a log entry's references are read: the stored claim (its outcome and, if its
    /// row holds them, its tasks as placed) and task of these ids.
    pub trait Records {
        fn claim(&mut self, id: &str) -> StoreResult<Option<(ClaimOutcome, Option<Vec<Task>>)>>;
        fn task(&mut self, id: &str) -> StoreResult<Option<Task>>;
    }

    pub fn decode_log_entry(
        version: Version,
        bytes: &[u8],
        records: &mut dyn Records,
    ) -> StoreResult<LogEntry> {
        let Some(row) = binary::<LogRow>("log entry", bytes)? else {
            return decode("log entry", bytes);
        };
        let mut events = Vec::with_capacity(row.events.len());
        for ev in row.events {
            events.push(match ev {
                EventRow::ClaimCommitted {
                    outcome,
                    tasks,
                    evictions,
                } => Event::ClaimCommitted {
                    outcome: outcome.into_outcome()?,
                    tasks: tasks
                        .into_iter()
                        .map(|t| t.into_task().map(Arc::new))
                        .collect::<StoreResult<_>>()?,
                    evictions: evictions.into_iter().map(TaskId::new).collect(),
                },
                EventRow::Json(text) => {
                    serde_json::from_str(&text).map_err(|e| corrupt("log entry", e))?
                }
                EventRow::ClaimCommittedRef {
                    claim_id,
                    evictions,
                } => {
                    let missing = |what: &str, id: &str| {
                        corrupt(
                            "log entry",
                            format!("{what} {id} of version {version} is not stored"),
                        )
                    };
                    let (outcome, placed) = records
                        .claim(&claim_id)?
                        .ok_or_else(|| missing("claim", &claim_id))?;
                    let tasks = match placed {
                        Some(placed) => placed.into_iter().map(Arc::new).collect(),
                        // A claim row of an older store: its tasks have rows of their own.
                        None => {
                            let mut tasks = Vec::new();
                            for p in outcome.placements.iter().filter(|p| p.committed) {
                                let task = records
                                    .task(p.task_id.as_str())?
                                    .ok_or_else(|| missing("task", p.task_id.as_str()))?;
                                tasks.push(Arc::new(task.as_placed(version)));
                            }
                            tasks
                        }
                    };
                    Event::ClaimCommitted {
                        outcome,
                        tasks,
                        evictions: evictions.into_iter().map(TaskId::new).collect(),
                    }
                }
            });
        }
        Ok(LogEntry { version, events })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use shoal_core::{AgentId, ClaimId, ResourceSet, StatusInfo, TaskSpec, TaskState};

        fn placed(id: &str, claim: &str, version: Version) -> Task {
            Task {
                id: TaskId::new(id),
                name: id.into(),
                agent_id: AgentId::new("a1"),
                role: "*".into(),
                owner: "s1".into(),
                claim_id: ClaimId::new(claim),
                resources: ResourceSet::parse("cpus:1;mem:32").unwrap(),
                state: TaskState::Staging,
                status: StatusInfo::default(),
                spec: TaskSpec::new(&format!(r#"{{"name":"{id}"}}"#)),
                version,
                priority: 0,
                preempted_by: None,
            }
        }

        fn committed(claim: &str, version: Version, tasks: &[&Task]) -> ClaimOutcome {
            ClaimOutcome {
                claim_id: ClaimId::new(claim),
                committed_version: Some(version),
                placements: tasks
                    .iter()
                    .map(|t| PlacementOutcome {
                        task_id: t.id.clone(),
                        agent_id: t.agent_id.clone(),
                        committed: true,
                        rejected: None,
                    })
                    .collect(),
            }
        }

        /// A store written before claims' rows held their tasks still loads, and its log
        /// still reads: claim rows without tasks, a row per task, log entries holding the
        /// tasks in full (c1), or naming a claim whose row has no tasks (c2, whose task ran
        /// since: the entry gives it as placed).
        #[test]
        fn rows_of_earlier_versions_still_read() {
            let dir = tempfile::tempdir().unwrap();
            let store = RedbStore::open(&dir.path().join("cell.redb")).unwrap();
            let t1 = placed("t1", "c1", 3);
            let c1 = committed("c1", 3, &[&t1]);
            let t2 = placed("t2", "c2", 4);
            let c2 = committed("c2", 4, &[&t2]);
            let t2_running = Task {
                state: TaskState::Running,
                version: 5,
                ..t2.clone()
            };
            let txn = store.db().unwrap().begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("cell_id", b"cell".as_slice()).unwrap();
                meta.insert("version", crate::store::encode(&5u64).as_slice())
                    .unwrap();
                let mut tasks = txn.open_table(TASKS).unwrap();
                for t in [&t1, &t2_running] {
                    tasks
                        .insert(
                            t.id.as_str(),
                            encode(&TaskRow::from(t), Vec::new()).as_slice(),
                        )
                        .unwrap();
                }
                let mut claims = txn.open_table(CLAIMS).unwrap();
                for c in [&c1, &c2] {
                    claims
                        .insert(
                            c.claim_id.as_str(),
                            encode(&ClaimRow::from(c), Vec::new()).as_slice(),
                        )
                        .unwrap();
                }
                let mut log = txn.open_table(LOG).unwrap();
                let full = LogRow {
                    events: vec![EventRow::ClaimCommitted {
                        outcome: (&c1).into(),
                        tasks: vec![TaskRow::from(&t1)],
                        evictions: vec![],
                    }],
                };
                log.insert(3, encode(&full, Vec::new()).as_slice()).unwrap();
                let by_ref = LogRow {
                    events: vec![EventRow::ClaimCommittedRef {
                        claim_id: "c2".into(),
                        evictions: vec![],
                    }],
                };
                log.insert(4, encode(&by_ref, Vec::new()).as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();

            let loaded = store.load().unwrap();
            assert_eq!(loaded.version, 5);
            assert_eq!(loaded.tasks, vec![t1.clone(), t2_running]);
            assert_eq!(loaded.claims, vec![c1.clone(), c2.clone()]);
            let entry = |version, outcome: &ClaimOutcome, task: &Task| LogEntry {
                version,
                events: vec![Event::ClaimCommitted {
                    outcome: outcome.clone(),
                    tasks: vec![Arc::new(task.clone())],
                    evictions: vec![],
                }],
            };
            assert_eq!(
                store.read_log(3, 10).unwrap(),
                vec![entry(3, &c1, &t1), entry(4, &c2, &t2)]
            );
        }
    }
}

/// An in-memory store that behaves like a disk behind a page cache: what was written but not
/// yet synced is lost when [`MemStore::crash`] is called. Tests use it to prove the commit
/// path acknowledges only what is durable.
#[derive(Default, Clone)]
pub struct MemStore {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    durable: MemImage,
    pending: Vec<WriteBatch>,
    /// Between a crash and a reboot every write and sync fails, as on a dead machine.
    down: bool,
}

#[derive(Default, Clone)]
struct MemImage {
    cell_id: Option<String>,
    version: Version,
    agents: BTreeMap<String, Agent>,
    tasks: BTreeMap<String, Task>,
    roles: BTreeMap<String, Role>,
    claims: BTreeMap<String, ClaimOutcome>,
    jobs: BTreeMap<String, Job>,
    job_tasks: BTreeMap<String, (String, JobTask)>,
    services: BTreeMap<String, Service>,
    service_instances: BTreeMap<String, (String, Instance)>,
    log: BTreeMap<Version, LogEntry>,
}

impl MemImage {
    fn write(&mut self, b: &WriteBatch) {
        self.cell_id = Some(b.cell_id.clone());
        self.version = b.version;
        for a in &b.agents {
            self.agents.insert(a.id.to_string(), Agent::clone(a));
        }
        for t in &b.tasks {
            self.tasks.insert(t.id.to_string(), Task::clone(t));
        }
        for r in &b.roles {
            self.roles.insert(r.name.clone(), r.clone());
        }
        for c in &b.claims {
            self.claims
                .insert(c.outcome.claim_id.to_string(), c.outcome.clone());
        }
        for j in &b.jobs {
            self.jobs.insert(j.id.clone(), job_header(j));
        }
        for (job_id, t) in &b.job_tasks {
            self.job_tasks
                .insert(job_task_key(job_id, &t.name), (job_id.clone(), t.clone()));
        }
        for sv in &b.services {
            self.services.insert(sv.id.clone(), service_header(sv));
        }
        for (id, i) in &b.service_instances {
            self.service_instances
                .insert(instance_key(id, i.index), (id.clone(), i.clone()));
        }
        for (id, index) in &b.service_instances_removed {
            self.service_instances.remove(&instance_key(id, *index));
        }
        for e in &b.entries {
            self.log.insert(e.version, e.as_ref().clone());
        }
        if let Some(floor) = b.trim_log_below {
            self.log = self.log.split_off(&floor);
        }
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }
    /// Forgets everything written since the last sync, as a power cut would, and fails every
    /// later write and sync until [`MemStore::reboot`].
    pub fn crash(&self) {
        let mut inner = self.inner.lock().expect("mem store lock");
        inner.pending.clear();
        inner.down = true;
    }
    pub fn reboot(&self) {
        self.inner.lock().expect("mem store lock").down = false;
    }
    fn check_up(inner: &MemInner) -> StoreResult<()> {
        if inner.down {
            return Err(StoreError::Backend(
                "the disk is gone (simulated crash)".into(),
            ));
        }
        Ok(())
    }
    fn view(&self) -> MemImage {
        let inner = self.inner.lock().expect("mem store lock");
        let mut img = inner.durable.clone();
        for b in &inner.pending {
            img.write(b);
        }
        img
    }
}

impl Store for MemStore {
    fn load(&self) -> StoreResult<StoredCell> {
        let img = self.view();
        Ok(StoredCell {
            cell_id: img.cell_id,
            version: img.version,
            agents: img.agents.into_values().collect(),
            tasks: img.tasks.into_values().collect(),
            roles: img.roles.into_values().collect(),
            claims: img.claims.into_values().collect(),
            jobs: assemble_jobs(
                img.jobs.into_values().collect(),
                img.job_tasks.into_values().collect(),
            ),
            services: assemble_services(
                img.services.into_values().collect(),
                img.service_instances.into_values().collect(),
            ),
        })
    }
    fn write(&self, batch: &WriteBatch) -> StoreResult<()> {
        let mut inner = self.inner.lock().expect("mem store lock");
        Self::check_up(&inner)?;
        inner.pending.push(batch.clone());
        Ok(())
    }
    fn sync(&self) -> StoreResult<()> {
        let mut inner = self.inner.lock().expect("mem store lock");
        Self::check_up(&inner)?;
        let pending = std::mem::take(&mut inner.pending);
        for b in &pending {
            inner.durable.write(b);
        }
        Ok(())
    }
    fn read_log(&self, from: Version, max: usize) -> StoreResult<Vec<LogEntry>> {
        Ok(self
            .view()
            .log
            .range(from..)
            .take(max)
            .map(|(_, e)| e.clone())
            .collect())
    }
    fn log_floor(&self) -> StoreResult<Version> {
        Ok(self.view().log.keys().next().copied().unwrap_or(0))
    }
    fn recover(&self) -> StoreResult<()> {
        let mut inner = self.inner.lock().expect("mem store lock");
        Self::check_up(&inner)?;
        // As a reopen: back to what was synced.
        inner.pending.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of a task and of a claim's commit survives the binary rows: a preempted
    /// task, its priority, and the evictions of the claim that preempted it; the log entry of
    /// the commit reads back as committed after its task has changed.
    #[test]
    fn binary_rows_keep_every_field_of_tasks_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("cell.redb")).unwrap();
        let task = Task {
            id: TaskId::new("low.t1.1"),
            name: "low.t1".into(),
            agent_id: AgentId::new("a1"),
            role: "batch".into(),
            owner: "shoal-batch".into(),
            claim_id: ClaimId::new("c1"),
            resources: ResourceSet::parse("cpus:1;mem:32;ports:[31000-31000]").unwrap(),
            state: TaskState::Killing,
            status: StatusInfo {
                message: Some("preempted by claim c2".into()),
                reason: Some("REASON_CONTAINER_PREEMPTED".into()),
                source: Some("SOURCE_MASTER".into()),
                healthy: Some(true),
                exit_code: None,
                timestamp: 7,
            },
            spec: TaskSpec::new(r#"{"name":"t1","task_id":{"value":"low.t1.1"}}"#),
            version: 9,
            priority: 10,
            preempted_by: Some(ClaimId::new("c2")),
        };
        let outcome = ClaimOutcome {
            claim_id: ClaimId::new("c2"),
            committed_version: Some(9),
            placements: vec![
                PlacementOutcome {
                    task_id: TaskId::new("high.t1.1"),
                    agent_id: AgentId::new("a1"),
                    committed: true,
                    rejected: None,
                },
                PlacementOutcome {
                    task_id: TaskId::new("high.t2.1"),
                    agent_id: AgentId::new("a1"),
                    committed: true,
                    rejected: None,
                },
            ],
        };
        let placed = Task {
            id: TaskId::new("high.t1.1"),
            name: "high.t1".into(),
            claim_id: ClaimId::new("c2"),
            priority: 50,
            ..task.clone()
        }
        .as_placed(9);
        // Placed with it, and never changed: it has no row of its own.
        let unchanged = Task {
            id: TaskId::new("high.t2.1"),
            name: "high.t2".into(),
            ..placed.clone()
        };
        let entry = LogEntry {
            version: 9,
            events: vec![Event::ClaimCommitted {
                outcome: outcome.clone(),
                tasks: vec![Arc::new(placed.clone()), Arc::new(unchanged.clone())],
                evictions: vec![TaskId::new("low.t1.1")],
            }],
        };
        let batch = WriteBatch {
            cell_id: "cell".into(),
            version: 9,
            entries: vec![Arc::new(entry.clone())],
            tasks: vec![
                Arc::new(task.clone()),
                Arc::new(placed.clone()),
                Arc::new(unchanged.clone()),
            ],
            claims: vec![ClaimCommit {
                outcome: outcome.clone(),
                tasks: vec![Arc::new(placed.clone()), Arc::new(unchanged.clone())],
            }],
            ..WriteBatch::default()
        };
        store.write(&batch).unwrap();
        // The placed task runs later: its row changes, the log entry of its commit does not.
        let running = Task {
            state: TaskState::Running,
            status: StatusInfo {
                source: Some("SOURCE_EXECUTOR".into()),
                timestamp: 11,
                ..StatusInfo::default()
            },
            version: 10,
            ..placed.clone()
        };
        store
            .write(&WriteBatch {
                cell_id: "cell".into(),
                version: 10,
                tasks: vec![Arc::new(running.clone())],
                ..WriteBatch::default()
            })
            .unwrap();
        store.sync().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.tasks, vec![running, unchanged, task]);
        assert_eq!(loaded.claims, vec![outcome]);
        assert_eq!(store.read_log(9, 10).unwrap(), vec![entry]);
    }
}
