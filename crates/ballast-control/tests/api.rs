//! The admin API over a real socket and a real SQLite database: authentication, writes and their
//! revisions, errors that name the field and change nothing, and the long-polled change feed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789";

struct Control {
    address: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    store: ballast_config::SqlStore,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Control {
    async fn start() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("ballast-control-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let url = format!("sqlite://{}", dir.join("config.db").display());
        let store = ballast_config::SqlStore::connect(&url)
            .await
            .expect("store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = ballast_control::api::router(store.clone(), TOKEN.to_owned(), None);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            address,
            client: Client::builder(TokioExecutor::new()).build_http(),
            store,
            _dir: TempDir(dir),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.address))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let response = self
            .client
            .request(request.body(Full::new(body)).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(TOKEN), body).await
    }
}

#[tokio::test]
async fn every_route_but_healthz_needs_the_token() {
    let control = Control::start().await;
    let (status, _) = control.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // A browser's favicon request on every dashboard load is no authentication failure.
    let (status, _) = control.call(Method::GET, "/favicon.ico", None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = control.call(Method::GET, "/v1/revision", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body["error"]["reason"], "missing or wrong bearer token");
    }
    let (status, body) = control.ok(Method::GET, "/v1/revision", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"revision": 0})));
}

#[tokio::test]
async fn writes_answer_their_revision_and_errors_name_the_field() {
    let control = Control::start().await;
    let (status, body) = control
        .ok(
            Method::POST,
            "/v1/pools",
            Some(json!({"name": "web", "algorithm": "round_robin"})),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::CREATED, json!({"revision": 1}))
    );
    let (status, body) = control
        .ok(
            Method::POST,
            "/v1/pools/web/backends",
            Some(json!({"address": "127.0.0.1:9001", "weight": 2})),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::CREATED, json!({"revision": 2}))
    );

    let refusals = [
        (
            Method::POST,
            "/v1/pools",
            json!({"name": "shop", "algorithm": "fastest"}),
            StatusCode::BAD_REQUEST,
            "algorithm",
        ),
        (
            Method::POST,
            "/v1/pools/web/backends",
            json!({"address": "127.0.0.1:9001"}),
            StatusCode::CONFLICT,
            "address",
        ),
        (
            Method::POST,
            "/v1/pools/web/backends",
            json!({"address": "nowhere", "weight": 1}),
            StatusCode::BAD_REQUEST,
            "address",
        ),
        (
            Method::POST,
            "/v1/pools/web/backends",
            json!({"address": "127.0.0.1:9002", "weight": -1}),
            StatusCode::BAD_REQUEST,
            "weight",
        ),
        (
            Method::POST,
            "/v1/pools/shop/backends",
            json!({"address": "127.0.0.1:9002"}),
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            Method::PUT,
            "/v1/pools/web/algorithm",
            json!({"algorithm": "maglev", "table_size": 10}),
            StatusCode::BAD_REQUEST,
            "maglev.table_size",
        ),
        (
            Method::PUT,
            "/v1/pools/web/backends/127.0.0.1:9001/state",
            json!({"state": "asleep"}),
            StatusCode::BAD_REQUEST,
            "state",
        ),
    ];
    for (method, path, body, expected, field) in refusals {
        let (status, answer) = control.ok(method, path, Some(body.clone())).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{path} {body}: {answer}");
        }
        assert!(
            answer["error"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{answer}"
        );
    }
    let (_, body) = control.ok(Method::GET, "/v1/revision", None).await;
    assert_eq!(
        body,
        json!({"revision": 2}),
        "refused writes change nothing"
    );

    let (status, _) = control
        .ok(
            Method::PUT,
            "/v1/pools/web/backends/127.0.0.1:9001/state",
            Some(json!({"state": "draining"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, pool) = control.ok(Method::GET, "/v1/pools/web", None).await;
    assert_eq!(pool["backends"][0]["admin_state"], "draining");
    assert_eq!(pool["backends"][0]["weight"], 2);
}

#[tokio::test]
async fn the_change_feed_long_polls() {
    let control = Control::start().await;
    let waiting = {
        let client = control.client.clone();
        let uri = format!(
            "http://{}/v1/changes?since=0&wait_ms=10000",
            control.address
        );
        tokio::spawn(async move {
            let request = Request::get(uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            let response = client.request(request).await.expect("response");
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            serde_json::from_slice::<Value>(&bytes).expect("json")
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    control
        .ok(
            Method::POST,
            "/v1/pools",
            Some(json!({"name": "web", "algorithm": "maglev"})),
        )
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long poll returns")
        .expect("task");
    assert_eq!(answer["changes"][0]["revision"], 1);
    assert_eq!(answer["changes"][0]["operation"], "create_pool");
}

#[tokio::test]
async fn a_change_feed_reader_behind_the_pruned_log_is_told_to_reload() {
    let control = Control::start().await;
    control
        .ok(
            Method::POST,
            "/v1/pools",
            Some(json!({"name": "web", "algorithm": "round_robin"})),
        )
        .await;
    for port in 9001..9006 {
        let (status, _) = control
            .ok(
                Method::POST,
                "/v1/pools/web/backends",
                Some(json!({"address": format!("127.0.0.1:{port}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    assert_eq!(control.store.prune_changes(2).await.expect("prune"), 4);

    let (status, answer) = control.ok(Method::GET, "/v1/changes?since=1", None).await;
    assert_eq!(status, StatusCode::GONE, "{answer}");
    let reason = answer["error"]["reason"].as_str().expect("reason");
    assert!(reason.contains("starts at revision 5"), "{reason}");

    let (status, answer) = control.ok(Method::GET, "/v1/changes?since=4", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["changes"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let control = Control::start().await;
    let (status, _) = control
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, document) = control.ok(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with('3')),
        "{document}"
    );
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/v1/revision",
        "/v1/pools",
        "/v1/pools/{pool}",
        "/v1/pools/{pool}/algorithm",
        "/v1/pools/{pool}/backends",
        "/v1/pools/{pool}/backends/{address}",
        "/v1/pools/{pool}/backends/{address}/weight",
        "/v1/pools/{pool}/backends/{address}/state",
        "/v1/changes",
        "/v1/lbs",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    assert!(document["components"]["schemas"]["PoolSpec"].is_object());
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn bodies_are_objects_queries_are_checked_and_paths_naming_nothing_are_404() {
    let control = Control::start().await;
    control
        .ok(
            Method::POST,
            "/v1/pools",
            Some(json!({"name": "web", "algorithm": "round_robin"})),
        )
        .await;
    control
        .ok(
            Method::POST,
            "/v1/pools/web/backends",
            Some(json!({"address": "127.0.0.1:9001"})),
        )
        .await;
    let weight = "/v1/pools/web/backends/127.0.0.1:9001/weight";
    // serde reads an array as a struct's fields in order: `[5]` set the weight.
    let (status, body) = control.ok(Method::PUT, weight, Some(json!([5]))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "body", "{body}");
    // JSON makes no difference between 5 and 5.0.
    let (status, body) = control
        .ok(Method::PUT, weight, Some(json!({"weight": 5.0})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, backends) = control
        .ok(Method::GET, "/v1/pools/web/backends", None)
        .await;
    assert_eq!(backends[0]["weight"], 5, "{backends}");
    let (status, body) = control
        .ok(Method::PUT, weight, Some(json!({"weight": 5.5})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    for (query, field) in [
        ("since=abc", "since"),
        ("wait_ms=-1", "wait_ms"),
        ("wait_ms=30001", "wait_ms"),
        ("since=18446744073709551615", "since"),
    ] {
        let (status, body) = control
            .ok(Method::GET, &format!("/v1/changes?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, body) = control.ok(Method::GET, "/v1/changes", None).await;
    assert_eq!(status, StatusCode::OK, "no query at all: {body}");

    for (method, path) in [
        (Method::DELETE, "/v1/pools/NOT%20A%20NAME"),
        (Method::DELETE, "/v1/pools/web/backends/nowhere"),
        (Method::PUT, "/v1/pools/web/backends/nowhere/state"),
    ] {
        let body = (method == Method::PUT).then(|| json!({"state": "draining"}));
        let (status, answer) = control.ok(method, path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {answer}");
    }
}

/// The virtualenv `scripts/test` makes with schemathesis and openapi-spec-validator in it.
fn python_tool(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("BALLAST_PYTOOLS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pytools"),
        std::path::PathBuf::from,
    );
    let tool = dir.join("bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: scripts/test installs it (python3 -m venv target/pytools)",
        tool.display()
    );
    tool
}

/// What third-party tools say of the document: openapi-spec-validator validates it, and
/// schemathesis, generating requests from it with every check on, finds the live API answering
/// as documented (statuses, content types, body shapes, schema-valid bodies accepted, invalid
/// ones refused, the token required).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_holds_against_the_live_api() {
    let control = Control::start().await;
    // Something to read, so that `since=0` answers at once.
    control
        .ok(
            Method::POST,
            "/v1/pools",
            Some(json!({"name": "web", "algorithm": "round_robin"})),
        )
        .await;
    let (_, document) = control.ok(Method::GET, "/v1/openapi.json", None).await;
    let file = control._dir.0.join("openapi.json");
    std::fs::write(&file, document.to_string()).expect("write the document");
    let validated = tokio::process::Command::new(python_tool("openapi-spec-validator"))
        .arg(&file)
        .output()
        .await
        .expect("openapi-spec-validator runs");
    assert!(
        validated.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let run = tokio::process::Command::new(python_tool("schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", control.address))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--max-examples", "20", "--workers", "1"])
        .args(["--seed", "1", "--no-color"])
        .current_dir(&control._dir.0)
        .kill_on_drop(true)
        .output()
        .await
        .expect("schemathesis runs");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(said.contains(" passed"), "{said}");
}
