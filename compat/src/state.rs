//! The read-only endpoints frameworks and tools use, with Mesos's JSON shapes for the fields
//! they share: `/master/state` (`/state`, `/state.json`), `/master/frameworks`,
//! `/master/slaves`, `/master/redirect`, `/redirect`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as AxJson, Router};
use serde_json::{json, Value as Json};
use shoal_core::{AgentState, ResourceSet};

use crate::shell::Compat;

fn scalars(set: &ResourceSet) -> Json {
    let mut o = serde_json::Map::new();
    // Mesos always writes these four.
    for name in ["cpus", "gpus", "mem", "disk"] {
        o.insert(name.to_string(), json!(0.0));
    }
    for (name, m) in set.scalar_totals() {
        o.insert(name.to_string(), json!(m.as_f64()));
    }
    for r in set.iter() {
        if let shoal_core::Value::Ranges(rs) = &r.value {
            let text: Vec<String> = rs
                .as_slice()
                .iter()
                .map(|(b, e)| format!("{b}-{e}"))
                .collect();
            o.insert(r.name.to_string(), json!(format!("[{}]", text.join(", "))));
        }
    }
    Json::Object(o)
}

/// The Mesos summary of several resource sets (e.g. of different agents): scalars summed,
/// ranges merged.
fn summary<'a>(sets: impl Iterator<Item = &'a ResourceSet>) -> Json {
    let mut sc = ResourceSet::new();
    let mut ranges: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
    for set in sets {
        let _ = sc.add_scalars(set);
        for r in set.iter() {
            if let shoal_core::Value::Ranges(rs) = &r.value {
                ranges
                    .entry(r.name.to_string())
                    .or_default()
                    .extend_from_slice(rs.as_slice());
            }
        }
    }
    let mut out = scalars(&sc);
    for (name, list) in ranges {
        if let Some(rs) = shoal_core::Ranges::new(list) {
            let text: Vec<String> = rs
                .as_slice()
                .iter()
                .map(|(b, e)| format!("{b}-{e}"))
                .collect();
            out[name] = json!(format!("[{}]", text.join(", ")));
        }
    }
    if out.get("ports").is_none() {
        out["ports"] = json!("[]");
    }
    out
}

fn held_on(snap: &shoal_sched::Cell, agent: &shoal_core::AgentId) -> ResourceSet {
    let mut out = ResourceSet::new();
    for h in snap.holds().filter(|h| h.agent_id == *agent) {
        let _ = out.add(&h.resources);
    }
    out
}

/// An agent's libprocess UPID as Mesos's master shows it: `slave(1)@ip:port`, with the IP
/// address its live link comes from (`link_ip`), or its hostname when it has no link.
fn agent_pid(hostname: &str, link_ip: Option<std::net::IpAddr>, port: u16) -> String {
    match link_ip {
        Some(ip) => format!("slave(1)@{}", SocketAddr::new(ip, port)),
        None => format!("slave(1)@{hostname}:{port}"),
    }
}

fn slaves(c: &Compat) -> Vec<Json> {
    let snap = c.core().published.snapshot();
    let mut agents: Vec<_> = snap
        .agents()
        .filter(|a| a.state != AgentState::Gone)
        .collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    agents
        .into_iter()
        .map(|a| {
            json!({
                "id": a.id.as_str(),
                "hostname": a.hostname,
                "port": a.port,
                "pid": agent_pid(&a.hostname, c.core().agents.link_ip(&a.id), a.port),
                "registered_time": a.registered_at as f64 / 1000.0,
                "resources": scalars(&a.total),
                "used_resources": scalars(&a.allocated),
                "unreserved_resources": scalars(&a.total),
                "offered_resources": scalars(&held_on(&snap, &a.id)),
                "reserved_resources": {},
                "attributes": a.attributes,
                "active": a.state == AgentState::Active,
                "deactivated": a.state != AgentState::Active,
                "capabilities": ["MULTI_ROLE", "HIERARCHICAL_ROLE", "RESERVATION_REFINEMENT", "TASK_KILLING_STATE"],
                "version": crate::MESOS_VERSION,
            })
        })
        .collect()
}

