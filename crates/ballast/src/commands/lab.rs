//! `ballast lab`: Ballast across network namespaces on this machine (see `ballast_lab`).
//! `up` runs a lab in the foreground until Ctrl-C; `fault` injects faults into it from another
//! terminal; `exec` runs a command on one of its hosts; `check` runs a scenario in a lab of its
//! own and prints its verdict table, exiting 1 when a claim does not hold; `down` removes a lab,
//! also one whose `up` crashed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_lab::state::{self, State};
use ballast_lab::{Db, Lab, Shape, fault, scenario};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum LabCommand {
    /// Start the system across namespaces (one host per part) and run until Ctrl-C.
    Up(UpArgs),
    /// Stop a lab's processes and remove its namespaces and links.
    Down(DirArg),
    /// Show a lab's hosts, their addresses and what runs on them.
    Status(DirArg),
    /// Run a command on a host (e.g. `ballast lab exec client -- curl http://198.18.0.51:8080/`);
    /// BALLAST_CONTROL and BALLAST_TOKEN are set for `ballast pool …`.
    Exec(ExecArgs),
    /// Inject a fault into a running lab.
    #[command(subcommand)]
    Fault(FaultCommand),
    /// Run a scenario in a lab of its own and print its verdict table.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// The lab's directory: its state, database, logs.
    #[arg(long, value_name = "DIR", default_value = ".ballast-lab")]
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    dir: DirArg,
    /// LB servers, each on its own host.
    #[arg(long, value_name = "N", default_value_t = 3)]
    lbs: u8,
    /// Demo backends (`ballast echo`), each on its own host.
    #[arg(long, value_name = "N", default_value_t = 3)]
    backends: u8,
    /// `ballast control` instances (one leads).
    #[arg(long, value_name = "N", default_value_t = 2)]
    controls: u8,
    /// Redis nodes for the leader election (Redlock), each on its own host; 0: the database
    /// lease.
    #[arg(long, value_name = "N", default_value_t = 5)]
    redis: u8,
    /// The configuration database: `sqlite` (a file every host opens) or `postgres` (a
    /// PostgreSQL server on a host of its own, `db`, which faults can cut off).
    #[arg(long, value_name = "sqlite|postgres", default_value = "sqlite")]
    db: Db,
}

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The host: `client`, `lb-1`, `backend-2`, …
    host: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FaultCommand {
    /// Cut these hosts off from all the others: packets dropped both ways, no reset.
    Partition {
        #[command(flatten)]
        dir: DirArg,
        #[arg(required = true)]
        hosts: Vec<String>,
        /// One way only: drop what this host sends to the others named.
        #[arg(long, value_name = "HOST", conflicts_with = "against")]
        from: Option<String>,
        /// Cut them off from these hosts only (e.g. `partition lb-1 --against db`).
        #[arg(long, value_name = "HOST", num_args = 1..)]
        against: Vec<String>,
    },
    /// Remove every network fault (from the hosts named, or all).
    Heal {
        #[command(flatten)]
        dir: DirArg,
        hosts: Vec<String>,
    },
    /// Drop a share of the packets a host sends and receives, at random.
    Loss {
        #[command(flatten)]
        dir: DirArg,
        host: String,
        /// A percentage, e.g. `10%`.
        percent: String,
    },
    /// Hold every packet a host sends (tc netem).
    Delay {
        #[command(flatten)]
        dir: DirArg,
        host: String,
        #[arg(value_parser = humantime::parse_duration)]
        delay: Duration,
        #[arg(long, value_parser = humantime::parse_duration)]
        jitter: Option<Duration>,
    },
    /// Stop a host's processes where they stand (SIGSTOP).
    Pause(HostArg),
    /// Continue a paused host (SIGCONT).
    Resume(HostArg),
    /// End a host's processes at once (SIGKILL).
    Kill(HostArg),
    /// Start a killed host's processes again.
    Restart(HostArg),
}

#[derive(Debug, Args)]
pub(crate) struct HostArg {
    #[command(flatten)]
    dir: DirArg,
    host: String,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The scenario.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(scenario::NAMES))]
    scenario: String,
    /// Run the scenario's deliberately broken variant, to see its checker fail
    /// (leader-partition: controls that keep leading after losing their lease).
    #[arg(long)]
    broken: bool,
}

