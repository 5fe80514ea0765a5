//! `ballast bench detect`: how fast a dead backend leaves every LB, and whether a jittery one is
//! ever wrongly marked down.
//!
//! Starts `ballast control` (the orchestrator, health checking every `--interval`) on a fresh
//! SQLite database, three echo backends and `--lbs` managed LBs, and sends GET requests through
//! every LB without pause. Then it kills one backend with SIGKILL and times, per LB, when it
//! stopped choosing the backend: passively (its own outlier ejection, after consecutive failed
//! tries) and actively (it applied the orchestrator's unhealthy verdict). Client errors in that
//! window are counted; retries on another backend should leave none. Last, a backend with
//! jittery latency is checked for `--jitter-run`, counting unhealthy verdicts (false positives)
//! and the highest phi seen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_control::client::Client;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::Method;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::harness::{Started, address_after, api, applied, start};
use crate::table::Table;

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The health checks' interval (their timeout is half of it).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Managed LB servers.
    #[arg(long, default_value_t = 3)]
    lbs: usize,
    /// How long to watch the jittery backend for false positives (0s: skip).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    jitter_run: Duration,
}

const TOKEN: &str = "ballast-bench-detect-token";

impl DetectArgs {
    pub fn run(&self) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("ballast-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("temp dir")?;
        let result = self.measure(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn measure(&self, dir: &std::path::Path) -> Result<()> {
        let url = format!("sqlite://{}", dir.join("config.db").display());
        let token_file = dir.join("token");
        std::fs::write(&token_file, TOKEN)?;
        let token_file = token_file.to_str().context("utf-8 path")?;
        let control = start(
            &[
                "control",
                "--db",
                &url,
                "--listen",
                "127.0.0.1:0",
                "--token-file",
                token_file,
            ],
            1,
        )?;
        let api = api(address_after(&control.ready, "listening http ")?, TOKEN);
        let echo = |name: &str, extra: &[&str]| -> Result<(Started, SocketAddr)> {
            let mut args = vec!["echo", "--listen", "127.0.0.1:0", "--name", name];
            args.extend_from_slice(extra);
            let started = start(&args, 1)?;
            let address = address_after(&started.ready, "listening http ")?;
            Ok((started, address))
        };
        let (_b1, a1) = echo("b1", &[])?;
        let (victim, av) = echo("victim", &[])?;
        let (_b3, a3) = echo("b3", &[])?;
        let (_jittery, aj) = echo("jittery", &["--latency", "20ms", "--jitter", "15ms"])?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let interval_ms = self.interval.as_millis() as u64;
        runtime.block_on(async {
            for (pool, backends) in [("web", vec![a1, av, a3]), ("steady", vec![aj])] {
                let spec = json!({
                    "name": pool,
                    "algorithm": "round_robin",
                    "health_path": "/health",
                    "health_interval_ms": interval_ms,
                    "health_timeout_ms": (interval_ms / 2).max(1),
                });
                api.write(Method::POST, "/v1/pools", &spec).await?;
                for backend in backends {
                    let path = format!("/v1/pools/{pool}/backends");
                    api.write(
                        Method::POST,
                        &path,
                        &json!({"address": backend.to_string()}),
                    )
                    .await?;
                }
            }
            let deadline = Instant::now() + self.interval * 10 + Duration::from_secs(10);
            while !all_healthy(&api).await? {
                if Instant::now() > deadline {
                    bail!("the backends did not become healthy");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, anyhow::Error>(())
        })?;

        let mut lbs = Vec::new();
        for _ in 0..self.lbs {
            let args = [
                "lb",
                "--db",
                &url,
                "--pool",
                "web",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "1",
            ];
            lbs.push(start(&args, 2)?);
        }
        let listens: Vec<SocketAddr> = lbs
            .iter()
            .map(|lb| address_after(&lb.ready, "listening http "))
            .collect::<Result<_>>()?;
        let admins: Vec<SocketAddr> = lbs
            .iter()
            .map(|lb| address_after(&lb.ready, "admin "))
            .collect::<Result<_>>()?;

        let (rows, requests, errors, detected) =
            runtime.block_on(self.kill_under_load(&api, victim, av, &listens, &admins))?;
        println!(
            "# a backend killed (SIGKILL) under GET load through {} LBs; probes every {} (fall 3, phi 8)",
            self.lbs,
            humantime::format_duration(self.interval)
        );
        let mut table = Table::new(&["lb", "ejected_ms", "verdict_applied_ms", "stopped_ms"]);
        let mut slowest = 0.0f64;
        for (i, (ejected, applied)) in rows.iter().enumerate() {
            let stopped = ejected.unwrap_or(f64::MAX).min(applied.unwrap_or(f64::MAX));
            slowest = slowest.max(stopped);
            let cell = |v: &Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
            table.row(vec![
                format!("lb-{}", i + 1),
                cell(ejected),
                cell(applied),
                format!("{stopped:.0}"),
            ]);
        }
        table.write(&mut std::io::stdout().lock())?;
        println!(
            "verdict written after {detected:.0} ms; every LB stopped within {slowest:.0} ms (active goal: 3 intervals + 0.5 s = {:.0} ms)",
            self.interval.as_secs_f64() * 3000.0 + 500.0
        );
        println!("client requests in the window: {requests}, errors: {errors}");

        if !self.jitter_run.is_zero() {
            let (checks, verdicts, max_phi) = runtime.block_on(self.watch_jitter(&api, aj))?;
            println!(
                "# false positives: a backend answering in 20 ms ± 15 ms, probed for {}",
                humantime::format_duration(self.jitter_run)
            );
            println!(
                "observations: {checks}, unhealthy verdicts: {verdicts}, highest phi: {max_phi:.2}"
            );
        }
        drop(lbs);
        drop(control);
        Ok(())
    }

    /// Per LB: ms from the kill until it ejected the victim and until it applied the verdict;
    /// the requests and errors meanwhile; ms until the verdict was written.
    async fn kill_under_load(
        &self,
        api: &Client,
        mut victim: Started,
        victim_address: SocketAddr,
        listens: &[SocketAddr],
        admins: &[SocketAddr],
    ) -> Result<(Vec<(Option<f64>, Option<f64>)>, u64, u64, f64)> {
        let stop = Arc::new(AtomicBool::new(false));
        let counting = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut load = Vec::new();
        for listen in listens {
            let (stop, counting) = (stop.clone(), counting.clone());
            let (requests, errors) = (requests.clone(), errors.clone());
            let uri: hyper::Uri = format!("http://{listen}/").parse()?;
            load.push(tokio::spawn(async move {
                let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                while !stop.load(Ordering::Relaxed) {
                    let ok = match client.get(uri.clone()).await {
                        Ok(response) => {
                            let status = response.status();
                            response.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    if counting.load(Ordering::Relaxed) {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        counting.store(true, Ordering::Relaxed);
        let killed = Instant::now();
        victim.child.kill()?;
        let _ = victim.child.wait();

        let ms = |at: Instant| at.duration_since(killed).as_secs_f64() * 1000.0;
        let mut rows = vec![(None, None); admins.len()];
        let mut verdict: Option<(u64, f64)> = None;
        let deadline = killed + self.interval * 10 + Duration::from_secs(10);
        while rows.iter().any(|(_, applied)| applied.is_none()) {
            if Instant::now() > deadline {
                bail!("not every LB applied the verdict in time");
            }
            if verdict.is_none() && health_of(api, victim_address).await? == "unhealthy" {
                let revision = api.call(Method::GET, "/v1/revision", None).await?["revision"]
                    .as_u64()
                    .unwrap_or(0);
                verdict = Some((revision, ms(Instant::now())));
            }
            for (row, admin) in rows.iter_mut().zip(admins) {
                if row.0.is_none() && ejections(api, *admin, victim_address).await? > 0.0 {
                    row.0 = Some(ms(Instant::now()));
                }
                if let Some((revision, _)) = verdict
                    && row.1.is_none()
                    && applied(api, *admin).await? >= revision
                {
                    row.1 = Some(ms(Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        counting.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        for task in load {
            let _ = task.await;
        }
        let detected = verdict.map_or(0.0, |(_, at)| at);
        Ok((
            rows,
            requests.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            detected,
        ))
    }

    /// Observations of the jittery backend, unhealthy verdicts among them, the highest phi.
    async fn watch_jitter(&self, api: &Client, address: SocketAddr) -> Result<(u64, u64, f64)> {
        let until = Instant::now() + self.jitter_run;
        let (mut checks, mut verdicts, mut max_phi) = (0, 0, 0.0f64);
        let mut was_unhealthy = false;
        while Instant::now() < until {
            let view = api.call(Method::GET, "/v1/health", None).await?;
            for backend in view["backends"].as_array().map_or(&[][..], |b| b) {
                if backend["address"] == address.to_string() {
                    checks += 1;
                    max_phi = max_phi.max(backend["phi"].as_f64().unwrap_or(0.0));
                    let unhealthy = backend["health"] == "unhealthy";
                    if unhealthy && !was_unhealthy {
                        verdicts += 1;
                    }
                    was_unhealthy = unhealthy;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((checks, verdicts, max_phi))
    }
}

async fn all_healthy(api: &Client) -> Result<bool> {
    let pools = api.call(Method::GET, "/v1/pools", None).await?;
    Ok(pools["pools"].as_array().is_some_and(|pools| {
        pools.iter().all(|pool| {
            pool["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["health"] == "healthy"))
        })
    }))
}

async fn health_of(api: &Client, address: SocketAddr) -> Result<String> {
    let backends = api
        .call(Method::GET, "/v1/pools/web/backends", None)
        .await?;
    Ok(backends
        .as_array()
        .and_then(|list| list.iter().find(|b| b["address"] == address.to_string()))
        .and_then(|b| b["health"].as_str())
        .unwrap_or("")
        .to_owned())
}

/// The LB's passive ejections of `backend` so far.
async fn ejections(api: &Client, admin: SocketAddr, backend: SocketAddr) -> Result<f64> {
    let (_, body) = api
        .send(Method::GET, &format!("http://{admin}/metrics"), None)
        .await?;
    let text = String::from_utf8_lossy(&body);
    let needle = format!("backend=\"{backend}\"");
    Ok(text
        .lines()
        .filter(|l| l.starts_with("ballast_backend_ejections_total") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
