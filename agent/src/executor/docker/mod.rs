//! The Docker executor: runs each task in a Docker container (Docker Engine API via bollard).
//!
//! * Images present locally are used as they are (no lookup first: the create
//!   call tells when one is missing); missing ones (or all, with
//!   `force_pull`) are pulled; a failed pull of a missing image ends the task
//!   with `Failed { reason: ImageMissing }`.
//! * Containers carry the labels `shoal.managed=true`, `shoal.agent_id`,
//!   `shoal.task_id`, `shoal.sandbox` (+ group, kill grace and health check),
//!   which is all that [`Executor::recover`] needs: containers are found again by
//!   label, and only those of this executor's `agent_id` are recovered.
//! * They also carry the executor's state dir (`shoal.state_dir`), its recovery
//!   timeout and the agent's mount namespace. While an executor runs it touches
//!   `<state_dir>/alive` (see the `heartbeat` module). At recovery and at every gc,
//!   a container of another agent on this host (same mount namespace, so the path
//!   means the same) is removed when that agent's heartbeat file is gone (its work
//!   dir was removed) or stale beyond its recovery timeout (it never came back), or
//!   when it names this executor's own state dir under another agent id; a container
//!   of a live agent with another work dir is never touched.
//! * The container's stdout/stderr are copied from the Docker log into the
//!   sandbox files `stdout` and `stderr`. After a restart the copy resumes
//!   where it stopped: the log is read again from the start and the bytes
//!   already in each file are skipped (the file length is the offset).
//! * Kill: SIGTERM, SIGKILL after the grace period. A kill request is also
//!   recorded in `<state_dir>/killed/<task>` so that a task killed just before
//!   an agent crash is still reported as `Killed`.
//! * Ended containers stay (for `docker logs`/inspection) until [`Executor::gc`].
//! * Groups: the first container of a group owns the network namespace
//!   (its network and port mappings apply); later members use
//!   `container:<first>` and must not map ports.
//! * HTTP/TCP health checks are made from a thread that joined the container's
//!   network namespace (to `127.0.0.1:port`); command checks use `docker exec`.
//! * The sandbox is not mounted into the container (only the logs land there).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use shoal_core::clock::{SharedClock, SystemClock};

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use tokio::sync::{mpsc, watch};

use super::heartbeat::{self, Heartbeat};
use super::util::{self, escape_id};
use super::{
    group_kills_peers, AgentError, Executor, ExecutorEvent, FailReason, GcReport, HealthCheckSpec,
    LaunchSpec, RecoveredTask, TaskUpdate,
};
use super::{Control, Entry};

/// The image, the container's configuration, its creation and start.
mod create;
/// Other agents' containers that lost their owner.
mod orphans;
/// A started container until it ends: exit, log, kill signals, health probes.
mod running;

use create::run_new;
use running::{classify, copy_logs_once, is_running, watch_container};

const LABEL_MANAGED: &str = "shoal.managed";
const LABEL_AGENT: &str = "shoal.agent_id";
const LABEL_TASK: &str = "shoal.task_id";
const LABEL_SANDBOX: &str = "shoal.sandbox";
const LABEL_GROUP: &str = "shoal.group";
const LABEL_GROUP_OWNER: &str = "shoal.group_owner";
const LABEL_GRACE: &str = "shoal.kill_grace_ms";
const LABEL_HEALTH: &str = "shoal.health_check";
const LABEL_STATE_DIR: &str = "shoal.state_dir";
const LABEL_RECOVERY: &str = "shoal.recovery_timeout_ms";
const LABEL_MNT_NS: &str = "shoal.mnt_ns";

/// Configuration of a [`DockerExecutor`].
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Docker daemon socket. Default `/var/run/docker.sock`.
    pub socket: String,
    /// Identifies this agent's containers (label `shoal.agent_id`); recovery
    /// and gc only look at containers with this id.
    pub agent_id: String,
    /// Small per-task markers (kill requests) that must survive agent restarts.
    pub state_dir: PathBuf,
    /// Host address that mapped ports are bound to. Default `127.0.0.1`.
    pub bind_ip: String,
    /// Container names are `<prefix>-<task id>-<hash>`. Default `shoal`.
    pub name_prefix: String,
    /// Give up an image pull after this long. Default 10 minutes.
    pub pull_timeout: Duration,
    /// Another agent's containers are removed once its heartbeat file is older than
    /// this (zero: never); written on each container as a label. Default 15 minutes.
    pub recovery_timeout: Duration,
    /// Where the executor reads time. Default the system's clocks.
    pub clock: SharedClock,
}

