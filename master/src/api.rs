//! The native API (HTTP/JSON) for schedulers and the agent-facing API. See
//! `docs/native-api.md` for the reference.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_core::wire::{ClaimAnswer, ClaimRequest, RoleRequest, StatusRequest};
use shoal_core::{
    AgentId, AgentRegistration, AgentState, Claim, ClaimId, Placement, ResourceSet, TaskId,
    TaskSpec, Version,
};
use shoal_sched::Reply;
use tokio::sync::broadcast::error::RecvError;

use crate::committer::{CommitError, Committer, Published};
use crate::limits;
use shoal_mesos::raw;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub committer: Committer,
    pub published: Arc<Published>,
}

pub fn router(state: ApiState) -> Router {
    router_with_watchers(state, Arc::new(Watchers::new(limits::WATCHERS_MAX)))
}

/// The native API, with watch streams counted by `watchers`.
pub fn router_with_watchers(state: ApiState, watchers: Arc<Watchers>) -> Router {
    Router::new()
        .route("/api/shoal/v1/state", get(get_state))
        .route(
            "/api/shoal/v1/watch",
            get(watch).layer(axum::Extension(watchers)),
        )
        .route("/api/shoal/v1/claims", post(post_claim))
        .route("/api/shoal/v1/claims/{id}", get(get_claim))
        .route("/api/shoal/v1/tasks/{id}", get(get_task))
        .route("/api/shoal/v1/tasks/{id}/kill", post(kill_task))
        .route(
            "/api/shoal/v1/agents",
            get(list_agents).post(register_agent),
        )
        .route("/api/shoal/v1/agents/{id}", get(get_agent))
        .route(
            "/api/shoal/v1/agents/{id}/resources",
            put(update_agent_resources),
        )
        .route("/api/shoal/v1/agents/{id}/status", post(agent_status))
        .route("/api/shoal/v1/agents/{id}/gone", post(mark_agent_gone))
        .route(
            "/api/shoal/v1/agents/{id}/unreachable",
            post(mark_agent_unreachable),
        )
        .route("/api/shoal/v1/roles", get(list_roles))
        .route("/api/shoal/v1/roles/{name}", get(get_role).put(put_role))
        .route("/api/shoal/v1/stats", get(stats))
        .layer(axum::extract::DefaultBodyLimit::max(
            limits::REQUEST_BODY_BYTES_MAX,
        ))
        .with_state(state)
}

/// An error answer: `{"error": kind, "message": text}` with the HTTP status Mesos uses.
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: message.into(),
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> ApiError {
        let kind = match &e {
            CommitError::Rejected(shoal_core::Rejection::Invalid(_)) => "invalid",
            CommitError::Rejected(shoal_core::Rejection::NotFound(_)) => "not_found",
            CommitError::Rejected(shoal_core::Rejection::Conflict(_)) => "conflict",
            CommitError::Rejected(shoal_core::Rejection::Forbidden(_)) => "forbidden",
            CommitError::Unavailable(_) => "unavailable",
        };
        let message = match &e {
            CommitError::Rejected(r) => match r {
                shoal_core::Rejection::Invalid(m)
                | shoal_core::Rejection::NotFound(m)
                | shoal_core::Rejection::Conflict(m)
                | shoal_core::Rejection::Forbidden(m) => m.clone(),
            },
            CommitError::Unavailable(m) => m.clone(),
        };
        ApiError {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.kind, "message": self.message})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body with a 400 (not axum's 422) for anything malformed.
pub fn parse_body<'a, T: Deserialize<'a>>(body: &'a Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn json_ok<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: e.to_string(),
        }
        .into_response(),
    }
}

#[derive(Deserialize)]
struct StateQuery {
    /// Leave tasks out (`?tasks=false`) for a quick view of a large cell.
    #[serde(default)]
    tasks: Option<bool>,
}

