//! `POST /api/v1/scheduler`: subscriptions, calls, events.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::{json, Value as Json};
use shoal_core::{
    AgentId, Claim, ClaimId, CommitMode, ConflictCheck, OfferId, Placement, Rejection, ResourceSet,
    TaskId, TaskSpec, TaskState,
};
use shoal_master::{CommitError, MasterCore};
use shoal_proto::mesos::v1::scheduler::{Call, Event};
use shoal_sched::{Event as CellEvent, Reply};
use tokio::sync::mpsc;

use crate::allocator::{self, AllocatorConfig, Candidate, OfferFilter};
use crate::error::CompatError;
use crate::limits;
use crate::updates::UpdateStreams;
use crate::CompatConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }
}

struct Framework {
    id: String,
    info: Json,
    /// Its roles (MULTI_ROLE `roles`, else the legacy `role`; never empty): offers are made
    /// for each role that is not suppressed.
    roles: Vec<String>,
    partition_aware: bool,
    /// Declared TASK_KILLING_STATE: only such frameworks are sent TASK_KILLING.
    killing_state: bool,
    stream_id: String,
    /// The open event stream; `None` while the framework is disconnected.
    tx: Option<mpsc::Sender<Bytes>>,
    encoding: Encoding,
    disconnected_at: Option<Instant>,
    failover_timeout: Duration,
    /// Refused-offer filters (DECLINE, and what an ACCEPT left unused), per agent.
    filters: HashMap<AgentId, OfferFilter>,
    /// Roles suppressed (SUPPRESS, `suppressed_roles`): no offers for them until REVIVE.
    suppressed: HashSet<String>,
    /// Status updates not yet acknowledged, per task (see `updates`).
    pending: UpdateStreams,
    /// Ends the current subscription's stream: sent a message when a newer subscription
    /// takes over, dropped when the framework is removed.
    stop_stream: Option<tokio::sync::oneshot::Sender<&'static str>>,
    /// When it last made a call on its current subscription (wall clock, ms); `None` until
    /// its first. A call needs the framework id, which only the stream tells a new
    /// framework, so a call shows that it reads its stream.
    last_call_ms: Option<u64>,
    /// An offer of it timed out with no call from it meanwhile: it does not read its stream,
    /// so it gets no offers until its next call.
    withheld: bool,
}

/// The Mesos scheduler API's state: subscribed frameworks and their offers.
pub struct Compat {
    core: MasterCore,
    config: CompatConfig,
    frameworks: Mutex<HashMap<String, Framework>>,
    /// Outstanding offers we made, by id → framework.
    offers: Mutex<HashMap<OfferId, String>>,
    /// Offers we released ourselves (accept, decline, timeout): no RESCIND for those.
    released_by_us: Mutex<HashSet<OfferId>>,
    /// Frameworks removed (TEARDOWN, failover timeout), newest last: they may not subscribe
    /// again. Bounded by `limits::REMOVED_FRAMEWORKS_MAX`; in memory only, as in Mesos.
    removed: Mutex<RemovedFrameworks>,
    /// Agents whose offer timed out unanswered, until when (wall clock, ms): meanwhile they
    /// are offered only to frameworks that have made a call on their subscription, so a row
    /// of new frameworks that never read cannot pass an agent from one to the next while
    /// native claims and answering frameworks wait.
    probation: Mutex<HashMap<AgentId, u64>>,
    /// A fresh id per master start; prefixes the ids this master hands out.
    run_id: String,
    seq: AtomicU64,
    wake: tokio::sync::Notify,
    started_ms: u64,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Compat {
    /// Starts the allocator, the status forwarder and the timers. Needs a tokio runtime.
    pub fn start(core: MasterCore, config: CompatConfig) -> Arc<Compat> {
        let compat = Arc::new(Compat {
            config,
            frameworks: Mutex::new(HashMap::new()),
            offers: Mutex::new(HashMap::new()),
            released_by_us: Mutex::new(HashSet::new()),
            removed: Mutex::new(RemovedFrameworks::default()),
            probation: Mutex::new(HashMap::new()),
            run_id: uuid_string(),
            seq: AtomicU64::new(1),
            wake: tokio::sync::Notify::new(),
            started_ms: core.clock().wall_ms(),
            core,
        });
        tokio::spawn(allocation_loop(compat.clone()));
        tokio::spawn(forward_loop(compat.clone()));
        tokio::spawn(timers_loop(compat.clone()));
        compat
    }

    pub fn router(self: &Arc<Compat>) -> Router {
        Router::new()
            .route("/api/v1/scheduler", axum::routing::post(scheduler))
            .merge(crate::state::router(self.clone()))
            .with_state(self.clone())
    }

    pub(crate) fn core(&self) -> &MasterCore {
        &self.core
    }

    /// Wall time (what frameworks are told), from the master's clock.
    fn wall_ms(&self) -> u64 {
        self.core.clock().wall_ms()
    }

    /// Monotonic time (what timeouts are measured on), from the master's clock.
    fn monotonic(&self) -> Instant {
        self.core.clock().monotonic()
    }

    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms
    }

    pub(crate) fn framework_summaries(&self) -> Vec<(String, Json, bool, Vec<String>)> {
        self.frameworks
            .lock()
            .values()
            .map(|f| {
                (
                    f.id.clone(),
                    f.info.clone(),
                    f.tx.is_some(),
                    f.roles.clone(),
                )
            })
            .collect()
    }

    /// A framework, offer or accept id: unique to this master's run (as Mesos prefixes them
    /// with its master id), so ids handed out before a restart are never handed out again.
    fn next_id(&self, prefix: &str) -> String {
        format!(
            "{}-{prefix}{}",
            self.run_id,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Encodes an event for a framework as one RecordIO record.
    fn record(encoding: Encoding, event: &Json) -> Option<Bytes> {
        let bytes = match encoding {
            Encoding::Json => serde_json::to_vec(event).ok()?,
            Encoding::Protobuf => {
                match shoal_proto::json::from_json_value::<Event>(event.clone()) {
                    Ok(e) => e.encode_to_vec(),
                    Err(err) => {
                        tracing::warn!(error = %err, "event cannot be encoded as protobuf");
                        return None;
                    }
                }
            }
        };
        Some(shoal_proto::recordio::encode(&bytes))
    }

    fn send(&self, framework_id: &str, event: Json) -> bool {
        let fws = self.frameworks.lock();
        let Some(f) = fws.get(framework_id) else {
            return false;
        };
        let Some(tx) = &f.tx else { return false };
        match Self::record(f.encoding, &event) {
            Some(r) => tx.try_send(r).is_ok(),
            None => false,
        }
    }

    /// A status update for a framework: as Mesos writes it, with the state the framework
    /// understands (TASK_LOST for the partition states if it is not partition-aware). The
    /// arguments are the fields of Mesos's `TaskStatus` that vary by caller.
    #[allow(clippy::too_many_arguments)]
    fn status_json(
        &self,
        f: &Framework,
        task_id: &TaskId,
        agent_id: &AgentId,
        state: TaskState,
        status: &shoal_core::StatusInfo,
        reason_override: Option<&str>,
        uuid: Option<&str>,
    ) -> Json {
        let state = if f.partition_aware {
            state
        } else {
            match state {
                TaskState::Unreachable
                | TaskState::Gone
                | TaskState::GoneByOperator
                | TaskState::Dropped
                | TaskState::Unknown => TaskState::Lost,
                s => s,
            }
        };
        let mut s = json!({
            "task_id": {"value": task_id.as_str()},
            "agent_id": {"value": agent_id.as_str()},
            "state": state.mesos_name(),
            "source": status.source.clone().unwrap_or_else(|| "SOURCE_MASTER".into()),
            "timestamp": (if status.timestamp > 0 { status.timestamp } else { self.wall_ms() }) as f64 / 1000.0,
        });
        if let Some(m) = &status.message {
            s["message"] = json!(m);
        }
        if let Some(r) = reason_override
            .map(str::to_string)
            .or_else(|| status.reason.clone())
        {
            s["reason"] = json!(r);
        }
        if let Some(h) = status.healthy {
            s["healthy"] = json!(h);
        }
        if let Some(u) = uuid {
            s["uuid"] = json!(u);
        }
        s
    }
}

/// The call, or why it is refused.
fn parse_call(headers: &HeaderMap, body: &Bytes) -> Result<(Json, Encoding), CompatError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = if ct.starts_with("application/json") {
        Encoding::Json
    } else if ct.starts_with("application/x-protobuf") {
        Encoding::Protobuf
    } else {
        return Err(CompatError::UnsupportedMediaType(format!(
            "Expecting 'Content-Type' of application/json or application/x-protobuf, got '{ct}'"
        )));
    };
    let call: Call = match encoding {
        Encoding::Json => shoal_proto::json::from_json_slice(body)
            .map_err(|e| CompatError::Invalid(format!("Failed to parse body into Call: {e}")))?,
        Encoding::Protobuf => Call::decode(body.as_ref())
            .map_err(|e| CompatError::Invalid(format!("Failed to parse body into Call: {e}")))?,
    };
    Ok((shoal_proto::json::to_json_value(&call), encoding))
}

fn accepts(headers: &HeaderMap, fallback: Encoding) -> Option<Encoding> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(fallback);
    };
    let mut out = None;
    for part in accept
        .split(',')
        .map(|p| p.split(';').next().unwrap_or("").trim())
    {
        match part {
            "application/json" => return Some(Encoding::Json),
            "application/x-protobuf" => return Some(Encoding::Protobuf),
            "*/*" | "application/*" => out = Some(fallback),
            _ => {}
        }
    }
    out
}

