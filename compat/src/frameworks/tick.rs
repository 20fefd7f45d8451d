//! The model's timers, fired by [`Frameworks::tick`]: offer timeouts, update resends and
//! failover timeouts, all measured on the `now` passed in.

use std::time::Duration;

use shoal_core::OfferId;

use super::{rescind_event, update_event, Effect, Frameworks, Now};

impl Frameworks {
    /// What is due at `now`: offers past the offer timeout are rescinded, unacknowledged
    /// updates resent, and frameworks away past their failover timeout removed.
    pub fn tick(&mut self, snap: &shoal_sched::Cell, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(timeout) = self.config.offer_timeout {
            out.extend(self.rescind_expired_offers(snap, now, timeout));
        }
        out.extend(self.resend_unacknowledged(now));
        out.extend(self.remove_failed_over(snap, now));
        out
    }

    /// Offers held longer than `timeout` are rescinded.
    fn rescind_expired_offers(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        timeout: Duration,
    ) -> Vec<Effect> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut expired: Vec<(OfferId, String)> = snap
            .holds()
            .filter(|h| self.frameworks.contains_key(&h.framework_id))
            .filter(|h| !self.released_by_us.contains(&h.id))
            .filter(|h| now.wall_ms.saturating_sub(h.created_at) >= timeout_ms)
            .map(|h| (h.id.clone(), h.framework_id.clone()))
            .collect();
        expired.sort();
        let mut out = Vec::new();
        for (o, fw) in &expired {
            out.extend(self.send(fw, rescind_event(o)));
            self.unanswered(snap, now, o, fw, timeout_ms);
        }
        out.extend(self.release(expired.into_iter().map(|(o, _)| o).collect()));
        out
    }

    /// An offer timed out: when its framework made no call since it was made, the framework
    /// is not reading its stream. It gets no offers until its next call, and the agent goes
    /// on probation for one more offer timeout (see `Frameworks::probation`).
    fn unanswered(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        offer: &OfferId,
        fw_id: &str,
        timeout_ms: u64,
    ) {
        let Some(hold) = snap.hold(offer) else { return };
        let Some(f) = self.frameworks.get_mut(fw_id) else {
            return;
        };
        if f.last_call_ms.is_some_and(|t| t >= hold.created_at) {
            return;
        }
        if !f.withheld {
            tracing::info!(framework_id = %fw_id, offer_id = %offer.as_str(), "offer timed out unanswered: no offers to this framework until its next call");
        }
        f.withheld = true;
        self.probation.insert(
            hold.agent_id.clone(),
            now.wall_ms.saturating_add(timeout_ms),
        );
    }

    /// Unacknowledged updates are resent to connected frameworks.
    fn resend_unacknowledged(&mut self, now: Now) -> Vec<Effect> {
        let retry = self.config.update_retry;
        let mut ids: Vec<String> = self
            .frameworks
            .values()
            .filter(|f| f.session.is_some())
            .map(|f| f.id.clone())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let Some(f) = self.frameworks.get_mut(&id) else {
                continue;
            };
            let Some(session) = f.session else { continue };
            for s in f.pending.due(retry, now.monotonic) {
                out.push(Effect::Send {
                    session,
                    event: update_event(s),
                });
            }
        }
        out
    }

    /// Frameworks away longer than their failover timeout are removed, their tasks killed.
    fn remove_failed_over(&mut self, snap: &shoal_sched::Cell, now: Now) -> Vec<Effect> {
        let mut expired: Vec<String> = self
            .frameworks
            .values()
            .filter(|f| {
                f.disconnected_at.is_some_and(|d| {
                    now.monotonic.saturating_duration_since(d) >= f.failover_timeout
                })
            })
            .map(|f| f.id.clone())
            .collect();
        expired.sort();
        let mut out = Vec::new();
        for fw in expired {
            out.extend(self.remove_framework(snap, &fw));
        }
        out
    }
}
