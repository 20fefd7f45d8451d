use std::collections::BTreeMap;
use std::fmt::Debug;

use proptest::prelude::*;
use prost::Message as _;
use serde_json::json;

use super::*;
use crate::mesos::v1::scheduler::{
    attribute_constraint, call, event, offer_constraints, AttributeConstraint, Call, Event,
    OfferConstraints,
};
use crate::mesos::v1::{
    container_info, discovery_info, executor_info, framework_info, health_check, image, offer,
    resource, task_status, value, volume, AgentId, Attribute, CommandInfo, ContainerId,
    ContainerInfo, ContainerStatus, DiscoveryInfo, DurationInfo, Environment, ExecutorId,
    ExecutorInfo, Filters, FrameworkId, FrameworkInfo, HealthCheck, Image, KillPolicy, Label,
    Labels, MasterInfo, NetworkInfo, Offer, OfferId, Parameter, Port, Ports, Resource,
    TaskGroupInfo, TaskId, TaskInfo, TaskState, TaskStatus, TimeInfo, Value as MesosValue, Volume,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn round_trip<M>(message: &M)
where
    M: ReflectMessage + Default + PartialEq + Debug,
{
    let value = to_json_value(message);
    let back: M = from_json_value(value.clone()).unwrap_or_else(|e| panic!("{e}\n{value:#}"));
    assert_eq!(&back, message, "JSON value round trip");

    let text = to_json_string(message);
    assert!(!text.contains('\n'), "compact output");
    let back: M = from_json_str(&text).unwrap();
    assert_eq!(&back, message, "JSON text round trip");

    let bytes = message.encode_to_vec();
    let back = M::decode(bytes.as_slice()).unwrap();
    assert_eq!(&back, message, "protobuf round trip");
}

fn scalar(name: &str, amount: f64, role: &str) -> Resource {
    Resource {
        name: name.into(),
        r#type: value::Type::Scalar as i32,
        scalar: Some(value::Scalar { value: amount }),
        allocation_info: Some(resource::AllocationInfo {
            role: Some(role.into()),
        }),
        ..Default::default()
    }
}

fn ports(begin: u64, end: u64) -> Resource {
    Resource {
        name: "ports".into(),
        r#type: value::Type::Ranges as i32,
        ranges: Some(value::Ranges {
            range: vec![value::Range { begin, end }],
        }),
        ..Default::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels {
        labels: pairs
            .iter()
            .map(|(k, v)| Label {
                key: (*k).into(),
                value: Some((*v).into()),
            })
            .collect(),
    }
}

fn sample_task() -> TaskInfo {
    TaskInfo {
        name: "web".into(),
        task_id: TaskId {
            value: "web.1".into(),
        },
        agent_id: AgentId {
            value: "agent-1".into(),
        },
        resources: vec![
            scalar("cpus", 0.5, "*"),
            scalar("mem", 128.0, "*"),
            ports(31000, 31001),
        ],
        command: Some(CommandInfo {
            uris: vec![crate::mesos::v1::command_info::Uri {
                value: "http://example.com/app.tgz".into(),
                extract: Some(true),
                ..Default::default()
            }],
            environment: Some(Environment {
                variables: vec![crate::mesos::v1::environment::Variable {
                    name: "PORT".into(),
                    value: Some("31000".into()),
                    ..Default::default()
                }],
            }),
            shell: Some(false),
            value: Some("/bin/server".into()),
            arguments: vec!["server".into(), "--port=31000".into()],
            user: Some("nobody".into()),
        }),
        container: Some(ContainerInfo {
            r#type: container_info::Type::Docker as i32,
            volumes: vec![Volume {
                mode: volume::Mode::Ro as i32,
                container_path: "/etc/app".into(),
                host_path: Some("/srv/app".into()),
                ..Default::default()
            }],
            docker: Some(container_info::DockerInfo {
                image: "nginx:1.27".into(),
                network: Some(container_info::docker_info::Network::Bridge as i32),
                port_mappings: vec![container_info::docker_info::PortMapping {
                    host_port: 31000,
                    container_port: 80,
                    protocol: Some("tcp".into()),
                }],
                parameters: vec![Parameter {
                    key: "label".into(),
                    value: "a=b".into(),
                }],
                ..Default::default()
            }),
            network_infos: vec![NetworkInfo {
                name: Some("overlay".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        health_check: Some(HealthCheck {
            r#type: Some(health_check::Type::Http as i32),
            http: Some(health_check::HttpCheckInfo {
                port: 80,
                path: Some("/health".into()),
                ..Default::default()
            }),
            grace_period_seconds: Some(30.0),
            ..Default::default()
        }),
        kill_policy: Some(KillPolicy {
            grace_period: Some(DurationInfo {
                nanoseconds: 5_000_000_000,
            }),
        }),
        data: Some(vec![0, 1, 2, 253, 254, 255]),
        labels: Some(labels(&[("tier", "frontend"), ("empty", "")])),
        discovery: Some(DiscoveryInfo {
            visibility: discovery_info::Visibility::Cluster as i32,
            name: Some("web".into()),
            ports: Some(Ports {
                ports: vec![Port {
                    number: 31000,
                    name: Some("http".into()),
                    protocol: Some("tcp".into()),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        max_completion_time: Some(DurationInfo {
            nanoseconds: i64::MAX,
        }),
        limits: BTreeMap::from([
            ("cpus".to_owned(), value::Scalar { value: 1.0 }),
            ("mem".to_owned(), value::Scalar { value: 512.0 }),
        ]),
        ..Default::default()
    }
}

fn sample_framework_info() -> FrameworkInfo {
    FrameworkInfo {
        user: "root".into(),
        name: "marathon".into(),
        id: Some(FrameworkId {
            value: "fw-1".into(),
        }),
        failover_timeout: Some(604800.0),
        checkpoint: Some(true),
        roles: vec!["a".into(), "b".into()],
        hostname: Some("m1".into()),
        principal: Some("marathon".into()),
        webui_url: Some("http://m1:8080/".into()),
        capabilities: vec![
            framework_info::Capability {
                r#type: Some(framework_info::capability::Type::MultiRole as i32),
            },
            framework_info::Capability {
                r#type: Some(framework_info::capability::Type::PartitionAware as i32),
            },
        ],
        labels: Some(labels(&[("owner", "ops")])),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------

#[test]
fn task_info_round_trips() {
    round_trip(&sample_task());
    round_trip(&minimal_task());

    // Required message fields are plain (non-Option) fields in the Rust
    // types and are always written, so even a default TaskInfo round trips.
    round_trip(&TaskInfo::default());
    assert_eq!(
        to_json_value(&TaskInfo::default()),
        json!({"name": "", "task_id": {"value": ""}, "agent_id": {"value": ""}})
    );
    // JSON that lacks them is rejected, like Mesos does.
    let err =
        from_json_value::<TaskInfo>(json!({"name": "t", "agent_id": {"value": "a"}})).unwrap_err();
    assert_eq!(err.path(), "task_id");
    assert_eq!(err.message(), "missing required field");
}

fn minimal_task() -> TaskInfo {
    TaskInfo {
        name: String::new(),
        task_id: TaskId { value: "t".into() },
        agent_id: AgentId { value: "a".into() },
        ..Default::default()
    }
}

#[test]
fn calls_round_trip() {
    let fw = Some(FrameworkId {
        value: "fw-1".into(),
    });
    let calls = vec![
        Call {
            r#type: Some(call::Type::Subscribe as i32),
            subscribe: Some(call::Subscribe {
                framework_info: sample_framework_info(),
                suppressed_roles: vec!["b".into()],
                offer_constraints: Some(OfferConstraints {
                    role_constraints: BTreeMap::from([(
                        "a".to_owned(),
                        offer_constraints::RoleConstraints {
                            groups: vec![offer_constraints::role_constraints::Group {
                                attribute_constraints: vec![AttributeConstraint {
                                    selector: attribute_constraint::Selector {
                                        selector: Some(
                                            attribute_constraint::selector::Selector::AttributeName(
                                                "rack".into(),
                                            ),
                                        ),
                                    },
                                    predicate: attribute_constraint::Predicate {
                                        predicate: Some(
                                            attribute_constraint::predicate::Predicate::TextEquals(
                                                attribute_constraint::predicate::TextEquals {
                                                    value: "r1".into(),
                                                },
                                            ),
                                        ),
                                    },
                                }],
                            }],
                        },
                    )]),
                }),
            }),
            ..Default::default()
        },
        Call {
            framework_id: fw.clone(),
            r#type: Some(call::Type::Accept as i32),
            accept: Some(call::Accept {
                offer_ids: vec![OfferId { value: "o1".into() }],
                operations: vec![
                    offer::Operation {
                        r#type: Some(offer::operation::Type::Launch as i32),
                        launch: Some(offer::operation::Launch {
                            task_infos: vec![sample_task()],
                        }),
                        ..Default::default()
                    },
                    offer::Operation {
                        r#type: Some(offer::operation::Type::LaunchGroup as i32),
                        launch_group: Some(offer::operation::LaunchGroup {
                            executor: ExecutorInfo {
                                r#type: Some(executor_info::Type::Default as i32),
                                executor_id: ExecutorId {
                                    value: "pod-exec".into(),
                                },
                                ..Default::default()
                            },
                            task_group: TaskGroupInfo {
                                tasks: vec![sample_task(), minimal_task()],
                            },
                        }),
                        ..Default::default()
                    },
                    offer::Operation {
                        r#type: Some(offer::operation::Type::Reserve as i32),
                        reserve: Some(offer::operation::Reserve {
                            resources: vec![Resource {
                                reservations: vec![resource::ReservationInfo {
                                    r#type: Some(resource::reservation_info::Type::Dynamic as i32),
                                    role: Some("a".into()),
                                    principal: Some("p".into()),
                                    ..Default::default()
                                }],
                                disk: Some(resource::DiskInfo {
                                    persistence: Some(resource::disk_info::Persistence {
                                        id: "vol-1".into(),
                                        principal: None,
                                    }),
                                    ..Default::default()
                                }),
                                ..scalar("disk", 64.0, "a")
                            }],
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
                filters: Some(Filters {
                    refuse_seconds: Some(5.0),
                }),
            }),
            ..Default::default()
        },
        Call {
            framework_id: fw.clone(),
            r#type: Some(call::Type::Acknowledge as i32),
            acknowledge: Some(call::Acknowledge {
                agent_id: AgentId { value: "a1".into() },
                task_id: TaskId { value: "t1".into() },
                uuid: (0u8..16).collect(),
            }),
            ..Default::default()
        },
        Call {
            framework_id: fw.clone(),
            r#type: Some(call::Type::Reconcile as i32),
            reconcile: Some(call::Reconcile {
                tasks: vec![call::reconcile::Task {
                    task_id: TaskId { value: "t1".into() },
                    agent_id: None,
                }],
            }),
            ..Default::default()
        },
        Call {
            framework_id: fw.clone(),
            r#type: Some(call::Type::Teardown as i32),
            ..Default::default()
        },
        Call {
            framework_id: fw,
            r#type: Some(call::Type::UpdateFramework as i32),
            update_framework: Some(call::UpdateFramework {
                framework_info: sample_framework_info(),
                suppressed_roles: vec![],
                offer_constraints: Some(OfferConstraints::default()),
            }),
            ..Default::default()
        },
    ];
    for c in &calls {
        round_trip(c);
    }
}

fn sample_status() -> TaskStatus {
    TaskStatus {
        task_id: TaskId { value: "t1".into() },
        state: TaskState::TaskRunning as i32,
        message: Some("running".into()),
        source: Some(task_status::Source::Executor as i32),
        reason: Some(task_status::Reason::TaskHealthCheckStatusUpdated as i32),
        data: Some(b"payload".to_vec()),
        agent_id: Some(AgentId { value: "a1".into() }),
        executor_id: Some(ExecutorId { value: "e1".into() }),
        timestamp: Some(1_700_000_000.25),
        uuid: Some(vec![
            0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
        ]),
        healthy: Some(true),
        labels: Some(labels(&[("k", "v")])),
        container_status: Some(ContainerStatus {
            container_id: Some(ContainerId {
                value: "c2".into(),
                parent: Some(Box::new(ContainerId {
                    value: "c1".into(),
                    parent: None,
                })),
            }),
            network_infos: vec![NetworkInfo {
                ip_addresses: vec![crate::mesos::v1::network_info::IpAddress {
                    ip_address: Some("10.0.0.7".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            executor_pid: Some(4242),
            ..Default::default()
        }),
        unreachable_time: Some(TimeInfo {
            nanoseconds: 1_700_000_000_123_456_789,
        }),
        ..Default::default()
    }
}

fn sample_offer() -> Offer {
    Offer {
        id: OfferId { value: "o1".into() },
        framework_id: FrameworkId {
            value: "fw-1".into(),
        },
        agent_id: AgentId { value: "a1".into() },
        hostname: "agent.host".into(),
        url: Some(crate::mesos::v1::Url {
            scheme: "http".into(),
            address: crate::mesos::v1::Address {
                hostname: Some("agent.host".into()),
                ip: Some("10.0.0.2".into()),
                port: 5051,
            },
            path: Some("/slave(1)".into()),
            ..Default::default()
        }),
        resources: vec![scalar("cpus", 2.0, "a"), ports(31000, 32000)],
        attributes: vec![Attribute {
            name: "os".into(),
            r#type: value::Type::Text as i32,
            text: Some(value::Text {
                value: "debian".into(),
            }),
            ..Default::default()
        }],
        allocation_info: Some(resource::AllocationInfo {
            role: Some("a".into()),
        }),
        ..Default::default()
    }
}

#[test]
fn events_round_trip() {
    let events = vec![
        Event {
            r#type: Some(event::Type::Subscribed as i32),
            subscribed: Some(event::Subscribed {
                framework_id: FrameworkId {
                    value: "fw-1".into(),
                },
                heartbeat_interval_seconds: Some(15.0),
                master_info: Some(MasterInfo {
                    id: "master-1".into(),
                    ip: 0x0500_000a,
                    port: 5050,
                    pid: Some("master@10.0.0.5:5050".into()),
                    hostname: Some("m1".into()),
                    version: Some("1.11.0".into()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        },
        Event {
            r#type: Some(event::Type::Offers as i32),
            offers: Some(event::Offers {
                offers: vec![sample_offer(), sample_offer()],
            }),
            ..Default::default()
        },
        Event {
            r#type: Some(event::Type::Update as i32),
            update: Some(event::Update {
                status: sample_status(),
            }),
            ..Default::default()
        },
        Event {
            r#type: Some(event::Type::Rescind as i32),
            rescind: Some(event::Rescind {
                offer_id: OfferId { value: "o1".into() },
            }),
            ..Default::default()
        },
        Event {
            r#type: Some(event::Type::Failure as i32),
            failure: Some(event::Failure {
                agent_id: Some(AgentId { value: "a1".into() }),
                executor_id: None,
                status: Some(-1),
            }),
            ..Default::default()
        },
        Event {
            r#type: Some(event::Type::Error as i32),
            error: Some(event::Error {
                message: "Framework has been removed".into(),
            }),
            ..Default::default()
        },
        Event {
            r#type: Some(event::Type::Heartbeat as i32),
            ..Default::default()
        },
    ];
    for e in &events {
        round_trip(e);
    }
    assert_eq!(
        to_json_string(&events[events.len() - 1]),
        r#"{"type":"HEARTBEAT"}"#
    );
}

// ---------------------------------------------------------------------
// Golden inputs from Mesos' documentation.
// ---------------------------------------------------------------------

#[test]
fn golden_subscribe_call() {
    let call: Call = from_json_slice(&fixture("subscribe_call.json")).unwrap();
    assert_eq!(call.r#type(), call::Type::Subscribe);
    assert_eq!(call.framework_id, None);
    let subscribe = call.subscribe.as_ref().unwrap();
    let info = &subscribe.framework_info;
    assert_eq!(info.user, "foo");
    assert_eq!(info.name, "Example HTTP Framework");
    assert_eq!(info.roles, vec!["test1", "test2"]);
    assert_eq!(info.capabilities.len(), 1);
    assert_eq!(
        info.capabilities[0].r#type(),
        framework_info::capability::Type::MultiRole
    );
    // Unset proto2 defaults read back as their defaults.
    assert_eq!(info.failover_timeout, None);
    assert_eq!(info.failover_timeout(), 0.0);
    assert_eq!(info.role(), "*");
    assert_eq!(subscribe.suppressed_roles, vec!["test2"]);

    let constraints = subscribe.offer_constraints.as_ref().unwrap();
    let role = &constraints.role_constraints["test1"];
    assert_eq!(role.groups.len(), 1);
    let constraint = &role.groups[0].attribute_constraints[0];
    assert_eq!(
        constraint.selector.selector,
        Some(attribute_constraint::selector::Selector::AttributeName(
            "foo".into()
        ))
    );
    assert_eq!(
        constraint.predicate.predicate,
        Some(attribute_constraint::predicate::Predicate::Exists(
            attribute_constraint::predicate::Exists {}
        ))
    );

    // Writing it back gives the same document (modulo whitespace and key
    // order).
    let original: Json = serde_json::from_slice(&fixture("subscribe_call.json")).unwrap();
    assert_eq!(to_json_value(&call), original);
    round_trip(&call);
}

#[test]
fn golden_subscribe_call_with_v0_force_field() {
    let call: Call = from_json_slice(&fixture("subscribe_call_legacy.json")).unwrap();
    assert_eq!(call.r#type(), call::Type::Subscribe);
    let info = call.subscribe.unwrap().framework_info;
    assert_eq!(info.user, "foo");
    assert_eq!(info.name, "Example HTTP Framework");
}

#[test]
fn golden_offers_event() {
    let event: Event = from_json_slice(&fixture("offers_event.json")).unwrap();
    assert_eq!(event.r#type(), event::Type::Offers);
    let offers = &event.offers.as_ref().unwrap().offers;
    assert_eq!(offers.len(), 1);
    let offer = &offers[0];
    assert_eq!(offer.id.value, "12214-23523-O235235");
    assert_eq!(offer.framework_id.value, "12124-235325-32425");
    assert_eq!(offer.agent_id.value, "12325-23523-S23523");
    assert_eq!(offer.hostname, "agent.host");
    assert_eq!(
        offer.allocation_info.as_ref().unwrap().role.as_deref(),
        Some("engineering")
    );
    assert_eq!(offer.resources.len(), 1);
    let cpus = &offer.resources[0];
    assert_eq!(cpus.name, "cpus");
    assert_eq!(cpus.r#type(), value::Type::Scalar);
    assert_eq!(cpus.scalar.as_ref().unwrap().value, 2.0);
    assert_eq!(cpus.role.as_deref(), Some("*"));
    assert_eq!(
        cpus.allocation_info.as_ref().unwrap().role.as_deref(),
        Some("engineering")
    );
    assert_eq!(offer.attributes.len(), 1);
    assert_eq!(offer.attributes[0].name, "os");
    assert_eq!(offer.attributes[0].r#type(), value::Type::Text);
    assert_eq!(
        offer.attributes[0].text.as_ref().unwrap().value,
        "ubuntu16.04"
    );
    assert_eq!(offer.executor_ids[0].value, "12214-23523-my-executor");
    round_trip(&event);

    // The docs' literal form (array directly under `offers`) is not what
    // the protocol defines; it is rejected with a pointer to the field.
    let err = from_json_slice::<Event>(&fixture("offers_event_doc_literal.json")).unwrap_err();
    assert_eq!(err.path(), "offers");
    assert_eq!(err.message_type(), Some("mesos.v1.scheduler.Event"));
}

#[test]
fn golden_update_event() {
    let event: Event = from_json_slice(&fixture("update_event.json")).unwrap();
    assert_eq!(event.r#type(), event::Type::Update);
    let status = event.update.unwrap().status;
    assert_eq!(status.task_id.value, "12344-my-task");
    assert_eq!(status.state(), TaskState::TaskRunning);
    assert_eq!(status.source(), task_status::Source::Executor);
    let uuid = status.uuid.unwrap();
    assert_eq!(uuid.len(), 18);
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(&uuid),
        "adfadfadbhgvjayd23r2uahj"
    );
    // "bytes" is not a TaskStatus field: ignored.
    assert_eq!(status.data, None);
}

// ---------------------------------------------------------------------
// Encoding details.
// ---------------------------------------------------------------------

#[test]
fn writes_proto_names_enum_names_and_only_set_fields() {
    let event = Event {
        r#type: Some(event::Type::Subscribed as i32),
        subscribed: Some(event::Subscribed {
            framework_id: FrameworkId { value: "f".into() },
            heartbeat_interval_seconds: Some(15.0),
            master_info: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        to_json_value(&event),
        json!({
            "type": "SUBSCRIBED",
            "subscribed": {
                "framework_id": {"value": "f"},
                "heartbeat_interval_seconds": 15.0
            }
        })
    );

    // Unset optional fields with proto2 defaults are not written...
    let info = FrameworkInfo {
        user: "u".into(),
        name: "n".into(),
        ..Default::default()
    };
    assert_eq!(to_json_value(&info), json!({"user": "u", "name": "n"}));
    assert_eq!(to_json_value(&Filters::default()), json!({}));

    // ...but explicitly set ones are, even when equal to the default.
    let info = FrameworkInfo {
        checkpoint: Some(false),
        role: Some("*".into()),
        ..info
    };
    assert_eq!(
        to_json_value(&info),
        json!({"user": "u", "name": "n", "checkpoint": false, "role": "*"})
    );

    // Required scalar fields are always written.
    let address = crate::mesos::v1::Address::default();
    assert_eq!(to_json_value(&address), json!({"port": 0}));

    let status = TaskStatus {
        task_id: TaskId { value: "t".into() },
        state: TaskState::TaskStarting as i32, // enum value 0
        ..Default::default()
    };
    assert_eq!(
        to_json_value(&status),
        json!({"task_id": {"value": "t"}, "state": "TASK_STARTING"})
    );
}

#[test]
fn sixty_four_bit_integers_are_json_numbers() {
    let time = TimeInfo {
        nanoseconds: 1_700_000_000_123_456_789,
    };
    assert_eq!(
        to_json_string(&time),
        r#"{"nanoseconds":1700000000123456789}"#
    );
    let range = value::Range {
        begin: 0,
        end: u64::MAX,
    };
    assert_eq!(
        to_json_string(&range),
        r#"{"begin":0,"end":18446744073709551615}"#
    );
    let negative = DurationInfo {
        nanoseconds: i64::MIN,
    };
    assert_eq!(
        to_json_string(&negative),
        r#"{"nanoseconds":-9223372036854775808}"#
    );
    assert_eq!(
        from_json_str::<value::Range>(r#"{"begin":0,"end":18446744073709551615}"#).unwrap(),
        range
    );
    // Numeric strings are accepted too (as Mesos does).
    assert_eq!(
        from_json_str::<TimeInfo>(r#"{"nanoseconds":"1700000000123456789"}"#).unwrap(),
        time
    );
}

#[test]
fn bytes_are_base64() {
    let ack = call::Acknowledge {
        agent_id: AgentId { value: "a".into() },
        task_id: TaskId { value: "t".into() },
        uuid: vec![0xfb, 0xff, 0xfe, 0x01],
    };
    let value = to_json_value(&ack);
    assert_eq!(value["uuid"], json!("+//+AQ=="));
    // Unpadded and URL-safe forms are accepted.
    for text in ["+//+AQ==", "+//+AQ", "-__-AQ==", "-__-AQ"] {
        let mut v = value.clone();
        v["uuid"] = json!(text);
        assert_eq!(
            from_json_value::<call::Acknowledge>(v).unwrap(),
            ack,
            "{text}"
        );
    }
    let mut v = value;
    v["uuid"] = json!("not base64!");
    let err = from_json_value::<call::Acknowledge>(v).unwrap_err();
    assert_eq!(err.path(), "uuid");
}

#[test]
fn doubles_and_numeric_leniency() {
    let s = value::Scalar {
        value: f64::INFINITY,
    };
    assert_eq!(to_json_value(&s), json!({"value": "Infinity"}));
    round_trip(&s);
    let nan: value::Scalar = from_json_str(r#"{"value":"NaN"}"#).unwrap();
    assert!(nan.value.is_nan());
    let neg: value::Scalar = from_json_str(r#"{"value":"-Infinity"}"#).unwrap();
    assert_eq!(neg.value, f64::NEG_INFINITY);
    assert_eq!(
        from_json_str::<value::Scalar>(r#"{"value":"0.5"}"#)
            .unwrap()
            .value,
        0.5
    );
    assert_eq!(
        from_json_str::<value::Scalar>(r#"{"value":3}"#)
            .unwrap()
            .value,
        3.0
    );

    // Integral floats and numeric strings for integer fields.
    let m: MasterInfo = from_json_str(r#"{"id":"m","ip":"16777343","port":5050.0}"#).unwrap();
    assert_eq!((m.ip, m.port), (16777343, 5050));

    for (input, path) in [
        (r#"{"id":"m","ip":1,"port":1.5}"#, "port"),
        (r#"{"id":"m","ip":-1,"port":1}"#, "ip"),
        (r#"{"id":"m","ip":4294967296,"port":1}"#, "ip"),
        (r#"{"id":"m","ip":" 1","port":1}"#, "ip"),
        (r#"{"id":"m","ip":1,"port":true}"#, "port"),
        (r#"{"id":7,"ip":1,"port":1}"#, "id"),
    ] {
        let err = from_json_str::<MasterInfo>(input).unwrap_err();
        assert_eq!(err.path(), path, "{input}: {err}");
    }
    let err = from_json_str::<crate::mesos::v1::Address>(r#"{"port":2147483648}"#).unwrap_err();
    assert_eq!(err.path(), "port");
    assert!(err.to_string().contains("out of range"), "{err}");
}

// ---------------------------------------------------------------------
// Leniency and errors on input.
// ---------------------------------------------------------------------

#[test]
fn unknown_fields_and_nulls_are_accepted() {
    let input = json!({
        "type": "SUBSCRIBE",
        "not_a_field": {"nested": [1, 2, {"x": null}]},
        "framework_id": null,
        "subscribe": {
            "framework_info": {
                "user": "u",
                "name": "n",
                "id": null,
                "roles": ["a", null, "b"],
                "capabilities": [null, {"type": "MULTI_ROLE", "extra": true}],
                "labels": null,
                "offer_filters": {"a": null},
                "webuiUrl": "http://x/"
            },
            "suppressed_roles": null,
            "force": true
        }
    });
    let call: Call = from_json_value(input).unwrap();
    let info = call.subscribe.unwrap().framework_info;
    assert_eq!(info.roles, vec!["a", "b"]);
    assert_eq!(info.capabilities.len(), 1);
    assert_eq!(info.id, None);
    assert!(info.offer_filters.is_empty());
    // lowerCamelCase JSON names are accepted as a fallback.
    assert_eq!(info.webui_url.as_deref(), Some("http://x/"));
    assert_eq!(call.framework_id, None);
}

#[test]
fn unknown_enum_names() {
    // Optional: dropped (as Mesos does).
    let call: Call = from_json_value(json!({"type": "NOT_A_CALL"})).unwrap();
    assert_eq!(call.r#type, None);
    assert_eq!(call.r#type(), call::Type::Unknown);
    // Repeated: dropped element.
    let info: FrameworkInfo = from_json_value(json!({
        "user": "u", "name": "n",
        "capabilities": [{"type": "FUTURE_CAPABILITY"}, {"type": "MULTI_ROLE"}]
    }))
    .unwrap();
    assert_eq!(info.capabilities[0].r#type, None);
    assert_eq!(
        info.capabilities[1].r#type(),
        framework_info::capability::Type::MultiRole
    );
    // Required: an error.
    let err = from_json_value::<TaskStatus>(json!({
        "task_id": {"value": "t"}, "state": "TASK_EXPLODED"
    }))
    .unwrap_err();
    assert_eq!(err.path(), "state");
    // Known numbers are accepted.
    let status: TaskStatus =
        from_json_value(json!({"task_id": {"value": "t"}, "state": 6})).unwrap();
    assert_eq!(status.state(), TaskState::TaskStaging);
}

#[test]
fn errors_name_the_field_path() {
    let cases = [
        (
            json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": 5}}}),
            "subscribe.framework_info.name",
        ),
        (
            json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"name": "n"}}}),
            "subscribe.framework_info.user",
        ),
        (
            json!({"type": "SUBSCRIBE", "subscribe": {}}),
            "subscribe.framework_info",
        ),
        (
            json!({"subscribe": {"framework_info": {"user": "u", "name": "n",
                "capabilities": [{"type": "MULTI_ROLE"}, {"type": {}}]}}}),
            "subscribe.framework_info.capabilities[1].type",
        ),
        (
            json!({"accept": {"operations": [{"launch": {"task_infos": [
                {"name": "t", "task_id": {"value": "t"}, "agent_id": {"value": "a"},
                 "limits": {"cpus": "Infinity"}}]}}]}}),
            "accept.operations[0].launch.task_infos[0].limits[\"cpus\"]",
        ),
        (
            json!({"accept": {"offer_ids": {"value": "o"}}}),
            "accept.offer_ids",
        ),
        (json!({"framework_id": "fw"}), "framework_id"),
        (json!({"framework_id": {}}), "framework_id.value"),
    ];
    for (input, path) in cases {
        let err = from_json_value::<Call>(input.clone()).unwrap_err();
        assert_eq!(err.path(), path, "{input}: {err}");
        let text = err.to_string();
        assert!(text.contains("mesos.v1.scheduler.Call"), "{text}");
        assert!(text.contains(&format!("`{path}`")), "{text}");
    }
    let err = from_json_value::<Call>(json!({"framework_id": {}})).unwrap_err();
    assert_eq!(err.message(), "missing required field");
}

#[test]
fn malformed_json_is_an_error() {
    for input in [
        &b""[..],
        b"{",
        b"{\"type\":",
        b"{\"type\": \"SUBSCRIBE\"} trailing",
        b"\xff\xfe",
        b"[]",
        b"null",
        b"\"SUBSCRIBE\"",
        b"42",
        b"{\"type\": 'SUBSCRIBE'}",
    ] {
        let err = from_json_slice::<Call>(input).unwrap_err();
        assert_eq!(err.path(), "");
        assert!(
            err.to_string()
                .starts_with("invalid JSON for mesos.v1.scheduler.Call"),
            "{err}"
        );
    }
    let err: Box<dyn std::error::Error> = Box::new(from_json_slice::<Call>(b"{").unwrap_err());
    assert!(err.to_string().contains("malformed JSON"));
}

#[test]
fn deep_nesting_is_rejected_without_panicking() {
    let mut value = json!({"value": "leaf"});
    for i in 0..200 {
        value = json!({"value": format!("c{i}"), "parent": value});
    }
    let err = from_json_value::<ContainerId>(value).unwrap_err();
    assert!(err.message().contains("nested deeper"), "{err}");

    // Reasonable nesting works and round trips.
    let mut id = ContainerId {
        value: "root".into(),
        parent: None,
    };
    for i in 0..40 {
        id = ContainerId {
            value: format!("c{i}"),
            parent: Some(Box::new(id)),
        };
    }
    round_trip(&id);

    // Writing a message deeper than protobuf's decode limit does not panic.
    for i in 0..150 {
        id = ContainerId {
            value: format!("d{i}"),
            parent: Some(Box::new(id)),
        };
    }
    assert_eq!(to_json_value(&id), Json::Null);
}

#[test]
fn required_enums_without_zero_default_to_their_first_value() {
    assert_eq!(
        ContainerInfo::default().r#type(),
        container_info::Type::Docker
    );
    assert_eq!(Image::default().r#type(), image::Type::Appc);
    assert_eq!(Volume::default().mode(), volume::Mode::Rw);
    round_trip(&ContainerInfo::default());
    round_trip(&Image::default());
    round_trip(&Volume::default());
}

#[test]
fn every_message_type_is_reflectable() {
    assert_eq!(
        TaskInfo::default().descriptor().full_name(),
        "mesos.v1.TaskInfo"
    );
    assert_eq!(
        call::Subscribe::default().descriptor().full_name(),
        "mesos.v1.scheduler.Call.Subscribe"
    );
    assert_eq!(Image::default().descriptor().full_name(), "mesos.v1.Image");
    assert_eq!(
        image::Docker::default().descriptor().full_name(),
        "mesos.v1.Image.Docker"
    );
    assert_eq!(
        MesosValue::default().descriptor().full_name(),
        "mesos.v1.Value"
    );
    // Every message in the pool can go through JSON dynamically.
    for desc in crate::DESCRIPTOR_POOL.all_messages() {
        let empty = DynamicMessage::new(desc.clone());
        assert_eq!(
            dynamic_to_json_value(&empty),
            json!({}),
            "{}",
            desc.full_name()
        );
    }
}

// ---------------------------------------------------------------------
// Never panic on arbitrary input.
// ---------------------------------------------------------------------

const KEYS: &[&str] = &[
    "type",
    "subscribe",
    "framework_info",
    "framework_id",
    "user",
    "name",
    "roles",
    "capabilities",
    "accept",
    "offer_ids",
    "operations",
    "launch",
    "launch_group",
    "task_infos",
    "task_group",
    "tasks",
    "executor",
    "executor_id",
    "value",
    "task_id",
    "agent_id",
    "resources",
    "scalar",
    "ranges",
    "range",
    "begin",
    "end",
    "limits",
    "uuid",
    "data",
    "filters",
    "refuse_seconds",
    "kill",
    "reconcile",
    "container",
    "docker",
    "port_mappings",
    "host_port",
    "labels",
    "key",
    "offer_constraints",
    "role_constraints",
    "groups",
    "attribute_constraints",
    "selector",
    "predicate",
    "exists",
    "attribute_name",
    "offers",
    "update",
    "status",
    "state",
    "parent",
    "nanoseconds",
    "unreachable_time",
    "container_status",
    "network_infos",
];

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Json::Null, Json::Number)),
        "[a-zA-Z0-9_+/=. -]{0,12}".prop_map(Json::String),
        prop::sample::select(vec![
            "TASK_RUNNING",
            "SUBSCRIBE",
            "ACCEPT",
            "LAUNCH",
            "SCALAR",
            "DOCKER",
            "Infinity",
            "NaN",
            "-1",
            "1e400",
            "true",
            "AAAA",
            "18446744073709551616",
        ])
        .prop_map(|s| Json::String(s.to_owned())),
    ];
    leaf.prop_recursive(8, 128, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS.to_vec()).prop_map(str::to_owned),
                        "[a-z_]{0,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        if let Ok(call) = from_json_value::<Call>(value.clone()) {
            // Whatever was accepted must survive a round trip (compared as
            // JSON so that NaN equals NaN).
            let written = to_json_value(&call);
            let again: Call = from_json_value(written.clone()).unwrap();
            prop_assert_eq!(to_json_value(&again), written);
        }
        let _ = from_json_value::<Event>(value.clone());
        let _ = from_json_value::<TaskInfo>(value.clone());
        let _ = from_json_value::<Resource>(value);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = from_json_slice::<Call>(&bytes);
        let _ = from_json_slice::<Event>(&bytes);
    }

    #[test]
    fn scalar_values_round_trip(v in any::<f64>().prop_filter("not NaN", |f| !f.is_nan()),
                                n in any::<i64>(), u in any::<u64>()) {
        round_trip(&value::Scalar { value: v });
        round_trip(&DurationInfo { nanoseconds: n });
        round_trip(&value::Range { begin: u, end: u });
    }
}

// ---------------------------------------------------------------------
// Enum values match Mesos.
// ---------------------------------------------------------------------

#[test]
fn task_states_match_mesos() {
    let expected = [
        ("TASK_STAGING", 6),
        ("TASK_STARTING", 0),
        ("TASK_RUNNING", 1),
        ("TASK_KILLING", 8),
        ("TASK_FINISHED", 2),
        ("TASK_FAILED", 3),
        ("TASK_KILLED", 4),
        ("TASK_ERROR", 7),
        ("TASK_LOST", 5),
        ("TASK_DROPPED", 9),
        ("TASK_UNREACHABLE", 10),
        ("TASK_GONE", 11),
        ("TASK_GONE_BY_OPERATOR", 12),
        ("TASK_UNKNOWN", 13),
    ];
    for (name, number) in expected {
        let state = TaskState::from_str_name(name).unwrap();
        assert_eq!(state as i32, number, "{name}");
        assert_eq!(state.as_str_name(), name);
    }
    let desc = crate::DESCRIPTOR_POOL
        .get_enum_by_name("mesos.v1.TaskState")
        .unwrap();
    assert_eq!(desc.values().count(), expected.len());
}

#[test]
fn task_status_reasons_and_sources_are_complete() {
    let reasons = crate::DESCRIPTOR_POOL
        .get_enum_by_name("mesos.v1.TaskStatus.Reason")
        .unwrap();
    let mut numbers: Vec<i32> = reasons.values().map(|v| v.number()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..=34).collect::<Vec<_>>());
    assert_eq!(
        task_status::Reason::Reconciliation.as_str_name(),
        "REASON_RECONCILIATION"
    );
    assert_eq!(task_status::Reason::Reconciliation as i32, 9);
    assert_eq!(task_status::Reason::AgentDraining as i32, 34);
    assert_eq!(task_status::Source::Master as i32, 0);
    assert_eq!(task_status::Source::Agent as i32, 1);
    assert_eq!(task_status::Source::Executor as i32, 2);
}

#[test]
fn call_and_event_types_match_mesos() {
    let calls = [
        ("SUBSCRIBE", 1),
        ("TEARDOWN", 2),
        ("ACCEPT", 3),
        ("DECLINE", 4),
        ("REVIVE", 5),
        ("KILL", 6),
        ("SHUTDOWN", 7),
        ("ACKNOWLEDGE", 8),
        ("RECONCILE", 9),
        ("MESSAGE", 10),
        ("REQUEST", 11),
        ("SUPPRESS", 12),
        ("ACCEPT_INVERSE_OFFERS", 13),
        ("DECLINE_INVERSE_OFFERS", 14),
        ("ACKNOWLEDGE_OPERATION_STATUS", 15),
        ("RECONCILE_OPERATIONS", 16),
        ("UPDATE_FRAMEWORK", 17),
    ];
    for (name, number) in calls {
        assert_eq!(
            call::Type::from_str_name(name).unwrap() as i32,
            number,
            "{name}"
        );
    }
    let events = [
        ("SUBSCRIBED", 1),
        ("OFFERS", 2),
        ("RESCIND", 3),
        ("UPDATE", 4),
        ("MESSAGE", 5),
        ("FAILURE", 6),
        ("ERROR", 7),
        ("HEARTBEAT", 8),
        ("INVERSE_OFFERS", 9),
        ("RESCIND_INVERSE_OFFER", 10),
        ("UPDATE_OPERATION_STATUS", 11),
    ];
    for (name, number) in events {
        assert_eq!(
            event::Type::from_str_name(name).unwrap() as i32,
            number,
            "{name}"
        );
    }
    // Payload field numbers.
    let call_desc = Call::default().descriptor();
    for (field, number) in [
        ("framework_id", 1),
        ("type", 2),
        ("subscribe", 3),
        ("accept", 4),
        ("decline", 5),
        ("kill", 6),
        ("shutdown", 7),
        ("acknowledge", 8),
        ("reconcile", 9),
        ("message", 10),
        ("request", 11),
        ("accept_inverse_offers", 13),
        ("decline_inverse_offers", 14),
        ("revive", 15),
        ("suppress", 16),
        ("acknowledge_operation_status", 17),
        ("reconcile_operations", 18),
        ("update_framework", 19),
    ] {
        assert_eq!(
            call_desc.get_field_by_name(field).unwrap().number(),
            number,
            "{field}"
        );
    }
    let subscribe = call::Subscribe::default().descriptor();
    assert_eq!(
        subscribe
            .get_field_by_name("suppressed_roles")
            .unwrap()
            .number(),
        2
    );
    assert_eq!(
        subscribe
            .get_field_by_name("offer_constraints")
            .unwrap()
            .number(),
        3
    );
}

#[test]
fn binary_protobuf_interoperates_with_known_encoding() {
    // Call{type: TEARDOWN, framework_id: {value: "f"}} as protoc would
    // encode it: field 1 (len 3: field 1 "f"), field 2 varint 2.
    let bytes = [0x0a, 0x03, 0x0a, 0x01, b'f', 0x10, 0x02];
    let call = Call::decode(&bytes[..]).unwrap();
    assert_eq!(call.r#type(), call::Type::Teardown);
    assert_eq!(call.framework_id.unwrap().value, "f");
    // Docker network default comes from the proto2 default.
    let docker = container_info::DockerInfo::default();
    assert_eq!(docker.network(), container_info::docker_info::Network::Host);
    assert!(crate::mesos::v1::CommandInfo::default().shell());
}
