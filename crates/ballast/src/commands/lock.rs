//! `ballast lock run|acquire|release|status`: the locks of `ballast-lock` from the shell.
//!
//! `lock run` is `flock(1)` across machines: it takes the lock (one `--redis` node: a remote lock;
//! an odd number ≥ 3: Redlock), runs the command with `BALLAST_FENCING_TOKEN` in its environment
//! while renewing the lease, stops the command (SIGTERM, then SIGKILL after `--kill-after`) the
//! moment the lease is lost, and exits with the command's status — or 75 (`EX_TEMPFAIL`) when
//! the lock could not be had within `--wait`.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_lock::{LockError, LockManager, Options, Renewal};
use clap::{Args, Subcommand};
use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};

use ballast_bench::table::Table;

/// The exit status when the lock could not be had in time (`EX_TEMPFAIL` in sysexits.h).
pub(crate) const NOT_ACQUIRED: u8 = 75;

#[derive(Debug, Subcommand)]
pub(crate) enum LockCommand {
    /// Run a command while holding the lock, renewing it; stop the command if the lock is lost.
    Run(RunArgs),
    /// Take the lock once and print its value and fencing token (it expires with its TTL).
    Acquire(AcquireArgs),
    /// Release the lock held with a value that `acquire` printed.
    Release(ReleaseArgs),
    /// Show each node's holder, the TTL left and the last fencing token.
    Status(NodesArgs),
    /// Run clients against the lock while injecting faults, and check the history for
    /// violations (overlapping holders, tokens out of order, stale writes accepted).
    Check(ballast_bench::lock_check::CheckArgs),
    /// One of `check`'s clients (started by `check`).
    #[command(hide = true)]
    CheckClient(ballast_bench::lock_check::ClientArgs),
}

/// The lock and its nodes.
#[derive(Debug, Args)]
pub(crate) struct NodesArgs {
    /// The lock's name.
    name: String,
    /// The Redis nodes, comma-separated: one for a remote lock, an odd number (≥ 3) for Redlock.
    #[arg(
        long,
        value_name = "URLS",
        env = "BALLAST_REDIS",
        value_delimiter = ',',
        required = true
    )]
    redis: Vec<String>,
    /// How long one node may take per call [default: TTL/20, 5 ms to 250 ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    node_timeout: Option<Duration>,
}

impl NodesArgs {
    async fn manager(&self) -> Result<LockManager> {
        let options = Options {
            node_timeout: self.node_timeout,
            holder: super::host_and_pid(),
            ..Options::default()
        };
        let locks = LockManager::from_urls(&self.redis, options)?;
        for failure in locks.connect(Duration::from_secs(1)).await {
            tracing::warn!(%failure, "node unreachable");
        }
        Ok(locks)
    }
}

#[derive(Debug, Args)]
pub(crate) struct AcquireArgs {
    #[command(flatten)]
    nodes: NodesArgs,
    /// How long the lock lives unless extended.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long to wait for a held lock (0: try once).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    lock: AcquireArgs,
    /// Renew this often [default: a third of the TTL].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    renew_every: Option<Duration>,
    /// After SIGTERM, how long the command has before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    kill_after: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    #[command(flatten)]
    nodes: NodesArgs,
    /// The value `acquire` printed.
    #[arg(long)]
    value: String,
    /// The fencing token `acquire` printed (raises the nodes' counters to it).
    #[arg(long, default_value_t = 0)]
    token: u64,
}

impl LockCommand {
    pub(crate) fn run(self) -> Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(async {
            match self {
                Self::Run(args) => run(args).await,
                Self::Acquire(args) => acquire(args).await,
                Self::Release(args) => release(args).await,
                Self::Status(args) => status(args).await,
                Self::Check(args) => ballast_bench::lock_check::check(args).await,
                Self::CheckClient(args) => ballast_bench::lock_check::client(args)
                    .await
                    .map(|()| ExitCode::SUCCESS),
            }
        })
    }
}

/// Reports a lock that could not be had, and the exit status that says so.
fn not_acquired(error: &LockError) -> Result<ExitCode> {
    match error {
        LockError::Invalid { .. } => bail!("{error}"),
        _ => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(NOT_ACQUIRED))
        }
    }
}

async fn acquire(args: AcquireArgs) -> Result<ExitCode> {
    let locks = args.nodes.manager().await?;
    let lease = match locks.acquire(&args.nodes.name, args.ttl, args.wait).await {
        Ok(lease) => lease,
        Err(error) => return not_acquired(&error),
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "value {} token {} valid_ms {}",
        lease.value(),
        lease.fencing_token(),
        lease.remaining().as_millis()
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn release(args: ReleaseArgs) -> Result<ExitCode> {
    let locks = args.nodes.manager().await?;
    let released = locks
        .release(&args.nodes.name, &args.value, args.token)
        .await;
    for failure in &released.failures {
        eprintln!("warning: {failure}");
    }
    println!(
        "released on {} of {} nodes",
        released.nodes,
        locks.nodes().len()
    );
    if released.nodes == 0 {
        eprintln!("error: `{}` was not held with that value", args.nodes.name);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn status(args: NodesArgs) -> Result<ExitCode> {
    let locks = args.manager().await?;
    let mut table = Table::new(&["node", "holder", "ttl_ms", "last_token"]);
    for node in locks.status(&args.name).await {
        match node.holding {
            Ok(holding) => table.row(vec![
                node.node,
                holding.value.unwrap_or_else(|| "-".to_owned()),
                holding
                    .ttl
                    .map_or_else(|| "-".to_owned(), |t| t.as_millis().to_string()),
                holding.last_token.to_string(),
            ]),
            Err(error) => table.row(vec![node.node, format!("error: {error}")]),
        }
    }
    table.write(&mut std::io::stdout().lock())?;
    Ok(ExitCode::SUCCESS)
}

async fn run(args: RunArgs) -> Result<ExitCode> {
    let name = &args.lock.nodes.name;
    let locks = args.lock.nodes.manager().await?;
    let lease = match locks.acquire(name, args.lock.ttl, args.lock.wait).await {
        Ok(lease) => lease,
        Err(error) => return not_acquired(&error),
    };
    let token = lease.fencing_token();
    let held = lease.keep_alive(Renewal {
        every: args.renew_every,
        max_renewals: None,
    });
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("BALLAST_FENCING_TOKEN", token.to_string())
        .env("BALLAST_LOCK_NAME", name)
        .spawn()
        .with_context(|| format!("cannot run `{program}`"))?;
    let pid = child.id().and_then(|id| Pid::from_raw(id as i32));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let status = tokio::select! {
        status = child.wait() => status?,
        reason = held.lost() => {
            eprintln!("error: lock `{name}` lost ({reason}); stopping `{program}`");
            stop(&mut child, pid, args.kill_after).await?
        }
        _ = term.recv() => stop(&mut child, pid, args.kill_after).await?,
        _ = int.recv() => stop(&mut child, pid, args.kill_after).await?,
    };
    held.release().await;
    Ok(ExitCode::from(exit_code(status)))
}

/// SIGTERM, then SIGKILL if the command is still running after `grace`.
async fn stop(
    child: &mut tokio::process::Child,
    pid: Option<Pid>,
    grace: Duration,
) -> Result<ExitStatus> {
    if let Some(pid) = pid {
        let _ = kill_process(pid, Signal::TERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.start_kill()?;
            Ok(child.wait().await?)
        }
    }
}

/// A shell's view of a status: the exit code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => 1,
    }
}
