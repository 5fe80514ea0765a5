//! `ballast bench balance`: the balancing algorithms side by side — pick cost, Maglev table
//! build, balance and keys moved. `cargo bench -p ballast-balance` measures the same picks
//! with criterion's statistics.

use std::hint::black_box;
use std::io::{self, BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ballast_balance::quality::{keys_moved, max_over_mean};
use ballast_balance::simulation::Keys;
use ballast_balance::{ALGORITHM_NAMES, Algorithm, Backend, Picker, hash_key};
use clap::Args;

use crate::table::{Table, percent};

#[derive(Debug, Args)]
pub struct BalanceBenchArgs {
    /// How long to measure each cell of the timing tables.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    time_per_cell: Duration,
    /// Keys placed for the balance and keys-moved table.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
}

const SIZES: [usize; 4] = [3, 10, 100, 1000];

/// The weight of the i-th backend of a benchmark set.
type WeightOf = fn(usize) -> u32;

pub(crate) fn run(args: &BalanceBenchArgs) -> Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    writeln!(
        out,
        "# pick: ns per pick, backends of weight 1 (hash-based algorithms include hashing the key)"
    )?;
    let mut header = vec!["algorithm".to_owned()];
    header.extend(SIZES.iter().map(|n| format!("N={n}")));
    let mut table = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    let mut rows: Vec<(String, Algorithm, WeightOf)> = ALGORITHM_NAMES
        .iter()
        .map(|name| Ok(((*name).to_owned(), name.parse()?, unit as WeightOf)))
        .collect::<Result<_>>()?;
    rows.insert(
        2,
        (
            "weighted_round_robin (weights 1-4)".to_owned(),
            Algorithm::WeightedRoundRobin,
            mixed,
        ),
    );
    for (label, algorithm, weight) in &rows {
        let mut row = vec![label.clone()];
        for n in SIZES {
            let backends = backends(n, *weight);
            let picker = Picker::build(algorithm, &backends).context("bench backends")?;
            let nanos = time_picks(&picker, algorithm.uses_key(), args.time_per_cell);
            row.push(format!("{nanos:.1}"));
        }
        table.row(row);
    }
    table.write(&mut out)?;
    out.flush()?;

    writeln!(out, "\n# maglev build: ms per table")?;
    let sizes = [65_537, 655_373];
    let mut table = Table::new(&["backends", "M=65537", "M=655373"]);
    for n in [10, 100, 1000] {
        let backends = backends(n, unit);
        let mut row = vec![n.to_string()];
        for table_size in sizes {
            let algorithm = Algorithm::Maglev { table_size };
            let millis = time_builds(&algorithm, &backends, args.time_per_cell)?;
            row.push(format!("{millis:.2}"));
        }
        table.row(row);
    }
    table.write(&mut out)?;
    out.flush()?;

    let n = 1000;
    writeln!(
        out,
        "\n# balance over {n} backends of weight 1, {} random keys: busiest/mean; keys moved when k \
         backends are removed, of all keys (ideal k/{n}) / of the keys not on them (ideal 0)",
        args.keys
    )?;
    let keys: Vec<u64> = Keys::Random
        .generate(args.keys, 1)
        .iter()
        .map(|k| hash_key(&k.to_le_bytes()))
        .collect();
    let mut table = Table::new(&["algorithm", "max/mean", "k=1", "k=10", "k=100"]);
    let hashed = [
        ("maglev M=65537", Algorithm::maglev()),
        (
            "maglev M=655373",
            Algorithm::Maglev {
                table_size: 655_373,
            },
        ),
        ("ring_hash", "ring_hash".parse()?),
        // No affinity at all: its max/mean is the noise floor of this many random keys.
        ("random (reference)", Algorithm::Random),
    ];
    for (label, algorithm) in hashed {
        let all = backends(n, unit);
        let before = place(&algorithm, &all, &keys)?;
        let mut counts = vec![0u64; n];
        for &b in &before {
            counts[b] += 1;
        }
        let mut row = vec![
            label.to_owned(),
            format!("{:.3}", max_over_mean(&counts, &vec![1; n])),
        ];
        for removed in [1, 10, 100] {
            if !algorithm.uses_key() {
                // Without affinity there is nothing to keep: moved keys mean nothing.
                row.push("-".to_owned());
                continue;
            }
            // Every (n / removed)-th backend, spread over the set.
            let gone = |i: usize| i.is_multiple_of(n / removed);
            let kept: Vec<Backend> = (0..n)
                .filter(|&i| !gone(i))
                .map(|i| all[i].clone())
                .collect();
            let after = place(&algorithm, &kept, &keys)?;
            let before_ids: Vec<&str> = before.iter().map(|&i| all[i].id()).collect();
            let after_ids: Vec<&str> = after.iter().map(|&i| kept[i].id()).collect();
            let moved = keys_moved(&before_ids, &after_ids, |id| {
                id.strip_prefix('b')
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(gone)
            });
            row.push(format!(
                "{} / {}",
                percent(moved.all),
                percent(moved.of_others)
            ));
        }
        table.row(row);
    }
    table.write(&mut out)?;
    out.flush()?;
    Ok(())
}

fn unit(_: usize) -> u32 {
    1
}

fn mixed(i: usize) -> u32 {
    (i % 4) as u32 + 1
}

fn backends(n: usize, weight: WeightOf) -> Vec<Backend> {
    (0..n)
        .map(|i| Backend::new(format!("b{i}"), weight(i)))
        .collect()
}

/// Nanoseconds per pick, measured over batches until `budget` has passed.
fn time_picks(picker: &Picker, hashed: bool, budget: Duration) -> f64 {
    const BATCH: u64 = 10_000;
    let batch = |start: u64| {
        for i in start..start + BATCH {
            let key = if hashed {
                hash_key(&i.to_le_bytes())
            } else {
                i
            };
            black_box(picker.pick(black_box(key)));
        }
    };
    batch(0);
    let began = Instant::now();
    let mut done = 0;
    while began.elapsed() < budget {
        batch(done);
        done += BATCH;
    }
    began.elapsed().as_nanos() as f64 / done as f64
}

/// The median milliseconds of building one picker, over at least three builds.
fn time_builds(algorithm: &Algorithm, backends: &[Backend], budget: Duration) -> Result<f64> {
    let mut samples = Vec::new();
    let began = Instant::now();
    while samples.len() < 3 || began.elapsed() < budget {
        let start = Instant::now();
        black_box(Picker::build(algorithm, backends).context("bench backends")?);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn place(algorithm: &Algorithm, backends: &[Backend], keys: &[u64]) -> Result<Vec<usize>> {
    let picker = Picker::build(algorithm, backends).context("bench backends")?;
    keys.iter()
        .map(|&key| picker.pick(key).context("a backend"))
        .collect()
}
