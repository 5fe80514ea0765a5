//! The admin API's OpenAPI document, generated from the route annotations and the model's
//! schemas, served at `/v1/openapi.json` so that clients can be generated and the API fuzzed.
//!
//! What the annotations cannot say, one pass over the generated document adds, so that it holds
//! for every route rather than for those somebody remembered: the answers every route may give
//! (401 without the token, 503 while the database is down, 400 for a body or query it refuses,
//! 404 for a path naming nothing), each with the error's JSON shape; the grammar of names and
//! algorithms; integer ranges as serde enforces them; and schemas that utoipa writes as an
//! `allOf` of closed objects (a flattened struct), which no body could satisfy, merged into one.

use serde_json::{Map, Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

/// What the routes do not say: the schemas, the title, the bearer token. The paths come from
/// the router itself ([`super::router`]), so the document cannot miss one.
#[derive(OpenApi)]
#[openapi(
    info(title = "Ballast admin API", description = "Pools, backends, route tables and the LB fleet."),
    components(schemas(
        ballast_config::PoolSpec,
        ballast_config::AlgorithmSpec,
        ballast_config::PoolPolicy,
        ballast_config::UpstreamProtocol,
        ballast_config::ProxyProtocol,
        ballast_config::Pool,
        ballast_config::Backend,
        ballast_config::AdminState,
        ballast_config::Health,
        ballast_config::Change,
        ballast_config::LbServer,
        ballast_config::LbState,
        ballast_config::route::RouteTable,
        ballast_config::route::Route,
        api::NewAlgorithm,
        api::NewBackend,
        api::Weight,
        api::NewState,
        api::routes::Move,
    )),
    modifiers(&BearerToken)
)]
pub(crate) struct ApiDoc;

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

/// A pool's name, as `ballast_config` checks it: a DNS label of lower-case letters, digits and
/// dashes.
const NAME_PATTERN: &str = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// A route table's name, as `ballast_config::route::check_table_name` checks it.
const TABLE_PATTERN: &str = "^[A-Za-z0-9_-]{1,63}$";

/// The hash key's grammar, as `ballast_config` parses it.
const HASH_KEY_PATTERN: &str = ballast_config::HashKeySpec::PATTERN;

/// The document the router's routes and [`ApiDoc`] generated, completed.
pub(crate) fn document(generated: utoipa::openapi::OpenApi) -> Value {
    let mut document = serde_json::to_value(generated).unwrap_or(Value::Null);
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        constrain_schemas(schemas);
        let names: Vec<String> = schemas.keys().cloned().collect();
        for name in names {
            let reference = Value::String(format!("#/components/schemas/{name}"));
            if let Some(one) = merged(schemas, &json!({ "$ref": reference })) {
                schemas.insert(name, one);
            }
        }
        constrain_pool_fields(schemas);
        schemas.insert("Error".to_owned(), error_schema());
    }
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for operation in paths
            .values_mut()
            .filter_map(Value::as_object_mut)
            .flat_map(|item| item.values_mut())
            .filter_map(Value::as_object_mut)
        {
            complete_operation(operation);
        }
    }
    document
}

/// Grammars and ranges the Rust types do not carry.
fn constrain_schemas(schemas: &mut Map<String, Value>) {
    let mut set = |pointer: &str, key: &str, value: Value| {
        let mut parts = pointer.splitn(2, '/');
        let (Some(schema), Some(rest)) = (parts.next(), parts.next()) else {
            return;
        };
        if let Some(target) = schemas
            .get_mut(schema)
            .and_then(|s| s.pointer_mut(&format!("/{rest}")))
            .and_then(Value::as_object_mut)
        {
            target.insert(key.to_owned(), value);
        }
    };
    let algorithms: Vec<Value> = ballast_config::ALGORITHM_NAMES
        .iter()
        .map(|name| json!(name))
        .collect();
    set(
        "AlgorithmSpec/properties/algorithm",
        "enum",
        Value::Array(algorithms),
    );
    for schema in schemas.values_mut() {
        bound_unsigned(schema);
    }
}

