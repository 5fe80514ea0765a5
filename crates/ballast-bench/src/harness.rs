//! What the benchmarks that drive a whole system share: child `ballast` processes started from
//! this same binary and killed when dropped, and a small client of the admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A child `ballast` process, killed when dropped.
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) ready: Vec<String>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ballast ARGS` and waits (at most 20 s) for its `lines` ready lines.
pub(crate) fn start(args: &[&str], lines: usize) -> Result<Started> {
    start_on(None, args, lines)
}

/// [`start`], on the CPUs `cpus` (a `taskset` list such as `1`) when given.
pub(crate) fn start_on(cpus: Option<&str>, args: &[&str], lines: usize) -> Result<Started> {
    let exe = std::env::current_exe().context("this binary's path")?;
    let mut child = command_on(cpus, exe)
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

/// A command for `program`, run on the CPUs `cpus` (through `taskset`) when given.
pub(crate) fn command_on(cpus: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", cpus]).arg(program);
            taskset
        }
        None => Command::new(program),
    }
}

pub(crate) fn address_after(lines: &[String], prefix: &str) -> Result<SocketAddr> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("no `{prefix}` line in {lines:?}"))
}

pub(crate) struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    control: SocketAddr,
    token: String,
}

impl Api {
    /// A client of the admin API at `control`, with `token`.
    pub(crate) fn new(control: SocketAddr, token: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            control,
            token: token.to_owned(),
        }
    }

    /// A GET of the API's JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("http://{}{path}", self.control);
        let (_, bytes) = self.send(Method::GET, url, None).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> Result<(u16, Bytes)> {
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

    pub(crate) async fn write(&self, method: Method, path: &str, body: Value) -> Result<u64> {
        let url = format!("http://{}{path}", self.control);
        let (status, bytes) = self.send(method, url, Some(body)).await?;
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        match answer["revision"].as_u64() {
            Some(revision) if status < 300 => Ok(revision),
            _ => bail!("admin API answered {status}: {answer}"),
        }
    }

    /// The revision an LB has applied.
    pub(crate) async fn applied(&self, admin: SocketAddr) -> Result<u64> {
        let (_, bytes) = self
            .send(Method::GET, format!("http://{admin}/config/revision"), None)
            .await?;
        Ok(String::from_utf8_lossy(&bytes).trim().parse()?)
    }
}
