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
use crate::journal::{ExecutorKind, Journal, Update};
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

use crate::limits::STOP_POLL_MS;
pub use crate::limits::{STOP_ACK_WAIT_SECS, STOP_KILL_WAIT_SECS};

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
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<ExecutorEvent>();
    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(4096);
    let mut agent = Agent::start(config, ev_tx, out_tx).await?;
    agent.recover().await?;
    let (conn_tx, mut conn_rx) = mpsc::channel::<ConnEvent>(4096);
    let conn = tokio::spawn(connection(
        agent.config.master.clone(),
        agent.config.reregister_backoff_max,
        out_rx,
        conn_tx,
    ));
    let result = agent.run(stop, &mut ev_rx, &mut conn_rx).await;
    conn.abort();
    result
}

/// What the agent loop does after a step: go on, or stop the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The agent loop's state: the journal, the executors, and what it knows of its master.
struct Agent {
    config: AgentConfig,
    clock: SharedClock,
    journal: Journal,
    /// Keeps the agent id the master assigned across restarts.
    id_file: PathBuf,
    agent_id: Option<AgentId>,
    sandboxes: PathBuf,
    process: Arc<dyn Executor>,
    /// `None` when the agent does not offer Docker or the daemon did not answer.
    docker: Option<Arc<dyn Executor>>,
    process_enabled: bool,
    /// The executors' event channel: a task that cannot be prepared ends through it too.
    ev_tx: mpsc::UnboundedSender<ExecutorEvent>,
    /// What the connection task sends to the master.
    out: mpsc::Sender<AgentMessage>,
    /// Between a REGISTERED and the end of its connection: only then do statuses go out.
    registered: bool,
    /// When each unacknowledged update was last sent.
    last_sent: BTreeMap<u64, Instant>,
    /// How old a sent update must be to be sent again (doubles while updates stay unacknowledged).
    retry_after: Duration,
    /// Set once the agent stops with `Stop::KillTasks`.
    stopping: Option<Stopping>,
}

/// An agent killing its tasks before it stops.
struct Stopping {
    since: Instant,
    /// When the last task ended.
    ended: Option<Instant>,
}

