//! The Omega experiment's discrete-event simulation, on the real sans-IO core.
//!
//! Two schedulers (batch and service) place jobs in one `shoal_sched::Cell`. Time is virtual:
//! an event queue in seconds, handed to the core as `Timestamp` milliseconds. Nothing here
//! reimplements the commit path: claims go through `Cell::commit` (with the claim's commit
//! mode and conflict check), offers are made by the compat allocator
//! (`shoal_compat::allocator::allocate`) and committed as holds (`PlaceHolds`, `AcceptHolds`,
//! `ReleaseHolds`), task ends are status updates.
//!
//! The scheduler model is the paper's lightweight simulator (Schwarzkopf et al., EuroSys 2013,
//! section 4): a scheduler handles one job at a time; its decision takes
//! `t_job + t_task × tasks`; it decides on the state as of the decision's start (a snapshot: a
//! `Cell` clone) and commits at its end; tasks that did not commit are retried 1 s later; a job
//! is abandoned after 1,000 attempts. Placement is randomized first fit.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_compat::allocator::{allocate, AllocatorConfig, Candidate, OfferFilter};
use shoal_core::{
    AgentId, AgentRegistration, CellConfig, Claim, ClaimId, CommitMode, ConflictCheck, OfferId,
    Placement, ResourceSet, StatusInfo, TaskId, TaskSpec, TaskState, Timestamp,
};
use shoal_sched::{Cell, Command, Reply};

/// One workload: Poisson arrivals, exponential job sizes and durations, one task shape.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: &'static str,
    pub interarrival_s: f64,
    pub tasks_mean: f64,
    pub tasks_max: u32,
    pub task_cpus: f64,
    pub task_mem_mb: f64,
    pub duration_mean_s: f64,
}

/// Everything fixed for a sweep.
#[derive(Clone, Debug)]
pub struct Params {
    pub agents: usize,
    pub agent_cpus: f64,
    pub agent_mem_mb: f64,
    /// Pre-filled with long-running tasks of `prefill_task` to about this fraction.
    pub prefill_fraction: f64,
    pub prefill_task_cpus: f64,
    pub prefill_task_mem_mb: f64,
    pub duration_s: f64,
    pub batch: Workload,
    pub service: Workload,
    pub t_job_batch_s: f64,
    pub t_task_s: f64,
    pub max_attempts: u32,
    pub retry_delay_s: f64,
    pub allocation_interval_s: f64,
    /// How long the service framework's declines keep an agent out of its offers (Mesos's
    /// `Filters.refuse_seconds`, 5 s by default; the paper's simulator has none: 0).
    pub decline_filter_s: f64,
    pub seed: u64,
}

/// How the service scheduler gets its resources, and how claims commit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Both schedulers native: optimistic claims on snapshots.
    SharedState {
        commit: CommitMode,
        check: ConflictCheck,
    },
    /// The service scheduler is a Mesos framework fed by the compat allocator (cap 0: off);
    /// the batch scheduler stays native (incremental, fine).
    Offers { cap: usize },
}

impl Mode {
    pub fn label(&self) -> String {
        match self {
            Mode::SharedState { commit, check } => format!(
                "shared state, {}, {}",
                match commit {
                    CommitMode::Incremental => "incremental",
                    CommitMode::AllOrNothing => "all-or-nothing",
                },
                match check {
                    ConflictCheck::Fine => "fine",
                    ConflictCheck::Coarse => "coarse",
                }
            ),
            Mode::Offers { cap: 0 } => "offers, cap off".into(),
            Mode::Offers { cap } => format!("offers, cap {cap}"),
        }
    }
}

/// What one scheduler did in one run.
#[derive(Clone, Debug, Default)]
pub struct SchedStats {
    pub jobs: usize,
    /// Jobs whose first attempt began before the end.
    pub started: usize,
    /// Wait (submission to first attempt) over all submitted jobs; a job not started by the
    /// end counts with its wait so far (a lower bound).
    pub wait_mean_s: f64,
    pub wait_median_s: f64,
    pub busyness: f64,
    pub attempts: u64,
    /// Attempts in which at least one placement was rejected by the commit.
    pub conflicts: u64,
    pub fully_scheduled: usize,
    pub abandoned: usize,
}

impl SchedStats {
    pub fn conflicts_per_job(&self) -> f64 {
        self.conflicts as f64 / self.started.max(1) as f64
    }
}

