//! ACCEPT: LAUNCH and LAUNCH_GROUP become one `AcceptHolds` command; every other operation
//! is dropped, as Mesos drops an invalid operation.

use std::collections::HashMap;

use shoal_core::{
    AgentId, Claim, ClaimId, CommitMode, ConflictCheck, OfferId, Placement, Rejection, ResourceSet,
    TaskId, TaskSpec, TaskState,
};
use shoal_master::CommitError;
use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::offer::operation;
use shoal_proto::mesos::v1::scheduler::call;
use shoal_sched::{Command, Reply};

use super::{operation_status_event, AfterCommit, CommitResult, Effect, Frameworks, Now};

/// An ACCEPT whose command is being committed: what its result is read against.
#[derive(Debug)]
pub struct AcceptPending {
    framework_id: String,
    offer_ids: Vec<OfferId>,
    placements: Vec<Placement>,
    /// What the offers held, per agent: what the tasks do not use is declined.
    held: HashMap<AgentId, ResourceSet>,
    /// The agent of the offers (the tasks' agent), for the updates of tasks that fail.
    agent: Option<AgentId>,
    filters: Option<mesos::Filters>,
}

/// The resources `offers` hold, per agent (offers this framework does not hold are left out).
pub(super) fn held_by_agent(
    snap: &shoal_sched::Cell,
    fw_id: &str,
    offers: &[OfferId],
) -> HashMap<AgentId, ResourceSet> {
    let mut out: HashMap<AgentId, ResourceSet> = HashMap::new();
    for h in offers
        .iter()
        .filter_map(|o| snap.hold(o))
        .filter(|h| h.framework_id == fw_id)
    {
        let _ = out.entry(h.agent_id.clone()).or_default().add(&h.resources);
    }
    out
}

/// The name of an operation's type (`UNKNOWN` for one this master does not know).
fn operation_type(op: &mesos::offer::Operation) -> operation::Type {
    op.r#type
        .and_then(|t| operation::Type::try_from(t).ok())
        .unwrap_or(operation::Type::Unknown)
}

impl Frameworks {
    pub(super) fn accept(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        fw_id: &str,
        accept: call::Accept,
    ) -> Vec<Effect> {
        let ids: Vec<OfferId> = accept
            .offer_ids
            .iter()
            .map(|o| OfferId::new(o.value.as_str()))
            .collect();
        let agent = ids
            .iter()
            .find_map(|o| snap.hold(o))
            .map(|h| h.agent_id.clone());
        let mut out = Vec::new();
        let mut tasks: Vec<mesos::TaskInfo> = Vec::new();
        let mut invalid: Vec<(String, String)> = Vec::new();
        for op in accept.operations {
            let ty = operation_type(&op);
            let launched: Vec<mesos::TaskInfo> = match ty {
                operation::Type::Launch => op.launch.map(|l| l.task_infos).unwrap_or_default(),
                operation::Type::LaunchGroup => {
                    let group = op
                        .launch_group
                        .map(|g| g.task_group.tasks)
                        .unwrap_or_default();
                    let group_id = group
                        .first()
                        .map(|t| t.task_id.value.clone())
                        .unwrap_or_else(|| "group".into());
                    group
                        .into_iter()
                        .map(|mut t| {
                            // The tasks of a group share a network namespace and die together.
                            t.labels.get_or_insert_default().labels.push(mesos::Label {
                                key: "shoal.group".into(),
                                value: Some(group_id.clone()),
                            });
                            t
                        })
                        .collect()
                }
                _ => {
                    out.extend(self.drop_operation(fw_id, ty, &op));
                    continue;
                }
            };
            if op.id.is_some() {
                // As Mesos: LAUNCH and LAUNCH_GROUP take no operation feedback; their tasks
                // fail.
                let ty = ty.as_str_name();
                for t in &launched {
                    invalid.push((
                        t.task_id.value.clone(),
                        format!("The 'id' field was set in a {ty} operation, but operation feedback is not supported for {ty}"),
                    ));
                }
                continue;
            }
            tasks.extend(launched);
        }
        // The tasks take the role the offers were made for.
        let role = ids
            .iter()
            .find_map(|o| snap.hold(o))
            .map(|h| h.role.clone())
            .unwrap_or_else(|| "*".into());
        let mut placements = Vec::new();
        for mut t in tasks {
            let task_id = t.task_id.value.clone();
            // As Mesos: a task or executor id it would refuse fails that task (TASK_ERROR).
            let executor = t.executor.as_ref().map(|e| e.executor_id.value.as_str());
            let checked = shoal_core::cell::validate_id("task id", &task_id).and_then(|()| {
                executor.map_or(Ok(()), |e| shoal_core::cell::validate_id("executor id", e))
            });
            if let Err(shoal_core::Rejection::Invalid(why)) = checked {
                invalid.push((task_id, why));
                continue;
            }
            if let Some(a) = &agent {
                t.agent_id = mesos::AgentId {
                    value: a.as_str().to_string(),
                };
            }
            // The cell keeps a task's spec as Mesos JSON: the one conversion of the typed
            // TaskInfo, read by the same reader a native claim's TaskInfo goes through.
            let json = shoal_proto::json::to_json_value(&t);
            match shoal_mesos::raw::task_info_parts(&json).map_err(|e| e.to_string()) {
                Ok(parts) => placements.push(Placement {
                    task_id: TaskId::new(&parts.task_id),
                    name: parts.name,
                    agent_id: parts
                        .agent_id
                        .map(AgentId::new)
                        .unwrap_or_else(|| AgentId::new("")),
                    resources: parts.resources,
                    spec: TaskSpec::from_value(&json),
                }),
                Err(e) => invalid.push((task_id, e)),
            }
        }
        for (task_id, why) in &invalid {
            out.extend(self.task_error(
                now,
                fw_id,
                task_id,
                agent.as_ref(),
                TaskState::Error,
                "REASON_TASK_INVALID",
                why,
            ));
        }
        for o in &ids {
            if snap.hold(o).is_some_and(|h| h.framework_id == fw_id) {
                self.sent.remove(o);
                self.released_by_us.insert(o.clone());
            }
        }
        let claim = Claim {
            priority: 0,
            evictions: vec![],
            id: ClaimId::new(self.next_id("A")),
            role,
            owner: fw_id.to_string(),
            snapshot_version: snap.version(),
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements: placements.clone(),
        };
        let held = held_by_agent(snap, fw_id, &ids);
        out.push(Effect::Commit {
            command: Command::AcceptHolds {
                framework_id: fw_id.to_string(),
                offer_ids: ids.clone(),
                claim,
            },
            then: AfterCommit::Accept(Box::new(AcceptPending {
                framework_id: fw_id.to_string(),
                offer_ids: ids,
                placements,
                held,
                agent,
                filters: accept.filters,
            })),
        });
        out
    }

