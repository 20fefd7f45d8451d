//! The v0 scheduler API as typed v1 calls and events: pure functions, no IO.
//!
//! Inbound, [`decode`] reads a libprocess message from a scheduler (its name and body) as the
//! v1 `Call` the real master treats it as (`src/master/master.cpp`: `Master::receive` for
//! `mesos.scheduler.Call`, and the handlers of the legacy messages older drivers and
//! mesos-go's v0 driver send). Outbound, [`encode`] writes a v1 `Event` for a pid-based
//! framework as the `mesos.internal` message the real master sends it instead
//! (`Framework::send` in `src/master/master.hpp`).

use prost::Message as _;
use shoal_proto::mesos::internal as msg;
use shoal_proto::mesos::scheduler as v0;
use shoal_proto::mesos::v1;
use shoal_proto::mesos::v1::scheduler::{call, event, Call, Event};

use crate::libprocess::Upid;

/// The message names (protobuf full type names) of the v0 scheduler API.
pub mod names {
    pub const CALL: &str = "mesos.scheduler.Call";

    pub const REGISTER_FRAMEWORK: &str = "mesos.internal.RegisterFrameworkMessage";
    pub const REREGISTER_FRAMEWORK: &str = "mesos.internal.ReregisterFrameworkMessage";
    pub const UNREGISTER_FRAMEWORK: &str = "mesos.internal.UnregisterFrameworkMessage";
    pub const DEACTIVATE_FRAMEWORK: &str = "mesos.internal.DeactivateFrameworkMessage";
    pub const LAUNCH_TASKS: &str = "mesos.internal.LaunchTasksMessage";
    pub const KILL_TASK: &str = "mesos.internal.KillTaskMessage";
    pub const REVIVE_OFFERS: &str = "mesos.internal.ReviveOffersMessage";
    pub const STATUS_UPDATE_ACKNOWLEDGEMENT: &str =
        "mesos.internal.StatusUpdateAcknowledgementMessage";
    pub const RECONCILE_TASKS: &str = "mesos.internal.ReconcileTasksMessage";
    pub const RESOURCE_REQUEST: &str = "mesos.internal.ResourceRequestMessage";
    pub const FRAMEWORK_TO_EXECUTOR: &str = "mesos.internal.FrameworkToExecutorMessage";

    pub const FRAMEWORK_REGISTERED: &str = "mesos.internal.FrameworkRegisteredMessage";
    pub const FRAMEWORK_REREGISTERED: &str = "mesos.internal.FrameworkReregisteredMessage";
    pub const RESOURCE_OFFERS: &str = "mesos.internal.ResourceOffersMessage";
    pub const RESCIND_RESOURCE_OFFER: &str = "mesos.internal.RescindResourceOfferMessage";
    pub const STATUS_UPDATE: &str = "mesos.internal.StatusUpdateMessage";
    pub const LOST_SLAVE: &str = "mesos.internal.LostSlaveMessage";
    pub const EXITED_EXECUTOR: &str = "mesos.internal.ExitedExecutorMessage";
    pub const EXECUTOR_TO_FRAMEWORK: &str = "mesos.internal.ExecutorToFrameworkMessage";
    pub const FRAMEWORK_ERROR: &str = "mesos.internal.FrameworkErrorMessage";

    /// Every name [`super::decode`] reads.
    pub const INBOUND: &[&str] = &[
        CALL,
        REGISTER_FRAMEWORK,
        REREGISTER_FRAMEWORK,
        UNREGISTER_FRAMEWORK,
        DEACTIVATE_FRAMEWORK,
        LAUNCH_TASKS,
        KILL_TASK,
        REVIVE_OFFERS,
        STATUS_UPDATE_ACKNOWLEDGEMENT,
        RECONCILE_TASKS,
        RESOURCE_REQUEST,
        FRAMEWORK_TO_EXECUTOR,
    ];