async fn scheduler(State(c): State<Arc<Compat>>, headers: HeaderMap, body: Bytes) -> Response {
    let (call, encoding) = match parse_call(&headers, &body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let kind = call["type"].as_str().unwrap_or("UNKNOWN").to_string();
    if kind == "SUBSCRIBE" {
        if headers.contains_key("mesos-stream-id") {
            return CompatError::Invalid(
                "Subscribe calls should not include the 'Mesos-Stream-Id' header".into(),
            )
            .into_response();
        }
        let Some(enc) = accepts(&headers, encoding) else {
            return CompatError::NotAcceptable(
                "Expecting 'Accept' to allow application/json or application/x-protobuf".into(),
            )
            .into_response();
        };
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1:5050")
            .to_string();
        return subscribe(c, call, enc, &host);
    }
    let Some(fw_id) = call["framework_id"]["value"].as_str().map(str::to_string) else {
        return CompatError::Invalid("Expecting 'framework_id' to be present".into())
            .into_response();
    };
    let stream = headers
        .get("mesos-stream-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    {
        let mut fws = c.frameworks.lock();
        match fws.get_mut(&fw_id) {
            Some(f) if f.tx.is_some() => match stream {
                Some(s) if s == f.stream_id => {
                    // It reads its stream: offers resume if they were withheld.
                    f.last_call_ms = Some(c.wall_ms());
                    if std::mem::take(&mut f.withheld) {
                        c.wake.notify_one();
                    }
                }
                Some(_) => return CompatError::Invalid("The stream ID included in this request didn't match the stream ID currently associated with framework".into()).into_response(),
                None => return CompatError::Invalid("All non-subscribe calls should include the 'Mesos-Stream-Id' header".into()).into_response(),
            },
            _ => return CompatError::Forbidden("Framework is not subscribed".into()).into_response(),
        }
    }
    tracing::debug!(framework_id = %fw_id, call = %kind, "scheduler call");
    match kind.as_str() {
        "TEARDOWN" => return teardown(&c, &fw_id).await,
        "ACCEPT" => return accept(&c, &fw_id, &call["accept"]).await,
        "DECLINE" => {
            let ids: Vec<OfferId> = offer_ids(&call["decline"]["offer_ids"]);
            decline(&c, &fw_id, ids, &call["decline"]["filters"]).await;
        }
        // Per role, as Mesos: no roles means all of the framework's roles.
        "REVIVE" | "SUPPRESS" => {
            let revive = kind == "REVIVE";
            let roles = &call[if revive { "revive" } else { "suppress" }]["roles"];
            if let Some(f) = c.frameworks.lock().get_mut(&fw_id) {
                let named: Vec<String> = strings(roles);
                let affected: Vec<String> = if named.is_empty() {
                    f.roles.clone()
                } else {
                    named.into_iter().filter(|r| f.roles.contains(r)).collect()
                };
                if revive && !affected.is_empty() {
                    f.filters.clear();
                }
                for r in affected {
                    if revive {
                        f.suppressed.remove(&r);
                    } else {
                        f.suppressed.insert(r);
                    }
                }
            }
            c.wake.notify_one();
        }
        "KILL" => {
            if let Some(t) = call["kill"]["task_id"]["value"].as_str() {
                let task_id = TaskId::new(t);
                let owned = c
                    .core
                    .published
                    .snapshot()
                    .task(&task_id)
                    .map(|t| t.owner == fw_id)
                    .unwrap_or(false);
                if owned {
                    let _ = c
                        .core
                        .committer
                        .submit(shoal_core::Command::KillTask { task_id })
                        .await;
                } else {
                    // Unknown task: Mesos answers with TASK_LOST (or TASK_UNKNOWN).
                    reconcile_one(
                        &c,
                        &fw_id,
                        &task_id,
                        call["kill"]["agent_id"]["value"].as_str(),
                    );
                }
            }
        }
        // Every Shoal task runs under its own command executor, whose id in Mesos is the
        // task's id: shutting that executor down kills the task. Other executors: none.
        "SHUTDOWN" => {
            if let Some(e) = call["shutdown"]["executor_id"]["value"].as_str() {
                let task_id = TaskId::new(e);
                let live = c
                    .core
                    .published
                    .snapshot()
                    .task(&task_id)
                    .is_some_and(|t| t.owner == fw_id && !t.state.is_terminal());
                if live {
                    let _ = c
                        .core
                        .committer
                        .submit(shoal_core::Command::KillTask { task_id })
                        .await;
                }
            }
        }
        "ACKNOWLEDGE" => {
            let next = call["acknowledge"]["uuid"].as_str().and_then(|u| {
                c.frameworks
                    .lock()
                    .get_mut(&fw_id)
                    .and_then(|f| f.pending.acknowledge(u, c.monotonic()))
            });
            // The task's next update, held back until this one was acknowledged.
            if let Some(s) = next {
                c.send(&fw_id, json!({"type": "UPDATE", "update": {"status": s}}));
            }
        }
        "RECONCILE" => reconcile(&c, &fw_id, &call["reconcile"]["tasks"]),
        "UPDATE_FRAMEWORK" => {
            let update = &call["update_framework"];
            let mut info = update["framework_info"].clone();
            if info["id"]["value"].as_str() != Some(fw_id.as_str()) {
                return CompatError::Invalid(
                    "'framework_id' differs from 'update_framework.framework_info.id'".into(),
                )
                .into_response();
            }
            info["id"] = json!({"value": fw_id});
            if let Err(why) = check_framework_info(&info) {
                return why.into_response();
            }
            let settings = Settings::of(&c.config, &info, &update["suppressed_roles"]);
            settings.cap_failover_timeout(&mut info);
            if let Some(f) = c.frameworks.lock().get_mut(&fw_id) {
                f.info = info;
                settings.apply(f);
            }
            c.wake.notify_one();
        }
        "RECONCILE_OPERATIONS" => {
            reconcile_operations(&c, &fw_id, &call["reconcile_operations"]["operations"])
        }
        // Accepted and ignored, as a master with nothing to do for them would.
        // MESSAGE: Shoal tasks have no executor to deliver to (Mesos delivers best effort).
        // REQUEST: Mesos's allocator ignores it too. ACKNOWLEDGE_OPERATION_STATUS: no
        // operation status this master sends carries a uuid.
        "MESSAGE"
        | "REQUEST"
        | "ACKNOWLEDGE_OPERATION_STATUS"
        | "ACCEPT_INVERSE_OFFERS"
        | "DECLINE_INVERSE_OFFERS" => {}
        other => return CompatError::Invalid(format!("Unknown call type {other}")).into_response(),
    }
    StatusCode::ACCEPTED.into_response()
}

/// The strings of a JSON array (e.g. role names); nothing for anything else.
fn strings<T: FromIterator<String>>(v: &Json) -> T {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn offer_ids(v: &Json) -> Vec<OfferId> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o["value"].as_str())
                .map(OfferId::new)
                .collect()
        })
        .unwrap_or_default()
}

