//! Folding committed entries into the cell: infallible, asserting the invariants; the
//! resources each event moves between agents, roles and the cell's sums.

use super::*;

impl<R: Records> Cell<R> {
    /// Folds a committed entry into the state. Infallible: `decide` validated everything;
    /// a broken invariant here is a bug, and the master stops rather than persist damage.
    pub fn apply(&mut self, entry: &LogEntry<R>) {
        assert_eq!(
            entry.version,
            self.version + 1,
            "log entries apply in order"
        );
        let v = entry.version;
        for event in &entry.events {
            self.apply_event(v, event);
        }
        self.version = v;
    }

    /// Folds one event of an entry at version `v` into the state.
    pub(super) fn apply_event(&mut self, v: Version, event: &Event<R>) {
        match event {
            Event::AgentRegistered { agent } => self.apply_agent_registered(v, agent),
            Event::AgentResourcesUpdated { agent_id, total } => {
                self.apply_agent_resources(v, agent_id, total)
            }
            Event::AgentStateChanged { agent_id, state } => {
                self.apply_agent_state(v, agent_id, *state)
            }
            Event::ClaimCommitted {
                outcome,
                tasks,
                evictions,
            } => self.apply_claim(v, outcome, tasks, evictions),
            Event::TaskStatusChanged {
                task_id,
                state,
                status,
            } => self.apply_task_status(v, task_id, *state, status),
            Event::RoleConfigured {
                name,
                weight,
                quota,
                preemptible,
            } => {
                let role = self
                    .roles
                    .entry(name.clone())
                    .or_insert_with(|| Role::new(name));
                role.weight = *weight;
                role.quota = quota.clone();
                role.preemptible = *preemptible;
            }
            Event::HoldsPlaced { holds } => self.apply_holds_placed(v, holds),
            Event::HoldsReleased { offer_ids, .. } => {
                for id in offer_ids {
                    if let Some(h) = self.holds.remove(id) {
                        self.release_hold(v, &h);
                    }
                }
            }
            Event::HoldsCleared { .. } => {
                let holds: Vec<Hold> = self.holds.values().cloned().collect();
                self.holds = PMap::new();
                for h in &holds {
                    self.release_hold(v, h);
                }
            }
            Event::Collected {
                tasks,
                claims,
                agents,
            } => self.apply_collected(tasks, claims, agents),
            Event::Records(event) => self.records.apply(v, event),
        }
    }

    /// An agent registered: a returning one keeps what it had allocated, and the cell's sums
    /// count its new total in place of the old.
    fn apply_agent_registered(&mut self, v: Version, agent: &Agent) {
        let mut agent = agent.clone();
        agent.version = v;
        if let Some(old) = self.agents.get(&agent.id).cloned() {
            let old = old.as_ref();
            agent.allocated = old.allocated.clone();
            if old.state != AgentState::Gone {
                self.add_cluster(&old.total, &old.allocated, -1);
            }
        } else {
            agent.allocated = ResourceSet::new();
        }
        assert!(
            agent.total.contains(&agent.allocated),
            "agent {} over-committed",
            agent.id
        );
        self.add_cluster(&agent.total, &agent.allocated, 1);
        self.agents.insert(agent.id.clone(), Arc::new(agent));
    }

    /// An agent's new total, in the cell's sums too; it still covers what is allocated.
    fn apply_agent_resources(&mut self, v: Version, agent_id: &AgentId, total: &ResourceSet) {
        let old = self
            .agents
            .get(agent_id)
            .expect("decided on a known agent")
            .clone();
        self.add_cluster(&old.total, &ResourceSet::new(), -1);
        self.add_cluster(total, &ResourceSet::new(), 1);
        let a = Arc::make_mut(self.agents.get_mut(agent_id).expect("known agent"));
        a.total = total.clone();
        a.version = v;
        assert!(
            a.total.contains(&a.allocated),
            "agent {agent_id} over-committed"
        );
    }

    /// An agent's new state; a gone agent leaves the cell's sums.
    fn apply_agent_state(&mut self, v: Version, agent_id: &AgentId, state: AgentState) {
        let a = self
            .agents
            .get(agent_id)
            .expect("decided on a known agent")
            .clone();
        if state == AgentState::Gone && a.state != AgentState::Gone {
            self.add_cluster(&a.total, &a.allocated, -1);
        }
        let a = Arc::make_mut(self.agents.get_mut(agent_id).expect("known agent"));
        a.state = state;
        a.version = v;
    }

