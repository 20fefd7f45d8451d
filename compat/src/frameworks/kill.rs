//! KILL and SHUTDOWN: a task the framework owns is killed through the commit path; KILL of
//! a task it does not own is answered as Mesos answers it (TASK_LOST, or TASK_UNKNOWN for a
//! partition-aware framework).

use shoal_core::{AgentId, TaskId};
use shoal_proto::mesos::v1::scheduler::call;
use shoal_sched::Command;

use super::{AfterCommit, Effect, Frameworks, Now};

impl Frameworks {
    pub(super) fn kill(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        fw_id: &str,
        kill: call::Kill,
    ) -> Vec<Effect> {
        let task_id = TaskId::new(kill.task_id.value.as_str());
        let owned = snap.task(&task_id).is_some_and(|t| t.owner == fw_id);
        if owned {
            vec![kill_task(task_id)]
        } else {
            // Unknown task: Mesos answers with TASK_LOST (or TASK_UNKNOWN).
            let agent = kill.agent_id.map(|a| AgentId::new(a.value.as_str()));
            self.reconcile_one(snap, now, fw_id, &task_id, agent.as_ref())
                .into_iter()
                .collect()
        }
    }

    /// Every Shoal task runs under its own command executor, whose id in Mesos is the task's
    /// id: shutting that executor down kills the task. Other executors: none.
    pub(super) fn shutdown(
        &mut self,
        snap: &shoal_sched::Cell,
        fw_id: &str,
        shutdown: call::Shutdown,
    ) -> Vec<Effect> {
        let task_id = TaskId::new(shutdown.executor_id.value.as_str());
        let live = snap
            .task(&task_id)
            .is_some_and(|t| t.owner == fw_id && !t.state.is_terminal());
        if live {
            vec![kill_task(task_id)]
        } else {
            Vec::new()
        }
    }
}

/// The command that kills `task_id`.
pub(super) fn kill_task(task_id: TaskId) -> Effect {
    Effect::Commit {
        command: Command::KillTask { task_id },
        then: AfterCommit::Nothing,
    }
}
