//! `ballast lock` as a shell user runs it, against private `redis-server` processes: the fencing
//! token in the command's environment, its exit status passed on, 75 when the lock is taken, the
//! command stopped when the lock is lost, and acquire / status / release for scripts.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ballast_testkit::redis::{Server, urls};

fn ballast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("ballast runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn run_passes_the_fencing_token_and_the_commands_status() {
    let server = Server::start();
    let url = server.url();
    let output = ballast(&[
        "lock",
        "run",
        "job",
        "--redis",
        &url,
        "--ttl",
        "2s",
        "--",
        "sh",
        "-c",
        "echo token=$BALLAST_FENCING_TOKEN; exit 3",
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let token: u64 = stdout
        .trim()
        .strip_prefix("token=")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{stdout:?}"));

    let again = ballast(&[
        "lock",
        "run",
        "job",
        "--redis",
        &url,
        "--",
        "sh",
        "-c",
        "echo $BALLAST_FENCING_TOKEN",
    ]);
    assert!(again.status.success());
    let next: u64 = text(&again.stdout).trim().parse().expect("a token");
    assert!(next > token, "{next} after {token}");
}

#[test]
fn a_held_lock_makes_run_exit_75_until_released() {
    let server = Server::start();
    let url = server.url();
    let acquired = ballast(&["lock", "acquire", "job", "--redis", &url, "--ttl", "30s"]);
    assert!(acquired.status.success(), "{}", text(&acquired.stderr));
    let line = text(&acquired.stdout);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        (words[0], words[2], words[4]),
        ("value", "token", "valid_ms"),
        "{line}"
    );
    let (value, token) = (words[1].to_owned(), words[3].to_owned());

    let started = Instant::now();
    let refused = ballast(&[
        "lock", "run", "job", "--redis", &url, "--wait", "300ms", "--", "true",
    ]);
    assert_eq!(refused.status.code(), Some(75));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("`job` not acquired within 300ms"),
        "{stderr}"
    );

    let status = text(&ballast(&["lock", "status", "job", "--redis", &url]).stdout);
    assert!(
        status.contains(&value) && status.contains(&token),
        "{status}"
    );

    let wrong = ballast(&[
        "lock", "release", "job", "--redis", &url, "--value", "not-mine",
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    let released = ballast(&[
        "lock", "release", "job", "--redis", &url, "--value", &value, "--token", &token,
    ]);
    assert_eq!(text(&released.stdout).trim(), "released on 1 of 1 nodes");
    let ran = ballast(&["lock", "run", "job", "--redis", &url, "--", "true"]);
    assert_eq!(ran.status.code(), Some(0), "{}", text(&ran.stderr));
}

#[test]
fn a_lost_lock_stops_the_command() {
    let servers = Server::cluster(3);
    let nodes = urls(&servers);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "lock",
            "run",
            "job",
            "--redis",
            &nodes,
            "--ttl",
            "600ms",
            "--wait",
            "5s",
            "--",
            "sh",
            "-c",
            "echo held; exec sleep 30",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ballast runs");
    // The command runs only once the lock is held: its first line says so. (A node showing a
    // holder does not: on a busy machine an attempt may take a minority and give it back.)
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut first,
    )
    .expect("the command's output");
    assert_eq!(first, "held\n", "the lock was never taken");
    servers[0].kill();
    servers[1].kill();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "the command was stopped by SIGTERM"
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(stderr.contains("lock `job` lost"), "{stderr}");
}

#[test]
fn bad_node_lists_are_refused() {
    let even = ballast(&[
        "lock",
        "status",
        "job",
        "--redis",
        "redis://127.0.0.1:1,redis://127.0.0.1:2",
    ]);
    assert_eq!(even.status.code(), Some(1));
    assert!(
        text(&even.stderr).contains("Redlock needs an odd number of independent nodes"),
        "{}",
        text(&even.stderr)
    );
}

#[test]
fn passwords_in_node_urls_never_reach_the_output() {
    const SECRET: &str = "s3cret-Pw-0451";
    let server = Server::start();
    let address = server.address();
    let set = Command::new("redis-cli")
        .args([
            "-p",
            &address.port().to_string(),
            "config",
            "set",
            "requirepass",
            SECRET,
        ])
        .output()
        .expect("redis-cli runs");
    assert!(text(&set.stdout).contains("OK"), "{set:?}");
    let good = format!("redis://:{SECRET}@{address}");
    let wrong = format!("redis://user:wrong-{SECRET}@{address}");
    let down = format!("redis://:{SECRET}@127.0.0.1:1");

    let held = ballast(&["lock", "acquire", "job", "--redis", &good, "--ttl", "30s"]);
    assert!(held.status.success(), "{}", text(&held.stderr));
    let status = ballast(&["lock", "status", "job", "--redis", &good]);
    let shown = text(&status.stdout);
    assert!(
        shown.contains(&format!("redis://:***@{address}")),
        "{shown}"
    );
    for args in [
        vec!["lock", "status", "job", "--redis", &wrong],
        vec!["lock", "acquire", "job", "--redis", &wrong, "--ttl", "1s"],
        vec!["lock", "status", "job", "--redis", &down],
        vec!["lock", "status", "job", "--redis", "redis://:a-Pw@h:port"],
        vec![
            "lock",
            "status",
            "job",
            "--redis",
            "redis://:a-Pw@h:1,redis://:b-Pw@h:2",
        ],
    ] {
        let output = ballast(&args);
        let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(!said.trim().is_empty(), "{args:?} said nothing");
        for secret in [SECRET, "a-Pw", "b-Pw"] {
            assert!(
                !said.contains(secret),
                "{args:?} shows the password: {said}"
            );
        }
    }
}

#[test]
fn the_lock_benchmark_compares_one_node_with_redlock() {
    let servers = Server::cluster(3);
    let output = ballast(&["bench", "lock", "--redis", &urls(&servers), "--ops", "20"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let labels: Vec<String> = rows.iter().map(|r| r[..2].join(" ")).collect();
    assert_eq!(
        labels,
        ["single node", "redlock-3 parallel", "redlock-3 sequential"],
        "{stdout}"
    );
    assert!(rows.iter().all(|r| r[2] == "20"), "{stdout}");
    assert_eq!(rows[0].last(), Some(&"1.00x"));
}

/// `ballast lock check` over 5 private nodes, 4 clients, 6 s, a 300 ms TTL, with `faults`.
fn check_with(faults: &str) -> std::process::Output {
    ballast(&[
        "lock",
        "check",
        "--nodes",
        "5",
        "--clients",
        "4",
        "--duration",
        "6s",
        "--ttl",
        "300ms",
        "--faults",
        faults,
    ])
}

#[test]
fn the_safety_checker_injects_every_fault_and_finds_no_violation() {
    let output = check_with("pause,kill-node,restart-node,kill-majority");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("violations: none"), "{stdout}");
    let count = |label: &str| -> u64 {
        stdout
            .lines()
            .find(|l| l.starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` in {stdout}"))
    };
    assert!(count("grants") > 0, "{stdout}");
    assert!(count("writes accepted") > 0, "{stdout}");
    for fault in ["kill-node", "restart-node", "kill-majority"] {
        assert!(count(fault) >= 1, "{fault} not injected: {stdout}");
    }

    let refused = ballast(&[
        "lock",
        "check",
        "--redis",
        "redis://127.0.0.1:1",
        "--faults",
        "kill-node",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("need nodes the checker starts"));
}

/// Nodes whose fencing counters disagree: the holder that got the skewed node's large token is
/// frozen and the node cut off; the checker must see every later token larger.
#[test]
fn the_safety_checker_finds_tokens_in_grant_order_with_a_skewed_counter() {
    let output = check_with("skew-counter");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains("violations: none"), "{stdout}");
    let injected = stdout
        .lines()
        .find(|l| l.starts_with("skew-counter"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(injected >= Some(1), "skew-counter not injected: {stdout}");
}
