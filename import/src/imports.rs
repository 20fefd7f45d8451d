//! Imports: a Marathon app definition or an ECS task definition read as a Shoal job file.
//!
//! The conversion is strict where it matters: every field that would make the task run
//! differently from what the definition asks (volumes, fixed host ports, health checks,
//! secrets, a user, …) is an error naming the field, and all of them are reported at once.
//! Fields that only govern how Marathon or ECS keep a long-running app alive (upgrade and
//! unreachable strategies, backoff factors), labels, log drivers and the status fields an
//! export carries are accepted and listed in [`Import::notes`], so the caller can say what was
//! left out. Empty values (`[]`, `{}`, `""`, `false`, `null`) never count: exports write them
//! for every field.
//!
//! See `docs/jobs.md` ("Importing Marathon apps and ECS task definitions") for the mapping.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use shoal_sched::batch::{JobSpec, TaskDef};
use shoal_sched::constraints::{Constraint, ConstraintOp};
use shoal_sched::service::{
    HealthCheckDef, HealthCheckType, PlacementStrategy, RestartDef, ServiceSpec, ServiceTask,
    UpdateDef,
};
use shoal_sched::template::{valid_name, FieldError, JobErrors};

/// Which definition a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportFormat {
    /// A Marathon app definition (`POST /v2/apps`, or `GET /v2/apps/{id}`'s `app`).
    Marathon,
    /// An ECS task definition (`register-task-definition` input, or
    /// `describe-task-definition`'s output).
    Ecs,
}

/// A converted definition: the job or service file, and what was accepted without effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Import<S = JobSpec> {
    pub spec: S,
    pub notes: Vec<String>,
}

/// Reads a Marathon app definition or an ECS task definition (JSON) as a job file.
pub fn import_job(text: &str, format: ImportFormat) -> Result<Import, JobErrors> {
    convert(text, |cx, value| match format {
        ImportFormat::Marathon => {
            let app = value.get("app").filter(|_| value.get("id").is_none());
            marathon_read(cx, app.unwrap_or(value), Target::Job).map(MarathonApp::into_job)
        }
        ImportFormat::Ecs => {
            let def = value
                .get("taskDefinition")
                .filter(|_| value.get("family").is_none());
            ecs_task_definition(cx, def.unwrap_or(value))
        }
    })
}

/// Reads a Marathon app definition (JSON) as a service file: `instances` becomes `count`, and
/// the app's health check, upgrade strategy, backoff and `UNIQUE` / `MAX_PER` / `GROUP_BY`
/// constraints carry over.
pub fn import_marathon_service(text: &str) -> Result<Import<ServiceSpec>, JobErrors> {
    convert(text, |cx, value| {
        let app = value.get("app").filter(|_| value.get("id").is_none());
        marathon_read(cx, app.unwrap_or(value), Target::Service).map(MarathonApp::into_service)
    })
}

/// Parses the JSON and runs one conversion; every error it found, or the result and its notes.
fn convert<S>(
    text: &str,
    read: impl FnOnce(&mut Context, &Value) -> Option<S>,
) -> Result<Import<S>, JobErrors> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        JobErrors(vec![FieldError {
            field: "(file)".into(),
            message: format!("not JSON: {e}"),
        }])
    })?;
    let mut cx = Context::default();
    match read(&mut cx, &value) {
        Some(spec) if cx.errors.is_empty() => Ok(Import {
            spec,
            notes: cx.notes,
        }),
        _ => Err(JobErrors(cx.errors)),
    }
}

/// What a Marathon app is read as: the fields that matter differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Job,
    Service,
}

#[derive(Default)]
struct Context {
    errors: Vec<FieldError>,
    notes: Vec<String>,
}

impl Context {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn unsupported(&mut self, field: &str, why: &str) {
        let message = if why.is_empty() {
            "unsupported field".to_string()
        } else {
            format!("unsupported field: {why}")
        };
        self.error(field, message);
    }
}

/// True for the values exports write when a field is not used.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

/// One JSON object being read: the keys taken are known; [`Object::finish`] reports the rest.
struct Object<'a> {
    path: String,
    map: &'a Map<String, Value>,
    taken: Vec<&'static str>,
}

