//! `ballast bench propagation`: how long a configuration change takes to reach every managed LB.
//!
//! Starts `ballast control` and `--lbs` managed `ballast lb` servers (this same binary) on the
//! given database, makes `--changes` weight changes through the admin API, and for each measures
//! the time from sending the change to every LB reporting the new revision (polled every
//! millisecond on their admin `/config/revision`). Once with push, once pull-only.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_control::client::Client;
use clap::Args;
use hyper::Method;
use serde_json::json;

use crate::harness::{address_after, api, applied, start};
use crate::table::{Table, quantile};

#[derive(Debug, Args)]
pub struct PropagationArgs {
    /// The configuration database: sqlite://PATH or postgres://….
    #[arg(long, value_name = "URL")]
    db: String,
    /// Managed LB servers to start.
    #[arg(long, default_value_t = 3)]
    lbs: usize,
    /// Changes to make and time.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// The LBs' pull interval in the pull-only round.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pull_interval: Duration,
}

impl PropagationArgs {
    pub fn run(&self) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("ballast-propagation-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let token = format!("bench-{:032x}", fastrand::u128(..));
        let token_file = dir.join("token");
        std::fs::write(&token_file, &token)?;
        let result = self.measure(&token, token_file.to_str().context("temp path")?);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn measure(&self, token: &str, token_file: &str) -> Result<()> {
        let control = start(
            &[
                "control",
                "--db",
                &self.db,
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                token_file,
            ],
            1,
        )?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let api = api(address_after(&control.ready, "listening http ")?, token);
        let pool = format!("propagation-{}", std::process::id());
        runtime.block_on(async {
            api.write(
                Method::POST,
                "/v1/pools",
                &json!({"name": pool, "algorithm": "round_robin"}),
            )
            .await?;
            api.write(
                Method::POST,
                &format!("/v1/pools/{pool}/backends"),
                &json!({"address": "127.0.0.1:9", "weight": 1}),
            )
            .await
        })?;

        let mut table = Table::new(&["mode", "lbs", "changes", "p50_ms", "p99_ms", "max_ms"]);
        let pull = humantime::format_duration(self.pull_interval).to_string();
        for (mode, extra) in [
            ("push", vec![]),
            ("pull-only", vec!["--pull-only", "--pull-interval", &pull]),
        ] {
            let mut lbs = Vec::new();
            for _ in 0..self.lbs {
                let mut args = vec![
                    "lb",
                    "--db",
                    &self.db,
                    "--pool",
                    &pool,
                    "--listen",
                    "127.0.0.1:0",
                    "--admin",
                    "127.0.0.1:0",
                    "--workers",
                    "1",
                ];
                args.extend(extra.iter().copied());
                lbs.push(start(&args, 2)?);
            }
            let admins: Vec<SocketAddr> = lbs
                .iter()
                .map(|lb| address_after(&lb.ready, "admin "))
                .collect::<Result<_>>()?;
            let changes = if mode == "push" {
                self.changes
            } else {
                self.changes.min(20)
            };
            let mut samples = runtime.block_on(self.round(&api, &pool, &admins, changes))?;
            samples.sort_by(f64::total_cmp);
            let at = |q: f64| quantile(&samples, q);
            table.row(vec![
                mode.to_owned(),
                self.lbs.to_string(),
                samples.len().to_string(),
                format!("{:.1}", at(0.5)),
                format!("{:.1}", at(0.99)),
                format!("{:.1}", at(1.0)),
            ]);
        }
        drop(control);
        let mut out = std::io::stdout().lock();
        table.write(&mut out)?;
        out.flush()?;
        Ok(())
    }

    /// Makes `changes` changes; for each, the milliseconds until every LB applied it.
    async fn round(
        &self,
        api: &Client,
        pool: &str,
        admins: &[SocketAddr],
        changes: usize,
    ) -> Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(changes);
        for i in 0..changes {
            let started = Instant::now();
            let revision = api
                .write(
                    Method::PUT,
                    &format!("/v1/pools/{pool}/backends/127.0.0.1:9/weight"),
                    &json!({"weight": 1 + i % 10}),
                )
                .await?;
            for admin in admins {
                let deadline = started + self.pull_interval * 3 + Duration::from_secs(5);
                while applied(api, *admin).await? < revision {
                    if Instant::now() > deadline {
                        bail!("LB at {admin} did not apply revision {revision}");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(samples)
    }
}
