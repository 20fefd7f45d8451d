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

use parking_lot::Mutex;
use std::time::Duration;

use shoal_core::clock::{SharedClock, SystemClock};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::health::{self, ProbeFuture};
use super::heartbeat::{self, Heartbeat, Liveness};
use super::util::{self, escape_id};
use super::{
    group_kills_peers, AgentError, ContainerSpec, DockerNetwork, DockerSpec, Executor,
    ExecutorEvent, FailReason, GcReport, HealthCheckKind, HealthCheckSpec, LaunchSpec,
    RecoveredTask, TaskUpdate,
};

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

enum Control {
    Kill { grace: Option<Duration> },
}

struct Entry {
    control: mpsc::UnboundedSender<Control>,
    group: Option<String>,
    abort: Option<AbortHandle>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut tasks = self.inner.tasks.lock();
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
        let list = inner.list_containers(None).await?;
        // task id -> inspected containers
        let mut by_task: HashMap<String, Vec<ContainerInspectResponse>> = HashMap::new();
        for c in list {
            let Some(id) = c.id else { continue };
            let Some(task_id) = c.labels.as_ref().and_then(|l| l.get(LABEL_TASK)).cloned() else {
                continue;
            };
            match inner.docker.inspect_container(&id, None).await {
                Ok(i) => by_task.entry(task_id).or_default().push(i),
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => return Err(docker_err(e)),
            }
        }
        let mut out = Vec::new();
        for (task_id, mut containers) in by_task {
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
            let update = if is_running(&c) {
                let attached = Attached {
                    task_id: task_id.clone(),
                    container_id: cid.clone(),
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
                    let (net, _) = watch::channel(Some(Ok(cid.clone())));
                    inner.groups.lock().insert(
                        g.clone(),
                        Group {
                            owner_task: task_id.clone(),
                            net,
                        },
                    );
                }
                let (tx, rx) = mpsc::unbounded_channel();
                inner.tasks.lock().insert(
                    task_id.clone(),
                    Entry {
                        control: tx,
                        group: attached.group.clone(),
                        abort: None,
                    },
                );
                tracing::info!(task_id = %task_id, container = %cid, "re-attached to container");
                let handle = tokio::spawn(watch_container(inner.clone(), attached, rx));
                if let Some(e) = inner.tasks.lock().get_mut(&task_id) {
                    e.abort = Some(handle.abort_handle());
                }
                TaskUpdate::Running { healthy: None }
            } else if status == "created" {
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = inner.docker.remove_container(&cid, Some(opts)).await;
                TaskUpdate::Failed {
                    exit_code: None,
                    reason: FailReason::LaunchFailed,
                    message: "the agent stopped before the container was started".into(),
                }
            } else {
                // Copy what the container wrote while nobody was watching.
                if let Some(sb) = labels.get(LABEL_SANDBOX) {
                    let copy = copy_logs_once(&inner.docker, &cid, Path::new(sb));
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
                let killed = inner.kill_marker(&task_id).exists();
                let update = classify(&c, killed);
                tracing::info!(task_id = %task_id, ?update, "container ended while the agent was away");
                update
            };
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
    /// Removes the containers of other agents of this host that have no owner any more
    /// (see the module docs): each is stopped with its grace period, then removed, in the
    /// background.
    async fn remove_orphans(&self) {
        let Some(ns) = mount_namespace() else {
            return;
        };
        let list = match self
            .list_labelled(vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_MNT_NS}={ns}"),
            ])
            .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the host's containers");
                return;
            }
        };
        for c in list {
            let (Some(cid), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let Some(why) = orphan_reason(
                &labels,
                &self.cfg.agent_id,
                &self.cfg.state_dir,
                ns,
                |path, timeout| heartbeat::liveness(path, timeout, &*self.cfg.clock),
            ) else {
                continue;
            };
            let grace = labels
                .get(LABEL_GRACE)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(3, |ms| ms.div_ceil(1000));
            tracing::warn!(container = %cid, task_id = labels.get(LABEL_TASK).map_or("", String::as_str), %why, "removing an orphaned container");
            let docker = self.docker.clone();
            tokio::spawn(async move {
                let stop = bollard::query_parameters::StopContainerOptions {
                    signal: None,
                    t: Some(i32::try_from(grace).unwrap_or(i32::MAX)),
                };
                match docker.stop_container(&cid, Some(stop)).await {
                    Ok(()) => {}
                    Err(e) if matches!(status_code(&e), Some(304) | Some(404)) => {}
                    Err(e) => {
                        tracing::warn!(container = %cid, error = %e, "cannot stop an orphaned container")
                    }
                }
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                match docker.remove_container(&cid, Some(opts)).await {
                    Ok(()) => {}
                    Err(e) if status_code(&e) == Some(404) => {}
                    Err(e) => {
                        tracing::warn!(container = %cid, error = %e, "cannot remove an orphaned container")
                    }
                }
            });
        }
    }
}

