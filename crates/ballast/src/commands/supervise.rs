//! The child processes `ballast up` supervises: each one started from this same binary, in one
//! process group of their own (so that Ctrl-C on the terminal reaches `ballast up` alone, which
//! then stops them in order, and so that whatever they start in turn — the LB servers the
//! orchestrator provisions — can be found and ended with them), its ready lines read, its output
//! kept in a log file, restarted when it dies.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The process group every supervised child joins: the first child's, once it exists.
#[derive(Debug, Default)]
pub(crate) struct Group {
    id: Option<i32>,
}

impl Group {
    /// Ends every process left in the group (SIGKILL): the last step of a shutdown, for anything
    /// the ordered stop did not reach.
    pub(crate) fn kill_all(&self) {
        if let Some(pid) = self.id.and_then(Pid::from_raw) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

/// A supervised `ballast` child.
#[derive(Debug)]
pub(crate) struct Supervised {
    /// What it is, for messages: `control`, `dns`, `backend 1`.
    pub(crate) name: String,
    args: Vec<String>,
    ready_lines: usize,
    log: PathBuf,
    process: Option<Child>,
    /// The ready lines of its latest start.
    pub(crate) ready: Vec<String>,
    /// How often it was started again after dying.
    pub(crate) restarts: u32,
}

impl Supervised {
    /// A child `ballast ARGS` that prints `ready_lines` lines once ready, logging to `log`.
    pub(crate) fn new(name: &str, args: Vec<String>, ready_lines: usize, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            args,
            ready_lines,
            log,
            process: None,
            ready: Vec::new(),
            restarts: 0,
        }
    }

    /// Starts it in `group` and waits (at most 30 s) for its ready lines.
    pub(crate) async fn start(&mut self, group: &mut Group) -> Result<()> {
        let program = program()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("log file {}", self.log.display()))?;
        // Where this start's lines begin in a log earlier starts appended to.
        let logged_before = log.metadata().map_or(0, |m| m.len());
        let mut command = Command::new(program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(group.id.unwrap_or(0));
        let spawned = command.spawn();
        // The group's first member may have exited with every other: then this one leads anew.
        let mut child = match (spawned, group.id) {
            (Err(_), Some(_)) => command.process_group(0).spawn(),
            (spawned, _) => spawned,
        }
        .with_context(|| format!("starting {}", self.name))?;
        let pid = child.id().context("a started child has a pid")? as i32;
        if group.id.is_none_or(|id| !group_exists(id)) {
            group.id = Some(pid);
        }
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut ready = Vec::new();
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while ready.len() < self.ready_lines {
                match lines.next_line().await {
                    Ok(Some(line)) => ready.push(line),
                    _ => return false,
                }
            }
            true
        })
        .await;
        if waited != Ok(true) {
            let how = match child.try_wait() {
                Ok(Some(status)) => format!("exited ({status})"),
                _ if waited.is_err() => "was not ready in 30 s".to_owned(),
                _ => "closed its output".to_owned(),
            };
            let _ = child.kill().await;
            let _ = child.wait().await;
            bail!(
                "{} {how}{}; see {}",
                self.name,
                log_tail(&self.log, logged_before),
                self.log.display()
            );
        }
        // What it prints later goes to its log, and the pipe never fills.
        let log_path = self.log.clone();
        tokio::spawn(async move {
            let Ok(mut log) = tokio::fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .await
            else {
                return;
            };
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(format!("{line}\n").as_bytes()).await;
            }
        });
        self.ready = ready;
        self.process = Some(child);
        Ok(())
    }

    /// Whether it runs (as far as the last look at it knows).
    pub(crate) fn running(&self) -> bool {
        self.process.is_some()
    }

    /// How it ended, if it has since the last look.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.process.as_mut()?.try_wait().ok().flatten()?;
        self.process = None;
        Some(status)
    }

    /// SIGTERM, then up to `grace` for it to finish (draining what it serves), then SIGKILL.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            tracing::warn!(child = %self.name, "did not stop in time; killed");
            let _ = child.kill().await;
        }
    }
}

/// This binary's path as it was at the first start: a child started again after `cargo build`
/// replaced the file runs the new one (`current_exe` would name the deleted one).
fn program() -> Result<PathBuf> {
    static PROGRAM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(path) = PROGRAM.get() {
        return Ok(path.clone());
    }
    let path = std::env::current_exe().context("this binary's path")?;
    Ok(PROGRAM.get_or_init(|| path).clone())
}

/// The last lines a log got from `offset` on, for a message that says why a child failed
/// without sending the user to the file first.
fn log_tail(path: &std::path::Path, offset: u64) -> String {
    const LINES: usize = 8;
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(LINES)..];
    if tail.is_empty() {
        return String::new();
    }
    format!(": it logged\n    {}\n", tail.join("\n    "))
}

/// Whether process group `id` still has a member.
fn group_exists(id: i32) -> bool {
    Pid::from_raw(id).is_some_and(|pid| rustix::process::test_kill_process_group(pid).is_ok())
}