impl Agent {
    /// Opens the work dir (state, journal, agent id) and starts the executors.
    async fn start(
        config: AgentConfig,
        ev_tx: mpsc::UnboundedSender<ExecutorEvent>,
        out: mpsc::Sender<AgentMessage>,
    ) -> Result<Agent, AgentError> {
        let state_dir = config.work_dir.join("state");
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| AgentError::io(format!("create {}", state_dir.display()), e))?;
        let sandboxes = config.work_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes)
            .map_err(|e| AgentError::io(format!("create {}", sandboxes.display()), e))?;
        let journal = Journal::open(&state_dir).map_err(journal_err)?;
        let id_file = state_dir.join("agent_id");
        let agent_id: Option<AgentId> = std::fs::read_to_string(&id_file)
            .ok()
            .map(|s| AgentId::new(s.trim()))
            .filter(|a| !a.as_str().is_empty());

        let mut process_config = ProcessConfig::new(state_dir.join("process"));
        process_config.cgroups = config.process_cgroups;
        process_config.recovery_timeout = config.recovery_timeout;
        process_config.clock = config.clock.clone();
        let process: Arc<dyn Executor> =
            Arc::new(ProcessExecutor::new(process_config, ev_tx.clone())?);
        let docker = docker_executor(&config, &state_dir, &ev_tx).await?;
        let process_enabled = config.containerizers.iter().any(|c| c == "process");
        Ok(Agent {
            clock: config.clock.clone(),
            retry_after: config.status_retry,
            config,
            journal,
            id_file,
            agent_id,
            sandboxes,
            process,
            docker,
            process_enabled,
            ev_tx,
            out,
            registered: false,
            last_sent: BTreeMap::new(),
            stopping: None,
        })
    }

    /// The executors this agent runs.
    fn executors(&self) -> Vec<Arc<dyn Executor>> {
        [Some(self.process.clone()), self.docker.clone()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Recovery: re-attaches to what the journal says is live; records what ended meanwhile.
    async fn recover(&mut self) -> Result<(), AgentError> {
        let mut recovered_updates = Vec::new();
        for (kind, exec) in [
            (ExecutorKind::Process, Some(self.process.clone())),
            (ExecutorKind::Docker, self.docker.clone()),
        ] {
            let ids: Vec<String> = self
                .journal
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
                        // A RUNNING that was sent but not synced before a crash (or never
                        // sent) is reported again; a repeated one changes nothing in the master.
                        let unrecorded_running = state == TaskState::Running
                            && self.journal.states.get(&task_id) != Some(&TaskState::Running);
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
            self.journal
                .record(recovered_updates)
                .map_err(journal_err)?;
        }
        Ok(())
    }

    /// The agent loop: reacts to the stop, executor events, the connection and its timers,
    /// until the agent stops.
    async fn run(
        &mut self,
        stop: impl std::future::Future<Output = Stop>,
        ev_rx: &mut mpsc::UnboundedReceiver<ExecutorEvent>,
        conn_rx: &mut mpsc::Receiver<ConnEvent>,
    ) -> Result<(), AgentError> {
        let config = &self.config;
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        let mut retry = tokio::time::interval(config.status_retry);
        // At least once per recovery timeout: gc also removes the orphaned containers of
        // other agents of this host.
        let mut gc = tokio::time::interval(
            config
                .gc_delay
                .min(config.recovery_timeout)
                .max(Duration::from_secs(1)),
        );
        let mut stop_poll = tokio::time::interval(Duration::from_millis(STOP_POLL_MS));
        tokio::pin!(stop);
        loop {
            let flow = tokio::select! {
                how = &mut stop, if self.stopping.is_none() => self.on_stop(how).await,
                _ = stop_poll.tick(), if self.stopping.is_some() => self.on_stop_poll(ev_rx).await,
                Some(ev) = ev_rx.recv() => {
                    self.on_executor_events(ev, ev_rx).await?;
                    Flow::Continue
                }
                Some(ev) = conn_rx.recv() => {
                    self.on_connection(ev, &mut heartbeat).await?;
                    Flow::Continue
                }
                _ = heartbeat.tick() => {
                    if self.registered {
                        let _ = self.out.try_send(AgentMessage::Heartbeat);
                    }
                    Flow::Continue
                }
                _ = retry.tick() => {
                    self.resend_unacknowledged();
                    Flow::Continue
                }
                _ = gc.tick() => {
                    self.collect_garbage().await;
                    Flow::Continue
                }
            };
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }

    /// The stop the caller chose: leave the tasks running, or kill every task first.
    async fn on_stop(&mut self, how: Stop) -> Flow {
        match how {
            Stop::LeaveTasks => Flow::Stop,
            Stop::KillTasks => {
                let mut count = 0;
                for exec in self.executors() {
                    for task_id in exec.tasks() {
                        count += 1;
                        if let Err(e) = exec.kill(&task_id, None).await {
                            tracing::debug!(%task_id, error = %e, "kill at stop of a task that ended");
                        }
                    }
                }
                tracing::info!(tasks = count, "stopping: killing every task");
                self.stopping = Some(Stopping {
                    since: self.clock.monotonic(),
                    ended: None,
                });
                Flow::Continue
            }
        }
    }

    /// A stopping agent stops once its tasks ended, their statuses are journaled and the
    /// master acknowledged them (or the waits for that ran out).
    async fn on_stop_poll(&mut self, ev_rx: &mpsc::UnboundedReceiver<ExecutorEvent>) -> Flow {
        let executors = self.executors();
        let now = self.clock.monotonic();
        let Some(st) = self.stopping.as_mut() else {
            return Flow::Continue;
        };
        let busy = executors.iter().map(|e| e.tasks().len()).sum::<usize>();
        if busy > 0 {
            if now - st.since >= Duration::from_secs(STOP_KILL_WAIT_SECS) {
                tracing::warn!(
                    tasks = busy,
                    "stopping: tasks still ending; they are left to their recovery timeout"
                );
                return Flow::Stop;
            }
            return Flow::Continue;
        }
        // An executor forgets a task just before it sends the terminal update: one more
        // poll, and no event waiting, and every terminal status is journaled.
        let Some(ended) = st.ended else {
            st.ended = Some(now);
            return Flow::Continue;
        };
        if !ev_rx.is_empty() {
            return Flow::Continue;
        }
        if self.journal.pending.is_empty()
            || !self.registered
            || now - ended >= Duration::from_secs(STOP_ACK_WAIT_SECS)
        {
            for exec in &executors {
                if let Err(e) = exec.gc(Duration::ZERO).await {
                    tracing::debug!(error = %e, "gc at stop failed");
                }
            }
            tracing::info!(
                unacknowledged = self.journal.pending.len(),
                "stopped: every task ended"
            );
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Records what the executors reported (everything waiting, in one journal write and
    /// one sync) and sends it: non-terminal updates while the group syncs, terminal ones
    /// only once durable (see the journal's docs).
    async fn on_executor_events(
        &mut self,
        first: ExecutorEvent,
        ev_rx: &mut mpsc::UnboundedReceiver<ExecutorEvent>,
    ) -> Result<(), AgentError> {
        let mut batch = vec![first];
        while let Ok(more) = ev_rx.try_recv() {
            batch.push(more);
            if batch.len() >= 1024 {
                break;
            }
        }
        let updates = batch
            .into_iter()
            .map(|e| {
                let (state, status) = translate(&e.update);
                (TaskId::new(&e.task_id), state, status)
            })
            .collect();
        let recorded = self.journal.write_updates(updates).map_err(journal_err)?;
        let (early, late): (Vec<_>, Vec<_>) =
            recorded.into_iter().partition(|u| !u.state.is_terminal());
        self.send_updates(early).await;
        self.journal.sync().map_err(journal_err)?;
        self.send_updates(late).await;
        Ok(())
    }

    /// Sends journaled updates while registered, noting when each went out.
    async fn send_updates(&mut self, updates: Vec<Update>) {
        if !self.registered {
            return;
        }
        for u in updates {
            self.last_sent.insert(u.id, self.clock.monotonic());
            let _ = self.out.send(status_update(u)).await;
        }
    }

    async fn on_connection(
        &mut self,
        ev: ConnEvent,
        heartbeat: &mut tokio::time::Interval,
    ) -> Result<(), AgentError> {
        match ev {
            ConnEvent::Connected => self.register().await,
            ConnEvent::Disconnected => self.registered = false,
            ConnEvent::Message(msg) => self.on_master(msg, heartbeat).await?,
        }
        Ok(())
    }

    /// On a new connection the agent registers with its resources and the tasks it knows.
    async fn register(&mut self) {
        self.registered = false;
        let journal = &self.journal;
        let known: Vec<TaskId> = journal
            .live
            .keys()
            .cloned()
            .chain(journal.pending.values().map(|u| u.task_id.clone()))
            .collect();
        let config = &self.config;
        let registration = AgentRegistration {
            agent_id: self.agent_id.clone(),
            hostname: config.hostname.clone(),
            port: 0,
            attributes: config.attributes.clone(),
            domain: config.domain.clone(),
            resources: config.resources.clone(),
        };
        let _ = self
            .out
            .send(AgentMessage::Register {
                registration,
                known,
            })
            .await;
    }

    async fn on_master(
        &mut self,
        msg: MasterMessage,
        heartbeat: &mut tokio::time::Interval,
    ) -> Result<(), AgentError> {
        match msg {
            MasterMessage::Registered {
                agent_id,
                heartbeat_interval_ms,
            } => {
                self.on_registered(agent_id, heartbeat_interval_ms, heartbeat)
                    .await?
            }
            MasterMessage::Error { message, forget_id } => {
                tracing::warn!(%message, "the master refused this agent");
                if forget_id {
                    self.agent_id = None;
                    let _ = std::fs::remove_file(&self.id_file);
                }
            }
            MasterMessage::Launch { tasks } if self.stopping.is_some() => {
                tracing::info!(tasks = tasks.len(), "launch ignored: the agent is stopping");
            }
            MasterMessage::Launch { tasks } => self.launch(tasks).await?,
            MasterMessage::Kill { task_id, grace_ms } => self.kill(task_id, grace_ms).await,
            MasterMessage::StatusAck { update_id } => {
                self.last_sent.remove(&update_id);
                self.journal.acked(update_id).map_err(journal_err)?;
            }
            MasterMessage::FilesRequest {
                request_id,
                op,
                task_id,
                path,
                offset,
                length,
            } => {
                let (status, body) = crate::files::serve(
                    &self.sandboxes,
                    &op,
                    task_id.as_str(),
                    &path,
                    offset,
                    length,
                );
                let _ = self
                    .out
                    .send(AgentMessage::FilesReply {
                        request_id,
                        status,
                        body,
                    })
                    .await;
            }
        }
        Ok(())
    }

    /// REGISTERED: the agent keeps its id, beats at the master's pace (never slower than
    /// its own), and sends every unacknowledged update again.
    async fn on_registered(
        &mut self,
        id: AgentId,
        heartbeat_interval_ms: u64,
        heartbeat: &mut tokio::time::Interval,
    ) -> Result<(), AgentError> {
        if self.agent_id.as_ref() != Some(&id) {
            std::fs::write(&self.id_file, id.as_str())
                .map_err(|e| AgentError::io(format!("write {}", self.id_file.display()), e))?;
            tracing::info!(agent_id = %id, "registered");
        }
        self.agent_id = Some(id);
        self.registered = true;
        *heartbeat = tokio::time::interval(
            Duration::from_millis(heartbeat_interval_ms.max(10))
                .min(self.config.heartbeat_interval),
        );
        self.retry_after = self.config.status_retry;
        self.last_sent.clear();
        let pending: Vec<Update> = self.journal.pending.values().cloned().collect();
        self.send_updates(pending).await;
        Ok(())
    }

    /// LAUNCH: starts the tasks this agent does not know yet (launches are at-least-once).
    async fn launch(&mut self, tasks: Vec<Task>) -> Result<(), AgentError> {
        let journal = &self.journal;
        let pending: std::collections::HashSet<&TaskId> =
            journal.pending.values().map(|u| &u.task_id).collect();
        let fresh: Vec<Task> = tasks
            .into_iter()
            .filter(|t| !journal.live.contains_key(&t.id) && !pending.contains(&t.id))
            .collect();
        drop(pending);
        let ready: Vec<_> = fresh
            .into_iter()
            .filter_map(|task| {
                prepare(
                    &self.config,
                    &self.sandboxes,
                    &self.process,
                    self.process_enabled,
                    self.docker.as_ref(),
                    &self.ev_tx,
                    task,
                )
            })
            .collect();
        // The launch records are written before anything starts and synced (once for the
        // whole message) while the executors start the tasks: the sync stays off the launch
        // path. A crash before the sync at worst loses the records of tasks whose
        // TASK_STARTING was not sent yet (statuses are synced behind them): the restarted
        // agent kills those tasks as unknown, and the master, seeing them still staging,
        // launches them again.
        self.journal
            .write_launches(ready.iter().map(|(id, kind, _, _)| (id.clone(), *kind)))
            .map_err(journal_err)?;
        let mut last_beat = self.clock.monotonic();
        for (task_id, _, exec, spec) in ready {
            if let Err(e) = exec.launch(spec).await {
                tracing::warn!(%task_id, error = %e, "launch refused");
            }
            // A large launch must not silence the agent past the master's ping timeout.
            if self.registered
                && self.clock.monotonic() - last_beat >= self.config.heartbeat_interval / 2
            {
                let _ = self.out.try_send(AgentMessage::Heartbeat);
                last_beat = self.clock.monotonic();
            }
        }
        self.journal.sync().map_err(journal_err)
    }

    /// KILL: the executor that runs the task kills it (a task not running is no error).
    async fn kill(&self, task_id: TaskId, grace_ms: Option<u64>) {
        let exec = match self.journal.live.get(&task_id) {
            Some(ExecutorKind::Docker) => self.docker.clone(),
            _ => Some(self.process.clone()),
        };
        if let Some(exec) = exec {
            if let Err(e) = exec
                .kill(task_id.as_str(), grace_ms.map(Duration::from_millis))
                .await
            {
                tracing::debug!(%task_id, error = %e, "kill of a task that is not running");
            }
        }
    }

    /// Sends again the updates the master has not acknowledged within `retry_after`, which
    /// doubles (up to 16 × the retry interval) while some stay unacknowledged.
    fn resend_unacknowledged(&mut self) {
        if !self.registered {
            return;
        }
        let now = self.clock.monotonic();
        let stale: Vec<u64> = self
            .journal
            .pending
            .keys()
            .copied()
            .filter(|id| {
                self.last_sent
                    .get(id)
                    .map(|t| now.duration_since(*t) >= self.retry_after)
                    .unwrap_or(true)
            })
            .collect();
        if !stale.is_empty() {
            self.retry_after = (self.retry_after * 2).min(self.config.status_retry * 16);
        }
        for id in stale {
            if let Some(u) = self.journal.pending.get(&id) {
                self.last_sent.insert(id, now);
                let _ = self.out.try_send(status_update(u.clone()));
            }
        }
    }

    /// Removes what the executors keep of long-ended tasks, and their sandboxes.
    async fn collect_garbage(&self) {
        for exec in self.executors() {
            if let Err(e) = exec.gc(self.config.gc_delay).await {
                tracing::debug!(error = %e, "gc failed");
            }
        }
        let live: std::collections::HashSet<String> = self
            .journal
            .live
            .keys()
            .flat_map(|t| {
                [
                    sandbox_name(t),
                    crate::files::legacy_sandbox_name(t.as_str()),
                ]
            })
            .collect();
        gc_sandboxes(&self.sandboxes, &live, self.config.gc_delay, &*self.clock);
    }
}

/// The Docker executor, when the agent offers Docker (`None` when the daemon does not
/// answer: Docker tasks then fail).
async fn docker_executor(
    config: &AgentConfig,
    state_dir: &std::path::Path,
    ev_tx: &mpsc::UnboundedSender<ExecutorEvent>,
) -> Result<Option<Arc<dyn Executor>>, AgentError> {
    if !config.containerizers.iter().any(|c| c == "docker") {
        return Ok(None);
    }
    let mut dc = DockerConfig::new(docker_owner(config, state_dir)?, state_dir.join("docker"));
    dc.socket = config.docker_socket.clone();
    dc.recovery_timeout = config.recovery_timeout;
    dc.clock = config.clock.clone();
    match DockerExecutor::connect(dc, ev_tx.clone()).await {
        Ok(d) => Ok(Some(Arc::new(d))),
        Err(e) => {
            tracing::warn!(error = %e, "docker is not available; Docker tasks will fail");
            Ok(None)
        }
    }
}

/// The owner key this agent's containers are labelled with, kept in the work dir: stable
/// across restarts (unlike the hostname, or an agent id that may not be assigned yet) and
/// distinct for two agents on one host.
fn docker_owner(config: &AgentConfig, state_dir: &std::path::Path) -> Result<String, AgentError> {
    let owner_file = state_dir.join("docker_owner");
    match std::fs::read_to_string(&owner_file) {
        Ok(o) if !o.trim().is_empty() => Ok(o.trim().to_string()),
        _ => {
            let o = format!(
                "{}-{:x}-{:x}",
                config.hostname,
                config.clock.wall_ms(),
                std::process::id()
            );
            std::fs::write(&owner_file, &o)
                .map_err(|e| AgentError::io(format!("write {}", owner_file.display()), e))?;
            Ok(o)
        }
    }
}

/// A failed write of the status journal: the agent stops rather than report what it did
/// not record.
fn journal_err(e: std::io::Error) -> AgentError {
    AgentError::io("status journal", e)
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