    /// Every name [`super::encode`] writes.
    pub const OUTBOUND: &[&str] = &[
        FRAMEWORK_REGISTERED,
        FRAMEWORK_REREGISTERED,
        RESOURCE_OFFERS,
        RESCIND_RESOURCE_OFFER,
        STATUS_UPDATE,
        LOST_SLAVE,
        EXITED_EXECUTOR,
        EXECUTOR_TO_FRAMEWORK,
        FRAMEWORK_ERROR,
    ];
}

/// A scheduler's message, as the master acts on it.
#[derive(Debug, Clone, PartialEq)]
pub enum V0Call {
    /// A v1 call. `call.framework_id` is the framework the message names: the `Call`'s own
    /// field, or a legacy message's `framework_id` (for a (re)registration, its
    /// `FrameworkInfo.id`, when it has one), so the caller can check that the sender is that
    /// framework's UPID, as the master does before acting on anything but a SUBSCRIBE.
    Call {
        /// Boxed: a `Call` is large, and most messages are one.
        call: Box<Call>,
        /// SUBSCRIBE's v0-only `force`: the driver's first re-registration after a scheduler
        /// failover (a `ReregisterFrameworkMessage`'s `failover`); it makes the master treat
        /// the subscription as a failover and answer `FrameworkRegisteredMessage`.
        force: bool,
    },
    /// `DeactivateFrameworkMessage` (the driver's `abort()`): the master deactivates the
    /// framework (no offers, its failover timeout not started); v1 has no such call.
    Deactivate { framework_id: v1::FrameworkId },
}

impl V0Call {
    /// The framework the message names, if any (a first registration names none).
    pub fn framework_id(&self) -> Option<&v1::FrameworkId> {
        match self {
            V0Call::Call { call, .. } => call.framework_id.as_ref(),
            V0Call::Deactivate { framework_id } => Some(framework_id),
        }
    }
}

/// Why a message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message '{0}': the master does not handle it")]
    UnknownName(String),
    #[error("'{name}' is not a valid protobuf message: {reason}")]
    Malformed { name: &'static str, reason: String },
    #[error("'{name}' is missing required field '{field}'")]
    Missing {
        name: &'static str,
        field: &'static str,
    },
}

fn parse<M: prost::Message + Default>(name: &'static str, body: &[u8]) -> Result<M, DecodeError> {
    M::decode(body).map_err(|e| DecodeError::Malformed {
        name,
        reason: e.to_string(),
    })
}

/// Whether the field at `path` (field numbers, outermost first, each but the last a
/// length-delimited message) is present in `body`. prost reads an absent `required` field as
/// its default, where protobuf's `ParseFromString` (libprocess's handlers) fails on it and the
/// message is dropped; this tells the two apart. Reads only what is there; a body it cannot
/// walk has no such field.
fn present(body: &[u8], path: &[u32]) -> bool {
    let Some((&number, rest)) = path.split_first() else {
        return true;
    };
    let mut buf = body;
    let mut found: Option<&[u8]> = None;
    while !buf.is_empty() {
        let Some(key) = read_varint(&mut buf) else {
            return false;
        };
        let value: &[u8] = match key & 7 {
            0 => match read_varint(&mut buf) {
                Some(_) => &[],
                None => return false,
            },
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                let Some((value, tail)) = buf.split_at_checked(len) else {
                    return false;
                };
                buf = tail;
                value
            }
            2 => {
                let Some(len) = read_varint(&mut buf).and_then(|l| usize::try_from(l).ok()) else {
                    return false;
                };
                let Some((value, tail)) = buf.split_at_checked(len) else {
                    return false;
                };
                buf = tail;
                value
            }
            // Groups (3, 4) are in none of Mesos's messages; anything else is not protobuf.
            _ => return false,
        };
        if key >> 3 == u64::from(number) {
            found = Some(value);
        }
    }
    // A message field given more than once is merged; the last one is enough to tell
    // presence of what follows for the messages checked here.
    found.is_some_and(|value| present(value, rest))
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, tail) = buf.split_first()?;
        *buf = tail;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Checks that each `(path, field)` of `required` is present in `body` (see [`present`]).
