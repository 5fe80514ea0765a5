//! `ballast lock check`: the safety checker. It runs clients as separate processes that take the
//! lock, write to a fenced resource, renew and release, each reporting every step with a
//! timestamp from the machine's monotonic clock; injects faults (a holder frozen past its TTL,
//! a minority of nodes crashed for a while, nodes crashed and restarted at once, a majority
//! crashed); then checks the history with `ballast_lock::history::verify` and prints a table of
//! operations, faults and violations. It exits 1 on any violation.
//!
//! Node faults need nodes the checker starts itself (`--nodes N`, the default); with `--redis`
//! only the `pause` fault is possible.

use std::collections::HashMap;
use std::io::Write;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_lock::fenced::Register;
use ballast_lock::history::{Event, verify};
use ballast_lock::local::LocalNode;
use ballast_lock::{LockManager, Options};
use clap::{Args, ValueEnum};
use rustix::process::{Pid, Signal, kill_process};
use rustix::time::{ClockId, clock_gettime};
use tokio::io::AsyncBufReadExt;

use crate::table::Table;

/// The lock every client contends for, and the resource it guards.
pub const LOCK: &str = "ballast-check";

/// Nanoseconds on the monotonic clock, which every process on the machine shares.
pub fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum Fault {
    /// Freeze a holder (SIGSTOP) for 1.5 × the TTL, then thaw it (SIGCONT).
    Pause,
    /// Crash a minority node (SIGKILL) and keep it down for two TTLs.
    KillNode,
    /// Crash a node and restart it at once (its append-only file keeps its locks).
    RestartNode,
    /// Crash a majority for two TTLs: the lock must become unavailable, never unsafe.
    KillMajority,
    /// Move one node's fencing counter 30 s ahead (a fast clock), freeze the next holder, whose
    /// token comes from that node, and cut the node off for two TTLs: the next holder's token
    /// must still be larger.
    SkewCounter,
}

#[allow(missing_docs)] // clap reads doc comments as help text
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Use these Redis nodes instead of starting them (then only the `pause` fault applies).
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        conflicts_with = "nodes"
    )]
    redis: Vec<String>,
    /// Start this many private Redis nodes (an odd number; 1 for a single-node lock).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Client processes contending for the lock.
    #[arg(long, default_value_t = 10)]
    clients: u32,
    /// How long to run.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The lock's TTL.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Faults to inject, in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pause,kill-node,restart-node"
    )]
    faults: Vec<Fault>,
}

#[allow(missing_docs)] // clap reads doc comments as help text
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The lock's nodes.
    #[arg(long, value_delimiter = ',', required = true)]
    redis: Vec<String>,
    /// The fenced resource's node.
    #[arg(long)]
    resource: String,
    /// This client's number.
    #[arg(long)]
    client: u32,
    /// The lock's TTL.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// One client: take the lock, write, renew, write, release, over and over, reporting each step
/// on stdout, until SIGTERM.
pub async fn client(args: ClientArgs) -> Result<()> {
    let locks = LockManager::from_urls(&args.redis, Options::default())?;
    locks.connect(Duration::from_secs(1)).await;
    let register = Register::open(&args.resource, LOCK).await?;
    let mut out = std::io::stdout();
    let mut report = |event: Event| -> Result<()> {
        writeln!(out, "{event}")?;
        out.flush()?;
        Ok(())
    };
    let client = args.client;
    loop {
        let Ok(mut lease) = locks.acquire(LOCK, args.ttl, args.ttl * 2).await else {
            continue;
        };
        let token = lease.fencing_token();
        let until = |lease: &ballast_lock::Lease| now_ns() + lease.remaining().as_nanos() as u64;
        report(Event::Grant {
            client,
            token,
            at: now_ns(),
            until: until(&lease),
        })?;
        let accepted = register.write(token, &format!("{client}:grant")).await?;
        report(Event::Write {
            client,
            token,
            at: now_ns(),
            accepted,
        })?;
        let steps = 1 + rand_below(3);
        let mut lost = false;
        for step in 0..steps {
            tokio::time::sleep(args.ttl / 4).await;
            // Written without looking at the clock first, as a process that was frozen in its
            // sleep would: fencing is what must stop it.
            let accepted = register.write(token, &format!("{client}:{step}")).await?;
            report(Event::Write {
                client,
                token,
                at: now_ns(),
                accepted,
            })?;
            // A failed extension releases what is left of the lock before it returns, so the
            // client stops holding it when it starts the attempt (it does nothing else meanwhile).
            let attempt = now_ns();
            match lease.extend().await {
                Ok(()) => report(Event::Renew {
                    client,
                    token,
                    at: now_ns(),
                    until: until(&lease),
                })?,
                Err(_) => {
                    report(Event::Lost {
                        client,
                        token,
                        at: attempt,
                    })?;
                    lost = true;
                    break;
                }
            }
        }
        if !lost {
            report(Event::Release {
                client,
                token,
                at: now_ns(),
            })?;
            lease.release().await;
        }
    }
}