    /// Holds placed: each takes its resources on its agent and in the cell's sums.
    fn apply_holds_placed(&mut self, v: Version, holds: &[Hold]) {
        for h in holds {
            let a = Arc::make_mut(
                self.agents
                    .get_mut(&h.agent_id)
                    .expect("decided on a known agent"),
            );
            a.allocated.add(&h.resources).expect("decided to fit");
            a.version = v;
            assert!(
                a.total.contains(&a.allocated),
                "agent {} over-committed by offer {}",
                a.id,
                h.id
            );
            for (name, m) in h.resources.scalar_totals() {
                *self.cluster_allocated.entry(name).or_default() += m.0;
            }
            self.holds.insert(h.id.clone(), h.clone());
        }
    }

    /// Folds a committed claim in: its evictions' resources move to it, its tasks are placed.
    fn apply_claim(
        &mut self,
        v: Version,
        outcome: &ClaimOutcome,
        tasks: &[Arc<Task>],
        evictions: &[TaskId],
    ) {
        for id in evictions {
            self.release_preempted(v, id, &outcome.claim_id);
        }
        for t in tasks {
            self.place_task(v, &outcome.claim_id, t);
        }
        self.claims
            .insert(outcome.claim_id.clone(), Arc::new(outcome.clone()));
    }

    /// One task of a committed claim: its resources go to its agent, role and the cell's sums.
    fn place_task(&mut self, v: Version, claim_id: &ClaimId, t: &Arc<Task>) {
        // Decided with `version = v` already: share the record, do not copy it.
        let t = if t.version == v {
            Arc::clone(t)
        } else {
            let mut copy = Task::clone(t);
            copy.version = v;
            Arc::new(copy)
        };
        let a = Arc::make_mut(
            self.agents
                .get_mut(&t.agent_id)
                .expect("decided on a known agent"),
        );
        a.allocated.add(&t.resources).expect("typed at validation");
        a.version = v;
        assert!(
            a.total.contains(&a.allocated),
            "agent {} over-committed by claim {}",
            a.id,
            claim_id
        );
        if !self.roles.contains_key(&t.role) {
            self.roles.insert(t.role.clone(), Role::new(&t.role));
        }
        let role = self.roles.get_mut(&t.role).expect("inserted above");
        role.consumed
            .add_scalars(&t.resources)
            .expect("typed at validation");
        for (name, m) in t.resources.scalar_totals() {
            *self.cluster_allocated.entry(name).or_default() += m.0;
        }
        self.live_tasks_by_agent
            .entry(t.agent_id.clone())
            .or_default()
            .insert(t.id.clone());
        let previous = self.tasks.insert(t.id.clone(), t);
        assert!(previous.is_none(), "duplicate task id committed");
    }

    /// A task's new state and status; its resources are freed on its first terminal state.
    fn apply_task_status(
        &mut self,
        v: Version,
        task_id: &TaskId,
        state: TaskState,
        status: &StatusInfo,
    ) {
        let task = Arc::make_mut(
            self.tasks
                .get_mut(task_id)
                .expect("decided on a known task"),
        );
        let held = task.holds_resources();
        let was_terminal = task.state.is_terminal();
        task.state = state;
        task.status = status.clone();
        task.version = v;
        if !was_terminal && state.is_terminal() {
            let (agent_id, role, res, owner, id) = (
                task.agent_id.clone(),
                task.role.clone(),
                task.resources.clone(),
                task.owner.clone(),
                task.id.clone(),
            );
            if let Some(ids) = self.live_tasks_by_agent.get_mut(&agent_id) {
                ids.remove(task_id);
            }
            self.completed_by_owner
                .entry(owner)
                .or_default()
                .insert((v, id));
            // One of the two places resources are freed: on the first terminal state
            // only, and not for an evicted task (freed when it was evicted).
            if held {
                self.free_resources(v, &agent_id, &role, &res);
            }
        }
    }

