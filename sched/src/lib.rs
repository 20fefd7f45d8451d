//! The built-in schedulers above the cell: batch jobs ([`batch`]) and services ([`service`]).
//!
//! They are sans-IO state machines like the cell: each reads a cell snapshot and the time and
//! returns what to do (claims, kills, record updates), acting only through the claim
//! interface every native scheduler uses. Their records — jobs and services — live in the
//! cell as [`Schedulers`], the cell's [`Records`], so they change on the one commit path and
//! are as durable as a claim. The cell (`shoal-core`) knows none of this: this crate depends
//! on it, never the other way round.

use std::sync::Arc;

use imbl::HashMap as PMap;
use serde::{Deserialize, Serialize};
use shoal_core::{Rejection, Timestamp, Version};

pub mod actions;
pub mod batch;
pub mod constraints;
pub mod limits;
mod placement;
mod preemption;
pub mod service;
pub mod template;

use batch::{Job, JobState, JobTask, JobUpdate};
use service::{Instance, Service, ServiceSpec, ServiceState, ServiceUpdate};

pub use shoal_core::Records;

/// A cell with the built-in schedulers' records: the master's cell.
pub type Cell = shoal_core::Cell<Schedulers>;
/// A mutation of a cell with the schedulers' records.
pub type Command = shoal_core::Command<Schedulers>;
/// A change to a cell with the schedulers' records.
pub type Event = shoal_core::Event<Schedulers>;
/// One committed mutation of a cell with the schedulers' records.
pub type LogEntry = shoal_core::LogEntry<Schedulers>;
/// The reply to a command on a cell with the schedulers' records.
pub type Reply = shoal_core::Reply<Schedulers>;
/// The result of deciding a command on a cell with the schedulers' records.
pub type Decision = shoal_core::Decision<Schedulers>;

/// The records of the built-in schedulers kept in the cell: jobs and services by id. Cloning
/// is O(1) (persistent maps), as for the rest of a snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedulers {
    /// Jobs of the batch scheduler, by id (see [`batch`]).
    jobs: PMap<String, Arc<Job>>,
    /// Services of the service scheduler, by id (see [`service`]).
    services: PMap<String, Arc<Service>>,
}

impl Schedulers {
    /// The records as stored: jobs with their tasks, services with their instances.
    pub fn restored(
        jobs: impl IntoIterator<Item = Job>,
        services: impl IntoIterator<Item = Service>,
    ) -> Schedulers {
        Schedulers {
            jobs: jobs
                .into_iter()
                .map(|j| (j.id.clone(), Arc::new(j)))
                .collect(),
            services: services
                .into_iter()
                .map(|s| (s.id.clone(), Arc::new(s)))
                .collect(),
        }
    }
    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id).map(|j| j.as_ref())
    }
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values().map(|j| j.as_ref())
    }
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id).map(|s| s.as_ref())
    }
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(|s| s.as_ref())
    }
}

/// A change of the schedulers' records, committed as `Command::Records`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SchedulerCommand {
    /// Submit a job file (validated here; idempotent by job id).
    SubmitJob { spec: batch::JobSpec },
    /// Change a job's record: its state (a stop, or its end) and its tasks' records.
    UpdateJob(JobUpdate),
    /// Submit a service file: a new service, or a new spec version of one (idempotent when
    /// the file is the same).
    SubmitService { spec: Box<ServiceSpec> },
    /// Change a service's record: its count (a scale), its state (a stop) and its instances.
    UpdateService(ServiceUpdate),
}

impl From<SchedulerCommand> for Command {
    fn from(c: SchedulerCommand) -> Command {
        Command::Records(c)
    }
}

