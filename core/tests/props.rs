//! Property tests and a deterministic simulation of the cell core.
//!
//! Everything goes through [`Harness`], which runs each command through `decide` and then
//! `commit`, and after every command checks:
//! - `decide` changed nothing and agrees with `commit` (same events, same reply);
//! - a rejection or a no-op changed nothing (version, counts, and a JSON dump when `deep`);
//! - `check_invariants()` and an independent recomputation: per agent, the resources of its
//!   live tasks are contained in its total and equal `allocated`; per role, `consumed` equals
//!   the sum of its live tasks and stays within the quota limit set before the claims;
//! - every task a claim commits is in its placed form (`Task::as_placed`).
//!
//! At the end of a scenario the log is replayed onto a fresh cell (directly and through JSON)
//! and the records are reloaded with `Cell::from_records`: both must equal the live cell.
//!
//! Tests marked `#[ignore = "bug: ..."]` show bugs found in `core/src` (not fixed here).

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value as Json};
use shoal_core::gc::Retention;
use shoal_core::*;

const NOW: Timestamp = 1_700_000_000_000;
/// Replay the log through JSON as well (what the store and watch clients do).
const LOG_JSON_ROUNDTRIP: bool = true;
const ROLES: [&str; 3] = ["web", "db", "batch"];

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

fn config() -> CellConfig {
    CellConfig {
        cell_id: "c".into(),
    }
}

fn rs(s: &str) -> ResourceSet {
    ResourceSet::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn scalar(name: &str, role: &str, milli: i64) -> Resource {
    Resource {
        name: name.into(),
        role: role.into(),
        value: Value::Scalar(Milli(milli)),
    }
}

fn port_list(list: Vec<(u64, u64)>) -> Resource {
    Resource {
        name: "ports".into(),
        role: UNRESERVED.into(),
        value: Value::Ranges(Ranges::new(list).unwrap()),
    }
}

fn set(v: Vec<Resource>) -> ResourceSet {
    ResourceSet::from_resources(v).unwrap()
}

/// The amount of scalar `name` reserved to exactly `role` in `s`.
fn scalar_of(s: &ResourceSet, name: &str, role: &str) -> i64 {
    s.iter()
        .filter(|r| r.name == name && r.role == role)
        .map(|r| match r.value {
            Value::Scalar(m) => m.0,
            _ => 0,
        })
        .sum()
}

/// The first `n` unreserved ports free in `s`, if there are that many.
fn first_ports(s: &ResourceSet, n: u64) -> Option<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut left = n;
    for r in s
        .iter()
        .filter(|r| r.name == "ports" && r.role == UNRESERVED)
    {
        if let Value::Ranges(rg) = &r.value {
            for &(b, e) in rg.as_slice() {
                if left == 0 {
                    break;
                }
                let take = (e - b + 1).min(left);
                out.push((b, b + take - 1));
                left -= take;
            }
        }
    }
    (left == 0).then_some(out)
}

/// `set` with every scalar scaled by `pct` percent.
fn scale(s: &ResourceSet, pct: i64) -> ResourceSet {
    set(s
        .iter()
        .map(|r| match r.value {
            Value::Scalar(m) => Resource {
                value: Value::Scalar(Milli(m.0 * pct / 100)),
                ..r.clone()
            },
            _ => r.clone(),
        })
        .collect())
}

fn minus(a: &ResourceSet, b: &ResourceSet) -> ResourceSet {
    let mut out = a.clone();
    out.subtract(b).expect("contained");
    out
}

/// `a - b`, where what `a` lacks is ignored (scalars go down to zero, ports and items that are
/// not there are skipped): what a scheduler has left after its own over-asks.
fn minus_lenient(a: &ResourceSet, b: &ResourceSet) -> ResourceSet {
    let mut out = a.clone();
    for r in b.iter() {
        if out.subtract(&set(vec![r.clone()])).is_ok() {
            continue;
        }
        match &r.value {
            Value::Scalar(_) => {
                let have = scalar_of(&out, &r.name, &r.role);
                if have > 0 {
                    out.subtract(&set(vec![scalar(&r.name, &r.role, have)]))
                        .unwrap();
                }
            }
            Value::Ranges(rg) => {
                for &(lo, hi) in rg.as_slice() {
                    for p in lo..=hi {
                        let one = Resource {
                            value: Value::Ranges(Ranges::new(vec![(p, p)]).unwrap()),
                            ..r.clone()
                        };
                        let _ = out.subtract(&set(vec![one]));
                    }
                }
            }
            Value::Set(items) => {
                for i in items {
                    let one = Resource {
                        value: Value::Set([i.clone()].into()),
                        ..r.clone()
                    };
                    let _ = out.subtract(&set(vec![one]));
                }
            }
        }
    }
    out
}

fn register_cmd(id: Option<&AgentId>, host: &str, resources: ResourceSet) -> Command {
    Command::RegisterAgent(AgentRegistration {
        agent_id: id.cloned(),
        hostname: host.into(),
        port: 5051,
        attributes: BTreeMap::new(),
        domain: None,
        resources,
    })
}

fn placement(task: &str, agent: &AgentId, res: &str) -> Placement {
    Placement {
        task_id: TaskId::new(task),
        name: task.into(),
        agent_id: agent.clone(),
        resources: rs(res),
        spec: TaskSpec::empty(),
    }
}

fn claim_of(
    id: &str,
    role: &str,
    snap: Version,
    mode: CommitMode,
    check: ConflictCheck,
    placements: Vec<Placement>,
) -> Claim {
    Claim {
        priority: 0,
        evictions: vec![],
        id: ClaimId::new(id),
        role: role.into(),
        owner: "test".into(),
        snapshot_version: snap,
        mode,
        check,
        placements,
    }
}

