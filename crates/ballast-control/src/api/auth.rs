//! Bearer-token authentication for the admin API. The token is compared in constant time, so how
//! long a refusal takes says nothing about how much of a guess was right.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::api::Api;
use crate::error::ApiError;

/// Lets a request through only with `Authorization: Bearer <token>`.
pub(crate) async fn require_token(
    State(api): State<Api>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(api.token.as_bytes())) && !api.token.is_empty() {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}
