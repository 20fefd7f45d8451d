//! Job files and the batch scheduler, on the sans-IO core: validation errors point at the
//! field; the scheduler, driven against a `Cell` with a simulated executor and crashes of its
//! in-memory state at any point, runs every task after its dependencies, retries up to
//! `retries`, skips the dependents of a failed task, never runs an attempt twice, and honours
//! priorities.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use shoal_core::*;
use shoal_sched::batch::*;
use shoal_sched::template::parse_duration_ms;
use shoal_sched::{Cell, Command, LogEntry, Reply, SchedulerCommand, SchedulerReply};

fn spec(text: &str) -> JobSpec {
    parse_job_file(text, JobFormat::sniff(text)).unwrap()
}

fn errors(text: &str) -> String {
    match CompiledJob::compile(&spec(text)) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

fn task(name: &str, deps: &[&str], extra: &str) -> String {
    format!("[[tasks]]\nname = \"{name}\"\ncommand = \"true\"\nresources = \"cpus:1;mem:16\"\ndepends_on = {deps:?}\n{extra}\n")
}

#[test]
fn the_example_job_files_are_valid() {
    for (name, text) in [
        (
            "diamond.toml",
            include_str!("../../examples/jobs/diamond.toml"),
        ),
        (
            "retries.toml",
            include_str!("../../examples/jobs/retries.toml"),
        ),
        (
            "docker.toml",
            include_str!("../../examples/jobs/docker.toml"),
        ),
        (
            "fanout.json",
            include_str!("../../examples/jobs/fanout.json"),
        ),
    ] {
        let s =
            parse_job_file(text, JobFormat::sniff(text)).unwrap_or_else(|e| panic!("{name}: {e}"));
        CompiledJob::compile(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn validation_errors_name_the_task_and_the_field() {
    let cases = [
        (format!("name = \"j\"\n{}{}", task("a", &["b"], ""), task("b", &["a"], "")), "tasks[a].depends_on: dependency cycle: a -> b -> a"),
        (format!("name = \"j\"\n{}{}{}", task("a", &["c"], ""), task("b", &["a"], ""), task("c", &["b"], "")), "dependency cycle: a -> c -> b -> a"),
        (format!("name = \"j\"\n{}", task("a", &["a"], "")), "tasks[a].depends_on: dependency cycle: a -> a"),
        (format!("name = \"j\"\n{}", task("a", &["x"], "")), "tasks[a].depends_on: unknown task 'x'"),
        (format!("name = \"j\"\n{}{}", task("a", &[], ""), task("a", &[], "")), "tasks[a].name: two tasks have this name"),
        (format!("name = \"j\"\n{}", task("a", &[], "timeout = \"soon\"")), "tasks[a].timeout: 'soon'"),
        (format!("name = \"j\"\n{}", task("a", &[], "timeout = \"0s\"")), "tasks[a].timeout: must be longer than 0"),
        (format!("name = \"j\"\n{}", task("a", &[], "backoff = \"5\"")), "tasks[a].backoff: '5' has a number without a unit"),
        (format!("name = \"j\"\n{}", task("a", &[], "priority = 5000")), "tasks[a].priority"),
        (format!("name = \"j\"\n{}", task("a.b", &[], "")), "tasks[0].name: 'a.b'"),
        ("name = \"j\"\n[[tasks]]\nname = \"a\"\nresources = \"cpus:1\"\n".to_string(), "tasks[a].command: a task needs a command or an image"),
        ("name = \"j\"\n[[tasks]]\nname = \"a\"\ncommand = \"x\"\nresources = \"cpus:one\"\n".to_string(), "tasks[a].resources"),
        ("name = \"j\"\n[[tasks]]\nname = \"a\"\ncommand = \"x\"\nresources = \"cpus:1;ports:[1-2]\"\n".to_string(), "tasks[a].resources: ask for ports"),
        ("name = \"j\"\n".to_string(), "tasks: a job needs at least one task"),
        ("name = \"j k\"\n".to_string(), "name: 'j k'"),
    ];
    for (text, want) in cases {
        let got = errors(&text);
        assert!(got.contains(want), "{got:?} lacks {want:?} for\n{text}");
    }
    // Every problem at once, not only the first.
    let text = format!(
        "name = \"j\"\n{}{}",
        task("a", &["x"], "timeout = \"-1s\""),
        task("b", &["y"], "")
    );
    let got = errors(&text);
    assert!(
        got.contains("tasks[a].timeout") && got.contains("'x'") && got.contains("'y'"),
        "{got}"
    );
    // Unknown fields are named by the parser.
    let bad = parse_job_file(
        "name = \"j\"\n[[tasks]]\nname = \"a\"\ncomand = \"x\"\nresources = \"cpus:1\"\n",
        JobFormat::Toml,
    )
    .unwrap_err();
    assert!(bad.contains("comand"), "{bad}");
}

#[test]
fn durations_parse() {
    for (text, ms) in [
        ("250ms", 250),
        ("2s", 2000),
        ("1m30s", 90_000),
        ("1.5s", 1500),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("0s", 0),
    ] {
        assert_eq!(parse_duration_ms(text), Ok(ms), "{text}");
    }
    for bad in ["", "s", "5", "5 s", "-1s", "1y", "1s2", "..s"] {
        assert!(parse_duration_ms(bad).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn the_duration_parser_never_panics(s in "\\PC{0,12}") {
        let _ = parse_duration_ms(&s);
    }

    #[test]
    fn durations_round_trip(ms in 0u64..10_000_000) {
        prop_assert_eq!(parse_duration_ms(&format!("{ms}ms")), Ok(ms));
        prop_assert_eq!(parse_duration_ms(&format!("{}s", ms / 1000)), Ok(ms / 1000 * 1000));
    }

    #[test]
    fn a_cycle_is_always_found_and_named(n in 2usize..12, extra in proptest::collection::vec((0usize..12, 0usize..12), 0..10)) {
        // A ring a0 -> a1 -> … -> a(n-1) -> a0 plus random extra edges.
        let mut deps: Vec<Vec<String>> = (0..n).map(|i| vec![format!("t{}", (i + 1) % n)]).collect();
        for (a, b) in extra {
            if a < n && b < n && a != b {
                deps[a].push(format!("t{b}"));
            }
        }
        let mut text = "name = \"ring\"\n".to_string();
        for (i, d) in deps.iter().enumerate() {
            let d: Vec<&str> = d.iter().map(String::as_str).collect();
            text.push_str(&task(&format!("t{i}"), &d, ""));
        }
        let got = errors(&text);
        prop_assert!(got.contains("dependency cycle: "), "{}", got);
        // The named cycle is a real one: consecutive names depend on each other.
        let cycle = got.split("dependency cycle: ").nth(1).unwrap().split(';').next().unwrap();
        let names: Vec<&str> = cycle.split(" -> ").collect();
        prop_assert_eq!(names.first(), names.last());
        for w in names.windows(2) {
            let i: usize = w[0].trim_start_matches('t').parse().unwrap();
            prop_assert!(deps[i].iter().any(|d| d == w[1]), "{} does not depend on {}", w[0], w[1]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scheduler against a cell, with a simulated executor.

fn cell_with_agents(agents: &[&str]) -> Cell {
    let mut cell = Cell::new(CellConfig {
        cell_id: "c".into(),
    });
    for (i, res) in agents.iter().enumerate() {
        let reg = AgentRegistration {
            agent_id: None,
            hostname: format!("h{i}"),
            port: 0,
            attributes: [("zone".to_string(), format!("z{}", i % 2))].into(),
            domain: None,
            resources: ResourceSet::parse(res).unwrap(),
        };
        cell.commit(1, &Command::RegisterAgent(reg)).unwrap();
    }
    cell
}

/// Whether attempt `attempt` (from 1) of task `name` fails.
type Script = dyn Fn(&str, u32) -> bool;

struct Sim {
    cell: Cell,
    sched: BatchScheduler,
    pending: Vec<LogEntry>,
    now: Timestamp,
    /// Per cell task: the time it started running.
    started: BTreeMap<TaskId, Timestamp>,
    /// Per cell task: when it finished successfully.
    finished_ok: BTreeMap<TaskId, Timestamp>,
    /// Start order of attempts (task ids).
    starts: Vec<TaskId>,
    crashes: u32,
    /// Check the cell's invariants after every commit (O(cell) each: off for the scale test).
    check: bool,
}

impl Sim {
    fn new(cell: Cell) -> Sim {
        let sched = BatchScheduler::recover(&cell);
        Sim {
            cell,
            sched,
            pending: vec![],
            now: 1_000,
            started: BTreeMap::new(),
            finished_ok: BTreeMap::new(),
            starts: vec![],
            crashes: 0,
            check: true,
        }
    }

    fn commit(&mut self, cmd: &(impl Clone + Into<Command>)) -> Result<Reply, Rejection> {
        let (entry, reply) = self.cell.commit(self.now, &cmd.clone().into())?;
        self.pending.extend(entry);
        if self.check {
            self.cell.check_invariants().unwrap();
        }
        Ok(reply)
    }

    fn submit(&mut self, text: &str) -> String {
        match self
            .commit(&SchedulerCommand::SubmitJob { spec: spec(text) })
            .unwrap()
        {
            Reply::Records(SchedulerReply::Job { job_id, .. }) => job_id,
            r => panic!("{r:?}"),
        }
    }

    /// Loses the scheduler's memory and everything it had not committed (a master crash).
    fn crash(&mut self) {
        self.sched = BatchScheduler::recover(&self.cell);
        self.pending.clear();
        self.crashes += 1;
    }

    /// The scheduler steps and its actions commit, with a crash at `crash_at` (0 after the
    /// claims, 1 after the kills, 2 after the updates). Whether it crashed.
    fn schedule(&mut self, crash_at: Option<u8>) -> bool {
        for e in std::mem::take(&mut self.pending) {
            self.sched.observe(&e);
        }
        let actions = self.sched.step(&self.cell, self.now);
        for claim in &actions.claims {
            let reply = self.commit(&Command::Claim(claim.clone())).unwrap();
            let Reply::Claim { outcome } = reply else {
                panic!("{reply:?}")
            };
            self.sched.claimed(claim, Some(&outcome), self.now);
        }
        let kills = actions
            .kills
            .iter()
            .map(|k| Command::KillTask { task_id: k.clone() });
        let updates = actions
            .updates
            .iter()
            .map(|u| Command::from(SchedulerCommand::UpdateJob(u.clone())));
        for (phase, cmds) in [(1u8, kills.collect::<Vec<_>>()), (2, updates.collect())] {
            if crash_at == Some(phase - 1) {
                self.crash();
                return true;
            }
            for c in &cmds {
                self.commit(c).unwrap();
            }
        }
        if crash_at == Some(2) {
            self.crash();
            return true;
        }
        false
    }

    /// Moves every live task with `next` (its new state, or none), committing the status.
    fn advance(&mut self, mut next: impl FnMut(&Task) -> Option<TaskState>) {
        let live: Vec<Task> = self
            .cell
            .tasks()
            .filter(|t| !t.state.is_terminal())
            .cloned()
            .collect();
        for t in live {
            if let Some(state) = next(&t) {
                self.commit(&Command::UpdateTaskStatus {
                    task_id: t.id.clone(),
                    state,
                    status: StatusInfo::default(),
                })
                .unwrap();
            }
        }
    }

    /// One round: the scheduler steps (see [`Sim::schedule`]); then the executor moves every
    /// live task one state on.
    fn round(&mut self, script: &Script, crash_at: Option<u8>) {
        if self.schedule(crash_at) {
            return;
        }
        self.execute(script);
        self.now += 100;
    }

    fn execute(&mut self, script: &Script) {
        let now = self.now;
        let mut started = Vec::new();
        let mut finished = Vec::new();
        self.advance(|t| {
            let mut p = t.id.as_str().split('.').skip(1);
            let name = p.next().unwrap();
            let attempt: u32 = p.next().unwrap().parse().unwrap();
            match t.state {
                TaskState::Staging => {
                    started.push(t.id.clone());
                    Some(TaskState::Running)
                }
                TaskState::Running if script(name, attempt) => Some(TaskState::Failed),
                TaskState::Running => {
                    finished.push(t.id.clone());
                    Some(TaskState::Finished)
                }
                TaskState::Killing => Some(TaskState::Killed),
                _ => None,
            }
        });
        for id in started {
            self.started.insert(id.clone(), now);
            self.starts.push(id);
        }
        for id in finished {
            self.finished_ok.insert(id, now);
        }
    }

    fn done(&self, job: &str) -> bool {
        let j = self.cell.records().job(job).unwrap();
        j.state.is_terminal()
            && j.tasks.values().all(|t| t.state.is_terminal())
            && self.cell.tasks().all(|t| t.state.is_terminal())
    }

    fn run_until_done(&mut self, job: &str, script: &Script, max_rounds: usize) {
        for _ in 0..max_rounds {
            if self.done(job) {
                return;
            }
            self.round(script, None);
        }
        panic!(
            "job {job} not done after {max_rounds} rounds: {:#?}",
            self.cell.records().job(job)
        );
    }
}

fn job_tasks(cell: &Cell, job: &str) -> HashMap<String, JobTask> {
    cell.records()
        .job(job)
        .unwrap()
        .tasks
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn a_diamond_runs_in_order_and_completes() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let text = format!(
        "name = \"d\"\n{}{}{}{}",
        task("a", &[], ""),
        task("b", &["a"], ""),
        task("c", &["a"], ""),
        task("e", &["b", "c"], "")
    );
    let job = sim.submit(&text);
    sim.run_until_done(&job, &|_, _| false, 100);
    let j = sim.cell.records().job(&job).unwrap();
    assert_eq!(j.state, JobState::Complete);
    let t = |n: &str| TaskId::new(format!("d.{n}.1"));
    assert!(
        sim.finished_ok[&t("a")] <= sim.started[&t("b")]
            && sim.finished_ok[&t("a")] <= sim.started[&t("c")]
    );
    assert!(
        sim.finished_ok[&t("b")] <= sim.started[&t("e")]
            && sim.finished_ok[&t("c")] <= sim.started[&t("e")]
    );
    // b and c ran side by side.
    assert_eq!(sim.started[&t("b")], sim.started[&t("c")]);
}

#[test]
fn retries_back_off_and_a_final_failure_skips_dependents() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let text = format!(
        "name = \"r\"\n{}{}{}{}",
        task("flaky", &[], "retries = 3\nbackoff = \"1s\""),
        task("broken", &[], "retries = 2\nbackoff = \"200ms\""),
        task("mid", &["broken", "flaky"], ""),
        task("last", &["mid"], ""),
    );
    let job = sim.submit(&text);
    let script = |name: &str, attempt: u32| (name == "flaky" && attempt < 3) || name == "broken";
    sim.run_until_done(&job, &script, 200);
    let j = sim.cell.records().job(&job).unwrap();
    assert_eq!(j.state, JobState::Failed);
    let ts = job_tasks(&sim.cell, &job);
    assert_eq!(
        (ts["flaky"].state, ts["flaky"].attempts),
        (JobTaskState::Finished, 3)
    );
    assert_eq!(
        (ts["broken"].state, ts["broken"].attempts),
        (JobTaskState::Failed, 3)
    );
    for n in ["mid", "last"] {
        assert_eq!(ts[n].state, JobTaskState::Skipped);
        assert_eq!(ts[n].message.as_deref(), Some("dependency broken failed"));
    }
    // The backoff doubles: flaky's attempts started at least 1 s, then 2 s after the failures.
    let s = |a: u32| sim.started[&TaskId::new(format!("r.flaky.{a}"))];
    assert!(s(2) - s(1) >= 1000 + 100, "{} {}", s(1), s(2));
    assert!(s(3) - s(2) >= 2000 + 100, "{} {}", s(2), s(3));
}

#[test]
fn a_timed_out_attempt_is_killed_and_retried() {
    // An executor whose attempts never end: two attempts, both killed for the timeout.
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let job = sim.submit(&format!(
        "name = \"t\"\n{}",
        task(
            "slow",
            &[],
            "retries = 1\nbackoff = \"0s\"\ntimeout = \"1s\""
        )
    ));
    for _ in 0..100 {
        if sim.done(&job) {
            break;
        }
        sim.schedule(None);
        sim.advance(|t| match t.state {
            TaskState::Staging => Some(TaskState::Running),
            TaskState::Killing => Some(TaskState::Killed),
            _ => None,
        });
        sim.now += 100;
    }
    let ts = job_tasks(&sim.cell, &job);
    assert!(sim.done(&job), "{ts:?}");
    assert_eq!(
        sim.cell.records().job(&job).unwrap().state,
        JobState::Failed
    );
    assert_eq!(ts["slow"].attempts, 2);
    assert!(
        ts["slow"]
            .message
            .as_deref()
            .unwrap()
            .contains("timed out after 1s"),
        "{ts:?}"
    );
}

#[test]
fn higher_priority_tasks_are_placed_first() {
    // Room for one task at a time.
    let mut sim = Sim::new(cell_with_agents(&["cpus:1;mem:1024"]));
    let low = sim.submit(&format!(
        "name = \"low\"\npriority = 10\n{}{}",
        task("l1", &[], ""),
        task("l2", &[], "")
    ));
    let high = sim.submit(&format!(
        "name = \"high\"\npriority = 90\n{}{}{}",
        task("h1", &[], ""),
        task("h2", &[], ""),
        task("h3", &[], "priority = 5")
    ));
    for _ in 0..100 {
        if sim.done(&low) && sim.done(&high) {
            break;
        }
        sim.round(&|_, _| false, None);
    }
    let order: Vec<&str> = sim.starts.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        order,
        [
            "high.h1.1",
            "high.h2.1",
            "low.l1.1",
            "low.l2.1",
            "high.h3.1"
        ]
    );
}

#[test]
fn stopping_a_job_kills_its_attempts_and_skips_the_rest() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let job = sim.submit(&format!(
        "name = \"s\"\n{}{}",
        task("a", &[], ""),
        task("b", &["a"], "")
    ));
    // Let `a` start, then stop the job before it ends.
    sim.round(&|_, _| false, None);
    let a = TaskId::new("s.a.1");
    assert_eq!(sim.cell.task(&a).unwrap().state, TaskState::Running);
    sim.commit(&SchedulerCommand::UpdateJob(JobUpdate {
        job_id: job.clone(),
        state: Some(JobState::Stopped),
        message: None,
        finished_at: sim.now,
        tasks: vec![],
    }))
    .unwrap();
    for _ in 0..20 {
        sim.schedule(None);
        sim.advance(|t| (t.state == TaskState::Killing).then_some(TaskState::Killed));
        sim.now += 100;
    }
    let ts = job_tasks(&sim.cell, &job);
    assert_eq!(
        sim.cell.records().job(&job).unwrap().state,
        JobState::Stopped
    );
    assert_eq!(sim.cell.task(&a).unwrap().state, TaskState::Killed);
    assert_eq!(ts["a"].state, JobTaskState::Failed);
    assert_eq!(ts["b"].state, JobTaskState::Skipped);
    assert!(sim.cell.task(&TaskId::new("s.b.1")).is_none());
}

#[test]
fn submitting_is_idempotent_and_checked_against_the_agents() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:2;mem:1024;ports:[31000-31001]"]));
    let text = format!("name = \"i\"\n{}", task("a", &[], ""));
    let v = sim.cell.version();
    assert_eq!(
        sim.commit(&SchedulerCommand::SubmitJob { spec: spec(&text) })
            .unwrap(),
        Reply::Records(SchedulerReply::Job {
            job_id: "i".into(),
            created: true
        })
    );
    assert_eq!(
        sim.commit(&SchedulerCommand::SubmitJob { spec: spec(&text) })
            .unwrap(),
        Reply::Records(SchedulerReply::Job {
            job_id: "i".into(),
            created: false
        })
    );
    assert_eq!(sim.cell.version(), v + 1);
    let other = format!("name = \"i\"\n{}", task("b", &[], ""));
    assert!(matches!(
        sim.commit(&SchedulerCommand::SubmitJob { spec: spec(&other) }),
        Err(Rejection::Conflict(_))
    ));
    for (extra, want) in [
        ("resources = \"cpus:3\"", "tasks[x].resources"),
        ("ports = [\"a\", \"b\", \"c\"]", "tasks[x].ports"),
        (
            "constraints = [{ attribute = \"zone\", value = \"z9\" }]",
            "tasks[x].constraints",
        ),
    ] {
        let text = format!(
            "name = \"f\"\n[[tasks]]\nname = \"x\"\ncommand = \"true\"\n{}\n",
            if extra.starts_with("resources") {
                extra.to_string()
            } else {
                format!("resources = \"cpus:1\"\n{extra}")
            }
        );
        match sim.commit(&SchedulerCommand::SubmitJob { spec: spec(&text) }) {
            Err(Rejection::Invalid(m)) => assert!(m.contains(want), "{m}"),
            other => panic!("{extra}: {other:?}"),
        }
    }
    assert_eq!(sim.cell.version(), v + 1, "refused jobs change nothing");
}

#[test]
fn ports_and_constraints_reach_the_task_description() {
    let mut sim = Sim::new(cell_with_agents(&[
        "cpus:2;mem:1024;ports:[31000-31009]",
        "cpus:2;mem:1024;ports:[32000-32009]",
    ]));
    let job = sim.submit("name = \"p\"\n[[tasks]]\nname = \"web\"\ncommand = \"serve\"\nresources = \"cpus:1\"\nports = [\"http\", \"admin\"]\nenv = { MODE = \"test\" }\nconstraints = [{ attribute = \"zone\", value = \"z1\" }]\n");
    sim.round(&|_, _| false, None);
    let t = sim.cell.task(&TaskId::new("p.web.1")).unwrap();
    assert_eq!(
        sim.cell.agent(&t.agent_id).unwrap().attributes["zone"],
        "z1"
    );
    assert_eq!(t.resources.to_string(), "cpus:1;ports:[32000-32001]");
    let spec: serde_json::Value = serde_json::from_str(t.spec.as_str()).unwrap();
    let vars = spec["command"]["environment"]["variables"]
        .as_array()
        .unwrap();
    let var = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .map(|v| v["value"].as_str().unwrap().to_string())
    };
    assert_eq!(var("PORT_HTTP").as_deref(), Some("32000"));
    assert_eq!(var("PORT_ADMIN").as_deref(), Some("32001"));
    assert_eq!(var("MODE").as_deref(), Some("test"));
    assert_eq!(var("SHOAL_JOB").as_deref(), Some("p"));
    let _ = job;
}

#[test]
fn thousands_of_short_tasks_run() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:8;mem:8192", "cpus:8;mem:8192"]));
    sim.check = false;
    let n = 3000;
    let mut text = "name = \"many\"\n".to_string();
    for i in 0..n {
        text.push_str(&format!(
            "[[tasks]]\nname = \"t{i}\"\ncommand = \"true\"\nresources = \"cpus:0.01;mem:1\"\n"
        ));
    }
    text.push_str(&task("after", &["t0", "t2999"], ""));
    let job = sim.submit(&text);
    let started = std::time::Instant::now();
    sim.run_until_done(&job, &|_, _| false, 200);
    assert_eq!(
        sim.cell.records().job(&job).unwrap().state,
        JobState::Complete
    );
    assert_eq!(sim.starts.len(), n + 1);
    eprintln!("{} tasks in {:?}", n + 1, started.elapsed());
}

// A random DAG (edges from later to earlier tasks only), random failures per attempt, random
// retries, little room, and crashes of the scheduler at random points: every task runs after
// its dependencies, each attempt runs at most once, and the job ends as the script says.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn the_batch_scheduler_keeps_its_promises_through_crashes(
        n in 1usize..16,
        edges in proptest::collection::vec((0usize..16, 0usize..16), 0..30),
        retries in proptest::collection::vec(0u32..3, 16),
        fails in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), 16),
        crashes in proptest::collection::vec(proptest::option::weighted(0.15, 0u8..3), 300),
        room in 1u32..4,
    ) {
        let mut deps: Vec<Vec<usize>> = vec![vec![]; n];
        for (a, b) in edges {
            if a < n && b < a && !deps[a].contains(&b) {
                deps[a].push(b);
            }
        }
        let mut text = "name = \"p\"\n".to_string();
        for i in 0..n {
            let d: Vec<String> = deps[i].iter().map(|j| format!("t{j}")).collect();
            let d: Vec<&str> = d.iter().map(String::as_str).collect();
            text.push_str(&task(&format!("t{i}"), &d, &format!("retries = {}\nbackoff = \"100ms\"", retries[i])));
        }
        let mut sim = Sim::new(cell_with_agents(&[&format!("cpus:{room};mem:1024")]));
        let job = sim.submit(&text);
        let fails2 = fails.clone();
        let script = move |name: &str, attempt: u32| {
            let i: usize = name.trim_start_matches('t').parse().unwrap();
            fails2[i][(attempt as usize - 1).min(3)]
        };
        let mut rounds = 0;
        while !sim.done(&job) {
            prop_assert!(rounds < 600, "not done: {:#?}", sim.cell.records().job(&job));
            sim.round(&script, crashes.get(rounds).copied().flatten());
            rounds += 1;
        }
        // What the script says must happen.
        let mut ok = vec![false; n];
        let mut ran = vec![0u32; n];
        for i in 0..n {
            if deps[i].iter().all(|&d| ok[d]) {
                let max = retries[i] + 1;
                let first_ok = (1..=max).find(|&a| !fails[i][(a as usize - 1).min(3)]);
                ok[i] = first_ok.is_some();
                ran[i] = first_ok.unwrap_or(max);
            }
        }
        let ts = job_tasks(&sim.cell, &job);
        for i in 0..n {
            let t = &ts[&format!("t{i}")];
            let want = if ok[i] { JobTaskState::Finished } else if ran[i] > 0 { JobTaskState::Failed } else { JobTaskState::Skipped };
            prop_assert_eq!(t.state, want, "t{}: {:?}", i, t);
            prop_assert_eq!(t.attempts, ran[i], "t{}: {:?}", i, t);
            // Exactly these attempts are in the cell, each once.
            for a in 1..=ran[i] + 1 {
                let id = TaskId::new(format!("p.t{i}.{a}"));
                prop_assert_eq!(sim.cell.task(&id).is_some(), a <= ran[i], "{}", id);
            }
            // Started only after every dependency finished.
            for a in 1..=ran[i] {
                let s = sim.started[&TaskId::new(format!("p.t{i}.{a}"))];
                for &d in &deps[i] {
                    let f = sim.finished_ok[&TaskId::new(format!("p.t{d}.{}", ran[d]))];
                    prop_assert!(f < s, "t{} attempt {} started at {} before t{} finished at {}", i, a, s, d, f);
                }
            }
        }
        let want = if ok.iter().all(|x| *x) { JobState::Complete } else { JobState::Failed };
        prop_assert_eq!(sim.cell.records().job(&job).unwrap().state, want);
    }
}

