//! A client for Shoal's native API (see `docs/native-api.md`).
//!
//! ```no_run
//! # async fn f() -> Result<(), shoal_client::ClientError> {
//! let client = shoal_client::Client::new("http://127.0.0.1:5050")?;
//! let mirror = shoal_client::Mirror::start(client.clone()).await?;
//! let cell = mirror.snapshot(); // a consistent view; decide placements on it, then claim
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
/// The native API's bodies, defined once in the core for the master and this client.
pub use shoal_core::wire::{ClaimAnswer, ClaimRequest, PlacementRequest};
use shoal_core::wire::{RoleRequest, StatusRequest};
use shoal_core::{
    Agent, AgentId, AgentRegistration, CellConfig, Quota, ResourceSet, Role, StatusInfo, Task,
    TaskState, Version,
};
use shoal_sched::{Cell, LogEntry};

mod verbs;

/// TaskInfo and Resource, typed and in Mesos's JSON: what [`command_task`] writes with.
pub use shoal_mesos as mesos;

pub use verbs::VERB_REQUEST_TIMEOUT_SECS;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The master answered with an error status.
    #[error("{status}: {message}")]
    Api {
        status: u16,
        kind: String,
        message: String,
    },
    /// The watch cannot resume from that version any more: take a new snapshot.
    #[error("version {0} was compacted away: take a new snapshot")]
    Gone(Version),
    #[error("bad answer from the master: {0}")]
    Decode(String),
    /// A request body could not be written as JSON.
    #[error("cannot write the request: {0}")]
    Encode(String),
}

/// The whole state of a cell, as `GET /api/shoal/v1/state` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub cell_id: String,
    pub version: Version,
    pub log_floor: Version,
    pub agents: Vec<Agent>,
    pub tasks: Vec<Task>,
    pub roles: Vec<Role>,
    /// What garbage collection has forgotten (masters before it say nothing: zeros).
    #[serde(default)]
    pub collected: shoal_core::gc::CollectedCounts,
    /// Terminal tasks the cell still holds.
    #[serde(default)]
    pub completed_tasks: usize,
}

impl State {
    /// The state as a [`Cell`], on which placements can be decided with the core's own code.
    pub fn into_cell(self) -> Cell {
        let collected = self.collected;
        let mut cell = Cell::from_records(
            CellConfig {
                cell_id: self.cell_id.into(),
            },
            self.version,
            self.agents,
            self.tasks,
            self.roles,
            Vec::new(),
        );
        cell.restore_collected(collected);
        cell
    }
}

/// Builds a Mesos `TaskInfo` (JSON) running a shell command with the given resources
/// ([`mesos::task_info::command_task`] for the typed one).
pub fn command_task(task_id: &str, name: &str, resources: &ResourceSet, shell: &str) -> Json {
    mesos::task_info::to_json(&mesos::task_info::command_task(
        task_id, name, resources, shell,
    ))
}

