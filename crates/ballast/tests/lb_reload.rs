//! SIGHUP and `--check-config`, as an nginx operator uses `nginx -s reload` and `nginx -t`: a
//! valid file is applied whole under load without a failed request (pools, route tables, listeners added and
//! removed, certificates), an invalid one (or one that cannot be applied whole) changes nothing,
//! and SIGHUP never ends the process.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{
    Process, TempDir, backend_of, certificate, echo, eventually, get, lb, metric, presented,
};

const RELOADED: &str = "ballast_config_reloads_total{result=\"ok\"}";
const REFUSED: &str = "ballast_config_reloads_total{result=\"error\"}";

/// Two HTTP listeners on `listen`, serving `pools` (by name), and the pools' TOML.
fn config(listen: [SocketAddr; 2], serve: [&str; 2], pools: &str) -> String {
    format!(
        r#"
admin = "127.0.0.1:0"
workers = 2

[[listeners]]
listen = "{}"
pool = "{}"

[[listeners]]
listen = "{}"
pool = "{}"

{pools}
"#,
        listen[0], serve[0], listen[1], serve[1]
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the configuration");
}

/// Before SIGHUP was handled, its default action ended the LB (exit 129).
#[test]
fn sighup_never_ends_an_lb_started_from_flags() {
    let (_b1, b1) = echo("b1", &[]);
    let (mut lb, address) = lb(&[b1], &[]);
    lb.signal("HUP");
    // Served after the signal was handled: the GET goes through the same worker's loop.
    assert_eq!(backend_of(&get(address, "/", &[])), "b1");
    assert_eq!(lb.exited(), None, "SIGHUP ended the LB");
}

#[test]
fn sighup_applies_a_valid_file_whole_under_load_and_an_invalid_one_not_at_all() {
    let (_a1, a1) = echo("a1", &[]);
    let (_a2, a2) = echo("a2", &[]);
    let (_b1, b1) = echo("b1", &[]);
    let dir = TempDir::new("reload");
    let path = dir.path().join("ballast.toml");
    let listen = [support::unused_addr(), support::unused_addr()];
    let pools = |web: SocketAddr| {
        format!(
            "[[pools]]\nname = \"web\"\nbackends = [\"{web}\"]\n\n\
             [[pools]]\nname = \"other\"\nbackends = [\"{b1}\"]\n"
        )
    };
    write(&path, &config(listen, ["web", "other"], &pools(a1)));
    let lb = Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 3);
    let admin = lb.admin_addr();
    assert_eq!(backend_of(&get(listen[0], "/", &[])), "a1");
    assert_eq!(backend_of(&get(listen[1], "/", &[])), "b1");

    // Continuous GETs on the first listener while the file changes under it.
    let stop = Arc::new(AtomicBool::new(false));
    let (running, first_reply) = std::sync::mpsc::channel();
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut replies = Vec::new();
            while !stop.load(Ordering::Relaxed)
                && replies.len() < 50_000
                && started.elapsed() < Duration::from_secs(120)
            {
                let reply = get(listen[0], "/", &[]);
                let seen = match reply.status {
                    200 => reply.body.lines().next().unwrap_or("").to_owned(),
                    status => format!("status {status}: {}", reply.body.trim()),
                };
                replies.push(seen);
                let _ = running.send(());
            }
            replies
        })
    };
    first_reply
        .recv_timeout(Duration::from_secs(30))
        .expect("the load's first GET");

    // The pool `web` moves to a2, and the second listener now serves `web` too.
    write(&path, &config(listen, ["web", "web"], &pools(a2)));
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the reload applied", || {
        metric(admin, RELOADED) == Some(1.0)
    });
    assert_eq!(backend_of(&get(listen[0], "/", &[])), "a2");
    assert_eq!(backend_of(&get(listen[1], "/", &[])), "a2");
    // An invalid file changes nothing, and says so in the metrics.
    write(
        &path,
        &config(
            listen,
            ["web", "web"],
            "[[pools]]\nname = \"web\"\nalgorithm = \"fastest\"\nbackends = []\n",
        ),
    );
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the reload refused", || {
        metric(admin, REFUSED) == Some(1.0)
    });
    assert_eq!(backend_of(&get(listen[0], "/", &[])), "a2");
    assert_eq!(backend_of(&get(listen[1], "/", &[])), "a2");

    // So does one whose new listener cannot be bound; its pool change is not applied either.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let blocked = [listen[0], taken.local_addr().expect("address")];
    write(&path, &config(blocked, ["web", "other"], &pools(a1)));
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the second reload refused", || {
        metric(admin, REFUSED) == Some(2.0)
    });
    assert_eq!(backend_of(&get(listen[0], "/", &[])), "a2");
    assert_eq!(backend_of(&get(listen[1], "/", &[])), "a2");

    // The second listener moves: a new one is added and the old one removed, while the first
    // keeps serving the load and now routes by a new route table: one host to `other`, the
    // rest (the load's requests) to `web`, as before.
    let moved = [listen[0], support::unused_addr()];
    let routed = config(moved, ["web", "other"], &pools(a2)).replacen(
        "pool = \"web\"",
        "routes = \"main\"",
        1,
    ) + "\n[[route_tables]]\nname = \"main\"\n\
         [[route_tables.routes]]\nhost = \"new.test\"\npool = \"other\"\n\
         [[route_tables.routes]]\npool = \"web\"\n";
    write(&path, &routed);
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the second reload applied", || {
        metric(admin, RELOADED) == Some(2.0)
    });
    assert_eq!(backend_of(&get(moved[1], "/", &[])), "b1");
    let by_host = support::raw(
        listen[0],
        b"GET / HTTP/1.1\r\nHost: new.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(backend_of(&by_host), "b1");
    eventually(
        Duration::from_secs(30),
        "the removed listener closed",
        || std::net::TcpStream::connect(listen[1]).is_err(),
    );

    // Twenty more GETs of the load after the reloads (what it reported before is skipped), then
    // the tally.
    first_reply.try_iter().for_each(drop);
    for _ in 0..20 {
        first_reply
            .recv_timeout(Duration::from_secs(30))
            .expect("the load goes on after the reloads");
    }
    stop.store(true, Ordering::Relaxed);
    let replies = load.join().expect("load thread");
    let failed: Vec<&String> = replies.iter().filter(|r| r.starts_with("status")).collect();
    assert!(failed.is_empty(), "failed during the reloads: {failed:?}");
    let first_a2 = replies.iter().position(|r| r == "a2");
    let (before, after) = replies.split_at(first_a2.expect("no GET reached a2"));
    assert!(
        !before.is_empty() && before.iter().all(|r| r == "a1"),
        "{before:?}"
    );
    assert!(after.iter().all(|r| r == "a2"), "a1 after the switch");
}