fn require(name: &'static str, body: &[u8], required: &[Required]) -> Result<(), DecodeError> {
    match required.iter().find(|(path, _)| !present(body, path)) {
        Some((_, field)) => Err(DecodeError::Missing { name, field }),
        None => Ok(()),
    }
}

/// A field prost cannot tell is missing: its path (see [`present`]) and its name.
type Required = (&'static [u32], &'static str);

/// `RegisterFrameworkMessage`'s `required` fields: `framework = 1`, and in it
/// `FrameworkInfo`'s own, `user = 1` and `name = 2`.
const REGISTER_REQUIRED: &[Required] = &[
    (&[1], "framework"),
    (&[1, 1], "framework.user"),
    (&[1, 2], "framework.name"),
];
/// `ReregisterFrameworkMessage`'s: `framework = 2` (with its `user` and `name`), `failover = 3`.
const REREGISTER_REQUIRED: &[Required] = &[
    (&[2], "framework"),
    (&[2, 1], "framework.user"),
    (&[2, 2], "framework.name"),
    (&[3], "failover"),
];
/// A `Call`'s `subscribe = 3`, when present: its `framework_info = 1`, with `user` and `name`.
const SUBSCRIBE_REQUIRED: &[Required] = &[
    (&[3, 1], "subscribe.framework_info"),
    (&[3, 1, 1], "subscribe.framework_info.user"),
    (&[3, 1, 2], "subscribe.framework_info.name"),
];

/// A required id, which prost reads as an empty default when it is absent.
fn required_id(
    name: &'static str,
    field: &'static str,
    id: v1::FrameworkId,
) -> Result<v1::FrameworkId, DecodeError> {
    if id.value.is_empty() {
        return Err(DecodeError::Missing { name, field });
    }
    Ok(id)
}

fn call(framework_id: Option<v1::FrameworkId>, ty: call::Type) -> Call {
    Call {
        framework_id,
        r#type: Some(ty as i32),
        ..Call::default()
    }
}

fn plain(call: Call) -> V0Call {
    V0Call::Call {
        call: Box::new(call),
        force: false,
    }
}

