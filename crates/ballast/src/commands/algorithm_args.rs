//! `--algorithm NAME` and its tuning flags, shared by every command that builds a picker.

use std::time::Duration;

use anyhow::{Result, bail};
use ballast_balance::{ALGORITHM_NAMES, Algorithm};
use clap::Args;

/// The algorithm and its parameters as flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct AlgorithmArgs {
    /// The balancing algorithm: round_robin, weighted_round_robin, least_connections,
    /// least_request, random, maglev, ring_hash or bounded_load.
    #[arg(long, value_name = "NAME", default_value = "round_robin", value_parser = parse_algorithm)]
    pub(crate) algorithm: Algorithm,
    /// maglev: lookup table size M, a prime at least the number of backends [default: 65537].
    #[arg(long, value_name = "M")]
    pub(crate) table_size: Option<u32>,
    /// ring_hash, bounded_load: ring points per unit of weight [default: 160].
    #[arg(long, value_name = "N")]
    pub(crate) points_per_weight: Option<u32>,
    /// bounded_load: load factor c > 1; no backend takes over c × its share [default: 1.25].
    #[arg(long, value_name = "C")]
    pub(crate) load_factor: Option<f64>,
    /// least_request: weigh in-flight requests by peak-EWMA latency decaying over DECAY (e.g. 10s).
    #[arg(long, value_name = "DECAY", value_parser = humantime::parse_duration)]
    pub(crate) peak_ewma: Option<Duration>,
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    name.parse::<Algorithm>().map_err(|_| {
        format!(
            "unknown algorithm; expected one of {}",
            ALGORITHM_NAMES.join(", ")
        )
    })
}

impl AlgorithmArgs {
    /// The algorithm with every given parameter applied; a parameter that the algorithm does not
    /// take is an error rather than silently ignored.
    pub(crate) fn algorithm(&self) -> Result<Algorithm> {
        let name = self.algorithm.name();
        for (flag, given) in [
            ("--table-size", self.table_size.is_some()),
            ("--points-per-weight", self.points_per_weight.is_some()),
            ("--load-factor", self.load_factor.is_some()),
            ("--peak-ewma", self.peak_ewma.is_some()),
        ] {
            if given && !flag_applies(flag, name) {
                bail!("{flag} does not apply to --algorithm {name}");
            }
        }
        Ok(self.fill(self.algorithm.clone()))
    }

    /// `algorithm` with the parameters given on the command line that it takes; the others are
    /// left out, for commands that run every algorithm on one set of flags.
    pub(crate) fn fill(&self, mut algorithm: Algorithm) -> Algorithm {
        match &mut algorithm {
            Algorithm::Maglev { table_size } => {
                *table_size = self.table_size.unwrap_or(*table_size);
            }
            Algorithm::RingHash { points_per_weight } => {
                *points_per_weight = self.points_per_weight.unwrap_or(*points_per_weight);
            }
            Algorithm::BoundedLoad {
                load_factor,
                points_per_weight,
            } => {
                *load_factor = self.load_factor.unwrap_or(*load_factor);
                *points_per_weight = self.points_per_weight.unwrap_or(*points_per_weight);
            }
            Algorithm::LeastRequest { peak_ewma } => {
                *peak_ewma = self.peak_ewma.or(*peak_ewma);
            }
            Algorithm::RoundRobin
            | Algorithm::WeightedRoundRobin
            | Algorithm::LeastConnections
            | Algorithm::Random => {}
        }
        algorithm
    }
}

fn flag_applies(flag: &str, algorithm: &str) -> bool {
    match flag {
        "--table-size" => algorithm == "maglev",
        "--points-per-weight" => matches!(algorithm, "ring_hash" | "bounded_load"),
        "--load-factor" => algorithm == "bounded_load",
        "--peak-ewma" => algorithm == "least_request",
        _ => false,
    }
}