/// The grammar of a pool's own fields, wherever they appear once merged.
fn constrain_pool_fields(schemas: &mut Map<String, Value>) {
    for schema in ["PoolSpec", "Pool", "NewAlgorithm"] {
        for (field, pattern) in [("name", NAME_PATTERN), ("hash_key", HASH_KEY_PATTERN)] {
            if let Some(property) = schemas
                .get_mut(schema)
                .and_then(|s| s.pointer_mut(&format!("/properties/{field}")))
                .and_then(Value::as_object_mut)
            {
                property.insert("pattern".to_owned(), json!(pattern));
            }
        }
    }
}

/// Unsigned integers get the maximum serde enforces (utoipa writes only their minimum).
fn bound_unsigned(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let unsigned = object.get("minimum") == Some(&json!(0));
            let maximum = match object.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => Some(json!(u32::MAX)),
                Some("int64") if unsigned => Some(json!(u64::MAX)),
                _ => None,
            };
            if let Some(maximum) = maximum {
                object.entry("maximum").or_insert(maximum);
            }
            object.values_mut().for_each(bound_unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned),
        _ => {}
    }
}

/// The schema at `reference` as one object, if it is an `allOf` (nested ones and references
/// resolved): the union of the parts' properties and required fields, closed if every part is.
fn merged(schemas: &Map<String, Value>, reference: &Value) -> Option<Value> {
    let schema = resolve(schemas, reference)?;
    let parts = schema.get("allOf")?.as_array()?;
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    let mut closed = true;
    for part in parts {
        let part = merged(schemas, part).or_else(|| resolve(schemas, part).cloned())?;
        if let Some(more) = part.get("properties").and_then(Value::as_object) {
            properties.extend(more.clone());
        }
        for field in part
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !required.contains(field) {
                required.push(field.clone());
            }
        }
        closed &= part.get("additionalProperties") == Some(&Value::Bool(false));
    }
    let mut object = Map::new();
    if let Some(description) = schema.get("description") {
        object.insert("description".to_owned(), description.clone());
    }
    object.insert("type".to_owned(), json!("object"));
    object.insert("properties".to_owned(), Value::Object(properties));
    object.insert("required".to_owned(), Value::Array(required));
    if closed {
        object.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    Some(Value::Object(object))
}

/// `schema` itself, or the component schema its `$ref` names.
fn resolve<'a>(schemas: &'a Map<String, Value>, schema: &'a Value) -> Option<&'a Value> {
    match schema.get("$ref").or(Some(schema)).and_then(Value::as_str) {
        Some(reference) => schemas.get(reference.strip_prefix("#/components/schemas/")?),
        None => Some(schema),
    }
}

/// The shape of every error answer.
fn error_schema() -> Value {
    json!({
        "description": "What went wrong, naming the field where there is one.",
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "field": {"type": "string"},
                    "reason": {"type": "string"}
                },
                "required": ["reason"]
            }
        },
        "required": ["error"]
    })
}

/// Every answer an operation may give, each with a description and, for errors, their shape;
/// path parameters with their grammar.
fn complete_operation(operation: &mut Map<String, Value>) {
    let mut path_parameters = false;
    let mut query_parameters = false;
    for parameter in operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
    {
        match parameter.get("in").and_then(Value::as_str) {
            Some("path") => path_parameters = true,
            Some("query") => query_parameters = true,
            _ => {}
        }
        if parameter.get("name") == Some(&json!("pool")) {
            parameter.insert(
                "schema".to_owned(),
                json!({"type": "string", "pattern": NAME_PATTERN}),
            );
        }
        if parameter.get("name") == Some(&json!("table")) {
            parameter.insert(
                "schema".to_owned(),
                json!({"type": "string", "pattern": TABLE_PATTERN}),
            );
        }
    }
    let secured = operation.contains_key("security");
    let has_body = operation.contains_key("requestBody");
    let Some(responses) = operation
        .get_mut("responses")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| json!({"description": description}));
    };
    if secured {
        add("401", "No bearer token, or the wrong one");
        add(
            "503",
            "The configuration database is unreachable; nothing was written",
        );
    }
    if has_body || query_parameters {
        add("400", "Invalid, naming the field");
    }
    if path_parameters {
        add("404", "No such pool, backend, route table or route");
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        response
            .entry("description")
            .or_insert_with(|| json!("The answer"));
        if !status.starts_with('2') {
            response.entry("content").or_insert_with(
                || json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}),
            );
        }
    }
}
