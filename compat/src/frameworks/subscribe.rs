//! SUBSCRIBE: a framework registers, or re-registers (fails over) with its id.

use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::{event, Call, Event};

use super::settings::{check_framework_info, Settings};
use super::{bare_event, error_event, rescind_event, update_event, Effect, Framework, Frameworks};
use super::{Now, SessionId};
use crate::error::CompatError;
use crate::zk::MasterAddress;

/// What Mesos tells a session that tries to take a connected framework over without `force`.
pub const FAILED_OVER: &str = "Framework failed over";

impl Frameworks {
    /// A SUBSCRIBE on `session`. `force` is the v0 driver's flag (v1 always passes `true`):
    /// a re-subscription from another session of a connected framework takes over only
    /// with it. Without it the new session is told "Framework failed over" and the
    /// framework stays on its current session, as `Master::subscribe` does for a scheduler
    /// pid that is not the framework's (`framework->pid != from && !force`). A subscription
    /// that takes over closes the old session with that same error, as Mesos does.
    ///
    /// `reached_at` is where the framework reached the master (v1: the `Host` header), used
    /// for SUBSCRIBED's `master_info` only when the configuration names no address.
    pub fn subscribe(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        session: SessionId,
        call: &Call,
        force: bool,
        reached_at: Option<&MasterAddress>,
    ) -> Result<Vec<Effect>, CompatError> {
        let Some(subscribe) = &call.subscribe else {
            return Err(CompatError::Invalid(
                "Expecting 'subscribe.framework_info' to be present".into(),
            ));
        };
        let info = &subscribe.framework_info;
        if let Err(why) = check_framework_info(info) {
            tracing::info!("refusing a subscription: {why}");
            return Err(why);
        }
        let settings = Settings::of(&self.config, info, &subscribe.suppressed_roles);
        if let Some(given) = info.id.as_ref().map(|i| i.value.as_str()) {
            if let Err(shoal_core::Rejection::Invalid(why)) =
                shoal_core::cell::validate_id("framework id", given)
            {
                return Err(CompatError::Invalid(why));
            }
            if call.framework_id.as_ref().map(|f| f.value.as_str()) != Some(given) {
                return Err(CompatError::Invalid(
                    "'framework_id' differs from 'subscribe.framework_info.id'".into(),
                ));
            }
            if self.removed.contains(given) {
                tracing::info!(
                    framework_id = given,
                    "refusing the subscription of a removed framework"
                );
                return Err(CompatError::Removed);
            }
        }
        let id = match info.id.as_ref() {
            Some(i) => i.value.clone(),
            None => self.next_id("F"),
        };
        if !self.frameworks.contains_key(&id) && self.frameworks.len() >= self.config.frameworks_max
        {
            tracing::warn!(
                frameworks_max = self.config.frameworks_max,
                "refusing a subscription: too many frameworks"
            );
            return Err(CompatError::Unavailable(format!(
                "Too many frameworks: this master keeps at most {} (subscribed or within \
                 their failover timeout); retry later",
                self.config.frameworks_max
            )));
        }
        let mut out = Vec::new();
        let current = self.frameworks.get(&id).and_then(|f| f.session);
        if let Some(current) = current.filter(|c| *c != session && !force) {
            tracing::info!(framework_id = %id, ?current, "refusing a subscription without force from another session");
            out.push(Effect::Send {
                session,
                event: error_event(FAILED_OVER),
            });
            return Ok(out);
        }
        let mut info = info.clone();
        info.id = Some(mesos::FrameworkId { value: id.clone() });
        settings.cap_failover_timeout(&mut info);
        let f = self
            .frameworks
            .entry(id.clone())
            .or_insert_with(|| Framework {
                id: id.clone(),
                info: info.clone(),
                roles: Vec::new(),
                partition_aware: false,
                killing_state: false,
                session: None,
                disconnected_at: None,
                failover_timeout: std::time::Duration::ZERO,
                filters: Default::default(),
                suppressed: Default::default(),
                pending: Default::default(),
                last_call_ms: None,
                withheld: false,
            });
        // A re-subscription replaces the old session (failover); its offers are rescinded
        // and made anew, as Mesos does.
        f.info = info;
        settings.apply(f);
        if let Some(old) = f.session.replace(session).filter(|old| *old != session) {
            out.push(Effect::Close {
                session: old,
                error: Some(FAILED_OVER.into()),
            });
        }
        f.disconnected_at = None;
        f.last_call_ms = None;
        f.withheld = false;
        tracing::info!(framework_id = %id, "framework subscribed");
        let master = self.config.master.as_ref().or(reached_at);
        let subscribed = Event {
            subscribed: Some(event::Subscribed {
                framework_id: mesos::FrameworkId { value: id.clone() },
                heartbeat_interval_seconds: Some(self.config.heartbeat_interval.as_secs_f64()),
                master_info: master.map(|m| {
                    MasterAddress {
                        id: snap.cell_id().to_string(),
                        ..m.clone()
                    }
                    .master_info()
                }),
            }),
            ..bare_event(event::Type::Subscribed)
        };
        out.push(Effect::Send {
            session,
            event: subscribed,
        });
        // The offers of the previous subscription are rescinded (and made anew), as Mesos
        // does when a framework fails over.
        let old_offers = self.offers_of(snap, &id);
        for o in &old_offers {
            out.push(Effect::Send {
                session,
                event: rescind_event(o),
            });
        }
        // Unacknowledged updates are sent again on the new session.
        if let Some(f) = self.frameworks.get_mut(&id) {
            for s in f.pending.due(std::time::Duration::ZERO, now.monotonic) {
                out.push(Effect::Send {
                    session,
                    event: update_event(s),
                });
            }
        }
        out.extend(self.release(old_offers));
        out.push(Effect::Wake);
        Ok(out)
    }

    /// `session` ended (the v1 stream closed, the v0 link broke). When it is a framework's
    /// current session, the framework is disconnected: its offers go back and its failover
    /// timeout starts.
    pub fn disconnected(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        session: SessionId,
    ) -> Vec<Effect> {
        let Some(f) = self
            .frameworks
            .values_mut()
            .find(|f| f.session == Some(session))
        else {
            return Vec::new(); // a newer subscription took over, or it was removed
        };
        f.session = None;
        f.disconnected_at = Some(now.monotonic);
        let id = f.id.clone();
        tracing::info!(framework_id = %id, "framework disconnected");
        let offers = self.offers_of(snap, &id);
        self.release(offers)
    }
}
