//! The framework model of the Mesos scheduler API, sans-IO.
//!
//! [`Frameworks`] holds everything the master knows of Mesos frameworks: the registry
//! (subscribed frameworks and those within their failover timeout), refused-offer filters,
//! suppressed roles, status update streams (`updates.rs`), removed frameworks,
//! agents on probation and the frameworks whose offers are withheld. It is a state machine in
//! the manner of quinn-proto or raft-rs: its methods take the published snapshot of the cell,
//! the time ([`Now`]), the session a call came on ([`SessionId`]) and a typed v1 `Call`, and
//! return [`Effect`]s: commands to commit, events to send, sessions to close, allocation rounds
//! to run. It reads no clock, opens no socket, spawns nothing and draws no random number: ids
//! and status update uuids come from the run id given at construction and a sequence, so the
//! same inputs give the same effects.
//!
//! A wire format plugs in beside it as a codec: the v1 HTTP layer (`crate::v1`) and a v0
//! libprocess layer both turn what they read into typed `Call`s, name each connection with a
//! `SessionId`, and carry out the effects in order (an `Effect::Commit` is submitted and its
//! result handed back through [`Frameworks::committed`]).
//!
//! Offer ownership is read from the holds in the snapshot (`Hold::framework_id`). The model
//! keeps two offer sets of its own: the offers it released itself (no RESCIND goes out when
//! the cell reports them released) and the offers it sent, so that a hold the cell releases
//! on its own (its agent went away) is rescinded at the framework it went to: the cell's
//! `HoldsReleased` event names no framework, and the hold is gone from the snapshot by then.

mod accept;
mod acknowledge;
mod allocate;
mod decline;
mod kill;
mod observe;
mod offers;
mod reconcile;
mod revive;
mod settings;
mod subscribe;
mod teardown;
mod tick;
mod update_framework;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use shoal_core::{AgentId, OfferId, ResourceSet, TaskId, TaskState};
use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::{call, event, Call, Event};
use shoal_sched::{Command, Reply};

use crate::allocator::OfferFilter;
use crate::error::CompatError;
use crate::limits;
use crate::updates::UpdateStreams;
use crate::CompatConfig;

pub use accept::AcceptPending;
pub use allocate::OffersPending;
pub use subscribe::FAILED_OVER;

/// A framework's connection, named by the IO layer: a v1 event stream, or a v0 scheduler's
/// libprocess pid. The model only compares them; the IO layer knows where each one goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// The time, as the IO layer read it from the master's clock: wall time (what frameworks are
/// told, what holds are stamped with) and monotonic time (what timeouts are measured on).
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub wall_ms: u64,
    pub monotonic: Instant,
}

/// What the IO layer is to do, in the order given.
// Effects live for one call and are moved, not copied: boxing the large variants would cost
// an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Effect {
    /// Submit `command` to the commit path, then hand its result to
    /// [`Frameworks::committed`] with `then`.
    Commit { command: Command, then: AfterCommit },
    /// Send `event` to `session`. When it cannot be delivered, hand it back through
    /// [`Frameworks::undelivered`].
    Send { session: SessionId, event: Event },
    /// End `session`: with an ERROR event carrying `error` first when there is one (a newer
    /// subscription took over), without one when the framework was removed.
    Close {
        session: SessionId,
        error: Option<String>,
    },
    /// Run an allocation round soon: resources may be free, or a framework wants offers.
    Wake,
}

/// What a commit's result means to the model.
#[derive(Debug)]
pub enum AfterCommit {
    /// Nothing: the command stands on its own (a release, a kill).
    Nothing,
    /// An ACCEPT: its tasks that did not launch get updates, what it left unused is declined.
    Accept(Box<AcceptPending>),
    /// An allocation round's holds: those placed go out as offers.
    Offers(OffersPending),
}

