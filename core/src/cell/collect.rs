//! Garbage collection in the cell (see [`crate::gc`]): planning a collection from a snapshot,
//! deciding one against the current state, and folding it in.

use std::collections::BTreeSet;

use super::*;

impl<R: Records> Cell<R> {
    /// What collections have forgotten since the cell was created.
    pub fn collected(&self) -> CollectedCounts {
        self.collected
    }
    /// Puts stored counts into a cell rebuilt with [`Cell::from_records`].
    pub fn restore_collected(&mut self, counts: CollectedCounts) {
        self.collected = counts;
    }
    /// Terminal tasks the cell holds (what a collection may take from).
    pub fn completed_task_count(&self) -> usize {
        self.completed_by_owner.values().map(|s| s.len()).sum()
    }

    pub(super) fn index_completed(&mut self, t: &Task) {
        self.completed_by_owner
            .entry(t.owner.clone())
            .or_default()
            .insert((t.version, t.id.clone()));
    }

    /// Lists the claims none of whose tasks is left (after loading).
    pub(super) fn index_emptied_claims(&mut self) {
        let none = BTreeSet::new();
        let emptied: Vec<(Version, ClaimId)> = self
            .claims
            .values()
            .filter(|c| self.claim_is_empty_without(&c.claim_id, Version::MAX, &none))
            .map(|c| (c.committed_version.unwrap_or(0), c.claim_id.clone()))
            .collect();
        self.emptied_claims.extend(emptied);
    }