#[derive(Clone, Debug)]
pub struct RunResult {
    pub mode: Mode,
    pub t_job_service_s: f64,
    pub batch: SchedStats,
    pub service: SchedStats,
    pub tasks_committed: u64,
    pub commands: u64,
    /// Allocation rounds run and offers (holds) they made.
    pub rounds: u64,
    pub offers: u64,
    pub wall_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Batch = 0,
    Service = 1,
}

/// A job of the workload, as generated (the same for every run of a sweep).
#[derive(Clone, Debug)]
pub struct JobSpec {
    kind: Kind,
    submit_s: f64,
    tasks: u32,
    duration_s: f64,
}

/// Both workloads over the run, merged by submission time.
pub fn generate(p: &Params) -> Vec<JobSpec> {
    let mut jobs = Vec::new();
    for (kind, w, salt) in [(Kind::Batch, &p.batch, 1), (Kind::Service, &p.service, 2)] {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ salt);
        let mut t = 0.0;
        loop {
            t += exp(&mut rng, w.interarrival_s);
            if t >= p.duration_s {
                break;
            }
            let tasks = (exp(&mut rng, w.tasks_mean).round() as u32).clamp(1, w.tasks_max);
            jobs.push(JobSpec {
                kind,
                submit_s: t,
                tasks,
                duration_s: exp(&mut rng, w.duration_mean_s).max(1.0),
            });
        }
    }
    jobs.sort_by(|a, b| a.submit_s.total_cmp(&b.submit_s));
    jobs
}

fn exp(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
    let u: f64 = rng.random::<f64>();
    -mean * (1.0 - u).ln()
}

fn ms(t: f64) -> Timestamp {
    (t * 1000.0).round() as Timestamp
}

fn milli(v: f64) -> i64 {
    (v * 1000.0).round() as i64
}

/// The cell with its agents registered and pre-filled, built once per scale: each run starts
/// from an O(1) clone of it. Returns the cell, the agent ids, and the fill reached (cpus).
pub fn prefilled_cell(p: &Params) -> (Cell, Vec<AgentId>, f64) {
    let mut cell = Cell::new(CellConfig {
        cell_id: "omega".into(),
    });
    let total = ResourceSet::scalars(&[("cpus", p.agent_cpus), ("mem", p.agent_mem_mb)]);
    let mut ids = Vec::with_capacity(p.agents);
    for i in 0..p.agents {
        let reg = AgentRegistration {
            agent_id: None,
            hostname: format!("m{i}"),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: total.clone(),
        };
        match cell.commit(0, &Command::RegisterAgent(reg)) {
            Ok((_, Reply::Agent { agent_id })) => ids.push(agent_id),
            other => panic!("agent registration refused: {other:?}"),
        }
    }
    // Each agent gets Binomial(slots, fraction) long-running tasks, so the cell is filled to
    // about `fraction` with an uneven spread over agents.
    let slots = (p.agent_cpus / p.prefill_task_cpus).floor() as u32;
    let shape = ResourceSet::scalars(&[
        ("cpus", p.prefill_task_cpus),
        ("mem", p.prefill_task_mem_mb),
    ]);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 3);
    let mut placements = Vec::new();
    let mut n = 0u64;
    let mut claims = 0;
    let mut flush = |cell: &mut Cell, placements: &mut Vec<Placement>| {
        if placements.is_empty() {
            return;
        }
        claims += 1;
        let claim = Claim {
            priority: 0,
            evictions: vec![],
            id: ClaimId::new(format!("prefill-{claims}")),
            role: "prefill".into(),
            owner: "prefill".into(),
            snapshot_version: cell.version(),
            mode: CommitMode::AllOrNothing,
            check: ConflictCheck::Fine,
            placements: std::mem::take(placements),
        };
        match cell.commit(0, &Command::Claim(claim)) {
            Ok((Some(_), _)) => {}
            other => panic!("prefill refused: {other:?}"),
        }
    };
    for id in &ids {
        let k = (0..slots)
            .filter(|_| rng.random::<f64>() < p.prefill_fraction)
            .count();
        for _ in 0..k {
            n += 1;
            placements.push(Placement {
                task_id: TaskId::new(format!("prefill-{n}")),
                name: String::new(),
                agent_id: id.clone(),
                resources: shape.clone(),
                spec: TaskSpec::empty(),
            });
        }
        if placements.len() >= 5_000 {
            flush(&mut cell, &mut placements);
        }
    }
    flush(&mut cell, &mut placements);
    let fill = n as f64 * p.prefill_task_cpus / (p.agents as f64 * p.agent_cpus);
    (cell, ids, fill)
}