fn rand_below(n: u32) -> u32 {
    fastrand::u32(..n)
}

/// What the running clients have reported so far, and who holds the lock now.
#[derive(Default)]
struct Record {
    events: Vec<Event>,
    holder: Option<u32>,
    grants: usize,
}

/// Client processes contending for the lock (`ballast lock check-client`), and what they report.
/// Shared by this checker and the lab's, which starts them on a host of its own.
pub struct Contenders {
    record: Arc<Mutex<Record>>,
    pids: HashMap<u32, u32>,
    children: Vec<tokio::process::Child>,
}

/// The arguments of `ballast lock check-client` for client `client`.
pub fn client_args(
    lock_urls: &[String],
    resource: &str,
    client: u32,
    ttl: Duration,
) -> Vec<String> {
    vec![
        "lock".into(),
        "check-client".into(),
        "--redis".into(),
        lock_urls.join(","),
        "--resource".into(),
        resource.into(),
        "--client".into(),
        client.to_string(),
        "--ttl".into(),
        format!("{}ms", ttl.as_millis()),
    ]
}

impl Contenders {
    /// Starts `count` clients, client `n` with `command(n)` (its output piped here).
    pub fn start(
        count: u32,
        mut command: impl FnMut(u32) -> tokio::process::Command,
    ) -> Result<Self> {
        let record = Arc::new(Mutex::new(Record::default()));
        let mut pids = HashMap::new();
        let mut children = Vec::new();
        for client in 0..count {
            let mut child = command(client)
                .env("RUST_LOG", "off")
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting a client")?;
            let stdout = child.stdout.take().context("client stdout")?;
            if let Some(pid) = child.id() {
                pids.insert(client, pid);
            }
            tokio::spawn(Self::follow(stdout, Arc::clone(&record)));
            children.push(child);
        }
        Ok(Self {
            record,
            pids,
            children,
        })
    }

    async fn follow(stdout: tokio::process::ChildStdout, record: Arc<Mutex<Record>>) {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(event) = line.parse::<Event>() else {
                continue;
            };
            let mut record = record.lock().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Grant { client, .. } => {
                    record.holder = Some(client);
                    record.grants += 1;
                }
                Event::Release { client, .. } | Event::Lost { client, .. }
                    if record.holder == Some(client) =>
                {
                    record.holder = None
                }
                _ => {}
            }
            record.events.push(event);
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process of the client that holds the lock now, as far as the reports tell.
    pub fn holder(&self) -> Option<Pid> {
        self.record()
            .holder
            .and_then(|c| self.pids.get(&c))
            .and_then(|p| Pid::from_raw(*p as i32))
    }

    /// How many grants the clients have reported so far.
    pub fn grants(&self) -> usize {
        self.record().grants
    }

    /// Stops every client (thawing any frozen one first) and returns what they reported.
    pub async fn stop(mut self) -> Vec<Event> {
        for pid in self.pids.values().filter_map(|p| Pid::from_raw(*p as i32)) {
            let _ = kill_process(pid, Signal::CONT);
            let _ = kill_process(pid, Signal::TERM);
        }
        for child in &mut self.children {
            let _ = child.wait().await;
        }
        std::mem::take(&mut self.record().events)
    }
}

