//! Agent liveness, sans-IO: the master tells it when agents connect and disconnect and what
//! time it is; it answers with the state changes that are due and when to ask again.
//! Timeouts are effects it returns, never timers it runs.

use std::collections::HashMap;

use crate::cell::{Cell, Command};
use crate::model::{AgentId, AgentState, Timestamp};
use crate::records::Records;

/// How long an agent may stay away, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct LivenessConfig {
    /// Away this long: UNREACHABLE (its tasks TASK_UNREACHABLE, resources still booked).
    pub unreachable_after_ms: u64,
    /// Away this much longer: GONE (its tasks TASK_GONE, resources freed).
    pub gone_after_ms: u64,
}

/// When each agent was last connected.
#[derive(Clone, Debug)]
pub struct Liveness {
    config: LivenessConfig,
    /// Agents connected now.
    connected: HashMap<AgentId, ()>,
    /// When each agent not connected now was last seen (or when watching began).
    away_since: HashMap<AgentId, Timestamp>,
    started: Timestamp,
}

impl Liveness {
    pub fn new(config: LivenessConfig, now: Timestamp) -> Liveness {
        Liveness {
            config,
            connected: HashMap::new(),
            away_since: HashMap::new(),
            started: now,
        }
    }

    pub fn connected(&mut self, agent: &AgentId) {
        self.connected.insert(agent.clone(), ());
        self.away_since.remove(agent);
    }

    pub fn disconnected(&mut self, agent: &AgentId, now: Timestamp) {
        if self.connected.remove(agent).is_some() {
            self.away_since.insert(agent.clone(), now);
        }
    }

    /// An agent without a live connection (a simulated one) says it is alive.
    pub fn heartbeat(&mut self, agent: &AgentId, now: Timestamp) {
        if !self.connected.contains_key(agent) {
            self.away_since.insert(agent.clone(), now);
        }
    }

    /// No deadline is ever closer than this after a change (an agent registering, leaving
    /// or changing state): the shell may wait until then instead of walking every agent at
    /// each change.
    pub fn shortest_timeout_ms(&self) -> u64 {
        self.config
            .unreachable_after_ms
            .min(self.config.gone_after_ms)
    }

    pub fn is_connected(&self, agent: &AgentId) -> bool {
        self.connected.contains_key(agent)
    }

    /// The commands that are due at `now` for the agents of `cell`, and the time of the next
    /// deadline (to be called again then, or on any change).
    pub fn tick<R: Records>(
        &mut self,
        cell: &Cell<R>,
        now: Timestamp,
    ) -> (Vec<Command<R>>, Option<Timestamp>) {
        let mut due = Vec::new();
        let mut next: Option<Timestamp> = None;
        for a in cell.agents() {
            if self.connected.contains_key(&a.id) {
                continue;
            }
            // Never seen by this master: away since it started, or since the agent
            // registered if that is later (a new agent whose connection is being set up).
            let since = *self
                .away_since
                .entry(a.id.clone())
                .or_insert(self.started.max(a.registered_at));
            let (state, at) = match a.state {
                AgentState::Active => (
                    AgentState::Unreachable,
                    since + self.config.unreachable_after_ms,
                ),
                AgentState::Unreachable => (
                    AgentState::Gone,
                    since + self.config.unreachable_after_ms + self.config.gone_after_ms,
                ),
                AgentState::Gone => continue,
            };
            if now >= at {
                due.push(Command::SetAgentState {
                    agent_id: a.id.clone(),
                    state,
                });
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::{AgentRegistration, CellConfig};
    use crate::resources::ResourceSet;

    #[test]
    fn away_agents_become_unreachable_then_gone() {
        let mut cell: Cell = Cell::new(CellConfig {
            cell_id: "c".into(),
        });
        let reg = AgentRegistration {
            agent_id: None,
            hostname: "h".into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse("cpus:1").unwrap(),
        };
        cell.commit(0, &Command::RegisterAgent(reg)).unwrap();
        let a = cell.agents().next().unwrap().id.clone();
        let mut l = Liveness::new(
            LivenessConfig {
                unreachable_after_ms: 100,
                gone_after_ms: 1000,
            },
            0,
        );
        l.connected(&a);
        assert_eq!(l.tick(&cell, 500), (vec![], None));
        l.disconnected(&a, 500);
        let (due, next) = l.tick(&cell, 550);
        assert!(due.is_empty());
        assert_eq!(next, Some(600));
        let (due, _) = l.tick(&cell, 600);
        assert_eq!(
            due,
            vec![Command::SetAgentState {
                agent_id: a.clone(),
                state: AgentState::Unreachable
            }]
        );
        cell.commit(600, &due[0]).unwrap();
        let (due, next) = l.tick(&cell, 700);
        assert!(due.is_empty());
        assert_eq!(next, Some(1600));
        let (due, _) = l.tick(&cell, 1600);
        assert_eq!(
            due,
            vec![Command::SetAgentState {
                agent_id: a.clone(),
                state: AgentState::Gone
            }]
        );
        // Coming back resets the clock.
        l.connected(&a);
        assert_eq!(l.tick(&cell, 5000), (vec![], None));
    }
}