impl DockerConfig {
    pub fn new(agent_id: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        DockerConfig {
            socket: "/var/run/docker.sock".into(),
            agent_id: agent_id.into(),
            state_dir: state_dir.into(),
            bind_ip: "127.0.0.1".into(),
            name_prefix: "shoal".into(),
            pull_timeout: Duration::from_secs(600),
            recovery_timeout: Duration::from_secs(heartbeat::RECOVERY_TIMEOUT_DEFAULT_SECS),
            clock: SystemClock::shared(),
        }
    }
}

/// The network namespace owner of a group: `None` while it starts, then its
/// container id or why it failed.
type GroupNet = watch::Sender<Option<Result<String, AgentError>>>;

struct Group {
    owner_task: String,
    net: GroupNet,
}

struct Inner {
    cfg: DockerConfig,
    docker: Docker,
    events: mpsc::UnboundedSender<ExecutorEvent>,
    tasks: Mutex<HashMap<String, Entry>>,
    groups: Mutex<HashMap<String, Group>>,
}

/// Runs tasks in Docker containers. See the [module docs](self).
///
/// Dropping it stops watching (like an agent crash); containers keep running.
pub struct DockerExecutor {
    inner: Arc<Inner>,
    _heartbeat: Heartbeat,
}

/// How a task uses its group's network.
enum NetRole {
    Alone,
    Owner(GroupNet),
    Member(watch::Receiver<Option<Result<String, AgentError>>>),
}

/// A started container being watched.
#[derive(Debug, Clone)]
struct Attached {
    task_id: String,
    container_id: String,
    sandbox: PathBuf,
    group: Option<String>,
    owns_network: bool,
    kill_grace: Duration,
    health_check: Option<HealthCheckSpec>,
}

fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn docker_err(e: bollard::errors::Error) -> AgentError {
    AgentError::Docker(e.to_string())
}

impl DockerExecutor {
    /// Connects to the daemon (negotiating the API version) and checks that it answers.
    pub async fn connect(
        mut cfg: DockerConfig,
        events: mpsc::UnboundedSender<ExecutorEvent>,
    ) -> Result<Self, AgentError> {
        let docker = Docker::connect_with_unix(&cfg.socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(docker_err)?
            .negotiate_version()
            .await
            .map_err(docker_err)?;
        docker.ping().await.map_err(docker_err)?;
        let killed = cfg.state_dir.join("killed");
        std::fs::create_dir_all(&killed)
            .map_err(|e| AgentError::io(format!("create {}", killed.display()), e))?;
        // Other agents read the heartbeat file by the absolute path in the labels.
        let beat =
            Heartbeat::start_in(&mut cfg.state_dir, cfg.recovery_timeout, cfg.clock.clone())?;
        Ok(DockerExecutor {
            inner: Arc::new(Inner {
                cfg,
                docker,
                events,
                tasks: Mutex::new(HashMap::new()),
                groups: Mutex::new(HashMap::new()),
            }),
            _heartbeat: beat,
        })
    }

    /// The Docker client (API version negotiated).
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// Id of the newest container of a task of this agent, if any (running or not).
    pub async fn container_id(&self, task_id: &str) -> Result<Option<String>, AgentError> {
        let list = self.inner.list_containers(Some(task_id)).await?;
        Ok(list
            .into_iter()
            .max_by_key(|c| c.created.unwrap_or(0))
            .and_then(|c| c.id))
    }
}

impl Drop for DockerExecutor {
    fn drop(&mut self) {
        for entry in self.inner.tasks.lock().values() {
            if let Some(a) = &entry.abort {
                a.abort();
            }
        }
    }
}

impl Inner {
    fn send(&self, task_id: &str, update: TaskUpdate) {
        let _ = self.events.send(ExecutorEvent {
            task_id: task_id.to_string(),
            update,
        });
    }

    fn kill_marker(&self, task_id: &str) -> PathBuf {
        self.cfg.state_dir.join("killed").join(escape_id(task_id))
    }

    /// Ends a task: forgets it, sends the terminal update, applies the group policy.
    fn finish(&self, task_id: &str, group: Option<&str>, owns_network: bool, update: TaskUpdate) {
        self.tasks.lock().remove(task_id);
        if let Some(g) = group {
            let mut groups = self.groups.lock();
            if let Some(gr) = groups.get(g) {
                if gr.owner_task == task_id {
                    gr.net.send_replace(Some(Err(AgentError::Group(format!(
                        "group network owner {task_id} ended"
                    )))));
                    groups.remove(g);
                }
            }
        }
        tracing::info!(task_id, ?update, "docker task ended");
        let kill_peers = group.is_some() && group_kills_peers(&update, owns_network);
        self.send(task_id, update);
        if let (true, Some(g)) = (kill_peers, group) {
            for entry in self
                .tasks
                .lock()
                .values()
                .filter(|e| e.group.as_deref() == Some(g))
            {
                let _ = entry.control.send(Control::Kill { grace: None });
            }
        }
    }