/// A framework the master knows: subscribed, or disconnected within its failover timeout.
struct Framework {
    id: String,
    /// Its FrameworkInfo as it subscribed (or last updated it), with its id set and its
    /// `failover_timeout` capped: what the state endpoints report.
    info: mesos::FrameworkInfo,
    /// Its roles (MULTI_ROLE `roles`, else the legacy `role`; never empty): offers are made
    /// for each role that is not suppressed.
    roles: Vec<String>,
    partition_aware: bool,
    /// Declared TASK_KILLING_STATE: only such frameworks are sent TASK_KILLING.
    killing_state: bool,
    /// Its current connection; `None` while it is disconnected.
    session: Option<SessionId>,
    disconnected_at: Option<Instant>,
    failover_timeout: Duration,
    /// Refused-offer filters (DECLINE, and what an ACCEPT left unused), per agent.
    filters: HashMap<AgentId, OfferFilter>,
    /// Roles suppressed (SUPPRESS, `suppressed_roles`): no offers for them until REVIVE.
    suppressed: HashSet<String>,
    /// Status updates not yet acknowledged, per task (see `updates`).
    pending: UpdateStreams,
    /// When it last made a call on its current subscription (wall clock, ms); `None` until
    /// its first. A call needs the framework id, which only the stream tells a new
    /// framework, so a call shows that it reads its stream.
    last_call_ms: Option<u64>,
    /// An offer of it timed out with no call from it meanwhile: it does not read its stream,
    /// so it gets no offers until its next call.
    withheld: bool,
}

/// What the state endpoints show of one framework.
#[derive(Clone, Debug)]
pub struct FrameworkSummary {
    pub id: String,
    pub info: mesos::FrameworkInfo,
    pub connected: bool,
    pub roles: Vec<String>,
}

/// The framework model (see the module documentation).
pub struct Frameworks {
    config: CompatConfig,
    frameworks: HashMap<String, Framework>,
    /// Offers sent and still outstanding, with the framework each went to: only to address
    /// the RESCIND of a hold the cell releases on its own (see the module documentation).
    sent: HashMap<OfferId, String>,
    /// Offers released at the model's request (accept, decline, timeout, disconnection):
    /// no RESCIND for those when the cell reports them released.
    released_by_us: HashSet<OfferId>,
    /// Frameworks removed (TEARDOWN, failover timeout), newest last: they may not subscribe
    /// again. Bounded by `limits::REMOVED_FRAMEWORKS_MAX`; in memory only, as in Mesos.
    removed: RemovedFrameworks,
    /// Agents whose offer timed out unanswered, until when (wall clock, ms): meanwhile they
    /// are offered only to frameworks that have made a call on their subscription, so a row
    /// of new frameworks that never read cannot pass an agent from one to the next while
    /// native claims and answering frameworks wait.
    probation: HashMap<AgentId, u64>,
    /// Prefixes the ids this model hands out: unique per master start, chosen by the caller.
    run_id: String,
    /// The run id folded to 64 bits: the first half of every status update uuid.
    run_hash: u64,
    seq: u64,
    /// Allocation rounds run, which spreads each round's first agent over the agent list.
    round: u64,
    /// The cell version the model has observed up to (the snapshot of the last `observe`).
    observed: shoal_core::Version,
}

impl Frameworks {
    /// Whether a collection must keep `task` (see `shoal_core::gc`): it is a known
    /// framework's and its last change is not observed yet, or its update waits for the
    /// framework's acknowledgement (the framework may still return within its
    /// failover timeout; a removed framework's tasks are not kept).
    pub fn retains(&self, task: &shoal_core::Task) -> bool {
        self.frameworks
            .get(&task.owner)
            .is_some_and(|fw| task.version > self.observed || fw.pending.has(&task.id))
    }

    /// An empty model. `run_id` must differ between master starts (the IO layer draws it),
    /// so ids handed out before a restart are never handed out again.
    pub fn new(config: CompatConfig, run_id: String) -> Frameworks {
        // FNV-1a: a fixed, documented fold, so uuids are the same for the same run id.
        let run_hash = run_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Frameworks {
            config,
            frameworks: HashMap::new(),
            sent: HashMap::new(),
            released_by_us: HashSet::new(),
            removed: RemovedFrameworks::default(),
            probation: HashMap::new(),
            run_id,
            run_hash,
            seq: 1,
            round: 0,
            observed: 0,
        }
    }

    /// The settings the model runs with.
    pub fn config(&self) -> &CompatConfig {
        &self.config
    }

    /// Every known framework, for the state endpoints.
    pub fn framework_summaries(&self) -> Vec<FrameworkSummary> {
        self.frameworks
            .values()
            .map(|f| FrameworkSummary {
                id: f.id.clone(),
                info: f.info.clone(),
                connected: f.session.is_some(),
                roles: f.roles.clone(),
            })
            .collect()
    }

    /// Whether `framework_id` was removed (and may not subscribe again).
    pub fn is_removed(&self, framework_id: &str) -> bool {
        self.removed.contains(framework_id)
    }

