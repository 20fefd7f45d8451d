//! DECLINE: the offers go back and Mesos's refused-offer filter is installed for them.

use shoal_core::OfferId;
use shoal_proto::mesos::v1::scheduler::call;

use super::accept::held_by_agent;
use super::{Effect, Frameworks, Now};

impl Frameworks {
    pub(super) fn decline(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        fw_id: &str,
        decline: call::Decline,
    ) -> Vec<Effect> {
        // Only offers this framework holds; another's, or one gone, are ignored.
        let mine: Vec<OfferId> = decline
            .offer_ids
            .iter()
            .map(|o| OfferId::new(o.value.as_str()))
            .filter(|o| snap.hold(o).is_some_and(|h| h.framework_id == fw_id))
            .filter(|o| !self.released_by_us.contains(o))
            .collect();
        for (agent, refused) in held_by_agent(snap, fw_id, &mine) {
            self.install_filter(now, fw_id, &agent, refused, decline.filters.as_ref());
        }
        self.release(mine)
    }
}
