//! The master's side of the live agent connections.
//!
//! Each agent opens one WebSocket (`GET /api/shoal/v1/agent/connect`) and keeps it: it
//! carries registration, heartbeats, status updates and sandbox file replies up, and
//! launches, kills, acknowledgements and file requests down. Agents connect out, so a host
//! behind NAT with no inbound port works.
//!
//! - The **dispatcher** follows committed log entries: tasks committed by a claim are sent to
//!   their agent as `LAUNCH`; a task that enters TASK_KILLING is sent as `KILL`.
//! - On every (re)connection the master **reconciles**: staging tasks the agent does not know
//!   are launched (again: launches are at-least-once, agents ignore known ids), killing tasks
//!   are killed again, tasks the agent knows but the cell does not want are killed, and live
//!   tasks the agent lost are marked TASK_GONE.
//! - **Liveness**: an agent that is not connected for `unreachable_after` is marked
//!   unreachable (its tasks TASK_UNREACHABLE, resources still booked); after `gone_after` it
//!   is gone (its tasks TASK_GONE, resources freed). A returning agent is reconciled, not
//!   duplicated: it registers with its id.
//! - **Address**: each link keeps the IP address it comes from (the peer of its WebSocket
//!   connection), where the agent really is, as Mesos's master takes an agent's address from
//!   its libprocess UPID. It lives with the link, not in the store: a re-registering agent
//!   brings its address again ([`AgentHub::link_ip`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use shoal_core::agent_protocol::{AgentMessage, MasterMessage};
use shoal_core::liveness::{Liveness, LivenessConfig};
use shoal_core::{AgentId, AgentRegistration, StatusInfo, Task, TaskId, TaskState};
use shoal_sched::{Command, Event, Reply};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::committer::{CommitError, Committer, Published};
use crate::link::{AgentLink, LinkReceiver, LinkSender};

/// Timers of the agent connections, all flags so tests run fast.
#[derive(Clone, Debug)]
pub struct AgentTimers {
    pub heartbeat_interval: Duration,
    /// A connected agent silent for this long is disconnected.
    pub ping_timeout: Duration,
    /// An agent not connected for this long is marked unreachable.
    pub unreachable_after: Duration,
    /// An unreachable agent not back for this long is gone.
    pub gone_after: Duration,
    /// Default kill grace period sent with KILL.
    pub kill_grace: Duration,
}

impl Default for AgentTimers {
    fn default() -> Self {
        AgentTimers {
            heartbeat_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            unreachable_after: Duration::from_secs(75),
            gone_after: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(5),
        }
    }
}

struct Connection {
    tx: mpsc::Sender<MasterMessage>,
    /// Distinguishes this connection from a later one of the same agent.
    serial: u64,
    /// The IP address the link comes from (an IPv4-mapped IPv6 address as IPv4).
    peer: Option<IpAddr>,
}

/// The registry of connected agents and pending file requests.
pub struct AgentHub {
    committer: Committer,
    published: Arc<Published>,
    timers: AgentTimers,
    connections: Mutex<HashMap<AgentId, Connection>>,
    /// Which agents are away and since when (the sans-IO core decides what is due).
    liveness: Mutex<Liveness>,
    files: Mutex<HashMap<u64, oneshot::Sender<(u16, serde_json::Value)>>>,
    next_id: AtomicU64,
    /// Wakes the liveness loop when an agent connects or disconnects.
    liveness_changed: tokio::sync::Notify,
}

impl AgentHub {
    pub fn start(
        committer: Committer,
        published: Arc<Published>,
        timers: AgentTimers,
    ) -> Arc<AgentHub> {
        let hub = Arc::new(AgentHub {
            committer,
            published: published.clone(),
            connections: Mutex::new(HashMap::new()),
            liveness: Mutex::new(Liveness::new(
                LivenessConfig {
                    unreachable_after_ms: timers.unreachable_after.as_millis() as u64,
                    gone_after_ms: timers.gone_after.as_millis() as u64,
                },
                published.clock.wall_ms(),
            )),
            timers,
            files: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            liveness_changed: tokio::sync::Notify::new(),
        });
        tokio::spawn(dispatch(hub.clone()));
        tokio::spawn(liveness(hub.clone()));
        hub
    }

