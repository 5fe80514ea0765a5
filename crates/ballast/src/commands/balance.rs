//! `ballast balance simulate`: run an algorithm on a backend set and show where each key goes,
//! how the load spreads, what a removal moves, and (with `--service-ms`) what latency clients
//! would see in front of backends of uneven speed.

use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ballast_balance::quality::keys_moved;
use ballast_balance::simulation::{self, Keys, Workload};
use ballast_balance::{ALGORITHM_NAMES, Algorithm, Backend, Picker, hash_key};
use clap::{Args, Subcommand, ValueEnum};

use super::algorithm_args::AlgorithmArgs;
use ballast_bench::table::{Table, percent};

#[derive(Debug, Subcommand)]
pub(crate) enum BalanceCommand {
    /// Run an algorithm on a backend set and print `KEY BACKEND` per request (or a summary).
    Simulate(SimulateArgs),
}

impl BalanceCommand {
    pub(crate) fn run(self) -> Result<()> {
        match self {
            Self::Simulate(args) => simulate(&args),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    #[command(flatten)]
    algorithm: AlgorithmArgs,
    /// The backends, NAME[:WEIGHT] (or NAME=WEIGHT, for names with colons), comma-separated.
    #[arg(long, value_name = "NAME[:WEIGHT],…", value_parser = parse_backends)]
    backends: BackendList,
    /// How many requests (keys) to place.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Seed for keys, random choices and service times; random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Which keys the requests carry.
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    keys: KeyOrder,
    /// Also place the keys without these backends and print `KEY BEFORE AFTER`.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    remove: Vec<String>,
    /// Print a table of shares (and moved keys, latencies) instead of one line per request.
    #[arg(long)]
    summary: bool,
    /// Simulate time: each backend's mean service time in milliseconds, NAME=MS,… (all
    /// backends). Without it, load-aware algorithms (least_connections, least_request,
    /// bounded_load) still run in the simulation, at 1 ms / weight per request, so that requests
    /// are in flight when they choose.
    #[arg(long, value_name = "NAME=MS,…", value_parser = parse_service_times)]
    service_ms: Option<ServiceTimes>,
    /// Requests in flight from clients at any time (load-aware algorithms and --service-ms).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests each backend serves at once; the rest queue (load-aware algorithms and
    /// --service-ms).
    #[arg(long, default_value_t = 1)]
    slots: usize,
    /// With --service-ms: run every algorithm on the same workload and compare latencies.
    #[arg(long, requires = "service_ms")]
    compare: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KeyOrder {
    Random,
    Sequential,
}

/// Backends as given on the command line.
#[derive(Debug, Clone)]
struct BackendList(Vec<(String, u32)>);

impl BackendList {
    /// Fresh backends (with loads of their own) for one run, leaving out `removed`.
    fn build(&self, removed: &[String]) -> Vec<Backend> {
        self.0
            .iter()
            .filter(|(name, _)| !removed.contains(name))
            .map(|(name, weight)| Backend::new(name.clone(), *weight))
            .collect()
    }
}

#[derive(Debug, Clone)]
struct ServiceTimes(HashMap<String, Duration>);

fn parse_backends(list: &str) -> Result<BackendList, String> {
    let mut backends = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (name, weight) = match item.rsplit_once('=').or_else(|| item.rsplit_once(':')) {
            Some((name, weight)) => {
                let weight = weight.parse::<u32>().map_err(|_| {
                    format!(
                        "`{item}`: weight `{weight}` must be a whole number from 0 to {}",
                        u32::MAX
                    )
                })?;
                (name, weight)
            }
            None => (item, 1),
        };
        if name.is_empty() {
            return Err(format!("`{item}`: a backend needs a name"));
        }
        backends.push((name.to_owned(), weight));
    }
    Ok(BackendList(backends))
}

fn parse_service_times(list: &str) -> Result<ServiceTimes, String> {
    let mut times = HashMap::new();
    for item in list.split(',').map(str::trim) {
        let (name, ms) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}`: expected NAME=MS"))?;
        let ms: f64 = ms
            .parse()
            .ok()
            .filter(|ms: &f64| ms.is_finite() && *ms > 0.0)
            .ok_or_else(|| format!("`{item}`: MS must be a positive number of milliseconds"))?;
        times.insert(name.to_owned(), Duration::from_secs_f64(ms / 1000.0));
    }
    Ok(ServiceTimes(times))
}

fn simulate(args: &SimulateArgs) -> Result<()> {
    let algorithm = args.algorithm.algorithm()?;
    for name in &args.remove {
        if !args.backends.0.iter().any(|(b, _)| b == name) {
            bail!("--remove: `{name}` is not one of --backends");
        }
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let keys = match args.keys {
        KeyOrder::Random => Keys::Random,
        KeyOrder::Sequential => Keys::Sequential,
    }
    .generate(args.requests, seed);
    let mut out = BufWriter::new(io::stdout().lock());
    match &args.service_ms {
        Some(times) => {
            if !args.remove.is_empty() {
                bail!("--remove compares placements; it does not combine with --service-ms");
            }
            let workload = Workload {
                concurrency: args.concurrency,
                service_times: service_times(times, &args.backends)?,
                slots: args.slots,
                seed,
            };
            if args.compare {
                compare(args, &keys, &workload, &mut out)?;
            } else {
                timed(args, &algorithm, &keys, &workload, &mut out)?;
            }
        }
        None => placement(args, &algorithm, &keys, seed, &mut out)?,
    }
    out.flush()?;
    Ok(())
}

fn service_times(times: &ServiceTimes, backends: &BackendList) -> Result<Vec<Duration>> {
    for name in times.0.keys() {
        if !backends.0.iter().any(|(b, _)| b == name) {
            bail!("--service-ms: `{name}` is not one of --backends");
        }
    }
    backends
        .0
        .iter()
        .map(|(name, _)| {
            times
                .0
                .get(name)
                .copied()
                .with_context(|| format!("--service-ms: no service time for backend `{name}`"))
        })
        .collect()
}

fn build(algorithm: &Algorithm, backends: &[Backend]) -> Result<Picker> {
    Picker::build(algorithm, backends).context("--backends and the algorithm's parameters")
}

/// Where every key goes. Load-aware algorithms run in the simulation, each backend as fast as its
/// weight says (1 ms per request at weight 1, 0.2 ms at weight 5), since on idle backends they
/// would have nothing to choose by.
fn placement(
    args: &SimulateArgs,
    algorithm: &Algorithm,
    keys: &[u64],
    seed: u64,
    out: &mut impl Write,
) -> Result<()> {
    let before_set = args.backends.build(&[]);
    let before = assign(args, algorithm, &before_set, keys, seed)?;
    if args.remove.is_empty() {
        if args.summary {
            return summary_table(&args.backends, &[&before], None, out);
        }
        for (key, backend) in keys.iter().zip(&before) {
            writeln!(out, "{key} {backend}")?;
        }
        return Ok(());
    }
    let after_set = args.backends.build(&args.remove);
    let after = assign(args, algorithm, &after_set, keys, seed)?;
    if args.summary {
        summary_table(&args.backends, &[&before, &after], None, out)?;
        let moved = keys_moved(&before, &after, |id| args.remove.iter().any(|r| r == id));
        writeln!(
            out,
            "moved {} of all keys: {} of the removed backends' keys, {} of the others'",
            percent(moved.all),
            percent(moved.of_removed),
            percent(moved.of_others)
        )?;
        return Ok(());
    }
    for ((key, old), new) in keys.iter().zip(&before).zip(&after) {
        writeln!(out, "{key} {old} {new}")?;
    }
    Ok(())
}

/// The backend name for each key.
fn assign<'a>(
    args: &SimulateArgs,
    algorithm: &Algorithm,
    backends: &'a [Backend],
    keys: &[u64],
    seed: u64,
) -> Result<Vec<&'a str>> {
    let picker = build(algorithm, backends)?;
    let indices = if algorithm.uses_load() {
        let workload = Workload {
            concurrency: args.concurrency,
            service_times: backends
                .iter()
                .map(|b| Duration::from_millis(1) / b.weight().max(1))
                .collect(),
            slots: args.slots,
            seed,
        };
        simulation::run(&picker, algorithm, backends, keys, &workload)?.assignments
    } else {
        fastrand::seed(seed);
        keys.iter()
            .map(|key| {
                picker
                    .pick(hash_key(&key.to_le_bytes()))
                    .context("no backend takes traffic (every weight is 0)")
            })
            .collect::<Result<_>>()?
    };
    Ok(indices.iter().map(|&i| backends[i].id()).collect())
}

/// Shares per backend for one or two placements, and latencies when a simulation ran.
fn summary_table(
    backends: &BackendList,
    placements: &[&[&str]],
    latency: Option<&simulation::Outcome>,
    out: &mut impl Write,
) -> Result<()> {
    let total_weight: u64 = backends.0.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut header = vec!["backend", "weight", "expected"];
    header.extend(if placements.len() == 2 {
        &["before", "after"][..]
    } else {
        &["actual"][..]
    });
    if latency.is_some() {
        header.extend(["mean_ms", "p99_ms"]);
    }
    let mut table = Table::new(&header);
    for (index, (name, weight)) in backends.0.iter().enumerate() {
        let mut row = vec![
            name.clone(),
            weight.to_string(),
            percent(ratio(u64::from(*weight), total_weight)),
        ];
        for placement in placements {
            let count = placement.iter().filter(|b| **b == name).count() as u64;
            row.push(percent(ratio(count, placement.len() as u64)));
        }
        if let Some(outcome) = latency {
            row.push(millis(outcome.mean(Some(index))));
            row.push(millis(outcome.quantile(Some(index), 0.99)));
        }
        table.row(row);
    }
    if let Some(outcome) = latency {
        let mut row = vec![
            "all".to_owned(),
            total_weight.to_string(),
            percent(1.0),
            percent(1.0),
        ];
        row.push(millis(outcome.mean(None)));
        row.push(millis(outcome.quantile(None, 0.99)));
        table.row(row);
    }
    table.write(out)?;
    Ok(())
}

/// One algorithm in front of backends with service times.
fn timed(
    args: &SimulateArgs,
    algorithm: &Algorithm,
    keys: &[u64],
    workload: &Workload,
    out: &mut impl Write,
) -> Result<()> {
    let backends = args.backends.build(&[]);
    let picker = build(algorithm, &backends)?;
    let outcome = simulation::run(&picker, algorithm, &backends, keys, workload)?;
    let names: Vec<&str> = outcome
        .assignments
        .iter()
        .map(|&i| backends[i].id())
        .collect();
    if args.summary {
        return summary_table(&args.backends, &[&names], Some(&outcome), out);
    }
    for (key, name) in keys.iter().zip(&names) {
        writeln!(out, "{key} {name}")?;
    }
    Ok(())
}

/// Every algorithm on the same keys, backends and service times.
fn compare(
    args: &SimulateArgs,
    keys: &[u64],
    workload: &Workload,
    out: &mut impl Write,
) -> Result<()> {
    let mut table = Table::new(&["algorithm", "mean_ms", "p50_ms", "p99_ms", "max_ms"]);
    let mut variants = Vec::new();
    for name in ALGORITHM_NAMES {
        match args.algorithm.fill(name.parse()?) {
            // Show least_request both plain and with peak-EWMA, the variant that sees latency.
            Algorithm::LeastRequest { peak_ewma } => {
                let decay = peak_ewma.unwrap_or(Algorithm::DEFAULT_PEAK_EWMA_DECAY);
                variants.push(Algorithm::LeastRequest { peak_ewma: None });
                variants.push(Algorithm::LeastRequest {
                    peak_ewma: Some(decay),
                });
            }
            algorithm => variants.push(algorithm),
        }
    }
    for algorithm in variants {
        let backends = args.backends.build(&[]);
        let picker = build(&algorithm, &backends)?;
        let outcome = simulation::run(&picker, &algorithm, &backends, keys, workload)?;
        let label = match algorithm {
            Algorithm::LeastRequest { peak_ewma: Some(_) } => "least_request+peak_ewma".to_owned(),
            _ => algorithm.name().to_owned(),
        };
        table.row(vec![
            label,
            millis(outcome.mean(None)),
            millis(outcome.quantile(None, 0.5)),
            millis(outcome.quantile(None, 0.99)),
            millis(outcome.quantile(None, 1.0)),
        ]);
    }
    table.write(out)?;
    Ok(())
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}
