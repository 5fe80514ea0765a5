//! Redis nodes this process starts and owns, on loopback ports in a directory of its own: for
//! the safety checker, which crashes and restarts them, and for `ballast up`. Each node persists
//! every write to its append-only file before answering (`appendfsync always`), so that a node
//! restarted after a crash remembers the locks it granted, as Redlock requires. Nodes are killed
//! when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// One `redis-server` child process.
#[derive(Debug)]
pub struct LocalNode {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// Why a node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalNodeError {
    /// `redis-server` could not be run.
    #[error("cannot run redis-server (is it installed and on the PATH?): {0}")]
    Spawn(std::io::Error),
    /// It ran but did not listen in time.
    #[error("redis-server on port {port} did not start; see {log}")]
    NotListening {
        /// Its port.
        port: u16,
        /// Its log file.
        log: String,
    },
    /// The directory could not be made.
    #[error("{path}: {source}")]
    Directory {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl LocalNode {
    /// Starts a node in `dir` (created if needed) on a free loopback port.
    pub async fn start(dir: &Path) -> Result<Self, LocalNodeError> {
        std::fs::create_dir_all(dir).map_err(|source| LocalNodeError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(LocalNodeError::Spawn)?
            .port();
        let mut node = Self {
            port,
            dir: dir.to_owned(),
            child: None,
        };
        node.restart().await?;
        Ok(node)
    }

    /// Its address.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address())
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether it runs: false once it has exited or was killed.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Moves the fencing counter of the lock `name` to `ahead` past this node's clock (in the
    /// clock-based token's microseconds), as after a spell with a fast clock: the checker's fault
    /// for nodes whose counters disagree. Answers the counter set.
    pub async fn skew_fence(&self, name: &str, ahead: Duration) -> Result<u64, redis::RedisError> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await?;
        let counter = seconds * 1_000_000 + micros + ahead.as_micros() as u64;
        let () = redis::cmd("SET")
            .arg(crate::manager::fence_key(name))
            .arg(counter)
            .query_async(&mut connection)
            .await?;
        Ok(counter)
    }

    /// Kills it at once (SIGKILL, as a crash) and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it (again) on the same port with the same data, and waits until it listens.
    pub async fn restart(&mut self) -> Result<(), LocalNodeError> {
        self.kill().await;
        let log = self.dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", &log.display().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(LocalNodeError::Spawn)?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.address()).is_err() {
            if Instant::now() > deadline {
                return Err(LocalNodeError::NotListening {
                    port: self.port,
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}
