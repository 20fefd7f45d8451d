//! The in-memory store of tests.

use super::*;

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
    collected: CollectedCounts,
}

impl MemImage {
    fn write(&mut self, b: &WriteBatch) {
        self.cell_id = Some(b.cell_id.clone());
        self.version = b.version;
        // What collections forgot goes first, as in the redb store (tasks are whole records
        // here, so a collected task is one row removed).
        for id in &b.collected.agents {
            self.agents.remove(id.as_str());
        }
        for t in &b.collected.tasks {
            self.tasks.remove(t.task_id.as_str());
        }
        for id in &b.collected.claims {
            self.claims.remove(id.as_str());
        }
        if let Some(counts) = b.collected.counts {
            self.collected = counts;
        }
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
        let mut inner = self.inner.lock();
        inner.pending.clear();
        inner.down = true;
    }
    pub fn reboot(&self) {
        self.inner.lock().down = false;
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
        let inner = self.inner.lock();
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
            collected: img.collected,
        })
    }
    fn write(&self, batch: &WriteBatch) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        Self::check_up(&inner)?;
        inner.pending.push(batch.clone());
        Ok(())
    }
    fn sync(&self) -> StoreResult<()> {
        let mut inner = self.inner.lock();
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
        let mut inner = self.inner.lock();
        Self::check_up(&inner)?;
        // As a reopen: back to what was synced.
        inner.pending.clear();
        Ok(())
    }
}
