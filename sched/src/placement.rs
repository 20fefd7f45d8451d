//! Where a service's waiting instances go: binpack or spread over the agents that match its
//! constraints, counting where its other instances run.

use std::collections::{BTreeMap, HashMap};

use shoal_core::*;

use crate::constraints::*;
use crate::service::*;
use crate::template::*;
use crate::Cell;

/// Placement of one service's instances within a step: the agents' free resources and how
/// many instances run per attribute value, both updated with each placement decided.
pub(crate) struct Placer<'a> {
    c: &'a CompiledService,
    agents: Vec<(&'a Agent, ResourceSet)>,
    /// (attribute, value) → instances of the service (live and decided in this step).
    per_value: HashMap<(String, String), u32>,
    /// The attributes counted: `spread_by` and those of `unique` / `max_per` constraints.
    attributes: Vec<String>,
}

impl<'a> Placer<'a> {
    pub(crate) fn new(
        cell: &'a Cell,
        svc: &Service,
        c: &'a CompiledService,
        inst: &BTreeMap<u32, Instance>,
    ) -> Placer<'a> {
        let mut agents: Vec<(&Agent, ResourceSet)> = cell
            .agents()
            .filter(|a| a.state == AgentState::Active)
            .map(|a| (a, a.free()))
            .collect();
        agents.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut attributes = vec![c.spread_by.clone()];
        for k in &c.spec.constraints {
            if matches!(k.operator, ConstraintOp::Unique | ConstraintOp::MaxPer)
                && !attributes.contains(&k.attribute)
            {
                attributes.push(k.attribute.clone());
            }
        }
        let mut per_value = HashMap::new();
        for i in inst.values() {
            if i.state == InstanceState::Pending {
                continue;
            }
            let task = cell.task(&instance_task_id(&svc.id, i.index, i.generation));
            let Some(agent) = task
                .filter(|t| !t.state.is_terminal())
                .and_then(|t| cell.agent(&t.agent_id))
            else {
                continue;
            };
            for attr in &attributes {
                if let Some(v) = attribute_value(agent, attr) {
                    *per_value.entry((attr.clone(), v.to_string())).or_default() += 1;
                }
            }
        }
        Placer {
            c,
            agents,
            per_value,
            attributes,
        }
    }

    pub(crate) fn count(&self, agent: &Agent, attribute: &str) -> u32 {
        attribute_value(agent, attribute)
            .and_then(|v| {
                self.per_value
                    .get(&(attribute.to_string(), v.to_string()))
                    .copied()
            })
            .unwrap_or(0)
    }

    /// The agent for the next instance, by the service's strategy; `None` if none is feasible.
    pub(crate) fn choose(&self) -> Option<usize> {
        let nports = self.c.spec.task.ports.len() as u64;
        let mut best: Option<(usize, (u32, i64))> = None;
        for (idx, (a, free)) in self.agents.iter().enumerate() {
            if !free.contains(&self.c.resources) || port_count(free) < nports {
                continue;
            }
            let allowed = self.c.spec.constraints.iter().all(|k| match k.operator {
                ConstraintOp::Unique => self.count(a, &k.attribute) == 0,
                ConstraintOp::MaxPer => {
                    self.count(a, &k.attribute) < k.value.parse::<u32>().unwrap_or(0)
                }
                _ => k.matches(a),
            });
            if !allowed {
                continue;
            }
            // Fullness after the placement: the largest share of any of cpus and mem in use,
            // in thousandths.
            let fullness = ["cpus", "mem"]
                .iter()
                .map(|r| {
                    let total = a.total.scalar(r).0;
                    if total <= 0 {
                        return 0;
                    }
                    let used = total - free.scalar(r).0 + self.c.resources.scalar(r).0;
                    used * 1000 / total
                })
                .max()
                .unwrap_or(0);
            let key = match self.c.spec.placement {
                // Lower is better: the fullest agent.
                PlacementStrategy::Binpack => (0, -fullness),
                // The fewest instances on the agent's spread value, then the emptiest agent.
                PlacementStrategy::Spread => (self.count(a, &self.c.spread_by), fullness),
            };
            if best.is_none_or(|(_, b)| key < b) {
                best = Some((idx, key));
            }
        }
        best.map(|(idx, _)| idx)
    }

    /// Books an instance on agent `idx`: its id, its resources (with ports) and the ports.
    pub(crate) fn take(&mut self, idx: usize) -> (AgentId, ResourceSet, Vec<u64>) {
        let (agent, free) = &mut self.agents[idx];
        let ports = free_ports_upto(free, self.c.spec.task.ports.len() as u64);
        let resources = with_ports(&self.c.resources, &ports);
        free.subtract(&resources)
            .expect("chosen because the resources are free");
        for attr in &self.attributes {
            if let Some(v) = attribute_value(agent, attr) {
                *self
                    .per_value
                    .entry((attr.clone(), v.to_string()))
                    .or_default() += 1;
            }
        }
        (agent.id.clone(), resources, ports)
    }
}
