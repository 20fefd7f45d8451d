//! The service records kept in the cell, and how `SubmitService` and `UpdateService` are
//! decided and applied on the one commit path.

use super::*;

// ---------------------------------------------------------------------------------------------
// The records kept in the cell

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceState {
    Running,
    /// Stopped by a user: every instance is killed and removed.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Waits to be placed (for room, or for its restart backoff).
    Pending,
    /// Its task is in the cell (staging, running, …).
    Running,
    /// Being removed: its task was told to stop; the record goes when the task ends.
    Stopping,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub index: u32,
    /// Grows with each restart; the task is `<service>.<index>.<generation>`.
    pub generation: u32,
    /// The spec version the instance runs (or will run).
    pub spec_version: u32,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    /// Ends in a row, each within `FAILURES_RESET_MS` of its start; sets the restart backoff.
    #[serde(default)]
    pub failures: u32,
    /// A pending restart waits until then.
    #[serde(default)]
    pub not_before: Timestamp,
    #[serde(default)]
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A service and its instances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    /// The current spec.
    pub spec: Arc<ServiceSpec>,
    /// Grows by one with each changed spec (starts at 1).
    pub spec_version: u32,
    /// Desired instances: the spec's `count`, or the last scale.
    pub count: u32,
    pub state: ServiceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub submitted_at: Timestamp,
    /// When the spec, count or state last changed.
    #[serde(default)]
    pub updated_at: Timestamp,
    /// The cell version of the service's last change.
    pub version: Version,
    /// By index. Stored as records of their own: a change to one instance writes one row.
    #[serde(default)]
    pub instances: OrdMap<u32, Instance>,
}

/// A change to a service's record, as the scheduler, a scale or a stop commits it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceUpdate {
    pub service_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// New or changed instance records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<Instance>,
    /// Instances removed (by index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<u32>,
}

/// Decides `SchedulerCommand::SubmitService`: a new service, the same file again (no change), or a
/// changed file (a new spec version: the scheduler rolls the instances over to it). A stopped
/// service submitted again runs again.
pub(crate) fn decide_submit(
    cell: &Cell,
    now: Timestamp,
    next: Version,
    spec: &ServiceSpec,
) -> Result<(Vec<SchedulerEvent>, String, bool, bool), Rejection> {
    let compiled = CompiledService::compile(spec)
        .map_err(|e| Rejection::Invalid(format!("invalid service: {e}")))?;
    check_fits(&compiled, cell.agents())
        .map_err(|e| Rejection::Invalid(format!("invalid service: {e}")))?;
    if let Some(existing) = cell.records().service(&compiled.id) {
        let same = *existing.spec == *spec;
        if same && existing.state == ServiceState::Running {
            return Ok((vec![], compiled.id, false, false));
        }
        let event = SchedulerEvent::ServiceUpdated {
            service_id: compiled.id.clone(),
            spec: (!same).then(|| compiled.spec.clone()),
            spec_version: (!same).then_some(existing.spec_version + 1),
            count: Some(spec.count),
            state: Some(ServiceState::Running),
            message: None,
            updated_at: now,
            instances: vec![],
            removed: vec![],
        };
        return Ok((vec![event], compiled.id, false, true));
    }
    let service = Service {
        id: compiled.id.clone(),
        spec: compiled.spec.clone(),
        spec_version: 1,
        count: spec.count,
        state: ServiceState::Running,
        message: None,
        submitted_at: now,
        updated_at: now,
        version: next,
        instances: OrdMap::new(),
    };
    Ok((
        vec![SchedulerEvent::ServiceSubmitted {
            service: Box::new(service),
        }],
        compiled.id,
        true,
        true,
    ))
}

