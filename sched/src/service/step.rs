//! The service scheduler: a reconcile loop over the services whose records or tasks changed.

use super::*;

// ---------------------------------------------------------------------------------------------
// The service scheduler

/// What the service scheduler wants done after a step: its record updates, claims (one per
/// service; report each outcome with [`ServiceScheduler::claimed`]), kills, and when a restart
/// backoff ends. Submit the record updates first, then the claims (so an instance's record is
/// always committed no later than its task), then the kills.
pub type ServiceActions = Actions<ServiceUpdate>;

/// The built-in service scheduler: see the module docs. A step reconciles only the services
/// whose records or tasks changed (or whose timer is due), each in time proportional to its
/// instances.
#[derive(Debug, Default)]
pub struct ServiceScheduler {
    /// Services to reconcile at the next step.
    dirty: BTreeSet<String>,
    /// Instances in a claim whose outcome is not known yet.
    placing: HashSet<(String, u32)>,
    /// Services with instances that found no room: reconciled again when room may have freed.
    no_room: BTreeSet<String>,
    /// Restart backoffs: reconcile the service then.
    timers: BTreeSet<(Timestamp, String)>,
    /// Compiled specs by service, with the spec version they are of.
    compiled: HashMap<String, (u32, Arc<CompiledService>)>,
    /// Live tasks of the scheduler that no record accounts for (found at recovery): killed.
    orphans: Vec<TaskId>,
    claim_seq: u64,
}

impl ServiceScheduler {
    pub fn new() -> ServiceScheduler {
        ServiceScheduler::default()
    }

    /// A scheduler for a cell as loaded (at start, or after missing commits): every service is
    /// reconciled at the first step, which adopts the instances whose tasks are in the cell.
    /// Live tasks placed by the service scheduler that no record accounts for (a record update
    /// the store refused) are killed.
    pub fn recover(cell: &Cell) -> ServiceScheduler {
        let mut s = ServiceScheduler::new();
        s.dirty = cell
            .records()
            .services()
            .map(|svc| svc.id.clone())
            .collect();
        for t in cell.tasks() {
            if t.owner != SERVICE_OWNER || t.state.is_terminal() || t.state == TaskState::Killing {
                continue;
            }
            let known = parse_task_id(&t.id).is_some_and(|(svc, index, gen)| {
                cell.records()
                    .service(svc)
                    .and_then(|s| s.instances.get(&index))
                    .is_some_and(|i| i.generation == gen)
            });
            if !known {
                s.orphans.push(t.id.clone());
            }
        }
        s
    }

    /// Tells the scheduler about a committed log entry (it reads the details at the next step).
    pub fn observe(&mut self, entry: &LogEntry) {
        for ev in &entry.events {
            match ev {
                Event::TaskStatusChanged { task_id, state, .. } => {
                    if let Some((svc, _, _)) = parse_task_id(task_id) {
                        self.dirty.insert(svc.to_string());
                    }
                    if state.is_terminal() {
                        self.room();
                    }
                }
                Event::ClaimCommitted { tasks, .. } => {
                    for t in tasks.iter().filter(|t| t.owner == SERVICE_OWNER) {
                        if let Some((svc, _, _)) = parse_task_id(&t.id) {
                            self.dirty.insert(svc.to_string());
                        }
                    }
                }
                Event::Records(SchedulerEvent::ServiceSubmitted { service }) => {
                    self.dirty.insert(service.id.clone());
                }
                Event::Records(SchedulerEvent::ServiceUpdated { service_id, .. }) => {
                    self.dirty.insert(service_id.clone());
                }
                Event::AgentRegistered { .. }
                | Event::AgentResourcesUpdated { .. }
                | Event::RoleConfigured { .. }
                | Event::HoldsReleased { .. }
                | Event::HoldsCleared { .. } => self.room(),
                _ => {}
            }
        }
    }

    fn room(&mut self) {
        self.dirty.extend(self.no_room.iter().cloned());
    }

    /// Asks for another try of what found no room (claims refused for reasons that pass
    /// without a commit the scheduler would notice, such as quota headroom).
    pub fn nudge(&mut self) {
        self.room();
    }

