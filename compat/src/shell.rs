//! The framework model's IO shell: the [`Compat`] handle, the sessions' event sinks, the
//! async loops (allocation, the commit stream, timers) and the one place effects are carried
//! out.
//!
//! Every entry point does the same three things: lock the model, call it with the published
//! snapshot and the master's clock, drop the lock; then carry out the effects it returned in
//! their order ([`Compat::carry_out`]): a commit is submitted and awaited, and what follows
//! from its result is carried out before the effects after it; an event goes to its
//! session's [`EventSink`], and one that cannot be delivered is handed back to the model. The
//! model's lock is never held across an await, and it is taken before the sinks' lock,
//! never after.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use parking_lot::Mutex;
use shoal_master::MasterCore;
use shoal_proto::mesos::v1::scheduler::{Call, Event};

use crate::error::CompatError;
use crate::frameworks::{Effect, FrameworkSummary, Frameworks, Now, SessionId};
use crate::zk::MasterAddress;
use crate::CompatConfig;

/// Where a session's events go: a v1 event stream, or (beside it, without touching the
/// model) a v0 scheduler's libprocess link.
pub trait EventSink: Send + Sync {
    /// Queues `event`; `false` when it cannot be delivered (its buffer is full, or the
    /// session closed).
    fn send(&self, event: &Event) -> bool;
    /// Ends the session: with an ERROR event carrying `error` first when there is one.
    fn close(&self, error: Option<String>);
    /// Whether the session's reader keeps up: a framework that leaves its events unread
    /// gets no offers.
    fn reads(&self) -> bool;
}

/// The Mesos scheduler API: the framework model and the sessions it speaks through.
/// What compat keeps from a collection: the tasks of its frameworks it still needs.
struct Retains(std::sync::Weak<Compat>);

impl shoal_master::collector::Retainer for Retains {
    fn retains(&self, task: &shoal_core::Task) -> bool {
        self.0
            .upgrade()
            .is_some_and(|c| c.model.lock().retains(task))
    }
}

pub struct Compat {
    core: MasterCore,
    model: Mutex<Frameworks>,
    /// The open sessions' sinks; a session is removed when it ends.
    sinks: Mutex<HashMap<SessionId, Arc<dyn EventSink>>>,
    /// The v1 streams (`Mesos-Stream-Id`) and their sessions.
    pub(crate) streams: Mutex<HashMap<String, SessionId>>,
    /// The last session id handed out (0 is never handed out: it names no session).
    last_session: Mutex<u64>,
    wake: tokio::sync::Notify,
    started_ms: u64,
    heartbeat_interval: Duration,
    /// The v0 (libprocess) side, when the master has an address a UPID can carry.
    v0: std::sync::OnceLock<Arc<crate::v0::server::V0>>,
}

impl Compat {
    /// Starts the allocator, the status forwarder and the timers. Needs a tokio runtime.
    pub fn start(core: MasterCore, config: CompatConfig) -> Arc<Compat> {
        // The one random draw: the run id that makes this start's ids unique.
        let run_id = uuid::Uuid::new_v4().to_string();
        let v0_at = config.master.clone();
        let dial = config.libprocess_dial;
        let compat = Arc::new(Compat {
            started_ms: core.clock().wall_ms(),
            heartbeat_interval: config.heartbeat_interval,
            model: Mutex::new(Frameworks::new(config, run_id)),
            sinks: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            last_session: Mutex::new(0),
            wake: tokio::sync::Notify::new(),
            v0: std::sync::OnceLock::new(),
            core,
        });
        match v0_at {
            Some(at) => {
                if let Some(v0) = crate::v0::server::V0::start(&compat, at, dial) {
                    let _ = compat.v0.set(v0);
                }
            }
            None => tracing::info!(
                "the v0 scheduler API is off: the master has no IPv4 address to advertise (--advertise-ip)"
            ),
        }
        compat
            .core
            .collector
            .retain_with(Arc::new(Retains(Arc::downgrade(&compat))));
        tokio::spawn(allocation_loop(compat.clone()));
        tokio::spawn(forward_loop(compat.clone()));
        tokio::spawn(timers_loop(compat.clone()));
        compat
    }

