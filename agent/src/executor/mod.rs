//! Task executors: start, watch, kill and re-attach to the tasks of one agent.
//!
//! Two executors implement the [`Executor`] trait:
//!
//! * [`process::ProcessExecutor`] runs a command as a plain process under a tiny
//!   per-task supervisor that survives the agent and records the real exit status.
//! * [`docker::DockerExecutor`] runs the task in a Docker container through the
//!   Docker Engine API (bollard).
//!
//! # Events
//!
//! An executor is built with a [`tokio::sync::mpsc::UnboundedSender`] of
//! [`ExecutorEvent`]s. For every launched task it sends, in this order:
//!
//! 1. [`TaskUpdate::Starting`] (as soon as `launch` accepted the spec),
//! 2. [`TaskUpdate::Running`] once the process/container runs, followed by more
//!    `Running { healthy: Some(..) }` updates whenever the health-check verdict changes,
//! 3. exactly one terminal update ([`TaskUpdate::is_terminal`]): `Finished`,
//!    `Failed`, `Killed` or `Error`.
//!
//! A task that ends before it ran (bad spec, missing image, command that cannot
//! start, port in use, ...) goes straight from `Starting` to `Failed`/`Error`;
//! other tasks of the executor are not affected.
//!
//! # Recovery
//!
//! After an agent restart (even after `kill -9`), a *new* executor instance is
//! built on the same state (state directory, Docker daemon) and
//! [`Executor::recover`] is called with the task ids the agent's journal
//! believes to be alive. Tasks that are still running are re-attached (their
//! later updates arrive as events); tasks that ended while the agent was away
//! are returned with their real terminal status in the result, and are *not*
//! sent as events as well, so each terminal status reaches the agent exactly
//! once per executor instance. The agent's journal is the authority across
//! restarts: it should pass in `known` only tasks for which it has not recorded
//! a terminal status yet.
//!
//! Dropping an executor stops all its background work (watchers, log
//! followers, health checks) but leaves the tasks themselves running, which is
//! exactly what a crash of the agent does. It also stops the executor's heartbeat
//! (see [`heartbeat`]): a process task nobody re-attaches to within the recovery
//! timeout, or whose state dir is removed, is killed by its supervisor; such a
//! container is removed by the next agent of the host that recovers or collects.

pub mod cgroup;
pub mod docker;
pub mod health;
pub mod heartbeat;
pub mod process;
mod supervisor;
mod util;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::error::AgentError;

pub use health::HealthTracker;

/// Everything an executor needs to start one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Unique (per agent) task id.
    pub task_id: String,
    /// Per-task directory, created by the caller. The executor writes the
    /// task's standard output and error to the files `stdout` and `stderr` in it.
    /// Process tasks run with it as working directory.
    pub sandbox: PathBuf,
    /// What to run. Required for process tasks; for Docker `None` runs the
    /// image's default command.
    pub command: Option<CommandSpec>,
    /// Where to run it.
    pub container: ContainerSpec,
    /// Resource limits.
    pub limits: Limits,
    /// Default time between SIGTERM and SIGKILL when the task is killed.
    pub kill_grace: Duration,
    /// Free-form labels (Docker: container labels; the `shoal.` prefix is reserved).
    pub labels: Vec<(String, String)>,
    /// Optional health check run by the executor.
    pub health_check: Option<HealthCheckSpec>,
    /// Pod id. Tasks with the same group share a network namespace (Docker: the
    /// first container of the group owns it, later ones join it with the
    /// `container:<first>` network mode) and are killed together.
    pub group: Option<String>,
}

impl LaunchSpec {
    /// A spec with defaults: no command, process container, no limits,
    /// 3 s kill grace, no labels, no health check, no group.
    pub fn new(task_id: impl Into<String>, sandbox: impl Into<PathBuf>) -> Self {
        LaunchSpec {
            task_id: task_id.into(),
            sandbox: sandbox.into(),
            command: None,
            container: ContainerSpec::Process,
            limits: Limits::default(),
            kill_grace: Duration::from_secs(3),
            labels: Vec::new(),
            health_check: None,
            group: None,
        }
    }

