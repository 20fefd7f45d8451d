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
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use shoal_core::clock::{Clock, SharedClock, SystemClock};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::cgroup::{self, Cgroups};
use super::health::{self, ProbeFuture};
use super::heartbeat::{self, Heartbeat};
use super::supervisor::{self, ExitRecord, SupervisorPlan};
use super::util::{self, escape_id};
use super::{
    group_kills_peers, AgentError, CommandSpec, ContainerSpec, Executor, ExecutorEvent, FailReason,
    GcReport, HealthCheckKind, HealthCheckSpec, LaunchSpec, RecoveredTask, TaskUpdate,
};

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

enum Control {
    Kill { grace: Option<Duration> },
}

struct Entry {
    control: mpsc::UnboundedSender<Control>,
    group: Option<String>,
    abort: Option<AbortHandle>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut tasks = self.inner.lock();
            if tasks.contains_key(&spec.task_id) {
                return Err(AgentError::DuplicateTask(spec.task_id));
            }
            tasks.insert(
                spec.task_id.clone(),
                Entry {
                    control: tx,
                    group: spec.group.clone(),
                    abort: None,
                },
            );
        }
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
                tracing::info!(task_id = %id, pid = record.supervisor_pid, "re-attached to process task");
                let (tx, rx) = mpsc::unbounded_channel();
                self.inner.lock().insert(
                    id.clone(),
                    Entry {
                        control: tx,
                        group: record.group.clone(),
                        abort: None,
                    },
                );
                let handle = tokio::spawn(watch(self.inner.clone(), record, rx));
                if let Some(e) = self.inner.lock().get_mut(&id) {
                    e.abort = Some(handle.abort_handle());
                }
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

/// Launches a new task, then watches it.
async fn run_new(inner: Arc<Inner>, spec: LaunchSpec, mut rx: mpsc::UnboundedReceiver<Control>) {
    let task_id = spec.task_id.clone();
    let group = spec.group.clone();
    let fail = |inner: &Inner, reason, message: String| {
        inner.finish(
            &task_id,
            group.as_deref(),
            false,
            TaskUpdate::Failed {
                exit_code: None,
                reason,
                message,
            },
        )
    };
    if let Err(e) = spec.validate() {
        inner.finish(
            &task_id,
            group.as_deref(),
            false,
            TaskUpdate::Error {
                message: e.to_string(),
            },
        );
        return;
    }
    if !matches!(spec.container, ContainerSpec::Process) {
        let message = "the process executor cannot run container tasks".to_string();
        inner.finish(
            &task_id,
            group.as_deref(),
            false,
            TaskUpdate::Error { message },
        );
        return;
    }
    // Released once the task runs (or failed to start).
    let slot = inner.launch_slots.acquire().await;
    let task_dir = inner.task_dir(&task_id);
    let prepared = {
        let spec = spec.clone();
        let task_dir = task_dir.clone();
        let inner = inner.clone();
        tokio::task::spawn_blocking(move || prepare(&spec, &task_dir, &inner.cgroups, &inner.cfg))
            .await
    };
    let Prepared { plan, cgroups, env } = match prepared {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return fail(&inner, FailReason::LaunchFailed, e.to_string()),
        Err(e) => {
            return fail(
                &inner,
                FailReason::LaunchFailed,
                format!("launch aborted: {e}"),
            )
        }
    };
    if let Ok(Control::Kill { .. }) = rx.try_recv() {
        cgroup::remove(&cgroups);
        let message = "killed before it started".to_string();
        inner.finish(
            &task_id,
            group.as_deref(),
            false,
            TaskUpdate::Killed { message },
        );
        return;
    }
    let spawned = match tokio::task::spawn_blocking(move || supervisor::spawn(plan)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            cgroup::remove(&cgroups);
            return fail(
                &inner,
                FailReason::LaunchFailed,
                format!("cannot start the command: {e}"),
            );
        }
        Err(e) => {
            return fail(
                &inner,
                FailReason::LaunchFailed,
                format!("launch aborted: {e}"),
            )
        }
    };
    let supervisor_start = util::read_proc_stat(spawned.supervisor_pid).map_or(0, |s| s.start_time);
    let record = TaskRecord {
        task_id: task_id.clone(),
        sandbox: spec.sandbox.clone(),
        group: spec.group.clone(),
        kill_grace: spec.kill_grace,
        health_check: spec.health_check.clone(),
        env,
        supervisor_pid: spawned.supervisor_pid,
        supervisor_start,
        pgid: spawned.pgid,
        cgroups,
        kill_requested: false,
        alive_file: Some(alive_file(&inner.cfg)),
        recovery_timeout: Some(inner.cfg.recovery_timeout),
    };
    if let Err(e) = save_record(&task_dir, &record) {
        // Without a record the task could not be recovered: do not run it.
        tracing::error!(task_id = %task_id, error = %e, "cannot save task record; killing the task");
        signal_group(record.pgid, libc::SIGKILL);
        return fail(
            &inner,
            FailReason::LaunchFailed,
            format!("cannot save the task record: {e}"),
        );
    }
    drop(slot);
    tracing::info!(task_id = %task_id, pid = spawned.pgid, supervisor = spawned.supervisor_pid, "process task running");
    inner.send(&task_id, TaskUpdate::Running { healthy: None });
    watch(inner, record, rx).await;
}

