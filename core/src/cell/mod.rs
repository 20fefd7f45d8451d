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

use crate::limits;
use crate::model::*;
use crate::records::{NoRecords, Records};
use crate::resources::{Milli, Name, ResourceSet, UNRESERVED};
use crate::task::TaskState;

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
                let agent = self
                    .agents
                    .get(agent_id)
                    .ok_or_else(|| not_found_agent(agent_id))?;
                if agent.state == AgentState::Gone {
                    return Err(Rejection::Forbidden(format!("agent {agent_id} is gone")));
                }
                if !total.contains(&agent.allocated) {
                    return Err(Rejection::Conflict(format!(
                        "agent {agent_id}: new total {total} does not cover what is allocated ({})",
                        agent.allocated
                    )));
                }
                self.check_cluster_total(Some(&agent.total), total)?;
                Ok(Decision {
                    events: vec![Event::AgentResourcesUpdated {
                        agent_id: agent_id.clone(),
                        total: total.clone(),
                    }],
                    reply: Reply::Done,
                })
            }
            Command::SetAgentState { agent_id, state } => {
                self.decide_agent_state(now, agent_id, *state)
            }
            Command::Claim(claim) => self.decide_claim(now, next, claim),
            Command::KillTask { task_id } => {
                let task = self
                    .tasks
                    .get(task_id)
                    .ok_or_else(|| not_found_task(task_id))?;
                if task.state.is_terminal() || task.state == TaskState::Killing {
                    return Ok(Decision {
                        events: vec![],
                        reply: Reply::Done,
                    });
                }
                let status = if task.preempted_by.is_some() {
                    // Killed again (it was lost meanwhile): still for the preemption.
                    StatusInfo {
                        timestamp: now,
                        ..task.status.clone()
                    }
                } else {
                    StatusInfo {
                        message: Some("kill requested".into()),
                        source: Some("SOURCE_MASTER".into()),
                        timestamp: now,
                        ..StatusInfo::default()
                    }
                };
                // A task not yet launched (or on an agent that is not there) cannot be asked to
                // stop: it is killed at once. Otherwise the agent is asked and reports back.
                let agent_active = self
                    .agents
                    .get(&task.agent_id)
                    .map(|a| a.state == AgentState::Active)
                    .unwrap_or(false);
                let state = if agent_active {
                    TaskState::Killing
                } else {
                    TaskState::Killed
                };
                Ok(Decision {
                    events: vec![Event::TaskStatusChanged {
                        task_id: task_id.clone(),
                        state,
                        status,
                    }],
                    reply: Reply::Done,
                })
            }
            Command::UpdateTaskStatus {
                task_id,
                state,
                status,
            } => {
                let task = self
                    .tasks
                    .get(task_id)
                    .ok_or_else(|| not_found_task(task_id))?;
                // An evicted task is being killed: it holds no resources any more, so it must
                // not run on. Any live state it reports (but lost or unreachable) is recorded
                // as TASK_KILLING, which sends the kill again.
                let state = &if task.preempted_by.is_some()
                    && !state.is_terminal()
                    && !matches!(state, TaskState::Lost | TaskState::Unreachable)
                {
                    TaskState::Killing
                } else {
                    *state
                };
                if task.state == *state && state.is_terminal() {
                    // A repeated terminal update (status updates are at-least-once): no change.
                    return Ok(Decision {
                        events: vec![],
                        reply: Reply::Done,
                    });
                }
                if !task.state.can_become(*state) {
                    return Err(Rejection::Conflict(format!(
                        "task {task_id} cannot go from {} to {}",
                        task.state.mesos_name(),
                        state.mesos_name()
                    )));
                }
                let same_but_time = StatusInfo {
                    timestamp: task.status.timestamp,
                    ..status.clone()
                };
                if task.state == *state && (task.status == *status || task.status == same_but_time)
                {
                    return Ok(Decision {
                        events: vec![],
                        reply: Reply::Done,
                    });
                }
                let mut status = status.clone();
                if status.timestamp == 0 {
                    status.timestamp = now;
                }
                if task.preempted_by.is_some()
                    && (*state == TaskState::Killed || !state.is_terminal())
                {
                    // An evicted task keeps the preemption's reason and message to its end
                    // (TASK_KILLED), whatever its executor says about the kill.
                    status.reason = task.status.reason.clone();
                    status.message = task.status.message.clone();
                }
                Ok(Decision {
                    events: vec![Event::TaskStatusChanged {
                        task_id: task_id.clone(),
                        state: *state,
                        status,
                    }],
                    reply: Reply::Done,
                })
            }
            Command::PlaceHolds { holds } => self.decide_place_holds(holds),
            Command::ReleaseHolds { offer_ids } => {
                let known: Vec<OfferId> = offer_ids
                    .iter()
                    .filter(|id| self.holds.contains_key(*id))
                    .cloned()
                    .collect();
                let events = if known.is_empty() {
                    vec![]
                } else {
                    vec![self.release_event(known)]
                };
                Ok(Decision {
                    events,
                    reply: Reply::Done,
                })
            }
            Command::ClearHolds => {
                let mut agent_ids: Vec<AgentId> =
                    self.holds.values().map(|h| h.agent_id.clone()).collect();
                agent_ids.sort();
                agent_ids.dedup();
                // Always an event, even with no holds here: a new master commits it first so that
                // watchers who saw holds of the previous master drop them too.
                let events = vec![Event::HoldsCleared { agent_ids }];
                Ok(Decision {
                    events,
                    reply: Reply::Done,
                })
            }
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
            } => {
                validate_role_name(name)?;
                if !(weight.is_finite() && *weight > 0.0) {
                    return Err(Rejection::Invalid(format!(
                        "role {name}: weight must be > 0"
                    )));
                }
                if let Some(limit) = &quota.limit {
                    for (res, g) in quota.guarantee.scalar_totals() {
                        let l = limit.scalar(&res);
                        if limit.scalar_totals().iter().any(|(n, _)| *n == res) && l < g {
                            return Err(Rejection::Invalid(format!(
                                "role {name}: guarantee of {res} ({}) exceeds its limit ({})",
                                g.as_f64(),
                                l.as_f64()
                            )));
                        }
                    }
                }
                self.check_guarantees(name, &quota.guarantee)?;
                Ok(Decision {
                    events: vec![Event::RoleConfigured {
                        name: name.clone(),
                        weight: *weight,
                        quota: quota.clone(),
                        preemptible: *preemptible,
                    }],
                    reply: Reply::Done,
                })
            }
        }
    }

    fn decide_register(
        &self,
        now: Timestamp,
        next: Version,
        reg: &AgentRegistration,
    ) -> Result<Decision<R>, Rejection> {
        if reg.hostname.is_empty() || reg.hostname.len() > limits::HOSTNAME_BYTES_MAX {
            return Err(Rejection::Invalid("hostname must be 1..=255 bytes".into()));
        }
        if reg.resources.is_empty() {
            return Err(Rejection::Invalid(
                "an agent must offer some resources".into(),
            ));
        }
        let existing = reg.agent_id.as_ref().and_then(|id| self.agents.get(id));
        if let Some(a) = existing {
            if a.state == AgentState::Gone {
                return Err(Rejection::Forbidden(format!(
                    "agent {} was removed; register without an id to join as a new agent",
                    a.id
                )));
            }
            if !reg.resources.contains(&a.allocated) {
                return Err(Rejection::Conflict(format!(
                    "agent {}: resources {} do not cover its tasks ({})",
                    a.id, reg.resources, a.allocated
                )));
            }
        }
        self.check_cluster_total(existing.map(|a| &a.total), &reg.resources)?;
        let id = match &reg.agent_id {
            Some(id) => {
                validate_id("agent id", id.as_str())?;
                id.clone()
            }
            None => {
                // An operator may have chosen an id of this shape: never reuse one.
                let mut id = AgentId::new(format!("{}-S{}", self.cell_id, next));
                let mut k = 1;
                while self.agents.contains_key(&id) {
                    id = AgentId::new(format!("{}-S{}-{}", self.cell_id, next, k));
                    k += 1;
                }
                id
            }
        };
        let mut events = Vec::new();
        let agent = Agent {
            id: id.clone(),
            hostname: reg.hostname.clone(),
            port: reg.port,
            attributes: reg.attributes.clone(),
            domain: reg.domain.clone(),
            total: reg.resources.clone(),
            allocated: ResourceSet::new(),
            state: AgentState::Active,
            version: next,
            registered_at: existing.map(|a| a.registered_at).unwrap_or(now),
        };
        events.push(Event::AgentRegistered { agent });
        // A returning agent's tasks that were marked unreachable come back as running: the
        // agent's own status updates correct this when it knows better.
        if existing
            .map(|a| a.state == AgentState::Unreachable)
            .unwrap_or(false)
        {
            for t in self
                .live_tasks_on(&id)
                .filter(|t| t.state == TaskState::Unreachable)
            {
                // An evicted task comes back to be killed, with its preemption's status.
                let (state, status) = match t.preempted_by {
                    Some(_) => (
                        TaskState::Killing,
                        StatusInfo {
                            timestamp: now,
                            ..t.status.clone()
                        },
                    ),
                    None => (
                        TaskState::Running,
                        StatusInfo {
                            message: Some("agent re-registered".into()),
                            // The last health verdict still holds: the agent reports changes only.
                            healthy: t.status.healthy,
                            source: Some("SOURCE_MASTER".into()),
                            reason: Some("REASON_AGENT_REREGISTERED".into()),
                            timestamp: now,
                            ..StatusInfo::default()
                        },
                    ),
                };
                events.push(Event::TaskStatusChanged {
                    task_id: t.id.clone(),
                    state,
                    status,
                });
            }
        }
        Ok(Decision {
            events,
            reply: Reply::Agent { agent_id: id },
        })
    }

    fn decide_agent_state(
        &self,
        now: Timestamp,
        agent_id: &AgentId,
        state: AgentState,
    ) -> Result<Decision<R>, Rejection> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| not_found_agent(agent_id))?;
        if agent.state == state {
            return Ok(Decision {
                events: vec![],
                reply: Reply::Done,
            });
        }
        if agent.state == AgentState::Gone {
            return Err(Rejection::Forbidden(format!("agent {agent_id} is gone")));
        }
        let (task_state, reason) = match state {
            AgentState::Active => {
                return Err(Rejection::Invalid(
                    "an agent becomes active by registering".into(),
                ));
            }
            AgentState::Unreachable => (TaskState::Unreachable, "REASON_AGENT_UNREACHABLE"),
            AgentState::Gone => (TaskState::Gone, "REASON_AGENT_REMOVED"),
        };
        let mut events = Vec::new();
        let mut live: Vec<&Task> = self
            .live_tasks_on(agent_id)
            .filter(|t| t.state.can_become(task_state))
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        for t in live {
            if t.state == task_state {
                continue;
            }
            let mut status = StatusInfo {
                message: Some(format!("agent {agent_id} is {state:?}").to_lowercase()),
                reason: Some(reason.into()),
                source: Some("SOURCE_MASTER".into()),
                timestamp: now,
                ..StatusInfo::default()
            };
            if t.preempted_by.is_some() {
                // An evicted task keeps saying why it was killed.
                status.message = t.status.message.clone();
                status.reason = t.status.reason.clone();
            }
            events.push(Event::TaskStatusChanged {
                task_id: t.id.clone(),
                state: task_state,
                status,
            });
        }
        // An agent going away rescinds its offers.
        let offers: Vec<OfferId> = self
            .holds
            .values()
            .filter(|h| h.agent_id == *agent_id)
            .map(|h| h.id.clone())
            .collect();
        if !offers.is_empty() {
            events.push(self.release_event(offers));
        }
        events.push(Event::AgentStateChanged {
            agent_id: agent_id.clone(),
            state,
        });
        Ok(Decision {
            events,
            reply: Reply::Done,
        })
    }

    fn decide_place_holds(&self, holds: &[Hold]) -> Result<Decision<R>, Rejection> {
        let mut scratch: HashMap<&AgentId, ResourceSet> = HashMap::new();
        let (mut placed, mut refused) = (Vec::new(), Vec::new());
        let mut seen: HashSet<&OfferId> = HashSet::new();
        for h in holds {
            validate_id("offer id", h.id.as_str())?;
            validate_role_name(&h.role)?;
            if h.resources.is_empty() {
                return Err(Rejection::Invalid(format!("offer {}: no resources", h.id)));
            }
            let fits = match self.agents.get(&h.agent_id) {
                Some(a)
                    if a.state == AgentState::Active
                        && !self.holds.contains_key(&h.id)
                        && seen.insert(&h.id) =>
                {
                    // The same in-place fit check as a claim's placements.
                    match scratch.get(&h.agent_id) {
                        Some(already) => {
                            let mut wanted = h.resources.clone();
                            wanted.add(already).is_ok()
                                && a.total.fits_beside(&a.allocated, &wanted)
                        }
                        None => a.total.fits_beside(&a.allocated, &h.resources),
                    }
                }
                _ => false,
            };
            if fits {
                scratch
                    .entry(&h.agent_id)
                    .or_default()
                    .add(&h.resources)
                    .expect("checked above");
                placed.push(h.clone());
            } else {
                refused.push(h.id.clone());
            }
        }
        let reply = Reply::Holds {
            placed: placed.iter().map(|h| h.id.clone()).collect(),
            refused,
        };
        let events = if placed.is_empty() {
            vec![]
        } else {
            vec![Event::HoldsPlaced { holds: placed }]
        };
        Ok(Decision { events, reply })
    }

    fn decide_accept(
        &self,
        now: Timestamp,
        next: Version,
        framework_id: &str,
        offer_ids: &[OfferId],
        claim: &Claim,
    ) -> Result<Decision<R>, Rejection> {
        if offer_ids.is_empty() {
            return Err(Rejection::Invalid("no offer ids".into()));
        }
        let mut held = ResourceSet::new();
        let mut agent: Option<&AgentId> = None;
        for id in offer_ids {
            let h = self
                .holds
                .get(id)
                .ok_or_else(|| Rejection::NotFound(format!("offer {id} is not outstanding")))?;
            if h.framework_id != framework_id {
                return Err(Rejection::Forbidden(format!(
                    "offer {id} belongs to another framework"
                )));
            }
            if agent.map(|a| *a != h.agent_id).unwrap_or(false) {
                return Err(Rejection::Invalid(
                    "offers of one accept must be of one agent".into(),
                ));
            }
            agent = Some(&h.agent_id);
            held.add(&h.resources)
                .map_err(|e| Rejection::Invalid(e.to_string()))?;
        }
        let agent = agent.expect("at least one offer").clone();
        let release = self.release_event(offer_ids.to_vec());
        if claim.placements.is_empty() {
            // An accept that launches nothing releases the offers.
            return Ok(Decision {
                events: vec![release],
                reply: Reply::Claim {
                    outcome: ClaimOutcome {
                        claim_id: claim.id.clone(),
                        committed_version: None,
                        placements: vec![],
                    },
                },
            });
        }
        // Decide the claim on the cell as it is once the offers are released, and only
        // within what the offers held.
        let mut released = self.clone();
        released.apply_event(next, &release);
        let mut within = claim.clone();
        let mut total = ResourceSet::new();
        let mut outside = HashSet::new();
        for p in &mut within.placements {
            if p.agent_id != agent {
                outside.insert(p.task_id.clone());
                continue;
            }
            let mut t = total.clone();
            if t.add(&p.resources).is_ok() && held.contains(&t) {
                total = t;
            } else {
                outside.insert(p.task_id.clone());
            }
        }
        within.placements.retain(|p| !outside.contains(&p.task_id));
        let mut decision = if within.placements.is_empty() {
            Decision {
                events: vec![],
                reply: Reply::Claim {
                    outcome: ClaimOutcome {
                        claim_id: claim.id.clone(),
                        committed_version: None,
                        placements: vec![],
                    },
                },
            }
        } else {
            released.decide_claim(now, next, &within)?
        };
        let Reply::Claim { outcome } = &mut decision.reply else {
            unreachable!("a claim answers with a claim outcome")
        };
        for p in claim
            .placements
            .iter()
            .filter(|p| outside.contains(&p.task_id))
        {
            outcome.placements.push(PlacementOutcome {
                task_id: p.task_id.clone(),
                agent_id: p.agent_id.clone(),
                committed: false,
                rejected: Some(RejectReason::InsufficientResources {
                    resource: "not in the accepted offers".into(),
                }),
            });
        }
        decision.events.insert(0, release);
        Ok(decision)
    }

    fn validate_claim(&self, claim: &Claim) -> Result<(), Rejection> {
        validate_id("claim id", claim.id.as_str())?;
        validate_role_name(&claim.role)?;
        validate_owner(&claim.owner)?;
        if claim.placements.is_empty() {
            return Err(Rejection::Invalid(format!(
                "claim {}: no placements",
                claim.id
            )));
        }
        if claim.placements.len() > limits::CLAIM_PLACEMENTS_MAX {
            return Err(too_many(
                &claim.id,
                claim.placements.len(),
                "placements",
                limits::CLAIM_PLACEMENTS_MAX,
            ));
        }
        if claim.snapshot_version > self.version {
            return Err(Rejection::Invalid(format!(
                "claim {}: snapshot version {} is ahead of the cell ({})",
                claim.id, claim.snapshot_version, self.version
            )));
        }
        if !(0..=limits::PRIORITY_MAX).contains(&claim.priority) {
            return Err(Rejection::Invalid(format!(
                "claim {}: priority {} is not within 0..={}",
                claim.id,
                claim.priority,
                limits::PRIORITY_MAX
            )));
        }
        if !claim.evictions.is_empty() {
            if claim.mode != CommitMode::AllOrNothing {
                return Err(Rejection::Invalid(format!(
                    "claim {}: evictions need mode all_or_nothing",
                    claim.id
                )));
            }
            if claim.evictions.len() > limits::CLAIM_EVICTIONS_MAX {
                return Err(too_many(
                    &claim.id,
                    claim.evictions.len(),
                    "evictions",
                    limits::CLAIM_EVICTIONS_MAX,
                ));
            }
            let mut seen = HashSet::new();
            for id in &claim.evictions {
                if !seen.insert(id) {
                    return Err(Rejection::Invalid(format!(
                        "claim {}: task {id} is evicted twice",
                        claim.id
                    )));
                }
                if !self.tasks.contains_key(id) {
                    return Err(not_found_task(id));
                }
            }
        }
        for p in &claim.placements {
            validate_id("task id", p.task_id.as_str())?;
            if p.resources.is_empty() {
                return Err(Rejection::Invalid(format!(
                    "task {}: no resources",
                    p.task_id
                )));
            }
            if p.spec.as_str().len() > limits::TASK_SPEC_BYTES_MAX {
                return Err(Rejection::Invalid(format!(
                    "task {}: task description too large",
                    p.task_id
                )));
            }
        }
        Ok(())
    }

    fn decide_claim(
        &self,
        now: Timestamp,
        next: Version,
        claim: &Claim,
    ) -> Result<Decision<R>, Rejection> {
        if let Some(outcome) = self.claims.get(&claim.id) {
            // Idempotent resubmission: the original outcome, nothing new.
            return Ok(Decision {
                events: vec![],
                reply: Reply::Claim {
                    outcome: outcome.as_ref().clone(),
                },
            });
        }
        self.validate_claim(claim)?;
        if claim.evictions.is_empty() {
            return self.decide_placements(next, claim);
        }
        if let Err((task_id, why)) = self.check_evictions(claim) {
            let reason = RejectReason::EvictionRefused { task_id, why };
            return Ok(Decision {
                events: vec![],
                reply: Reply::Claim {
                    outcome: ClaimOutcome {
                        claim_id: claim.id.clone(),
                        committed_version: None,
                        placements: claim
                            .placements
                            .iter()
                            .map(|p| PlacementOutcome {
                                task_id: p.task_id.clone(),
                                agent_id: p.agent_id.clone(),
                                committed: false,
                                rejected: Some(reason.clone()),
                            })
                            .collect(),
                    },
                },
            });
        }
        // The placements are decided on the cell as it is once the victims' resources are
        // free (an O(1) copy): every check — fit, limit, headroom — sees the evictions.
        let mut after = self.clone();
        for id in &claim.evictions {
            after.release_preempted(next, id, &claim.id);
        }
        // The coarse check compares agents' versions with the claim's snapshot: the claim's
        // own evictions are not a change it missed.
        for id in &claim.evictions {
            let agent_id = &self.tasks[id].agent_id;
            if let (Some(was), Some(a)) =
                (self.agents.get(agent_id), after.agents.get_mut(agent_id))
            {
                Arc::make_mut(a).version = was.version;
            }
        }
        let mut decision = after.decide_placements(next, claim)?;
        if decision.events.is_empty() {
            // Nothing placed: nothing is evicted either.
            return Ok(decision);
        }
        // The kills come first in the entry, so an agent hears of them before the launches.
        let first = claim.placements.first().map(|p| p.task_id.as_str());
        let message = format!(
            "preempted by claim {} of {} (role {}, priority {}) for task {}",
            claim.id,
            if claim.owner.is_empty() {
                "?"
            } else {
                &claim.owner
            },
            claim.role,
            claim.priority,
            first.unwrap_or("?"),
        );
        let kills = claim.evictions.iter().map(|id| Event::TaskStatusChanged {
            task_id: id.clone(),
            state: TaskState::Killing,
            status: StatusInfo {
                message: Some(message.clone()),
                reason: Some(REASON_PREEMPTED.into()),
                source: Some("SOURCE_MASTER".into()),
                timestamp: now,
                ..StatusInfo::default()
            },
        });
        decision.events.splice(0..0, kills);
        Ok(decision)
    }

    /// Checks a claim's evictions against the current state: each victim is running (or
    /// about to) on an agent the claim places on, its role is preemptible, and either its
    /// priority is strictly below the claim's (the **priority rule**) or the claim's role is
    /// below its guarantee even with the claim and the victim's role is another one (the
    /// **guarantee rule**). In both cases no role other than the claim's own is taken below
    /// its guarantee by the evictions. Returns the first victim refused and why.
    fn check_evictions(&self, claim: &Claim) -> Result<(), (TaskId, String)> {
        let agents: HashSet<&AgentId> = claim.placements.iter().map(|p| &p.agent_id).collect();
        let claimant_below_guarantee = self.below_guarantee_with(claim);
        let mut evicted: HashMap<&str, ResourceSet> = HashMap::new();
        for id in &claim.evictions {
            let t = self.tasks.get(id).expect("checked by validate_claim");
            let refuse = |why: String| Err((id.clone(), why));
            if !matches!(
                t.state,
                TaskState::Staging | TaskState::Starting | TaskState::Running
            ) || t.preempted_by.is_some()
            {
                return refuse(format!("it is {}", t.state.mesos_name()));
            }
            if !agents.contains(&t.agent_id) {
                return refuse(format!(
                    "it is on agent {}, where the claim places nothing",
                    t.agent_id
                ));
            }
            let role = self.roles.get(&t.role);
            if role.is_some_and(|r| !r.preemptible) {
                return refuse(format!("role {} is not preemptible", t.role));
            }
            let by_priority = t.priority < claim.priority;
            let by_guarantee = claimant_below_guarantee && t.role != claim.role;
            if !by_priority && !by_guarantee {
                return refuse(format!(
                    "its priority {} is not below the claim's {}, and role {} is not below its \
                     guarantee or the task is its own",
                    t.priority, claim.priority, claim.role
                ));
            }
            if t.role == claim.role {
                continue;
            }
            let gone = evicted.entry(t.role.as_str()).or_default();
            gone.add_scalars(&t.resources)
                .expect("a live task's resources are consumed");
            if let Some(r) = role {
                for (name, g) in r.quota.guarantee.scalar_totals() {
                    let left = r.consumed.scalar(&name).0 - gone.scalar(&name).0;
                    if t.resources.scalar(&name).0 > 0 && left < g.0 {
                        return refuse(format!(
                            "it would take role {} below its guarantee of {name}",
                            t.role
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `claim.role` has a guarantee that the claim's placements ask for, and stays
    /// within it on every guaranteed resource even with all of them.
    fn below_guarantee_with(&self, claim: &Claim) -> bool {
        let Some(role) = self.roles.get(&claim.role) else {
            return false;
        };
        let mut wanted = ResourceSet::new();
        for p in &claim.placements {
            if wanted.add_scalars(&p.resources).is_err() {
                return false;
            }
        }
        let mut asks = false;
        for (name, g) in role.quota.guarantee.scalar_totals() {
            let want = wanted.scalar(&name).0;
            asks |= want > 0;
            if role.consumed.scalar(&name).0 + want > g.0 {
                return false;
            }
        }
        asks
    }

    /// The placements of a claim, checked against this cell (its evictions, if any, already
    /// released here). A placement that would take the role's consumption of a scalar past
    /// the largest amount refuses the claim (400): that sum cannot be held.
    fn decide_placements(&self, next: Version, claim: &Claim) -> Result<Decision<R>, Rejection> {
        let role = self.roles.get(&claim.role);
        let mut scratch_agents: HashMap<&AgentId, ResourceSet> = HashMap::new();
        let mut scratch_role = ResourceSet::new();
        let mut scratch_cluster: BTreeMap<Name, i64> = BTreeMap::new();
        let mut seen_tasks: HashSet<&TaskId> = HashSet::new();
        let headroom = self.headroom_for_others(&claim.role);

        let mut outcomes = Vec::with_capacity(claim.placements.len());
        for p in &claim.placements {
            let verdict = self.check_placement(
                claim,
                p,
                role,
                &scratch_agents,
                &scratch_role,
                &scratch_cluster,
                &headroom,
                &seen_tasks,
            );
            if verdict.is_none() {
                let consumed = role.map(|r| &r.consumed);
                for (name, m) in p.resources.scalar_totals() {
                    // Each term is within `Milli::MAX`: the sum cannot overflow.
                    let held = consumed.map(|c| c.scalar(&name).0).unwrap_or(0)
                        + scratch_role.scalar(&name).0;
                    if held + m.0 > Milli::MAX.0 {
                        return Err(Rejection::Invalid(format!(
                            "claim {}: role {} would consume more {name} than the largest \
                             amount allowed ({})",
                            claim.id,
                            claim.role,
                            Milli::MAX.as_f64()
                        )));
                    }
                }
                seen_tasks.insert(&p.task_id);
                scratch_agents
                    .entry(&p.agent_id)
                    .or_default()
                    .add(&p.resources)
                    .expect("checked by check_placement");
                scratch_role
                    .add_scalars(&p.resources)
                    .expect("checked against the largest amount above");
                for (name, m) in p.resources.scalar_totals() {
                    *scratch_cluster.entry(name).or_default() += m.0;
                }
            }
            outcomes.push(PlacementOutcome {
                task_id: p.task_id.clone(),
                agent_id: p.agent_id.clone(),
                committed: verdict.is_none(),
                rejected: verdict,
            });
        }

        let any_rejected = outcomes.iter().any(|o| !o.committed);
        if claim.mode == CommitMode::AllOrNothing && any_rejected {
            for o in outcomes.iter_mut().filter(|o| o.committed) {
                o.committed = false;
                o.rejected = Some(RejectReason::GangAborted);
            }
        }
        let committed_any = outcomes.iter().any(|o| o.committed);
        let outcome = ClaimOutcome {
            claim_id: claim.id.clone(),
            committed_version: committed_any.then_some(next),
            placements: outcomes,
        };
        if !committed_any {
            // Nothing committed: nothing is recorded, so the scheduler may retry the same id
            // on fresh state.
            return Ok(Decision {
                events: vec![],
                reply: Reply::Claim { outcome },
            });
        }
        let tasks = claim
            .placements
            .iter()
            .zip(&outcome.placements)
            .filter(|(_, o)| o.committed)
            .map(|(p, _)| {
                Arc::new(Task {
                    id: p.task_id.clone(),
                    name: p.name.clone(),
                    agent_id: p.agent_id.clone(),
                    role: claim.role.clone(),
                    owner: claim.owner.clone(),
                    claim_id: claim.id.clone(),
                    resources: p.resources.clone(),
                    state: TaskState::Staging,
                    status: StatusInfo::default(),
                    spec: p.spec.clone(),
                    version: next,
                    priority: claim.priority,
                    preempted_by: None,
                })
            })
            .collect();
        Ok(Decision {
            events: vec![Event::ClaimCommitted {
                outcome: outcome.clone(),
                tasks,
                evictions: claim.evictions.clone(),
            }],
            reply: Reply::Claim { outcome },
        })
    }

    /// Refuses an agent's new total (in place of `old`, counted now) that would take the
    /// cell's sum of a scalar past [`limits::CELL_SCALAR_MILLI_MAX`].
    fn check_cluster_total(
        &self,
        old: Option<&ResourceSet>,
        total: &ResourceSet,
    ) -> Result<(), Rejection> {
        for (name, m) in total.scalar_totals() {
            let now = self.cluster_total.get(&name).copied().unwrap_or(0);
            let was = old.map(|o| o.scalar(&name).0).unwrap_or(0);
            // `now <= CELL_SCALAR_MILLI_MAX` and `m, was <= Milli::MAX`: no overflow.
            if now - was + m.0 > limits::CELL_SCALAR_MILLI_MAX {
                return Err(Rejection::Invalid(format!(
                    "resource {name}: the cell's total would pass the largest sum allowed ({})",
                    Milli(limits::CELL_SCALAR_MILLI_MAX).as_f64()
                )));
            }
        }
        Ok(())
    }

    /// Refuses a guarantee for `role` that would take the sum of a scalar's guarantees over
    /// all roles (what the headroom counts) past [`limits::CELL_SCALAR_MILLI_MAX`].
    fn check_guarantees(&self, role: &str, guarantee: &ResourceSet) -> Result<(), Rejection> {
        for (name, g) in guarantee.scalar_totals() {
            let mut sum = g.0;
            for r in self.roles.values().filter(|r| r.name != role) {
                // Each guarantee is within `Milli::MAX`, the sum so far within the bound.
                sum += r.quota.guarantee.scalar(&name).0;
                if sum > limits::CELL_SCALAR_MILLI_MAX {
                    return Err(Rejection::Invalid(format!(
                        "role {role}: the guarantees of {name} over all roles would pass the \
                         largest sum allowed ({})",
                        Milli(limits::CELL_SCALAR_MILLI_MAX).as_f64()
                    )));
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn check_placement(
        &self,
        claim: &Claim,
        p: &Placement,
        role: Option<&Role>,
        scratch_agents: &HashMap<&AgentId, ResourceSet>,
        scratch_role: &ResourceSet,
        scratch_cluster: &BTreeMap<Name, i64>,
        headroom: &BTreeMap<Name, i64>,
        seen_tasks: &HashSet<&TaskId>,
    ) -> Option<RejectReason> {
        if self.tasks.contains_key(&p.task_id) || seen_tasks.contains(&p.task_id) {
            return Some(RejectReason::DuplicateTaskId);
        }
        let Some(agent) = self.agents.get(&p.agent_id) else {
            return Some(RejectReason::UnknownAgent);
        };
        if agent.state != AgentState::Active {
            return Some(RejectReason::AgentNotActive { state: agent.state });
        }
        if let Some(other) = p.resources.reserved_roles().find(|r| *r != claim.role) {
            return Some(RejectReason::ReservationMismatch {
                role: other.to_string(),
            });
        }
        if claim.check == ConflictCheck::Coarse && agent.version > claim.snapshot_version {
            return Some(RejectReason::AgentVersionMoved {
                agent_version: agent.version,
            });
        }
        let mut combined;
        let mut wanted = &p.resources;
        if let Some(already) = scratch_agents.get(&p.agent_id) {
            // Two placements of one claim asking for the same port, or one name with two types.
            combined = p.resources.clone();
            if let Err(e) = combined.add(already) {
                let resource = match e {
                    crate::resources::ResourceError::Overlap(n)
                    | crate::resources::ResourceError::TypeMismatch(n)
                    | crate::resources::ResourceError::TooLarge(n)
                    | crate::resources::ResourceError::InvalidValue(n) => n,
                    crate::resources::ResourceError::Parse { input, .. } => input,
                };
                return Some(RejectReason::InsufficientResources { resource });
            }
            wanted = &combined;
        }
        if !agent.total.fits_beside(&agent.allocated, wanted) {
            let free = agent.free();
            return Some(RejectReason::InsufficientResources {
                resource: free.first_missing(wanted).unwrap_or_default(),
            });
        }
        if let Some(limit) = role.and_then(|r| r.quota.limit.as_ref()) {
            let consumed = role.map(|r| &r.consumed);
            for (name, cap) in limit.scalar_totals() {
                let want = p.resources.scalar(&name).0;
                if want == 0 {
                    continue;
                }
                let used =
                    consumed.map(|c| c.scalar(&name).0).unwrap_or(0) + scratch_role.scalar(&name).0;
                if used + want > cap.0 {
                    return Some(RejectReason::QuotaLimit {
                        resource: name.to_string(),
                    });
                }
            }
        }
        for (name, held) in headroom {
            let want: i64 = p
                .resources
                .iter()
                .filter(|r| r.name == *name && r.role == UNRESERVED)
                .map(|r| match r.value {
                    crate::resources::Value::Scalar(m) => m.0,
                    _ => 0,
                })
                .sum();
            if want == 0 {
                continue;
            }
            let total = self.cluster_total.get(name).copied().unwrap_or(0);
            let allocated = self.cluster_allocated.get(name).copied().unwrap_or(0)
                + scratch_cluster.get(name).copied().unwrap_or(0);
            if total - allocated - want < *held {
                return Some(RejectReason::QuotaHeadroom {
                    resource: name.to_string(),
                });
            }
        }
        None
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

    /// Folds a committed entry into the state. Infallible: `decide` validated everything;
    /// a broken invariant here is a bug, and the master stops rather than persist damage.
    pub fn apply(&mut self, entry: &LogEntry<R>) {
        assert_eq!(
            entry.version,
            self.version + 1,
            "log entries apply in order"
        );
        let v = entry.version;
        for event in &entry.events {
            self.apply_event(v, event);
        }
        self.version = v;
    }

    fn apply_event(&mut self, v: Version, event: &Event<R>) {
        match event {
            Event::AgentRegistered { agent } => {
                let mut agent = agent.clone();
                agent.version = v;
                if let Some(old) = self.agents.get(&agent.id).cloned() {
                    let old = old.as_ref();
                    agent.allocated = old.allocated.clone();
                    if old.state != AgentState::Gone {
                        self.add_cluster(&old.total, &old.allocated, -1);
                    }
                } else {
                    agent.allocated = ResourceSet::new();
                }
                assert!(
                    agent.total.contains(&agent.allocated),
                    "agent {} over-committed",
                    agent.id
                );
                self.add_cluster(&agent.total, &agent.allocated, 1);
                self.agents.insert(agent.id.clone(), Arc::new(agent));
            }
            Event::AgentResourcesUpdated { agent_id, total } => {
                let old = self
                    .agents
                    .get(agent_id)
                    .expect("decided on a known agent")
                    .clone();
                self.add_cluster(&old.total, &ResourceSet::new(), -1);
                self.add_cluster(total, &ResourceSet::new(), 1);
                let a = Arc::make_mut(self.agents.get_mut(agent_id).expect("known agent"));
                a.total = total.clone();
                a.version = v;
                assert!(
                    a.total.contains(&a.allocated),
                    "agent {agent_id} over-committed"
                );
            }
            Event::AgentStateChanged { agent_id, state } => {
                let a = self
                    .agents
                    .get(agent_id)
                    .expect("decided on a known agent")
                    .clone();
                if *state == AgentState::Gone && a.state != AgentState::Gone {
                    self.add_cluster(&a.total, &a.allocated, -1);
                }
                let a = Arc::make_mut(self.agents.get_mut(agent_id).expect("known agent"));
                a.state = *state;
                a.version = v;
            }
            Event::ClaimCommitted {
                outcome,
                tasks,
                evictions,
            } => {
                for id in evictions {
                    self.release_preempted(v, id, &outcome.claim_id);
                }
                for t in tasks {
                    // Decided with `version = v` already: share the record, do not copy it.
                    let t = if t.version == v {
                        Arc::clone(t)
                    } else {
                        let mut copy = Task::clone(t);
                        copy.version = v;
                        Arc::new(copy)
                    };
                    let a = Arc::make_mut(
                        self.agents
                            .get_mut(&t.agent_id)
                            .expect("decided on a known agent"),
                    );
                    a.allocated.add(&t.resources).expect("typed at validation");
                    a.version = v;
                    assert!(
                        a.total.contains(&a.allocated),
                        "agent {} over-committed by claim {}",
                        a.id,
                        outcome.claim_id
                    );
                    if !self.roles.contains_key(&t.role) {
                        self.roles.insert(t.role.clone(), Role::new(&t.role));
                    }
                    let role = self.roles.get_mut(&t.role).expect("inserted above");
                    role.consumed
                        .add_scalars(&t.resources)
                        .expect("typed at validation");
                    for (name, m) in t.resources.scalar_totals() {
                        *self.cluster_allocated.entry(name).or_default() += m.0;
                    }
                    self.live_tasks_by_agent
                        .entry(t.agent_id.clone())
                        .or_default()
                        .insert(t.id.clone());
                    let previous = self.tasks.insert(t.id.clone(), t);
                    assert!(previous.is_none(), "duplicate task id committed");
                }
                self.claims
                    .insert(outcome.claim_id.clone(), Arc::new(outcome.clone()));
            }
            Event::TaskStatusChanged {
                task_id,
                state,
                status,
            } => {
                let task = Arc::make_mut(
                    self.tasks
                        .get_mut(task_id)
                        .expect("decided on a known task"),
                );
                let held = task.holds_resources();
                let was_terminal = task.state.is_terminal();
                task.state = *state;
                task.status = status.clone();
                task.version = v;
                if !was_terminal && state.is_terminal() {
                    let (agent_id, role, res) = (
                        task.agent_id.clone(),
                        task.role.clone(),
                        task.resources.clone(),
                    );
                    if let Some(ids) = self.live_tasks_by_agent.get_mut(&agent_id) {
                        ids.remove(task_id);
                    }
                    // One of the two places resources are freed: on the first terminal state
                    // only, and not for an evicted task (freed when it was evicted).
                    if held {
                        self.free_resources(v, &agent_id, &role, &res);
                    }
                }
            }
            Event::RoleConfigured {
                name,
                weight,
                quota,
                preemptible,
            } => {
                let role = self
                    .roles
                    .entry(name.clone())
                    .or_insert_with(|| Role::new(name));
                role.weight = *weight;
                role.quota = quota.clone();
                role.preemptible = *preemptible;
            }
            Event::HoldsPlaced { holds } => {
                for h in holds {
                    let a = Arc::make_mut(
                        self.agents
                            .get_mut(&h.agent_id)
                            .expect("decided on a known agent"),
                    );
                    a.allocated.add(&h.resources).expect("decided to fit");
                    a.version = v;
                    assert!(
                        a.total.contains(&a.allocated),
                        "agent {} over-committed by offer {}",
                        a.id,
                        h.id
                    );
                    for (name, m) in h.resources.scalar_totals() {
                        *self.cluster_allocated.entry(name).or_default() += m.0;
                    }
                    self.holds.insert(h.id.clone(), h.clone());
                }
            }
            Event::HoldsReleased { offer_ids, .. } => {
                for id in offer_ids {
                    if let Some(h) = self.holds.remove(id) {
                        self.release_hold(v, &h);
                    }
                }
            }
            Event::HoldsCleared { .. } => {
                let holds: Vec<Hold> = self.holds.values().cloned().collect();
                self.holds = PMap::new();
                for h in &holds {
                    self.release_hold(v, h);
                }
            }
            Event::Records(event) => self.records.apply(v, event),
        }
    }

    /// Takes a live task's resources off its agent, role and the cell's sums.
    fn free_resources(&mut self, v: Version, agent_id: &AgentId, role: &str, res: &ResourceSet) {
        let gone = match self.agents.get_mut(agent_id).map(Arc::make_mut) {
            Some(a) => {
                a.allocated
                    .subtract(res)
                    .expect("a live task's resources are allocated");
                a.version = v;
                a.state == AgentState::Gone
            }
            None => true,
        };
        if let Some(r) = self.roles.get_mut(role) {
            r.consumed
                .subtract(&res.scalars_only())
                .expect("a live task's resources are consumed");
        }
        if !gone {
            for (name, m) in res.scalar_totals() {
                *self.cluster_allocated.entry(name).or_default() -= m.0;
            }
        }
    }

    /// Evicts a task for `claim`: the other place resources are freed. The task stays live
    /// (it is being killed) but holds nothing from now on.
    fn release_preempted(&mut self, v: Version, task_id: &TaskId, claim: &ClaimId) {
        let task = Arc::make_mut(
            self.tasks
                .get_mut(task_id)
                .expect("decided on a known task"),
        );
        assert!(
            task.holds_resources(),
            "evicting task {task_id} that holds nothing"
        );
        task.preempted_by = Some(claim.clone());
        task.version = v;
        let (agent_id, role, res) = (
            task.agent_id.clone(),
            task.role.clone(),
            task.resources.clone(),
        );
        self.free_resources(v, &agent_id, &role, &res);
    }

    /// The event releasing these (outstanding) holds.
    fn release_event(&self, offer_ids: Vec<OfferId>) -> Event<R> {
        let mut agent_ids: Vec<AgentId> = offer_ids
            .iter()
            .filter_map(|id| self.holds.get(id))
            .map(|h| h.agent_id.clone())
            .collect();
        agent_ids.sort();
        agent_ids.dedup();
        Event::HoldsReleased {
            offer_ids,
            agent_ids,
        }
    }

    fn release_hold(&mut self, v: Version, h: &Hold) {
        let gone = match self.agents.get_mut(&h.agent_id).map(Arc::make_mut) {
            Some(a) => {
                a.allocated
                    .subtract(&h.resources)
                    .expect("a hold's resources are allocated");
                a.version = v;
                a.state == AgentState::Gone
            }
            None => true,
        };
        if !gone {
            for (name, m) in h.resources.scalar_totals() {
                *self.cluster_allocated.entry(name).or_default() -= m.0;
            }
        }
    }

    /// Adds (`sign` 1) or takes away (-1) an agent's share of the cell's sums. `decide`
    /// keeps them within `limits::CELL_SCALAR_MILLI_MAX`; passing it is a bug.
    fn add_cluster(&mut self, total: &ResourceSet, allocated: &ResourceSet, sign: i64) {
        fn add(sums: &mut OrdMap<Name, i64>, set: &ResourceSet, sign: i64) {
            for (name, m) in set.scalar_totals() {
                let sum = sums.entry(name).or_default();
                *sum = sum
                    .checked_add(sign * m.0)
                    .filter(|s| *s <= limits::CELL_SCALAR_MILLI_MAX)
                    .expect("decide keeps the cell's sums in range");
            }
        }
        add(&mut self.cluster_total, total, sign);
        add(&mut self.cluster_allocated, allocated, sign);
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

fn not_found_agent(id: &AgentId) -> Rejection {
    Rejection::NotFound(format!("agent {id}"))
}

/// A claim carrying more placements or evictions than one claim may.
fn too_many(claim: &ClaimId, n: usize, what: &str, max: usize) -> Rejection {
    Rejection::Invalid(format!(
        "claim {claim}: {n} {what} is more than the {max} allowed in one claim"
    ))
}

fn not_found_task(id: &TaskId) -> Rejection {
    Rejection::NotFound(format!("task {id}"))
}

/// Checks an id as Mesos's `validateID` does (`src/common/validation.cpp`): 1..=255 bytes
/// (`NAME_MAX`, as ids name directories), not `.` or `..`, no `/`, `\` or control character
/// (whitespace is allowed). Every id that enters the cell (task, executor, framework, agent,
/// claim, offer, job, service, and later persistence ids) passes here; `what` names the field
/// in the message.
pub fn validate_id(what: &str, id: &str) -> Result<(), Rejection> {
    let why = if id.is_empty() || id.len() > limits::ID_BYTES_MAX {
        format!(
            "{what} must be 1..={} bytes (it has {})",
            limits::ID_BYTES_MAX,
            id.len()
        )
    } else if id == "." || id == ".." {
        format!("{what} '{id}' is not allowed")
    } else if id.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        format!("{what} {id:?} must not contain '/', '\\' or control characters")
    } else {
        return Ok(());
    };
    Err(Rejection::Invalid(why))
}

/// Checks a claim's owner (free text naming a scheduler): bounded, no control characters.
fn validate_owner(owner: &str) -> Result<(), Rejection> {
    if owner.len() > limits::CLAIM_OWNER_BYTES_MAX || owner.chars().any(char::is_control) {
        return Err(Rejection::Invalid(format!(
            "claim owner must be at most {} bytes without control characters (it has {})",
            limits::CLAIM_OWNER_BYTES_MAX,
            owner.len()
        )));
    }
    Ok(())
}

/// Checks a role name as Mesos's `roles::validate` does: not empty, not `.` or `..`, no
/// leading `-`, no slashes at the ends, no whitespace, control character or `\`; `*` is the
/// default role. Also none of the characters the resource text form uses as syntax
/// (`cpus(role):1;mem:2`), so a role can always be written in a reservation, and at most
/// `ROLE_NAME_BYTES_MAX` bytes (Mesos sets no bound; roles name records and appear in every
/// offer).
pub fn validate_role_name(name: &str) -> Result<(), Rejection> {
    if name.len() > limits::ROLE_NAME_BYTES_MAX {
        return Err(Rejection::Invalid(format!(
            "role name must be at most {} bytes (it has {})",
            limits::ROLE_NAME_BYTES_MAX,
            name.len()
        )));
    }
    let bad = name.is_empty()
        || name.contains(crate::resources::RESERVED_CHARS)
        || name == "."
        || name == ".."
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\');
    if bad {
        return Err(Rejection::Invalid(format!("invalid role name {name:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    fn cell_with_agent() -> (Cell, AgentId) {
        let mut cell = Cell::new(CellConfig {
            cell_id: "c".into(),
        });
        let reg = AgentRegistration {
            agent_id: None,
            hostname: "h".into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse("cpus:4;mem:1024;ports:[31000-31009]").unwrap(),
        };
        cell.commit(1, &Command::RegisterAgent(reg)).unwrap();
        let a = cell.agents().next().unwrap().id.clone();
        (cell, a)
    }

    fn hold(id: &str, fw: &str, agent: &AgentId, res: &str) -> Hold {
        Hold {
            id: OfferId::new(id),
            framework_id: fw.into(),
            role: "*".into(),
            agent_id: agent.clone(),
            resources: ResourceSet::parse(res).unwrap(),
            created_at: 1,
        }
    }

    fn placement(task: &str, agent: &AgentId, res: &str) -> Placement {
        Placement {
            task_id: TaskId::new(task),
            name: task.into(),
            agent_id: agent.clone(),
            resources: ResourceSet::parse(res).unwrap(),
            spec: TaskSpec::empty(),
        }
    }

    fn claim(id: &str, version: Version, placements: Vec<Placement>) -> Claim {
        Claim {
            id: ClaimId::new(id),
            role: "*".into(),
            owner: "x".into(),
            snapshot_version: version,
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements,
            priority: 0,
            evictions: vec![],
        }
    }

    #[test]
    fn held_resources_are_not_claimable_and_accept_turns_holds_into_tasks() {
        let (mut cell, a) = cell_with_agent();
        let (_, reply) = cell
            .commit(
                2,
                &Command::PlaceHolds {
                    holds: vec![
                        hold("o1", "fw1", &a, "cpus:3;mem:512"),
                        hold("o2", "fw2", &a, "cpus:2"),
                    ],
                },
            )
            .unwrap();
        assert_eq!(
            reply,
            Reply::Holds {
                placed: vec![OfferId::new("o1")],
                refused: vec![OfferId::new("o2")]
            },
            "one cpu left: o2 does not fit"
        );
        cell.check_invariants().unwrap();

        // A native claim cannot take held resources: the pessimistic contract.
        let v = cell.version();
        let (_, reply) = cell
            .commit(
                3,
                &Command::Claim(claim("native", v, vec![placement("n1", &a, "cpus:2")])),
            )
            .unwrap();
        let Reply::Claim { outcome } = reply else {
            panic!()
        };
        assert_eq!(outcome.committed_count(), 0);

        // Only the framework the offer was made to may use it.
        let c = claim("acc", v, vec![placement("t1", &a, "cpus:1;mem:128")]);
        let wrong = cell.commit(
            4,
            &Command::AcceptHolds {
                framework_id: "fw2".into(),
                offer_ids: vec![OfferId::new("o1")],
                claim: c.clone(),
            },
        );
        assert!(matches!(wrong, Err(Rejection::Forbidden(_))));

        // Accept: a task within the offer commits, one beyond it does not; the rest goes back.
        let mut c2 = c.clone();
        c2.placements.push(placement("t2", &a, "cpus:3"));
        let (_, reply) = cell
            .commit(
                5,
                &Command::AcceptHolds {
                    framework_id: "fw1".into(),
                    offer_ids: vec![OfferId::new("o1")],
                    claim: c2,
                },
            )
            .unwrap();
        let Reply::Claim { outcome } = reply else {
            panic!()
        };
        assert_eq!(outcome.committed_count(), 1);
        assert!(cell.hold(&OfferId::new("o1")).is_none());
        assert_eq!(
            cell.agent(&a).unwrap().allocated,
            ResourceSet::parse("cpus:1;mem:128").unwrap()
        );
        cell.check_invariants().unwrap();

        // A used offer cannot be used again.
        let again = cell.commit(
            6,
            &Command::AcceptHolds {
                framework_id: "fw1".into(),
                offer_ids: vec![OfferId::new("o1")],
                claim: claim("acc2", v, vec![placement("t3", &a, "cpus:1")]),
            },
        );
        assert!(matches!(again, Err(Rejection::NotFound(_))));
    }

    #[test]
    fn agents_going_away_and_restarts_release_holds() {
        let (mut cell, a) = cell_with_agent();
        cell.commit(
            2,
            &Command::PlaceHolds {
                holds: vec![hold("o1", "fw1", &a, "cpus:1;ports:[31000-31000]")],
            },
        )
        .unwrap();
        cell.commit(
            3,
            &Command::SetAgentState {
                agent_id: a.clone(),
                state: AgentState::Unreachable,
            },
        )
        .unwrap();
        assert_eq!(cell.holds().count(), 0);
        assert!(cell.agent(&a).unwrap().allocated.is_empty());
        cell.check_invariants().unwrap();

        let (mut cell, a) = cell_with_agent();
        cell.commit(
            2,
            &Command::PlaceHolds {
                holds: vec![hold("o1", "fw1", &a, "cpus:1")],
            },
        )
        .unwrap();
        cell.commit(3, &Command::ClearHolds).unwrap();
        assert_eq!(cell.holds().count(), 0);
        assert!(cell.agent(&a).unwrap().allocated.is_empty());
        cell.commit(
            4,
            &Command::ReleaseHolds {
                offer_ids: vec![OfferId::new("o1")],
            },
        )
        .unwrap();
        cell.check_invariants().unwrap();
    }
}

#[cfg(test)]
mod overflow_tests {
    //! Sums that input can reach are checked in `decide` and refused there: `apply` only ever
    //! meets what `decide` accepted, so no input can panic the commit path.
    use super::*;

    fn register(cell: &mut Cell, host: &str, res: &str) -> Result<AgentId, Rejection> {
        let reg = AgentRegistration {
            agent_id: None,
            hostname: host.into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse(res).unwrap(),
        };
        match cell.commit(1, &Command::RegisterAgent(reg))? {
            (_, Reply::Agent { agent_id }) => Ok(agent_id),
            (_, r) => panic!("unexpected reply {r:?}"),
        }
    }

    fn claim(cell: &Cell, id: &str, role: &str, placements: &[(&str, &AgentId, &str)]) -> Command {
        Command::Claim(Claim {
            id: ClaimId::new(id),
            role: role.into(),
            owner: "x".into(),
            snapshot_version: cell.version(),
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements: placements
                .iter()
                .map(|(task, agent, res)| Placement {
                    task_id: TaskId::new(*task),
                    name: task.to_string(),
                    agent_id: (*agent).clone(),
                    resources: ResourceSet::parse(res).unwrap(),
                    spec: TaskSpec::empty(),
                })
                .collect(),
            priority: 0,
            evictions: vec![],
        })
    }

    fn committed(r: Result<(Option<LogEntry>, Reply), Rejection>) -> bool {
        matches!(r, Ok((_, Reply::Claim { outcome })) if outcome.committed_version.is_some())
    }

    fn cell() -> Cell {
        Cell::new(CellConfig {
            cell_id: "c".into(),
        })
    }

    /// Issue 11, item 1: a role's consumption past the largest amount panicked `apply`.
    #[test]
    fn commit_thread_dies_on_arithmetic_overflow() {
        let mut cell = cell();
        let a = register(&mut cell, "a", "cpus:1e12;mem:1").unwrap();
        let b = register(&mut cell, "b", "cpus:1e12;mem:1").unwrap();
        let all_a = claim(&cell, "c1", "web", &[("t1", &a, "cpus:1e12")]);
        assert!(committed(cell.commit(2, &all_a)));
        let more = claim(&cell, "c2", "web", &[("t2", &b, "cpus:0.001")]);
        let refused = cell.commit(3, &more).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        assert!(refused.to_string().contains("cpus"), "{refused}");
        assert_eq!(cell.version(), 3, "nothing committed");
        // The cell goes on: a valid claim (another role) commits, and the role may still
        // use what is left of its own amount.
        let other = claim(&cell, "c3", "db", &[("t3", &b, "cpus:1;mem:1")]);
        assert!(committed(cell.commit(4, &other)));
        let kill = Command::KillTask {
            task_id: TaskId::new("t1"),
        };
        cell.commit(5, &kill).unwrap();
        let killed = Command::UpdateTaskStatus {
            task_id: TaskId::new("t1"),
            state: TaskState::Killed,
            status: StatusInfo::default(),
        };
        cell.commit(6, &killed).unwrap();
        assert!(committed(cell.commit(7, &more)));
        cell.check_invariants().unwrap();
    }

    /// One claim whose placements together pass the largest amount for its role.
    #[test]
    fn one_claim_past_the_largest_role_sum_is_refused() {
        let mut cell = cell();
        let a = register(&mut cell, "a", "cpus:1e12").unwrap();
        let b = register(&mut cell, "b", "cpus:1e12").unwrap();
        let c = claim(
            &cell,
            "c1",
            "web",
            &[("t1", &a, "cpus:1e12"), ("t2", &b, "cpus:1")],
        );
        let refused = cell.commit(2, &c).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        assert_eq!(cell.version(), 2, "nothing committed");
        cell.check_invariants().unwrap();
    }

    /// The cell's totals (`sign * m` summed over agents) stay below `CELL_SCALAR_MILLI_MAX`:
    /// the agent that would pass it is refused, any number of agents later.
    #[test]
    fn cluster_totals_past_the_largest_sum_are_refused() {
        let mut cell = cell();
        let per_agent = Milli::MAX.0;
        let fit = limits::CELL_SCALAR_MILLI_MAX / per_agent;
        for i in 0..fit {
            register(&mut cell, &format!("h{i}"), "cpus:1e12").unwrap();
        }
        let refused = register(&mut cell, "one-more", "cpus:1e12").unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        assert!(refused.to_string().contains("cpus"), "{refused}");
        // Growing an agent past the sum is refused too.
        let small = register(&mut cell, "small", "cpus:1").unwrap();
        let grow = Command::UpdateAgentResources {
            agent_id: small,
            total: ResourceSet::parse("cpus:1e12").unwrap(),
        };
        let refused = cell.commit(2, &grow).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        cell.check_invariants().unwrap();
    }

    /// The headroom sum (unmet guarantees over roles) is bounded where guarantees are set.
    #[test]
    fn quota_guarantees_past_the_largest_sum_are_refused() {
        let mut cell = cell();
        let quota = Quota {
            guarantee: ResourceSet::parse("cpus:1e12").unwrap(),
            limit: None,
        };
        let fit = limits::CELL_SCALAR_MILLI_MAX / Milli::MAX.0;
        let configure = |name: String| Command::ConfigureRole {
            name,
            weight: 1.0,
            quota: quota.clone(),
            preemptible: true,
        };
        for i in 0..fit {
            cell.commit(1, &configure(format!("r{i}"))).unwrap();
        }
        let refused = cell.commit(1, &configure("one-more".into())).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        // Setting a role's own guarantee again replaces it: it still fits.
        cell.commit(1, &configure("r0".into())).unwrap();
        let a = register(&mut cell, "a", "cpus:1").unwrap();
        let c = claim(&cell, "c1", "other", &[("t1", &a, "cpus:1")]);
        let (_, reply) = cell.commit(2, &c).unwrap();
        assert!(matches!(reply, Reply::Claim { .. }));
        cell.check_invariants().unwrap();
    }
}