#[test]
fn job_events_round_trip_through_json_and_mirror_the_cell() {
    // A watcher folding the master's log entries (as JSON) ends with the same jobs.
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let mut mirror = sim.cell.clone();
    let job = sim.submit(&format!(
        "name = \"m\"\n{}{}",
        task("a", &[], "env = { X = \"1\" }\nports = []"),
        task("b", &["a"], "retries = 1")
    ));
    let mut entries = Vec::new();
    for _ in 0..20 {
        entries.extend(sim.pending.iter().cloned());
        sim.round(&|name, attempt| name == "b" && attempt == 1, None);
    }
    entries.extend(sim.pending.iter().cloned());
    assert!(sim.done(&job));
    for e in entries {
        let json = serde_json::to_string(&e).unwrap();
        let back: LogEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        mirror.apply(&back);
    }
    assert_eq!(mirror.version(), sim.cell.version());
    assert_eq!(mirror.records().job(&job), sim.cell.records().job(&job));
    assert_eq!(
        mirror.records().job(&job).unwrap().state,
        JobState::Complete
    );
}

#[test]
fn a_task_beyond_its_team_quota_waits_and_says_why() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let quota = |cpus: &str| Command::ConfigureRole {
        name: "team-a".into(),
        weight: 1.0,
        quota: Quota {
            guarantee: ResourceSet::new(),
            limit: Some(ResourceSet::parse(cpus).unwrap()),
        },
        preemptible: true,
    };
    sim.commit(&quota("cpus:0.5")).unwrap();
    let job = sim.submit(&format!(
        "name = \"q\"\nteam = \"team-a\"\n{}",
        task("a", &[], "")
    ));
    for _ in 0..5 {
        sim.round(&|_, _| false, None);
    }
    let ts = job_tasks(&sim.cell, &job);
    assert_eq!(ts["a"].state, JobTaskState::Queued);
    assert_eq!(
        ts["a"].message.as_deref(),
        Some("waiting for room: quota_limit cpus")
    );
    sim.commit(&quota("cpus:2")).unwrap();
    sim.run_until_done(&job, &|_, _| false, 20);
    let ts = job_tasks(&sim.cell, &job);
    assert_eq!(
        (ts["a"].state, ts["a"].message.as_deref()),
        (JobTaskState::Finished, None)
    );
    assert_eq!(sim.cell.task(&TaskId::new("q.a.1")).unwrap().role, "team-a");
}

