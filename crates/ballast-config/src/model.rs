//! The configuration as data: pools, their backends, the writes that change them, and the change
//! log entries those writes leave. Everything here serializes to JSON, which is how the admin API
//! speaks and how the change log records each write.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::route::{Route, RouteTable};
use crate::validate::Invalid;

/// A pool as users define it: a name, how to choose among its backends, and what to hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Lower-case letters, digits and dashes, at most 63 (a DNS label).
    pub name: String,
    /// The balancing algorithm and its parameters.
    #[serde(flatten)]
    pub algorithm: AlgorithmSpec,
    /// `client_ip`, `header:NAME`, `cookie:NAME` or `path`.
    #[serde(default = "client_ip")]
    pub hash_key: String,
    /// The DNS name the pool is served under, if any.
    #[serde(default)]
    pub dns_name: Option<String>,
    /// Retries, timeouts and the health check; each unset field keeps the default.
    #[serde(flatten)]
    pub policy: PoolPolicy,
}

/// A pool's own retries and timeouts (overriding the LB servers' defaults) and the health check
/// the orchestrator runs against its backends. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolPolicy {
    /// Extra tries on another backend for replayable requests (0 to 10).
    #[schema(minimum = 0, maximum = 10)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Connecting to a backend, in milliseconds.
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// A backend starting its response, in milliseconds.
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout_ms: Option<u64>,
    /// The path the health check requests (HTTP); unset: a TCP connect.
    #[schema(pattern = r"^/\S*$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// How often each backend is checked, in milliseconds.
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_interval_ms: Option<u64>,
    /// How long one check may take, in milliseconds.
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_ms: Option<u64>,
    /// Successful checks in a row that make a backend healthy (default 2).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_rise: Option<u32>,
    /// Refused connections or error statuses in a row that make it unhealthy (default 3).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_fall: Option<u32>,
    /// The phi accrual detector's threshold (default 8).
    #[schema(exclusive_minimum = 0, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi_threshold: Option<f64>,
    /// Intervals the detector remembers (default 1000).
    #[schema(minimum = 2, maximum = 100_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi_window: Option<u32>,
    /// How the LB speaks to the backends (default `http1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
    /// Open each backend connection with a PROXY protocol header naming the client (`v1` or
    /// `v2`), in TCP and HTTP mode; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_proxy_protocol: Option<ProxyProtocol>,
    /// A backend that joins or comes back ramps from a tenth of its share to all of it over
    /// this many milliseconds (weighted round robin, least request, least connections, random).
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_ms: Option<u64>,
    /// Requests one backend may have in flight at once (over every LB worker); past it the
    /// request goes to another backend, waits in the queue, or gets 503.
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Connections the LB keeps open to one backend, busy or idle (over every LB worker), for
    /// HTTP/1.1 and TCP pools: each carries one request or session at a time, so it caps those
    /// in flight too, and idle connections are closed to make room for busy ones.
    #[schema(minimum = 1, maximum = 1_000_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests that may wait for a backend under its `max_requests` or `max_connections`
    /// (default 0: none wait).
    #[schema(minimum = 0, maximum = 1_000_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u32>,
    /// How long a request may wait in the queue, in milliseconds (default 1000).
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// Retries in progress may be at most this percentage of the pool's requests in flight
    /// (default 20, Envoy's retry budget).
    #[schema(minimum = 0, maximum = 100)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_percent: Option<f64>,
    /// Retries in progress the budget allows however few requests are in flight (default 3).
    #[schema(minimum = 0, maximum = 1_000_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget_min: Option<u32>,
    /// Keeps a client on the backend it first reached: the LB sets a cookie of this name
    /// naming the backend (an opaque value) and sends requests that carry it back to that
    /// backend while it takes traffic; otherwise another is chosen and the cookie rewritten.
    #[schema(min_length = 1, max_length = 64)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_cookie: Option<String>,
    /// Speak TLS to the backends (implied by `protocol = "h2"`), verifying their certificates
    /// against `ca_file` unless `insecure_skip_verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// The PEM file of the certificate authorities the backends' certificates are checked
    /// against (a path on each LB host).
    #[schema(min_length = 1, max_length = 4096)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The name sent in SNI and checked in the backends' certificates (default: the backend's
    /// IP address).
    #[schema(min_length = 1, max_length = 253)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The PEM certificate chain the LB presents to backends that ask for one (mutual TLS),
    /// with `client_key`.
    #[schema(min_length = 1, max_length = 4096)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The PEM private key of `client_cert`.
    #[schema(min_length = 1, max_length = 4096)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Accept any backend certificate: encryption without authentication, logged as a warning
    /// when the pool is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// The floor under the intervals' standard deviation, in milliseconds (default 100).
    #[schema(minimum = 1, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi_min_std_dev_ms: Option<u64>,
    /// A pause the detector forgives, in milliseconds (default 0).
    #[schema(minimum = 0, maximum = 3_600_000)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi_acceptable_pause_ms: Option<u64>,
}

