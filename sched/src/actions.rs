//! What a built-in scheduler wants done after a step, the same shape for both schedulers.

use shoal_core::*;

use crate::batch::JobUpdate;

/// What a built-in scheduler wants done after a step (`U`: its record updates; the service
/// scheduler's are `ServiceUpdate`s).
#[derive(Clone, Debug, PartialEq)]
pub struct Actions<U = JobUpdate> {
    /// Claims to submit (fine-grained). The batch scheduler makes one incremental claim per
    /// job and priority, and one all-or-nothing claim per task placed by evicting others;
    /// report each outcome with
    /// [`BatchScheduler::claimed`](crate::batch::BatchScheduler::claimed).
    pub claims: Vec<Claim>,
    /// Tasks to kill (timed out, or of a stopped job).
    pub kills: Vec<TaskId>,
    /// Job records to update.
    pub updates: Vec<U>,
    /// Step again at this time at the latest (a backoff ends or a timeout is due).
    pub wake_at: Option<Timestamp>,
}

impl<U> Default for Actions<U> {
    fn default() -> Self {
        Actions {
            claims: Vec::new(),
            kills: Vec::new(),
            updates: Vec::new(),
            wake_at: None,
        }
    }
}

impl<U> Actions<U> {
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.kills.is_empty() && self.updates.is_empty()
    }
}
