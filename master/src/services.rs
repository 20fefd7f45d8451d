//! Services in the master: the native service endpoints, and the core's [`ServiceScheduler`]
//! run by the built-in schedulers' driver (`driver.rs`). The scheduler submits
//! `Command::UpdateService`, `Command::Claim` and `Command::KillTask` through the committer,
//! in that order (an instance's record is committed no later than its task), and never
//! touches the cell another way.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use shoal_sched::service::{
    instance_task_id, parse_service_file, Service, ServiceScheduler, ServiceSpec, ServiceState,
    ServiceUpdate,
};
use shoal_sched::{Cell, Command, Reply, SchedulerCommand, SchedulerReply};

use crate::api::{ApiError, ApiState};
use crate::committer::{Committer, Published};
use crate::driver;
use crate::jobs::internal;
use crate::limits;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/api/shoal/v1/services",
            get(list_services).post(submit_service),
        )
        .route("/api/shoal/v1/services/{id}", get(get_service))
        .route("/api/shoal/v1/services/{id}/scale", post(scale_service))
        .route("/api/shoal/v1/services/{id}/stop", post(stop_service))
        .layer(axum::extract::DefaultBodyLimit::max(
            limits::REQUEST_BODY_BYTES_MAX,
        ))
        .with_state(state)
}

fn parse_spec(body: &Bytes) -> Result<ServiceSpec, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the service file is not UTF-8 text"))?;
    parse_service_file(text)
        .map_err(|e| ApiError::bad_request(format!("invalid service file: {e}")))
}

/// A service's summary: its state and how its instances stand.
fn summary_json(svc: &Service, cell: &Cell) -> Json {
    json!({
        "id": svc.id,
        "name": svc.spec.name,
        "team": svc.spec.team.clone().unwrap_or_else(|| "*".into()),
        "state": svc.state,
        "message": svc.message,
        "spec_version": svc.spec_version,
        "count": svc.count,
        "counts": svc.counts(cell),
        "settled": svc.settled(cell),
        "submitted_at": svc.submitted_at,
        "updated_at": svc.updated_at,
    })
}

/// A service's record as the API shows it: the summary, the file, and each instance with its
/// task's state and health.
pub fn service_json(svc: &Service, cell: &Cell) -> Json {
    let instances: Vec<Json> = svc
        .instances
        .values()
        .map(|i| {
            let task_id = instance_task_id(&svc.id, i.index, i.generation);
            let task = cell.task(&task_id);
            let hostname = i
                .agent_id
                .as_ref()
                .and_then(|a| cell.agent(a))
                .map(|a| a.hostname.clone());
            let mut v = json!(i);
            v["task_id"] = json!(task_id);
            v["hostname"] = json!(hostname);
            v["task_state"] = json!(task.map(|t| t.state));
            v["healthy"] = json!(task.and_then(|t| t.status.healthy));
            v
        })
        .collect();
    let mut v = summary_json(svc, cell);
    v["version"] = json!(svc.version);
    v["spec"] = json!(svc.spec);
    v["instances"] = json!(instances);
    v
}

async fn submit_service(State(s): State<ApiState>, body: Bytes) -> Response {
    let result: Result<Response, ApiError> = async {
        let spec = parse_spec(&body)?;
        let reply = s
            .committer
            .submit(
                SchedulerCommand::SubmitService {
                    spec: Box::new(spec),
                }
                .into(),
            )
            .await?;
        let Reply::Records(SchedulerReply::Service {
            service_id,
            created,
            changed,
        }) = reply
        else {
            return Err(internal("unexpected reply"));
        };
        let snap = s.published.snapshot();
        let svc = snap
            .records()
            .service(&service_id)
            .map(|x| service_json(x, &snap))
            .unwrap_or(Json::Null);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            axum::Json(json!({"service_id": service_id, "created": created,
                              "changed": changed, "service": svc})),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

async fn list_services(State(s): State<ApiState>) -> Response {
    let snap = s.published.snapshot();
    let mut list: Vec<&Service> = snap.records().services().collect();
    list.sort_by(|a, b| (a.submitted_at, &a.id).cmp(&(b.submitted_at, &b.id)));
    let list: Vec<Json> = list.into_iter().map(|x| summary_json(x, &snap)).collect();
    axum::Json(json!({"version": snap.version(), "services": list})).into_response()
}

async fn get_service(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let snap = s.published.snapshot();
    match snap.records().service(&id) {
        Some(x) => axum::Json(service_json(x, &snap)).into_response(),
        None => ApiError::not_found(format!("service {id}")).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    count: u32,
}

async fn scale_service(State(s): State<ApiState>, Path(id): Path<String>, body: Bytes) -> Response {
    let body: ScaleBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::bad_request(format!("expected {{\"count\": N}}: {e}")).into_response()
        }
    };
    let update = ServiceUpdate {
        service_id: id,
        count: Some(body.count),
        ..ServiceUpdate::default()
    };
    match s
        .committer
        .submit(SchedulerCommand::UpdateService(update).into())
        .await
    {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn stop_service(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let update = ServiceUpdate {
        service_id: id,
        state: Some(ServiceState::Stopped),
        message: Some("stopped by a user".into()),
        ..ServiceUpdate::default()
    };
    match s
        .committer
        .submit(SchedulerCommand::UpdateService(update).into())
        .await
    {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

// The service scheduler as the driver runs it: record updates, then claims, then kills.
driver::built_in!(
    ServiceScheduler,
    "service",
    |u| Command::Records(SchedulerCommand::UpdateService(u)),
    true
);

/// Starts the service scheduler's driver. Needs a tokio runtime.
pub fn start(committer: Committer, published: Arc<Published>) {
    driver::start::<ServiceScheduler>(committer, published);
}
