//! The client verbs' calls: batch jobs (`/api/shoal/v1/jobs…`), services
//! (`/api/shoal/v1/services…`) and task sandboxes (`/files/read`). Answers are the master's
//! JSON as it sent them (`Value::Null` for an empty one): the verbs print them as they are.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value as Json};

use crate::{Client, ClientError};

/// How long one verb's request may take, answer included.
pub const VERB_REQUEST_TIMEOUT_SECS: u64 = 30;

impl Client {
    async fn verb_get(&self, path: &str) -> Result<Json, ClientError> {
        let req = self.http.get(self.url(path));
        self.verb_send(req).await
    }

    async fn verb_post(&self, path: &str, body: Option<&Json>) -> Result<Json, ClientError> {
        let mut req = self.http.post(self.url(path));
        if let Some(body) = body {
            req = req.json(body);
        }
        self.verb_send(req).await
    }

    async fn verb_send(&self, req: reqwest::RequestBuilder) -> Result<Json, ClientError> {
        let resp = req
            .timeout(Duration::from_secs(VERB_REQUEST_TIMEOUT_SECS))
            .send()
            .await?;
        let resp = Self::check(resp).await?;
        let bytes = resp.bytes().await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Json::Null))
    }

    /// Submits a batch job (a job file, `JobSpec`); the answer names it and says whether it
    /// is new.
    pub async fn submit_job(&self, spec: &impl Serialize) -> Result<Json, ClientError> {
        let body = to_json(spec)?;
        self.verb_post("/api/shoal/v1/jobs", Some(&body)).await
    }

    /// What the scheduler would place now for a job file, without placing anything.
    pub async fn plan_job(&self, spec: &impl Serialize) -> Result<Json, ClientError> {
        let body = to_json(spec)?;
        self.verb_post("/api/shoal/v1/jobs/plan", Some(&body)).await
    }

    /// Every job, in short.
    pub async fn jobs(&self) -> Result<Json, ClientError> {
        self.verb_get("/api/shoal/v1/jobs").await
    }

    /// One job and its tasks.
    pub async fn job(&self, id: &str) -> Result<Json, ClientError> {
        self.verb_get(&format!("/api/shoal/v1/jobs/{id}")).await
    }

    /// Stops a job: running tasks are killed, the others skipped.
    pub async fn stop_job(&self, id: &str) -> Result<Json, ClientError> {
        self.verb_post(&format!("/api/shoal/v1/jobs/{id}/stop"), None)
            .await
    }

    /// Submits a service (a service file, `ServiceSpec`): a new one or a new version.
    pub async fn submit_service(&self, spec: &impl Serialize) -> Result<Json, ClientError> {
        let body = to_json(spec)?;
        self.verb_post("/api/shoal/v1/services", Some(&body)).await
    }

    /// Every service, in short.
    pub async fn services(&self) -> Result<Json, ClientError> {
        self.verb_get("/api/shoal/v1/services").await
    }

    /// One service and its instances.
    pub async fn service(&self, id: &str) -> Result<Json, ClientError> {
        self.verb_get(&format!("/api/shoal/v1/services/{id}")).await
    }

    /// Sets how many instances a service runs.
    pub async fn scale_service(&self, id: &str, count: u32) -> Result<Json, ClientError> {
        let body = json!({ "count": count });
        self.verb_post(&format!("/api/shoal/v1/services/{id}/scale"), Some(&body))
            .await
    }

    /// Stops a service: its instances are killed.
    pub async fn stop_service(&self, id: &str) -> Result<Json, ClientError> {
        self.verb_post(&format!("/api/shoal/v1/services/{id}/stop"), None)
            .await
    }

    /// Up to `length` bytes (by default as many as the agent reads at once) of a sandbox
    /// file from `offset` on, through the master's `/files/read` (Mesos's files API):
    /// `{"data": …, "offset": …}`. `path` is as Mesos names it, e.g.
    /// `/agents/{agent}/tasks/{task}/stdout`.
    pub async fn read_file(
        &self,
        path: &str,
        offset: Option<u64>,
        length: Option<u64>,
    ) -> Result<Json, ClientError> {
        let mut query = format!("/files/read?path={path}");
        if let Some(offset) = offset {
            query.push_str(&format!("&offset={offset}"));
        }
        if let Some(length) = length {
            query.push_str(&format!("&length={length}"));
        }
        self.verb_get(&query).await
    }
}

fn to_json(spec: &impl Serialize) -> Result<Json, ClientError> {
    serde_json::to_value(spec).map_err(|e| ClientError::Encode(e.to_string()))
}