/// This process's mount namespace (`mnt:[4026531840]`): containers labelled with it name
/// paths this agent sees as their agent did. `None` when it cannot be read.
fn mount_namespace() -> Option<&'static str> {
    static NS: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/mnt")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    })
    .as_deref()
}

/// Why a container of this host (of the mount namespace `mnt_ns`) has no owner any more,
/// or `None` when it has one or cannot be judged (plain but for `liveness`): ours by agent
/// id (recovery deals with it), older containers without the labels, and containers of a
/// live agent with another work dir are all left alone.
pub(crate) fn orphan_reason(
    labels: &HashMap<String, String>,
    own_agent: &str,
    own_state_dir: &Path,
    mnt_ns: &str,
    liveness: impl Fn(&Path, Duration) -> Liveness,
) -> Option<String> {
    if labels.get(LABEL_AGENT).map(String::as_str) == Some(own_agent) {
        return None;
    }
    if labels.get(LABEL_MNT_NS).map(String::as_str) != Some(mnt_ns) {
        return None;
    }
    let state_dir = Path::new(labels.get(LABEL_STATE_DIR)?);
    if !state_dir.is_absolute() {
        return None;
    }
    if state_dir == own_state_dir {
        return Some(format!(
            "it names this agent's state dir {} under another agent id",
            state_dir.display()
        ));
    }
    let timeout = labels
        .get(LABEL_RECOVERY)
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(
            Duration::from_secs(heartbeat::RECOVERY_TIMEOUT_DEFAULT_SECS),
            Duration::from_millis,
        );
    match liveness(&state_dir.join(heartbeat::ALIVE_FILE), timeout) {
        Liveness::Alive => None,
        Liveness::Gone => Some(format!(
            "its agent's work dir ({}) is gone",
            state_dir.display()
        )),
        Liveness::Stale(_) if timeout.is_zero() => None,
        Liveness::Stale(age) => Some(format!(
            "its agent has not come back for {}s (recovery timeout {}s)",
            age.as_secs(),
            timeout.as_secs()
        )),
    }
}

fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().is_some_and(|s| {
        s.running == Some(true) || s.restarting == Some(true) || s.paused == Some(true)
    })
}

/// Decides the terminal update of an ended container (plain).
pub(crate) fn classify(c: &ContainerInspectResponse, kill_requested: bool) -> TaskUpdate {
    let state = c.state.clone().unwrap_or_default();
    let memory_limited = c
        .host_config
        .as_ref()
        .and_then(|h| h.memory)
        .is_some_and(|m| m > 0);
    classify_state(
        state.exit_code,
        state.oom_killed.unwrap_or(false),
        memory_limited,
        state.error.as_deref(),
        kill_requested,
    )
}

/// The decision behind [`classify`].
///
/// Docker (with cgroup v1 at least) sometimes misses the OOM notification of a
/// container that dies quickly, leaving `OOMKilled` false. A container with a
/// memory limit that died of SIGKILL (status 137) without a kill from us is
/// therefore reported as an OOM failure too, with a message saying that Docker
/// did not confirm it.
pub(crate) fn classify_state(
    exit_code: Option<i64>,
    oom_killed: bool,
    memory_limited: bool,
    error: Option<&str>,
    kill_requested: bool,
) -> TaskUpdate {
    let code = exit_code.and_then(|c| i32::try_from(c).ok());
    let error = error.filter(|e| !e.is_empty());
    if kill_requested {
        return TaskUpdate::Killed {
            message: code.map_or_else(
                || "killed".into(),
                |c| format!("killed: container exited with status {c}"),
            ),
        };
    }
    if oom_killed {
        return TaskUpdate::Failed {
            exit_code: code,
            reason: FailReason::Oom,
            message: "the container exceeded its memory limit and was killed by the OOM killer"
                .into(),
        };
    }
    if memory_limited && code == Some(137) {
        return TaskUpdate::Failed {
            exit_code: code,
            reason: FailReason::Oom,
            message: "the container was killed by SIGKILL under its memory limit, most likely by \
                      the OOM killer (Docker did not report it)"
                .into(),
        };
    }
    match code {
        Some(0) => TaskUpdate::Finished,
        Some(c) => TaskUpdate::Failed {
            exit_code: Some(c),
            reason: FailReason::CommandExit,
            message: match error {
                Some(e) => format!("container exited with status {c}: {e}"),
                None => format!("container exited with status {c}"),
            },
        },
        None => TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: error.map_or_else(
                || "the container has no exit status".into(),
                |e| e.to_string(),
            ),
        },
    }
}