/// What SUBSCRIBE and UPDATE_FRAMEWORK set from a `FrameworkInfo` (and its suppressed roles).
struct Settings {
    roles: Vec<String>,
    partition_aware: bool,
    killing_state: bool,
    failover_timeout: Duration,
    suppressed: HashSet<String>,
}

impl Settings {
    fn of(config: &CompatConfig, info: &Json, suppressed_roles: &Json) -> Settings {
        let mut roles: Vec<String> = strings(&info["roles"]);
        roles.dedup();
        if roles.is_empty() {
            roles.push(info["role"].as_str().unwrap_or("*").to_string());
        }
        let has_cap = |cap: &str| {
            info["capabilities"]
                .as_array()
                .is_some_and(|caps| caps.iter().any(|c| c["type"] == cap))
        };
        let suppressed: HashSet<String> = strings(suppressed_roles);
        let suppressed = suppressed
            .into_iter()
            .filter(|r| roles.contains(r))
            .collect();
        Settings {
            partition_aware: has_cap("PARTITION_AWARE"),
            killing_state: has_cap("TASK_KILLING_STATE"),
            failover_timeout: Duration::from_secs_f64(
                info["failover_timeout"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .max(0.0)
                    .min(config.failover_timeout_max.as_secs_f64()),
            ),
            suppressed,
            roles,
        }
    }

    /// Writes the `failover_timeout` in force into `info`, so what the state endpoints
    /// report is what holds.
    fn cap_failover_timeout(&self, info: &mut Json) {
        if info
            .get("failover_timeout")
            .is_some_and(|t| t.as_f64() != Some(self.failover_timeout.as_secs_f64()))
        {
            info["failover_timeout"] = json!(self.failover_timeout.as_secs_f64());
        }
    }

    fn apply(self, f: &mut Framework) {
        f.roles = self.roles;
        f.partition_aware = self.partition_aware;
        f.killing_state = self.killing_state;
        f.failover_timeout = self.failover_timeout;
        f.suppressed = self.suppressed;
    }
}

/// The bounds of a FrameworkInfo (SUBSCRIBE, UPDATE_FRAMEWORK): its size, its name, its
/// roles. A framework outside them is refused with 400 and this message, as Mesos refuses a
/// call that fails validation.
fn check_framework_info(info: &Json) -> Result<(), CompatError> {
    let name = info["name"].as_str().unwrap_or("");
    if name.len() > limits::FRAMEWORK_NAME_BYTES_MAX {
        return Err(CompatError::Invalid(format!(
            "Failed to validate scheduler::Call: 'framework_info.name' is {} bytes; at most {} are accepted",
            name.len(),
            limits::FRAMEWORK_NAME_BYTES_MAX
        )));
    }
    let roles: Vec<String> = strings(&info["roles"]);
    if roles.len() > limits::FRAMEWORK_ROLES_MAX {
        return Err(CompatError::Invalid(format!(
            "Failed to validate scheduler::Call: 'framework_info.roles' has {} roles; at most {} are accepted",
            roles.len(),
            limits::FRAMEWORK_ROLES_MAX
        )));
    }
    let legacy = info["role"].as_str().map(str::to_string);
    for r in roles.iter().chain(legacy.iter()) {
        // The cell's own rule for role names (Mesos's, with a length bound).
        shoal_core::cell::validate_role_name(r).map_err(|e| {
            CompatError::Invalid(format!("Failed to validate scheduler::Call: a role in 'framework_info.roles' (or 'role'): {e}"))
        })?;
    }
    let bytes = serde_json::to_vec(info)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > limits::FRAMEWORK_INFO_BYTES_MAX {
        return Err(CompatError::Invalid(format!(
            "Failed to validate scheduler::Call: 'framework_info' is {bytes} bytes; at most {} are accepted",
            limits::FRAMEWORK_INFO_BYTES_MAX
        )));
    }
    Ok(())
}

/// The answer to a SUBSCRIBE of a framework this master removed (TEARDOWN, or its failover
/// timeout passed): as Mesos, a stream with one ERROR event, then closed.
fn removed_framework(encoding: Encoding) -> Response {
    let event = json!({"type": "ERROR", "error": {"message": "Framework has been removed"}});
    let body = Compat::record(encoding, &event).unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.content_type())
        // Mesos names the stream before it refuses the subscription.
        .header("Mesos-Stream-Id", uuid_string())
        .body(Body::from(body))
        .expect("a valid response")
}

fn subscribe(c: Arc<Compat>, call: Json, encoding: Encoding, host: &str) -> Response {
    let info = call["subscribe"]["framework_info"].clone();
    if info.is_null() {
        return CompatError::Invalid("Expecting 'subscribe.framework_info' to be present".into())
            .into_response();
    }
    if let Err(why) = check_framework_info(&info) {
        tracing::info!("refusing a subscription: {why}");
        return why.into_response();
    }
    let settings = Settings::of(&c.config, &info, &call["subscribe"]["suppressed_roles"]);
    if let Some(given) = info["id"]["value"].as_str() {
        if let Err(shoal_core::Rejection::Invalid(why)) =
            shoal_core::cell::validate_id("framework id", given)
        {
            return CompatError::Invalid(why).into_response();
        }
        if call["framework_id"]["value"].as_str() != Some(given) {
            return CompatError::Invalid(
                "'framework_id' differs from 'subscribe.framework_info.id'".into(),
            )
            .into_response();
        }
        if c.removed.lock().contains(given) {
            tracing::info!(
                framework_id = given,
                "refusing the subscription of a removed framework"
            );
            return removed_framework(encoding);
        }
    }
    let id = info["id"]["value"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| c.next_id("F"));
    let stream_id = uuid_string();
    let (tx, rx) = mpsc::channel::<Bytes>(limits::EVENT_BUFFER);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<&'static str>();
    let mut info = info;
    info["id"] = json!({"value": id});
    settings.cap_failover_timeout(&mut info);
    let old_offers: Vec<OfferId>;
    {
        let mut fws = c.frameworks.lock();
        if !fws.contains_key(&id) && fws.len() >= c.config.frameworks_max {
            drop(fws);
            tracing::warn!(
                frameworks_max = c.config.frameworks_max,
                "refusing a subscription: too many frameworks"
            );
            let mut r = CompatError::Unavailable(format!(
                "Too many frameworks: this master keeps at most {} (subscribed or within \
                     their failover timeout); retry later",
                c.config.frameworks_max
            ))
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return r;
        }
        let f = fws.entry(id.clone()).or_insert_with(|| Framework {
            id: id.clone(),
            info: info.clone(),
            roles: settings.roles.clone(),
            partition_aware: false,
            killing_state: false,
            stream_id: String::new(),
            tx: None,
            encoding,
            disconnected_at: None,
            failover_timeout: Duration::ZERO,
            filters: HashMap::new(),
            suppressed: HashSet::new(),
            pending: UpdateStreams::default(),
            stop_stream: None,
            last_call_ms: None,
            withheld: false,
        });
        // A re-subscription replaces the old stream (failover); its offers are rescinded
        // and made anew, as Mesos does.
        f.info = info;
        settings.apply(f);
        f.stream_id = stream_id.clone();
        f.tx = Some(tx.clone());
        if let Some(old) = f.stop_stream.replace(stop_tx) {
            let _ = old.send("Framework failed over");
        }
        f.encoding = encoding;
        f.disconnected_at = None;
        f.last_call_ms = None;
        f.withheld = false;
        let offers = c.offers.lock();
        old_offers = offers
            .iter()
            .filter(|(_, fw)| **fw == id)
            .map(|(o, _)| o.clone())
            .collect();
    }
    tracing::info!(framework_id = %id, "framework subscribed");
    let subscribed = json!({
        "type": "SUBSCRIBED",
        "subscribed": {
            "framework_id": {"value": id},
            "heartbeat_interval_seconds": c.config.heartbeat_interval.as_secs_f64(),
            "master_info": master_info(&c, host),
        }
    });
    if let Some(r) = Compat::record(encoding, &subscribed) {
        let _ = tx.try_send(r);
    }
    if let Some(r) = Compat::record(encoding, &json!({"type": "HEARTBEAT"})) {
        let _ = tx.try_send(r);
    }
    // The offers of the previous subscription are rescinded (and made anew), as Mesos does
    // when a framework fails over.
    for o in &old_offers {
        let rescind = json!({"type": "RESCIND", "rescind": {"offer_id": {"value": o.as_str()}}});
        if let Some(r) = Compat::record(encoding, &rescind) {
            let _ = tx.try_send(r);
        }
    }
    // Unacknowledged updates are sent again on the new stream.
    let resend: Vec<Json> = {
        let mut fws = c.frameworks.lock();
        fws.get_mut(&id)
            .map(|f| {
                f.pending
                    .due(Duration::ZERO, c.monotonic())
                    .into_iter()
                    .map(|s| json!({"type": "UPDATE", "update": {"status": s}}))
                    .collect()
            })
            .unwrap_or_default()
    };
    for e in resend {
        if let Some(r) = Compat::record(encoding, &e) {
            let _ = tx.try_send(r);
        }
    }
    let c2 = c.clone();
    let id2 = id.clone();
    let stream2 = stream_id.clone();
    tokio::spawn(async move {
        if !old_offers.is_empty() {
            release(&c2, old_offers).await;
        }
        c2.wake.notify_one();
        // Heartbeats until the stream closes; then the framework is disconnected.
        let mut tick = tokio::time::interval(c2.config.heartbeat_interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(r) = Compat::record(encoding, &json!({"type": "HEARTBEAT"})) {
                        if tx.send(r).await.is_err() { break; }
                    }
                }
                _ = tx.closed() => break,
                // A newer subscription took over (an ERROR, then the stream ends, as Mesos
                // does), or the framework was removed (the stream just ends).
                stop = &mut stop_rx => {
                    if let Ok(message) = stop {
                        let error = json!({"type": "ERROR", "error": {"message": message}});
                        if let Some(r) = Compat::record(encoding, &error) {
                            let _ = tx.send(r).await;
                        }
                    }
                    break;
                }
            }
        }
        drop(tx);
        disconnected(&c2, &id2, &stream2).await;
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, std::io::Error>),
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.content_type())
        .header("Mesos-Stream-Id", stream_id)
        .body(body)
        .expect("a valid response")
}