impl PoolPolicy {
    /// Whether the LB speaks TLS to the backends: `tls`, or a protocol that is TLS.
    pub fn tls_to_backends(&self) -> bool {
        self.tls
            .unwrap_or(self.protocol == Some(UpstreamProtocol::H2))
    }
}

/// The protocol an LB speaks to a pool's backends. Clients may speak either protocol whatever
/// the backends do: the LB translates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a request per connection at a time, connections kept alive between requests.
    #[default]
    Http1,
    /// HTTP/2 in clear text with prior knowledge (RFC 9113 §3.3), requests multiplexed over a
    /// few connections per backend: what gRPC servers speak.
    H2c,
    /// HTTP/2 over TLS, agreed by ALPN (RFC 9113 §3.2); implies `tls`.
    H2,
    /// Over TLS, whichever of HTTP/2 and HTTP/1.1 each backend chooses by ALPN; in clear text,
    /// HTTP/1.1.
    Auto,
}

impl UpstreamProtocol {
    /// Every protocol's name, as the configuration writes it.
    pub const NAMES: [&'static str; 4] = ["http1", "h2c", "h2", "auto"];

    /// The name, as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::H2c => "h2c",
            Self::H2 => "h2",
            Self::Auto => "auto",
        }
    }
}

impl FromStr for UpstreamProtocol {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        match text {
            "http1" => Ok(Self::Http1),
            "h2c" => Ok(Self::H2c),
            "h2" => Ok(Self::H2),
            "auto" => Ok(Self::Auto),
            other => Err(Invalid::new(
                "protocol",
                format!(
                    "unknown protocol `{other}` (one of {})",
                    Self::NAMES.join(", ")
                ),
            )),
        }
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A version of HAProxy's PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

impl ProxyProtocol {
    /// The name, as the configuration writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

impl FromStr for ProxyProtocol {
    type Err = Invalid;

    fn from_str(text: &str) -> Result<Self, Invalid> {
        match text {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(Invalid::new(
                "send_proxy_protocol",
                format!("unknown PROXY protocol version `{other}` (v1 or v2)"),
            )),
        }
    }
}

fn client_ip() -> String {
    "client_ip".to_owned()
}

/// An algorithm by name with its optional parameters (see `ballast_balance::Parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlgorithmSpec {
    /// One of `ballast_balance::ALGORITHM_NAMES`.
    pub algorithm: String,
    /// `maglev`: the lookup table size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// `ring_hash`, `bounded_load`: ring points per unit of weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_per_weight: Option<u32>,
    /// `bounded_load`: the load factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_factor: Option<f64>,
    /// `least_request`: peak-EWMA decay in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_ewma_ms: Option<u64>,
}

impl AlgorithmSpec {
    /// The algorithm `name` with default parameters.
    pub fn named(name: &str) -> Self {
        Self {
            algorithm: name.to_owned(),
            table_size: None,
            points_per_weight: None,
            load_factor: None,
            peak_ewma_ms: None,
        }
    }

    /// The algorithm, built with its parameters.
    pub fn build(&self) -> Result<ballast_balance::Algorithm, ballast_balance::BuildError> {
        ballast_balance::Algorithm::with_parameters(&self.algorithm, &self.parameters())
    }

