//! An allocation round: the allocator's holds for the frameworks that want offers, committed
//! as `PlaceHolds`; those placed go out as OFFERS.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use shoal_core::{AgentId, OfferId};
use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::{event, Event};
use shoal_sched::{Command, Reply};

use super::SessionId;
use super::{bare_event, offers, AfterCommit, CommitResult, Effect, Framework, Frameworks, Now};
use crate::allocator::{self, AllocatorConfig, Candidate, OfferFilter};

/// An allocation round whose holds are being committed: the offers to send for them.
#[derive(Debug)]
pub struct OffersPending {
    offers: HashMap<OfferId, mesos::Offer>,
}

impl Frameworks {
    /// One allocation round. `reads` tells whether a session's events are being read (a
    /// framework that leaves its buffer full gets no offers); `link_ip` is where an agent's
    /// live link comes from (for the offers' `url`).
    pub fn allocate(
        &mut self,
        snap: &shoal_sched::Cell,
        now: Now,
        reads: impl Fn(SessionId) -> bool,
        link_ip: impl Fn(&AgentId) -> Option<IpAddr>,
    ) -> Vec<Effect> {
        self.probation.retain(|_, until| *until > now.wall_ms);
        let mut outstanding: HashMap<&str, usize> = HashMap::new();
        for h in snap.holds() {
            *outstanding.entry(h.framework_id.as_str()).or_default() += 1;
        }
        // One candidate per role that is not suppressed (the offer cap counts all of a
        // framework's offers at the start of the round). Frameworks that do not read their
        // stream get none.
        let mut eligible: Vec<&Framework> = self
            .frameworks
            .values()
            .filter(|f| f.session.is_some_and(&reads) && !f.withheld)
            .collect();
        eligible.sort_by(|a, b| a.id.cmp(&b.id));
        let candidates: Vec<Candidate> = eligible
            .into_iter()
            .flat_map(|f| {
                let outstanding = outstanding.get(f.id.as_str()).copied().unwrap_or(0);
                let filters = offer_filters(f, snap, &self.probation);
                f.roles
                    .iter()
                    .filter(|r| !f.suppressed.contains(*r))
                    .map(move |r| Candidate {
                        framework_id: f.id.clone(),
                        role: r.clone(),
                        filters: filters.clone(),
                        outstanding,
                    })
            })
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        self.round += 1;
        let config = AllocatorConfig {
            offers_per_framework_max: self.config.offers_per_framework_max,
            first_agent: allocator::round_start(self.round),
        };
        let (run_id, seq) = (&self.run_id, &mut self.seq);
        let holds = allocator::allocate(snap, &candidates, config, now.wall_ms, || {
            let id = OfferId::new(format!("{run_id}-O{seq}"));
            *seq += 1;
            id
        });
        tracing::debug!(
            frameworks = candidates.len(),
            offers = holds.len(),
            version = snap.version(),
            "allocation round"
        );
        if holds.is_empty() {
            return Vec::new();
        }
        let offers = holds
            .iter()
            .map(|h| {
                let offer = offers::offer(h, snap.agent(&h.agent_id), link_ip(&h.agent_id));
                (h.id.clone(), offer)
            })
            .collect();
        vec![Effect::Commit {
            command: Command::PlaceHolds { holds },
            then: AfterCommit::Offers(OffersPending { offers }),
        }]
    }

    /// The round's holds committed: those placed go to their frameworks as one OFFERS event
    /// each; a framework that went away meanwhile has its offers released.
    pub(super) fn offered(&mut self, mut p: OffersPending, result: CommitResult) -> Vec<Effect> {
        let placed = match result {
            Ok(Reply::Holds { placed, .. }) => placed,
            _ => return Vec::new(),
        };
        let mut per_fw: BTreeMap<String, Vec<mesos::Offer>> = BTreeMap::new();
        for id in placed {
            let Some(offer) = p.offers.remove(&id) else {
                continue;
            };
            self.sent
                .insert(id.clone(), offer.framework_id.value.clone());
            per_fw
                .entry(offer.framework_id.value.clone())
                .or_default()
                .push(offer);
        }
        let mut out = Vec::new();
        for (fw, offers) in per_fw {
            let session = self.frameworks.get(&fw).and_then(|f| f.session);
            let event = Event {
                offers: Some(event::Offers { offers }),
                ..bare_event(event::Type::Offers)
            };
            match session {
                Some(session) => out.push(Effect::Send { session, event }),
                None => out.extend(self.offers_back(event)),
            }
        }
        out
    }
}

/// The framework's offer filters for this round: its refused-offer filters and, unless it
/// has made a call on its subscription, the agents on probation (filtered whole).
fn offer_filters(
    f: &Framework,
    snap: &shoal_sched::Cell,
    probation: &HashMap<AgentId, u64>,
) -> HashMap<AgentId, OfferFilter> {
    let mut filters = f.filters.clone();
    if f.last_call_ms.is_none() {
        for (agent, until) in probation {
            if let Some(a) = snap.agent(agent) {
                // All the agent has contains whatever it could offer.
                let refused = a.total.clone();
                filters.insert(
                    agent.clone(),
                    OfferFilter {
                        until: *until,
                        refused,
                    },
                );
            }
        }
    }
    filters
}
