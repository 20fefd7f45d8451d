//! The cell: the shared state and its one commit path.
//!
//! Every mutation — an agent registering, a claim, a kill, a status update, a role's quota —
//! arrives as a [`Command`]. [`Cell::decide`] validates it against the current state without
//! changing anything and returns either a [`Rejection`] (bad input; nothing changes) or the
//! [`Event`]s it commits plus the reply for the caller. [`Cell::apply`] folds events into the
//! state; it is infallible and asserts the invariants. The master's shell runs
//! `decide → apply → persist → acknowledge → publish`; watch clients run only `apply`.
//!
//! The state is made of persistent maps (`imbl`), so a snapshot is an O(1) clone that readers
//! keep while the writer goes on: readers never block writers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use imbl::{HashMap as PMap, OrdMap};
use serde::{Deserialize, Serialize};

use crate::gc::{CollectedCounts, Retention};
use crate::limits;
use crate::model::*;
use crate::records::{NoRecords, Records};
use crate::resources::{Milli, Name, ResourceSet, UNRESERVED};
use crate::task::TaskState;

mod agents;
mod apply;
mod claims;
mod collect;
mod holds;
mod roles;
mod tasks;
mod validate;

use validate::{not_found_agent, not_found_task, too_many, validate_owner};
pub use validate::{validate_id, validate_role_name};

/// A mutation of the cell. Each one commits atomically or not at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", bound = "")]
pub enum Command<R: Records = NoRecords> {
    RegisterAgent(AgentRegistration),
    UpdateAgentResources {
        agent_id: AgentId,
        total: ResourceSet,
    },
    SetAgentState {
        agent_id: AgentId,
        state: AgentState,
    },
    Claim(Claim),
    KillTask {
        task_id: TaskId,
    },
    UpdateTaskStatus {
        task_id: TaskId,
        state: TaskState,
        status: StatusInfo,
    },
    ConfigureRole {
        name: String,
        weight: f64,
        quota: Quota,
        /// Whether claims may evict the role's tasks (see [`Cell::decide`]); default true.
        #[serde(default = "crate::model::yes")]
        preemptible: bool,
    },
    /// Offers: hold resources for frameworks. Each hold that fits is placed (the others are
    /// refused in the reply); holds are the pessimistic half of the cell.
    PlaceHolds {
        holds: Vec<Hold>,
    },
    /// Release offers (decline, rescind, expiry). Unknown ids are ignored.
    ReleaseHolds {
        offer_ids: Vec<OfferId>,
    },
    /// Use offers: their holds are released and the claim's placements (all on the offers'
    /// agent, within what the offers hold) commit in the same transaction.
    AcceptHolds {
        framework_id: String,
        offer_ids: Vec<OfferId>,
        claim: Claim,
    },
    /// Drop every hold (a new master's first command: holds do not survive a restart).
    ClearHolds,
    /// Forget finished work (see [`crate::gc`]; planned by [`Cell::collection`]). Each id is
    /// re-checked: a task only if it is terminal, a claim only if none of its tasks is left,
    /// an agent only if it is gone with no live task; the others are skipped. A claim is
    /// collected only if it committed below `claims_below`, the change log's floor: the log's
    /// entries name their claims, so a claim outlives every entry that names it.
    Collect {
        #[serde(default)]
        claims_below: Version,
        #[serde(default)]
        tasks: Vec<TaskId>,
        #[serde(default)]
        claims: Vec<ClaimId>,
        #[serde(default)]
        agents: Vec<AgentId>,
    },
    /// A change of the records a scheduler above the cell keeps (see [`Records`]). Last and
    /// untagged: it is written as the records' own command, with its own `"type"`.
    #[serde(untagged)]
    Records(R::Command),
}

/// What an agent says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRegistration {
    /// Set when an agent that registered before comes back.
    #[serde(default)]
    pub agent_id: Option<AgentId>,
    pub hostname: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub domain: Option<FaultDomain>,
    pub resources: ResourceSet,
}

