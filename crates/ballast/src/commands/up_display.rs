//! What `ballast up` shows while it starts and runs: a progress line per step and then one
//! compact status line kept current (`indicatif` on a terminal), or plain lines — each step,
//! each event and each change of status — when the output is a pipe or a file.

use std::time::Duration;

use ballast_config::{LbState, SqlStore};
use indicatif::{ProgressBar, ProgressStyle};

/// The display: on a terminal or plain.
pub(crate) struct Display {
    terminal: bool,
    status_bar: Option<ProgressBar>,
    last_plain: std::sync::Mutex<String>,
}

/// One step of the start, shown as running until it is done.
pub(crate) struct Step {
    what: String,
    bar: Option<ProgressBar>,
}

impl Display {
    pub(crate) fn new(terminal: bool) -> Self {
        let status_bar = terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner:.green} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Self {
            terminal,
            status_bar,
            last_plain: std::sync::Mutex::new(String::new()),
        }
    }

    /// A step starts.
    pub(crate) fn step(&self, what: &str) -> Step {
        let bar = self.terminal.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(format!("{what}…"));
            bar.enable_steady_tick(Duration::from_millis(80));
            bar
        });
        if !self.terminal {
            say(&format!("starting {what}"));
        }
        Step {
            what: what.to_owned(),
            bar,
        }
    }

    /// What is where, once everything runs.
    pub(crate) fn summary(&self, text: &str) {
        say(text);
    }

    /// Something happened (a child died, the shutdown began).
    pub(crate) fn event(&self, text: &str) {
        match &self.status_bar {
            Some(bar) => bar.println(text),
            None => say(text),
        }
    }

    /// The current status: in place on a terminal, as a line when it changed otherwise.
    pub(crate) fn status(&self, status: &Status) {
        let line = status.line();
        if let Some(bar) = &self.status_bar {
            bar.set_message(line);
            bar.tick();
            return;
        }
        let mut last = self.last_plain.lock().unwrap_or_else(|e| e.into_inner());
        if *last != line {
            say(&format!("status: {line}"));
            *last = line;
        }
    }
}

impl Step {
    pub(crate) fn done(self, detail: &str) {
        let line = format!("✔ {}: {detail}", self.what);
        match self.bar {
            Some(bar) => bar.finish_with_message(line),
            None => say(&line),
        }
    }

    pub(crate) fn failed(self, why: &str) {
        let line = format!("✘ {}: {why}", self.what);
        match self.bar {
            Some(bar) => bar.abandon_with_message(line),
            None => say(&line),
        }
    }
}

/// The system at a glance, from the configuration database.
#[derive(Debug, PartialEq)]
pub(crate) struct Status {
    revision: u64,
    lbs_serving: usize,
    lbs_draining: usize,
    backends_up: usize,
    backends: usize,
    algorithms: Vec<String>,
}

impl Status {
    pub(crate) async fn read(store: &SqlStore) -> Result<Self, ballast_config::StoreError> {
        let config = store.config().await?;
        let fleet = store.lb_servers().await?;
        Ok(Self {
            revision: config.revision,
            lbs_serving: fleet.iter().filter(|lb| lb.is_live()).count(),
            lbs_draining: fleet
                .iter()
                .filter(|lb| lb.state == LbState::Draining)
                .count(),
            backends_up: config
                .pools
                .iter()
                .flat_map(|pool| &pool.backends)
                .filter(|backend| backend.takes_traffic())
                .count(),
            backends: config.pools.iter().map(|pool| pool.backends.len()).sum(),
            algorithms: config
                .pools
                .iter()
                .map(|pool| format!("{} {}", pool.spec.name, pool.spec.algorithm.algorithm))
                .collect(),
        })
    }

    fn line(&self) -> String {
        let draining = match self.lbs_draining {
            0 => String::new(),
            n => format!(" ({n} draining)"),
        };
        format!(
            "revision {} · LBs serving {}{draining} · backends taking traffic {}/{} · {}",
            self.revision,
            self.lbs_serving,
            self.backends_up,
            self.backends,
            self.algorithms.join(", ")
        )
    }
}

/// A line on stdout. A supervisor must not die because whoever read its output went away, so
/// a failed write is dropped (where `println!` would panic).
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