/// Runs the check; exits 1 (through the answer) on any violation.
pub async fn check(args: CheckArgs) -> Result<ExitCode> {
    let node_faults = args.faults.iter().any(|f| *f != Fault::Pause);
    if !args.redis.is_empty() && node_faults {
        bail!(
            "--faults: kill-node, restart-node, kill-majority and skew-counter need nodes the checker starts (--nodes N instead of --redis)"
        );
    }
    if args.redis.is_empty() && (args.nodes == 0 || args.nodes.is_multiple_of(2)) {
        bail!("--nodes: an odd number, got {}", args.nodes);
    }
    if args.clients == 0 {
        bail!("--clients: at least one");
    }
    let dir = std::env::temp_dir().join(format!("ballast-lock-check-{}", std::process::id()));
    let mut nodes = Vec::new();
    if args.redis.is_empty() {
        for i in 0..=args.nodes {
            nodes.push(LocalNode::start(&dir.join(format!("node-{i}"))).await?);
        }
    }
    // The last started node is the resource; the others hold the lock.
    let resource = nodes.pop();
    let (lock_urls, resource_url) = match &resource {
        Some(resource) => (
            nodes.iter().map(LocalNode::url).collect::<Vec<_>>(),
            resource.url(),
        ),
        None => (args.redis.clone(), args.redis[0].clone()),
    };
    let register = Register::open(&resource_url, LOCK)
        .await
        .context("the resource node")?;
    register.clear().await?;

    let program = std::env::current_exe().context("finding the ballast binary")?;
    let contenders = Contenders::start(args.clients, |client| {
        let mut command = tokio::process::Command::new(&program);
        command.args(client_args(&lock_urls, &resource_url, client, args.ttl));
        command
    })?;

    let mut injected: HashMap<Fault, usize> = HashMap::new();
    let mut majority_windows = Vec::new();
    let deadline = tokio::time::Instant::now() + args.duration;
    let mut turn = 0usize;
    while tokio::time::Instant::now() + args.ttl * 4 < deadline && !args.faults.is_empty() {
        tokio::time::sleep(args.ttl * 2).await;
        let fault = args.faults[turn % args.faults.len()];
        turn += 1;
        let done = match fault {
            Fault::Pause => match contenders.holder() {
                Some(pid) => {
                    let _ = kill_process(pid, Signal::STOP);
                    tokio::time::sleep(args.ttl * 3 / 2).await;
                    let _ = kill_process(pid, Signal::CONT);
                    true
                }
                None => false,
            },
            Fault::KillNode => {
                let i = rand_below(nodes.len() as u32) as usize;
                nodes[i].kill().await;
                tokio::time::sleep(args.ttl * 2).await;
                nodes[i].restart().await?;
                true
            }
            Fault::RestartNode => {
                let i = rand_below(nodes.len() as u32) as usize;
                nodes[i].kill().await;
                nodes[i].restart().await?;
                true
            }
            Fault::KillMajority => {
                let majority = nodes.len() / 2 + 1;
                for node in &mut nodes[..majority] {
                    node.kill().await;
                }
                // A grant already on its way may land just after the kill: count from one TTL on.
                let from = now_ns() + args.ttl.as_nanos() as u64;
                tokio::time::sleep(args.ttl * 3).await;
                majority_windows.push((from, now_ns()));
                for node in &mut nodes[..majority] {
                    node.restart().await?;
                }
                true
            }
            Fault::SkewCounter => {
                let i = rand_below(nodes.len() as u32) as usize;
                nodes[i]
                    .skew_fence(LOCK, Duration::from_secs(30))
                    .await
                    .context("skewing a node's fencing counter")?;
                let before = contenders.grants();
                let granted_after = tokio::time::Instant::now() + args.ttl * 4;
                let mut holder = None;
                while holder.is_none() && tokio::time::Instant::now() < granted_after {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if contenders.grants() > before {
                        holder = contenders.holder();
                    }
                }
                match holder {
                    Some(pid) if nodes.len() >= 3 => {
                        let _ = kill_process(pid, Signal::STOP);
                        nodes[i].kill().await;
                        tokio::time::sleep(args.ttl * 2).await;
                        nodes[i].restart().await?;
                        let _ = kill_process(pid, Signal::CONT);
                        true
                    }
                    _ => false,
                }
            }
        };
        if done {
            *injected.entry(fault).or_default() += 1;
        }
    }
    tokio::time::sleep_until(deadline).await;

    let events = contenders.stop().await;
    let accepted = register.tokens().await?;
    let mut verdict = verify(&events, &accepted);
    for (from, to) in &majority_windows {
        for event in &events {
            if let Event::Grant {
                client, token, at, ..
            } = event
                && (from..to).contains(&at)
            {
                verdict.violations.push(format!(
                    "availability: client {client} was granted token {token} while a majority of nodes was down"
                ));
            }
        }
    }
    drop(nodes);
    drop(resource);
    let _ = std::fs::remove_dir_all(&dir);

    let mut out = std::io::stdout().lock();
    let mut table = Table::new(&["operation", "count"]);
    for (what, count) in [
        ("grants", verdict.grants),
        ("renewals", verdict.renewals),
        ("releases", verdict.releases),
        ("losses", verdict.losses),
        ("writes accepted", verdict.writes_accepted),
        ("writes refused", verdict.writes_refused),
    ] {
        table.row(vec![what.to_owned(), count.to_string()]);
    }
    table.write(&mut out)?;
    writeln!(out)?;
    let mut table = Table::new(&["fault", "injected"]);
    for fault in &args.faults {
        let name = fault
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        table.row(vec![
            name,
            injected.get(fault).copied().unwrap_or(0).to_string(),
        ]);
    }
    table.write(&mut out)?;
    writeln!(out)?;
    if verdict.violations.is_empty() {
        writeln!(out, "violations: none")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "violations: {}", verdict.violations.len())?;
    for violation in &verdict.violations {
        writeln!(out, "  {violation}")?;
    }
    Ok(ExitCode::FAILURE)
}
