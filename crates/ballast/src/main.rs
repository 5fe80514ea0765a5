//! `ballast`: the one command line of the Ballast load-balancing system.
//!
//! Each subcommand lives in its own module under `commands/` and is a thin shell over a library
//! crate: parse the arguments, call the library, print plain text that other tools can parse.
//! Errors leave through `anyhow` with the context a user needs to fix the input.

#![forbid(unsafe_code)]

mod commands;

/// mimalloc's per-thread free lists suit the proxy's pattern of many small, short-lived
/// allocations per request on per-core threads; measured faster than the system allocator in
/// `ballast lb` (see the README's benchmark section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ballast: a fast, clear load balancer with its own control plane, DNS and locks.
#[derive(Debug, Parser)]
#[command(name = "ballast", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system on this machine: database, control, LB fleet, DNS, demo backends.
    Up(commands::up::UpArgs),
    /// Run one LB server: HTTP or TCP proxying to backends with a tunable algorithm.
    Lb(Box<commands::lb::LbArgs>),
    /// Run a demo backend that answers with its name, optionally slow or failing.
    Echo(commands::echo::EchoArgs),
    /// Run the admin API and the orchestrator: health checks, leader election, fleet watching, autoscaling.
    Control(commands::control::ControlArgs),
    /// Run the authoritative DNS server for the LB fleet: each pool's name answers with its LBs.
    Dns(commands::dns::DnsArgs),
    /// Create, list, show, delete pools and change their algorithm (through the admin API).
    Pool(commands::pool::PoolCommand),
    /// Add, remove, drain, enable, disable backends and set their weight (through the admin API).
    Backend(commands::backend::BackendCommand),
    /// Add, list, remove and move routes of route tables: by host, path, method, header (through the admin API).
    Route(commands::route::RouteCommand),
    /// List the LB servers that report to the configuration database (through the admin API).
    Fleet(commands::fleet::FleetCommand),
    /// Take, hold and inspect remote locks and Redlock from the shell.
    #[command(subcommand)]
    Lock(commands::lock::LockCommand),
    /// Consumers over an unprotected remote queue, with and without locks.
    #[command(subcommand)]
    Queue(ballast_bench::queue::QueueCommand),
    /// Explore the balancing algorithms: where keys go, how load spreads.
    #[command(subcommand)]
    Balance(commands::balance::BalanceCommand),
    /// Run the system across network namespaces, inject network faults, and check what holds.
    #[command(subcommand)]
    Lab(commands::lab::LabCommand),
    /// Run Ballast's benchmarks and print their tables.
    #[command(subcommand)]
    Bench(ballast_bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Up(args) => args.run(),
        Command::Lb(args) => args.run(),
        Command::Echo(args) => args.run(),
        Command::Control(args) => args.run(),
        Command::Dns(args) => args.run(),
        Command::Pool(command) => command.run(),
        Command::Backend(command) => command.run(),
        Command::Route(command) => command.run(),
        Command::Fleet(command) => command.run(),
        Command::Lock(command) => match command.run() {
            Ok(code) => return code,
            Err(error) => Err(error),
        },
        Command::Lab(command) => match command.run() {
            Ok(code) => return code,
            Err(error) => Err(error),
        },
        Command::Queue(command) => command.run(),
        Command::Balance(command) => command.run(),
        Command::Bench(command) => command.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `ballast balance simulate … | head` closes our stdout early: that is not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}
