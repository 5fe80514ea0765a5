//! Slow start seen from outside: a backend added by a reload gets a small share of the requests
//! while it ramps, and its full share after. The LB's own gauge of each backend's weight is the
//! signal the test waits on, never the clock.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::{Process, TempDir, backend_of, echo, eventually, get, metric};

fn config(backends: &[SocketAddr]) -> String {
    let listed: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        r#"
admin = "127.0.0.1:0"
workers = 1

[[listeners]]
listen = "127.0.0.1:0"
pool = "web"

[[pools]]
name = "web"
algorithm = "weighted_round_robin"
slow_start = "12s"
backends = [{}]
"#,
        listed.join(", ")
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the configuration");
}

/// How many of `count` GETs each of `names` answered.
fn shares(address: SocketAddr, names: &[&str], count: usize) -> Vec<usize> {
    let mut counts = vec![0; names.len()];
    for _ in 0..count {
        let name = backend_of(&get(address, "/", &[]));
        let at = names
            .iter()
            .position(|n| *n == name)
            .expect("a known backend");
        counts[at] += 1;
    }
    counts
}

#[test]
fn a_backend_that_joins_ramps_up_to_its_share() {
    let (_b1, b1) = echo("b1", &[]);
    let (_b2, b2) = echo("b2", &[]);
    let (_b3, b3) = echo("b3", &[]);
    let dir = TempDir::new("slow-start");
    let path = dir.path().join("lb.toml");
    write(&path, &config(&[b1, b2]));
    let lb = Process::start(&["lb", "--config", path.to_str().expect("utf-8")], 2);
    let (address, admin) = (lb.listen_addr(0), lb.admin_addr());
    let weight = |b: SocketAddr| {
        metric(
            admin,
            &format!("ballast_backend_weight{{pool=\"web\",backend=\"{b}\"}}"),
        )
    };
    // The backends it started with take their share at once.
    assert_eq!(weight(b1), Some(1.0));
    assert_eq!(shares(address, &["b1", "b2"], 40), [20, 20]);

    write(&path, &config(&[b1, b2, b3]));
    lb.signal("HUP");
    eventually(Duration::from_secs(20), "b3 ramping", || {
        weight(b3).is_some_and(|w| w < 20.0)
    });
    assert_eq!(
        weight(b1),
        Some(20.0),
        "the others' weights are scaled, not changed"
    );
    let ramping = shares(address, &["b1", "b2", "b3"], 84);
    assert!(
        ramping[2] * 2 < ramping[0] && ramping[2] * 2 < ramping[1],
        "a ramping backend takes well under its share: {ramping:?}"
    );

    eventually(Duration::from_secs(60), "the ramp over", || {
        weight(b3) == Some(1.0)
    });
    assert_eq!(shares(address, &["b1", "b2", "b3"], 90), [30, 30, 30]);
}
