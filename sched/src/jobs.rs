//! Jobs: the job file (tasks with dependencies), its validation, the job records kept in the
//! cell, and the built-in batch scheduler as a sans-IO state machine.
//!
//! A job is submitted as a [`JobSpec`] (TOML or JSON). [`CompiledJob::compile`] checks it
//! before anything runs — names, resources, durations, unknown dependencies, cycles — and
//! [`check_fits`] refuses tasks no agent of the cell could ever hold. The cell keeps a [`Job`]
//! record per job, with one [`JobTask`] per task, changed only through `Command::SubmitJob` and
//! `Command::UpdateJob` on the one commit path, so job progress is as durable as any claim.
//!
//! The [`BatchScheduler`] reads a cell snapshot and the time and returns what to do: claims to
//! submit, tasks to kill, job records to update, and when to wake up next. It uses only the
//! claim interface every native scheduler uses. The tasks it places get deterministic ids,
//! `<job>.<task>.<attempt>`, so a scheduler rebuilt after a master restart recognises the tasks
//! it placed before: finished ones are not run again, running ones are adopted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use serde_json::json;

use shoal_core::*;

use crate::limits::{
    BATCH_PLACEMENTS_PER_STEP_MAX, BATCH_PLACEMENT_MISSES_PER_STEP_MAX,
    BATCH_PREEMPTIONS_PER_STEP_MAX, JOB_BACKOFF_MAX_MS, JOB_NAME_BYTES_MAX, JOB_TASKS_MAX,
    JOB_TASK_RETRIES_MAX,
};
use crate::{Cell, Event, LogEntry, SchedulerEvent};
use shoal_core::limits::PRIORITY_MAX;

/// Backoff when the job file gives none.
pub const BACKOFF_DEFAULT_MS: u64 = 1000;
/// Job priority when the file gives none; priorities go from 0 to [`PRIORITY_MAX`].
pub const PRIORITY_DEFAULT: i64 = 50;
/// The owner written on every task the batch scheduler places.
pub const BATCH_OWNER: &str = "shoal-batch";

// ---------------------------------------------------------------------------------------------
// The job file

/// A job file as written (TOML or JSON). See `docs/jobs.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name; also its id unless `id` is given.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The team (role) the job's tasks run as; `*` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Higher runs first (0 to 1000, default 50); a task may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, alias = "task")]
    pub tasks: Vec<TaskDef>,
}

/// One task of a job file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDef {
    pub name: String,
    /// A Docker image; the command then runs in it (`sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A shell command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Shoal's resource text, e.g. `cpus:0.1;mem:32`.
    pub resources: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Named host ports, each given as `PORT_<NAME>` (and `PORT0`, `PORT1`, …) in the environment.
    /// `name:80` (with `image`) maps the host port to the container's port 80 and runs the
    /// container on Docker's bridge network instead of the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Attempts after the first one fails.
    #[serde(default)]
    pub retries: u32,
    /// Wait before the first retry, doubled for each later one (e.g. `500ms`, `2s`, `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// An attempt running longer is killed (and counts as failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

/// A placement constraint on an agent attribute (`hostname` is the agent's hostname).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub attribute: String,
    #[serde(default)]
    pub operator: ConstraintOp,
    /// The value to compare with (`equals`, `not_equals`) or the count (`max_per`); `unique`
    /// takes none.
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOp {
    #[default]
    Equals,
    NotEquals,
    /// Services only: no two instances on agents with the same value of the attribute.
    Unique,
    /// Services only: at most `value` instances per value of the attribute.
    MaxPer,
}

impl Constraint {
    /// Whether the agent matches on its own. `unique` and `max_per` depend on where the
    /// other instances of a service run: they match every agent here, and the service
    /// scheduler counts them (`services.rs`).
    pub fn matches(&self, agent: &Agent) -> bool {
        let value = attribute_value(agent, &self.attribute);
        match self.operator {
            ConstraintOp::Equals => value == Some(self.value.as_str()),
            ConstraintOp::NotEquals => value != Some(self.value.as_str()),
            ConstraintOp::Unique | ConstraintOp::MaxPer => true,
        }
    }
}

/// An agent's value of an attribute; `hostname` is the agent's hostname.
pub fn attribute_value<'a>(agent: &'a Agent, attribute: &str) -> Option<&'a str> {
    if attribute == "hostname" {
        Some(agent.hostname.as_str())
    } else {
        agent.attributes.get(attribute).map(String::as_str)
    }
}

/// How a job file is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobFormat {
    Toml,
    Json,
}

impl JobFormat {
    /// JSON when the text starts with `{`, TOML otherwise.
    pub fn sniff(text: &str) -> JobFormat {
        if text.trim_start().starts_with('{') {
            JobFormat::Json
        } else {
            JobFormat::Toml
        }
    }
}

/// Reads a job file. The error says where the text is wrong (line and column, or the field).
pub fn parse_job_file(text: &str, format: JobFormat) -> Result<JobSpec, String> {
    match format {
        JobFormat::Toml => toml::from_str(text).map_err(|e| e.to_string().trim().to_string()),
        JobFormat::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
    }
}

/// One thing wrong with a job file, and where: `tasks[build].depends_on`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Everything wrong with a job file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobErrors(pub Vec<FieldError>);

impl fmt::Display for JobErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl From<JobErrors> for Rejection {
    fn from(e: JobErrors) -> Rejection {
        Rejection::Invalid(format!("invalid job: {e}"))
    }
}

