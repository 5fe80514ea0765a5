//! Provisioners: how the autoscaler adds and removes LB servers.
//!
//! - [`Local`] starts managed `ballast lb` processes on this machine, each on its own loopback
//!   address (127.0.0.11, .12, …) and the same port, and stops them with SIGTERM, which drains
//!   them: the LB reports `draining` (and leaves DNS), finishes its requests, reports `stopped`.
//!   They outlive a leadership term (and are drained when `ballast control` shuts down).
//! - [`Commands`] runs the user's scripts with the LB's name and address in the environment
//!   (`BALLAST_LB_NAME`, `BALLAST_LB_ADDRESS`): the way to drive a cloud CLI, systemd or
//!   Kubernetes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// Why a provisioner could not act.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A process could not be started.
    #[error("{what}: {source}")]
    Spawn {
        /// What was being started.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A script failed.
    #[error("`{command}` exited with {status}")]
    Script {
        /// The script.
        command: String,
        /// Its status.
        status: std::process::ExitStatus,
    },
    /// Every loopback address the local provisioner uses is taken.
    #[error("no loopback address left for another LB")]
    Full,
}

/// Adds and removes LB servers.
#[derive(Debug)]
pub enum Provisioner {
    /// `ballast lb` processes on this machine.
    Local(Local),
    /// The user's scripts.
    Commands(Commands),
}

impl Provisioner {
    /// Starts one more LB server; returns its name.
    pub async fn scale_up(&mut self) -> Result<String, ProvisionError> {
        match self {
            Self::Local(local) => local.start(),
            Self::Commands(commands) => commands.up().await,
        }
    }

    /// Stops the LB server `name` (it drains first), if this provisioner can.
    pub async fn scale_down(&mut self, name: &str) -> Result<bool, ProvisionError> {
        match self {
            Self::Local(local) => Ok(local.stop(name)),
            Self::Commands(commands) => commands.down(name).await.map(|()| true),
        }
    }

    /// Drains every LB server this provisioner started (SIGTERM to the local ones; the scripts'
    /// LBs are left as they are), for a clean shutdown.
    pub fn stop_all(&mut self) {
        if let Self::Local(local) = self {
            let names: Vec<String> = local.children.keys().cloned().collect();
            for name in names {
                local.stop(&name);
            }
        }
    }

    /// The LB servers this provisioner may stop, newest first.
    pub fn removable(&self) -> Vec<String> {
        match self {
            Self::Local(local) => local.children.keys().rev().cloned().collect(),
            Self::Commands(commands) => commands.started.iter().rev().cloned().collect(),
        }
    }
}

/// Managed `ballast lb` processes on loopback addresses of this machine.
#[derive(Debug)]
pub struct Local {
    program: PathBuf,
    db: String,
    pools: Vec<String>,
    port: u16,
    children: BTreeMap<String, Child>,
}

impl Local {
    /// LBs of `program` (the `ballast` binary) on database `db`, each serving `pools` (one
    /// listener per pool, on `port`, `port + 1`, …).
    pub fn new(program: PathBuf, db: String, pools: Vec<String>, port: u16) -> Self {
        Self {
            program,
            db,
            pools,
            port,
            children: BTreeMap::new(),
        }
    }

    /// The LB numbered `n`: its name and loopback address.
    fn slot(n: u8) -> (String, Ipv4Addr) {
        (format!("lb-{n:02}"), Ipv4Addr::new(127, 0, 0, 10 + n))
    }

    fn start(&mut self) -> Result<String, ProvisionError> {
        // Reap the children that already exited (stopped), freeing their slots.
        self.children
            .retain(|_, child| matches!(child.try_wait(), Ok(None)));
        let (name, ip) = (1..=200)
            .map(Self::slot)
            .find(|(name, _)| !self.children.contains_key(name))
            .ok_or(ProvisionError::Full)?;
        let mut command = Command::new(&self.program);
        command.args(["lb", "--db", &self.db, "--name", &name]);
        for (i, pool) in self.pools.iter().enumerate() {
            let listen = SocketAddr::from((ip, self.port.saturating_add(i as u16)));
            command.args(["--listen", &listen.to_string(), "--pool", pool]);
        }
        command
            .args(["--admin", &SocketAddr::from((ip, 0)).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let child = command.spawn().map_err(|source| ProvisionError::Spawn {
            what: format!("ballast lb {name}"),
            source,
        })?;
        self.children.insert(name.clone(), child);
        Ok(name)
    }

    fn stop(&mut self, name: &str) -> bool {
        let Some(child) = self.children.get(name) else {
            return false;
        };
        if let Some(pid) = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        // The child stays in the map until it has exited, so its slot is not reused meanwhile.
        true
    }
}

/// The user's scale-up and scale-down scripts.
#[derive(Debug)]
pub struct Commands {
    up: String,
    down: String,
    started: Vec<String>,
    next: u32,
}

impl Commands {
    /// Runs `up` (and `down`) with `sh -c`.
    pub fn new(up: String, down: String) -> Self {
        Self {
            up,
            down,
            started: Vec::new(),
            next: 1,
        }
    }

    async fn up(&mut self) -> Result<String, ProvisionError> {
        let n = self.next;
        self.next += 1;
        let name = format!("lb-{n:02}");
        let address = format!("127.0.0.{}", 10 + n);
        run(&self.up, &name, &address).await?;
        self.started.push(name.clone());
        Ok(name)
    }

    async fn down(&mut self, name: &str) -> Result<(), ProvisionError> {
        run(&self.down, name, "").await?;
        self.started.retain(|n| n != name);
        Ok(())
    }
}

async fn run(command: &str, name: &str, address: &str) -> Result<(), ProvisionError> {
    let status = Command::new("sh")
        .args(["-c", command])
        .env("BALLAST_LB_NAME", name)
        .env("BALLAST_LB_ADDRESS", address)
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|source| ProvisionError::Spawn {
            what: command.to_owned(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ProvisionError::Script {
            command: command.to_owned(),
            status,
        })
    }
}
