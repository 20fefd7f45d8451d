//! The framework model driven call by call against a real cell, with no HTTP and no
//! threads: every `Effect::Commit` is committed to the cell with `Cell::commit` (what the
//! master's committer runs), its result handed back through `Frameworks::committed`, and the
//! entry's events told to `Frameworks::observe`, as the master's commit stream would.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use shoal_core::{AgentRegistration, CellConfig, ResourceSet, StatusInfo, TaskId, TaskState};
use shoal_master::CommitError;
use shoal_proto::mesos::v1 as mesos;
use shoal_proto::mesos::v1::scheduler::{event, Call, Event};
use shoal_sched::Command;

use super::*;
use crate::CompatConfig;

const WALL_START_MS: u64 = 1_000_000;

struct Harness {
    cell: shoal_sched::Cell,
    model: Frameworks,
    t0: Instant,
    elapsed_ms: u64,
    sent: Vec<(SessionId, Event)>,
    closed: Vec<(SessionId, Option<String>)>,
    /// The commands committed, by their tag (`KillTask`, `AcceptHolds`, ...).
    committed: Vec<String>,
    wakes: usize,
}

fn config() -> CompatConfig {
    CompatConfig {
        master: Some(crate::zk::MasterAddress {
            id: String::new(),
            ip: "10.0.0.1".parse().unwrap(),
            port: 5050,
            hostname: "master.example".into(),
        }),
        ..CompatConfig::default()
    }
}

impl Harness {
    fn new(config: CompatConfig) -> Harness {
        Harness {
            cell: shoal_sched::Cell::new(CellConfig {
                cell_id: "cell-1".into(),
            }),
            model: Frameworks::new(config, "run".into()),
            t0: Instant::now(),
            elapsed_ms: 0,
            sent: Vec::new(),
            closed: Vec::new(),
            committed: Vec::new(),
            wakes: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            wall_ms: WALL_START_MS + self.elapsed_ms,
            monotonic: self.t0 + Duration::from_millis(self.elapsed_ms),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed_ms += by.as_millis() as u64;
    }

    /// Commits `command` as the committer would and tells the model what it changed.
    fn commit(&mut self, command: Command) -> Result<shoal_sched::Reply, CommitError> {
        let tag: String = format!("{command:?}")
            .chars()
            .take_while(|c| c.is_alphanumeric())
            .collect();
        self.committed.push(tag);
        let now = self.now().wall_ms;
        match self.cell.commit(now, &command) {
            Ok((entry, reply)) => {
                if let Some(entry) = entry {
                    let effects = self.model.observe(&self.cell, self.now(), &entry.events);
                    self.run(effects);
                }
                Ok(reply)
            }
            Err(why) => Err(CommitError::Rejected(why)),
        }
    }

    /// Carries out effects in order, as the IO shell does.
    fn run(&mut self, effects: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Commit { command, then } => {
                    let result = self.commit(command);
                    let follow = self.model.committed(&self.cell, self.now(), then, result);
                    for e in follow.into_iter().rev() {
                        queue.push_front(e);
                    }
                }
                Effect::Send { session, event } => self.sent.push((session, event)),
                Effect::Close { session, error } => self.closed.push((session, error)),
                Effect::Wake => self.wakes += 1,
            }
        }
    }

    fn agent(&mut self, hostname: &str, resources: &str) -> shoal_core::AgentId {
        let reg = AgentRegistration {
            agent_id: None,
            hostname: hostname.into(),
            port: 5051,
            attributes: [("os".to_string(), "debian".to_string())].into(),
            domain: None,
            resources: ResourceSet::parse(resources).unwrap(),
        };
        match self.commit(Command::RegisterAgent(reg)) {
            Ok(shoal_sched::Reply::Agent { agent_id, .. }) => agent_id,
            other => panic!("agent not registered: {other:?}"),
        }
    }

    fn subscribe(&mut self, session: SessionId, call: Json) -> Result<String, CompatError> {
        self.subscribe_with(session, call, true)
    }

    fn subscribe_with(
        &mut self,
        session: SessionId,
        call: Json,
        force: bool,
    ) -> Result<String, CompatError> {
        let call: Call = shoal_proto::json::from_json_value(call).expect("a valid call");
        let effects = self
            .model
            .subscribe(&self.cell, self.now(), session, &call, force, None)?;
        self.run(effects);
        let id = self
            .sent
            .iter()
            .rev()
            .filter(|(s, _)| *s == session)
            .find_map(|(_, e)| e.subscribed.as_ref())
            .map(|s| s.framework_id.value.clone())
            .unwrap_or_default();
        Ok(id)
    }

    fn call(&mut self, session: SessionId, call: Json) -> Result<(), CompatError> {
        let call: Call = shoal_proto::json::from_json_value(call).expect("a valid call");
        let effects = self
            .model
            .call(&self.cell, self.now(), Some(session), call)?;
        self.run(effects);
        Ok(())
    }

    fn allocate(&mut self) {
        let effects = self
            .model
            .allocate(&self.cell, self.now(), |_| true, |_| None);
        self.run(effects);
    }

    fn tick(&mut self) {
        let effects = self.model.tick(&self.cell, self.now());
        self.run(effects);
    }

    /// The events of `ty` sent to `session` since the last look, oldest first.
    fn take(&mut self, session: SessionId, ty: event::Type) -> Vec<Event> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(s, e)| *s == session && e.r#type == Some(ty as i32));
        self.sent = rest;
        mine.into_iter().map(|(_, e)| e).collect()
    }

    fn offers(&mut self, session: SessionId) -> Vec<mesos::Offer> {
        self.take(session, event::Type::Offers)
            .into_iter()
            .flat_map(|e| e.offers.map(|o| o.offers).unwrap_or_default())
            .collect()
    }

    fn updates(&mut self, session: SessionId) -> Vec<mesos::TaskStatus> {
        self.take(session, event::Type::Update)
            .into_iter()
            .filter_map(|e| e.update.map(|u| u.status))
            .collect()
    }
}