fn sorted_agents(cell: &Cell) -> Vec<&Agent> {
    let mut v: Vec<&Agent> = cell.agents().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn sorted_tasks(cell: &Cell) -> Vec<&Task> {
    let mut v: Vec<&Task> = cell.tasks().collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Everything observable about a cell, as JSON with sorted collections.
fn dump(cell: &Cell) -> Json {
    let mut claims: Vec<&ClaimOutcome> = cell.claims().collect();
    claims.sort_by(|a, b| a.claim_id.cmp(&b.claim_id));
    let roles: Vec<&Role> = cell.roles().collect();
    let free: BTreeMap<String, Milli> = cell
        .cluster_free()
        .into_iter()
        .filter(|(_, m)| m.0 != 0)
        .collect();
    let headroom: BTreeMap<&str, BTreeMap<Name, i64>> = ROLES
        .iter()
        .map(|r| (*r, cell.headroom_for_others(r)))
        .collect();
    json!({
        "cell_id": cell.cell_id(),
        "version": cell.version(),
        "agents": sorted_agents(cell),
        "tasks": sorted_tasks(cell),
        "roles": roles,
        "claims": claims,
        "cluster_free": free,
        "headroom": headroom,
    })
}

fn json_roundtrip<T: Serialize + DeserializeOwned>(v: &T) -> T {
    let text = serde_json::to_string(v).expect("serializes");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("does not read back: {e}: {text}"))
}

/// Properties 1 (both halves): no agent over-committed, no role past its limit; derived fields
/// recomputed independently of `check_invariants`.
fn check_all(cell: &Cell, limits: &BTreeMap<String, ResourceSet>) {
    if let Err(e) = cell.check_invariants() {
        panic!("check_invariants at version {}: {e}", cell.version());
    }
    let mut held: HashMap<AgentId, ResourceSet> = HashMap::new();
    let mut role_held: BTreeMap<String, ResourceSet> = BTreeMap::new();
    // Evicted tasks (being killed) hold nothing: their resources moved to the evicting claim.
    for t in cell.tasks().filter(|t| t.holds_resources()) {
        held.entry(t.agent_id.clone())
            .or_default()
            .add(&t.resources)
            .unwrap_or_else(|e| {
                panic!(
                    "live tasks on agent {} hold a resource twice: {e}",
                    t.agent_id
                )
            });
        role_held
            .entry(t.role.clone())
            .or_default()
            .add(&t.resources.scalars_only())
            .unwrap();
    }
    // Also count ports and set items task by task, independently of ResourceSet::add.
    let mut counts: HashMap<(AgentId, Name, Name), (u64, ResourceSet)> = HashMap::new();
    for t in cell.tasks().filter(|t| t.holds_resources()) {
        for r in t.resources.iter() {
            let n = match &r.value {
                Value::Scalar(_) => continue,
                Value::Ranges(rg) => rg.count(),
                Value::Set(items) => items.len() as u64,
            };
            let e = counts
                .entry((t.agent_id.clone(), r.name.clone(), r.role.clone()))
                .or_default();
            e.0 += n;
            // An overlap leaves the union short of `n`, which the assertion below reports.
            let _ = e.1.add(&ResourceSet::from_resources([r.clone()]).unwrap());
        }
    }
    for ((agent, name, role), (n, union)) in counts {
        let distinct: u64 = union
            .iter()
            .map(|r| match &r.value {
                Value::Ranges(rg) => rg.count(),
                Value::Set(items) => items.len() as u64,
                Value::Scalar(_) => 0,
            })
            .sum();
        assert_eq!(
            n, distinct,
            "agent {agent}: live tasks hold some {name}({role}) twice"
        );
    }
    for a in cell.agents() {
        let h = held.remove(&a.id).unwrap_or_default();
        assert!(
            a.total.contains(&h),
            "agent {} over-committed: its tasks hold {h}, total {}",
            a.id,
            a.total
        );
        assert_eq!(
            a.allocated, h,
            "agent {} ({:?}): allocated differs from its live tasks",
            a.id, a.state
        );
        if a.state == AgentState::Gone {
            assert!(h.is_empty(), "live tasks on gone agent {}", a.id);
        }
    }
    assert!(
        held.is_empty(),
        "live tasks on unknown agents: {:?}",
        held.keys().collect::<Vec<_>>()
    );
    for r in cell.roles() {
        let h = role_held.remove(&r.name).unwrap_or_default();
        // Roles count scalars only: quotas are scalar, and the same port on two agents is
        // two different resources.
        assert_eq!(
            r.consumed,
            h.scalars_only(),
            "role {}: consumed differs from its live tasks",
            r.name
        );
    }
    assert!(role_held.is_empty(), "live tasks of unknown roles");
    for (name, limit) in limits {
        let used = cell
            .role(name)
            .map(|r| r.consumed.clone())
            .unwrap_or_default();
        for (res, cap) in limit.scalar_totals() {
            assert!(
                used.scalar(&res) <= cap,
                "role {name} past its limit of {res}: {} > {}",
                used.scalar(&res).as_f64(),
                cap.as_f64()
            );
        }
    }
}

/// Property 8: the log replayed onto a fresh cell (directly, and through JSON as a watch client
/// receives it) gives the same state.
fn check_replay(cell: &Cell, log: &[LogEntry]) {
    let mut direct = Cell::new(config());
    let mut via_json = Cell::new(config());
    for e in log {
        direct.apply(e);
        if LOG_JSON_ROUNDTRIP {
            let back: LogEntry = json_roundtrip(e);
            assert_eq!(&back, e, "log entry changes through JSON");
            via_json.apply(&back);
        }
    }
    let live = dump(cell);
    assert_eq!(
        dump(&direct),
        live,
        "replayed log differs from the live cell"
    );
    if LOG_JSON_ROUNDTRIP {
        assert_eq!(
            dump(&via_json),
            live,
            "log replayed through JSON differs from the live cell"
        );
    }
    direct.check_invariants().unwrap();
}

/// Property 8, restart half: the stored records (derived fields wiped, through JSON) reload
/// into a cell equal to the live one.
fn check_restart(cell: &Cell) {
    let agents: Vec<Agent> = cell
        .agents()
        .map(|a| Agent {
            allocated: ResourceSet::new(),
            ..json_roundtrip(a)
        })
        .collect();
    let tasks: Vec<Task> = cell.tasks().map(json_roundtrip).collect();
    let roles: Vec<Role> = cell
        .roles()
        .map(|r| Role {
            consumed: ResourceSet::new(),
            ..json_roundtrip(r)
        })
        .collect();
    let claims: Vec<ClaimOutcome> = cell.claims().map(json_roundtrip).collect();
    let rebuilt = Cell::from_records(config(), cell.version(), agents, tasks, roles, claims);
    assert_eq!(
        dump(&rebuilt),
        dump(cell),
        "from_records differs from the live cell"
    );
    rebuilt.check_invariants().unwrap();
}

/// Proptest cases per property: 64, or `SHOAL_PROPTEST_CASES` for a longer hunt.
fn cases() -> u32 {
    std::env::var("SHOAL_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

type CommitResult = Result<(Option<LogEntry>, Reply), Rejection>;

/// Runs commands and checks every property that holds after any command.
struct Harness {
    cell: Cell,
    log: Vec<LogEntry>,
    now: Timestamp,
    /// Compare full JSON dumps for "nothing changed" (slow on big cells).
    deep: bool,
    /// Quota limits configured before any claim.
    limits: BTreeMap<String, ResourceSet>,
    /// The outcome each claim got when it first committed.
    outcomes: HashMap<ClaimId, ClaimOutcome>,
    /// `check_invariants` runs after every command, the independent recomputation after every
    /// `check_every`th (1 in the property tests).
    check_every: u64,
    commands: u64,
}

impl Harness {
    fn new(deep: bool) -> Harness {
        Harness {
            cell: Cell::new(config()),
            log: Vec::new(),
            now: NOW,
            deep,
            limits: BTreeMap::new(),
            outcomes: HashMap::new(),
            check_every: 1,
            commands: 0,
        }
    }

    fn assert_unchanged(&self, before: &Cell, before_dump: Option<&Json>, what: &str) {
        assert_eq!(
            self.cell.version(),
            before.version(),
            "{what}: version moved"
        );
        assert_eq!(
            self.cell.task_count(),
            before.task_count(),
            "{what}: tasks changed"
        );
        assert_eq!(
            self.cell.agent_count(),
            before.agent_count(),
            "{what}: agents changed"
        );
        if let Some(d) = before_dump {
            assert_eq!(&dump(&self.cell), d, "{what}: state changed");
        }
    }

    /// Property 7 for every command: decide changes nothing; rejections change nothing.
    fn run(&mut self, cmd: &Command) -> (Cell, CommitResult) {
        self.now += 1;
        let before = self.cell.clone();
        let before_dump = self.deep.then(|| dump(&self.cell));
        let decided = self.cell.decide(self.now, cmd);
        self.assert_unchanged(&before, before_dump.as_ref(), "decide");
        let res = self.cell.commit(self.now, cmd);
        match (&decided, &res) {
            (Err(a), Err(b)) => assert_eq!(a, b, "decide and commit reject differently"),
            (Ok(d), Ok((entry, reply))) => {
                assert_eq!(&d.reply, reply, "decide and commit reply differently");
                match entry {
                    None => assert!(d.events.is_empty()),
                    Some(e) => {
                        assert_eq!(
                            e.events, d.events,
                            "decide and commit commit different events"
                        );
                        assert_eq!(e.version, before.version() + 1);
                    }
                }
            }
            _ => panic!("decide and commit disagree: {decided:?} vs {res:?}"),
        }
        match &res {
            Err(_) | Ok((None, _)) => {
                self.assert_unchanged(&before, before_dump.as_ref(), "rejection or no-op")
            }
            Ok((Some(e), _)) => {
                assert_eq!(self.cell.version(), e.version);
                assert!(!e.events.is_empty());
                // The store keeps a claim's tasks once, as placed, and rebuilds a task's
                // later form from its own row: a committed task is its placed form.
                for ev in &e.events {
                    if let Event::ClaimCommitted { tasks, .. } = ev {
                        for t in tasks {
                            assert_eq!(
                                **t,
                                t.as_placed(e.version),
                                "a task as its claim placed it"
                            );
                        }
                    }
                }
                self.log.push(e.clone());
            }
        }
        self.commands += 1;
        if self.commands.is_multiple_of(self.check_every) {
            check_all(&self.cell, &self.limits);
        } else if let Err(e) = self.cell.check_invariants() {
            panic!("check_invariants at version {}: {e}", self.cell.version());
        }
        (before, res)
    }

    fn configure_role(&mut self, name: &str, weight: f64, quota: Quota) -> bool {
        self.configure_role_preemptible(name, weight, quota, true)
    }

    fn configure_role_preemptible(
        &mut self,
        name: &str,
        weight: f64,
        quota: Quota,
        preemptible: bool,
    ) -> bool {
        let limit = quota.limit.clone();
        let (_, res) = self.run(&Command::ConfigureRole {
            name: name.into(),
            weight,
            quota,
            preemptible,
        });
        match res {
            Ok((Some(_), Reply::Done)) => {
                match limit {
                    Some(l) => self.limits.insert(name.to_string(), l),
                    None => self.limits.remove(name),
                };
                true
            }
            Err(Rejection::Invalid(_)) => false,
            other => panic!("configure role: {other:?}"),
        }
    }

    fn register(
        &mut self,
        id: Option<&AgentId>,
        host: &str,
        resources: ResourceSet,
    ) -> Option<AgentId> {
        let existing = id.and_then(|i| self.cell.agent(i).cloned());
        let (before, res) = self.run(&register_cmd(id, host, resources.clone()));
        if resources.is_empty() {
            assert!(matches!(res, Err(Rejection::Invalid(_))), "{res:?}");
            return None;
        }
        if let Some(a) = &existing {
            if a.state == AgentState::Gone {
                assert!(matches!(res, Err(Rejection::Forbidden(_))), "{res:?}");
                return None;
            }
            if !resources.contains(&a.allocated) {
                assert!(matches!(res, Err(Rejection::Conflict(_))), "{res:?}");
                return None;
            }
        }
        let (entry, reply) = res.expect("registration commits");
        assert!(entry.is_some());
        let Reply::Agent { agent_id } = reply else {
            panic!("reply {reply:?}")
        };
        match id {
            Some(i) => assert_eq!(&agent_id, i),
            None => {
                assert!(
                    before.agent(&agent_id).is_none(),
                    "a new agent took the id of {agent_id}"
                );
                assert_eq!(self.cell.agent_count(), before.agent_count() + 1);
            }
        }
        let a = self.cell.agent(&agent_id).unwrap();
        assert_eq!(a.state, AgentState::Active);
        assert_eq!(a.total, resources);
        assert_eq!(a.version, self.cell.version());
        let was_unreachable = existing
            .as_ref()
            .map(|a| a.state == AgentState::Unreachable)
            .unwrap_or(false);
        for t in before.tasks().filter(|t| t.agent_id == agent_id) {
            let now = self.cell.task(&t.id).unwrap();
            if was_unreachable && t.state == TaskState::Unreachable {
                // An evicted task comes back to be killed.
                let want = if t.preempted_by.is_some() {
                    TaskState::Killing
                } else {
                    TaskState::Running
                };
                assert_eq!(now.state, want);
            } else {
                assert_eq!(now.state, t.state);
            }
        }
        Some(agent_id)
    }

    fn resize(&mut self, id: &AgentId, total: ResourceSet) {
        let a = self.cell.agent(id).cloned();
        let (_, res) = self.run(&Command::UpdateAgentResources {
            agent_id: id.clone(),
            total: total.clone(),
        });
        match a {
            None => assert!(matches!(res, Err(Rejection::NotFound(_))), "{res:?}"),
            Some(a) if a.state == AgentState::Gone => {
                assert!(matches!(res, Err(Rejection::Forbidden(_))), "{res:?}")
            }
            Some(a) if !total.contains(&a.allocated) => {
                assert!(matches!(res, Err(Rejection::Conflict(_))), "{res:?}")
            }
            Some(_) => {
                assert!(matches!(res, Ok((Some(_), Reply::Done))), "{res:?}");
                let a = self.cell.agent(id).unwrap();
                assert_eq!(a.total, total);
                assert_eq!(a.version, self.cell.version());
            }
        }
    }

    fn set_agent(&mut self, id: &AgentId, state: AgentState) {
        let a = self.cell.agent(id).cloned();
        let (before, res) = self.run(&Command::SetAgentState {
            agent_id: id.clone(),
            state,
        });
        let Some(a) = a else {
            assert!(matches!(res, Err(Rejection::NotFound(_))), "{res:?}");
            return;
        };
        if a.state == state {
            assert!(matches!(res, Ok((None, Reply::Done))), "{res:?}");
            return;
        }
        if a.state == AgentState::Gone {
            assert!(matches!(res, Err(Rejection::Forbidden(_))), "{res:?}");
            return;
        }
        if state == AgentState::Active {
            assert!(matches!(res, Err(Rejection::Invalid(_))), "{res:?}");
            return;
        }
        assert!(matches!(res, Ok((Some(_), Reply::Done))), "{res:?}");
        let after = self.cell.agent(id).unwrap();
        assert_eq!(after.state, state);
        assert_eq!(after.version, self.cell.version());
        let task_state = if state == AgentState::Gone {
            TaskState::Gone
        } else {
            TaskState::Unreachable
        };
        for t in before.tasks().filter(|t| t.agent_id == *id) {
            let now = self.cell.task(&t.id).unwrap();
            let want = if t.state.is_terminal() {
                t.state
            } else {
                task_state
            };
            assert_eq!(
                now.state, want,
                "task {} on agent {id} going {state:?}",
                t.id
            );
        }
        if state == AgentState::Gone {
            assert!(after.allocated.is_empty());
        }
    }

    /// Checks that a task that went terminal in the last commit freed its resources once.
    fn check_freed(&self, before: &Cell, t: &Task) {
        let after = self.cell.task(&t.id).unwrap();
        let (ab, aa) = (
            before.agent(&t.agent_id).unwrap(),
            self.cell.agent(&t.agent_id).unwrap(),
        );
        let (rb, ra) = (
            before.role(&t.role).unwrap(),
            self.cell.role(&t.role).unwrap(),
        );
        // Property 4: only the first terminal state frees, and only what the task still holds
        // (an evicted task's resources moved to the evicting claim).
        if t.holds_resources() && after.state.is_terminal() {
            assert_eq!(
                aa.allocated,
                minus(&ab.allocated, &t.resources),
                "agent {} after {} ended",
                aa.id,
                t.id
            );
            assert_eq!(
                ra.consumed,
                minus(&rb.consumed, &t.resources.scalars_only()),
                "role {} after {} ended",
                ra.name,
                t.id
            );
        } else {
            assert_eq!(aa.allocated, ab.allocated);
            assert_eq!(ra.consumed, rb.consumed);
        }
    }

    /// Property 4: legal transitions commit, illegal ones are `Conflict` and change nothing,
    /// repeated terminal updates are no-ops; resources are freed on the first terminal state.
    fn status(&mut self, id: &TaskId, state: TaskState, status: StatusInfo) {
        let t = self.cell.task(id).cloned();
        let (before, res) = self.run(&Command::UpdateTaskStatus {
            task_id: id.clone(),
            state,
            status: status.clone(),
        });
        let Some(t) = t else {
            assert!(matches!(res, Err(Rejection::NotFound(_))), "{res:?}");
            return;
        };
        let evicted = t.preempted_by.is_some();
        // An evicted task reporting itself live is recorded as being killed.
        let state = if evicted
            && !state.is_terminal()
            && !matches!(state, TaskState::Lost | TaskState::Unreachable)
        {
            TaskState::Killing
        } else {
            state
        };
        if t.state == state && state.is_terminal() {
            assert!(
                matches!(res, Ok((None, Reply::Done))),
                "repeated terminal update: {res:?}"
            );
        } else if !t.state.can_become(state) {
            assert!(
                matches!(res, Err(Rejection::Conflict(_))),
                "{:?} -> {state:?}: {res:?}",
                t.state
            );
        } else {
            let (entry, _) = res.unwrap_or_else(|e| panic!("{:?} -> {state:?}: {e}", t.state));
            let now = self.cell.task(id).unwrap();
            assert_eq!(now.state, state);
            match entry {
                // A repeat of the current status (its time aside) commits nothing.
                None => assert!(
                    t.state == state
                        && (evicted
                            || StatusInfo {
                                timestamp: t.status.timestamp,
                                ..status.clone()
                            } == t.status)
                ),
                Some(_) if evicted && (state == TaskState::Killed || !state.is_terminal()) => {
                    assert_eq!(now.status.reason.as_deref(), Some(REASON_PREEMPTED));
                }
                Some(_) => {
                    assert_eq!(now.version, self.cell.version());
                    if status.timestamp != 0 {
                        assert_eq!(now.status, status);
                    }
                }
            }
            self.check_freed(&before, &t);
        }
    }

    /// Property 10: a collection (planned on `plan_on`, maybe stale) forgets only terminal
    /// tasks nobody pins, claims none of whose tasks is left and that the log no longer
    /// names, and gone agents with no live task; it is never refused.
    fn collect(&mut self, plan_on: &Cell, keep: usize, pin: usize, below: u64, aged: bool) {
        let retention = Retention {
            completed_tasks_per_owner: keep,
            completed_task_age_ms: if aged { 0 } else { u64::MAX },
            gone_agents_max: keep,
            per_collection_max: 4,
        };
        let pinned = |t: &Task| (t.id.as_str().len() % 4) < pin;
        let floor = self.cell.version().saturating_sub(below);
        let Some(cmd) = plan_on.collection(&retention, self.now + 1, floor, &pinned) else {
            return;
        };
        let (before, res) = self.run(&cmd);
        res.expect("a collection is never refused");
        for t in before.tasks() {
            if self.cell.task(&t.id).is_none() {
                assert!(t.state.is_terminal(), "collected live task {}", t.id);
                assert!(!pinned(t), "collected pinned task {}", t.id);
            }
        }
        for c in before.claims() {
            if self.cell.claim(&c.claim_id).is_none() {
                assert!(
                    c.committed_version.is_some_and(|v| v < floor),
                    "claim {} collected while the log names it",
                    c.claim_id
                );
                for p in c.placements.iter().filter(|p| p.committed) {
                    assert!(
                        self.cell
                            .task(&p.task_id)
                            .is_none_or(|t| t.claim_id != c.claim_id),
                        "claim {} collected with its task {} left",
                        c.claim_id,
                        p.task_id
                    );
                }
            }
        }
        for a in before.agents() {
            if self.cell.agent(&a.id).is_none() {
                assert_eq!(
                    a.state,
                    AgentState::Gone,
                    "collected agent {} not gone",
                    a.id
                );
                assert_eq!(
                    before.live_tasks_on(&a.id).count(),
                    0,
                    "collected agent {} with live tasks",
                    a.id
                );
            }
        }
    }

    fn kill(&mut self, id: &TaskId) {
        let t = self.cell.task(id).cloned();
        let (before, res) = self.run(&Command::KillTask {
            task_id: id.clone(),
        });
        let Some(t) = t else {
            assert!(matches!(res, Err(Rejection::NotFound(_))), "{res:?}");
            return;
        };
        if t.state.is_terminal() || t.state == TaskState::Killing {
            assert!(matches!(res, Ok((None, Reply::Done))), "{res:?}");
            return;
        }
        assert!(matches!(res, Ok((Some(_), Reply::Done))), "{res:?}");
        let active = before
            .agent(&t.agent_id)
            .map(|a| a.state == AgentState::Active)
            .unwrap_or(false);
        let want = if active {
            TaskState::Killing
        } else {
            TaskState::Killed
        };
        assert_eq!(self.cell.task(id).unwrap().state, want);
        self.check_freed(&before, &t);
    }

    /// Properties 2, 3, 5, 6 on one claim.
    fn claim(&mut self, claim: &Claim) -> Option<ClaimOutcome> {
        let recorded = self.cell.claim(&claim.id).cloned();
        let (before, res) = self.run(&Command::Claim(claim.clone()));
        if let Some(rec) = recorded {
            // Property 5: a committed claim id returns the identical outcome, changes nothing.
            let (entry, reply) = res.expect("a resubmission is never rejected");
            assert!(entry.is_none(), "a resubmission committed something");
            assert_eq!(
                reply,
                Reply::Claim {
                    outcome: rec.clone()
                }
            );
            assert_eq!(
                self.outcomes.get(&claim.id),
                Some(&rec),
                "the stored outcome is not the first reply"
            );
            return Some(rec);
        }
        let (entry, reply) = match res {
            Err(Rejection::Invalid(_)) => return None,
            // An eviction of a task a collection forgot.
            Err(Rejection::NotFound(_))
                if claim.evictions.iter().any(|t| before.task(t).is_none()) =>
            {
                return None
            }
            Err(e) => panic!("claim rejected with {e:?}"),
            Ok(ok) => ok,
        };
        let Reply::Claim { outcome } = reply else {
            panic!("reply {reply:?}")
        };
        check_outcome(&before, &self.cell, claim, &outcome, entry.as_ref());
        if outcome.committed_count() > 0 {
            self.outcomes.insert(claim.id.clone(), outcome.clone());
        }
        Some(outcome)
    }
}

/// Properties 2, 3 and 6 for a claim that `before` decided into `outcome`, leading to `after`.
fn check_outcome(
    before: &Cell,
    after: &Cell,
    claim: &Claim,
    outcome: &ClaimOutcome,
    entry: Option<&LogEntry>,
) {
    assert_eq!(outcome.claim_id, claim.id);
    assert_eq!(outcome.placements.len(), claim.placements.len());
    for (p, o) in claim.placements.iter().zip(&outcome.placements) {
        assert_eq!(o.task_id, p.task_id);
        assert_eq!(o.agent_id, p.agent_id);
        assert_eq!(
            o.committed,
            o.rejected.is_none(),
            "committed xor reason: {o:?}"
        );
    }
    let n = outcome.committed_count();
    let gang_aborted = outcome
        .placements
        .iter()
        .filter(|o| o.rejected == Some(RejectReason::GangAborted))
        .count();
    match claim.mode {
        CommitMode::AllOrNothing => {
            assert!(
                n == 0 || n == claim.placements.len(),
                "gang half in: {outcome:?}"
            );
            if n == 0 {
                assert!(
                    gang_aborted < claim.placements.len(),
                    "gang aborted with no cause: {outcome:?}"
                );
            }
        }
        CommitMode::Incremental => {
            assert_eq!(gang_aborted, 0, "GangAborted in an incremental claim")
        }
    }
    if n > 0 {
        let e = entry.expect("a committed claim writes a log entry");
        assert_eq!(e.version, after.version());
        assert_eq!(outcome.committed_version, Some(after.version()));
        assert_eq!(
            after.claim(&claim.id),
            Some(outcome),
            "a committed claim is recorded"
        );
    } else {
        assert!(entry.is_none());
        assert_eq!(outcome.committed_version, None);
        assert_eq!(after.version(), before.version());
        assert!(
            after.claim(&claim.id).is_none(),
            "a claim that committed nothing is not recorded"
        );
    }
    check_evictions(before, after, claim, n > 0);
    // Property 3: exactly the committed placements became tasks.
    assert_eq!(after.task_count(), before.task_count() + n);
    let mut on_agent: HashMap<&AgentId, usize> = HashMap::new();
    for (p, o) in claim.placements.iter().zip(&outcome.placements) {
        let earlier_same_agent = *on_agent
            .entry(&p.agent_id)
            .and_modify(|c| *c += 1)
            .or_insert(0);
        let pre = before.agent(&p.agent_id);
        if o.committed {
            let t = after
                .task(&p.task_id)
                .expect("committed placement is a task");
            assert!(before.task(&p.task_id).is_none());
            assert_eq!(t.claim_id, claim.id);
            assert_eq!(t.agent_id, p.agent_id);
            assert_eq!(t.resources, p.resources);
            assert_eq!(t.role, claim.role);
            assert_eq!(t.state, TaskState::Staging);
            assert_eq!(t.version, after.version());
            let pre = pre.expect("committed on a known agent");
            assert_eq!(pre.state, AgentState::Active);
            // Free before, or freed by the claim's evictions on that agent.
            let mut free = pre.free();
            for v in claim.evictions.iter().filter_map(|id| before.task(id)) {
                if v.agent_id == p.agent_id {
                    free.add(&v.resources).unwrap();
                }
            }
            assert!(free.contains(&p.resources));
            if claim.check == ConflictCheck::Coarse {
                assert!(
                    pre.version <= claim.snapshot_version,
                    "coarse claim committed on a moved agent"
                );
            }
            assert_eq!(after.agent(&p.agent_id).unwrap().version, after.version());
        } else if let Some(t) = after.task(&p.task_id) {
            // Only a task of someone else (a duplicate id) may carry this id.
            assert!(before.task(&p.task_id).is_some() || t.claim_id == claim.id);
        }
        // Reasons match the state the claim was decided against.
        match &o.rejected {
            Some(RejectReason::UnknownAgent) => assert!(pre.is_none()),
            Some(RejectReason::AgentNotActive { state }) => {
                assert_eq!(Some(*state), pre.map(|a| a.state))
            }
            Some(RejectReason::AgentVersionMoved { agent_version }) => {
                // Property 6: only the coarse check looks at agent versions.
                assert_eq!(
                    claim.check,
                    ConflictCheck::Coarse,
                    "fine-grained claim rejected for a version move"
                );
                assert_eq!(Some(*agent_version), pre.map(|a| a.version));
                assert!(*agent_version > claim.snapshot_version);
            }
            Some(RejectReason::InsufficientResources { .. }) if earlier_same_agent == 0 => {
                assert!(
                    !pre.unwrap().free().contains(&p.resources),
                    "rejected though free: {p:?}"
                );
            }
            Some(RejectReason::DuplicateTaskId) => {
                assert!(
                    before.task(&p.task_id).is_some()
                        || claim
                            .placements
                            .iter()
                            .filter(|q| q.task_id == p.task_id)
                            .count()
                            > 1
                );
            }
            _ => {}
        }
        // Property 6: the coarse check rejects every placement on an agent that moved.
        if let Some(a) = pre {
            if claim.check == ConflictCheck::Coarse
                && a.state == AgentState::Active
                && a.version > claim.snapshot_version
            {
                assert!(
                    matches!(
                        o.rejected,
                        Some(RejectReason::AgentVersionMoved { .. })
                            | Some(RejectReason::DuplicateTaskId)
                            | Some(RejectReason::EvictionRefused { .. })
                            | Some(RejectReason::ReservationMismatch { .. })
                    ),
                    "coarse placement on moved agent: {o:?}"
                );
            }
        }
    }
}

/// Property 9 (preemption): evictions commit together with the placements or not at all; every
/// victim was a live task holding resources on an agent the claim places on, of a preemptible
/// role, and of a lower priority than the claim or evicted under the guarantee rule (the
/// claimant stays within its guarantee, the victim is of another role); no role other than the
/// claimant is taken below its guarantee; a victim is TASK_KILLING with the preemption reason
/// and holds nothing any more.
fn check_evictions(before: &Cell, after: &Cell, claim: &Claim, committed: bool) {
    if !committed {
        for id in &claim.evictions {
            assert_eq!(
                before.task(id),
                after.task(id),
                "a refused claim evicted {id}"
            );
        }
        return;
    }
    let agents: Vec<&AgentId> = claim.placements.iter().map(|p| &p.agent_id).collect();
    let mut wanted = ResourceSet::new();
    for p in &claim.placements {
        wanted.add_scalars(&p.resources).unwrap();
    }
    let claimant = before.role(&claim.role);
    let within_guarantee = claimant.is_some_and(|r| {
        let g = r.quota.guarantee.scalar_totals();
        g.iter().any(|(n, _)| wanted.scalar(n).0 > 0)
            && g.iter()
                .all(|(n, m)| r.consumed.scalar(n).0 + wanted.scalar(n).0 <= m.0)
    });
    let mut victim_roles: BTreeMap<String, ResourceSet> = BTreeMap::new();
    for id in &claim.evictions {
        let was = before.task(id).expect("a victim existed");
        let now = after.task(id).unwrap();
        assert!(was.holds_resources(), "victim {id} held nothing: {was:?}");
        assert!(matches!(
            was.state,
            TaskState::Staging | TaskState::Starting | TaskState::Running
        ));
        assert!(
            agents.contains(&&was.agent_id),
            "victim {id} on another agent"
        );
        assert!(before.role(&was.role).is_none_or(|r| r.preemptible));
        assert!(
            was.priority < claim.priority || (within_guarantee && was.role != claim.role),
            "victim {id} (priority {}, role {}) evicted by claim of priority {}, role {}",
            was.priority,
            was.role,
            claim.priority,
            claim.role
        );
        assert_eq!(now.state, TaskState::Killing);
        assert_eq!(now.preempted_by.as_ref(), Some(&claim.id));
        assert_eq!(now.status.reason.as_deref(), Some(REASON_PREEMPTED));
        assert!(!now.holds_resources());
        if was.role != claim.role {
            victim_roles
                .entry(was.role.clone())
                .or_default()
                .add_scalars(&was.resources)
                .unwrap();
        }
    }
    for (role, gone) in victim_roles {
        let r = after.role(&role).unwrap();
        for (name, g) in r.quota.guarantee.scalar_totals() {
            if gone.scalar(&name).0 > 0 {
                assert!(
                    r.consumed.scalar(&name) >= g,
                    "role {role} evicted below its guarantee of {name}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Agents get disjoint port numbers: two tasks of one role holding the same port on two agents
/// break `Role::consumed` (see `bug_same_port_on_two_agents_breaks_role_consumed`).
#[derive(Clone, Debug)]
struct AgentSpec {
    /// Tenths of a cpu.
    cpus: u32,
    mem: u32,
    ports: u64,
    /// (role index, tenths of a cpu) reserved to that role.
    reserved: Option<(usize, u32)>,
}

impl AgentSpec {
    /// The resources of the `index`th agent.
    fn resources(&self, index: usize) -> ResourceSet {
        let mut v = vec![
            scalar("cpus", UNRESERVED, self.cpus as i64 * 100),
            scalar("mem", UNRESERVED, self.mem as i64 * 1000),
        ];
        let base = 31000 + 100 * index as u64;
        if self.ports > 0 {
            v.push(port_list(vec![(base, base + self.ports - 1)]));
        }
        if let Some((r, c)) = self.reserved {
            v.push(scalar("cpus", ROLES[r], c as i64 * 100));
        }
        set(v)
    }
}

fn agent_spec() -> impl Strategy<Value = AgentSpec> {
    (
        10u32..=80,
        256u32..=4096,
        0u64..=8,
        prop::option::weighted(0.4, (0usize..3, 5u32..=20)),
    )
        .prop_map(|(cpus, mem, ports, reserved)| AgentSpec {
            cpus,
            mem,
            ports,
            reserved,
        })
}

#[derive(Clone, Debug)]
struct RoleSpec {
    /// Tenths.
    weight: u32,
    /// (tenths of a cpu, mem)
    limit: Option<(u32, u32)>,
    guarantee: Option<(u32, u32)>,
    preemptible: bool,
}

impl RoleSpec {
    fn quota(&self) -> Quota {
        let s = |(c, m): (u32, u32)| {
            set(vec![
                scalar("cpus", UNRESERVED, c as i64 * 100),
                scalar("mem", UNRESERVED, m as i64 * 1000),
            ])
        };
        Quota {
            guarantee: self.guarantee.map(s).unwrap_or_default(),
            limit: self.limit.map(s),
        }
    }
}

fn role_spec() -> impl Strategy<Value = RoleSpec> {
    (
        1u32..=40,
        prop::option::weighted(0.6, (5u32..=60, 200u32..=6000)),
        prop::option::weighted(0.3, (1u32..=20, 100u32..=2000)),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(weight, limit, guarantee, preemptible)| RoleSpec {
            weight,
            limit,
            guarantee,
            preemptible,
        })
}

/// One placement as a scheduler intends it, made concrete against its snapshot.
#[derive(Clone, Debug)]
struct PSpec {
    /// `None`: an agent nobody knows.
    agent: Option<usize>,
    cpus: u32,
    mem: u32,
    ports: u64,
    /// Use cpus reserved to the claim's role.
    reserved: bool,
    /// Shrink the request to what the snapshot shows free (a well-behaved scheduler).
    fit: bool,
    /// Reuse the id of an existing task.
    dup: Option<usize>,
}

fn pspec() -> impl Strategy<Value = PSpec> {
    (
        prop::option::weighted(0.95, any::<usize>()),
        1u32..=30,
        0u32..=1024,
        0u64..=3,
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.7),
        prop::option::weighted(0.05, any::<usize>()),
    )
        .prop_map(|(agent, cpus, mem, ports, reserved, fit, dup)| PSpec {
            agent,
            cpus,
            mem,
            ports,
            reserved,
            fit,
            dup,
        })
}

fn mode() -> impl Strategy<Value = CommitMode> {
    prop_oneof![
        Just(CommitMode::AllOrNothing),
        Just(CommitMode::Incremental)
    ]
}

fn check() -> impl Strategy<Value = ConflictCheck> {
    prop_oneof![Just(ConflictCheck::Fine), Just(ConflictCheck::Coarse)]
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(TaskState::ALL.to_vec())
}

fn terminal_state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(
        TaskState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect::<Vec<_>>(),
    )
}

#[derive(Clone, Debug)]
enum Op {
    /// Scheduler `n` refreshes its snapshot.
    Snapshot(usize),
    Claim {
        sched: usize,
        role: usize,
        mode: CommitMode,
        check: ConflictCheck,
        placements: Vec<PSpec>,
        /// Tenfold: 0, 10 or 20.
        priority: i64,
        /// Victims among the live tasks of the placements' agents (in the snapshot).
        evict: Vec<usize>,
    },
    Resubmit(usize),
    Status(usize, TaskState, bool),
    Kill(usize),
    /// Agent `n` becomes unreachable (or gone when the flag is set).
    SetAgent(usize, bool),
    /// Agent `n` registers again: 0 with its total, 1 with only its allocation, 2 with half.
    Reregister(usize, u8),
    Resize(usize, i64),
    /// A collection planned on scheduler `sched`'s snapshot (stale or not), keeping `keep`
    /// terminal tasks per owner and gone agents, with tasks pinned by a caller above the cell
    /// (`pin` of every 4), the log's floor `below` versions back.
    Collect {
        sched: usize,
        keep: usize,
        pin: usize,
        below: u64,
        aged: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3).prop_map(Op::Snapshot),
        7 => (0usize..3, 0usize..3, mode(), check(), prop::collection::vec(pspec(), 1..5),
              0i64..3, prop::collection::vec(any::<usize>(), 0..3))
            .prop_map(|(sched, role, mode, check, placements, priority, evict)| Op::Claim {
                sched, role, mode, check, placements, priority: priority * 10, evict }),
        1 => any::<usize>().prop_map(Op::Resubmit),
        5 => (any::<usize>(), task_state(), any::<bool>()).prop_map(|(t, s, f)| Op::Status(t, s, f)),
        1 => any::<usize>().prop_map(Op::Kill),
        1 => (any::<usize>(), prop::bool::weighted(0.3)).prop_map(|(a, g)| Op::SetAgent(a, g)),
        1 => (any::<usize>(), 0u8..3).prop_map(|(a, k)| Op::Reregister(a, k)),
        1 => (any::<usize>(), 50i64..=150).prop_map(|(a, p)| Op::Resize(a, p)),
        2 => (0usize..3, 0usize..3, 0usize..3, 0u64..20, any::<bool>())
            .prop_map(|(sched, keep, pin, below, aged)| Op::Collect { sched, keep, pin, below, aged }),
    ]
}

/// A scheduler's claim, decided against its (possibly stale) snapshot.
#[allow(clippy::too_many_arguments)]
fn build_claim(
    snap: &Cell,
    id: String,
    role: &str,
    mode: CommitMode,
    check: ConflictCheck,
    specs: &[PSpec],
    next_task: &mut u64,
    priority: i64,
    evict: &[usize],
) -> Claim {
    let agents = sorted_agents(snap);
    let mut planned: HashMap<AgentId, ResourceSet> = HashMap::new();
    let mut placements = Vec::new();
    for s in specs {
        let task_id = match s.dup {
            Some(k) if snap.task_count() > 0 => {
                sorted_tasks(snap)[k % snap.task_count()].id.clone()
            }
            _ => {
                *next_task += 1;
                TaskId::new(format!("t{next_task}"))
            }
        };
        let (agent_id, avail, unplanned) = match s.agent {
            Some(k) if !agents.is_empty() => {
                let a = agents[k % agents.len()];
                let none = ResourceSet::new();
                let p = planned.get(&a.id).unwrap_or(&none);
                (
                    a.id.clone(),
                    minus_lenient(&a.free(), p),
                    minus_lenient(&a.total, p),
                )
            }
            _ => (
                AgentId::new("ghost"),
                ResourceSet::new(),
                ResourceSet::new(),
            ),
        };
        let fit = |want: i64, have: i64| {
            if s.fit && have > 0 {
                want.min(have)
            } else {
                want
            }
        };
        let want_cpus = s.cpus as i64 * 100;
        let cpu_role = if s.reserved { role } else { UNRESERVED };
        let mut v = vec![scalar(
            "cpus",
            cpu_role,
            fit(want_cpus, scalar_of(&avail, "cpus", cpu_role)),
        )];
        if s.mem > 0 {
            v.push(scalar(
                "mem",
                UNRESERVED,
                fit(s.mem as i64 * 1000, scalar_of(&avail, "mem", UNRESERVED)),
            ));
        }
        if s.ports > 0 {
            // Not enough free: ask for ports someone else may hold (never ports this claim
            // already asks for: see `bug_one_claim_books_one_port_twice`).
            let list = first_ports(&avail, s.ports)
                .or_else(|| first_ports(&unplanned, s.ports))
                .unwrap_or_else(|| vec![(1, s.ports)]);
            v.push(port_list(list));
        }
        let resources = set(v);
        // A scheduler may ask for what it already planned (the commit path must refuse it).
        let _ = planned.entry(agent_id.clone()).or_default().add(&resources);
        placements.push(Placement {
            task_id,
            name: "task".into(),
            agent_id,
            resources,
            spec: TaskSpec::empty(),
        });
    }
    // Victims: live tasks on the placements' agents, as the snapshot shows them.
    let mut candidates: Vec<&Task> = sorted_tasks(snap)
        .into_iter()
        .filter(|t| t.holds_resources() && placements.iter().any(|p| p.agent_id == t.agent_id))
        .collect();
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let mut evictions: Vec<TaskId> = Vec::new();
    if !candidates.is_empty() {
        for k in evict {
            let id = candidates[k % candidates.len()].id.clone();
            if !evictions.contains(&id) {
                evictions.push(id);
            }
        }
    }
    Claim {
        priority,
        // Evictions need an all-or-nothing claim (an incremental one is refused as invalid).
        mode: if evictions.is_empty() || evict.len() != 1 {
            mode
        } else {
            CommitMode::AllOrNothing
        },
        evictions,
        id: ClaimId::new(id),
        role: role.into(),
        owner: "sched".into(),
        snapshot_version: snap.version(),
        check,
        placements,
    }
}

fn status_info(fresh: bool, n: u64) -> StatusInfo {
    if fresh {
        StatusInfo {
            message: Some(format!("update {n}")),
            timestamp: NOW + n,
            ..StatusInfo::default()
        }
    } else {
        StatusInfo::default()
    }
}

/// The main scenario: concurrent schedulers with stale snapshots and everything else mixed in.
fn run_scenario(agents: &[AgentSpec], roles: &[RoleSpec], ops: &[Op]) {
    let mut h = Harness::new(true);
    for (i, r) in roles.iter().enumerate() {
        h.configure_role_preemptible(ROLES[i], r.weight as f64 / 10.0, r.quota(), r.preemptible);
    }
    for (i, a) in agents.iter().enumerate() {
        h.register(None, &format!("host{i}"), a.resources(i))
            .expect("agent registers");
    }
    let mut scheds = vec![h.cell.clone(); 3];
    let mut submitted: Vec<Claim> = Vec::new();
    let mut next_task = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let agent_op = matches!(op, Op::SetAgent(..) | Op::Reregister(..) | Op::Resize(..));
        if agent_op && h.cell.agent_count() == 0 {
            // Every agent was gone and collected.
            continue;
        }
        match op {
            Op::Snapshot(s) => scheds[*s] = h.cell.clone(),
            Op::Claim {
                sched,
                role,
                mode,
                check,
                placements,
                priority,
                evict,
            } => {
                let id = format!("claim{step}");
                let claim = build_claim(
                    &scheds[*sched],
                    id,
                    ROLES[*role],
                    *mode,
                    *check,
                    placements,
                    &mut next_task,
                    *priority,
                    evict,
                );
                h.claim(&claim);
                submitted.push(claim);
            }
            Op::Resubmit(k) => {
                if !submitted.is_empty() {
                    let claim = submitted[k % submitted.len()].clone();
                    h.claim(&claim);
                }
            }
            Op::Status(k, state, fresh) => {
                if h.cell.task_count() > 0 {
                    let id = sorted_tasks(&h.cell)[k % h.cell.task_count()].id.clone();
                    h.status(&id, *state, status_info(*fresh, step as u64));
                }
            }
            Op::Kill(k) => {
                if h.cell.task_count() > 0 {
                    let id = sorted_tasks(&h.cell)[k % h.cell.task_count()].id.clone();
                    h.kill(&id);
                }
            }
            Op::SetAgent(k, gone) => {
                let id = sorted_agents(&h.cell)[k % h.cell.agent_count()].id.clone();
                h.set_agent(
                    &id,
                    if *gone {
                        AgentState::Gone
                    } else {
                        AgentState::Unreachable
                    },
                );
            }
            Op::Reregister(k, kind) => {
                let a = sorted_agents(&h.cell)[k % h.cell.agent_count()].clone();
                let res = match kind {
                    0 => a.total.clone(),
                    1 => a.allocated.clone(),
                    _ => scale(&a.total, 50),
                };
                h.register(Some(&a.id), &a.hostname, res);
            }
            Op::Resize(k, pct) => {
                let a = sorted_agents(&h.cell)[k % h.cell.agent_count()].clone();
                h.resize(&a.id, scale(&a.total, *pct));
            }
            Op::Collect {
                sched,
                keep,
                pin,
                below,
                aged,
            } => h.collect(&scheds[*sched], *keep, *pin, *below, *aged),
        }
    }
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Properties 1, 2, 3, 5, 6, 7, 8 over random interleavings of stale schedulers, status
    /// updates, kills, agent state changes, re-registrations and resizes.
    #[test]
    fn concurrent_schedulers_keep_every_invariant(
        agents in prop::collection::vec(agent_spec(), 1..6),
        roles in prop::collection::vec(role_spec(), 3),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run_scenario(&agents, &roles, &ops);
    }

    /// Property 4: random status updates (repeats and illegal ones included) keep the invariants;
    /// once every task is terminal nothing is allocated or consumed any more.
    #[test]
    fn terminal_tasks_free_resources_exactly_once(
        agents in prop::collection::vec(agent_spec(), 1..4),
        tasks in prop::collection::vec((any::<usize>(), 1u32..=10, 1u32..=128, 0usize..3), 1..12),
        updates in prop::collection::vec((any::<usize>(), task_state(), any::<bool>(), prop::bool::weighted(0.1)), 0..50),
        finals in prop::collection::vec(terminal_state(), 12),
    ) {
        let mut h = Harness::new(true);
        let ids: Vec<AgentId> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| h.register(None, &format!("h{i}"), a.resources(i)).unwrap())
            .collect();
        for (i, &(a, cpus, mem, role)) in tasks.iter().enumerate() {
            let p = Placement {
                task_id: TaskId::new(format!("t{i}")),
                name: String::new(),
                agent_id: ids[a % ids.len()].clone(),
                resources: set(vec![scalar("cpus", UNRESERVED, cpus as i64 * 100), scalar("mem", UNRESERVED, mem as i64 * 1000)]),
                spec: TaskSpec::empty(),
            };
            let claim = claim_of(&format!("k{i}"), ROLES[role], h.cell.version(), CommitMode::Incremental, ConflictCheck::Fine, vec![p]);
            h.claim(&claim);
        }
        prop_assume!(h.cell.task_count() > 0);
        for (n, &(k, state, fresh, kill)) in updates.iter().enumerate() {
            let id = sorted_tasks(&h.cell)[k % h.cell.task_count()].id.clone();
            if kill {
                h.kill(&id);
            } else {
                h.status(&id, state, status_info(fresh, n as u64));
            }
        }
        let ids: Vec<TaskId> = sorted_tasks(&h.cell).iter().map(|t| t.id.clone()).collect();
        for (i, id) in ids.iter().enumerate() {
            let end = if h.cell.task(id).unwrap().state.is_terminal() { h.cell.task(id).unwrap().state } else { finals[i % finals.len()] };
            h.status(id, end, StatusInfo::default());
            // Repeated (at-least-once) and contradicting terminal updates change nothing.
            h.status(id, end, StatusInfo::default());
            let other = if end == TaskState::Finished { TaskState::Failed } else { TaskState::Finished };
            h.status(id, other, StatusInfo::default());
            h.kill(id);
        }
        for t in h.cell.tasks() {
            prop_assert!(t.state.is_terminal());
        }
        for a in h.cell.agents() {
            prop_assert!(a.allocated.is_empty(), "agent {} still holds {}", a.id, a.allocated);
        }
        for r in h.cell.roles() {
            prop_assert!(r.consumed.is_empty(), "role {} still consumes {}", r.name, r.consumed);
        }
        // Everything registered is free again.
        let mut total = ResourceSet::new();
        for a in h.cell.agents() {
            total.add(&a.total).unwrap();
        }
        let free: BTreeMap<String, Milli> = h.cell.cluster_free().into_iter().filter(|(_, m)| m.0 != 0).collect();
        let want: BTreeMap<String, Milli> = total.scalar_totals().into_iter().map(|(n, m)| (n.to_string(), m)).collect();
        prop_assert_eq!(free, want);
        check_replay(&h.cell, &h.log);
        check_restart(&h.cell);
    }

    /// Property 6: after an agent moves past a snapshot, coarse claims are rejected on it and
    /// fine claims still commit when the resources are free; unmoved agents accept both.
    #[test]
    fn coarse_rejects_moved_agents_fine_accepts_free_resources(
        cpus in 4u32..=32,
        mover in 0u8..3,
        mode in mode(),
        want in 1u32..=10,
    ) {
        let mut h = Harness::new(true);
        let res = set(vec![scalar("cpus", UNRESERVED, cpus as i64 * 1000), scalar("mem", UNRESERVED, 4_000_000)]);
        let a = h.register(None, "a", res.clone()).unwrap();
        let b = h.register(None, "b", res.clone()).unwrap();
        let warm = claim_of("warm", "web", h.cell.version(), CommitMode::AllOrNothing, ConflictCheck::Fine, vec![placement("w", &a, "cpus:1;mem:100")]);
        h.claim(&warm).unwrap();
        let snapshot = h.cell.clone();
        match mover {
            0 => {
                let c = claim_of("other", "db", h.cell.version(), CommitMode::AllOrNothing, ConflictCheck::Fine, vec![placement("o", &a, "cpus:1;mem:100")]);
                h.claim(&c).unwrap();
            }
            1 => h.status(&TaskId::new("w"), TaskState::Finished, StatusInfo::default()),
            _ => h.resize(&a, scale(&res, 200)),
        }
        prop_assert!(h.cell.agent(&a).unwrap().version > snapshot.version());
        prop_assert!(h.cell.agent(&b).unwrap().version <= snapshot.version());
        let want = format!("cpus:{};mem:10", want as f64 / 10.0);
        for check in [ConflictCheck::Coarse, ConflictCheck::Fine] {
            let mut h2 = Harness { cell: h.cell.clone(), now: h.now, ..Harness::new(true) };
            let c = claim_of("late", "web", snapshot.version(), mode, check, vec![placement("x", &a, &want), placement("y", &b, &want)]);
            let out = h2.claim(&c).unwrap();
            match check {
                ConflictCheck::Coarse => {
                    let moved = h.cell.agent(&a).unwrap().version;
                    prop_assert_eq!(&out.placements[0].rejected, &Some(RejectReason::AgentVersionMoved { agent_version: moved }));
                    let want_b = if mode == CommitMode::Incremental { None } else { Some(RejectReason::GangAborted) };
                    prop_assert_eq!(&out.placements[1].rejected, &want_b);
                }
                ConflictCheck::Fine => prop_assert_eq!(out.committed_count(), 2),
            }
        }
    }

    /// Property 9: no text makes the parser panic.
    #[test]
    fn parse_never_panics_on_any_text(s in any::<String>()) {
        let _ = ResourceSet::parse(&s);
    }

    /// Property 9: near-valid text parses or fails cleanly; what parses prints back to itself.
    #[test]
    fn parse_near_valid_text_round_trips(parts in prop::collection::vec((res_name(), res_role(), res_value()), 0..6), sep in prop::sample::select(vec![";", "; ", ";;", ","])) {
        let text = parts
            .iter()
            .map(|(n, r, v)| match r {
                Some(r) => format!("{n}({r}):{v}"),
                None => format!("{n}:{v}"),
            })
            .collect::<Vec<_>>()
            .join(sep);
        if let Ok(s) = ResourceSet::parse(&text) {
            let printed = s.to_string();
            let back = ResourceSet::parse(&printed).unwrap_or_else(|e| panic!("{text} -> {printed}: {e}"));
            prop_assert_eq!(&back, &s);
            let back: ResourceSet = json_roundtrip(&s);
            prop_assert_eq!(&back, &s);
        }
    }

    /// Property 9: malformed claims get a clean rejection (Invalid) or per-placement reasons.
    #[test]
    fn malformed_claims_are_rejected_cleanly(
        id in prop_oneof![Just(String::new()), Just("ok".to_string()), Just("bad\u{7}".to_string()), Just("x".repeat(300))],
        role in prop::sample::select(vec!["web", "", "-x", "a b", ".", "..", "/r", "r/", "*", "db", "a\\b"]),
        ahead in prop::bool::weighted(0.1),
        placements in prop::collection::vec((
            prop::sample::select(vec!["", "t1", "t2", "t1", "t\n"]),
            prop::sample::select(vec!["known", "ghost", "", "gone"]),
            prop::sample::select(vec!["cpus:1", "", "cpus:0", "cpus:1000", "ports:[1-2]", "cpus(db):1", "gpus:1", "mem:10;ports:[31000-31000]", "zones:{a}"]),
        ), 0..5),
        mode in mode(),
        check in check(),
    ) {
        let mut h = Harness::new(true);
        let known = h.register(None, "k", rs("cpus:4;mem:1024;ports:[31000-31010];cpus(db):1;zones:{a,b}")).unwrap();
        let gone = h.register(None, "g", rs("cpus:4;mem:1024")).unwrap();
        h.set_agent(&gone, AgentState::Gone);
        let claim = Claim {
            priority: 0,
            evictions: vec![],
            id: ClaimId::new(&id),
            role: role.to_string(),
            owner: String::new(),
            snapshot_version: h.cell.version() + ahead as u64,
            mode,
            check,
            placements: placements
                .iter()
                .map(|(t, a, r)| Placement {
                    task_id: TaskId::new(t),
                    name: String::new(),
                    agent_id: match *a {
                        "known" => known.clone(),
                        "gone" => gone.clone(),
                        other => AgentId::new(other),
                    },
                    resources: rs(r),
                    spec: TaskSpec::empty(),
                })
                .collect(),
        };
        let bad_id = |s: &str| s.is_empty() || s.len() > 256 || s.chars().any(char::is_control);
        let bad_role = role.is_empty() || role == "." || role == ".." || role.starts_with('-') || role.starts_with('/')
            || role.ends_with('/') || role.chars().any(|c| c.is_whitespace() || c.is_control() || c == '\\');
        let invalid = bad_id(&id) || bad_role || ahead || claim.placements.is_empty()
            || claim.placements.iter().any(|p| bad_id(p.task_id.as_str()) || p.resources.is_empty());
        let before = h.cell.version();
        let out = h.claim(&claim);
        prop_assert_eq!(out.is_none(), invalid, "{:?}", claim);
        if let Some(out) = out {
            for (p, o) in claim.placements.iter().zip(&out.placements) {
                if p.agent_id.as_str() == "ghost" || p.agent_id.as_str().is_empty() {
                    prop_assert!(matches!(o.rejected, Some(RejectReason::UnknownAgent | RejectReason::DuplicateTaskId | RejectReason::GangAborted)), "{:?}", o);
                }
                if p.agent_id == gone {
                    prop_assert!(!o.committed);
                }
            }
        } else {
            prop_assert_eq!(h.cell.version(), before);
        }
    }
}

fn res_name() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "cpus", "mem", "ports", "zones", "", " gpus ", "c(pus", "x)", "a[", "disk",
    ])
    .prop_map(String::from)
}