/// Writes resources as Mesos `Resource` messages (JSON).
pub fn resources_json(set: &ResourceSet) -> Json {
    mesos::resources::to_json(set)
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(address: &str) -> Result<Client, ClientError> {
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", address.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            // The master closes a connection idle for 15 s: let go of it first, so a request
            // never goes out on a connection the master is closing.
            .pool_idle_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client { http, base })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let code = status.as_u16();
        let body: Json = resp.json().await.unwrap_or(Json::Null);
        Err(ClientError::Api {
            status: code,
            kind: body["error"].as_str().unwrap_or("").to_string(),
            message: body["message"]
                .as_str()
                .unwrap_or(status.canonical_reason().unwrap_or(""))
                .to_string(),
        })
    }

    pub async fn state(&self) -> Result<State, ClientError> {
        let resp = Self::check(
            self.http
                .get(self.url("/api/shoal/v1/state"))
                .send()
                .await?,
        )
        .await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    pub async fn state_json(&self, tasks: bool) -> Result<Json, ClientError> {
        let resp = Self::check(
            self.http
                .get(self.url(&format!("/api/shoal/v1/state?tasks={tasks}")))
                .send()
                .await?,
        )
        .await?;
        Ok(resp.json().await?)
    }

    /// Submits a claim. Conflicts are not errors: the answer says, per placement, what
    /// committed and why the rest did not.
    pub async fn claim(&self, claim: &ClaimRequest<'_>) -> Result<ClaimAnswer, ClientError> {
        self.claim_with(claim).await
    }

    /// Submits a claim given as any value that serializes as a [`ClaimRequest`] does — for
    /// schedulers that write their TaskInfos with types of their own instead of a `Value`.
    pub async fn claim_with<T: Serialize + ?Sized>(
        &self,
        claim: &T,
    ) -> Result<ClaimAnswer, ClientError> {
        let resp = self
            .http
            .post(self.url("/api/shoal/v1/claims"))
            .json(claim)
            .send()
            .await?;
        if resp.status().as_u16() == 409 {
            let bytes = resp.bytes().await?;
            if let Ok(a) = serde_json::from_slice::<ClaimAnswer>(&bytes) {
                return Ok(a);
            }
            let body: Json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
            return Err(ClientError::Api {
                status: 409,
                kind: body["error"].as_str().unwrap_or("").into(),
                message: body["message"].as_str().unwrap_or("").into(),
            });
        }
        let resp = Self::check(resp).await?;
        Ok(resp.json().await?)
    }

    pub async fn kill(&self, task_id: &str) -> Result<(), ClientError> {
        Self::check(
            self.http
                .post(self.url(&format!("/api/shoal/v1/tasks/{task_id}/kill")))
                .send()
                .await?,
        )
        .await?;
        Ok(())
    }

    pub async fn task(&self, task_id: &str) -> Result<Task, ClientError> {
        Ok(Self::check(
            self.http
                .get(self.url(&format!("/api/shoal/v1/tasks/{task_id}")))
                .send()
                .await?,
        )
        .await?
        .json()
        .await?)
    }

    pub async fn agent(&self, agent_id: &str) -> Result<Agent, ClientError> {
        Ok(Self::check(
            self.http
                .get(self.url(&format!("/api/shoal/v1/agents/{agent_id}")))
                .send()
                .await?,
        )
        .await?
        .json()
        .await?)
    }

    /// Registers an agent (or re-registers one with its id); returns its id.
    pub async fn register_agent(&self, reg: &AgentRegistration) -> Result<AgentId, ClientError> {
        let resp = Self::check(
            self.http
                .post(self.url("/api/shoal/v1/agents"))
                .json(reg)
                .send()
                .await?,
        )
        .await?;
        let v: Json = resp.json().await?;
        v["agent_id"]
            .as_str()
            .map(AgentId::new)
            .ok_or_else(|| ClientError::Decode("no agent_id".into()))
    }

    /// Reports a task's status as its agent.
    pub async fn task_status(
        &self,
        agent_id: &str,
        task_id: &str,
        state: TaskState,
        status: &StatusInfo,
    ) -> Result<(), ClientError> {
        let body = StatusRequest {
            task_id: task_id.to_string(),
            state,
            status: status.clone(),
        };
        Self::check(
            self.http
                .post(self.url(&format!("/api/shoal/v1/agents/{agent_id}/status")))
                .json(&body)
                .send()
                .await?,
        )
        .await?;
        Ok(())
    }

    /// Sets a role's weight and quota.
    pub async fn set_role(
        &self,
        name: &str,
        weight: f64,
        guarantee: &ResourceSet,
        limit: Option<&ResourceSet>,
    ) -> Result<(), ClientError> {
        self.configure_role(name, weight, guarantee, limit, true)
            .await
    }

    /// Like [`Client::set_role`], and whether claims may evict the role's tasks.
    pub async fn configure_role(
        &self,
        name: &str,
        weight: f64,
        guarantee: &ResourceSet,
        limit: Option<&ResourceSet>,
        preemptible: bool,
    ) -> Result<(), ClientError> {
        let body = RoleRequest {
            weight,
            quota: Quota {
                guarantee: guarantee.clone(),
                limit: limit.cloned(),
            },
            preemptible,
        };
        Self::check(
            self.http
                .put(self.url(&format!("/api/shoal/v1/roles/{name}")))
                .json(&body)
                .send()
                .await?,
        )
        .await?;
        Ok(())
    }

    /// The log entries from version `from` on: first what is stored, then live commits.
    pub async fn watch(
        &self,
        from: Version,
    ) -> Result<impl Stream<Item = Result<LogEntry, ClientError>>, ClientError> {
        let resp = self
            .http
            .get(self.url(&format!("/api/shoal/v1/watch?from={from}")))
            .send()
            .await?;
        if resp.status().as_u16() == 410 {
            return Err(ClientError::Gone(from));
        }
        let resp = Self::check(resp).await?;
        let state = (
            Box::pin(resp.bytes_stream()),
            Vec::<u8>::new(),
            VecDeque::new(),
            false,
        );
        Ok(futures::stream::unfold(
            state,
            |(mut chunks, mut buf, mut queue, done)| async move {
                loop {
                    if let Some(item) = queue.pop_front() {
                        return Some((item, (chunks, buf, queue, done)));
                    }
                    if done {
                        return None;
                    }
                    match chunks.next().await {
                        Some(Ok(chunk)) => {
                            buf.extend_from_slice(&chunk);
                            parse_lines(&mut buf, &mut queue);
                        }
                        Some(Err(e)) => {
                            return Some((Err(ClientError::Http(e)), (chunks, buf, queue, true)))
                        }
                        None => return None,
                    }
                }
            },
        ))
    }
}