fn subscribe_call(info: Json) -> Json {
    json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}})
}

fn framework(name: &str) -> Json {
    json!({"user": "u", "name": name})
}

fn state_name(s: &mesos::TaskStatus) -> &'static str {
    mesos::TaskState::try_from(s.state)
        .map(|s| s.as_str_name())
        .unwrap_or("?")
}

fn reason_name(s: &mesos::TaskStatus) -> &'static str {
    s.reason
        .and_then(|r| mesos::task_status::Reason::try_from(r).ok())
        .map(|r| r.as_str_name())
        .unwrap_or("")
}

fn task(id: &str, offer: &mesos::Offer, cpus: f64) -> Json {
    let role = offer
        .allocation_info
        .as_ref()
        .and_then(|a| a.role.clone())
        .unwrap_or_else(|| "*".into());
    json!({"name": id, "task_id": {"value": id}, "agent_id": {"value": offer.agent_id.value},
           "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus},
                          "allocation_info": {"role": role}}],
           "command": {"value": "true"}})
}

fn accept_call(fw: &str, offer: &mesos::Offer, operations: Json) -> Json {
    json!({"type": "ACCEPT", "framework_id": {"value": fw},
           "accept": {"offer_ids": [{"value": offer.id.value}], "operations": operations}})
}

/// An ACCEPT of `offer` launching `tasks`.
fn launch(fw: &str, offer: &mesos::Offer, tasks: Vec<Json>) -> Json {
    accept_call(
        fw,
        offer,
        json!([{"type": "LAUNCH", "launch": {"task_infos": tasks}}]),
    )
}

/// A framework subscribed on session 1 with an offer of one agent.
fn offered(info: Json) -> (Harness, String, mesos::Offer) {
    let mut h = Harness::new(config());
    h.agent("10.0.0.5", "cpus:4;mem:1024");
    let fw = h.subscribe(SessionId(1), subscribe_call(info)).unwrap();
    h.allocate();
    let mut offers = h.offers(SessionId(1));
    assert_eq!(offers.len(), 1, "one agent, one offer");
    (h, fw, offers.remove(0))
}

/// A framework with a task `t1` running.
fn running(info: Json) -> (Harness, String) {
    let (mut h, fw, offer) = offered(info);
    h.call(
        SessionId(1),
        launch(&fw, &offer, vec![task("t1", &offer, 1.0)]),
    )
    .unwrap();
    h.commit(Command::UpdateTaskStatus {
        task_id: TaskId::new("t1"),
        state: TaskState::Running,
        status: StatusInfo::default(),
    })
    .unwrap();
    (h, fw)
}