/// A committed change of the schedulers' records, in the log as `Event::Records`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SchedulerEvent {
    /// A job was submitted: its record, every task waiting or queued.
    JobSubmitted { job: Box<Job> },
    /// A job's state or some of its tasks' records changed (`tasks` are the new records).
    JobUpdated {
        job_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<JobState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default)]
        finished_at: Timestamp,
        #[serde(default)]
        tasks: Vec<JobTask>,
    },
    /// A service was submitted: its record, with no instances yet.
    ServiceSubmitted { service: Box<Service> },
    /// A service's spec, count, state or some of its instances changed (`instances`: the new
    /// records; `removed`: indices of instances that are gone).
    ServiceUpdated {
        service_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<Arc<ServiceSpec>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec_version: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<ServiceState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default)]
        updated_at: Timestamp,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        instances: Vec<Instance>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<u32>,
    },
}

impl From<SchedulerEvent> for Event {
    fn from(e: SchedulerEvent) -> Event {
        Event::Records(e)
    }
}

/// The reply to a submission, as `Reply::Records` (updates answer `Reply::Done`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SchedulerReply {
    /// A job submission: its id, and whether it is new (`false`: the same file was there).
    Job { job_id: String, created: bool },
    /// A service submission: whether it is new, and whether anything changed.
    Service {
        service_id: String,
        created: bool,
        changed: bool,
    },
}

impl Records for Schedulers {
    type Command = SchedulerCommand;
    type Event = SchedulerEvent;
    type Reply = SchedulerReply;

    fn decide(
        cell: &Cell,
        now: Timestamp,
        next: Version,
        command: &SchedulerCommand,
    ) -> Result<(Vec<SchedulerEvent>, Reply), Rejection> {
        match command {
            SchedulerCommand::SubmitJob { spec } => {
                let (events, job_id, created) = batch::decide_submit(cell, now, next, spec)?;
                Ok((
                    events,
                    Reply::Records(SchedulerReply::Job { job_id, created }),
                ))
            }
            SchedulerCommand::UpdateJob(update) => {
                Ok((batch::decide_update(cell, update)?, Reply::Done))
            }
            SchedulerCommand::SubmitService { spec } => {
                let (events, service_id, created, changed) =
                    service::decide_submit(cell, now, next, spec)?;
                let reply = SchedulerReply::Service {
                    service_id,
                    created,
                    changed,
                };
                Ok((events, Reply::Records(reply)))
            }
            SchedulerCommand::UpdateService(update) => {
                Ok((service::decide_update(cell, now, update)?, Reply::Done))
            }
        }
    }

    fn apply(&mut self, version: Version, event: &SchedulerEvent) {
        match event {
            SchedulerEvent::JobSubmitted { .. } | SchedulerEvent::JobUpdated { .. } => {
                batch::apply_event(&mut self.jobs, version, event)
            }
            SchedulerEvent::ServiceSubmitted { .. } | SchedulerEvent::ServiceUpdated { .. } => {
                service::apply_event(&mut self.services, version, event)
            }
        }
    }
}

