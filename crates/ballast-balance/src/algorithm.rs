//! Which algorithm a pool uses, with its tunable parameters, and its name on the command line
//! and in configuration files.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::BuildError;

/// Every algorithm name, as users write it.
pub const ALGORITHM_NAMES: [&str; 8] = [
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "least_request",
    "random",
    "maglev",
    "ring_hash",
    "bounded_load",
];

/// A balancing algorithm and its parameters. [`FromStr`] takes a name from [`ALGORITHM_NAMES`]
/// and gives the algorithm with its default parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    /// Strict rotation over the backends that take traffic, ignoring weights.
    RoundRobin,
    /// Smooth weighted round robin, nginx's sequence, precomputed per cycle.
    WeightedRoundRobin,
    /// Fewest in-flight requests relative to weight, scanning every backend.
    LeastConnections,
    /// The better of two random choices by in-flight requests (Envoy's default).
    LeastRequest {
        /// With `Some(decay)`, the cost is peak-EWMA latency × (in-flight + 1), decaying with
        /// this time constant, instead of in-flight alone.
        peak_ewma: Option<Duration>,
    },
    /// Weighted random (uniform when the weights are equal).
    Random,
    /// Maglev consistent hashing (Eisenbud et al., NSDI 2016).
    Maglev {
        /// Lookup table size M; a prime no smaller than the number of backends.
        table_size: u32,
    },
    /// Ketama-style consistent hashing ring.
    RingHash {
        /// Ring points per unit of weight: a backend of weight w places `w × points_per_weight`.
        points_per_weight: u32,
    },
    /// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2017).
    BoundedLoad {
        /// c > 1: no backend takes more than ceil(c × its weighted share of the load).
        load_factor: f64,
        /// Ring points per unit of weight, as for `ring_hash`.
        points_per_weight: u32,
    },
}

impl Algorithm {
    /// The paper's recommended size class: a prime well above 100 × backends for small pools.
    pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
    /// Ketama's classic 160 points per server (of weight 1).
    pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 160;
    /// The load factor that Mirrokni et al. and HAProxy recommend.
    pub const DEFAULT_LOAD_FACTOR: f64 = 1.25;
    /// Decay of the peak-EWMA latency estimate when enabled (Finagle's default).
    pub const DEFAULT_PEAK_EWMA_DECAY: Duration = Duration::from_secs(10);

    /// Maglev with the default table size.
    pub fn maglev() -> Self {
        Self::Maglev {
            table_size: Self::DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }

    /// The name users write for this algorithm.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConnections => "least_connections",
            Self::LeastRequest { .. } => "least_request",
            Self::Random => "random",
            Self::Maglev { .. } => "maglev",
            Self::RingHash { .. } => "ring_hash",
            Self::BoundedLoad { .. } => "bounded_load",
        }
    }

    /// Whether picks depend on the request's key (so the caller must compute one).
    pub fn uses_key(&self) -> bool {
        matches!(
            self,
            Self::Maglev { .. } | Self::RingHash { .. } | Self::BoundedLoad { .. }
        )
    }

    /// Whether a backend's share follows its weight pick by pick, so that a lower weight for a
    /// while ramps it up (slow start): not plain rotation, which ignores weights, nor the
    /// hash-based algorithms, whose keys must keep their backends.
    pub fn ramps_by_weight(&self) -> bool {
        matches!(
            self,
            Self::WeightedRoundRobin
                | Self::LeastConnections
                | Self::LeastRequest { .. }
                | Self::Random
        )
    }

    /// Whether picks depend on in-flight counts (so the caller must count requests with
    /// [`crate::Load::start`]).
    pub fn uses_load(&self) -> bool {
        matches!(
            self,
            Self::LeastConnections | Self::LeastRequest { .. } | Self::BoundedLoad { .. }
        )
    }
}

/// An algorithm's tunable parameters as users give them (flags, configuration files): each is
/// optional and falls back to its default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parameters {
    /// `maglev`: the lookup table size.
    pub table_size: Option<u32>,
    /// `ring_hash`, `bounded_load`: ring points per unit of weight.
    pub points_per_weight: Option<u32>,
    /// `bounded_load`: the load factor c.
    pub load_factor: Option<f64>,
    /// `least_request`: enable peak-EWMA with this decay.
    pub peak_ewma: Option<Duration>,
}

