//! RECONCILE (explicit and implicit) and RECONCILE_OPERATIONS, answered from the shared state.

use shoal_core::{AgentId, TaskId, TaskState};
use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::call;

use super::{operation_status_event, update_event, Effect, Frameworks, Now};

impl Frameworks {
    pub(super) fn reconcile(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        fw_id: &str,
        reconcile: call::Reconcile,
    ) -> Vec<Effect> {
        if reconcile.tasks.is_empty() {
            // Implicit: every non-terminal task of the framework.
            let ids: Vec<TaskId> = snap
                .tasks()
                .filter(|t| t.owner == fw_id && !t.state.is_terminal())
                .map(|t| t.id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| self.reconcile_one(snap, now, fw_id, id, None))
                .collect()
        } else {
            reconcile
                .tasks
                .iter()
                .filter_map(|t| {
                    let agent = t.agent_id.as_ref().map(|a| AgentId::new(a.value.as_str()));
                    let id = TaskId::new(t.task_id.value.as_str());
                    self.reconcile_one(snap, now, fw_id, &id, agent.as_ref())
                })
                .collect()
        }
    }

    /// The state of one task as the master knows it; a task it does not know (or another
    /// framework's) is TASK_LOST, or for a partition-aware framework TASK_GONE on a known
    /// agent and TASK_UNKNOWN otherwise.
    pub(super) fn reconcile_one(
        &self,
        snap: &shoal_sched::Cell,
        now: Now,
        fw_id: &str,
        task_id: &TaskId,
        agent: Option<&AgentId>,
    ) -> Option<Effect> {
        let f = self.frameworks.get(fw_id)?;
        let status = match snap.task(task_id).filter(|t| t.owner == fw_id) {
            // As Mesos's `_reconcileTasks`: the latest state, written by the master now
            // (SOURCE_MASTER, "Reconciliation: Latest task state"), with the task's health.
            Some(t) => {
                let latest = shoal_core::StatusInfo {
                    message: Some("Reconciliation: Latest task state".into()),
                    source: Some("SOURCE_MASTER".into()),
                    healthy: t.status.healthy,
                    ..Default::default()
                };
                Self::status(
                    f,
                    now,
                    &t.id,
                    &t.agent_id,
                    t.state,
                    &latest,
                    Some("REASON_RECONCILIATION"),
                    None,
                )
            }
            None => {
                let agent = agent.cloned().unwrap_or_else(|| AgentId::new(""));
                let state = if f.partition_aware {
                    if snap.agent(&agent).is_some() {
                        TaskState::Gone
                    } else {
                        TaskState::Unknown
                    }
                } else {
                    TaskState::Lost
                };
                let status = shoal_core::StatusInfo {
                    message: Some("Reconciliation: task is unknown".into()),
                    source: Some("SOURCE_MASTER".into()),
                    ..Default::default()
                };
                Self::status(
                    f,
                    now,
                    task_id,
                    &agent,
                    state,
                    &status,
                    Some("REASON_RECONCILIATION"),
                    None,
                )
            }
        };
        self.send(fw_id, update_event(status))
    }

    /// This master carries out no operation with feedback, so every operation asked about is
    /// unknown (or, on an agent that is unreachable or gone, reported as such, as Mesos
    /// does); an implicit reconciliation has nothing to report.
    pub(super) fn reconcile_operations(
        &mut self,
        snap: &shoal_sched::Cell,
        fw_id: &str,
        reconcile: call::ReconcileOperations,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        for op in reconcile.operations {
            let agent = op
                .agent_id
                .as_ref()
                .and_then(|a| snap.agent(&AgentId::new(a.value.as_str())));
            let state = match agent.map(|a| a.state) {
                Some(shoal_core::AgentState::Unreachable) => {
                    mesos::OperationState::OperationUnreachable
                }
                Some(shoal_core::AgentState::Gone) => {
                    mesos::OperationState::OperationGoneByOperator
                }
                _ => mesos::OperationState::OperationUnknown,
            };
            let status = mesos::OperationStatus {
                operation_id: Some(op.operation_id),
                state: state as i32,
                message: Some("Reconciliation: operation is unknown".into()),
                agent_id: op.agent_id,
                ..Default::default()
            };
            out.extend(self.send(fw_id, operation_status_event(status)));
        }
        out
    }
}