/// Whether a collection must keep `task` for the built-in schedulers (see
/// `shoal_core::gc`): a task of a job that is still running (its retries and dependents are
/// decided from it). A service's tasks are not kept: its instances' records say what it needs.
pub fn retains(cell: &Cell, task: &shoal_core::Task) -> bool {
    if task.owner != batch::BATCH_OWNER {
        return false;
    }
    // `<job>.<task>.<attempt>`: a job id is one of the task id's prefixes up to a dot.
    let id = task.id.as_str();
    id.match_indices('.').any(|(at, _)| {
        cell.records()
            .job(&id[..at])
            .is_some_and(|j| !j.state.is_terminal())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records events as a store of format 1 holds them (taken from the checked-in fixture,
    /// written when they were variants of the cell's own `Event`).
    const STORED_EVENTS: [&str; 4] = [
        r#"{"type":"JOB_SUBMITTED","job":{"id":"nightly","spec":{"name":"nightly","tasks":[{"name":"extract","command":"true","resources":"cpus:1;mem:64","retries":0},{"name":"load","command":"true","resources":"cpus:1","depends_on":["extract"],"retries":0}]},"state":"RUNNING","submitted_at":1003,"finished_at":0,"submitted_version":4,"version":4,"tasks":{"extract":{"name":"extract","state":"QUEUED","attempts":0,"not_before":0,"started_at":0,"finished_at":0},"load":{"name":"load","state":"WAITING","attempts":0,"not_before":0,"started_at":0,"finished_at":0}}}}"#,
        r#"{"type":"JOB_UPDATED","job_id":"nightly","finished_at":0,"tasks":[{"name":"extract","state":"FINISHED","attempts":1,"task_id":"nightly.extract.1","agent_id":"510645fb-8b5d-45a8-8417-7136f100b1b7-S1","not_before":0,"started_at":1500,"finished_at":2000}]}"#,
        r#"{"type":"SERVICE_SUBMITTED","service":{"id":"web","spec":{"name":"web","team":"web","count":1,"task":{"command":"serve","resources":"cpus:0.5;mem:128"},"placement":"spread"},"spec_version":1,"count":1,"state":"RUNNING","submitted_at":1008,"updated_at":1008,"version":9,"instances":{}}}"#,
        r#"{"type":"SERVICE_UPDATED","service_id":"web","updated_at":1008,"instances":[{"index":0,"generation":1,"spec_version":1,"state":"RUNNING","agent_id":"510645fb-8b5d-45a8-8417-7136f100b1b7-S2","failures":0,"not_before":0,"started_at":1800}]}"#,
    ];

    #[test]
    fn records_events_read_and_write_as_the_cells_own_did() {
        for text in STORED_EVENTS {
            let event: Event = serde_json::from_str(text).unwrap();
            assert!(matches!(event, Event::Records(_)), "{event:?}");
            assert_eq!(serde_json::to_string(&event).unwrap(), text);
        }
        // The cell's own events next to them in one entry, in order, unchanged.
        let cleared = r#"{"type":"HOLDS_CLEARED","agent_ids":[]}"#;
        let text = format!(
            r#"{{"version":4,"events":[{},{cleared}]}}"#,
            STORED_EVENTS[0]
        );
        let entry: LogEntry = serde_json::from_str(&text).unwrap();
        assert!(matches!(
            entry.events[..],
            [
                Event::Records(SchedulerEvent::JobSubmitted { .. }),
                Event::HoldsCleared { .. }
            ]
        ));
        assert_eq!(serde_json::to_string(&entry).unwrap(), text);
        // A cell with no records reads none, and an unknown type is an error as before.
        assert!(serde_json::from_str::<shoal_core::Event>(STORED_EVENTS[0]).is_err());
        assert!(serde_json::from_str::<Event>(r#"{"type":"JOB_EXPLODED"}"#).is_err());
    }

    #[test]
    fn records_replies_and_commands_read_and_write_as_the_cells_own_did() {
        let job = r#"{"type":"job","job_id":"j","created":true}"#;
        let service = r#"{"type":"service","service_id":"s","created":false,"changed":true}"#;
        for text in [job, service, r#"{"type":"done"}"#] {
            let reply: Reply = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&reply).unwrap(), text);
        }
        let reply: Reply = serde_json::from_str(job).unwrap();
        assert_eq!(
            reply,
            Reply::Records(SchedulerReply::Job {
                job_id: "j".into(),
                created: true
            })
        );
        let update = r#"{"type":"UPDATE_JOB","job_id":"j","state":"STOPPED","message":null,"finished_at":0,"tasks":[]}"#;
        let command: Command = serde_json::from_str(update).unwrap();
        assert!(matches!(
            command,
            Command::Records(SchedulerCommand::UpdateJob(_))
        ));
        assert_eq!(serde_json::to_string(&command).unwrap(), update);
        let kill = r#"{"type":"KILL_TASK","task_id":"t"}"#;
        let command: Command = serde_json::from_str(kill).unwrap();
        assert!(matches!(command, Command::KillTask { .. }));
    }
}
