//! Status updates to one framework, as Mesos's status update manager keeps them: one stream
//! per task, in commit order, and only the head of each stream in flight. The head is resent
//! until the framework acknowledges its uuid; then the next update of that task goes out.
//! An acknowledgement of anything but a head (a duplicate, an unknown uuid) changes nothing.
//! So updates reach the framework at least once and, per task, in order.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_core::TaskId;

struct Pending {
    /// The status's `uuid` (base64), what the framework acknowledges.
    uuid: String,
    status: Json,
    /// When the update last went out; `None` while it waits behind its task's head.
    sent_at: Option<Instant>,
}

/// The unacknowledged status updates of one framework.
#[derive(Default)]
pub struct UpdateStreams {
    streams: BTreeMap<TaskId, VecDeque<Pending>>,
}

impl UpdateStreams {
    /// Queues an update of `task`; returns its status when it is to be sent now (no other
    /// update of the task is in flight).
    pub fn push(&mut self, task: TaskId, uuid: String, status: Json, now: Instant) -> Option<Json> {
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
    pub fn acknowledge(&mut self, uuid: &str, now: Instant) -> Option<Json> {
        let task = self
            .streams
            .iter()
            .find(|(_, s)| s.front().is_some_and(|p| p.uuid == uuid))
            .map(|(t, _)| t.clone())?;
        let stream = self.streams.get_mut(&task).expect("found above");
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
    pub fn due(&mut self, retry: Duration, now: Instant) -> Vec<Json> {
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
    use serde_json::json;

    #[test]
    fn one_update_per_task_in_flight_in_order_until_acknowledged() {
        let t0 = Instant::now();
        let mut u = UpdateStreams::default();
        let a = TaskId::new("a");
        assert_eq!(
            u.push(a.clone(), "1".into(), json!("a-starting"), t0),
            Some(json!("a-starting"))
        );
        assert_eq!(u.push(a.clone(), "2".into(), json!("a-running"), t0), None);
        assert_eq!(
            u.push(TaskId::new("b"), "3".into(), json!("b-starting"), t0),
            Some(json!("b-starting")),
            "another task's stream is independent"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(u.due(Duration::from_secs(2), later).is_empty());
        assert_eq!(
            u.due(Duration::from_secs(1), later),
            vec![json!("a-starting"), json!("b-starting")],
            "only heads are resent"
        );
        assert_eq!(u.acknowledge("2", later), None, "not a head: ignored");
        assert_eq!(u.acknowledge("1", later), Some(json!("a-running")));
        assert_eq!(u.acknowledge("1", later), None, "a duplicate: ignored");
        assert_eq!(u.acknowledge("2", later), None);
        assert_eq!(u.acknowledge("3", later), None);
        assert!(u.due(Duration::ZERO, later).is_empty());
    }
}
