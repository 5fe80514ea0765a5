//! The lab's network: one Linux bridge, and per host a network namespace joined to it by a veth
//! pair, with one address in 198.18.0.0/24. The bridge carries no address of its own, so the
//! machine's own namespace gains no route: the hosts reach each other and nothing else.
//!
//! Names carry the lab's id (`bl3fa2`, the bridge; `bl3fa2-lb-1`, a namespace; `bl3fa2h05`, a
//! veth end) so that several labs — a user's and a test's — never touch each other's parts.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::tool;

/// One host: a network namespace with one address on the lab's bridge.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// What the lab and its faults call it: `lb-1`, `backend-2`, `client`.
    pub name: String,
    /// The network namespace (`ip netns exec NETNS …` runs a command on the host).
    pub netns: String,
    pub address: Ipv4Addr,
    /// The veth end on the bridge, in the machine's own namespace.
    veth: String,
}

impl Host {
    /// The path that names the namespace, for `setns`.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }

    /// `PROGRAM` to run on this host (`ip netns exec NETNS PROGRAM`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(tool::path("ip"));
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }

    /// The processes running on this host (every process in its namespace).
    pub fn pids(&self) -> Vec<i32> {
        tool::run("ip", &["netns", "pids", &self.netns])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The bridge and the hosts on it.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    /// Four hex digits, fresh for each lab.
    pub id: String,
    bridge: String,
    pub hosts: Vec<Host>,
}

impl Network {
    /// An empty network with a fresh id; nothing exists until [`Network::create`].
    pub fn plan() -> Self {
        let id = format!("{:04x}", fastrand::u16(..));
        Self {
            bridge: format!("bl{id}"),
            id,
            hosts: Vec::new(),
        }
    }

    /// Adds a host to the plan at `address`.
    pub fn add(&mut self, name: &str, address: Ipv4Addr) {
        let index = self.hosts.len();
        self.hosts.push(Host {
            name: name.to_owned(),
            netns: format!("bl{}-{name}", self.id),
            address,
            veth: format!("bl{}h{index:02}", self.id),
        });
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!("no host `{name}` in the lab (it has {})", names.join(", "))
        })
    }

    /// Makes the bridge, the namespaces and their links. On a failure what was made is removed.
    pub fn create(&self) -> Result<()> {
        require_root_and_tools()?;
        let made = self.create_parts();
        if made.is_err() {
            self.remove();
        }
        made
    }

    fn create_parts(&self) -> Result<()> {
        tool::run("ip", &["link", "add", &self.bridge, "type", "bridge"])?;
        tool::run("ip", &["link", "set", &self.bridge, "up"])?;
        for host in &self.hosts {
            let ns = host.netns.as_str();
            tool::run("ip", &["netns", "add", ns])?;
            tool::run(
                "ip",
                &[
                    "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )?;
            tool::run("ip", &["link", "set", &host.veth, "master", &self.bridge])?;
            tool::run("ip", &["link", "set", &host.veth, "up"])?;
            let address = format!("{}/24", host.address);
            tool::run("ip", &["-n", ns, "addr", "add", &address, "dev", "eth0"])?;
            tool::run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
            tool::run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Ends every process on every host (SIGTERM, a few seconds, SIGKILL), then removes the
    /// namespaces (which takes their veth pairs) and the bridge. Parts already gone are skipped:
    /// this also cleans up after a lab that crashed halfway.
    pub fn remove(&self) {
        crate::process::end_all(self.hosts.iter().flat_map(Host::pids).collect());
        for host in &self.hosts {
            if std::path::Path::new(&host.netns_path()).exists()
                && let Err(error) = tool::run("ip", &["netns", "del", &host.netns])
            {
                tracing::warn!(%error, "removing a lab namespace");
            }
            // A veth whose namespace was never made, or survived it.
            let _ = tool::run("ip", &["link", "del", &host.veth]);
        }
        let _ = tool::run("ip", &["link", "del", &self.bridge]);
    }
}

/// The lab makes namespaces and links, which takes root (CAP_NET_ADMIN), and drives `ip`.
fn require_root_and_tools() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "ballast lab needs root (CAP_NET_ADMIN) to create network namespaces and links; \
             run it with sudo"
        );
    }
    if !tool::installed("ip") {
        bail!("ballast lab needs `ip` (Debian's iproute2 package)");
    }
    Ok(())
}
