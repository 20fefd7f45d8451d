//! The records of the shared state: agents, tasks, roles, claims, and the events that change
//! them. Everything here is plain data with serde, so the master persists it, the native API
//! serves it and watch clients fold the same events into their own mirror of the cell.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::records::{NoRecords, Records};
use crate::resources::ResourceSet;
use crate::task::TaskState;

/// The cell's version: it grows by one with every committed mutation.
pub type Version = u64;

/// Milliseconds since the Unix epoch, given to the core by its caller (the core reads no clock).
pub type Timestamp = u64;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl $name {
            pub fn new(s: impl AsRef<str>) -> Self {
                $name(Arc::from(s.as_ref()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name::new(s)
            }
        }
    };
}

id_type!(
    /// An agent's id, as Mesos writes it (`<cell>-S<n>`).
    AgentId
);
id_type!(
    /// A task id, chosen by the scheduler; unique in the cell.
    TaskId
);
id_type!(
    /// A claim id, chosen by the scheduler: resubmitting it returns the original outcome.
    ClaimId
);
id_type!(
    /// An offer's id: the id of a hold on one agent's resources for one framework.
    OfferId
);

/// A hold: resources of one agent set aside for one framework while it considers them (a
/// Mesos offer). Held resources count as allocated, so no claim can take them, and each is
/// held for one framework at a time. Holds are versioned like everything else but are not
/// persisted: like Mesos offers, they do not survive a master restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub id: OfferId,
    pub framework_id: String,
    pub role: String,
    pub agent_id: AgentId,
    pub resources: ResourceSet,
    pub created_at: Timestamp,
}

/// Where an agent stands with the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentState {
    /// Registered and heartbeating: claims may place tasks on it.
    Active,
    /// Stopped heartbeating; its tasks' resources stay booked until it returns or is gone.
    Unreachable,
    /// Removed: its tasks are gone and its resources are no longer part of the cell.
    Gone,
}

/// A fault domain, as in Mesos's `DomainInfo.FaultDomain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FaultDomain {
    pub region: String,
    pub zone: String,
}

/// An agent and its resources. `allocated` is derived (the sum of its live tasks and offer
/// holds), so it is not persisted: it is rebuilt when the state is loaded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub id: AgentId,
    pub hostname: String,
    /// Where the agent's own HTTP endpoint listens, when it has one (0 otherwise).
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub domain: Option<FaultDomain>,
    pub total: ResourceSet,
    #[serde(default)]
    pub allocated: ResourceSet,
    pub state: AgentState,
    /// The cell version of the last mutation of this agent (registration, resource update,
    /// state change, or a task placed on it or leaving it). Coarse-grained claims are
    /// rejected when this moved past their snapshot.
    pub version: Version,
    pub registered_at: Timestamp,
}

impl Agent {
    /// What is left for new placements.
    pub fn free(&self) -> ResourceSet {
        let mut free = self.total.clone();
        // `allocated` is always contained in `total` (checked at every commit).
        let _ = free.subtract(&self.allocated);
        free
    }
}

/// The last status a task reported (or the master decided), as in `mesos.v1.TaskStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Mesos `TaskStatus.Reason` name, e.g. `REASON_COMMAND_EXECUTOR_FAILED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Mesos `TaskStatus.Source` name, e.g. `SOURCE_EXECUTOR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub timestamp: Timestamp,
}

/// The task's description as a framework sent it: the compact JSON of a `mesos.v1.TaskInfo`
/// (Mesos's JSON encoding). The core does not look inside; the master and agents do.
/// It is written as raw JSON in JSON documents and as a string elsewhere. Its text is always
/// canonical JSON (compact, keys sorted: what `serde_json::Value` writes), however it was
/// made, so it survives a round trip through JSON unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec(Arc<str>);

impl TaskSpec {
    pub fn empty() -> TaskSpec {
        TaskSpec(Arc::from("{}"))
    }

    /// The spec of `text`, made canonical: JSON is written compact with its keys sorted;
    /// text that is not JSON becomes a JSON string holding it.
    pub fn new(text: &str) -> TaskSpec {
        let canonical = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => v.to_string(),
            Err(_) => serde_json::Value::String(text.to_string()).to_string(),
        };
        if canonical == text {
            TaskSpec(Arc::from(text))
        } else {
            TaskSpec(Arc::from(canonical))
        }
    }

    /// The spec of a JSON value (canonical as written).
    pub fn from_value(v: &serde_json::Value) -> TaskSpec {
        TaskSpec(Arc::from(v.to_string()))
    }

    /// The spec of text its caller has already made canonical (the master's API does, on
    /// the commit path; the store only holds specs the cell held), kept without a second
    /// pass. Checked in debug builds only.
    pub fn from_canonical(text: impl Into<Arc<str>>) -> TaskSpec {
        let text = text.into();
        debug_assert_eq!(
            TaskSpec::new(&text).as_str(),
            &*text,
            "task spec is not canonical JSON"
        );
        TaskSpec(text)
    }

    /// Its canonical JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for TaskSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match serde_json::value::RawValue::from_string(self.0.to_string()) {
                Ok(raw) => raw.serialize(s),
                Err(_) => s.serialize_str(&self.0),
            }
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for TaskSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            // Not `RawValue`: a spec sits inside internally tagged events, which serde buffers.
            let v = serde_json::Value::deserialize(d)?;
            Ok(TaskSpec(Arc::from(v.to_string())))
        } else {
            // Written by `serialize`, from a spec that was canonical.
            let s = String::deserialize(d)?;
            Ok(TaskSpec(Arc::from(s)))
        }
    }
}