    /// Takes a live task's resources off its agent, role and the cell's sums.
    pub(super) fn free_resources(
        &mut self,
        v: Version,
        agent_id: &AgentId,
        role: &str,
        res: &ResourceSet,
    ) {
        let gone = match self.agents.get_mut(agent_id).map(Arc::make_mut) {
            Some(a) => {
                a.allocated
                    .subtract(res)
                    .expect("a live task's resources are allocated");
                a.version = v;
                a.state == AgentState::Gone
            }
            None => true,
        };
        if let Some(r) = self.roles.get_mut(role) {
            r.consumed
                .subtract(&res.scalars_only())
                .expect("a live task's resources are consumed");
        }
        if !gone {
            for (name, m) in res.scalar_totals() {
                *self.cluster_allocated.entry(name).or_default() -= m.0;
            }
        }
    }

    /// Evicts a task for `claim`: the other place resources are freed. The task stays live
    /// (it is being killed) but holds nothing from now on.
    pub(super) fn release_preempted(&mut self, v: Version, task_id: &TaskId, claim: &ClaimId) {
        let task = Arc::make_mut(
            self.tasks
                .get_mut(task_id)
                .expect("decided on a known task"),
        );
        assert!(
            task.holds_resources(),
            "evicting task {task_id} that holds nothing"
        );
        task.preempted_by = Some(claim.clone());
        task.version = v;
        let (agent_id, role, res) = (
            task.agent_id.clone(),
            task.role.clone(),
            task.resources.clone(),
        );
        self.free_resources(v, &agent_id, &role, &res);
    }

    /// Adds (`sign` 1) or takes away (-1) an agent's share of the cell's sums. `decide`
    /// keeps them within `limits::CELL_SCALAR_MILLI_MAX`; passing it is a bug.
    pub(super) fn add_cluster(&mut self, total: &ResourceSet, allocated: &ResourceSet, sign: i64) {
        fn add(sums: &mut OrdMap<Name, i64>, set: &ResourceSet, sign: i64) {
            for (name, m) in set.scalar_totals() {
                let sum = sums.entry(name).or_default();
                *sum = sum
                    .checked_add(sign * m.0)
                    .filter(|s| *s <= limits::CELL_SCALAR_MILLI_MAX)
                    .expect("decide keeps the cell's sums in range");
            }
        }
        add(&mut self.cluster_total, total, sign);
        add(&mut self.cluster_allocated, allocated, sign);
    }
}

#[cfg(test)]
mod overflow_tests {
    //! Sums that input can reach are checked in `decide` and refused there: `apply` only ever
    //! meets what `decide` accepted, so no input can panic the commit path.
    use super::*;

    fn register(cell: &mut Cell, host: &str, res: &str) -> Result<AgentId, Rejection> {
        let reg = AgentRegistration {
            agent_id: None,
            hostname: host.into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse(res).unwrap(),
        };
        match cell.commit(1, &Command::RegisterAgent(reg))? {
            (_, Reply::Agent { agent_id }) => Ok(agent_id),
            (_, r) => panic!("unexpected reply {r:?}"),
        }
    }

    fn claim(cell: &Cell, id: &str, role: &str, placements: &[(&str, &AgentId, &str)]) -> Command {
        Command::Claim(Claim {
            id: ClaimId::new(id),
            role: role.into(),
            owner: "x".into(),
            snapshot_version: cell.version(),
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements: placements
                .iter()
                .map(|(task, agent, res)| Placement {
                    task_id: TaskId::new(*task),
                    name: task.to_string(),
                    agent_id: (*agent).clone(),
                    resources: ResourceSet::parse(res).unwrap(),
                    spec: TaskSpec::empty(),
                })
                .collect(),
            priority: 0,
            evictions: vec![],
        })
    }

    fn committed(r: Result<(Option<LogEntry>, Reply), Rejection>) -> bool {
        matches!(r, Ok((_, Reply::Claim { outcome })) if outcome.committed_version.is_some())
    }

    fn cell() -> Cell {
        Cell::new(CellConfig {
            cell_id: "c".into(),
        })
    }

