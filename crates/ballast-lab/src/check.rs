//! What a check reports: one row per claim, with the figure measured, the bound it is held to,
//! and whether it held. A check passes when every row holds; `ballast lab check` exits 1
//! otherwise, so a broken guarantee fails a script or a test.

use std::io::{self, Write};
use std::time::Duration;

use ballast_bench::table::Table;

/// One claim and what was measured of it.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct Verdict {
    pub measure: String,
    pub figure: String,
    /// The bound, as people write it (`≤ 3.5 s`, `0`); empty for a figure shown for context.
    pub bound: String,
    pub holds: bool,
}

impl Verdict {
    /// A claim: `figure` against `bound`.
    pub fn claim(measure: &str, figure: String, bound: String, holds: bool) -> Self {
        Self {
            measure: measure.to_owned(),
            figure,
            bound,
            holds,
        }
    }

    /// A figure shown for context, held to nothing.
    pub fn context(measure: &str, figure: String) -> Self {
        Self::claim(measure, figure, String::new(), true)
    }
}

/// A scenario's verdicts, and notes on what went wrong.
#[allow(missing_docs)]
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub verdicts: Vec<Verdict>,
    pub notes: Vec<String>,
}

impl Outcome {
    /// Whether every claim held.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.holds)
    }

    /// Whether the claim `measure` held; `None` when the table has no such row.
    pub fn holds(&self, measure: &str) -> Option<bool> {
        self.verdicts
            .iter()
            .find(|v| v.measure == measure)
            .map(|v| v.holds)
    }

    /// The table, then the notes, then the verdict line.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut table = Table::new(&["measure", "figure", "bound", "holds"]);
        for verdict in &self.verdicts {
            table.row(vec![
                verdict.measure.clone(),
                verdict.figure.clone(),
                verdict.bound.clone(),
                match (verdict.bound.is_empty(), verdict.holds) {
                    (true, _) => String::new(),
                    (false, true) => "yes".to_owned(),
                    (false, false) => "NO".to_owned(),
                },
            ]);
        }
        table.write(out)?;
        for note in &self.notes {
            writeln!(out, "note: {note}")?;
        }
        let failed = self.verdicts.iter().filter(|v| !v.holds).count();
        if failed == 0 {
            writeln!(out, "{}: passed", self.scenario)
        } else {
            writeln!(
                out,
                "{}: FAILED ({failed} claims did not hold)",
                self.scenario
            )
        }
    }
}

/// `1.23 s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_what_failed_and_the_last_line_says_so() {
        let outcome = Outcome {
            scenario: "example",
            verdicts: vec![
                Verdict::claim("held", "1".into(), "≤ 2".into(), true),
                Verdict::claim("broken", "3".into(), "0".into(), false),
                Verdict::context("shown", "7".into()),
            ],
            notes: vec!["why it broke".into()],
        };
        let mut out = Vec::new();
        outcome.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let row = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or("");
        assert!(row("held").ends_with("yes"), "{text}");
        assert!(row("broken").ends_with("NO"), "{text}");
        assert!(row("shown").trim_end().ends_with('7'), "{text}");
        assert!(text.contains("note: why it broke"), "{text}");
        assert!(
            text.ends_with("example: FAILED (1 claims did not hold)\n"),
            "{text}"
        );
        assert!(!outcome.passed());
    }
}
