//! The process executor: runs a task's command as a plain process on the host.
//!
//! Each task runs under its own small supervisor process (see the
//! `supervisor` module): the agent forks the supervisor, which starts a new
//! session, forks the task into its own process group (stdout/stderr go to
//! the sandbox files `stdout` and `stderr`, cwd is the sandbox), waits for it
//! and writes `exit N` / `signal N` into the task's state directory. The
//! supervisor does not depend on the agent, so a task keeps running and its
//! real exit status is recorded while the agent is down.
//!
//! State lives in `<state_dir>/tasks/<escaped task id>/`:
//! * `record.json`: the [`TaskRecord`] (sandbox, supervisor pid + start time,
//!   task process group, kill requested, health check, ...), written by the agent;
//! * `exit_status`: written once by the supervisor when the task ended.
//!
//! Re-attaching after an agent restart checks `/proc/<supervisor pid>/stat`
//! (same start time, so a recycled pid is never mistaken for the supervisor)
//! and waits on a pidfd for the supervisor to exit.
//!
//! Killing sends SIGTERM to the task's process group and SIGKILL after the
//! grace period; the supervisor, in another process group, survives and
//! records the status.
//!
//! While the executor exists it touches `<state_dir>/alive` (see the `heartbeat`
//! module). A supervisor whose heartbeat file is gone (the work dir was removed)
//! or has not changed for the recovery timeout (no agent came back) kills its
//! task itself and exits; a later agent reports such a task `Failed { reason: Lost }`.
//!
//! Limits (memory, CPU) use cgroups where the host allows (v2, or v1 memory and
//! cpu hierarchies, writable): see the `cgroup` module. Where it does not, the
//! reason is logged once when the executor is built and tasks run unlimited.
//! A task killed by the OOM killer in its cgroup ends `Failed { reason: Oom }`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use shoal_core::clock::{Clock, SharedClock, SystemClock};
use tokio::sync::mpsc;

use super::cgroup::{self, Cgroups};
use super::heartbeat::{self, Heartbeat};
use super::util::{self, escape_id};
use super::{
    group_kills_peers, AgentError, Executor, ExecutorEvent, FailReason, GcReport, HealthCheckSpec,
    LaunchSpec, RecoveredTask, TaskUpdate,
};
use super::{Control, Entry};

/// A new task: prepared, its supervisor spawned.
mod launch;
/// A running task until it ends.
mod running;

use launch::run_new;
use running::{conclude, reap_if_child, signal_group, watch};

/// Configuration of a [`ProcessExecutor`].
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Where the executor keeps its per-task records (must survive agent restarts).
    pub state_dir: PathBuf,
    /// Where the cgroup hierarchies are mounted (v2 directly, or v1 `memory/` and
    /// `cpu/` below it); limits are applied under `shoal/<key>/` when writable.
    /// Default `/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// `false`: never use cgroups (tasks run without limits). Default `true`.
    pub cgroups: bool,
    /// A task's supervisor kills the task when no executor touched the heartbeat file
    /// for this long (zero: never; a removed state dir still ends it). Default 15 minutes.
    pub recovery_timeout: Duration,
    /// Where the executor reads time. Default the system's clocks.
    pub clock: SharedClock,
}

impl ProcessConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ProcessConfig {
            state_dir: state_dir.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroups: true,
            recovery_timeout: Duration::from_secs(heartbeat::RECOVERY_TIMEOUT_DEFAULT_SECS),
            clock: SystemClock::shared(),
        }
    }
}

/// What the executor remembers about a started task (`record.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub sandbox: PathBuf,
    pub group: Option<String>,
    pub kill_grace: Duration,
    pub health_check: Option<HealthCheckSpec>,
    /// Environment of the task, for command health checks.
    pub env: Vec<(String, String)>,
    pub supervisor_pid: i32,
    /// Start time of the supervisor in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub supervisor_start: u64,
    /// Process group of the task (= pid of the task process).
    pub pgid: i32,
    /// The task's cgroups (one per hierarchy), when limits were applied.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    /// A kill was requested: the end is reported as `Killed`.
    pub kill_requested: bool,
    /// The heartbeat file the supervisor watches, and its recovery timeout.
    #[serde(default)]
    pub alive_file: Option<PathBuf>,
    #[serde(default)]
    pub recovery_timeout: Option<Duration>,
}

struct Inner {
    cfg: ProcessConfig,
    cgroups: Cgroups,
    /// Bounds the launches in progress (preparation, fork, record): a LAUNCH of a thousand
    /// tasks must not grow the blocking pool to hundreds of threads, each fork of the agent
    /// then copying more mappings while holding its memory map lock, stalling every thread
    /// of the agent (its heartbeats and status reports included).
    launch_slots: tokio::sync::Semaphore,
    events: mpsc::UnboundedSender<ExecutorEvent>,
    tasks: Mutex<HashMap<String, Entry>>,
}

