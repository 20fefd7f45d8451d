//! Services: the service file, its validation, the service records kept in the cell, and the
//! built-in service scheduler as a sans-IO state machine.
//!
//! A service is a task template run as `count` long-running **instances**. The cell keeps a
//! [`Service`] record per service (its current spec and spec version, the desired count, its
//! state) with one [`Instance`] record per instance, changed only through
//! `Command::SubmitService` and `Command::UpdateService` on the one commit path.
//!
//! An instance has an index (stable while it exists) and a generation; its task in the cell is
//! `<service>.<index>.<generation>`. When the task ends the instance is restarted with the
//! next generation after a backoff that doubles with each failure in a row. Because ids are
//! deterministic, a scheduler rebuilt after a master restart recognises every task it placed:
//! a recorded instance whose task is in the cell is **adopted**, never started twice.
//!
//! The [`ServiceScheduler`] is a reconcile loop: for each service whose records or tasks
//! changed, it reads the current record and the cell's tasks and decides what to change —
//! restart ended instances, start or stop instances to reach the count, replace instances of
//! an older spec version within the update's `max_surge` / `max_unavailable`, and place what
//! waits (binpack or spread, with constraints). It returns claims, kills and record updates;
//! it acts only through the claim interface any native scheduler uses.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use shoal_core::*;

use crate::jobs::{
    attribute_value, check_task_fields, check_team_and_priority, describe_end, fmt_ms,
    free_ports_upto, parse_duration_ms, port_count, split_port, task_info_json, valid_name,
    with_ports, Actions, Constraint, ConstraintOp, FieldError, JobErrors, TaskFields,
};
use crate::limits::{JOB_NAME_BYTES_MAX, SERVICE_COUNT_MAX, SERVICE_PLACEMENTS_PER_STEP_MAX};
use crate::{Cell, Event, LogEntry, SchedulerEvent};

/// The owner written on every task the service scheduler places.
pub const SERVICE_OWNER: &str = "shoal-service";
/// Restart backoff when the file gives none, and its cap.
pub const RESTART_BACKOFF_DEFAULT_MS: u64 = 1000;
pub const RESTART_BACKOFF_MAX_DEFAULT_MS: u64 = 60_000;
/// Rolling update defaults: one extra instance at a time, never fewer available than `count`.
pub const MAX_SURGE_DEFAULT: u32 = 1;
pub const MAX_UNAVAILABLE_DEFAULT: u32 = 0;
/// Health check defaults (Mesos's, except that the first probe is not delayed: failures in the
/// grace period are ignored anyway).
pub const HEALTH_INTERVAL_DEFAULT_MS: u64 = 10_000;
pub const HEALTH_TIMEOUT_DEFAULT_MS: u64 = 20_000;
pub const HEALTH_GRACE_DEFAULT_MS: u64 = 10_000;
pub const HEALTH_FAILURES_DEFAULT: u32 = 3;
/// An instance that ran this long before it ended is restarted after the base backoff again
/// (its earlier failures no longer count).
pub const FAILURES_RESET_MS: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// The service file

/// A service file as written (TOML or JSON). See `docs/services.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name; also its id unless `id` is given.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The team (role) the instances run as; `*` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// 0 to 1000, default 50 (recorded; placement does not preempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// How many instances to keep running.
    #[serde(default = "one")]
    pub count: u32,
    /// What every instance runs.
    pub task: ServiceTask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartDef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateDef>,
    #[serde(default)]
    pub placement: PlacementStrategy,
    /// The agent attribute `spread` balances over (`hostname` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

fn one() -> u32 {
    1
}

/// The task every instance runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceTask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub resources: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

impl ServiceTask {
    fn fields(&self) -> TaskFields<'_> {
        TaskFields {
            image: self.image.as_deref(),
            command: self.command.as_deref(),
            resources: &self.resources,
            env: &self.env,
            ports: &self.ports,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    Command,
    Http,
    Tcp,
}

/// A health check, run by the agent (Mesos's `HealthCheck`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckDef {
    #[serde(rename = "type")]
    pub kind: HealthCheckType,
    /// `command`: a shell command run in the task's environment; healthy on exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `http`: the path of a GET to `127.0.0.1:<port>`; healthy on 2xx and 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http`, `tcp`: the name of one of the task's ports (the first one when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures this soon after the start do not count, until the first success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
    /// The agent kills the task after this many failures in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
}

/// How ended instances are restarted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartDef {
    /// Wait before restarting an instance that failed once; doubled for each failure in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// The longest wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
}

/// How a new spec version replaces the instances of the old one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDef {
    /// Instances allowed beyond `count` during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<u32>,
    /// Instances allowed below `count` available during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// The feasible agent that is fullest after the placement.
    Binpack,
    /// The agent whose `spread_by` value has the fewest instances (ties: the emptiest agent).
    #[default]
    Spread,
}

/// Reads a service file: JSON when it starts with `{`, TOML otherwise.
pub fn parse_service_file(text: &str) -> Result<ServiceSpec, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }
}

/// A health check with everything parsed; the port is an index into the task's ports.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledHealth {
    pub kind: HealthCheckType,
    pub command: String,
    pub path: String,
    pub port_index: usize,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub grace_ms: u64,
    pub max_failures: u32,
}

/// A validated service file.
#[derive(Clone, Debug)]
pub struct CompiledService {
    pub id: String,
    pub role: String,
    pub spec: Arc<ServiceSpec>,
    pub resources: ResourceSet,
    pub health: Option<CompiledHealth>,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub spread_by: String,
}

fn duration_field(
    text: &Option<String>,
    default: u64,
    field: &str,
    err: &mut dyn FnMut(String, String),
) -> u64 {
    match text.as_deref().map(parse_duration_ms) {
        None => default,
        Some(Ok(0)) => {
            err(field.into(), "must be longer than 0".into());
            default
        }
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            err(field.into(), e);
            default
        }
    }
}

