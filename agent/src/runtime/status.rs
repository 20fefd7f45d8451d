//! An executor's updates as the Mesos task states and statuses the agent reports.

use shoal_core::agent_protocol::AgentMessage;
use shoal_core::{StatusInfo, TaskState};

use crate::executor::{FailReason, TaskUpdate};

pub(super) fn status_update(u: crate::journal::Update) -> AgentMessage {
    AgentMessage::StatusUpdate {
        update_id: u.id,
        task_id: u.task_id,
        state: u.state,
        status: u.status,
    }
}

pub(super) fn status_msg(message: &str, reason: Option<&str>) -> StatusInfo {
    StatusInfo {
        message: Some(message.to_string()),
        reason: reason.map(str::to_string),
        source: Some("SOURCE_EXECUTOR".into()),
        ..StatusInfo::default()
    }
}

/// An executor's update as a Mesos task state and status.
pub fn translate(update: &TaskUpdate) -> (TaskState, StatusInfo) {
    match update {
        TaskUpdate::Starting => (TaskState::Starting, status_msg("starting", None)),
        TaskUpdate::Running { healthy } => {
            let mut s = status_msg("running", None);
            s.healthy = *healthy;
            if healthy.is_some() {
                s.reason = Some("REASON_TASK_HEALTH_CHECK_STATUS_UPDATED".into());
            }
            (TaskState::Running, s)
        }
        TaskUpdate::Finished => {
            let mut s = status_msg("command exited with status 0", None);
            s.exit_code = Some(0);
            (TaskState::Finished, s)
        }
        TaskUpdate::Failed {
            exit_code,
            reason,
            message,
        } => {
            let r = match reason {
                FailReason::CommandExit => "REASON_COMMAND_EXECUTOR_FAILED",
                FailReason::Oom => "REASON_CONTAINER_LIMITATION_MEMORY",
                FailReason::ImageMissing => "REASON_CONTAINER_LAUNCH_FAILED",
                FailReason::LaunchFailed => "REASON_CONTAINER_LAUNCH_FAILED",
                FailReason::Lost => "REASON_EXECUTOR_TERMINATED",
            };
            let mut s = status_msg(message, Some(r));
            s.exit_code = *exit_code;
            (TaskState::Failed, s)
        }
        TaskUpdate::Killed { message } => (
            TaskState::Killed,
            status_msg(
                message,
                Some("REASON_TASK_KILLED_DURING_LAUNCH").filter(|_| false),
            ),
        ),
        TaskUpdate::Error { message } => (
            TaskState::Error,
            status_msg(message, Some("REASON_TASK_INVALID")),
        ),
    }
}
