//! `ballast pool create|list|show|delete|set-algorithm`: pools through the admin API.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::admin_client::{ControlFlags, segment};
use super::algorithm_args::AlgorithmArgs;
use ballast_bench::table::Table;
use ballast_config::{ProxyProtocol, UpstreamProtocol};

#[derive(Debug, Args)]
pub(crate) struct PoolCommand {
    #[command(flatten)]
    control: ControlFlags,
    #[command(subcommand)]
    action: PoolAction,
}

#[derive(Debug, Subcommand)]
enum PoolAction {
    /// Create a pool (with no backends yet).
    Create {
        /// Lower-case letters, digits and dashes.
        name: String,
        #[command(flatten)]
        algorithm: AlgorithmArgs,
        /// What hash-based algorithms hash: client_ip, header:NAME, cookie:NAME or path.
        #[arg(long, default_value = "client_ip")]
        hash_key: String,
        /// The DNS name the pool is served under.
        #[arg(long)]
        dns_name: Option<String>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// List every pool.
    List,
    /// Show one pool and its backends.
    Show {
        /// The pool.
        name: String,
    },
    /// Delete a pool and its backends.
    Delete {
        /// The pool.
        name: String,
    },
    /// Replace a pool's retries, timeouts and health check (flags left out: the defaults).
    SetPolicy {
        /// The pool.
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change a pool's algorithm (and its parameters), and its hash key with --hash-key.
    SetAlgorithm {
        /// The pool.
        name: String,
        #[command(flatten)]
        algorithm: AlgorithmArgs,
        /// What hash-based algorithms hash: client_ip, header:NAME, cookie:NAME or path
        /// [default: the pool's own].
        #[arg(long, value_name = "SOURCE")]
        hash_key: Option<String>,
    },
}

/// A pool's own retries, timeouts and health check.
#[derive(Debug, Args)]
struct PolicyArgs {
    /// Extra tries on another backend for replayable requests [default: the LB's].
    #[arg(long)]
    retries: Option<u32>,
    /// Connecting to a backend [default: the LB's].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    connect_timeout: Option<std::time::Duration>,
    /// A backend starting its response [default: the LB's].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    response_timeout: Option<std::time::Duration>,
    /// The path health checks request (unset: a TCP connect).
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,
    /// How often each backend is checked.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    health_interval: Option<std::time::Duration>,
    /// How long one check may take.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    health_timeout: Option<std::time::Duration>,
    /// Successful checks in a row that make a backend healthy [default: 2].
    #[arg(long, value_name = "N")]
    health_rise: Option<u32>,
    /// Refused connections or error statuses in a row that make it unhealthy [default: 3].
    #[arg(long, value_name = "N")]
    health_fall: Option<u32>,
    /// The phi accrual detector's threshold [default: 8].
    #[arg(long, value_name = "PHI")]
    phi_threshold: Option<f64>,
    /// Intervals between successful checks the detector remembers [default: 1000].
    #[arg(long, value_name = "N")]
    phi_window: Option<u32>,
    /// The floor under the intervals' standard deviation [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    phi_min_std_dev: Option<std::time::Duration>,
    /// A pause the detector forgives [default: 0s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    phi_acceptable_pause: Option<std::time::Duration>,
    /// What LBs speak to the backends: http1, h2c (HTTP/2 in clear text, as gRPC servers
    /// speak), h2 (HTTP/2 over TLS) or auto (over TLS, what each backend chooses by ALPN)
    /// [default: http1].
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    protocol: Option<UpstreamProtocol>,
    /// Open each backend connection with a PROXY protocol header naming the client: v1 or v2
    /// [default: none].
    #[arg(long, value_name = "VERSION", value_parser = parse_proxy_protocol)]
    send_proxy_protocol: Option<ProxyProtocol>,
    /// A backend that joins or comes back ramps from a tenth of its share to all of it over
    /// this long (weighted_round_robin, least_request, least_connections, random).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    slow_start: Option<std::time::Duration>,
    /// Requests one backend may have in flight (over every LB worker) [default: no limit].
    #[arg(long, value_name = "N")]
    max_requests: Option<u32>,
    /// Connections open to one backend, busy or idle, over every LB worker (HTTP/1.1 and TCP)
    /// [default: no limit].
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Requests that may wait for a backend under its --max-requests or --max-connections
    /// [default: 0].
    #[arg(long, value_name = "N")]
    queue_size: Option<u32>,
    /// How long a request may wait in the queue [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    queue_timeout: Option<std::time::Duration>,
    /// Retries in progress may be at most this percentage of requests in flight [default: 20].
    #[arg(long, value_name = "PERCENT")]
    retry_budget_percent: Option<f64>,
    /// Retries in progress the budget always allows [default: 3].
    #[arg(long, value_name = "N")]
    retry_budget_min: Option<u32>,
    /// Keep each client on the backend it first reached, by a cookie of this name.
    #[arg(long, value_name = "NAME")]
    sticky_cookie: Option<String>,
    /// Speak TLS to the backends (implied by --protocol h2).
    #[arg(long, value_name = "BOOL")]
    tls: Option<bool>,
    /// The PEM file of the CAs the backends' certificates are verified against (on each LB).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
    /// The name sent in SNI and checked in the backends' certificates [default: their IPs].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// The PEM certificate chain LBs present to backends that ask for one (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<String>,
    /// The PEM private key of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<String>,
    /// Accept any backend certificate (encryption without authentication; LBs warn).
    #[arg(long, value_name = "BOOL")]
    insecure_skip_verify: Option<bool>,
}

fn parse_proxy_protocol(text: &str) -> Result<ProxyProtocol, String> {
    text.parse().map_err(|e: ballast_config::Invalid| e.reason)
}

fn parse_protocol(text: &str) -> Result<UpstreamProtocol, String> {
    text.parse().map_err(|e: ballast_config::Invalid| e.reason)
}

impl PolicyArgs {
    /// Adds the given fields to a pool's JSON.
    fn add_to(&self, spec: &mut Value) {
        let ms = |d: &Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
        let fields = [
            ("retries", self.retries.map(u64::from)),
            ("connect_timeout_ms", ms(&self.connect_timeout)),
            ("response_timeout_ms", ms(&self.response_timeout)),
            ("health_interval_ms", ms(&self.health_interval)),
            ("health_timeout_ms", ms(&self.health_timeout)),
            ("health_rise", self.health_rise.map(u64::from)),
            ("health_fall", self.health_fall.map(u64::from)),
            ("phi_window", self.phi_window.map(u64::from)),
            ("phi_min_std_dev_ms", ms(&self.phi_min_std_dev)),
            ("phi_acceptable_pause_ms", ms(&self.phi_acceptable_pause)),
            ("slow_start_ms", ms(&self.slow_start)),
            ("max_requests", self.max_requests.map(u64::from)),
            ("max_connections", self.max_connections.map(u64::from)),
            ("queue_size", self.queue_size.map(u64::from)),
            ("queue_timeout_ms", ms(&self.queue_timeout)),
            ("retry_budget_min", self.retry_budget_min.map(u64::from)),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                spec[field] = json!(value);
            }
        }
        if let Some(path) = &self.health_path {
            spec["health_path"] = json!(path);
        }
        if let Some(phi) = self.phi_threshold {
            spec["phi_threshold"] = json!(phi);
        }
        if let Some(percent) = self.retry_budget_percent {
            spec["retry_budget_percent"] = json!(percent);
        }
        let texts = [
            ("sticky_cookie", &self.sticky_cookie),
            ("ca_file", &self.ca_file),
            ("server_name", &self.server_name),
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
        ];
        for (field, value) in texts {
            if let Some(value) = value {
                spec[field] = json!(value);
            }
        }
        for (field, value) in [
            ("tls", self.tls),
            ("insecure_skip_verify", self.insecure_skip_verify),
        ] {
            if let Some(value) = value {
                spec[field] = json!(value);
            }
        }
        if let Some(protocol) = self.protocol {
            spec["protocol"] = json!(protocol.name());
        }
        if let Some(version) = self.send_proxy_protocol {
            spec["send_proxy_protocol"] = json!(version.name());
        }
    }
}

/// The algorithm flags as the API's JSON.
pub(crate) fn algorithm_json(args: &AlgorithmArgs) -> Value {
    serde_json::to_value(args.spec()).unwrap_or_else(|_| json!({ "algorithm": args.algorithm }))
}

impl PoolCommand {
    pub(crate) fn run(self) -> Result<()> {
        let control = &self.control;
        let answer = match &self.action {
            PoolAction::Create {
                name,
                algorithm,
                hash_key,
                dns_name,
                policy,
            } => {
                let mut spec = algorithm_json(algorithm);
                spec["name"] = json!(name);
                spec["hash_key"] = json!(hash_key);
                if let Some(dns) = dns_name {
                    spec["dns_name"] = json!(dns);
                }
                policy.add_to(&mut spec);
                control.call(Method::POST, "/v1/pools", Some(spec))?
            }
            PoolAction::List => control.call(Method::GET, "/v1/pools", None)?,
            PoolAction::Show { name } => {
                control.call(Method::GET, &format!("/v1/pools/{}", segment(name)), None)?
            }
            PoolAction::Delete { name } => control.call(
                Method::DELETE,
                &format!("/v1/pools/{}", segment(name)),
                None,
            )?,
            PoolAction::SetPolicy { name, policy } => {
                let mut spec = json!({});
                policy.add_to(&mut spec);
                control.call(
                    Method::PUT,
                    &format!("/v1/pools/{}/policy", segment(name)),
                    Some(spec),
                )?
            }
            PoolAction::SetAlgorithm {
                name,
                algorithm,
                hash_key,
            } => {
                let mut spec = algorithm_json(algorithm);
                if let Some(hash_key) = hash_key {
                    spec["hash_key"] = json!(hash_key);
                }
                control.call(
                    Method::PUT,
                    &format!("/v1/pools/{}/algorithm", segment(name)),
                    Some(spec),
                )?
            }
        };
        let mut out = std::io::stdout().lock();
        if control.json {
            writeln!(out, "{answer}")?;
            return Ok(());
        }
        match &self.action {
            PoolAction::List => {
                pools_table(answer["pools"].as_array().map_or(&[][..], |p| p), &mut out)?
            }
            PoolAction::Show { .. } => {
                pools_table(std::slice::from_ref(&answer), &mut out)?;
                writeln!(out)?;
                super::backend::backends_table(&answer["backends"], &mut out)?;
            }
            _ => writeln!(out, "revision {}", answer["revision"])?,
        }
        Ok(())
    }
}

fn pools_table(pools: &[Value], out: &mut impl Write) -> Result<()> {
    let mut table = Table::new(&["pool", "algorithm", "hash_key", "backends", "dns_name"]);
    for pool in pools {
        table.row(vec![
            text(&pool["name"]),
            text(&pool["algorithm"]),
            text(&pool["hash_key"]),
            pool["backends"].as_array().map_or(0, Vec::len).to_string(),
            text(&pool["dns_name"]),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// A JSON value as a table cell (`-` for none).
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}