/// A point in virtual time, ordered (earliest first in the heap), ties by insertion order.
#[derive(Debug)]
struct Due {
    at: f64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// One agent's offers, and the tasks (job, count) placed on them.
type AgentAccepts = (Vec<OfferId>, Vec<(usize, u32)>);

#[derive(Debug)]
enum Ev {
    Arrive(usize),
    /// A native decision ends: commit its placements (decided at `version`).
    Decided {
        kind: Kind,
        job: usize,
        version: u64,
        placements: Vec<(usize, u32)>,
    },
    Retry(usize),
    TaskEnd(TaskId),
    AllocationRound,
    /// The service framework answers the offers it decided on.
    OffersAnswered {
        /// Per agent: its offers and the tasks (job, count) placed there.
        accepts: BTreeMap<usize, AgentAccepts>,
        jobs: Vec<usize>,
    },
}

struct Job {
    spec: JobSpec,
    unscheduled: u32,
    attempts: u32,
    first_attempt: Option<f64>,
    abandoned: bool,
}

#[derive(Default)]
struct Sched {
    queue: VecDeque<usize>,
    busy: bool,
    busy_s: f64,
    attempts: u64,
    conflicts: u64,
    /// Jobs waiting out their retry delay.
    delayed: usize,
}

struct Sim<'a> {
    p: &'a Params,
    mode: Mode,
    t_job: [f64; 2],
    cell: Cell,
    ids: &'a [AgentId],
    index: HashMap<AgentId, usize>,
    now: f64,
    seq: u64,
    heap: BinaryHeap<Due>,
    jobs: Vec<Job>,
    scheds: [Sched; 2],
    shapes: [ResourceSet; 2],
    want: [(i64, i64); 2],
    rng: ChaCha8Rng,
    task_seq: u64,
    offer_seq: u64,
    rounds_running: bool,
    tasks_committed: u64,
    commands: u64,
    spec: TaskSpec,
    rounds: u64,
    holds_offered: u64,
    /// The service framework as the allocator sees it (its decline filters).
    framework: Candidate,
}

/// Runs one configuration from the pre-filled cell.
pub fn run(
    p: &Params,
    base: &Cell,
    ids: &[AgentId],
    workload: &[JobSpec],
    mode: Mode,
    t_job_service_s: f64,
) -> RunResult {
    let started = std::time::Instant::now();
    let shape =
        |w: &Workload| ResourceSet::scalars(&[("cpus", w.task_cpus), ("mem", w.task_mem_mb)]);
    let mut sim = Sim {
        p,
        mode,
        t_job: [p.t_job_batch_s, t_job_service_s],
        cell: base.clone(),
        ids,
        index: ids
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), i))
            .collect(),
        now: 0.0,
        seq: 0,
        heap: BinaryHeap::new(),
        jobs: workload
            .iter()
            .map(|s| Job {
                spec: s.clone(),
                unscheduled: s.tasks,
                attempts: 0,
                first_attempt: None,
                abandoned: false,
            })
            .collect(),
        scheds: [Sched::default(), Sched::default()],
        shapes: [shape(&p.batch), shape(&p.service)],
        want: [
            (milli(p.batch.task_cpus), milli(p.batch.task_mem_mb)),
            (milli(p.service.task_cpus), milli(p.service.task_mem_mb)),
        ],
        rng: ChaCha8Rng::seed_from_u64(p.seed ^ 4),
        task_seq: 0,
        offer_seq: 0,
        rounds_running: false,
        tasks_committed: 0,
        commands: 0,
        spec: TaskSpec::empty(),
        rounds: 0,
        holds_offered: 0,
        framework: Candidate {
            framework_id: FRAMEWORK.into(),
            role: role(Kind::Service).into(),
            filters: HashMap::new(),
            outstanding: 0,
        },
    };
    for j in 0..sim.jobs.len() {
        let at = sim.jobs[j].spec.submit_s;
        sim.at(at, Ev::Arrive(j));
    }
    while let Some(due) = sim.heap.pop() {
        if due.at > p.duration_s {
            break;
        }
        sim.now = due.at;
        sim.handle(due.ev);
    }
    let batch = sim.stats(Kind::Batch);
    let service = sim.stats(Kind::Service);
    RunResult {
        mode,
        t_job_service_s,
        batch,
        service,
        tasks_committed: sim.tasks_committed,
        commands: sim.commands,
        rounds: sim.rounds,
        offers: sim.holds_offered,
        wall_s: started.elapsed().as_secs_f64(),
    }
}