    /// Whether a step would have something to do now (besides timers).
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.orphans.is_empty()
    }

    /// Decides what to do now, on `cell` (a published snapshot) at `now`.
    pub fn step(&mut self, cell: &Cell, now: Timestamp) -> ServiceActions {
        let mut actions = ServiceActions {
            kills: std::mem::take(&mut self.orphans),
            ..ServiceActions::default()
        };
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let (_, id) = self.timers.pop_first().expect("a first timer");
            self.dirty.insert(id);
        }
        for id in std::mem::take(&mut self.dirty) {
            self.reconcile(cell, &id, now, &mut actions);
        }
        actions.wake_at = self.timers.first().map(|(at, _)| *at);
        actions
    }

    /// The outcome of a claim from [`ServiceActions::claims`]: `None` when it could not be
    /// submitted. A committed placement is adopted at the next step (its task is in the cell);
    /// a refused one waits for room.
    pub fn claimed(&mut self, claim: &Claim, outcome: Option<&ClaimOutcome>, _now: Timestamp) {
        let committed: HashSet<&TaskId> = outcome
            .map(|o| {
                o.placements
                    .iter()
                    .filter(|p| p.committed || p.rejected == Some(RejectReason::DuplicateTaskId))
                    .map(|p| &p.task_id)
                    .collect()
            })
            .unwrap_or_default();
        for p in &claim.placements {
            let Some((svc, index, _)) = parse_task_id(&p.task_id) else {
                continue;
            };
            self.placing.remove(&(svc.to_string(), index));
            self.dirty.insert(svc.to_string());
            if !committed.contains(&p.task_id) {
                self.no_room.insert(svc.to_string());
                // Retried when room frees up or at the next nudge, not at once.
                self.dirty.remove(svc);
            }
        }
    }

    fn compiled(&mut self, svc: &Service) -> Option<Arc<CompiledService>> {
        if let Some((v, c)) = self.compiled.get(&svc.id) {
            if *v == svc.spec_version {
                return Some(c.clone());
            }
        }
        let c = Arc::new(CompiledService::compile(&svc.spec).ok()?);
        self.compiled
            .insert(svc.id.clone(), (svc.spec_version, c.clone()));
        Some(c)
    }

    /// Brings one service closer to what it should be: see the module docs.
    fn reconcile(&mut self, cell: &Cell, id: &str, now: Timestamp, actions: &mut ServiceActions) {
        let Some(svc) = cell.records().service(id) else {
            self.compiled.remove(id);
            self.no_room.remove(id);
            return;
        };
        let Some(c) = self.compiled(svc) else {
            return; // A stored spec that no longer validates: left alone (its record says so).
        };
        let mut pass = Pass {
            inst: svc.instances.iter().map(|(k, v)| (*k, v.clone())).collect(),
            changed: BTreeSet::new(),
            removed: Vec::new(),
            kills: Vec::new(),
        };
        // 1. Each instance against its task in the cell.
        self.follow_tasks(cell, svc, &c, now, &mut pass);
        if svc.state == ServiceState::Stopped {
            self.drop_pending(id, &mut pass);
        } else {
            self.converge(cell, svc, &c, &mut pass);
            self.place(
                cell,
                svc,
                &c,
                now,
                &mut pass.inst,
                &mut pass.changed,
                actions,
            );
        }
        self.finish_pass(id, now, pass, actions);
    }

    /// Each instance against its task in the cell: a pending one whose task is in the cell
    /// is adopted, a live one of a stopping instance (or stopped service) is killed, and one
    /// whose task ended is removed when it was stopping, else restarted.
    fn follow_tasks(
        &self,
        cell: &Cell,
        svc: &Service,
        c: &CompiledService,
        now: Timestamp,
        pass: &mut Pass,
    ) {
        let id = svc.id.as_str();
        let stopped = svc.state == ServiceState::Stopped;
        for (&index, i) in pass.inst.iter_mut() {
            if self.placing.contains(&(id.to_string(), index)) {
                continue;
            }
            let task_id = instance_task_id(id, index, i.generation);
            let task = cell.task(&task_id).filter(|t| t.owner == SERVICE_OWNER);
            if i.state == InstanceState::Pending {
                match task {
                    // Committed before it was recorded (a claim of this step or of an earlier
                    // master): adopt it.
                    Some(t) => {
                        i.state = InstanceState::Running;
                        i.agent_id = Some(t.agent_id.clone());
                        i.started_at = now;
                        i.message = None;
                        pass.changed.insert(index);
                    }
                    None => continue,
                }
            }
            let ended = match task {
                None => Some("its task is not in the cell".to_string()),
                Some(t) if t.state.is_terminal() => Some(describe_end(t)),
                Some(t) => {
                    if i.state == InstanceState::Stopping || stopped {
                        if i.state != InstanceState::Stopping {
                            i.state = InstanceState::Stopping;
                            pass.changed.insert(index);
                        }
                        if t.state != TaskState::Killing {
                            pass.kills.push(task_id.clone());
                        }
                    }
                    None
                }
            };
            let Some(why) = ended else { continue };
            if i.state == InstanceState::Stopping || stopped {
                pass.removed.push(index);
                continue;
            }
            restart(cell, svc, c, now, index, i, &task_id, &why);
            pass.changed.insert(index);
        }
        for index in &pass.removed {
            pass.inst.remove(index);
            pass.changed.remove(index);
        }
    }

    /// A stopped service's pending instances have no task: they simply go.
    fn drop_pending(&self, id: &str, pass: &mut Pass) {
        let pending: Vec<u32> = pass
            .inst
            .iter()
            .filter(|(k, i)| {
                i.state == InstanceState::Pending && !self.placing.contains(&(id.to_string(), **k))
            })
            .map(|(k, _)| *k)
            .collect();
        for k in pending {
            pass.inst.remove(&k);
            pass.changed.remove(&k);
            pass.removed.push(k);
        }
    }

    /// What a pass decided, as actions: one record update (the changed instances, and the
    /// removed indices no new instance took), its kills, and a timer per backoff.
    fn finish_pass(&mut self, id: &str, now: Timestamp, pass: Pass, actions: &mut ServiceActions) {
        let Pass {
            inst,
            changed,
            removed,
            kills,
        } = pass;
        let mut removed_set: Vec<u32> = removed;
        removed_set.sort_unstable();
        removed_set.dedup();
        // An index removed and used again by a new instance in the same step is written, not
        // removed.
        removed_set.retain(|k| !inst.contains_key(k));
        if !changed.is_empty() || !removed_set.is_empty() {
            actions.updates.push(ServiceUpdate {
                service_id: id.to_string(),
                instances: changed
                    .iter()
                    .filter_map(|k| inst.get(k).cloned())
                    .collect(),
                removed: removed_set,
                ..ServiceUpdate::default()
            });
        }
        actions.kills.extend(kills);
        for i in inst.values() {
            if i.state == InstanceState::Pending && i.not_before > now {
                self.timers.insert((i.not_before, id.to_string()));
            }
        }
    }

    /// Count and rolling update: starts, stops and replaces instances (see the docs of
    /// [`ServiceScheduler`]); never more than `count + max_surge` instances exist (those being
    /// removed included) and never fewer than `count - max_unavailable` are available because
    /// of a stop decided here.
    fn converge(&self, cell: &Cell, svc: &Service, c: &CompiledService, pass: &mut Pass) {
        let cur = svc.spec_version;
        // A pending instance has no task: it takes the current spec when it is placed.
        for (k, i) in pass.inst.iter_mut() {
            if i.state == InstanceState::Pending && i.spec_version != cur {
                i.spec_version = cur;
                pass.changed.insert(*k);
            }
        }
        self.scale_down(cell, svc, c, pass);
        roll_update(cell, svc, c, pass);
        start_instances(cell, svc, c, pass);
    }

    /// Scale down: too many instances of the current version. Pending ones go first, then
    /// unavailable ones, then the highest indices.
    fn scale_down(&self, cell: &Cell, svc: &Service, c: &CompiledService, pass: &mut Pass) {
        let id = svc.id.as_str();
        let n = svc.count as usize;
        let cur = svc.spec_version;
        let placing = |k: u32| self.placing.contains(&(id.to_string(), k));
        let inst = &mut pass.inst;
        let mut current: Vec<u32> = inst
            .iter()
            .filter(|(k, i)| {
                i.state != InstanceState::Stopping && i.spec_version == cur && !placing(**k)
            })
            .map(|(k, _)| *k)
            .collect();
        let current_all = inst
            .values()
            .filter(|i| i.state != InstanceState::Stopping && i.spec_version == cur)
            .count();
        if current_all > n {
            current.sort_by_key(|k| {
                let i = &inst[k];
                (
                    i.state == InstanceState::Running,
                    instance_available(cell, id, c, i),
                    std::cmp::Reverse(*k),
                )
            });
            for k in current.into_iter().take(current_all - n) {
                let i = inst.get_mut(&k).expect("listed");
                if i.state == InstanceState::Pending {
                    inst.remove(&k);
                    pass.changed.remove(&k);
                    pass.removed.push(k);
                } else {
                    stop_instance(id, i, &mut pass.kills, "scaled down");
                    pass.changed.insert(k);
                }
            }
        }
    }

    /// Places the pending instances whose backoff is over, in one incremental claim.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        cell: &Cell,
        svc: &Service,
        c: &CompiledService,
        now: Timestamp,
        inst: &mut BTreeMap<u32, Instance>,
        changed: &mut BTreeSet<u32>,
        actions: &mut ServiceActions,
    ) {
        let id = svc.id.as_str();
        let waiting = self.due_instances(id, now, inst);
        if waiting.is_empty() {
            self.no_room.remove(id);
            return;
        }
        let mut placer = Placer::new(cell, svc, c, inst);
        let mut placements = Vec::new();
        let mut no_room = false;
        for k in waiting {
            let i = inst.get_mut(&k).expect("listed");
            let Some(agent) = placer.choose() else {
                no_room = true;
                let message = Some("waiting for room: no agent fits".to_string());
                if i.message != message {
                    i.message = message;
                    changed.insert(k);
                }
                continue;
            };
            let task_id = instance_task_id(id, k, i.generation);
            let (agent_id, resources, ports) = placer.take(agent);
            let spec = c.task_info(k, &task_id, &agent_id, &resources, &ports);
            placements.push(Placement {
                task_id,
                name: format!("{id}.{k}"),
                agent_id,
                resources,
                spec,
            });
            self.placing.insert((id.to_string(), k));
        }
        if no_room {
            self.no_room.insert(id.to_string());
        } else {
            self.no_room.remove(id);
        }
        if placements.is_empty() {
            return;
        }
        self.push_claim(cell, id, c, now, placements, actions);
    }

    /// The pending instances whose backoff is over and that are in no claim yet, at most
    /// [`SERVICE_PLACEMENTS_PER_STEP_MAX`] of them.
    fn due_instances(&self, id: &str, now: Timestamp, inst: &BTreeMap<u32, Instance>) -> Vec<u32> {
        inst.iter()
            .filter(|(k, i)| {
                i.state == InstanceState::Pending
                    && i.not_before <= now
                    && !self.placing.contains(&(id.to_string(), **k))
            })
            .map(|(k, _)| *k)
            .take(SERVICE_PLACEMENTS_PER_STEP_MAX)
            .collect()
    }

    /// The service's one incremental claim of a step, for `placements`.
    fn push_claim(
        &mut self,
        cell: &Cell,
        id: &str,
        c: &CompiledService,
        now: Timestamp,
        placements: Vec<Placement>,
        actions: &mut ServiceActions,
    ) {
        self.claim_seq += 1;
        actions.claims.push(Claim {
            id: ClaimId::new(format!("service.{id}.{now}.{}", self.claim_seq)),
            role: c.role.clone(),
            owner: SERVICE_OWNER.into(),
            snapshot_version: cell.version(),
            mode: CommitMode::Incremental,
            check: ConflictCheck::Fine,
            placements,
            // Recorded on the tasks; a service places without evicting anything.
            priority: c.spec.priority.unwrap_or(crate::batch::PRIORITY_DEFAULT),
            evictions: Vec::new(),
        });
    }
}