    /// Plans a collection at `now` by `retention`: per owner, the oldest terminal tasks past
    /// the count or the age; the claims those leave without tasks; the oldest gone agents past
    /// their count. `retained` keeps a task out (a caller above the cell still needs it);
    /// `log_floor` is the change log's oldest version (claims below it may go).
    /// `None` when there is nothing to collect. The plan is a command: `decide` checks it again.
    pub fn collection(
        &self,
        retention: &Retention,
        now: Timestamp,
        log_floor: Version,
        retained: &dyn Fn(&Task) -> bool,
    ) -> Option<Command<R>> {
        let budget = retention.per_collection_max.max(1);
        let mut tasks: Vec<TaskId> = Vec::new();
        'owners: for done in self.completed_by_owner.values() {
            let over = done
                .len()
                .saturating_sub(retention.completed_tasks_per_owner);
            for (i, (_, id)) in done.iter().enumerate() {
                let Some(t) = self.tasks.get(id) else {
                    continue;
                };
                let aged = now.saturating_sub(t.status.timestamp) > retention.completed_task_age_ms;
                if i >= over && !aged {
                    // Oldest first: past the count, only age can collect, and the rest are
                    // (about) younger.
                    break;
                }
                if retained(t) {
                    continue;
                }
                tasks.push(id.clone());
                if tasks.len() >= budget {
                    break 'owners;
                }
            }
        }
        let going: BTreeSet<&TaskId> = tasks.iter().collect();
        let mut claims = Vec::new();
        let mut seen = BTreeSet::new();
        // Claims left empty by earlier collections, once the log's floor passed them.
        for (v, id) in self.emptied_claims.iter() {
            if *v >= log_floor || claims.len() + tasks.len() >= budget {
                break;
            }
            if seen.insert(id) {
                claims.push(id.clone());
            }
        }
        for id in &tasks {
            let claim_id = &self.tasks[id].claim_id;
            if seen.insert(claim_id) && self.claim_is_empty_without(claim_id, log_floor, &going) {
                claims.push(claim_id.clone());
            }
        }
        let mut gone: Vec<&Agent> = self
            .agents
            .values()
            .map(|a| a.as_ref())
            .filter(|a| a.state == AgentState::Gone && !self.has_live_tasks(&a.id))
            .collect();
        let mut agents = Vec::new();
        if gone.len() > retention.gone_agents_max {
            gone.sort_by_key(|a| a.version);
            let over = gone.len() - retention.gone_agents_max;
            let room = budget.saturating_sub(tasks.len() + claims.len());
            agents.extend(gone.iter().take(over.min(room)).map(|a| a.id.clone()));
        }
        if tasks.is_empty() && claims.is_empty() && agents.is_empty() {
            return None;
        }
        Some(Command::Collect {
            claims_below: log_floor,
            tasks,
            claims,
            agents,
        })
    }

    fn has_live_tasks(&self, agent: &AgentId) -> bool {
        self.live_tasks_by_agent
            .get(agent)
            .is_some_and(|ids| !ids.is_empty())
    }

    /// Whether none of the claim's committed tasks would be left once `going` is forgotten
    /// (a task id placed again by another claim is not the claim's any more).
    fn claim_is_empty_without(
        &self,
        claim_id: &ClaimId,
        below: Version,
        going: &BTreeSet<&TaskId>,
    ) -> bool {
        let Some(claim) = self.claims.get(claim_id) else {
            return false;
        };
        if claim.committed_version.is_none_or(|v| v >= below) {
            return false;
        }
        claim
            .placements
            .iter()
            .filter(|p| p.committed)
            .all(|p| match self.tasks.get(&p.task_id) {
                None => true,
                Some(t) => t.claim_id != *claim_id || going.contains(&p.task_id),
            })
    }

    /// Decides `Collect`: each id re-checked against the state as it is now.
    pub(super) fn decide_collect(
        &self,
        claims_below: Version,
        tasks: &[TaskId],
        claims: &[ClaimId],
        agents: &[AgentId],
    ) -> Result<Decision<R>, Rejection> {
        let named = tasks.len() + claims.len() + agents.len();
        if named > limits::COLLECT_RECORDS_MAX {
            return Err(Rejection::Invalid(format!(
                "a collection names {named} records, more than the {} allowed",
                limits::COLLECT_RECORDS_MAX
            )));
        }
        let mut going: BTreeSet<&TaskId> = BTreeSet::new();
        let mut collected_tasks = Vec::new();
        for id in tasks {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if t.state.is_terminal() && going.insert(id) {
                collected_tasks.push(CollectedTask {
                    task_id: id.clone(),
                    claim_id: t.claim_id.clone(),
                });
            }
        }
        let mut seen = BTreeSet::new();
        let collected_claims: Vec<ClaimId> = claims
            .iter()
            .filter(|c| seen.insert(*c) && self.claim_is_empty_without(c, claims_below, &going))
            .cloned()
            .collect();
        let mut seen = BTreeSet::new();
        let collected_agents: Vec<AgentId> = agents
            .iter()
            .filter(|a| {
                seen.insert(*a)
                    && self
                        .agents
                        .get(*a)
                        .is_some_and(|a| a.state == AgentState::Gone)
                    && !self.has_live_tasks(a)
                    && !self.holds.values().any(|h| h.agent_id == **a)
            })
            .cloned()
            .collect();
        let events = if collected_tasks.is_empty()
            && collected_claims.is_empty()
            && collected_agents.is_empty()
        {
            vec![]
        } else {
            vec![Event::Collected {
                tasks: collected_tasks,
                claims: collected_claims,
                agents: collected_agents,
            }]
        };
        Ok(Decision {
            events,
            reply: Reply::Done,
        })
    }

    /// Forgets what a collection named (each checked by `decide`: terminal tasks hold no
    /// resources, so no sum moves).
    pub(super) fn apply_collected(
        &mut self,
        tasks: &[CollectedTask],
        claims: &[ClaimId],
        agents: &[AgentId],
    ) {
        // A mirror built from a partial view may not hold every record: what it lacks it has
        // nothing to forget of.
        for c in tasks {
            let Some(t) = self.tasks.remove(&c.task_id) else {
                continue;
            };
            assert!(t.state.is_terminal(), "collected a live task {}", t.id);
            if let Some(done) = self.completed_by_owner.get_mut(&t.owner) {
                done.remove(&(t.version, t.id.clone()));
                if done.is_empty() {
                    self.completed_by_owner.remove(&t.owner);
                }
            }
        }
        for id in claims {
            if let Some(c) = self.claims.remove(id) {
                self.emptied_claims
                    .remove(&(c.committed_version.unwrap_or(0), id.clone()));
            }
        }
        // The claims these tasks leave empty wait for the log's floor to pass them (each claim
        // checked once, however many of its tasks went).
        let none = BTreeSet::new();
        let touched: BTreeSet<&ClaimId> = tasks.iter().map(|c| &c.claim_id).collect();
        for id in touched {
            if let Some(claim) = self.claims.get(id) {
                let key = (claim.committed_version.unwrap_or(0), id.clone());
                if self.claim_is_empty_without(id, Version::MAX, &none) {
                    self.emptied_claims.insert(key);
                }
            }
        }
        for id in agents {
            let Some(a) = self.agents.remove(id) else {
                continue;
            };
            assert_eq!(a.state, AgentState::Gone, "collected an agent not gone");
            self.live_tasks_by_agent.remove(id);
        }
        self.collected.tasks += tasks.len() as u64;
        self.collected.claims += claims.len() as u64;
        self.collected.agents += agents.len() as u64;
    }
}