use tokio_stream::StreamExt as _;

/// The ids of removed frameworks, oldest forgotten first.
#[derive(Default)]
struct RemovedFrameworks {
    ids: HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl RemovedFrameworks {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
        }
        while self.order.len() > limits::REMOVED_FRAMEWORKS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }
}

fn uuid_string() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The master as the framework reached it (the `Host` of its SUBSCRIBE).
fn master_info(c: &Compat, host: &str) -> Json {
    let id = c.core.published.snapshot().cell_id().to_string();
    let (hostname, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().unwrap_or(5050)),
        None => (host.to_string(), 5050),
    };
    // `ip` is the IPv4 address as a number in network order, as Mesos writes it.
    let ip = hostname
        .parse::<std::net::Ipv4Addr>()
        .map(|a| u32::from_le_bytes(a.octets()))
        .unwrap_or(0);
    json!({"id": id, "ip": ip, "port": port, "hostname": hostname, "version": crate::MESOS_VERSION,
           "address": {"hostname": hostname, "ip": hostname, "port": port}})
}

async fn disconnected(c: &Arc<Compat>, fw_id: &str, stream_id: &str) {
    let offers: Vec<OfferId> = {
        let mut fws = c.frameworks.lock();
        let Some(f) = fws.get_mut(fw_id) else { return };
        if f.stream_id != stream_id {
            return; // a newer subscription took over
        }
        f.tx = None;
        f.disconnected_at = Some(c.monotonic());
        c.offers
            .lock()
            .iter()
            .filter(|(_, fw)| *fw == fw_id)
            .map(|(o, _)| o.clone())
            .collect()
    };
    tracing::info!(framework_id = %fw_id, "framework disconnected");
    release(c, offers).await;
}

/// Releases offers we made (no RESCIND is sent for them).
async fn release(c: &Arc<Compat>, offers: Vec<OfferId>) {
    if offers.is_empty() {
        return;
    }
    {
        let mut mine = c.offers.lock();
        let mut ours = c.released_by_us.lock();
        for o in &offers {
            mine.remove(o);
            ours.insert(o.clone());
        }
    }
    let _ = c
        .core
        .committer
        .submit(shoal_core::Command::ReleaseHolds { offer_ids: offers })
        .await;
    c.wake.notify_one();
}

/// Installs Mesos's refused-offer filter for what a framework declined (or left unused) on an
/// agent: `refuse_seconds` from `filters` (default 5 s); none for 0 s or nothing refused.
fn install_filter(c: &Compat, fw_id: &str, agent: &AgentId, refused: ResourceSet, filters: &Json) {
    let refuse = filters["refuse_seconds"]
        .as_f64()
        .unwrap_or(limits::REFUSE_SECONDS_DEFAULT)
        .clamp(0.0, limits::REFUSE_SECONDS_MAX);
    if refuse <= 0.0 || refused.is_empty() {
        return;
    }
    let until = c.wall_ms() + (refuse * 1000.0) as u64;
    if let Some(f) = c.frameworks.lock().get_mut(fw_id) {
        f.filters
            .insert(agent.clone(), OfferFilter { until, refused });
    }
}

/// The resources `offers` hold, per agent (offers this framework does not hold are left out).
fn held_by_agent(
    snap: &shoal_sched::Cell,
    fw_id: &str,
    offers: &[OfferId],
) -> HashMap<AgentId, ResourceSet> {
    let mut out: HashMap<AgentId, ResourceSet> = HashMap::new();
    for h in offers
        .iter()
        .filter_map(|o| snap.hold(o))
        .filter(|h| h.framework_id == fw_id)
    {
        let _ = out.entry(h.agent_id.clone()).or_default().add(&h.resources);
    }
    out
}

async fn decline(c: &Arc<Compat>, fw_id: &str, ids: Vec<OfferId>, filters: &Json) {
    let snap = c.core.published.snapshot();
    let mine: Vec<OfferId> = {
        let offers = c.offers.lock();
        ids.into_iter()
            .filter(|o| offers.get(o).map(|f| f == fw_id).unwrap_or(false))
            .collect()
    };
    for (agent, refused) in held_by_agent(&snap, fw_id, &mine) {
        install_filter(c, fw_id, &agent, refused, filters);
    }
    release(c, mine).await;
}

