//! `/health`: 200 `OK` while the master can commit; 503 with the reason while it cannot (the
//! commit path has stopped, or the store is failing and being reopened).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::committer::Published;

pub async fn health(State(published): State<Arc<Published>>) -> Response {
    match published.health.check() {
        Ok(()) => (StatusCode::OK, "OK").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()).into_response(),
    }
}