    /// The Mesos routes: `/api/v1/scheduler`, the state endpoints and, with an advertised
    /// address, the v0 scheduler API (`POST /master/<message name>`, libprocess).
    pub fn router(self: &Arc<Compat>) -> Router {
        let router = crate::v1::router()
            .merge(crate::state::router(self.clone()))
            .with_state(self.clone());
        match self.v0.get() {
            Some(v0) => router.merge(v0.router()),
            None => router,
        }
    }

    pub(crate) fn core(&self) -> &MasterCore {
        &self.core
    }

    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The framework `session` is the current session of.
    pub(crate) fn framework_of(&self, session: SessionId) -> Option<String> {
        self.model.lock().framework_of(session).map(str::to_string)
    }

    /// Whether a framework of this id is known (subscribed, or within its failover timeout).
    pub(crate) fn is_known(&self, framework_id: &str) -> bool {
        self.model.lock().is_known(framework_id)
    }

    pub(crate) fn framework_summaries(&self) -> Vec<FrameworkSummary> {
        self.model.lock().framework_summaries()
    }

    fn now(&self) -> Now {
        Now {
            wall_ms: self.core.clock().wall_ms(),
            monotonic: self.core.clock().monotonic(),
        }
    }

    /// A new session whose events go to `sink`.
    pub fn open_session(&self, sink: Arc<dyn EventSink>) -> SessionId {
        let id = {
            let mut last = self.last_session.lock();
            *last += 1;
            SessionId(*last)
        };
        self.sinks.lock().insert(id, sink);
        id
    }

    /// A SUBSCRIBE on `session` (see [`Frameworks::subscribe`]); what follows is carried
    /// out in the background, in order.
    pub fn subscribe(
        self: &Arc<Compat>,
        session: SessionId,
        call: &Call,
        force: bool,
        reached_at: Option<&MasterAddress>,
    ) -> Result<(), CompatError> {
        let snap = self.core.published.snapshot();
        let effects =
            self.model
                .lock()
                .subscribe(&snap, self.now(), session, call, force, reached_at)?;
        let c = self.clone();
        tokio::spawn(async move { c.carry_out(effects).await });
        Ok(())
    }

    /// Any other call, from `session` (`None`: the call named none); answered once its
    /// effects are carried out.
    pub async fn call(&self, session: Option<SessionId>, call: Call) -> Result<(), CompatError> {
        let snap = self.core.published.snapshot();
        let effects = self.model.lock().call(&snap, self.now(), session, call)?;
        self.carry_out(effects).await;
        Ok(())
    }

    /// `session` ended: its sink is dropped and its framework (if it still was on it)
    /// disconnected.
    pub async fn session_ended(&self, session: SessionId) {
        self.sinks.lock().remove(&session);
        self.streams.lock().retain(|_, s| *s != session);
        let snap = self.core.published.snapshot();
        let effects = self.model.lock().disconnected(&snap, self.now(), session);
        self.carry_out(effects).await;
    }

    /// Carries out `effects` in order (see the module documentation).
    pub(crate) async fn carry_out(&self, effects: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = effects.into();
        while let Some(effect) = queue.pop_front() {
            let follow: Vec<Effect> = match effect {
                Effect::Commit { command, then } => {
                    let result = self.core.committer.submit(command).await;
                    let snap = self.core.published.snapshot();
                    self.model.lock().committed(&snap, self.now(), then, result)
                }
                Effect::Send { session, event } => {
                    let sink = self.sinks.lock().get(&session).cloned();
                    if sink.is_some_and(|s| s.send(&event)) {
                        Vec::new()
                    } else {
                        self.model.lock().undelivered(session, event)
                    }
                }
                Effect::Close { session, error } => {
                    let sink = self.sinks.lock().get(&session).cloned();
                    if let Some(sink) = sink {
                        sink.close(error);
                    }
                    Vec::new()
                }
                Effect::Wake => {
                    self.wake.notify_one();
                    Vec::new()
                }
            };
            // What follows from an effect comes before the effects after it.
            for e in follow.into_iter().rev() {
                queue.push_front(e);
            }
        }
    }