async fn accept(c: &Arc<Compat>, fw_id: &str, accept: &Json) -> Response {
    let ids = offer_ids(&accept["offer_ids"]);
    let snap = c.core.published.snapshot();
    let agent = ids
        .iter()
        .find_map(|o| snap.hold(o))
        .map(|h| h.agent_id.clone());
    let mut tasks: Vec<Json> = Vec::new();
    let mut invalid: Vec<(String, String)> = Vec::new();
    for op in accept["operations"].as_array().cloned().unwrap_or_default() {
        let ty = op["type"].as_str().unwrap_or("UNKNOWN");
        let launched: Vec<Json> = match ty {
            "LAUNCH" => op["launch"]["task_infos"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            "LAUNCH_GROUP" => {
                let group = op["launch_group"]["task_group"]["tasks"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let group_id = group
                    .first()
                    .and_then(|t| t["task_id"]["value"].as_str())
                    .unwrap_or("group")
                    .to_string();
                group
                    .into_iter()
                    .map(|mut t| {
                        // The tasks of a group share a network namespace and die together.
                        let mut labels = t["labels"]["labels"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default();
                        labels.push(json!({"key": "shoal.group", "value": group_id}));
                        t["labels"] = json!({"labels": labels});
                        t
                    })
                    .collect()
            }
            _ => {
                drop_operation(c, fw_id, ty, &op);
                continue;
            }
        };
        if op["id"].is_object() {
            // As Mesos: LAUNCH and LAUNCH_GROUP take no operation feedback; their tasks fail.
            for t in &launched {
                invalid.push((
                    t["task_id"]["value"].as_str().unwrap_or("").to_string(),
                    format!("The 'id' field was set in a {ty} operation, but operation feedback is not supported for {ty}"),
                ));
            }
            continue;
        }
        tasks.extend(launched);
    }
    // The tasks take the role the offers were made for.
    let role = ids
        .iter()
        .find_map(|o| snap.hold(o))
        .map(|h| h.role.clone())
        .unwrap_or_else(|| "*".into());
    let mut placements = Vec::new();
    for mut t in tasks {
        let task_id = t["task_id"]["value"].as_str().unwrap_or("").to_string();
        // As Mesos: a task or executor id it would refuse fails that task (TASK_ERROR).
        let executor = t["executor"]["executor_id"]["value"].as_str();
        let checked = shoal_core::cell::validate_id("task id", &task_id).and_then(|()| {
            executor.map_or(Ok(()), |e| shoal_core::cell::validate_id("executor id", e))
        });
        if let Err(shoal_core::Rejection::Invalid(why)) = checked {
            invalid.push((task_id, why));
            continue;
        }
        if let Some(a) = &agent {
            t["agent_id"] = json!({"value": a.as_str()});
        }
        match shoal_mesos::raw::task_info_parts(&t).map_err(|e| e.to_string()) {
            Ok(parts) => placements.push(Placement {
                task_id: TaskId::new(&parts.task_id),
                name: parts.name,
                agent_id: parts
                    .agent_id
                    .map(AgentId::new)
                    .unwrap_or_else(|| AgentId::new("")),
                resources: parts.resources,
                spec: TaskSpec::from_value(&t),
            }),
            Err(e) => invalid.push((task_id, e)),
        }
    }
    for (task_id, why) in &invalid {
        task_error(
            c,
            fw_id,
            task_id,
            agent.as_ref(),
            TaskState::Error,
            "REASON_TASK_INVALID",
            why,
        );
    }
    {
        let mut mine = c.offers.lock();
        let mut ours = c.released_by_us.lock();
        for o in &ids {
            if mine.get(o).map(|f| f == fw_id).unwrap_or(false) {
                mine.remove(o);
                ours.insert(o.clone());
            }
        }
    }
    let claim = Claim {
        priority: 0,
        evictions: vec![],
        id: ClaimId::new(c.next_id("A")),
        role,
        owner: fw_id.to_string(),
        snapshot_version: snap.version(),
        mode: CommitMode::Incremental,
        check: ConflictCheck::Fine,
        placements: placements.clone(),
    };
    let mut held = held_by_agent(&snap, fw_id, &ids);
    let mut used = ResourceSet::new();
    let result = c
        .core
        .committer
        .submit(shoal_core::Command::AcceptHolds {
            framework_id: fw_id.to_string(),
            offer_ids: ids.clone(),
            claim,
        })
        .await;
    match result {
        Ok(Reply::Claim { outcome }) => {
            for p in outcome.placements.iter().filter(|p| p.committed) {
                if let Some(placed) = placements.iter().find(|x| x.task_id == p.task_id) {
                    let _ = used.add(&placed.resources);
                }
            }
            for p in outcome.placements.iter().filter(|p| !p.committed) {
                let why = serde_json::to_value(&p.rejected)
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let (state, reason) = match &p.rejected {
                    // As Mesos's task validation: a duplicate id, or resources the offers
                    // do not hold ("Task uses more resources than available").
                    Some(shoal_core::RejectReason::DuplicateTaskId)
                    | Some(shoal_core::RejectReason::ReservationMismatch { .. })
                    | Some(shoal_core::RejectReason::InsufficientResources { .. }) => {
                        (TaskState::Error, "REASON_TASK_INVALID")
                    }
                    _ => (TaskState::Error, "REASON_INVALID_OFFERS"),
                };
                task_error(
                    c,
                    fw_id,
                    p.task_id.as_str(),
                    agent.as_ref(),
                    state,
                    reason,
                    &format!("task not launched: {why}"),
                );
            }
        }
        Ok(_) => {}
        Err(e) => {
            // Offers that are not outstanding (rescinded, used, another framework's): the
            // tasks are dropped, as Mesos does for invalid offers.
            let msg = e.to_string();
            let state = match &e {
                CommitError::Rejected(Rejection::NotFound(_))
                | CommitError::Rejected(Rejection::Forbidden(_)) => TaskState::Dropped,
                _ => TaskState::Error,
            };
            for p in &placements {
                task_error(
                    c,
                    fw_id,
                    p.task_id.as_str(),
                    agent.as_ref(),
                    state,
                    "REASON_INVALID_OFFERS",
                    &msg,
                );
            }
            // The valid offers among them go back (the accept as a whole was refused).
            let valid: Vec<OfferId> = ids
                .iter()
                .filter(|o| snap.hold(o).is_some_and(|h| h.framework_id == fw_id))
                .cloned()
                .collect();
            release(c, valid).await;
            held.clear(); // no filter for offers that went back unused
        }
    }
    // What the accept left unused is declined with its filters (Mesos's default: 5 s).
    for (agent, mut unused) in held {
        if unused.subtract(&used).is_ok() {
            install_filter(c, fw_id, &agent, unused, &accept["filters"]);
        }
    }
    c.wake.notify_one();
    StatusCode::ACCEPTED.into_response()
}

/// An offer operation this master refuses (RESERVE, UNRESERVE, CREATE, DESTROY, GROW_VOLUME,
/// SHRINK_VOLUME, CREATE_DISK, DESTROY_DISK, UNKNOWN): dropped as Mesos drops an invalid
/// operation. The framework learns of it only if it set the operation's `id`: then it gets
/// UPDATE_OPERATION_STATUS with OPERATION_ERROR (no uuid: nothing to acknowledge). The
/// resources the operation would have used stay unused in the ACCEPT and go back like the rest.
fn drop_operation(c: &Compat, fw_id: &str, ty: &str, op: &Json) {
    let message = format!(
        "Dropping {ty} operation: Shoal agents have no dynamic reservations, persistent volumes \
         or resource providers, so only LAUNCH and LAUNCH_GROUP are carried out"
    );
    tracing::warn!(framework_id = %fw_id, operation = ty, "{message}");
    if op["id"].is_object() {
        let status =
            json!({"operation_id": op["id"], "state": "OPERATION_ERROR", "message": message});
        c.send(
            fw_id,
            json!({"type": "UPDATE_OPERATION_STATUS", "update_operation_status": {"status": status}}),
        );
    }
}

/// RECONCILE_OPERATIONS: this master carries out no operation with feedback, so every operation
/// asked about is unknown (or, on an agent that is unreachable or gone, reported as such, as
/// Mesos does); an implicit reconciliation has nothing to report.
fn reconcile_operations(c: &Compat, fw_id: &str, operations: &Json) {
    let snap = c.core.published.snapshot();
    for op in operations.as_array().into_iter().flatten() {
        let agent = op["agent_id"]["value"]
            .as_str()
            .and_then(|a| snap.agent(&AgentId::new(a)));
        let state = match agent.map(|a| a.state) {
            Some(shoal_core::AgentState::Unreachable) => "OPERATION_UNREACHABLE",
            Some(shoal_core::AgentState::Gone) => "OPERATION_GONE_BY_OPERATOR",
            _ => "OPERATION_UNKNOWN",
        };
        let mut status = json!({"operation_id": op["operation_id"], "state": state,
                                "message": "Reconciliation: operation is unknown"});
        if !op["agent_id"].is_null() {
            status["agent_id"] = op["agent_id"].clone();
        }
        c.send(
            fw_id,
            json!({"type": "UPDATE_OPERATION_STATUS", "update_operation_status": {"status": status}}),
        );
    }
}

/// A master-generated update (not retried: no uuid), as Mesos sends for invalid launches.
fn task_error(
    c: &Compat,
    fw_id: &str,
    task_id: &str,
    agent: Option<&AgentId>,
    state: TaskState,
    reason: &str,
    message: &str,
) {
    let status = shoal_core::StatusInfo {
        message: Some(message.to_string()),
        source: Some("SOURCE_MASTER".into()),
        ..Default::default()
    };
    let json = {
        let fws = c.frameworks.lock();
        let Some(f) = fws.get(fw_id) else { return };
        c.status_json(
            f,
            &TaskId::new(task_id),
            agent.unwrap_or(&AgentId::new("")),
            state,
            &status,
            Some(reason),
            None,
        )
    };
    c.send(fw_id, json!({"type": "UPDATE", "update": {"status": json}}));
}

fn reconcile_one(c: &Compat, fw_id: &str, task_id: &TaskId, agent: Option<&str>) {
    let snap = c.core.published.snapshot();
    let json = {
        let fws = c.frameworks.lock();
        let Some(f) = fws.get(fw_id) else { return };
        match snap.task(task_id).filter(|t| t.owner == fw_id) {
            Some(t) => c.status_json(
                f,
                &t.id,
                &t.agent_id,
                t.state,
                &t.status,
                Some("REASON_RECONCILIATION"),
                None,
            ),
            None => {
                let agent = AgentId::new(agent.unwrap_or(""));
                let state = if f.partition_aware {
                    if snap.agent(&agent).is_some() {
                        TaskState::Gone
                    } else {
                        TaskState::Unknown
                    }
                } else {
                    TaskState::Lost
                };
                let status = shoal_core::StatusInfo {
                    message: Some("Reconciliation: task is unknown".into()),
                    source: Some("SOURCE_MASTER".into()),
                    ..Default::default()
                };
                let mut s = c.status_json(
                    f,
                    task_id,
                    &agent,
                    state,
                    &status,
                    Some("REASON_RECONCILIATION"),
                    None,
                );
                s["state"] = json!(state.mesos_name());
                s
            }
        }
    };
    c.send(fw_id, json!({"type": "UPDATE", "update": {"status": json}}));
}

fn reconcile(c: &Compat, fw_id: &str, tasks: &Json) {
    let list = tasks.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        // Implicit: every non-terminal task of the framework.
        let snap = c.core.published.snapshot();
        let ids: Vec<TaskId> = snap
            .tasks()
            .filter(|t| t.owner == fw_id && !t.state.is_terminal())
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            reconcile_one(c, fw_id, &id, None);
        }
    } else {
        for t in list {
            if let Some(id) = t["task_id"]["value"].as_str() {
                reconcile_one(c, fw_id, &TaskId::new(id), t["agent_id"]["value"].as_str());
            }
        }
    }
}

async fn teardown(c: &Arc<Compat>, fw_id: &str) -> Response {
    remove_framework(c, fw_id).await;
    StatusCode::ACCEPTED.into_response()
}

/// Kills a framework's tasks, releases its offers and forgets it.
async fn remove_framework(c: &Arc<Compat>, fw_id: &str) {
    let removed = c.frameworks.lock().remove(fw_id);
    if removed.is_none() {
        return;
    }
    c.removed.lock().insert(fw_id);
    tracing::info!(framework_id = %fw_id, "framework removed; killing its tasks");
    let offers: Vec<OfferId> = c
        .offers
        .lock()
        .iter()
        .filter(|(_, f)| *f == fw_id)
        .map(|(o, _)| o.clone())
        .collect();
    release(c, offers).await;
    let snap = c.core.published.snapshot();
    for t in snap
        .tasks()
        .filter(|t| t.owner == fw_id && !t.state.is_terminal())
    {
        let _ = c
            .core
            .committer
            .submit(shoal_core::Command::KillTask {
                task_id: t.id.clone(),
            })
            .await;
    }
}

/// Allocation rounds: on a timer and whenever resources may have been freed.
async fn allocation_loop(c: Arc<Compat>) {
    let mut round: u64 = 0;
    loop {
        let _ = tokio::time::timeout(c.config.allocation_interval, c.wake.notified()).await;
        let snap = c.core.published.snapshot();
        let probation: HashMap<AgentId, u64> = {
            let now = c.wall_ms();
            let mut p = c.probation.lock();
            p.retain(|_, until| *until > now);
            p.clone()
        };
        let candidates: Vec<Candidate> = {
            let fws = c.frameworks.lock();
            let offers = c.offers.lock();
            // One candidate per role that is not suppressed (the offer cap counts all of a
            // framework's offers at the start of the round). Frameworks that do not read
            // their stream get none.
            fws.values()
                .filter(|f| f.tx.as_ref().is_some_and(reads_its_stream) && !f.withheld)
                .flat_map(|f| {
                    let outstanding = offers.values().filter(|o| **o == f.id).count();
                    let filters = offer_filters(f, &snap, &probation);
                    f.roles
                        .iter()
                        .filter(|r| !f.suppressed.contains(*r))
                        .map(move |r| Candidate {
                            framework_id: f.id.clone(),
                            role: r.clone(),
                            filters: filters.clone(),
                            outstanding,
                        })
                })
                .collect()
        };
        if candidates.is_empty() {
            continue;
        }
        round += 1;
        let config = AllocatorConfig {
            offers_per_framework_max: c.config.offers_per_framework_max,
            first_agent: allocator::round_start(round),
        };
        let holds = allocator::allocate(&snap, &candidates, config, c.wall_ms(), || {
            OfferId::new(c.next_id("O"))
        });
        tracing::debug!(
            frameworks = candidates.len(),
            offers = holds.len(),
            version = snap.version(),
            "allocation round"
        );
        if holds.is_empty() {
            continue;
        }
        let by_id: HashMap<OfferId, shoal_core::Hold> =
            holds.iter().map(|h| (h.id.clone(), h.clone())).collect();
        let placed = match c
            .core
            .committer
            .submit(shoal_core::Command::PlaceHolds { holds })
            .await
        {
            Ok(Reply::Holds { placed, .. }) => placed,
            _ => continue,
        };
        let mut per_fw: HashMap<String, Vec<Json>> = HashMap::new();
        {
            let mut offers = c.offers.lock();
            for id in placed {
                let h = &by_id[&id];
                offers.insert(id.clone(), h.framework_id.clone());
                per_fw
                    .entry(h.framework_id.clone())
                    .or_default()
                    .push(offer_json(
                        h,
                        snap.agent(&h.agent_id),
                        c.core.agents.link_ip(&h.agent_id),
                    ));
            }
        }
        for (fw, offers) in per_fw {
            if !c.send(&fw, json!({"type": "OFFERS", "offers": {"offers": offers}})) {
                let ids = offers
                    .iter()
                    .filter_map(|o| o["id"]["value"].as_str())
                    .map(OfferId::new)
                    .collect();
                release(&c, ids).await;
            }
        }
    }
}

/// Whether a framework's stream is being read: fewer than
/// [`limits::OFFERS_WITHHELD_EVENTS_UNREAD`] events wait in its buffer.
fn reads_its_stream(tx: &mpsc::Sender<Bytes>) -> bool {
    tx.max_capacity() - tx.capacity() < limits::OFFERS_WITHHELD_EVENTS_UNREAD
}

/// The framework's offer filters for this round: its refused-offer filters and, unless it
/// has made a call on its subscription, the agents on probation (filtered whole).
fn offer_filters(
    f: &Framework,
    snap: &shoal_sched::Cell,
    probation: &HashMap<AgentId, u64>,
) -> HashMap<AgentId, OfferFilter> {
    let mut filters = f.filters.clone();
    if f.last_call_ms.is_none() {
        for (agent, until) in probation {
            if let Some(a) = snap.agent(agent) {
                // All the agent has contains whatever it could offer.
                let refused = a.total.clone();
                filters.insert(
                    agent.clone(),
                    OfferFilter {
                        until: *until,
                        refused,
                    },
                );
            }
        }
    }
    filters
}

/// The address of an agent in its offers' `url`, as Mesos's master fills `Offer.url` from
/// the agent's libprocess address (`http://<ip>:<port>/slave(1)`). `ip` is where the agent's
/// live link comes from (`link_ip`); for an agent without one, the agent's hostname when
/// that is an IP address, 127.0.0.1 for `localhost`, and otherwise 0.0.0.0 (the unspecified
/// address: libmesos's driver needs an IP address there and aborts on an offer without one);
/// `port` is the agent's own HTTP port (0: it serves none).
fn agent_address(hostname: &str, link_ip: Option<IpAddr>, port: u16) -> Json {
    let ip = match (link_ip, hostname.parse::<IpAddr>()) {
        (Some(ip), _) | (None, Ok(ip)) => ip.to_string(),
        (None, Err(_)) if hostname.eq_ignore_ascii_case("localhost") => "127.0.0.1".into(),
        (None, Err(_)) => "0.0.0.0".into(),
    };
    json!({"hostname": hostname, "ip": ip, "port": port})
}

/// One offer as Mesos's master writes it (`Master::offer`): with the agent's `url`, and its
/// `domain` when the agent has one. `link_ip` is where the agent's live link comes from.
fn offer_json(
    h: &shoal_core::Hold,
    agent: Option<&shoal_core::Agent>,
    link_ip: Option<IpAddr>,
) -> Json {
    let hostname = agent.map(|a| a.hostname.as_str()).unwrap_or("");
    let mut offer = json!({
        "allocation_info": {"role": h.role},
        "id": {"value": h.id.as_str()},
        "framework_id": {"value": h.framework_id},
        "agent_id": {"value": h.agent_id.as_str()},
        "hostname": hostname,
        "url": {
            "scheme": "http",
            "address": agent_address(hostname, link_ip, agent.map(|a| a.port).unwrap_or(0)),
            "path": "/slave(1)",
        },
        "resources": resources_with_roles(&h.resources, &h.role),
        "attributes": agent.map(|a| a.attributes.iter().map(|(k, v)| json!({"name": k, "type": "TEXT", "text": {"value": v}})).collect::<Vec<_>>()).unwrap_or_default(),
    });
    if let Some(d) = agent.and_then(|a| a.domain.as_ref()) {
        offer["domain"] =
            json!({"fault_domain": {"region": {"name": d.region}, "zone": {"name": d.zone}}});
    }
    offer
}

/// Resources as Mesos writes them in offers: with `allocation_info` for the role.
fn resources_with_roles(set: &shoal_core::ResourceSet, role: &str) -> Json {
    let mut v = shoal_mesos::resources::to_json(set);
    if let Some(arr) = v.as_array_mut() {
        for r in arr {
            r["allocation_info"] = json!({"role": role});
            if r.get("reservations").is_none() {
                r["role"] = json!("*");
            }
        }
    }
    v
}

/// Turns committed status changes of framework tasks into UPDATE events (with a uuid: retried
/// until acknowledged), and holds released by the cell into RESCIND events.
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
        for ev in &entry.events {
            match ev {
                CellEvent::TaskStatusChanged {
                    task_id,
                    state,
                    status,
                } => {
                    if state.is_terminal() {
                        // Resources were freed (a framework's task or a native one): offer them.
                        c.wake.notify_one();
                    }
                    let Some(t) = snap.task(task_id) else {
                        continue;
                    };
                    let uuid = b64(uuid::Uuid::new_v4().as_bytes());
                    let (fw, now) = {
                        let mut fws = c.frameworks.lock();
                        let Some(f) = fws.get_mut(&t.owner) else {
                            continue;
                        };
                        if *state == TaskState::Killing && !f.killing_state {
                            continue; // as Mesos: only for frameworks that declared TASK_KILLING_STATE
                        }
                        let s = c.status_json(
                            f,
                            task_id,
                            &t.agent_id,
                            *state,
                            status,
                            None,
                            Some(&uuid),
                        );
                        let now = f.pending.push(task_id.clone(), uuid, s, c.monotonic());
                        (f.id.clone(), now)
                    };
                    // Sent now unless an earlier update of the task awaits its acknowledgement.
                    if let Some(s) = now {
                        c.send(&fw, json!({"type": "UPDATE", "update": {"status": s}}));
                    }
                }
                CellEvent::HoldsReleased { offer_ids, .. } => {
                    for o in offer_ids {
                        let ours = c.released_by_us.lock().remove(o);
                        if ours {
                            continue;
                        }
                        if let Some(fw) = c.offers.lock().remove(o) {
                            c.send(&fw, json!({"type": "RESCIND", "rescind": {"offer_id": {"value": o.as_str()}}}));
                        }
                    }
                }
                CellEvent::HoldsCleared { .. } => {
                    let all: Vec<(OfferId, String)> = c.offers.lock().drain().collect();
                    for (o, fw) in all {
                        c.send(&fw, json!({"type": "RESCIND", "rescind": {"offer_id": {"value": o.as_str()}}}));
                    }
                }
                CellEvent::AgentRegistered { .. } | CellEvent::AgentResourcesUpdated { .. } => {
                    c.wake.notify_one()
                }
                CellEvent::AgentStateChanged { agent_id, state }
                    if *state != shoal_core::AgentState::Active =>
                {
                    // As Mesos's "agent lost": FAILURE (no executor id) to every framework.
                    let ids: Vec<String> = c.frameworks.lock().keys().cloned().collect();
                    for fw in ids {
                        c.send(&fw, json!({"type": "FAILURE", "failure": {"agent_id": {"value": agent_id.as_str()}}}));
                    }
                }
                _ => {}
            }
        }
    }
}

