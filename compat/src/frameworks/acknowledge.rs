//! ACKNOWLEDGE: the head of a task's update stream is done; the task's next update goes out.

use shoal_proto::mesos::v1::scheduler::call;

use super::{update_event, Effect, Frameworks, Now};

impl Frameworks {
    pub(super) fn acknowledge(
        &mut self,
        now: Now,
        fw_id: &str,
        ack: call::Acknowledge,
    ) -> Vec<Effect> {
        let next = self
            .frameworks
            .get_mut(fw_id)
            .and_then(|f| f.pending.acknowledge(&ack.uuid, now.monotonic));
        // The task's next update, held back until this one was acknowledged.
        next.and_then(|s| self.send(fw_id, update_event(s)))
            .into_iter()
            .collect()
    }
}