    /// Checks the parts of the spec that do not depend on the executor kind.
    /// Executors call this first and end the task with [`TaskUpdate::Error`]
    /// when it fails.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.task_id.is_empty() {
            return Err(SpecError::new("task id is empty"));
        }
        if self.task_id.contains('\0') {
            return Err(SpecError::new("task id contains a NUL byte"));
        }
        if !self.sandbox.is_absolute() {
            return Err(SpecError::new(format!(
                "sandbox {} is not an absolute path",
                self.sandbox.display()
            )));
        }
        if !self.limits.cpus.is_finite() || self.limits.cpus < 0.0 {
            return Err(SpecError::new(format!(
                "invalid cpu limit {}",
                self.limits.cpus
            )));
        }
        if self.limits.mem_mb > (1 << 40) {
            return Err(SpecError::new(format!(
                "memory limit {} MiB is absurd",
                self.limits.mem_mb
            )));
        }
        if let Some(cmd) = &self.command {
            cmd.validate()?;
        }
        if let Some(group) = &self.group {
            if group.is_empty() {
                return Err(SpecError::new("group is empty"));
            }
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.contains('\0') || v.contains('\0') {
                return Err(SpecError::new(format!("invalid label {k:?}")));
            }
        }
        if let Some(hc) = &self.health_check {
            hc.validate()?;
        }
        match &self.container {
            ContainerSpec::Process => {
                if self.command.is_none() {
                    return Err(SpecError::new("a process task needs a command"));
                }
            }
            ContainerSpec::Docker(d) => d.validate()?,
        }
        Ok(())
    }
}

/// The command of a task (mirrors Mesos' `CommandInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// `true`: run `value` with `sh -c value` (`arguments` ignored).
    /// `false`: run the program `value` with `arguments` as its arguments
    /// (`argv = [value] + arguments`; `value` is looked up in `PATH` when it has no `/`).
    pub shell: bool,
    /// The shell command line, or the program.
    pub value: String,
    /// Arguments after the program (argv mode only).
    pub arguments: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl CommandSpec {
    /// `sh -c value`.
    pub fn shell(value: impl Into<String>) -> Self {
        CommandSpec {
            shell: true,
            value: value.into(),
            arguments: Vec::new(),
            env: Vec::new(),
        }
    }

    /// `program args...` without a shell.
    pub fn argv<I, S>(program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandSpec {
            shell: false,
            value: program.into(),
            arguments: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.value.contains('\0') || self.arguments.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::new("command contains a NUL byte"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(SpecError::new(format!(
                    "invalid environment variable name {k:?}"
                )));
            }
        }
        Ok(())
    }
}

/// Where a task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContainerSpec {
    /// A plain process on the host.
    Process,
    /// A Docker container.
    Docker(DockerSpec),
}

/// Docker-specific part of a [`LaunchSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DockerSpec {
    /// Image reference; used as is when present locally, pulled otherwise.
    pub image: String,
    /// Network mode (ignored for group members other than the first).
    pub network: DockerNetwork,
    /// Host-port to container-port mappings (bridge network only).
    pub port_mappings: Vec<PortMapping>,
    /// Pull even when the image is present locally (a failed pull then falls
    /// back to the local image).
    pub force_pull: bool,
}

impl DockerSpec {
    /// Bridge network, no ports, no forced pull.
    pub fn new(image: impl Into<String>) -> Self {
        DockerSpec {
            image: image.into(),
            network: DockerNetwork::Bridge,
            port_mappings: Vec::new(),
            force_pull: false,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.image.trim().is_empty() {
            return Err(SpecError::new("docker image is empty"));
        }
        if self
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(SpecError::new(format!(
                "invalid docker image reference {:?}",
                self.image
            )));
        }
        if !self.port_mappings.is_empty() && self.network != DockerNetwork::Bridge {
            return Err(SpecError::new("port mappings need the bridge network"));
        }
        let mut seen = Vec::new();
        for pm in &self.port_mappings {
            if pm.host_port == 0 || pm.container_port == 0 {
                return Err(SpecError::new(format!(
                    "invalid port mapping {}:{} (ports must be non-zero)",
                    pm.host_port, pm.container_port
                )));
            }
            let key = (pm.host_port, pm.protocol);
            if seen.contains(&key) {
                return Err(SpecError::new(format!(
                    "host port {} mapped twice",
                    pm.host_port
                )));
            }
            seen.push(key);
        }
        Ok(())
    }
}

