//! `redis-minority` and `redis-majority`: clients on the client host contend for a Redlock lock
//! over five Redis nodes, each on a host of its own, writing to a fenced resource while they
//! hold it (the clients of `ballast lock check`); then a minority (two nodes) or a majority
//! (three) is cut off from every other host — packets dropped, no reset — for 20 TTLs, and
//! healed.
//!
//! Claims, both ways: no two clients ever held the lock at once and the resource accepted no
//! stale token. A minority cut leaves the lock available: grants go on. A majority cut makes it
//! unavailable, never unsafe: no grant from one TTL after the cut (a grant under way may land)
//! to the heal, and grants again soon after the heal.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ballast_bench::lock_check::{Contenders, LOCK, client_args, now_ns};
use ballast_lock::fenced::Register;
use ballast_lock::history::{Event, verify};

use crate::check::{Outcome, Verdict, seconds};
use crate::fault;
use crate::net::Host;
use crate::system::{self, Db, Lab, Shape};

pub(super) const SHAPE: Shape = Shape {
    lbs: 1,
    backends: 1,
    controls: 1,
    redis: 5,
    db: Db::Sqlite,
    leaders_ignore_lease_loss: false,
};
const TTL: Duration = Duration::from_millis(500);
const CLIENTS: u32 = 5;
const WARM_UP: Duration = Duration::from_secs(2);
const CUT_FOR: Duration = Duration::from_secs(10);
const AFTER_HEAL: Duration = Duration::from_secs(3);
/// How soon after a majority comes back the lock must be granted again: a key the cut nodes
/// still hold expires within a TTL, and a waiting client retries within its longest pause
/// (200 ms).
const BACK_WITHIN: Duration = Duration::from_millis(1200);

/// Which side of the nodes is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    Minority,
    Majority,
}

impl Cut {
    fn nodes(self) -> std::ops::RangeInclusive<u8> {
        match self {
            Self::Minority => 4..=5,
            Self::Majority => 3..=5,
        }
    }
}

pub(super) async fn measure(
    lab: &mut Lab,
    cut: Cut,
    program: &Path,
    step: &dyn Fn(&str),
) -> Result<Outcome> {
    let (resource, observed_resource) = lab.start_resource_redis()?;
    let register = Register::open(&observed_resource, LOCK)
        .await
        .context("the resource's Unix socket")?;
    register.clear().await?;
    let nodes: Vec<String> = (1..=SHAPE.redis)
        .map(|n| format!("redis://{}:6379", system::address("redis", n)))
        .collect();
    let client_host = lab.host("client")?.clone();
    let contenders = Contenders::start(CLIENTS, |client| {
        let mut command = tokio::process::Command::from(client_host.command(program));
        command.args(client_args(&nodes, &resource, client, TTL));
        command
    })?;
    step(&format!(
        "{CLIENTS} clients on client contend for a lock over redis-1 … redis-{} (TTL {} ms), \
         writing to a fenced register",
        SHAPE.redis,
        TTL.as_millis()
    ));
    tokio::time::sleep(WARM_UP).await;

    let names: Vec<String> = cut.nodes().map(|n| format!("redis-{n}")).collect();
    let cut_off: Vec<&Host> = names
        .iter()
        .map(|name| lab.host(name))
        .collect::<Result<_>>()?;
    fault::partition(&lab.state.network, &cut_off)?;
    let cut_at = now_ns();
    step(&format!(
        "{} cut off from every other host for {} s",
        names.join(", "),
        CUT_FOR.as_secs()
    ));
    tokio::time::sleep(CUT_FOR).await;
    // Nodes come back one by one as the heal goes: the cut ends when it starts.
    let healing_at = now_ns();
    fault::heal(&cut_off)?;
    let healed_at = now_ns();
    step("healed");
    tokio::time::sleep(AFTER_HEAL).await;
    let events = contenders.stop().await;
    let accepted = register.tokens().await?;
    Ok(judge(
        cut,
        &events,
        &accepted,
        (cut_at, healing_at, healed_at),
    ))
}

