//! The admin API's OpenAPI document, generated from the route annotations and the model's
//! schemas, served at `/v1/openapi.json` so that clients can be generated and the API fuzzed.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "Ballast admin API", description = "Pools, backends and the LB fleet."),
    paths(
        api::revision,
        api::list_pools,
        api::create_pool,
        api::show_pool,
        api::delete_pool,
        api::set_algorithm,
        api::set_policy,
        api::list_backends,
        api::add_backend,
        api::remove_backend,
        api::set_weight,
        api::set_state,
        api::changes,
        api::lb_servers,
        api::health_status,
        api::leader_status,
    ),
    components(schemas(
        ballast_config::PoolSpec,
        ballast_config::AlgorithmSpec,
        ballast_config::PoolPolicy,
        ballast_config::Pool,
        ballast_config::Backend,
        ballast_config::AdminState,
        ballast_config::Health,
        ballast_config::Change,
        ballast_config::LbServer,
        ballast_config::LbState,
        api::NewBackend,
        api::Weight,
        api::NewState,
    )),
    modifiers(&BearerToken)
)]
struct ApiDoc;

/// Declares the bearer token every route needs.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