#[test]
fn a_new_framework_is_subscribed_with_an_id_and_the_configured_master() {
    let mut h = Harness::new(config());
    let fw = h
        .subscribe(SessionId(1), subscribe_call(framework("new")))
        .unwrap();
    assert_eq!(fw, "run-F1", "ids are the run id and a sequence");
    let subscribed = h.take(SessionId(1), event::Type::Subscribed);
    let s = subscribed[0].subscribed.as_ref().unwrap();
    assert_eq!(s.heartbeat_interval_seconds, Some(15.0));
    let master = s.master_info.as_ref().expect("master_info");
    assert_eq!(master.id, "cell-1", "the cell's id");
    assert_eq!(master.hostname.as_deref(), Some("master.example"));
    assert_eq!(master.port, 5050);
    assert_eq!(master.ip, u32::from_le_bytes([10, 0, 0, 1]));
    assert_eq!(master.pid.as_deref(), Some("master@10.0.0.1:5050"));
    assert!(h.model.is_known(&fw));
    assert_eq!(h.model.framework_of(SessionId(1)), Some(fw.as_str()));
}

#[test]
fn a_resubscription_takes_over_closes_the_old_session_and_rescinds_its_offers() {
    let (mut h, fw, offer) = offered(framework("f"));
    let again = subscribe_call(json!({"user": "u", "name": "f", "id": {"value": fw}}));
    let mut again = again;
    again["framework_id"] = json!({"value": fw});
    assert_eq!(h.subscribe(SessionId(2), again).unwrap(), fw);
    assert_eq!(
        h.closed,
        vec![(SessionId(1), Some("Framework failed over".to_string()))]
    );
    let rescinds = h.take(SessionId(2), event::Type::Rescind);
    assert_eq!(
        rescinds[0].rescind.as_ref().unwrap().offer_id.value,
        offer.id.value
    );
    assert!(h.cell.holds().next().is_none(), "the old offers went back");
    assert_eq!(h.model.framework_of(SessionId(2)), Some(fw.as_str()));
}

#[test]
fn a_subscription_without_force_from_another_session_is_refused_as_mesos_does() {
    let mut h = Harness::new(config());
    let fw = h
        .subscribe(SessionId(1), subscribe_call(framework("f")))
        .unwrap();
    let mut again = subscribe_call(json!({"user": "u", "name": "f", "id": {"value": fw}}));
    again["framework_id"] = json!({"value": fw});
    h.subscribe_with(SessionId(2), again.clone(), false)
        .unwrap();
    let errors = h.take(SessionId(2), event::Type::Error);
    assert_eq!(
        errors[0].error.as_ref().unwrap().message,
        "Framework failed over"
    );
    assert!(h.closed.is_empty(), "the framework stays on its session");
    assert_eq!(h.model.framework_of(SessionId(1)), Some(fw.as_str()));
    // From its own session (a driver re-registering), it is allowed.
    h.subscribe_with(SessionId(1), again, false).unwrap();
    assert_eq!(h.take(SessionId(1), event::Type::Subscribed).len(), 2);
}

#[test]
fn a_removed_framework_may_not_subscribe_again() {
    let mut h = Harness::new(config());
    let fw = h
        .subscribe(SessionId(1), subscribe_call(framework("f")))
        .unwrap();
    h.call(
        SessionId(1),
        json!({"type": "TEARDOWN", "framework_id": {"value": fw}}),
    )
    .unwrap();
    assert_eq!(h.closed, vec![(SessionId(1), None)], "its stream just ends");
    assert!(h.model.is_removed(&fw));
    let mut again = subscribe_call(json!({"user": "u", "name": "f", "id": {"value": fw}}));
    again["framework_id"] = json!({"value": fw});
    assert!(matches!(
        h.subscribe(SessionId(2), again),
        Err(CompatError::Removed)
    ));
}

