//! The admin API, `/v1/…`, JSON in and out: pools, backends, route tables, the change log, the LB fleet,
//! the orchestrator's view. [`router`] is the one list of its routes; each route's annotation
//! says what it takes and answers, and the same annotations make the OpenAPI document served at
//! `GET /v1/openapi.json`. Every route but `/healthz` and the dashboard's page and assets needs
//! `Authorization: Bearer <token>`; `GET /metrics` serves the orchestrator's metrics
//! (OpenMetrics or Prometheus text, by `Accept`) and `GET /v1/dashboard` everything the
//! dashboard shows (see [`crate::dashboard`]).
//!
//! Writes answer `{"revision": N}`, the revision they produced. Errors answer
//! `{"error": {"field": …, "reason": …}}` with 400 (invalid), 404 (unknown pool or backend),
//! 409 (already exists), 401 (token), 410 (the change log was pruned past `since`) or 503
//! (database down; nothing was written).

mod auth;
pub mod client;
pub(crate) mod dashboard;
pub(crate) mod error;
mod openapi;
pub(crate) mod routes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router, middleware};
use ballast_config::{
    AdminState, AlgorithmSpec, Backend, Pool, PoolPolicy, PoolSpec, SqlStore, Write,
};
use ballast_telemetry::Format;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::auth::require_token;
use crate::error::ApiError;
use crate::orchestrator::Status;
use prometheus_client::registry::Registry;

/// The API's state: the store, the token, and the orchestrator's state when it runs here.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) store: SqlStore,
    pub(crate) token: Arc<str>,
    pub(crate) orchestrator: Option<Status>,
    registry: Arc<Registry>,
    pub(crate) traffic: Arc<crate::dashboard::Traffic>,
}

/// The admin routes over `store`, guarded by `token`; with `orchestrator`, also its state
/// (`/v1/health`, `/v1/leader`) and metrics (`/metrics`).
pub fn router(store: SqlStore, token: String, orchestrator: Option<Status>) -> Router {
    let mut registry = Registry::default();
    if let Some(orchestrator) = &orchestrator {
        orchestrator.register(&mut registry);
    }
    let api = Api {
        store,
        token: token.into(),
        orchestrator,
        registry: Arc::new(registry),
        traffic: Arc::new(crate::dashboard::Traffic::new()),
    };
    // One list of routes: the router serves them, and their annotations make the document.
    let (documented, generated) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(revision))
        .routes(routes!(list_pools, create_pool))
        .routes(routes!(show_pool, delete_pool))
        .routes(routes!(set_algorithm))
        .routes(routes!(set_policy))
        .routes(routes!(list_backends, add_backend))
        .routes(routes!(remove_backend))
        .routes(routes!(set_weight))
        .routes(routes!(set_state))
        .routes(routes!(routes::list_route_tables))
        .routes(routes!(routes::show_route_table, routes::add_route))
        .routes(routes!(routes::remove_route))
        .routes(routes!(routes::move_route))
        .routes(routes!(changes))
        .routes(routes!(lb_servers))
        .routes(routes!(health_status))
        .routes(routes!(leader_status))
        .split_for_parts();
    let document = Arc::new(openapi::document(generated));
    let v1 = documented
        .route("/metrics", get(metrics))
        .route(
            "/v1/openapi.json",
            get(move || {
                let document = Arc::clone(&document);
                async move { Json(Value::clone(&document)) }
            }),
        )
        .route("/v1/dashboard", get(crate::dashboard::document))
        .layer(middleware::from_fn_with_state(api.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // Browsers ask for it on every dashboard load; there is none, and no token is needed
        // to hear so.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/", get(crate::dashboard::page))
        .route("/dashboard/{file}", get(crate::dashboard::asset))
        .merge(v1)
        .with_state(api)
}

pub(crate) type Answer = Result<(StatusCode, Json<Value>), ApiError>;

/// A request body that is one JSON object, read as `T`; otherwise 400 naming the field serde
/// stopped at. An object only: serde reads an array as a struct's fields in order, so `[5]`
/// would set a weight, which no client means and the API document does not allow.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| {
                let media = media.trim().to_ascii_lowercase();
                media == "application/json"
                    || media.starts_with("application/") && media.ends_with("+json")
            });
        if !json {
            return Err(ApiError::Invalid {
                field: "body".to_owned(),
                reason: "expected `Content-Type: application/json`".to_owned(),
            });
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::Invalid {
                field: "body".to_owned(),
                reason: rejection.body_text(),
            })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::Invalid {
                field: "body".to_owned(),
                reason: "expected a JSON object".to_owned(),
            });
        }
        // JSON (RFC 8259) and JSON Schema make no difference between `5` and `5.0`; serde does.
        let bytes = match serde_json::from_slice::<Value>(&bytes) {
            Ok(mut value) => {
                whole_numbers_as_integers(&mut value);
                serde_json::to_vec(&value).map_or(bytes, Bytes::from)
            }
            // Json reports the syntax error, with its line and column.
            Err(_) => bytes,
        };
        Json::<T>::from_bytes(&bytes)
            .map(|Json(value)| Self(value))
            .map_err(|rejection| invalid("body", &rejection.body_text()))
    }
}