/// The first generation at or after `from` whose task id is not in the cell (task records
/// stay in the cell after they end, and an index may be used again after a scale down).
pub(crate) fn next_generation(cell: &Cell, service: &str, index: u32, from: u32) -> u32 {
    let mut g = from.max(1);
    while cell.task(&instance_task_id(service, index, g)).is_some() {
        g += 1;
    }
    g
}

/// A service's instances as one reconcile pass changes them: the instances (as they will be
/// written), the indices changed and removed, and the tasks to kill.
struct Pass {
    inst: BTreeMap<u32, Instance>,
    changed: BTreeSet<u32>,
    removed: Vec<u32>,
    kills: Vec<TaskId>,
}

/// The restart policy for an instance whose task ended (`why`): the next generation, after a
/// backoff that grows with each end in a row soon after the start.
#[allow(clippy::too_many_arguments)]
fn restart(
    cell: &Cell,
    svc: &Service,
    c: &CompiledService,
    now: Timestamp,
    index: u32,
    i: &mut Instance,
    task_id: &TaskId,
    why: &str,
) {
    if now.saturating_sub(i.started_at) >= FAILURES_RESET_MS {
        i.failures = 0;
    }
    i.failures += 1;
    let wait = c.backoff(i.failures);
    i.generation = next_generation(cell, &svc.id, index, i.generation + 1);
    i.state = InstanceState::Pending;
    i.spec_version = svc.spec_version;
    i.agent_id = None;
    i.not_before = now.saturating_add(wait);
    i.message = Some(format!(
        "{task_id} ended ({why}); restart in {}",
        fmt_ms(wait)
    ));
}