    async fn list_containers(
        &self,
        task_id: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, AgentError> {
        let mut labels = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_AGENT}={}", self.cfg.agent_id),
        ];
        if let Some(t) = task_id {
            labels.push(format!("{LABEL_TASK}={t}"));
        }
        self.list_labelled(labels).await
    }

    async fn list_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, AgentError> {
        let filters = HashMap::from([("label".to_string(), labels)]);
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(docker_err)
    }
}

#[async_trait::async_trait]
impl Executor for DockerExecutor {
    async fn launch(&self, spec: LaunchSpec) -> Result<(), AgentError> {
        let rx = {
            let mut tasks = self.inner.tasks.lock();
            if tasks.contains_key(&spec.task_id) {
                return Err(AgentError::DuplicateTask(spec.task_id));
            }
            let (entry, rx) = Entry::new(spec.group.clone());
            tasks.insert(spec.task_id.clone(), entry);
            rx
        };
        // The first task of a group owns its network; decided here, synchronously,
        // so that concurrent launches agree.
        let role = match &spec.group {
            None => NetRole::Alone,
            Some(g) => {
                let mut groups = self.inner.groups.lock();
                match groups.get(g) {
                    Some(gr) => NetRole::Member(gr.net.subscribe()),
                    None => {
                        let (net, _) = watch::channel(None);
                        groups.insert(
                            g.clone(),
                            Group {
                                owner_task: spec.task_id.clone(),
                                net: net.clone(),
                            },
                        );
                        NetRole::Owner(net)
                    }
                }
            }
        };
        let task_id = spec.task_id.clone();
        self.inner.send(&task_id, TaskUpdate::Starting);
        let handle = tokio::spawn(run_new(self.inner.clone(), spec, role, rx));
        if let Some(e) = self.inner.tasks.lock().get_mut(&task_id) {
            e.abort = Some(handle.abort_handle());
        }
        Ok(())
    }

    async fn kill(&self, task_id: &str, grace: Option<Duration>) -> Result<(), AgentError> {
        let tasks = self.inner.tasks.lock();
        let targets = super::kill_targets(&tasks, task_id, |e| e.group.as_ref())
            .ok_or_else(|| AgentError::UnknownTask(task_id.to_string()))?;
        for e in targets {
            let _ = e.control.send(Control::Kill { grace });
        }
        Ok(())
    }

    async fn recover(&self, known: &[String]) -> Result<Vec<RecoveredTask>, AgentError> {
        let inner = &self.inner;
        inner.remove_orphans().await;
        let mut out = Vec::new();
        for (task_id, mut containers) in inner.containers_by_task().await? {
            // Prefer a running container, then the newest one.
            containers.sort_by_key(|c| (is_running(c), c.created.as_ref().map(|d| d.to_string())));
            let Some(c) = containers.pop() else { continue };
            let cid = c.id.clone().unwrap_or_default();
            let is_known = known.contains(&task_id);
            if inner.tasks.lock().contains_key(&task_id) {
                if is_known {
                    out.push(RecoveredTask {
                        task_id,
                        update: TaskUpdate::Running { healthy: None },
                    });
                }
                continue;
            }
            if !is_known {
                if is_running(&c) {
                    tracing::warn!(task_id = %task_id, container = %cid, "killing container unknown to the agent");
                    let opts = KillContainerOptions {
                        signal: "SIGKILL".into(),
                    };
                    if let Err(e) = inner.docker.kill_container(&cid, Some(opts)).await {
                        tracing::warn!(container = %cid, error = %e, "cannot kill orphan container");
                    }
                }
                continue;
            }
            let update = inner.recover_container(&task_id, &cid, &c).await;
            out.push(RecoveredTask { task_id, update });
        }
        for id in known {
            if !out.iter().any(|r| &r.task_id == id) {
                out.push(RecoveredTask {
                    task_id: id.clone(),
                    update: TaskUpdate::Failed {
                        exit_code: None,
                        reason: FailReason::Lost,
                        message: "no container of the task found".into(),
                    },
                });
            }
        }
        Ok(out)
    }