/// Every number in `value` that is whole and fits an integer becomes one (`5.0` → `5`).
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
            {
                // 2^64 and -2^63: the first floats outside u64 and i64.
                if (0.0..18_446_744_073_709_551_616.0).contains(&float) {
                    *number = serde_json::Number::from(float as u64);
                } else if (-9_223_372_036_854_775_808.0..0.0).contains(&float) {
                    *number = serde_json::Number::from(float as i64);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// 400 from a deserializer's complaint, naming the field it stopped at (serde_path_to_error
/// puts it first: `weight: invalid value …`), or `whole` when it names none.
fn invalid(whole: &str, text: &str) -> ApiError {
    let detail = text
        .split_once("target type: ")
        .or_else(|| text.split_once("query string: "))
        .map_or(text, |(_, detail)| detail);
    match detail.split_once(": ") {
        Some((field, reason)) if !field.contains(' ') => ApiError::Invalid {
            field: field.to_owned(),
            reason: reason.to_owned(),
        },
        _ => ApiError::Invalid {
            field: whole.to_owned(),
            reason: detail.to_owned(),
        },
    }
}

/// A write whose pool (and, but for an added backend, address) came from the path: a name that
/// cannot exist names no resource, which is 404, as for one that does not exist.
async fn write(api: &Api, write: Write, status: StatusCode) -> Answer {
    let address_in_path = !matches!(write, Write::AddBackend { .. } | Write::CreatePool(_));
    // A route names its pool in the body, and a table to edit (not to add to) in the path.
    let pool_in_path = write.route_table().is_none();
    let table_in_path = matches!(write, Write::RemoveRoute { .. } | Write::MoveRoute { .. });
    match api.store.apply(write).await {
        Ok(revision) => Ok((status, Json(json!({ "revision": revision })))),
        Err(ballast_config::StoreError::Invalid(invalid))
            if pool_in_path && invalid.field == "pool"
                || table_in_path && invalid.field == "table"
                || address_in_path && invalid.field == "address" =>
        {
            Err(ApiError::NotFound(format!(
                "no such {}: {}",
                invalid.field, invalid.reason
            )))
        }
        Err(error) => Err(error.into()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/revision",
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
    ),
    security(("bearer" = [])),
)]
async fn revision(State(api): State<Api>) -> Answer {
    let revision = api.store.revision().await?;
    Ok((StatusCode::OK, Json(json!({ "revision": revision }))))
}

#[utoipa::path(
    get,
    path = "/v1/pools",
    responses(
        (status = 200, description = "`{\"revision\": N, \"pools\": [Pool]}`"),
    ),
    security(("bearer" = [])),
)]
async fn list_pools(State(api): State<Api>) -> Answer {
    let config = api.store.config().await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "revision": config.revision, "pools": config.pools })),
    ))
}

async fn find_pool(api: &Api, name: &str) -> Result<Pool, ApiError> {
    api.store
        .config()
        .await?
        .pools
        .into_iter()
        .find(|pool| pool.spec.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("pool `{name}` does not exist")))
}

#[utoipa::path(
    get,
    path = "/v1/pools/{pool}",
    params(
        ("pool" = String, Path, description = "The pool"),
    ),
    responses(
        (status = 200, body = Pool),
        (status = 404, description = "No such pool"),
    ),
    security(("bearer" = [])),
)]
async fn show_pool(State(api): State<Api>, Path(pool): Path<String>) -> Answer {
    let pool = find_pool(&api, &pool).await?;
    Ok((StatusCode::OK, Json(json!(pool))))
}

#[utoipa::path(
    get,
    path = "/v1/pools/{pool}/backends",
    params(
        ("pool" = String, Path, description = "The pool"),
    ),
    responses(
        (status = 200, body = Vec<Backend>),
        (status = 404, description = "No such pool"),
    ),
    security(("bearer" = [])),
)]
async fn list_backends(State(api): State<Api>, Path(pool): Path<String>) -> Answer {
    let pool = find_pool(&api, &pool).await?;
    Ok((StatusCode::OK, Json(json!(pool.backends))))
}