/// Docker network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DockerNetwork {
    /// Docker's default bridge network (port mappings allowed).
    #[default]
    Bridge,
    /// The host's network namespace.
    Host,
    /// Loopback only.
    None,
}

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the host (bound on the executor's bind address).
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Transport protocol of a [`PortMapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Docker's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Resource limits. Zero means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// CPU shares in cores (Docker: NanoCpus; process: a CFS quota and shares, see `cgroup`).
    pub cpus: f64,
    /// Memory limit in MiB (Docker: memory and memory+swap; process: the cgroup memory limit).
    pub mem_mb: u64,
}

/// A health check run by the executor while the task runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    /// What to probe.
    pub kind: HealthCheckKind,
    /// Wait before the first probe.
    pub delay: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// A probe that takes longer fails.
    pub timeout: Duration,
    /// Failures are ignored during this time after the task started, until the
    /// first success.
    pub grace: Duration,
    /// The task is reported unhealthy after this many failures in a row (at least 1).
    pub consecutive_failures: u32,
}

impl HealthCheckSpec {
    /// A check with 1 s interval, 1 s timeout, no delay/grace, 3 failures.
    pub fn new(kind: HealthCheckKind) -> Self {
        HealthCheckSpec {
            kind,
            delay: Duration::ZERO,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            grace: Duration::ZERO,
            consecutive_failures: 3,
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(SpecError::new(
                "health check interval and timeout must be positive",
            ));
        }
        match &self.kind {
            HealthCheckKind::Command { shell } if shell.contains('\0') => {
                Err(SpecError::new("health check command contains a NUL byte"))
            }
            HealthCheckKind::Http { port: 0, .. } | HealthCheckKind::Tcp { port: 0 } => {
                Err(SpecError::new("health check port must be non-zero"))
            }
            HealthCheckKind::Http { path, .. }
                if !path.starts_with('/')
                    || path.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Err(SpecError::new(format!(
                    "invalid health check path {path:?}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// The probe of a [`HealthCheckSpec`].
///
/// Ports are ports of the task's network namespace: for Docker the probe is
/// made from inside the container's network namespace to 127.0.0.1:port; for
/// process tasks to the host's 127.0.0.1:port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthCheckKind {
    /// `sh -c shell` (process: in the sandbox with the task's env; Docker: `docker exec`); healthy on exit 0.
    Command { shell: String },
    /// `GET http://127.0.0.1:port{path}`; healthy on a 2xx/3xx status.
    Http { port: u16, path: String },
    /// A TCP connect to 127.0.0.1:port.
    Tcp { port: u16 },
}

/// A status update of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskUpdate {
    /// The spec was accepted; the task is being started (image pull, ...).
    Starting,
    /// The task runs. `healthy` is `None` until a health check gave a verdict.
    Running { healthy: Option<bool> },
    /// The task exited with status 0.
    Finished,
    /// The task ended badly or never started.
    Failed {
        exit_code: Option<i32>,
        reason: FailReason,
        message: String,
    },
    /// The task was killed on request.
    Killed { message: String },
    /// The spec was malformed (Mesos TASK_ERROR); nothing was started.
    Error { message: String },
}

impl TaskUpdate {
    /// `true` for the updates after which no other update follows.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, TaskUpdate::Starting | TaskUpdate::Running { .. })
    }
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailReason {
    /// The command exited with a non-zero status or died of a signal it was not sent by us.
    CommandExit,
    /// The task hit its memory limit and was killed by the OOM killer.
    Oom,
    /// The Docker image is not present locally and could not be pulled.
    ImageMissing,
    /// The task could not be started (program not found, port in use, Docker error, ...).
    LaunchFailed,
    /// The task vanished without a recorded status (container removed, supervisor killed, ...).
    Lost,
}

/// An update of one task, as sent on the executor's event channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorEvent {
    pub task_id: String,
    pub update: TaskUpdate,
}

/// One task found by [`Executor::recover`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveredTask {
    pub task_id: String,
    /// `Running { .. }`: re-attached, later updates arrive as events.
    /// A terminal update: the task ended while the agent was away (or cannot be
    /// found: `Failed { reason: Lost, .. }`); nothing more will be sent for it.
    pub update: TaskUpdate,
}

/// A malformed [`LaunchSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task spec: {0}")]
pub struct SpecError(pub String);

impl SpecError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        SpecError(msg.into())
    }
}

/// What [`Executor::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Task ids whose leftovers (Docker: exited containers; process: state
    /// records) were removed.
    pub removed: Vec<String>,
}

/// A task executor. See the [module docs](self) for the event protocol.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Accepts a task and starts it in the background; progress and the outcome
    /// arrive as events (`Starting` is sent before this returns). Problems of the
    /// task itself (bad spec, missing image, ...) end the task with a
    /// `Failed`/`Error` event, not an `Err`. Errors only when the id is already
    /// tracked ([`AgentError::DuplicateTask`]); no event is sent then.
    async fn launch(&self, spec: LaunchSpec) -> Result<(), AgentError>;

    /// Kills a task: SIGTERM, then SIGKILL after `grace` (the spec's
    /// `kill_grace` when `None`), then a `Killed` event. All tasks of the same
    /// group are killed with it. Returns once the signals are under way, not
    /// when the task is dead. [`AgentError::UnknownTask`] when the task is
    /// not running (or already ended).
    async fn kill(&self, task_id: &str, grace: Option<Duration>) -> Result<(), AgentError>;

    /// Re-attaches after an agent restart; see the [module docs](self).
    /// `known` are the task ids the agent's journal knows as not ended. Every
    /// id in `known` gets one entry in the result. Executor tasks not in `known`
    /// are killed (they have no owner any more).
    async fn recover(&self, known: &[String]) -> Result<Vec<RecoveredTask>, AgentError>;

    /// Removes the executor's leftovers of tasks that ended more than
    /// `older_than` ago (Docker: their containers; process: their state records).
    /// Sandboxes belong to the agent and are never touched.
    async fn gc(&self, older_than: Duration) -> Result<GcReport, AgentError>;

    /// Ids of the tasks currently tracked (launching or running).
    fn tasks(&self) -> Vec<String>;
}