fn res_role() -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(
        0.3,
        prop::sample::select(vec!["web", "", " db ", "a(b)", "(", "*"]).prop_map(String::from),
    )
}

fn res_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..10_000_000).prop_map(|n| format!("{}", n as f64 / 1000.0)),
        prop::sample::select(vec![
            "-1", "NaN", "inf", "1e300", "1e12", "abc", "", "0", " 2 ", "0.0005"
        ])
        .prop_map(String::from),
        prop::collection::vec((0u64..70_000, 0u64..70_000), 0..4).prop_map(|v| {
            format!(
                "[{}]",
                v.iter()
                    .map(|(b, e)| format!("{b}-{e}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }),
        prop::sample::select(vec![
            "[1-",
            "[a]",
            "[5-1]",
            "[0-18446744073709551615]",
            "[1-2,,3-4]",
            "[ 1 - 2 ]",
            "[-]"
        ])
        .prop_map(String::from),
        prop::collection::vec("[a-c]{0,2}", 0..4).prop_map(|v| format!("{{{}}}", v.join(","))),
        prop::sample::select(vec!["{", "{}", "{a}}", "}", "{a,,b}"]).prop_map(String::from),
    ]
}

// ---------------------------------------------------------------------------------------------
// Deterministic examples
// ---------------------------------------------------------------------------------------------

fn two_agents(h: &mut Harness) -> (AgentId, AgentId) {
    let a = h
        .register(None, "a", rs("cpus:4;mem:1024;ports:[31000-31009]"))
        .unwrap();
    let b = h.register(None, "b", rs("cpus:2;mem:512")).unwrap();
    (a, b)
}

#[test]
fn gang_claim_is_all_in_or_all_out() {
    let mut h = Harness::new(true);
    let (a, b) = two_agents(&mut h);
    let v = h.cell.version();
    let c = claim_of(
        "g1",
        "web",
        v,
        CommitMode::AllOrNothing,
        ConflictCheck::Fine,
        vec![
            placement("t1", &a, "cpus:1"),
            placement("t2", &b, "cpus:3"),
            placement("t3", &a, "cpus:1"),
        ],
    );
    let out = h.claim(&c).unwrap();
    assert_eq!(out.committed_count(), 0);
    assert_eq!(out.placements[0].rejected, Some(RejectReason::GangAborted));
    assert_eq!(
        out.placements[1].rejected,
        Some(RejectReason::InsufficientResources {
            resource: "cpus".into()
        })
    );
    assert_eq!(out.placements[2].rejected, Some(RejectReason::GangAborted));
    assert_eq!(h.cell.task_count(), 0);
    let c = Claim {
        id: ClaimId::new("i1"),
        mode: CommitMode::Incremental,
        ..c
    };
    let out = h.claim(&c).unwrap();
    assert_eq!(
        out.placements
            .iter()
            .map(|o| o.committed)
            .collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(h.cell.task_count(), 2);
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

#[test]
fn claim_ids_are_idempotent_once_committed() {
    let mut h = Harness::new(true);
    let (a, _) = two_agents(&mut h);
    let v = h.cell.version();
    let c = claim_of(
        "c1",
        "web",
        v,
        CommitMode::AllOrNothing,
        ConflictCheck::Fine,
        vec![placement("t1", &a, "cpus:1")],
    );
    let first = h.claim(&c).unwrap();
    assert_eq!(first.committed_count(), 1);
    h.status(
        &TaskId::new("t1"),
        TaskState::Finished,
        StatusInfo::default(),
    );
    // Later, with a different body under the same id: still the original outcome, nothing new.
    let version = h.cell.version();
    let again = claim_of(
        "c1",
        "db",
        0,
        CommitMode::Incremental,
        ConflictCheck::Coarse,
        vec![placement("t9", &a, "cpus:1")],
    );
    assert_eq!(h.claim(&again).unwrap(), first);
    assert_eq!(h.cell.version(), version);
    assert!(h.cell.task(&TaskId::new("t9")).is_none());

    // A claim that committed nothing is not recorded: the same id may be retried.
    let big = claim_of(
        "c2",
        "web",
        version,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![placement("t2", &a, "cpus:4")],
    );
    h.status(
        &TaskId::new("t1"),
        TaskState::Finished,
        StatusInfo::default(),
    );
    let c3 = claim_of(
        "c3",
        "web",
        version,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![placement("t3", &a, "cpus:1")],
    );
    h.claim(&c3).unwrap();
    let out = h.claim(&big).unwrap();
    assert_eq!(out.committed_count(), 0);
    assert!(h.cell.claim(&big.id).is_none());
    h.status(&TaskId::new("t3"), TaskState::Killed, StatusInfo::default());
    let out = h.claim(&big).unwrap();
    assert_eq!(out.committed_count(), 1);
    assert_eq!(h.claim(&big).unwrap(), out);
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

#[test]
fn oversized_claims_and_specs_are_invalid() {
    let mut h = Harness::new(false);
    let (a, _) = two_agents(&mut h);
    let v = h.cell.version();
    let many: Vec<Placement> = (0..=shoal_core::limits::CLAIM_PLACEMENTS_MAX)
        .map(|i| placement(&format!("t{i}"), &a, "cpus:0.001"))
        .collect();
    let c = claim_of(
        "many",
        "web",
        v,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        many,
    );
    assert!(matches!(
        h.cell.commit(NOW, &Command::Claim(c)),
        Err(Rejection::Invalid(_))
    ));
    let mut p = placement("big", &a, "cpus:1");
    p.spec = TaskSpec::new(&format!(
        "\"{}\"",
        "x".repeat(shoal_core::limits::TASK_SPEC_BYTES_MAX)
    ));
    let c = claim_of(
        "big",
        "web",
        v,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![p],
    );
    assert!(h.claim(&c).is_none());
    let c = claim_of(
        "ahead",
        "web",
        v + 1,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![placement("t", &a, "cpus:1")],
    );
    assert!(h.claim(&c).is_none());
    assert_eq!(h.cell.version(), v);
}

#[test]
fn quota_limit_and_guarantees_hold() {
    let mut h = Harness::new(true);
    let (a, b) = two_agents(&mut h);
    assert!(h.configure_role(
        "web",
        1.0,
        Quota {
            guarantee: ResourceSet::new(),
            limit: Some(rs("cpus:2"))
        }
    ));
    assert!(h.configure_role(
        "db",
        1.0,
        Quota {
            guarantee: rs("cpus:2"),
            limit: None
        }
    ));
    assert!(!h.configure_role(
        "bad",
        1.0,
        Quota {
            guarantee: rs("cpus:3"),
            limit: Some(rs("cpus:2"))
        }
    ));
    assert!(!h.configure_role("zero", 0.0, Quota::default()));
    let v = h.cell.version();
    let c = claim_of(
        "w",
        "web",
        v,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![
            placement("w1", &a, "cpus:1.5"),
            placement("w2", &b, "cpus:1"),
            placement("w3", &b, "cpus:0.5"),
        ],
    );
    let out = h.claim(&c).unwrap();
    assert_eq!(
        out.placements[1].rejected,
        Some(RejectReason::QuotaLimit {
            resource: "cpus".into()
        })
    );
    assert_eq!(out.committed_count(), 2);
    // 6 cpus in the cell, web holds 2, db is guaranteed 2: batch may take 2 at most.
    let c = claim_of(
        "b",
        "batch",
        v,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![
            placement("b1", &a, "cpus:2"),
            placement("b2", &b, "cpus:0.5"),
        ],
    );
    let out = h.claim(&c).unwrap();
    assert_eq!(
        out.placements[1].rejected,
        Some(RejectReason::QuotaHeadroom {
            resource: "cpus".into()
        })
    );
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

#[test]
fn agent_lifecycle_frees_and_restores() {
    let mut h = Harness::new(true);
    let (a, _) = two_agents(&mut h);
    let v = h.cell.version();
    let c = claim_of(
        "c",
        "web",
        v,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![
            placement("t1", &a, "cpus:1;ports:[31000-31001]"),
            placement("t2", &a, "cpus:1"),
        ],
    );
    h.claim(&c).unwrap();
    h.status(
        &TaskId::new("t2"),
        TaskState::Running,
        StatusInfo::default(),
    );
    h.set_agent(&a, AgentState::Unreachable);
    h.kill(&TaskId::new("t1")); // not reachable: killed at once
    h.register(Some(&a), "a", rs("cpus:0.5")); // does not cover t2: conflict
    h.register(Some(&a), "a", rs("cpus:4;mem:1024;ports:[31000-31009]"));
    assert_eq!(
        h.cell.task(&TaskId::new("t2")).unwrap().state,
        TaskState::Running
    );
    h.set_agent(&a, AgentState::Active); // only by registering
    h.set_agent(&a, AgentState::Gone);
    h.set_agent(&a, AgentState::Unreachable); // gone is final
    h.register(Some(&a), "a", rs("cpus:4"));
    h.resize(&a, rs("cpus:8"));
    assert!(h.cell.agent(&a).unwrap().allocated.is_empty());
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

// ---------------------------------------------------------------------------------------------
// Bugs found (failing; ignored so the suite stays green)
// ---------------------------------------------------------------------------------------------

#[test]
fn regression_mixed_types_in_one_claim_panic_decide() {
    let mut cell = Cell::new(config());
    cell.commit(NOW, &register_cmd(None, "a", rs("cpus:4")))
        .unwrap();
    let a = AgentId::new("c-S1");
    let c = claim_of(
        "c",
        "web",
        1,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![
            placement("t1", &a, "cpus:1"),
            placement("t2", &a, "cpus:[1-2]"),
        ],
    );
    // Expected: the second placement is rejected (or the claim is Invalid); not a panic.
    let res = cell.commit(NOW, &Command::Claim(c));
    assert!(res.is_ok() || matches!(res, Err(Rejection::Invalid(_))));
    cell.check_invariants().unwrap();
}

#[test]
fn regression_mixed_types_across_agents_panic_apply() {
    let mut cell = Cell::new(config());
    cell.commit(NOW, &register_cmd(None, "a", rs("foo:4")))
        .unwrap();
    cell.commit(NOW, &register_cmd(None, "b", rs("foo:[1-10]")))
        .unwrap();
    let (a, b) = (AgentId::new("c-S1"), AgentId::new("c-S2"));
    let c1 = claim_of(
        "c1",
        "web",
        2,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![placement("t1", &a, "foo:1")],
    );
    cell.commit(NOW, &Command::Claim(c1)).unwrap();
    let c2 = claim_of(
        "c2",
        "web",
        3,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![placement("t2", &b, "foo:[1-2]")],
    );
    let res = cell.commit(NOW, &Command::Claim(c2)); // panics here
    assert!(res.is_ok() || res.is_err());
    cell.check_invariants().unwrap();
}

#[test]
fn regression_scalar_sums_overflow() {
    let text = ["cpus:1000000000000"; 10].join(";");
    let parsed = std::panic::catch_unwind(|| ResourceSet::parse(&text));
    assert!(
        matches!(parsed, Ok(Err(_))),
        "parse must refuse (or saturate), not panic/wrap: {parsed:?}"
    );
    // The same through the cell: ten agents of 1e15 mem overflow cluster_total.
    let mut cell = Cell::new(config());
    for i in 0..10 {
        let r = cell.commit(
            NOW,
            &register_cmd(None, &format!("h{i}"), rs("mem:1000000000000")),
        );
        assert!(r.is_ok() || r.is_err());
    }
    assert!(cell.cluster_free().values().all(|m| m.0 >= 0));
}

#[test]
fn regression_one_claim_books_one_port_twice() {
    let mut cell = Cell::new(config());
    cell.commit(
        NOW,
        &register_cmd(None, "a", rs("cpus:1;ports:[31000-31000]")),
    )
    .unwrap();
    let a = AgentId::new("c-S1");
    let c = claim_of(
        "c",
        "web",
        1,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![
            placement("t1", &a, "ports:[31000-31000]"),
            placement("t2", &a, "ports:[31000-31000]"),
        ],
    );
    let (_, reply) = cell.commit(NOW, &Command::Claim(c)).unwrap();
    let Reply::Claim { outcome } = reply else {
        panic!()
    };
    assert_eq!(
        outcome.committed_count(),
        1,
        "port 31000 was booked twice: {outcome:?}"
    );
    let finish = |t: &str| Command::UpdateTaskStatus {
        task_id: TaskId::new(t),
        state: TaskState::Finished,
        status: StatusInfo::default(),
    };
    cell.commit(NOW, &finish("t1")).unwrap();
    cell.check_invariants().unwrap();
    let _ = cell.commit(NOW, &finish("t2"));
    cell.check_invariants().unwrap();
}

#[test]
fn regression_same_port_on_two_agents_breaks_role_consumed() {
    let mut cell = Cell::new(config());
    cell.commit(
        NOW,
        &register_cmd(None, "a", rs("cpus:1;ports:[31000-31000]")),
    )
    .unwrap();
    cell.commit(
        NOW,
        &register_cmd(None, "b", rs("cpus:1;ports:[31000-31000]")),
    )
    .unwrap();
    let (a, b) = (AgentId::new("c-S1"), AgentId::new("c-S2"));
    let c = claim_of(
        "c",
        "web",
        2,
        CommitMode::AllOrNothing,
        ConflictCheck::Fine,
        vec![
            placement("t1", &a, "ports:[31000-31000]"),
            placement("t2", &b, "ports:[31000-31000]"),
        ],
    );
    cell.commit(NOW, &Command::Claim(c)).unwrap();
    cell.check_invariants().unwrap();
    let finish = |t: &str| Command::UpdateTaskStatus {
        task_id: TaskId::new(t),
        state: TaskState::Finished,
        status: StatusInfo::default(),
    };
    cell.commit(NOW, &finish("t1")).unwrap();
    cell.check_invariants().unwrap(); // fails: role web consumed {} but its tasks hold ports:[31000-31000]
    cell.commit(NOW, &finish("t2")).unwrap(); // panics: "a live task's resources are consumed"
    cell.check_invariants().unwrap();
}

/// Regression: TaskSpec inside internally tagged Event/Command used to fail to read back from
/// JSON (RawValue cannot come out of serde's buffered content).
#[test]
fn log_entries_and_commands_read_back_from_json() {
    let mut cell = Cell::new(config());
    cell.commit(NOW, &register_cmd(None, "a", rs("cpus:1")))
        .unwrap();
    let c = claim_of(
        "c",
        "web",
        1,
        CommitMode::AllOrNothing,
        ConflictCheck::Fine,
        vec![placement("t1", &AgentId::new("c-S1"), "cpus:1")],
    );
    let cmd = Command::Claim(c);
    let text = serde_json::to_string(&cmd).unwrap();
    let back: Result<Command, _> = serde_json::from_str(&text);
    assert!(back.is_ok(), "Command::Claim: {back:?} from {text}");
    let (entry, _) = cell.commit(NOW, &cmd).unwrap();
    let entry = entry.unwrap();
    let text = serde_json::to_string(&entry).unwrap();
    let back: Result<LogEntry, _> = serde_json::from_str(&text);
    assert_eq!(back.ok(), Some(entry), "{text}");
}

#[test]
fn regression_generated_agent_id_collides_with_chosen_id() {
    let mut cell = Cell::new(config());
    let chosen = AgentId::new("c-S3");
    cell.commit(NOW, &register_cmd(Some(&chosen), "one", rs("cpus:4")))
        .unwrap(); // v1
    let c = claim_of(
        "c",
        "web",
        1,
        CommitMode::Incremental,
        ConflictCheck::Fine,
        vec![placement("t", &chosen, "cpus:4")],
    );
    cell.commit(NOW, &Command::Claim(c)).unwrap(); // v2
                                                   // v3: a brand-new agent, no id: gets "c-S3" and panics (allocated cpus:4 > total cpus:1).
    let (_, reply) = cell
        .commit(NOW, &register_cmd(None, "two", rs("cpus:1")))
        .unwrap();
    assert_ne!(
        reply,
        Reply::Agent {
            agent_id: chosen.clone()
        }
    );
    assert_eq!(cell.agent_count(), 2);
    assert_eq!(cell.agent(&chosen).unwrap().hostname, "one");
}

/// Regression: the core accepted any text as a TaskSpec, but only canonical JSON (compact,
/// sorted keys) survives the JSON store: a spec that was not JSON came back wrapped in quotes,
/// one with unsorted keys or spaces came back reordered, so a restart or a watcher changed the
/// task. Every spec is now made canonical when it is made.
#[test]
fn regression_non_canonical_task_spec_changes_through_json() {
    for (raw, canonical) in [
        ("not json", r#""not json""#),
        (r#"{"b":1,"a":2}"#, r#"{"a":2,"b":1}"#),
        (r#"{ "a": 1 }"#, r#"{"a":1}"#),
        (
            r#"{"a":[1, {"d":0,"c":null}]}"#,
            r#"{"a":[1,{"c":null,"d":0}]}"#,
        ),
    ] {
        let spec = TaskSpec::new(raw);
        assert_eq!(spec.as_str(), canonical, "{raw}");
        let back: TaskSpec = json_roundtrip(&spec);
        assert_eq!(back, spec, "{raw} came back as {}", back.as_str());
        let back: TaskSpec = postcard::from_bytes(&postcard::to_allocvec(&spec).unwrap()).unwrap();
        assert_eq!(
            back,
            spec,
            "{raw} came back from postcard as {}",
            back.as_str()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Simulation
// ---------------------------------------------------------------------------------------------

/// xorshift64: enough randomness, no dependency, same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len() as u64) as usize])
    }
}

/// Prints the seed when the simulation fails.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed with seed {0}: replay with SHOAL_SIM_SEED={0}",
                self.0
            );
        }
    }
}

struct SimSched {
    role: &'static str,
    mode: CommitMode,
    check: ConflictCheck,
    snapshot: Cell,
}

#[derive(Debug, Default)]
struct SimStats {
    claims: u64,
    placements_committed: u64,
    placements_rejected: u64,
    version_moved: u64,
    resubmits: u64,
    status_updates: u64,
    kills: u64,
    agent_changes: u64,
    max_live: usize,
}

fn sim_claim(rng: &mut Rng, sched: &SimSched, id: String, next_task: &mut u64) -> Option<Claim> {
    let snap = &sched.snapshot;
    let agents: Vec<&Agent> = sorted_agents(snap)
        .into_iter()
        .filter(|a| a.state == AgentState::Active)
        .collect();
    if agents.is_empty() {
        return None;
    }
    let mut planned: HashMap<AgentId, ResourceSet> = HashMap::new();
    let mut placements = Vec::new();
    for _ in 0..1 + rng.below(5) {
        // Tasks are big enough that the cell saturates at a few hundred live tasks.
        let cpus = 500 * (2 + rng.below(15)) as i64;
        let mem = 256_000 * (1 + rng.below(16)) as i64;
        let nports = if rng.chance(30) { 1 + rng.below(2) } else { 0 };
        let start = rng.below(agents.len() as u64) as usize;
        let mut chosen = None;
        for off in 0..agents.len() {
            let a = agents[(start + off) % agents.len()];
            let mut avail = a.free();
            if let Some(p) = planned.get(&a.id) {
                avail = minus_lenient(&avail, p);
            }
            let cpu_role = if scalar_of(&avail, "cpus", sched.role) >= cpus {
                sched.role
            } else {
                UNRESERVED
            };
            if scalar_of(&avail, "cpus", cpu_role) < cpus
                || scalar_of(&avail, "mem", UNRESERVED) < mem
            {
                continue;
            }
            let ports = if nports > 0 {
                match first_ports(&avail, nports) {
                    Some(p) => Some(p),
                    None => continue,
                }
            } else {
                None
            };
            let mut v = vec![
                scalar("cpus", cpu_role, cpus),
                scalar("mem", UNRESERVED, mem),
            ];
            if let Some(p) = ports {
                v.push(port_list(p));
            }
            chosen = Some((a.id.clone(), set(v)));
            break;
        }
        if chosen.is_none() && rng.chance(20) {
            // A scheduler that asks for more than it saw free.
            let a = rng.pick(&agents).unwrap();
            chosen = Some((
                a.id.clone(),
                set(vec![
                    scalar("cpus", UNRESERVED, cpus),
                    scalar("mem", UNRESERVED, mem),
                ]),
            ));
        }
        if let Some((agent_id, resources)) = chosen {
            // A scheduler may ask for what it already planned (the commit path must refuse it).
            let _ = planned.entry(agent_id.clone()).or_default().add(&resources);
            *next_task += 1;
            placements.push(Placement {
                task_id: TaskId::new(format!("t{next_task}")),
                name: String::new(),
                agent_id,
                resources,
                spec: TaskSpec::empty(),
            });
        }
    }
    (!placements.is_empty()).then(|| Claim {
        priority: 0,
        evictions: vec![],
        id: ClaimId::new(id),
        role: sched.role.into(),
        owner: sched.role.into(),
        snapshot_version: snap.version(),
        mode: sched.mode,
        check: sched.check,
        placements,
    })
}

fn sim_next_state(rng: &mut Rng, cur: TaskState) -> TaskState {
    use TaskState::*;
    if rng.chance(8) {
        return *rng.pick(&TaskState::ALL).unwrap();
    }
    match cur {
        Staging => match rng.below(20) {
            0 => Dropped,
            1..=5 => Starting,
            _ => Running,
        },
        Starting => Running,
        Running => match rng.below(10) {
            0 => Running,
            1..=6 => Finished,
            7 => Failed,
            8 => Error,
            _ => Lost,
        },
        Killing => Killed,
        Lost | Unreachable => {
            if rng.chance(60) {
                Running
            } else {
                Gone
            }
        }
        other => other,
    }
}

fn simulate(seed: u64, steps: usize) -> SimStats {
    let _guard = SeedGuard(seed);
    let mut rng = Rng::new(seed);
    let mut stats = SimStats::default();
    let mut h = Harness::new(false);
    // check_invariants after every step; the independent recomputation (as costly again in a
    // debug build) every 10th command and at the end.
    h.check_every = std::env::var("SHOAL_SIM_CHECK_EVERY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    h.configure_role(
        "web",
        1.0,
        Quota {
            guarantee: ResourceSet::new(),
            limit: Some(rs("cpus:120;mem:200000")),
        },
    );
    h.configure_role(
        "batch",
        0.5,
        Quota {
            guarantee: ResourceSet::new(),
            limit: Some(rs("cpus:150")),
        },
    );
    h.configure_role(
        "db",
        2.0,
        Quota {
            guarantee: rs("cpus:40;mem:40000"),
            limit: None,
        },
    );
    h.configure_role("ml", 1.0, Quota::default());
    // Disjoint port numbers per agent: see `bug_same_port_on_two_agents_breaks_role_consumed`.
    let agent_resources = |rng: &mut Rng, index: u64| {
        let base = 31000 + 100 * index;
        let mut v = vec![
            scalar("cpus", UNRESERVED, 1000 * (4 + rng.below(13)) as i64),
            scalar("mem", UNRESERVED, 1_024_000 * (4 + rng.below(29)) as i64),
            port_list(vec![(base, base + rng.below(20))]),
        ];
        if rng.chance(20) {
            v.push(scalar("cpus", "db", 2000));
        }
        set(v)
    };
    for i in 0..50 {
        let r = agent_resources(&mut rng, i);
        h.register(None, &format!("host{i}"), r).unwrap();
    }
    let mut scheds: Vec<SimSched> = [
        ("web", CommitMode::AllOrNothing, ConflictCheck::Fine),
        ("batch", CommitMode::Incremental, ConflictCheck::Fine),
        ("db", CommitMode::AllOrNothing, ConflictCheck::Coarse),
        ("ml", CommitMode::Incremental, ConflictCheck::Coarse),
    ]
    .into_iter()
    .map(|(role, mode, check)| SimSched {
        role,
        mode,
        check,
        snapshot: h.cell.clone(),
    })
    .collect();
    let mut live: Vec<TaskId> = Vec::new();
    let mut claims: Vec<Claim> = Vec::new();
    let mut next_task = 0u64;
    for step in 0..steps {
        h.deep = step % 500 == 0;
        stats.max_live = stats.max_live.max(live.len());
        let roll = rng.below(100);
        if roll < 30 {
            let s = rng.below(scheds.len() as u64) as usize;
            if let Some(claim) =
                sim_claim(&mut rng, &scheds[s], format!("s{s}-{step}"), &mut next_task)
            {
                stats.claims += 1;
                let out = h.claim(&claim).expect("well-formed claim");
                stats.placements_committed += out.committed_count() as u64;
                stats.placements_rejected += (out.placements.len() - out.committed_count()) as u64;
                stats.version_moved += out
                    .placements
                    .iter()
                    .filter(|o| matches!(o.rejected, Some(RejectReason::AgentVersionMoved { .. })))
                    .count() as u64;
                live.extend(
                    out.placements
                        .iter()
                        .filter(|o| o.committed)
                        .map(|o| o.task_id.clone()),
                );
                // A rejected scheduler looks again; others keep their stale view for a while.
                if out.committed_count() < out.placements.len() || rng.chance(25) {
                    scheds[s].snapshot = h.cell.clone();
                }
                claims.push(claim);
            }
        } else if roll < 75 {
            if !live.is_empty() {
                let i = rng.below(live.len() as u64) as usize;
                let id = live[i].clone();
                let cur = h.cell.task(&id).unwrap().state;
                let next = sim_next_state(&mut rng, cur);
                h.status(&id, next, status_info(rng.chance(50), step as u64));
                stats.status_updates += 1;
                if h.cell.task(&id).unwrap().state.is_terminal() {
                    live.swap_remove(i);
                }
            }
        } else if roll < 82 {
            if let Some(id) = rng.pick(&live).cloned() {
                h.kill(&id);
                stats.kills += 1;
            }
        } else if roll < 86 {
            if let Some(c) = rng.pick(&claims).cloned() {
                h.claim(&c);
                stats.resubmits += 1;
            }
        } else if roll < 91 {
            let s = rng.below(scheds.len() as u64) as usize;
            scheds[s].snapshot = h.cell.clone();
        } else {
            stats.agent_changes += 1;
            let agents: Vec<Agent> = sorted_agents(&h.cell).into_iter().cloned().collect();
            let a = rng.pick(&agents).unwrap().clone();
            match rng.below(9) {
                0..=2 => h.set_agent(&a.id, AgentState::Unreachable),
                3 => h.set_agent(&a.id, AgentState::Gone),
                4..=6 => {
                    if let Some(u) = agents.iter().find(|x| x.state == AgentState::Unreachable) {
                        h.register(Some(&u.id), &u.hostname, u.total.clone());
                    } else {
                        h.register(Some(&a.id), &a.hostname, a.total.clone());
                    }
                }
                7 => h.resize(&a.id, scale(&a.total, 50 + rng.below(101) as i64)),
                _ => {
                    let alive = agents
                        .iter()
                        .filter(|x| x.state != AgentState::Gone)
                        .count();
                    if alive < 50 {
                        let r = agent_resources(&mut rng, 50 + step as u64);
                        h.register(None, &format!("new{step}"), r);
                    } else {
                        h.set_agent(&a.id, AgentState::Active);
                    }
                }
            }
        }
    }
    check_all(&h.cell, &h.limits);
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
    // Drain: every task ends; nothing stays allocated or consumed.
    let ids: Vec<TaskId> = sorted_tasks(&h.cell)
        .iter()
        .filter(|t| !t.state.is_terminal())
        .map(|t| t.id.clone())
        .collect();
    for id in ids {
        h.status(&id, TaskState::Finished, StatusInfo::default());
    }
    assert!(h.cell.agents().all(|a| a.allocated.is_empty()));
    assert!(h.cell.roles().all(|r| r.consumed.is_empty()));
    check_replay(&h.cell, &h.log);
    stats
}

#[test]
fn simulation_with_stale_schedulers() {
    let seed = std::env::var("SHOAL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE);
    let steps = std::env::var("SHOAL_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let stats = simulate(seed, steps);
    eprintln!("simulation seed {seed}: {stats:?}");
    assert!(
        stats.placements_committed > 500,
        "the simulation barely placed anything: {stats:?}"
    );
    assert!(
        stats.placements_rejected > 0 && stats.version_moved > 0,
        "no conflicts exercised: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Preemption
// ---------------------------------------------------------------------------------------------

fn evicting(
    id: &str,
    role: &str,
    snap: Version,
    priority: i64,
    placements: Vec<Placement>,
    victims: &[&str],
) -> Claim {
    Claim {
        priority,
        evictions: victims.iter().map(|v| TaskId::new(*v)).collect(),
        ..claim_of(
            id,
            role,
            snap,
            CommitMode::AllOrNothing,
            ConflictCheck::Fine,
            placements,
        )
    }
}

/// One agent of 2 cpus full of `batch` work at priority 10: `low1` and `low2`, a cpu each.
fn full_cell() -> (Harness, AgentId) {
    let mut h = Harness::new(true);
    let a = h
        .register(None, "a", rs("cpus:2;mem:512;ports:[31000-31001]"))
        .unwrap();
    let v = h.cell.version();
    let c = Claim {
        priority: 10,
        ..claim_of(
            "low",
            "batch",
            v,
            CommitMode::AllOrNothing,
            ConflictCheck::Fine,
            vec![
                placement("low1", &a, "cpus:1;mem:128;ports:[31000-31000]"),
                placement("low2", &a, "cpus:1;mem:128"),
            ],
        )
    };
    assert_eq!(h.claim(&c).unwrap().committed_count(), 2);
    h.status(
        &TaskId::new("low1"),
        TaskState::Running,
        StatusInfo::default(),
    );
    (h, a)
}

#[test]
fn a_higher_priority_claim_evicts_and_places_in_one_transaction() {
    let (mut h, a) = full_cell();
    let v = h.cell.version();
    // Without the eviction it does not fit.
    let plain = Claim {
        priority: 20,
        ..claim_of(
            "p",
            "web",
            v,
            CommitMode::AllOrNothing,
            ConflictCheck::Fine,
            vec![placement("high", &a, "cpus:1;mem:128;ports:[31000-31000]")],
        )
    };
    assert_eq!(h.claim(&plain).unwrap().committed_count(), 0);
    let c = evicting("e", "web", v, 20, plain.placements.clone(), &["low1"]);
    let before = h.cell.clone();
    let out = h.claim(&c).unwrap();
    assert_eq!(out.committed_count(), 1);
    // The kill comes before the launch in the one entry.
    let entry = h.log.last().unwrap();
    assert!(
        matches!(&entry.events[0], Event::TaskStatusChanged { task_id, state: TaskState::Killing, .. } if task_id.as_str() == "low1")
    );
    assert!(
        matches!(&entry.events[1], Event::ClaimCommitted { evictions, .. } if evictions.len() == 1)
    );
    let low1 = h.cell.task(&TaskId::new("low1")).unwrap().clone();
    let msg = low1.status.message.clone().unwrap();
    assert!(
        msg.contains("claim e") && msg.contains("priority 20") && msg.contains("high"),
        "{msg}"
    );
    // The victim's resources moved to the new task: the agent's books are unchanged.
    assert_eq!(
        h.cell.agent(&a).unwrap().allocated,
        before.agent(&a).unwrap().allocated
    );
    assert_eq!(h.cell.role("batch").unwrap().consumed, rs("cpus:1;mem:128"));
    // Its end frees nothing more, and keeps the preemption's reason and message.
    let alloc = h.cell.agent(&a).unwrap().allocated.clone();
    h.status(&low1.id, TaskState::Running, StatusInfo::default());
    assert_eq!(
        h.cell.task(&low1.id).unwrap().state,
        TaskState::Killing,
        "an evicted task is not running"
    );
    h.status(
        &low1.id,
        TaskState::Killed,
        StatusInfo {
            message: Some("killed by signal".into()),
            ..StatusInfo::default()
        },
    );
    let end = h.cell.task(&low1.id).unwrap();
    assert_eq!(end.status.reason.as_deref(), Some(REASON_PREEMPTED));
    assert_eq!(end.status.message.as_deref(), Some(msg.as_str()));
    assert_eq!(h.cell.agent(&a).unwrap().allocated, alloc);
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

#[test]
fn evictions_that_are_not_allowed_evict_nothing() {
    let (mut h, a) = full_cell();
    let v = h.cell.version();
    let p = || vec![placement("high", &a, "cpus:1")];
    let refused = |h: &mut Harness, c: Claim| {
        let out = h.claim(&c).unwrap();
        assert_eq!(out.committed_count(), 0, "{c:?}");
        assert!(
            matches!(
                out.placements[0].rejected,
                Some(RejectReason::EvictionRefused { .. })
            ),
            "{out:?}"
        );
    };
    // Same priority, and a lower one.
    refused(&mut h, evicting("e1", "web", v, 10, p(), &["low1"]));
    refused(&mut h, evicting("e2", "web", v, 5, p(), &["low1"]));
    // A victim on another agent.
    let b = h.register(None, "b", rs("cpus:1;mem:128")).unwrap();
    let v = h.cell.version();
    refused(
        &mut h,
        evicting(
            "e3",
            "web",
            v,
            20,
            vec![placement("high", &b, "cpus:2")],
            &["low1"],
        ),
    );
    // A role that is not preemptible.
    assert!(h.configure_role_preemptible("batch", 1.0, Quota::default(), false));
    let v = h.cell.version();
    refused(&mut h, evicting("e4", "web", v, 20, p(), &["low1"]));
    assert!(h.configure_role("batch", 1.0, Quota::default()));
    // A victim already ended.
    h.status(
        &TaskId::new("low2"),
        TaskState::Finished,
        StatusInfo::default(),
    );
    let v = h.cell.version();
    refused(&mut h, evicting("e5", "web", v, 20, p(), &["low2"]));
    // Not enough room even with the evictions: the gang fails, nothing is evicted.
    let out = h
        .claim(&evicting(
            "e6",
            "web",
            v,
            20,
            vec![placement("huge", &a, "cpus:3")],
            &["low1"],
        ))
        .unwrap();
    assert_eq!(out.committed_count(), 0);
    assert_eq!(
        h.cell.task(&TaskId::new("low1")).unwrap().state,
        TaskState::Running
    );
    // Bad input: 400 or 404, nothing changes.
    let (_, r) = h.run(&Command::Claim(Claim {
        mode: CommitMode::Incremental,
        ..evicting("e7", "web", v, 20, p(), &["low1"])
    }));
    assert!(matches!(r, Err(Rejection::Invalid(_))), "{r:?}");
    let (_, r) = h.run(&Command::Claim(evicting(
        "e8",
        "web",
        v,
        20,
        p(),
        &["low1", "low1"],
    )));
    assert!(matches!(r, Err(Rejection::Invalid(_))), "{r:?}");
    let (_, r) = h.run(&Command::Claim(evicting(
        "e9",
        "web",
        v,
        20,
        p(),
        &["nobody"],
    )));
    assert!(matches!(r, Err(Rejection::NotFound(_))), "{r:?}");
    let (_, r) = h.run(&Command::Claim(evicting("e10", "web", v, 1001, p(), &[])));
    assert!(matches!(r, Err(Rejection::Invalid(_))), "{r:?}");
    check_replay(&h.cell, &h.log);
}

#[test]
fn a_team_below_its_guarantee_evicts_teams_above_theirs_only() {
    let (mut h, a) = full_cell();
    // batch holds 2 cpus and is guaranteed 1; analytics is guaranteed 1 and holds nothing.
    let cpus = |n: &str| Quota {
        guarantee: rs(n),
        limit: None,
    };
    assert!(h.configure_role("batch", 1.0, cpus("cpus:1")));
    assert!(h.configure_role("analytics", 1.0, cpus("cpus:1")));
    // Claims at priority 0 against 10: only the guarantee rule may allow them.
    let mut try_evict = |id: &str, role: &str, task: &str, res: &str, victims: &[&str]| {
        let v = h.cell.version();
        let c = evicting(id, role, v, 0, vec![placement(task, &a, res)], victims);
        h.claim(&c).unwrap()
    };
    // Evicting both would take batch below its guarantee.
    let out = try_evict("g1", "analytics", "an1", "cpus:1", &["low1", "low2"]);
    assert!(
        matches!(&out.placements[0].rejected, Some(RejectReason::EvictionRefused { why, .. }) if why.contains("below its guarantee")),
        "{out:?}"
    );
    // Beyond its own guarantee it may not evict.
    let out = try_evict("g2", "analytics", "an1", "cpus:2", &["low1"]);
    assert_eq!(out.committed_count(), 0);
    let out = try_evict("g3", "analytics", "an1", "cpus:1", &["low2"]);
    assert_eq!(out.committed_count(), 1);
    // Now analytics is at its guarantee: it can evict no more by the guarantee rule, and
    // batch, at its own guarantee, cannot take it back by it either.
    let out = try_evict("g4", "analytics", "an2", "cpus:1", &["low1"]);
    assert_eq!(out.committed_count(), 0);
    let out = try_evict("g5", "batch", "b2", "cpus:1", &["an1"]);
    assert_eq!(out.committed_count(), 0);
    assert_eq!(
        h.cell.role("batch").unwrap().consumed.scalar("cpus"),
        Milli(1000)
    );
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

#[test]
fn an_evicted_task_on_an_agent_that_comes_back_is_killed_not_run() {
    let (mut h, a) = full_cell();
    let v = h.cell.version();
    let c = evicting(
        "e",
        "web",
        v,
        20,
        vec![placement("high", &a, "cpus:1")],
        &["low2"],
    );
    assert_eq!(h.claim(&c).unwrap().committed_count(), 1);
    h.set_agent(&a, AgentState::Unreachable);
    let low2 = h.cell.task(&TaskId::new("low2")).unwrap();
    assert_eq!(low2.state, TaskState::Unreachable);
    assert_eq!(low2.status.reason.as_deref(), Some(REASON_PREEMPTED));
    h.register(Some(&a), "a", rs("cpus:2;mem:512;ports:[31000-31001]"))
        .unwrap();
    assert_eq!(
        h.cell.task(&TaskId::new("low2")).unwrap().state,
        TaskState::Killing
    );
    assert_eq!(
        h.cell.task(&TaskId::new("low1")).unwrap().state,
        TaskState::Running
    );
    h.set_agent(&a, AgentState::Gone);
    assert!(h.cell.agent(&a).unwrap().allocated.is_empty());
    check_replay(&h.cell, &h.log);
    check_restart(&h.cell);
}

#[derive(Clone, Debug)]
enum PreemptOp {
    /// On agent `agent`, role `role` claims `cpus` at priority `priority` (tenfold), evicting
    /// `victims` of the live tasks there (lowest priority first, rotated by `skip`).
    Claim {
        agent: usize,
        role: usize,
        priority: i64,
        cpus: i64,
        victims: usize,
        skip: usize,
    },
    /// Task `n` (of the sorted tasks) reports this state.
    Status(usize, TaskState),
    Kill(usize),
}

fn preempt_op() -> impl Strategy<Value = PreemptOp> {
    prop_oneof![
        6 => (any::<usize>(), 0usize..3, 0i64..4, 1i64..=3, 0usize..4, 0usize..3).prop_map(
            |(agent, role, priority, cpus, victims, skip)| PreemptOp::Claim {
                agent, role, priority: priority * 10, cpus, victims, skip
            }),
        3 => (any::<usize>(), task_state()).prop_map(|(n, s)| PreemptOp::Status(n, s)),
        1 => any::<usize>().prop_map(PreemptOp::Kill),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Property 9 on full cells: evicting claims of every kind (allowed or not, fitting or
    /// not) keep every invariant; evictions and placements are all-or-nothing; victims are
    /// always of a lower priority or allowed by the guarantee rule; no team other than the
    /// claimant is taken below its guarantee; an evicted task's end frees nothing again.
    #[test]
    fn preemption_keeps_every_invariant(
        agents in 1usize..4,
        guarantees in prop::collection::vec((0i64..=2, prop::bool::weighted(0.8)), 3),
        fill in prop::collection::vec((0usize..3, 0i64..4), 12),
        ops in prop::collection::vec(preempt_op(), 1..40),
    ) {
        let mut h = Harness::new(false);
        for (i, (g, preemptible)) in guarantees.iter().enumerate() {
            let quota = Quota {
                guarantee: set(vec![scalar("cpus", UNRESERVED, g * 1000)]),
                limit: None,
            };
            h.configure_role_preemptible(ROLES[i], 1.0, quota, *preemptible);
        }
        let ids: Vec<AgentId> = (0..agents)
            .map(|i| h.register(None, &format!("h{i}"), rs("cpus:4;mem:1024")).unwrap())
            .collect();
        // Fill the cell: a cpu per task, random roles and priorities.
        for (k, (role, priority)) in fill.iter().enumerate() {
            let a = &ids[k % ids.len()];
            let v = h.cell.version();
            let c = Claim {
                priority: priority * 10,
                ..claim_of(&format!("fill{k}"), ROLES[*role], v, CommitMode::AllOrNothing,
                    ConflictCheck::Fine, vec![placement(&format!("f{k}"), a, "cpus:1;mem:16")])
            };
            h.claim(&c);
        }
        for (step, op) in ops.iter().enumerate() {
            match op {
                PreemptOp::Claim { agent, role, priority, cpus, victims, skip } => {
                    let a = &ids[agent % ids.len()];
                    let mut live: Vec<&Task> = h.cell.live_tasks_on(a).filter(|t| t.holds_resources()).collect();
                    live.sort_by_key(|t| (t.priority, t.id.clone()));
                    let n = live.len().max(1);
                    let evictions: Vec<TaskId> = (0..*victims)
                        .filter_map(|i| live.get((i + skip) % n).map(|t| t.id.clone()))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let v = h.cell.version();
                    let c = Claim {
                        priority: *priority,
                        evictions,
                        ..claim_of(&format!("p{step}"), ROLES[*role], v, CommitMode::AllOrNothing,
                            ConflictCheck::Fine,
                            vec![placement(&format!("p{step}"), a, &format!("cpus:{cpus};mem:16"))])
                    };
                    h.claim(&c);
                }
                PreemptOp::Status(_, _) | PreemptOp::Kill(_) if h.cell.task_count() == 0 => {}
                PreemptOp::Status(n, state) => {
                    let id = sorted_tasks(&h.cell)[n % h.cell.task_count()].id.clone();
                    h.status(&id, *state, status_info(true, step as u64));
                }
                PreemptOp::Kill(n) => {
                    let id = sorted_tasks(&h.cell)[n % h.cell.task_count()].id.clone();
                    h.kill(&id);
                }
            }
        }
        check_all(&h.cell, &h.limits);
        check_replay(&h.cell, &h.log);
        check_restart(&h.cell);
    }
}

// ---------------------------------------------------------------------------------------------
// Ids and names (issue: sandbox escape through ids; unbounded role and owner)
// ---------------------------------------------------------------------------------------------

/// A cell with one agent, and a claim of one task on it with the given id, role and owner.
fn one_task_claim(h: &mut Harness, task: &str, role: &str, owner: &str) -> Command {
    let first = h.cell.agents().next().map(|a| a.id.clone());
    let a = match first {
        Some(a) => a,
        None => h.register(None, "h", rs("cpus:4;mem:1024")).unwrap(),
    };
    let v = h.cell.version();
    let mut c = claim_of(
        &format!("c{v}"),
        role,
        v,
        CommitMode::AllOrNothing,
        ConflictCheck::Fine,
        vec![placement(task, &a, "cpus:1;mem:16")],
    );
    c.owner = owner.into();
    Command::Claim(c)
}

/// The reason text of a rejection that must be `Invalid` (400).
fn invalid(h: &mut Harness, cmd: &Command) -> String {
    match h.run(cmd).1 {
        Err(Rejection::Invalid(why)) => why,
        other => panic!("accepted or refused otherwise: {other:?}"),
    }
}

#[test]
fn task_ids_dot_dotdot_and_slashes_are_refused() {
    let mut h = Harness::new(true);
    let long = "x".repeat(limits::ID_BYTES_MAX + 1);
    for id in [
        "..",
        ".",
        "a/b/../c",
        "a/b",
        "a\\b",
        "a\nb",
        "",
        long.as_str(),
    ] {
        let cmd = one_task_claim(&mut h, id, "*", "o");
        let why = invalid(&mut h, &cmd);
        assert!(why.contains("task id"), "{id:?}: {why}");
    }
    // What Mesos allows: whitespace, dots inside, 255 bytes.
    let max = "y".repeat(limits::ID_BYTES_MAX);
    for id in ["a b", "a.b", "..a", "a..", max.as_str()] {
        let cmd = one_task_claim(&mut h, id, "*", "o");
        assert!(h.run(&cmd).1.is_ok(), "{id:?} refused");
    }
    for id in ["..", "a/b", "a\\b", "a\u{7}"] {
        assert!(
            shoal_core::cell::validate_id("executor id", id).is_err(),
            "{id:?}"
        );
    }
}

#[test]
fn a_100kb_role_and_a_1mb_owner_are_refused() {
    let mut h = Harness::new(true);
    let role = "r".repeat(100 << 10);
    let cmd = one_task_claim(&mut h, "t1", &role, "o");
    assert!(invalid(&mut h, &cmd).contains("role name"));
    let cmd = Command::ConfigureRole {
        name: role.clone(),
        weight: 1.0,
        quota: Default::default(),
        preemptible: false,
    };
    assert!(invalid(&mut h, &cmd).contains("role name"));
    let owner = "o".repeat(1 << 20);
    let cmd = one_task_claim(&mut h, "t1", "*", &owner);
    assert!(invalid(&mut h, &cmd).contains("claim owner"));
    let cmd = one_task_claim(&mut h, "t1", &"r".repeat(limits::ROLE_NAME_BYTES_MAX), "o");
    assert!(h.run(&cmd).1.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Amounts up to the maximum (issue 11, item 1: the commit thread died on arithmetic overflow)
// ---------------------------------------------------------------------------------------------

/// An amount in thousandths: often the largest, next to it, or half of it.
fn amount() -> impl Strategy<Value = i64> {
    let max = Milli::MAX.0;
    prop_oneof![Just(max), Just(max - 1), Just(1), max / 2..=max, 0..=max,]
}

#[derive(Clone, Debug)]
enum BigOp {
    /// Role, mode, placements (agent index, cpus, mem; reserved to the role when `true`).
    Claim(usize, bool, Vec<(usize, i64, i64, bool)>),
    /// Role, guarantee and limit of cpus.
    Quota(usize, i64, Option<i64>),
    Resize(usize, i64),
    Register(i64, i64),
    Gone(usize),
    Finish(usize),
}

fn big_op() -> impl Strategy<Value = BigOp> {
    prop_oneof![
        5 => (0..3usize, any::<bool>(), prop::collection::vec((0..8usize, amount(), amount(), prop::bool::weighted(0.2)), 1..4))
            .prop_map(|(r, m, p)| BigOp::Claim(r, m, p)),
        2 => (0..3usize, amount(), prop::option::of(amount())).prop_map(|(r, g, l)| BigOp::Quota(r, g, l)),
        1 => (0..8usize, amount()).prop_map(|(a, c)| BigOp::Resize(a, c)),
        1 => (amount(), amount()).prop_map(|(c, m)| BigOp::Register(c, m)),
        1 => (0..8usize).prop_map(BigOp::Gone),
        2 => (0..8usize).prop_map(BigOp::Finish),
    ]
}

/// A resource set from amounts in thousandths (zero amounts left out), or an empty set where
/// a name's sum over roles passes the largest amount (such a set cannot be built: its text or
/// JSON is refused before it reaches the cell).
fn amounts(items: &[(&str, &str, i64)]) -> ResourceSet {
    let entries = items
        .iter()
        .filter(|(_, _, m)| *m > 0)
        .map(|(n, r, m)| scalar(n, r, *m));
    ResourceSet::from_resources(entries).unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// No input panics the commit path, whatever the amounts (up to the largest) and the
    /// number of agents of the largest amount (past what the cell's sums may hold): every
    /// sum is checked in `decide`, and every invariant holds after each command.
    #[test]
    fn amounts_up_to_the_maximum_never_panic(
        agents in prop::collection::vec((amount(), amount()), 1..6),
        crowd in prop_oneof![8 => Just(0usize), 1 => 2_290..2_320usize],
        ops in prop::collection::vec(big_op(), 1..40),
    ) {
        let mut h = Harness::new(false);
        let max = Milli::MAX.0;
        // A crowd of agents of the largest amount: registered straight on the cell (the
        // harness's checks after each would be quadratic), into the harness's log.
        for i in 0..crowd {
            let cmd = register_cmd(None, &format!("crowd{i}"), amounts(&[("cpus", "*", max)]));
            match h.cell.commit(NOW, &cmd) {
                Ok((entry, _)) => h.log.extend(entry),
                Err(r) => prop_assert_eq!(r.http_status(), 400, "{}", r),
            }
        }
        h.cell.check_invariants().unwrap();
        let mut ids: Vec<AgentId> = Vec::new();
        for (i, (cpus, mem)) in agents.iter().enumerate() {
            let res = amounts(&[("cpus", "*", *cpus), ("mem", "*", *mem), ("cpus", "web", 1)]);
            if res.is_empty() {
                continue;
            }
            if let (_, Ok((_, Reply::Agent { agent_id }))) = h.run(&register_cmd(None, &format!("a{i}"), res)) {
                ids.push(agent_id);
            }
        }
        let agent = |ids: &[AgentId], i: usize| ids.get(i % ids.len().max(1)).cloned();
        for (step, op) in ops.iter().enumerate() {
            match op {
                BigOp::Claim(role, all, ps) => {
                    let role = ROLES[*role];
                    let placements: Vec<Placement> = ps.iter().enumerate().filter_map(|(k, (a, c, m, reserved))| {
                        let res = amounts(&[("cpus", if *reserved { role } else { "*" }, *c), ("mem", "*", *m)]);
                        (!res.is_empty()).then(|| Placement {
                            task_id: TaskId::new(format!("t{step}.{k}")),
                            name: String::new(),
                            agent_id: agent(&ids, *a).unwrap_or_else(|| AgentId::new("none")),
                            resources: res,
                            spec: TaskSpec::empty(),
                        })
                    }).collect();
                    let mode = if *all { CommitMode::AllOrNothing } else { CommitMode::Incremental };
                    let c = claim_of(&format!("c{step}"), role, h.cell.version(), mode, ConflictCheck::Fine, placements);
                    if let (_, Err(r)) = h.run(&Command::Claim(c)) {
                        prop_assert_eq!(r.http_status(), 400, "{}", r);
                    }
                }
                BigOp::Quota(role, g, l) => {
                    let quota = Quota {
                        guarantee: amounts(&[("cpus", "*", *g)]),
                        limit: l.map(|l| amounts(&[("cpus", "*", l.max(*g))])),
                    };
                    let _ = h.run(&Command::ConfigureRole { name: ROLES[*role].into(), weight: 1.0, quota, preemptible: true });
                }
                BigOp::Resize(a, cpus) => {
                    if let Some(id) = agent(&ids, *a) {
                        let total = amounts(&[("cpus", "*", *cpus), ("mem", "*", max), ("cpus", "web", 1)]);
                        if total.is_empty() {
                            continue;
                        }
                        let _ = h.run(&Command::UpdateAgentResources { agent_id: id, total });
                    }
                }
                BigOp::Register(cpus, mem) => {
                    let res = amounts(&[("cpus", "*", *cpus), ("mem", "*", *mem)]);
                    if !res.is_empty() {
                        if let (_, Ok((_, Reply::Agent { agent_id }))) = h.run(&register_cmd(None, &format!("r{step}"), res)) {
                            ids.push(agent_id);
                        }
                    }
                }
                BigOp::Gone(a) => {
                    if let Some(id) = agent(&ids, *a) {
                        let _ = h.run(&Command::SetAgentState { agent_id: id, state: AgentState::Gone });
                    }
                }
                BigOp::Finish(n) => {
                    let live: Vec<TaskId> = h.cell.tasks().filter(|t| !t.state.is_terminal()).map(|t| t.id.clone()).collect();
                    if !live.is_empty() {
                        let id = live[n % live.len()].clone();
                        let _ = h.run(&Command::UpdateTaskStatus { task_id: id, state: TaskState::Finished, status: status_info(true, step as u64) });
                    }
                }
            }
        }
        check_all(&h.cell, &h.limits);
        check_replay(&h.cell, &h.log);
        check_restart(&h.cell);
    }
}