/// An offer timed out: when its framework made no call since it was made, the framework is
/// not reading its stream. It gets no offers until its next call, and the agent goes on
/// probation for one more offer timeout (see `Compat::probation`).
fn unanswered(
    c: &Compat,
    snap: &shoal_sched::Cell,
    offer: &OfferId,
    fw_id: &str,
    timeout: Duration,
) {
    let Some(hold) = snap.hold(offer) else { return };
    {
        let mut fws = c.frameworks.lock();
        let Some(f) = fws.get_mut(fw_id) else { return };
        if f.last_call_ms.is_some_and(|t| t >= hold.created_at) {
            return;
        }
        if !f.withheld {
            tracing::info!(framework_id = %fw_id, offer_id = %offer.as_str(), "offer timed out unanswered: no offers to this framework until its next call");
        }
        f.withheld = true;
    }
    c.probation.lock().insert(
        hold.agent_id.clone(),
        c.wall_ms().saturating_add(timeout.as_millis() as u64),
    );
}

/// Offer timeouts, update retries, failover timeouts.
async fn timers_loop(c: Arc<Compat>) {
    let period = c
        .config
        .update_retry
        .min(Duration::from_millis(500))
        .max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(period).await;
        fire_timers(&c).await;
    }
}

/// One look at every timer: what is due by the master's clock fires.
async fn fire_timers(c: &Arc<Compat>) {
    if let Some(timeout) = c.config.offer_timeout {
        rescind_expired_offers(c, timeout).await;
    }
    resend_unacknowledged(c);
    remove_failed_over(c).await;
}

