//! TEARDOWN, and the removal a failover timeout causes: the framework's tasks are killed,
//! its offers go back, its session ends, and its id may not subscribe again.

use super::kill::kill_task;
use super::{Effect, Frameworks};

impl Frameworks {
    pub(super) fn teardown(&mut self, snap: &shoal_sched::Cell, fw_id: &str) -> Vec<Effect> {
        self.remove_framework(snap, fw_id)
    }

    /// Kills a framework's tasks, releases its offers and forgets it.
    pub(super) fn remove_framework(
        &mut self,
        snap: &shoal_sched::Cell,
        fw_id: &str,
    ) -> Vec<Effect> {
        let Some(removed) = self.frameworks.remove(fw_id) else {
            return Vec::new();
        };
        self.removed.insert(fw_id);
        tracing::info!(framework_id = %fw_id, "framework removed; killing its tasks");
        let mut out = Vec::new();
        if let Some(session) = removed.session {
            out.push(Effect::Close {
                session,
                error: None,
            });
        }
        let offers = self.offers_of(snap, fw_id);
        out.extend(self.release(offers));
        for t in snap
            .tasks()
            .filter(|t| t.owner == fw_id && !t.state.is_terminal())
        {
            out.push(kill_task(t.id.clone()));
        }
        out
    }
}
