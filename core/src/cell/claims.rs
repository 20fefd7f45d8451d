//! Claims, the optimistic half of the cell: a claim's validation, its evictions (priority and
//! guarantee rules), and each placement checked against the agents, quotas and holds.

use super::*;

impl<R: Records> Cell<R> {
    /// Checks a claim before anything is decided: its ids, bounds, snapshot and priority,
    /// its evictions and its placements.
    pub(super) fn validate_claim(&self, claim: &Claim) -> Result<(), Rejection> {
        validate_id("claim id", claim.id.as_str())?;
        validate_role_name(&claim.role)?;
        validate_owner(&claim.owner)?;
        if claim.placements.is_empty() {
            return Err(Rejection::Invalid(format!(
                "claim {}: no placements",
                claim.id
            )));
        }
        if claim.placements.len() > limits::CLAIM_PLACEMENTS_MAX {
            return Err(too_many(
                &claim.id,
                claim.placements.len(),
                "placements",
                limits::CLAIM_PLACEMENTS_MAX,
            ));
        }
        if claim.snapshot_version > self.version {
            return Err(Rejection::Invalid(format!(
                "claim {}: snapshot version {} is ahead of the cell ({})",
                claim.id, claim.snapshot_version, self.version
            )));
        }
        if !(0..=limits::PRIORITY_MAX).contains(&claim.priority) {
            return Err(Rejection::Invalid(format!(
                "claim {}: priority {} is not within 0..={}",
                claim.id,
                claim.priority,
                limits::PRIORITY_MAX
            )));
        }
        if !claim.evictions.is_empty() {
            self.validate_evictions(claim)?;
        }
        for p in &claim.placements {
            validate_placement(p)?;
        }
        Ok(())
    }

    /// A claim's evictions: only all-or-nothing, within the bound, each a task of the cell
    /// named once.
    fn validate_evictions(&self, claim: &Claim) -> Result<(), Rejection> {
        if claim.mode != CommitMode::AllOrNothing {
            return Err(Rejection::Invalid(format!(
                "claim {}: evictions need mode all_or_nothing",
                claim.id
            )));
        }
        if claim.evictions.len() > limits::CLAIM_EVICTIONS_MAX {
            return Err(too_many(
                &claim.id,
                claim.evictions.len(),
                "evictions",
                limits::CLAIM_EVICTIONS_MAX,
            ));
        }
        let mut seen = HashSet::new();
        for id in &claim.evictions {
            if !seen.insert(id) {
                return Err(Rejection::Invalid(format!(
                    "claim {}: task {id} is evicted twice",
                    claim.id
                )));
            }
            if !self.tasks.contains_key(id) {
                return Err(not_found_task(id));
            }
        }
        Ok(())
    }

    /// Decides a claim: its first outcome again when resubmitted; else checked, its evictions
    /// (if any) checked and released, and its placements decided.
    pub(super) fn decide_claim(
        &self,
        now: Timestamp,
        next: Version,
        claim: &Claim,
    ) -> Result<Decision<R>, Rejection> {
        if let Some(outcome) = self.claims.get(&claim.id) {
            // Idempotent resubmission: the original outcome, nothing new.
            return Ok(Decision {
                events: vec![],
                reply: Reply::Claim {
                    outcome: outcome.as_ref().clone(),
                },
            });
        }
        self.validate_claim(claim)?;
        if claim.evictions.is_empty() {
            return self.decide_placements(next, claim);
        }
        if let Err((task_id, why)) = self.check_evictions(claim) {
            let reason = RejectReason::EvictionRefused { task_id, why };
            return Ok(eviction_refused(claim, reason));
        }
        let after = self.with_evictions_released(next, claim);
        let mut decision = after.decide_placements(next, claim)?;
        if decision.events.is_empty() {
            // Nothing placed: nothing is evicted either.
            return Ok(decision);
        }
        // The kills come first in the entry, so an agent hears of them before the launches.
        push_preemption_kills(now, claim, &mut decision.events);
        Ok(decision)
    }

