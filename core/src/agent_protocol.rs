//! The messages of the live connection between an agent and the master (a WebSocket the
//! agent opens; see `docs/agent-protocol.md`). Plain data: both sides and the tests share it.

use serde::{Deserialize, Serialize};

use crate::cell::AgentRegistration;
use crate::model::{AgentId, StatusInfo, Task, TaskId};
use crate::task::TaskState;

/// Agent → master.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentMessage {
    /// The first message on every connection. `registration.agent_id` is set when the agent
    /// registered before. `known` lists every task the agent tracks (running, or ended with
    /// an update not yet acknowledged), so the master can reconcile.
    Register {
        registration: AgentRegistration,
        known: Vec<TaskId>,
    },
    Heartbeat,
    /// A task's status; retried (same `update_id`) until acknowledged.
    StatusUpdate {
        update_id: u64,
        task_id: TaskId,
        state: TaskState,
        status: StatusInfo,
    },
    /// The answer to a [`MasterMessage::FilesRequest`].
    FilesReply {
        request_id: u64,
        status: u16,
        body: serde_json::Value,
    },
}

/// Master → agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MasterMessage {
    Registered {
        agent_id: AgentId,
        heartbeat_interval_ms: u64,
    },
    /// Run these tasks. At-least-once: an agent ignores a task id it already knows.
    Launch { tasks: Vec<Task> },
    /// Kill a task: SIGTERM, then SIGKILL after the grace period.
    Kill {
        task_id: TaskId,
        grace_ms: Option<u64>,
    },
    /// The master committed the update with this id: the agent may forget it.
    StatusAck { update_id: u64 },
    /// Read the sandbox: `op` is `browse` or `read` (the Mesos `/files` endpoints); `path`
    /// is relative to the sandbox of `task_id`.
    FilesRequest {
        request_id: u64,
        op: String,
        task_id: TaskId,
        path: String,
        offset: u64,
        length: Option<u64>,
    },
    /// The master refuses the connection (e.g. the agent was removed); it is closed next.
    Error { message: String, forget_id: bool },
}