impl Sim<'_> {
    fn at(&mut self, at: f64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Due {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn commit(&mut self, command: &Command) -> Reply {
        self.commands += 1;
        match self.cell.commit(ms(self.now), command) {
            Ok((_, reply)) => reply,
            Err(e) => panic!("the core refused a well-formed command: {e}"),
        }
    }

    fn offers_mode(&self) -> Option<usize> {
        match self.mode {
            Mode::Offers { cap } => Some(cap),
            Mode::SharedState { .. } => None,
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Arrive(j) | Ev::Retry(j) => {
                let kind = self.jobs[j].spec.kind;
                if self.jobs[j].attempts > 0 {
                    self.scheds[kind as usize].delayed -= 1;
                }
                self.scheds[kind as usize].queue.push_back(j);
                if kind == Kind::Service && self.offers_mode().is_some() {
                    self.revive();
                } else {
                    self.start_decision(kind);
                }
            }
            Ev::Decided {
                kind,
                job,
                version,
                placements,
            } => self.decided(kind, job, version, placements),
            Ev::TaskEnd(task_id) => {
                self.commit(&Command::UpdateTaskStatus {
                    task_id,
                    state: TaskState::Finished,
                    status: StatusInfo::default(),
                });
            }
            Ev::AllocationRound => self.allocation_round(),
            Ev::OffersAnswered { accepts, jobs } => self.offers_answered(accepts, jobs),
        }
    }

    /// A native scheduler takes the next job: snapshot now, decide, commit when the decision
    /// time has passed. (Placing on the snapshot at once is the same as placing at the end on
    /// a snapshot taken now; the snapshot is then dropped, so the cell's writes meanwhile do
    /// not copy its nodes.)
    fn start_decision(&mut self, kind: Kind) {
        let k = kind as usize;
        if self.scheds[k].busy {
            return;
        }
        let Some(j) = self.scheds[k].queue.pop_front() else {
            return;
        };
        let snapshot = self.cell.clone();
        let version = snapshot.version();
        let job = &mut self.jobs[j];
        job.first_attempt.get_or_insert(self.now);
        let think = self.t_job[k] + self.p.t_task_s * job.unscheduled as f64;
        let n = job.unscheduled;
        let want = self.want[k];
        let has_free = |i: usize, (c, m): (i64, i64)| -> bool {
            let a = snapshot.agent(&self.ids[i]).expect("registered agent");
            a.total.scalar("cpus").0 - a.allocated.scalar("cpus").0 >= c
                && a.total.scalar("mem").0 - a.allocated.scalar("mem").0 >= m
        };
        let placed = place(&mut self.rng, self.ids.len(), has_free, want, n);
        let mut placements: Vec<(usize, u32)> = Vec::new();
        for i in placed {
            match placements.last_mut() {
                Some((a, c)) if *a == i => *c += 1,
                _ => placements.push((i, 1)),
            }
        }
        self.begin_busy(k, think);
        let at = self.now + think;
        self.at(
            at,
            Ev::Decided {
                kind,
                job: j,
                version,
                placements,
            },
        );
    }

    fn begin_busy(&mut self, k: usize, think: f64) {
        let s = &mut self.scheds[k];
        s.busy = true;
        s.busy_s += think.min(self.p.duration_s - self.now).max(0.0);
    }

    fn decided(&mut self, kind: Kind, j: usize, version: u64, placements: Vec<(usize, u32)>) {
        let k = kind as usize;
        self.scheds[k].busy = false;
        self.scheds[k].attempts += 1;
        self.jobs[j].attempts += 1;
        let (commit, check) = match self.mode {
            Mode::SharedState { commit, check } => (commit, check),
            Mode::Offers { .. } => (CommitMode::Incremental, ConflictCheck::Fine),
        };
        if !placements.is_empty() {
            let attempt = self.jobs[j].attempts;
            let (list, owners) = self.placements(kind, placements.iter().map(|&(a, c)| (a, j, c)));
            let claim = Claim {
                priority: 0,
                evictions: vec![],
                id: ClaimId::new(format!("j{j}-a{attempt}")),
                role: role(kind).into(),
                owner: role(kind).into(),
                snapshot_version: version,
                mode: commit,
                check,
                placements: list,
            };
            if self.commit_claim(&Command::Claim(claim), &owners) > 0 {
                self.scheds[k].conflicts += 1;
            }
        }
        self.after_attempt(j);
        self.start_decision(kind);
    }

    /// Placements (and the job of each) for `(agent, job, count)` triples.
    fn placements(
        &mut self,
        kind: Kind,
        tasks: impl Iterator<Item = (usize, usize, u32)>,
    ) -> (Vec<Placement>, Vec<usize>) {
        let (mut list, mut owners) = (Vec::new(), Vec::new());
        for (agent, job, count) in tasks {
            for _ in 0..count {
                self.task_seq += 1;
                list.push(Placement {
                    task_id: TaskId::new(format!("t{}", self.task_seq)),
                    name: String::new(),
                    agent_id: self.ids[agent].clone(),
                    resources: self.shapes[kind as usize].clone(),
                    spec: self.spec.clone(),
                });
                owners.push(job);
            }
        }
        (list, owners)
    }

    /// Commits a claim (or an accept); each committed task counts for its job and ends after
    /// the job's duration. Returns how many placements were rejected.
    fn commit_claim(&mut self, command: &Command, owners: &[usize]) -> usize {
        let Reply::Claim { outcome } = self.commit(command) else {
            panic!("a claim answers with its outcome")
        };
        let mut rejected = 0;
        for (o, &j) in outcome.placements.iter().zip(owners) {
            if o.committed {
                self.tasks_committed += 1;
                self.jobs[j].unscheduled -= 1;
                let end = self.now + self.jobs[j].spec.duration_s;
                self.at(end, Ev::TaskEnd(o.task_id.clone()));
            } else {
                rejected += 1;
            }
        }
        rejected
    }

    fn after_attempt(&mut self, j: usize) {
        let job = &mut self.jobs[j];
        if job.unscheduled == 0 {
            return;
        }
        if job.attempts >= self.p.max_attempts {
            job.abandoned = true;
            return;
        }
        let k = job.spec.kind as usize;
        self.scheds[k].delayed += 1;
        let at = self.now + self.p.retry_delay_s;
        self.at(at, Ev::Retry(j));
    }

    /// The service framework wants offers again: allocation rounds run until it has nothing
    /// left to place.
    fn revive(&mut self) {
        if !self.scheds[Kind::Service as usize].busy {
            self.next_round(0.0);
        }
    }

    fn service_holds(&self) -> Vec<(OfferId, usize)> {
        self.cell
            .holds()
            .filter(|h| h.framework_id == FRAMEWORK)
            .map(|h| (h.id.clone(), self.index[&h.agent_id]))
            .collect()
    }

    fn decline_all(&mut self) {
        let offer_ids: Vec<OfferId> = self.service_holds().into_iter().map(|(o, _)| o).collect();
        self.decline(offer_ids);
    }

    /// Declines offers, as a Mesos framework does: they are released and their agents are
    /// filtered out of its offers for `decline_filter_s` (none when 0, as in the paper).
    fn decline(&mut self, offer_ids: Vec<OfferId>) {
        if offer_ids.is_empty() {
            return;
        }
        let until = ms(self.now + self.p.decline_filter_s);
        for o in &offer_ids {
            if let Some(h) = self.cell.hold(o) {
                self.framework.filters.insert(
                    h.agent_id.clone(),
                    OfferFilter {
                        until,
                        refused: h.resources.clone(),
                    },
                );
            }
        }
        self.commit(&Command::ReleaseHolds { offer_ids });
    }

    /// One round of the compat allocator for a framework waiting for offers: the free
    /// resources go to it as holds (every agent's, or up to the cap). A framework deciding on
    /// offers gets no more until it answers (a simplification in Mesos's favour: Mesos keeps
    /// offering to it, and those offers sit idle until it is done).
    fn allocation_round(&mut self) {
        self.rounds_running = false;
        let s = &self.scheds[Kind::Service as usize];
        if s.busy {
            return;
        }
        if s.queue.is_empty() {
            self.decline_all();
            return;
        }
        let cap = self.offers_mode().unwrap_or(0);
        self.framework.outstanding = self.service_holds().len();
        let now = ms(self.now);
        self.framework.filters.retain(|_, f| f.until > now);
        let mut seq = self.offer_seq;
        let holds = allocate(
            &self.cell,
            std::slice::from_ref(&self.framework),
            AllocatorConfig {
                offers_per_framework_max: cap,
                first_agent: shoal_compat::allocator::round_start(self.rounds),
            },
            ms(self.now),
            || {
                seq += 1;
                OfferId::new(format!("o{seq}"))
            },
        );
        self.offer_seq = seq;
        self.rounds += 1;
        self.holds_offered += holds.len() as u64;
        if !holds.is_empty() {
            self.commit(&Command::PlaceHolds { holds });
        }
        self.start_offer_cycle();
        if !self.scheds[Kind::Service as usize].busy {
            // Nothing usable: the next round comes after the allocation interval.
            self.next_round(self.p.allocation_interval_s);
        }
    }

    fn next_round(&mut self, after_s: f64) {
        if !self.rounds_running {
            self.rounds_running = true;
            let at = self.now + after_s;
            self.at(at, Ev::AllocationRound);
        }
    }

    /// The framework decides on the offers it holds: every queued job in turn (each taking
    /// its decision time), placed within the offers; it answers when all are decided.
    fn start_offer_cycle(&mut self) {
        let k = Kind::Service as usize;
        if self.scheds[k].busy || self.scheds[k].queue.is_empty() {
            return;
        }
        let mut by_agent: BTreeMap<usize, Vec<OfferId>> = BTreeMap::new();
        for (o, a) in self.service_holds() {
            by_agent.entry(a).or_default().push(o);
        }
        if by_agent.is_empty() {
            return;
        }
        // The offers' resources, per agent (what the holds on it add up to).
        let mut view: Vec<(usize, i64, i64)> = by_agent
            .iter()
            .map(|(&a, offers)| {
                let (mut c, mut m) = (0, 0);
                for o in offers {
                    let h = self.cell.hold(o).expect("outstanding offer");
                    c += h.resources.scalar("cpus").0;
                    m += h.resources.scalar("mem").0;
                }
                (a, c, m)
            })
            .collect();
        let want = self.want[k];
        let mut think_total = 0.0;
        let mut tasks: BTreeMap<usize, Vec<(usize, u32)>> = BTreeMap::new();
        let jobs: Vec<usize> = self.scheds[k].queue.drain(..).collect();
        for &j in &jobs {
            let job = &mut self.jobs[j];
            job.first_attempt.get_or_insert(self.now + think_total);
            think_total += self.t_job[k] + self.p.t_task_s * job.unscheduled as f64;
            let n = job.unscheduled;
            let has_free = |i: usize, (c, m): (i64, i64)| view[i].1 >= c && view[i].2 >= m;
            let placed = place(&mut self.rng, view.len(), has_free, want, n);
            for i in placed {
                view[i].1 -= want.0;
                view[i].2 -= want.1;
                let per_job = tasks.entry(view[i].0).or_default();
                match per_job.last_mut() {
                    Some((jj, c)) if *jj == j => *c += 1,
                    _ => per_job.push((j, 1)),
                }
            }
        }
        let accepts = by_agent
            .into_iter()
            .map(|(a, offers)| (a, (offers, tasks.remove(&a).unwrap_or_default())))
            .collect();
        self.begin_busy(k, think_total);
        let at = self.now + think_total;
        self.at(at, Ev::OffersAnswered { accepts, jobs });
    }

    fn offers_answered(&mut self, accepts: BTreeMap<usize, AgentAccepts>, jobs: Vec<usize>) {
        let k = Kind::Service as usize;
        self.scheds[k].busy = false;
        let mut unused = Vec::new();
        let mut rejected_jobs: Vec<usize> = Vec::new();
        for (agent, (offer_ids, tasks)) in accepts {
            if tasks.is_empty() {
                unused.extend(offer_ids);
                continue;
            }
            let (list, owners) =
                self.placements(Kind::Service, tasks.iter().map(|&(j, c)| (agent, j, c)));
            self.offer_seq += 1;
            let claim = Claim {
                priority: 0,
                evictions: vec![],
                id: ClaimId::new(format!("accept-{}", self.offer_seq)),
                role: role(Kind::Service).into(),
                owner: FRAMEWORK.into(),
                snapshot_version: self.cell.version(),
                mode: CommitMode::Incremental,
                check: ConflictCheck::Fine,
                placements: list,
            };
            let command = Command::AcceptHolds {
                framework_id: FRAMEWORK.into(),
                offer_ids,
                claim,
            };
            if self.commit_claim(&command, &owners) > 0 {
                rejected_jobs.extend(tasks.iter().map(|&(j, _)| j));
            }
        }
        self.decline(unused);
        rejected_jobs.sort_unstable();
        rejected_jobs.dedup();
        self.scheds[k].conflicts += rejected_jobs.len() as u64;
        for j in jobs {
            self.scheds[k].attempts += 1;
            self.jobs[j].attempts += 1;
            self.after_attempt(j);
        }
        if self.scheds[k].queue.is_empty() {
            self.decline_all();
        } else {
            self.next_round(self.p.allocation_interval_s);
        }
    }

    fn stats(&self, kind: Kind) -> SchedStats {
        let s = &self.scheds[kind as usize];
        let end = self.p.duration_s;
        let jobs: Vec<&Job> = self.jobs.iter().filter(|j| j.spec.kind == kind).collect();
        let mut waits: Vec<f64> = jobs
            .iter()
            .map(|j| j.first_attempt.filter(|t| *t <= end).unwrap_or(end) - j.spec.submit_s)
            .collect();
        waits.sort_by(f64::total_cmp);
        SchedStats {
            jobs: jobs.len(),
            started: jobs
                .iter()
                .filter(|j| j.first_attempt.map(|t| t <= end).unwrap_or(false))
                .count(),
            wait_mean_s: waits.iter().sum::<f64>() / waits.len().max(1) as f64,
            wait_median_s: waits.get(waits.len() / 2).copied().unwrap_or(0.0),
            busyness: s.busy_s / end,
            attempts: s.attempts,
            conflicts: s.conflicts,
            fully_scheduled: jobs.iter().filter(|j| j.unscheduled == 0).count(),
            abandoned: jobs.iter().filter(|j| j.abandoned).count(),
        }
    }
}

/// The service framework's id and the holds' owner.
const FRAMEWORK: &str = "service-framework";

fn role(kind: Kind) -> &'static str {
    match kind {
        Kind::Batch => "batch",
        Kind::Service => "service",
    }
}