#[utoipa::path(
    post,
    path = "/v1/pools",
    request_body = PoolSpec,
    responses(
        (status = 201, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 409, description = "The pool exists"),
    ),
    security(("bearer" = [])),
)]
async fn create_pool(State(api): State<Api>, Body(spec): Body<PoolSpec>) -> Answer {
    write(&api, Write::CreatePool(spec), StatusCode::CREATED).await
}

#[utoipa::path(
    delete,
    path = "/v1/pools/{pool}",
    params(
        ("pool" = String, Path, description = "The pool"),
    ),
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 404, description = "No such pool"),
    ),
    security(("bearer" = [])),
)]
async fn delete_pool(State(api): State<Api>, Path(pool): Path<String>) -> Answer {
    write(&api, Write::DeletePool { pool }, StatusCode::OK).await
}

/// A pool's new algorithm, its parameters and, if given, its new hash key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewAlgorithm {
    #[serde(flatten)]
    algorithm: AlgorithmSpec,
    /// `client_ip`, `header:NAME`, `cookie:NAME` or `path`; unset: the pool keeps its own.
    #[serde(default)]
    hash_key: Option<String>,
}

#[utoipa::path(
    put,
    path = "/v1/pools/{pool}/algorithm",
    params(
        ("pool" = String, Path, description = "The pool"),
    ),
    request_body = NewAlgorithm,
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 404, description = "No such pool"),
    ),
    security(("bearer" = [])),
)]
async fn set_algorithm(
    State(api): State<Api>,
    Path(pool): Path<String>,
    Body(NewAlgorithm {
        algorithm,
        hash_key,
    }): Body<NewAlgorithm>,
) -> Answer {
    let set = Write::SetAlgorithm {
        pool,
        algorithm,
        hash_key,
    };
    write(&api, set, StatusCode::OK).await
}

#[utoipa::path(
    put,
    path = "/v1/pools/{pool}/policy",
    params(
        ("pool" = String, Path, description = "The pool"),
    ),
    request_body = PoolPolicy,
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 404, description = "No such pool"),
    ),
    security(("bearer" = [])),
)]
async fn set_policy(
    State(api): State<Api>,
    Path(pool): Path<String>,
    Body(policy): Body<PoolPolicy>,
) -> Answer {
    write(&api, Write::SetPolicy { pool, policy }, StatusCode::OK).await
}

/// A backend to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewBackend {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[utoipa::path(
    post,
    path = "/v1/pools/{pool}/backends",
    params(
        ("pool" = String, Path, description = "The pool"),
    ),
    request_body = NewBackend,
    responses(
        (status = 201, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 404, description = "No such pool"),
        (status = 409, description = "The backend is in the pool"),
    ),
    security(("bearer" = [])),
)]
async fn add_backend(
    State(api): State<Api>,
    Path(pool): Path<String>,
    Body(NewBackend { address, weight }): Body<NewBackend>,
) -> Answer {
    let add = Write::AddBackend {
        pool,
        address,
        weight,
    };
    write(&api, add, StatusCode::CREATED).await
}

#[utoipa::path(
    delete,
    path = "/v1/pools/{pool}/backends/{address}",
    params(
        ("pool" = String, Path, description = "The pool"),
        ("address" = String, Path, description = "IP:port"),
    ),
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 404, description = "No such pool or backend"),
    ),
    security(("bearer" = [])),
)]
async fn remove_backend(
    State(api): State<Api>,
    Path((pool, address)): Path<(String, String)>,
) -> Answer {
    write(&api, Write::RemoveBackend { pool, address }, StatusCode::OK).await
}

/// A backend's new weight.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Weight {
    weight: u32,
}

#[utoipa::path(
    put,
    path = "/v1/pools/{pool}/backends/{address}/weight",
    params(
        ("pool" = String, Path, description = "The pool"),
        ("address" = String, Path, description = "IP:port"),
    ),
    request_body = Weight,
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 404, description = "No such pool or backend"),
    ),
    security(("bearer" = [])),
)]
async fn set_weight(
    State(api): State<Api>,
    Path((pool, address)): Path<(String, String)>,
    Body(Weight { weight }): Body<Weight>,
) -> Answer {
    let set = Write::SetWeight {
        pool,
        address,
        weight,
    };
    write(&api, set, StatusCode::OK).await
}

/// A backend's new admin state.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewState {
    state: AdminState,
}