/// Tasks of the shape [`task`] makes, with no dependencies and nothing extra.
fn plain_tasks(names: &[&str]) -> String {
    names.iter().map(|n| task(n, &[], "")).collect()
}

/// The scheduler steps; then every live task moves on: staging ones run, killed ones end,
/// running ones finish only when `finishes` says so.
fn round_with(sim: &mut Sim, finishes: &dyn Fn(&Task) -> bool) {
    sim.schedule(None);
    sim.advance(|t| match t.state {
        TaskState::Staging => Some(TaskState::Running),
        TaskState::Killing => Some(TaskState::Killed),
        TaskState::Running if finishes(t) => Some(TaskState::Finished),
        _ => None,
    });
    sim.now += 100;
}

/// The tasks a claim evicted.
fn evicted(cell: &Cell) -> Vec<&Task> {
    cell.tasks().filter(|t| t.preempted_by.is_some()).collect()
}

fn live_of(cell: &Cell, job: &str) -> Vec<Task> {
    cell.tasks()
        .filter(|t| t.holds_resources() && t.id.as_str().starts_with(&format!("{job}.")))
        .cloned()
        .collect()
}

#[test]
fn a_high_priority_job_preempts_low_priority_work_which_runs_again_without_a_retry() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:2;mem:1024", "cpus:2;mem:1024"]));
    let low = sim.submit(&format!(
        "name = \"low\"\npriority = 10\n{}",
        plain_tasks(&["l1", "l2", "l3", "l4"])
    ));
    let low_runs_on = std::cell::Cell::new(false);
    let finishes = |t: &Task| !t.id.as_str().starts_with("low.") || low_runs_on.get();
    for _ in 0..3 {
        round_with(&mut sim, &finishes);
    }
    assert_eq!(live_of(&sim.cell, &low).len(), 4, "low fills the cell");
    let high = sim.submit(&format!(
        "name = \"high\"\npriority = 90\n{}",
        plain_tasks(&["h1", "h2"])
    ));
    for _ in 0..6 {
        round_with(&mut sim, &finishes);
    }
    assert_eq!(
        sim.cell.records().job(&high).unwrap().state,
        JobState::Complete
    );
    // Exactly two low attempts were evicted, with the reason, and are queued again.
    let victims = evicted(&sim.cell);
    assert_eq!(victims.len(), 2, "{victims:#?}");
    for t in &victims {
        assert!(t.id.as_str().starts_with("low."));
        assert_eq!(t.state, TaskState::Killed);
        assert_eq!(t.status.reason.as_deref(), Some(REASON_PREEMPTED));
        let m = t.status.message.as_deref().unwrap();
        assert!(
            m.contains("batch.high.") && m.contains("priority 90"),
            "{m}"
        );
    }
    let ts = job_tasks(&sim.cell, &low);
    let preempted: Vec<&JobTask> = ts.values().filter(|t| t.preemptions == 1).collect();
    assert_eq!(preempted.len(), 2);
    for t in &preempted {
        assert!(t.message.as_deref().unwrap().contains("preempted"), "{t:?}");
    }
    // The low job's tasks have no retries, yet the preempted ones run again and finish.
    low_runs_on.set(true);
    for _ in 0..10 {
        round_with(&mut sim, &finishes);
    }
    let j = sim.cell.records().job(&low).unwrap();
    assert_eq!(j.state, JobState::Complete, "{j:#?}");
    for t in preempted {
        assert_eq!(j.tasks[&t.name].attempts, 2);
    }
}

