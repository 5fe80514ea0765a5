//! `--algorithm NAME` and its tuning flags, shared by every command that builds a picker.

use std::time::Duration;

use anyhow::Result;
use ballast_balance::{ALGORITHM_NAMES, Algorithm, BuildError, Parameters};
use clap::Args;

/// The algorithm and its parameters as flags.
#[derive(Debug, Clone, Args)]
pub(crate) struct AlgorithmArgs {
    /// The balancing algorithm: round_robin, weighted_round_robin, least_connections,
    /// least_request, random, maglev, ring_hash or bounded_load.
    #[arg(long, value_name = "NAME", default_value = "round_robin", value_parser = parse_name)]
    pub(crate) algorithm: String,
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

fn parse_name(name: &str) -> Result<String, String> {
    if ALGORITHM_NAMES.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "unknown algorithm; expected one of {}",
            ALGORITHM_NAMES.join(", ")
        ))
    }
}

impl AlgorithmArgs {
    /// The parameters as the library takes them.
    pub(crate) fn parameters(&self) -> Parameters {
        Parameters {
            table_size: self.table_size,
            points_per_weight: self.points_per_weight,
            load_factor: self.load_factor,
            peak_ewma: self.peak_ewma,
        }
    }

    /// The algorithm with every given parameter applied; a flag that the algorithm does not take
    /// is an error naming the flag.
    pub(crate) fn algorithm(&self) -> Result<Algorithm> {
        Algorithm::with_parameters(&self.algorithm, &self.parameters()).map_err(|error| match error
        {
            BuildError::InvalidParameter { field, .. } => anyhow::anyhow!(
                "--{} does not apply to --algorithm {}",
                field.replace('_', "-"),
                self.algorithm
            ),
            other => other.into(),
        })
    }

    /// The algorithm as the configuration's model holds it (and the admin API takes it).
    pub(crate) fn spec(&self) -> ballast_config::AlgorithmSpec {
        let parameters = self.parameters();
        ballast_config::AlgorithmSpec {
            algorithm: self.algorithm.clone(),
            table_size: parameters.table_size,
            points_per_weight: parameters.points_per_weight,
            load_factor: parameters.load_factor,
            peak_ewma_ms: parameters
                .peak_ewma
                .map(|decay| u64::try_from(decay.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// `algorithm` with the parameters given on the command line that it takes.
    pub(crate) fn fill(&self, algorithm: Algorithm) -> Algorithm {
        algorithm.fill(&self.parameters())
    }
}