/// Watches a running task until it ends: kill requests, health checks, exit.
async fn watch(
    inner: Arc<Inner>,
    mut record: TaskRecord,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    let task_id = record.task_id.clone();
    let task_dir = inner.task_dir(&task_id);
    let exited = wait_exit(record.supervisor_pid, record.supervisor_start);
    tokio::pin!(exited);

    let (htx, mut hrx) = mpsc::unbounded_channel();
    let health_task = record.health_check.clone().map(|hc| {
        let probe = host_probe(
            &hc.kind,
            record.sandbox.clone(),
            record.env.clone(),
            inner.cfg.clock.clone(),
        );
        util::AbortOnDrop(tokio::spawn(health::run(
            hc,
            task_id.clone(),
            inner.cfg.clock.clone(),
            probe,
            htx,
        )))
    });

    let mut kill_deadline: Option<tokio::time::Instant> = None;
    let mut control_open = true;
    // Set when the health checks failed too often: the task is killed, and says why.
    let mut health_kill: Option<String> = None;
    loop {
        let msg = tokio::select! {
            () = &mut exited => break,
            msg = rx.recv(), if control_open => msg,
            () = async { if let Some(d) = kill_deadline { tokio::time::sleep_until(d).await } }, if kill_deadline.is_some() => {
                tracing::info!(task_id = %task_id, "grace period over; SIGKILL");
                signal_group(record.pgid, libc::SIGKILL);
                kill_deadline = None;
                continue;
            }
            Some(h) = hrx.recv() => {
                let report = |v| inner.send(&task_id, TaskUpdate::Running { healthy: Some(v) });
                if !health::must_kill(h, report, &mut health_kill) {
                    continue;
                }
                Some(Control::Kill { grace: None })
            }
        };
        match msg {
            Some(Control::Kill { grace }) => {
                let grace = grace.unwrap_or(record.kill_grace);
                if !record.kill_requested {
                    record.kill_requested = true;
                    if let Err(e) = save_record(&task_dir, &record) {
                        tracing::warn!(task_id = %task_id, error = %e, "cannot persist kill request");
                    }
                }
                tracing::info!(task_id = %task_id, ?grace, "killing process task");
                if grace.is_zero() {
                    signal_group(record.pgid, libc::SIGKILL);
                    kill_deadline = None;
                } else {
                    signal_group(record.pgid, libc::SIGTERM);
                    let d = tokio::time::Instant::now() + grace;
                    kill_deadline = Some(kill_deadline.map_or(d, |old| old.min(d)));
                }
            }
            None => control_open = false,
        }
    }
    drop(health_task);
    reap_if_child(record.supervisor_pid, record.supervisor_start);
    let update = {
        let dir = task_dir.clone();
        let rec = record.clone();
        tokio::task::spawn_blocking(move || conclude(&dir, &rec))
            .await
            .unwrap_or_else(|e| TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::Lost,
                message: format!("cannot read the exit status: {e}"),
            })
    };
    inner.finish(
        &task_id,
        record.group.as_deref(),
        false,
        util::health_killed(update, health_kill),
    );
}

