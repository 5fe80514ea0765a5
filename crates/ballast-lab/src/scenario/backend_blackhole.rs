//! `backend-blackhole`: a backend's packets vanish (no reset, no ICMP) while clients send GETs
//! through an LB. Claims: the orchestrator's verdict comes within 3 health-check intervals +
//! 0.5 s of the cut, and no client request fails — requests already sent to the backend, and
//! those that try to connect to it, are idempotent, so the LB must take them elsewhere.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ballast_config::{Health, SqlStore};

use crate::check::{Outcome, Verdict, seconds};
use crate::client::{GetLoad, Request};
use crate::fault;
use crate::system::{self, Db, HEALTH_INTERVAL, Lab, Shape};
use crate::wait;

pub(super) const SHAPE: Shape = Shape {
    lbs: 1,
    backends: 3,
    controls: 1,
    redis: 0,
    db: Db::Sqlite,
    leaders_ignore_lease_loss: false,
};
/// Load before the cut, so connections to every backend are open and pooled when it comes.
const WARM_UP: Duration = Duration::from_secs(2);
/// Load after the verdict, to see that traffic settled on the others.
const SETTLE: Duration = Duration::from_secs(3);

pub(super) async fn measure(lab: &Lab, step: &dyn Fn(&str)) -> Result<Outcome> {
    let store = lab.store().await?;
    let victim = lab.host("backend-1")?;
    let victim_address = system::backend_address(1).to_string();
    let origin = Instant::now();
    let load = GetLoad {
        target: system::lb_address(1),
        concurrency: 8,
        give_up_after: Duration::from_secs(10),
    }
    .start(lab.host("client")?, origin);
    step(&format!(
        "8 clients GET through lb-1 for {} s",
        WARM_UP.as_secs()
    ));
    tokio::time::sleep(WARM_UP).await;

    fault::partition(&lab.state.network, &[victim])?;
    let cut = origin.elapsed();
    step("backend-1 cut off: its packets are dropped, both ways");
    let verdict = wait_for(
        &store,
        &victim_address,
        Health::Unhealthy,
        Duration::from_secs(30),
    )
    .await;
    let verdict_at = origin.elapsed();
    step("waiting for traffic to settle");
    tokio::time::sleep(SETTLE).await;
    let history = load.stop()?;
    fault::heal(&[victim])?;
    let back = wait_for(
        &store,
        &victim_address,
        Health::Healthy,
        Duration::from_secs(30),
    )
    .await;
    let back_after = origin.elapsed().saturating_sub(verdict_at);
    verdict.context("the orchestrator never marked backend-1 unhealthy")?;
    Ok(judge(
        &history,
        cut,
        verdict_at,
        back.ok().map(|()| back_after),
    ))
}

fn judge(
    history: &[Request],
    cut: Duration,
    verdict_at: Duration,
    back_after: Option<Duration>,
) -> Outcome {
    let bound = HEALTH_INTERVAL * 3 + Duration::from_millis(500);
    let took = verdict_at.saturating_sub(cut);
    let failed: Vec<&Request> = history.iter().filter(|r| !r.ok()).collect();
    let during: Vec<&Request> = history
        .iter()
        .filter(|r| r.at >= cut && r.at < verdict_at)
        .collect();
    let slowest = history.iter().map(|r| r.took).max().unwrap_or_default();
    let mut verdicts = vec![
        Verdict::claim(
            "verdict after the cut",
            seconds(took),
            format!("≤ {}", seconds(bound)),
            took <= bound,
        ),
        Verdict::claim(
            "failed GETs",
            format!("{} of {}", failed.len(), history.len()),
            "0".to_owned(),
            failed.is_empty() && !history.is_empty(),
        ),
        Verdict::context("GETs between cut and verdict", during.len().to_string()),
        Verdict::context("slowest GET", seconds(slowest)),
    ];
    if let Some(back) = back_after {
        verdicts.push(Verdict::context(
            "healthy again after the heal",
            seconds(back),
        ));
    }
    Outcome {
        scenario: "backend-blackhole",
        verdicts,
        notes: super::failure_notes(&failed),
    }
}

/// Waits until the backend at `address` has `health` in the database.
async fn wait_for(store: &SqlStore, address: &str, health: Health, within: Duration) -> Result<()> {
    wait::until(within, async || {
        let now = system::backend_health(store)
            .await?
            .into_iter()
            .find(|(backend, _)| backend == address)
            .map(|(_, health)| health);
        Ok(if now == Some(health) {
            Ok(())
        } else {
            Err(format!("{address} {now:?}, not {health:?},"))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(at_ms: u64, outcome: Result<u16, String>) -> Request {
        Request {
            at: Duration::from_millis(at_ms),
            took: Duration::from_millis(5),
            outcome,
        }
    }

    #[test]
    fn one_failed_get_or_a_late_verdict_fails_the_check() {
        let cut = Duration::from_secs(2);
        let fine = vec![request(1000, Ok(200)), request(2500, Ok(200))];
        assert!(judge(&fine, cut, cut + Duration::from_secs(1), None).passed());

        let late = judge(&fine, cut, cut + Duration::from_secs(4), None);
        assert!(!late.passed());
        assert!(!late.verdicts[0].holds);

        let mut failed = fine.clone();
        failed.push(request(2100, Ok(504)));
        failed.push(request(2200, Err("no response in 10 s".into())));
        let outcome = judge(&failed, cut, cut + Duration::from_secs(1), None);
        assert!(!outcome.passed());
        assert_eq!(outcome.verdicts[1].figure, "2 of 4");
        assert!(
            outcome.notes[0].contains("status 504"),
            "{:?}",
            outcome.notes
        );

        // No request at all is no evidence: it fails too.
        assert!(!judge(&[], cut, cut, None).passed());
    }
}
