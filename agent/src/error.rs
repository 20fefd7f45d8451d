//! The agent's one error type.
//!
//! Each variant names where the failure comes from. Where a message reaches a task's status
//! (a `TASK_FAILED` or `TASK_ERROR` a framework reads) or a log line, its text is the one
//! Shoal always wrote: frameworks and tests read them.

use crate::executor::SpecError;

/// A failure of the agent or one of its executors (not of a task: those are
/// [`TaskUpdate`](crate::executor::TaskUpdate)s).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A task with this id is already tracked by the executor.
    #[error("task {0} already exists")]
    DuplicateTask(String),
    /// No running task with this id.
    #[error("unknown task {0}")]
    UnknownTask(String),
    /// The Docker daemon failed or does not answer.
    #[error("docker: {0}")]
    Docker(String),
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A launch spec the executor refuses.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A task that cannot be started as its spec says (program not found, bad argument):
    /// the message its `TASK_FAILED` carries.
    #[error("{0}")]
    Launch(String),
    /// The cgroups that carry a task's limits cannot be made.
    #[error("{0}")]
    Cgroup(String),
    /// A group's shared network namespace is not available (its owner ended or failed).
    #[error("{0}")]
    Group(String),
    /// A task's container or process vanished: the message its `TASK_FAILED` carries.
    #[error("{0}")]
    Lost(String),
    /// A process task's supervisor did not say what the agent waits to hear.
    #[error("{0}")]
    Protocol(String),
    /// A health probe saw the task unhealthy, or could not look.
    #[error("{0}")]
    Probe(String),
}

impl AgentError {
    /// An IO failure, with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}
