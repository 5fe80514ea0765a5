//! `ballast balance simulate` as a user runs it: the real binary, its output parsed as text.

mod support;

use std::process::{Command, Output};

fn ballast(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args(args)
        .output()
        .expect("the ballast binary runs")
}

/// Stdout of a run that must succeed.
fn stdout(args: &[&str]) -> String {
    let output = ballast(args);
    assert!(
        output.status.success(),
        "ballast {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Stderr of a run that must fail.
fn error(args: &[&str]) -> String {
    support::rejected(args)
}

fn columns(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn readme_example_prints_ten_key_backend_lines_reproducibly() {
    let args = [
        "balance",
        "simulate",
        "--algorithm",
        "maglev",
        "--backends",
        "a,b,c",
        "--requests",
        "10",
        "--seed",
        "1",
    ];
    let first = stdout(&args);
    let lines = columns(&first);
    assert_eq!(lines.len(), 10);
    for line in &lines {
        assert_eq!(line.len(), 2, "{line:?}");
        line[0].parse::<u64>().expect("a numeric key");
        assert!(["a", "b", "c"].contains(&line[1]), "{line:?}");
    }
    assert_eq!(first, stdout(&args), "same seed, same output");
}

#[test]
fn smooth_weighted_round_robin_interleaves() {
    let out = stdout(&[
        "balance",
        "simulate",
        "--algorithm",
        "weighted_round_robin",
        "--backends",
        "a:5,b:1,c:1",
        "--requests",
        "7",
        "--keys",
        "sequential",
    ]);
    let backends: Vec<&str> = columns(&out).iter().map(|l| l[1]).collect();
    assert_eq!(backends, ["a", "a", "b", "a", "c", "a", "a"]);
    let keys: Vec<&str> = columns(&out).iter().map(|l| l[0]).collect();
    assert_eq!(keys, ["0", "1", "2", "3", "4", "5", "6"]);
}

#[test]
fn remove_moves_only_the_removed_backends_keys_on_a_ring() {
    let out = stdout(&[
        "balance",
        "simulate",
        "--algorithm",
        "ring_hash",
        "--backends",
        "a,b,c,d",
        "--requests",
        "2000",
        "--seed",
        "9",
        "--remove",
        "b",
    ]);
    let lines = columns(&out);
    assert_eq!(lines.len(), 2000);
    let mut moved_from_b = 0;
    for line in &lines {
        let (before, after) = (line[1], line[2]);
        assert_ne!(after, "b");
        if before == "b" {
            moved_from_b += 1;
        } else {
            assert_eq!(before, after, "{line:?}");
        }
    }
    assert!(
        moved_from_b > 300,
        "b held about a quarter of the keys: {moved_from_b}"
    );
}

#[test]
fn summary_shows_weighted_shares_and_moved_keys() {
    let out = stdout(&[
        "balance",
        "simulate",
        "--algorithm",
        "maglev",
        "--backends",
        "a:2,b:1,c:1",
        "--requests",
        "100000",
        "--seed",
        "5",
        "--remove",
        "c",
        "--summary",
    ]);
    let lines = columns(&out);
    assert_eq!(
        lines[0],
        ["backend", "weight", "expected", "before", "after"]
    );
    let share = |cell: &str| {
        cell.trim_end_matches('%')
            .parse::<f64>()
            .expect("a percentage")
    };
    assert_eq!(lines[1][..3], ["a", "2", "50.00%"]);
    assert!((share(lines[1][3]) - 50.0).abs() < 1.0, "{:?}", lines[1]);
    assert!((share(lines[3][3]) - 25.0).abs() < 1.0, "{:?}", lines[3]);
    assert_eq!(lines[3][4], "0.00%", "c is gone after");
    let moved = lines[4].join(" ");
    assert!(moved.starts_with("moved "), "{moved}");
    assert!(
        moved.contains("100.00% of the removed backends' keys"),
        "{moved}"
    );
}

#[test]
fn load_aware_algorithms_beat_rotation_in_front_of_a_slow_backend() {
    let out = stdout(&[
        "balance",
        "simulate",
        "--backends",
        "a,b,c,d",
        "--service-ms",
        "a=5,b=5,c=5,d=50",
        "--requests",
        "20000",
        "--seed",
        "3",
        "--concurrency",
        "8",
        "--compare",
    ]);
    let lines = columns(&out);
    assert_eq!(
        lines[0],
        ["algorithm", "mean_ms", "p50_ms", "p99_ms", "max_ms"]
    );
    let mean = |name: &str| -> f64 {
        lines
            .iter()
            .find(|l| l[0] == name)
            .unwrap_or_else(|| panic!("a row for {name}"))[1]
            .parse()
            .expect("a number")
    };
    // Virtual time, not wall-clock: the same seed gives the same figures on any machine.
    assert!(mean("least_connections") < mean("round_robin") / 2.0);
    assert!(mean("least_request") < mean("round_robin") / 2.0);
    assert!(mean("least_request+peak_ewma") < mean("round_robin") / 2.0);
    assert_eq!(lines.len(), 1 + 9, "every algorithm, least_request twice");
}

#[test]
fn bad_input_is_rejected_with_the_field_and_reason() {
    let base = ["balance", "simulate", "--requests", "5"];
    let run = |extra: &[&str]| error(&[&base[..], extra].concat());

    let unknown = run(&["--algorithm", "fastest", "--backends", "a"]);
    assert!(
        unknown.contains("unknown algorithm") && unknown.contains("maglev"),
        "{unknown}"
    );

    let duplicate = run(&["--algorithm", "maglev", "--backends", "a,b,a"]);
    assert!(duplicate.contains("duplicate id `a`"), "{duplicate}");

    let not_prime = run(&[
        "--algorithm",
        "maglev",
        "--backends",
        "a",
        "--table-size",
        "65536",
    ]);
    assert!(
        not_prime.contains("maglev.table_size: 65536 is not a prime"),
        "{not_prime}"
    );

    let misplaced = run(&[
        "--algorithm",
        "round_robin",
        "--backends",
        "a",
        "--table-size",
        "7",
    ]);
    assert!(
        misplaced.contains("--table-size does not apply to --algorithm round_robin"),
        "{misplaced}"
    );

    let load_factor = run(&[
        "--algorithm",
        "bounded_load",
        "--backends",
        "a",
        "--load-factor",
        "1",
    ]);
    assert!(
        load_factor.contains("bounded_load.load_factor: must be a number above 1"),
        "{load_factor}"
    );

    let weight = run(&["--algorithm", "random", "--backends", "a:x"]);
    assert!(
        weight.contains("weight `x` must be a whole number"),
        "{weight}"
    );

    let removed = run(&[
        "--algorithm",
        "maglev",
        "--backends",
        "a,b",
        "--remove",
        "z",
    ]);
    assert!(
        removed.contains("--remove: `z` is not one of --backends"),
        "{removed}"
    );

    let service = run(&["--backends", "a,b", "--service-ms", "a=5"]);
    assert!(
        service.contains("no service time for backend `b`"),
        "{service}"
    );

    let idle = run(&["--algorithm", "maglev", "--backends", "a:0"]);
    assert!(idle.contains("no backend takes traffic"), "{idle}");
}
