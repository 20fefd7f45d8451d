//! The agent process: joins the master over one live connection, runs what it is told in
//! its executors, and reports status reliably (journaled, resent until acknowledged).
//!
//! Two tasks cooperate:
//! - the **connection** task owns the WebSocket to the master: it connects out (so a host
//!   behind NAT works), reconnects with backoff, and shuttles messages;
//! - the **agent loop** owns all state (journal, known tasks, executors) and reacts to
//!   master messages, executor events and timers. It never blocks on the network.
//!
//! How the agent stops is the caller's choice ([`Stop`]): leaving its tasks running, for a
//! restarted agent to re-attach to (as Mesos's agent does on SIGTERM), or killing them
//! first, each with its grace period (a `shoal dev` cell that ends, Mesos's SIGUSR1).
//! Tasks left behind do not run forever: each executor touches a heartbeat file, and a task
//! whose agent has not come back within the recovery timeout, or whose work dir is gone, is
//! killed (see `executor::heartbeat`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use shoal_core::agent_protocol::{AgentMessage, MasterMessage};
use shoal_core::clock::{Clock, SharedClock};
use shoal_core::{AgentId, AgentRegistration, ResourceSet, Task, TaskId, TaskState};
use tokio::sync::mpsc;

use crate::executor::docker::{DockerConfig, DockerExecutor};
use crate::executor::process::{ProcessConfig, ProcessExecutor};
use crate::executor::{ContainerSpec, Executor, ExecutorEvent, FailReason, TaskUpdate};
use crate::journal::{ExecutorKind, Journal};
use crate::taskinfo;
use crate::AgentError;

/// The connection task.
mod connection;
/// Executor updates as Mesos task states.
mod status;

use connection::{connection, ConnEvent};
pub use status::translate;
use status::{status_msg, status_update};

/// How to run an agent; every timer is configurable so tests run fast.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The master's URL, e.g. `http://127.0.0.1:5050`.
    pub master: String,
    pub work_dir: PathBuf,
    pub hostname: String,
    pub resources: ResourceSet,
    pub attributes: BTreeMap<String, String>,
    pub domain: Option<shoal_core::FaultDomain>,
    /// Which executors to offer: `docker`, `process`.
    pub containerizers: Vec<String>,
    /// Put process tasks into cgroups with their limits where the host allows.
    pub process_cgroups: bool,
    pub docker_socket: String,
    pub heartbeat_interval: Duration,
    pub reregister_backoff_max: Duration,
    pub kill_grace: Duration,
    /// Resend unacknowledged status updates this often (doubling up to 16×).
    pub status_retry: Duration,
    /// Remove executor leftovers of tasks that ended this long ago.
    pub gc_delay: Duration,
    /// Tasks left running when the agent stops are killed when no agent re-attached to
    /// them within this long (Mesos's `--recovery_timeout`).
    pub recovery_timeout: Duration,
    /// Where the agent and its executors read time.
    pub clock: SharedClock,
}

/// How the agent stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Leave the tasks running: a restarted agent on the same work dir re-attaches to them
    /// within the recovery timeout.
    LeaveTasks,
    /// Kill every task (each with its grace period), report how they ended, remove what
    /// the executors keep of ended tasks, then stop. Launches that come meanwhile are
    /// ignored.
    KillTasks,
}

/// Longest wait for the tasks to end when the agent stops with [`Stop::KillTasks`]; a task
/// whose grace period is longer is left to its recovery timeout.
pub const STOP_KILL_WAIT_SECS: u64 = 60;
/// Longest wait, once the tasks ended, for the master to acknowledge their statuses.
pub const STOP_ACK_WAIT_SECS: u64 = 2;
/// How often a stopping agent looks whether its tasks have ended.
const STOP_POLL_MS: u64 = 50;

/// Runs the agent until `shutdown` resolves. Tasks keep running when the agent stops: a
/// restarted agent re-attaches to them.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    run_until(config, async {
        shutdown.await;
        Stop::LeaveTasks
    })
    .await
}