/// The entries a kill of `task_id` reaches: the task itself, then the other members of its
/// group (pods die together). `None` when the task is not tracked.
pub(crate) fn kill_targets<'a, E>(
    tasks: &'a std::collections::HashMap<String, E>,
    task_id: &str,
    group_of: impl Fn(&E) -> Option<&String>,
) -> Option<Vec<&'a E>> {
    let entry = tasks.get(task_id)?;
    let mut out = vec![entry];
    if let Some(g) = group_of(entry) {
        out.extend(
            tasks
                .iter()
                .filter(|(id, e)| id.as_str() != task_id && group_of(e) == Some(g))
                .map(|(_, e)| e),
        );
    }
    Some(out)
}

/// Group policy (pure): after a member of a group ended with `update`, must
/// the other members be killed? Yes when it did not finish successfully or when
/// it owned the group's network namespace.
pub(crate) fn group_kills_peers(update: &TaskUpdate, owns_network: bool) -> bool {
    owns_network || !matches!(update, TaskUpdate::Finished)
}

/// What an executor asks of a task's watcher.
pub(crate) enum Control {
    Kill { grace: Option<Duration> },
}

/// A task an executor watches: the channel to its watcher, its group, and the watcher's
/// handle (set once it is spawned).
pub(crate) struct Entry {
    pub(crate) control: tokio::sync::mpsc::UnboundedSender<Control>,
    pub(crate) group: Option<String>,
    pub(crate) abort: Option<tokio::task::AbortHandle>,
}

impl Entry {
    /// A new entry of `group` and the receiver its watcher reads controls from.
    pub(crate) fn new(
        group: Option<String>,
    ) -> (Entry, tokio::sync::mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Entry {
                control,
                group,
                abort: None,
            },
            rx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_spec() -> LaunchSpec {
        let mut s = LaunchSpec::new("t1", "/tmp/sb");
        s.container = ContainerSpec::Docker(DockerSpec::new("busybox"));
        s
    }

    #[test]
    fn process_needs_command() {
        let s = LaunchSpec::new("t", "/tmp/x");
        assert!(s.validate().is_err());
        let mut s = s;
        s.command = Some(CommandSpec::shell("true"));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn rejects_bad_input() {
        let mut s = docker_spec();
        s.sandbox = "relative".into();
        assert!(s.validate().is_err());

        let mut s = docker_spec();
        s.limits.cpus = f64::NAN;
        assert!(s.validate().is_err());

        let mut s = docker_spec();
        if let ContainerSpec::Docker(d) = &mut s.container {
            d.image = " ".into();
        }
        assert!(s.validate().is_err());

        let mut s = docker_spec();
        if let ContainerSpec::Docker(d) = &mut s.container {
            d.network = DockerNetwork::Host;
            d.port_mappings.push(PortMapping {
                host_port: 1,
                container_port: 2,
                protocol: Protocol::Tcp,
            });
        }
        assert!(s.validate().is_err());

        let mut s = docker_spec();
        s.command = Some(CommandSpec::shell("x").with_env("A=B", "c"));
        assert!(s.validate().is_err());

        let mut s = docker_spec();
        let mut hc = HealthCheckSpec::new(HealthCheckKind::Http {
            port: 80,
            path: "no-slash".into(),
        });
        s.health_check = Some(hc.clone());
        assert!(s.validate().is_err());
        hc.kind = HealthCheckKind::Http {
            port: 80,
            path: "/".into(),
        };
        s.health_check = Some(hc);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn terminal_updates() {
        assert!(!TaskUpdate::Starting.is_terminal());
        assert!(!TaskUpdate::Running {
            healthy: Some(true)
        }
        .is_terminal());
        assert!(TaskUpdate::Finished.is_terminal());
        assert!(TaskUpdate::Killed {
            message: String::new()
        }
        .is_terminal());
    }

    #[test]
    fn group_policy() {
        assert!(!group_kills_peers(&TaskUpdate::Finished, false));
        assert!(group_kills_peers(&TaskUpdate::Finished, true));
        let failed = TaskUpdate::Failed {
            exit_code: Some(1),
            reason: FailReason::CommandExit,
            message: String::new(),
        };
        assert!(group_kills_peers(&failed, false));
    }
}
