//! The v0 scheduler API served: libprocess messages in, through [`super::codec`], to the
//! framework model's sessions; the model's events out, as `mesos.internal` messages on the
//! master's own link to each scheduler.
//!
//! A scheduler is known by its UPID (`scheduler-<uuid>@ip:port`): its first SUBSCRIBE opens
//! a session for that UPID and links it (the master dials it, by default only at the address
//! its messages came from). Everything else it sends is acted on only from that UPID, as
//! `Master::receive` drops a call whose sender is not the framework's pid. The link breaking
//! is the framework disconnecting (its failover timeout starts), as libprocess's `exited`.
//!
//! Where Shoal differs: a first registration (no framework id) whose UPID could never be
//! dialled removes the framework it made at once. Mesos keeps it for its failover timeout,
//! but its scheduler was never told the id, so it can never come back for it, and a driver
//! that retries from an address the master cannot reach would leave one framework behind
//! per retry (a week each under Marathon) until `--frameworks-max` refuses everyone.
//!
//! Messages are handled one at a time in the order they arrived (a driver writes its calls
//! back to back on one connection and relies on that order), and a link's exit is handled
//! between two messages, never during one, as libprocess queues `exited` on the master's own
//! queue: a SUBSCRIBE has opened its session (and made its framework) before the exit of the
//! link it dialled is looked at.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use shoal_proto::mesos::v1;
use shoal_proto::mesos::v1::scheduler::{call, event, Call, Event};
use tokio::sync::mpsc;

use super::codec::{self, EncodeContext, V0Call};
use super::pids::SchedulerPids;
use crate::error::CompatError;
use crate::frameworks::{call_type, error_event, SessionId, FAILED_OVER};
use crate::libprocess::{ExitReason, Exited, Inbound, Message, Outbound, OutboundConfig, Upid};
use crate::shell::{Compat, EventSink};
use crate::zk::MasterAddress;

/// The v0 side of the master: its libprocess ends and the schedulers it knows by UPID.
pub(crate) struct V0 {
    inbound: Inbound,
    outbound: Outbound,
    /// The master's MasterInfo (SUBSCRIBED's, resent to a driver that retries).
    master: MasterAddress,
    /// Each linked scheduler's session.
    sessions: Mutex<HashMap<Upid, Arc<V0Sink>>>,
    /// The UPID each framework belongs to, kept while it is disconnected.
    pids: Mutex<SchedulerPids>,
}

impl V0 {
    /// The v0 ends for a master at `master`, and the loops that serve them (spawned: needs a
    /// tokio runtime). `None` when the address is not one a UPID can carry.
    pub(crate) fn start(
        compat: &Arc<Compat>,
        master: MasterAddress,
        dial: crate::libprocess::DialPolicy,
    ) -> Option<Arc<V0>> {
        let upid = match Upid::new("master", master.ip, master.port) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "the v0 scheduler API is off: no master UPID");
                return None;
            }
        };
        let (inbound, messages) = Inbound::new(["master".to_string()]);
        let mut config = OutboundConfig::new(upid);
        config.dial = dial;
        let (outbound, exits) = Outbound::new(config);
        let v0 = Arc::new(V0 {
            inbound,
            outbound,
            master,
            sessions: Mutex::new(HashMap::new()),
            pids: Mutex::new(SchedulerPids::default()),
        });
        tokio::spawn(receive_loop(compat.clone(), v0.clone(), messages, exits));
        Some(v0)
    }

    /// `POST /master/<message name>`.
    pub(crate) fn router(&self) -> axum::Router {
        self.inbound.router()
    }

    fn sink_of(&self, pid: &Upid) -> Option<Arc<V0Sink>> {
        self.sessions.lock().get(pid).cloned()
    }

    fn session_of(&self, pid: &Upid) -> Option<SessionId> {
        self.sink_of(pid).map(|s| s.session())
    }

    /// Forgets `pid` if it is still on `session`, and closes its link.
    fn forget(&self, pid: &Upid, session: SessionId) {
        let mut sessions = self.sessions.lock();
        if sessions.get(pid).is_some_and(|s| s.session() == session) {
            sessions.remove(pid);
            self.outbound.unlink(pid);
        }
    }
}

