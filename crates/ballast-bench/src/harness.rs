//! What the benchmarks that drive a whole system share: child `ballast` processes started from
//! the running binary and killed when dropped, and what they ask the admin API.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_control::client::Client;
use hyper::Method;

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

/// The configuration revision the LB with admin endpoint `admin` has applied.
pub(crate) async fn applied(api: &Client, admin: SocketAddr) -> Result<u64> {
    let (_, bytes) = api
        .send(
            Method::GET,
            &format!("http://{admin}/config/revision"),
            None,
        )
        .await?;
    Ok(String::from_utf8_lossy(&bytes).trim().parse()?)
}

/// A client of the admin API of the `ballast control` listening at `control`.
pub(crate) fn api(control: SocketAddr, token: &str) -> Client {
    Client::new(&format!("http://{control}"), Some(token))
}

/// `name` on the PATH, or else in the directories `also` (Debian puts servers such as Knot and
/// NSD in sbin directories a user's PATH may leave out).
pub fn find_program(name: &str, also: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also.iter().map(std::path::PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