#[test]
fn the_victims_are_the_fewest_of_the_lowest_priority() {
    // h0 holds one priority-30 task of 2 cpus; h1 two priority-10 tasks of 1 cpu.
    let mut sim = Sim::new(cell_with_agents(&["cpus:2;mem:1024", "cpus:2;mem:1024"]));
    let on =
        |host: &str| format!("constraints = [{{ attribute = \"hostname\", value = \"{host}\" }}]");
    sim.submit(&format!(
        "name = \"mid\"\npriority = 30\n[[tasks]]\nname = \"m\"\ncommand = \"true\"\nresources = \"cpus:2;mem:16\"\n{}\n",
        on("h0")
    ));
    sim.submit(&format!(
        "name = \"low\"\npriority = 10\n{}{}",
        task("l1", &[], &on("h1")),
        task("l2", &[], &on("h1"))
    ));
    let never = |_: &Task| false;
    for _ in 0..3 {
        round_with(&mut sim, &never);
    }
    sim.submit(&format!(
        "name = \"high\"\npriority = 50\n{}",
        task("h", &[], "")
    ));
    round_with(&mut sim, &never);
    let victims = evicted(&sim.cell);
    assert_eq!(victims.len(), 1, "{victims:#?}");
    assert!(victims[0].id.as_str().starts_with("low."));
    let h = sim.cell.task(&TaskId::new("high.h.1")).unwrap();
    assert_eq!(h.agent_id, victims[0].agent_id);
    assert_eq!(h.priority, 50);
    // Nothing of a higher or equal priority is evicted: a second job at 10 waits.
    sim.submit(&format!(
        "name = \"late\"\npriority = 10\n{}",
        task("x", &[], "")
    ));
    for _ in 0..3 {
        round_with(&mut sim, &never);
    }
    assert_eq!(evicted(&sim.cell).len(), 1);
    assert!(sim.cell.task(&TaskId::new("late.x.1")).is_none());
}