/// Reads message `name` with `body` from a scheduler. Unknown names and bytes that are not
/// that message are errors, never panics.
pub fn decode(name: &str, body: &[u8]) -> Result<V0Call, DecodeError> {
    match name {
        names::CALL => decode_call(body),
        names::REGISTER_FRAMEWORK => {
            let n = names::REGISTER_FRAMEWORK;
            let m: msg::RegisterFrameworkMessage = parse(n, body)?;
            require(n, body, REGISTER_REQUIRED)?;
            Ok(subscribe(m.framework, false))
        }
        names::REREGISTER_FRAMEWORK => {
            let n = names::REREGISTER_FRAMEWORK;
            let m: msg::ReregisterFrameworkMessage = parse(n, body)?;
            require(n, body, REREGISTER_REQUIRED)?;
            Ok(subscribe(m.framework, m.failover))
        }
        names::UNREGISTER_FRAMEWORK => {
            let n = names::UNREGISTER_FRAMEWORK;
            let m: msg::UnregisterFrameworkMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            Ok(plain(call(Some(id), call::Type::Teardown)))
        }
        names::DEACTIVATE_FRAMEWORK => {
            let n = names::DEACTIVATE_FRAMEWORK;
            let m: msg::DeactivateFrameworkMessage = parse(n, body)?;
            let framework_id = required_id(n, "framework_id", m.framework_id)?;
            Ok(V0Call::Deactivate { framework_id })
        }
        names::LAUNCH_TASKS => decode_launch_tasks(body),
        names::KILL_TASK => {
            let n = names::KILL_TASK;
            let m: msg::KillTaskMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            let mut c = call(Some(id), call::Type::Kill);
            c.kill = Some(call::Kill {
                task_id: m.task_id,
                agent_id: None,
                kill_policy: m.kill_policy,
            });
            Ok(plain(c))
        }
        names::REVIVE_OFFERS => {
            let n = names::REVIVE_OFFERS;
            let m: msg::ReviveOffersMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            // Mesos revives every role of the framework (an empty `Revive`).
            let mut c = call(Some(id), call::Type::Revive);
            c.revive = Some(call::Revive::default());
            Ok(plain(c))
        }
        names::STATUS_UPDATE_ACKNOWLEDGEMENT => {
            let n = names::STATUS_UPDATE_ACKNOWLEDGEMENT;
            let m: msg::StatusUpdateAcknowledgementMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            let mut c = call(Some(id), call::Type::Acknowledge);
            c.acknowledge = Some(call::Acknowledge {
                agent_id: m.slave_id,
                task_id: m.task_id,
                uuid: m.uuid,
            });
            Ok(plain(c))
        }
        names::RECONCILE_TASKS => {
            let n = names::RECONCILE_TASKS;
            let m: msg::ReconcileTasksMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            let mut c = call(Some(id), call::Type::Reconcile);
            c.reconcile = Some(call::Reconcile {
                tasks: m
                    .statuses
                    .into_iter()
                    .map(|s| call::reconcile::Task {
                        task_id: s.task_id,
                        agent_id: s.agent_id,
                    })
                    .collect(),
            });
            Ok(plain(c))
        }
        names::RESOURCE_REQUEST => {
            let n = names::RESOURCE_REQUEST;
            let m: msg::ResourceRequestMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            let mut c = call(Some(id), call::Type::Request);
            c.request = Some(call::Request {
                requests: m.requests,
            });
            Ok(plain(c))
        }
        names::FRAMEWORK_TO_EXECUTOR => {
            let n = names::FRAMEWORK_TO_EXECUTOR;
            let m: msg::FrameworkToExecutorMessage = parse(n, body)?;
            let id = required_id(n, "framework_id", m.framework_id)?;
            let mut c = call(Some(id), call::Type::Message);
            c.message = Some(call::Message {
                agent_id: m.slave_id,
                executor_id: m.executor_id,
                data: m.data,
            });
            Ok(plain(c))
        }
        other => Err(DecodeError::UnknownName(other.to_owned())),
    }
}

/// A (re)registration as the SUBSCRIBE the master makes of it (`Master::registerFramework`,
/// `Master::reregisterFramework`): the FrameworkInfo as given, `force` = `failover`.
fn subscribe(framework_info: v1::FrameworkInfo, force: bool) -> V0Call {
    let mut c = call(framework_info.id.clone(), call::Type::Subscribe);
    c.subscribe = Some(call::Subscribe {
        framework_info,
        suppressed_roles: Vec::new(),
        offer_constraints: None,
    });
    V0Call::Call {
        call: Box::new(c),
        force,
    }
}

/// `LaunchTasksMessage` as `Master::launchTasks` treats it: an ACCEPT with one LAUNCH of the
/// tasks, or, with no tasks, a DECLINE of the offers, both with the message's filters.
fn decode_launch_tasks(body: &[u8]) -> Result<V0Call, DecodeError> {
    let n = names::LAUNCH_TASKS;
    let m: msg::LaunchTasksMessage = parse(n, body)?;
    let id = required_id(n, "framework_id", m.framework_id)?;
    if m.tasks.is_empty() {
        let mut c = call(Some(id), call::Type::Decline);
        c.decline = Some(call::Decline {
            offer_ids: m.offer_ids,
            filters: Some(m.filters),
        });
        return Ok(plain(c));
    }
    let launch = v1::offer::Operation {
        r#type: Some(v1::offer::operation::Type::Launch as i32),
        launch: Some(v1::offer::operation::Launch {
            task_infos: m.tasks,
        }),
        ..v1::offer::Operation::default()
    };
    let mut c = call(Some(id), call::Type::Accept);
    c.accept = Some(call::Accept {
        offer_ids: m.offer_ids,
        operations: vec![launch],
        filters: Some(m.filters),
    });
    Ok(plain(c))
}

