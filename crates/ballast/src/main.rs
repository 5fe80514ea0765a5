//! `ballast`: the one command line of the Ballast load-balancing system.
//!
//! Each subcommand lives in its own module under `commands/` and is a thin shell over a library
//! crate: parse the arguments, call the library, print plain text that other tools can parse.
//! Errors leave through `anyhow` with the context a user needs to fix the input.

#![forbid(unsafe_code)]

mod commands;

use std::io;
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
    /// Explore the balancing algorithms: where keys go, how load spreads.
    #[command(subcommand)]
    Balance(commands::balance::BalanceCommand),
    /// Run Ballast's benchmarks and print their tables.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
