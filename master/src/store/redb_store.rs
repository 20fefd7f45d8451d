//! The embedded store: one redb file.

use super::*;
use shoal_core::clock::{SharedClock, SystemClock};

pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The meta row of the store's format ([`FORMAT`], as JSON).
pub(super) const FORMAT_KEY: &str = "format";
const CELL_ID_KEY: &str = "cell_id";
pub(super) const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
pub(super) const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
pub(super) const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("roles");
pub(super) const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("claims");
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Key: (claim id, task id): the claim's placed copy of the task was collected (the claim's
/// row stays while it has other tasks).
pub(super) const COLLECTED: TableDefinition<(&str, &str), ()> = TableDefinition::new("collected");
const COLLECTED_COUNTS_KEY: &str = "collected";
pub(super) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Key: `<job id>/<task name>` (neither has a slash).
pub(super) const JOB_TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_tasks");
pub(super) const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Key: `<service id>/<index>` (service ids have no slash).
pub(super) const SERVICE_INSTANCES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("service_instances");

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
    /// Stamps a reopen (`reopened_at`).
    clock: SharedClock,
}

impl RedbStore {
    pub fn open(path: &Path) -> StoreResult<RedbStore> {
        RedbStore::open_with_clock(path, SystemClock::shared())
    }

    /// [`RedbStore::open`], stamping reopens with `clock`.
    pub fn open_with_clock(path: &Path, clock: SharedClock) -> StoreResult<RedbStore> {
        Ok(RedbStore {
            path: path.to_path_buf(),
            db: RwLock::new(Some(RedbStore::open_db(path)?)),
            scratch: Mutex::default(),
            clock,
        })
    }

    /// Opens (or creates) the file and its tables, with one durable commit. A store of a
    /// newer format than [`FORMAT`] is refused before anything is written to it; a store
    /// without a format row (made before the row existed) is of format 1 and gets the row.
    fn open_db(path: &Path) -> StoreResult<Database> {
        // Read-only first, as opening for writes marks the file. A file that cannot be read
        // so (a new one, one whose last close was not clean, one that is not a store) is left
        // to the open below: redb's repair only rolls a file back to its last commit.
        if let Ok(db) = ReadOnlyDatabase::open(path) {
            check_format(stored_format(&db)?)?;
            db.close()?;
        }
        let db = Database::create(path)?;
        let found = stored_format(&db)?;
        check_format(found)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            txn.open_table(AGENTS)?;
            txn.open_table(TASKS)?;
            txn.open_table(ROLES)?;
            txn.open_table(CLAIMS)?;
            txn.open_table(LOG)?;
            txn.open_table(COLLECTED)?;
            txn.open_table(JOBS)?;
            txn.open_table(JOB_TASKS)?;
            txn.open_table(SERVICES)?;
            txn.open_table(SERVICE_INSTANCES)?;
            // Format 2 only adds the `collected` table (made above, empty: a format-1 store
            // never collected). A later format upgrades the rows of the one before here, in
            // this write, before its row is set.
            if found != Some(FORMAT) {
                if found.is_none() && meta.get(CELL_ID_KEY)?.is_some() {
                    tracing::info!(
                        format = FORMAT,
                        "the store has no format row yet: it is set"
                    );
                }
                meta.insert(FORMAT_KEY, encode(&FORMAT).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(db)
    }

    /// Removes the rows of what a group's collections forgot (before the group's writes).
    fn remove_collected(&self, txn: &redb::WriteTransaction, c: &Collected) -> StoreResult<()> {
        if c.tasks.is_empty() && c.claims.is_empty() && c.agents.is_empty() {
            return Ok(());
        }
        let mut agents = txn.open_table(AGENTS)?;
        for id in &c.agents {
            agents.remove(id.as_str())?;
        }
        let claims_gone: std::collections::HashSet<&str> =
            c.claims.iter().map(|c| c.as_str()).collect();
        let mut tasks = txn.open_table(TASKS)?;
        let mut collected = txn.open_table(COLLECTED)?;
        for t in &c.tasks {
            tasks.remove(t.task_id.as_str())?;
            if !claims_gone.contains(t.claim_id.as_str()) {
                collected.insert((t.claim_id.as_str(), t.task_id.as_str()), ())?;
            }
        }
        let mut claims = txn.open_table(CLAIMS)?;
        for id in &c.claims {
            claims.remove(id.as_str())?;
            let id = id.as_str();
            let mut marked = Vec::new();
            for row in collected.range((id, "")..)? {
                let (k, _) = row?;
                let (claim, task) = k.value();
                if claim != id {
                    break;
                }
                marked.push(task.to_string());
            }
            for task in &marked {
                collected.remove((id, task.as_str()))?;
            }
        }
        Ok(())
    }

    /// The open database (shared with a reopen, which waits for the guard).
    pub(super) fn db(&self) -> StoreResult<DbGuard<'_>> {
        let guard = self.db.read();
        if guard.is_none() {
            return Err(StoreError::Backend(
                "the store is closed after a failure; it is being reopened".into(),
            ));
        }
        Ok(DbGuard(guard))
    }
}

/// The format a store's meta row names (`None`: a new store, or one made before the row).
fn stored_format(db: &impl ReadableDatabase) -> StoreResult<Option<u32>> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let found = meta.get(FORMAT_KEY)?;
    found.map(|v| decode("store format", v.value())).transpose()
}

