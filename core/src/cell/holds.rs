//! Holds, the pessimistic half of the cell: resources held for frameworks' offers, placed,
//! released, and used by a claim in the same transaction.

use super::*;

impl<R: Records> Cell<R> {
    /// Decides `ReleaseHolds`: the holds of these offers that are still here are released.
    pub(super) fn decide_release_holds(
        &self,
        offer_ids: &[OfferId],
    ) -> Result<Decision<R>, Rejection> {
        let known: Vec<OfferId> = offer_ids
            .iter()
            .filter(|id| self.holds.contains_key(*id))
            .cloned()
            .collect();
        let events = if known.is_empty() {
            vec![]
        } else {
            vec![self.release_event(known)]
        };
        Ok(Decision {
            events,
            reply: Reply::Done,
        })
    }

    /// Decides `ClearHolds`: every hold goes.
    pub(super) fn decide_clear_holds(&self) -> Result<Decision<R>, Rejection> {
        let mut agent_ids: Vec<AgentId> = self.holds.values().map(|h| h.agent_id.clone()).collect();
        agent_ids.sort();
        agent_ids.dedup();
        // Always an event, even with no holds here: a new master commits it first so that
        // watchers who saw holds of the previous master drop them too.
        let events = vec![Event::HoldsCleared { agent_ids }];
        Ok(Decision {
            events,
            reply: Reply::Done,
        })
    }

    pub(super) fn decide_place_holds(&self, holds: &[Hold]) -> Result<Decision<R>, Rejection> {
        let mut scratch: HashMap<&AgentId, ResourceSet> = HashMap::new();
        let (mut placed, mut refused) = (Vec::new(), Vec::new());
        let mut seen: HashSet<&OfferId> = HashSet::new();
        for h in holds {
            validate_id("offer id", h.id.as_str())?;
            validate_role_name(&h.role)?;
            if h.resources.is_empty() {
                return Err(Rejection::Invalid(format!("offer {}: no resources", h.id)));
            }
            let fits = match self.agents.get(&h.agent_id) {
                Some(a)
                    if a.state == AgentState::Active
                        && !self.holds.contains_key(&h.id)
                        && seen.insert(&h.id) =>
                {
                    // The same in-place fit check as a claim's placements.
                    match scratch.get(&h.agent_id) {
                        Some(already) => {
                            let mut wanted = h.resources.clone();
                            wanted.add(already).is_ok()
                                && a.total.fits_beside(&a.allocated, &wanted)
                        }
                        None => a.total.fits_beside(&a.allocated, &h.resources),
                    }
                }
                _ => false,
            };
            if fits {
                scratch
                    .entry(&h.agent_id)
                    .or_default()
                    .add(&h.resources)
                    .expect("checked above");
                placed.push(h.clone());
            } else {
                refused.push(h.id.clone());
            }
        }
        let reply = Reply::Holds {
            placed: placed.iter().map(|h| h.id.clone()).collect(),
            refused,
        };
        let events = if placed.is_empty() {
            vec![]
        } else {
            vec![Event::HoldsPlaced { holds: placed }]
        };
        Ok(Decision { events, reply })
    }

    /// Decides an accept of offers (holds) with a claim: the offers are released, and the
    /// claim is decided on the cell without them, only within what they held.
    pub(super) fn decide_accept(
        &self,
        now: Timestamp,
        next: Version,
        framework_id: &str,
        offer_ids: &[OfferId],
        claim: &Claim,
    ) -> Result<Decision<R>, Rejection> {
        let (agent, held) = self.accepted_offers(framework_id, offer_ids)?;
        let release = self.release_event(offer_ids.to_vec());
        if claim.placements.is_empty() {
            // An accept that launches nothing releases the offers.
            return Ok(Decision {
                events: vec![release],
                reply: Reply::Claim {
                    outcome: nothing_placed(claim),
                },
            });
        }
        // Decide the claim on the cell as it is once the offers are released, and only
        // within what the offers held.
        let mut released = self.clone();
        released.apply_event(next, &release);
        let (within, outside) = within_offers(claim, &agent, &held);
        let mut decision = if within.placements.is_empty() {
            Decision {
                events: vec![],
                reply: Reply::Claim {
                    outcome: nothing_placed(claim),
                },
            }
        } else {
            released.decide_claim(now, next, &within)?
        };
        let Reply::Claim { outcome } = &mut decision.reply else {
            unreachable!("a claim answers with a claim outcome")
        };
        refuse_outside(claim, &outside, outcome);
        decision.events.insert(0, release);
        Ok(decision)
    }