/// Builds the probe of a health check of a host process.
fn host_probe(
    kind: &HealthCheckKind,
    sandbox: PathBuf,
    env: Vec<(String, String)>,
    clock: SharedClock,
) -> impl FnMut() -> ProbeFuture + Send {
    let kind = kind.clone();
    move || -> ProbeFuture {
        match kind.clone() {
            HealthCheckKind::Command { shell } => {
                let mut cmd = tokio::process::Command::new("/bin/sh");
                cmd.arg("-c")
                    .arg(&shell)
                    .current_dir(&sandbox)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true);
                Box::pin(async move {
                    match cmd.status().await {
                        Ok(s) if s.success() => Ok(()),
                        Ok(s) => Err(AgentError::Probe(format!("health command {s}"))),
                        Err(e) => Err(AgentError::io("cannot run health command", e)),
                    }
                })
            }
            HealthCheckKind::Http { port, path } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let clock = clock.clone();
                Box::pin(health::on_host(move || {
                    health::probe_http(addr, &path, Duration::from_secs(5), &*clock)
                }))
            }
            HealthCheckKind::Tcp { port } => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                Box::pin(health::on_host(move || {
                    health::probe_tcp(addr, Duration::from_secs(5))
                }))
            }
        }
    }
}

/// Decides the terminal update of a task (plain).
pub(crate) fn classify(exit: Option<ExitRecord>, kill_requested: bool, oom: bool) -> TaskUpdate {
    let describe = |e: ExitRecord| match e {
        ExitRecord::Exited(n) => format!("exited with status {n}"),
        ExitRecord::Signaled(s) => format!("terminated by {}", util::signal_name(s)),
    };
    let code = |e: Option<ExitRecord>| match e {
        Some(ExitRecord::Exited(n)) => Some(n),
        _ => None,
    };
    match exit {
        _ if kill_requested => TaskUpdate::Killed {
            message: exit.map_or_else(
                || "killed".to_string(),
                |e| format!("killed: command {}", describe(e)),
            ),
        },
        _ if oom => TaskUpdate::Failed {
            exit_code: code(exit),
            reason: FailReason::Oom,
            message: "the task exceeded its memory limit and was killed by the OOM killer".into(),
        },
        Some(ExitRecord::Exited(0)) => TaskUpdate::Finished,
        Some(e) => TaskUpdate::Failed {
            exit_code: code(Some(e)),
            reason: FailReason::CommandExit,
            message: format!("command {}", describe(e)),
        },
        None => TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: "the supervisor ended without recording an exit status".into(),
        },
    }
}

/// Reads the recorded exit status (and OOM events) of an ended task (blocking).
fn conclude(task_dir: &Path, record: &TaskRecord) -> TaskUpdate {
    let text = std::fs::read_to_string(task_dir.join("exit_status")).unwrap_or_default();
    let exit = ExitRecord::parse(&text);
    let oom = cgroup::oom_killed(&record.cgroups);
    cgroup::remove(&record.cgroups);
    if ExitRecord::orphaned(&text) && !record.kill_requested {
        return TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: format!(
                "killed by its supervisor: no agent re-attached within the recovery timeout ({:?})",
                record.recovery_timeout.unwrap_or_default()
            ),
        };
    }
    classify(exit, record.kill_requested, oom)
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