    /// Whether the framework is known (subscribed or within its failover timeout).
    pub fn is_known(&self, framework_id: &str) -> bool {
        self.frameworks.contains_key(framework_id)
    }

    /// The framework whose current session is `session`.
    pub fn framework_of(&self, session: SessionId) -> Option<&str> {
        self.frameworks
            .values()
            .find(|f| f.session == Some(session))
            .map(|f| f.id.as_str())
    }

    /// Every call but SUBSCRIBE, from `session` (`None`: the call named no session, e.g. a v1
    /// call without its `Mesos-Stream-Id`). A call of a framework that is not subscribed, or
    /// from a session that is not the framework's current one, is refused.
    pub fn call(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        session: Option<SessionId>,
        call: Call,
    ) -> Result<Vec<Effect>, CompatError> {
        let kind = call_type(&call);
        if kind == call::Type::Subscribe {
            return Err(CompatError::Invalid(
                "SUBSCRIBE is not a call of a subscribed framework".into(),
            ));
        }
        let Some(fw_id) = call.framework_id.as_ref().map(|f| f.value.clone()) else {
            return Err(CompatError::Invalid(
                "Expecting 'framework_id' to be present".into(),
            ));
        };
        let mut out = Vec::new();
        {
            let Some(f) = self
                .frameworks
                .get_mut(&fw_id)
                .filter(|f| f.session.is_some())
            else {
                return Err(CompatError::NotSubscribed);
            };
            match session {
                Some(s) if Some(s) == f.session => {
                    // It reads its stream: offers resume if they were withheld.
                    f.last_call_ms = Some(now.wall_ms);
                    if std::mem::take(&mut f.withheld) {
                        out.push(Effect::Wake);
                    }
                }
                Some(_) => return Err(CompatError::OtherSession),
                None => return Err(CompatError::NoSession),
            }
        }
        tracing::debug!(framework_id = %fw_id, call = kind.as_str_name(), "scheduler call");
        let more = match kind {
            call::Type::Teardown => self.teardown(snap, &fw_id),
            call::Type::Accept => self.accept(snap, now, &fw_id, call.accept.unwrap_or_default()),
            call::Type::Decline => {
                self.decline(snap, now, &fw_id, call.decline.unwrap_or_default())
            }
            call::Type::Revive => self.revive(&fw_id, &call.revive.unwrap_or_default().roles),
            call::Type::Suppress => self.suppress(&fw_id, &call.suppress.unwrap_or_default().roles),
            call::Type::Kill => match call.kill {
                Some(kill) => self.kill(snap, now, &fw_id, kill),
                None => Vec::new(),
            },
            call::Type::Shutdown => match call.shutdown {
                Some(shutdown) => self.shutdown(snap, &fw_id, shutdown),
                None => Vec::new(),
            },
            call::Type::Acknowledge => match call.acknowledge {
                Some(ack) => self.acknowledge(now, &fw_id, ack),
                None => Vec::new(),
            },
            call::Type::Reconcile => {
                self.reconcile(snap, now, &fw_id, call.reconcile.unwrap_or_default())
            }
            call::Type::ReconcileOperations => self.reconcile_operations(
                snap,
                &fw_id,
                call.reconcile_operations.unwrap_or_default(),
            ),
            call::Type::UpdateFramework => match call.update_framework {
                Some(update) => self.update_framework(&fw_id, update)?,
                None => {
                    return Err(CompatError::Invalid(
                        "'framework_id' differs from 'update_framework.framework_info.id'".into(),
                    ))
                }
            },
            // Accepted and ignored, as a master with nothing to do for them would.
            // MESSAGE: Shoal tasks have no executor to deliver to (Mesos delivers best effort).
            // REQUEST: Mesos's allocator ignores it too. ACKNOWLEDGE_OPERATION_STATUS: no
            // operation status this master sends carries a uuid.
            call::Type::Message
            | call::Type::Request
            | call::Type::AcknowledgeOperationStatus
            | call::Type::AcceptInverseOffers
            | call::Type::DeclineInverseOffers => Vec::new(),
            call::Type::Subscribe | call::Type::Unknown => {
                return Err(CompatError::Invalid(format!(
                    "Unknown call type {}",
                    call::Type::Unknown.as_str_name()
                )))
            }
        };
        out.extend(more);
        Ok(out)
    }