/// Runs the agent until `stop` resolves, then stops as it says.
pub async fn run_until(
    config: AgentConfig,
    stop: impl std::future::Future<Output = Stop>,
) -> Result<(), AgentError> {
    let state_dir = config.work_dir.join("state");
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| AgentError::io(format!("create {}", state_dir.display()), e))?;
    let sandboxes = config.work_dir.join("sandboxes");
    std::fs::create_dir_all(&sandboxes)
        .map_err(|e| AgentError::io(format!("create {}", sandboxes.display()), e))?;
    let mut journal = Journal::open(&state_dir).map_err(journal_err)?;
    let clock = config.clock.clone();
    let id_file = state_dir.join("agent_id");
    let mut agent_id: Option<AgentId> = std::fs::read_to_string(&id_file)
        .ok()
        .map(|s| AgentId::new(s.trim()))
        .filter(|a| !a.as_str().is_empty());

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<ExecutorEvent>();
    let mut process_config = ProcessConfig::new(state_dir.join("process"));
    process_config.cgroups = config.process_cgroups;
    process_config.recovery_timeout = config.recovery_timeout;
    process_config.clock = config.clock.clone();
    let process: Arc<dyn Executor> = Arc::new(ProcessExecutor::new(process_config, ev_tx.clone())?);
    let docker: Option<Arc<dyn Executor>> = if config.containerizers.iter().any(|c| c == "docker") {
        // Containers are labelled with an owner key kept in the work dir: stable across
        // restarts (unlike the hostname, or an agent id that may not be assigned yet) and
        // distinct for two agents on one host.
        let owner_file = state_dir.join("docker_owner");
        let owner = match std::fs::read_to_string(&owner_file) {
            Ok(o) if !o.trim().is_empty() => o.trim().to_string(),
            _ => {
                let o = format!(
                    "{}-{:x}-{:x}",
                    config.hostname,
                    config.clock.wall_ms(),
                    std::process::id()
                );
                std::fs::write(&owner_file, &o)
                    .map_err(|e| AgentError::io(format!("write {}", owner_file.display()), e))?;
                o
            }
        };
        let mut dc = DockerConfig::new(owner, state_dir.join("docker"));
        dc.socket = config.docker_socket.clone();
        dc.recovery_timeout = config.recovery_timeout;
        dc.clock = config.clock.clone();
        match DockerExecutor::connect(dc, ev_tx.clone()).await {
            Ok(d) => Some(Arc::new(d)),
            Err(e) => {
                tracing::warn!(error = %e, "docker is not available; Docker tasks will fail");
                None
            }
        }
    } else {
        None
    };
    let process_enabled = config.containerizers.iter().any(|c| c == "process");

    // Recovery: re-attach to what the journal says is live; report what ended meanwhile.
    let mut recovered_updates = Vec::new();
    for (kind, exec) in [
        (ExecutorKind::Process, Some(process.clone())),
        (ExecutorKind::Docker, docker.clone()),
    ] {
        let ids: Vec<String> = journal
            .live
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(t, _)| t.to_string())
            .collect();
        let Some(exec) = exec else {
            for id in ids {
                recovered_updates.push((
                    TaskId::new(&id),
                    TaskState::Lost,
                    status_msg(
                        "the Docker daemon is not available after an agent restart",
                        Some("REASON_CONTAINER_LAUNCH_FAILED"),
                    ),
                ));
            }
            continue;
        };
        match exec.recover(&ids).await {
            Ok(found) => {
                for r in found {
                    let task_id = TaskId::new(&r.task_id);
                    let (state, status) = translate(&r.update);
                    // A RUNNING that was sent but not synced before a crash (or never sent)
                    // is reported again; a repeated one changes nothing in the master.
                    let unrecorded_running = state == TaskState::Running
                        && journal.states.get(&task_id) != Some(&TaskState::Running);
                    if r.update.is_terminal() || unrecorded_running {
                        recovered_updates.push((task_id, state, status));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, ?kind, "recovery failed"),
        }
    }
    if !recovered_updates.is_empty() {
        tracing::info!(
            count = recovered_updates.len(),
            "tasks ended while the agent was away"
        );
        journal.record(recovered_updates).map_err(journal_err)?;
    }

    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(4096);
    let (conn_tx, mut conn_rx) = mpsc::channel::<ConnEvent>(4096);
    let conn = tokio::spawn(connection(
        config.master.clone(),
        config.reregister_backoff_max,
        out_rx,
        conn_tx,
    ));

    let mut registered = false;
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    let mut retry = tokio::time::interval(config.status_retry);
    // At least once per recovery timeout: gc also removes the orphaned containers of other
    // agents of this host.
    let mut gc = tokio::time::interval(
        config
            .gc_delay
            .min(config.recovery_timeout)
            .max(Duration::from_secs(1)),
    );
    let mut last_sent: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut retry_after = config.status_retry;
    tokio::pin!(stop);
    // Set once the agent stops with `Stop::KillTasks`.
    let mut stopping: Option<Stopping> = None;
    let mut stop_poll = tokio::time::interval(Duration::from_millis(STOP_POLL_MS));
    let executors: Vec<Arc<dyn Executor>> = [Some(process.clone()), docker.clone()]
        .into_iter()
        .flatten()
        .collect();

    loop {
        tokio::select! {
            how = &mut stop, if stopping.is_none() => match how {
                Stop::LeaveTasks => break,
                Stop::KillTasks => {
                    let mut count = 0;
                    for exec in &executors {
                        for task_id in exec.tasks() {
                            count += 1;
                            if let Err(e) = exec.kill(&task_id, None).await {
                                tracing::debug!(%task_id, error = %e, "kill at stop of a task that ended");
                            }
                        }
                    }
                    tracing::info!(tasks = count, "stopping: killing every task");
                    stopping = Some(Stopping { since: clock.monotonic(), ended: None });
                }
            },
            _ = stop_poll.tick(), if stopping.is_some() => {
                let Some(st) = stopping.as_mut() else { continue };
                let busy = executors.iter().map(|e| e.tasks().len()).sum::<usize>();
                if busy > 0 {
                    if clock.monotonic() - st.since >= Duration::from_secs(STOP_KILL_WAIT_SECS) {
                        tracing::warn!(tasks = busy, "stopping: tasks still ending; they are left to their recovery timeout");
                        break;
                    }
                    continue;
                }
                // An executor forgets a task just before it sends the terminal update: one
                // more poll, and no event waiting, and every terminal status is journaled.
                let Some(ended) = st.ended else {
                    st.ended = Some(clock.monotonic());
                    continue;
                };
                if !ev_rx.is_empty() {
                    continue;
                }
                if journal.pending.is_empty() || !registered || clock.monotonic() - ended >= Duration::from_secs(STOP_ACK_WAIT_SECS) {
                    for exec in &executors {
                        if let Err(e) = exec.gc(Duration::ZERO).await {
                            tracing::debug!(error = %e, "gc at stop failed");
                        }
                    }
                    tracing::info!(unacknowledged = journal.pending.len(), "stopped: every task ended");
                    break;
                }
            }
            Some(ev) = ev_rx.recv() => {
                // Group everything waiting into one journal write and one sync.
                let mut batch = vec![ev];
                while let Ok(more) = ev_rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 1024 { break; }
                }
                let updates = batch.into_iter().map(|e| {
                    let (state, status) = translate(&e.update);
                    (TaskId::new(&e.task_id), state, status)
                }).collect();
                // Non-terminal updates go out while the group syncs; terminal ones only
                // once durable (see the journal's docs).
                let recorded = journal.write_updates(updates).map_err(journal_err)?;
                let (early, late): (Vec<_>, Vec<_>) = recorded.into_iter().partition(|u| !u.state.is_terminal());
                if registered {
                    for u in early {
                        last_sent.insert(u.id, clock.monotonic());
                        let _ = out_tx.send(status_update(u)).await;
                    }
                }
                journal.sync().map_err(journal_err)?;
                if registered {
                    for u in late {
                        last_sent.insert(u.id, clock.monotonic());
                        let _ = out_tx.send(status_update(u)).await;
                    }
                }
            }
            Some(ev) = conn_rx.recv() => match ev {
                ConnEvent::Connected => {
                    registered = false;
                    let known: Vec<TaskId> = journal.live.keys().cloned().chain(journal.pending.values().map(|u| u.task_id.clone())).collect();
                    let registration = AgentRegistration {
                        agent_id: agent_id.clone(),
                        hostname: config.hostname.clone(),
                        port: 0,
                        attributes: config.attributes.clone(),
                        domain: config.domain.clone(),
                        resources: config.resources.clone(),
                    };
                    let _ = out_tx.send(AgentMessage::Register { registration, known }).await;
                }
                ConnEvent::Disconnected => registered = false,
                ConnEvent::Message(msg) => match msg {
                    MasterMessage::Registered { agent_id: id, heartbeat_interval_ms } => {
                        if agent_id.as_ref() != Some(&id) {
                            std::fs::write(&id_file, id.as_str()).map_err(|e| AgentError::io(format!("write {}", id_file.display()), e))?;
                            tracing::info!(agent_id = %id, "registered");
                        }
                        agent_id = Some(id);
                        registered = true;
                        heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_interval_ms.max(10)).min(config.heartbeat_interval));
                        retry_after = config.status_retry;
                        last_sent.clear();
                        for u in journal.pending.values() {
                            last_sent.insert(u.id, clock.monotonic());
                            let _ = out_tx.send(status_update(u.clone())).await;
                        }
                    }
                    MasterMessage::Error { message, forget_id } => {
                        tracing::warn!(%message, "the master refused this agent");
                        if forget_id {
                            agent_id = None;
                            let _ = std::fs::remove_file(&id_file);
                        }
                    }
                    MasterMessage::Launch { tasks } if stopping.is_some() => {
                        tracing::info!(tasks = tasks.len(), "launch ignored: the agent is stopping");
                    }
                    MasterMessage::Launch { tasks } => {
                        let pending: std::collections::HashSet<&TaskId> = journal.pending.values().map(|u| &u.task_id).collect();
                        let fresh: Vec<Task> = tasks
                            .into_iter()
                            .filter(|t| !journal.live.contains_key(&t.id) && !pending.contains(&t.id)) // launches are at-least-once
                            .collect();
                        drop(pending);
                        let ready: Vec<_> = fresh
                            .into_iter()
                            .filter_map(|task| prepare(&config, &sandboxes, &process, process_enabled, docker.as_ref(), &ev_tx, task))
                            .collect();
                        // The launch records are written before anything starts and synced
                        // (once for the whole message) while the executors start the tasks:
                        // the sync stays off the launch path. A crash before the sync at worst
                        // loses the records of tasks whose TASK_STARTING was not sent yet
                        // (statuses are synced behind them): the restarted agent kills those
                        // tasks as unknown, and the master, seeing them still staging,
                        // launches them again.
                        journal.write_launches(ready.iter().map(|(id, kind, _, _)| (id.clone(), *kind))).map_err(journal_err)?;
                        let mut last_beat = clock.monotonic();
                        for (task_id, _, exec, spec) in ready {
                            if let Err(e) = exec.launch(spec).await {
                                tracing::warn!(%task_id, error = %e, "launch refused");
                            }
                            // A large launch must not silence the agent past the master's ping timeout.
                            if registered && clock.monotonic() - last_beat >= config.heartbeat_interval / 2 {
                                let _ = out_tx.try_send(AgentMessage::Heartbeat);
                                last_beat = clock.monotonic();
                            }
                        }
                        journal.sync().map_err(journal_err)?;
                    }
                    MasterMessage::Kill { task_id, grace_ms } => {
                        let kind = journal.live.get(&task_id).copied();
                        let exec = match kind {
                            Some(ExecutorKind::Docker) => docker.clone(),
                            _ => Some(process.clone()),
                        };
                        if let Some(exec) = exec {
                            match exec.kill(task_id.as_str(), grace_ms.map(Duration::from_millis)).await {
                                Ok(()) => {}
                                Err(e) => tracing::debug!(%task_id, error = %e, "kill of a task that is not running"),
                            }
                        }
                    }
                    MasterMessage::StatusAck { update_id } => {
                        last_sent.remove(&update_id);
                        journal.acked(update_id).map_err(journal_err)?;
                    }
                    MasterMessage::FilesRequest { request_id, op, task_id, path, offset, length } => {
                        let (status, body) = crate::files::serve(&sandboxes, &op, task_id.as_str(), &path, offset, length);
                        let _ = out_tx.send(AgentMessage::FilesReply { request_id, status, body }).await;
                    }
                },
            },
            _ = heartbeat.tick() => {
                if registered {
                    let _ = out_tx.try_send(AgentMessage::Heartbeat);
                }
            }
            _ = retry.tick() => {
                if registered {
                    let now = clock.monotonic();
                    let stale: Vec<u64> = journal.pending.keys().copied().filter(|id| last_sent.get(id).map(|t| now.duration_since(*t) >= retry_after).unwrap_or(true)).collect();
                    if !stale.is_empty() {
                        retry_after = (retry_after * 2).min(config.status_retry * 16);
                    }
                    for id in stale {
                        if let Some(u) = journal.pending.get(&id) {
                            last_sent.insert(id, now);
                            let _ = out_tx.try_send(status_update(u.clone()));
                        }
                    }
                }
            }
            _ = gc.tick() => {
                for exec in [Some(process.clone()), docker.clone()].into_iter().flatten() {
                    if let Err(e) = exec.gc(config.gc_delay).await {
                        tracing::debug!(error = %e, "gc failed");
                    }
                }
                let live: std::collections::HashSet<String> = journal.live.keys().flat_map(|t| [sandbox_name(t), crate::files::legacy_sandbox_name(t.as_str())]).collect();
                gc_sandboxes(&sandboxes, &live, config.gc_delay, &*clock);
            }
        }
    }
    conn.abort();
    Ok(())
}

