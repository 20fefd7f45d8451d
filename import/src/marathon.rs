//! A Marathon app definition read as a job (one task per instance) or a service.

use serde_json::Value;

use shoal_sched::batch::{JobSpec, TaskDef};
use shoal_sched::constraints::{Constraint, ConstraintOp};
use shoal_sched::service::{
    HealthCheckDef, HealthCheckType, PlacementStrategy, RestartDef, ServiceSpec, ServiceTask,
    UpdateDef,
};

use crate::read::*;

// ---------------------------------------------------------------------------------------------
// Marathon

/// Marathon's defaults when an app gives none.
pub(crate) const MARATHON_CPUS: f64 = 1.0;
pub(crate) const MARATHON_MEM: f64 = 128.0;

/// A Marathon app as read, before it becomes a job or a service.
pub(crate) struct MarathonApp {
    name: String,
    team: Option<String>,
    instances: usize,
    task: ServiceTask,
    backoff: Option<String>,
    max_backoff: Option<String>,
    constraints: Vec<Constraint>,
    spread_by: Option<String>,
    health_check: Option<HealthCheckDef>,
    update: Option<UpdateDef>,
}

impl MarathonApp {
    pub(crate) fn into_job(self) -> JobSpec {
        let task = |name: String| TaskDef {
            name,
            image: self.task.image.clone(),
            command: self.task.command.clone(),
            resources: self.task.resources.clone(),
            env: self.task.env.clone(),
            ports: self.task.ports.clone(),
            depends_on: Vec::new(),
            retries: 0,
            backoff: self.backoff.clone(),
            timeout: None,
            priority: None,
            constraints: self.constraints.clone(),
        };
        let tasks = if self.instances == 1 {
            vec![task(self.name.clone())]
        } else {
            (0..self.instances)
                .map(|i| task(format!("{}-{i}", self.name)))
                .collect()
        };
        JobSpec {
            name: self.name,
            id: None,
            team: self.team,
            priority: None,
            tasks,
        }
    }

    pub(crate) fn into_service(self) -> ServiceSpec {
        let restart =
            (self.backoff.is_some() || self.max_backoff.is_some()).then_some(RestartDef {
                backoff: self.backoff,
                max_backoff: self.max_backoff,
            });
        ServiceSpec {
            name: self.name,
            id: None,
            team: self.team,
            priority: None,
            count: self.instances as u32,
            task: self.task,
            health_check: self.health_check,
            restart,
            update: self.update,
            placement: PlacementStrategy::Spread,
            spread_by: self.spread_by,
            constraints: self.constraints,
        }
    }
}

/// The container and the network mode that decides what a port mapping means.
struct MarathonContainer<'a> {
    image: Option<String>,
    bridge: bool,
    mappings: &'a [Value],
}

/// The fields only a service reads: its backoff cap, its health check and its upgrades.
#[derive(Default)]
struct ServiceFields {
    max_backoff: Option<String>,
    health_check: Option<HealthCheckDef>,
    update: Option<UpdateDef>,
}

/// A Marathon app read as `target` wants it; every field it cannot keep is an error or a note.
pub(crate) fn marathon_read(
    cx: &mut Context,
    value: &Value,
    target: Target,
) -> Option<MarathonApp> {
    let mut app = Object::new(cx, "", value)?;
    let id = app.string(cx, "id");
    let Some(id) = id else {
        cx.error("id", "a Marathon app needs an id");
        return None;
    };
    let name = job_name(cx, "id", id);
    let command = marathon_command(cx, &mut app);
    let resources = marathon_resources(cx, &mut app);
    let instances = marathon_instances(cx, &mut app);
    let env = env_map(cx, "env", app.take("env"));
    let team = marathon_team(cx, &mut app);
    let backoff = app
        .number(cx, "backoffSeconds")
        .map(|s| format!("{}ms", (s * 1000.0).round() as u64));
    let container = marathon_container(cx, &mut app);
    if container.image.is_none() && command.is_none() {
        cx.error("cmd", "an app needs a cmd, args or container.docker.image");
    }
    let ports = marathon_ports(cx, &mut app, &container);
    let (constraints, spread_by) = marathon_constraints(cx, &mut app, target);
    app.note(
        cx,
        "labels",
        "tasks carry no labels (their environment names their job or service)",
    );
    let service = if target == Target::Service {
        marathon_service_fields(cx, &mut app, instances, &ports)
    } else {
        marathon_job_notes(cx, &mut app);
        ServiceFields::default()
    };
    marathon_finish(cx, app);
    if instances > 1 && target == Target::Job {
        cx.notes.push(format!(
            "instances: {instances} tasks, each run to completion once (Marathon would restart them; \
             shoal service run --format marathon keeps them running)"
        ));
    }
    Some(MarathonApp {
        name,
        team,
        instances,
        task: ServiceTask {
            image: container.image,
            command,
            resources,
            env,
            ports,
        },
        backoff,
        max_backoff: service.max_backoff,
        constraints,
        spread_by,
        health_check: service.health_check,
        update: service.update,
    })
}

