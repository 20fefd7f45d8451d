//! The read-only endpoints frameworks and tools use, with Mesos's JSON shapes for the fields
//! they share: `/master/state` (`/state`, `/state.json`), `/master/frameworks`,
//! `/master/slaves`, `/master/redirect`, `/redirect`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as AxJson, Router};
use serde_json::{json, Value as Json};
use shoal_core::{AgentState, ResourceSet};

use crate::scheduler::Compat;

fn scalars(set: &ResourceSet) -> Json {
    let mut o = serde_json::Map::new();
    for (name, m) in set.scalar_totals() {
        o.insert(name, json!(m.as_f64()));
    }
    for r in set.iter() {
        if let shoal_core::Value::Ranges(rs) = &r.value {
            let text: Vec<String> = rs.as_slice().iter().map(|(b, e)| format!("{b}-{e}")).collect();
            o.insert(r.name.clone(), json!(format!("[{}]", text.join(", "))));
        }
    }
    Json::Object(o)
}

fn slaves(c: &Compat) -> Vec<Json> {
    let snap = c.core().published.snapshot();
    let mut agents: Vec<_> = snap.agents().filter(|a| a.state != AgentState::Gone).collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    agents
        .into_iter()
        .map(|a| {
            json!({
                "id": a.id.as_str(),
                "hostname": a.hostname,
                "port": a.port,
                "pid": format!("slave(1)@{}:{}", a.hostname, a.port),
                "registered_time": a.registered_at as f64 / 1000.0,
                "resources": scalars(&a.total),
                "used_resources": scalars(&a.allocated),
                "unreserved_resources": scalars(&a.total),
                "attributes": a.attributes,
                "active": a.state == AgentState::Active,
                "version": env!("CARGO_PKG_VERSION"),
            })
        })
        .collect()
}

fn frameworks(c: &Compat) -> Vec<Json> {
    let snap = c.core().published.snapshot();
    c.framework_summaries()
        .into_iter()
        .map(|(id, info, active, role)| {
            let tasks: Vec<Json> = snap
                .tasks()
                .filter(|t| t.owner == id && !t.state.is_terminal())
                .map(|t| {
                    json!({"id": t.id.as_str(), "name": t.name, "framework_id": id, "slave_id": t.agent_id.as_str(),
                           "state": t.state.mesos_name(), "resources": scalars(&t.resources), "role": t.role})
                })
                .collect();
            json!({
                "id": id,
                "name": info["name"].as_str().unwrap_or(""),
                "user": info["user"].as_str().unwrap_or(""),
                "role": role,
                "roles": [role],
                "active": active,
                "connected": active,
                "failover_timeout": info["failover_timeout"].as_f64().unwrap_or(0.0),
                "tasks": tasks,
            })
        })
        .collect()
}

async fn state(State(c): State<Arc<Compat>>, headers: HeaderMap) -> Response {
    let snap = c.core().published.snapshot();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:5050").to_string();
    let slaves = slaves(&c);
    let activated = slaves.iter().filter(|s| s["active"] == true).count();
    AxJson(json!({
        "version": crate::MESOS_VERSION,
        "shoal_version": env!("CARGO_PKG_VERSION"),
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
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:5050").to_string();
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("//{host}"))]).into_response()
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
}