/// A failed write of the status journal: the agent stops rather than report what it did
/// not record.
fn journal_err(e: std::io::Error) -> AgentError {
    AgentError::io("status journal", e)
}

/// An agent killing its tasks before it stops.
struct Stopping {
    since: Instant,
    /// When the last task ended.
    ended: Option<Instant>,
}

/// Removes the sandboxes of tasks that are not live and were last written more than
/// `older_than` ago.
fn gc_sandboxes(
    sandboxes: &std::path::Path,
    live: &std::collections::HashSet<String>,
    older_than: Duration,
    clock: &dyn Clock,
) {
    let now = UNIX_EPOCH + Duration::from_millis(clock.wall_ms());
    let Ok(dir) = std::fs::read_dir(sandboxes) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if live.contains(&name) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .map(|e| e >= older_than)
            .unwrap_or(false);
        if old {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::info!(sandbox = %name, "removed an old sandbox"),
                Err(e) => {
                    tracing::warn!(sandbox = %name, error = %e, "cannot remove an old sandbox")
                }
            }
        }
    }
}

fn sandbox_name(task_id: &TaskId) -> String {
    crate::files::sandbox_name(task_id.as_str())
}

/// A task ready to launch: its id, executor kind and executor, and its launch spec.
type Prepared = (
    TaskId,
    ExecutorKind,
    Arc<dyn Executor>,
    crate::executor::LaunchSpec,
);

