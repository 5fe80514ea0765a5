//! How the admin API reports what went wrong: a status and a JSON body
//! `{"error": {"field": …, "reason": …}}` naming the field where there is one.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ballast_config::StoreError;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 400: the request body or a field is invalid.
    Invalid { field: String, reason: String },
    /// 404.
    NotFound(String),
    /// 409: clashes with what exists.
    Conflict { field: String, reason: String },
    /// 410: what was asked for is no longer kept (the change log was pruned past it).
    Gone(String),
    /// 503: the configuration database failed; nothing was written.
    Unavailable(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Invalid(invalid) => Self::Invalid {
                field: invalid.field,
                reason: invalid.reason,
            },
            StoreError::Conflict(invalid) => Self::Conflict {
                field: invalid.field,
                reason: invalid.reason,
            },
            StoreError::NotFound(what) => Self::NotFound(format!("{what} does not exist")),
            fenced @ StoreError::Fenced { .. } => Self::Conflict {
                field: "fence".to_owned(),
                reason: fenced.to_string(),
            },
            database @ StoreError::Database { .. } => {
                tracing::error!(error = %database, "configuration database failed");
                Self::Unavailable(database.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error": {"reason": "missing or wrong bearer token"}}),
            ),
            Self::Invalid { field, reason } => (
                StatusCode::BAD_REQUEST,
                json!({"error": {"field": field, "reason": reason}}),
            ),
            Self::NotFound(reason) => (StatusCode::NOT_FOUND, json!({"error": {"reason": reason}})),
            Self::Conflict { field, reason } => (
                StatusCode::CONFLICT,
                json!({"error": {"field": field, "reason": reason}}),
            ),
            Self::Gone(reason) => (StatusCode::GONE, json!({"error": {"reason": reason}})),
            Self::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": {"reason": reason}}),
            ),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