/// Runs tasks as supervised host processes. See the [module docs](self).
///
/// Dropping it stops watching (like an agent crash); the tasks keep running until their
/// recovery timeout.
pub struct ProcessExecutor {
    inner: Arc<Inner>,
    _heartbeat: Heartbeat,
}

impl ProcessExecutor {
    /// Creates the executor; `events` receives every task update.
    pub fn new(
        mut cfg: ProcessConfig,
        events: mpsc::UnboundedSender<ExecutorEvent>,
    ) -> Result<Self, AgentError> {
        let dir = cfg.state_dir.join("tasks");
        std::fs::create_dir_all(&dir)
            .map_err(|e| AgentError::io(format!("create {}", dir.display()), e))?;
        // Supervisors look at the heartbeat file by its absolute path.
        let beat =
            Heartbeat::start_in(&mut cfg.state_dir, cfg.recovery_timeout, cfg.clock.clone())?;
        let cgroups = if cfg.cgroups {
            let c = Cgroups::detect(&cfg.cgroup_root, &cgroup_key(&cfg.state_dir));
            // Before any task starts: what is empty now is a leftover of an earlier run.
            c.sweep();
            c
        } else {
            let reason = "cgroups are turned off (--process-isolation none)".to_string();
            tracing::info!(%reason, "process task limits are not enforced");
            Cgroups::Off { reason }
        };
        Ok(ProcessExecutor {
            inner: Arc::new(Inner {
                cfg,
                cgroups,
                launch_slots: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
                ),
                events,
                tasks: Mutex::new(HashMap::new()),
            }),
            _heartbeat: beat,
        })
    }
}

/// The key of an executor's cgroups (`shoal/<key>/`): tells them apart from other agents'
/// on the host, stable across restarts on the same state dir.
pub fn cgroup_key(state_dir: &Path) -> String {
    format!("{:016x}", util::fnv64(&[&state_dir.to_string_lossy()]))
}

impl ProcessExecutor {
    /// Where task limits go (or why they are not enforced).
    pub fn cgroups(&self) -> &Cgroups {
        &self.inner.cgroups
    }
}

impl Drop for ProcessExecutor {
    fn drop(&mut self) {
        for entry in self.inner.lock().values() {
            if let Some(a) = &entry.abort {
                a.abort();
            }
        }
        // Only succeeds when no task cgroup is left in it (tasks keep running).
        self.inner.cgroups.remove_parents_if_empty();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.tasks.lock()
    }

    /// Watches a running task again, as its record describes it.
    fn reattach(self: &Arc<Self>, record: TaskRecord) {
        let id = record.task_id.clone();
        tracing::info!(task_id = %id, pid = record.supervisor_pid, "re-attached to process task");
        let (entry, rx) = Entry::new(record.group.clone());
        self.lock().insert(id.clone(), entry);
        let handle = tokio::spawn(watch(self.clone(), record, rx));
        if let Some(e) = self.lock().get_mut(&id) {
            e.abort = Some(handle.abort_handle());
        }
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(escape_id(task_id))
    }

    fn send(&self, task_id: &str, update: TaskUpdate) {
        let _ = self.events.send(ExecutorEvent {
            task_id: task_id.to_string(),
            update,
        });
    }

    /// Ends a task: forgets it, sends the terminal update, applies the group policy.
    fn finish(&self, task_id: &str, group: Option<&str>, owns_network: bool, update: TaskUpdate) {
        self.lock().remove(task_id);
        tracing::info!(task_id, ?update, "process task ended");
        let kill_peers = group.is_some() && group_kills_peers(&update, owns_network);
        self.send(task_id, update);
        if let (true, Some(g)) = (kill_peers, group) {
            for entry in self
                .lock()
                .values()
                .filter(|e| e.group.as_deref() == Some(g))
            {
                let _ = entry.control.send(Control::Kill { grace: None });
            }
        }
    }
}

