//! A job file checked before anything runs — names, resources, durations, unknown
//! dependencies, cycles — and against the agents of the cell.

use super::*;

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
        let index = task_index(spec, &mut err);
        let mut tasks = Vec::with_capacity(spec.tasks.len());
        for t in &spec.tasks {
            tasks.push(compile_task(t, job_priority, &index, &mut err));
        }
        link_dependents(&mut tasks, &mut err);
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
    pub(crate) fn task_info(
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

/// One task of a job file checked: its fields, retries, backoff, timeout, priority and
/// constraints, and its dependencies as indices (`index`: the tasks by name).
fn compile_task(
    t: &TaskDef,
    job_priority: i64,
    index: &HashMap<String, usize>,
    err: &mut dyn FnMut(String, String),
) -> CompiledTask {
    let at = |f: &str| format!("tasks[{}].{f}", t.name);
    let resources = check_task_fields(&t.fields(), &at, err);
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
    let timeout_ms = task_timeout(t, &at, err);
    let priority = t.priority.unwrap_or(job_priority);
    if !(0..=PRIORITY_MAX).contains(&priority) {
        err(
            at("priority"),
            format!("{priority} is not within 0..={PRIORITY_MAX}"),
        );
    }
    check_job_constraints(t, &at, err);
    let deps = task_deps(t, index, &at, err);
    CompiledTask {
        name: t.name.clone(),
        resources,
        retries: t.retries,
        backoff_ms,
        timeout_ms,
        priority,
        deps,
        dependents: Vec::new(),
    }
}

/// The tasks of a job file by name; a bad or repeated name is an error.
fn task_index(spec: &JobSpec, err: &mut dyn FnMut(String, String)) -> HashMap<String, usize> {
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
    index
}

/// Each task's dependents, the reverse of its dependencies; a cycle of two tasks or more is
/// an error.
fn link_dependents(tasks: &mut [CompiledTask], err: &mut dyn FnMut(String, String)) {
    for i in 0..tasks.len() {
        for d in tasks[i].deps.clone() {
            tasks[d].dependents.push(i);
        }
    }
    if let Some(cycle) = find_cycle(tasks) {
        let names: Vec<&str> = cycle.iter().map(|&i| tasks[i].name.as_str()).collect();
        // Self-loops were reported above and are not in `deps`: this one has two tasks or more.
        err(
            format!("tasks[{}].depends_on", names[0]),
            format!("dependency cycle: {}", names.join(" -> ")),
        );
    }
}

/// A task's timeout, if it has one: longer than 0.
fn task_timeout(
    t: &TaskDef,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) -> Option<u64> {
    match t.timeout.as_deref().map(parse_duration_ms) {
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
    }
}

/// A job's task constraints name an attribute and are neither `unique` nor `max_per`.
fn check_job_constraints(
    t: &TaskDef,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) {
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
}

/// A task's dependencies as indices (`index`: the tasks by name), each once; itself or an
/// unknown task is an error.
fn task_deps(
    t: &TaskDef,
    index: &HashMap<String, usize>,
    at: &dyn Fn(&str) -> String,
    err: &mut dyn FnMut(String, String),
) -> Vec<usize> {
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
    deps
}

/// A cycle of the dependency graph, as task indices `a, b, …, a`, if there is one.
pub(crate) fn find_cycle(tasks: &[CompiledTask]) -> Option<Vec<usize>> {
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
pub(crate) fn agent_can_hold(agent: &Agent, task: &CompiledTask, def: &TaskDef) -> bool {
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

/// The id of a job task's attempt in the cell: `<job>.<task>.<attempt>` (attempts count from 1).
/// Job ids and task names have no dots, so ids of different jobs never meet.
pub fn attempt_task_id(job: &str, task: &str, attempt: u32) -> TaskId {
    TaskId::new(format!("{job}.{task}.{attempt}"))
}