/// The command: `cmd` as given, or `args` joined for the shell; never both.
fn marathon_command(cx: &mut Context, app: &mut Object) -> Option<String> {
    let cmd = app.string(cx, "cmd").map(str::to_string);
    let args = app.array(cx, "args");
    match (cmd, args.is_empty()) {
        (Some(_), false) => {
            cx.error("args", "give cmd or args, not both");
            None
        }
        (Some(c), true) => Some(c),
        (None, false) => shell_join(cx, "args", args),
        (None, true) => None,
    }
}

/// The resource text: `cpus`, `mem`, `disk` and `gpus`, Marathon's defaults where none given.
fn marathon_resources(cx: &mut Context, app: &mut Object) -> String {
    let cpus = app.number(cx, "cpus").unwrap_or(MARATHON_CPUS);
    let mem = app.number(cx, "mem").unwrap_or(MARATHON_MEM);
    let disk = app.number(cx, "disk").unwrap_or(0.0);
    let gpus = app.number(cx, "gpus").unwrap_or(0.0);
    resource_text(&[("cpus", cpus), ("mem", mem), ("disk", disk), ("gpus", gpus)])
}

/// The instance count: 1 when absent, an error (read as 1) outside 1..=`JOB_TASKS_MAX`.
fn marathon_instances(cx: &mut Context, app: &mut Object) -> usize {
    match app.take("instances") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=shoal_sched::limits::JOB_TASKS_MAX as u64).contains(&n) => n as usize,
            _ => {
                cx.error(
                    "instances",
                    format!(
                        "{v} is not a count from 1 to {}",
                        shoal_sched::limits::JOB_TASKS_MAX
                    ),
                );
                1
            }
        },
    }
}

/// The team (`role`); an accepted resource role other than `*` or the team is unsupported.
fn marathon_team(cx: &mut Context, app: &mut Object) -> Option<String> {
    let team = app.string(cx, "role").map(str::to_string);
    for (i, r) in app.array(cx, "acceptedResourceRoles").iter().enumerate() {
        if r.as_str() != Some("*") && r.as_str() != team.as_deref() {
            cx.unsupported(
                &format!("acceptedResourceRoles[{i}]"),
                "tasks use the job's team (`role`) and unreserved resources",
            );
        }
    }
    team
}

/// The image, the port mappings and whether the app runs on a bridge network, from
/// `container` (its `docker` part or its own) and `networks`.
fn marathon_container<'a>(cx: &mut Context, app: &mut Object<'a>) -> MarathonContainer<'a> {
    let mut image = None;
    let mut bridge = false;
    let mut container_mappings: &[Value] = &[];
    if let Some(c) = app.take("container") {
        if let Some(mut container) = Object::new(cx, "container", c) {
            match container.string(cx, "type") {
                None | Some("DOCKER") | Some("MESOS") => {}
                Some(other) => cx.error("container.type", format!("unknown type '{other}'")),
            }
            if let Some(d) = container.take("docker") {
                if let Some(mut docker) = Object::new(cx, "container.docker", d) {
                    image = docker.string(cx, "image").map(str::to_string);
                    match docker.string(cx, "network") {
                        None | Some("HOST") => {}
                        Some("BRIDGE") | Some("USER") => bridge = true,
                        Some(other) => {
                            cx.error("container.docker.network", format!("unknown '{other}'"))
                        }
                    }
                    let mappings = docker.array(cx, "portMappings");
                    if !mappings.is_empty() {
                        container_mappings = mappings;
                    }
                    docker.note(
                        cx,
                        "forcePullImage",
                        "the agent runs the local image and never pulls",
                    );
                    docker.finish(
                        cx,
                        &[
                            ("privileged", "containers are never privileged"),
                            ("parameters", "no extra docker run parameters"),
                        ],
                    );
                }
            }
            let mappings = container.array(cx, "portMappings");
            if !mappings.is_empty() {
                container_mappings = mappings;
            }
            container.finish(
                cx,
                &[(
                    "volumes",
                    "a task gets its sandbox only; volumes are not mounted",
                )],
            );
        }
    }
    for (i, n) in app.array(cx, "networks").iter().enumerate() {
        match n.get("mode").and_then(Value::as_str) {
            Some("host") | None => {}
            Some("container/bridge") | Some("container") => bridge = true,
            Some(other) => cx.error(&format!("networks[{i}].mode"), format!("unknown '{other}'")),
        }
    }
    MarathonContainer {
        image,
        bridge,
        mappings: container_mappings,
    }
}