/// A v0 `mesos.scheduler.Call` as the v1 `Call` with the same fields: every field but
/// SUBSCRIBE's has the same type (the v1 ones), SUBSCRIBE loses `force` (returned beside it).
fn decode_call(body: &[u8]) -> Result<V0Call, DecodeError> {
    let n = names::CALL;
    let v0::Call {
        framework_id,
        r#type,
        subscribe,
        accept,
        decline,
        accept_inverse_offers,
        decline_inverse_offers,
        revive,
        kill,
        shutdown,
        acknowledge,
        acknowledge_operation_status,
        reconcile,
        reconcile_operations,
        message,
        request,
        suppress,
        update_framework,
    } = parse(n, body)?;
    // `Master::receive` drops a call without a type (`validation::scheduler::call::validate`).
    if r#type.is_none() {
        return Err(DecodeError::Missing {
            name: n,
            field: "type",
        });
    }
    // `Subscribe.framework_info` is required: a SUBSCRIBE without one is no message at all
    // to protobuf, not one with an empty FrameworkInfo.
    if subscribe.is_some() {
        require(n, body, SUBSCRIBE_REQUIRED)?;
    }
    let force = subscribe.as_ref().and_then(|s| s.force).unwrap_or(false);
    let subscribe = subscribe.map(|s| call::Subscribe {
        framework_info: s.framework_info,
        suppressed_roles: s.suppressed_roles,
        offer_constraints: s.offer_constraints,
    });
    let call = Call {
        framework_id,
        r#type,
        subscribe,
        accept,
        decline,
        accept_inverse_offers,
        decline_inverse_offers,
        revive,
        kill,
        shutdown,
        acknowledge,
        acknowledge_operation_status,
        reconcile,
        reconcile_operations,
        message,
        request,
        suppress,
        update_framework,
    };
    Ok(V0Call::Call {
        call: Box::new(call),
        force,
    })
}

/// What [`encode`] needs besides the event.
#[derive(Debug, Clone, Copy)]
pub struct EncodeContext<'a> {
    /// The framework the event goes to: every `StatusUpdate` carries it (the driver aborts
    /// on an update of another framework).
    pub framework_id: &'a v1::FrameworkId,
    /// The master's UPID: the `pid` of a status update that wants an acknowledgement.
    pub master: &'a Upid,
    /// SUBSCRIBED answers a re-registration (`FrameworkReregisteredMessage`) rather than a
    /// registration or a failover (`FrameworkRegisteredMessage`).
    pub reregistered: bool,
}