    /// The parameters as `ballast-balance` takes them.
    pub fn parameters(&self) -> ballast_balance::Parameters {
        ballast_balance::Parameters {
            table_size: self.table_size,
            points_per_weight: self.points_per_weight,
            load_factor: self.load_factor,
            peak_ewma: self.peak_ewma_ms.map(Duration::from_millis),
        }
    }
}

/// Whether a backend may take traffic, as an operator sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new requests.
    Active,
    /// Takes no new requests; those in flight finish.
    Draining,
    /// Takes nothing.
    Disabled,
}

/// What the orchestrator last concluded about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: treated as healthy.
    Unknown,
    /// Passing its checks.
    Healthy,
    /// Failing its checks: gets no new requests.
    Unhealthy,
}

macro_rules! text_enum {
    ($type:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $type {
            /// The name stored in the database and used in the API.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $type {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(format!("`{text}`: expected one of {}", [$($text),+].join(", "))),
                }
            }
        }
    };
}

text_enum!(AdminState { Active => "active", Draining => "draining", Disabled => "disabled" });
text_enum!(Health { Unknown => "unknown", Healthy => "healthy", Unhealthy => "unhealthy" });
text_enum!(crate::route::RateScope { Local => "local", Fleet => "fleet" });
text_enum!(crate::route::OnRedisError { Allow => "allow", Deny => "deny" });

/// A backend of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Backend {
    /// `IP:port`.
    pub address: String,
    /// Its relative share of new traffic.
    pub weight: u32,
    /// What the operator allows.
    pub admin_state: AdminState,
    /// What the orchestrator concluded.
    pub health: Health,
    /// The phi accrual detector's value when the orchestrator reached its verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phi: Option<f64>,
    /// Why the orchestrator reached its verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
}

impl Backend {
    /// Whether the backend should get new requests.
    pub fn takes_traffic(&self) -> bool {
        self.admin_state == AdminState::Active && self.health != Health::Unhealthy
    }
}

/// A pool with its backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    /// Its definition.
    #[serde(flatten)]
    pub spec: PoolSpec,
    /// Its backends, by address.
    pub backends: Vec<Backend>,
}

/// The whole configuration at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Config {
    /// The revision this is the state at.
    pub revision: u64,
    /// Every pool, by name.
    pub pools: Vec<Pool>,
    /// Every route table, by name (a table exists while it has routes).
    #[serde(default)]
    pub route_tables: Vec<RouteTable>,
}

/// Why a write could not be applied to an in-memory configuration: it does not follow from the
/// state it was applied to, so the follower must reload the whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("write {operation} does not apply at revision {revision}: {reason}")]
pub struct OutOfStep {
    /// The revision the configuration was at.
    pub revision: u64,
    /// The write's operation.
    pub operation: &'static str,
    /// What did not match.
    pub reason: String,
}

impl Config {
    /// Reads a configuration saved by [`Config::save`].
    pub fn load(path: &std::path::Path) -> std::io::Result<Self> {
        let text = std::fs::read(path)?;
        serde_json::from_slice(&text).map_err(std::io::Error::other)
    }