/// A task: placed by a claim on one agent, with the resources it holds while it is live.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub name: String,
    pub agent_id: AgentId,
    pub role: String,
    /// Who placed it: a native scheduler's name or a framework id.
    pub owner: String,
    pub claim_id: ClaimId,
    pub resources: ResourceSet,
    pub state: TaskState,
    #[serde(default)]
    pub status: StatusInfo,
    pub spec: TaskSpec,
    /// The cell version of the task's last change.
    pub version: Version,
    /// The priority of the claim that placed it (0 to [`crate::limits::PRIORITY_MAX`]; native
    /// claims and Mesos frameworks place at 0 unless they say otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// Set when a claim evicted it: its resources moved to that claim at the commit, so the
    /// task keeps none while it is killed, and its terminal state frees nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preempted_by: Option<ClaimId>,
}

impl Task {
    /// Whether the task's resources are booked in the cell: live and not evicted.
    pub fn holds_resources(&self) -> bool {
        !self.state.is_terminal() && self.preempted_by.is_none()
    }

    /// The task as the claim that placed it committed it at `version`: what the claim fixed
    /// (ids, name, role, owner, resources, spec, priority) with the state a commit starts
    /// from. Everything else is what later changes add; a stored log entry of the commit is
    /// rebuilt from the task's current record with this.
    pub fn as_placed(&self, version: Version) -> Task {
        Task {
            id: self.id.clone(),
            name: self.name.clone(),
            agent_id: self.agent_id.clone(),
            role: self.role.clone(),
            owner: self.owner.clone(),
            claim_id: self.claim_id.clone(),
            resources: self.resources.clone(),
            state: TaskState::Staging,
            status: StatusInfo::default(),
            spec: self.spec.clone(),
            version,
            priority: self.priority,
            preempted_by: None,
        }
    }
}

/// The Mesos `TaskStatus.Reason` of a task evicted by a claim (its TASK_KILLING and its final
/// TASK_KILLED).
pub const REASON_PREEMPTED: &str = "REASON_CONTAINER_PREEMPTED";

fn is_zero(p: &i64) -> bool {
    *p == 0
}

pub(crate) fn yes() -> bool {
    true
}

/// Quota of a role: what it is guaranteed and what it may never exceed (scalars only, as in
/// Mesos's `QuotaConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    #[serde(default)]
    pub guarantee: ResourceSet,
    /// `None`: no limit.
    #[serde(default)]
    pub limit: Option<ResourceSet>,
}

/// A role (a team): its weight for fair sharing, its quota, and what it consumes now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub weight: f64,
    #[serde(default)]
    pub quota: Quota,
    /// Whether claims may evict the role's tasks (a higher priority, or a team below its
    /// guarantee). On by default.
    #[serde(default = "yes")]
    pub preemptible: bool,
    /// Derived: the resources of the role's live tasks.
    #[serde(default)]
    pub consumed: ResourceSet,
}

impl Role {
    pub fn new(name: &str) -> Role {
        Role {
            name: name.to_string(),
            weight: 1.0,
            quota: Quota::default(),
            preemptible: true,
            consumed: ResourceSet::new(),
        }
    }
}

/// How a claim commits: all of its placements or none (a gang), or each that fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    #[default]
    AllOrNothing,
    Incremental,
}

/// How a claim is checked for conflicts with what committed since its snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictCheck {
    /// Accept a placement if its resources are still free.
    #[default]
    Fine,
    /// Reject a placement if its agent changed at all since the snapshot.
    Coarse,
}

/// One task to place on one agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub task_id: TaskId,
    #[serde(default)]
    pub name: String,
    pub agent_id: AgentId,
    pub resources: ResourceSet,
    #[serde(default = "TaskSpec::empty")]
    pub spec: TaskSpec,
}

/// A scheduler's transaction: placements decided against the state at `snapshot_version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub id: ClaimId,
    pub role: String,
    #[serde(default)]
    pub owner: String,
    pub snapshot_version: Version,
    #[serde(default)]
    pub mode: CommitMode,
    #[serde(default)]
    pub check: ConflictCheck,
    pub placements: Vec<Placement>,
    /// The priority of its tasks (0 to [`crate::limits::PRIORITY_MAX`], default 0): a claim
    /// may evict tasks of a strictly lower priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// Live tasks to preempt, on the agents the claim places on, in the same transaction
    /// (all-or-nothing claims only). See `Cell::decide` for when an eviction is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evictions: Vec<TaskId>,
}

