//! The offer allocator, sans-IO: given a snapshot of the cell and the frameworks that want
//! offers, it decides which framework gets which agent's free resources, by DRF (dominant
//! resource fairness) over roles with the core's weights. It returns holds; the caller
//! commits them through the one commit path, which re-checks that they still fit.

use std::collections::{BTreeMap, HashMap};

use shoal_core::{AgentId, AgentState, Cell, Hold, OfferId, ResourceSet, Timestamp, UNRESERVED};

/// A framework as the allocator sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub framework_id: String,
    pub role: String,
    /// Agents this framework declined, with when the filter ends.
    pub filtered_until: HashMap<AgentId, Timestamp>,
    /// Offers it holds now (the cap below bounds them).
    pub outstanding: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct AllocatorConfig {
    /// At most this many outstanding offers per framework (0: no cap). A framework that
    /// holds its offers and never answers cannot starve the others past this.
    pub offers_per_framework_max: usize,
}

/// The dominant share of each role: max over scalars of consumed / cluster total, divided by
/// the role's weight.
fn dominant_shares(cell: &Cell) -> BTreeMap<String, f64> {
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for a in cell.agents().filter(|a| a.state != AgentState::Gone) {
        for (name, m) in a.total.scalar_totals() {
            *total.entry(name).or_default() += m.as_f64();
        }
    }
    let mut held_by_role: BTreeMap<String, ResourceSet> = BTreeMap::new();
    for h in cell.holds() {
        let _ = held_by_role.entry(h.role.clone()).or_default().add(&h.resources.scalars_only());
    }
    let mut out = BTreeMap::new();
    for r in cell.roles() {
        let mut share: f64 = 0.0;
        for (name, m) in r.consumed.scalar_totals() {
            let held = held_by_role.get(&r.name).map(|h| h.scalar(&name).as_f64()).unwrap_or(0.0);
            if let Some(t) = total.get(&name).filter(|t| **t > 0.0) {
                share = share.max((m.as_f64() + held) / t);
            }
        }
        out.insert(r.name.clone(), share / r.weight.max(1e-9));
    }
    out
}

/// One allocation round: each active agent's unreserved free resources (plus what is
/// reserved to the chosen framework's role) go, whole, to the eligible framework whose role
/// has the lowest dominant share. `next_offer_id` names the holds.
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
    let mut outstanding: Vec<usize> = candidates.iter().map(|c| c.outstanding).collect();
    let mut holds = Vec::new();
    let mut agents: Vec<_> = cell.agents().filter(|a| a.state == AgentState::Active).collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    for agent in agents {
        let free = agent.free();
        if free.scalar_totals().iter().all(|(_, m)| m.0 == 0) {
            continue;
        }
        // The eligible framework with the lowest share (ties: fewest outstanding offers).
        let pick = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                let capped = config.offers_per_framework_max > 0 && outstanding[*i] >= config.offers_per_framework_max;
                let filtered = c.filtered_until.get(&agent.id).map(|t| *t > now).unwrap_or(false);
                !capped && !filtered
            })
            .min_by(|(i, a), (j, b)| {
                let sa = shares.get(&a.role).copied().unwrap_or(0.0);
                let sb = shares.get(&b.role).copied().unwrap_or(0.0);
                sa.partial_cmp(&sb).unwrap_or(std::cmp::Ordering::Equal).then(outstanding[*i].cmp(&outstanding[*j]))
            });
        let Some((i, c)) = pick else { continue };
        let offered = ResourceSet::from_resources(free.iter().filter(|r| r.role == UNRESERVED || r.role == c.role).cloned())
            .expect("a subset of a valid set");
        if offered.is_empty() {
            continue;
        }
        // Count the offer towards the role's share for the rest of this round.
        let total_cpus: f64 = cell.agents().map(|a| a.total.scalar("cpus").as_f64()).sum();
        if total_cpus > 0.0 {
            *shares.entry(c.role.clone()).or_default() += offered.scalar("cpus").as_f64() / total_cpus;
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
    holds
}