/// `(from_image, tag)` for a pull: the tag defaults to `latest`; digests stay in the image.
pub(crate) fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// The container configuration of a task (plain).
pub(crate) fn create_body(
    spec: &LaunchSpec,
    d: &DockerSpec,
    cfg: &DockerConfig,
    network_mode: String,
    owns_network: bool,
) -> ContainerCreateBody {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with("shoal."))
        .cloned()
        .collect();
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_AGENT.into(), cfg.agent_id.clone());
    labels.insert(LABEL_TASK.into(), spec.task_id.clone());
    labels.insert(
        LABEL_SANDBOX.into(),
        spec.sandbox.to_string_lossy().into_owned(),
    );
    labels.insert(LABEL_GRACE.into(), spec.kill_grace.as_millis().to_string());
    labels.insert(
        LABEL_STATE_DIR.into(),
        cfg.state_dir.to_string_lossy().into_owned(),
    );
    labels.insert(
        LABEL_RECOVERY.into(),
        cfg.recovery_timeout.as_millis().to_string(),
    );
    if let Some(ns) = mount_namespace() {
        labels.insert(LABEL_MNT_NS.into(), ns.to_string());
    }
    if let Some(g) = &spec.group {
        labels.insert(LABEL_GROUP.into(), g.clone());
        labels.insert(LABEL_GROUP_OWNER.into(), owns_network.to_string());
    }
    if let Some(hc) = &spec.health_check {
        if let Ok(s) = serde_json::to_string(hc) {
            labels.insert(LABEL_HEALTH.into(), s);
        }
    }

    let (mut entrypoint, mut cmd, mut env) = (None, None, None);
    if let Some(c) = &spec.command {
        if c.shell {
            entrypoint = Some(vec!["/bin/sh".to_string(), "-c".to_string()]);
            cmd = Some(vec![c.value.clone()]);
        } else if !c.value.is_empty() {
            cmd = Some(
                std::iter::once(c.value.clone())
                    .chain(c.arguments.iter().cloned())
                    .collect(),
            );
        } else if !c.arguments.is_empty() {
            cmd = Some(c.arguments.clone());
        }
        if !c.env.is_empty() {
            env = Some(c.env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        }
    }

    let mut host = HostConfig {
        network_mode: Some(network_mode),
        ..Default::default()
    };
    if spec.limits.mem_mb > 0 {
        let bytes = (spec.limits.mem_mb as i64).saturating_mul(1024 * 1024);
        host.memory = Some(bytes);
        host.memory_swap = Some(bytes);
    }
    if spec.limits.cpus > 0.0 {
        host.nano_cpus = Some((spec.limits.cpus * 1e9) as i64);
    }
    let mut exposed = None;
    if owns_network && !d.port_mappings.is_empty() {
        let mut bindings = HashMap::new();
        let mut ports = Vec::new();
        for pm in &d.port_mappings {
            let key = format!("{}/{}", pm.container_port, pm.protocol.as_str());
            ports.push(key.clone());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(cfg.bind_ip.clone()),
                    host_port: Some(pm.host_port.to_string()),
                });
        }
        ports.sort();
        ports.dedup();
        exposed = Some(ports);
        host.port_bindings = Some(bindings);
    }
    ContainerCreateBody {
        image: Some(d.image.clone()),
        entrypoint,
        cmd,
        env,
        labels: Some(labels),
        exposed_ports: exposed,
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(host),
        ..Default::default()
    }
}

/// Makes sure the image is there: `Err((reason, message))` otherwise.
async fn ensure_image(
    docker: &Docker,
    image: &str,
    force_pull: bool,
    timeout: Duration,
) -> Result<(), (FailReason, String)> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if status_code(&e) == Some(404) => false,
        Err(e) => {
            return Err((
                FailReason::LaunchFailed,
                format!("cannot inspect image {image}: {e}"),
            ))
        }
    };
    if present && !force_pull {
        return Ok(());
    }
    let (from_image, tag) = split_image(image);
    let opts = CreateImageOptions {
        from_image: Some(from_image),
        tag: (!tag.is_empty()).then_some(tag),
        ..Default::default()
    };
    let pull = async {
        let mut stream = docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        return Err(err);
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    let res = match tokio::time::timeout(timeout, pull).await {
        Ok(r) => r,
        Err(_) => Err(format!("pull timed out after {timeout:?}")),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if present => {
            tracing::warn!(image, error = %e, "forced pull failed; using the local image");
            Ok(())
        }
        Err(e) => Err((
            FailReason::ImageMissing,
            format!("image {image} is not present locally and cannot be pulled: {e}"),
        )),
    }
}

