//! Status updates to one framework, as Mesos's status update manager keeps them: one stream
//! per task, in commit order, and only the head of each stream in flight. The head is resent
//! until the framework acknowledges its uuid; then the next update of that task goes out.
//! An acknowledgement of anything but a head (a duplicate, an unknown uuid) changes nothing.
//! So updates reach the framework at least once and, per task, in order.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use shoal_core::TaskId;
use shoal_proto::mesos::v1::TaskStatus;

struct Pending {
    /// The status's `uuid`, what the framework acknowledges.
    uuid: Vec<u8>,
    status: TaskStatus,
    /// When the update last went out; `None` while it waits behind its task's head.
    sent_at: Option<Instant>,
}

/// The unacknowledged status updates of one framework.
#[derive(Default)]
pub struct UpdateStreams {
    streams: BTreeMap<TaskId, VecDeque<Pending>>,
}

impl UpdateStreams {
    /// Whether an update of `task` waits for its acknowledgement.
    pub fn has(&self, task: &TaskId) -> bool {
        self.streams.contains_key(task)
    }

    /// Queues an update of `task`; returns its status when it is to be sent now (no other
    /// update of the task is in flight).
    pub fn push(
        &mut self,
        task: TaskId,
        uuid: Vec<u8>,
        status: TaskStatus,
        now: Instant,
    ) -> Option<TaskStatus> {
        let stream = self.streams.entry(task).or_default();
        let head = stream.is_empty();
        stream.push_back(Pending {
            uuid,
            status: status.clone(),
            sent_at: head.then_some(now),
        });
        head.then_some(status)
    }

    /// The framework acknowledged `uuid`: when it is the head of its task's stream, the head
    /// is dropped and the next update of the task (to be sent now) returned.
    pub fn acknowledge(&mut self, uuid: &[u8], now: Instant) -> Option<TaskStatus> {
        let task = self
            .streams
            .iter()
            .find(|(_, s)| s.front().is_some_and(|p| p.uuid == uuid))
            .map(|(t, _)| t.clone())?;
        let stream = self.streams.get_mut(&task)?;
        stream.pop_front();
        match stream.front_mut() {
            Some(next) => {
                next.sent_at = Some(now);
                Some(next.status.clone())
            }
            None => {
                self.streams.remove(&task);
                None
            }
        }
    }

    /// The heads sent at least `retry` ago (all heads with `retry` zero), marked sent `now`.
    pub fn due(&mut self, retry: Duration, now: Instant) -> Vec<TaskStatus> {
        let mut out = Vec::new();
        for head in self.streams.values_mut().filter_map(|s| s.front_mut()) {
            if head
                .sent_at
                .is_none_or(|t| now.saturating_duration_since(t) >= retry)
            {
                head.sent_at = Some(now);
                out.push(head.status.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(text: &str) -> TaskStatus {
        TaskStatus {
            message: Some(text.into()),
            ..Default::default()
        }
    }

    #[test]
    fn one_update_per_task_in_flight_in_order_until_acknowledged() {
        let t0 = Instant::now();
        let mut u = UpdateStreams::default();
        let a = TaskId::new("a");
        assert_eq!(
            u.push(a.clone(), vec![1], status("a-starting"), t0),
            Some(status("a-starting"))
        );
        assert_eq!(u.push(a.clone(), vec![2], status("a-running"), t0), None);
        assert_eq!(
            u.push(TaskId::new("b"), vec![3], status("b-starting"), t0),
            Some(status("b-starting")),
            "another task's stream is independent"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(u.due(Duration::from_secs(2), later).is_empty());
        assert_eq!(
            u.due(Duration::from_secs(1), later),
            vec![status("a-starting"), status("b-starting")],
            "only heads are resent"
        );
        assert_eq!(u.acknowledge(&[2], later), None, "not a head: ignored");
        assert_eq!(u.acknowledge(&[1], later), Some(status("a-running")));
        assert_eq!(u.acknowledge(&[1], later), None, "a duplicate: ignored");
        assert_eq!(u.acknowledge(&[2], later), None);
        assert_eq!(u.acknowledge(&[3], later), None);
        assert!(u.due(Duration::ZERO, later).is_empty());
    }
}