/// Whether an instance is available: running, and its task available (healthy, when the
/// service has a check).
fn instance_available(cell: &Cell, id: &str, c: &CompiledService, i: &Instance) -> bool {
    i.state == InstanceState::Running
        && cell
            .task(&instance_task_id(id, i.index, i.generation))
            .is_some_and(|t| task_available(t, c.health.is_some()))
}

/// Stops an instance (`why`): it is stopping and its task is killed.
fn stop_instance(id: &str, i: &mut Instance, kills: &mut Vec<TaskId>, why: &str) {
    i.state = InstanceState::Stopping;
    i.message = Some(why.to_string());
    kills.push(instance_task_id(id, i.index, i.generation));
}

/// Rolling update: replace instances of older versions. Unavailable ones go at once;
/// available ones only while `count - max_unavailable` stay available.
fn roll_update(cell: &Cell, svc: &Service, c: &CompiledService, pass: &mut Pass) {
    let id = svc.id.as_str();
    let n = svc.count as usize;
    let cur = svc.spec_version;
    let inst = &mut pass.inst;
    let available = |i: &Instance| instance_available(cell, id, c, i);
    let mut avail = inst
        .values()
        .filter(|i| i.state != InstanceState::Stopping && available(i))
        .count();
    let floor = n.saturating_sub(c.max_unavailable as usize);
    let mut old: Vec<u32> = inst
        .iter()
        .filter(|(_, i)| i.state == InstanceState::Running && i.spec_version < cur)
        .map(|(k, _)| *k)
        .collect();
    old.sort_by_key(|k| (available(&inst[k]), *k));
    for k in old {
        let was_available = available(&inst[&k]);
        if was_available {
            if avail <= floor {
                break;
            }
            avail -= 1;
        }
        let i = inst.get_mut(&k).expect("listed");
        stop_instance(
            id,
            i,
            &mut pass.kills,
            &format!("replaced by spec version {cur}"),
        );
        pass.changed.insert(k);
    }
}

