//! A service file checked before anything runs, and the task ids of its instances.

use super::*;

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

pub(crate) fn duration_field(
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

/// A service's health check checked against its task's `ports`, with its defaults.
fn compile_health(
    h: &HealthCheckDef,
    ports: &[String],
    err: &mut dyn FnMut(String, String),
) -> CompiledHealth {
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
            port_index = health_port(h, ports, err);
            if h.kind == HealthCheckType::Http {
                path = health_path(h, err);
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
            err,
        ),
        timeout_ms: duration_field(
            &h.timeout,
            HEALTH_TIMEOUT_DEFAULT_MS,
            "health_check.timeout",
            err,
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
}

/// The index in the task's `ports` of the port an http or tcp check probes (0 when it names
/// none).
fn health_port(h: &HealthCheckDef, ports: &[String], err: &mut dyn FnMut(String, String)) -> usize {
    match &h.port {
        Some(p) => match ports.iter().position(|x| split_port(x).0 == p) {
            Some(i) => return i,
            None => err(
                "health_check.port".into(),
                format!("'{p}' is not one of the task's ports"),
            ),
        },
        None if ports.is_empty() => err(
            "health_check.port".into(),
            "an http or tcp check needs a port: name one in task.ports".into(),
        ),
        None => {}
    }
    0
}

/// The URL path an http check asks for (`/` when none is given).
fn health_path(h: &HealthCheckDef, err: &mut dyn FnMut(String, String)) -> String {
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        err(
            "health_check.path".into(),
            format!("'{path}' is not a URL path"),
        );
    }
    path
}

/// A service's restart backoff and its cap, with their defaults.
fn compile_restart(spec: &ServiceSpec, err: &mut dyn FnMut(String, String)) -> (u64, u64) {
    let restart = spec.restart.clone().unwrap_or_default();
    let backoff_ms = duration_field(
        &restart.backoff,
        RESTART_BACKOFF_DEFAULT_MS,
        "restart.backoff",
        err,
    );
    let backoff_max_ms = duration_field(
        &restart.max_backoff,
        RESTART_BACKOFF_MAX_DEFAULT_MS.max(backoff_ms),
        "restart.max_backoff",
        err,
    );
    if backoff_max_ms < backoff_ms {
        err(
            "restart.max_backoff".into(),
            "is shorter than restart.backoff".into(),
        );
    }
    (backoff_ms, backoff_max_ms)
}

/// A service's rolling update bounds (max surge, max unavailable): not both 0.
fn compile_update(spec: &ServiceSpec, err: &mut dyn FnMut(String, String)) -> (u32, u32) {
    let update = spec.update.clone().unwrap_or_default();
    let max_surge = update.max_surge.unwrap_or(MAX_SURGE_DEFAULT);
    let max_unavailable = update.max_unavailable.unwrap_or(MAX_UNAVAILABLE_DEFAULT);
    if max_surge == 0 && max_unavailable == 0 {
        err(
            "update".into(),
            "max_surge and max_unavailable are both 0: an update could never start".into(),
        );
    }
    (max_surge, max_unavailable)
}

/// Each constraint names an attribute, and a max_per one a count of at least 1.
fn check_service_constraints(constraints: &[Constraint], err: &mut dyn FnMut(String, String)) {
    for c in constraints {
        if c.attribute.is_empty() {
            err(
                "constraints".into(),
                "a constraint needs an attribute".into(),
            );
        }
        if c.operator == ConstraintOp::MaxPer && c.value.parse::<u32>().map_or(true, |n| n == 0) {
            err(
                "constraints".into(),
                format!(
                    "max_per on {}: value '{}' must be a count of at least 1",
                    c.attribute, c.value
                ),
            );
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
        let health = spec
            .health_check
            .as_ref()
            .map(|h| compile_health(h, &spec.task.ports, &mut err));
        let (backoff_ms, backoff_max_ms) = compile_restart(spec, &mut err);
        let (max_surge, max_unavailable) = compile_update(spec, &mut err);
        let spread_by = spec.spread_by.clone().unwrap_or_else(|| "hostname".into());
        if spread_by.is_empty() {
            err("spread_by".into(), "an empty attribute name".into());
        }
        check_service_constraints(&spec.constraints, &mut err);
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
    pub(crate) fn task_info(
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
pub(crate) fn parse_task_id(task_id: &TaskId) -> Option<(&str, u32, u32)> {
    let mut parts = task_id.as_str().split('.');
    let (svc, index, gen) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((svc, index.parse().ok()?, gen.parse().ok()?))
}