#[test]
fn one_framework_more_than_frameworks_max_is_refused() {
    let mut h = Harness::new(CompatConfig {
        frameworks_max: 2,
        ..config()
    });
    h.subscribe(SessionId(1), subscribe_call(framework("a")))
        .unwrap();
    h.subscribe(SessionId(2), subscribe_call(framework("b")))
        .unwrap();
    let err = h
        .subscribe(SessionId(3), subscribe_call(framework("c")))
        .unwrap_err();
    assert!(matches!(err, CompatError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("at most 2"));
}

#[test]
fn a_bad_framework_info_is_refused() {
    let mut h = Harness::new(config());
    let long = framework(&"n".repeat(crate::limits::FRAMEWORK_NAME_BYTES_MAX + 1));
    let err = h.subscribe(SessionId(1), subscribe_call(long)).unwrap_err();
    assert!(err.to_string().contains("'framework_info.name'"), "{err}");
    let bad_role = json!({"user": "u", "name": "f", "roles": ["a b"]});
    assert!(h.subscribe(SessionId(1), subscribe_call(bad_role)).is_err());
    // An id in the FrameworkInfo must be the call's framework_id.
    let mismatch = subscribe_call(json!({"user": "u", "name": "f", "id": {"value": "X"}}));
    let err = h.subscribe(SessionId(1), mismatch).unwrap_err();
    assert!(err.to_string().contains("differs"), "{err}");
    assert!(h.sent.is_empty() && h.model.framework_summaries().is_empty());
    // failover_timeout: capped (and written back), never refused.
    let forever = json!({"user": "u", "name": "f", "failover_timeout": 1e308});
    h.subscribe(SessionId(1), subscribe_call(forever)).unwrap();
    let info = &h.model.framework_summaries()[0].info;
    assert_eq!(
        info.failover_timeout,
        Some(crate::limits::FAILOVER_TIMEOUT_SECS_MAX as f64)
    );
}

#[test]
fn calls_of_frameworks_not_subscribed_or_from_another_session_are_refused() {
    let mut h = Harness::new(config());
    let ghost = json!({"type": "REVIVE", "framework_id": {"value": "ghost"}});
    assert!(matches!(
        h.call(SessionId(1), ghost),
        Err(CompatError::NotSubscribed)
    ));
    let fw = h
        .subscribe(SessionId(1), subscribe_call(framework("f")))
        .unwrap();
    let revive = json!({"type": "REVIVE", "framework_id": {"value": fw}});
    assert!(matches!(
        h.call(SessionId(2), revive.clone()),
        Err(CompatError::OtherSession)
    ));
    let call: Call = shoal_proto::json::from_json_value(revive.clone()).unwrap();
    assert!(matches!(
        h.model.call(&h.cell, h.now(), None, call),
        Err(CompatError::NoSession)
    ));
    h.call(SessionId(1), revive).unwrap();
    let unknown = json!({"framework_id": {"value": fw}});
    let err = h.call(SessionId(1), unknown).unwrap_err();
    assert_eq!(err.to_string(), "Unknown call type UNKNOWN");
}

#[test]
fn offers_are_made_per_role_with_allocation_info_and_url() {
    let mut h = Harness::new(config());
    h.agent("10.0.0.5", "cpus:2;mem:1024");
    h.agent("10.0.0.6", "cpus:2;mem:1024");
    let info = json!({"user": "u", "name": "f", "roles": ["a", "b"],
                      "capabilities": [{"type": "MULTI_ROLE"}]});
    let fw = h.subscribe(SessionId(1), subscribe_call(info)).unwrap();
    h.allocate();
    let offers = h.offers(SessionId(1));
    assert_eq!(offers.len(), 2);
    let mut roles: Vec<String> = offers
        .iter()
        .map(|o| o.allocation_info.as_ref().unwrap().role.clone().unwrap())
        .collect();
    roles.sort();
    assert_eq!(roles, ["a", "b"], "one role each, by DRF");
    for o in &offers {
        assert_eq!(o.framework_id.value, fw);
        let role = o.allocation_info.as_ref().unwrap().role.clone();
        for r in &o.resources {
            assert_eq!(r.allocation_info.as_ref().unwrap().role, role);
            assert_eq!(r.role.as_deref(), Some("*"), "unreserved");
        }
        let url = o.url.as_ref().unwrap();
        assert_eq!(url.scheme, "http");
        assert_eq!(url.path.as_deref(), Some("/slave(1)"));
        assert_eq!(url.address.ip.as_deref(), Some(o.hostname.as_str()));
        assert_eq!(url.address.port, 5051);
        assert_eq!(o.attributes[0].name, "os");
        assert!(o.id.value.starts_with("run-O"));
    }
    // The offers are the cell's holds.
    assert_eq!(h.cell.holds().filter(|x| x.framework_id == fw).count(), 2);
    h.allocate();
    assert!(h.offers(SessionId(1)).is_empty(), "nothing left to offer");
}

#[test]
fn accept_launches_and_refuses_what_mesos_refuses() {
    let (mut h, fw, offer) = offered(framework("f"));
    let ops = json!([
        {"type": "LAUNCH", "launch": {"task_infos": [task("good", &offer, 1.0), task("bad/id", &offer, 1.0)]}},
        {"type": "RESERVE", "id": {"value": "op-1"}, "reserve": {"resources": []}},
        {"type": "CREATE"},
    ]);
    h.call(SessionId(1), accept_call(&fw, &offer, ops)).unwrap();
    assert!(h.committed.contains(&"AcceptHolds".to_string()));
    assert!(h.cell.task(&TaskId::new("good")).is_some(), "launched");
    let updates = h.updates(SessionId(1));
    let bad = updates
        .iter()
        .find(|s| s.task_id.value == "bad/id")
        .expect("an update for the bad id");
    assert_eq!(state_name(bad), "TASK_ERROR");
    assert_eq!(reason_name(bad), "REASON_TASK_INVALID");
    assert!(bad.uuid.is_none(), "master updates carry no uuid");
    let ops = h.take(SessionId(1), event::Type::UpdateOperationStatus);
    assert_eq!(
        ops.len(),
        1,
        "only the dropped operation with an id is reported"
    );
    let status = &ops[0].update_operation_status.as_ref().unwrap().status;
    assert_eq!(status.operation_id.as_ref().unwrap().value, "op-1");
    assert_eq!(status.state, mesos::OperationState::OperationError as i32);
    assert!(h.cell.holds().next().is_none(), "the offer is used up");

    // The same offer again: it is gone, so the task is dropped (TASK_LOST for a framework
    // that is not partition-aware).
    h.call(
        SessionId(1),
        launch(&fw, &offer, vec![task("late", &offer, 1.0)]),
    )
    .unwrap();
    let late = h.updates(SessionId(1));
    assert_eq!(state_name(&late[0]), "TASK_LOST");
    assert_eq!(reason_name(&late[0]), "REASON_INVALID_OFFERS");
}

#[test]
fn accept_of_unknown_offers_drops_tasks_for_partition_aware_frameworks() {
    let info = json!({"user": "u", "name": "f", "capabilities": [{"type": "PARTITION_AWARE"}]});
    let (mut h, fw, offer) = offered(info);
    let mut gone = offer.clone();
    gone.id.value = "nope".into();
    h.call(
        SessionId(1),
        launch(&fw, &gone, vec![task("t", &offer, 1.0)]),
    )
    .unwrap();
    let updates = h.updates(SessionId(1));
    assert_eq!(state_name(&updates[0]), "TASK_DROPPED");
}

#[test]
fn launch_group_tasks_share_a_group_label() {
    let (mut h, fw, offer) = offered(framework("f"));
    let ops = json!([{"type": "LAUNCH_GROUP", "launch_group": {
        "executor": {"executor_id": {"value": "e"}, "type": "DEFAULT"},
        "task_group": {"tasks": [task("g1", &offer, 1.0), task("g2", &offer, 1.0)]}}}]);
    h.call(SessionId(1), accept_call(&fw, &offer, ops)).unwrap();
    for id in ["g1", "g2"] {
        let t = h.cell.task(&TaskId::new(id)).expect("launched");
        assert!(
            t.spec.as_str().contains("\"shoal.group\""),
            "{}",
            t.spec.as_str()
        );
        assert!(t.spec.as_str().contains("\"g1\""));
    }
}

#[test]
fn decline_installs_a_filter_and_revive_clears_it() {
    let (mut h, fw, offer) = offered(framework("f"));
    h.call(
        SessionId(1),
        json!({"type": "DECLINE", "framework_id": {"value": fw},
               "decline": {"offer_ids": [{"value": offer.id.value}], "filters": {"refuse_seconds": 60.0}}}),
    )
    .unwrap();
    assert!(h.cell.holds().next().is_none(), "declined offers go back");
    h.allocate();
    assert!(
        h.offers(SessionId(1)).is_empty(),
        "the filter holds the agent back"
    );
    h.advance(Duration::from_secs(61));
    h.allocate();
    let again = h.offers(SessionId(1));
    assert_eq!(again.len(), 1, "the filter ends");
    h.call(
        SessionId(1),
        json!({"type": "DECLINE", "framework_id": {"value": fw},
               "decline": {"offer_ids": [{"value": again[0].id.value}]}}),
    )
    .unwrap();
    h.allocate();
    assert!(h.offers(SessionId(1)).is_empty(), "the default filter: 5 s");
    h.call(
        SessionId(1),
        json!({"type": "REVIVE", "framework_id": {"value": fw}}),
    )
    .unwrap();
    h.allocate();
    assert_eq!(h.offers(SessionId(1)).len(), 1, "REVIVE clears filters");
}

#[test]
fn suppress_stops_offers_per_role() {
    let mut h = Harness::new(config());
    h.agent("10.0.0.5", "cpus:2;mem:1024");
    let info = json!({"user": "u", "name": "f", "roles": ["a", "b"]});
    let fw = h.subscribe(SessionId(1), subscribe_call(info)).unwrap();
    h.call(
        SessionId(1),
        json!({"type": "SUPPRESS", "framework_id": {"value": fw}, "suppress": {"roles": ["a"]}}),
    )
    .unwrap();
    h.allocate();
    let offers = h.offers(SessionId(1));
    assert_eq!(offers.len(), 1);
    assert_eq!(
        offers[0].allocation_info.as_ref().unwrap().role.as_deref(),
        Some("b")
    );
    h.call(
        SessionId(1),
        json!({"type": "SUPPRESS", "framework_id": {"value": fw}}),
    )
    .unwrap();
    let held: Vec<OfferId> = h.cell.holds().map(|x| x.id.clone()).collect();
    let effects = h.model.release(held);
    h.run(effects);
    h.allocate();
    assert!(h.offers(SessionId(1)).is_empty(), "every role suppressed");
}

#[test]
fn kill_of_an_owned_task_commits_a_kill_and_of_an_unknown_one_answers_lost_or_unknown() {
    let (mut h, fw) = running(framework("f"));
    h.updates(SessionId(1));
    h.call(
        SessionId(1),
        json!({"type": "KILL", "framework_id": {"value": fw}, "kill": {"task_id": {"value": "t1"}}}),
    )
    .unwrap();
    assert_eq!(h.committed.last().map(String::as_str), Some("KillTask"));
    h.call(
        SessionId(1),
        json!({"type": "KILL", "framework_id": {"value": fw}, "kill": {"task_id": {"value": "ghost"}}}),
    )
    .unwrap();
    let updates = h.updates(SessionId(1));
    let ghost = updates.iter().find(|s| s.task_id.value == "ghost").unwrap();
    assert_eq!(state_name(ghost), "TASK_LOST");
    assert_eq!(reason_name(ghost), "REASON_RECONCILIATION");

    let info = json!({"user": "u", "name": "p", "capabilities": [{"type": "PARTITION_AWARE"}]});
    let pa = h.subscribe(SessionId(2), subscribe_call(info)).unwrap();
    h.call(
        SessionId(2),
        json!({"type": "KILL", "framework_id": {"value": pa}, "kill": {"task_id": {"value": "ghost"}}}),
    )
    .unwrap();
    assert_eq!(state_name(&h.updates(SessionId(2))[0]), "TASK_UNKNOWN");
}

#[test]
fn acknowledge_releases_the_next_update_of_the_task() {
    let (mut h, fw) = running(framework("f"));
    let first = h.updates(SessionId(1));
    assert_eq!(first.len(), 1, "TASK_RUNNING is in flight");
    assert_eq!(state_name(&first[0]), "TASK_RUNNING");
    let uuid = first[0].uuid.clone().expect("a uuid to acknowledge");
    assert_eq!(uuid.len(), 16);
    h.commit(Command::UpdateTaskStatus {
        task_id: TaskId::new("t1"),
        state: TaskState::Finished,
        status: StatusInfo::default(),
    })
    .unwrap();
    assert!(
        h.updates(SessionId(1)).is_empty(),
        "held back until acknowledged"
    );
    h.advance(Duration::from_secs(11));
    h.tick();
    let resent = h.updates(SessionId(1));
    assert_eq!(resent.len(), 1, "the head is resent after update_retry");
    assert_eq!(resent[0].uuid.as_ref(), Some(&uuid));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&uuid);
    h.call(
        SessionId(1),
        json!({"type": "ACKNOWLEDGE", "framework_id": {"value": fw},
               "acknowledge": {"agent_id": {"value": "a"}, "task_id": {"value": "t1"}, "uuid": b64}}),
    )
    .unwrap();
    let next = h.updates(SessionId(1));
    assert_eq!(state_name(&next[0]), "TASK_FINISHED");
    assert_ne!(next[0].uuid.as_ref(), Some(&uuid));
}