    /// An event could not be delivered to `session` (its buffer is full, or it closed).
    /// Offers in it go back.
    pub fn undelivered(&mut self, session: SessionId, event: Event) -> Vec<Effect> {
        tracing::debug!(?session, "an event could not be delivered");
        self.offers_back(event)
    }

    /// The offers of an OFFERS event that did not reach its framework go back.
    fn offers_back(&mut self, event: Event) -> Vec<Effect> {
        match event.offers {
            Some(offers) if event.r#type == Some(event::Type::Offers as i32) => {
                let ids = offers
                    .offers
                    .into_iter()
                    .map(|o| OfferId::new(o.id.value))
                    .collect();
                self.release(ids)
            }
            _ => Vec::new(),
        }
    }

    /// A framework, offer or accept id: unique to this master's run (as Mesos prefixes them
    /// with its master id), so ids handed out before a restart are never handed out again.
    fn next_id(&mut self, prefix: &str) -> String {
        let seq = self.seq;
        self.seq += 1;
        format!("{}-{prefix}{seq}", self.run_id)
    }

    /// A status update uuid: the run id's hash and the sequence, 16 bytes, unique to this run.
    fn next_uuid(&mut self) -> Vec<u8> {
        let seq = self.seq;
        self.seq += 1;
        let mut uuid = Vec::with_capacity(16);
        uuid.extend_from_slice(&self.run_hash.to_be_bytes());
        uuid.extend_from_slice(&seq.to_be_bytes());
        uuid
    }

    /// The offers `framework_id` holds now, read from the snapshot's holds.
    /// Offers whose release the model asked for already are left out.
    fn offers_of(&self, snap: &shoal_sched::Cell, framework_id: &str) -> Vec<OfferId> {
        snap.holds()
            .filter(|h| h.framework_id == framework_id && !self.released_by_us.contains(&h.id))
            .map(|h| h.id.clone())
            .collect()
    }

    /// Releases offers the model made (no RESCIND goes out for them).
    fn release(&mut self, offers: Vec<OfferId>) -> Vec<Effect> {
        if offers.is_empty() {
            return Vec::new();
        }
        for o in &offers {
            self.sent.remove(o);
            self.released_by_us.insert(o.clone());
        }
        vec![
            Effect::Commit {
                command: Command::ReleaseHolds { offer_ids: offers },
                then: AfterCommit::Nothing,
            },
            Effect::Wake,
        ]
    }

    /// `event` to the framework's current session, if it is connected.
    fn send(&self, framework_id: &str, event: Event) -> Option<Effect> {
        let session = self.frameworks.get(framework_id)?.session?;
        Some(Effect::Send { session, event })
    }

    /// Installs Mesos's refused-offer filter for what a framework declined (or left unused)
    /// on an agent: `refuse_seconds` from `filters` (default 5 s); none for 0 s or nothing
    /// refused.
    fn install_filter(
        &mut self,
        now: Now,
        fw_id: &str,
        agent: &AgentId,
        refused: ResourceSet,
        filters: Option<&mesos::Filters>,
    ) {
        let refuse = filters
            .and_then(|f| f.refuse_seconds)
            .unwrap_or(limits::REFUSE_SECONDS_DEFAULT);
        // NaN is refused like 0 s: no filter.
        let refuse = if refuse.is_nan() {
            0.0
        } else {
            refuse.clamp(0.0, limits::REFUSE_SECONDS_MAX)
        };
        if refuse <= 0.0 || refused.is_empty() {
            return;
        }
        let until = now.wall_ms + (refuse * 1000.0) as u64;
        if let Some(f) = self.frameworks.get_mut(fw_id) {
            f.filters
                .insert(agent.clone(), OfferFilter { until, refused });
        }
    }

    /// A status update for a framework: as Mesos writes it, with the state the framework
    /// understands (TASK_LOST for the partition states if it is not partition-aware). The
    /// arguments are the fields of Mesos's `TaskStatus` that vary by caller.
    #[allow(clippy::too_many_arguments)]
    fn status(
        f: &Framework,
        now: Now,
        task_id: &TaskId,
        agent_id: &AgentId,
        state: TaskState,
        status: &shoal_core::StatusInfo,
        reason_override: Option<&str>,
        uuid: Option<Vec<u8>>,
    ) -> mesos::TaskStatus {
        let state = if f.partition_aware {
            state
        } else {
            match state {
                TaskState::Unreachable
                | TaskState::Gone
                | TaskState::GoneByOperator
                | TaskState::Dropped
                | TaskState::Unknown => TaskState::Lost,
                s => s,
            }
        };
        let source = status.source.as_deref().unwrap_or("SOURCE_MASTER");
        let reason = reason_override.or(status.reason.as_deref());
        let timestamp = if status.timestamp > 0 {
            status.timestamp
        } else {
            now.wall_ms
        };
        mesos::TaskStatus {
            task_id: mesos::TaskId {
                value: task_id.as_str().to_string(),
            },
            agent_id: Some(mesos::AgentId {
                value: agent_id.as_str().to_string(),
            }),
            state: task_state(state),
            source: mesos::task_status::Source::from_str_name(source).map(|s| s as i32),
            timestamp: Some(timestamp as f64 / 1000.0),
            message: status.message.clone(),
            reason: reason
                .and_then(mesos::task_status::Reason::from_str_name)
                .map(|r| r as i32),
            healthy: status.healthy,
            uuid,
            ..Default::default()
        }
    }

    /// A master-generated update (not retried: no uuid), as Mesos sends for invalid launches.
    #[allow(clippy::too_many_arguments)]
    fn task_error(
        &self,
        now: Now,
        fw_id: &str,
        task_id: &str,
        agent: Option<&AgentId>,
        state: TaskState,
        reason: &str,
        message: &str,
    ) -> Option<Effect> {
        let status = shoal_core::StatusInfo {
            message: Some(message.to_string()),
            source: Some("SOURCE_MASTER".into()),
            ..Default::default()
        };
        let f = self.frameworks.get(fw_id)?;
        let s = Self::status(
            f,
            now,
            &TaskId::new(task_id),
            agent.unwrap_or(&AgentId::new("")),
            state,
            &status,
            Some(reason),
            None,
        );
        self.send(fw_id, update_event(s))
    }
}