    /// The cell as it is once the victims' resources of `claim` are free (an O(1) copy), so
    /// that every check — fit, limit, headroom — sees the evictions.
    fn with_evictions_released(&self, next: Version, claim: &Claim) -> Cell<R> {
        let mut after = self.clone();
        for id in &claim.evictions {
            after.release_preempted(next, id, &claim.id);
        }
        // The coarse check compares agents' versions with the claim's snapshot: the claim's
        // own evictions are not a change it missed.
        for id in &claim.evictions {
            let agent_id = &self.tasks[id].agent_id;
            if let (Some(was), Some(a)) =
                (self.agents.get(agent_id), after.agents.get_mut(agent_id))
            {
                Arc::make_mut(a).version = was.version;
            }
        }
        after
    }

    /// Checks a claim's evictions against the current state: each victim is running (or
    /// about to) on an agent the claim places on, its role is preemptible, and either its
    /// priority is strictly below the claim's (the **priority rule**) or the claim's role is
    /// below its guarantee even with the claim and the victim's role is another one (the
    /// **guarantee rule**). In both cases no role other than the claim's own is taken below
    /// its guarantee by the evictions. Returns the first victim refused and why.
    pub(super) fn check_evictions(&self, claim: &Claim) -> Result<(), (TaskId, String)> {
        let agents: HashSet<&AgentId> = claim.placements.iter().map(|p| &p.agent_id).collect();
        let claimant_below_guarantee = self.below_guarantee_with(claim);
        let mut evicted: HashMap<&str, ResourceSet> = HashMap::new();
        for id in &claim.evictions {
            let t = self.tasks.get(id).expect("checked by validate_claim");
            let refuse = |why: String| Err((id.clone(), why));
            if !matches!(
                t.state,
                TaskState::Staging | TaskState::Starting | TaskState::Running
            ) || t.preempted_by.is_some()
            {
                return refuse(format!("it is {}", t.state.mesos_name()));
            }
            if !agents.contains(&t.agent_id) {
                return refuse(format!(
                    "it is on agent {}, where the claim places nothing",
                    t.agent_id
                ));
            }
            let role = self.roles.get(&t.role);
            if role.is_some_and(|r| !r.preemptible) {
                return refuse(format!("role {} is not preemptible", t.role));
            }
            let by_priority = t.priority < claim.priority;
            let by_guarantee = claimant_below_guarantee && t.role != claim.role;
            if !by_priority && !by_guarantee {
                return refuse(format!(
                    "its priority {} is not below the claim's {}, and role {} is not below its \
                     guarantee or the task is its own",
                    t.priority, claim.priority, claim.role
                ));
            }
            if t.role == claim.role {
                continue;
            }
            let gone = evicted.entry(t.role.as_str()).or_default();
            gone.add_scalars(&t.resources)
                .expect("a live task's resources are consumed");
            if let Some(r) = role {
                for (name, g) in r.quota.guarantee.scalar_totals() {
                    let left = r.consumed.scalar(&name).0 - gone.scalar(&name).0;
                    if t.resources.scalar(&name).0 > 0 && left < g.0 {
                        return refuse(format!(
                            "it would take role {} below its guarantee of {name}",
                            t.role
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `claim.role` has a guarantee that the claim's placements ask for, and stays
    /// within it on every guaranteed resource even with all of them.
    pub(super) fn below_guarantee_with(&self, claim: &Claim) -> bool {
        let Some(role) = self.roles.get(&claim.role) else {
            return false;
        };
        let mut wanted = ResourceSet::new();
        for p in &claim.placements {
            if wanted.add_scalars(&p.resources).is_err() {
                return false;
            }
        }
        let mut asks = false;
        for (name, g) in role.quota.guarantee.scalar_totals() {
            let want = wanted.scalar(&name).0;
            asks |= want > 0;
            if role.consumed.scalar(&name).0 + want > g.0 {
                return false;
            }
        }
        asks
    }

    /// The placements of a claim, checked against this cell (its evictions, if any, already
    /// released here). A placement that would take the role's consumption of a scalar past
    /// the largest amount refuses the claim (400): that sum cannot be held.
    pub(super) fn decide_placements(
        &self,
        next: Version,
        claim: &Claim,
    ) -> Result<Decision<R>, Rejection> {
        let role = self.roles.get(&claim.role);
        let mut scratch = Scratch::default();
        let headroom = self.headroom_for_others(&claim.role);

        let mut outcomes = Vec::with_capacity(claim.placements.len());
        for p in &claim.placements {
            let verdict = self.check_placement(claim, p, role, &scratch, &headroom);
            if verdict.is_none() {
                check_role_sum(claim, p, role, &scratch.role)?;
                scratch.take(p);
            }
            outcomes.push(PlacementOutcome {
                task_id: p.task_id.clone(),
                agent_id: p.agent_id.clone(),
                committed: verdict.is_none(),
                rejected: verdict,
            });
        }

        let any_rejected = outcomes.iter().any(|o| !o.committed);
        if claim.mode == CommitMode::AllOrNothing && any_rejected {
            for o in outcomes.iter_mut().filter(|o| o.committed) {
                o.committed = false;
                o.rejected = Some(RejectReason::GangAborted);
            }
        }
        let committed_any = outcomes.iter().any(|o| o.committed);
        let outcome = ClaimOutcome {
            claim_id: claim.id.clone(),
            committed_version: committed_any.then_some(next),
            placements: outcomes,
        };
        if !committed_any {
            // Nothing committed: nothing is recorded, so the scheduler may retry the same id
            // on fresh state.
            return Ok(Decision {
                events: vec![],
                reply: Reply::Claim { outcome },
            });
        }
        let tasks = committed_tasks(next, claim, &outcome);
        Ok(Decision {
            events: vec![Event::ClaimCommitted {
                outcome: outcome.clone(),
                tasks,
                evictions: claim.evictions.clone(),
            }],
            reply: Reply::Claim { outcome },
        })
    }

    /// Refuses an agent's new total (in place of `old`, counted now) that would take the
    /// cell's sum of a scalar past [`limits::CELL_SCALAR_MILLI_MAX`].
    pub(super) fn check_cluster_total(
        &self,
        old: Option<&ResourceSet>,
        total: &ResourceSet,
    ) -> Result<(), Rejection> {
        for (name, m) in total.scalar_totals() {
            let now = self.cluster_total.get(&name).copied().unwrap_or(0);
            let was = old.map(|o| o.scalar(&name).0).unwrap_or(0);
            // `now <= CELL_SCALAR_MILLI_MAX` and `m, was <= Milli::MAX`: no overflow.
            if now - was + m.0 > limits::CELL_SCALAR_MILLI_MAX {
                return Err(Rejection::Invalid(format!(
                    "resource {name}: the cell's total would pass the largest sum allowed ({})",
                    Milli(limits::CELL_SCALAR_MILLI_MAX).as_f64()
                )));
            }
        }
        Ok(())
    }

    /// Refuses a guarantee for `role` that would take the sum of a scalar's guarantees over
    /// all roles (what the headroom counts) past [`limits::CELL_SCALAR_MILLI_MAX`].
    pub(super) fn check_guarantees(
        &self,
        role: &str,
        guarantee: &ResourceSet,
    ) -> Result<(), Rejection> {
        for (name, g) in guarantee.scalar_totals() {
            let mut sum = g.0;
            for r in self.roles.values().filter(|r| r.name != role) {
                // Each guarantee is within `Milli::MAX`, the sum so far within the bound.
                sum += r.quota.guarantee.scalar(&name).0;
                if sum > limits::CELL_SCALAR_MILLI_MAX {
                    return Err(Rejection::Invalid(format!(
                        "role {role}: the guarantees of {name} over all roles would pass the \
                         largest sum allowed ({})",
                        Milli(limits::CELL_SCALAR_MILLI_MAX).as_f64()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Why placement `p` of `claim` cannot be committed beside the placements of the claim
    /// accepted before it (`scratch`), if it cannot: checked in the order the reasons are
    /// reported.
    pub(super) fn check_placement(
        &self,
        claim: &Claim,
        p: &Placement,
        role: Option<&Role>,
        scratch: &Scratch,
        headroom: &BTreeMap<Name, i64>,
    ) -> Option<RejectReason> {
        let agent = match self.placement_agent(claim, p, scratch) {
            Ok(agent) => agent,
            Err(reason) => return Some(reason),
        };
        check_agent_room(agent, p, scratch)
            .or_else(|| check_quota_limit(role, p, &scratch.role))
            .or_else(|| self.check_headroom(p, headroom, &scratch.cluster))
    }

    /// The agent a placement names, if its task id is new and the agent active, takes the
    /// claim's reservations and (for a coarse check) has not moved since the snapshot.
    fn placement_agent(
        &self,
        claim: &Claim,
        p: &Placement,
        scratch: &Scratch,
    ) -> Result<&Arc<Agent>, RejectReason> {
        if self.tasks.contains_key(&p.task_id) || scratch.tasks.contains(&p.task_id) {
            return Err(RejectReason::DuplicateTaskId);
        }
        let Some(agent) = self.agents.get(&p.agent_id) else {
            return Err(RejectReason::UnknownAgent);
        };
        if agent.state != AgentState::Active {
            return Err(RejectReason::AgentNotActive { state: agent.state });
        }
        if let Some(other) = p.resources.reserved_roles().find(|r| *r != claim.role) {
            return Err(RejectReason::ReservationMismatch {
                role: other.to_string(),
            });
        }
        if claim.check == ConflictCheck::Coarse && agent.version > claim.snapshot_version {
            return Err(RejectReason::AgentVersionMoved {
                agent_version: agent.version,
            });
        }
        Ok(agent)
    }

    /// Refuses a placement whose unreserved resources would take the cell's free amount of a
    /// scalar below what other roles' guarantees hold back (`headroom`).
    fn check_headroom(
        &self,
        p: &Placement,
        headroom: &BTreeMap<Name, i64>,
        scratch_cluster: &BTreeMap<Name, i64>,
    ) -> Option<RejectReason> {
        for (name, held) in headroom {
            let want: i64 = p
                .resources
                .iter()
                .filter(|r| r.name == *name && r.role == UNRESERVED)
                .map(|r| match r.value {
                    crate::resources::Value::Scalar(m) => m.0,
                    _ => 0,
                })
                .sum();
            if want == 0 {
                continue;
            }
            let total = self.cluster_total.get(name).copied().unwrap_or(0);
            let allocated = self.cluster_allocated.get(name).copied().unwrap_or(0)
                + scratch_cluster.get(name).copied().unwrap_or(0);
            if total - allocated - want < *held {
                return Some(RejectReason::QuotaHeadroom {
                    resource: name.to_string(),
                });
            }
        }
        None
    }
}

/// The decision on a claim whose evictions are refused: every placement refused for `reason`.
fn eviction_refused<R: Records>(claim: &Claim, reason: RejectReason) -> Decision<R> {
    Decision {
        events: vec![],
        reply: Reply::Claim {
            outcome: ClaimOutcome {
                claim_id: claim.id.clone(),
                committed_version: None,
                placements: claim
                    .placements
                    .iter()
                    .map(|p| PlacementOutcome {
                        task_id: p.task_id.clone(),
                        agent_id: p.agent_id.clone(),
                        committed: false,
                        rejected: Some(reason.clone()),
                    })
                    .collect(),
            },
        },
    }
}

/// Puts the kills of a claim's evictions first in `events`, each saying which claim
/// preempted the task.
fn push_preemption_kills<R: Records>(now: Timestamp, claim: &Claim, events: &mut Vec<Event<R>>) {
    let first = claim.placements.first().map(|p| p.task_id.as_str());
    let message = format!(
        "preempted by claim {} of {} (role {}, priority {}) for task {}",
        claim.id,
        if claim.owner.is_empty() {
            "?"
        } else {
            &claim.owner
        },
        claim.role,
        claim.priority,
        first.unwrap_or("?"),
    );
    let kills = claim.evictions.iter().map(|id| Event::TaskStatusChanged {
        task_id: id.clone(),
        state: TaskState::Killing,
        status: StatusInfo {
            message: Some(message.clone()),
            reason: Some(REASON_PREEMPTED.into()),
            source: Some("SOURCE_MASTER".into()),
            timestamp: now,
            ..StatusInfo::default()
        },
    });
    events.splice(0..0, kills);
}

/// What the placements of one claim accepted so far take: from each agent, for the role and
/// from the cell; and their task ids.
#[derive(Default)]
pub(super) struct Scratch<'c> {
    agents: HashMap<&'c AgentId, ResourceSet>,
    role: ResourceSet,
    cluster: BTreeMap<Name, i64>,
    tasks: HashSet<&'c TaskId>,
}

impl<'c> Scratch<'c> {
    /// Counts an accepted placement.
    fn take(&mut self, p: &'c Placement) {
        self.tasks.insert(&p.task_id);
        self.agents
            .entry(&p.agent_id)
            .or_default()
            .add(&p.resources)
            .expect("checked by check_placement");
        self.role
            .add_scalars(&p.resources)
            .expect("checked against the largest amount above");
        for (name, m) in p.resources.scalar_totals() {
            *self.cluster.entry(name).or_default() += m.0;
        }
    }
}

/// Refuses the claim (400) when an accepted placement would take the role's consumption of
/// a scalar past the largest amount: that sum cannot be held.
fn check_role_sum(
    claim: &Claim,
    p: &Placement,
    role: Option<&Role>,
    scratch_role: &ResourceSet,
) -> Result<(), Rejection> {
    let consumed = role.map(|r| &r.consumed);
    for (name, m) in p.resources.scalar_totals() {
        // Each term is within `Milli::MAX`: the sum cannot overflow.
        let held = consumed.map(|c| c.scalar(&name).0).unwrap_or(0) + scratch_role.scalar(&name).0;
        if held + m.0 > Milli::MAX.0 {
            return Err(Rejection::Invalid(format!(
                "claim {}: role {} would consume more {name} than the largest \
                 amount allowed ({})",
                claim.id,
                claim.role,
                Milli::MAX.as_f64()
            )));
        }
    }
    Ok(())
}

/// Refuses a placement the agent has no room for, beside what the claim's placements
/// accepted before it take there (two asking for one port, or one name with two types).
fn check_agent_room(agent: &Agent, p: &Placement, scratch: &Scratch) -> Option<RejectReason> {
    let mut combined;
    let mut wanted = &p.resources;
    if let Some(already) = scratch.agents.get(&p.agent_id) {
        // Two placements of one claim asking for the same port, or one name with two types.
        combined = p.resources.clone();
        if let Err(e) = combined.add(already) {
            let resource = match e {
                crate::resources::ResourceError::Overlap(n)
                | crate::resources::ResourceError::TypeMismatch(n)
                | crate::resources::ResourceError::TooLarge(n)
                | crate::resources::ResourceError::InvalidValue(n) => n,
                crate::resources::ResourceError::Parse { input, .. } => input,
            };
            return Some(RejectReason::InsufficientResources { resource });
        }
        wanted = &combined;
    }
    if !agent.total.fits_beside(&agent.allocated, wanted) {
        let free = agent.free();
        return Some(RejectReason::InsufficientResources {
            resource: free.first_missing(wanted).unwrap_or_default(),
        });
    }
    None
}

/// Refuses a placement that would take the role past its quota's limit of a scalar.
fn check_quota_limit(
    role: Option<&Role>,
    p: &Placement,
    scratch_role: &ResourceSet,
) -> Option<RejectReason> {
    let limit = role.and_then(|r| r.quota.limit.as_ref())?;
    let consumed = role.map(|r| &r.consumed);
    for (name, cap) in limit.scalar_totals() {
        let want = p.resources.scalar(&name).0;
        if want == 0 {
            continue;
        }
        let used = consumed.map(|c| c.scalar(&name).0).unwrap_or(0) + scratch_role.scalar(&name).0;
        if used + want > cap.0 {
            return Some(RejectReason::QuotaLimit {
                resource: name.to_string(),
            });
        }
    }
    None
}

/// The tasks of a claim's committed placements, as the cell records them.
fn committed_tasks(next: Version, claim: &Claim, outcome: &ClaimOutcome) -> Vec<Arc<Task>> {
    claim
        .placements
        .iter()
        .zip(&outcome.placements)
        .filter(|(_, o)| o.committed)
        .map(|(p, _)| {
            Arc::new(Task {
                id: p.task_id.clone(),
                name: p.name.clone(),
                agent_id: p.agent_id.clone(),
                role: claim.role.clone(),
                owner: claim.owner.clone(),
                claim_id: claim.id.clone(),
                resources: p.resources.clone(),
                state: TaskState::Staging,
                status: StatusInfo::default(),
                spec: p.spec.clone(),
                version: next,
                priority: claim.priority,
                preempted_by: None,
            })
        })
        .collect()
}

/// A placement's task id, and resources and a description within bounds.
fn validate_placement(p: &Placement) -> Result<(), Rejection> {
    validate_id("task id", p.task_id.as_str())?;
    if p.resources.is_empty() {
        return Err(Rejection::Invalid(format!(
            "task {}: no resources",
            p.task_id
        )));
    }
    if p.spec.as_str().len() > limits::TASK_SPEC_BYTES_MAX {
        return Err(Rejection::Invalid(format!(
            "task {}: task description too large",
            p.task_id
        )));
    }
    Ok(())
}