/// The task's named ports: one host port per port definition on the host network, or one
/// per container mapping (`name:containerPort` on a bridge); fixed host ports are unsupported.
fn marathon_ports(
    cx: &mut Context,
    app: &mut Object,
    container: &MarathonContainer,
) -> Vec<String> {
    let bridge = container.bridge;
    let mut ports: Vec<String> = Vec::new();
    if container.mappings.is_empty() {
        // Host networking: each port definition is one named host port, picked by Shoal.
        let defs = app.array(cx, "portDefinitions");
        let legacy = app.array(cx, "ports");
        let count = defs.len().max(legacy.len());
        for i in 0..count {
            let name = defs
                .get(i)
                .and_then(|d| d.get("name"))
                .and_then(Value::as_str);
            let name = port_name(name, i, &ports);
            ports.push(name);
        }
    } else {
        app.skip(&["portDefinitions", "ports"]);
        for (i, m) in container.mappings.iter().enumerate() {
            let at = format!("container.portMappings[{i}]");
            let host_port = m.get("hostPort").and_then(Value::as_u64).unwrap_or(0);
            let container_port = m.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
            if host_port != 0 {
                cx.unsupported(
                    &format!("{at}.hostPort"),
                    "fixed host ports (Shoal picks host ports; use 0)",
                );
            }
            let name = port_name(m.get("name").and_then(Value::as_str), i, &ports);
            if bridge && container_port > 0 {
                ports.push(format!("{name}:{container_port}"));
            } else if container_port > 0 {
                cx.unsupported(
                    &format!("{at}.containerPort"),
                    "a container port on the host network (use BRIDGE networking)",
                );
            } else {
                ports.push(name);
            }
        }
    }
    if bridge && container.image.is_none() {
        cx.error(
            "container.docker.network",
            "bridge networking needs an image",
        );
    }
    if app.take("requirePorts").is_some() {
        cx.unsupported("requirePorts", "fixed host ports (Shoal picks host ports)");
    }
    ports
}

/// The constraints Shoal can keep (literal values only; UNIQUE, MAX_PER and one GROUP_BY,
/// which becomes `spread_by`, for a service), each other one unsupported.
fn marathon_constraints(
    cx: &mut Context,
    app: &mut Object,
    target: Target,
) -> (Vec<Constraint>, Option<String>) {
    let mut constraints = Vec::new();
    let mut spread_by: Option<String> = None;
    for (i, c) in app.array(cx, "constraints").iter().enumerate() {
        let at = format!("constraints[{i}]");
        let parts: Vec<&str> = c
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let literal = |v: &str| !v.chars().any(|c| "\\.^$|?*+()[]{}".contains(c));
        match parts.as_slice() {
            [attr, "CLUSTER" | "IS", value] => constraints.push(Constraint {
                attribute: attr.to_string(),
                operator: ConstraintOp::Equals,
                value: value.to_string(),
            }),
            [attr, "LIKE", value] if literal(value) => constraints.push(Constraint {
                attribute: attr.to_string(),
                operator: ConstraintOp::Equals,
                value: value.to_string(),
            }),
            [attr, "UNLIKE", value] if literal(value) => constraints.push(Constraint {
                attribute: attr.to_string(),
                operator: ConstraintOp::NotEquals,
                value: value.to_string(),
            }),
            [attr, "UNIQUE"] if target == Target::Service => constraints.push(Constraint {
                attribute: attr.to_string(),
                operator: ConstraintOp::Unique,
                value: String::new(),
            }),
            [attr, "MAX_PER", value] if target == Target::Service => constraints.push(Constraint {
                attribute: attr.to_string(),
                operator: ConstraintOp::MaxPer,
                value: value.to_string(),
            }),
            [attr, "GROUP_BY", ..] if target == Target::Service && spread_by.is_none() => {
                spread_by = Some(attr.to_string())
            }
            [_, "LIKE" | "UNLIKE", _] => cx.unsupported(
                &at,
                "regular expressions (a literal value is read as equals / not_equals)",
            ),
            [_, op, ..] => cx.unsupported(
                &at,
                &if target == Target::Job {
                    format!("operator {op} (a job supports CLUSTER, IS, LIKE and UNLIKE; run the app as a service for the others)")
                } else {
                    format!("operator {op} (a service supports CLUSTER, IS, LIKE, UNLIKE, UNIQUE, MAX_PER and one GROUP_BY)")
                },
            ),
            _ => cx.error(&at, "must be [attribute, operator, value]"),
        }
    }
    (constraints, spread_by)
}

