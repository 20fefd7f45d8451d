//! Agents joining and leaving the cell: registration (new, or coming back) and the state
//! changes of liveness and of operators (unreachable, draining, gone).

use super::*;

impl<R: Records> Cell<R> {
    /// Decides `UpdateAgentResources`: a new total that still covers what is allocated.
    pub(super) fn decide_agent_resources(
        &self,
        agent_id: &AgentId,
        total: &ResourceSet,
    ) -> Result<Decision<R>, Rejection> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| not_found_agent(agent_id))?;
        if agent.state == AgentState::Gone {
            return Err(Rejection::Forbidden(format!("agent {agent_id} is gone")));
        }
        if !total.contains(&agent.allocated) {
            return Err(Rejection::Conflict(format!(
                "agent {agent_id}: new total {total} does not cover what is allocated ({})",
                agent.allocated
            )));
        }
        self.check_cluster_total(Some(&agent.total), total)?;
        Ok(Decision {
            events: vec![Event::AgentResourcesUpdated {
                agent_id: agent_id.clone(),
                total: total.clone(),
            }],
            reply: Reply::Done,
        })
    }

    /// Decides `RegisterAgent`: a new agent, or one coming back with its tasks.
    pub(super) fn decide_register(
        &self,
        now: Timestamp,
        next: Version,
        reg: &AgentRegistration,
    ) -> Result<Decision<R>, Rejection> {
        let existing = self.check_registration(reg)?;
        let id = self.registered_id(next, reg)?;
        let mut events = Vec::new();
        let agent = Agent {
            id: id.clone(),
            hostname: reg.hostname.clone(),
            port: reg.port,
            attributes: reg.attributes.clone(),
            domain: reg.domain.clone(),
            total: reg.resources.clone(),
            allocated: ResourceSet::new(),
            state: AgentState::Active,
            version: next,
            registered_at: existing.map(|a| a.registered_at).unwrap_or(now),
        };
        events.push(Event::AgentRegistered { agent });
        if existing
            .map(|a| a.state == AgentState::Unreachable)
            .unwrap_or(false)
        {
            self.push_returning_tasks(now, &id, &mut events);
        }
        Ok(Decision {
            events,
            reply: Reply::Agent { agent_id: id },
        })
    }

    /// Whether a registration may be taken: a hostname, some resources, and for an agent
    /// coming back (returned) one not removed whose resources still cover its tasks; the
    /// cluster's total stays within bounds.
    fn check_registration(
        &self,
        reg: &AgentRegistration,
    ) -> Result<Option<&Arc<Agent>>, Rejection> {
        if reg.hostname.is_empty() || reg.hostname.len() > limits::HOSTNAME_BYTES_MAX {
            return Err(Rejection::Invalid("hostname must be 1..=255 bytes".into()));
        }
        if reg.resources.is_empty() {
            return Err(Rejection::Invalid(
                "an agent must offer some resources".into(),
            ));
        }
        let existing = reg.agent_id.as_ref().and_then(|id| self.agents.get(id));
        if let Some(a) = existing {
            if a.state == AgentState::Gone {
                return Err(Rejection::Forbidden(format!(
                    "agent {} was removed; register without an id to join as a new agent",
                    a.id
                )));
            }
            if !reg.resources.contains(&a.allocated) {
                return Err(Rejection::Conflict(format!(
                    "agent {}: resources {} do not cover its tasks ({})",
                    a.id, reg.resources, a.allocated
                )));
            }
        }
        self.check_cluster_total(existing.map(|a| &a.total), &reg.resources)?;
        Ok(existing)
    }

    /// The registering agent's id: the one it gives (checked), or a new one the cell never
    /// used.
    fn registered_id(&self, next: Version, reg: &AgentRegistration) -> Result<AgentId, Rejection> {
        Ok(match &reg.agent_id {
            Some(id) => {
                validate_id("agent id", id.as_str())?;
                id.clone()
            }
            None => {
                // An operator may have chosen an id of this shape: never reuse one.
                let mut id = AgentId::new(format!("{}-S{}", self.cell_id, next));
                let mut k = 1;
                while self.agents.contains_key(&id) {
                    id = AgentId::new(format!("{}-S{}-{}", self.cell_id, next, k));
                    k += 1;
                }
                id
            }
        })
    }

    /// A returning agent's tasks that were marked unreachable come back as running: the
    /// agent's own status updates correct this when it knows better. An evicted one comes
    /// back to be killed.
    fn push_returning_tasks(&self, now: Timestamp, id: &AgentId, events: &mut Vec<Event<R>>) {
        for t in self
            .live_tasks_on(id)
            .filter(|t| t.state == TaskState::Unreachable)
        {
            // An evicted task comes back to be killed, with its preemption's status.
            let (state, status) = match t.preempted_by {
                Some(_) => (
                    TaskState::Killing,
                    StatusInfo {
                        timestamp: now,
                        ..t.status.clone()
                    },
                ),
                None => (
                    TaskState::Running,
                    StatusInfo {
                        message: Some("agent re-registered".into()),
                        // The last health verdict still holds: the agent reports changes only.
                        healthy: t.status.healthy,
                        source: Some("SOURCE_MASTER".into()),
                        reason: Some("REASON_AGENT_REREGISTERED".into()),
                        timestamp: now,
                        ..StatusInfo::default()
                    },
                ),
            };
            events.push(Event::TaskStatusChanged {
                task_id: t.id.clone(),
                state,
                status,
            });
        }
    }

    pub(super) fn decide_agent_state(
        &self,
        now: Timestamp,
        agent_id: &AgentId,
        state: AgentState,
    ) -> Result<Decision<R>, Rejection> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| not_found_agent(agent_id))?;
        if agent.state == state {
            return Ok(Decision {
                events: vec![],
                reply: Reply::Done,
            });
        }
        if agent.state == AgentState::Gone {
            return Err(Rejection::Forbidden(format!("agent {agent_id} is gone")));
        }
        let (task_state, reason) = match state {
            AgentState::Active => {
                return Err(Rejection::Invalid(
                    "an agent becomes active by registering".into(),
                ));
            }
            // As Mesos's master: REASON_SLAVE_REMOVED (v1: REASON_AGENT_REMOVED) for both.
            AgentState::Unreachable => (TaskState::Unreachable, "REASON_AGENT_REMOVED"),
            AgentState::Gone => (TaskState::Gone, "REASON_AGENT_REMOVED"),
        };
        let mut events = Vec::new();
        self.push_task_changes(now, agent_id, state, task_state, reason, &mut events);
        // An agent going away rescinds its offers.
        self.push_rescinds(agent_id, &mut events);
        events.push(Event::AgentStateChanged {
            agent_id: agent_id.clone(),
            state,
        });
        Ok(Decision {
            events,
            reply: Reply::Done,
        })
    }

    /// The live tasks on an agent that became unreachable or gone follow it (`task_state`,
    /// with Mesos's `reason`), in id order; an evicted one keeps saying why it was killed.
    fn push_task_changes(
        &self,
        now: Timestamp,
        agent_id: &AgentId,
        state: AgentState,
        task_state: TaskState,
        reason: &str,
        events: &mut Vec<Event<R>>,
    ) {
        let mut live: Vec<&Task> = self
            .live_tasks_on(agent_id)
            .filter(|t| t.state.can_become(task_state))
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        for t in live {
            if t.state == task_state {
                continue;
            }
            let mut status = StatusInfo {
                message: Some(format!(
                    "Agent {agent_id} is {}",
                    format!("{state:?}").to_lowercase()
                )),
                reason: Some(reason.into()),
                source: Some("SOURCE_MASTER".into()),
                timestamp: now,
                ..StatusInfo::default()
            };
            if t.preempted_by.is_some() {
                // An evicted task keeps saying why it was killed.
                status.message = t.status.message.clone();
                status.reason = t.status.reason.clone();
            }
            events.push(Event::TaskStatusChanged {
                task_id: t.id.clone(),
                state: task_state,
                status,
            });
        }
    }

    /// The event rescinding an agent's outstanding offers, if it has any.
    fn push_rescinds(&self, agent_id: &AgentId, events: &mut Vec<Event<R>>) {
        let offers: Vec<OfferId> = self
            .holds
            .values()
            .filter(|h| h.agent_id == *agent_id)
            .map(|h| h.id.clone())
            .collect();
        if !offers.is_empty() {
            events.push(self.release_event(offers));
        }
    }
}
