//! The batch scheduler: a sans-IO state machine that reads a snapshot and the time and returns
//! what to do.

use super::*;

// ---------------------------------------------------------------------------------------------
// The batch scheduler

/// Order of queued tasks: higher priority first, then older jobs, then file order.
pub(crate) type ReadyKey = (Reverse<i64>, Version, String, usize);

#[derive(Clone, Debug)]
pub(crate) struct RunTask {
    rec: JobTask,
    /// Dependencies not finished yet.
    waiting_deps: usize,
    /// In a claim whose outcome is not known yet.
    placing: bool,
    /// Killed by the scheduler, with this reason.
    killed_for: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct JobRun {
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

impl JobRun {
    /// The run of a stored job that no longer validates: failed, with no tasks.
    fn invalid(id: &str, job: &Job, e: &JobErrors) -> JobRun {
        JobRun {
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
        }
    }

    /// The run of a stored job, from its records: what is open, what failed, and how many
    /// unfinished dependencies each task waits for.
    fn resumed(compiled: CompiledJob, job: &Job) -> JobRun {
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
        run
    }
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
        let run = match CompiledJob::compile(&job.spec) {
            Ok(compiled) => JobRun::resumed(compiled, job),
            Err(e) => {
                // A stored job that no longer validates (a newer rule): fail it visibly.
                self.jobs
                    .insert(id.to_string(), JobRun::invalid(id, job, &e));
                self.mark_job(id);
                return;
            }
        };
        self.jobs.insert(id.to_string(), run);
        let stopped = job.state == JobState::Stopped;
        let n = self.jobs[id].tasks.len();
        self.take_over_tasks(cell, id, stopped, now);
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

    /// Takes over the tasks of a job just loaded: running attempts are watched again (their
    /// timeouts too), an attempt committed but not recorded is adopted, and tasks whose
    /// dependencies are done are queued.
    fn take_over_tasks(&mut self, cell: &Cell, id: &str, stopped: bool, now: Timestamp) {
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
                        continue; // `load` skips it
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
        let Some((state, message)) = self.attempt_end(cell, task_id, &job, idx) else {
            return;
        };
        self.by_task.remove(task_id);
        let run = self.jobs.get_mut(&job).expect("tracked job");
        if let Some(ms) = run.job.tasks[idx].timeout_ms {
            let started = run.tasks[idx].rec.started_at;
            self.deadlines
                .remove(&(started.saturating_add(ms), task_id.clone()));
        }
        let killed_for = run.tasks[idx].killed_for.take();
        run.tasks[idx].rec.finished_at = now;
        if state == TaskState::Finished {
            self.attempt_finished(&job, idx, now);
            return;
        }
        let why = killed_for.unwrap_or(message);
        self.attempt_failed(&job, idx, preempted, why, now);
    }

    /// How an attempt ended (its state and what to say), or `None` while it is live; a live
    /// attempt's agent is recorded once the cell knows it.
    fn attempt_end(
        &mut self,
        cell: &Cell,
        task_id: &TaskId,
        job: &str,
        idx: usize,
    ) -> Option<(TaskState, String)> {
        match cell.task(task_id) {
            Some(t) if !t.state.is_terminal() => {
                if !t.agent_id.as_str().is_empty() {
                    let run = self.jobs.get_mut(job).expect("tracked job");
                    if run.tasks[idx].rec.agent_id.as_ref() != Some(&t.agent_id) {
                        run.tasks[idx].rec.agent_id = Some(t.agent_id.clone());
                        self.mark(job, idx);
                    }
                }
                None
            }
            Some(t) => Some((t.state, describe_end(t))),
            None => Some((
                TaskState::Lost,
                "the attempt is not in the cell".to_string(),
            )),
        }
    }

    /// A finished attempt: its task is done, and the dependents it was the last unfinished
    /// dependency of are queued.
    fn attempt_finished(&mut self, job: &str, idx: usize, now: Timestamp) {
        let run = self.jobs.get_mut(job).expect("tracked job");
        let t = &mut run.tasks[idx];
        t.rec.state = JobTaskState::Finished;
        t.rec.message = None;
        run.open -= 1;
        let dependents = run.job.tasks[idx].dependents.clone();
        self.mark(job, idx);
        for d in dependents {
            let run = self.jobs.get_mut(job).expect("tracked job");
            let dt = &mut run.tasks[d];
            dt.waiting_deps = dt.waiting_deps.saturating_sub(1);
            if dt.waiting_deps == 0
                && dt.rec.state == JobTaskState::Waiting
                && !run.state.is_terminal()
            {
                dt.rec.state = JobTaskState::Queued;
                self.mark(job, d);
                self.enqueue(job, d, now);
            }
        }
    }

    /// An attempt that ended otherwise: a preempted one is queued again at once, a failed one
    /// with retries left after its backoff; else the task failed for good (`why`) and its
    /// dependents are skipped.
    fn attempt_failed(
        &mut self,
        job: &str,
        idx: usize,
        preempted: bool,
        why: String,
        now: Timestamp,
    ) {
        let run = self.jobs.get_mut(job).expect("tracked job");
        let attempts = run.tasks[idx].rec.attempts;
        let ctask = &run.job.tasks[idx];
        let stopped = run.state == JobState::Stopped;
        let t = &mut run.tasks[idx];
        if !stopped && preempted {
            // Evicted by a higher-priority claim or a team below its guarantee: queued again
            // at once, and it uses no retry (as in Borg and Nomad).
            t.rec.preemptions += 1;
            t.rec.state = JobTaskState::Queued;
            t.rec.not_before = now;
            t.rec.message = Some(format!(
                "attempt {attempts} was preempted ({why}); queued again, no retry used"
            ));
            self.mark(job, idx);
            self.enqueue(job, idx, now);
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
            self.mark(job, idx);
            self.enqueue(job, idx, now);
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
        self.mark(job, idx);
        self.skip_dependents(job, idx, &format!("dependency {name} failed"), now);
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
        let mut claims: JobClaims = BTreeMap::new();
        let mut preempting: Vec<PreemptingClaim> = Vec::new();
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
            let may_preempt = preempting.len() < BATCH_PREEMPTIONS_PER_STEP_MAX;
            match place_task(run, job, idx, &mut agents, &mut preemption, may_preempt) {
                None => misses += 1,
                Some((placement, victims)) => {
                    let priority = run.job.tasks[idx].priority;
                    if victims.is_empty() {
                        claims
                            .entry((job.clone(), priority))
                            .or_default()
                            .push(placement);
                    } else {
                        preempting.push((job.clone(), priority, placement, victims));
                    }
                    taken.push(key.clone());
                    placed += 1;
                }
            }
        }
        for key in taken {
            self.ready.remove(&key);
            self.jobs.get_mut(&key.2).expect("known job").tasks[key.3].placing = true;
        }
        self.push_claims(cell, now, claims, preempting, actions);
        // Stopped at the cap: place more at the next step.
        if placed >= BATCH_PLACEMENTS_PER_STEP_MAX {
            self.room = true;
        }
    }

    /// The claims of a placement pass: one incremental claim per job and priority, then one
    /// all-or-nothing claim per preempting placement with its evictions.
    fn push_claims(
        &mut self,
        cell: &Cell,
        now: Timestamp,
        claims: JobClaims,
        preempting: Vec<PreemptingClaim>,
        actions: &mut Actions,
    ) {
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

pub(crate) fn ready_key(run: &JobRun, job: &str, idx: usize) -> ReadyKey {
    (
        Reverse(run.job.tasks[idx].priority),
        run.seq,
        job.to_string(),
        idx,
    )
}

/// A placement pass's incremental placements, by job and priority.
type JobClaims = BTreeMap<(String, i64), Vec<Placement>>;

/// A placement that evicts: its job, priority, the placement and the tasks it evicts.
type PreemptingClaim = (String, i64, Placement, Vec<TaskId>);

/// The placement of ready task `idx` of `job` and the tasks it evicts (none when it fits
/// without), taken from `agents`' free resources; `None` when it fits nowhere now.
fn place_task<'c>(
    run: &JobRun,
    job: &str,
    idx: usize,
    agents: &mut [(&'c Agent, ResourceSet)],
    preemption: &mut Preemption<'c>,
    may_preempt: bool,
) -> Option<(Placement, Vec<TaskId>)> {
    let (ctask, def) = (&run.job.tasks[idx], &run.job.spec.tasks[idx]);
    let mut best = best_agent(agents, ctask, def);
    let mut victims = Vec::new();
    if best.is_none() && may_preempt {
        let role = &run.job.role;
        if let Some((i, v)) = preemption.choose(agents, role, ctask, def) {
            let a = &mut agents[i].1;
            for t in &v {
                a.add(&t.resources)
                    .expect("a victim's resources are not free");
            }
            preemption.take(role, ctask, &v);
            victims = v.iter().map(|t| t.id.clone()).collect();
            best = Some(i);
        }
    }
    let i = best?;
    let ports = free_ports_upto(&agents[i].1, def.ports.len() as u64);
    let resources = with_ports(&ctask.resources, &ports);
    // A task its team's quota refuses now (limit, or another team's guarantee held
    // back) is still claimed, so that its record says why it waits, but it takes no
    // room from the tasks after it in this step.
    let quota_ok = !victims.is_empty() || preemption.quota_allows(&run.job.role, &resources);
    if quota_ok && agents[i].1.subtract(&resources).is_err() {
        return None;
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
    Some((placement, victims))
}

/// The agent with the most free cpus (the first in id order among equals) that has room
/// for the task's resources and ports and meets its constraints.
fn best_agent(
    agents: &[(&Agent, ResourceSet)],
    ctask: &CompiledTask,
    def: &TaskDef,
) -> Option<usize> {
    let mut best: Option<(usize, i64)> = None;
    for (i, (a, free)) in agents.iter().enumerate() {
        if !free.contains(&ctask.resources) || !def.constraints.iter().all(|c| c.matches(a)) {
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
    best.map(|(i, _)| i)
}
