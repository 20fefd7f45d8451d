//! Jobs in the master: the native job endpoints and the thin async driver of the core's
//! [`BatchScheduler`].
//!
//! The driver is a native scheduler like any other: it reads published snapshots and the
//! commit broadcast, and submits `Command::Claim`, `Command::KillTask` and
//! `Command::UpdateJob` through the committer, exactly as the HTTP handlers do. It never
//! touches the cell another way. Its loop:
//!
//! 1. fold every committed entry waiting in the broadcast into the scheduler (`observe`);
//! 2. `step` on the newest snapshot at the wall-clock time;
//! 3. submit the claims (and report each outcome back with `claimed`), the kills and the job
//!    record updates, in that order, each waiting for its acknowledgement;
//! 4. if the scheduler has more to do, go to 1; else sleep until the next commit, the
//!    scheduler's wake-up time, or the nudge interval, whichever comes first.
//!
//! If the driver falls behind the broadcast it rebuilds the scheduler from the snapshot
//! (`BatchScheduler::recover`), as a new master does at start.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value as Json};
use shoal_core::jobs::{
    parse_job_file, Actions, BatchScheduler, Job, JobFormat, JobSpec, JobState, JobUpdate,
};
use shoal_core::{Cell, Command, Reply};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::api::{ApiError, ApiState};
use crate::committer::{CommitError, Committer, Published};
use crate::{limits, wall_clock_ms};

/// How often an idle driver asks for a placement pass anyway (claims refused for reasons
/// that pass without a commit the scheduler would notice).
const NUDGE_INTERVAL: Duration = Duration::from_secs(1);

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
        let reply = s.committer.submit(Command::SubmitJob { spec }).await?;
        let Reply::Job { job_id, created } = reply else {
            return Err(internal("unexpected reply"));
        };
        let snap = s.published.snapshot();
        let job = snap.job(&job_id).map(job_json).unwrap_or(Json::Null);
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

fn internal(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "internal",
        message: message.into(),
    }
}

async fn list_jobs(State(s): State<ApiState>) -> Response {
    let snap = s.published.snapshot();
    let mut jobs: Vec<&Job> = snap.jobs().collect();
    jobs.sort_by(|a, b| (a.submitted_version, &a.id).cmp(&(b.submitted_version, &b.id)));
    let jobs: Vec<Json> = jobs.into_iter().map(summary_json).collect();
    axum::Json(json!({"version": snap.version(), "jobs": jobs})).into_response()
}

async fn get_job(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    match s.published.snapshot().job(&id) {
        Some(j) => axum::Json(job_json(j)).into_response(),
        None => ApiError::not_found(format!("job {id}")).into_response(),
    }
}

async fn stop_job(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let update = JobUpdate {
        job_id: id,
        state: Some(JobState::Stopped),
        message: Some("stopped by a user".into()),
        finished_at: wall_clock_ms(),
        tasks: vec![],
    };
    match s.committer.submit(Command::UpdateJob(update)).await {
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
        .commit(now, &Command::SubmitJob { spec })
        .map_err(|r| ApiError::from(CommitError::Rejected(r)))?;
    let Reply::Job { job_id, created } = reply else {
        return Err(internal("unexpected reply"));
    };
    let mut placed: std::collections::HashMap<String, (String, String)> = Default::default();
    if created {
        let mut sched = BatchScheduler::new();
        sched.observe(&shoal_core::LogEntry {
            version: scratch.version(),
            events: vec![shoal_core::Event::JobSubmitted {
                job: Box::new(
                    scratch
                        .job(&job_id)
                        .cloned()
                        .ok_or_else(|| internal("job"))?,
                ),
            }],
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
    let job = scratch.job(&job_id).ok_or_else(|| internal("job"))?;
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
    let result =
        parse_spec(&body).and_then(|spec| plan(&s.published.snapshot(), spec, wall_clock_ms()));
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Starts the batch scheduler's driver. Needs a tokio runtime.
pub fn start(committer: Committer, published: Arc<Published>) {
    tokio::spawn(drive(committer, published));
}

async fn drive(committer: Committer, published: Arc<Published>) {
    let mut rx = published.entries.subscribe();
    let mut sched = BatchScheduler::recover(&published.snapshot());
    loop {
        // 1. Everything committed so far.
        loop {
            match rx.try_recv() {
                Ok(entry) => sched.observe(&entry),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "batch scheduler fell behind; rebuilding it");
                    sched = BatchScheduler::recover(&published.snapshot());
                }
                Err(TryRecvError::Closed) => return,
            }
        }
        // 2. and 3.
        let now = wall_clock_ms();
        let actions = sched.step(&published.snapshot(), now);
        let wake_at = actions.wake_at;
        execute(&committer, &mut sched, actions, now).await;
        if sched.has_work() {
            continue;
        }
        // 4.
        let mut wait = NUDGE_INTERVAL;
        if let Some(at) = wake_at {
            wait = wait.min(Duration::from_millis(at.saturating_sub(wall_clock_ms())));
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(entry) => sched.observe(&entry),
                Err(RecvError::Lagged(_)) => {
                    sched = BatchScheduler::recover(&published.snapshot());
                }
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(wait) => sched.nudge(),
        }
    }
}

async fn execute(committer: &Committer, sched: &mut BatchScheduler, actions: Actions, now: u64) {
    let Actions {
        claims,
        kills,
        updates,
        ..
    } = actions;
    // Queue everything first (one commit group), then wait for the answers.
    let mut claim_rx = Vec::with_capacity(claims.len());
    for c in claims {
        let rx = committer.enqueue(Command::Claim(c.clone())).await;
        claim_rx.push((c, rx));
    }
    let mut other_rx = Vec::new();
    for task_id in kills {
        other_rx.push(committer.enqueue(Command::KillTask { task_id }).await);
    }
    for u in updates {
        other_rx.push(committer.enqueue(Command::UpdateJob(u)).await);
    }
    for (claim, rx) in claim_rx {
        match rx.await {
            Ok(Ok(Reply::Claim { outcome })) => sched.claimed(&claim, Some(&outcome), now),
            other => {
                tracing::warn!(claim = %claim.id, answer = ?other.map(|r| r.map(|_| ())), "batch claim not committed");
                sched.claimed(&claim, None, now);
            }
        }
    }
    for rx in other_rx {
        match rx.await {
            Ok(Ok(_)) | Ok(Err(CommitError::Rejected(shoal_core::Rejection::NotFound(_)))) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "batch scheduler command refused"),
            Err(_) => tracing::warn!("batch scheduler command dropped"),
        }
    }
}