    /// The agent and the resources the offers of an accept hold together: each offer
    /// outstanding, the framework's, and all of one agent.
    fn accepted_offers(
        &self,
        framework_id: &str,
        offer_ids: &[OfferId],
    ) -> Result<(AgentId, ResourceSet), Rejection> {
        if offer_ids.is_empty() {
            return Err(Rejection::Invalid("no offer ids".into()));
        }
        let mut held = ResourceSet::new();
        let mut agent: Option<&AgentId> = None;
        for id in offer_ids {
            let h = self
                .holds
                .get(id)
                .ok_or_else(|| Rejection::NotFound(format!("offer {id} is not outstanding")))?;
            if h.framework_id != framework_id {
                return Err(Rejection::Forbidden(format!(
                    "offer {id} belongs to another framework"
                )));
            }
            if agent.map(|a| *a != h.agent_id).unwrap_or(false) {
                return Err(Rejection::Invalid(
                    "offers of one accept must be of one agent".into(),
                ));
            }
            agent = Some(&h.agent_id);
            held.add(&h.resources)
                .map_err(|e| Rejection::Invalid(e.to_string()))?;
        }
        let agent = agent.expect("at least one offer").clone();
        Ok((agent, held))
    }

    /// The event releasing these (outstanding) holds.
    pub(super) fn release_event(&self, offer_ids: Vec<OfferId>) -> Event<R> {
        let mut agent_ids: Vec<AgentId> = offer_ids
            .iter()
            .filter_map(|id| self.holds.get(id))
            .map(|h| h.agent_id.clone())
            .collect();
        agent_ids.sort();
        agent_ids.dedup();
        Event::HoldsReleased {
            offer_ids,
            agent_ids,
        }
    }

    pub(super) fn release_hold(&mut self, v: Version, h: &Hold) {
        let gone = match self.agents.get_mut(&h.agent_id).map(Arc::make_mut) {
            Some(a) => {
                a.allocated
                    .subtract(&h.resources)
                    .expect("a hold's resources are allocated");
                a.version = v;
                a.state == AgentState::Gone
            }
            None => true,
        };
        if !gone {
            for (name, m) in h.resources.scalar_totals() {
                *self.cluster_allocated.entry(name).or_default() -= m.0;
            }
        }
    }
}

/// The outcome of a claim of which nothing was placed.
fn nothing_placed(claim: &Claim) -> ClaimOutcome {
    ClaimOutcome {
        claim_id: claim.id.clone(),
        committed_version: None,
        placements: vec![],
    }
}

/// The claim cut to the placements the accepted offers can hold (on their agent, together
/// within what they held, in claim order), and the task ids of the others.
fn within_offers(claim: &Claim, agent: &AgentId, held: &ResourceSet) -> (Claim, HashSet<TaskId>) {
    let mut within = claim.clone();
    let mut total = ResourceSet::new();
    let mut outside = HashSet::new();
    for p in &mut within.placements {
        if p.agent_id != *agent {
            outside.insert(p.task_id.clone());
            continue;
        }
        let mut t = total.clone();
        if t.add(&p.resources).is_ok() && held.contains(&t) {
            total = t;
        } else {
            outside.insert(p.task_id.clone());
        }
    }
    within.placements.retain(|p| !outside.contains(&p.task_id));
    (within, outside)
}