/// Refuses a store this shoal cannot read: one of a newer format.
fn check_format(found: Option<u32>) -> StoreResult<()> {
    match found {
        Some(found) if found > FORMAT => Err(StoreError::NewerFormat {
            found,
            known: FORMAT,
        }),
        Some(0) => Err(StoreError::Corrupt("store format 0".into())),
        _ => Ok(()),
    }
}

pub(super) struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

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
        let cell_id = match meta.get(CELL_ID_KEY)? {
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
        let collected = match meta.get(COLLECTED_COUNTS_KEY)? {
            Some(v) => decode("collected counts", v.value())?,
            None => CollectedCounts::default(),
        };
        // Tasks as their claims placed them (but those collected), then the rows of those
        // that changed since.
        let mut gone: std::collections::HashSet<(String, String)> = Default::default();
        for row in txn.open_table(COLLECTED)?.iter()? {
            let (k, _) = row?;
            let (claim, task) = k.value();
            gone.insert((claim.to_string(), task.to_string()));
        }
        let mut claims = Vec::new();
        let mut tasks = BTreeMap::new();
        for (outcome, placed) in load_table(&txn, CLAIMS, rows::decode_claim_commit)? {
            tasks.extend(
                placed
                    .into_iter()
                    .flatten()
                    .filter(|t| {
                        gone.is_empty()
                            || !gone.contains(&(t.claim_id.to_string(), t.id.to_string()))
                    })
                    .map(|t| (t.id.clone(), t)),
            );
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
            collected,
        })
    }

    fn write(&self, batch: &WriteBatch) -> StoreResult<()> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(CELL_ID_KEY, batch.cell_id.as_bytes())?;
            meta.insert("version", encode(&batch.version).as_slice())?;
            if let Some(counts) = &batch.collected.counts {
                meta.insert(COLLECTED_COUNTS_KEY, encode(counts).as_slice())?;
            }
            self.remove_collected(&txn, &batch.collected)?;
            let mut agents = txn.open_table(AGENTS)?;
            for a in &batch.agents {
                agents.insert(a.id.as_str(), encode(a).as_slice())?;
            }
            // A claim's row holds its tasks as placed: a task is written once when it is
            // placed, and gets a row of its own only when it changes.
            let mut scratch = self.scratch.lock();
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
        let mut db = self.db.write();
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
            let stamp = self.clock.wall_ms().to_string();
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