    /// The ACCEPT committed or was refused: updates for the tasks that did not launch, and
    /// what it left unused declined with its filters (Mesos's default: 5 s).
    pub(super) fn accepted(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        p: AcceptPending,
        result: CommitResult,
    ) -> Vec<Effect> {
        let fw_id = p.framework_id.as_str();
        let mut out = Vec::new();
        let mut held = p.held;
        let mut used = ResourceSet::new();
        match result {
            Ok(Reply::Claim { outcome }) => {
                for c in outcome.placements.iter().filter(|c| c.committed) {
                    if let Some(placed) = p.placements.iter().find(|x| x.task_id == c.task_id) {
                        let _ = used.add(&placed.resources);
                    }
                }
                for c in outcome.placements.iter().filter(|c| !c.committed) {
                    let why = serde_json::to_value(&c.rejected)
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    let reason = match &c.rejected {
                        // As Mesos's task validation: a duplicate id, or resources the
                        // offers do not hold ("Task uses more resources than available").
                        Some(shoal_core::RejectReason::DuplicateTaskId)
                        | Some(shoal_core::RejectReason::ReservationMismatch { .. })
                        | Some(shoal_core::RejectReason::InsufficientResources { .. }) => {
                            "REASON_TASK_INVALID"
                        }
                        _ => "REASON_INVALID_OFFERS",
                    };
                    out.extend(self.task_error(
                        now,
                        fw_id,
                        c.task_id.as_str(),
                        p.agent.as_ref(),
                        TaskState::Error,
                        reason,
                        &format!("task not launched: {why}"),
                    ));
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Offers that are not outstanding (rescinded, used, another framework's):
                // the tasks are dropped, as Mesos does for invalid offers.
                let msg = e.to_string();
                let state = match &e {
                    CommitError::Rejected(Rejection::NotFound(_))
                    | CommitError::Rejected(Rejection::Forbidden(_)) => TaskState::Dropped,
                    _ => TaskState::Error,
                };
                for t in &p.placements {
                    out.extend(self.task_error(
                        now,
                        fw_id,
                        t.task_id.as_str(),
                        p.agent.as_ref(),
                        state,
                        "REASON_INVALID_OFFERS",
                        &msg,
                    ));
                }
                // The valid offers among them go back (the accept as a whole was refused).
                let valid: Vec<OfferId> = p
                    .offer_ids
                    .iter()
                    .filter(|o| snap.hold(o).is_some_and(|h| h.framework_id == fw_id))
                    .cloned()
                    .collect();
                out.extend(self.release(valid));
                held.clear(); // no filter for offers that went back unused
            }
        }
        for (agent, mut unused) in held {
            if unused.subtract(&used).is_ok() {
                self.install_filter(now, fw_id, &agent, unused, p.filters.as_ref());
            }
        }
        out.push(Effect::Wake);
        out
    }

    /// An offer operation this master refuses (RESERVE, UNRESERVE, CREATE, DESTROY,
    /// GROW_VOLUME, SHRINK_VOLUME, CREATE_DISK, DESTROY_DISK, UNKNOWN): dropped as Mesos drops
    /// an invalid operation. The framework learns of it only if it set the operation's `id`:
    /// then it gets UPDATE_OPERATION_STATUS with OPERATION_ERROR (no uuid: nothing to
    /// acknowledge). The resources the operation would have used stay unused in the ACCEPT
    /// and go back like the rest.
    fn drop_operation(
        &self,
        fw_id: &str,
        ty: operation::Type,
        op: &mesos::offer::Operation,
    ) -> Option<Effect> {
        let ty = ty.as_str_name();
        let message = format!(
            "Dropping {ty} operation: Shoal agents have no dynamic reservations, persistent \
             volumes or resource providers, so only LAUNCH and LAUNCH_GROUP are carried out"
        );
        tracing::warn!(framework_id = %fw_id, operation = ty, "{message}");
        let id = op.id.clone()?;
        let status = mesos::OperationStatus {
            operation_id: Some(id),
            state: mesos::OperationState::OperationError as i32,
            message: Some(message),
            ..Default::default()
        };
        self.send(fw_id, operation_status_event(status))
    }
}