/// Why a command was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", content = "message", rename_all = "snake_case")]
pub enum Rejection {
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl Rejection {
    /// The HTTP status Mesos uses for this kind of refusal.
    pub fn http_status(&self) -> u16 {
        match self {
            Rejection::Invalid(_) => 400,
            Rejection::Forbidden(_) => 403,
            Rejection::NotFound(_) => 404,
            Rejection::Conflict(_) => 409,
        }
    }
}

/// What the caller of a committed (or idempotently repeated) command gets back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", bound = "")]
pub enum Reply<R: Records = NoRecords> {
    Agent {
        agent_id: AgentId,
    },
    Claim {
        outcome: ClaimOutcome,
    },
    /// Which holds were placed; the others did not fit any more.
    Holds {
        placed: Vec<OfferId>,
        refused: Vec<OfferId>,
    },
    Done,
    /// The reply of the records a scheduler above the cell keeps. Last and untagged: it is
    /// written as the records' own reply, with its own `"type"`.
    #[serde(untagged)]
    Records(R::Reply),
}

/// The result of deciding a command: what to commit (possibly nothing) and what to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision<R: Records = NoRecords> {
    pub events: Vec<Event<R>>,
    pub reply: Reply<R>,
}

/// Fixed settings of a cell, given by the master at start.
#[derive(Clone, Debug)]
pub struct CellConfig {
    /// Prefix of generated agent ids.
    pub cell_id: Arc<str>,
}

/// The shared state of a cell. Cloning it is O(1): that is a snapshot.
#[derive(Clone, Debug)]
pub struct Cell<R: Records = NoRecords> {
    cell_id: Arc<str>,
    version: Version,
    // Records sit behind `Arc`s: after a snapshot is published, the first write to a map node
    // copies the node, and copying pointers is far cheaper than deep-copying the records.
    agents: PMap<AgentId, Arc<Agent>>,
    /// Ordered by id (a B-tree): the tasks of one claim or job have neighbouring ids, so a
    /// write after a snapshot copies one leaf for many of them; with ids spread over the key
    /// space (UUIDs) it costs what a hash trie does (`examples/commit_loop.rs`).
    tasks: OrdMap<TaskId, Arc<Task>>,
    roles: OrdMap<String, Role>,
    claims: PMap<ClaimId, Arc<ClaimOutcome>>,
    holds: PMap<OfferId, Hold>,
    /// Index: the non-terminal tasks of each agent (so agent-wide changes do not scan the cell).
    live_tasks_by_agent: PMap<AgentId, imbl::HashSet<TaskId>>,
    /// Index: the terminal tasks of each owner, oldest (lowest version) first: what a
    /// collection takes from (see [`crate::gc`]).
    completed_by_owner: OrdMap<String, imbl::OrdSet<(Version, TaskId)>>,
    /// Index: claim outcomes none of whose tasks is left, by the version they committed at:
    /// a collection forgets them once the change log's floor has passed them.
    emptied_claims: imbl::OrdSet<(Version, ClaimId)>,
    /// What collections have forgotten so far.
    collected: CollectedCounts,
    /// Sum of scalar totals and allocations over agents that are not gone, for quota headroom.
    cluster_total: OrdMap<Name, i64>,
    cluster_allocated: OrdMap<Name, i64>,
    /// The records of the schedulers above the cell (see [`Records`]).
    records: R,
}

impl<R: Records> Cell<R> {
    pub fn new(config: CellConfig) -> Self {
        Cell {
            cell_id: config.cell_id,
            version: 0,
            agents: PMap::new(),
            tasks: OrdMap::new(),
            roles: OrdMap::new(),
            claims: PMap::new(),
            holds: PMap::new(),
            live_tasks_by_agent: PMap::new(),
            completed_by_owner: OrdMap::new(),
            emptied_claims: imbl::OrdSet::new(),
            collected: CollectedCounts::default(),
            cluster_total: OrdMap::new(),
            cluster_allocated: OrdMap::new(),
            records: R::default(),
        }
    }

    /// The records of the schedulers above the cell.
    pub fn records(&self) -> &R {
        &self.records
    }
    /// Puts stored records into a cell rebuilt with [`Cell::from_records`].
    pub fn restore_records(&mut self, records: R) {
        self.records = records;
    }

