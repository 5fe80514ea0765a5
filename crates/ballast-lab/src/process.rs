//! Programs on a host: started with `ip netns exec`, each in a process group of its own (so a
//! Ctrl-C on the terminal reaches the lab alone, which then stops them), standard output in
//! `NAME.out` and standard error in `NAME.log` under the lab's `logs/`. Readiness is read from
//! the `.out` file rather than a pipe, so a process started by a short-lived command (`ballast
//! lab fault restart`) outlives it without losing its output.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

use crate::net::Host;
use std::process::Command;

use crate::state::{Launch, State};

/// What a program prints on standard output once it is ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ready {
    /// This many lines (`ballast` subcommands print one `listening …` line per socket).
    Lines(usize),
    /// A line containing this text, on standard output or standard error (`redis-server`'s
    /// "Ready to accept connections").
    Contains(String),
}

/// How long a program may take to become ready: generous, for a loaded machine.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Starts `launch` on `host`, logging under `logs`, and waits until it is ready; returns its
/// ready output and its pid.
pub fn start(host: &Host, launch: &Launch, logs: &Path) -> Result<(i32, String)> {
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let name = log_name(launch);
    let out_path = logs.join(format!("{name}.out"));
    let err_path = logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    // Where this start's log begins, in a log earlier starts appended to.
    let logged_before = std::fs::metadata(&err_path).map_or(0, |m| m.len());
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&err_path)
        .with_context(|| format!("creating {}", err_path.display()))?;
    let mut command = host.command(&launch.program);
    command
        .args(&launch.args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {name} on {}", host.name))?;
    let pid = i32::try_from(child.id()).context("a pid")?;
    // The child is left to run; a thread reaps it when it ends, so it never lingers as a zombie
    // while the lab runs.
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if is_ready(
            &launch.ready,
            &text,
            &logged_since(&err_path, logged_before),
        ) {
            std::thread::spawn(move || child.wait());
            return Ok((pid, text));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{name} on {} exited ({status}) before it was ready: {}",
                host.name,
                tail(&err_path).unwrap_or_else(|| format!("see {}", err_path.display()))
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{name} on {} was not ready in {} s; see {}",
                host.name,
                READY_WITHIN.as_secs(),
                err_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A user's command (`ballast lab exec`) on `host` of the lab in `dir`, with `BALLAST_CONTROL`
/// and `BALLAST_TOKEN` set so that `ballast pool …` there reaches the lab's admin API.
pub fn user_command(dir: &Path, state: &State, host: &Host, argv: &[String]) -> Result<Command> {
    let (program, args) = argv.split_first().context("a command to run")?;
    let mut command = host.command(program);
    command.args(args);
    if let Ok(control) = state.network.host("control-1") {
        command.env(
            "BALLAST_CONTROL",
            format!("http://{}:9000", control.address),
        );
    }
    let token = std::fs::read_to_string(dir.join("token")).unwrap_or_default();
    command.env("BALLAST_TOKEN", token.trim());
    Ok(command)
}

/// `lb-1` for `ballast`, `redis-1.redis-server` or `db.postgres` for the others.
fn log_name(launch: &Launch) -> String {
    let file_name = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut program = file_name(&launch.program);
    // `runuser -u USER -- PROGRAM …`: name it by the program it runs.
    if program == "runuser"
        && let Some(run) = launch.args.iter().skip_while(|a| *a != "--").nth(1)
    {
        program = file_name(Path::new(run));
    }
    if program == "ballast" || program.starts_with("ballast") {
        launch.host.clone()
    } else {
        format!("{}.{program}", launch.host)
    }
}

/// Whether a program that printed `out` on standard output and `log` on standard error (since
/// it started) is ready.
fn is_ready(ready: &Ready, out: &str, log: &str) -> bool {
    match ready {
        Ready::Lines(n) => out.lines().count() >= *n && out.ends_with('\n'),
        // Servers such as PostgreSQL say it in their log, on standard error.
        Ready::Contains(needle) => out.contains(needle.as_str()) || log.contains(needle.as_str()),
    }
}

fn logged_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The last lines a log got, for an error that says why without sending the user to the file.
fn tail(path: &PathBuf) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(6)..];
    (!tail.is_empty()).then(|| tail.join("\n    "))
}

/// Sends `signal` to each of `pids`.
pub fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids.iter().copied().filter_map(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

/// SIGTERM to each of `pids`, up to 10 s for them to end (an LB drains first), then SIGKILL.
/// Paused processes are resumed first, or they would never see the SIGTERM.
pub fn end_all(pids: Vec<i32>) {
    signal_all(&pids, Signal::CONT);
    signal_all(&pids, Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let alive = |pid: &i32| {
        Pid::from_raw(*pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok() && !is_zombie(*pid))
    };
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<i32> = pids.iter().copied().filter(alive).collect();
    signal_all(&left, Signal::KILL);
}

/// A process that ended but whose parent has not reaped it yet counts as ended.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}