#[utoipa::path(
    put,
    path = "/v1/pools/{pool}/backends/{address}/state",
    params(
        ("pool" = String, Path, description = "The pool"),
        ("address" = String, Path, description = "IP:port"),
    ),
    request_body = NewState,
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 404, description = "No such pool or backend"),
    ),
    security(("bearer" = [])),
)]
async fn set_state(
    State(api): State<Api>,
    Path((pool, address)): Path<(String, String)>,
    Body(NewState { state }): Body<NewState>,
) -> Answer {
    let set = Write::SetAdminState {
        pool,
        address,
        state,
    };
    write(&api, set, StatusCode::OK).await
}

#[utoipa::path(
    get,
    path = "/v1/lbs",
    responses(
        (status = 200, description = "`{\"lbs\": [LbServer]}`"),
    ),
    security(("bearer" = [])),
)]
async fn lb_servers(State(api): State<Api>) -> Answer {
    let servers = api.store.lb_servers().await?;
    Ok((StatusCode::OK, Json(json!({ "lbs": servers }))))
}

#[derive(Debug, Deserialize)]
struct Since {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// The longest a change-feed request waits for a change, in milliseconds: under the 60 s idle
/// timeouts common in proxies between a client and the API.
pub(crate) const MAX_WAIT_MS: u64 = 30_000;

#[utoipa::path(
    get,
    path = "/v1/changes",
    params(
        ("since" = Option<u64>, Query, description = "Changes after this revision (default 0)", maximum = 9_223_372_036_854_775_807_u64),
        ("wait_ms" = Option<u64>, Query, description = "Wait up to this long for one, in milliseconds (default 0: answer at once)", maximum = 30_000),
    ),
    responses(
        (status = 200, description = "`{\"changes\": [Change]}`"),
        (status = 400, description = "`since` or `wait_ms` is not a whole number in range"),
        (status = 410, description = "The log was pruned past `since`: read the whole configuration instead"),
    ),
    security(("bearer" = [])),
)]
async fn changes(State(api): State<Api>, query: Result<Query<Since>, QueryRejection>) -> Answer {
    let Query(query) = query.map_err(|rejection| invalid("query", &rejection.body_text()))?;
    if query.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::Invalid {
            field: "wait_ms".to_owned(),
            reason: format!("at most {MAX_WAIT_MS}"),
        });
    }
    if i64::try_from(query.since).is_err() {
        return Err(ApiError::Invalid {
            field: "since".to_owned(),
            reason: format!("at most {}", i64::MAX),
        });
    }
    let deadline = Instant::now() + Duration::from_millis(query.wait_ms);
    loop {
        let changes = api.store.changes_since(query.since, 1000).await?;
        if let Some(first) = changes.first()
            && first.revision > query.since.saturating_add(1)
        {
            return Err(ApiError::Gone(format!(
                "the change log starts at revision {}; read /v1/pools for the whole \
                 configuration and follow from its revision",
                first.revision
            )));
        }
        if !changes.is_empty() || Instant::now() >= deadline {
            return Ok((StatusCode::OK, Json(json!({ "changes": changes }))));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[utoipa::path(
    get,
    path = "/v1/health",
    responses(
        (status = 200, description = "`{\"backends\": [{pool, address, health, phi, reason}]}`: the health checker's current view, phi included"),
        (status = 404, description = "Health checking does not run in this instance"),
    ),
    security(("bearer" = [])),
)]
async fn health_status(State(api): State<Api>) -> Answer {
    let orchestrator = orchestrator(&api)?;
    let backends = orchestrator.health.status();
    let leader = orchestrator.leader();
    Ok((
        StatusCode::OK,
        Json(json!({ "leading": leader.leading, "backends": backends })),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/leader",
    responses(
        (status = 200, description = "`{identity, leading, token, election, last_step_down, since_ms}`: whether this instance leads the orchestrators"),
        (status = 404, description = "The orchestrator does not run in this instance"),
    ),
    security(("bearer" = [])),
)]
async fn leader_status(State(api): State<Api>) -> Answer {
    let leader = orchestrator(&api)?.leader();
    Ok((StatusCode::OK, Json(json!(leader))))
}

fn orchestrator(api: &Api) -> Result<&Status, ApiError> {
    api.orchestrator.as_ref().ok_or_else(|| {
        ApiError::NotFound("the orchestrator does not run in this instance".to_owned())
    })
}

/// The orchestrator's metrics, in the format the reader asks for (OpenMetrics or the
/// Prometheus text format).
async fn metrics(State(api): State<Api>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let page = Format::negotiate(accept).encode(&api.registry);
    ([(header::CONTENT_TYPE, page.content_type)], page.body)
}