    /// Issue 11, item 1: a role's consumption past the largest amount panicked `apply`.
    #[test]
    fn commit_thread_dies_on_arithmetic_overflow() {
        let mut cell = cell();
        let a = register(&mut cell, "a", "cpus:1e12;mem:1").unwrap();
        let b = register(&mut cell, "b", "cpus:1e12;mem:1").unwrap();
        let all_a = claim(&cell, "c1", "web", &[("t1", &a, "cpus:1e12")]);
        assert!(committed(cell.commit(2, &all_a)));
        let more = claim(&cell, "c2", "web", &[("t2", &b, "cpus:0.001")]);
        let refused = cell.commit(3, &more).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        assert!(refused.to_string().contains("cpus"), "{refused}");
        assert_eq!(cell.version(), 3, "nothing committed");
        // The cell goes on: a valid claim (another role) commits, and the role may still
        // use what is left of its own amount.
        let other = claim(&cell, "c3", "db", &[("t3", &b, "cpus:1;mem:1")]);
        assert!(committed(cell.commit(4, &other)));
        let kill = Command::KillTask {
            task_id: TaskId::new("t1"),
        };
        cell.commit(5, &kill).unwrap();
        let killed = Command::UpdateTaskStatus {
            task_id: TaskId::new("t1"),
            state: TaskState::Killed,
            status: StatusInfo::default(),
        };
        cell.commit(6, &killed).unwrap();
        assert!(committed(cell.commit(7, &more)));
        cell.check_invariants().unwrap();
    }

    /// One claim whose placements together pass the largest amount for its role.
    #[test]
    fn one_claim_past_the_largest_role_sum_is_refused() {
        let mut cell = cell();
        let a = register(&mut cell, "a", "cpus:1e12").unwrap();
        let b = register(&mut cell, "b", "cpus:1e12").unwrap();
        let c = claim(
            &cell,
            "c1",
            "web",
            &[("t1", &a, "cpus:1e12"), ("t2", &b, "cpus:1")],
        );
        let refused = cell.commit(2, &c).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        assert_eq!(cell.version(), 2, "nothing committed");
        cell.check_invariants().unwrap();
    }

    /// The cell's totals (`sign * m` summed over agents) stay below `CELL_SCALAR_MILLI_MAX`:
    /// the agent that would pass it is refused, any number of agents later.
    #[test]
    fn cluster_totals_past_the_largest_sum_are_refused() {
        let mut cell = cell();
        let per_agent = Milli::MAX.0;
        let fit = limits::CELL_SCALAR_MILLI_MAX / per_agent;
        for i in 0..fit {
            register(&mut cell, &format!("h{i}"), "cpus:1e12").unwrap();
        }
        let refused = register(&mut cell, "one-more", "cpus:1e12").unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        assert!(refused.to_string().contains("cpus"), "{refused}");
        // Growing an agent past the sum is refused too.
        let small = register(&mut cell, "small", "cpus:1").unwrap();
        let grow = Command::UpdateAgentResources {
            agent_id: small,
            total: ResourceSet::parse("cpus:1e12").unwrap(),
        };
        let refused = cell.commit(2, &grow).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        cell.check_invariants().unwrap();
    }

    /// The headroom sum (unmet guarantees over roles) is bounded where guarantees are set.
    #[test]
    fn quota_guarantees_past_the_largest_sum_are_refused() {
        let mut cell = cell();
        let quota = Quota {
            guarantee: ResourceSet::parse("cpus:1e12").unwrap(),
            limit: None,
        };
        let fit = limits::CELL_SCALAR_MILLI_MAX / Milli::MAX.0;
        let configure = |name: String| Command::ConfigureRole {
            name,
            weight: 1.0,
            quota: quota.clone(),
            preemptible: true,
        };
        for i in 0..fit {
            cell.commit(1, &configure(format!("r{i}"))).unwrap();
        }
        let refused = cell.commit(1, &configure("one-more".into())).unwrap_err();
        assert_eq!(refused.http_status(), 400, "{refused}");
        // Setting a role's own guarantee again replaces it: it still fits.
        cell.commit(1, &configure("r0".into())).unwrap();
        let a = register(&mut cell, "a", "cpus:1").unwrap();
        let c = claim(&cell, "c1", "other", &[("t1", &a, "cpus:1")]);
        let (_, reply) = cell.commit(2, &c).unwrap();
        assert!(matches!(reply, Reply::Claim { .. }));
        cell.check_invariants().unwrap();
    }
}
