//! Jobs in the master: the native job endpoints, and the core's [`BatchScheduler`] run by the
//! built-in schedulers' driver (`driver.rs`): it submits `Command::Claim`, `Command::KillTask`
//! and `Command::UpdateJob` through the committer, exactly as the HTTP handlers do, and never
//! touches the cell another way.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value as Json};
use shoal_sched::batch::{
    parse_job_file, BatchScheduler, Job, JobFormat, JobSpec, JobState, JobUpdate,
};
use shoal_sched::{Cell, Command, Reply, SchedulerCommand, SchedulerEvent, SchedulerReply};

use crate::api::{ApiError, ApiState};
use crate::committer::{CommitError, Committer, Published};
use crate::driver;
use crate::limits;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/shoal/v1/jobs", get(list_jobs).post(submit_job))
        .route("/api/shoal/v1/jobs/plan", post(plan_job))
        .route("/api/shoal/v1/jobs/{id}", get(get_job))
        .route("/api/shoal/v1/jobs/{id}/stop", post(stop_job))
        .layer(axum::extract::DefaultBodyLimit::max(
            limits::REQUEST_BODY_BYTES_MAX,
        ))
        .with_state(state)
}

/// Reads a job file from a request body: JSON when it starts with `{`, TOML otherwise.
fn parse_spec(body: &Bytes) -> Result<JobSpec, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the job file is not UTF-8 text"))?;
    parse_job_file(text, JobFormat::sniff(text))
        .map_err(|e| ApiError::bad_request(format!("invalid job file: {e}")))
}

/// A job's summary: its state and how many of its tasks are in each state.
fn summary_json(job: &Job) -> Json {
    json!({
        "id": job.id,
        "name": job.spec.name,
        "team": job.spec.team.clone().unwrap_or_else(|| "*".into()),
        "state": job.state,
        "message": job.message,
        "submitted_at": job.submitted_at,
        "finished_at": job.finished_at,
        "counts": job.counts(),
        "total": job.tasks.len(),
    })
}

/// A job's record as the API shows it: the summary plus the file and the tasks, in file order.
pub fn job_json(job: &Job) -> Json {
    let tasks: Vec<Json> = job
        .spec
        .tasks
        .iter()
        .filter_map(|t| job.tasks.get(&t.name))
        .map(|t| json!(t))
        .collect();
    let mut v = summary_json(job);
    v["version"] = json!(job.version);
    v["tasks"] = json!(tasks);
    v["spec"] = json!(job.spec);
    v
}

async fn submit_job(State(s): State<ApiState>, body: Bytes) -> Response {
    let result: Result<Response, ApiError> = async {
        let spec = parse_spec(&body)?;
        let reply = s
            .committer
            .submit(SchedulerCommand::SubmitJob { spec }.into())
            .await?;
        let Reply::Records(SchedulerReply::Job { job_id, created }) = reply else {
            return Err(internal("unexpected reply"));
        };
        let snap = s.published.snapshot();
        let job = snap
            .records()
            .job(&job_id)
            .map(job_json)
            .unwrap_or(Json::Null);
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((
            status,
            axum::Json(json!({"job_id": job_id, "created": created, "job": job})),
        )
            .into_response())
    }
    .await;
    result.unwrap_or_else(|e| e.into_response())
}

pub(crate) fn internal(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "internal",
        message: message.into(),
    }
}

async fn list_jobs(State(s): State<ApiState>) -> Response {
    let snap = s.published.snapshot();
    let mut jobs: Vec<&Job> = snap.records().jobs().collect();
    jobs.sort_by(|a, b| (a.submitted_version, &a.id).cmp(&(b.submitted_version, &b.id)));
    let jobs: Vec<Json> = jobs.into_iter().map(summary_json).collect();
    axum::Json(json!({"version": snap.version(), "jobs": jobs})).into_response()
}

async fn get_job(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.published.snapshot().records().job(&id) {
        Some(j) => axum::Json(job_json(j)).into_response(),
        None => ApiError::not_found(format!("job {id}")).into_response(),
    }
}

async fn stop_job(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let update = JobUpdate {
        job_id: id,
        state: Some(JobState::Stopped),
        message: Some("stopped by a user".into()),
        finished_at: s.published.clock.wall_ms(),
        tasks: vec![],
    };
    match s
        .committer
        .submit(SchedulerCommand::UpdateJob(update).into())
        .await
    {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// What the scheduler would do with a job file now, without doing it: the file is validated
/// and submitted to a private copy of the published snapshot, and the scheduler takes one step
/// on that copy. Nothing is committed.
pub fn plan(snapshot: &Cell, spec: JobSpec, now: u64) -> Result<Json, ApiError> {
    let mut scratch = snapshot.clone();
    let (_, reply) = scratch
        .commit(now, &SchedulerCommand::SubmitJob { spec }.into())
        .map_err(|r| ApiError::from(CommitError::Rejected(r)))?;
    let Reply::Records(SchedulerReply::Job { job_id, created }) = reply else {
        return Err(internal("unexpected reply"));
    };
    let mut placed: std::collections::HashMap<String, (String, String)> = Default::default();
    if created {
        let mut sched = BatchScheduler::new();
        sched.observe(&shoal_sched::LogEntry {
            version: scratch.version(),
            events: vec![SchedulerEvent::JobSubmitted {
                job: Box::new(
                    scratch
                        .records()
                        .job(&job_id)
                        .cloned()
                        .ok_or_else(|| internal("job"))?,
                ),
            }
            .into()],
        });
        let actions = sched.step(&scratch, now);
        for c in &actions.claims {
            for p in &c.placements {
                let host = scratch
                    .agent(&p.agent_id)
                    .map(|a| a.hostname.clone())
                    .unwrap_or_default();
                let task = p.name.rsplit('.').next().unwrap_or_default().to_string();
                placed.insert(task, (p.agent_id.to_string(), host));
            }
        }
    }
    let job = scratch
        .records()
        .job(&job_id)
        .ok_or_else(|| internal("job"))?;
    let tasks: Vec<Json> = job
        .spec
        .tasks
        .iter()
        .map(|t| {
            let (what, agent, host) = match placed.get(&t.name) {
                Some((a, h)) => ("place", a.clone(), h.clone()),
                None if !created => ("exists", String::new(), String::new()),
                None if t.depends_on.is_empty() => ("no room now", String::new(), String::new()),
                None => ("after dependencies", String::new(), String::new()),
            };
            json!({"name": t.name, "resources": t.resources, "depends_on": t.depends_on,
                   "plan": what, "agent_id": agent, "hostname": host})
        })
        .collect();
    Ok(json!({
        "job_id": job_id,
        "exists": !created,
        "state": if created { Json::Null } else { json!(job.state) },
        "tasks": tasks,
    }))
}

async fn plan_job(State(s): State<ApiState>, body: Bytes) -> Response {
    let result = parse_spec(&body)
        .and_then(|spec| plan(&s.published.snapshot(), spec, s.published.clock.wall_ms()));
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

// The batch scheduler as the driver runs it: claims, then kills, then job record updates.
driver::built_in!(
    BatchScheduler,
    "batch",
    |u| Command::Records(SchedulerCommand::UpdateJob(u)),
    false
);

/// Starts the batch scheduler's driver. Needs a tokio runtime.
pub fn start(committer: Committer, published: Arc<Published>) {
    driver::start::<BatchScheduler>(committer, published);
}