    /// Whether `session`'s reader keeps up (no sink: it does not).
    fn reads(&self, session: SessionId) -> bool {
        self.sinks.lock().get(&session).is_some_and(|s| s.reads())
    }

    fn link_ip(&self, agent: &shoal_core::AgentId) -> Option<IpAddr> {
        self.core.agents.link_ip(agent)
    }

    /// One look at every timer: what is due by the master's clock fires.
    async fn fire_timers(&self) {
        let snap = self.core.published.snapshot();
        let effects = self.model.lock().tick(&snap, self.now());
        self.carry_out(effects).await;
    }
}

/// Allocation rounds: on a timer and whenever resources may have been freed.
async fn allocation_loop(c: Arc<Compat>) {
    let interval = c.model.lock().config().allocation_interval;
    loop {
        let _ = tokio::time::timeout(interval, c.wake.notified()).await;
        let snap = c.core.published.snapshot();
        let effects = c
            .model
            .lock()
            .allocate(&snap, c.now(), |s| c.reads(s), |a| c.link_ip(a));
        c.carry_out(effects).await;
    }
}

/// The commit stream, told to the model entry by entry.
async fn forward_loop(c: Arc<Compat>) {
    let mut rx = c.core.published.entries.subscribe();
    loop {
        let entry = match rx.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "status forwarder lagged; frameworks should reconcile"
                );
                continue;
            }
            Err(_) => return,
        };
        let snap = c.core.published.snapshot();
        let effects = c.model.lock().observe(&snap, c.now(), &entry.events);
        c.carry_out(effects).await;
    }
}

/// Offer timeouts, update retries, failover timeouts.
async fn timers_loop(c: Arc<Compat>) {
    let period = c
        .model
        .lock()
        .config()
        .update_retry
        .min(Duration::from_millis(500))
        .max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        c.fire_timers().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The failover timer runs on the master's clock: a framework away for its
    /// `failover_timeout` is removed when the clock has moved that far, and not before, with
    /// no real time passing.
    #[tokio::test]
    async fn the_failover_timeout_fires_when_the_clock_is_advanced() {
        let clock = Arc::new(shoal_core::clock::ManualClock::new(1_000_000));
        let core = MasterCore::start_with(
            Arc::new(shoal_master::MemStore::new()),
            shoal_master::CommitConfig::default(),
            shoal_master::agents::AgentTimers::default(),
            clock.clone(),
        )
        .unwrap();
        let c = Compat::start(core, CompatConfig::default());
        struct Open;
        impl EventSink for Open {
            fn send(&self, _: &Event) -> bool {
                true
            }
            fn close(&self, _: Option<String>) {}
            fn reads(&self) -> bool {
                true
            }
        }
        let session = c.open_session(Arc::new(Open));
        let call: Call = shoal_proto::json::from_json_value(serde_json::json!({
            "type": "SUBSCRIBE",
            "subscribe": {"framework_info": {"user": "u", "name": "away", "failover_timeout": 60.0}}
        }))
        .unwrap();
        c.subscribe(session, &call, true, None).unwrap();
        c.session_ended(session).await;
        let known = |c: &Compat| !c.framework_summaries().is_empty();
        c.fire_timers().await;
        clock.advance(Duration::from_millis(59_999));
        c.fire_timers().await;
        assert!(known(&c), "within its failover timeout it is kept");
        clock.advance(Duration::from_millis(1));
        c.fire_timers().await;
        assert!(!known(&c), "at its failover timeout it is removed");
    }
}