    /// Saves the configuration as JSON, atomically: a reader sees the old file or the new one,
    /// never half of one (write beside, then rename over).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = std::path::PathBuf::from(temporary);
        std::fs::write(
            &temporary,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&temporary, path)
    }

    /// Applies `write`, which produced `revision`, exactly as the store did: managed LB servers
    /// follow the change log with this instead of reloading everything. Pools stay ordered by
    /// name and backends by address, as the store lists them.
    pub fn apply(&mut self, revision: u64, write: &Write) -> Result<(), OutOfStep> {
        let out_of_step = |reason: String| OutOfStep {
            revision: self.revision,
            operation: write.operation(),
            reason,
        };
        if revision != self.revision + 1 {
            return Err(out_of_step(format!("the change is revision {revision}")));
        }
        let pool_index =
            |pools: &[Pool], name: &str| pools.iter().position(|p| p.spec.name == name);
        if let Some(table) = write.route_table() {
            let at = self
                .route_tables
                .partition_point(|t| t.name.as_str() < table);
            let existing = self
                .route_tables
                .get(at)
                .filter(|t| t.name == table)
                .cloned();
            let existed = existing.is_some();
            match write.edit_route_table(existing) {
                Ok(Some(edited)) if existed => self.route_tables[at] = edited,
                Ok(Some(edited)) => self.route_tables.insert(at, edited),
                Ok(None) if existed => drop(self.route_tables.remove(at)),
                Ok(None) => {}
                Err(error) => return Err(out_of_step(error.to_string())),
            }
            self.revision = revision;
            return Ok(());
        }
        match write {
            Write::CreatePool(spec) => {
                if pool_index(&self.pools, &spec.name).is_some() {
                    return Err(out_of_step(format!("pool `{}` exists", spec.name)));
                }
                let at = self.pools.partition_point(|p| p.spec.name < spec.name);
                self.pools.insert(
                    at,
                    Pool {
                        spec: spec.clone(),
                        backends: Vec::new(),
                    },
                );
            }
            Write::DeletePool { pool } => {
                let index = pool_index(&self.pools, pool)
                    .ok_or_else(|| out_of_step(format!("no pool `{pool}`")))?;
                self.pools.remove(index);
            }
            Write::SetAlgorithm {
                pool,
                algorithm,
                hash_key,
            } => {
                let index = pool_index(&self.pools, pool)
                    .ok_or_else(|| out_of_step(format!("no pool `{pool}`")))?;
                self.pools[index].spec.algorithm = algorithm.clone();
                if let Some(hash_key) = hash_key {
                    self.pools[index].spec.hash_key.clone_from(hash_key);
                }
            }
            Write::SetPolicy { pool, policy } => {
                let index = pool_index(&self.pools, pool)
                    .ok_or_else(|| out_of_step(format!("no pool `{pool}`")))?;
                self.pools[index].spec.policy = policy.clone();
            }
            Write::AddBackend {
                pool,
                address,
                weight,
            } => {
                let index = pool_index(&self.pools, pool)
                    .ok_or_else(|| out_of_step(format!("no pool `{pool}`")))?;
                let address = crate::validate::canonical_address(address);
                let backends = &mut self.pools[index].backends;
                if backends.iter().any(|b| b.address == address) {
                    return Err(out_of_step(format!("backend `{address}` exists")));
                }
                let at = backends.partition_point(|b| b.address < address);
                backends.insert(
                    at,
                    Backend {
                        address,
                        weight: *weight,
                        admin_state: AdminState::Active,
                        health: Health::Unknown,
                        phi: None,
                        health_reason: None,
                    },
                );
            }
            Write::RemoveBackend { pool, address }
            | Write::SetWeight { pool, address, .. }
            | Write::SetAdminState { pool, address, .. }
            | Write::SetHealth { pool, address, .. } => {
                let index = pool_index(&self.pools, pool)
                    .ok_or_else(|| out_of_step(format!("no pool `{pool}`")))?;
                let address = crate::validate::canonical_address(address);
                let backends = &mut self.pools[index].backends;
                let at = backends
                    .iter()
                    .position(|b| b.address == address)
                    .ok_or_else(|| out_of_step(format!("no backend `{address}` in `{pool}`")))?;
                match write {
                    Write::RemoveBackend { .. } => {
                        backends.remove(at);
                    }
                    Write::SetWeight { weight, .. } => backends[at].weight = *weight,
                    Write::SetAdminState { state, .. } => backends[at].admin_state = *state,
                    Write::SetHealth {
                        health,
                        phi,
                        reason,
                        ..
                    } => {
                        backends[at].health = *health;
                        backends[at].phi = *phi;
                        backends[at].health_reason.clone_from(reason);
                    }
                    _ => {}
                }
            }
            Write::AddRoute { .. } | Write::RemoveRoute { .. } | Write::MoveRoute { .. } => {}
        }
        self.revision = revision;
        Ok(())
    }
}