/// A service's backoff cap, its one health check and its upgrade strategy; the fields that
/// only govern how Marathon keeps an app alive are noted.
fn marathon_service_fields(
    cx: &mut Context,
    app: &mut Object,
    instances: usize,
    ports: &[String],
) -> ServiceFields {
    let mut fields = ServiceFields {
        max_backoff: app
            .number(cx, "maxLaunchDelaySeconds")
            .map(|s| format!("{}ms", (s * 1000.0).round() as u64)),
        ..ServiceFields::default()
    };
    let checks = app.array(cx, "healthChecks");
    if let Some(first) = checks.first() {
        fields.health_check = marathon_health_check(cx, first, ports);
    }
    for i in 1..checks.len() {
        cx.unsupported(
            &format!("healthChecks[{i}]"),
            "a service has one health check",
        );
    }
    if let Some(u) = app.take("upgradeStrategy") {
        fields.update = marathon_upgrade(cx, u, instances);
    }
    for (key, why) in [
        (
            "unreachableStrategy",
            "an instance on a lost agent is replaced when its task ends",
        ),
        (
            "killSelection",
            "scaling down stops the highest instance indices",
        ),
        (
            "backoffFactor",
            "a service doubles its backoff for each failure in a row",
        ),
        ("description", "metadata"),
    ] {
        app.note(cx, key, why);
    }
    fields
}

/// A job keeps none of the fields that govern a long-running app: each is noted.
fn marathon_job_notes(cx: &mut Context, app: &mut Object) {
    for (key, why) in [
        (
            "upgradeStrategy",
            "a job's tasks are never upgraded in place",
        ),
        (
            "unreachableStrategy",
            "a job's task that is lost for good is retried like a failed one",
        ),
        ("killSelection", "a job is not scaled down"),
        ("backoffFactor", "a job doubles its backoff for each retry"),
        (
            "maxLaunchDelaySeconds",
            "a job's backoff is capped at 10 minutes",
        ),
        ("description", "metadata"),
    ] {
        app.note(cx, key, why);
    }
}

/// The fields left: the status an export carries is skipped, every other one is unsupported,
/// with a hint where Shoal has one.
fn marathon_finish(cx: &mut Context, mut app: Object) {
    // Written by `GET /v2/apps/{id}`: the app's status, not what to run.
    app.skip(&[
        "version",
        "versionInfo",
        "tasksStaged",
        "tasksRunning",
        "tasksHealthy",
        "tasksUnhealthy",
        "deployments",
        "tasks",
        "lastTaskFailure",
        "readinessCheckResults",
        "taskStats",
    ]);
    app.finish(
        cx,
        &[
            (
                "healthChecks",
                "health checks belong to long-running services",
            ),
            (
                "readinessChecks",
                "health checks belong to long-running services",
            ),
            (
                "dependencies",
                "a job file's tasks depend on each other with depends_on",
            ),
            ("fetch", "nothing is downloaded into the sandbox"),
            ("uris", "nothing is downloaded into the sandbox"),
            ("user", "tasks run as the agent's user"),
            ("secrets", "Shoal has no secret store"),
            ("executor", "tasks run on the agent's own executors"),
            ("residency", "no persistent volumes"),
            (
                "taskKillGracePeriodSeconds",
                "a job's tasks are killed with the agent's grace period",
            ),
            ("ipAddress", "no per-task IP addresses"),
        ],
    );
}

