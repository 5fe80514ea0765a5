//! The admin endpoint: `/metrics` (OpenMetrics or the Prometheus text format, as asked), `/healthz` (the process is up), `/readyz`
//! (it takes traffic: 503 once draining) and `/config/revision` (the configuration revision in
//! force, in plain text, cheap to poll).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ballast_telemetry::Format;

use crate::state::Shared;

/// The admin routes over the server's shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/config/revision", get(revision))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let unreachable_since = *shared
        .config_unreachable_since
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    shared.metrics.set_config(
        shared.snapshot.load().revision,
        unreachable_since.map(|since| since.elapsed()),
    );
    let backends = shared.backends();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let page = shared.metrics.render(
        Format::negotiate(accept),
        backends.iter().map(|b| {
            let in_flight = b.balance.load().in_flight();
            (&b.counters, in_flight, b.connections.count())
        }),
    );
    ([(header::CONTENT_TYPE, page.content_type)], page.body)
}

/// The configuration revision in force, as plain text: cheap to poll.
async fn revision(State(shared): State<Arc<Shared>>) -> String {
    format!("{}\n", shared.snapshot.load().revision)
}

async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}