/// Launches a new container task, then watches it.
async fn run_new(
    inner: Arc<Inner>,
    spec: LaunchSpec,
    role: NetRole,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    let task_id = spec.task_id.clone();
    let group = spec.group.clone();
    let owns_network = !matches!(role, NetRole::Member(_));
    let owner_net = match &role {
        NetRole::Owner(n) => Some(n.clone()),
        _ => None,
    };
    let end = |update: TaskUpdate| {
        if let (Some(net), Some(msg)) = (&owner_net, update_message(&update)) {
            net.send_replace(Some(Err(AgentError::Group(msg))));
        }
        inner.finish(&task_id, group.as_deref(), owns_network, update);
    };
    let failed = |reason, message: String| TaskUpdate::Failed {
        exit_code: None,
        reason,
        message,
    };

    if let Err(e) = spec.validate() {
        return end(TaskUpdate::Error {
            message: e.to_string(),
        });
    }
    let ContainerSpec::Docker(d) = &spec.container else {
        return end(TaskUpdate::Error {
            message: "the docker executor needs a docker container spec".into(),
        });
    };
    if !owns_network && !d.port_mappings.is_empty() {
        return end(TaskUpdate::Error {
            message: "only the first task of a group may map ports (the others share its network)"
                .into(),
        });
    }
    if !spec.sandbox.is_dir() {
        return end(failed(
            FailReason::LaunchFailed,
            format!("sandbox {} is not a directory", spec.sandbox.display()),
        ));
    }
    // Small local file operations, done in place: a trip through the blocking pool per
    // file would sit on the launch path.
    for name in ["stdout", "stderr"] {
        let p = spec.sandbox.join(name);
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
        {
            return end(failed(
                FailReason::LaunchFailed,
                format!("open {}: {e}", p.display()),
            ));
        }
    }
    let _ = std::fs::remove_file(inner.kill_marker(&task_id));

    // Pulling the image and waiting for the group's network can be interrupted
    // by a kill; creating and starting the container cannot (a kill that comes
    // in meanwhile is handled by the watcher right after the start). The image is
    // not looked up first: `create` says when it is missing, and only then is it
    // pulled (as `docker run` does), which keeps a call off every launch.
    let prepare = async {
        if d.force_pull {
            ensure_image(&inner.docker, &d.image, true, inner.cfg.pull_timeout).await?;
        }
        let network_mode = match role {
            NetRole::Member(mut net) => {
                let owner = net.wait_for(|v| v.is_some()).await.map(|v| match &*v {
                    Some(Ok(cid)) => Some(Ok(cid.clone())),
                    Some(Err(e)) => Some(Err(e.to_string())),
                    None => None,
                });
                match owner {
                    Ok(Some(Ok(cid))) => format!("container:{cid}"),
                    Ok(Some(Err(e))) => {
                        return Err((
                            FailReason::LaunchFailed,
                            format!("the group's network is not available: {e}"),
                        ))
                    }
                    _ => {
                        return Err((
                            FailReason::LaunchFailed,
                            "the group's network owner vanished".to_string(),
                        ))
                    }
                }
            }
            _ => match d.network {
                DockerNetwork::Bridge => "bridge".into(),
                DockerNetwork::Host => "host".into(),
                DockerNetwork::None => "none".into(),
            },
        };
        Ok(network_mode)
    };
    let killed_early = || TaskUpdate::Killed {
        message: "killed before it started".into(),
    };
    let network_mode = tokio::select! {
        r = prepare => r,
        Some(Control::Kill { .. }) = rx.recv() => return end(killed_early()),
    };
    let network_mode = match network_mode {
        Ok(n) => n,
        Err((reason, message)) => return end(failed(reason, message)),
    };
    let body = create_body(&spec, d, &inner.cfg, network_mode, owns_network);
    let name = util::container_name(&inner.cfg.name_prefix, &inner.cfg.agent_id, &task_id);
    let clock = &inner.cfg.clock;
    let mut t0 = clock.monotonic();
    let mut created = create_container(&inner, &name, body.clone()).await;
    if matches!(created, Err((FailReason::ImageMissing, _))) {
        let pull = ensure_image(&inner.docker, &d.image, false, inner.cfg.pull_timeout);
        let pulled = tokio::select! {
            r = pull => r,
            Some(Control::Kill { .. }) = rx.recv() => return end(killed_early()),
        };
        if let Err((reason, message)) = pulled {
            return end(failed(reason, message));
        }
        t0 = clock.monotonic();
        created = create_container(&inner, &name, body).await;
    }
    let start = async {
        let cid = created?;
        if let Err(e) = inner.docker.start_container(&cid, None).await {
            let opts = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            let _ = inner.docker.remove_container(&cid, Some(opts)).await;
            return Err((
                FailReason::LaunchFailed,
                format!("cannot start the container: {e}"),
            ));
        }
        Ok(cid)
    };
    let cid = match start.await {
        Ok(cid) => cid,
        Err((reason, message)) => return end(failed(reason, message)),
    };
    // Docker's own share of the launch (create + start), for the launch latency benchmark.
    let docker_us = (clock.monotonic() - t0).as_micros();
    if let Some(net) = &owner_net {
        net.send_replace(Some(Ok(cid.clone())));
    }
    tracing::info!(task_id = %task_id, container = %cid, docker_us, "docker task running");
    inner.send(&task_id, TaskUpdate::Running { healthy: None });
    let attached = Attached {
        task_id: task_id.clone(),
        container_id: cid,
        sandbox: spec.sandbox.clone(),
        group: spec.group.clone(),
        owns_network,
        kill_grace: spec.kill_grace,
        health_check: spec.health_check.clone(),
    };
    watch_container(inner.clone(), attached, rx).await;
}

