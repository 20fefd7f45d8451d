use super::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

fn fid(s: &str) -> v1::FrameworkId {
    v1::FrameworkId { value: s.into() }
}

fn aid(s: &str) -> v1::AgentId {
    v1::AgentId { value: s.into() }
}

fn tid(s: &str) -> v1::TaskId {
    v1::TaskId { value: s.into() }
}

fn oid(s: &str) -> v1::OfferId {
    v1::OfferId { value: s.into() }
}

fn eid(s: &str) -> v1::ExecutorId {
    v1::ExecutorId { value: s.into() }
}

fn info(id: Option<&str>) -> v1::FrameworkInfo {
    v1::FrameworkInfo {
        user: "root".into(),
        name: "marathon".into(),
        id: id.map(fid),
        ..v1::FrameworkInfo::default()
    }
}

fn the_call(decoded: V0Call) -> (Call, bool) {
    match decoded {
        V0Call::Call { call, force } => (*call, force),
        other => panic!("not a call: {other:?}"),
    }
}

fn ty(call: &Call) -> call::Type {
    call::Type::try_from(call.r#type.unwrap()).unwrap()
}

#[test]
fn every_name_is_a_message_in_the_descriptor_pool() {
    for name in names::INBOUND.iter().chain(names::OUTBOUND) {
        assert!(
            shoal_proto::DESCRIPTOR_POOL
                .get_message_by_name(name)
                .is_some(),
            "{name}"
        );
    }
}

#[test]
fn call_subscribe_reads_v0_numbers_and_keeps_force() {
    let v0_call = v0::Call {
        framework_id: Some(fid("f1")),
        r#type: Some(call::Type::Subscribe as i32),
        subscribe: Some(v0::call::Subscribe {
            framework_info: info(Some("f1")),
            force: Some(true),
            suppressed_roles: vec!["web".into()],
            offer_constraints: None,
        }),
        ..v0::Call::default()
    };
    // The v0 numbers on the wire: Subscribe { framework_info = 1, force = 2,
    // suppressed_roles = 3 }; field 3 of the call is `subscribe`.
    let bytes = v0_call.encode_to_vec();
    let sub = v0::call::Subscribe::decode(
        &v0::Call::decode(&bytes[..])
            .unwrap()
            .subscribe
            .unwrap()
            .encode_to_vec()[..],
    )
    .unwrap();
    let mut raw = Vec::new();
    prost::encoding::bool::encode(2, &true, &mut raw);
    prost::encoding::string::encode(3, &"web".to_string(), &mut raw);
    assert!(sub.encode_to_vec().ends_with(&raw));

    let (call, force) = the_call(decode(names::CALL, &bytes).unwrap());
    assert!(force);
    assert_eq!(ty(&call), call::Type::Subscribe);
    assert_eq!(call.framework_id, Some(fid("f1")));
    let s = call.subscribe.unwrap();
    assert_eq!(s.framework_info, info(Some("f1")));
    assert_eq!(s.suppressed_roles, vec!["web".to_string()]);

    // Without `force` it is false.
    let mut no_force = v0_call.clone();
    no_force.subscribe.as_mut().unwrap().force = None;
    let (_, force) = the_call(decode(names::CALL, &no_force.encode_to_vec()).unwrap());
    assert!(!force);
}

#[test]
fn calls_other_than_subscribe_are_the_v1_bytes() {
    let accept = Call {
        framework_id: Some(fid("f1")),
        r#type: Some(call::Type::Accept as i32),
        accept: Some(call::Accept {
            offer_ids: vec![oid("o1"), oid("o2")],
            operations: vec![v1::offer::Operation {
                r#type: Some(v1::offer::operation::Type::Launch as i32),
                launch: Some(v1::offer::operation::Launch {
                    task_infos: vec![v1::TaskInfo {
                        name: "t".into(),
                        task_id: tid("t1"),
                        agent_id: aid("a1"),
                        ..v1::TaskInfo::default()
                    }],
                }),
                ..v1::offer::Operation::default()
            }],
            filters: Some(v1::Filters {
                refuse_seconds: Some(10.0),
            }),
        }),
        ..Call::default()
    };
    let reconcile = Call {
        framework_id: Some(fid("f1")),
        r#type: Some(call::Type::Reconcile as i32),
        reconcile: Some(call::Reconcile {
            tasks: vec![call::reconcile::Task {
                task_id: tid("fake-marathon-pacemaker-task-1"),
                agent_id: Some(aid("fake-marathon-pacemaker-agent-1")),
            }],
        }),
        ..Call::default()
    };
    let ack = Call {
        framework_id: Some(fid("f1")),
        r#type: Some(call::Type::Acknowledge as i32),
        acknowledge: Some(call::Acknowledge {
            agent_id: aid("a1"),
            task_id: tid("t1"),
            uuid: vec![1, 2, 3],
        }),
        ..Call::default()
    };
    let revive = Call {
        framework_id: Some(fid("f1")),
        r#type: Some(call::Type::Revive as i32),
        revive: Some(call::Revive {
            roles: vec!["*".into()],
        }),
        ..Call::default()
    };
    for v1_call in [accept, reconcile, ack, revive] {
        let (call, force) = the_call(decode(names::CALL, &v1_call.encode_to_vec()).unwrap());
        assert!(!force);
        assert_eq!(call, v1_call);
    }
}

#[test]
fn a_call_without_type_is_refused() {
    let c = v0::Call {
        framework_id: Some(fid("f1")),
        ..v0::Call::default()
    };
    assert_eq!(
        decode(names::CALL, &c.encode_to_vec()),
        Err(DecodeError::Missing {
            name: names::CALL,
            field: "type"
        })
    );
}

#[test]
fn register_and_reregister_are_subscribe() {
    let m = msg::RegisterFrameworkMessage {
        framework: info(None),
    };
    let (call, force) = the_call(decode(names::REGISTER_FRAMEWORK, &m.encode_to_vec()).unwrap());
    assert!(!force);
    assert_eq!(ty(&call), call::Type::Subscribe);
    assert_eq!(call.framework_id, None);
    assert_eq!(call.subscribe.unwrap().framework_info, info(None));

    for failover in [true, false] {
        let m = msg::ReregisterFrameworkMessage {
            framework: info(Some("f1")),
            failover,
        };
        let decoded = decode(names::REREGISTER_FRAMEWORK, &m.encode_to_vec()).unwrap();
        assert_eq!(decoded.framework_id(), Some(&fid("f1")));
        let (call, force) = the_call(decoded);
        assert_eq!(force, failover);
        assert_eq!(ty(&call), call::Type::Subscribe);
        assert_eq!(call.subscribe.unwrap().framework_info, info(Some("f1")));
    }
}

#[test]
fn unregister_is_teardown_and_deactivate_is_its_own() {
    let m = msg::UnregisterFrameworkMessage {
        framework_id: fid("f1"),
    };
    let (call, _) = the_call(decode(names::UNREGISTER_FRAMEWORK, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Teardown);
    assert_eq!(call.framework_id, Some(fid("f1")));

    let m = msg::DeactivateFrameworkMessage {
        framework_id: fid("f1"),
    };
    assert_eq!(
        decode(names::DEACTIVATE_FRAMEWORK, &m.encode_to_vec()).unwrap(),
        V0Call::Deactivate {
            framework_id: fid("f1")
        }
    );
}

#[test]
fn launch_tasks_is_accept_with_one_launch_or_decline_without_tasks() {
    let filters = v1::Filters {
        refuse_seconds: Some(30.0),
    };
    let task = v1::TaskInfo {
        name: "t".into(),
        task_id: tid("t1"),
        agent_id: aid("a1"),
        ..v1::TaskInfo::default()
    };
    let m = msg::LaunchTasksMessage {
        framework_id: fid("f1"),
        tasks: vec![task.clone(), task.clone()],
        filters,
        offer_ids: vec![oid("o1")],
    };
    let (call, _) = the_call(decode(names::LAUNCH_TASKS, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Accept);
    assert_eq!(call.framework_id, Some(fid("f1")));
    let accept = call.accept.unwrap();
    assert_eq!(accept.offer_ids, vec![oid("o1")]);
    assert_eq!(accept.filters, Some(filters));
    assert_eq!(accept.operations.len(), 1);
    let op = &accept.operations[0];
    assert_eq!(op.r#type, Some(v1::offer::operation::Type::Launch as i32));
    assert_eq!(
        op.launch.as_ref().unwrap().task_infos,
        vec![task.clone(), task]
    );

    let m = msg::LaunchTasksMessage {
        framework_id: fid("f1"),
        tasks: vec![],
        filters,
        offer_ids: vec![oid("o1"), oid("o2")],
    };
    let (call, _) = the_call(decode(names::LAUNCH_TASKS, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Decline);
    assert!(call.accept.is_none());
    assert_eq!(
        call.decline,
        Some(call::Decline {
            offer_ids: vec![oid("o1"), oid("o2")],
            filters: Some(filters),
        })
    );
}

#[test]
fn kill_revive_acknowledge_reconcile_request_message() {
    let policy = v1::KillPolicy::default();
    let m = msg::KillTaskMessage {
        framework_id: fid("f1"),
        task_id: tid("t1"),
        kill_policy: Some(policy),
    };
    let (call, _) = the_call(decode(names::KILL_TASK, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Kill);
    assert_eq!(
        call.kill,
        Some(call::Kill {
            task_id: tid("t1"),
            agent_id: None,
            kill_policy: Some(policy)
        })
    );

    let m = msg::ReviveOffersMessage {
        framework_id: fid("f1"),
    };
    let (call, _) = the_call(decode(names::REVIVE_OFFERS, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Revive);
    assert_eq!(call.revive, Some(call::Revive::default()));
    assert_eq!(call.framework_id, Some(fid("f1")));

    let m = msg::StatusUpdateAcknowledgementMessage {
        slave_id: aid("a1"),
        framework_id: fid("f1"),
        task_id: tid("t1"),
        uuid: vec![9; 16],
    };
    let (call, _) =
        the_call(decode(names::STATUS_UPDATE_ACKNOWLEDGEMENT, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Acknowledge);
    assert_eq!(
        call.acknowledge,
        Some(call::Acknowledge {
            agent_id: aid("a1"),
            task_id: tid("t1"),
            uuid: vec![9; 16]
        })
    );

    let m = msg::ReconcileTasksMessage {
        framework_id: fid("f1"),
        statuses: vec![
            v1::TaskStatus {
                task_id: tid("t1"),
                state: v1::TaskState::TaskLost as i32,
                agent_id: Some(aid("a1")),
                ..v1::TaskStatus::default()
            },
            v1::TaskStatus {
                task_id: tid("t2"),
                ..v1::TaskStatus::default()
            },
        ],
        framework: None,
    };
    let (call, _) = the_call(decode(names::RECONCILE_TASKS, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Reconcile);
    assert_eq!(
        call.reconcile.unwrap().tasks,
        vec![
            call::reconcile::Task {
                task_id: tid("t1"),
                agent_id: Some(aid("a1"))
            },
            call::reconcile::Task {
                task_id: tid("t2"),
                agent_id: None
            },
        ]
    );
    // Implicit reconciliation: no statuses, no tasks.
    let m = msg::ReconcileTasksMessage {
        framework_id: fid("f1"),
        statuses: vec![],
        framework: None,
    };
    let (call, _) = the_call(decode(names::RECONCILE_TASKS, &m.encode_to_vec()).unwrap());
    assert_eq!(call.reconcile, Some(call::Reconcile { tasks: vec![] }));

    let m = msg::ResourceRequestMessage {
        framework_id: fid("f1"),
        requests: vec![v1::Request::default()],
    };
    let (call, _) = the_call(decode(names::RESOURCE_REQUEST, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Request);
    assert_eq!(call.request.unwrap().requests.len(), 1);

    let m = msg::FrameworkToExecutorMessage {
        slave_id: aid("a1"),
        framework_id: fid("f1"),
        executor_id: eid("e1"),
        data: b"hi".to_vec(),
    };
    let (call, _) = the_call(decode(names::FRAMEWORK_TO_EXECUTOR, &m.encode_to_vec()).unwrap());
    assert_eq!(ty(&call), call::Type::Message);
    assert_eq!(
        call.message,
        Some(call::Message {
            agent_id: aid("a1"),
            executor_id: eid("e1"),
            data: b"hi".to_vec()
        })
    );
}

#[test]
fn unknown_names_garbage_and_missing_ids_are_errors() {
    assert_eq!(
        decode("mesos.internal.AuthenticateMessage", b""),
        Err(DecodeError::UnknownName(
            "mesos.internal.AuthenticateMessage".into()
        ))
    );
    assert!(decode("", b"").is_err());
    // A truncated varint is not a message.
    assert!(matches!(
        decode(names::CALL, &[0x08, 0xff]),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        decode(names::LAUNCH_TASKS, &[0xff, 0xff, 0xff]),
        Err(DecodeError::Malformed { .. })
    ));
    // Legacy messages must name their framework.
    for name in [
        names::UNREGISTER_FRAMEWORK,
        names::DEACTIVATE_FRAMEWORK,
        names::LAUNCH_TASKS,
        names::KILL_TASK,
        names::REVIVE_OFFERS,
        names::STATUS_UPDATE_ACKNOWLEDGEMENT,
        names::RECONCILE_TASKS,
        names::RESOURCE_REQUEST,
        names::FRAMEWORK_TO_EXECUTOR,
    ] {
        assert!(
            matches!(
                decode(name, b""),
                Err(DecodeError::Missing {
                    field: "framework_id",
                    ..
                })
            ),
            "{name}"
        );
    }
}

fn master() -> Upid {
    Upid::new("master", Ipv4Addr::new(127, 0, 0, 1), 5050).unwrap()
}

fn event(ty: event::Type) -> Event {
    Event {
        r#type: Some(ty as i32),
        ..Event::default()
    }
}

fn one(out: Vec<(&'static str, Vec<u8>)>) -> (&'static str, Vec<u8>) {
    assert_eq!(out.len(), 1, "{out:?}");
    out.into_iter().next().unwrap()
}

#[test]
fn subscribed_is_registered_or_reregistered_with_the_master_info() {
    let master = master();
    let framework_id = fid("f1");
    let master_info = v1::MasterInfo {
        id: "m1".into(),
        ip: 16_777_343,
        port: 5050,
        pid: Some(master.to_string()),
        hostname: Some("localhost".into()),
        version: Some("1.11.0".into()),
        ..v1::MasterInfo::default()
    };
    let mut e = event(event::Type::Subscribed);
    e.subscribed = Some(event::Subscribed {
        framework_id: framework_id.clone(),
        heartbeat_interval_seconds: Some(15.0),
        master_info: Some(master_info.clone()),
    });
    let mut ctx = EncodeContext {
        framework_id: &framework_id,
        master: &master,
        reregistered: false,
    };
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::FRAMEWORK_REGISTERED);
    let m = msg::FrameworkRegisteredMessage::decode(&body[..]).unwrap();
    assert_eq!(m.framework_id, framework_id);
    assert_eq!(m.master_info, master_info);

    ctx.reregistered = true;
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::FRAMEWORK_REREGISTERED);
    let m = msg::FrameworkReregisteredMessage::decode(&body[..]).unwrap();
    assert_eq!(m.master_info, master_info);
}

#[test]
fn offers_have_one_empty_pid_each_and_rescind_names_the_offer() {
    let master = master();
    let framework_id = fid("f1");
    let ctx = EncodeContext {
        framework_id: &framework_id,
        master: &master,
        reregistered: false,
    };
    let offers: Vec<v1::Offer> = ["o1", "o2", "o3"]
        .iter()
        .map(|o| v1::Offer {
            id: oid(o),
            framework_id: framework_id.clone(),
            agent_id: aid("a1"),
            hostname: "h".into(),
            ..v1::Offer::default()
        })
        .collect();
    let mut e = event(event::Type::Offers);
    e.offers = Some(event::Offers {
        offers: offers.clone(),
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::RESOURCE_OFFERS);
    let m = msg::ResourceOffersMessage::decode(&body[..]).unwrap();
    assert_eq!(m.offers, offers);
    assert_eq!(m.pids, vec![String::new(); 3]);

    let mut e = event(event::Type::Rescind);
    e.rescind = Some(event::Rescind {
        offer_id: oid("o2"),
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::RESCIND_RESOURCE_OFFER);
    assert_eq!(
        msg::RescindResourceOfferMessage::decode(&body[..])
            .unwrap()
            .offer_id,
        oid("o2")
    );
}

#[test]
fn updates_carry_uuid_and_pid_only_when_they_want_an_acknowledgement() {
    let master = master();
    let framework_id = fid("f1");
    let ctx = EncodeContext {
        framework_id: &framework_id,
        master: &master,
        reregistered: false,
    };
    let status = v1::TaskStatus {
        task_id: tid("t1"),
        state: v1::TaskState::TaskRunning as i32,
        agent_id: Some(aid("a1")),
        executor_id: Some(eid("e1")),
        timestamp: Some(1_700_000_000.5),
        uuid: Some(vec![7; 16]),
        ..v1::TaskStatus::default()
    };
    let mut e = event(event::Type::Update);
    e.update = Some(event::Update {
        status: status.clone(),
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::STATUS_UPDATE);
    let m = msg::StatusUpdateMessage::decode(&body[..]).unwrap();
    assert_eq!(m.pid.as_deref(), Some("master@127.0.0.1:5050"));
    assert_eq!(m.update.framework_id, framework_id);
    assert_eq!(m.update.slave_id, Some(aid("a1")));
    assert_eq!(m.update.executor_id, Some(eid("e1")));
    assert_eq!(m.update.timestamp, 1_700_000_000.5);
    assert_eq!(m.update.uuid, Some(vec![7; 16]));
    assert_eq!(m.update.status, status);

    // A reconciliation answer: no uuid, so no uuid and no pid (nothing to acknowledge).
    let reconciled = v1::TaskStatus {
        task_id: tid("fake-marathon-pacemaker-task-1"),
        state: v1::TaskState::TaskLost as i32,
        agent_id: Some(aid("fake-marathon-pacemaker-agent-1")),
        timestamp: Some(1.0),
        source: Some(v1::task_status::Source::Master as i32),
        reason: Some(v1::task_status::Reason::Reconciliation as i32),
        ..v1::TaskStatus::default()
    };
    e.update = Some(event::Update {
        status: reconciled.clone(),
    });
    let m = msg::StatusUpdateMessage::decode(&one(encode(&e, &ctx)).1[..]).unwrap();
    assert_eq!(m.pid, None);
    assert_eq!(m.update.uuid, None);
    assert_eq!(m.update.executor_id, None);
    assert_eq!(m.update.status, reconciled);
    assert_eq!(m.update.framework_id, framework_id);
}

#[test]
fn failures_messages_and_errors() {
    let master = master();
    let framework_id = fid("f1");
    let ctx = EncodeContext {
        framework_id: &framework_id,
        master: &master,
        reregistered: false,
    };
    let mut e = event(event::Type::Failure);
    e.failure = Some(event::Failure {
        agent_id: Some(aid("a1")),
        executor_id: Some(eid("e1")),
        status: Some(137),
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::EXITED_EXECUTOR);
    assert_eq!(
        msg::ExitedExecutorMessage::decode(&body[..]).unwrap(),
        msg::ExitedExecutorMessage {
            slave_id: aid("a1"),
            framework_id: framework_id.clone(),
            executor_id: eid("e1"),
            status: 137
        }
    );
    e.failure = Some(event::Failure {
        agent_id: Some(aid("a1")),
        executor_id: None,
        status: None,
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::LOST_SLAVE);
    assert_eq!(
        msg::LostSlaveMessage::decode(&body[..]).unwrap().slave_id,
        aid("a1")
    );
    e.failure = Some(event::Failure::default());
    assert!(encode(&e, &ctx).is_empty());

    let mut e = event(event::Type::Message);
    e.message = Some(event::Message {
        agent_id: aid("a1"),
        executor_id: eid("e1"),
        data: b"hello".to_vec(),
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::EXECUTOR_TO_FRAMEWORK);
    assert_eq!(
        msg::ExecutorToFrameworkMessage::decode(&body[..]).unwrap(),
        msg::ExecutorToFrameworkMessage {
            slave_id: aid("a1"),
            framework_id: framework_id.clone(),
            executor_id: eid("e1"),
            data: b"hello".to_vec()
        }
    );

    let mut e = event(event::Type::Error);
    e.error = Some(event::Error {
        message: "Framework has been removed".into(),
    });
    let (name, body) = one(encode(&e, &ctx));
    assert_eq!(name, names::FRAMEWORK_ERROR);
    assert_eq!(
        msg::FrameworkErrorMessage::decode(&body[..])
            .unwrap()
            .message,
        "Framework has been removed"
    );
}

#[test]
fn heartbeats_and_the_rest_become_nothing() {
    let master = master();
    let framework_id = fid("f1");
    let ctx = EncodeContext {
        framework_id: &framework_id,
        master: &master,
        reregistered: false,
    };
    for t in [
        event::Type::Heartbeat,
        event::Type::InverseOffers,
        event::Type::RescindInverseOffer,
        event::Type::UpdateOperationStatus,
        event::Type::Unknown,
    ] {
        assert!(encode(&event(t), &ctx).is_empty(), "{t:?}");
    }
    // A type with its payload missing, or no type at all.
    assert!(encode(&event(event::Type::Offers), &ctx).is_empty());
    assert!(encode(&Event::default(), &ctx).is_empty());
    let odd = Event {
        r#type: Some(999),
        ..Event::default()
    };
    assert!(encode(&odd, &ctx).is_empty());
}

/// A (re)registration or a SUBSCRIBE missing a `required` field is no message to protobuf
/// (libprocess's handler fails to parse it and drops it), not one with an empty
/// FrameworkInfo: prost reads the absent fields as defaults, the decoder refuses them.
#[test]
fn registrations_missing_required_fields_are_refused() {
    let missing = |name: &'static str, body: &[u8], field: &'static str| {
        assert_eq!(
            decode(name, body),
            Err(DecodeError::Missing { name, field }),
            "{name} {body:?}"
        );
    };
    missing(names::REGISTER_FRAMEWORK, &[], "framework");
    missing(names::REREGISTER_FRAMEWORK, &[], "framework");
    // FrameworkInfo { user = "" } only, then { name = "n" } only.
    missing(
        names::REGISTER_FRAMEWORK,
        &[0x0a, 0x02, 0x0a, 0x00],
        "framework.name",
    );
    missing(
        names::REGISTER_FRAMEWORK,
        &[0x0a, 0x03, 0x12, 0x01, b'n'],
        "framework.user",
    );
    // A whole FrameworkInfo but no `failover = 3`.
    let framework = msg::RegisterFrameworkMessage {
        framework: info(None),
    }
    .encode_to_vec();
    let mut reregister = framework.clone();
    reregister[0] = 0x12; // field 2, length-delimited: ReregisterFrameworkMessage.framework
    missing(names::REREGISTER_FRAMEWORK, &reregister, "failover");
    reregister.extend_from_slice(&[0x18, 0x00]);
    assert!(decode(names::REREGISTER_FRAMEWORK, &reregister).is_ok());
    assert!(decode(names::REGISTER_FRAMEWORK, &framework).is_ok());
    // Call { type = SUBSCRIBE, subscribe = {} }.
    missing(
        names::CALL,
        &[0x10, 0x01, 0x1a, 0x00],
        "subscribe.framework_info",
    );
    // An empty string is a present one: `user = ""` is what drivers send.
    let empty_user = msg::RegisterFrameworkMessage {
        framework: v1::FrameworkInfo {
            user: String::new(),
            ..info(None)
        },
    };
    assert!(decode(names::REGISTER_FRAMEWORK, &empty_user.encode_to_vec()).is_ok());
}

proptest! {
    #[test]
    fn arbitrary_bytes_under_every_name_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        which in 0usize..names::INBOUND.len(),
    ) {
        let _ = decode(names::INBOUND[which], &body);
    }

    #[test]
    fn arbitrary_events_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(event) = Event::decode(&body[..]) {
            let master = master();
            let framework_id = fid("f1");
            let ctx = EncodeContext { framework_id: &framework_id, master: &master, reregistered: false };
            let _ = encode(&event, &ctx);
        }
    }
}