/// A v0 scheduler's session: events go out as `mesos.internal` messages on its link.
struct V0Sink {
    v0: Arc<V0>,
    pid: Upid,
    /// Set once, right after the session is opened.
    session: std::sync::OnceLock<SessionId>,
    /// The framework this session belongs to, from its SUBSCRIBED on.
    framework_id: Mutex<Option<v1::FrameworkId>>,
    /// The next SUBSCRIBED answers a re-registration (FrameworkReregisteredMessage).
    reregistered: Mutex<bool>,
    /// Called when the session is closed by the model: the shell learns it ended.
    ended: mpsc::UnboundedSender<SessionId>,
    /// Opened by a SUBSCRIBE that named no framework: until its link connects, its
    /// scheduler has not been told a framework id.
    unnamed: bool,
}

impl EventSink for V0Sink {
    fn send(&self, event: &Event) -> bool {
        if event.r#type == Some(event::Type::Subscribed as i32) {
            if let Some(s) = &event.subscribed {
                *self.framework_id.lock() = Some(s.framework_id.clone());
            }
        }
        let Some(framework_id) = self.framework_id.lock().clone() else {
            // Nothing goes to a scheduler before it is told its framework id.
            return event.r#type == Some(event::Type::Error as i32) && self.send_error(event);
        };
        let reregistered = *self.reregistered.lock();
        let ctx = EncodeContext {
            framework_id: &framework_id,
            master: self.v0.outbound.master(),
            reregistered,
        };
        for (name, body) in codec::encode(event, &ctx) {
            if let Err(e) = self.v0.outbound.send(&self.pid, name, &body) {
                tracing::debug!(pid = %self.pid, error = %e, "a v0 message was not sent");
                return false;
            }
        }
        true
    }

    fn close(&self, error: Option<String>) {
        if let Some(message) = error {
            self.send_error(&error_event(&message));
        }
        let session = self.session();
        self.v0.forget(&self.pid, session);
        let _ = self.ended.send(session);
    }

    fn reads(&self) -> bool {
        self.v0.outbound.is_linked(&self.pid)
    }
}

impl V0Sink {
    fn session(&self) -> SessionId {
        // Session 0 names no session: the model ignores it.
        self.session.get().copied().unwrap_or(SessionId(0))
    }

    /// An ERROR as FrameworkErrorMessage, which needs no framework id.
    fn send_error(&self, event: &Event) -> bool {
        let no_id = v1::FrameworkId::default();
        let ctx = EncodeContext {
            framework_id: &no_id,
            master: self.v0.outbound.master(),
            reregistered: false,
        };
        codec::encode(event, &ctx)
            .into_iter()
            .all(|(name, body)| self.v0.outbound.send(&self.pid, name, &body).is_ok())
    }
}

/// The schedulers' messages, in the order they arrived, and between them the sessions that
/// ended and the links that broke.
async fn receive_loop(
    compat: Arc<Compat>,
    v0: Arc<V0>,
    mut messages: mpsc::Receiver<Message>,
    mut exits: mpsc::Receiver<Exited>,
) {
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<SessionId>();
    loop {
        // Messages first: a driver's last message (a TEARDOWN) may be waiting when the link
        // it then closes is reported, and it must be acted on, not dropped as coming from a
        // scheduler that is gone.
        tokio::select! {
            biased;
            m = messages.recv() => {
                let Some(m) = m else { return };
                receive(&compat, &v0, &ended_tx, m).await;
            }
            Some(session) = ended_rx.recv() => compat.session_ended(session).await,
            Some(exited) = exits.recv() => link_exited(&compat, &v0, exited).await,
        }
    }
}