/// Parses a duration such as `250ms`, `2s`, `1m30s`, `2h` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("'{s}' has a number without a unit (ms, s, m, h, d)"))?;
        if digits == 0 {
            return Err(format!("'{s}' is not a duration (e.g. 500ms, 2s, 1m30s)"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("'{s}' is not a duration (e.g. 500ms, 2s, 1m30s)"))?;
        let after = &rest[digits..];
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let unit_ms = match &after[..unit_len] {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            u => return Err(format!("'{s}': unknown unit '{u}' (use ms, s, m, h, d)")),
        };
        let ms = number * unit_ms;
        if !ms.is_finite() || ms > 1e15 {
            return Err(format!("'{s}' is too long"));
        }
        total = total.saturating_add(ms.round() as u64);
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// A job, service or job task name: 1..=`JOB_NAME_BYTES_MAX` letters, digits, `-` or `_`
/// (narrower than the cell's ids, which it also passes, so it can join a task id).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= JOB_NAME_BYTES_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && shoal_core::cell::validate_id("name", s).is_ok()
}

/// A task of a validated job, with everything parsed.
#[derive(Clone, Debug)]
pub struct CompiledTask {
    pub name: String,
    pub resources: ResourceSet,
    pub retries: u32,
    pub backoff_ms: u64,
    pub timeout_ms: Option<u64>,
    pub priority: i64,
    /// Indices of the tasks this one waits for, and of those waiting for it.
    pub deps: Vec<usize>,
    pub dependents: Vec<usize>,
}

/// A validated job: the spec plus what the scheduler needs, parsed once.
#[derive(Clone, Debug)]
pub struct CompiledJob {
    pub id: String,
    pub role: String,
    pub spec: Arc<JobSpec>,
    pub tasks: Vec<CompiledTask>,
    pub index: HashMap<String, usize>,
}

impl CompiledJob {
    /// Checks a job file and parses it; every problem is reported with its field.
    pub fn compile(spec: &JobSpec) -> Result<CompiledJob, JobErrors> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        let id = spec.id.clone().unwrap_or_else(|| spec.name.clone());
        if !valid_name(&spec.name) {
            err(
                "name".into(),
                format!(
                    "'{}' must be 1..={JOB_NAME_BYTES_MAX} letters, digits, '-' or '_'",
                    spec.name
                ),
            );
        }
        if spec.id.is_some() && !valid_name(&id) {
            err(
                "id".into(),
                format!("'{id}' must be 1..={JOB_NAME_BYTES_MAX} letters, digits, '-' or '_'"),
            );
        }
        let role = check_team_and_priority(spec.team.as_deref(), spec.priority, &mut err);
        let job_priority = spec.priority.unwrap_or(PRIORITY_DEFAULT);
        if spec.tasks.is_empty() {
            err("tasks".into(), "a job needs at least one task".into());
        }
        if spec.tasks.len() > JOB_TASKS_MAX {
            err(
                "tasks".into(),
                format!(
                    "{} tasks is more than the {JOB_TASKS_MAX} allowed",
                    spec.tasks.len()
                ),
            );
        }
        let mut index = HashMap::new();
        for (i, t) in spec.tasks.iter().enumerate() {
            if !valid_name(&t.name) {
                err(
                    format!("tasks[{i}].name"),
                    format!(
                        "'{}' must be 1..={JOB_NAME_BYTES_MAX} letters, digits, '-' or '_'",
                        t.name
                    ),
                );
            } else if index.insert(t.name.clone(), i).is_some() {
                err(
                    format!("tasks[{}].name", t.name),
                    "two tasks have this name".into(),
                );
            }
        }
        let mut tasks = Vec::with_capacity(spec.tasks.len());
        for t in &spec.tasks {
            let at = |f: &str| format!("tasks[{}].{f}", t.name);
            let resources = check_task_fields(&t.fields(), &at, &mut err);
            if t.retries > JOB_TASK_RETRIES_MAX {
                err(
                    at("retries"),
                    format!("{} is more than {JOB_TASK_RETRIES_MAX}", t.retries),
                );
            }
            let backoff_ms = match t.backoff.as_deref().map(parse_duration_ms) {
                None => BACKOFF_DEFAULT_MS,
                Some(Ok(ms)) => ms.min(JOB_BACKOFF_MAX_MS),
                Some(Err(e)) => {
                    err(at("backoff"), e);
                    0
                }
            };
            let timeout_ms = match t.timeout.as_deref().map(parse_duration_ms) {
                None => None,
                Some(Ok(0)) => {
                    err(at("timeout"), "must be longer than 0".into());
                    None
                }
                Some(Ok(ms)) => Some(ms),
                Some(Err(e)) => {
                    err(at("timeout"), e);
                    None
                }
            };
            let priority = t.priority.unwrap_or(job_priority);
            if !(0..=PRIORITY_MAX).contains(&priority) {
                err(
                    at("priority"),
                    format!("{priority} is not within 0..={PRIORITY_MAX}"),
                );
            }
            for c in &t.constraints {
                if c.attribute.is_empty() {
                    err(at("constraints"), "a constraint needs an attribute".into());
                }
                if matches!(c.operator, ConstraintOp::Unique | ConstraintOp::MaxPer) {
                    err(
                        at("constraints"),
                        "`unique` and `max_per` apply to services only".into(),
                    );
                }
            }
            let mut deps = Vec::new();
            for d in &t.depends_on {
                match index.get(d) {
                    Some(_) if d == &t.name => {
                        err(at("depends_on"), format!("dependency cycle: {d} -> {d}"));
                    }
                    Some(&j) if !deps.contains(&j) => deps.push(j),
                    Some(_) => {}
                    None => err(at("depends_on"), format!("unknown task '{d}'")),
                }
            }
            tasks.push(CompiledTask {
                name: t.name.clone(),
                resources,
                retries: t.retries,
                backoff_ms,
                timeout_ms,
                priority,
                deps,
                dependents: Vec::new(),
            });
        }
        for i in 0..tasks.len() {
            for d in tasks[i].deps.clone() {
                tasks[d].dependents.push(i);
            }
        }
        if let Some(cycle) = find_cycle(&tasks) {
            let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].name.as_str()).collect();
            // Self-loops were reported above and are not in `deps`: this one has two tasks or more.
            err(
                format!("tasks[{}].depends_on", names[0]),
                format!("dependency cycle: {}", names.join(" -> ")),
            );
        }
        if !errors.is_empty() {
            return Err(JobErrors(errors));
        }
        Ok(CompiledJob {
            id,
            role,
            spec: Arc::new(spec.clone()),
            tasks,
            index,
        })
    }

    /// The environment and command of one attempt, as a Mesos `TaskInfo` (JSON).
    fn task_info(
        &self,
        idx: usize,
        task_id: &TaskId,
        agent: &AgentId,
        resources: &ResourceSet,
        ports: &[u64],
    ) -> TaskSpec {
        let def = &self.spec.tasks[idx];
        let info = task_info_json(
            &format!("{}.{}", self.id, def.name),
            task_id,
            agent,
            resources,
            ports,
            &def.fields(),
            &[("SHOAL_JOB", &self.id), ("SHOAL_JOB_TASK", &def.name)],
        );
        TaskSpec::from_value(&info)
    }
}

/// A `ports` entry as its name and, for `name:80`, the container port (`Err` if not a port).
pub(crate) fn split_port(spec: &str) -> (&str, Option<Result<u16, ()>>) {
    match spec.split_once(':') {
        None => (spec, None),
        Some((name, port)) => (
            name,
            Some(port.parse::<u16>().ok().filter(|&p| p > 0).ok_or(())),
        ),
    }
}

/// Checks a file's `team` (a role name; `*` when not given) and `priority`; returns the role.
pub(crate) fn check_team_and_priority(
    team: Option<&str>,
    priority: Option<i64>,
    err: &mut dyn FnMut(String, String),
) -> String {
    let role = team.unwrap_or(UNRESERVED).to_string();
    if role.contains('/') || shoal_core::cell::validate_role_name(&role).is_err() {
        let shown: String = role
            .chars()
            .take(shoal_core::limits::ROLE_NAME_BYTES_MAX)
            .collect();
        err(
            "team".into(),
            format!(
                "{shown:?} is not a valid team (role) name: at most {} bytes, no whitespace, \
                 '/' or control characters, not '.', '..' or starting with '-'",
                shoal_core::limits::ROLE_NAME_BYTES_MAX
            ),
        );
    }
    let priority = priority.unwrap_or(PRIORITY_DEFAULT);
    if !(0..=PRIORITY_MAX).contains(&priority) {
        err(
            "priority".into(),
            format!("{priority} is not within 0..={PRIORITY_MAX}"),
        );
    }
    role
}

/// The fields a job's task and a service's task have in common: what runs, with what.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskFields<'a> {
    pub image: Option<&'a str>,
    pub command: Option<&'a str>,
    pub resources: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub ports: &'a [String],
}

impl TaskDef {
    pub(crate) fn fields(&self) -> TaskFields<'_> {
        TaskFields {
            image: self.image.as_deref(),
            command: self.command.as_deref(),
            resources: &self.resources,
            env: &self.env,
            ports: &self.ports,
        }
    }
}

/// Checks the common fields of a task (errors go to `err` with the field named by `at`) and
/// returns its parsed resources (empty when they are wrong).
pub(crate) fn check_task_fields(
    t: &TaskFields,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) -> ResourceSet {
    if t.command.is_none() && t.image.is_none() {
        err(at("command"), "a task needs a command or an image".into());
    }
    if t.image == Some("") {
        err(at("image"), "empty image name".into());
    }
    let resources = match ResourceSet::parse(t.resources) {
        Ok(r) if r.scalar("cpus").0 > 0 || r.scalar("mem").0 > 0 => {
            if r.iter().any(|x| x.name == "ports") {
                err(
                    at("resources"),
                    "ask for ports with `ports = [\"name\"]`, not in resources".into(),
                );
            }
            r
        }
        Ok(_) => {
            err(
                at("resources"),
                format!("'{}' asks for no cpus or mem", t.resources),
            );
            ResourceSet::new()
        }
        Err(e) => {
            err(at("resources"), e.to_string());
            ResourceSet::new()
        }
    };
    let mut seen_ports = HashSet::new();
    for p in t.ports {
        let (name, container_port) = split_port(p);
        if !valid_name(name) || !seen_ports.insert(name) {
            err(
                at("ports"),
                format!("'{p}' must be a unique name of letters, digits, '-' or '_'"),
            );
        }
        match container_port {
            Some(Err(())) => err(
                at("ports"),
                format!("'{p}': the container port must be a number from 1 to 65535"),
            ),
            Some(Ok(_)) if t.image.is_none() => err(
                at("ports"),
                format!("'{p}': a container port needs an `image`"),
            ),
            _ => {}
        }
    }
    for k in t.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            err(at("env"), format!("'{k}' is not a valid variable name"));
        }
    }
    resources
}