async fn get_state(State(s): State<ApiState>, Query(q): Query<StateQuery>) -> Response {
    let snap = s.published.snapshot();
    let floor = s
        .published
        .log_floor
        .load(std::sync::atomic::Ordering::Acquire);
    let with_tasks = q.tasks.unwrap_or(true);
    // Serializing a large cell takes a while: do it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        let mut agents: Vec<_> = snap.agents().collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        let roles: Vec<_> = snap.roles().collect();
        let tasks: Vec<_> = if with_tasks {
            let mut t: Vec<_> = snap.tasks().collect();
            t.sort_by(|a, b| a.id.cmp(&b.id));
            t
        } else {
            Vec::new()
        };
        serde_json::to_vec(&json!({
            "cell_id": snap.cell_id(),
            "version": snap.version(),
            "log_floor": floor,
            "agents": agents,
            "tasks": tasks,
            "roles": roles,
            // Garbage collection: what the cell has forgotten, and the terminal tasks it
            // still holds (see `shoal_core::gc`).
            "collected": snap.collected(),
            "completed_tasks": snap.completed_task_count(),
        }))
    })
    .await;
    match body {
        Ok(Ok(b)) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        _ => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "internal",
            message: "snapshot failed".into(),
        }
        .into_response(),
    }
}

/// The watch streams open now, and how many may be (more get 503).
pub struct Watchers {
    open: AtomicUsize,
    max: AtomicUsize,
}

impl Watchers {
    pub fn new(max: usize) -> Watchers {
        Watchers {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> Option<WatcherSlot> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(WatcherSlot(self.clone()))
    }
}

/// One open watch stream; dropping it frees the place.
struct WatcherSlot(Arc<Watchers>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Deserialize)]
struct WatchQuery {
    from: Version,
}

/// A watch stream's buffer: lines wait in it with their share of the byte budget.
struct WatchSender {
    tx: tokio::sync::mpsc::Sender<(Bytes, tokio::sync::OwnedSemaphorePermit)>,
    room: Arc<tokio::sync::Semaphore>,
}

impl WatchSender {
    /// Queues a line; false when the client is gone or has not made room for it within
    /// [`limits::WATCH_SEND_STALL_SECS`] (a client that does not read is dropped rather
    /// than buffered for).
    async fn send(&self, line: Bytes) -> bool {
        let n = line.len().clamp(1, limits::WATCH_STREAM_BUFFER_BYTES) as u32;
        let queued = async {
            let permit = self.room.clone().acquire_many_owned(n).await.ok()?;
            self.tx.send((line, permit)).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(limits::WATCH_SEND_STALL_SECS), queued).await,
            Ok(Some(()))
        )
    }
}

/// A stream of log entries from `from` on, one JSON object per line, catching up from the
/// store's log and then following live commits. 410 when `from` is below the log floor, 503
/// when [`limits::WATCHERS_MAX`] (or `--max-watchers`) streams are open.
async fn watch(
    State(s): State<ApiState>,
    axum::Extension(watchers): axum::Extension<Arc<Watchers>>,
    conn: Option<axum::Extension<crate::http::ConnectionHandle>>,
    Query(q): Query<WatchQuery>,
) -> Response {
    let floor = s
        .published
        .log_floor
        .load(std::sync::atomic::Ordering::Acquire);
    let current = s.published.snapshot().version();
    if q.from < floor.max(1) {
        return ApiError {
            status: StatusCode::GONE,
            kind: "gone",
            message: format!(
                "version {} is below the log floor {floor}: take a new snapshot",
                q.from
            ),
        }
        .into_response();
    }
    if q.from > current + 1 {
        return ApiError::bad_request(format!(
            "version {} is ahead of the cell ({current})",
            q.from
        ))
        .into_response();
    }
    let Some(slot) = watchers.enter() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            axum::Json(json!({
                "error": "unavailable",
                "message": format!("{} watch streams are open: the most there may be", watchers.open()),
            })),
        )
            .into_response();
    };
    let live = s.published.entries.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(limits::WATCH_STREAM_BUFFER);
    let tx = WatchSender {
        tx,
        room: Arc::new(tokio::sync::Semaphore::new(
            limits::WATCH_STREAM_BUFFER_BYTES,
        )),
    };
    let published = s.published.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let (next, stalled) = stream_entries(&published, q.from, live, tx).await;
        tracing::debug!(from = q.from, next, stalled, "watch stream ends");
        if stalled {
            // What the client has not read is still in its connection's buffers: close it,
            // or the connection would wait on that client forever.
            if let Some(axum::Extension(conn)) = conn {
                conn.close();
            }
        }
    });
    let lines = futures::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        |(line, _permit)| Ok::<_, std::io::Error>(line),
    );
    let body = Body::from_stream(lines);
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Sends the entries from `from` on to a watcher until it stalls or the commit path ends:
/// caught up from the store at first and after a gap, otherwise from the live entries, which
/// every watcher shares (a slow watcher holds no store batch); a blank line after each
/// keep-alive period without one. Returns the next version the watcher would have been sent
/// and whether it stopped reading.
async fn stream_entries(
    published: &Published,
    from: Version,
    mut live: tokio::sync::broadcast::Receiver<Arc<shoal_sched::LogEntry>>,
    tx: WatchSender,
) -> (Version, bool) {
    let mut next = from;
    let mut catch_up = true;
    loop {
        while catch_up && next <= published.snapshot().version() {
            let store = published.store.clone();
            let from = next;
            let read =
                tokio::task::spawn_blocking(move || store.read_log(from, limits::WATCH_READ_BATCH))
                    .await;
            let entries = match read {
                Ok(Ok(e)) if !e.is_empty() && e[0].version == from => e,
                _ => return (next, false), // compacted under us or store error: the client resumes.
            };
            for e in entries {
                next = e.version + 1;
                if !tx.send(line(&e)).await {
                    return (next, true);
                }
            }
        }
        catch_up = false;
        let wait = tokio::time::timeout(
            Duration::from_secs(limits::WATCH_KEEPALIVE_SECS),
            live.recv(),
        )
        .await;
        let sent = match wait {
            Err(_) => tx.send(Bytes::from_static(b"\n")).await,
            Ok(Ok(e)) if e.version == next => {
                next += 1;
                tx.send(line(&e)).await
            }
            Ok(Ok(e)) if e.version < next => continue, // read from the store already
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {
                catch_up = true;
                continue;
            }
            Ok(Err(RecvError::Closed)) => return (next, false),
        };
        if !sent {
            return (next, true);
        }
    }
}