impl LabCommand {
    pub(crate) fn run(self) -> Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        let program = std::env::current_exe().context("this binary's path")?;
        match self {
            Self::Up(args) => runtime.block_on(up(args, program))?,
            Self::Down(DirArg { dir }) => down(&dir)?,
            Self::Status(DirArg { dir }) => status(&dir)?,
            Self::Exec(args) => return exec(args),
            Self::Fault(command) => command.run()?,
            Self::Check(args) => {
                let step = |line: &str| eprintln!("lab: {line}");
                let outcome = runtime.block_on(scenario::run(
                    &args.scenario,
                    args.broken,
                    &args.dir.dir,
                    &program,
                    &step,
                ))?;
                outcome.write(&mut std::io::stdout().lock())?;
                if !outcome.passed() {
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn up(args: UpArgs, program: PathBuf) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shape = Shape {
        lbs: args.lbs,
        backends: args.backends,
        controls: args.controls,
        redis: args.redis,
        db: args.db,
        leaders_ignore_lease_loss: false,
    };
    let step = |line: &str| println!("lab: {line}");
    let lab = Lab::up(&args.dir.dir, shape, &program, &step).await?;
    println!("\nThe lab is up. Hosts:\n{}", lab.summary().join("\n"));
    println!(
        "\nTry:\n  ballast lab exec client -- curl -s http://198.18.0.51:8080/\n  \
         ballast lab fault partition backend-1\n  ballast lab fault heal\n  \
         ballast lab exec client -- ballast pool show demo\n\nCtrl-C removes the lab."
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("lab: removing every process, namespace and link");
    lab.down();
    Ok(())
}

/// Stops the lab in `dir`: asks a running `up` to remove it (and waits), or removes what a
/// crashed one left.
fn down(dir: &std::path::Path) -> Result<()> {
    let Some(state) = State::read(dir)? else {
        println!("no lab in {}", dir.display());
        return Ok(());
    };
    if state.owner_alive() {
        let owner = i32::try_from(state.owner)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("the lab's pid")?;
        rustix::process::kill_process(owner, rustix::process::Signal::TERM)
            .context("stopping the lab's process")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while State::read(dir)?.is_some() {
            if std::time::Instant::now() > deadline {
                bail!("the lab (pid {}) did not stop in 60 s", state.owner);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        state::clean_stale(dir)?;
    }
    println!("lab removed");
    Ok(())
}

fn status(dir: &std::path::Path) -> Result<()> {
    let state = State::running(dir)?;
    let alive = if state.owner_alive() {
        "runs"
    } else {
        "crashed (`ballast lab down` cleans it)"
    };
    println!(
        "lab bl{} in {}: {alive} (pid {})",
        state.network.id,
        dir.display(),
        state.owner
    );
    for host in &state.network.hosts {
        println!(
            "  {:<12} {:<15} {} processes",
            host.name,
            host.address,
            host.pids().len()
        );
    }
    Ok(())
}

fn exec(args: ExecArgs) -> Result<ExitCode> {
    let state = State::running(&args.dir.dir)?;
    let host = state.network.host(&args.host)?;
    let status = ballast_lab::process::user_command(&args.dir.dir, &state, host, &args.command)?
        .status()
        .context("running the command on the host")?;
    Ok(ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

impl FaultCommand {
    fn run(self) -> Result<()> {
        let dir = match &self {
            Self::Partition { dir, .. }
            | Self::Heal { dir, .. }
            | Self::Loss { dir, .. }
            | Self::Delay { dir, .. } => dir.dir.clone(),
            Self::Pause(a) | Self::Resume(a) | Self::Kill(a) | Self::Restart(a) => {
                a.dir.dir.clone()
            }
        };
        let state = State::running(&dir)?;
        let network = &state.network;
        let hosts = |names: &[String]| -> Result<Vec<&ballast_lab::Host>> {
            names.iter().map(|n| network.host(n)).collect()
        };
        match &self {
            Self::Partition {
                hosts: names,
                from,
                against,
                ..
            } => match from {
                Some(from) => fault::partition_one_way(network.host(from)?, &hosts(names)?)?,
                None if against.is_empty() => fault::partition(network, &hosts(names)?)?,
                None => fault::cut(&hosts(names)?, &hosts(against)?)?,
            },
            Self::Heal { hosts: names, .. } if names.is_empty() => {
                fault::heal(&network.hosts.iter().collect::<Vec<_>>())?;
            }
            Self::Heal { hosts: names, .. } => fault::heal(&hosts(names)?)?,
            Self::Loss { host, percent, .. } => {
                let value: u8 = percent
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|p| (1..=100).contains(p))
                    .with_context(|| format!("`{percent}`: a percentage from 1% to 100%"))?;
                fault::loss(network.host(host)?, value)?;
            }
            Self::Delay {
                host,
                delay,
                jitter,
                ..
            } => {
                let ms = |d: &Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
                fault::delay(
                    network.host(host)?,
                    ms(delay),
                    jitter.as_ref().map_or(0, ms),
                )?;
            }
            Self::Pause(a) => fault::pause(network.host(&a.host)?)?,
            Self::Resume(a) => fault::resume(network.host(&a.host)?)?,
            Self::Kill(a) => fault::kill(network.host(&a.host)?)?,
            Self::Restart(a) => {
                for line in fault::restart(&state, network.host(&a.host)?, &dir.join("logs"))? {
                    println!("{line}");
                }
            }
        }
        Ok(())
    }
}