fn update_message(u: &TaskUpdate) -> Option<String> {
    match u {
        TaskUpdate::Failed { message, .. }
        | TaskUpdate::Killed { message }
        | TaskUpdate::Error { message } => Some(message.clone()),
        TaskUpdate::Finished => Some("finished".into()),
        _ => None,
    }
}

/// Creates the container; a stale ended container of the same name (same
/// agent and task) is removed first. A missing image is `ImageMissing`.
async fn create_container(
    inner: &Inner,
    name: &str,
    body: ContainerCreateBody,
) -> Result<String, (FailReason, String)> {
    for attempt in 0..2 {
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        match inner
            .docker
            .create_container(Some(opts), body.clone())
            .await
        {
            Ok(r) => {
                for w in r.warnings.iter().filter(|w| !w.is_empty()) {
                    tracing::warn!(container = %r.id, warning = %w, "docker create");
                }
                return Ok(r.id);
            }
            Err(e) if status_code(&e) == Some(409) && attempt == 0 => {
                let stale = inner.docker.inspect_container(name, None).await.ok();
                let ours = stale.as_ref().is_some_and(|c| {
                    let l = c.config.as_ref().and_then(|c| c.labels.as_ref());
                    l.and_then(|l| l.get(LABEL_AGENT)) == Some(&inner.cfg.agent_id)
                });
                if !ours || stale.as_ref().is_some_and(is_running) {
                    return Err((
                        FailReason::LaunchFailed,
                        format!("cannot create container {name}: {e}"),
                    ));
                }
                let opts = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = inner.docker.remove_container(name, Some(opts)).await;
            }
            // The only 404 of a create: the image is not here.
            Err(e) if status_code(&e) == Some(404) => {
                return Err((
                    FailReason::ImageMissing,
                    format!("cannot create the container: {e}"),
                ))
            }
            Err(e) => {
                return Err((
                    FailReason::LaunchFailed,
                    format!("cannot create the container: {e}"),
                ))
            }
        }
    }
    Err((
        FailReason::LaunchFailed,
        format!("cannot create container {name}"),
    ))
}

