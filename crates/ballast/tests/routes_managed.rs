//! Route tables in managed mode as a user drives them: `ballast control`, `ballast route …`
//! editing a table, and two managed LBs serving it with `--routes TABLE`, each change reaching
//! both. A route to a missing pool is refused; a pool a route uses cannot be deleted.

mod support;

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use support::{Process, Reply, backend_of, echo, eventually, metric, raw};

const TOKEN: &str = "routes-test-token-0123456789";

fn cli(control: SocketAddr, args: &[&str]) -> Output {
    support::cli(control, TOKEN, args)
}

fn revision(control: SocketAddr, args: &[&str]) -> f64 {
    support::cli_revision(control, TOKEN, args)
}

fn get_from(lb: SocketAddr, host: &str, path: &str) -> Reply {
    raw(
        lb,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn route_commands_reach_every_managed_lb() {
    let dir = std::env::temp_dir().join(format!("ballast-routes-managed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let control = support::control(&url, &dir, TOKEN, &[]);
    let control = control.listen_addr(0);
    let (_api, api) = echo("api-1", &[]);
    let (_web, web) = echo("web-1", &[]);

    revision(control, &["pool", "create", "api"]);
    revision(control, &["pool", "create", "web"]);
    revision(control, &["backend", "add", "api", &api.to_string()]);
    revision(control, &["backend", "add", "web", &web.to_string()]);
    let add = |args: &[&str]| {
        let mut all = vec!["route", "add", "main"];
        all.extend_from_slice(args);
        revision(control, &all)
    };
    add(&[
        "--host",
        "api.example.test",
        "--path-prefix",
        "/v1",
        "--pool",
        "api",
    ]);
    add(&["--host", "*.example.test", "--pool", "web"]);
    add(&[
        "--position",
        "0",
        "--path",
        "/old",
        "--redirect",
        "https://{host}/new",
        "--status",
        "301",
    ]);

    let lbs: Vec<Process> = (1..=2)
        .map(|n| {
            let name = format!("lb-{n}");
            support::managed_lb_serving(&url, ["--routes", "main"], &["--name", &name])
        })
        .collect();
    let applied_everywhere = |revision: f64| {
        for lb in &lbs {
            eventually(
                Duration::from_secs(10),
                "every LB to apply the change",
                || metric(lb.admin_addr(), "ballast_config_revision ") == Some(revision),
            );
        }
    };
    applied_everywhere(7.0);
    for lb in &lbs {
        let lb = lb.listen_addr(0);
        assert_eq!(
            backend_of(&get_from(lb, "api.example.test", "/v1/users")),
            "api-1"
        );
        assert_eq!(
            backend_of(&get_from(lb, "API.example.test:80", "/v1")),
            "api-1"
        );
        assert_eq!(
            backend_of(&get_from(lb, "api.example.test", "/v10")),
            "web-1"
        );
        assert_eq!(backend_of(&get_from(lb, "www.example.test", "/")), "web-1");
        let moved = get_from(lb, "www.example.test", "/old");
        assert_eq!(moved.status, 301, "{moved:?}");
        assert!(
            moved
                .head
                .to_ascii_lowercase()
                .contains("location: https://www.example.test/new"),
            "{moved:?}"
        );
        assert_eq!(get_from(lb, "example.org", "/").status, 404);
    }

    // Each LB reports the pools its table sends to, so DNS answers their names with it.
    eventually(
        Duration::from_secs(15),
        "the LBs' pools in the fleet",
        || {
            let fleet = cli(control, &["fleet", "list", "--json"]);
            let fleet: serde_json::Value =
                serde_json::from_slice(&fleet.stdout).unwrap_or_default();
            let pools_of = |lb: &serde_json::Value| lb["pools"].clone();
            fleet["lbs"].as_array().is_some_and(|lbs| {
                lbs.len() == 2
                    && lbs
                        .iter()
                        .all(|lb| pools_of(lb) == serde_json::json!(["api", "web"]))
            })
        },
    );
    let listed = String::from_utf8(cli(control, &["route", "list", "main"]).stdout).expect("utf-8");
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{listed}");
    assert!(
        rows[0].contains("redirect 301") && rows[1].contains("pool api"),
        "{listed}"
    );

    // Refused, naming why: a route to a missing pool, a pool a route uses, a route not there.
    let refused = cli(control, &["route", "add", "main", "--pool", "nowhere"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("pool: no pool `nowhere`"),
        "{why}"
    );
    let refused = cli(control, &["pool", "delete", "web"]);
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && why.contains("409")
            && why.contains("route 2 of route table `main`"),
        "{why}"
    );
    let refused = cli(control, &["route", "remove", "main", "--position", "9"]);
    assert!(!refused.status.success(), "{refused:?}");
    let refused = cli(
        control,
        &[
            "route",
            "add",
            "main",
            "--path",
            "/a",
            "--path-prefix",
            "/a",
            "--pool",
            "web",
        ],
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("--path"), "{why}");

    // The catch-all for *.example.test moves in front of the API's route: it takes /v1 too.
    let moved = revision(
        control,
        &["route", "move", "main", "--from", "2", "--to", "0"],
    );
    applied_everywhere(moved);
    for lb in &lbs {
        assert_eq!(
            backend_of(&get_from(
                lb.listen_addr(0),
                "api.example.test",
                "/v1/users"
            )),
            "web-1"
        );
    }
    let removed = revision(control, &["route", "remove", "main", "--position", "0"]);
    applied_everywhere(removed);
    for lb in &lbs {
        let lb = lb.listen_addr(0);
        assert_eq!(
            backend_of(&get_from(lb, "api.example.test", "/v1/users")),
            "api-1"
        );
        assert_eq!(get_from(lb, "www.example.test", "/").status, 404);
    }
    // With no route left to it, the pool can go.
    revision(control, &["pool", "delete", "web"]);
    let _ = std::fs::remove_dir_all(&dir);
}