/// A task's Mesos `TaskInfo` (JSON): its command (`sh -c`) or image (Docker: the host network,
/// or the bridge network when a port maps to a container port),
/// its environment with the ports it was given (`PORT_<NAME>`, `PORT<i>`) and `extra_env`.
pub(crate) fn task_info_json(
    name: &str,
    task_id: &TaskId,
    agent: &AgentId,
    resources: &ResourceSet,
    ports: &[u64],
    def: &TaskFields,
    extra_env: &[(&str, &str)],
) -> serde_json::Value {
    let mut vars: Vec<serde_json::Value> = def
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let mut port_mappings = Vec::new();
    for (i, (spec, port)) in def.ports.iter().zip(ports).enumerate() {
        let (name, container_port) = split_port(spec);
        if let Some(Ok(container_port)) = container_port {
            port_mappings.push(
                json!({"host_port": port, "container_port": container_port, "protocol": "tcp"}),
            );
        }
        vars.push(
            json!({"name": format!("PORT_{}", name.to_uppercase()), "value": port.to_string()}),
        );
        vars.push(json!({"name": format!("PORT{i}"), "value": port.to_string()}));
    }
    for (k, v) in extra_env {
        vars.push(json!({"name": k, "value": v}));
    }
    let mut info = json!({
        "name": name,
        "task_id": {"value": task_id.as_str()},
        "agent_id": {"value": agent.as_str()},
        "resources": resources.to_mesos_json(),
        "command": {"shell": true, "value": def.command.unwrap_or_default(), "environment": {"variables": vars}},
    });
    if let Some(image) = def.image {
        info["container"] = if port_mappings.is_empty() {
            json!({"type": "DOCKER", "docker": {"image": image, "network": "HOST"}})
        } else {
            json!({"type": "DOCKER", "docker": {"image": image, "network": "BRIDGE", "port_mappings": port_mappings}})
        };
        if def.command.is_none() {
            info["command"]["shell"] = json!(false);
        }
    }
    info
}

/// A cycle of the dependency graph, as task indices `a, b, …, a`, if there is one.
fn find_cycle(tasks: &[CompiledTask]) -> Option<Vec<usize>> {
    // Iterative DFS over `deps` with colours; the stack is the current path.
    let n = tasks.len();
    let mut colour = vec![0u8; n]; // 0 new, 1 on the path, 2 done
    for start in 0..n {
        if colour[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&d) = tasks[node].deps.get(*next) {
                *next += 1;
                match colour[d] {
                    0 => {
                        colour[d] = 1;
                        path.push((d, 0));
                    }
                    1 => {
                        let pos = path.iter().position(|(x, _)| *x == d).expect("on the path");
                        // The path goes from dependents to their dependencies: `a -> b` reads
                        // "a depends on b".
                        let mut cycle: Vec<usize> = path[pos..].iter().map(|(x, _)| *x).collect();
                        cycle.push(d);
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                path.pop();
            }
        }
    }
    None
}

/// Whether an agent could ever hold the task (its total resources and attributes).
fn agent_can_hold(agent: &Agent, task: &CompiledTask, def: &TaskDef) -> bool {
    agent.state != AgentState::Gone
        && agent.total.contains(&task.resources)
        && port_count(&agent.total) >= def.ports.len() as u64
        && def.constraints.iter().all(|c| c.matches(agent))
}

/// Refuses tasks that no agent of the cell could hold even when empty. A cell without agents
/// refuses nothing (agents may still come).
pub fn check_fits<'a>(
    job: &CompiledJob,
    agents: impl IntoIterator<Item = &'a Agent>,
) -> Result<(), JobErrors> {
    let agents: Vec<&Agent> = agents.into_iter().collect();
    let agents = agents.iter().copied();
    if agents.clone().all(|a| a.state == AgentState::Gone) {
        return Ok(());
    }
    let mut errors = Vec::new();
    for (task, def) in job.tasks.iter().zip(&job.spec.tasks) {
        if agents.clone().any(|a| agent_can_hold(a, task, def)) {
            continue;
        }
        let matching = agents
            .clone()
            .filter(|a| a.state != AgentState::Gone && def.constraints.iter().all(|c| c.matches(a)))
            .count();
        let (field, message) = if matching == 0 {
            (
                "constraints",
                "no agent of the cell matches them".to_string(),
            )
        } else if agents
            .clone()
            .any(|a| a.state != AgentState::Gone && a.total.contains(&task.resources))
        {
            ("ports", format!("no agent has {} ports", def.ports.len()))
        } else {
            (
                "resources",
                format!(
                    "{} fits no agent of the cell, even an empty one",
                    task.resources
                ),
            )
        };
        errors.push(FieldError {
            field: format!("tasks[{}].{field}", task.name),
            message,
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(JobErrors(errors))
    }
}

/// How many unreserved ports a resource set has.
pub(crate) fn port_count(res: &ResourceSet) -> u64 {
    res.iter()
        .filter(|r| r.name == "ports" && r.role == UNRESERVED)
        .map(|r| match &r.value {
            Value::Ranges(ranges) => ranges.count(),
            _ => 0,
        })
        .sum()
}

/// The first `n` unreserved ports of a resource set, lowest first.
pub(crate) fn free_ports_upto(res: &ResourceSet, n: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for r in res
        .iter()
        .filter(|r| r.name == "ports" && r.role == UNRESERVED)
    {
        if let Value::Ranges(ranges) = &r.value {
            for &(b, e) in ranges.as_slice() {
                let mut p = b;
                while p <= e && (out.len() as u64) < n {
                    out.push(p);
                    p += 1;
                }
            }
        }
    }
    out
}

pub(crate) fn with_ports(res: &ResourceSet, ports: &[u64]) -> ResourceSet {
    if ports.is_empty() {
        return res.clone();
    }
    let ranges = Ranges::new(ports.iter().map(|&p| (p, p)).collect()).expect("single ports");
    let mut all: Vec<Resource> = res.iter().cloned().collect();
    all.push(Resource {
        name: "ports".into(),
        role: UNRESERVED.into(),
        value: Value::Ranges(ranges),
    });
    ResourceSet::from_resources(all).unwrap_or_else(|_| res.clone())
}

/// The id of a job task's attempt in the cell: `<job>.<task>.<attempt>` (attempts count from 1).
/// Job ids and task names have no dots, so ids of different jobs never meet.
pub fn attempt_task_id(job: &str, task: &str, attempt: u32) -> TaskId {
    TaskId::new(format!("{job}.{task}.{attempt}"))
}

// ---------------------------------------------------------------------------------------------
// The records kept in the cell

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Running,
    /// Every task finished.
    Complete,
    /// A task failed after its retries (its dependents were skipped).
    Failed,
    /// Stopped by a user: live tasks were killed, the rest skipped.
    Stopped,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        self != JobState::Running
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobTaskState {
    /// Waits for its dependencies.
    Waiting,
    /// Ready: waits for room in the cell (or for its backoff).
    Queued,
    /// An attempt is in the cell.
    Running,
    Finished,
    /// Failed on its last attempt.
    Failed,
    /// Will not run: a dependency failed or the job was stopped.
    Skipped,
}

impl JobTaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobTaskState::Finished | JobTaskState::Failed | JobTaskState::Skipped
        )
    }
}

/// Where one task of a job stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTask {
    pub name: String,
    pub state: JobTaskState,
    /// Attempts started so far; the current (or last) one is `<job>.<task>.<attempts>`.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// A queued retry waits until then.
    #[serde(default)]
    pub not_before: Timestamp,
    #[serde(default)]
    pub started_at: Timestamp,
    #[serde(default)]
    pub finished_at: Timestamp,
    /// Why it failed, was retried or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Attempts that ended because a claim evicted them: they use no retry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preemptions: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A job and the state of its tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: Arc<JobSpec>,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub submitted_at: Timestamp,
    #[serde(default)]
    pub finished_at: Timestamp,
    /// The cell version at which the job was submitted (orders jobs of equal priority).
    pub submitted_version: Version,
    /// The cell version of the job's last change.
    pub version: Version,
    /// Per task name. Stored as records of their own, so that a change to one task writes
    /// only that task.
    #[serde(default)]
    pub tasks: OrdMap<String, JobTask>,
}

