//! Route tables in a static configuration, as an nginx user writes `server_name`, `location` and
//! `return`: by host (exact and wildcard), path prefix, header and method to three pools; a
//! redirect and a fixed status; 404 (counted) when nothing matches; HTTP/2's `:authority` routes
//! as `Host` does; and a reload that adds a route.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::{Process, Reply, TempDir, echo, eventually, metric, raw};

/// The routes of the table `main`, in order.
const ROUTES: &str = r#"
[[route_tables.routes]]
host = "api.example.test"
path_prefix = "/v1"
pool = "api"

[[route_tables.routes]]
host = "*.example.test"
header = "x-canary=1"
pool = "admin"

[[route_tables.routes]]
path_prefix = "/admin"
method = "GET"
pool = "admin"

[[route_tables.routes]]
host = "*.example.test"
pool = "web"

[[route_tables.routes]]
path = "/old"
redirect = "https://{host}/new{path}"
status = 301

[[route_tables.routes]]
method = "DELETE"
status = 405
"#;

/// A listener routing by `main`, three pools, and `main`: `first` (routes in front), then
/// [`ROUTES`].
fn config(listen: SocketAddr, backends: [SocketAddr; 3], first: &str) -> String {
    let [api, web, admin] = backends;
    format!(
        "admin = \"127.0.0.1:0\"\n\n[[listeners]]\nlisten = \"{listen}\"\nroutes = \"main\"\n\n\
         [[pools]]\nname = \"api\"\nbackends = [\"{api}\"]\n\n\
         [[pools]]\nname = \"web\"\nbackends = [\"{web}\"]\n\n\
         [[pools]]\nname = \"admin\"\nbackends = [\"{admin}\"]\n\n\
         [[route_tables]]\nname = \"main\"\n{first}{ROUTES}"
    )
}

/// One HTTP/1.1 request with `host`, closing the connection.
fn request(address: SocketAddr, method: &str, host: &str, path: &str, extra: &str) -> Reply {
    let text =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw(address, text.as_bytes())
}

fn backend(reply: &Reply) -> &str {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body.lines().next().unwrap_or("")
}

fn start(path: &Path) -> Process {
    Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 2)
}

#[test]
fn requests_take_the_first_route_that_matches() {
    let (_api, api) = echo("api", &[]);
    let (_web, web) = echo("web", &[]);
    let (_admin, admin_pool) = echo("admin", &[]);
    let dir = TempDir::new("routes");
    let path = dir.path().join("ballast.toml");
    let listen = support::unused_addr();
    std::fs::write(&path, config(listen, [api, web, admin_pool], "")).expect("write");
    let lb = start(&path);
    assert!(lb.ready[0].ends_with("routes main"), "{:?}", lb.ready);
    let admin = lb.admin_addr();

    let get = |host: &str, path: &str| request(listen, "GET", host, path, "");
    assert_eq!(backend(&get("api.example.test", "/v1/users")), "api");
    assert_eq!(backend(&get("API.example.test:8080", "/v1")), "api");
    // Segment-aware: /v1x is not under /v1, so the wildcard route takes it.
    assert_eq!(backend(&get("api.example.test", "/v1x")), "web");
    assert_eq!(backend(&get("www.example.test", "/")), "web");
    assert_eq!(backend(&get("a.b.example.test", "/")), "web");
    let canary = request(listen, "GET", "www.example.test", "/", "X-Canary: 1\r\n");
    assert_eq!(backend(&canary), "admin");
    assert_eq!(backend(&get("other.test", "/admin/users")), "admin");
    // The method decides: a POST to /admin matches no route.
    assert_eq!(
        request(listen, "POST", "other.test", "/admin", "").status,
        404
    );

    let moved = get("example.test", "/old?x=1");
    assert_eq!(moved.status, 301, "{moved:?}");
    assert!(
        moved
            .head
            .to_ascii_lowercase()
            .contains("location: https://example.test/new/old?x=1"),
        "{moved:?}"
    );
    assert_eq!(
        request(listen, "DELETE", "other.test", "/x", "").status,
        405
    );

    let missed = get("other.test", "/nothing");
    assert_eq!(missed.status, 404, "{missed:?}");
    assert_eq!(
        metric(admin, "ballast_route_misses_total{table=\"main\"}"),
        Some(2.0),
        "the POST and this GET"
    );

    // HTTP/2: `:authority` is the host.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(listen)
            .await
            .expect("connect");
        let (client, connection) = h2::client::handshake(stream).await.expect("h2");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::get("http://api.example.test/v1/x")
            .body(())
            .expect("request");
        let (response, _) = client.send_request(request, true).expect("send");
        let mut body = response.await.expect("response").into_body();
        let mut read = Vec::new();
        while let Some(chunk) = body.data().await {
            read.extend_from_slice(&chunk.expect("data"));
        }
        Bytes::from(read)
    });
    assert!(body.starts_with(b"api\n"), "{body:?}");

    // A reload adds a route in front: this exact host now answers 410, before the wildcard.
    let first = "\n[[route_tables.routes]]\nhost = \"www.example.test\"\nstatus = 410\n";
    std::fs::write(&path, config(listen, [api, web, admin_pool], first)).expect("write");
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the reload applied", || {
        metric(admin, "ballast_config_reloads_total{result=\"ok\"}") == Some(1.0)
    });
    assert_eq!(get("www.example.test", "/").status, 410);
    assert_eq!(backend(&get("api.example.test", "/v1")), "api");
}