    /// Rebuilds a cell from stored records (the derived fields are recomputed here).
    pub fn from_records(
        config: CellConfig,
        version: Version,
        agents: impl IntoIterator<Item = Agent>,
        tasks: impl IntoIterator<Item = Task>,
        roles: impl IntoIterator<Item = Role>,
        claims: impl IntoIterator<Item = ClaimOutcome>,
    ) -> Self {
        let mut cell = Self::new(config);
        cell.version = version;
        for mut a in agents {
            a.allocated = ResourceSet::new();
            cell.agents.insert(a.id.clone(), Arc::new(a));
        }
        for mut r in roles {
            r.consumed = ResourceSet::new();
            cell.roles.insert(r.name.clone(), r);
        }
        for t in tasks {
            if !t.state.is_terminal() {
                cell.live_tasks_by_agent
                    .entry(t.agent_id.clone())
                    .or_default()
                    .insert(t.id.clone());
            } else {
                cell.index_completed(&t);
            }
            if t.holds_resources() {
                if let Some(a) = cell.agents.get_mut(&t.agent_id) {
                    Arc::make_mut(a)
                        .allocated
                        .add(&t.resources)
                        .expect("stored resources are well typed");
                }
                let role = cell
                    .roles
                    .entry(t.role.clone())
                    .or_insert_with(|| Role::new(&t.role));
                role.consumed
                    .add_scalars(&t.resources)
                    .expect("stored resources are well typed");
            }
            cell.tasks.insert(t.id.clone(), Arc::new(t));
        }
        for c in claims {
            cell.claims.insert(c.claim_id.clone(), Arc::new(c));
        }
        cell.index_emptied_claims();
        let agents: Vec<Arc<Agent>> = cell.agents.values().cloned().collect();
        for a in &agents {
            if a.state != AgentState::Gone {
                cell.add_cluster(&a.total, &a.allocated, 1);
            }
        }
        cell
    }

