//! `ballast bench propagation`: how long a configuration change takes to reach every managed LB.
//!
//! Starts `ballast control` and `--lbs` managed `ballast lb` servers (this same binary) on the
//! given database, makes `--changes` weight changes through the admin API, and for each measures
//! the time from sending the change to every LB reporting the new revision (polled every
//! millisecond on their admin `/config/revision`). Once with push, once pull-only.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::table::{Table, quantile};

#[derive(Debug, Args)]
pub(crate) struct PropagationArgs {
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

/// A child `ballast` process, killed when dropped.
struct Started {
    child: Child,
    ready: Vec<String>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ballast ARGS` and waits (at most 20 s) for its `lines` ready lines.
fn start(args: &[&str], lines: usize) -> Result<Started> {
    let mut child = Command::new(std::env::current_exe().context("this binary's path")?)
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting ballast {}", args.join(" ")))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ready = Vec::new();
    while ready.len() < lines {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => ready.push(line),
            Err(_) => {
                let _ = child.kill();
                bail!("ballast {} did not become ready", args.join(" "));
            }
        }
    }
    Ok(Started { child, ready })
}

fn address_after(lines: &[String], prefix: &str) -> Result<SocketAddr> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("no `{prefix}` line in {lines:?}"))
}

struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    control: SocketAddr,
    token: String,
}

impl Api {
    async fn send(&self, method: Method, url: String, body: Option<Value>) -> Result<(u16, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(
                body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
            ))?;
        let response = self.client.request(request).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }

    async fn write(&self, method: Method, path: &str, body: Value) -> Result<u64> {
        let url = format!("http://{}{path}", self.control);
        let (status, bytes) = self.send(method, url, Some(body)).await?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match answer["revision"].as_u64() {
            Some(revision) if status < 300 => Ok(revision),
            _ => bail!("admin API answered {status}: {answer}"),
        }
    }

    /// The revision an LB has applied.
    async fn applied(&self, admin: SocketAddr) -> Result<u64> {
        let (_, bytes) = self
            .send(Method::GET, format!("http://{admin}/config/revision"), None)
            .await?;
        Ok(String::from_utf8_lossy(&bytes).trim().parse()?)
    }
}

impl PropagationArgs {
    pub(crate) fn run(&self) -> Result<()> {
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
        let api = Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            control: address_after(&control.ready, "listening http ")?,
            token: token.to_owned(),
        };
        let pool = format!("propagation-{}", std::process::id());
        runtime.block_on(async {
            api.write(
                Method::POST,
                "/v1/pools",
                json!({"name": pool, "algorithm": "round_robin"}),
            )
            .await?;
            api.write(
                Method::POST,
                &format!("/v1/pools/{pool}/backends"),
                json!({"address": "127.0.0.1:9", "weight": 1}),
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
        api: &Api,
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
                    json!({"weight": 1 + i % 10}),
                )
                .await?;
            for admin in admins {
                let deadline = started + self.pull_interval * 3 + Duration::from_secs(5);
                while api.applied(*admin).await? < revision {
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
