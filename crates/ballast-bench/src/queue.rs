//! `ballast queue demo`: consumers over an unprotected remote queue, without a lock, with a
//! remote lock, and with Redlock, side by side (see `ballast_lock::queue`). `ballast queue
//! consume` is one consumer, which `demo --processes` runs as separate processes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_lock::queue::{Consumed, Consumer, Outcome, Queue};
use ballast_lock::{LockManager, Options};
use clap::{Args, Subcommand, ValueEnum};
use tokio::io::AsyncBufReadExt;

use crate::table::Table;

#[allow(missing_docs)] // clap reads doc comments as help text
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Fill a queue and let consumers empty it in each --lock mode; print what was delivered.
    Demo(DemoArgs),
    /// Run one consumer until the queue is empty (what `demo --processes` starts).
    Consume(ConsumeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LockMode {
    /// No lock: the baseline that delivers twice and loses messages.
    None,
    /// A remote lock on the first --redis node.
    Remote,
    /// Redlock over every --redis node.
    Redlock,
}

/// Where the queue and the locks are, and how consumers behave.
#[derive(Debug, Clone, Args)]
pub struct Setup {
    /// Redis nodes, comma-separated: the queue lives on the first; Redlock uses all (an odd
    /// number, at least 3).
    #[arg(
        long,
        value_name = "URLS",
        env = "BALLAST_REDIS",
        value_delimiter = ',',
        required = true
    )]
    redis: Vec<String>,
    /// The lock's TTL.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The chance per message that a consumer pauses for 1.5 × the TTL between reading and
    /// committing, as a GC pause would.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pause_prob: f64,
    /// The queue's key prefix.
    #[arg(long, default_value = "ballast-queue-demo")]
    prefix: String,
}

#[allow(missing_docs)] // clap reads doc comments as help text
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    setup: Setup,
    /// Consumers sharing the queue.
    #[arg(long, default_value_t = 5)]
    consumers: usize,
    /// Messages to put in the queue, for each mode.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// The modes to run, in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,remote,redlock"
    )]
    lock: Vec<LockMode>,
    /// Run each consumer as a separate process.
    #[arg(long)]
    processes: bool,
}

#[allow(missing_docs)] // clap reads doc comments as help text
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    setup: Setup,
    /// The lock around each read.
    #[arg(long, value_enum)]
    lock: LockMode,
}

impl Setup {
    fn queue(&self) -> Queue {
        Queue::new(&self.redis[0], &self.prefix)
    }

    fn consumer(&self, mode: LockMode) -> Result<Consumer> {
        if !(0.0..=1.0).contains(&self.pause_prob) {
            bail!("--pause-prob: {} is not a probability", self.pause_prob);
        }
        let options = Options::default();
        let lock = match mode {
            LockMode::None => None,
            LockMode::Remote => Some(LockManager::single(&self.redis[0], options)?),
            LockMode::Redlock => Some(LockManager::redlock(&self.redis, options)?),
        };
        Ok(Consumer {
            lock,
            ttl: self.ttl,
            pause_probability: self.pause_prob,
        })
    }
}

impl QueueCommand {
    /// Runs the demonstration or the one consumer.
    pub fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(async {
            match self {
                Self::Demo(args) => demo(args).await,
                Self::Consume(args) => {
                    let consumer = args.setup.consumer(args.lock)?;
                    let done = args.setup.queue().consume(&consumer).await?;
                    println!(
                        "committed {} refused {} paused {}",
                        done.committed, done.refused, done.paused
                    );
                    Ok(())
                }
            }
        })
    }
}

async fn demo(args: DemoArgs) -> Result<()> {
    if args.consumers == 0 {
        bail!("--consumers: at least one");
    }
    let queue = args.setup.queue();
    let mut table = Table::new(&[
        "lock",
        "consumers",
        "produced",
        "once",
        "twice+",
        "lost",
        "refused",
        "paused",
        "seconds",
        "msgs/s",
    ]);
    for mode in &args.lock {
        let consumer = args.setup.consumer(*mode)?;
        queue.fill(args.messages).await?;
        let started = Instant::now();
        let consumed = if args.processes {
            in_processes(&args.setup, *mode, args.consumers).await?
        } else {
            in_tasks(&queue, &consumer, args.consumers).await?
        };
        let took = started.elapsed().as_secs_f64();
        let outcome: Outcome = queue.outcome(args.messages).await?;
        let delivered = outcome.once + outcome.duplicated;
        table.row(vec![
            format!("{mode:?}").to_lowercase(),
            args.consumers.to_string(),
            outcome.produced.to_string(),
            outcome.once.to_string(),
            outcome.duplicated.to_string(),
            outcome.lost.to_string(),
            outcome.refused.to_string(),
            consumed.paused.to_string(),
            format!("{took:.2}"),
            format!("{:.0}", delivered as f64 / took.max(1e-9)),
        ]);
    }
    table.write(&mut std::io::stdout().lock())?;
    Ok(())
}

async fn in_tasks(queue: &Queue, consumer: &Consumer, consumers: usize) -> Result<Consumed> {
    let tasks: Vec<_> = (0..consumers)
        .map(|_| {
            let (queue, consumer) = (queue.clone(), consumer.clone());
            tokio::spawn(async move { queue.consume(&consumer).await })
        })
        .collect();
    let mut total = Consumed::default();
    for task in tasks {
        let done = task.await.context("a consumer panicked")??;
        total.committed += done.committed;
        total.refused += done.refused;
        total.paused += done.paused;
    }
    Ok(total)
}

async fn in_processes(setup: &Setup, mode: LockMode, consumers: usize) -> Result<Consumed> {
    let program = std::env::current_exe().context("finding the ballast binary")?;
    let mode = format!("{mode:?}").to_lowercase();
    let mut children = Vec::new();
    for _ in 0..consumers {
        let child = tokio::process::Command::new(&program)
            .args([
                "queue",
                "consume",
                "--lock",
                &mode,
                "--redis",
                &setup.redis.join(","),
            ])
            .args(["--ttl", &format!("{}ms", setup.ttl.as_millis())])
            .args(["--pause-prob", &setup.pause_prob.to_string()])
            .args(["--prefix", &setup.prefix])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a consumer")?;
        children.push(child);
    }
    let mut total = Consumed::default();
    for mut child in children {
        let stdout = child.stdout.take().context("consumer stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = lines.next_line().await?.unwrap_or_default();
        let status = child.wait().await?;
        if !status.success() {
            bail!("a consumer failed ({status})");
        }
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [committed, refused, paused] = numbers[..] {
            total.committed += committed;
            total.refused += refused;
            total.paused += paused;
        }
    }
    Ok(total)
}