impl Job {
    /// How many tasks are in each state.
    pub fn counts(&self) -> BTreeMap<JobTaskState, usize> {
        let mut out = BTreeMap::new();
        for t in self.tasks.values() {
            *out.entry(t.state).or_default() += 1;
        }
        out
    }
}

impl PartialOrd for JobTaskState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for JobTaskState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Decides `Command::SubmitJob`: validates the file, checks it against the agents, and is
/// idempotent by job id (the same file again changes nothing; another file under a taken
/// id is a conflict).
pub(crate) fn decide_submit(
    cell: &Cell,
    now: Timestamp,
    next: Version,
    spec: &JobSpec,
) -> Result<(Vec<SchedulerEvent>, String, bool), Rejection> {
    let compiled = CompiledJob::compile(spec)?;
    if let Some(existing) = cell.records().job(&compiled.id) {
        if *existing.spec == *spec {
            return Ok((vec![], compiled.id, false));
        }
        return Err(Rejection::Conflict(format!(
            "job {} exists with another definition; stop it and submit under another id",
            compiled.id
        )));
    }
    check_fits(&compiled, cell.agents())?;
    let tasks = compiled
        .tasks
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                JobTask {
                    name: t.name.clone(),
                    state: if t.deps.is_empty() {
                        JobTaskState::Queued
                    } else {
                        JobTaskState::Waiting
                    },
                    attempts: 0,
                    task_id: None,
                    agent_id: None,
                    not_before: 0,
                    started_at: 0,
                    finished_at: 0,
                    message: None,
                    preemptions: 0,
                },
            )
        })
        .collect();
    let job = Job {
        id: compiled.id.clone(),
        spec: compiled.spec.clone(),
        state: JobState::Running,
        message: None,
        submitted_at: now,
        finished_at: 0,
        submitted_version: next,
        version: next,
        tasks,
    };
    Ok((
        vec![SchedulerEvent::JobSubmitted { job: Box::new(job) }],
        compiled.id,
        true,
    ))
}

/// Decides `Command::UpdateJob`. A terminal job keeps its state (a stop racing with the
/// scheduler's completion: the first one wins), but its tasks' records still change.
pub(crate) fn decide_update(
    cell: &Cell,
    update: &JobUpdate,
) -> Result<Vec<SchedulerEvent>, Rejection> {
    let job = cell
        .records()
        .job(&update.job_id)
        .ok_or_else(|| Rejection::NotFound(format!("job {}", update.job_id)))?;
    for t in &update.tasks {
        if !job.tasks.contains_key(&t.name) {
            return Err(Rejection::Invalid(format!(
                "job {} has no task {}",
                update.job_id, t.name
            )));
        }
    }
    let state = update
        .state
        .filter(|s| *s != job.state && !job.state.is_terminal());
    let tasks: Vec<JobTask> = update
        .tasks
        .iter()
        .filter(|t| job.tasks.get(&t.name) != Some(*t))
        .cloned()
        .collect();
    if state.is_none() && tasks.is_empty() {
        return Ok(vec![]);
    }
    Ok(vec![SchedulerEvent::JobUpdated {
        job_id: update.job_id.clone(),
        state,
        message: if state.is_some() {
            update.message.clone()
        } else {
            None
        },
        finished_at: if state.is_some_and(JobState::is_terminal) {
            update.finished_at
        } else {
            0
        },
        tasks,
    }])
}

/// Folds a job event into the jobs of the cell.
pub(crate) fn apply_event(
    jobs: &mut imbl::HashMap<String, Arc<Job>>,
    v: Version,
    event: &SchedulerEvent,
) {
    match event {
        SchedulerEvent::JobSubmitted { job } => {
            let mut job = job.as_ref().clone();
            job.version = v;
            jobs.insert(job.id.clone(), Arc::new(job));
        }
        SchedulerEvent::JobUpdated {
            job_id,
            state,
            message,
            finished_at,
            tasks,
        } => {
            let job = Arc::make_mut(jobs.get_mut(job_id).expect("decided on a known job"));
            if let Some(s) = state {
                job.state = *s;
                job.message = message.clone();
                if s.is_terminal() {
                    job.finished_at = *finished_at;
                }
            }
            for t in tasks {
                job.tasks.insert(t.name.clone(), t.clone());
            }
            job.version = v;
        }
        SchedulerEvent::ServiceSubmitted { .. } | SchedulerEvent::ServiceUpdated { .. } => {}
    }
}

/// A change to a job's record, as the scheduler (or a stop) commits it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobUpdate {
    pub job_id: String,
    #[serde(default)]
    pub state: Option<JobState>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub finished_at: Timestamp,
    #[serde(default)]
    pub tasks: Vec<JobTask>,
}

// ---------------------------------------------------------------------------------------------
// The batch scheduler

/// What a built-in scheduler wants done after a step (`U`: its record updates; the service
/// scheduler's are `ServiceUpdate`s).
#[derive(Clone, Debug, PartialEq)]
pub struct Actions<U = JobUpdate> {
    /// Claims to submit (fine-grained). The batch scheduler makes one incremental claim per
    /// job and priority, and one all-or-nothing claim per task placed by evicting others;
    /// report each outcome with
    /// [`BatchScheduler::claimed`].
    pub claims: Vec<Claim>,
    /// Tasks to kill (timed out, or of a stopped job).
    pub kills: Vec<TaskId>,
    /// Job records to update.
    pub updates: Vec<U>,
    /// Step again at this time at the latest (a backoff ends or a timeout is due).
    pub wake_at: Option<Timestamp>,
}

impl<U> Default for Actions<U> {
    fn default() -> Self {
        Actions {
            claims: Vec::new(),
            kills: Vec::new(),
            updates: Vec::new(),
            wake_at: None,
        }
    }
}

impl<U> Actions<U> {
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.kills.is_empty() && self.updates.is_empty()
    }
}

/// Order of queued tasks: higher priority first, then older jobs, then file order.
type ReadyKey = (Reverse<i64>, Version, String, usize);

#[derive(Clone, Debug)]
struct RunTask {
    rec: JobTask,
    /// Dependencies not finished yet.
    waiting_deps: usize,
    /// In a claim whose outcome is not known yet.
    placing: bool,
    /// Killed by the scheduler, with this reason.
    killed_for: Option<String>,
}

#[derive(Clone, Debug)]
struct JobRun {
    job: CompiledJob,
    seq: Version,
    state: JobState,
    message: Option<String>,
    tasks: Vec<RunTask>,
    /// Tasks not in a terminal state.
    open: usize,
    /// The first task that failed for good, if any.
    failed: Option<String>,
}

/// The built-in batch scheduler: see the module docs. Cost per step is proportional to what
/// changed (tasks whose state moved, due timers) plus the placements it makes, never to the
/// size of a job.
#[derive(Debug, Default)]
pub struct BatchScheduler {
    jobs: HashMap<String, JobRun>,
    /// Live attempts in the cell → (job, task index).
    by_task: HashMap<TaskId, (String, usize)>,
    ready: BTreeSet<ReadyKey>,
    /// Queued tasks in backoff, by the time they become ready.
    delayed: BTreeSet<(Timestamp, String, usize)>,
    /// Running attempts by the time they time out.
    deadlines: BTreeSet<(Timestamp, TaskId)>,
    /// Attempts whose cell state changed since the last step.
    dirty: BTreeSet<TaskId>,
    /// Jobs to (re)load from the cell at the next step, and stop requests.
    to_load: BTreeSet<String>,
    /// Records changed since they were last returned: job → task indices (and whether the job's
    /// own state changed).
    changed: BTreeMap<String, (bool, BTreeSet<usize>)>,
    /// Kills decided outside a step (a placement of a stopped job that committed).
    kills: Vec<TaskId>,
    /// The cell changed in a way that may make room for queued tasks.
    room: bool,
    claim_seq: u64,
}

impl BatchScheduler {
    pub fn new() -> BatchScheduler {
        BatchScheduler::default()
    }

    /// A scheduler for a cell as loaded (at start, or after missing commits): every job that is
    /// running, or stopped with attempts still in the cell, is taken over.
    pub fn recover(cell: &Cell) -> BatchScheduler {
        let mut s = BatchScheduler::new();
        for job in cell.records().jobs() {
            let live = !job.state.is_terminal()
                || job.tasks.values().any(|t| t.state == JobTaskState::Running);
            if live {
                s.to_load.insert(job.id.clone());
            }
        }
        s.room = true;
        s
    }

