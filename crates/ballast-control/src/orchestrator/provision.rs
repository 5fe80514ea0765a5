//! Provisioners: how the autoscaler adds and removes LB servers.
//!
//! - [`Local`] starts managed `ballast lb` processes on this machine, each on its own loopback
//!   address (127.0.0.11, .12, …) and the same port, and stops them with SIGTERM, which drains
//!   them: the LB reports `draining` (and leaves DNS), still accepts for its drain delay (while
//!   resolvers' caches expire), then closes its listeners, finishes its requests, reports
//!   `stopped`.
//!   They outlive a leadership term (and are drained when `ballast control` shuts down).
//! - [`Commands`] runs the user's scripts with the LB's name and address in the environment
//!   (`BALLAST_LB_NAME`, `BALLAST_LB_ADDRESS`): the way to drive a cloud CLI, systemd or
//!   Kubernetes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
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
    /// The provisioner is stopping every LB it started: it starts no more.
    #[error("stopping: no LB is started any more")]
    Stopping,
}

/// A boxed future, for the trait's async methods (kept object-safe so that provisioners can be
/// chosen at run time).
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProvisionError>> + Send + 'a>>;

/// Adds and removes LB servers: the one trait every provisioner implements.
pub trait Provision: Send + std::fmt::Debug {
    /// Starts one more LB server; returns its name.
    fn scale_up(&mut self) -> Pending<'_, String>;

    /// Stops the LB server `name` (it drains first); `false` if this provisioner cannot.
    fn scale_down<'a>(&'a mut self, name: &'a str) -> Pending<'a, bool>;

    /// The LB servers this provisioner may stop, newest first.
    fn removable(&self) -> Vec<String>;

    /// Drains every LB server it started and waits (at most `grace`) until they have stopped,
    /// for a clean shutdown (nothing by default). From then on it starts none: an autoscaler
    /// still running while its process stops must not leave a fresh LB behind.
    fn stop_all(&mut self, grace: std::time::Duration) -> Pending<'_, ()> {
        let _ = grace;
        Box::pin(async { Ok(()) })
    }
}

impl Provision for Local {
    fn scale_up(&mut self) -> Pending<'_, String> {
        let started = self.start();
        Box::pin(async move { started })
    }

    fn scale_down<'a>(&'a mut self, name: &'a str) -> Pending<'a, bool> {
        let stopped = self.stop(name);
        Box::pin(async move { Ok(stopped) })
    }

    fn removable(&self) -> Vec<String> {
        self.children.keys().rev().cloned().collect()
    }

    fn stop_all(&mut self, grace: std::time::Duration) -> Pending<'_, ()> {
        self.stopping = true;
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in &names {
            self.stop(name);
        }
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + grace;
            for (name, child) in &mut self.children {
                if tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(lb = %name, "LB still draining at shutdown; killed");
                    let _ = child.kill().await;
                }
            }
            self.children.clear();
            Ok(())
        })
    }
}

impl Provision for Commands {
    fn scale_up(&mut self) -> Pending<'_, String> {
        Box::pin(self.up())
    }

    fn scale_down<'a>(&'a mut self, name: &'a str) -> Pending<'a, bool> {
        Box::pin(async move { self.down(name).await.map(|()| true) })
    }

    fn removable(&self) -> Vec<String> {
        self.started.iter().rev().cloned().collect()
    }
}

/// Managed `ballast lb` processes on loopback addresses of this machine.
#[derive(Debug)]
pub struct Local {
    program: PathBuf,
    db: String,
    pools: Vec<String>,
    port: u16,
    drain_delay: std::time::Duration,
    log_dir: Option<PathBuf>,
    children: BTreeMap<String, Child>,
    stopping: bool,
}

impl Local {
    /// LBs of `program` (the `ballast` binary) on database `db`, each serving `pools` (one
    /// listener per pool, on `port`, `port + 1`, …), each still accepting for `drain_delay`
    /// after it is told to stop (while DNS drops it).
    pub fn new(
        program: PathBuf,
        db: String,
        pools: Vec<String>,
        port: u16,
        drain_delay: std::time::Duration,
    ) -> Self {
        Self {
            program,
            db,
            pools,
            port,
            drain_delay,
            log_dir: None,
            children: BTreeMap::new(),
            stopping: false,
        }
    }

    /// Each LB's output in a file of its own in `dir`, `lb-01.log` and so on (appended across
    /// restarts); otherwise it shares this process's standard error.
    pub fn with_log_dir(mut self, dir: PathBuf) -> Self {
        self.log_dir = Some(dir);
        self
    }

    /// The LB numbered `n`: its name and loopback address.
    fn slot(n: u8) -> (String, Ipv4Addr) {
        (format!("lb-{n:02}"), Ipv4Addr::new(127, 0, 0, 10 + n))
    }

    fn start(&mut self) -> Result<String, ProvisionError> {
        if self.stopping {
            return Err(ProvisionError::Stopping);
        }
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
        let drain_delay = format!("{}ms", self.drain_delay.as_millis());
        command
            .args(["--admin", &SocketAddr::from((ip, 0)).to_string()])
            .args(["--drain-delay", &drain_delay])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &self.log_dir {
            let path = dir.join(format!("{name}.log"));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| ProvisionError::Spawn {
                    what: format!("the log {}", path.display()),
                    source,
                })?;
            command.stderr(log);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// On shutdown the provisioner stops its LBs and starts no new one, whatever an autoscaler
    /// still running asks (a fresh LB started then outlived `ballast control`).
    #[tokio::test]
    async fn the_local_provisioner_starts_nothing_once_it_stops_all() {
        let mut local = Local::new(
            PathBuf::from("sleep"),
            "sqlite:///nonexistent".into(),
            Vec::new(),
            8080,
            std::time::Duration::ZERO,
        );
        // `sleep lb …` fails at once: enough to stand for a child here.
        assert_eq!(local.scale_up().await.expect("up"), "lb-01");
        local
            .stop_all(std::time::Duration::from_secs(5))
            .await
            .expect("stopped");
        assert!(local.removable().is_empty());
        let refused = local.scale_up().await.expect_err("stopping");
        assert!(matches!(refused, ProvisionError::Stopping), "{refused}");
    }

    #[tokio::test]
    async fn the_command_provisioner_runs_the_scripts_with_the_lbs_name_and_address() {
        let log = std::env::temp_dir().join(format!("ballast-provision-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let path = log.display();
        let mut commands: Box<dyn Provision> = Box::new(Commands::new(
            format!("echo up $BALLAST_LB_NAME $BALLAST_LB_ADDRESS >> {path}"),
            format!("echo down $BALLAST_LB_NAME >> {path}"),
        ));
        assert_eq!(commands.scale_up().await.expect("up"), "lb-01");
        assert_eq!(commands.scale_up().await.expect("up"), "lb-02");
        assert_eq!(commands.removable(), ["lb-02", "lb-01"]);
        assert!(commands.scale_down("lb-02").await.expect("down"));
        assert_eq!(commands.removable(), ["lb-01"]);
        let ran = std::fs::read_to_string(&log).expect("the scripts wrote");
        assert_eq!(
            ran,
            "up lb-01 127.0.0.11\nup lb-02 127.0.0.12\ndown lb-02\n"
        );

        let mut failing: Box<dyn Provision> =
            Box::new(Commands::new("exit 3".into(), "true".into()));
        let error = failing.scale_up().await.expect_err("the script failed");
        assert!(
            error.to_string().starts_with("`exit 3` exited with"),
            "{error}"
        );
        let _ = std::fs::remove_file(&log);
    }
}