/// What [`prepare`] produces: the supervisor plan, the task's cgroups (when
/// limits apply) and the task's extra environment (kept for health checks).
struct Prepared {
    plan: SupervisorPlan,
    cgroups: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

/// Prepares everything for the supervisor (blocking IO): state dir, sandbox
/// files, program path, environment, cgroups. Errors are user-facing messages.
fn prepare(
    spec: &LaunchSpec,
    task_dir: &Path,
    cgroups: &Cgroups,
    cfg: &ProcessConfig,
) -> Result<Prepared, AgentError> {
    let cmd = spec
        .command
        .as_ref()
        .ok_or_else(|| AgentError::Launch("a process task needs a command".into()))?;
    match std::fs::metadata(&spec.sandbox) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(AgentError::Launch(format!(
                "sandbox {} is not a directory",
                spec.sandbox.display()
            )))
        }
        Err(e) => {
            return Err(AgentError::io(
                format!("sandbox {}", spec.sandbox.display()),
                e,
            ))
        }
    }
    // A previous run of the same task id must not leave a stale status behind.
    let _ = std::fs::remove_dir_all(task_dir);
    std::fs::create_dir_all(task_dir)
        .map_err(|e| AgentError::io(format!("create {}", task_dir.display()), e))?;

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let mut set = |k: &str, v: &OsStr| {
        env.retain(|(ek, _)| ek.as_os_str() != OsStr::new(k));
        env.push((k.into(), v.to_os_string()));
    };
    set("SHOAL_TASK_ID", OsStr::new(&spec.task_id));
    set("SHOAL_SANDBOX", spec.sandbox.as_os_str());
    for (k, v) in &cmd.env {
        set(k, OsStr::new(v));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let (program, argv) = resolve_program(cmd, path_var.as_deref(), &spec.sandbox, is_executable)?;

    let open_out = |name: &str| -> Result<OwnedFd, AgentError> {
        let p = spec.sandbox.join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map(OwnedFd::from)
            .map_err(|e| AgentError::io(format!("open {}", p.display()), e))
    };
    let stdout = open_out("stdout")?;
    let stderr = open_out("stderr")?;
    let stdin = std::fs::File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| AgentError::io("open /dev/null", e))?;

    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| AgentError::Launch("argument contains a NUL byte".into()))
    };
    let plan_argv = argv
        .iter()
        .map(|a| cstr(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(&kv)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let program = cstr(program.as_os_str().as_bytes())?;
    let workdir = cstr(spec.sandbox.as_os_str().as_bytes())?;
    let status_path = cstr(task_dir.join("exit_status").as_os_str().as_bytes())?;
    let status_tmp = cstr(task_dir.join("exit_status.tmp").as_os_str().as_bytes())?;
    let alive_path = cstr(alive_file(cfg).as_os_str().as_bytes())?;
    // Last, so that no error after it leaves a cgroup behind.
    let (cgroup_dirs, cgroup_procs) = match cgroups.create(&escape_id(&spec.task_id), &spec.limits)
    {
        Ok(Some(made)) => (made.dirs, made.procs),
        Ok(None) => (Vec::new(), Vec::new()),
        Err(e) => {
            return Err(AgentError::Cgroup(format!(
                "cannot apply the task's limits: {e}"
            )))
        }
    };
    let plan = SupervisorPlan {
        program,
        argv: plan_argv,
        envp,
        workdir,
        status_path,
        status_tmp,
        stdin,
        stdout,
        stderr,
        cgroup_procs,
        alive_path,
        recovery_timeout: cfg.recovery_timeout,
        check_interval: heartbeat::check_interval(cfg.recovery_timeout),
        kill_grace: spec.kill_grace,
    };
    Ok(Prepared {
        plan,
        cgroups: cgroup_dirs,
        env: cmd.env.clone(),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Program path and argv of a command (plain, apart from the `exists` callback).
pub(crate) fn resolve_program(
    cmd: &CommandSpec,
    path_var: Option<&OsStr>,
    sandbox: &Path,
    exists: impl Fn(&Path) -> bool,
) -> Result<(PathBuf, Vec<OsString>), AgentError> {
    if cmd.shell {
        return Ok((
            PathBuf::from("/bin/sh"),
            vec!["sh".into(), "-c".into(), cmd.value.clone().into()],
        ));
    }
    if cmd.value.is_empty() {
        return Err(AgentError::Launch("the command is empty".into()));
    }
    let mut argv: Vec<OsString> = vec![cmd.value.clone().into()];
    argv.extend(cmd.arguments.iter().map(OsString::from));
    if cmd.value.contains('/') {
        let p = sandbox.join(&cmd.value);
        return if exists(&p) {
            Ok((p, argv))
        } else {
            Err(AgentError::Launch(format!(
                "program {} not found or not executable",
                p.display()
            )))
        };
    }
    let path_var = path_var.unwrap_or(OsStr::new(
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ));
    for dir in std::env::split_paths(path_var) {
        let p = dir.join(&cmd.value);
        if dir.is_absolute() && exists(&p) {
            return Ok((p, argv));
        }
    }
    Err(AgentError::Launch(format!(
        "program {:?} not found in PATH",
        cmd.value
    )))
}

fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals the process group.
    if unsafe { libc::kill(-pgid, sig) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, sig, error = %e, "cannot signal task process group");
        }
    }
}

/// Reaps the supervisor if it is an ended child of ours (after an executor
/// was dropped in the same process, the supervisor may be a zombie child);
/// checks the start time so that no other child is ever reaped by mistake.
fn reap_if_child(pid: i32, start_time: u64) {
    let ours = util::read_proc_stat(pid).is_some_and(|st| {
        st.start_time == start_time && !st.is_running() && st.ppid == std::process::id() as i32
    });
    if ours {
        let mut st = 0;
        // SAFETY: WNOHANG waitpid on a specific ended child.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    }
}

/// Resolves when process `pid` (with the given start time) has exited.
async fn wait_exit(pid: i32, start_time: u64) {
    let alive =
        || util::read_proc_stat(pid).is_some_and(|s| s.is_running() && s.start_time == start_time);
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        // SAFETY: fresh fd from pidfd_open.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after opening: the pidfd refers to the process we verified.
        if !alive() {
            return;
        }
        // `with_interest` is deprecated in newer tokio for fds that may be closed
        // behind its back; an `OwnedFd` moved into it cannot be.
        #[allow(deprecated)]
        let afd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
        if let Ok(afd) = afd {
            let _ = afd.readable().await;
            return;
        }
    }
    while alive() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_exits() {
        assert_eq!(
            classify(Some(ExitRecord::Exited(0)), false, false),
            TaskUpdate::Finished
        );
        match classify(Some(ExitRecord::Exited(3)), false, false) {
            TaskUpdate::Failed {
                exit_code: Some(3),
                reason: FailReason::CommandExit,
                ..
            } => {}
            u => panic!("{u:?}"),
        }
        match classify(Some(ExitRecord::Signaled(9)), false, false) {
            TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::CommandExit,
                message,
            } => {
                assert!(message.contains("SIGKILL"))
            }
            u => panic!("{u:?}"),
        }
        assert!(matches!(
            classify(Some(ExitRecord::Signaled(15)), true, false),
            TaskUpdate::Killed { .. }
        ));
        assert!(matches!(
            classify(Some(ExitRecord::Exited(0)), true, false),
            TaskUpdate::Killed { .. }
        ));
        assert!(matches!(
            classify(Some(ExitRecord::Signaled(9)), false, true),
            TaskUpdate::Failed {
                reason: FailReason::Oom,
                ..
            }
        ));
        assert!(matches!(
            classify(None, false, false),
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                ..
            }
        ));
    }

    #[test]
    fn programs() {
        let sb = Path::new("/sb");
        let yes = |_: &Path| true;
        let no = |_: &Path| false;
        let (p, argv) =
            resolve_program(&CommandSpec::shell("echo hi"), None, sb, no).expect("shell");
        assert_eq!(p, Path::new("/bin/sh"));
        assert_eq!(
            argv,
            vec![OsString::from("sh"), "-c".into(), "echo hi".into()]
        );

        let cmd = CommandSpec::argv("prog", ["a", "b"]);
        let only_bin = |p: &Path| p == Path::new("/bin/prog");
        let (p, argv) =
            resolve_program(&cmd, Some(OsStr::new("/usr/bin:/bin")), sb, only_bin).expect("argv");
        assert_eq!(p, Path::new("/bin/prog"));
        assert_eq!(argv, vec![OsString::from("prog"), "a".into(), "b".into()]);
        assert!(resolve_program(&cmd, Some(OsStr::new("/usr/bin")), sb, no).is_err());
        // Relative PATH entries are ignored.
        assert!(resolve_program(&cmd, Some(OsStr::new("rel")), sb, yes).is_err());

        let (p, _) = resolve_program(
            &CommandSpec::argv("./run.sh", Vec::<String>::new()),
            None,
            sb,
            yes,
        )
        .expect("rel");
        assert_eq!(p, Path::new("/sb/./run.sh"));
        assert!(
            resolve_program(&CommandSpec::argv("", Vec::<String>::new()), None, sb, yes).is_err()
        );
    }
}
