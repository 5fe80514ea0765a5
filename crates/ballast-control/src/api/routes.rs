//! Route tables in the admin API: `/v1/routes…`. A table is an ordered list; routes are added at
//! a position (or the end), removed and moved by position, and a table exists while it has
//! routes. The checks are the store's: a route naming a missing pool is refused (400), a pool a
//! route uses cannot be deleted (409, naming the route).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ballast_config::Write;
use ballast_config::route::{Route, RouteTable};
use serde::Deserialize;
use serde_json::json;

use axum::extract::rejection::QueryRejection;

use super::{Answer, Api, Body, invalid, write};
use crate::error::ApiError;

#[utoipa::path(
    get,
    path = "/v1/routes",
    responses(
        (status = 200, description = "`{\"revision\": N, \"route_tables\": [RouteTable]}`"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn list_route_tables(State(api): State<Api>) -> Answer {
    let config = api.store.config().await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "revision": config.revision, "route_tables": config.route_tables })),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/routes/{table}",
    params(
        ("table" = String, Path, description = "The route table"),
    ),
    responses(
        (status = 200, body = RouteTable),
        (status = 404, description = "No such route table"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn show_route_table(State(api): State<Api>, Path(table): Path<String>) -> Answer {
    match api.store.route_table(&table).await? {
        Some(table) => Ok((StatusCode::OK, Json(json!(table)))),
        None => Err(ApiError::NotFound(format!(
            "route table `{table}` does not exist"
        ))),
    }
}

/// Where to add a route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct At {
    /// The new route's position (0 is tried first); unset: the end of the table.
    position: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/v1/routes/{table}",
    params(
        ("table" = String, Path, description = "The route table (made by its first route)"),
        At,
    ),
    request_body = Route,
    responses(
        (status = 201, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid (a missing pool included), naming the field"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn add_route(
    State(api): State<Api>,
    Path(table): Path<String>,
    at: Result<Query<At>, QueryRejection>,
    Body(route): Body<Route>,
) -> Answer {
    let Query(At { position }) =
        at.map_err(|rejection| invalid("query", &rejection.body_text()))?;
    let add = Write::AddRoute {
        table,
        position,
        route,
    };
    write(&api, add, StatusCode::CREATED).await
}

#[utoipa::path(
    delete,
    path = "/v1/routes/{table}/{position}",
    params(
        ("table" = String, Path, description = "The route table"),
        ("position" = u32, Path, description = "The route's position"),
    ),
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 404, description = "No such route table or route"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn remove_route(
    State(api): State<Api>,
    Path((table, position)): Path<(String, String)>,
) -> Answer {
    let position = position_in_path(&table, &position)?;
    write(&api, Write::RemoveRoute { table, position }, StatusCode::OK).await
}

/// Where a route moves to.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Move {
    /// Its position once moved; the routes between shift by one.
    to: u32,
}

#[utoipa::path(
    put,
    path = "/v1/routes/{table}/{position}/position",
    params(
        ("table" = String, Path, description = "The route table"),
        ("position" = u32, Path, description = "The route's position now"),
    ),
    request_body = Move,
    responses(
        (status = 200, description = "`{\"revision\": N}`"),
        (status = 400, description = "Invalid, naming the field"),
        (status = 404, description = "No such route table or route"),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn move_route(
    State(api): State<Api>,
    Path((table, from)): Path<(String, String)>,
    Body(Move { to }): Body<Move>,
) -> Answer {
    let from = position_in_path(&table, &from)?;
    write(&api, Write::MoveRoute { table, from, to }, StatusCode::OK).await
}

/// A route's position from the path: one that is not a number names no route (404).
fn position_in_path(table: &str, position: &str) -> Result<u32, ApiError> {
    position
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no route `{position}` in route table `{table}`")))
}