fn line(e: &shoal_sched::LogEntry) -> Bytes {
    let mut v = serde_json::to_vec(e).expect("entries serialize");
    v.push(b'\n');
    Bytes::from(v)
}

/// Turns a claim request into the core's claim (reading each TaskInfo).
pub fn claim_from_request(req: ClaimRequest<'_>) -> ApiResult<Claim> {
    if req.placements.len() > shoal_core::limits::CLAIM_PLACEMENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "a claim may carry at most {} placements",
            shoal_core::limits::CLAIM_PLACEMENTS_MAX
        )));
    }
    let mut placements = Vec::with_capacity(req.placements.len());
    for (i, p) in req.placements.into_iter().enumerate() {
        let (parts, spec) = raw::task_info_from_raw(&p.task_info)
            .map_err(|e| ApiError::bad_request(format!("placements[{i}]: {e}")))?;
        let agent_id = p
            .agent_id
            .or(parts.agent_id)
            .ok_or_else(|| ApiError::bad_request(format!("placements[{i}]: no agent_id")))?;
        placements.push(Placement {
            task_id: TaskId::new(&parts.task_id),
            name: parts.name,
            agent_id: AgentId::new(&agent_id),
            resources: parts.resources,
            spec: TaskSpec::from_canonical(spec),
        });
    }
    Ok(Claim {
        id: ClaimId::new(&req.claim_id),
        role: req.role,
        owner: req.owner,
        snapshot_version: req.snapshot_version,
        mode: req.mode,
        check: req.check,
        placements,
        priority: req.priority,
        evictions: req.evictions.iter().map(TaskId::new).collect(),
    })
}