/// One change to the configuration; each is one transaction and one revision.
// Fields are named for what they hold; the variants say what they do.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Write {
    /// Creates a pool (with no backends).
    CreatePool(PoolSpec),
    /// Deletes a pool and its backends.
    DeletePool { pool: String },
    /// Changes a pool's algorithm and its parameters.
    SetAlgorithm {
        pool: String,
        #[serde(flatten)]
        algorithm: AlgorithmSpec,
        /// A new hash key (`client_ip`, `header:NAME`, `cookie:NAME` or `path`), part of the
        /// pool's tuning like the algorithm; unset: the pool keeps its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash_key: Option<String>,
    },
    /// Replaces a pool's policy (retries, timeouts, health check) whole: fields left out fall
    /// back to the defaults.
    SetPolicy {
        pool: String,
        #[serde(flatten)]
        policy: PoolPolicy,
    },
    /// Adds a backend, active and of unknown health.
    AddBackend {
        pool: String,
        address: String,
        weight: u32,
    },
    /// Removes a backend.
    RemoveBackend { pool: String, address: String },
    /// Changes a backend's weight.
    SetWeight {
        pool: String,
        address: String,
        weight: u32,
    },
    /// Drains, disables or re-enables a backend.
    SetAdminState {
        pool: String,
        address: String,
        state: AdminState,
    },
    /// Records the orchestrator's verdict on a backend.
    SetHealth {
        pool: String,
        address: String,
        health: Health,
        /// The phi accrual detector's value then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phi: Option<f64>,
        /// Why, for people.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Adds a route to a route table (creating the table), at `position` or at the end.
    AddRoute {
        table: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<u32>,
        route: Route,
    },
    /// Removes the route at `position` (and the table with its last route).
    RemoveRoute { table: String, position: u32 },
    /// Moves a route within its table: to `to`, its position once moved.
    MoveRoute { table: String, from: u32, to: u32 },
}

/// Why a route write does not apply to the table it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteEditError {
    /// The table has no routes (it does not exist).
    #[error("route table `{0}`")]
    NoTable(String),
    /// A position is out of range.
    #[error(transparent)]
    Position(Invalid),
}

impl Write {
    /// What the write changes, for the change log: `pool`, `backend` or `route`.
    pub fn entity(&self) -> &'static str {
        match self {
            Self::CreatePool(_)
            | Self::DeletePool { .. }
            | Self::SetAlgorithm { .. }
            | Self::SetPolicy { .. } => "pool",
            Self::AddRoute { .. } | Self::RemoveRoute { .. } | Self::MoveRoute { .. } => "route",
            _ => "backend",
        }
    }

    /// The route table a route write edits.
    pub fn route_table(&self) -> Option<&str> {
        match self {
            Self::AddRoute { table, .. }
            | Self::RemoveRoute { table, .. }
            | Self::MoveRoute { table, .. } => Some(table),
            _ => None,
        }
    }

    /// A route write applied to its table as it is (`None`: it has no routes); the table as it
    /// becomes (`None`: its last route went). Both interpreters of a write, the SQL store's and
    /// [`Config::apply`], edit tables with this one function.
    pub fn edit_route_table(
        &self,
        existing: Option<RouteTable>,
    ) -> Result<Option<RouteTable>, RouteEditError> {
        let Some(name) = self.route_table() else {
            return Ok(existing);
        };
        let mut table = match (existing, self) {
            (Some(table), _) => table,
            (None, Self::AddRoute { .. }) => RouteTable {
                name: name.to_owned(),
                routes: Vec::new(),
            },
            (None, _) => return Err(RouteEditError::NoTable(name.to_owned())),
        };
        match self {
            Self::AddRoute {
                position, route, ..
            } => table
                .insert(*position, route.clone())
                .map(drop)
                .map_err(RouteEditError::Position)?,
            Self::RemoveRoute { position, .. } => table
                .remove(*position)
                .map(drop)
                .map_err(RouteEditError::Position)?,
            Self::MoveRoute { from, to, .. } => table
                .move_route(*from, *to)
                .map_err(RouteEditError::Position)?,
            _ => {}
        }
        Ok((!table.routes.is_empty()).then_some(table))
    }

    /// The operation's name, as in the JSON `op` field.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::CreatePool(_) => "create_pool",
            Self::DeletePool { .. } => "delete_pool",
            Self::SetAlgorithm { .. } => "set_algorithm",
            Self::SetPolicy { .. } => "set_policy",
            Self::AddBackend { .. } => "add_backend",
            Self::RemoveBackend { .. } => "remove_backend",
            Self::SetWeight { .. } => "set_weight",
            Self::SetAdminState { .. } => "set_admin_state",
            Self::SetHealth { .. } => "set_health",
            Self::AddRoute { .. } => "add_route",
            Self::RemoveRoute { .. } => "remove_route",
            Self::MoveRoute { .. } => "move_route",
        }
    }
}

