//! The job records kept in the cell, and how `SubmitJob` and `UpdateJob` are decided and
//! applied on the one commit path.

use super::*;

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

pub(crate) fn is_zero(n: &u32) -> bool {
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

/// Decides `SchedulerCommand::SubmitJob`: validates the file, checks it against the agents, and is
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

/// Decides `SchedulerCommand::UpdateJob`. A terminal job keeps its state (a stop racing with the
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