impl CompiledService {
    /// Checks a service file; every problem is reported with its field.
    pub fn compile(spec: &ServiceSpec) -> Result<CompiledService, JobErrors> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        let id = spec.id.clone().unwrap_or_else(|| spec.name.clone());
        let bad_name = format!("must be 1..={JOB_NAME_BYTES_MAX} letters, digits, '-' or '_'");
        if !valid_name(&spec.name) {
            err("name".into(), format!("'{}' {bad_name}", spec.name));
        }
        if spec.id.is_some() && !valid_name(&id) {
            err("id".into(), format!("'{id}' {bad_name}"));
        }
        let role = check_team_and_priority(spec.team.as_deref(), spec.priority, &mut err);
        if spec.count > SERVICE_COUNT_MAX {
            err(
                "count".into(),
                format!("{} is more than {SERVICE_COUNT_MAX}", spec.count),
            );
        }
        let at = |f: &str| format!("task.{f}");
        let resources = check_task_fields(&spec.task.fields(), &at, &mut err);
        let health = spec.health_check.as_ref().map(|h| {
            let mut port_index = 0;
            let (mut command, mut path) = (String::new(), String::new());
            match h.kind {
                HealthCheckType::Command => match &h.command {
                    Some(c) if !c.trim().is_empty() => command = c.clone(),
                    _ => err(
                        "health_check.command".into(),
                        "a command check needs a command".into(),
                    ),
                },
                HealthCheckType::Http | HealthCheckType::Tcp => {
                    match &h.port {
                        Some(p) => {
                            match spec.task.ports.iter().position(|x| split_port(x).0 == p) {
                                Some(i) => port_index = i,
                                None => err(
                                    "health_check.port".into(),
                                    format!("'{p}' is not one of the task's ports"),
                                ),
                            }
                        }
                        None if spec.task.ports.is_empty() => err(
                            "health_check.port".into(),
                            "an http or tcp check needs a port: name one in task.ports".into(),
                        ),
                        None => {}
                    }
                    if h.kind == HealthCheckType::Http {
                        path = h.path.clone().unwrap_or_else(|| "/".into());
                        if !path.starts_with('/')
                            || path.chars().any(|c| c.is_whitespace() || c.is_control())
                        {
                            err(
                                "health_check.path".into(),
                                format!("'{path}' is not a URL path"),
                            );
                        }
                    }
                }
            }
            if h.kind != HealthCheckType::Command && h.command.is_some() {
                err(
                    "health_check.command".into(),
                    "only a command check has a command".into(),
                );
            }
            let max_failures = h
                .max_consecutive_failures
                .unwrap_or(HEALTH_FAILURES_DEFAULT);
            if max_failures == 0 {
                err(
                    "health_check.max_consecutive_failures".into(),
                    "must be at least 1".into(),
                );
            }
            CompiledHealth {
                kind: h.kind,
                command,
                path,
                port_index,
                interval_ms: duration_field(
                    &h.interval,
                    HEALTH_INTERVAL_DEFAULT_MS,
                    "health_check.interval",
                    &mut err,
                ),
                timeout_ms: duration_field(
                    &h.timeout,
                    HEALTH_TIMEOUT_DEFAULT_MS,
                    "health_check.timeout",
                    &mut err,
                ),
                grace_ms: match h.grace_period.as_deref().map(parse_duration_ms) {
                    None => HEALTH_GRACE_DEFAULT_MS,
                    Some(Ok(ms)) => ms,
                    Some(Err(e)) => {
                        err("health_check.grace_period".into(), e);
                        0
                    }
                },
                max_failures,
            }
        });
        let restart = spec.restart.clone().unwrap_or_default();
        let backoff_ms = duration_field(
            &restart.backoff,
            RESTART_BACKOFF_DEFAULT_MS,
            "restart.backoff",
            &mut err,
        );
        let backoff_max_ms = duration_field(
            &restart.max_backoff,
            RESTART_BACKOFF_MAX_DEFAULT_MS.max(backoff_ms),
            "restart.max_backoff",
            &mut err,
        );
        if backoff_max_ms < backoff_ms {
            err(
                "restart.max_backoff".into(),
                "is shorter than restart.backoff".into(),
            );
        }
        let update = spec.update.clone().unwrap_or_default();
        let max_surge = update.max_surge.unwrap_or(MAX_SURGE_DEFAULT);
        let max_unavailable = update.max_unavailable.unwrap_or(MAX_UNAVAILABLE_DEFAULT);
        if max_surge == 0 && max_unavailable == 0 {
            err(
                "update".into(),
                "max_surge and max_unavailable are both 0: an update could never start".into(),
            );
        }
        let spread_by = spec.spread_by.clone().unwrap_or_else(|| "hostname".into());
        if spread_by.is_empty() {
            err("spread_by".into(), "an empty attribute name".into());
        }
        for c in &spec.constraints {
            if c.attribute.is_empty() {
                err(
                    "constraints".into(),
                    "a constraint needs an attribute".into(),
                );
            }
            if c.operator == ConstraintOp::MaxPer && c.value.parse::<u32>().map_or(true, |n| n == 0)
            {
                err(
                    "constraints".into(),
                    format!(
                        "max_per on {}: value '{}' must be a count of at least 1",
                        c.attribute, c.value
                    ),
                );
            }
        }
        if !errors.is_empty() {
            return Err(JobErrors(errors));
        }
        Ok(CompiledService {
            id,
            role,
            spec: Arc::new(spec.clone()),
            resources,
            health,
            backoff_ms,
            backoff_max_ms,
            max_surge,
            max_unavailable,
            spread_by,
        })
    }

    /// The wait before restarting an instance that failed `failures` times in a row.
    pub fn backoff(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(30);
        self.backoff_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms)
    }

    /// An instance's Mesos `TaskInfo` (JSON), with its health check on the ports it was given.
    fn task_info(
        &self,
        index: u32,
        task_id: &TaskId,
        agent: &AgentId,
        resources: &ResourceSet,
        ports: &[u64],
    ) -> TaskSpec {
        let index_text = index.to_string();
        let mut info = task_info_json(
            &format!("{}.{index}", self.id),
            task_id,
            agent,
            resources,
            ports,
            &self.spec.task.fields(),
            &[("SHOAL_SERVICE", &self.id), ("SHOAL_INSTANCE", &index_text)],
        );
        if let Some(h) = &self.health {
            // A port mapped to a container port is probed inside the container (its network
            // namespace), on the container port; otherwise on the host port.
            let port = match self
                .spec
                .task
                .ports
                .get(h.port_index)
                .map(|p| split_port(p).1)
            {
                Some(Some(Ok(container_port))) => u64::from(container_port),
                _ => ports.get(h.port_index).copied().unwrap_or(0),
            };
            let mut check = json!({
                "delay_seconds": 0.0,
                "interval_seconds": h.interval_ms as f64 / 1000.0,
                "timeout_seconds": h.timeout_ms as f64 / 1000.0,
                "grace_period_seconds": h.grace_ms as f64 / 1000.0,
                "consecutive_failures": h.max_failures,
            });
            match h.kind {
                HealthCheckType::Command => {
                    check["type"] = json!("COMMAND");
                    check["command"] = json!({"shell": true, "value": h.command});
                }
                HealthCheckType::Http => {
                    check["type"] = json!("HTTP");
                    check["http"] = json!({"port": port, "path": h.path});
                }
                HealthCheckType::Tcp => {
                    check["type"] = json!("TCP");
                    check["tcp"] = json!({"port": port});
                }
            }
            info["health_check"] = check;
        }
        TaskSpec::from_value(&info)
    }

    /// Whether an agent could ever hold an instance (empty, constraints on its own attributes).
    fn agent_can_hold(&self, agent: &Agent) -> bool {
        agent.state != AgentState::Gone
            && agent.total.contains(&self.resources)
            && port_count(&agent.total) >= self.spec.task.ports.len() as u64
            && self.spec.constraints.iter().all(|c| c.matches(agent))
    }
}