/// Whether an LB server is taking traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LbState {
    /// Serving.
    Serving,
    /// Told to stop: finishing the requests in flight, taking no new clients if it can help it.
    Draining,
    /// Stopped (drained and exited).
    Stopped,
}

text_enum!(LbState { Serving => "serving", Draining => "draining", Stopped => "stopped" });

/// Whether the orchestrator finds an LB server alive (by its scrapes), whatever it says itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Not judged yet.
    #[default]
    Unknown,
    /// Its metrics answer.
    Up,
    /// Dead or unreachable: out of DNS.
    Down,
}

text_enum!(Liveness { Unknown => "unknown", Up => "up", Down => "down" });

/// The latest figures the orchestrator scraped from an LB server's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LbFigures {
    /// CPU in use: CPU seconds per second over the last scrape interval (1.0 = one core).
    pub cpu_cores: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Open client connections.
    pub connections: u64,
    /// Responses per second over the last scrape interval.
    pub requests_per_second: f64,
    /// When they were scraped, in milliseconds since the Unix epoch.
    pub scraped_ms: i64,
}

/// A managed LB server as it reports itself in its heartbeat, with what the orchestrator
/// observed of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LbServer {
    /// Its name, unique in the fleet (a DNS label).
    pub name: String,
    /// Where it listens.
    pub addresses: Vec<String>,
    /// The pools it serves.
    pub pools: Vec<String>,
    /// Its admin endpoint (`/metrics`), if it has one.
    pub admin: Option<String>,
    /// The configuration revision it has applied.
    pub applied_revision: u64,
    /// Serving or stopped.
    pub state: LbState,
    /// When it last reported, in milliseconds since the Unix epoch (set by the store).
    #[serde(default)]
    pub last_heartbeat_ms: i64,
    /// The latest scraped figures, once the orchestrator has scraped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<LbFigures>,
    /// The orchestrator's verdict on whether it is alive.
    #[serde(default)]
    pub liveness: Liveness,
    /// Why that verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_reason: Option<String>,
}

impl LbServer {
    /// Whether it takes traffic: serving (not draining or stopped) and not found dead by the
    /// orchestrator. DNS answers with these, and the autoscaler counts them.
    pub fn is_live(&self) -> bool {
        self.state == LbState::Serving && self.liveness != Liveness::Down
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// The revision the write produced.
    pub revision: u64,
    /// `pool` or `backend`.
    pub entity: String,
    /// The operation, e.g. `add_backend`.
    pub operation: String,
    /// The write itself, as JSON.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// When it was written, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The lease its writer held, when a leased writer (the orchestrator's leader) made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_name: Option<String>,
    /// The fencing token that writer presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_token: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_round_trip_through_json_with_their_op() {
        let writes = [
            Write::CreatePool(PoolSpec {
                name: "web".into(),
                algorithm: AlgorithmSpec {
                    table_size: Some(65_537),
                    ..AlgorithmSpec::named("maglev")
                },
                hash_key: "cookie:session".into(),
                dns_name: Some("web.lb.test".into()),
                policy: Default::default(),
            }),
            Write::SetAdminState {
                pool: "web".into(),
                address: "127.0.0.1:9001".into(),
                state: AdminState::Draining,
            },
        ];
        for write in writes {
            let json = serde_json::to_value(&write).expect("serializes");
            assert_eq!(json["op"], write.operation());
            let back: Write = serde_json::from_value(json).expect("deserializes");
            assert_eq!(back, write);
        }
    }

    #[test]
    fn states_parse_and_print() {
        assert_eq!("draining".parse::<AdminState>(), Ok(AdminState::Draining));
        assert_eq!(Health::Unhealthy.to_string(), "unhealthy");
        assert!("sleeping".parse::<AdminState>().is_err());
    }
}