fn frameworks(c: &Compat) -> Vec<Json> {
    let snap = c.core().published.snapshot();
    c.framework_summaries()
        .into_iter()
        .map(|f| {
            // The FrameworkInfo in Mesos's JSON, read as `/master/state` writes it.
            let info = shoal_proto::json::to_json_value(&f.info);
            let (id, active, roles) = (f.id, f.connected, f.roles);
            let mut used: Vec<&ResourceSet> = Vec::new();
            let tasks: Vec<Json> = snap
                .tasks()
                .filter(|t| t.owner == id && !t.state.is_terminal())
                .map(|t| {
                    used.push(&t.resources);
                    json!({"id": t.id.as_str(), "name": t.name, "framework_id": id, "executor_id": "", "slave_id": t.agent_id.as_str(),
                           "state": t.state.mesos_name(), "resources": scalars(&t.resources), "role": t.role,
                           "statuses": [{"state": t.state.mesos_name(), "timestamp": t.status.timestamp as f64 / 1000.0}]})
                })
                .collect();
            let mut offered: Vec<&ResourceSet> = Vec::new();
            let offers: Vec<Json> = snap
                .holds()
                .filter(|h| h.framework_id == id)
                .map(|h| {
                    offered.push(&h.resources);
                    json!({"id": h.id.as_str(), "framework_id": id, "slave_id": h.agent_id.as_str(),
                           "allocation_info": {"role": h.role}, "resources": scalars(&h.resources)})
                })
                .collect();
            json!({
                "id": id,
                "name": info["name"].as_str().unwrap_or(""),
                "user": info["user"].as_str().unwrap_or(""),
                "hostname": info["hostname"].as_str().unwrap_or(""),
                "webui_url": info["webui_url"].as_str().unwrap_or(""),
                "principal": info["principal"].as_str().unwrap_or(""),
                "role": roles.first().cloned().unwrap_or_else(|| "*".into()),
                "roles": roles,
                "capabilities": info["capabilities"].as_array().map(|c| c.iter().filter_map(|x| x["type"].as_str()).map(|s| json!(s)).collect::<Vec<_>>()).unwrap_or_default(),
                "checkpoint": info["checkpoint"].as_bool().unwrap_or(false),
                "active": active,
                "connected": active,
                "recovered": false,
                "registered_time": 0.0,
                "unregistered_time": 0.0,
                "failover_timeout": info["failover_timeout"].as_f64().unwrap_or(0.0),
                "resources": summary(used.iter().chain(offered.iter()).copied()),
                "used_resources": summary(used.iter().copied()),
                "offered_resources": summary(offered.iter().copied()),
                "offers": offers,
                "tasks": tasks,
                "unreachable_tasks": [],
                "completed_tasks": [],
                "executors": [],
                "offer_constraints": {},
            })
        })
        .collect()
}

async fn state(State(c): State<Arc<Compat>>, headers: HeaderMap) -> Response {
    let snap = c.core().published.snapshot();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:5050")
        .to_string();
    let slaves = slaves(&c);
    let activated = slaves.iter().filter(|s| s["active"] == true).count();
    let started = c.started_ms() as f64 / 1000.0;
    AxJson(json!({
        "version": crate::MESOS_VERSION,
        "shoal_version": env!("CARGO_PKG_VERSION"),
        "build_date": "",
        "build_time": 0.0,
        "build_user": "shoal",
        "start_time": started,
        "elected_time": started,
        "flags": {},
        "orphan_tasks": [],
        "id": snap.cell_id(),
        "pid": format!("master@{host}"),
        "hostname": host.split(':').next().unwrap_or("127.0.0.1"),
        "leader": format!("master@{host}"),
        "activated_slaves": activated,
        "deactivated_slaves": slaves.len() - activated,
        "slaves": slaves,
        "frameworks": frameworks(&c),
        "completed_frameworks": [],
        "unregistered_frameworks": [],
    }))
    .into_response()
}

async fn master_frameworks(State(c): State<Arc<Compat>>) -> Response {
    AxJson(json!({"frameworks": frameworks(&c), "completed_frameworks": [], "unregistered_frameworks": []})).into_response()
}

async fn master_slaves(State(c): State<Arc<Compat>>) -> Response {
    AxJson(json!({"slaves": slaves(&c), "recovered_slaves": []})).into_response()
}

/// This master is always the leader (one master per cell for now): redirect to itself.
async fn redirect(headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:5050")
        .to_string();
    (
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, format!("//{host}"))],
    )
        .into_response()
}

/// `/version` as Mesos writes it (pymesos, for one, reads `version` to pick its behaviour:
/// below 1.0 it treats every OFFERS event as inverse offers too).
async fn version() -> Response {
    AxJson(json!({
        "version": crate::MESOS_VERSION,
        "git_tag": crate::MESOS_VERSION,
        "git_sha": "",
        "git_branch": "",
        "build_date": "",
        "build_time": 0.0,
        "build_user": "shoal",
        "shoal_version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

/// `/master/health`: 200 with an empty body while the master serves.
async fn health() -> StatusCode {
    StatusCode::OK
}

pub fn router(c: Arc<Compat>) -> Router<Arc<Compat>> {
    let _ = c;
    Router::new()
        .route("/master/state", get(state))
        .route("/master/state.json", get(state))
        .route("/state", get(state))
        .route("/state.json", get(state))
        .route("/master/frameworks", get(master_frameworks))
        .route("/master/slaves", get(master_slaves))
        .route("/master/redirect", get(redirect))
        .route("/redirect", get(redirect))
        .route("/version", get(version))
        .route("/master/health", get(health))
}

#[cfg(test)]
mod tests {
    use super::agent_pid;
    use std::net::IpAddr;

    #[test]
    fn agent_pid_names_where_the_link_comes_from() {
        let v4 = Some(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(agent_pid("node-7", v4, 0), "slave(1)@127.0.0.1:0");
        let v6 = Some("::1".parse().unwrap());
        assert_eq!(agent_pid("node-7", v6, 5051), "slave(1)@[::1]:5051");
        assert_eq!(agent_pid("node-7", None, 5051), "slave(1)@node-7:5051");
    }
}
