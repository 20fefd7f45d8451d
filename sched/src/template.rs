//! The task template both schedulers take: the fields a job's task and a service's task share
//! (image, command, resources, environment, ports), their checks, the TaskInfo they become,
//! the errors of a file, and the words both write about a task's end.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use shoal_core::limits::PRIORITY_MAX;
use shoal_core::*;
use shoal_mesos::task_info::{self, DockerNetwork};

use crate::batch::PRIORITY_DEFAULT;
use crate::limits::*;

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
    let mut vars: Vec<(String, String)> = def
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut port_mappings = Vec::new();
    for (i, (spec, port)) in def.ports.iter().zip(ports).enumerate() {
        let (name, container_port) = split_port(spec);
        if let Some(Ok(container_port)) = container_port {
            // Ports come from the agent's `ports` ranges, which Mesos bounds to 16 bits.
            port_mappings.push((u32::try_from(*port).unwrap_or(0), u32::from(container_port)));
        }
        vars.push((format!("PORT_{}", name.to_uppercase()), port.to_string()));
        vars.push((format!("PORT{i}"), port.to_string()));
    }
    vars.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut info = task_info::command_task(
        task_id.as_str(),
        name,
        resources,
        def.command.unwrap_or_default(),
    );
    info.agent_id.value = agent.as_str().to_string();
    if let Some(command) = info.command.as_mut() {
        command.environment = Some(task_info::environment(vars));
        if def.image.is_some() && def.command.is_none() {
            command.shell = Some(false);
        }
    }
    if let Some(image) = def.image {
        let network = if port_mappings.is_empty() {
            DockerNetwork::Host
        } else {
            DockerNetwork::Bridge
        };
        info.container = Some(task_info::docker_container(image, network, &port_mappings));
    }
    task_info::to_json(&info)
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