#[test]
fn a_team_below_its_guarantee_preempts_teams_above_theirs() {
    let mut sim = Sim::new(cell_with_agents(&["cpus:4;mem:1024"]));
    let role = |name: &str, g: &str, l: Option<&str>| Command::ConfigureRole {
        name: name.into(),
        weight: 1.0,
        quota: Quota {
            guarantee: ResourceSet::parse(g).unwrap(),
            limit: l.map(|l| ResourceSet::parse(l).unwrap()),
        },
        preemptible: true,
    };
    sim.commit(&role("team-a", "cpus:1", Some("cpus:4")))
        .unwrap();
    let a = sim.submit(&format!(
        "name = \"a\"\nteam = \"team-a\"\n{}",
        plain_tasks(&["a1", "a2", "a3", "a4"])
    ));
    let never = |_: &Task| false;
    for _ in 0..3 {
        round_with(&mut sim, &never);
    }
    assert_eq!(live_of(&sim.cell, &a).len(), 4);
    // Team B arrives with a guarantee of 2 cpus, at the same priority as A.
    sim.commit(&role("team-b", "cpus:2", None)).unwrap();
    let b = sim.submit(&format!(
        "name = \"b\"\nteam = \"team-b\"\n{}",
        plain_tasks(&["b1", "b2", "b3"])
    ));
    for _ in 0..4 {
        round_with(&mut sim, &never);
        let a_cpus = sim.cell.role("team-a").unwrap().consumed.scalar("cpus");
        assert!(a_cpus >= Milli(1000), "team A below its guarantee");
    }
    // B got its guarantee (two tasks), not more: b3 waits; A keeps two.
    assert_eq!(live_of(&sim.cell, &b).len(), 2);
    assert_eq!(live_of(&sim.cell, &a).len(), 2);
    let ts = job_tasks(&sim.cell, &b);
    assert!(
        ts.values()
            .filter(|t| t.state == JobTaskState::Queued)
            .count()
            == 1
    );
}

#[test]
fn a_job_or_service_with_a_100kb_team_is_refused() {
    let team = "t".repeat(100 << 10);
    let job = format!("name = \"j\"\nteam = \"{team}\"\n{}", task("a", &[], ""));
    let got = errors(&job);
    assert!(
        got.contains("team:") && got.len() < 2_000,
        "{}",
        &got[..200.min(got.len())]
    );
    let service = format!(
        "name = \"s\"\nteam = \"{team}\"\ncount = 1\n[task]\ncommand = \"x\"\nresources = \"cpus:1;mem:64\"\n"
    );
    let service = shoal_sched::service::parse_service_file(&service).unwrap();
    let got = shoal_sched::service::CompiledService::compile(&service)
        .expect_err("accepted")
        .to_string();
    assert!(got.contains("team:"), "{}", &got[..200.min(got.len())]);
    // A 255-byte team is still a team.
    let team = "t".repeat(limits::ROLE_NAME_BYTES_MAX);
    CompiledJob::compile(&spec(&format!(
        "name = \"j\"\nteam = \"{team}\"\n{}",
        task("a", &[], "")
    )))
    .unwrap();
}