#[async_trait::async_trait]
impl Executor for ProcessExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), AgentError> {
        let rx = {
            let mut tasks = self.inner.lock();
            if tasks.contains_key(&spec.task_id) {
                return Err(AgentError::DuplicateTask(spec.task_id));
            }
            let (entry, rx) = Entry::new(spec.group.clone());
            tasks.insert(spec.task_id.clone(), entry);
            rx
        };
        let task_id = spec.task_id.clone();
        self.inner.send(&task_id, TaskUpdate::Starting);
        let handle = tokio::spawn(run_new(self.inner.clone(), spec, rx));
        if let Some(e) = self.inner.lock().get_mut(&task_id) {
            e.abort = Some(handle.abort_handle());
        }
        Ok(())
    }

    async fn kill(&self, task_id: &str, grace: Option<Duration>) -> Result<(), AgentError> {
        let tasks = self.inner.lock();
        let targets = super::kill_targets(&tasks, task_id, |e| e.group.as_ref())
            .ok_or_else(|| AgentError::UnknownTask(task_id.to_string()))?;
        for e in targets {
            let _ = e.control.send(Control::Kill { grace });
        }
        Ok(())
    }

    async fn recover(&self, known: &[String]) -> Result<Vec<RecoveredTask>, AgentError> {
        let dir = self.inner.cfg.state_dir.join("tasks");
        let records = tokio::task::spawn_blocking(move || read_records(&dir))
            .await
            .map_err(|e| AgentError::Io {
                context: "recover".into(),
                source: std::io::Error::other(e),
            })??;
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for record in records {
            let id = record.task_id.clone();
            let is_known = known.contains(&id);
            if self.inner.lock().contains_key(&id) {
                // Already tracked by this instance (launched or recovered before).
                if is_known {
                    seen.push(id.clone());
                    out.push(RecoveredTask {
                        task_id: id,
                        update: TaskUpdate::Running { healthy: None },
                    });
                }
                continue;
            }
            let alive = util::read_proc_stat(record.supervisor_pid)
                .is_some_and(|st| st.is_running() && st.start_time == record.supervisor_start);
            if !is_known {
                if alive {
                    tracing::warn!(task_id = %id, pgid = record.pgid, "killing process task unknown to the agent");
                    signal_group(record.pgid, libc::SIGKILL);
                }
                continue;
            }
            seen.push(id.clone());
            if alive {
                self.inner.reattach(record);
                out.push(RecoveredTask {
                    task_id: id,
                    update: TaskUpdate::Running { healthy: None },
                });
            } else {
                reap_if_child(record.supervisor_pid, record.supervisor_start);
                let update = conclude(&self.inner.task_dir(&id), &record);
                tracing::info!(task_id = %id, ?update, "process task ended while the agent was away");
                out.push(RecoveredTask {
                    task_id: id,
                    update,
                });
            }
        }
        for id in known {
            if !seen.contains(id) {
                out.push(RecoveredTask {
                    task_id: id.clone(),
                    update: TaskUpdate::Failed {
                        exit_code: None,
                        reason: FailReason::Lost,
                        message: format!(
                            "no record of the task in {}",
                            self.inner.cfg.state_dir.display()
                        ),
                    },
                });
            }
        }
        Ok(out)
    }

    async fn gc(&self, older_than: Duration) -> Result<GcReport, AgentError> {
        let dir = self.inner.cfg.state_dir.join("tasks");
        let tracked: Vec<String> = self.inner.lock().keys().cloned().collect();
        let clock = self.inner.cfg.clock.clone();
        tokio::task::spawn_blocking(move || gc_records(&dir, older_than, &tracked, &*clock))
            .await
            .map_err(|e| AgentError::Io {
                context: "gc".into(),
                source: std::io::Error::other(e),
            })?
    }

    fn tasks(&self) -> Vec<String> {
        self.inner.lock().keys().cloned().collect()
    }
}

/// The heartbeat file of an executor's state dir.
fn alive_file(cfg: &ProcessConfig) -> PathBuf {
    cfg.state_dir.join(heartbeat::ALIVE_FILE)
}

fn save_record(task_dir: &Path, record: &TaskRecord) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    util::write_atomic(&task_dir.join("record.json"), &data)
}

fn read_records(dir: &Path) -> Result<Vec<TaskRecord>, AgentError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AgentError::io(format!("read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let path = ent.path().join("record.json");
        match std::fs::read(&path) {
            Ok(data) => match serde_json::from_slice::<TaskRecord>(&data) {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable task record")
                }
            },
            // A task whose launch did not get as far as a record.
            Err(e) => tracing::debug!(path = %path.display(), error = %e, "no task record"),
        }
    }
    Ok(out)
}

fn gc_records(
    dir: &Path,
    older_than: Duration,
    tracked: &[String],
    clock: &dyn Clock,
) -> Result<GcReport, AgentError> {
    let mut report = GcReport::default();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(AgentError::io(format!("read {}", dir.display()), e)),
    };
    for ent in rd.flatten() {
        let tdir = ent.path();
        let record: Option<TaskRecord> = std::fs::read(tdir.join("record.json"))
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        if let Some(r) = &record {
            if tracked.contains(&r.task_id) {
                continue;
            }
            let alive = util::read_proc_stat(r.supervisor_pid)
                .is_some_and(|st| st.is_running() && st.start_time == r.supervisor_start);
            if alive {
                continue;
            }
        }
        let age = util::file_age(&tdir.join("exit_status"), clock)
            .or_else(|| util::file_age(&tdir.join("record.json"), clock))
            .or_else(|| util::file_age(&tdir, clock));
        if age.is_some_and(|a| a >= older_than) {
            if let Some(r) = &record {
                cgroup::remove(&r.cgroups);
            }
            match std::fs::remove_dir_all(&tdir) {
                Ok(()) => report.removed.push(record.map_or_else(
                    || ent.file_name().to_string_lossy().into_owned(),
                    |r| r.task_id,
                )),
                Err(e) => {
                    tracing::warn!(dir = %tdir.display(), error = %e, "gc: cannot remove task state")
                }
            }
        }
    }
    Ok(report)
}