/// An event for a pid-based framework as the messages the real master sends it: at most one
/// `(name, body)` today. HEARTBEAT (drivers have none), inverse offers and operation status
/// updates (the driver forbids operation ids) become nothing, as for Mesos's pid frameworks.
pub fn encode(event: &Event, ctx: &EncodeContext<'_>) -> Vec<(&'static str, Vec<u8>)> {
    let ty = event.r#type.and_then(|t| event::Type::try_from(t).ok());
    let out = match ty {
        Some(event::Type::Subscribed) => {
            event.subscribed.as_ref().map(|s| encode_subscribed(s, ctx))
        }
        Some(event::Type::Offers) => event.offers.as_ref().map(|o| {
            let m = msg::ResourceOffersMessage {
                offers: o.offers.clone(),
                // One entry per offer, or the driver aborts; empty, as the master does not
                // tell its frameworks where agents are (framework messages go through it).
                pids: vec![String::new(); o.offers.len()],
            };
            (names::RESOURCE_OFFERS, m.encode_to_vec())
        }),
        Some(event::Type::Rescind) => event.rescind.as_ref().map(|r| {
            let m = msg::RescindResourceOfferMessage {
                offer_id: r.offer_id.clone(),
            };
            (names::RESCIND_RESOURCE_OFFER, m.encode_to_vec())
        }),
        Some(event::Type::Update) => event.update.as_ref().map(|u| encode_update(&u.status, ctx)),
        Some(event::Type::Failure) => event.failure.as_ref().and_then(|f| encode_failure(f, ctx)),
        Some(event::Type::Message) => event.message.as_ref().map(|m| {
            let m = msg::ExecutorToFrameworkMessage {
                slave_id: m.agent_id.clone(),
                framework_id: ctx.framework_id.clone(),
                executor_id: m.executor_id.clone(),
                data: m.data.clone(),
            };
            (names::EXECUTOR_TO_FRAMEWORK, m.encode_to_vec())
        }),
        Some(event::Type::Error) => event.error.as_ref().map(|e| {
            let m = msg::FrameworkErrorMessage {
                message: e.message.clone(),
            };
            (names::FRAMEWORK_ERROR, m.encode_to_vec())
        }),
        _ => None,
    };
    out.into_iter().collect()
}

fn encode_subscribed(s: &event::Subscribed, ctx: &EncodeContext<'_>) -> (&'static str, Vec<u8>) {
    let framework_id = s.framework_id.clone();
    let master_info = s.master_info.clone().unwrap_or_default();
    if ctx.reregistered {
        let m = msg::FrameworkReregisteredMessage {
            framework_id,
            master_info,
        };
        (names::FRAMEWORK_REREGISTERED, m.encode_to_vec())
    } else {
        let m = msg::FrameworkRegisteredMessage {
            framework_id,
            master_info,
        };
        (names::FRAMEWORK_REGISTERED, m.encode_to_vec())
    }
}

/// An UPDATE as `StatusUpdateMessage`. The driver acknowledges (and keeps `status.uuid` for
/// the scheduler's explicit acknowledgement) only when `StatusUpdate.uuid` is set and `pid`
/// is a non-empty UPID, so both are set exactly when the status has a uuid; an update without
/// one (reconciliation, master-generated) needs no acknowledgement and gets neither.
fn encode_update(status: &v1::TaskStatus, ctx: &EncodeContext<'_>) -> (&'static str, Vec<u8>) {
    let uuid = status.uuid.clone().filter(|u| !u.is_empty());
    let pid = uuid.as_ref().map(|_| ctx.master.to_string());
    let m = msg::StatusUpdateMessage {
        update: msg::StatusUpdate {
            framework_id: ctx.framework_id.clone(),
            executor_id: status.executor_id.clone(),
            slave_id: status.agent_id.clone(),
            status: status.clone(),
            // Required; every status the master forwards has a timestamp, 0 is the fallback.
            timestamp: status.timestamp.unwrap_or(0.0),
            uuid,
            latest_state: None,
        },
        pid,
    };
    (names::STATUS_UPDATE, m.encode_to_vec())
}

/// FAILURE with an executor as `ExitedExecutorMessage`, without as `LostSlaveMessage`; both
/// need the agent, so a FAILURE without one becomes nothing.
fn encode_failure(f: &event::Failure, ctx: &EncodeContext<'_>) -> Option<(&'static str, Vec<u8>)> {
    let agent_id = f.agent_id.clone()?;
    Some(match &f.executor_id {
        Some(executor_id) => {
            let m = msg::ExitedExecutorMessage {
                slave_id: agent_id,
                framework_id: ctx.framework_id.clone(),
                executor_id: executor_id.clone(),
                status: f.status.unwrap_or(0),
            };
            (names::EXITED_EXECUTOR, m.encode_to_vec())
        }
        None => {
            let m = msg::LostSlaveMessage { slave_id: agent_id };
            (names::LOST_SLAVE, m.encode_to_vec())
        }
    })
}

#[cfg(test)]
mod tests;