/// The type of a call (`UNKNOWN` for a number this master does not know).
pub fn call_type(call: &Call) -> call::Type {
    call.r#type
        .and_then(|t| call::Type::try_from(t).ok())
        .unwrap_or(call::Type::Unknown)
}

/// A task state as Mesos's enum value.
fn task_state(state: TaskState) -> i32 {
    mesos::TaskState::from_str_name(state.mesos_name())
        .map(|s| s as i32)
        .unwrap_or(mesos::TaskState::TaskLost as i32)
}

/// An event of `ty` with nothing else set (e.g. HEARTBEAT).
pub fn bare_event(ty: event::Type) -> Event {
    Event {
        r#type: Some(ty as i32),
        ..Default::default()
    }
}

/// An UPDATE event carrying `status`.
pub fn update_event(status: mesos::TaskStatus) -> Event {
    Event {
        update: Some(event::Update { status }),
        ..bare_event(event::Type::Update)
    }
}

/// An ERROR event carrying `message`.
pub fn error_event(message: &str) -> Event {
    Event {
        error: Some(event::Error {
            message: message.to_string(),
        }),
        ..bare_event(event::Type::Error)
    }
}

/// A RESCIND event of `offer`.
fn rescind_event(offer: &OfferId) -> Event {
    Event {
        rescind: Some(event::Rescind {
            offer_id: mesos::OfferId {
                value: offer.as_str().to_string(),
            },
        }),
        ..bare_event(event::Type::Rescind)
    }
}

/// An UPDATE_OPERATION_STATUS event carrying `status`.
fn operation_status_event(status: mesos::OperationStatus) -> Event {
    Event {
        update_operation_status: Some(event::UpdateOperationStatus { status }),
        ..bare_event(event::Type::UpdateOperationStatus)
    }
}

/// The ids of removed frameworks, oldest forgotten first.
#[derive(Default)]
struct RemovedFrameworks {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl RemovedFrameworks {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > limits::REMOVED_FRAMEWORKS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

/// The result of a committed command, as [`Frameworks::committed`] takes it.
pub type CommitResult = Result<Reply, shoal_master::CommitError>;

impl Frameworks {
    /// A command of an [`Effect::Commit`] committed (or was refused): what follows from it.
    pub fn committed(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        then: AfterCommit,
        result: CommitResult,
    ) -> Vec<Effect> {
        match then {
            AfterCommit::Nothing => Vec::new(),
            AfterCommit::Accept(pending) => self.accepted(snap, now, *pending, result),
            AfterCommit::Offers(pending) => self.offered(pending, result),
        }
    }
}