/// Creates the sandbox and translates the TaskInfo; a task that cannot run ends at once
/// (TASK_ERROR / TASK_FAILED through the event channel) and `None` is returned.
fn prepare(
    config: &AgentConfig,
    sandboxes: &std::path::Path,
    process: &Arc<dyn Executor>,
    process_enabled: bool,
    docker: Option<&Arc<dyn Executor>>,
    ev_tx: &mpsc::UnboundedSender<ExecutorEvent>,
    task: Task,
) -> Option<Prepared> {
    let sandbox = sandboxes.join(sandbox_name(&task.id));
    let fail = |update: TaskUpdate| {
        let _ = ev_tx.send(ExecutorEvent {
            task_id: task.id.to_string(),
            update,
        });
    };
    if let Err(e) = std::fs::create_dir_all(&sandbox) {
        fail(TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::LaunchFailed,
            message: format!("cannot create the sandbox: {e}"),
        });
        return None;
    }
    let spec = match taskinfo::launch_spec(
        task.id.as_str(),
        task.spec.as_str(),
        &sandbox,
        config.kill_grace,
    ) {
        Ok(t) => t.spec,
        Err(message) => {
            fail(TaskUpdate::Error { message });
            return None;
        }
    };
    let (kind, exec) = match &spec.container {
        ContainerSpec::Docker(_) => match docker {
            Some(d) => (ExecutorKind::Docker, d.clone()),
            None => {
                fail(TaskUpdate::Failed {
                    exit_code: None,
                    reason: FailReason::LaunchFailed,
                    message: "this agent has no Docker daemon".into(),
                });
                return None;
            }
        },
        ContainerSpec::Process if !process_enabled => {
            fail(TaskUpdate::Error {
                message: "this agent does not run plain processes (--containerizers)".into(),
            });
            return None;
        }
        ContainerSpec::Process => (ExecutorKind::Process, process.clone()),
    };
    Some((task.id, kind, exec, spec))
}
