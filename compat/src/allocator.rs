//! The offer allocator, sans-IO: given a snapshot of the cell and the frameworks that want
//! offers, it decides which framework gets which agent's free resources, by DRF (dominant
//! resource fairness) over roles with the core's weights. It returns holds; the caller
//! commits them through the one commit path, which re-checks that they still fit.

use std::collections::{BTreeMap, HashMap};

use shoal_core::{AgentId, AgentState, Hold, OfferId, ResourceSet, Timestamp, UNRESERVED};
use shoal_sched::Cell;

/// A framework as the allocator sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub framework_id: String,
    pub role: String,
    /// Offer filters (DECLINE, or what an ACCEPT left unused), per agent.
    pub filters: HashMap<AgentId, OfferFilter>,
    /// Offers it holds now (the cap below bounds them).
    pub outstanding: usize,
}

/// Mesos's refused-offer filter: until `until`, this agent is not offered to the framework
/// again unless it has more to offer than what was refused (an offer that the refused
/// resources contain is filtered; one with anything more is not).
#[derive(Clone, Debug)]
pub struct OfferFilter {
    pub until: Timestamp,
    pub refused: ResourceSet,
}

impl OfferFilter {
    /// Whether this filter holds `offered` back at `now`.
    pub fn filters(&self, offered: &ResourceSet, now: Timestamp) -> bool {
        self.until > now && self.refused.contains(offered)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct AllocatorConfig {
    /// At most this many outstanding offers per framework (0: no cap). A framework that
    /// holds its offers and never answers cannot starve the others past this.
    pub offers_per_framework_max: usize,
    /// Where in the id-ordered agent list this round starts (taken modulo the number of
    /// agents). Callers vary it every round — [`round_start`] spreads rounds over the list —
    /// so that under a cap the same low-id agents are not offered round after round while the
    /// rest wait (Mesos shuffles its agents every round for the same reason).
    pub first_agent: u64,
}

/// A start position for allocation round `round` that spreads consecutive rounds over the
/// agent list (Fibonacci hashing): deterministic, so simulations replay exactly.
pub fn round_start(round: u64) -> u64 {
    round.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
}

/// The dominant share of each role: max over scalars of consumed / cluster total, divided by
/// the role's weight.
fn dominant_shares(cell: &Cell) -> BTreeMap<String, f64> {
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for a in cell.agents().filter(|a| a.state != AgentState::Gone) {
        for (name, m) in a.total.scalar_totals() {
            *total.entry(name.to_string()).or_default() += m.as_f64();
        }
    }
    let mut held_by_role: BTreeMap<String, ResourceSet> = BTreeMap::new();
    for h in cell.holds() {
        let _ = held_by_role
            .entry(h.role.clone())
            .or_default()
            .add_scalars(&h.resources);
    }
    let mut out = BTreeMap::new();
    for r in cell.roles() {
        let mut share: f64 = 0.0;
        for (name, m) in r.consumed.scalar_totals() {
            let held = held_by_role
                .get(&r.name)
                .map(|h| h.scalar(&name).as_f64())
                .unwrap_or(0.0);
            if let Some(t) = total.get(name.as_str()).filter(|t| **t > 0.0) {
                share = share.max((m.as_f64() + held) / t);
            }
        }
        out.insert(r.name.clone(), share / r.weight.max(1e-9));
    }
    out
}

/// A framework's place in the allocation queue: lowest share first, then fewest offers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Key {
    share: f64,
    outstanding: usize,
    index: usize,
}

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and the lowest share goes first.
        other
            .share
            .partial_cmp(&self.share)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(other.outstanding.cmp(&self.outstanding))
            .then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What of an agent's free resources a framework of `role` may be offered: the unreserved
/// ones and those reserved to its role.
fn offerable(free: &ResourceSet, role: &str) -> ResourceSet {
    ResourceSet::from_resources(
        free.iter()
            .filter(|r| r.role == UNRESERVED || r.role == role)
            .cloned(),
    )
    .expect("a subset of a valid set")
}

/// One allocation round: each active agent's unreserved free resources (plus what is
/// reserved to the chosen framework's role) go, whole, to the eligible framework whose role
/// has the lowest dominant share. `next_offer_id` names the holds.
///
/// Cost: O(agents × log frameworks) plus the frameworks skipped for filters — a heap keyed
/// by share, with keys refreshed lazily when a role's share grew during the round.
pub fn allocate(
    cell: &Cell,
    candidates: &[Candidate],
    config: AllocatorConfig,
    now: Timestamp,
    mut next_offer_id: impl FnMut() -> OfferId,
) -> Vec<Hold> {
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut shares = dominant_shares(cell);
    let total_cpus: f64 = cell
        .agents()
        .filter(|a| a.state != AgentState::Gone)
        .map(|a| a.total.scalar("cpus").as_f64())
        .sum();
    let mut outstanding: Vec<usize> = candidates.iter().map(|c| c.outstanding).collect();
    let share_of =
        |shares: &BTreeMap<String, f64>, role: &str| shares.get(role).copied().unwrap_or(0.0);
    let capped =
        |n: usize| config.offers_per_framework_max > 0 && n >= config.offers_per_framework_max;
    let mut queue: std::collections::BinaryHeap<Key> = candidates
        .iter()
        .enumerate()
        .filter(|(i, _)| !capped(outstanding[*i]))
        .map(|(i, c)| Key {
            share: share_of(&shares, &c.role),
            outstanding: outstanding[i],
            index: i,
        })
        .collect();
    let mut holds = Vec::new();
    let mut agents: Vec<_> = cell
        .agents()
        .filter(|a| a.state == AgentState::Active)
        .collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    if !agents.is_empty() {
        let start = (config.first_agent % agents.len() as u64) as usize;
        agents.rotate_left(start);
    }
    let mut skipped = Vec::new();
    for agent in agents {
        if queue.is_empty() {
            break;
        }
        let free = agent.free();
        if free.scalar_totals().iter().all(|(_, m)| m.0 == 0) {
            continue;
        }
        // The eligible framework with the lowest share (ties: fewest outstanding offers).
        let mut pick = None;
        while let Some(key) = queue.pop() {
            let c = &candidates[key.index];
            let current = Key {
                share: share_of(&shares, &c.role),
                outstanding: outstanding[key.index],
                index: key.index,
            };
            if current != key {
                queue.push(current); // its role's share moved this round: requeue
                continue;
            }
            let offered = offerable(&free, &c.role);
            if c.filters
                .get(&agent.id)
                .is_some_and(|f| f.filters(&offered, now))
            {
                skipped.push(key);
                continue;
            }
            pick = Some((key.index, offered));
            break;
        }
        queue.extend(skipped.drain(..));
        let Some((i, offered)) = pick else { continue };
        let c = &candidates[i];
        if !offered.is_empty() {
            // Count the offer towards the role's share for the rest of this round.
            if total_cpus > 0.0 {
                *shares.entry(c.role.clone()).or_default() +=
                    offered.scalar("cpus").as_f64() / total_cpus;
            }
            outstanding[i] += 1;
            holds.push(Hold {
                id: next_offer_id(),
                framework_id: c.framework_id.clone(),
                role: c.role.clone(),
                agent_id: agent.id.clone(),
                resources: offered,
                created_at: now,
            });
        }
        if !capped(outstanding[i]) {
            queue.push(Key {
                share: share_of(&shares, &c.role),
                outstanding: outstanding[i],
                index: i,
            });
        }
    }
    holds
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::{AgentRegistration, CellConfig};
    use shoal_sched::Command;

    fn cell(agents: usize) -> Cell {
        let mut cell = Cell::new(CellConfig {
            cell_id: "c".into(),
        });
        for i in 0..agents {
            let reg = AgentRegistration {
                agent_id: None,
                hostname: format!("h{i}"),
                port: 0,
                attributes: Default::default(),
                domain: None,
                resources: ResourceSet::parse("cpus:4;mem:4096").unwrap(),
            };
            cell.commit(1, &Command::RegisterAgent(reg)).unwrap();
        }
        cell
    }

    fn cand(id: &str, role: &str) -> Candidate {
        Candidate {
            framework_id: id.into(),
            role: role.into(),
            filters: HashMap::new(),
            outstanding: 0,
        }
    }

    #[test]
    fn capped_rounds_start_at_different_agents() {
        let cell = cell(64);
        let mut n = 0;
        let mut next = || {
            n += 1;
            OfferId::new(format!("o{n}"))
        };
        let offered = |first_agent: u64, next: &mut dyn FnMut() -> OfferId| -> Vec<AgentId> {
            allocate(
                &cell,
                &[cand("a", "r1")],
                AllocatorConfig {
                    offers_per_framework_max: 4,
                    first_agent,
                },
                5,
                next,
            )
            .into_iter()
            .map(|h| h.agent_id)
            .collect()
        };
        let mut seen = std::collections::BTreeSet::new();
        for round in 1..=8 {
            let agents = offered(round_start(round), &mut next);
            assert_eq!(agents.len(), 4, "the cap bounds each round");
            seen.extend(agents);
        }
        assert!(
            seen.len() > 16,
            "eight capped rounds reach many agents, not the same four: {}",
            seen.len()
        );
        assert_eq!(
            offered(7, &mut next),
            offered(7 + 64, &mut next),
            "the start is taken modulo the number of agents"
        );
    }

    #[test]
    fn spreads_agents_fairly_respects_caps_and_filters() {
        let cell = cell(6);
        let mut n = 0;
        let mut next = || {
            n += 1;
            OfferId::new(format!("o{n}"))
        };
        let holds = allocate(
            &cell,
            &[cand("a", "r1"), cand("b", "r2")],
            AllocatorConfig {
                offers_per_framework_max: 0,
                first_agent: 0,
            },
            5,
            &mut next,
        );
        assert_eq!(holds.len(), 6);
        let a = holds.iter().filter(|h| h.framework_id == "a").count();
        assert_eq!(a, 3, "DRF alternates between equal roles");

        let holds = allocate(
            &cell,
            &[cand("a", "r1"), cand("b", "r2")],
            AllocatorConfig {
                offers_per_framework_max: 1,
                first_agent: 0,
            },
            5,
            &mut next,
        );
        assert_eq!(holds.len(), 2, "one offer each under a cap of 1");

        let mut filtered = cand("a", "r1");
        for ag in cell.agents() {
            filtered.filters.insert(
                ag.id.clone(),
                OfferFilter {
                    until: 10,
                    refused: ag.total.clone(),
                },
            );
        }
        let holds = allocate(
            &cell,
            &[filtered.clone()],
            AllocatorConfig {
                offers_per_framework_max: 0,
                first_agent: 0,
            },
            5,
            &mut next,
        );
        assert!(
            holds.is_empty(),
            "declined agents are not offered again before the filter ends"
        );
        let holds = allocate(
            &cell,
            &[filtered],
            AllocatorConfig {
                offers_per_framework_max: 0,
                first_agent: 0,
            },
            10,
            &mut next,
        );
        assert_eq!(holds.len(), 6);
    }

    #[test]
    fn a_filter_holds_back_only_what_it_refused_or_less() {
        let cell = cell(1);
        let agent = cell.agents().next().unwrap().id.clone();
        let mut n = 0;
        let mut next = || {
            n += 1;
            OfferId::new(format!("o{n}"))
        };
        let config = AllocatorConfig {
            offers_per_framework_max: 0,
            first_agent: 0,
        };
        let mut c = cand("a", "r1");
        // What an ACCEPT left unused: half the agent. The whole agent is more: offered.
        c.filters.insert(
            agent.clone(),
            OfferFilter {
                until: 10,
                refused: ResourceSet::parse("cpus:2;mem:2048").unwrap(),
            },
        );
        let holds = allocate(&cell, &[c.clone()], config, 5, &mut next);
        assert_eq!(holds.len(), 1, "more than was refused is offered");
        // A decline of the whole agent: nothing more is free, so it stays filtered.
        c.filters.insert(
            agent,
            OfferFilter {
                until: 10,
                refused: ResourceSet::parse("cpus:4;mem:4096").unwrap(),
            },
        );
        assert!(allocate(&cell, &[c], config, 5, &mut next).is_empty());
    }
}