/// Adds a refusal to `outcome` for each placement outside the accepted offers.
fn refuse_outside(claim: &Claim, outside: &HashSet<TaskId>, outcome: &mut ClaimOutcome) {
    for p in claim
        .placements
        .iter()
        .filter(|p| outside.contains(&p.task_id))
    {
        outcome.placements.push(PlacementOutcome {
            task_id: p.task_id.clone(),
            agent_id: p.agent_id.clone(),
            committed: false,
            rejected: Some(RejectReason::InsufficientResources {
                resource: "not in the accepted offers".into(),
            }),
        });
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    fn cell_with_agent() -> (Cell, AgentId) {
        let mut cell = Cell::new(CellConfig {
            cell_id: "c".into(),
        });
        let reg = AgentRegistration {
            agent_id: None,
            hostname: "h".into(),
            port: 0,
            attributes: Default::default(),
            domain: None,
            resources: ResourceSet::parse("cpus:4;mem:1024;ports:[31000-31009]").unwrap(),
        };
        cell.commit(1, &Command::RegisterAgent(reg)).unwrap();
        let a = cell.agents().next().unwrap().id.clone();
        (cell, a)
    }

    fn hold(id: &str, fw: &str, agent: &AgentId, res: &str) -> Hold {
        Hold {
            id: OfferId::new(id),
            framework_id: fw.into(),
            role: "*".into(),
            agent_id: agent.clone(),
            resources: ResourceSet::parse(res).unwrap(),
            created_at: 1,
        }
    }

    fn placement(task: &str, agent: &AgentId, res: &str) -> Placement {
        Placement {
            task_id: TaskId::new(task),
            name: task.into(),
            agent_id: agent.clone(),
            resources: ResourceSet::parse(res).unwrap(),
            spec: TaskSpec::empty(),
        }
    }

    fn claim(id: &str, version: Version, placements: Vec<Placement>) -> Claim {
        Claim {
            id: ClaimId::new(id),
            role: "*".into(),
            owner: "x".into(),
            snapshot_version: version,
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements,
            priority: 0,
            evictions: vec![],
        }
    }

    #[test]
    fn held_resources_are_not_claimable_and_accept_turns_holds_into_tasks() {
        let (mut cell, a) = cell_with_agent();
        let (_, reply) = cell
            .commit(
                2,
                &Command::PlaceHolds {
                    holds: vec![
                        hold("o1", "fw1", &a, "cpus:3;mem:512"),
                        hold("o2", "fw2", &a, "cpus:2"),
                    ],
                },
            )
            .unwrap();
        assert_eq!(
            reply,
            Reply::Holds {
                placed: vec![OfferId::new("o1")],
                refused: vec![OfferId::new("o2")]
            },
            "one cpu left: o2 does not fit"
        );
        cell.check_invariants().unwrap();

        // A native claim cannot take held resources: the pessimistic contract.
        let v = cell.version();
        let (_, reply) = cell
            .commit(
                3,
                &Command::Claim(claim("native", v, vec![placement("n1", &a, "cpus:2")])),
            )
            .unwrap();
        let Reply::Claim { outcome } = reply else {
            panic!()
        };
        assert_eq!(outcome.committed_count(), 0);

        // Only the framework the offer was made to may use it.
        let c = claim("acc", v, vec![placement("t1", &a, "cpus:1;mem:128")]);
        let wrong = cell.commit(
            4,
            &Command::AcceptHolds {
                framework_id: "fw2".into(),
                offer_ids: vec![OfferId::new("o1")],
                claim: c.clone(),
            },
        );
        assert!(matches!(wrong, Err(Rejection::Forbidden(_))));

        // Accept: a task within the offer commits, one beyond it does not; the rest goes back.
        let mut c2 = c.clone();
        c2.placements.push(placement("t2", &a, "cpus:3"));
        let (_, reply) = cell
            .commit(
                5,
                &Command::AcceptHolds {
                    framework_id: "fw1".into(),
                    offer_ids: vec![OfferId::new("o1")],
                    claim: c2,
                },
            )
            .unwrap();
        let Reply::Claim { outcome } = reply else {
            panic!()
        };
        assert_eq!(outcome.committed_count(), 1);
        assert!(cell.hold(&OfferId::new("o1")).is_none());
        assert_eq!(
            cell.agent(&a).unwrap().allocated,
            ResourceSet::parse("cpus:1;mem:128").unwrap()
        );
        cell.check_invariants().unwrap();

        // A used offer cannot be used again.
        let again = cell.commit(
            6,
            &Command::AcceptHolds {
                framework_id: "fw1".into(),
                offer_ids: vec![OfferId::new("o1")],
                claim: claim("acc2", v, vec![placement("t3", &a, "cpus:1")]),
            },
        );
        assert!(matches!(again, Err(Rejection::NotFound(_))));
    }

    #[test]
    fn agents_going_away_and_restarts_release_holds() {
        let (mut cell, a) = cell_with_agent();
        cell.commit(
            2,
            &Command::PlaceHolds {
                holds: vec![hold("o1", "fw1", &a, "cpus:1;ports:[31000-31000]")],
            },
        )
        .unwrap();
        cell.commit(
            3,
            &Command::SetAgentState {
                agent_id: a.clone(),
                state: AgentState::Unreachable,
            },
        )
        .unwrap();
        assert_eq!(cell.holds().count(), 0);
        assert!(cell.agent(&a).unwrap().allocated.is_empty());
        cell.check_invariants().unwrap();

        let (mut cell, a) = cell_with_agent();
        cell.commit(
            2,
            &Command::PlaceHolds {
                holds: vec![hold("o1", "fw1", &a, "cpus:1")],
            },
        )
        .unwrap();
        cell.commit(3, &Command::ClearHolds).unwrap();
        assert_eq!(cell.holds().count(), 0);
        assert!(cell.agent(&a).unwrap().allocated.is_empty());
        cell.commit(
            4,
            &Command::ReleaseHolds {
                offer_ids: vec![OfferId::new("o1")],
            },
        )
        .unwrap();
        cell.check_invariants().unwrap();
    }
}