#[test]
fn reconcile_explicit_and_implicit() {
    let (mut h, fw) = running(framework("f"));
    h.updates(SessionId(1));
    h.call(
        SessionId(1),
        json!({"type": "RECONCILE", "framework_id": {"value": fw}}),
    )
    .unwrap();
    let implicit = h.updates(SessionId(1));
    assert_eq!(implicit.len(), 1);
    assert_eq!(implicit[0].task_id.value, "t1");
    assert_eq!(state_name(&implicit[0]), "TASK_RUNNING");
    assert_eq!(reason_name(&implicit[0]), "REASON_RECONCILIATION");
    h.call(
        SessionId(1),
        json!({"type": "RECONCILE", "framework_id": {"value": fw}, "reconcile": {"tasks": [
            {"task_id": {"value": "t1"}}, {"task_id": {"value": "x"}, "agent_id": {"value": "nowhere"}}]}}),
    )
    .unwrap();
    let explicit = h.updates(SessionId(1));
    assert_eq!(explicit.len(), 2);
    assert_eq!(state_name(&explicit[1]), "TASK_LOST", "not partition-aware");

    let info = json!({"user": "u", "name": "p", "capabilities": [{"type": "PARTITION_AWARE"}]});
    let pa = h.subscribe(SessionId(2), subscribe_call(info)).unwrap();
    h.call(
        SessionId(2),
        json!({"type": "RECONCILE", "framework_id": {"value": pa}, "reconcile": {"tasks": [
            {"task_id": {"value": "x"}, "agent_id": {"value": "nowhere"}}]}}),
    )
    .unwrap();
    assert_eq!(state_name(&h.updates(SessionId(2))[0]), "TASK_UNKNOWN");
    h.call(
        SessionId(2),
        json!({"type": "RECONCILE_OPERATIONS", "framework_id": {"value": pa},
               "reconcile_operations": {"operations": [{"operation_id": {"value": "o"}}]}}),
    )
    .unwrap();
    let ops = h.take(SessionId(2), event::Type::UpdateOperationStatus);
    assert_eq!(
        ops[0]
            .update_operation_status
            .as_ref()
            .unwrap()
            .status
            .state,
        mesos::OperationState::OperationUnknown as i32
    );
}