/// Starts instances of the current version up to `count`; during an update at most
/// `max_surge` beyond it, counting every instance that still exists.
fn start_instances(cell: &Cell, svc: &Service, c: &CompiledService, pass: &mut Pass) {
    let id = svc.id.as_str();
    let n = svc.count as usize;
    let cur = svc.spec_version;
    let inst = &mut pass.inst;
    let old_left = inst
        .values()
        .any(|i| i.state != InstanceState::Stopping && i.spec_version < cur);
    let allowed = if old_left || inst.values().any(|i| i.spec_version < cur) {
        n + c.max_surge as usize
    } else {
        n
    };
    let mut current = inst
        .values()
        .filter(|i| i.state != InstanceState::Stopping && i.spec_version == cur)
        .count();
    let mut total = inst.len();
    let mut next_index = 0u32;
    while current < n && total < allowed {
        while inst.contains_key(&next_index) {
            next_index += 1;
        }
        let generation = next_generation(cell, id, next_index, 1);
        inst.insert(
            next_index,
            Instance {
                index: next_index,
                generation,
                spec_version: cur,
                state: InstanceState::Pending,
                agent_id: None,
                failures: 0,
                not_before: 0,
                started_at: 0,
                message: None,
            },
        );
        pass.changed.insert(next_index);
        current += 1;
        total += 1;
    }
}
