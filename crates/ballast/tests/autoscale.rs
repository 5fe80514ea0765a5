//! The LB fleet scaled on its load, with real processes: `ballast control` runs the autoscaler
//! with the local provisioner (managed `ballast lb` processes on 127.0.0.11, .12, …). Load through
//! the LBs grows the fleet to its maximum; once the load falls, after the stabilisation window, it
//! shrinks back by draining LBs — and no client request fails on the way. Stopping `ballast
//! control` drains the LBs it started.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{echo, eventually};

const TOKEN: &str = "autoscale-test-token-0123456789";

/// One GET through the first LB of `lbs` that takes the connection; `false` if none answered 200.
fn request(lbs: &[SocketAddr]) -> bool {
    for lb in lbs {
        let Ok(mut stream) = TcpStream::connect_timeout(lb, Duration::from_secs(2)) else {
            continue; // drained and gone: a client moves on to the next address, as with DNS
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        if reply.is_empty() {
            // Accepted by a listener that closed as its LB began to drain, and reset before any
            // answer: like Go's and browsers' HTTP clients, retry an idempotent GET elsewhere.
            continue;
        }
        return reply.starts_with(b"HTTP/1.1 200");
    }
    false
}

#[test]
fn load_grows_the_fleet_and_its_end_shrinks_it_without_a_failed_request() {
    let dir = std::env::temp_dir().join(format!("ballast-autoscale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("config.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let mut control = support::control(
        &url,
        &dir,
        TOKEN,
        &[
            "--scrape-interval",
            "200ms",
            "--autoscale",
            "rps:40",
            "--min-lbs",
            "1",
            "--max-lbs",
            "3",
            "--scale-interval",
            "300ms",
            "--scale-down-window",
            "2s",
            "--lb-pool",
            "web",
            "--lb-port",
            &port,
        ],
    );
    let control_addr = control.listen_addr(0);
    let cli = |args: &[&str]| -> String {
        let output = support::cli(control_addr, TOKEN, args);
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    cli(&["pool", "create", "web"]);
    cli(&["backend", "add", "web", &b1.to_string()]);
    cli(&["backend", "add", "web", &b2.to_string()]);

    let fleet = || -> Vec<Value> {
        let json: Value = serde_json::from_str(&cli(&["fleet", "list", "--json"])).expect("json");
        json["lbs"].as_array().cloned().unwrap_or_default()
    };
    let serving = || -> Vec<SocketAddr> {
        fleet()
            .iter()
            .filter(|lb| lb["state"] == "serving")
            .filter_map(|lb| lb["addresses"][0].as_str()?.parse().ok())
            .collect()
    };
    eventually(Duration::from_secs(15), "the minimum of one LB", || {
        serving().len() == 1
    });

    // Clients spread over the serving LBs (as DNS would give them), hard at first.
    let lbs = Arc::new(Mutex::new(serving()));
    let heavy = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (lbs, heavy, stop) = (lbs.clone(), heavy.clone(), stop.clone());
        let (sent, failed) = (sent.clone(), failed.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut turn = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut order = lbs.lock().expect("lbs").clone();
                if !order.is_empty() {
                    let first = turn % order.len();
                    order.rotate_left(first);
                }
                turn += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                if !request(&order) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                if !heavy.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let refresh = |lbs: &Mutex<Vec<SocketAddr>>| {
        let now = serving();
        if !now.is_empty() {
            *lbs.lock().expect("lbs") = now;
        }
    };
    eventually(Duration::from_secs(30), "the fleet at its maximum", || {
        refresh(&lbs);
        serving().len() == 3
    });

    // The load falls: after the window, the fleet drains back to one.
    heavy.store(false, Ordering::Relaxed);
    eventually(Duration::from_secs(30), "the fleet back at one", || {
        refresh(&lbs);
        let fleet = fleet();
        fleet.iter().filter(|lb| lb["state"] == "serving").count() == 1
            && fleet.iter().filter(|lb| lb["state"] == "stopped").count() == 2
    });
    refresh(&lbs);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load");
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 100, "{sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");

    // Stopping the orchestrator drains the LBs it started: nothing is left listening.
    let last: Vec<SocketAddr> = serving();
    control.terminate();
    assert!(control.wait(Duration::from_secs(15)).success());
    eventually(Duration::from_secs(15), "the last LB gone", || {
        last.iter()
            .all(|lb| TcpStream::connect_timeout(lb, Duration::from_millis(200)).is_err())
    });
    let _ = std::fs::remove_dir_all(&dir);
}