/// Offers held longer than `timeout` are rescinded.
async fn rescind_expired_offers(c: &Arc<Compat>, timeout: Duration) {
    let snap = c.core.published.snapshot();
    let now = c.wall_ms();
    let expired: Vec<(OfferId, String)> = c
        .offers
        .lock()
        .iter()
        .filter(|(o, _)| {
            snap.hold(o)
                .map(|h| now.saturating_sub(h.created_at) >= timeout.as_millis() as u64)
                .unwrap_or(false)
        })
        .map(|(o, f)| (o.clone(), f.clone()))
        .collect();
    for (o, fw) in &expired {
        c.send(
            fw,
            json!({"type": "RESCIND", "rescind": {"offer_id": {"value": o.as_str()}}}),
        );
        unanswered(c, &snap, o, fw, timeout);
    }
    release(c, expired.into_iter().map(|(o, _)| o).collect()).await;
}

/// Unacknowledged updates are resent.
fn resend_unacknowledged(c: &Compat) {
    let resend: Vec<(String, Json)> = {
        let mut fws = c.frameworks.lock();
        let mut out = Vec::new();
        for f in fws.values_mut().filter(|f| f.tx.is_some()) {
            for s in f.pending.due(c.config.update_retry, c.monotonic()) {
                out.push((f.id.clone(), s));
            }
        }
        out
    };
    for (fw, s) in resend {
        c.send(&fw, json!({"type": "UPDATE", "update": {"status": s}}));
    }
}