#[test]
fn update_framework_changes_roles_and_refuses_another_id() {
    let mut h = Harness::new(config());
    h.agent("10.0.0.5", "cpus:2;mem:1024");
    let fw = h
        .subscribe(SessionId(1), subscribe_call(framework("f")))
        .unwrap();
    let update = |id: &str| {
        json!({"type": "UPDATE_FRAMEWORK", "framework_id": {"value": fw},
               "update_framework": {"framework_info": {"user": "u", "name": "g", "id": {"value": id}, "roles": ["r"]}}})
    };
    let err = h.call(SessionId(1), update("other")).unwrap_err();
    assert!(err.to_string().contains("differs"), "{err}");
    h.call(SessionId(1), update(&fw)).unwrap();
    let summary = &h.model.framework_summaries()[0];
    assert_eq!(summary.roles, ["r"]);
    assert_eq!(summary.info.name, "g");
    h.allocate();
    let offers = h.offers(SessionId(1));
    assert_eq!(
        offers[0].allocation_info.as_ref().unwrap().role.as_deref(),
        Some("r")
    );
}

#[test]
fn teardown_kills_the_tasks_and_releases_the_offers() {
    let (mut h, fw) = running(framework("f"));
    // What the ACCEPT left unused is filtered for the default 5 s.
    h.allocate();
    assert!(h.offers(SessionId(1)).is_empty(), "filtered");
    h.advance(Duration::from_secs(6));
    h.allocate();
    assert_eq!(h.offers(SessionId(1)).len(), 1, "what t1 leaves is offered");
    h.call(
        SessionId(1),
        json!({"type": "TEARDOWN", "framework_id": {"value": fw}}),
    )
    .unwrap();
    assert!(h.committed.contains(&"KillTask".to_string()));
    assert!(h.cell.holds().next().is_none());
    assert!(!h.model.is_known(&fw));
    assert!(h.model.is_removed(&fw));
}