/// Decides `SchedulerCommand::UpdateService`. A stopped service takes no new count and no new
/// instances (its instances may still change and go).
pub(crate) fn decide_update(
    cell: &Cell,
    now: Timestamp,
    update: &ServiceUpdate,
) -> Result<Vec<SchedulerEvent>, Rejection> {
    let svc = cell
        .records()
        .service(&update.service_id)
        .ok_or_else(|| Rejection::NotFound(format!("service {}", update.service_id)))?;
    if let Some(n) = update.count {
        if n > SERVICE_COUNT_MAX {
            return Err(Rejection::Invalid(format!(
                "count: {n} is more than {SERVICE_COUNT_MAX}"
            )));
        }
        if svc.state == ServiceState::Stopped && update.state != Some(ServiceState::Running) {
            return Err(Rejection::Conflict(format!(
                "service {} is stopped; run its file again to start it",
                svc.id
            )));
        }
    }
    if update.state == Some(ServiceState::Running) {
        return Err(Rejection::Invalid(
            "a service runs again by submitting its file".into(),
        ));
    }
    let stopped = svc.state == ServiceState::Stopped;
    let instances: Vec<Instance> = update
        .instances
        .iter()
        .filter(|i| svc.instances.get(&i.index) != Some(*i))
        .filter(|i| !stopped || svc.instances.contains_key(&i.index))
        .cloned()
        .collect();
    let removed: Vec<u32> = update
        .removed
        .iter()
        .copied()
        .filter(|i| svc.instances.contains_key(i))
        .collect();
    let count = update.count.filter(|n| *n != svc.count);
    let state = update.state.filter(|s| *s != svc.state);
    let message = update
        .message
        .clone()
        .filter(|m| svc.message.as_ref() != Some(m));
    if count.is_none()
        && state.is_none()
        && message.is_none()
        && instances.is_empty()
        && removed.is_empty()
    {
        return Ok(vec![]);
    }
    let header = count.is_some() || state.is_some();
    Ok(vec![SchedulerEvent::ServiceUpdated {
        service_id: svc.id.clone(),
        spec: None,
        spec_version: None,
        count,
        state,
        message,
        updated_at: if header { now } else { svc.updated_at },
        instances,
        removed,
    }])
}

/// Folds a service event into the services of the cell.
pub(crate) fn apply_event(
    services: &mut imbl::HashMap<String, Arc<Service>>,
    v: Version,
    event: &SchedulerEvent,
) {
    match event {
        SchedulerEvent::ServiceSubmitted { service } => {
            let mut s = service.as_ref().clone();
            s.version = v;
            services.insert(s.id.clone(), Arc::new(s));
        }
        SchedulerEvent::ServiceUpdated {
            service_id,
            spec,
            spec_version,
            count,
            state,
            message,
            updated_at,
            instances,
            removed,
        } => {
            let s = Arc::make_mut(
                services
                    .get_mut(service_id)
                    .expect("decided on a known service"),
            );
            if let Some(spec) = spec {
                s.spec = spec.clone();
            }
            if let Some(n) = spec_version {
                s.spec_version = *n;
            }
            if let Some(n) = count {
                s.count = *n;
            }
            if let Some(st) = state {
                s.state = *st;
                if *st == ServiceState::Running {
                    s.message = None;
                }
            }
            if let Some(m) = message {
                s.message = Some(m.clone());
            }
            s.updated_at = *updated_at;
            // Removals first: an index may go and come back (a new instance) in one update.
            for i in removed {
                s.instances.remove(i);
            }
            for i in instances {
                s.instances.insert(i.index, i.clone());
            }
            s.version = v;
        }
        SchedulerEvent::JobSubmitted { .. } | SchedulerEvent::JobUpdated { .. } => {}
    }
}

/// Whether an instance's task counts as available: running, and healthy if it has a check.
pub fn task_available(task: &Task, has_check: bool) -> bool {
    task.state == TaskState::Running && (!has_check || task.status.healthy == Some(true))
}

/// How a service stands, for status displays: instances by what their tasks do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCounts {
    /// Instances that are not being removed.
    pub instances: u32,
    /// Of those, available (running, and healthy when checked).
    pub available: u32,
    /// Available instances of the current spec version.
    pub available_current: u32,
    /// Instances of an older spec version (not being removed).
    pub old: u32,
    pub pending: u32,
    pub stopping: u32,
}

impl Service {
    pub fn counts(&self, cell: &Cell) -> ServiceCounts {
        let has_check = self.spec.health_check.is_some();
        let mut c = ServiceCounts::default();
        for i in self.instances.values() {
            if i.state == InstanceState::Stopping {
                c.stopping += 1;
                continue;
            }
            c.instances += 1;
            if i.state == InstanceState::Pending {
                c.pending += 1;
            }
            if i.spec_version < self.spec_version {
                c.old += 1;
            }
            let task_id = instance_task_id(&self.id, i.index, i.generation);
            if i.state == InstanceState::Running
                && cell
                    .task(&task_id)
                    .is_some_and(|t| task_available(t, has_check))
            {
                c.available += 1;
                if i.spec_version == self.spec_version {
                    c.available_current += 1;
                }
            }
        }
        c
    }

    /// Whether the service has settled: `count` available instances of the current spec and
    /// nothing else (for a stopped service: no instance left).
    pub fn settled(&self, cell: &Cell) -> bool {
        let c = self.counts(cell);
        match self.state {
            ServiceState::Stopped => self.instances.is_empty(),
            ServiceState::Running => {
                c.available_current == self.count
                    && c.instances == self.count
                    && c.stopping == 0
                    && c.old == 0
            }
        }
    }
}