#[test]
fn check_config_says_valid_or_names_the_field() {
    let dir = TempDir::new("check");
    let path = dir.path().join("ballast.toml");
    let listen = [support::unused_addr(), support::unused_addr()];
    write(
        &path,
        &config(
            listen,
            ["web", "web"],
            "[[pools]]\nname = \"web\"\nbackends = [\"127.0.0.1:9\"]\n",
        ),
    );
    let check = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_ballast"))
            .args(["lb", "--check-config", path.to_str().expect("utf-8")])
            .output()
            .expect("ballast runs")
    };
    let valid = check(&path);
    assert!(valid.status.success(), "{valid:?}");
    let said = String::from_utf8_lossy(&valid.stdout);
    assert!(said.contains("valid (2 listeners, 1 pools)"), "{said}");
    // Nothing was started: the listeners' addresses are still free.
    for address in listen {
        std::net::TcpListener::bind(address).expect("--check-config bound a listener");
    }

    write(
        &path,
        &config(
            listen,
            ["web", "api"],
            "[[pools]]\nname = \"web\"\nbackends = [\"127.0.0.1:9\"]\n",
        ),
    );
    let invalid = check(&path);
    assert_eq!(invalid.status.code(), Some(1), "{invalid:?}");
    let said = String::from_utf8_lossy(&invalid.stderr);
    assert!(said.contains("listeners[1]"), "{said}");

    // Every invalid field in one run, as `nginx -t` lists them.
    let pools = "[[pools]]\nname = \"web\"\nbackends = [\"127.0.0.1:9\"]\n";
    write(
        &path,
        &format!("retries = 11\n{}", config(listen, ["web", "api"], pools)),
    );
    let invalid = check(&path);
    assert_eq!(invalid.status.code(), Some(1), "{invalid:?}");
    let said = String::from_utf8_lossy(&invalid.stderr);
    assert!(
        said.contains("2 problems")
            && said.contains("listeners[1].pool: no pool is named `api`")
            && said.contains("retries: at most 10"),
        "{said}"
    );
}

/// A renewed certificate at the same path, as certbot leaves it, is served after SIGHUP; a key
/// that does not belong to its certificate refuses the reload and the old one stays.
#[test]
fn sighup_serves_a_renewed_certificate_and_refuses_a_mismatched_key() {
    let (_b1, b1) = echo("b1", &[]);
    let dir = TempDir::new("reload-tls");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_cert, old_key, old_der) = certificate(&["localhost"]);
    write(&cert_path, &old_cert);
    write(&key_path, &old_key);
    let listen = support::unused_addr();
    let path = dir.path().join("ballast.toml");
    write(
        &path,
        &format!(
            "admin = \"127.0.0.1:0\"\n\n[[listeners]]\nlisten = \"{listen}\"\npool = \"web\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n\n[[pools]]\nname = \"web\"\nbackends = [\"{b1}\"]\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let lb = Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 2);
    let admin = lb.admin_addr();
    let (new_cert, new_key, new_der) = certificate(&["localhost"]);
    assert_eq!(presented(listen, "localhost"), old_der);

    write(&cert_path, &new_cert);
    write(&key_path, &new_key);
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the reload applied", || {
        metric(admin, RELOADED) == Some(1.0)
    });
    assert_eq!(
        presented(listen, "localhost"),
        new_der,
        "the renewed certificate"
    );

    // The old key with the new certificate: refused whole.
    write(&key_path, &old_key);
    lb.signal("HUP");
    eventually(Duration::from_secs(30), "the reload refused", || {
        metric(admin, REFUSED) == Some(1.0)
    });
    assert_eq!(
        presented(listen, "localhost"),
        new_der,
        "the certificate in force"
    );
}