    async fn gc(&self, older_than: Duration) -> Result<GcReport, AgentError> {
        let inner = &self.inner;
        inner.remove_orphans().await;
        let mut report = GcReport::default();
        let now = (inner.cfg.clock.wall_ms() / 1000) as i64;
        for c in inner.list_containers(None).await? {
            let Some(cid) = c.id else { continue };
            let task_id = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_TASK))
                .cloned()
                .unwrap_or_default();
            if inner.tasks.lock().contains_key(&task_id) {
                continue;
            }
            let i = match inner.docker.inspect_container(&cid, None).await {
                Ok(i) => i,
                Err(e) if status_code(&e) == Some(404) => continue,
                Err(e) => return Err(docker_err(e)),
            };
            if is_running(&i) {
                continue;
            }
            let ended = i
                .state
                .as_ref()
                .and_then(|s| s.finished_at.as_deref())
                .and_then(util::parse_rfc3339)
                .or(c.created);
            let old = ended.is_none_or(|t| now.saturating_sub(t) >= older_than.as_secs() as i64);
            if !old {
                continue;
            }
            let opts = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match inner.docker.remove_container(&cid, Some(opts)).await {
                Ok(()) => {
                    let _ = std::fs::remove_file(inner.kill_marker(&task_id));
                    report.removed.push(task_id);
                }
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => {
                    tracing::warn!(container = %cid, error = %e, "gc: cannot remove container")
                }
            }
        }
        Ok(report)
    }

    fn tasks(&self) -> Vec<String> {
        self.inner.tasks.lock().keys().cloned().collect()
    }
}

impl Inner {
    /// This executor's containers, inspected, by task id.
    async fn containers_by_task(
        &self,
    ) -> Result<HashMap<String, Vec<ContainerInspectResponse>>, AgentError> {
        let mut by_task: HashMap<String, Vec<ContainerInspectResponse>> = HashMap::new();
        for c in self.list_containers(None).await? {
            let Some(id) = c.id else { continue };
            let Some(task_id) = c.labels.as_ref().and_then(|l| l.get(LABEL_TASK)).cloned() else {
                continue;
            };
            match self.docker.inspect_container(&id, None).await {
                Ok(i) => by_task.entry(task_id).or_default().push(i),
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(docker_err(e)),
            }
        }
        Ok(by_task)
    }

    /// A known task's container after a restart: re-attached when it runs, removed when it
    /// was never started, its end reported when it ended while the agent was away.
    async fn recover_container(
        self: &Arc<Self>,
        task_id: &str,
        cid: &str,
        c: &ContainerInspectResponse,
    ) -> TaskUpdate {
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let status = c
            .state
            .as_ref()
            .and_then(|s| s.status)
            .map(|s| s.to_string())
            .unwrap_or_default();
        if is_running(c) {
            self.reattach(task_id, cid, &labels);
            TaskUpdate::Running { healthy: None }
        } else if status == "created" {
            let opts = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let _ = self.docker.remove_container(cid, Some(opts)).await;
            TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::LaunchFailed,
                message: "the agent stopped before the container was started".into(),
            }
        } else {
            // Copy what the container wrote while nobody was watching.
            if let Some(sb) = labels.get(LABEL_SANDBOX) {
                let copy = copy_logs_once(&self.docker, cid, Path::new(sb));
                match tokio::time::timeout(Duration::from_secs(10), copy).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(task_id = %task_id, error = %e, "cannot copy the rest of the log")
                    }
                    Err(_) => {
                        tracing::warn!(task_id = %task_id, "copying the rest of the log timed out")
                    }
                }
            }
            let killed = self.kill_marker(task_id).exists();
            let update = classify(c, killed);
            tracing::info!(task_id = %task_id, ?update, "container ended while the agent was away");
            update
        }
    }

    /// Watches a running container again, as its labels describe it (and owns its group's
    /// network again when it did).
    fn reattach(self: &Arc<Self>, task_id: &str, cid: &str, labels: &HashMap<String, String>) {
        let attached = Attached {
            task_id: task_id.to_string(),
            container_id: cid.to_string(),
            sandbox: labels
                .get(LABEL_SANDBOX)
                .map(PathBuf::from)
                .unwrap_or_default(),
            group: labels.get(LABEL_GROUP).cloned(),
            owns_network: labels.get(LABEL_GROUP_OWNER).is_some_and(|v| v == "true"),
            kill_grace: labels
                .get(LABEL_GRACE)
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(3), Duration::from_millis),
            health_check: labels
                .get(LABEL_HEALTH)
                .and_then(|v| serde_json::from_str(v).ok()),
        };
        if let (Some(g), true) = (&attached.group, attached.owns_network) {
            let (net, _) = watch::channel(Some(Ok(cid.to_string())));
            self.groups.lock().insert(
                g.clone(),
                Group {
                    owner_task: task_id.to_string(),
                    net,
                },
            );
        }
        let (entry, rx) = Entry::new(attached.group.clone());
        self.tasks.lock().insert(task_id.to_string(), entry);
        tracing::info!(task_id = %task_id, container = %cid, "re-attached to container");
        let handle = tokio::spawn(watch_container(self.clone(), attached, rx));
        if let Some(e) = self.tasks.lock().get_mut(task_id) {
            e.abort = Some(handle.abort_handle());
        }
    }
}