/// `times`: when the cut was in place, when the heal started, when it was done (monotonic ns).
fn judge(cut: Cut, events: &[Event], accepted: &[u64], times: (u64, u64, u64)) -> Outcome {
    let (cut_at, healing_at, healed_at) = times;
    let verdict = verify(events, accepted);
    let grant_times: Vec<u64> = events
        .iter()
        .filter_map(|event| match event {
            Event::Grant { at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    let settled = cut_at + TTL.as_nanos() as u64;
    let granted_cut_off = grant_times
        .iter()
        .filter(|at| (settled..healing_at).contains(at))
        .count();
    let before = grant_times.iter().filter(|at| **at < cut_at).count();
    let mut verdicts = vec![
        Verdict::claim(
            "violations (overlaps, stale writes, token order)",
            verdict.violations.len().to_string(),
            "0".to_owned(),
            verdict.violations.is_empty(),
        ),
        Verdict::claim(
            "grants before the cut",
            before.to_string(),
            "> 0".to_owned(),
            before > 0,
        ),
    ];
    match cut {
        Cut::Minority => verdicts.push(Verdict::claim(
            "grants while a minority is cut off",
            granted_cut_off.to_string(),
            "> 0".to_owned(),
            granted_cut_off > 0,
        )),
        Cut::Majority => {
            verdicts.push(Verdict::claim(
                "grants while a majority is cut off",
                granted_cut_off.to_string(),
                "0".to_owned(),
                granted_cut_off == 0,
            ));
            let back = grant_times
                .iter()
                .filter(|at| **at >= healed_at)
                .min()
                .map(|at| Duration::from_nanos(at - healed_at));
            verdicts.push(Verdict::claim(
                "first grant after the heal",
                back.map_or_else(|| "none".to_owned(), seconds),
                format!("≤ {}", seconds(BACK_WITHIN)),
                back.is_some_and(|b| b <= BACK_WITHIN),
            ));
        }
    }
    verdicts.push(Verdict::context(
        "grants, renewals, losses",
        format!(
            "{}, {}, {}",
            verdict.grants, verdict.renewals, verdict.losses
        ),
    ));
    verdicts.push(Verdict::context(
        "writes accepted, refused",
        format!("{}, {}", verdict.writes_accepted, verdict.writes_refused),
    ));
    let notes = super::first_notes(verdict.violations.into_iter(), "violations");
    Outcome {
        scenario: match cut {
            Cut::Minority => "redis-minority",
            Cut::Majority => "redis-majority",
        },
        verdicts,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(client: u32, token: u64, at_ms: u64) -> Event {
        Event::Grant {
            client,
            token,
            at: at_ms * 1_000_000,
            until: (at_ms + 400) * 1_000_000,
        }
    }

    fn holds(outcome: &Outcome, measure: &str) -> bool {
        outcome.holds(measure).expect("the measure is in the table")
    }

    #[test]
    fn a_grant_while_a_majority_is_cut_off_fails_the_check_and_one_under_way_does_not() {
        let times = (1_000_000_000, 5_000_000_000, 5_010_000_000);
        let under_way = vec![grant(0, 1, 500), grant(1, 2, 1_200), grant(2, 3, 5_300)];
        let outcome = judge(Cut::Majority, &under_way, &[1, 2, 3], times);
        assert!(outcome.passed(), "{outcome:?}");
        let unsafe_grant = vec![grant(0, 1, 500), grant(1, 2, 3_000), grant(2, 3, 5_300)];
        let outcome = judge(Cut::Majority, &unsafe_grant, &[1, 2, 3], times);
        assert!(!holds(&outcome, "grants while a majority is cut off"));
        assert!(!outcome.passed());
    }

    #[test]
    fn a_stale_write_or_no_grant_during_a_minority_cut_fails_the_check() {
        let times = (1_000_000_000, 5_000_000_000, 5_010_000_000);
        let events = vec![grant(0, 1, 500), grant(1, 2, 3_000)];
        assert!(judge(Cut::Minority, &events, &[1, 2], times).passed());
        let stale = judge(Cut::Minority, &events, &[2, 1], times);
        assert!(!holds(
            &stale,
            "violations (overlaps, stale writes, token order)"
        ));
        let starved = judge(Cut::Minority, &events[..1], &[1], times);
        assert!(!holds(&starved, "grants while a minority is cut off"));
    }
}