/// Refuses a service no agent of the cell could hold even when empty. A cell without agents
/// refuses nothing (agents may still come).
pub fn check_fits<'a>(
    svc: &CompiledService,
    agents: impl IntoIterator<Item = &'a Agent>,
) -> Result<(), JobErrors> {
    let agents: Vec<&Agent> = agents
        .into_iter()
        .filter(|a| a.state != AgentState::Gone)
        .collect();
    if agents.is_empty() || agents.iter().any(|a| svc.agent_can_hold(a)) {
        return Ok(());
    }
    let matching = agents
        .iter()
        .any(|a| svc.spec.constraints.iter().all(|c| c.matches(a)));
    let (field, message) = if !matching {
        (
            "constraints",
            "no agent of the cell matches them".to_string(),
        )
    } else if agents.iter().any(|a| a.total.contains(&svc.resources)) {
        (
            "task.ports",
            format!("no agent has {} ports", svc.spec.task.ports.len()),
        )
    } else {
        (
            "task.resources",
            format!(
                "{} fits no agent of the cell, even an empty one",
                svc.resources
            ),
        )
    };
    Err(JobErrors(vec![FieldError {
        field: field.into(),
        message,
    }]))
}

/// The id of an instance's task: `<service>.<index>.<generation>`.
pub fn instance_task_id(service: &str, index: u32, generation: u32) -> TaskId {
    TaskId::new(format!("{service}.{index}.{generation}"))
}

