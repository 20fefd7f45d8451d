//! Compat's one error type.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use shoal_master::CommitError;

/// Why a call of the scheduler API is refused. The text is the one Mesos's master answers
/// (frameworks and their libraries read some of it); it goes out as `text/plain` with the
/// status Mesos uses for the case.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// The call is not valid (400).
    #[error("{0}")]
    Invalid(String),
    /// The call comes from a framework that is not subscribed (403).
    #[error("{0}")]
    Forbidden(String),
    /// The body is of a media type the API does not read (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The framework accepts no media type the API writes (406).
    #[error("{0}")]
    NotAcceptable(String),
    /// The master cannot take it now, e.g. it knows as many frameworks as it may (503).
    #[error("{0}")]
    Unavailable(String),
    /// The call names a framework that is not subscribed (403).
    #[error("Framework is not subscribed")]
    NotSubscribed,
    /// The call names no session of its framework (v1: no `Mesos-Stream-Id` header; 400).
    #[error("All non-subscribe calls should include the 'Mesos-Stream-Id' header")]
    NoSession,
    /// The call comes on a session that is not its framework's current one (400).
    #[error("The stream ID included in this request didn't match the stream ID currently associated with framework")]
    OtherSession,
    /// A SUBSCRIBE of a framework this master removed (TEARDOWN, failover timeout): Mesos
    /// answers with an ERROR event on a stream it then closes.
    #[error("Framework has been removed")]
    Removed,
    /// A command of the call did not commit.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// ZooKeeper (master detection) failed: a bad `zk://` URL, a session or a node.
    #[error(transparent)]
    ZooKeeper(#[from] crate::zk::ZkError),
}

impl CompatError {
    /// The HTTP status Mesos answers this case with.
    pub fn status(&self) -> StatusCode {
        match self {
            CompatError::Invalid(_) | CompatError::NoSession | CompatError::OtherSession => {
                StatusCode::BAD_REQUEST
            }
            CompatError::Forbidden(_) | CompatError::NotSubscribed => StatusCode::FORBIDDEN,
            // Mesos answers it on a stream (200) with an ERROR event.
            CompatError::Removed => StatusCode::OK,
            CompatError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CompatError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            CompatError::Unavailable(_) | CompatError::ZooKeeper(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CompatError::Commit(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }
}

impl IntoResponse for CompatError {
    fn into_response(self) -> Response {
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.to_string(),
        )
            .into_response()
    }
}
