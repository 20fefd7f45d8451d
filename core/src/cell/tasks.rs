//! Tasks after their claim: kills, and the status updates their agents report.

use super::*;

impl<R: Records> Cell<R> {
    /// Decides `KillTask`: a launched task on an active agent is asked to stop (TASK_KILLING),
    /// any other is killed at once; an ended or stopping one is left as it is.
    pub(super) fn decide_kill(
        &self,
        now: Timestamp,
        task_id: &TaskId,
    ) -> Result<Decision<R>, Rejection> {
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

    /// Decides `UpdateTaskStatus`: a change the task's state allows, recorded once (status
    /// updates are at-least-once); an evicted task stays killed for its preemption.
    pub(super) fn decide_task_status(
        &self,
        now: Timestamp,
        task_id: &TaskId,
        state: TaskState,
        status: &StatusInfo,
    ) -> Result<Decision<R>, Rejection> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| not_found_task(task_id))?;
        // An evicted task is being killed: it holds no resources any more, so it must
        // not run on. Any live state it reports (but lost or unreachable) is recorded
        // as TASK_KILLING, which sends the kill again.
        let state = if task.preempted_by.is_some()
            && !state.is_terminal()
            && !matches!(state, TaskState::Lost | TaskState::Unreachable)
        {
            TaskState::Killing
        } else {
            state
        };
        if task.state == state && state.is_terminal() {
            // A repeated terminal update (status updates are at-least-once): no change.
            return Ok(Decision {
                events: vec![],
                reply: Reply::Done,
            });
        }
        if !task.state.can_become(state) {
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
        if task.state == state && (task.status == *status || task.status == same_but_time) {
            return Ok(Decision {
                events: vec![],
                reply: Reply::Done,
            });
        }
        let mut status = status.clone();
        if status.timestamp == 0 {
            status.timestamp = now;
        }
        if task.preempted_by.is_some() && (state == TaskState::Killed || !state.is_terminal()) {
            // An evicted task keeps the preemption's reason and message to its end
            // (TASK_KILLED), whatever its executor says about the kill.
            status.reason = task.status.reason.clone();
            status.message = task.status.message.clone();
        }
        Ok(Decision {
            events: vec![Event::TaskStatusChanged {
                task_id: task_id.clone(),
                state,
                status,
            }],
            reply: Reply::Done,
        })
    }
}