/// A Marathon health check as the service file's: Marathon's defaults where it gives none.
pub(crate) fn marathon_health_check(
    cx: &mut Context,
    value: &Value,
    ports: &[String],
) -> Option<HealthCheckDef> {
    let mut hc = Object::new(cx, "healthChecks[0]", value)?;
    let kind = check_kind(cx, &mut hc)?;
    let command = check_command(cx, &mut hc, kind);
    let path = hc.string(cx, "path").map(str::to_string);
    let port = check_port(cx, &mut hc, kind, ports);
    let seconds = |hc: &mut Object, cx: &mut Context, key: &'static str, default: f64| {
        format!(
            "{}ms",
            (hc.number(cx, key).unwrap_or(default) * 1000.0).round() as u64
        )
    };
    let grace_period = seconds(&mut hc, cx, "gracePeriodSeconds", 300.0);
    let interval = seconds(&mut hc, cx, "intervalSeconds", 60.0);
    let timeout = seconds(&mut hc, cx, "timeoutSeconds", 20.0);
    let failures = hc.number(cx, "maxConsecutiveFailures").unwrap_or(3.0) as u32;
    if failures == 0 {
        cx.unsupported(
            "healthChecks[0].maxConsecutiveFailures",
            "0 (never kill): the agent kills a task after its failures in a row",
        );
    }
    hc.note(cx, "delaySeconds", "the check starts with the task");
    hc.note(cx, "ignoreHttp1xx", "1xx answers count as failures");
    hc.finish(cx, &[("port", "a fixed port (give portIndex)")]);
    Some(HealthCheckDef {
        kind,
        command,
        path,
        port,
        interval: Some(interval),
        timeout: Some(timeout),
        grace_period: Some(grace_period),
        max_consecutive_failures: Some(failures),
    })
}

/// The kind of check its `protocol` names (HTTP when absent); `None` for one Shoal lacks.
fn check_kind(cx: &mut Context, hc: &mut Object) -> Option<HealthCheckType> {
    Some(match hc.string(cx, "protocol").unwrap_or("HTTP") {
        "HTTP" | "MESOS_HTTP" => HealthCheckType::Http,
        "TCP" | "MESOS_TCP" => HealthCheckType::Tcp,
        "COMMAND" => HealthCheckType::Command,
        other => {
            cx.unsupported(
                "healthChecks[0].protocol",
                &format!("{other} (HTTP, MESOS_HTTP, TCP, MESOS_TCP or COMMAND)"),
            );
            return None;
        }
    })
}

/// The check's command (`{"value": …}`), which a COMMAND check must have.
fn check_command(cx: &mut Context, hc: &mut Object, kind: HealthCheckType) -> Option<String> {
    let command = match hc.take("command") {
        Some(c) => match c.get("value").and_then(Value::as_str) {
            Some(v) => Some(v.to_string()),
            None => {
                cx.error("healthChecks[0].command", "must be {\"value\": \"…\"}");
                None
            }
        },
        None => None,
    };
    if kind == HealthCheckType::Command && command.is_none() {
        cx.error("healthChecks[0].command", "a COMMAND check needs a command");
    }
    command
}

/// The name of the port an HTTP or TCP check probes: the app's port at `portIndex` (0 when
/// absent).
fn check_port(
    cx: &mut Context,
    hc: &mut Object,
    kind: HealthCheckType,
    ports: &[String],
) -> Option<String> {
    if kind == HealthCheckType::Command {
        return None;
    }
    let index = hc.number(cx, "portIndex").unwrap_or(0.0) as usize;
    match ports.get(index) {
        Some(p) => Some(p.split(':').next().unwrap_or(p).to_string()),
        None => {
            cx.error(
                "healthChecks[0].portIndex",
                format!("the app has no port {index} to check"),
            );
            None
        }
    }
}

/// Marathon's upgrade strategy (fractions of `instances`) as surge and unavailable counts.
pub(crate) fn marathon_upgrade(
    cx: &mut Context,
    value: &Value,
    instances: usize,
) -> Option<UpdateDef> {
    let mut u = Object::new(cx, "upgradeStrategy", value)?;
    let fraction = |u: &mut Object, cx: &mut Context, key: &'static str| match u.map.get(key) {
        None | Some(Value::Null) => 1.0,
        Some(v) => match v.as_f64() {
            Some(f) if (0.0..=1.0).contains(&f) => f,
            _ => {
                cx.error(
                    &format!("upgradeStrategy.{key}"),
                    format!("{v} is not within 0..=1"),
                );
                1.0
            }
        },
    };
    let min_health = fraction(&mut u, cx, "minimumHealthCapacity");
    let over = fraction(&mut u, cx, "maximumOverCapacity");
    u.skip(&["minimumHealthCapacity", "maximumOverCapacity"]);
    u.finish(cx, &[]);
    let n = instances as f64;
    let max_unavailable = (n * (1.0 - min_health)).floor() as u32;
    let mut max_surge = (n * over).floor() as u32;
    if max_unavailable == 0 && max_surge == 0 {
        cx.notes.push(
            "upgradeStrategy: neither surge nor unavailable instances allowed; an update starts one extra instance at a time".into(),
        );
        max_surge = 1;
    }
    Some(UpdateDef {
        max_surge: Some(max_surge),
        max_unavailable: Some(max_unavailable),
    })
}