async fn receive(
    compat: &Arc<Compat>,
    v0: &Arc<V0>,
    ended: &mpsc::UnboundedSender<SessionId>,
    m: Message,
) {
    let decoded = match codec::decode(&m.name, &m.body) {
        Ok(d) => d,
        Err(e) => {
            // As libprocess: a message the process does not handle is dropped.
            tracing::info!(from = %m.from, error = %e, "dropping a v0 message");
            return;
        }
    };
    match decoded {
        V0Call::Call { call, force } if call_type(&call) == call::Type::Subscribe => {
            subscribe(compat, v0, ended, &m, &call, force).await
        }
        V0Call::Call { call, .. } => {
            let Some(session) = v0.session_of(&m.from) else {
                tracing::info!(from = %m.from, name = %m.name, "dropping a v0 call from a scheduler that has not subscribed");
                return;
            };
            let ty = call_type(&call);
            if let Err(e) = compat.call(Some(session), *call).await {
                tracing::info!(from = %m.from, call = ?ty, error = %e, "a v0 call was refused");
            }
        }
        // The driver's abort(): no more offers until it subscribes again. Mesos also
        // rescinds the outstanding ones; here they go back when they time out or when the
        // scheduler's link closes, as it does when an aborted driver's process exits.
        V0Call::Deactivate { framework_id } => {
            let Some(session) = v0.session_of(&m.from) else {
                return;
            };
            let suppress = Call {
                framework_id: Some(framework_id),
                r#type: Some(call::Type::Suppress as i32),
                suppress: Some(call::Suppress { roles: vec![] }),
                ..Default::default()
            };
            if let Err(e) = compat.call(Some(session), suppress).await {
                tracing::info!(from = %m.from, error = %e, "a v0 deactivation was refused");
            }
        }
    }
}

/// A SUBSCRIBE (a v0 Call, or a legacy (re)registration) from `m.from`.
async fn subscribe(
    compat: &Arc<Compat>,
    v0: &Arc<V0>,
    ended: &mpsc::UnboundedSender<SessionId>,
    m: &Message,
    call: &Call,
    force: bool,
) {
    let named = call.framework_id.as_ref().map(|f| f.value.clone());
    if let Some(sink) = v0.sink_of(&m.from) {
        // A driver retries its registration until it hears back: a scheduler already
        // registered from this UPID is told again, as Mesos resends
        // FrameworkRegisteredMessage ("already subscribed, resending acknowledgement").
        if let (None, Some(framework_id)) = (&named, compat.framework_of(sink.session())) {
            tracing::debug!(from = %m.from, %framework_id, "resending FrameworkRegisteredMessage");
            *sink.reregistered.lock() = false;
            sink.send(&subscribed_event(compat, v0, framework_id));
            return;
        }
    }
    let existing = v0.sink_of(&m.from);
    let fresh = existing.is_none();
    let sink = match existing {
        Some(s) => s,
        None => {
            if let Err(e) = v0.outbound.link(&m.from, m.peer.ip()) {
                tracing::warn!(from = %m.from, error = %e, "not subscribing a v0 scheduler: it cannot be reached");
                return;
            }
            let sink = Arc::new(V0Sink {
                v0: v0.clone(),
                pid: m.from.clone(),
                session: std::sync::OnceLock::new(),
                framework_id: Mutex::new(None),
                reregistered: Mutex::new(false),
                ended: ended.clone(),
                unnamed: named.is_none(),
            });
            let session = compat.open_session(sink.clone());
            let _ = sink.session.set(session);
            v0.sessions.lock().insert(m.from.clone(), sink.clone());
            sink
        }
    };
    let session = sink.session();
    // As `Master::subscribe`: a framework the master knows is taken over from another
    // scheduler only with `force`, whether that scheduler is still connected or not.
    if let Some(id) = named.as_deref() {
        if v0
            .pids
            .lock()
            .refuses(id, &m.from, force, compat.is_known(id))
        {
            tracing::info!(from = %m.from, framework_id = id, "refusing a v0 subscription without force from another scheduler");
            sink.send_error(&error_event(FAILED_OVER));
            // A link opened for this SUBSCRIBE alone closes; one its sender already had
            // (for another framework) stays.
            if fresh {
                end(compat, v0, &m.from, session).await;
            }
            return;
        }
    }
    // As `Master::subscribe`: a known framework re-subscribing without `force` is
    // re-registered (FrameworkReregisteredMessage); a new one, a failover (`force`) and one
    // this master does not know (it was elected since) are registered.
    let reregistered = !force && named.as_deref().is_some_and(|id| compat.is_known(id));
    *sink.reregistered.lock() = reregistered;
    match compat.subscribe(session, call, force, Some(&v0.master)) {
        Ok(()) => {
            tracing::info!(from = %m.from, framework_id = ?named, force, "v0 scheduler subscribing");
            if let Some(id) = compat.framework_of(session) {
                v0.pids
                    .lock()
                    .subscribed(&id, &m.from, |other| compat.is_known(other));
            }
        }
        // The driver retries; a full master may have room by then.
        Err(CompatError::Unavailable(why)) => {
            tracing::warn!(from = %m.from, "v0 subscription refused for now: {why}");
            end(compat, v0, &m.from, session).await;
        }
        // As Mesos: FrameworkErrorMessage (the driver aborts).
        Err(e) => {
            tracing::info!(from = %m.from, error = %e, "v0 subscription refused");
            sink.send_error(&error_event(&e.to_string()));
            end(compat, v0, &m.from, session).await;
        }
    }
}

