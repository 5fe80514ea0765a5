//! Every `/metrics` page (LB, control, DNS) as third-party readers see it: `promtool check
//! metrics`, which reads the Prometheus text format 0.0.4 as `curl` fetches it, finds nothing to
//! complain about (it found every counter without help text, because OpenMetrics declares the
//! family `x` while its samples are `x_total`); and a reader that asks for OpenMetrics gets it,
//! labelled as such (control and DNS labelled it `text/plain`).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::{echo, get};

const TOKEN: &str = "metrics-format-test-token-0123456789";

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The page at `address`, with `accept` if given and the token control wants.
fn page(address: SocketAddr, accept: Option<&str>) -> support::Reply {
    let authorization = format!("Bearer {TOKEN}");
    let mut headers = vec![("Authorization", authorization.as_str())];
    if let Some(accept) = accept {
        headers.push(("Accept", accept));
    }
    let reply = get(address, "/metrics", &headers);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

fn content_type(reply: &support::Reply) -> String {
    reply
        .head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// `promtool check metrics` on `body`: its complaints, if any.
fn promtool_complaints(body: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test installs the prometheus package)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write the page");
    let output = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (!output.status.success() || !said.trim().is_empty()).then_some(said)
}

fn check(what: &str, admin: SocketAddr) {
    let plain = page(admin, None);
    assert!(
        content_type(&plain).starts_with("text/plain; version=0.0.4"),
        "{what}: {}",
        plain.head
    );
    assert!(!plain.body.contains("# EOF"), "{what}: {}", plain.body);
    if let Some(complaints) = promtool_complaints(&plain.body) {
        panic!(
            "{what}: promtool check metrics says\n{complaints}\non\n{}",
            plain.body
        );
    }
    let open = page(admin, Some(PROMETHEUS_ACCEPT));
    assert!(
        content_type(&open).starts_with("application/openmetrics-text"),
        "{what}: {}",
        open.head
    );
    assert!(open.body.ends_with("# EOF\n"), "{what}: {}", open.body);
}

#[test]
fn every_metrics_page_passes_promtool_and_follows_accept() {
    let dir = std::env::temp_dir().join(format!("ballast-metrics-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let (_backend, backend) = echo("b1", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(ballast_config::SqlStore::connect(&url))
        .expect("store");
    support::create_pool(&rt, &store, "web", &[backend]);

    let lb = support::managed_lb(&url, "web", &["--name", "lb-1"]);
    // Traffic, so that the per-backend counters and histograms have samples.
    for _ in 0..3 {
        assert_eq!(get(lb.listen_addr(0), "/", &[]).status, 200);
    }
    let control = support::control(&url, &dir, TOKEN, &[]);
    let dns = support::dns(&url, &["--admin", "127.0.0.1:0"]);

    check("lb", lb.admin_addr());
    check("control", control.listen_addr(0));
    check("dns", dns.admin_addr());
    let _ = std::fs::remove_dir_all(&dir);
}