    pub fn cell_id(&self) -> &str {
        &self.cell_id
    }
    pub fn version(&self) -> Version {
        self.version
    }
    pub fn agent(&self, id: &AgentId) -> Option<&Agent> {
        self.agents.get(id).map(|a| a.as_ref())
    }
    /// The agent's record as the cell shares it.
    pub fn agent_record(&self, id: &AgentId) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }
    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values().map(|a| a.as_ref())
    }
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }
    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id).map(|t| t.as_ref())
    }
    /// The task's record as the cell shares it (a copy of the `Arc`, not of the task).
    pub fn task_record(&self, id: &TaskId) -> Option<&Arc<Task>> {
        self.tasks.get(id)
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| t.as_ref())
    }
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
    /// The non-terminal tasks of one agent.
    pub fn live_tasks_on<'a>(&'a self, agent: &AgentId) -> impl Iterator<Item = &'a Task> + 'a {
        self.live_tasks_by_agent
            .get(agent)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.tasks.get(id).map(|t| t.as_ref()))
    }
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }
    pub fn claim(&self, id: &ClaimId) -> Option<&ClaimOutcome> {
        self.claims.get(id).map(|c| c.as_ref())
    }
    pub fn claims(&self) -> impl Iterator<Item = &ClaimOutcome> {
        self.claims.values().map(|c| c.as_ref())
    }
    pub fn hold(&self, id: &OfferId) -> Option<&Hold> {
        self.holds.get(id)
    }
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// Decides and applies one command: the whole commit path minus IO. Returns the log entry
    /// to persist (`None` when nothing changed) and the reply.
    pub fn commit(
        &mut self,
        now: Timestamp,
        command: &Command<R>,
    ) -> Result<(Option<LogEntry<R>>, Reply<R>), Rejection> {
        let decision = self.decide(now, command)?;
        if decision.events.is_empty() {
            return Ok((None, decision.reply));
        }
        let entry = LogEntry {
            version: self.version + 1,
            events: decision.events,
        };
        self.apply(&entry);
        Ok((Some(entry), decision.reply))
    }

    /// Validates `command` against the current state. Changes nothing.
    pub fn decide(&self, now: Timestamp, command: &Command<R>) -> Result<Decision<R>, Rejection> {
        let next = self.version + 1;
        match command {
            Command::RegisterAgent(reg) => self.decide_register(now, next, reg),
            Command::UpdateAgentResources { agent_id, total } => {
                self.decide_agent_resources(agent_id, total)
            }
            Command::SetAgentState { agent_id, state } => {
                self.decide_agent_state(now, agent_id, *state)
            }
            Command::Claim(claim) => self.decide_claim(now, next, claim),
            Command::KillTask { task_id } => self.decide_kill(now, task_id),
            Command::UpdateTaskStatus {
                task_id,
                state,
                status,
            } => self.decide_task_status(now, task_id, *state, status),
            Command::PlaceHolds { holds } => self.decide_place_holds(holds),
            Command::ReleaseHolds { offer_ids } => self.decide_release_holds(offer_ids),
            Command::ClearHolds => self.decide_clear_holds(),
            Command::Collect {
                claims_below,
                tasks,
                claims,
                agents,
            } => self.decide_collect(*claims_below, tasks, claims, agents),
            Command::AcceptHolds {
                framework_id,
                offer_ids,
                claim,
            } => self.decide_accept(now, next, framework_id, offer_ids, claim),
            Command::Records(command) => {
                let (events, reply) = R::decide(self, now, next, command)?;
                Ok(Decision {
                    events: events.into_iter().map(Event::Records).collect(),
                    reply,
                })
            }
            Command::ConfigureRole {
                name,
                weight,
                quota,
                preemptible,
            } => self.decide_role(name, *weight, quota, *preemptible),
        }
    }

    /// What must stay free for roles other than `role` to reach their guarantees: per scalar,
    /// the sum of `guarantee - consumed` over those roles (where positive).
    pub fn headroom_for_others(&self, role: &str) -> BTreeMap<Name, i64> {
        let mut out = BTreeMap::new();
        for r in self.roles.values().filter(|r| r.name != role) {
            for (name, g) in r.quota.guarantee.scalar_totals() {
                let unmet = g.0 - r.consumed.scalar(&name).0;
                if unmet > 0 {
                    *out.entry(name).or_default() += unmet;
                }
            }
        }
        out
    }

    /// Recomputes every derived field from the records and checks the invariants: no agent
    /// is over-committed, derived sums match. Used by tests after every step and by the
    /// master after loading. Returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut alloc: HashMap<&AgentId, ResourceSet> = HashMap::new();
        let mut consumed: HashMap<&str, ResourceSet> = HashMap::new();
        for h in self.holds.values() {
            alloc
                .entry(&h.agent_id)
                .or_default()
                .add(&h.resources)
                .map_err(|e| format!("offer {}: {e}", h.id))?;
        }
        for t in self.tasks.values().filter(|t| t.holds_resources()) {
            alloc
                .entry(&t.agent_id)
                .or_default()
                .add(&t.resources)
                .map_err(|e| e.to_string())?;
            consumed
                .entry(t.role.as_str())
                .or_default()
                .add_scalars(&t.resources)
                .map_err(|e| e.to_string())?;
        }
        for a in self.agents.values() {
            let want = alloc.remove(&a.id).unwrap_or_default();
            if a.state != AgentState::Gone && want != a.allocated {
                return Err(format!(
                    "agent {}: allocated {} but its tasks hold {}",
                    a.id, a.allocated, want
                ));
            }
            if !a.total.contains(&a.allocated) {
                return Err(format!(
                    "agent {} over-committed: {} > {}",
                    a.id, a.allocated, a.total
                ));
            }
        }
        if let Some((id, _)) = alloc.into_iter().next() {
            return Err(format!("live tasks on unknown agent {id}"));
        }
        let indexed: usize = self.completed_by_owner.values().map(|s| s.len()).sum();
        let terminal = self.tasks.values().filter(|t| t.state.is_terminal());
        let mut terminal_count = 0;
        for t in terminal {
            terminal_count += 1;
            let listed = self
                .completed_by_owner
                .get(&t.owner)
                .is_some_and(|s| s.contains(&(t.version, t.id.clone())));
            if !listed {
                return Err(format!(
                    "terminal task {} is not in the completed index",
                    t.id
                ));
            }
        }
        if indexed != terminal_count {
            return Err(format!(
                "the completed index lists {indexed} tasks, the cell has {terminal_count} terminal"
            ));
        }
        for r in self.roles.values() {
            let want = consumed.remove(r.name.as_str()).unwrap_or_default();
            if want != r.consumed {
                return Err(format!(
                    "role {}: consumed {} but its tasks hold {}",
                    r.name, r.consumed, want
                ));
            }
        }
        Ok(())
    }

    /// Free scalar resources of the whole cell (agents that are not gone).
    pub fn cluster_free(&self) -> BTreeMap<String, Milli> {
        self.cluster_total
            .iter()
            .map(|(k, t)| {
                (
                    k.to_string(),
                    Milli(t - self.cluster_allocated.get(k).copied().unwrap_or(0)),
                )
            })
            .collect()
    }
}