    /// Tells the scheduler about a committed log entry (it reads the details at the next step).
    pub fn observe(&mut self, entry: &LogEntry) {
        for ev in &entry.events {
            match ev {
                Event::TaskStatusChanged { task_id, state, .. } => {
                    if self.by_task.contains_key(task_id) {
                        self.dirty.insert(task_id.clone());
                    }
                    if state.is_terminal() {
                        self.room = true;
                    }
                }
                Event::Records(SchedulerEvent::JobSubmitted { job }) => {
                    self.to_load.insert(job.id.clone());
                }
                Event::Records(SchedulerEvent::JobUpdated {
                    job_id,
                    state: Some(JobState::Stopped),
                    ..
                }) => {
                    self.to_load.insert(job_id.clone());
                }
                Event::AgentRegistered { .. }
                | Event::AgentResourcesUpdated { .. }
                | Event::RoleConfigured { .. }
                | Event::HoldsReleased { .. }
                | Event::HoldsCleared { .. } => {
                    self.room = true;
                }
                _ => {}
            }
        }
    }

    /// Whether a step would have something to do now (besides timers).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty()
            || !self.to_load.is_empty()
            || !self.changed.is_empty()
            || (self.room && !self.ready.is_empty())
    }

    /// Decides what to do now, on `cell` (a published snapshot) at `now`.
    pub fn step(&mut self, cell: &Cell, now: Timestamp) -> Actions {
        let mut actions = Actions::default();
        for id in std::mem::take(&mut self.to_load) {
            self.load(cell, &id, now);
        }
        for task_id in std::mem::take(&mut self.dirty) {
            self.task_changed(cell, &task_id, now);
        }
        while let Some((at, task_id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some((job, idx)) = self.by_task.get(&task_id).cloned() {
                let run = self.jobs.get_mut(&job).expect("tracked job");
                let t = &mut run.tasks[idx];
                if t.killed_for.is_none() {
                    let ms = run.job.tasks[idx].timeout_ms.unwrap_or(0);
                    t.killed_for = Some(format!("timed out after {}", fmt_ms(ms)));
                    actions.kills.push(task_id.clone());
                }
            }
        }
        while let Some((at, job, idx)) = self.delayed.first().cloned() {
            if at > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(run) = self.jobs.get(&job) {
                if run.tasks[idx].rec.state == JobTaskState::Queued && !run.state.is_terminal() {
                    let key = ready_key(run, &job, idx);
                    self.ready.insert(key);
                    self.room = true;
                }
            }
        }
        if self.room && !self.ready.is_empty() {
            self.room = false;
            self.place(cell, now, &mut actions);
        }
        self.finish_jobs();
        actions.kills.extend(std::mem::take(&mut self.kills));
        actions.updates = self.take_updates(now);
        actions.wake_at = match (self.delayed.first(), self.deadlines.first()) {
            (Some(a), Some(b)) => Some(a.0.min(b.0)),
            (Some(a), None) => Some(a.0),
            (None, Some(b)) => Some(b.0),
            (None, None) => None,
        };
        actions
    }

    /// The outcome of a claim from [`Actions::claims`]: `None` when it could not be submitted.
    /// Committed placements are running; a placement refused as a duplicate id is an attempt
    /// a previous master committed (it is adopted); the others are queued again.
    pub fn claimed(&mut self, claim: &Claim, outcome: Option<&ClaimOutcome>, now: Timestamp) {
        let mut results: HashMap<&TaskId, (bool, Option<&RejectReason>)> = HashMap::new();
        if let Some(o) = outcome {
            for p in &o.placements {
                results.insert(&p.task_id, (p.committed, p.rejected.as_ref()));
            }
        }
        for p in &claim.placements {
            let Some((job, idx)) = self.placing_of(&p.task_id) else {
                continue;
            };
            let (committed, rejected) = results.get(&p.task_id).copied().unwrap_or((false, None));
            let dup = matches!(rejected, Some(RejectReason::DuplicateTaskId));
            let run = self.jobs.get_mut(&job).expect("placing job");
            run.tasks[idx].placing = false;
            let stopped = run.state.is_terminal();
            if committed || dup {
                self.start_attempt(&job, idx, p.task_id.clone(), Some(p.agent_id.clone()), now);
                if stopped {
                    let run = self.jobs.get_mut(&job).expect("placing job");
                    run.tasks[idx].killed_for = Some("job stopped".into());
                    self.kills.push(p.task_id.clone());
                }
            } else if stopped {
                let t = &mut run.tasks[idx];
                t.rec.state = JobTaskState::Skipped;
                t.rec.message = Some("job stopped".into());
                t.rec.finished_at = now;
                run.open -= 1;
                self.mark(&job, idx);
            } else if run.tasks[idx].rec.state == JobTaskState::Queued {
                let key = ready_key(run, &job, idx);
                self.ready.insert(key);
                // Say why it waits (recorded once per reason, not once per try).
                let why = match rejected {
                    Some(r) => serde_json::to_value(r)
                        .ok()
                        .and_then(|v| {
                            v.as_object().map(|o| {
                                o.values()
                                    .map(|x| {
                                        x.as_str()
                                            .map(str::to_string)
                                            .unwrap_or_else(|| x.to_string())
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                        })
                        .unwrap_or_default(),
                    None => "the claim was not committed".into(),
                };
                let message = Some(format!("waiting for room: {why}"));
                if run.tasks[idx].rec.message != message {
                    run.tasks[idx].rec.message = message;
                    self.mark(&job, idx);
                }
            }
        }
    }

    fn placing_of(&self, task_id: &TaskId) -> Option<(String, usize)> {
        // `<job>.<task>.<attempt>`: names have no dots.
        let mut parts = task_id.as_str().splitn(3, '.');
        let (job, task) = (parts.next()?, parts.next()?);
        let run = self.jobs.get(job)?;
        let idx = *run.job.index.get(task)?;
        run.tasks[idx].placing.then(|| (job.to_string(), idx))
    }

    /// Records an attempt as running and watches it.
    fn start_attempt(
        &mut self,
        job: &str,
        idx: usize,
        task_id: TaskId,
        agent: Option<AgentId>,
        now: Timestamp,
    ) {
        let run = self.jobs.get_mut(job).expect("known job");
        let attempt: u32 = task_id
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(run.tasks[idx].rec.attempts + 1);
        let t = &mut run.tasks[idx];
        t.rec.state = JobTaskState::Running;
        t.rec.attempts = attempt;
        t.rec.task_id = Some(task_id.clone());
        if agent.is_some() {
            t.rec.agent_id = agent;
        }
        t.rec.started_at = now;
        t.killed_for = None;
        if t.rec
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("waiting for room"))
        {
            t.rec.message = None;
        }
        if let Some(ms) = run.job.tasks[idx].timeout_ms {
            self.deadlines
                .insert((now.saturating_add(ms), task_id.clone()));
        }
        self.by_task.insert(task_id.clone(), (job.to_string(), idx));
        // It may have ended already: look at it at the next step.
        self.dirty.insert(task_id);
        self.mark(job, idx);
    }

    fn mark(&mut self, job: &str, idx: usize) {
        self.changed
            .entry(job.to_string())
            .or_default()
            .1
            .insert(idx);
    }

    fn mark_job(&mut self, job: &str) {
        self.changed.entry(job.to_string()).or_default().0 = true;
    }

    /// (Re)loads a job from its record and reconciles it with the cell's tasks.
    fn load(&mut self, cell: &Cell, id: &str, now: Timestamp) {
        let Some(job) = cell.records().job(id) else {
            return;
        };
        if let Some(run) = self.jobs.get(id) {
            // Known already: only a stop is news.
            if job.state == JobState::Stopped && run.state != JobState::Stopped {
                self.stop(id, job.message.clone(), now);
            }
            return;
        }
        let compiled = match CompiledJob::compile(&job.spec) {
            Ok(c) => c,
            Err(e) => {
                // A stored job that no longer validates (a newer rule): fail it visibly.
                let run = JobRun {
                    job: CompiledJob {
                        id: id.into(),
                        role: UNRESERVED.into(),
                        spec: job.spec.clone(),
                        tasks: vec![],
                        index: HashMap::new(),
                    },
                    seq: job.submitted_version,
                    state: JobState::Failed,
                    message: Some(format!("invalid job: {e}")),
                    tasks: vec![],
                    open: 0,
                    failed: None,
                };
                self.jobs.insert(id.to_string(), run);
                self.mark_job(id);
                return;
            }
        };
        let tasks: Vec<RunTask> = compiled
            .tasks
            .iter()
            .map(|t| RunTask {
                rec: job.tasks.get(&t.name).cloned().unwrap_or(JobTask {
                    name: t.name.clone(),
                    state: JobTaskState::Waiting,
                    attempts: 0,
                    task_id: None,
                    agent_id: None,
                    not_before: 0,
                    started_at: 0,
                    finished_at: 0,
                    message: None,
                    preemptions: 0,
                }),
                waiting_deps: 0,
                placing: false,
                killed_for: None,
            })
            .collect();
        let open = tasks.iter().filter(|t| !t.rec.state.is_terminal()).count();
        let failed = tasks
            .iter()
            .find(|t| t.rec.state == JobTaskState::Failed)
            .map(|t| t.rec.name.clone());
        let mut run = JobRun {
            job: compiled,
            seq: job.submitted_version,
            state: job.state,
            message: job.message.clone(),
            tasks,
            open,
            failed,
        };
        for i in 0..run.tasks.len() {
            run.tasks[i].waiting_deps = run.job.tasks[i]
                .deps
                .iter()
                .filter(|&&d| run.tasks[d].rec.state != JobTaskState::Finished)
                .count();
        }
        self.jobs.insert(id.to_string(), run);
        let stopped = job.state == JobState::Stopped;
        let n = self.jobs[id].tasks.len();
        for idx in 0..n {
            let run = self.jobs.get_mut(id).expect("just inserted");
            let t = &run.tasks[idx];
            let name = t.rec.name.clone();
            match t.rec.state {
                JobTaskState::Running => {
                    let task_id = t
                        .rec
                        .task_id
                        .clone()
                        .unwrap_or_else(|| attempt_task_id(id, &name, t.rec.attempts.max(1)));
                    let started = if t.rec.started_at == 0 {
                        now
                    } else {
                        t.rec.started_at
                    };
                    if let Some(ms) = run.job.tasks[idx].timeout_ms {
                        self.deadlines
                            .insert((started.saturating_add(ms), task_id.clone()));
                    }
                    self.by_task.insert(task_id.clone(), (id.to_string(), idx));
                    self.dirty.insert(task_id);
                }
                JobTaskState::Waiting | JobTaskState::Queued => {
                    // An attempt a previous master committed before it could record it.
                    let next = attempt_task_id(id, &name, t.rec.attempts + 1);
                    if cell.task(&next).is_some_and(|x| x.owner == BATCH_OWNER) {
                        let agent = cell.task(&next).map(|x| x.agent_id.clone());
                        self.start_attempt(id, idx, next, agent, now);
                        continue;
                    }
                    if stopped {
                        continue;
                    }
                    let deps_failed = run.job.tasks[idx].deps.iter().any(|&d| {
                        matches!(
                            run.tasks[d].rec.state,
                            JobTaskState::Failed | JobTaskState::Skipped
                        )
                    });
                    if deps_failed {
                        continue; // skipped below
                    }
                    if t.waiting_deps == 0 {
                        if t.rec.state == JobTaskState::Waiting {
                            run.tasks[idx].rec.state = JobTaskState::Queued;
                            self.mark(id, idx);
                        }
                        self.enqueue(id, idx, now);
                    }
                }
                _ => {}
            }
        }
        // Dependents of tasks that failed for good are skipped (a crash may have come between).
        let failed: Vec<usize> = (0..n)
            .filter(|&i| {
                matches!(
                    self.jobs[id].tasks[i].rec.state,
                    JobTaskState::Failed | JobTaskState::Skipped
                )
            })
            .collect();
        for i in failed {
            let name = self.jobs[id].tasks[i].rec.name.clone();
            self.skip_dependents(id, i, &format!("dependency {name} did not finish"), now);
        }
        if stopped {
            self.stop(id, job.message.clone(), now);
        }
    }

    /// Puts a queued task in the ready set, or in backoff until its time.
    fn enqueue(&mut self, job: &str, idx: usize, now: Timestamp) {
        let run = &self.jobs[job];
        let nb = run.tasks[idx].rec.not_before;
        if nb > now {
            self.delayed.insert((nb, job.to_string(), idx));
        } else {
            self.ready.insert(ready_key(run, job, idx));
            self.room = true;
        }
    }

    /// Stops a job: queued and waiting tasks are skipped, live attempts killed.
    fn stop(&mut self, id: &str, message: Option<String>, now: Timestamp) {
        let Some(run) = self.jobs.get_mut(id) else {
            return;
        };
        run.state = JobState::Stopped;
        run.message = message.or_else(|| Some("stopped".into()));
        let mut skipped = Vec::new();
        for (idx, t) in run.tasks.iter_mut().enumerate() {
            match t.rec.state {
                JobTaskState::Waiting | JobTaskState::Queued if !t.placing => {
                    t.rec.state = JobTaskState::Skipped;
                    t.rec.message = Some("job stopped".into());
                    t.rec.finished_at = now;
                    skipped.push(idx);
                }
                JobTaskState::Running => {
                    if let Some(tid) = &t.rec.task_id {
                        t.killed_for = Some("job stopped".into());
                        self.kills.push(tid.clone());
                    }
                }
                _ => {}
            }
        }
        run.open -= skipped.len();
        for idx in skipped {
            let key = ready_key(&self.jobs[id], id, idx);
            self.ready.remove(&key);
            self.mark(id, idx);
        }
        self.mark_job(id);
    }

    /// Looks at an attempt whose state changed in the cell.
    fn task_changed(&mut self, cell: &Cell, task_id: &TaskId, now: Timestamp) {
        let Some((job, idx)) = self.by_task.get(task_id).cloned() else {
            return;
        };
        let preempted = cell
            .task(task_id)
            .is_some_and(|t| t.preempted_by.is_some() && t.state != TaskState::Finished);
        let (state, message) = match cell.task(task_id) {
            Some(t) if !t.state.is_terminal() => {
                if !t.agent_id.as_str().is_empty() {
                    let run = self.jobs.get_mut(&job).expect("tracked job");
                    if run.tasks[idx].rec.agent_id.as_ref() != Some(&t.agent_id) {
                        run.tasks[idx].rec.agent_id = Some(t.agent_id.clone());
                        self.mark(&job, idx);
                    }
                }
                return;
            }
            Some(t) => (t.state, describe_end(t)),
            None => (
                TaskState::Lost,
                "the attempt is not in the cell".to_string(),
            ),
        };
        self.by_task.remove(task_id);
        let run = self.jobs.get_mut(&job).expect("tracked job");
        if let Some(ms) = run.job.tasks[idx].timeout_ms {
            let started = run.tasks[idx].rec.started_at;
            self.deadlines
                .remove(&(started.saturating_add(ms), task_id.clone()));
        }
        let killed_for = run.tasks[idx].killed_for.take();
        let attempts = run.tasks[idx].rec.attempts;
        let ctask = &run.job.tasks[idx];
        let stopped = run.state == JobState::Stopped;
        let t = &mut run.tasks[idx];
        t.rec.finished_at = now;
        if state == TaskState::Finished {
            t.rec.state = JobTaskState::Finished;
            t.rec.message = None;
            run.open -= 1;
            let dependents = ctask.dependents.clone();
            self.mark(&job, idx);
            for d in dependents {
                let run = self.jobs.get_mut(&job).expect("tracked job");
                let dt = &mut run.tasks[d];
                dt.waiting_deps = dt.waiting_deps.saturating_sub(1);
                if dt.waiting_deps == 0
                    && dt.rec.state == JobTaskState::Waiting
                    && !run.state.is_terminal()
                {
                    dt.rec.state = JobTaskState::Queued;
                    self.mark(&job, d);
                    self.enqueue(&job, d, now);
                }
            }
            return;
        }
        let why = killed_for.unwrap_or(message);
        if !stopped && preempted {
            // Evicted by a higher-priority claim or a team below its guarantee: queued again
            // at once, and it uses no retry (as in Borg and Nomad).
            t.rec.preemptions += 1;
            t.rec.state = JobTaskState::Queued;
            t.rec.not_before = now;
            t.rec.message = Some(format!(
                "attempt {attempts} was preempted ({why}); queued again, no retry used"
            ));
            self.mark(&job, idx);
            self.enqueue(&job, idx, now);
            return;
        }
        let failures = attempts.saturating_sub(t.rec.preemptions);
        if !stopped && failures <= ctask.retries {
            let shift = failures.saturating_sub(1).min(20);
            let wait = ctask
                .backoff_ms
                .saturating_mul(1 << shift)
                .min(JOB_BACKOFF_MAX_MS);
            t.rec.state = JobTaskState::Queued;
            t.rec.not_before = now.saturating_add(wait);
            t.rec.message = Some(format!(
                "attempt {attempts} failed ({why}); retry in {}",
                fmt_ms(wait)
            ));
            self.mark(&job, idx);
            self.enqueue(&job, idx, now);
            return;
        }
        t.rec.state = JobTaskState::Failed;
        t.rec.message = Some(if stopped {
            why
        } else {
            format!(
                "failed after {failures} attempt{} ({why})",
                if failures == 1 { "" } else { "s" }
            )
        });
        run.open -= 1;
        let name = t.rec.name.clone();
        if run.failed.is_none() && !stopped {
            run.failed = Some(name.clone());
        }
        self.mark(&job, idx);
        self.skip_dependents(&job, idx, &format!("dependency {name} failed"), now);
    }

    /// Skips every task that depends (transitively) on `idx` and has not run.
    fn skip_dependents(&mut self, job: &str, idx: usize, why: &str, now: Timestamp) {
        let mut queue: VecDeque<usize> = self.jobs[job].job.tasks[idx]
            .dependents
            .iter()
            .copied()
            .collect();
        while let Some(d) = queue.pop_front() {
            let run = self.jobs.get_mut(job).expect("known job");
            let t = &mut run.tasks[d];
            if !matches!(t.rec.state, JobTaskState::Waiting | JobTaskState::Queued) || t.placing {
                continue;
            }
            t.rec.state = JobTaskState::Skipped;
            t.rec.message = Some(why.to_string());
            t.rec.finished_at = now;
            run.open -= 1;
            queue.extend(run.job.tasks[d].dependents.iter().copied());
            let key = ready_key(&self.jobs[job], job, d);
            self.ready.remove(&key);
            self.mark(job, d);
        }
    }

    /// Places ready tasks, highest priority first, on the agents with the most free cpus. A
    /// task that fits nowhere may evict others (see [`Preemption`]): it is then claimed alone,
    /// all-or-nothing with its evictions.
    fn place(&mut self, cell: &Cell, now: Timestamp, actions: &mut Actions) {
        let mut agents: Vec<(&Agent, ResourceSet)> = cell
            .agents()
            .filter(|a| a.state == AgentState::Active)
            .map(|a| (a, a.free()))
            .collect();
        agents.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        if agents.is_empty() {
            return;
        }
        // One incremental claim per job and priority (a claim's tasks share its priority).
        let mut claims: BTreeMap<(String, i64), Vec<Placement>> = BTreeMap::new();
        let mut preempting: Vec<(String, i64, Placement, Vec<TaskId>)> = Vec::new();
        let mut preemption = Preemption::new(cell);
        let mut misses = 0;
        let mut placed = 0;
        let mut taken: Vec<ReadyKey> = Vec::new();
        for key in self.ready.iter() {
            if placed >= BATCH_PLACEMENTS_PER_STEP_MAX
                || misses >= BATCH_PLACEMENT_MISSES_PER_STEP_MAX
            {
                break;
            }
            let (job, idx) = (&key.2, key.3);
            let run = &self.jobs[job];
            let (ctask, def) = (&run.job.tasks[idx], &run.job.spec.tasks[idx]);
            let mut best: Option<(usize, i64)> = None;
            for (i, (a, free)) in agents.iter().enumerate() {
                if !free.contains(&ctask.resources) || !def.constraints.iter().all(|c| c.matches(a))
                {
                    continue;
                }
                if port_count(free) < def.ports.len() as u64 {
                    continue;
                }
                let cpus = free.scalar("cpus").0;
                if best.is_none_or(|(_, c)| cpus > c) {
                    best = Some((i, cpus));
                }
            }
            let mut victims = Vec::new();
            if best.is_none() && preempting.len() < BATCH_PREEMPTIONS_PER_STEP_MAX {
                let role = &run.job.role;
                if let Some((i, v)) = preemption.choose(&agents, role, ctask, def) {
                    let a = &mut agents[i].1;
                    for t in &v {
                        a.add(&t.resources)
                            .expect("a victim's resources are not free");
                    }
                    preemption.take(role, ctask, &v);
                    victims = v.iter().map(|t| t.id.clone()).collect();
                    best = Some((i, 0));
                }
            }
            let Some((i, _)) = best else {
                misses += 1;
                continue;
            };
            let ports = free_ports_upto(&agents[i].1, def.ports.len() as u64);
            let resources = with_ports(&ctask.resources, &ports);
            // A task its team's quota refuses now (limit, or another team's guarantee held
            // back) is still claimed, so that its record says why it waits, but it takes no
            // room from the tasks after it in this step.
            let quota_ok =
                !victims.is_empty() || preemption.quota_allows(&run.job.role, &resources);
            if quota_ok && agents[i].1.subtract(&resources).is_err() {
                misses += 1;
                continue;
            }
            if victims.is_empty() && quota_ok {
                preemption.added(&run.job.role, &resources);
            }
            let task_id = attempt_task_id(job, &ctask.name, run.tasks[idx].rec.attempts + 1);
            let agent_id = agents[i].0.id.clone();
            let spec = run
                .job
                .task_info(idx, &task_id, &agent_id, &resources, &ports);
            let placement = Placement {
                task_id,
                name: format!("{}.{}", job, ctask.name),
                agent_id,
                resources,
                spec,
            };
            if victims.is_empty() {
                claims
                    .entry((job.clone(), ctask.priority))
                    .or_default()
                    .push(placement);
            } else {
                preempting.push((job.clone(), ctask.priority, placement, victims));
            }
            taken.push(key.clone());
            placed += 1;
        }
        for key in taken {
            self.ready.remove(&key);
            self.jobs.get_mut(&key.2).expect("known job").tasks[key.3].placing = true;
        }
        let mut push = |s: &mut Self,
                        job: &str,
                        placements: Vec<Placement>,
                        mode: CommitMode,
                        priority: i64,
                        evictions: Vec<TaskId>| {
            s.claim_seq += 1;
            actions.claims.push(Claim {
                id: ClaimId::new(format!("batch.{job}.{now}.{}", s.claim_seq)),
                role: s.jobs[job].job.role.clone(),
                owner: BATCH_OWNER.into(),
                snapshot_version: cell.version(),
                mode,
                check: ConflictCheck::Fine,
                placements,
                priority,
                evictions,
            });
        };
        for ((job, priority), placements) in claims {
            push(
                self,
                &job,
                placements,
                CommitMode::Incremental,
                priority,
                vec![],
            );
        }
        for (job, priority, placement, victims) in preempting {
            push(
                self,
                &job,
                vec![placement],
                CommitMode::AllOrNothing,
                priority,
                victims,
            );
        }
        // Stopped at the cap: place more at the next step.
        if placed >= BATCH_PLACEMENTS_PER_STEP_MAX {
            self.room = true;
        }
    }

    /// Jobs whose every task ended are complete or failed.
    fn finish_jobs(&mut self) {
        for (id, (job_changed, _)) in self.changed.iter_mut() {
            let Some(run) = self.jobs.get_mut(id) else {
                continue;
            };
            if run.open == 0 && run.state == JobState::Running {
                run.state = if run.failed.is_some() {
                    JobState::Failed
                } else {
                    JobState::Complete
                };
                run.message = run.failed.as_ref().map(|f| format!("task {f} failed"));
                *job_changed = true;
            }
        }
    }

    /// Asks for a placement pass at the next step even if nothing seemed to free room (a
    /// periodic backstop against claims refused for reasons that pass, such as quota headroom).
    pub fn nudge(&mut self) {
        self.room = true;
    }

    /// The record changes since the last call, one update per job.
    fn take_updates(&mut self, now: Timestamp) -> Vec<JobUpdate> {
        let mut out = Vec::new();
        for (id, (job_changed, idxs)) in std::mem::take(&mut self.changed) {
            let Some(run) = self.jobs.get(&id) else {
                continue;
            };
            let done = run.open == 0;
            out.push(JobUpdate {
                job_id: id.clone(),
                state: (job_changed || done).then_some(run.state),
                message: run.message.clone(),
                finished_at: if run.state.is_terminal() { now } else { 0 },
                tasks: idxs.iter().map(|&i| run.tasks[i].rec.clone()).collect(),
            });
            if done && run.state.is_terminal() {
                // Nothing left to watch: forget the job (its record stays in the cell).
                self.jobs.remove(&id);
            }
        }
        out
    }
}

/// One step's books of the roles and the cell (what it placed and evicted so far), for the
/// quota checks the cell will make and for the choice of victims.
///
/// Victims for a task that fits nowhere are chosen by the rules the cell
/// checks (`Cell::decide`): a victim is an attempt of a batch job (the scheduler evicts only
/// work it can queue again), its role is preemptible, and the victim has a strictly lower
/// priority than the task (**priority rule**), or the task's team stays within its guarantee
/// with the task and the victim is of another team (**guarantee rule**); no other team is
/// taken below its guarantee. Per agent, victims are taken lowest priority first (then the
/// largest first) until the task fits; the agent whose victims have the lowest top priority,
/// then the fewest victims, wins.
struct Preemption<'c> {
    cell: &'c Cell,
    /// Tasks already chosen as victims in this step.
    evicted: HashSet<TaskId>,
    /// Per role: scalars placed (+) and evicted (-) in this step so far.
    moved: HashMap<String, BTreeMap<String, i64>>,
    /// Free scalars of the cell, less what this step placed.
    cluster_free: BTreeMap<String, i64>,
}

impl<'c> Preemption<'c> {
    fn new(cell: &'c Cell) -> Preemption<'c> {
        Preemption {
            cell,
            evicted: HashSet::new(),
            moved: HashMap::new(),
            cluster_free: cell
                .cluster_free()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        }
    }

    /// Whether the cell's quota checks would let `role` take `res` now: its limit, and the
    /// headroom other teams' unmet guarantees hold back.
    fn quota_allows(&self, role: &str, res: &ResourceSet) -> bool {
        if let Some(limit) = self.cell.role(role).and_then(|r| r.quota.limit.as_ref()) {
            for (name, cap) in limit.scalar_totals() {
                let want = res.scalar(&name).0;
                if want > 0 && self.consumed(role, &name) + want > cap.0 {
                    return false;
                }
            }
        }
        for (name, held) in self.cell.headroom_for_others(role) {
            let want = res.scalar(&name).0;
            let free = self.cluster_free.get(name.as_str()).copied().unwrap_or(0);
            if want > 0 && free - want < held {
                return false;
            }
        }
        true
    }

    /// What `role` consumes of `name`, with this step's placements and evictions.
    fn consumed(&self, role: &str, name: &str) -> i64 {
        let base = self
            .cell
            .role(role)
            .map(|r| r.consumed.scalar(name).0)
            .unwrap_or(0);
        base + self
            .moved
            .get(role)
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(0)
    }

    fn added(&mut self, role: &str, res: &ResourceSet) {
        let m = self.moved.entry(role.to_string()).or_default();
        for (name, v) in res.scalar_totals() {
            *m.entry(name.to_string()).or_default() += v.0;
            *self.cluster_free.entry(name.to_string()).or_default() -= v.0;
        }
    }

    fn take(&mut self, role: &str, task: &CompiledTask, victims: &[&Task]) {
        self.added(role, &task.resources);
        for t in victims {
            self.evicted.insert(t.id.clone());
            let m = self.moved.entry(t.role.clone()).or_default();
            for (name, v) in t.resources.scalar_totals() {
                *m.entry(name.to_string()).or_default() -= v.0;
                *self.cluster_free.entry(name.to_string()).or_default() += v.0;
            }
        }
    }

    /// Whether `role` stays within its guarantee with `res` more, on every guaranteed
    /// resource, and `res` asks for one of them.
    fn below_guarantee_with(&self, role: &str, res: &ResourceSet) -> bool {
        let Some(r) = self.cell.role(role) else {
            return false;
        };
        let mut asks = false;
        for (name, g) in r.quota.guarantee.scalar_totals() {
            let want = res.scalar(&name).0;
            asks |= want > 0;
            if self.consumed(role, &name) + want > g.0 {
                return false;
            }
        }
        asks
    }

    fn choose(
        &self,
        agents: &[(&'c Agent, ResourceSet)],
        role: &str,
        task: &CompiledTask,
        def: &TaskDef,
    ) -> Option<(usize, Vec<&'c Task>)> {
        let by_guarantee = self.below_guarantee_with(role, &task.resources);
        if task.priority == 0 && !by_guarantee {
            return None;
        }
        let mut best: Option<((i64, usize), usize, Vec<&'c Task>)> = None;
        for (i, (a, free)) in agents.iter().enumerate() {
            if !def.constraints.iter().all(|c| c.matches(a)) {
                continue;
            }
            let mut candidates: Vec<&'c Task> = self
                .cell
                .live_tasks_on(&a.id)
                .filter(|t| {
                    t.holds_resources()
                        && t.owner == BATCH_OWNER
                        && matches!(
                            t.state,
                            TaskState::Staging | TaskState::Starting | TaskState::Running
                        )
                        && !self.evicted.contains(&t.id)
                        && self.cell.role(&t.role).is_none_or(|r| r.preemptible)
                        && (t.priority < task.priority || (by_guarantee && t.role != role))
                })
                .collect();
            candidates.sort_by_key(|t| {
                (
                    t.priority,
                    Reverse(t.resources.scalar("cpus").0),
                    t.id.clone(),
                )
            });
            let mut avail = free.clone();
            let mut chosen: Vec<&'c Task> = Vec::new();
            let mut gone: HashMap<&str, BTreeMap<String, i64>> = HashMap::new();
            for t in candidates {
                if avail.contains(&task.resources) && port_count(&avail) >= def.ports.len() as u64 {
                    break;
                }
                if t.role != role {
                    // No other team goes below its guarantee.
                    let g = gone.entry(t.role.as_str()).or_default();
                    let floor_kept = self.cell.role(&t.role).is_none_or(|r| {
                        r.quota.guarantee.scalar_totals().iter().all(|(name, min)| {
                            let want = t.resources.scalar(name).0;
                            let before = g.get(name.as_str()).copied().unwrap_or(0);
                            want == 0 || self.consumed(&t.role, name) - before - want >= min.0
                        })
                    });
                    if !floor_kept {
                        continue;
                    }
                    for (name, v) in t.resources.scalar_totals() {
                        *g.entry(name.to_string()).or_default() += v.0;
                    }
                }
                if avail.add(&t.resources).is_err() {
                    continue;
                }
                chosen.push(t);
            }
            let fits =
                avail.contains(&task.resources) && port_count(&avail) >= def.ports.len() as u64;
            if !fits || chosen.is_empty() {
                continue;
            }
            let top = chosen.iter().map(|t| t.priority).max().unwrap_or(0);
            let key = (top, chosen.len());
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                best = Some((key, i, chosen));
            }
        }
        best.map(|(_, i, v)| (i, v))
    }
}

fn ready_key(run: &JobRun, job: &str, idx: usize) -> ReadyKey {
    (
        Reverse(run.job.tasks[idx].priority),
        run.seq,
        job.to_string(),
        idx,
    )
}

/// Why an attempt ended, from its last status.
pub(crate) fn describe_end(t: &Task) -> String {
    let mut s = t.state.mesos_name().to_string();
    if let Some(code) = t.status.exit_code {
        s.push_str(&format!(", exit code {code}"));
    }
    if let Some(m) = t.status.message.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(&format!(": {m}"));
    }
    s
}

pub(crate) fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