#[test]
fn a_framework_away_past_its_failover_timeout_is_removed() {
    let info = json!({"user": "u", "name": "f", "failover_timeout": 60.0});
    let (mut h, fw) = running(info);
    let effects = h.model.disconnected(&h.cell, h.now(), SessionId(1));
    h.run(effects);
    assert!(h.cell.holds().next().is_none(), "its offers go back");
    h.advance(Duration::from_millis(59_999));
    h.tick();
    assert!(
        h.model.is_known(&fw),
        "within its failover timeout it is kept"
    );
    h.advance(Duration::from_millis(1));
    h.tick();
    assert!(
        !h.model.is_known(&fw),
        "at its failover timeout it is removed"
    );
    assert!(h.model.is_removed(&fw));
    assert!(
        h.committed.contains(&"KillTask".to_string()),
        "its tasks are killed"
    );
}

#[test]
fn an_offer_past_its_timeout_is_rescinded_and_offers_are_withheld_until_a_call() {
    let (mut h, fw, offer) = offered(framework("f"));
    h.advance(Duration::from_secs(crate::limits::OFFER_TIMEOUT_SECS));
    h.tick();
    let rescinds = h.take(SessionId(1), event::Type::Rescind);
    assert_eq!(
        rescinds[0].rescind.as_ref().unwrap().offer_id.value,
        offer.id.value
    );
    assert!(h.cell.holds().next().is_none());
    h.allocate();
    assert!(
        h.offers(SessionId(1)).is_empty(),
        "withheld: it made no call"
    );
    // Another new framework does not get the agent either while it is on probation.
    h.subscribe(SessionId(2), subscribe_call(framework("g")))
        .unwrap();
    h.allocate();
    assert!(
        h.offers(SessionId(2)).is_empty(),
        "the agent is on probation"
    );
    h.call(
        SessionId(1),
        json!({"type": "REVIVE", "framework_id": {"value": fw}}),
    )
    .unwrap();
    h.allocate();
    assert_eq!(
        h.offers(SessionId(1)).len(),
        1,
        "a call ends the withholding"
    );
}