impl<'a> Object<'a> {
    fn new(cx: &mut Context, path: &str, value: &'a Value) -> Option<Object<'a>> {
        match value.as_object() {
            Some(map) => Some(Object {
                path: path.to_string(),
                map,
                taken: Vec::new(),
            }),
            None => {
                cx.error(path, "must be an object");
                None
            }
        }
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// A field's value, unless it is absent or empty.
    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.get(key).filter(|v| !is_empty(v))
    }

    fn string(&mut self, cx: &mut Context, key: &'static str) -> Option<&'a str> {
        let v = self.take(key)?;
        let s = v.as_str();
        if s.is_none() {
            cx.error(&self.at(key), "must be a string");
        }
        s
    }

    fn number(&mut self, cx: &mut Context, key: &'static str) -> Option<f64> {
        let v = self.take(key)?;
        match v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(n) if n.is_finite() && n >= 0.0 => Some(n),
            _ => {
                cx.error(&self.at(key), format!("{v} is not a non-negative number"));
                None
            }
        }
    }

    fn array(&mut self, cx: &mut Context, key: &'static str) -> &'a [Value] {
        match self.take(key) {
            None => &[],
            Some(Value::Array(a)) => a,
            Some(_) => {
                cx.error(&self.at(key), "must be an array");
                &[]
            }
        }
    }

    /// Accepts a field without effect, noting it when it is set.
    fn note(&mut self, cx: &mut Context, key: &'static str, why: &str) {
        if self.take(key).is_some() {
            cx.notes.push(format!("{} ignored: {why}", self.at(key)));
        }
    }

    /// Accepts fields an export carries that describe the app's status, not what to run.
    fn skip(&mut self, keys: &[&'static str]) {
        self.taken.extend_from_slice(keys);
    }

    /// Reports every field not taken that has a value; `hints` say what to use instead.
    fn finish(self, cx: &mut Context, hints: &[(&str, &str)]) {
        for (key, value) in self.map {
            if self.taken.contains(&key.as_str()) || is_empty(value) {
                continue;
            }
            let hint = hints
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, h)| *h)
                .unwrap_or("");
            cx.unsupported(&self.at(key), hint);
        }
    }
}

/// A name the job file accepts, made from an app id or a family: `/shop/web` → `shop-web`.
fn job_name(cx: &mut Context, field: &str, raw: &str) -> String {
    let name: String = raw
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !valid_name(&name) {
        cx.error(
            field,
            format!("'{raw}' does not make a job name (1 to 64 letters, digits, '-', '_')"),
        );
    }
    name
}

/// Shoal's resource text for the scalars given: `cpus:0.5;mem:128`.
fn resource_text(scalars: &[(&str, f64)]) -> String {
    scalars
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(n, v)| format!("{n}:{}", round_milli(*v)))
        .collect::<Vec<_>>()
        .join(";")
}

fn round_milli(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A command line from an argument vector, quoted for `sh -c`.
fn shell_join(cx: &mut Context, field: &str, args: &[Value]) -> Option<String> {
    let mut words = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.as_str() {
            Some(s) => words.push(s),
            None => {
                cx.error(&format!("{field}[{i}]"), "must be a string");
                return None;
            }
        }
    }
    match shlex::try_join(words) {
        Ok(s) => Some(s),
        Err(e) => {
            cx.error(field, e.to_string());
            None
        }
    }
}