/// SUBSCRIBED for a framework already on its session (sent again to a retrying driver).
fn subscribed_event(compat: &Compat, v0: &V0, framework_id: String) -> Event {
    let master = MasterAddress {
        id: compat.core().published.snapshot().cell_id().to_string(),
        ..v0.master.clone()
    };
    Event {
        r#type: Some(event::Type::Subscribed as i32),
        subscribed: Some(event::Subscribed {
            framework_id: v1::FrameworkId {
                value: framework_id,
            },
            heartbeat_interval_seconds: None,
            master_info: Some(master.master_info()),
        }),
        ..Default::default()
    }
}

async fn end(compat: &Arc<Compat>, v0: &V0, pid: &Upid, session: SessionId) {
    v0.forget(pid, session);
    compat.session_ended(session).await;
}

/// A scheduler whose link broke: its framework is disconnected. One that was never reached
/// on its first registration never learned its framework id: that framework is removed.
async fn link_exited(compat: &Arc<Compat>, v0: &V0, Exited { peer, reason }: Exited) {
    let Some(sink) = v0.sessions.lock().remove(&peer) else {
        return;
    };
    let session = sink.session();
    let never_reached = sink.unnamed && matches!(reason, ExitReason::ConnectFailed(_));
    match compat.framework_of(session).filter(|_| never_reached) {
        Some(framework_id) => {
            tracing::info!(pid = %peer, ?reason, %framework_id, "v0 scheduler never reached: the framework it registered is removed");
            let teardown = Call {
                framework_id: Some(v1::FrameworkId {
                    value: framework_id,
                }),
                r#type: Some(call::Type::Teardown as i32),
                ..Default::default()
            };
            if let Err(e) = compat.call(Some(session), teardown).await {
                tracing::warn!(pid = %peer, error = %e, "the unreached framework was not removed");
            }
        }
        None => {
            tracing::info!(pid = %peer, ?reason, "v0 scheduler link closed: framework disconnected")
        }
    }
    compat.session_ended(session).await;
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use axum::body::Bytes;
    use prost::Message as _;
    use shoal_proto::mesos::scheduler as v0;

    use super::*;
    use crate::CompatConfig;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A Compat without a master address (its own v0 side off), and a v0 side started on
    /// it here.
    fn compat() -> (Arc<Compat>, Arc<V0>) {
        let core = shoal_master::MasterCore::start_with(
            Arc::new(shoal_master::MemStore::new()),
            shoal_master::CommitConfig::default(),
            shoal_master::agents::AgentTimers::default(),
            Arc::new(shoal_core::clock::ManualClock::new(1_000_000)),
        )
        .unwrap();
        let c = Compat::start(core, CompatConfig::default());
        let master = MasterAddress {
            id: String::new(),
            ip: Ipv4Addr::LOCALHOST,
            port: 5050,
            hostname: "localhost".into(),
        };
        let v0 = V0::start(&c, master, crate::libprocess::DialPolicy::default()).unwrap();
        (c, v0)
    }

    /// A UPID on a port nothing listens on (it was free a moment ago).
    fn unreachable(id: &str) -> Upid {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        Upid::new(id, Ipv4Addr::LOCALHOST, port).unwrap()
    }

    /// A v0 SUBSCRIBE from `from` (with `framework_id`, a failover) with a failover timeout.
    fn subscribe(from: &Upid, name: &str, framework_id: Option<&str>) -> Message {
        let id = framework_id.map(|v| v1::FrameworkId { value: v.into() });
        let c = v0::Call {
            framework_id: id.clone(),
            r#type: Some(call::Type::Subscribe as i32),
            subscribe: Some(v0::call::Subscribe {
                framework_info: v1::FrameworkInfo {
                    user: "u".into(),
                    name: name.into(),
                    id,
                    failover_timeout: Some(300.0),
                    ..Default::default()
                },
                force: Some(framework_id.is_some()),
                suppressed_roles: Vec::new(),
                offer_constraints: None,
            }),
            ..v0::Call::default()
        };
        Message {
            from: from.clone(),
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000)),
            name: codec::names::CALL.into(),
            body: Bytes::from(c.encode_to_vec()),
        }
    }

    fn named(c: &Compat, name: &str) -> Vec<(String, bool)> {
        c.framework_summaries()
            .into_iter()
            .filter(|f| f.info.name == name)
            .map(|f| (f.id, f.connected))
            .collect()
    }

    /// Waits until `cond` holds; panics with `what` past the deadline.
    async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
        let until = Instant::now() + DEADLINE;
        while !cond() {
            assert!(Instant::now() < until, "{what} within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A first registration from a UPID that cannot be dialled leaves no framework behind,
    /// failover timeout or not; a failover (the framework named, so its scheduler knows its
    /// id) whose dial fails only disconnects it, as Mesos does.
    // One thread: the v0 side's own loop (which handles the link's exit) runs only while
    // the test waits, so the framework the SUBSCRIBE made is seen before it goes.
    #[tokio::test]
    async fn a_first_registration_never_reached_leaves_no_framework() {
        let (c, v0) = compat();
        let (ended, _ended_rx) = mpsc::unbounded_channel();

        let dead = unreachable("scheduler-dead");
        receive(&c, &v0, &ended, subscribe(&dead, "never", None)).await;
        let made = named(&c, "never");
        assert_eq!(made.len(), 1, "the SUBSCRIBE made a framework: {made:?}");
        wait("no framework left", || named(&c, "never").is_empty()).await;

        // A framework whose scheduler knows its id: subscribed from a reachable UPID first.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let alive = Upid::new("scheduler-alive", Ipv4Addr::LOCALHOST, port).unwrap();
        receive(&c, &v0, &ended, subscribe(&alive, "known", None)).await;
        let (framework_id, _) = named(&c, "known").pop().expect("subscribed");
        // It fails over to a UPID that cannot be dialled: disconnected, kept.
        let dead = unreachable("scheduler-dead-again");
        receive(
            &c,
            &v0,
            &ended,
            subscribe(&dead, "known", Some(&framework_id)),
        )
        .await;
        wait("the framework disconnected", || {
            named(&c, "known") == vec![(framework_id.clone(), false)]
        })
        .await;
        assert!(v0.sink_of(&dead).is_none(), "the exit was handled");
    }
}
