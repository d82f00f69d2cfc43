//! The LocalAPI's error: an HTTP status and a message for the user. The
//! coordinator answers with domain errors ([`BackendError`]); this is the
//! one place that gives each its status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use weft_localapi::ErrorBody;

use crate::daemon::backend::BackendError;
use crate::daemon::profiles::ProfileError;

/// An HTTP status and a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(404, m)
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let status = match &e {
            BackendError::ServerChangeNeedsLogin | BackendError::InvalidPrefs(_) => 400,
            BackendError::Profile(ProfileError::Unknown(_)) | BackendError::NoPeer(_) => 404,
            BackendError::ProfileChanged | BackendError::NoRelayMap => 409,
            BackendError::Profile(ProfileError::State(_)) | BackendError::State(_) => 500,
            BackendError::LogoutFailed(_)
            | BackendError::PeerUnusable { .. }
            | BackendError::PeerNotConnected { .. } => 502,
            BackendError::ShuttingDown => 503,
        };
        Self::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}