/// Frameworks away longer than their failover timeout are removed, their tasks killed.
async fn remove_failed_over(c: &Arc<Compat>) {
    let now = c.monotonic();
    let expired: Vec<String> = c
        .frameworks
        .lock()
        .values()
        .filter(|f| {
            f.disconnected_at
                .is_some_and(|d| now.saturating_duration_since(d) >= f.failover_timeout)
        })
        .map(|f| f.id.clone())
        .collect();
    for fw in expired {
        remove_framework(c, &fw).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::{Agent, AgentState, FaultDomain, Hold};

    fn agent(hostname: &str, domain: Option<FaultDomain>) -> Agent {
        Agent {
            id: AgentId::new("A1"),
            hostname: hostname.into(),
            port: 0,
            attributes: Default::default(),
            domain,
            total: ResourceSet::parse("cpus:2;mem:1024").unwrap(),
            allocated: ResourceSet::new(),
            state: AgentState::Active,
            version: 1,
            registered_at: 1,
        }
    }

    fn hold() -> Hold {
        Hold {
            id: OfferId::new("O1"),
            framework_id: "F1".into(),
            role: "*".into(),
            agent_id: AgentId::new("A1"),
            resources: ResourceSet::parse("cpus:2;mem:1024").unwrap(),
            created_at: 1,
        }
    }

    /// A framework that subscribed once and whose stream is gone since `at`.
    fn away_since(at: Instant, failover_timeout: Duration) -> Framework {
        Framework {
            id: "F1".into(),
            info: json!({"user": "u", "name": "away"}),
            roles: vec!["*".into()],
            partition_aware: false,
            killing_state: false,
            stream_id: "S1".into(),
            tx: None,
            encoding: Encoding::Json,
            disconnected_at: Some(at),
            failover_timeout,
            filters: HashMap::new(),
            suppressed: HashSet::new(),
            pending: UpdateStreams::default(),
            stop_stream: None,
            last_call_ms: None,
            withheld: false,
        }
    }

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
        let away = away_since(c.monotonic(), Duration::from_secs(60));
        c.frameworks.lock().insert("F1".into(), away);
        let known = |c: &Compat| c.frameworks.lock().contains_key("F1");

        fire_timers(&c).await;
        clock.advance(Duration::from_millis(59_999));
        fire_timers(&c).await;
        assert!(known(&c), "within its failover timeout it is kept");
        clock.advance(Duration::from_millis(1));
        fire_timers(&c).await;
        assert!(!known(&c), "at its failover timeout it is removed");
        assert!(c.removed.lock().contains("F1"));
    }

    #[test]
    fn offers_carry_no_url() {
        let domain = FaultDomain {
            region: "eu-west-1".into(),
            zone: "eu-west-1a".into(),
        };
        let offer = offer_json(&hold(), Some(&agent("10.0.0.5", Some(domain))), None);
        assert_eq!(
            offer["url"],
            json!({"scheme": "http", "address": {"hostname": "10.0.0.5", "ip": "10.0.0.5", "port": 0}, "path": "/slave(1)"})
        );
        assert_eq!(
            offer["domain"],
            json!({"fault_domain": {"region": {"name": "eu-west-1"}, "zone": {"name": "eu-west-1a"}}})
        );
        assert!(offer_json(&hold(), Some(&agent("h", None)), None)
            .get("domain")
            .is_none());

        // The same offer in protobuf, as libmesos's driver reads it.
        let event = json!({"type": "OFFERS", "offers": {"offers": [offer]}});
        let record = Compat::record(Encoding::Protobuf, &event).expect("encodes");
        let mut decoder = shoal_proto::recordio::Decoder::new();
        let records = decoder.decode(&record).unwrap();
        let event = Event::decode(records[0].as_ref()).unwrap();
        let offer = &event.offers.unwrap().offers[0];
        let url = offer.url.as_ref().expect("Offer.url in protobuf");
        assert_eq!(url.scheme, "http");
        assert_eq!(url.path.as_deref(), Some("/slave(1)"));
        assert_eq!(url.address.ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(url.address.hostname.as_deref(), Some("10.0.0.5"));
        let fault = offer
            .domain
            .as_ref()
            .unwrap()
            .fault_domain
            .as_ref()
            .unwrap();
        assert_eq!(fault.zone.name, "eu-west-1a");
    }

    #[test]
    fn offer_url_ip_is_always_an_ip_address() {
        for (hostname, ip) in [
            ("192.168.1.7", "192.168.1.7"),
            ("::1", "::1"),
            ("localhost", "127.0.0.1"),
            ("node-7.example", "0.0.0.0"),
            ("", "0.0.0.0"),
        ] {
            assert_eq!(agent_address(hostname, None, 5051)["ip"], ip, "{hostname}");
            assert_eq!(agent_address(hostname, None, 5051)["hostname"], hostname);
        }
    }

    #[test]
    fn offer_url_ip_is_where_the_agent_link_comes_from() {
        let link = Some(IpAddr::from([10, 1, 2, 3]));
        for hostname in ["node-7.example", "localhost", "192.168.1.7", ""] {
            let address = agent_address(hostname, link, 5051);
            assert_eq!(address["ip"], "10.1.2.3", "{hostname}");
            assert_eq!(address["hostname"], hostname);
            assert_eq!(address["port"], 5051);
        }
        let offer = offer_json(&hold(), Some(&agent("node-7.example", None)), link);
        assert_eq!(offer["url"]["address"]["ip"], "10.1.2.3");
    }

    #[test]
    fn unbounded_framework_info_is_kept() {
        let ok = json!({"user": "u", "name": "marathon", "roles": ["a", "b"], "failover_timeout": 604800.0});
        assert!(check_framework_info(&ok).is_ok());
        let name = json!({"user": "u", "name": "n".repeat(limits::FRAMEWORK_NAME_BYTES_MAX + 1)});
        assert!(check_framework_info(&name)
            .unwrap_err()
            .to_string()
            .contains("'framework_info.name'"));
        let huge = json!({"user": "u", "name": "n", "labels": {"labels": [{"key": "k", "value": "v".repeat(limits::FRAMEWORK_INFO_BYTES_MAX)}]}});
        assert!(check_framework_info(&huge)
            .unwrap_err()
            .to_string()
            .contains("'framework_info' is"));
        let role =
            json!({"user": "u", "role": "r".repeat(shoal_core::limits::ROLE_NAME_BYTES_MAX + 1)});
        assert!(check_framework_info(&role)
            .unwrap_err()
            .to_string()
            .contains("a role in 'framework_info.roles'"));
        let roles: Vec<String> = (0..=limits::FRAMEWORK_ROLES_MAX)
            .map(|i| format!("r{i}"))
            .collect();
        assert!(check_framework_info(&json!({"user": "u", "roles": roles}))
            .unwrap_err()
            .to_string()
            .contains("roles"));

        // failover_timeout: capped (and written back), never refused.
        let config = CompatConfig::default();
        for (given, held) in [
            (json!(1e308), limits::FAILOVER_TIMEOUT_SECS_MAX as f64),
            (json!(-5.0), 0.0),
            (json!(604800.0), 604800.0),
        ] {
            let mut info = json!({"user": "u", "failover_timeout": given});
            let s = Settings::of(&config, &info, &Json::Null);
            assert_eq!(s.failover_timeout.as_secs_f64(), held);
            s.cap_failover_timeout(&mut info);
            assert_eq!(info["failover_timeout"].as_f64(), Some(held));
        }
        assert!(
            config.failover_timeout_max >= Duration::from_secs(28 * 86_400),
            "at least four weeks"
        );
    }
}
