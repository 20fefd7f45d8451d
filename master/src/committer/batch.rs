//! The store write of a group: the records its log entries changed, read from the cell as of
//! the group's end, and the log trim.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shoal_core::{AgentId, TaskId, Version};
use shoal_sched::{Cell, Event, LogEntry, SchedulerEvent};

use super::Published;
use crate::store::{ClaimCommit, Collected, WriteBatch};

/// The keys of the records a group's entries changed (what its store write must carry).
#[derive(Default)]
struct Changed<'a> {
    agents: BTreeSet<AgentId>,
    tasks: BTreeSet<TaskId>,
    roles: BTreeSet<String>,
    claims: Vec<ClaimCommit>,
    jobs: BTreeSet<&'a str>,
    job_tasks: BTreeSet<(&'a str, &'a str)>,
    services: BTreeSet<&'a str>,
    /// Per instance (service, index): written (true) or removed (false), as of the last event.
    instances: BTreeMap<(&'a str, u32), bool>,
    collected: Collected,
}

impl<'a> Changed<'a> {
    /// What `entries` changed; a task's agent is read from `cell`.
    fn of(cell: &Cell, entries: &'a [Arc<LogEntry>]) -> Changed<'a> {
        let mut changed = Changed::default();
        for ev in entries.iter().flat_map(|e| &e.events) {
            changed.event(cell, ev);
        }
        changed
    }

    /// The records one event changed.
    fn event(&mut self, cell: &Cell, ev: &'a Event) {
        let changed = self;
        match ev {
            Event::AgentRegistered { agent } => {
                changed.agents.insert(agent.id.clone());
            }
            Event::AgentResourcesUpdated { agent_id, .. }
            | Event::AgentStateChanged { agent_id, .. } => {
                changed.agents.insert(agent_id.clone());
            }
            Event::ClaimCommitted {
                outcome, tasks: ts, ..
            } => {
                changed.claims.push(ClaimCommit {
                    outcome: outcome.clone(),
                    tasks: ts.clone(),
                });
                for t in ts {
                    changed.tasks.insert(t.id.clone());
                    changed.agents.insert(t.agent_id.clone());
                    changed.roles.insert(t.role.clone());
                }
            }
            Event::TaskStatusChanged { task_id, .. } => {
                if let Some(t) = cell.task(task_id) {
                    changed.agents.insert(t.agent_id.clone());
                }
                changed.tasks.insert(task_id.clone());
            }
            Event::RoleConfigured { name, .. } => {
                changed.roles.insert(name.clone());
            }
            // Holds are not persisted; the agents' versions they moved are.
            Event::HoldsPlaced { holds } => {
                changed
                    .agents
                    .extend(holds.iter().map(|h| h.agent_id.clone()));
            }
            Event::HoldsReleased { agent_ids, .. } | Event::HoldsCleared { agent_ids } => {
                changed.agents.extend(agent_ids.iter().cloned());
            }
            Event::Collected {
                tasks,
                claims,
                agents,
            } => {
                changed.collected.tasks.extend(tasks.iter().cloned());
                changed.collected.claims.extend(claims.iter().cloned());
                changed.collected.agents.extend(agents.iter().cloned());
            }
            Event::Records(ev) => changed.scheduler_event(ev),
        }
    }

    /// The records of the built-in schedulers (jobs, services) one event changed.
    fn scheduler_event(&mut self, ev: &'a SchedulerEvent) {
        let changed = self;
        match ev {
            SchedulerEvent::JobSubmitted { job } => {
                changed.jobs.insert(&job.id);
                changed
                    .job_tasks
                    .extend(job.tasks.keys().map(|n| (job.id.as_str(), n.as_str())));
            }
            SchedulerEvent::JobUpdated {
                job_id,
                state,
                tasks: ts,
                ..
            } => {
                if state.is_some() {
                    changed.jobs.insert(job_id);
                }
                changed
                    .job_tasks
                    .extend(ts.iter().map(|t| (job_id.as_str(), t.name.as_str())));
            }
            SchedulerEvent::ServiceSubmitted { service } => {
                changed.services.insert(&service.id);
            }
            SchedulerEvent::ServiceUpdated {
                service_id,
                spec,
                count,
                state,
                message,
                instances: is,
                removed,
                ..
            } => {
                if spec.is_some() || count.is_some() || state.is_some() || message.is_some() {
                    changed.services.insert(service_id);
                }
                // As `apply` does: removals first, then the written records.
                for i in removed {
                    changed.instances.insert((service_id.as_str(), *i), false);
                }
                for i in is {
                    changed
                        .instances
                        .insert((service_id.as_str(), i.index), true);
                }
            }
        }
    }
}

/// The records the group's entries changed, read from the cell as of the group's end.
pub(super) fn write_batch(
    cell: &Cell,
    entries: &[Arc<LogEntry>],
    published: &Published,
    retain: u64,
) -> WriteBatch {
    let mut changed = Changed::of(cell, entries);
    let mut collected = std::mem::take(&mut changed.collected);
    if !(collected.tasks.is_empty() && collected.claims.is_empty() && collected.agents.is_empty()) {
        collected.counts = Some(cell.collected());
    }
    let version = cell.version();
    let floor = published.log_floor.load(Ordering::Acquire);
    // Trim in steps of an eighth of the window, so that most commits delete nothing.
    let trim_log_below: Option<Version> = (version.saturating_sub(floor)
        >= retain + retain.div_ceil(8))
    .then(|| version + 1 - retain);
    WriteBatch {
        cell_id: cell.cell_id().to_string(),
        version,
        entries: entries.to_vec(),
        agents: changed
            .agents
            .iter()
            .filter_map(|id| cell.agent_record(id).cloned())
            .collect(),
        tasks: changed
            .tasks
            .iter()
            .filter_map(|id| cell.task_record(id).cloned())
            .collect(),
        roles: changed
            .roles
            .iter()
            .filter_map(|n| cell.role(n).cloned())
            .collect(),
        claims: changed.claims,
        jobs: changed
            .jobs
            .iter()
            .filter_map(|id| cell.records().job(id).cloned())
            .collect(),
        job_tasks: changed
            .job_tasks
            .iter()
            .filter_map(|(j, t)| {
                let task = cell.records().job(j)?.tasks.get(*t)?.clone();
                Some((j.to_string(), task))
            })
            .collect(),
        services: changed
            .services
            .iter()
            .filter_map(|id| cell.records().service(id).cloned())
            .collect(),
        service_instances: changed
            .instances
            .iter()
            .filter(|(_, written)| **written)
            .filter_map(|((id, index), _)| {
                let i = cell.records().service(id)?.instances.get(index)?.clone();
                Some((id.to_string(), i))
            })
            .collect(),
        service_instances_removed: changed
            .instances
            .iter()
            .filter(|(_, written)| !**written)
            .map(|((id, index), _)| (id.to_string(), *index))
            .collect(),
        trim_log_below,
        collected,
    }
}
