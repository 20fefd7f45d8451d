//! An ECS task definition read as a job (one task per container).

use std::collections::BTreeMap;

use serde_json::Value;

use shoal_sched::batch::{JobSpec, TaskDef};
use shoal_sched::constraints::{Constraint, ConstraintOp};

use crate::read::*;

// ---------------------------------------------------------------------------------------------
// ECS

/// CPU units per cpu in ECS.
pub(crate) const ECS_CPU_UNITS: f64 = 1024.0;

/// An ECS task definition as a job: one task per container, all sharing its constraints.
pub(crate) fn ecs_task_definition(cx: &mut Context, value: &Value) -> Option<JobSpec> {
    let mut def = Object::new(cx, "", value)?;
    let Some(family) = def.string(cx, "family") else {
        cx.error("family", "an ECS task definition needs a family");
        return None;
    };
    let name = job_name(cx, "family", family);
    let bridge = ecs_bridge(cx, &mut def);
    ecs_compatibilities(cx, &mut def);
    let task_cpu = def.number(cx, "cpu");
    let task_mem = def.number(cx, "memory");
    let constraints = ecs_constraints(cx, &mut def);
    let containers = ecs_definition_finish(cx, def);
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
    let share = ecs_shares(containers, task_cpu, task_mem);
    let mut tasks = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        if let Some(task) = ecs_container(cx, i, c, &share, bridge, &constraints) {
            tasks.push(task);
        }
    }
    Some(JobSpec {
        name,
        id: None,
        team: None,
        priority: None,
        tasks,
    })
}

/// What a container that gives no cpu or memory of its own gets: an equal part of what the
/// task's own `cpu` and `memory` leave after the containers that give theirs.
struct EcsShare {
    cpu: f64,
    mem: f64,
}

/// Whether the task runs on the bridge network (`networkMode`, bridge when absent); other
/// modes are unsupported and read as host.
fn ecs_bridge(cx: &mut Context, def: &mut Object) -> bool {
    let network = def.string(cx, "networkMode").unwrap_or("bridge");
    match network {
        "bridge" => true,
        "host" => false,
        other => {
            cx.unsupported(
                "networkMode",
                &format!("'{other}' (Shoal runs containers on the host or bridge network)"),
            );
            false
        }
    }
}

/// Every launch type the definition requires is EC2 or EXTERNAL (what Shoal's agents are).
fn ecs_compatibilities(cx: &mut Context, def: &mut Object) {
    for (i, c) in def.array(cx, "requiresCompatibilities").iter().enumerate() {
        if c.as_str() != Some("EC2") && c.as_str() != Some("EXTERNAL") {
            cx.unsupported(
                &format!("requiresCompatibilities[{i}]"),
                &format!("{c} (Shoal runs tasks on its own agents, like EC2 or EXTERNAL)"),
            );
        }
    }
}

/// The placement constraints Shoal can keep: `memberOf` with an attribute equals or not
/// equals expression; each other one is unsupported.
fn ecs_constraints(cx: &mut Context, def: &mut Object) -> Vec<Constraint> {
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
    constraints
}

/// The container definitions, after the definition's other fields: metadata noted, the
/// status `describe-task-definition` writes skipped, every other one unsupported.
fn ecs_definition_finish<'a>(cx: &mut Context, mut def: Object<'a>) -> &'a [Value] {
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
    containers
}

/// Task-level cpu and memory shared by the containers that give none.
fn ecs_shares(containers: &[Value], task_cpu: Option<f64>, task_mem: Option<f64>) -> EcsShare {
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
    EcsShare {
        cpu: share(task_cpu, cpu_given, cpu_missing),
        mem: share(task_mem, mem_given, mem_missing),
    }
}

/// One container definition as a task of the job (`None` when it is not an object).
fn ecs_container(
    cx: &mut Context,
    i: usize,
    c: &Value,
    share: &EcsShare,
    bridge: bool,
    constraints: &[Constraint],
) -> Option<TaskDef> {
    let path = format!("containerDefinitions[{i}]");
    let mut container = Object::new(cx, &path, c)?;
    let cname = container
        .string(cx, "name")
        .map(|n| job_name(cx, &format!("{path}.name"), n))
        .unwrap_or_else(|| {
            cx.error(&format!("{path}.name"), "a container needs a name");
            format!("container{i}")
        });
    let image = container.string(cx, "image").map(str::to_string);
    if image.is_none() {
        cx.error(&format!("{path}.image"), "a container needs an image");
    }
    let cpu = container.number(cx, "cpu").unwrap_or(share.cpu);
    let hard = container.number(cx, "memory");
    let soft = container.number(cx, "memoryReservation");
    let mem = hard.or(soft).unwrap_or(share.mem);
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
    let env = ecs_environment(cx, &path, &mut container);
    let ports = ecs_port_mappings(cx, &path, &mut container, bridge);
    let depends_on = ecs_depends_on(cx, &path, &mut container);
    ecs_container_finish(cx, container);
    let resources = resource_text(&[("cpus", cpu / ECS_CPU_UNITS), ("mem", mem)]);
    Some(TaskDef {
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
        constraints: constraints.to_vec(),
    })
}

/// A container's `environment` (`{name, value}` pairs; a name alone is an empty value).
fn ecs_environment(
    cx: &mut Context,
    path: &str,
    container: &mut Object,
) -> BTreeMap<String, String> {
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
    env
}

/// A container's named ports (`name:containerPort`): tcp on the bridge network with host
/// port 0 only, since Shoal picks host ports.
fn ecs_port_mappings(
    cx: &mut Context,
    path: &str,
    container: &mut Object,
    bridge: bool,
) -> Vec<String> {
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
    ports
}

/// The containers a container waits for: only the SUCCESS condition is kept.
fn ecs_depends_on(cx: &mut Context, path: &str, container: &mut Object) -> Vec<String> {
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
    depends_on
}

/// A container's fields left: what only governs ECS's own running is noted, every other
/// one unsupported, with a hint where Shoal has one.
fn ecs_container_finish(cx: &mut Context, mut container: Object) {
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
}

/// `attribute:zone == a` or `attribute:zone != a` (ECS's cluster query language, the part
/// that maps onto agent attributes).
pub(crate) fn ecs_expression(expression: &str) -> Option<Constraint> {
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