    fn send(&self, agent: &AgentId, msg: MasterMessage) -> bool {
        let conns = self.connections.lock();
        match conns.get(agent) {
            Some(c) => c.tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// The IP address an agent's live link comes from; `None` when it has no link (or the
    /// link was served without a peer address).
    pub fn link_ip(&self, agent: &AgentId) -> Option<IpAddr> {
        self.connections.lock().get(agent).and_then(|c| c.peer)
    }

    pub fn is_connected(&self, agent: &AgentId) -> bool {
        self.connections.lock().contains_key(agent)
    }

    /// Asks an agent for a sandbox file listing or contents (the Mesos `/files` endpoints).
    pub async fn files(
        &self,
        agent: &AgentId,
        op: &str,
        task_id: &TaskId,
        path: &str,
        offset: u64,
        length: Option<u64>,
    ) -> (u16, serde_json::Value) {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.files.lock().insert(request_id, tx);
        let msg = MasterMessage::FilesRequest {
            request_id,
            op: op.into(),
            task_id: task_id.clone(),
            path: path.into(),
            offset,
            length,
        };
        if !self.send(agent, msg) {
            self.files.lock().remove(&request_id);
            return (
                503,
                json!({"error": "unavailable", "message": format!("agent {agent} is not connected")}),
            );
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(answer)) => answer,
            _ => {
                self.files.lock().remove(&request_id);
                (
                    504,
                    json!({"error": "timeout", "message": format!("agent {agent} did not answer")}),
                )
            }
        }
    }
}

/// Follows committed entries and sends launches and kills to connected agents.
async fn dispatch(hub: Arc<AgentHub>) {
    let mut rx = hub.published.entries.subscribe();
    loop {
        match rx.recv().await {
            Ok(entry) => {
                for ev in &entry.events {
                    match ev {
                        Event::ClaimCommitted { tasks, .. } => {
                            let mut by_agent: HashMap<&AgentId, Vec<Task>> = HashMap::new();
                            for t in tasks {
                                by_agent
                                    .entry(&t.agent_id)
                                    .or_default()
                                    .push(Task::clone(t));
                            }
                            for (agent, tasks) in by_agent {
                                hub.send(agent, MasterMessage::Launch { tasks });
                            }
                        }
                        Event::TaskStatusChanged {
                            task_id,
                            state: TaskState::Killing,
                            ..
                        } => {
                            if let Some(t) = hub.published.snapshot().task(task_id) {
                                let grace = Some(hub.timers.kill_grace.as_millis() as u64);
                                hub.send(
                                    &t.agent_id,
                                    MasterMessage::Kill {
                                        task_id: task_id.clone(),
                                        grace_ms: grace,
                                    },
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed entries: re-send what every connected agent should be running.
                let agents: Vec<AgentId> = hub.connections.lock().keys().cloned().collect();
                let snap = hub.published.snapshot();
                for a in agents {
                    let tasks: Vec<Task> = snap
                        .live_tasks_on(&a)
                        .filter(|t| t.state == TaskState::Staging)
                        .cloned()
                        .collect();
                    if !tasks.is_empty() {
                        hub.send(&a, MasterMessage::Launch { tasks });
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Marks agents unreachable, then gone, when they stay away: the shell around the sans-IO
/// [`Liveness`], which decides what is due and when to look again.
async fn liveness(hub: Arc<AgentHub>) {
    let mut changed = hub.published.entries.subscribe();
    let shortest = Duration::from_millis(hub.liveness.lock().shortest_timeout_ms().max(1));
    loop {
        let (due, next) = {
            let snap = hub.published.snapshot();
            hub.liveness
                .lock()
                .tick(&snap, hub.published.clock.wall_ms())
        };
        for command in due {
            tracing::warn!(?command, "agent stayed away");
            if let Err(e) = hub.committer.submit(command).await {
                tracing::warn!(error = %e, "could not change agent state");
            }
        }
        // A tick walks every agent, so it runs only when a deadline is due. A change (an agent
        // registering, changing state, connecting or disconnecting) can only add deadlines at
        // least `shortest` away: it brings the next look forward to then, no walk now.
        let clock = &hub.published.clock;
        let wait = next
            .map(|at| Duration::from_millis(at.saturating_sub(clock.wall_ms()).max(1)))
            .unwrap_or(Duration::from_secs(60));
        let mut until = clock.monotonic() + wait;
        loop {
            let left = until.saturating_duration_since(clock.monotonic());
            let bring_forward = tokio::select! {
                _ = tokio::time::sleep(left) => break,
                _ = hub.liveness_changed.notified() => true,
                entry = changed.recv() => match entry {
                    Ok(e) => e.events.iter().any(|ev| matches!(ev, Event::AgentRegistered { .. } | Event::AgentStateChanged { .. })),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            if bring_forward {
                until = until.min(clock.monotonic() + shortest);
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ConnectQuery {}

/// The agent link's upgrade. A browser page on another site must not open it (a WebSocket
/// is not subject to the same-origin policy): an `Origin` other than the master's own is
/// refused with 403. Agents send no `Origin`. The link keeps its peer's IP address (the
/// server puts it in every request's extensions).
pub async fn connect(
    ws: WebSocketUpgrade,
    State(hub): State<Arc<AgentHub>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: axum::http::HeaderMap,
    Query(_q): Query<ConnectQuery>,
) -> Response {
    if !crate::http::origin_allowed(&headers) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(
                json!({"error": "forbidden", "message": "cross-origin agent links are refused"}),
            ),
        )
            .into_response();
    }
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip().to_canonical());
    ws.max_message_size(64 << 20)
        .on_upgrade(move |socket| serve_agent(hub, socket, peer))
}

/// Sends one message, giving up after `deadline`: a peer that does not read cannot hold the
/// caller. False when the message did not go out.
async fn send_msg(link: &mut impl LinkSender, msg: MasterMessage, deadline: Duration) -> bool {
    matches!(
        tokio::time::timeout(deadline, link.send(msg)).await,
        Ok(true)
    )
}

/// Serves one agent's link until it ends: its registration first (the first message must
/// be REGISTER), then the registered link. The WebSocket upgrade calls it, as may anything
/// that holds the agent's end of another [`AgentLink`] (a [`crate::link::memory_link`]).
pub async fn serve_agent(hub: Arc<AgentHub>, link: impl AgentLink, peer: Option<IpAddr>) {
    let write_deadline = hub.timers.ping_timeout;
    let (mut tx, mut rx) = link.split();
    let first = tokio::time::timeout(
        Duration::from_secs(crate::limits::AGENT_REGISTER_WAIT_SECS),
        rx.recv(),
    )
    .await;
    let (registration, known) = match first {
        Ok(Some(Ok(AgentMessage::Register {
            registration,
            known,
        }))) => (registration, known),
        Ok(Some(Ok(_))) | Ok(Some(Err(_))) => {
            let error = MasterMessage::Error {
                message: "the first message must be REGISTER".into(),
                forget_id: false,
            };
            send_msg(&mut tx, error, write_deadline).await;
            return;
        }
        _ => return,
    };
    match register(&hub, registration, known.len()).await {
        Some(Ok(agent_id)) => {
            let span = tracing::info_span!("agent", %agent_id);
            serve_link(hub, agent_id, peer, (tx, rx), known)
                .instrument(span)
                .await;
        }
        Some(Err(refusal)) => {
            send_msg(&mut tx, refusal, write_deadline).await;
        }
        None => {}
    }
}

/// Commits an agent's registration (`known`: how many tasks it says it runs). `None` when
/// nothing is to be said to it; otherwise its id, or the ERROR that refuses it.
async fn register(
    hub: &AgentHub,
    registration: AgentRegistration,
    known: usize,
) -> Option<Result<AgentId, MasterMessage>> {
    if known > crate::limits::AGENT_KNOWN_TASKS_MAX {
        // Refused before anything commits, as Mesos drops an invalid re-registration: the
        // agent keeps its state and, staying away, becomes unreachable like any other.
        tracing::warn!(
            agent_id = ?registration.agent_id,
            known,
            "agent registration refused: too many known tasks"
        );
        let error = MasterMessage::Error {
            message: format!(
                "REGISTER lists {known} known tasks; the master reconciles at most {}",
                crate::limits::AGENT_KNOWN_TASKS_MAX
            ),
            forget_id: false,
        };
        return Some(Err(error));
    }
    // A returning agent counts as connected before its registration commits, so the liveness
    // loop (woken by that commit) cannot mark it unreachable in between.
    let returning = registration.agent_id.clone();
    if let Some(id) = &returning {
        hub.liveness.lock().connected(id);
    }
    let registered = hub
        .committer
        .submit(Command::RegisterAgent(registration))
        .await;
    if let (Some(id), Err(_)) = (&returning, &registered) {
        hub.liveness
            .lock()
            .disconnected(id, hub.published.clock.wall_ms());
    }
    let agent_id = match registered {
        Ok(Reply::Agent { agent_id }) => agent_id,
        Ok(_) => return None,
        Err(e) => {
            let forget_id = matches!(
                &e,
                CommitError::Rejected(shoal_core::Rejection::Forbidden(_))
            );
            tracing::warn!(error = %e, "agent registration refused");
            let error = MasterMessage::Error {
                message: e.to_string(),
                forget_id,
            };
            return Some(Err(error));
        }
    };
    Some(Ok(agent_id))
}

/// A registered agent's link: one writer draining the outbox, one reader, and the
/// reconciliation, all running at once. Whatever awaits room in the outbox (reconciliation,
/// acknowledgements) therefore never holds up the writer that makes the room, and the writer
/// gives up on a peer that does not read, which ends the link.
async fn serve_link(
    hub: Arc<AgentHub>,
    agent_id: AgentId,
    peer: Option<IpAddr>,
    (sink, stream): (impl LinkSender, impl LinkReceiver),
    known: Vec<TaskId>,
) {
    tracing::info!(?peer, "agent connected");
    let (tx, rx) = mpsc::channel::<MasterMessage>(crate::limits::AGENT_OUTBOX_MAX);
    // REGISTERED is the first message of the link: it is queued before the hub can queue
    // anything else.
    let _ = tx.try_send(MasterMessage::Registered {
        agent_id: agent_id.clone(),
        heartbeat_interval_ms: hub.timers.heartbeat_interval.as_millis() as u64,
    });
    let serial = hub.next_id.fetch_add(1, Ordering::Relaxed);
    hub.connections.lock().insert(
        agent_id.clone(),
        Connection {
            tx: tx.clone(),
            serial,
            peer,
        },
    );
    hub.liveness.lock().connected(&agent_id);
    hub.liveness_changed.notify_one();
    tokio::select! {
        () = write_loop(sink, rx, hub.timers.ping_timeout) => {}
        () = read_loop(&hub, &agent_id, stream, &tx) => {}
        () = async {
            reconcile(&hub, &agent_id, &known, &tx).await;
            std::future::pending::<()>().await
        } => {}
    }
    drop_connection(&hub, &agent_id, serial);
    tracing::info!("agent disconnected");
}

/// Sends what the outbox holds, in order, until the peer fails to take a message within
/// `deadline`.
async fn write_loop(
    mut sink: impl LinkSender,
    mut rx: mpsc::Receiver<MasterMessage>,
    deadline: Duration,
) {
    while let Some(msg) = rx.recv().await {
        if !send_msg(&mut sink, msg, deadline).await {
            tracing::warn!("agent link not writable (closed, or not read for the ping timeout)");
            return;
        }
    }
}

/// Handles what the agent sends until it closes or stays silent past the ping timeout
/// (counted from the last message it sent, whatever the master sends meanwhile).
async fn read_loop(
    hub: &Arc<AgentHub>,
    agent_id: &AgentId,
    mut stream: impl LinkReceiver,
    tx: &mpsc::Sender<MasterMessage>,
) {
    loop {
        let incoming = tokio::time::timeout(hub.timers.ping_timeout, stream.recv()).await;
        match incoming {
            Err(_) => {
                tracing::warn!("agent silent past the ping timeout");
                return;
            }
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %crate::error::chain(&e), "agent message dropped")
            }
            Ok(Some(Ok(msg))) => handle(hub, agent_id, msg, tx).await,
        }
    }
}

fn drop_connection(hub: &AgentHub, agent_id: &AgentId, serial: u64) {
    let mut conns = hub.connections.lock();
    if conns.get(agent_id).map(|c| c.serial) == Some(serial) {
        conns.remove(agent_id);
        hub.liveness
            .lock()
            .disconnected(agent_id, hub.published.clock.wall_ms());
        hub.liveness_changed.notify_one();
    }
}

async fn handle(
    hub: &Arc<AgentHub>,
    agent_id: &AgentId,
    msg: AgentMessage,
    tx: &mpsc::Sender<MasterMessage>,
) {
    match msg {
        AgentMessage::Heartbeat | AgentMessage::Register { .. } => {}
        AgentMessage::StatusUpdate {
            update_id,
            task_id,
            state,
            status,
        } => {
            let owned = hub
                .published
                .snapshot()
                .task(&task_id)
                .map(|t| t.agent_id == *agent_id);
            if owned == Some(false) {
                tracing::warn!(%task_id, "status update for a task of another agent; dropped");
                let _ = tx.try_send(MasterMessage::StatusAck { update_id });
                return;
            }
            // Enqueue in arrival order (the commit queue is FIFO, so updates of one task
            // commit in order), and acknowledge when durable, without waiting here.
            let rx = hub
                .committer
                .enqueue(Command::UpdateTaskStatus {
                    task_id: task_id.clone(),
                    state,
                    status,
                })
                .await;
            let tx = tx.clone();
            tokio::spawn(async move {
                match rx.await {
                    Ok(Ok(_)) => {
                        let _ = tx.send(MasterMessage::StatusAck { update_id }).await;
                    }
                    Ok(Err(CommitError::Rejected(r))) => {
                        // An update the cell cannot take (unknown task, illegal transition) is
                        // acknowledged so the agent stops resending it.
                        tracing::warn!(%task_id, rejection = %r, "status update refused");
                        let _ = tx.send(MasterMessage::StatusAck { update_id }).await;
                    }
                    _ => {} // unavailable: the agent resends
                }
            });
        }
        AgentMessage::FilesReply {
            request_id,
            status,
            body,
        } => {
            if let Some(w) = hub.files.lock().remove(&request_id) {
                let _ = w.send((status, body));
            }
        }
    }
}

/// Reconciles a (re)connected agent with the cell. It awaits room in the outbox for each
/// message, which the link's writer, running meanwhile, makes; it stops when the link ends.
async fn reconcile(
    hub: &Arc<AgentHub>,
    agent_id: &AgentId,
    known: &[TaskId],
    tx: &mpsc::Sender<MasterMessage>,
) {
    let snap = hub.published.snapshot();
    let known: HashSet<&TaskId> = known.iter().collect();
    let mut launch = Vec::new();
    let mut lost = Vec::new();
    let mut kills = Vec::new();
    let grace = Some(hub.timers.kill_grace.as_millis() as u64);
    for t in snap.live_tasks_on(agent_id) {
        match t.state {
            TaskState::Staging if !known.contains(&t.id) => launch.push(t.clone()),
            TaskState::Killing => kills.push((t.id.clone(), grace)),
            TaskState::Staging => {}
            _ if !known.contains(&t.id) => lost.push(t.id.clone()),
            _ => {}
        }
    }
    for id in known {
        let wanted = snap
            .task(id)
            .map(|t| t.agent_id == *agent_id && !t.state.is_terminal())
            .unwrap_or(false);
        if !wanted {
            kills.push((id.clone(), Some(0)));
        }
    }
    for (task_id, grace_ms) in kills {
        if tx
            .send(MasterMessage::Kill { task_id, grace_ms })
            .await
            .is_err()
        {
            return;
        }
    }
    if !launch.is_empty()
        && tx
            .send(MasterMessage::Launch { tasks: launch })
            .await
            .is_err()
    {
        return;
    }
    // Queued one after the other (they commit in groups, in order), awaited afterwards.
    let mut marks = Vec::with_capacity(lost.len());
    for task_id in lost {
        let status = StatusInfo {
            message: Some("the agent does not know this task any more".into()),
            reason: Some("REASON_RECONCILIATION".into()),
            source: Some("SOURCE_MASTER".into()),
            ..StatusInfo::default()
        };
        let command = Command::UpdateTaskStatus {
            task_id,
            state: TaskState::Gone,
            status,
        };
        marks.push(hub.committer.enqueue(command).await);
    }
    for mark in marks {
        if let Ok(Err(e)) = mark.await {
            tracing::warn!(error = %e, "could not mark a lost task gone");
        }
    }
}

/// `GET /files/browse?path=/agents/<agent>/tasks/<task>/<dir>` and
/// `GET /files/read?path=...&offset=N&length=M`: the Mesos files endpoints, proxied to the
/// agent over its connection.
#[derive(Deserialize)]
pub struct FilesQuery {
    path: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    length: Option<u64>,
}

fn split_files_path(path: &str) -> Option<(AgentId, TaskId, String)> {
    let rest = path.trim_start_matches('/').strip_prefix("agents/")?;
    let (agent, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("tasks/")?;
    let (task, file) = match rest.split_once('/') {
        Some((t, f)) => (t, f),
        None => (rest, ""),
    };
    Some((AgentId::new(agent), TaskId::new(task), file.to_string()))
}

/// Checks a `/files` request against the cell before it goes to the agent: both ids must be
/// valid ids (400) and the task must be one the cell placed on that agent (404). The path
/// inside the sandbox is checked by the agent (`shoal_agent::files::open_in_sandbox`, the one
/// check of every `/files` endpoint), which answers 400 for anything outside it.
fn files_target(
    hub: &AgentHub,
    path: &str,
) -> Result<(AgentId, TaskId, String), (StatusCode, String)> {
    let Some((agent, task, file)) = split_files_path(path) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "path must be /agents/<agent_id>/tasks/<task_id>[/<file>]".into(),
        ));
    };
    for (what, id) in [("agent id", agent.as_str()), ("task id", task.as_str())] {
        if let Err(shoal_core::Rejection::Invalid(why)) = shoal_core::cell::validate_id(what, id) {
            return Err((StatusCode::BAD_REQUEST, why));
        }
    }
    match hub.published.snapshot().task(&task) {
        Some(t) if t.agent_id == agent => Ok((agent, task, file)),
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("agent {agent} has no task {task}"),
        )),
    }
}

async fn files_op(hub: Arc<AgentHub>, op: &str, q: FilesQuery) -> Response {
    let (agent, task, file) = match files_target(&hub, &q.path) {
        Ok(target) => target,
        Err((status, message)) => {
            let error = if status == StatusCode::NOT_FOUND {
                "not_found"
            } else {
                "invalid"
            };
            let body = json!({"error": error, "message": message});
            return (status, axum::Json(body)).into_response();
        }
    };
    let (status, body) = hub
        .files(&agent, op, &task, &file, q.offset.unwrap_or(0), q.length)
        .await;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, axum::Json(body)).into_response()
}

pub async fn files_browse(
    State(hub): State<Arc<AgentHub>>,
    Query(q): Query<FilesQuery>,
) -> Response {
    files_op(hub, "browse", q).await
}

pub async fn files_read(State(hub): State<Arc<AgentHub>>, Query(q): Query<FilesQuery>) -> Response {
    files_op(hub, "read", q).await
}

/// `POST /api/shoal/v1/agents/{id}/heartbeat`: an agent without a live connection (a
/// simulated one) says it is alive, which keeps it from being marked unreachable.
pub async fn heartbeat(
    State(hub): State<Arc<AgentHub>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let agent = AgentId::new(&id);
    if hub.published.snapshot().agent(&agent).is_none() {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not_found", "message": format!("agent {id}")})),
        )
            .into_response();
    }
    hub.liveness
        .lock()
        .heartbeat(&agent, hub.published.clock.wall_ms());
    StatusCode::ACCEPTED.into_response()
}

pub fn router(hub: Arc<AgentHub>) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/shoal/v1/agents/{id}/heartbeat",
            axum::routing::post(heartbeat),
        )
        .route("/api/shoal/v1/agent/connect", axum::routing::get(connect))
        .route("/files/browse", axum::routing::get(files_browse))
        .route("/files/read", axum::routing::get(files_read))
        .with_state(hub)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_core::{
        AgentRegistration, Claim, ClaimId, CommitMode, ConflictCheck, Placement, ResourceSet,
        TaskSpec,
    };

    use super::*;
    use crate::link::memory_link;

    async fn next(agent: &mut crate::link::MemoryAgent) -> MasterMessage {
        tokio::time::timeout(Duration::from_secs(10), agent.recv())
            .await
            .expect("a message within 10 s")
            .expect("the link is open")
    }

    /// The hub with no socket: an agent registers over an in-memory link, gets the launch of
    /// a task a claim placed on it, and its status update is committed and acknowledged.
    #[tokio::test]
    async fn an_agent_registers_and_gets_its_launch_over_an_in_memory_link() {
        let clock = Arc::new(shoal_core::clock::ManualClock::new(1_000));
        let core = crate::MasterCore::start_with(
            Arc::new(crate::MemStore::new()),
            crate::CommitConfig::default(),
            AgentTimers::default(),
            clock,
        )
        .unwrap();
        let (link, mut agent) = memory_link(16);
        tokio::spawn(serve_agent(core.agents.clone(), link, None));

        let registration = AgentRegistration {
            agent_id: None,
            hostname: "h1".into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse("cpus:4;mem:1024").unwrap(),
        };
        assert!(
            agent
                .send(AgentMessage::Register {
                    registration,
                    known: vec![],
                })
                .await
        );
        let MasterMessage::Registered { agent_id, .. } = next(&mut agent).await else {
            panic!("REGISTERED comes first");
        };
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !core.agents.is_connected(&agent_id) {
            assert!(std::time::Instant::now() < until, "the link is registered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let task_id = TaskId::new("t1");
        let claim = Claim {
            id: ClaimId::new("c1"),
            role: "*".into(),
            owner: "test".into(),
            snapshot_version: core.published.snapshot().version(),
            mode: CommitMode::default(),
            check: ConflictCheck::default(),
            placements: vec![Placement {
                task_id: task_id.clone(),
                name: "t1".into(),
                agent_id: agent_id.clone(),
                resources: ResourceSet::parse("cpus:1;mem:64").unwrap(),
                spec: TaskSpec::empty(),
            }],
            priority: 0,
            evictions: vec![],
        };
        core.committer.submit(Command::Claim(claim)).await.unwrap();
        let tasks = loop {
            if let MasterMessage::Launch { tasks } = next(&mut agent).await {
                break tasks;
            }
        };
        assert_eq!(tasks.len(), 1);
        assert_eq!((&tasks[0].id, &tasks[0].agent_id), (&task_id, &agent_id));

        let update = AgentMessage::StatusUpdate {
            update_id: 7,
            task_id: task_id.clone(),
            state: TaskState::Running,
            status: StatusInfo::default(),
        };
        assert!(agent.send(update).await);
        loop {
            if let MasterMessage::StatusAck { update_id } = next(&mut agent).await {
                assert_eq!(update_id, 7);
                break;
            }
        }
        let snap = core.published.snapshot();
        assert_eq!(
            snap.task(&task_id).map(|t| t.state),
            Some(TaskState::Running)
        );
    }

    #[test]
    fn files_paths() {
        let (a, t, f) = split_files_path("/agents/a1/tasks/t1/stdout").unwrap();
        assert_eq!((a.as_str(), t.as_str(), f.as_str()), ("a1", "t1", "stdout"));
        let (_, _, f) = split_files_path("/agents/a1/tasks/t1").unwrap();
        assert_eq!(f, "");
        assert!(split_files_path("/etc/passwd").is_none());
    }
}
