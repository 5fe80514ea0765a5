//! `ballast bench lock`: acquire + release latency and throughput of one Redis node, of Redlock
//! over every `--redis` node asked in parallel, and of the same Redlock asked node after node, in
//! one run, so that the ratio shows what asking in parallel buys.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_lock::{LockManager, Options};
use clap::Args;

use crate::table::{Table, quantile};

#[derive(Debug, Args)]
pub struct LockBenchArgs {
    /// Redis nodes, comma-separated: the single-node row uses the first; Redlock all (an odd
    /// number, at least 3).
    #[arg(
        long,
        value_name = "URLS",
        env = "BALLAST_REDIS",
        value_delimiter = ',',
        required = true
    )]
    redis: Vec<String>,
    /// Acquire + release pairs per row.
    #[arg(long, default_value_t = 2_000)]
    ops: usize,
    /// The lock's TTL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

impl LockBenchArgs {
    pub fn run(&self) -> Result<()> {
        if self.redis.len() < 3 {
            bail!("--redis: give at least 3 nodes (an odd number) to compare Redlock with one");
        }
        // One thread, as a client would: measured faster here than two workers, which compete
        // with the Redis servers for the cores.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let n = self.redis.len();
        let sequential = Options {
            sequential: true,
            ..Options::default()
        };
        let rows = [
            (
                "single node".to_owned(),
                LockManager::single(&self.redis[0], Options::default())?,
            ),
            (
                format!("redlock-{n} parallel"),
                LockManager::redlock(&self.redis, Options::default())?,
            ),
            (
                format!("redlock-{n} sequential"),
                LockManager::redlock(&self.redis, sequential)?,
            ),
        ];
        let mut table = Table::new(&["lock", "ops", "p50_us", "p99_us", "ops/s", "p50 vs single"]);
        let mut single_p50 = None;
        for (label, locks) in rows {
            let (samples, took) = runtime.block_on(self.measure(&locks))?;
            let p50 = quantile(&samples, 0.5);
            let base = *single_p50.get_or_insert(p50);
            table.row(vec![
                label,
                samples.len().to_string(),
                format!("{p50:.0}"),
                format!("{:.0}", quantile(&samples, 0.99)),
                format!("{:.0}", samples.len() as f64 / took.as_secs_f64()),
                format!("{:.2}x", p50 / base),
            ]);
        }
        table.write(&mut std::io::stdout().lock())?;
        Ok(())
    }

    /// Microseconds per acquire + release, sorted, and the time for them all.
    async fn measure(&self, locks: &LockManager) -> Result<(Vec<f64>, Duration)> {
        // Warm the connections (and the nodes' script caches) up first.
        locks
            .try_acquire("ballast-bench", self.ttl)
            .await?
            .release()
            .await;
        let mut samples = Vec::with_capacity(self.ops);
        let started = Instant::now();
        for _ in 0..self.ops {
            let one = Instant::now();
            let lease = locks.try_acquire("ballast-bench", self.ttl).await?;
            let released = lease.release().await;
            if released.nodes < locks.quorum() {
                bail!("released on {} nodes only", released.nodes);
            }
            samples.push(one.elapsed().as_secs_f64() * 1e6);
        }
        let took = started.elapsed();
        samples.sort_by(f64::total_cmp);
        Ok((samples, took))
    }
}
