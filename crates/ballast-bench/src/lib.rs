//! Ballast's benchmarks, checkers and demonstrations as plain tables, without criterion, so that
//! a user can measure their own machine with the release binary alone (`ballast bench …`,
//! `ballast lock check`, `ballast queue demo`). The ones that drive a whole system start child `ballast` processes from the running
//! binary ([`harness`]) and talk to them through the one admin API client.

#![forbid(unsafe_code)]

use anyhow::Result;
use clap::Subcommand;

mod balance;
mod detect;
mod dns;
mod dns_peers;
pub mod harness;
mod lock;
pub mod lock_check;
mod propagation;
pub mod queue;
pub mod table;

pub use harness::find_program;

/// `ballast bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The balancing algorithms: pick cost, Maglev table build, balance and keys moved.
    Balance(balance::BalanceBenchArgs),
    /// How long a configuration change takes to reach every managed LB, push and pull-only.
    Propagation(propagation::PropagationArgs),
    /// Lock acquire + release: one Redis node against Redlock, in parallel and node after node.
    Lock(lock::LockBenchArgs),
    /// How fast a killed backend leaves every LB, and false positives on a jittery one.
    Detect(detect::DetectArgs),
    /// Answers/s and latency of `ballast dns` over UDP, beside Knot DNS and NSD where installed.
    Dns(dns::DnsBenchArgs),
}

impl BenchCommand {
    /// Runs the benchmark, printing its tables on stdout.
    pub fn run(self) -> Result<()> {
        match self {
            Self::Balance(args) => balance::run(&args),
            Self::Propagation(args) => args.run(),
            Self::Lock(args) => args.run(),
            Self::Detect(args) => args.run(),
            Self::Dns(args) => args.run(),
        }
    }
}