impl Parameters {
    /// The parameter names that are set, with whether `algorithm` takes them.
    fn given(&self, algorithm: &str) -> [(&'static str, bool, bool); 4] {
        [
            (
                "table_size",
                self.table_size.is_some(),
                algorithm == "maglev",
            ),
            (
                "points_per_weight",
                self.points_per_weight.is_some(),
                matches!(algorithm, "ring_hash" | "bounded_load"),
            ),
            (
                "load_factor",
                self.load_factor.is_some(),
                algorithm == "bounded_load",
            ),
            (
                "peak_ewma",
                self.peak_ewma.is_some(),
                algorithm == "least_request",
            ),
        ]
    }
}

impl Algorithm {
    /// The algorithm called `name` with `parameters` applied. A parameter the algorithm does not
    /// take is an error naming it, rather than silently ignored.
    pub fn with_parameters(name: &str, parameters: &Parameters) -> Result<Self, BuildError> {
        let algorithm: Self = name.parse()?;
        for (field, given, applies) in parameters.given(name) {
            if given && !applies {
                return Err(BuildError::InvalidParameter {
                    field,
                    reason: format!("does not apply to algorithm {name}"),
                });
            }
        }
        Ok(algorithm.fill(parameters))
    }

    /// This algorithm with those of `parameters` that it takes; the others are ignored, for runs
    /// of every algorithm on one set of parameters.
    #[must_use]
    pub fn fill(mut self, parameters: &Parameters) -> Self {
        match &mut self {
            Self::Maglev { table_size } => {
                *table_size = parameters.table_size.unwrap_or(*table_size);
            }
            Self::RingHash { points_per_weight } => {
                *points_per_weight = parameters.points_per_weight.unwrap_or(*points_per_weight);
            }
            Self::BoundedLoad {
                load_factor,
                points_per_weight,
            } => {
                *load_factor = parameters.load_factor.unwrap_or(*load_factor);
                *points_per_weight = parameters.points_per_weight.unwrap_or(*points_per_weight);
            }
            Self::LeastRequest { peak_ewma } => *peak_ewma = parameters.peak_ewma.or(*peak_ewma),
            Self::RoundRobin | Self::WeightedRoundRobin | Self::LeastConnections | Self::Random => {
            }
        }
        self
    }
}

impl FromStr for Algorithm {
    type Err = BuildError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Ok(match name {
            "round_robin" => Self::RoundRobin,
            "weighted_round_robin" => Self::WeightedRoundRobin,
            "least_connections" => Self::LeastConnections,
            "least_request" => Self::LeastRequest { peak_ewma: None },
            "random" => Self::Random,
            "maglev" => Self::maglev(),
            "ring_hash" => Self::RingHash {
                points_per_weight: Self::DEFAULT_POINTS_PER_WEIGHT,
            },
            "bounded_load" => Self::BoundedLoad {
                load_factor: Self::DEFAULT_LOAD_FACTOR,
                points_per_weight: Self::DEFAULT_POINTS_PER_WEIGHT,
            },
            _ => {
                return Err(BuildError::UnknownAlgorithm {
                    name: name.to_owned(),
                });
            }
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_itself() {
        for name in ALGORITHM_NAMES {
            let algorithm: Algorithm = name.parse().expect("known name");
            assert_eq!(algorithm.name(), name);
        }
    }

    #[test]
    fn parameters_apply_to_their_algorithm_only() {
        let parameters = Parameters {
            table_size: Some(7),
            ..Parameters::default()
        };
        assert_eq!(
            Algorithm::with_parameters("maglev", &parameters),
            Ok(Algorithm::Maglev { table_size: 7 })
        );
        let error = Algorithm::with_parameters("round_robin", &parameters).expect_err("misfit");
        assert_eq!(
            error.to_string(),
            "table_size: does not apply to algorithm round_robin"
        );
        assert_eq!(
            Algorithm::RoundRobin.fill(&parameters),
            Algorithm::RoundRobin
        );
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let error = "fastest".parse::<Algorithm>().expect_err("unknown");
        let message = error.to_string();
        assert!(
            message.starts_with("algorithm: unknown `fastest`"),
            "{message}"
        );
        assert!(message.contains("maglev"), "{message}");
    }
}