/// A port's name for the job file: the given one made valid, or `port<i>`.
fn port_name(name: Option<&str>, index: usize, taken: &[String]) -> String {
    let base = match name {
        Some(n) if !n.is_empty() => n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
        _ => format!("port{index}"),
    };
    let mut name = base.clone();
    let mut n = 1;
    while taken
        .iter()
        .any(|t| t.split(':').next() == Some(name.as_str()))
    {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

/// `environment`-style variables: a map of strings (Marathon) to the job file's `env`.
fn env_map(cx: &mut Context, field: &str, value: Option<&Value>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(value) = value else { return env };
    let Some(map) = value.as_object() else {
        cx.error(field, "must be an object of strings");
        return env;
    };
    for (k, v) in map {
        match v {
            Value::String(s) => {
                env.insert(k.clone(), s.clone());
            }
            Value::Number(n) => {
                env.insert(k.clone(), n.to_string());
            }
            Value::Bool(b) => {
                env.insert(k.clone(), b.to_string());
            }
            _ => cx.unsupported(
                &format!("{field}.{k}"),
                "secret references (Shoal has no secret store; give the value)",
            ),
        }
    }
    env
}

// ---------------------------------------------------------------------------------------------
// Marathon

/// Marathon's defaults when an app gives none.
const MARATHON_CPUS: f64 = 1.0;
const MARATHON_MEM: f64 = 128.0;

/// A Marathon app as read, before it becomes a job or a service.
struct MarathonApp {
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
    fn into_job(self) -> JobSpec {
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

    fn into_service(self) -> ServiceSpec {
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

fn marathon_read(cx: &mut Context, value: &Value, target: Target) -> Option<MarathonApp> {
    let mut app = Object::new(cx, "", value)?;
    let id = app.string(cx, "id");
    let Some(id) = id else {
        cx.error("id", "a Marathon app needs an id");
        return None;
    };
    let name = job_name(cx, "id", id);
    let cmd = app.string(cx, "cmd").map(str::to_string);
    let args = app.array(cx, "args");
    let command = match (cmd, args.is_empty()) {
        (Some(_), false) => {
            cx.error("args", "give cmd or args, not both");
            None
        }
        (Some(c), true) => Some(c),
        (None, false) => shell_join(cx, "args", args),
        (None, true) => None,
    };
    let cpus = app.number(cx, "cpus").unwrap_or(MARATHON_CPUS);
    let mem = app.number(cx, "mem").unwrap_or(MARATHON_MEM);
    let disk = app.number(cx, "disk").unwrap_or(0.0);
    let gpus = app.number(cx, "gpus").unwrap_or(0.0);
    let instances = match app.take("instances") {
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
    };
    let env = env_map(cx, "env", app.take("env"));
    let team = app.string(cx, "role").map(str::to_string);
    for (i, r) in app.array(cx, "acceptedResourceRoles").iter().enumerate() {
        if r.as_str() != Some("*") && r.as_str() != team.as_deref() {
            cx.unsupported(
                &format!("acceptedResourceRoles[{i}]"),
                "tasks use the job's team (`role`) and unreserved resources",
            );
        }
    }
    let backoff = app
        .number(cx, "backoffSeconds")
        .map(|s| format!("{}ms", (s * 1000.0).round() as u64));

    // The container, and the network mode that decides what a port mapping means.
    let mut image = None;
    let mut bridge = false;
    let mut ports: Vec<String> = Vec::new();
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
    if image.is_none() && command.is_none() {
        cx.error("cmd", "an app needs a cmd, args or container.docker.image");
    }
    if container_mappings.is_empty() {
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
        for (i, m) in container_mappings.iter().enumerate() {
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
    if bridge && image.is_none() {
        cx.error(
            "container.docker.network",
            "bridge networking needs an image",
        );
    }
    if app.take("requirePorts").is_some() {
        cx.unsupported("requirePorts", "fixed host ports (Shoal picks host ports)");
    }

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

    app.note(
        cx,
        "labels",
        "tasks carry no labels (their environment names their job or service)",
    );
    let mut max_backoff = None;
    let mut health_check = None;
    let mut update = None;
    if target == Target::Service {
        max_backoff = app
            .number(cx, "maxLaunchDelaySeconds")
            .map(|s| format!("{}ms", (s * 1000.0).round() as u64));
        let checks = app.array(cx, "healthChecks");
        if let Some(first) = checks.first() {
            health_check = marathon_health_check(cx, first, &ports);
        }
        for i in 1..checks.len() {
            cx.unsupported(
                &format!("healthChecks[{i}]"),
                "a service has one health check",
            );
        }
        if let Some(u) = app.take("upgradeStrategy") {
            update = marathon_upgrade(cx, u, instances);
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
    } else {
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
    if instances > 1 && target == Target::Job {
        cx.notes.push(format!(
            "instances: {instances} tasks, each run to completion once (Marathon would restart them; \
             shoal service run --format marathon keeps them running)"
        ));
    }
    let resources = resource_text(&[("cpus", cpus), ("mem", mem), ("disk", disk), ("gpus", gpus)]);
    Some(MarathonApp {
        name,
        team,
        instances,
        task: ServiceTask {
            image,
            command,
            resources,
            env,
            ports,
        },
        backoff,
        max_backoff,
        constraints,
        spread_by,
        health_check,
        update,
    })
}

/// A Marathon health check as the service file's: Marathon's defaults where it gives none.
fn marathon_health_check(
    cx: &mut Context,
    value: &Value,
    ports: &[String],
) -> Option<HealthCheckDef> {
    let mut hc = Object::new(cx, "healthChecks[0]", value)?;
    let kind = match hc.string(cx, "protocol").unwrap_or("HTTP") {
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
    };
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
    let path = hc.string(cx, "path").map(str::to_string);
    let port = if kind == HealthCheckType::Command {
        None
    } else {
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
    };
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

/// Marathon's upgrade strategy (fractions of `instances`) as surge and unavailable counts.
fn marathon_upgrade(cx: &mut Context, value: &Value, instances: usize) -> Option<UpdateDef> {
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

// ---------------------------------------------------------------------------------------------
// ECS

/// CPU units per cpu in ECS.
const ECS_CPU_UNITS: f64 = 1024.0;

fn ecs_task_definition(cx: &mut Context, value: &Value) -> Option<JobSpec> {
    let mut def = Object::new(cx, "", value)?;
    let Some(family) = def.string(cx, "family") else {
        cx.error("family", "an ECS task definition needs a family");
        return None;
    };
    let name = job_name(cx, "family", family);
    let network = def.string(cx, "networkMode").unwrap_or("bridge");
    let bridge = match network {
        "bridge" => true,
        "host" => false,
        other => {
            cx.unsupported(
                "networkMode",
                &format!("'{other}' (Shoal runs containers on the host or bridge network)"),
            );
            false
        }
    };
    for (i, c) in def.array(cx, "requiresCompatibilities").iter().enumerate() {
        if c.as_str() != Some("EC2") && c.as_str() != Some("EXTERNAL") {
            cx.unsupported(
                &format!("requiresCompatibilities[{i}]"),
                &format!("{c} (Shoal runs tasks on its own agents, like EC2 or EXTERNAL)"),
            );
        }
    }
    let task_cpu = def.number(cx, "cpu");
    let task_mem = def.number(cx, "memory");
    let mut constraints = Vec::new();
    for (i, c) in def.array(cx, "placementConstraints").iter().enumerate() {
        let at = format!("placementConstraints[{i}]");
        let expression = c.get("expression").and_then(Value::as_str).unwrap_or("");
        match (
            c.get("type").and_then(Value::as_str),
            ecs_expression(expression),
        ) {
            (Some("memberOf"), Some(constraint)) => constraints.push(constraint),
            _ => cx.unsupported(
                &at,
                "only memberOf with `attribute:NAME == VALUE` or `!= VALUE` is read",
            ),
        }
    }
    def.note(cx, "tags", "metadata");
    def.note(cx, "runtimePlatform", "tasks run on the agent's platform");
    // Written by `describe-task-definition`: the definition's status, not what to run.
    def.skip(&[
        "taskDefinitionArn",
        "revision",
        "status",
        "requiresAttributes",
        "compatibilities",
        "registeredAt",
        "registeredBy",
        "deregisteredAt",
    ]);
    let containers = def.array(cx, "containerDefinitions");
    def.finish(
        cx,
        &[
            ("taskRoleArn", "no IAM credentials are given to tasks"),
            ("executionRoleArn", "no IAM credentials are given to tasks"),
            (
                "volumes",
                "a task gets its sandbox only; volumes are not mounted",
            ),
            ("pidMode", "each container has its own namespaces"),
            ("ipcMode", "each container has its own namespaces"),
            ("proxyConfiguration", "no service mesh"),
            ("inferenceAccelerators", "no accelerators but gpus"),
            ("ephemeralStorage", "give disk per container"),
        ],
    );
    if containers.is_empty() {
        cx.error(
            "containerDefinitions",
            "a task definition needs a container",
        );
        return None;
    }
    if containers.len() > 1 {
        cx.notes.push(format!(
            "containerDefinitions: {} containers become {} tasks of the job, each placed on its own \
             (they share no network namespace; order them with dependsOn)",
            containers.len(),
            containers.len()
        ));
    }

    // Task-level cpu and memory are shared by the containers that give none.
    let given = |key: &str| -> (f64, usize) {
        let vals: Vec<f64> = containers
            .iter()
            .filter_map(|c| c.get(key).and_then(|v| v.as_f64()))
            .collect();
        (vals.iter().sum(), containers.len() - vals.len())
    };
    let (cpu_given, cpu_missing) = given("cpu");
    let (mem_given, mem_missing) = {
        let vals: Vec<f64> = containers
            .iter()
            .filter_map(|c| {
                c.get("memory")
                    .or_else(|| c.get("memoryReservation"))
                    .and_then(Value::as_f64)
            })
            .collect();
        (vals.iter().sum::<f64>(), containers.len() - vals.len())
    };
    let share = |total: Option<f64>, given: f64, missing: usize| {
        total
            .filter(|_| missing > 0)
            .map(|t| ((t - given) / missing as f64).max(0.0))
            .unwrap_or(0.0)
    };
    let cpu_share = share(task_cpu, cpu_given, cpu_missing);
    let mem_share = share(task_mem, mem_given, mem_missing);

    let mut tasks = Vec::new();
    let mut names = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let path = format!("containerDefinitions[{i}]");
        let Some(mut container) = Object::new(cx, &path, c) else {
            continue;
        };
        let cname = container
            .string(cx, "name")
            .map(|n| job_name(cx, &format!("{path}.name"), n))
            .unwrap_or_else(|| {
                cx.error(&format!("{path}.name"), "a container needs a name");
                format!("container{i}")
            });
        names.push(cname.clone());
        let image = container.string(cx, "image").map(str::to_string);
        if image.is_none() {
            cx.error(&format!("{path}.image"), "a container needs an image");
        }
        let cpu = container.number(cx, "cpu").unwrap_or(cpu_share);
        let hard = container.number(cx, "memory");
        let soft = container.number(cx, "memoryReservation");
        let mem = hard.or(soft).unwrap_or(mem_share);
        if cpu <= 0.0 && mem <= 0.0 {
            cx.error(
                &format!("{path}.memory"),
                "give the container (or the task) some memory or cpu",
            );
        }
        let mut words: Vec<Value> = container.array(cx, "entryPoint").to_vec();
        words.extend(container.array(cx, "command").iter().cloned());
        let command = if words.is_empty() {
            None
        } else {
            shell_join(cx, &format!("{path}.command"), &words)
        };
        let mut env = BTreeMap::new();
        for (j, v) in container.array(cx, "environment").iter().enumerate() {
            match (
                v.get("name").and_then(Value::as_str),
                v.get("value").and_then(Value::as_str),
            ) {
                (Some(k), Some(val)) => {
                    env.insert(k.to_string(), val.to_string());
                }
                (Some(k), None) => {
                    env.insert(k.to_string(), String::new());
                }
                _ => cx.error(
                    &format!("{path}.environment[{j}]"),
                    "must be {\"name\": …, \"value\": …}",
                ),
            }
        }
        let mut ports: Vec<String> = Vec::new();
        for (j, m) in container.array(cx, "portMappings").iter().enumerate() {
            let at = format!("{path}.portMappings[{j}]");
            let container_port = m.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
            let host_port = m.get("hostPort").and_then(Value::as_u64).unwrap_or(0);
            if m.get("protocol").and_then(Value::as_str).unwrap_or("tcp") != "tcp" {
                cx.unsupported(&format!("{at}.protocol"), "only tcp ports");
            }
            if !bridge {
                cx.unsupported(
                    &at,
                    "host-network port mappings are fixed host ports (use networkMode bridge with hostPort 0)",
                );
            } else if host_port != 0 {
                cx.unsupported(
                    &format!("{at}.hostPort"),
                    "fixed host ports (Shoal picks host ports; use 0)",
                );
            } else if container_port == 0 || container_port > u16::MAX as u64 {
                cx.error(
                    &format!("{at}.containerPort"),
                    "must be a port from 1 to 65535",
                );
            } else {
                let name = port_name(m.get("name").and_then(Value::as_str), j, &ports);
                ports.push(format!("{name}:{container_port}"));
            }
        }
        let mut depends_on = Vec::new();
        for (j, d) in container.array(cx, "dependsOn").iter().enumerate() {
            let at = format!("{path}.dependsOn[{j}]");
            match (
                d.get("containerName").and_then(Value::as_str),
                d.get("condition").and_then(Value::as_str),
            ) {
                (Some(other), Some("SUCCESS")) => depends_on.push(other.to_string()),
                (Some(_), Some(cond)) => cx.unsupported(
                    &format!("{at}.condition"),
                    &format!("{cond} (a task starts when its dependencies succeeded: SUCCESS)"),
                ),
                _ => cx.error(&at, "must be {\"containerName\": …, \"condition\": …}"),
            }
        }
        container.note(
            cx,
            "essential",
            "each container is a task of the job; the job fails when one fails for good",
        );
        container.note(
            cx,
            "logConfiguration",
            "the agent keeps each task's output (shoal job logs)",
        );
        container.note(cx, "dockerLabels", "metadata");
        container.finish(
            cx,
            &[
                (
                    "healthCheck",
                    "health checks belong to long-running services",
                ),
                ("links", "containers share no network; use ports"),
                (
                    "mountPoints",
                    "a task gets its sandbox only; volumes are not mounted",
                ),
                (
                    "volumesFrom",
                    "a task gets its sandbox only; volumes are not mounted",
                ),
                ("secrets", "Shoal has no secret store"),
                ("environmentFiles", "give the variables in environment"),
                ("user", "tasks run as the image's user"),
                (
                    "workingDirectory",
                    "tasks run in the image's working directory",
                ),
                ("privileged", "containers are never privileged"),
                ("linuxParameters", "no extra kernel capabilities or devices"),
                (
                    "repositoryCredentials",
                    "the agent runs local images and never pulls",
                ),
                (
                    "resourceRequirements",
                    "give gpus in the container's resources",
                ),
            ],
        );
        let resources = resource_text(&[("cpus", cpu / ECS_CPU_UNITS), ("mem", mem)]);
        tasks.push(TaskDef {
            name: cname,
            image,
            command,
            resources,
            env,
            ports,
            depends_on,
            retries: 0,
            backoff: None,
            timeout: None,
            priority: None,
            constraints: constraints.clone(),
        });
    }
    Some(JobSpec {
        name,
        id: None,
        team: None,
        priority: None,
        tasks,
    })
}

/// `attribute:zone == a` or `attribute:zone != a` (ECS's cluster query language, the part
/// that maps onto agent attributes).
fn ecs_expression(expression: &str) -> Option<Constraint> {
    let rest = expression.trim().strip_prefix("attribute:")?;
    let (attr, operator, value) = if let Some((a, v)) = rest.split_once("==") {
        (a, ConstraintOp::Equals, v)
    } else {
        let (a, v) = rest.split_once("!=")?;
        (a, ConstraintOp::NotEquals, v)
    };
    let attr = attr.trim();
    let attr = attr.strip_prefix("ecs.").unwrap_or(attr);
    let value = value.trim().trim_matches('\'').trim_matches('"');
    if attr.is_empty() || value.is_empty() || value.contains(char::is_whitespace) {
        return None;
    }
    Some(Constraint {
        attribute: attr.to_string(),
        operator,
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_sched::batch::CompiledJob;

    fn marathon(text: &str) -> Result<Import, JobErrors> {
        import_job(text, ImportFormat::Marathon)
    }

    fn ecs(text: &str) -> Result<Import, JobErrors> {
        import_job(text, ImportFormat::Ecs)
    }

    fn fields(e: JobErrors) -> Vec<String> {
        e.0.into_iter().map(|f| f.field).collect()
    }

    #[test]
    fn marathon_app_becomes_one_task_per_instance() {
        let i = marathon(
            r#"{"id": "/shop/web", "cmd": "python3 -m http.server $PORT0", "cpus": 0.25,
                "mem": 64, "instances": 2, "env": {"MODE": "prod", "N": 3},
                "portDefinitions": [{"port": 10000, "name": "http"}],
                "constraints": [["zone", "CLUSTER", "a"], ["rack", "UNLIKE", "r1"]],
                "backoffSeconds": 2, "backoffFactor": 1.15, "labels": {"team": "x"},
                "upgradeStrategy": {"minimumHealthCapacity": 1}, "healthChecks": [],
                "version": "2026-01-01T00:00:00Z", "user": null, "requirePorts": false}"#,
        )
        .unwrap();
        assert_eq!(i.spec.name, "shop-web");
        assert_eq!(i.spec.tasks.len(), 2);
        let t = &i.spec.tasks[1];
        assert_eq!(t.name, "shop-web-1");
        assert_eq!(t.resources, "cpus:0.25;mem:64");
        assert_eq!(t.ports, vec!["http"]);
        assert_eq!(t.env["N"], "3");
        assert_eq!(t.backoff.as_deref(), Some("2000ms"));
        assert_eq!(t.constraints.len(), 2);
        assert_eq!(t.constraints[1].operator, ConstraintOp::NotEquals);
        assert!(i.notes.iter().any(|n| n.starts_with("labels ignored")));
        assert!(i
            .notes
            .iter()
            .any(|n| n.starts_with("backoffFactor ignored")));
        CompiledJob::compile(&i.spec).unwrap();
    }

    #[test]
    fn marathon_defaults_and_docker_bridge_ports() {
        let i = marathon(
            r#"{"app": {"id": "web", "container": {"type": "DOCKER",
                "docker": {"image": "local/busybox:latest", "network": "BRIDGE", "forcePullImage": true},
                "portMappings": [{"containerPort": 80, "hostPort": 0, "name": "http"},
                                 {"containerPort": 81}]}}}"#,
        )
        .unwrap();
        let t = &i.spec.tasks[0];
        assert_eq!(t.name, "web");
        assert_eq!(t.resources, "cpus:1;mem:128");
        assert_eq!(t.image.as_deref(), Some("local/busybox:latest"));
        assert_eq!(t.command, None);
        assert_eq!(t.ports, vec!["http:80", "port1:81"]);
        CompiledJob::compile(&i.spec).unwrap();
    }

    #[test]
    fn marathon_args_are_quoted_for_the_shell() {
        let i = marathon(r#"{"id": "a", "args": ["echo", "two words", "$HOME"]}"#).unwrap();
        assert_eq!(
            i.spec.tasks[0].command.as_deref(),
            Some("echo 'two words' '$HOME'")
        );
    }

    #[test]
    fn marathon_unsupported_fields_are_all_named() {
        let e = marathon(
            r#"{"id": "a", "cmd": "x", "healthChecks": [{"protocol": "HTTP"}],
                "container": {"type": "DOCKER", "volumes": [{"containerPath": "/d"}],
                  "docker": {"image": "i", "network": "BRIDGE", "privileged": true,
                  "portMappings": [{"containerPort": 80, "hostPort": 8080}]}},
                "env": {"DB": {"secret": "pw"}}, "constraints": [["hostname", "UNIQUE"]],
                "somethingNew": 1, "fetch": [{"uri": "http://x"}]}"#,
        )
        .unwrap_err();
        let f = fields(e.clone());
        for want in [
            "healthChecks",
            "container.volumes",
            "container.docker.privileged",
            "container.portMappings[0].hostPort",
            "env.DB",
            "constraints[0]",
            "somethingNew",
            "fetch",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
        assert!(e
            .to_string()
            .contains("health checks belong to long-running services"));
    }

    #[test]
    fn marathon_bad_input_is_an_error_not_a_panic() {
        for text in [
            "",
            "[]",
            "{}",
            r#"{"id": 3}"#,
            r#"{"id": "a"}"#,
            r#"{"id": "a", "cmd": "x", "cpus": -1}"#,
            r#"{"id": "a", "cmd": "x", "instances": 0}"#,
            r#"{"id": "a", "cmd": "x", "container": 7}"#,
            r#"{"id": "a", "args": [1]}"#,
        ] {
            assert!(marathon(text).is_err(), "{text}");
        }
    }

    #[test]
    fn marathon_app_becomes_a_service_with_its_health_check_and_upgrade_strategy() {
        let i = import_marathon_service(
            r#"{"id": "/web", "cmd": "serve $PORT0", "cpus": 0.5, "mem": 64, "instances": 4,
                "portDefinitions": [{"port": 0, "name": "http"}, {"port": 0, "name": "admin"}],
                "healthChecks": [{"protocol": "MESOS_HTTP", "path": "/health", "portIndex": 1,
                    "gracePeriodSeconds": 5, "intervalSeconds": 2, "timeoutSeconds": 1,
                    "maxConsecutiveFailures": 2, "delaySeconds": 15}],
                "upgradeStrategy": {"minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.25},
                "constraints": [["hostname", "UNIQUE"], ["rack", "MAX_PER", "2"],
                                ["zone", "GROUP_BY", "3"]],
                "backoffSeconds": 1, "maxLaunchDelaySeconds": 60, "killSelection": "YOUNGEST_FIRST"}"#,
        )
        .unwrap();
        let spec = &i.spec;
        assert_eq!(spec.count, 4);
        assert_eq!(spec.task.ports, vec!["http", "admin"]);
        let hc = spec.health_check.as_ref().unwrap();
        assert_eq!(hc.kind, HealthCheckType::Http);
        assert_eq!(hc.port.as_deref(), Some("admin"));
        assert_eq!(hc.path.as_deref(), Some("/health"));
        assert_eq!(hc.grace_period.as_deref(), Some("5000ms"));
        assert_eq!(hc.max_consecutive_failures, Some(2));
        let u = spec.update.as_ref().unwrap();
        assert_eq!((u.max_surge, u.max_unavailable), (Some(1), Some(2)));
        assert_eq!(spec.spread_by.as_deref(), Some("zone"));
        assert_eq!(spec.constraints[0].operator, ConstraintOp::Unique);
        assert_eq!(spec.constraints[1].operator, ConstraintOp::MaxPer);
        let r = spec.restart.as_ref().unwrap();
        assert_eq!(r.max_backoff.as_deref(), Some("60000ms"));
        assert!(i
            .notes
            .iter()
            .any(|n| n.starts_with("killSelection ignored")));
        assert!(i
            .notes
            .iter()
            .any(|n| n.starts_with("healthChecks[0].delaySeconds ignored")));
        shoal_sched::service::CompiledService::compile(spec).unwrap();
    }

    #[test]
    fn marathon_service_refuses_what_a_service_cannot_do() {
        let e = import_marathon_service(
            r#"{"id": "a", "cmd": "x", "healthChecks": [{"protocol": "HTTPS"}, {"protocol": "TCP"}],
                "constraints": [["rack", "LIKE", "r[0-9]"]], "taskKillGracePeriodSeconds": 5}"#,
        )
        .unwrap_err();
        let f = fields(e);
        for want in [
            "healthChecks[0].protocol",
            "healthChecks[1]",
            "constraints[0]",
            "taskKillGracePeriodSeconds",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
        // A job refuses the service-only operators, and says where they work.
        let e = marathon(r#"{"id": "a", "cmd": "x", "constraints": [["hostname", "UNIQUE"]]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("run the app as a service"), "{e}");
    }

    #[test]
    fn ecs_containers_become_tasks_with_dependencies() {
        let i = ecs(
            r#"{"taskDefinition": {"family": "etl", "networkMode": "bridge", "cpu": "1024",
                "memory": "512", "requiresCompatibilities": ["EC2"], "revision": 3,
                "placementConstraints": [{"type": "memberOf",
                    "expression": "attribute:ecs.availability-zone == us-east-1a"}],
                "containerDefinitions": [
                  {"name": "extract", "image": "local/busybox:latest", "cpu": 256,
                   "command": ["sh", "-c", "echo hi > /dev/null"], "essential": true,
                   "environment": [{"name": "STAGE", "value": "x"}],
                   "logConfiguration": {"logDriver": "awslogs"}},
                  {"name": "load", "image": "local/busybox:latest", "memory": 128,
                   "entryPoint": ["httpd", "-f"], "command": ["-p", "8080"],
                   "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
                   "dependsOn": [{"containerName": "extract", "condition": "SUCCESS"}]}]}}"#,
        )
        .unwrap();
        assert_eq!(i.spec.name, "etl");
        let [a, b] = &i.spec.tasks[..] else {
            panic!("two tasks")
        };
        assert_eq!(a.resources, "cpus:0.25;mem:384");
        assert_eq!(a.command.as_deref(), Some("sh -c 'echo hi > /dev/null'"));
        assert_eq!(a.env["STAGE"], "x");
        assert_eq!(b.resources, "cpus:0.75;mem:128");
        assert_eq!(b.command.as_deref(), Some("httpd -f -p 8080"));
        assert_eq!(b.ports, vec!["port0:8080"]);
        assert_eq!(b.depends_on, vec!["extract"]);
        assert_eq!(a.constraints[0].attribute, "availability-zone");
        assert!(i.notes.iter().any(|n| n.contains("logConfiguration")));
        CompiledJob::compile(&i.spec).unwrap();
    }

    #[test]
    fn ecs_unsupported_fields_are_all_named() {
        let e = ecs(
            r#"{"family": "f", "networkMode": "awsvpc", "taskRoleArn": "arn:x",
                "containerDefinitions": [{"name": "c", "image": "i", "memory": 64,
                  "healthCheck": {"command": ["true"]}, "mountPoints": [{"sourceVolume": "v"}],
                  "portMappings": [{"containerPort": 80, "hostPort": 80}],
                  "dependsOn": [{"containerName": "x", "condition": "HEALTHY"}]}]}"#,
        )
        .unwrap_err();
        let f = fields(e);
        for want in [
            "networkMode",
            "taskRoleArn",
            "containerDefinitions[0].healthCheck",
            "containerDefinitions[0].mountPoints",
            "containerDefinitions[0].portMappings[0]",
            "containerDefinitions[0].dependsOn[0].condition",
        ] {
            assert!(f.contains(&want.to_string()), "{want} not in {f:?}");
        }
    }

    #[test]
    fn ecs_bad_input_is_an_error_not_a_panic() {
        for text in [
            "{",
            r#"{"family": "f"}"#,
            r#"{"family": "f", "containerDefinitions": [{}]}"#,
            r#"{"family": "f", "containerDefinitions": [{"name": "c", "image": "i"}]}"#,
            r#"{"family": "f", "containerDefinitions": [3]}"#,
            r#"{"family": "/", "containerDefinitions": [{"name": "c", "image": "i", "memory": 1}]}"#,
        ] {
            assert!(ecs(text).is_err(), "{text}");
        }
    }
}
