//! Task states with Mesos's names, and the table of legal transitions.

use serde::{Deserialize, Serialize};

/// A task's state, named as in `mesos.v1.TaskState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    #[serde(rename = "TASK_STAGING")]
    Staging,
    #[serde(rename = "TASK_STARTING")]
    Starting,
    #[serde(rename = "TASK_RUNNING")]
    Running,
    #[serde(rename = "TASK_KILLING")]
    Killing,
    #[serde(rename = "TASK_FINISHED")]
    Finished,
    #[serde(rename = "TASK_FAILED")]
    Failed,
    #[serde(rename = "TASK_KILLED")]
    Killed,
    #[serde(rename = "TASK_ERROR")]
    Error,
    #[serde(rename = "TASK_LOST")]
    Lost,
    #[serde(rename = "TASK_DROPPED")]
    Dropped,
    #[serde(rename = "TASK_UNREACHABLE")]
    Unreachable,
    #[serde(rename = "TASK_GONE")]
    Gone,
    #[serde(rename = "TASK_GONE_BY_OPERATOR")]
    GoneByOperator,
    #[serde(rename = "TASK_UNKNOWN")]
    Unknown,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Killing,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Killed,
        TaskState::Error,
        TaskState::Lost,
        TaskState::Dropped,
        TaskState::Unreachable,
        TaskState::Gone,
        TaskState::GoneByOperator,
        TaskState::Unknown,
    ];

    /// Terminal states free the task's resources. TASK_LOST and TASK_UNREACHABLE are not
    /// terminal, as in Mesos: the task may come back, so its resources stay booked until it
    /// is known to be gone.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Dropped
                | TaskState::Gone
                | TaskState::GoneByOperator
        )
    }

    /// The Mesos name, e.g. `TASK_RUNNING`.
    pub fn mesos_name(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Starting => "TASK_STARTING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
            TaskState::Finished => "TASK_FINISHED",
            TaskState::Failed => "TASK_FAILED",
            TaskState::Killed => "TASK_KILLED",
            TaskState::Error => "TASK_ERROR",
            TaskState::Lost => "TASK_LOST",
            TaskState::Dropped => "TASK_DROPPED",
            TaskState::Unreachable => "TASK_UNREACHABLE",
            TaskState::Gone => "TASK_GONE",
            TaskState::GoneByOperator => "TASK_GONE_BY_OPERATOR",
            TaskState::Unknown => "TASK_UNKNOWN",
        }
    }

    pub fn from_mesos_name(s: &str) -> Option<TaskState> {
        let s = if s.starts_with("TASK_") {
            s.to_string()
        } else {
            format!("TASK_{s}")
        };
        TaskState::ALL.into_iter().find(|t| t.mesos_name() == s)
    }

    /// The table of legal transitions. A non-terminal state may be repeated (a refresh that
    /// carries new health or a new message); nothing leaves a terminal state.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        if self.is_terminal() || next == Unknown || next == Staging {
            return false;
        }
        if self == next {
            return true;
        }
        match self {
            Staging => true,
            Starting => next != Staging,
            Running => !matches!(next, Staging | Starting),
            Killing => next.is_terminal() || matches!(next, Lost | Unreachable),
            // A task on a partitioned agent may come back in any live state, or be found gone.
            Lost | Unreachable => true,
            Unknown => false,
            Finished | Failed | Killed | Error | Dropped | Gone | GoneByOperator => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in TaskState::ALL {
            assert_eq!(TaskState::from_mesos_name(s.mesos_name()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.mesos_name()));
        }
        assert_eq!(
            TaskState::from_mesos_name("RUNNING"),
            Some(TaskState::Running)
        );
    }

    #[test]
    fn terminal_states_are_final() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in TaskState::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn lost_and_unreachable_can_recover() {
        assert!(!TaskState::Lost.is_terminal());
        assert!(!TaskState::Unreachable.is_terminal());
        assert!(TaskState::Unreachable.can_become(TaskState::Running));
        assert!(TaskState::Lost.can_become(TaskState::Gone));
        assert!(!TaskState::Running.can_become(TaskState::Staging));
        assert!(!TaskState::Killing.can_become(TaskState::Running));
    }
}
