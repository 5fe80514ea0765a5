//! Criterion benchmarks of the pickers: pick cost per algorithm at 3 to 1000 backends (hash-based
//! algorithms include hashing the key, as the proxy does per request), and Maglev table builds.
//!
//! `cargo bench -p ballast-balance`; `ballast bench balance` prints the same figures as a table.

use std::hint::black_box;

use ballast_balance::{ALGORITHM_NAMES, Algorithm, Backend, Picker, hash_key};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::new(format!("b{i}"), 1)).collect()
}

fn pick(c: &mut Criterion) {
    for name in ALGORITHM_NAMES {
        let algorithm: Algorithm = name.parse().expect("known name");
        let mut group = c.benchmark_group(format!("pick/{name}"));
        for n in [3, 10, 100, 1000] {
            let set = backends(n);
            let picker = Picker::build(&algorithm, &set).expect("valid set");
            let hashed = algorithm.uses_key();
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                let mut i = 0u64;
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let key = if hashed {
                        hash_key(&i.to_le_bytes())
                    } else {
                        i
                    };
                    black_box(picker.pick(black_box(key)))
                });
            });
        }
        group.finish();
    }
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(20);
    for table_size in [65_537, 655_373] {
        for n in [10, 100, 1000] {
            let set = backends(n);
            let algorithm = Algorithm::Maglev { table_size };
            group.bench_function(BenchmarkId::new(format!("M={table_size}"), n), |b| {
                b.iter(|| Picker::build(&algorithm, black_box(&set)).expect("valid set"));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick, maglev_build);
criterion_main!(benches);
