//! `ballast queue demo` against five private Redis servers: without a lock the non-atomic read
//! delivers twice and loses messages; with a remote lock or Redlock every message is delivered
//! once, and consumers that pause past their lease are refused by fencing instead.

use std::collections::HashMap;
use std::process::Command;

use ballast_testkit::redis::{Server, urls};

/// The demo's table, by mode: column name → value.
fn demo(args: &[&str]) -> HashMap<String, HashMap<String, f64>> {
    let output = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(["queue", "demo"])
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("ballast runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let row = header[1..]
                .iter()
                .zip(&cells[1..])
                .map(|(h, c)| ((*h).to_owned(), c.parse().unwrap_or(f64::NAN)))
                .collect();
            (cells[0].to_owned(), row)
        })
        .collect()
}

#[test]
fn only_locked_consumers_deliver_every_message_once() {
    let servers = Server::cluster(5);
    let table = demo(&[
        "--redis",
        &urls(&servers),
        "--messages",
        "600",
        "--pause-prob",
        "0.02",
    ]);
    let none = &table["none"];
    assert_eq!(none["produced"], 600.0);
    assert!(
        none["twice+"] + none["lost"] > 0.0,
        "the unprotected queue should misbehave: {none:?}"
    );
    assert_eq!(none["once"] + none["twice+"] + none["lost"], 600.0);
    for mode in ["remote", "redlock"] {
        let row = &table[mode];
        assert_eq!(
            (row["once"], row["twice+"], row["lost"]),
            (600.0, 0.0, 0.0),
            "{mode}: {row:?}"
        );
        // Consumers that paused past their lease, while another took over, were refused by the
        // queue's fencing rather than delivering their stale read (a pause nobody used is
        // harmless and goes through).
        assert!(row["refused"] <= row["paused"], "{mode}: {row:?}");
        if row["paused"] >= 3.0 {
            assert!(row["refused"] > 0.0, "{mode}: {row:?}");
        }
    }
}

#[test]
fn consumers_in_separate_processes_are_excluded_too() {
    let servers = Server::cluster(3);
    let table = demo(&[
        "--redis",
        &urls(&servers),
        "--messages",
        "300",
        "--consumers",
        "4",
        "--lock",
        "redlock",
        "--processes",
    ]);
    let row = &table["redlock"];
    assert_eq!(
        (row["once"], row["twice+"], row["lost"]),
        (300.0, 0.0, 0.0),
        "{row:?}"
    );
}