async fn post_claim(State(s): State<ApiState>, body: Bytes) -> Response {
    let result: ApiResult<Response> = async {
        let req: ClaimRequest = parse_body(&body)?;
        let claim = claim_from_request(req)?;
        let reply = s
            .committer
            .submit(shoal_core::Command::Claim(claim))
            .await?;
        let current_version = s.published.snapshot().version();
        let Reply::Claim { outcome } = reply else {
            return Err(ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "internal",
                message: "unexpected reply".into(),
            });
        };
        let status = if outcome.committed_version.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        Ok(json_ok(
            status,
            &ClaimAnswer {
                outcome,
                current_version,
            },
        ))
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

async fn get_claim(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.published.snapshot().claim(&ClaimId::new(&id)) {
        Some(c) => json_ok(StatusCode::OK, c),
        None => ApiError::not_found(format!("claim {id}")).into_response(),
    }
}

async fn get_task(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.published.snapshot().task(&TaskId::new(&id)) {
        Some(t) => json_ok(StatusCode::OK, t),
        None => ApiError::not_found(format!("task {id}")).into_response(),
    }
}

async fn kill_task(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s
        .committer
        .submit(shoal_core::Command::KillTask {
            task_id: TaskId::new(&id),
        })
        .await
    {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn list_agents(State(s): State<ApiState>) -> Response {
    let snap = s.published.snapshot();
    let mut agents: Vec<_> = snap.agents().collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    json_ok(
        StatusCode::OK,
        &json!({"version": snap.version(), "agents": agents}),
    )
}

async fn get_agent(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.published.snapshot().agent(&AgentId::new(&id)) {
        Some(a) => json_ok(StatusCode::OK, a),
        None => ApiError::not_found(format!("agent {id}")).into_response(),
    }
}

async fn register_agent(State(s): State<ApiState>, body: Bytes) -> Response {
    let result: ApiResult<Response> = async {
        let reg: AgentRegistration = parse_body(&body)?;
        let reply = s
            .committer
            .submit(shoal_core::Command::RegisterAgent(reg))
            .await?;
        Ok(json_ok(StatusCode::OK, &reply))
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

#[derive(Deserialize)]
struct ResourcesBody {
    total: ResourceSet,
}

async fn update_agent_resources(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result: ApiResult<Response> = async {
        let b: ResourcesBody = parse_body(&body)?;
        s.committer
            .submit(shoal_core::Command::UpdateAgentResources {
                agent_id: AgentId::new(&id),
                total: b.total,
            })
            .await?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

async fn agent_status(State(s): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    let result: ApiResult<Response> = async {
        let b: StatusRequest = parse_body(&body)?;
        let task_id = TaskId::new(&b.task_id);
        let snap = s.published.snapshot();
        match snap.task(&task_id) {
            Some(t) if t.agent_id.as_str() != id => {
                return Err(ApiError::bad_request(format!(
                    "task {} is not on agent {id}",
                    b.task_id
                )));
            }
            _ => {}
        }
        s.committer
            .submit(shoal_core::Command::UpdateTaskStatus {
                task_id,
                state: b.state,
                status: b.status,
            })
            .await?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

async fn set_agent_state(s: &ApiState, id: String, state: AgentState) -> Response {
    match s
        .committer
        .submit(shoal_core::Command::SetAgentState {
            agent_id: AgentId::new(&id),
            state,
        })
        .await
    {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn mark_agent_gone(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    set_agent_state(&s, id, AgentState::Gone).await
}

async fn mark_agent_unreachable(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    set_agent_state(&s, id, AgentState::Unreachable).await
}

async fn list_roles(State(s): State<ApiState>) -> Response {
    let snap = s.published.snapshot();
    let roles: Vec<_> = snap.roles().collect();
    json_ok(StatusCode::OK, &json!({"roles": roles}))
}

async fn get_role(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    match s.published.snapshot().role(&name) {
        Some(r) => json_ok(StatusCode::OK, r),
        None => ApiError::not_found(format!("role {name}")).into_response(),
    }
}

async fn put_role(State(s): State<ApiState>, Path(name): Path<String>, body: Bytes) -> Response {
    let result: ApiResult<Response> = async {
        let b: RoleRequest = parse_body(&body)?;
        s.committer
            .submit(shoal_core::Command::ConfigureRole {
                name,
                weight: b.weight,
                quota: b.quota,
                preemptible: b.preemptible,
            })
            .await?;
        Ok(StatusCode::ACCEPTED.into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

async fn stats(State(s): State<ApiState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &s.published.stats;
    let snap = s.published.snapshot();
    json_ok(
        StatusCode::OK,
        &json!({
            "version": snap.version(),
            "agents": snap.agent_count(),
            "tasks": snap.task_count(),
            "commit_groups": st.groups.load(Relaxed),
            "commands": st.commands.load(Relaxed),
            "syncs": st.syncs.load(Relaxed),
        }),
    )
}