/// Resolves when the container is no longer running; `Err` when it vanished.
async fn wait_stopped(docker: &Docker, cid: &str) -> Result<(), AgentError> {
    loop {
        let opts = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut stream = docker.wait_container(cid, Some(opts));
        match stream.next().await {
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {
                return Ok(())
            }
            Some(Err(e)) if status_code(&e) == Some(404) => {
                return Err(AgentError::Lost("the container disappeared".into()))
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(container = %cid, error = %e, "waiting for container failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                match docker.inspect_container(cid, None).await {
                    Ok(c) if !is_running(&c) => return Ok(()),
                    Ok(_) => {}
                    Err(e) if status_code(&e) == Some(404) => {
                        return Err(AgentError::Lost("the container disappeared".into()))
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// Watches a running container until it ends: kill requests, health checks, exit.
async fn watch_container(inner: Arc<Inner>, a: Attached, mut rx: mpsc::UnboundedReceiver<Control>) {
    let docker = inner.docker.clone();
    let cid = a.container_id.clone();
    let mut logs = util::AbortOnDrop(tokio::spawn(copy_logs(
        docker.clone(),
        cid.clone(),
        a.sandbox.clone(),
    )));
    let exited = {
        let docker = docker.clone();
        let cid = cid.clone();
        async move { wait_stopped(&docker, &cid).await }
    };
    tokio::pin!(exited);

    let (htx, mut hrx) = mpsc::unbounded_channel();
    let health_task = a.health_check.clone().map(|hc| {
        let probe = container_probe(
            &hc.kind,
            docker.clone(),
            cid.clone(),
            inner.cfg.clock.clone(),
        );
        util::AbortOnDrop(tokio::spawn(health::run(
            hc,
            a.task_id.clone(),
            inner.cfg.clock.clone(),
            probe,
            htx,
        )))
    });

    let mut kill_requested = inner.kill_marker(&a.task_id).exists();
    let mut kill_deadline: Option<tokio::time::Instant> = None;
    let mut control_open = true;
    // Set when the health checks failed too often: the task is killed, and says why.
    let mut health_kill: Option<String> = None;
    let outcome = loop {
        let msg = tokio::select! {
            r = &mut exited => break r,
            msg = rx.recv(), if control_open => msg,
            () = async { if let Some(d) = kill_deadline { tokio::time::sleep_until(d).await } }, if kill_deadline.is_some() => {
                tracing::info!(task_id = %a.task_id, "grace period over; SIGKILL");
                signal_container(&docker, &cid, "SIGKILL").await;
                kill_deadline = None;
                continue;
            }
            Some(h) = hrx.recv() => {
                let report = |v| inner.send(&a.task_id, TaskUpdate::Running { healthy: Some(v) });
                if !health::must_kill(h, report, &mut health_kill) {
                    continue;
                }
                Some(Control::Kill { grace: None })
            }
        };
        match msg {
            Some(Control::Kill { grace }) => {
                let grace = grace.unwrap_or(a.kill_grace);
                if !kill_requested {
                    kill_requested = true;
                    if let Err(e) = std::fs::write(inner.kill_marker(&a.task_id), b"") {
                        tracing::warn!(task_id = %a.task_id, error = %e, "cannot persist kill request");
                    }
                }
                tracing::info!(task_id = %a.task_id, ?grace, "killing container");
                let sig = if grace.is_zero() {
                    "SIGKILL"
                } else {
                    "SIGTERM"
                };
                signal_container(&docker, &cid, sig).await;
                if !grace.is_zero() {
                    let d = tokio::time::Instant::now() + grace;
                    kill_deadline = Some(kill_deadline.map_or(d, |old| old.min(d)));
                }
            }
            None => control_open = false,
        }
    };
    drop(health_task);
    // Let the log copy drain what the container wrote last (aborted when `logs` drops).
    if tokio::time::timeout(Duration::from_secs(10), &mut logs.0)
        .await
        .is_err()
    {
        tracing::warn!(task_id = %a.task_id, "log copy did not finish in time");
    }
    let update = match outcome {
        Err(e) => TaskUpdate::Failed {
            exit_code: None,
            reason: FailReason::Lost,
            message: e.to_string(),
        },
        Ok(()) => match docker.inspect_container(&cid, None).await {
            Ok(c) => classify(&c, kill_requested),
            Err(e) => TaskUpdate::Failed {
                exit_code: None,
                reason: FailReason::Lost,
                message: format!("cannot inspect the ended container: {e}"),
            },
        },
    };
    inner.finish(
        &a.task_id,
        a.group.as_deref(),
        a.owns_network,
        util::health_killed(update, health_kill),
    );
}

async fn signal_container(docker: &Docker, cid: &str, signal: &str) {
    let opts = KillContainerOptions {
        signal: signal.into(),
    };
    match docker.kill_container(cid, Some(opts)).await {
        Ok(()) => {}
        // 409: not running any more; 404: gone.
        Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => {}
        Err(e) => tracing::warn!(container = %cid, signal, error = %e, "cannot signal container"),
    }
}

/// Copies the container's log into the sandbox until the container stops,
/// skipping the bytes each file already holds.
async fn copy_logs(docker: Docker, cid: String, sandbox: PathBuf) {
    for attempt in 0..5u32 {
        match copy_logs_once(&docker, &cid, &sandbox).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(container = %cid, attempt, error = %e, "log copy interrupted");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn copy_logs_once(docker: &Docker, cid: &str, sandbox: &Path) -> Result<(), AgentError> {
    let open = |name: &str| {
        let p = sandbox.join(name);
        async move {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .await
                .map_err(|e| AgentError::io(format!("open {}", p.display()), e))?;
            let len = f
                .metadata()
                .await
                .map_err(|e| AgentError::io(format!("stat {}", p.display()), e))?
                .len();
            Ok::<_, AgentError>((f, len))
        }
    };
    let (mut out, mut skip_out) = open("stdout").await?;
    let (mut err, mut skip_err) = open("stderr").await?;
    let opts = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let mut stream = docker.logs(cid, Some(opts));
    while let Some(item) = stream.next().await {
        let (file, skip, msg) = match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                (&mut out, &mut skip_out, message)
            }
            Ok(LogOutput::StdErr { message }) => (&mut err, &mut skip_err, message),
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(e) if status_code(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(docker_err(e)),
        };
        let n = msg.len() as u64;
        if *skip >= n {
            *skip -= n;
            continue;
        }
        let from = *skip as usize;
        *skip = 0;
        file.write_all(&msg[from..])
            .await
            .map_err(|e| AgentError::io("write log", e))?;
    }
    out.flush().await.map_err(|e| AgentError::io("flush", e))?;
    err.flush().await.map_err(|e| AgentError::io("flush", e))?;
    Ok(())
}

/// Builds the probe of a health check of a container.
fn container_probe(
    kind: &HealthCheckKind,
    docker: Docker,
    cid: String,
    clock: SharedClock,
) -> impl FnMut() -> ProbeFuture + Send {
    let kind = kind.clone();
    move || -> ProbeFuture {
        let docker = docker.clone();
        let cid = cid.clone();
        let kind = kind.clone();
        let clock = clock.clone();
        Box::pin(async move {
            match kind {
                HealthCheckKind::Command { shell } => exec_probe(&docker, &cid, shell).await,
                HealthCheckKind::Http { port, path } => {
                    let pid = container_pid(&docker, &cid).await?;
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    health::in_netns(pid, move || {
                        health::probe_http(addr, &path, Duration::from_secs(5), &*clock)
                    })
                    .await
                }
                HealthCheckKind::Tcp { port } => {
                    let pid = container_pid(&docker, &cid).await?;
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                    health::in_netns(pid, move || health::probe_tcp(addr, Duration::from_secs(5)))
                        .await
                }
            }
        })
    }
}

async fn container_pid(docker: &Docker, cid: &str) -> Result<i32, AgentError> {
    let c = docker
        .inspect_container(cid, None)
        .await
        .map_err(|e| AgentError::Probe(format!("inspect: {e}")))?;
    match c.state.and_then(|s| s.pid) {
        Some(pid) if pid > 0 => {
            i32::try_from(pid).map_err(|_| AgentError::Probe("bad pid".to_string()))
        }
        _ => Err(AgentError::Probe("the container is not running".into())),
    }
}

async fn exec_probe(docker: &Docker, cid: &str, shell: String) -> Result<(), AgentError> {
    let opts = CreateExecOptions {
        cmd: Some(vec!["/bin/sh".to_string(), "-c".to_string(), shell]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker
        .create_exec(cid, opts)
        .await
        .map_err(|e| AgentError::Probe(format!("exec create: {e}")))?;
    if let StartExecResults::Attached { mut output, .. } =
        docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| AgentError::Probe(format!("exec start: {e}")))?
    {
        while output.next().await.is_some() {}
    }
    let i = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| AgentError::Probe(format!("exec inspect: {e}")))?;
    match i.exit_code {
        Some(0) => Ok(()),
        Some(c) => Err(AgentError::Probe(format!(
            "health command exited with status {c}"
        ))),
        None => Err(AgentError::Probe(
            "health command has no exit status".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{CommandSpec, Limits, PortMapping, Protocol};

    fn spec() -> (LaunchSpec, DockerSpec) {
        let mut d = DockerSpec::new("local/busybox:latest");
        d.port_mappings.push(PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        });
        let mut s = LaunchSpec::new("web.1", "/tmp/sb");
        s.container = ContainerSpec::Docker(d.clone());
        s.command = Some(CommandSpec::shell("httpd -f -p 80").with_env("A", "b"));
        s.limits = Limits {
            cpus: 0.5,
            mem_mb: 64,
        };
        s.labels.push(("team".into(), "x".into()));
        s.labels.push(("shoal.task_id".into(), "forged".into()));
        (s, d)
    }

    #[test]
    fn body() {
        let (s, d) = spec();
        let cfg = DockerConfig::new("agent-1", "/tmp/state");
        let b = create_body(&s, &d, &cfg, "bridge".into(), true);
        assert_eq!(
            b.entrypoint,
            Some(vec!["/bin/sh".to_string(), "-c".to_string()])
        );
        assert_eq!(b.cmd, Some(vec!["httpd -f -p 80".to_string()]));
        assert_eq!(b.env, Some(vec!["A=b".to_string()]));
        let labels = b.labels.expect("labels");
        assert_eq!(
            labels.get("shoal.task_id").map(String::as_str),
            Some("web.1")
        );
        assert_eq!(
            labels.get("shoal.agent_id").map(String::as_str),
            Some("agent-1")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        let h = b.host_config.expect("host config");
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        let pb = h.port_bindings.expect("bindings");
        let binding = pb.get("80/tcp").cloned().flatten().expect("80/tcp");
        assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding[0].host_port.as_deref(), Some("8080"));
        assert_eq!(b.exposed_ports, Some(vec!["80/tcp".to_string()]));

        // A group member joins the owner's network and publishes nothing.
        let b = create_body(&s, &d, &cfg, "container:abc".into(), false);
        let h = b.host_config.expect("host config");
        assert_eq!(h.network_mode.as_deref(), Some("container:abc"));
        assert!(h.port_bindings.is_none());
    }

    #[test]
    fn orphaned_containers_are_those_whose_agent_is_gone_or_stale() {
        let ns = "mnt:[1]";
        let own = Path::new("/w/me/state/docker");
        let labels = |agent: &str, dir: &str, ns: &str| {
            HashMap::from([
                (LABEL_AGENT.to_string(), agent.to_string()),
                (LABEL_STATE_DIR.to_string(), dir.to_string()),
                (LABEL_MNT_NS.to_string(), ns.to_string()),
                (LABEL_RECOVERY.to_string(), "60000".to_string()),
            ])
        };
        let alive = |_: &Path, _: Duration| Liveness::Alive;
        let gone = |_: &Path, _: Duration| Liveness::Gone;
        let stale = |_: &Path, t: Duration| {
            assert_eq!(t, Duration::from_secs(60));
            Liveness::Stale(Duration::from_secs(61))
        };
        let other = labels("b", "/w/other/state/docker", ns);
        // Ours by agent id: recovery's business.
        assert_eq!(
            orphan_reason(&labels("me", "/x", ns), "me", own, ns, gone),
            None
        );
        // Another live agent's containers are never touched.
        assert_eq!(orphan_reason(&other, "me", own, ns, alive), None);
        assert!(orphan_reason(&other, "me", own, ns, gone)
            .is_some_and(|w| w.contains("/w/other/state/docker")));
        assert!(orphan_reason(&other, "me", own, ns, stale).is_some());
        // Our own work dir under another id: nobody will recover it.
        assert!(
            orphan_reason(&labels("b", "/w/me/state/docker", ns), "me", own, ns, alive).is_some()
        );
        // Paths of another mount namespace, or no labels (older containers): left alone.
        assert_eq!(
            orphan_reason(
                &labels("b", "/w/other/state/docker", "mnt:[2]"),
                "me",
                own,
                ns,
                gone
            ),
            None
        );
        let old = HashMap::from([(LABEL_AGENT.to_string(), "b".to_string())]);
        assert_eq!(orphan_reason(&old, "me", own, ns, gone), None);
    }

    #[test]
    fn argv_command() {
        let (mut s, d) = spec();
        s.command = Some(CommandSpec::argv("sleep", ["10"]));
        let b = create_body(
            &s,
            &d,
            &DockerConfig::new("a", "/tmp"),
            "bridge".into(),
            true,
        );
        assert_eq!(b.entrypoint, None);
        assert_eq!(b.cmd, Some(vec!["sleep".to_string(), "10".to_string()]));
        s.command = None;
        let b = create_body(
            &s,
            &d,
            &DockerConfig::new("a", "/tmp"),
            "bridge".into(),
            true,
        );
        assert_eq!(b.cmd, None);
    }

    #[test]
    fn images() {
        assert_eq!(split_image("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(
            split_image("local/busybox:1.36"),
            ("local/busybox".into(), "1.36".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x"),
            ("127.0.0.1:5000/x".into(), "latest".into())
        );
        assert_eq!(
            split_image("127.0.0.1:5000/x:v1"),
            ("127.0.0.1:5000/x".into(), "v1".into())
        );
        assert_eq!(
            split_image("x@sha256:abc"),
            ("x@sha256:abc".into(), String::new())
        );
    }

    #[test]
    fn classify_states() {
        assert_eq!(
            classify_state(Some(0), false, false, None, false),
            TaskUpdate::Finished
        );
        assert!(matches!(
            classify_state(Some(1), false, false, Some(""), false),
            TaskUpdate::Failed {
                exit_code: Some(1),
                reason: FailReason::CommandExit,
                ..
            }
        ));
        assert!(matches!(
            classify_state(Some(137), true, false, None, false),
            TaskUpdate::Failed {
                exit_code: Some(137),
                reason: FailReason::Oom,
                ..
            }
        ));
        assert!(matches!(
            classify_state(Some(143), false, true, None, true),
            TaskUpdate::Killed { .. }
        ));
        // Docker missed the OOM notification: SIGKILL under a memory limit.
        assert!(matches!(
            classify_state(Some(137), false, true, None, false),
            TaskUpdate::Failed {
                reason: FailReason::Oom,
                ..
            }
        ));
        // Without a memory limit a SIGKILL is just an exit status.
        assert!(matches!(
            classify_state(Some(137), false, false, None, false),
            TaskUpdate::Failed {
                reason: FailReason::CommandExit,
                ..
            }
        ));
        assert!(matches!(
            classify_state(None, false, false, None, false),
            TaskUpdate::Failed {
                reason: FailReason::Lost,
                ..
            }
        ));
    }
}