#[test]
fn a_route_to_a_missing_pool_or_table_is_refused_naming_the_field() {
    let dir = TempDir::new("routes-bad");
    let path = dir.path().join("ballast.toml");
    let listen = support::unused_addr();
    let backend = support::unused_addr();
    let text = config(listen, [backend, backend, backend], "")
        .replace("pool = \"api\"\n", "pool = \"apis\"\n");
    std::fs::write(&path, text).expect("write");
    let stderr = support::rejected(&["lb", "--config", path.to_str().expect("utf-8")]);
    assert!(
        stderr.contains("route_tables[0].routes[0].pool: no pool `apis`"),
        "{stderr}"
    );
    let text = config(listen, [backend, backend, backend], "")
        .replace("routes = \"main\"", "routes = \"mian\"");
    std::fs::write(&path, text).expect("write");
    let stderr = support::rejected(&["lb", "--config", path.to_str().expect("utf-8")]);
    assert!(
        stderr.contains("listeners[0].routes: no route table is named `mian`"),
        "{stderr}"
    );
}

#[test]
fn a_route_sets_its_own_response_timeout_over_its_pools() {
    let (_slow, slow) = echo("slow", &["--latency", "1500ms"]);
    let dir = TempDir::new("routes-timeouts");
    let path = dir.path().join("ballast.toml");
    let listen = support::unused_addr();
    let text = format!(
        "[[listeners]]\nlisten = \"{listen}\"\nroutes = \"main\"\n\n\
         [[pools]]\nname = \"slow\"\nbackends = [\"{slow}\"]\nresponse_timeout = \"30s\"\n\n\
         [[route_tables]]\nname = \"main\"\n\
         [[route_tables.routes]]\npath_prefix = \"/impatient\"\npool = \"slow\"\n\
         response_timeout_ms = 200\nretries = 0\n\
         [[route_tables.routes]]\npool = \"slow\"\n"
    );
    std::fs::write(&path, text).expect("write");
    let lb = Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 1);
    let lb = lb.listen_addr(0);
    // The backend always takes 1.5 s: the route's 200 ms runs out first, the pool's 30 s not.
    assert_eq!(request(lb, "GET", "a.test", "/impatient/x", "").status, 504);
    assert_eq!(
        backend(&request(lb, "GET", "a.test", "/patient", "")),
        "slow"
    );

    let bad = path.with_file_name("bad.toml");
    let text = std::fs::read_to_string(&path)
        .expect("read")
        .replace("retries = 0", "retries = 11");
    std::fs::write(&bad, text).expect("write");
    let stderr = support::rejected(&["lb", "--config", bad.to_str().expect("utf-8")]);
    assert!(
        stderr.contains("route_tables[0].routes[0].retries: at most 10"),
        "{stderr}"
    );
}