/// Why one placement was not committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RejectReason {
    UnknownAgent,
    AgentNotActive {
        state: AgentState,
    },
    /// The agent does not have the resources free any more (fine-grained check).
    InsufficientResources {
        resource: String,
    },
    /// The agent changed since the claim's snapshot (coarse-grained check).
    AgentVersionMoved {
        agent_version: Version,
    },
    DuplicateTaskId,
    /// Reserved resources of another role.
    ReservationMismatch {
        role: String,
    },
    /// Committing it would take the role past its quota limit.
    QuotaLimit {
        resource: String,
    },
    /// Committing it would eat into what other roles are guaranteed.
    QuotaHeadroom {
        resource: String,
    },
    /// Another placement of the same all-or-nothing claim was rejected.
    GangAborted,
    /// One of the claim's evictions is not allowed (or no longer possible): nothing commits.
    EvictionRefused {
        task_id: TaskId,
        why: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementOutcome {
    pub task_id: TaskId,
    pub agent_id: AgentId,
    pub committed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<RejectReason>,
}

/// The answer to a claim: per placement, committed or rejected with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimOutcome {
    pub claim_id: ClaimId,
    /// The version at which the committed placements took effect (`None`: nothing committed).
    pub committed_version: Option<Version>,
    pub placements: Vec<PlacementOutcome>,
}

impl ClaimOutcome {
    pub fn committed_count(&self) -> usize {
        self.placements.iter().filter(|p| p.committed).count()
    }
}

/// A change to the shared state. The log of events, folded in order, is the state: the
/// master persists them, watchers receive them and mirror the cell with the same code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", bound = "")]
pub enum Event<R: Records = NoRecords> {
    /// A new agent, or a known one registering again with fresh information.
    AgentRegistered { agent: Agent },
    AgentResourcesUpdated {
        agent_id: AgentId,
        total: ResourceSet,
    },
    AgentStateChanged {
        agent_id: AgentId,
        state: AgentState,
    },
    /// A claim committed these tasks (all in TASK_STAGING).
    ClaimCommitted {
        outcome: ClaimOutcome,
        /// Shared with the cell's own records: applying the entry copies no task.
        tasks: Vec<Arc<Task>>,
        /// Tasks the claim evicted (already gone TASK_KILLING earlier in the same entry):
        /// their resources move to the claim.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        evictions: Vec<TaskId>,
    },
    TaskStatusChanged {
        task_id: TaskId,
        state: TaskState,
        status: StatusInfo,
    },
    RoleConfigured {
        name: String,
        weight: f64,
        quota: Quota,
        #[serde(default = "yes")]
        preemptible: bool,
    },
    /// Offers made: their resources are held.
    HoldsPlaced { holds: Vec<Hold> },
    /// Offers declined, rescinded, expired or used: their resources are free again.
    /// `agent_ids` are the agents whose resources came back.
    HoldsReleased {
        offer_ids: Vec<OfferId>,
        agent_ids: Vec<AgentId>,
    },
    /// The master restarted: every hold is gone.
    HoldsCleared { agent_ids: Vec<AgentId> },
    /// Finished work forgotten (garbage collection, see [`crate::gc`]): terminal tasks (each
    /// with the claim that placed it), claim outcomes whose tasks are all gone, gone agents.
    Collected {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tasks: Vec<CollectedTask>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        claims: Vec<ClaimId>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        agents: Vec<AgentId>,
    },
    /// A change of the records a scheduler above the cell keeps (see [`Records`]). Last and
    /// untagged: it is written as the records' own event, with its own `"type"`.
    #[serde(untagged)]
    Records(R::Event),
}

/// A terminal task a collection forgets, and the claim that placed it (a task id may be
/// placed again once it is forgotten, by another claim).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedTask {
    pub task_id: TaskId,
    pub claim_id: ClaimId,
}

/// One committed mutation: its version and its events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct LogEntry<R: Records = NoRecords> {
    pub version: Version,
    pub events: Vec<Event<R>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_round_trip_through_json() {
        let task = Task {
            id: TaskId::new("t1"),
            name: "t1".into(),
            agent_id: AgentId::new("a1"),
            role: "*".into(),
            owner: "me".into(),
            claim_id: ClaimId::new("c1"),
            resources: ResourceSet::parse("cpus:1;ports:[1-2]").unwrap(),
            state: TaskState::Staging,
            status: StatusInfo::default(),
            spec: TaskSpec::new(r#"{"command":{"value":"echo"},"task_id":{"value":"t1"}}"#),
            version: 3,
            priority: 0,
            preempted_by: None,
        };
        let entry = LogEntry {
            version: 3,
            events: vec![Event::ClaimCommitted {
                outcome: ClaimOutcome {
                    claim_id: ClaimId::new("c1"),
                    committed_version: Some(3),
                    placements: vec![],
                },
                tasks: vec![Arc::new(task)],
                evictions: vec![],
            }],
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert!(
            json.contains(r#""spec":{"command":{"value":"echo"}"#),
            "{json}"
        );
        let back: LogEntry = serde_json::from_str(&json).unwrap();
        assert_eq!(back, entry);
    }
}