/// The service and index of a task id of that shape.
fn parse_task_id(task_id: &TaskId) -> Option<(&str, u32, u32)> {
    let mut parts = task_id.as_str().split('.');
    let (svc, index, gen) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((svc, index.parse().ok()?, gen.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// The records kept in the cell

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceState {
    Running,
    /// Stopped by a user: every instance is killed and removed.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Waits to be placed (for room, or for its restart backoff).
    Pending,
    /// Its task is in the cell (staging, running, …).
    Running,
    /// Being removed: its task was told to stop; the record goes when the task ends.
    Stopping,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub index: u32,
    /// Grows with each restart; the task is `<service>.<index>.<generation>`.
    pub generation: u32,
    /// The spec version the instance runs (or will run).
    pub spec_version: u32,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// Ends in a row, each within `FAILURES_RESET_MS` of its start; sets the restart backoff.
    #[serde(default)]
    pub failures: u32,
    /// A pending restart waits until then.
    #[serde(default)]
    pub not_before: Timestamp,
    #[serde(default)]
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A service and its instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    /// The current spec.
    pub spec: Arc<ServiceSpec>,
    /// Grows by one with each changed spec (starts at 1).
    pub spec_version: u32,
    /// Desired instances: the spec's `count`, or the last scale.
    pub count: u32,
    pub state: ServiceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub submitted_at: Timestamp,
    /// When the spec, count or state last changed.
    #[serde(default)]
    pub updated_at: Timestamp,
    /// The cell version of the service's last change.
    pub version: Version,
    /// By index. Stored as records of their own: a change to one instance writes one row.
    #[serde(default)]
    pub instances: OrdMap<u32, Instance>,
}

/// A change to a service's record, as the scheduler, a scale or a stop commits it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    pub service_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// New or changed instance records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<Instance>,
    /// Instances removed (by index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<u32>,
}

/// Decides `Command::SubmitService`: a new service, the same file again (no change), or a
/// changed file (a new spec version: the scheduler rolls the instances over to it). A stopped
/// service submitted again runs again.
pub(crate) fn decide_submit(
    cell: &Cell,
    now: Timestamp,
    next: Version,
    spec: &ServiceSpec,
) -> Result<(Vec<SchedulerEvent>, String, bool, bool), Rejection> {
    let compiled = CompiledService::compile(spec)
        .map_err(|e| Rejection::Invalid(format!("invalid service: {e}")))?;
    check_fits(&compiled, cell.agents())
        .map_err(|e| Rejection::Invalid(format!("invalid service: {e}")))?;
    if let Some(existing) = cell.records().service(&compiled.id) {
        let same = *existing.spec == *spec;
        if same && existing.state == ServiceState::Running {
            return Ok((vec![], compiled.id, false, false));
        }
        let event = SchedulerEvent::ServiceUpdated {
            service_id: compiled.id.clone(),
            spec: (!same).then(|| compiled.spec.clone()),
            spec_version: (!same).then_some(existing.spec_version + 1),
            count: Some(spec.count),
            state: Some(ServiceState::Running),
            message: None,
            updated_at: now,
            instances: vec![],
            removed: vec![],
        };
        return Ok((vec![event], compiled.id, false, true));
    }
    let service = Service {
        id: compiled.id.clone(),
        spec: compiled.spec.clone(),
        spec_version: 1,
        count: spec.count,
        state: ServiceState::Running,
        message: None,
        submitted_at: now,
        updated_at: now,
        version: next,
        instances: OrdMap::new(),
    };
    Ok((
        vec![SchedulerEvent::ServiceSubmitted {
            service: Box::new(service),
        }],
        compiled.id,
        true,
        true,
    ))
}

/// Decides `Command::UpdateService`. A stopped service takes no new count and no new
/// instances (its instances may still change and go).
pub(crate) fn decide_update(
    cell: &Cell,
    now: Timestamp,
    update: &ServiceUpdate,
) -> Result<Vec<SchedulerEvent>, Rejection> {
    let svc = cell
        .records()
        .service(&update.service_id)
        .ok_or_else(|| Rejection::NotFound(format!("service {}", update.service_id)))?;
    if let Some(n) = update.count {
        if n > SERVICE_COUNT_MAX {
            return Err(Rejection::Invalid(format!(
                "count: {n} is more than {SERVICE_COUNT_MAX}"
            )));
        }
        if svc.state == ServiceState::Stopped && update.state != Some(ServiceState::Running) {
            return Err(Rejection::Conflict(format!(
                "service {} is stopped; run its file again to start it",
                svc.id
            )));
        }
    }
    if update.state == Some(ServiceState::Running) {
        return Err(Rejection::Invalid(
            "a service runs again by submitting its file".into(),
        ));
    }
    let stopped = svc.state == ServiceState::Stopped;
    let instances: Vec<Instance> = update
        .instances
        .iter()
        .filter(|i| svc.instances.get(&i.index) != Some(*i))
        .filter(|i| !stopped || svc.instances.contains_key(&i.index))
        .cloned()
        .collect();
    let removed: Vec<u32> = update
        .removed
        .iter()
        .copied()
        .filter(|i| svc.instances.contains_key(i))
        .collect();
    let count = update.count.filter(|n| *n != svc.count);
    let state = update.state.filter(|s| *s != svc.state);
    let message = update
        .message
        .clone()
        .filter(|m| svc.message.as_ref() != Some(m));
    if count.is_none()
        && state.is_none()
        && message.is_none()
        && instances.is_empty()
        && removed.is_empty()
    {
        return Ok(vec![]);
    }
    let header = count.is_some() || state.is_some();
    Ok(vec![SchedulerEvent::ServiceUpdated {
        service_id: svc.id.clone(),
        spec: None,
        spec_version: None,
        count,
        state,
        message,
        updated_at: if header { now } else { svc.updated_at },
        instances,
        removed,
    }])
}

/// Folds a service event into the services of the cell.
pub(crate) fn apply_event(
    services: &mut imbl::HashMap<String, Arc<Service>>,
    v: Version,
    event: &SchedulerEvent,
) {
    match event {
        SchedulerEvent::ServiceSubmitted { service } => {
            let mut s = service.as_ref().clone();
            s.version = v;
            services.insert(s.id.clone(), Arc::new(s));
        }
        SchedulerEvent::ServiceUpdated {
            service_id,
            spec,
            spec_version,
            count,
            state,
            message,
            updated_at,
            instances,
            removed,
        } => {
            let s = Arc::make_mut(
                services
                    .get_mut(service_id)
                    .expect("decided on a known service"),
            );
            if let Some(spec) = spec {
                s.spec = spec.clone();
            }
            if let Some(n) = spec_version {
                s.spec_version = *n;
            }
            if let Some(n) = count {
                s.count = *n;
            }
            if let Some(st) = state {
                s.state = *st;
                if *st == ServiceState::Running {
                    s.message = None;
                }
            }
            if let Some(m) = message {
                s.message = Some(m.clone());
            }
            s.updated_at = *updated_at;
            // Removals first: an index may go and come back (a new instance) in one update.
            for i in removed {
                s.instances.remove(i);
            }
            for i in instances {
                s.instances.insert(i.index, i.clone());
            }
            s.version = v;
        }
        SchedulerEvent::JobSubmitted { .. } | SchedulerEvent::JobUpdated { .. } => {}
    }
}

/// Whether an instance's task counts as available: running, and healthy if it has a check.
pub fn task_available(task: &Task, has_check: bool) -> bool {
    task.state == TaskState::Running && (!has_check || task.status.healthy == Some(true))
}

/// How a service stands, for status displays: instances by what their tasks do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCounts {
    /// Instances that are not being removed.
    pub instances: u32,
    /// Of those, available (running, and healthy when checked).
    pub available: u32,
    /// Available instances of the current spec version.
    pub available_current: u32,
    /// Instances of an older spec version (not being removed).
    pub old: u32,
    pub pending: u32,
    pub stopping: u32,
}

impl Service {
    pub fn counts(&self, cell: &Cell) -> ServiceCounts {
        let has_check = self.spec.health_check.is_some();
        let mut c = ServiceCounts::default();
        for i in self.instances.values() {
            if i.state == InstanceState::Stopping {
                c.stopping += 1;
                continue;
            }
            c.instances += 1;
            if i.state == InstanceState::Pending {
                c.pending += 1;
            }
            if i.spec_version < self.spec_version {
                c.old += 1;
            }
            let task_id = instance_task_id(&self.id, i.index, i.generation);
            if i.state == InstanceState::Running
                && cell
                    .task(&task_id)
                    .is_some_and(|t| task_available(t, has_check))
            {
                c.available += 1;
                if i.spec_version == self.spec_version {
                    c.available_current += 1;
                }
            }
        }
        c
    }

    /// Whether the service has settled: `count` available instances of the current spec and
    /// nothing else (for a stopped service: no instance left).
    pub fn settled(&self, cell: &Cell) -> bool {
        let c = self.counts(cell);
        match self.state {
            ServiceState::Stopped => self.instances.is_empty(),
            ServiceState::Running => {
                c.available_current == self.count
                    && c.instances == self.count
                    && c.stopping == 0
                    && c.old == 0
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The service scheduler

/// What the service scheduler wants done after a step: its record updates, claims (one per
/// service; report each outcome with [`ServiceScheduler::claimed`]), kills, and when a restart
/// backoff ends. Submit the record updates first, then the claims (so an instance's record is
/// always committed no later than its task), then the kills.
pub type ServiceActions = Actions<ServiceUpdate>;

/// The built-in service scheduler: see the module docs. A step reconciles only the services
/// whose records or tasks changed (or whose timer is due), each in time proportional to its
/// instances.
#[derive(Debug, Default)]
pub struct ServiceScheduler {
    /// Services to reconcile at the next step.
    dirty: BTreeSet<String>,
    /// Instances in a claim whose outcome is not known yet.
    placing: HashSet<(String, u32)>,
    /// Services with instances that found no room: reconciled again when room may have freed.
    no_room: BTreeSet<String>,
    /// Restart backoffs: reconcile the service then.
    timers: BTreeSet<(Timestamp, String)>,
    /// Compiled specs by service, with the spec version they are of.
    compiled: HashMap<String, (u32, Arc<CompiledService>)>,
    /// Live tasks of the scheduler that no record accounts for (found at recovery): killed.
    orphans: Vec<TaskId>,
    claim_seq: u64,
}

impl ServiceScheduler {
    pub fn new() -> ServiceScheduler {
        ServiceScheduler::default()
    }

    /// A scheduler for a cell as loaded (at start, or after missing commits): every service is
    /// reconciled at the first step, which adopts the instances whose tasks are in the cell.
    /// Live tasks placed by the service scheduler that no record accounts for (a record update
    /// the store refused) are killed.
    pub fn recover(cell: &Cell) -> ServiceScheduler {
        let mut s = ServiceScheduler::new();
        s.dirty = cell
            .records()
            .services()
            .map(|svc| svc.id.clone())
            .collect();
        for t in cell.tasks() {
            if t.owner != SERVICE_OWNER || t.state.is_terminal() || t.state == TaskState::Killing {
                continue;
            }
            let known = parse_task_id(&t.id).is_some_and(|(svc, index, gen)| {
                cell.records()
                    .service(svc)
                    .and_then(|s| s.instances.get(&index))
                    .is_some_and(|i| i.generation == gen)
            });
            if !known {
                s.orphans.push(t.id.clone());
            }
        }
        s
    }

    /// Tells the scheduler about a committed log entry (it reads the details at the next step).
    pub fn observe(&mut self, entry: &LogEntry) {
        for ev in &entry.events {
            match ev {
                Event::TaskStatusChanged { task_id, state, .. } => {
                    if let Some((svc, _, _)) = parse_task_id(task_id) {
                        self.dirty.insert(svc.to_string());
                    }
                    if state.is_terminal() {
                        self.room();
                    }
                }
                Event::ClaimCommitted { tasks, .. } => {
                    for t in tasks.iter().filter(|t| t.owner == SERVICE_OWNER) {
                        if let Some((svc, _, _)) = parse_task_id(&t.id) {
                            self.dirty.insert(svc.to_string());
                        }
                    }
                }
                Event::Records(SchedulerEvent::ServiceSubmitted { service }) => {
                    self.dirty.insert(service.id.clone());
                }
                Event::Records(SchedulerEvent::ServiceUpdated { service_id, .. }) => {
                    self.dirty.insert(service_id.clone());
                }
                Event::AgentRegistered { .. }
                | Event::AgentResourcesUpdated { .. }
                | Event::RoleConfigured { .. }
                | Event::HoldsReleased { .. }
                | Event::HoldsCleared { .. } => self.room(),
                _ => {}
            }
        }
    }

    fn room(&mut self) {
        self.dirty.extend(self.no_room.iter().cloned());
    }

    /// Asks for another try of what found no room (claims refused for reasons that pass
    /// without a commit the scheduler would notice, such as quota headroom).
    pub fn nudge(&mut self) {
        self.room();
    }

    /// Whether a step would have something to do now (besides timers).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.orphans.is_empty()
    }

    /// Decides what to do now, on `cell` (a published snapshot) at `now`.
    pub fn step(&mut self, cell: &Cell, now: Timestamp) -> ServiceActions {
        let mut actions = ServiceActions {
            kills: std::mem::take(&mut self.orphans),
            ..ServiceActions::default()
        };
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let (_, id) = self.timers.pop_first().expect("a first timer");
            self.dirty.insert(id);
        }
        for id in std::mem::take(&mut self.dirty) {
            self.reconcile(cell, &id, now, &mut actions);
        }
        actions.wake_at = self.timers.first().map(|(at, _)| *at);
        actions
    }

    /// The outcome of a claim from [`ServiceActions::claims`]: `None` when it could not be
    /// submitted. A committed placement is adopted at the next step (its task is in the cell);
    /// a refused one waits for room.
    pub fn claimed(&mut self, claim: &Claim, outcome: Option<&ClaimOutcome>, _now: Timestamp) {
        let committed: HashSet<&TaskId> = outcome
            .map(|o| {
                o.placements
                    .iter()
                    .filter(|p| p.committed || p.rejected == Some(RejectReason::DuplicateTaskId))
                    .map(|p| &p.task_id)
                    .collect()
            })
            .unwrap_or_default();
        for p in &claim.placements {
            let Some((svc, index, _)) = parse_task_id(&p.task_id) else {
                continue;
            };
            self.placing.remove(&(svc.to_string(), index));
            self.dirty.insert(svc.to_string());
            if !committed.contains(&p.task_id) {
                self.no_room.insert(svc.to_string());
                // Retried when room frees up or at the next nudge, not at once.
                self.dirty.remove(svc);
            }
        }
    }

    fn compiled(&mut self, svc: &Service) -> Option<Arc<CompiledService>> {
        if let Some((v, c)) = self.compiled.get(&svc.id) {
            if *v == svc.spec_version {
                return Some(c.clone());
            }
        }
        let c = Arc::new(CompiledService::compile(&svc.spec).ok()?);
        self.compiled
            .insert(svc.id.clone(), (svc.spec_version, c.clone()));
        Some(c)
    }

    /// Brings one service closer to what it should be: see the module docs.
    fn reconcile(&mut self, cell: &Cell, id: &str, now: Timestamp, actions: &mut ServiceActions) {
        let Some(svc) = cell.records().service(id) else {
            self.compiled.remove(id);
            self.no_room.remove(id);
            return;
        };
        let Some(c) = self.compiled(svc) else {
            return; // A stored spec that no longer validates: left alone (its record says so).
        };
        let cur = svc.spec_version;
        let mut inst: BTreeMap<u32, Instance> =
            svc.instances.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut changed: BTreeSet<u32> = BTreeSet::new();
        let mut removed: Vec<u32> = Vec::new();
        let mut kills: Vec<TaskId> = Vec::new();
        let stopped = svc.state == ServiceState::Stopped;

        // 1. Each instance against its task in the cell.
        for (&index, i) in inst.iter_mut() {
            if self.placing.contains(&(id.to_string(), index)) {
                continue;
            }
            let task_id = instance_task_id(id, index, i.generation);
            let task = cell.task(&task_id).filter(|t| t.owner == SERVICE_OWNER);
            if i.state == InstanceState::Pending {
                match task {
                    // Committed before it was recorded (a claim of this step or of an earlier
                    // master): adopt it.
                    Some(t) => {
                        i.state = InstanceState::Running;
                        i.agent_id = Some(t.agent_id.clone());
                        i.started_at = now;
                        i.message = None;
                        changed.insert(index);
                    }
                    None => continue,
                }
            }
            let ended = match task {
                None => Some("its task is not in the cell".to_string()),
                Some(t) if t.state.is_terminal() => Some(describe_end(t)),
                Some(t) => {
                    if i.state == InstanceState::Stopping || stopped {
                        if i.state != InstanceState::Stopping {
                            i.state = InstanceState::Stopping;
                            changed.insert(index);
                        }
                        if t.state != TaskState::Killing {
                            kills.push(task_id.clone());
                        }
                    }
                    None
                }
            };
            let Some(why) = ended else { continue };
            if i.state == InstanceState::Stopping || stopped {
                removed.push(index);
                continue;
            }
            // Restart policy: the next generation, after a backoff that grows with each end
            // in a row soon after the start.
            if now.saturating_sub(i.started_at) >= FAILURES_RESET_MS {
                i.failures = 0;
            }
            i.failures += 1;
            let wait = c.backoff(i.failures);
            i.generation = next_generation(cell, id, index, i.generation + 1);
            i.state = InstanceState::Pending;
            i.spec_version = cur;
            i.agent_id = None;
            i.not_before = now.saturating_add(wait);
            i.message = Some(format!(
                "{task_id} ended ({why}); restart in {}",
                fmt_ms(wait)
            ));
            changed.insert(index);
        }
        for index in &removed {
            inst.remove(index);
            changed.remove(index);
        }
        if stopped {
            // Pending instances have no task: they simply go.
            let pending: Vec<u32> = inst
                .iter()
                .filter(|(k, i)| {
                    i.state == InstanceState::Pending
                        && !self.placing.contains(&(id.to_string(), **k))
                })
                .map(|(k, _)| *k)
                .collect();
            for k in pending {
                inst.remove(&k);
                changed.remove(&k);
                removed.push(k);
            }
        } else {
            self.converge(
                cell,
                svc,
                &c,
                now,
                &mut inst,
                &mut changed,
                &mut removed,
                &mut kills,
            );
            self.place(cell, svc, &c, now, &mut inst, &mut changed, actions);
        }
        let mut removed_set: Vec<u32> = removed;
        removed_set.sort_unstable();
        removed_set.dedup();
        // An index removed and used again by a new instance in the same step is written, not
        // removed.
        removed_set.retain(|k| !inst.contains_key(k));
        if !changed.is_empty() || !removed_set.is_empty() {
            actions.updates.push(ServiceUpdate {
                service_id: id.to_string(),
                instances: changed
                    .iter()
                    .filter_map(|k| inst.get(k).cloned())
                    .collect(),
                removed: removed_set,
                ..ServiceUpdate::default()
            });
        }
        actions.kills.extend(kills);
        for i in inst.values() {
            if i.state == InstanceState::Pending && i.not_before > now {
                self.timers.insert((i.not_before, id.to_string()));
            }
        }
    }

    /// Count and rolling update: starts, stops and replaces instances (see the docs of
    /// [`ServiceScheduler`]); never more than `count + max_surge` instances exist (those being
    /// removed included) and never fewer than `count - max_unavailable` are available because
    /// of a stop decided here.
    #[allow(clippy::too_many_arguments)]
    fn converge(
        &self,
        cell: &Cell,
        svc: &Service,
        c: &CompiledService,
        _now: Timestamp,
        inst: &mut BTreeMap<u32, Instance>,
        changed: &mut BTreeSet<u32>,
        removed: &mut Vec<u32>,
        kills: &mut Vec<TaskId>,
    ) {
        let id = svc.id.as_str();
        let n = svc.count as usize;
        let cur = svc.spec_version;
        let has_check = c.health.is_some();
        let placing = |k: u32| self.placing.contains(&(id.to_string(), k));
        // A pending instance has no task: it takes the current spec when it is placed.
        for (k, i) in inst.iter_mut() {
            if i.state == InstanceState::Pending && i.spec_version != cur {
                i.spec_version = cur;
                changed.insert(*k);
            }
        }
        let available = |i: &Instance| {
            i.state == InstanceState::Running
                && cell
                    .task(&instance_task_id(id, i.index, i.generation))
                    .is_some_and(|t| task_available(t, has_check))
        };
        let stop = |i: &mut Instance, kills: &mut Vec<TaskId>, why: &str| {
            i.state = InstanceState::Stopping;
            i.message = Some(why.to_string());
            kills.push(instance_task_id(id, i.index, i.generation));
        };

        // Scale down: too many instances of the current version. Pending ones go first, then
        // unavailable ones, then the highest indices.
        let mut current: Vec<u32> = inst
            .iter()
            .filter(|(k, i)| {
                i.state != InstanceState::Stopping && i.spec_version == cur && !placing(**k)
            })
            .map(|(k, _)| *k)
            .collect();
        let current_all = inst
            .values()
            .filter(|i| i.state != InstanceState::Stopping && i.spec_version == cur)
            .count();
        if current_all > n {
            current.sort_by_key(|k| {
                let i = &inst[k];
                (
                    i.state == InstanceState::Running,
                    available(i),
                    std::cmp::Reverse(*k),
                )
            });
            for k in current.into_iter().take(current_all - n) {
                let i = inst.get_mut(&k).expect("listed");
                if i.state == InstanceState::Pending {
                    inst.remove(&k);
                    changed.remove(&k);
                    removed.push(k);
                } else {
                    stop(i, kills, "scaled down");
                    changed.insert(k);
                }
            }
        }

        // Rolling update: replace instances of older versions. Unavailable ones go at once;
        // available ones only while `count - max_unavailable` stay available.
        let mut avail = inst
            .values()
            .filter(|i| i.state != InstanceState::Stopping && available(i))
            .count();
        let floor = n.saturating_sub(c.max_unavailable as usize);
        let mut old: Vec<u32> = inst
            .iter()
            .filter(|(_, i)| i.state == InstanceState::Running && i.spec_version < cur)
            .map(|(k, _)| *k)
            .collect();
        old.sort_by_key(|k| (available(&inst[k]), *k));
        for k in old {
            let was_available = available(&inst[&k]);
            if was_available {
                if avail <= floor {
                    break;
                }
                avail -= 1;
            }
            let i = inst.get_mut(&k).expect("listed");
            stop(i, kills, &format!("replaced by spec version {cur}"));
            changed.insert(k);
        }

        // Start instances of the current version up to `count`; during an update at most
        // `max_surge` beyond it, counting every instance that still exists.
        let old_left = inst
            .values()
            .any(|i| i.state != InstanceState::Stopping && i.spec_version < cur);
        let allowed = if old_left || inst.values().any(|i| i.spec_version < cur) {
            n + c.max_surge as usize
        } else {
            n
        };
        let mut current = inst
            .values()
            .filter(|i| i.state != InstanceState::Stopping && i.spec_version == cur)
            .count();
        let mut total = inst.len();
        let mut next_index = 0u32;
        while current < n && total < allowed {
            while inst.contains_key(&next_index) {
                next_index += 1;
            }
            let generation = next_generation(cell, id, next_index, 1);
            inst.insert(
                next_index,
                Instance {
                    index: next_index,
                    generation,
                    spec_version: cur,
                    state: InstanceState::Pending,
                    agent_id: None,
                    failures: 0,
                    not_before: 0,
                    started_at: 0,
                    message: None,
                },
            );
            changed.insert(next_index);
            current += 1;
            total += 1;
        }
    }

    /// Places the pending instances whose backoff is over, in one incremental claim.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        cell: &Cell,
        svc: &Service,
        c: &CompiledService,
        now: Timestamp,
        inst: &mut BTreeMap<u32, Instance>,
        changed: &mut BTreeSet<u32>,
        actions: &mut ServiceActions,
    ) {
        let id = svc.id.as_str();
        let waiting: Vec<u32> = inst
            .iter()
            .filter(|(k, i)| {
                i.state == InstanceState::Pending
                    && i.not_before <= now
                    && !self.placing.contains(&(id.to_string(), **k))
            })
            .map(|(k, _)| *k)
            .take(SERVICE_PLACEMENTS_PER_STEP_MAX)
            .collect();
        if waiting.is_empty() {
            self.no_room.remove(id);
            return;
        }
        let mut placer = Placer::new(cell, svc, c, inst);
        let mut placements = Vec::new();
        let mut no_room = false;
        for k in waiting {
            let i = inst.get_mut(&k).expect("listed");
            let Some(agent) = placer.choose() else {
                no_room = true;
                let message = Some("waiting for room: no agent fits".to_string());
                if i.message != message {
                    i.message = message;
                    changed.insert(k);
                }
                continue;
            };
            let task_id = instance_task_id(id, k, i.generation);
            let (agent_id, resources, ports) = placer.take(agent);
            let spec = c.task_info(k, &task_id, &agent_id, &resources, &ports);
            placements.push(Placement {
                task_id,
                name: format!("{id}.{k}"),
                agent_id,
                resources,
                spec,
            });
            self.placing.insert((id.to_string(), k));
        }
        if no_room {
            self.no_room.insert(id.to_string());
        } else {
            self.no_room.remove(id);
        }
        if placements.is_empty() {
            return;
        }
        self.claim_seq += 1;
        actions.claims.push(Claim {
            id: ClaimId::new(format!("service.{id}.{now}.{}", self.claim_seq)),
            role: c.role.clone(),
            owner: SERVICE_OWNER.into(),
            snapshot_version: cell.version(),
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements,
            // Recorded on the tasks; a service places without evicting anything.
            priority: c.spec.priority.unwrap_or(crate::jobs::PRIORITY_DEFAULT),
            evictions: Vec::new(),
        });
    }
}

/// The first generation at or after `from` whose task id is not in the cell (task records
/// stay in the cell after they end, and an index may be used again after a scale down).
fn next_generation(cell: &Cell, service: &str, index: u32, from: u32) -> u32 {
    let mut g = from.max(1);
    while cell.task(&instance_task_id(service, index, g)).is_some() {
        g += 1;
    }
    g
}

/// Placement of one service's instances within a step: the agents' free resources and how
/// many instances run per attribute value, both updated with each placement decided.
struct Placer<'a> {
    c: &'a CompiledService,
    agents: Vec<(&'a Agent, ResourceSet)>,
    /// (attribute, value) → instances of the service (live and decided in this step).
    per_value: HashMap<(String, String), u32>,
    /// The attributes counted: `spread_by` and those of `unique` / `max_per` constraints.
    attributes: Vec<String>,
}

impl<'a> Placer<'a> {
    fn new(
        cell: &'a Cell,
        svc: &Service,
        c: &'a CompiledService,
        inst: &BTreeMap<u32, Instance>,
    ) -> Placer<'a> {
        let mut agents: Vec<(&Agent, ResourceSet)> = cell
            .agents()
            .filter(|a| a.state == AgentState::Active)
            .map(|a| (a, a.free()))
            .collect();
        agents.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut attributes = vec![c.spread_by.clone()];
        for k in &c.spec.constraints {
            if matches!(k.operator, ConstraintOp::Unique | ConstraintOp::MaxPer)
                && !attributes.contains(&k.attribute)
            {
                attributes.push(k.attribute.clone());
            }
        }
        let mut per_value = HashMap::new();
        for i in inst.values() {
            if i.state == InstanceState::Pending {
                continue;
            }
            let task = cell.task(&instance_task_id(&svc.id, i.index, i.generation));
            let Some(agent) = task
                .filter(|t| !t.state.is_terminal())
                .and_then(|t| cell.agent(&t.agent_id))
            else {
                continue;
            };
            for attr in &attributes {
                if let Some(v) = attribute_value(agent, attr) {
                    *per_value.entry((attr.clone(), v.to_string())).or_default() += 1;
                }
            }
        }
        Placer {
            c,
            agents,
            per_value,
            attributes,
        }
    }

    fn count(&self, agent: &Agent, attribute: &str) -> u32 {
        attribute_value(agent, attribute)
            .and_then(|v| {
                self.per_value
                    .get(&(attribute.to_string(), v.to_string()))
                    .copied()
            })
            .unwrap_or(0)
    }

    /// The agent for the next instance, by the service's strategy; `None` if none is feasible.
    fn choose(&self) -> Option<usize> {
        let nports = self.c.spec.task.ports.len() as u64;
        let mut best: Option<(usize, (u32, i64))> = None;
        for (idx, (a, free)) in self.agents.iter().enumerate() {
            if !free.contains(&self.c.resources) || port_count(free) < nports {
                continue;
            }
            let allowed = self.c.spec.constraints.iter().all(|k| match k.operator {
                ConstraintOp::Unique => self.count(a, &k.attribute) == 0,
                ConstraintOp::MaxPer => {
                    self.count(a, &k.attribute) < k.value.parse::<u32>().unwrap_or(0)
                }
                _ => k.matches(a),
            });
            if !allowed {
                continue;
            }
            // Fullness after the placement: the largest share of any of cpus and mem in use,
            // in thousandths.
            let fullness = ["cpus", "mem"]
                .iter()
                .map(|r| {
                    let total = a.total.scalar(r).0;
                    if total <= 0 {
                        return 0;
                    }
                    let used = total - free.scalar(r).0 + self.c.resources.scalar(r).0;
                    used * 1000 / total
                })
                .max()
                .unwrap_or(0);
            let key = match self.c.spec.placement {
                // Lower is better: the fullest agent.
                PlacementStrategy::Binpack => (0, -fullness),
                // The fewest instances on the agent's spread value, then the emptiest agent.
                PlacementStrategy::Spread => (self.count(a, &self.c.spread_by), fullness),
            };
            if best.is_none_or(|(_, b)| key < b) {
                best = Some((idx, key));
            }
        }
        best.map(|(idx, _)| idx)
    }

    /// Books an instance on agent `idx`: its id, its resources (with ports) and the ports.
    fn take(&mut self, idx: usize) -> (AgentId, ResourceSet, Vec<u64>) {
        let (agent, free) = &mut self.agents[idx];
        let ports = free_ports_upto(free, self.c.spec.task.ports.len() as u64);
        let resources = with_ports(&self.c.resources, &ports);
        free.subtract(&resources)
            .expect("chosen because the resources are free");
        for attr in &self.attributes {
            if let Some(v) = attribute_value(agent, attr) {
                *self
                    .per_value
                    .entry((attr.clone(), v.to_string()))
                    .or_default() += 1;
            }
        }
        (agent.id.clone(), resources, ports)
    }
}