/// Randomized first fit: for each of `n` tasks, probe random agents for room
/// (`has_free(agent, amount)`, with what this decision placed already). After the first task
/// that 32 probes miss, the agents with room are listed once (one pass) and the remaining
/// tasks fit into them from a random start. Stops at the first task that fits nowhere.
fn place(
    rng: &mut ChaCha8Rng,
    agents: usize,
    has_free: impl Fn(usize, (i64, i64)) -> bool,
    want: (i64, i64),
    n: u32,
) -> Vec<usize> {
    let mut used: HashMap<usize, (i64, i64)> = HashMap::new();
    let fits = |i: usize, used: &HashMap<usize, (i64, i64)>| {
        let (uc, um) = used.get(&i).copied().unwrap_or((0, 0));
        has_free(i, (want.0 + uc, want.1 + um))
    };
    let mut out = Vec::with_capacity(n as usize);
    if agents == 0 {
        return out;
    }
    // Agents with room, listed when probing stops paying off, and where to go on from.
    let mut listed: Option<(Vec<usize>, usize)> = None;
    'tasks: for _ in 0..n {
        if listed.is_none() {
            for _ in 0..32 {
                let i = rng.random_range(0..agents);
                if fits(i, &used) {
                    take(&mut used, &mut out, i, want);
                    continue 'tasks;
                }
            }
            let start = rng.random_range(0..agents);
            let room = (0..agents)
                .map(|d| (start + d) % agents)
                .filter(|&i| fits(i, &used))
                .collect();
            listed = Some((room, 0));
        }
        let (room, at) = listed.as_mut().expect("listed above");
        while *at < room.len() {
            let i = room[*at];
            if fits(i, &used) {
                take(&mut used, &mut out, i, want);
                continue 'tasks;
            }
            *at += 1;
        }
        break;
    }
    out.sort_unstable();
    out
}

/// Books one task of `want` on agent `i` for the decision under way.
fn take(used: &mut HashMap<usize, (i64, i64)>, out: &mut Vec<usize>, i: usize, want: (i64, i64)) {
    let u = used.entry(i).or_default();
    u.0 += want.0;
    u.1 += want.1;
    out.push(i);
}
