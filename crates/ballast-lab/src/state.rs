//! The lab's state file, `DIR/lab.json`: the network it made, how each host's processes were
//! started (so `fault restart` can start them again), and which process owns the lab. Commands
//! run later (`ballast lab fault`, `down`) read it; an `up` that finds the file of a lab whose
//! owner is gone removes that lab's leftovers first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::net::Network;

/// How to start one program on one host.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// The host's name.
    pub host: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// What its start prints when it is ready.
    pub ready: crate::process::Ready,
}

/// What `DIR/lab.json` holds.
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The process that runs the lab (`ballast lab up`, or a check).
    pub owner: u32,
    pub network: Network,
    pub launches: Vec<Launch>,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    /// The state in `dir`, if a lab left one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a lab's state", path.display()))
    }

    /// The state of the lab running in `dir`, or an error saying none runs there.
    pub fn running(dir: &Path) -> Result<Self> {
        match Self::read(dir)? {
            Some(state) => Ok(state),
            None => bail!(
                "no lab in {} (start one with `ballast lab up --dir {}`)",
                dir.display(),
                dir.display()
            ),
        }
    }

    /// Writes it whole (a new file renamed over the old, so a reader never sees half).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let fresh = dir.join("lab.json.new");
        let text = serde_json::to_string_pretty(self).context("encoding the lab's state")?;
        std::fs::write(&fresh, text).with_context(|| format!("writing {}", fresh.display()))?;
        std::fs::rename(&fresh, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Forgets the lab (once it is removed).
    pub fn clear(dir: &Path) -> Result<()> {
        match std::fs::remove_file(Self::path(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", Self::path(dir).display()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the process that runs the lab still does.
    pub fn owner_alive(&self) -> bool {
        i32::try_from(self.owner)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
    }

    /// The launches of `host`.
    pub fn launches_of<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Launch> + 'a {
        self.launches.iter().filter(move |l| l.host == host)
    }
}

/// Removes what a lab left in `dir` when its owner is gone (a crash, a `kill -9`); refuses when
/// it still runs. Returns whether there was anything to remove.
pub fn clean_stale(dir: &Path) -> Result<bool> {
    let Some(state) = State::read(dir)? else {
        return Ok(false);
    };
    if state.owner_alive() {
        bail!(
            "a lab already runs in {} (pid {}); stop it first, or use another --dir",
            dir.display(),
            state.owner
        );
    }
    state.network.remove();
    State::clear(dir)?;
    Ok(true)
}
