//! `ballast bench balance` runs to the end and prints its three tables (figures are not checked:
//! speed is for benchmarks, not tests).

use std::process::Command;

#[test]
fn prints_every_table_with_every_algorithm() {
    let output = Command::new(env!("CARGO_BIN_EXE_ballast"))
        .args([
            "bench",
            "balance",
            "--time-per-cell",
            "1ms",
            "--keys",
            "2000",
        ])
        .output()
        .expect("the ballast binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = String::from_utf8(output.stdout).expect("utf-8");
    for heading in ["# pick:", "# maglev build:", "# balance over 1000 backends"] {
        assert!(out.contains(heading), "missing {heading} in:\n{out}");
    }
    for algorithm in ballast_balance::ALGORITHM_NAMES {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(algorithm))
            .unwrap_or_else(|| panic!("no row for {algorithm}"));
        let figures: Vec<f64> = row
            .split_whitespace()
            .skip(1)
            .map(|cell| cell.parse().expect("a number"))
            .collect();
        assert_eq!(figures.len(), 4, "{row}");
        assert!(figures.iter().all(|ns| *ns > 0.0), "{row}");
    }
}