/// Moves every complete line of `buf` into `out` as a parsed entry; blank lines are
/// keep-alives.
fn parse_lines(buf: &mut Vec<u8>, out: &mut VecDeque<Result<LogEntry, ClientError>>) {
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        let line = &line[..line.len() - 1];
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        out.push_back(serde_json::from_slice(line).map_err(|e| ClientError::Decode(e.to_string())));
    }
}

/// A local mirror of the cell, kept current by a watch: the reflector a native scheduler
/// reads from. It folds the master's log entries with the core's own `apply`, so it is the
/// same state the master has, as of its version.
#[derive(Clone)]
pub struct Mirror {
    cell: Arc<Mutex<Cell>>,
    changed: Arc<tokio::sync::Notify>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Mirror {
    /// Takes a snapshot and follows the watch from there, re-snapshotting when the master
    /// says the version was compacted away and reconnecting when the stream ends.
    pub async fn start(client: Client) -> Result<Mirror, ClientError> {
        let cell = Arc::new(Mutex::new(client.state().await?.into_cell()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (c, n) = (cell.clone(), changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let from = c.lock().version() + 1;
                match client.watch(from).await {
                    Ok(stream) => {
                        futures::pin_mut!(stream);
                        while let Some(item) = stream.next().await {
                            let Ok(entry) = item else { break };
                            let mut cell = c.lock();
                            if entry.version == cell.version() + 1 {
                                cell.apply(&entry);
                            }
                            drop(cell);
                            n.notify_waiters();
                        }
                    }
                    Err(ClientError::Gone(_)) => {
                        if let Ok(state) = client.state().await {
                            *c.lock() = state.into_cell();
                            n.notify_waiters();
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "watch failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Mirror {
            cell,
            changed,
            task: Arc::new(task),
        })
    }

    /// A consistent snapshot (an O(1) clone).
    pub fn snapshot(&self) -> Cell {
        self.cell.lock().clone()
    }

    pub fn version(&self) -> Version {
        self.cell.lock().version()
    }

    /// Waits until the mirror reached `version` (or `deadline` passed); returns whether it did.
    pub async fn wait_for(&self, version: Version, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.changed.notified();
            if self.version() >= version {
                return true;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.version() >= version;
            }
        }
    }
}