#[test]
fn an_undelivered_offer_goes_back() {
    let (mut h, _fw, offer) = offered(framework("f"));
    let event = Event {
        offers: Some(event::Offers {
            offers: vec![offer],
        }),
        ..bare_event(event::Type::Offers)
    };
    let effects = h.model.undelivered(SessionId(1), event);
    h.run(effects);
    assert!(h.cell.holds().next().is_none());
    assert!(
        h.take(SessionId(1), event::Type::Rescind).is_empty(),
        "no RESCIND for it"
    );
}

#[test]
fn a_lost_agent_is_a_failure_and_its_offers_are_rescinded() {
    let (mut h, _fw, offer) = offered(framework("f"));
    let agent = shoal_core::AgentId::new(offer.agent_id.value.as_str());
    h.commit(Command::SetAgentState {
        agent_id: agent,
        state: shoal_core::AgentState::Unreachable,
    })
    .unwrap();
    let failures = h.take(SessionId(1), event::Type::Failure);
    assert_eq!(failures.len(), 1);
    if h.cell.holds().next().is_none() {
        let rescinds = h.take(SessionId(1), event::Type::Rescind);
        assert_eq!(rescinds.len(), 1, "the cell released the hold: rescinded");
    }
}

#[test]
fn the_same_inputs_give_the_same_effects() {
    let run = || {
        let (mut h, _fw) = running(framework("f"));
        h.allocate();
        format!("{:?}", h.sent)
    };
    assert_eq!(run(), run());
}

/// Garbage collection keeps a framework's terminal task while its update waits for an
/// acknowledgement; once acknowledged the task may be collected, and reconciliation answers
/// it as Mesos does a task it no longer knows.
#[test]
fn a_terminal_task_is_kept_until_acknowledged_then_collected_and_reconciled_as_unknown() {
    use base64::Engine;
    let (mut h, fw) = running(framework("f"));
    let running = h.updates(SessionId(1));
    h.commit(Command::UpdateTaskStatus {
        task_id: TaskId::new("t1"),
        state: TaskState::Finished,
        status: StatusInfo::default(),
    })
    .unwrap();
    let keep_none = shoal_core::gc::Retention {
        completed_tasks_per_owner: 0,
        ..Default::default()
    };
    let plan = |h: &Harness| {
        let model = &h.model;
        h.cell
            .collection(&keep_none, h.now().wall_ms, 0, &|t| model.retains(t))
    };
    assert!(
        plan(&h).is_none(),
        "the RUNNING update is not acknowledged yet"
    );
    let ack = |h: &mut Harness, s: &mesos::TaskStatus| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(s.uuid.as_ref().unwrap());
        h.call(
            SessionId(1),
            json!({"type": "ACKNOWLEDGE", "framework_id": {"value": fw},
                   "acknowledge": {"agent_id": {"value": "a"}, "task_id": {"value": "t1"}, "uuid": b64}}),
        )
        .unwrap();
    };
    ack(&mut h, &running[0]);
    let finished = h.updates(SessionId(1));
    assert_eq!(state_name(&finished[0]), "TASK_FINISHED");
    assert!(plan(&h).is_none(), "TASK_FINISHED is not acknowledged yet");
    ack(&mut h, &finished[0]);
    let collect = plan(&h).expect("acknowledged: the task may go");
    h.commit(collect).unwrap();
    assert!(h.cell.task(&TaskId::new("t1")).is_none());
    h.call(
        SessionId(1),
        json!({"type": "RECONCILE", "framework_id": {"value": fw}, "reconcile": {"tasks": [
            {"task_id": {"value": "t1"}}]}}),
    )
    .unwrap();
    let answer = h.updates(SessionId(1));
    assert_eq!(
        state_name(&answer[0]),
        "TASK_LOST",
        "unknown, not partition-aware"
    );
    assert_eq!(reason_name(&answer[0]), "REASON_RECONCILIATION");
}
