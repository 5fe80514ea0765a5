//! `leader-partition`: the leading `ballast control` is cut off from the database and from every
//! Redis node (packets dropped, no reset) while a backend fails, so that there are verdicts to
//! write; ten seconds later the cut heals and the backend comes back.
//!
//! Claims: the other control leads within the lease TTL + 1 s of the cut; no look at both
//! controls ever finds two leaders; the new leader writes the failed backend's verdict; and in the
//! change log the orchestrator's fencing tokens never go down — no write of the old leader landed
//! after one of the new leader's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ballast_config::{Change, Health};

use crate::check::{Outcome, Verdict, seconds};
use crate::client;
use crate::fault;
use crate::net::Host;
use crate::system::{self, Db, LEASE_TTL, Lab, Shape};
use crate::wait;

pub(super) const SHAPE: Shape = Shape {
    lbs: 1,
    backends: 2,
    controls: 2,
    redis: 3,
    db: Db::Postgres,
    leaders_ignore_lease_loss: false,
};
const CUT_FOR: Duration = Duration::from_secs(10);
/// The fencing name the orchestrator's writes carry.
const FENCE: &str = "ballast-orchestrator";
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// One look at both controls: whether each said it leads (`None`: no answer).
#[derive(Debug, Clone, Copy)]
struct Look {
    at: Duration,
    leading: [Option<bool>; 2],
}

pub(super) async fn measure(lab: &Lab, step: &dyn Fn(&str)) -> Result<Outcome> {
    let client_host = lab.host("client")?.clone();
    let controls = [control_address(1), control_address(2)];
    let token = lab.token().to_owned();
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let looking = look_on(&client_host, controls, token, origin, Arc::clone(&stop));
    let leader = wait_for_leader(&looking, None, Duration::from_secs(30)).await?;
    let old = leader;
    let new = 1 - old;
    let old_name = format!("control-{}", old + 1);
    let store = lab.store().await?;
    let revision_before = store.revision().await?;

    let old_host = lab.host(&old_name)?;
    let mut others: Vec<&Host> = vec![lab.host("db")?];
    for n in 1..=SHAPE.redis {
        others.push(lab.host(&format!("redis-{n}"))?);
    }
    let backend = lab.host("backend-2")?;
    fault::partition(&lab.state.network, &[backend])?;
    fault::cut(&[old_host], &others)?;
    let cut = origin.elapsed();
    step(&format!(
        "{old_name} (leading) cut off from db and the Redis nodes, backend-2 from everyone, for {} s",
        CUT_FOR.as_secs()
    ));
    let took_over = wait_for_leader(&looking, Some(new), CUT_FOR)
        .await
        .ok()
        .map(|_| looking.first_leading(new, cut).unwrap_or(cut) - cut);
    let down_written = wait_for_health(&store, Health::Unhealthy, CUT_FOR)
        .await
        .is_ok();
    tokio::time::sleep(CUT_FOR.saturating_sub(origin.elapsed() - cut)).await;
    fault::heal(&[old_host, backend])?;
    step("healed; waiting for backend-2's verdict to come back");
    let back = wait_for_health(&store, Health::Healthy, Duration::from_secs(30)).await;
    // Time for what the old leader still had on its way to land, or be refused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let looks = looking.finish()?;
    let refused = fenced_writes_refused(&client_host, controls[old], lab.token())?;
    back.context("backend-2 never checked healthy again")?;
    let changes = store.changes_since(revision_before, 100_000).await?;
    Ok(judge(
        &looks,
        cut,
        old,
        Written {
            down: down_written,
            refused,
        },
        took_over,
        &changes,
    ))
}

/// The writes the old leader's store calls were refused for a stale token, from its metrics.
fn fenced_writes_refused(host: &Host, control: SocketAddr, token: &str) -> Result<u64> {
    let token = token.to_owned();
    let page = client::run_on_host(host, move || {
        client::get_page(control, "/metrics", Some(&token))
    })?;
    client::metric(&page, "ballast_fenced_writes_refused_total")
        .map(|value| value as u64)
        .context("no ballast_fenced_writes_refused_total in the old leader's /metrics")
}

/// What the leaders wrote: whether the new one wrote backend-2 unhealthy, and how many writes
/// of the old one the store refused.
struct Written {
    down: bool,
    refused: u64,
}

fn control_address(n: u8) -> SocketAddr {
    (system::address("control", n), 9000).into()
}

/// The looks a thread on the client host takes at both controls' `/metrics`, every 50 ms.
struct Looking {
    looks: Arc<std::sync::Mutex<Vec<Look>>>,
    thread: std::thread::JoinHandle<Result<()>>,
}

fn look_on(
    host: &Host,
    controls: [SocketAddr; 2],
    token: String,
    origin: Instant,
    stop: Arc<AtomicBool>,
) -> Looking {
    let looks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&looks);
    let thread = client::on_host(host, move || {
        while !stop.load(Ordering::Relaxed) {
            let at = origin.elapsed();
            let leading = controls.map(|control| {
                client::get_page(control, "/metrics", Some(&token))
                    .ok()
                    .map(|page| client::metric(&page, "ballast_orchestrator_leading") == Some(1.0))
            });
            record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Look { at, leading });
            std::thread::sleep(LOOK_EVERY);
        }
        Ok(())
    });
    Looking { looks, thread }
}

impl Looking {
    fn latest(&self) -> Option<Look> {
        self.looks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    }

    /// When control `index` was first seen leading at or after `from`.
    fn first_leading(&self, index: usize, from: Duration) -> Option<Duration> {
        self.looks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|look| look.at >= from && look.leading[index] == Some(true))
            .map(|look| look.at)
    }

    fn finish(self) -> Result<Vec<Look>> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the looking thread panicked"))??;
        Ok(std::mem::take(
            &mut self.looks.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// Waits until the latest look finds a leader (`which`, if given); its index.
async fn wait_for_leader(
    looking: &Looking,
    which: Option<usize>,
    within: Duration,
) -> Result<usize> {
    let mut found = None;
    wait::until(within, async || {
        let latest = looking.latest();
        found = latest.and_then(|look| {
            (0..2).find(|&i| look.leading[i] == Some(true) && which.is_none_or(|w| w == i))
        });
        Ok(match found {
            Some(_) => Ok(()),
            None => Err(format!("no leader in the latest look ({latest:?})")),
        })
    })
    .await?;
    match found {
        Some(index) => Ok(index),
        None => bail!("no leader"),
    }
}

async fn wait_for_health(
    store: &ballast_config::SqlStore,
    health: Health,
    within: Duration,
) -> Result<()> {
    let address = system::backend_address(2).to_string();
    wait::until(within, async || {
        let now = system::backend_health(store)
            .await?
            .into_iter()
            .find(|(a, _)| *a == address)
            .map(|(_, h)| h);
        Ok(if now == Some(health) {
            Ok(())
        } else {
            Err(format!("backend-2 is {now:?}, not {health:?}"))
        })
    })
    .await
}

fn judge(
    looks: &[Look],
    cut: Duration,
    old: usize,
    written: Written,
    took_over: Option<Duration>,
    changes: &[Change],
) -> Outcome {
    let double = looks
        .iter()
        .filter(|look| look.leading == [Some(true), Some(true)])
        .count();
    let stepped_down = looks
        .iter()
        .find(|look| look.at >= cut && look.leading[old] == Some(false))
        .map(|look| look.at - cut);
    let tokens: Vec<(u64, u64)> = changes
        .iter()
        .filter(|c| c.fence_name.as_deref() == Some(FENCE))
        .filter_map(|c| c.fence_token.map(|t| (c.revision, t)))
        .collect();
    let mut newest = 0;
    let mut stale = Vec::new();
    for (revision, token) in &tokens {
        if *token < newest {
            stale.push(format!(
                "revision {revision} was written with token {token} after token {newest}"
            ));
        }
        newest = newest.max(*token);
    }
    let mut distinct: Vec<u64> = tokens.iter().map(|(_, t)| *t).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let bound = LEASE_TTL + Duration::from_secs(1);
    let verdicts = vec![
        Verdict::claim(
            "new leader after the cut",
            took_over.map_or_else(|| "none".to_owned(), seconds),
            format!("≤ {}", seconds(bound)),
            took_over.is_some_and(|t| t <= bound),
        ),
        Verdict::context(
            "old leader stepped down after the cut",
            stepped_down.map_or_else(|| "never".to_owned(), seconds),
        ),
        Verdict::claim(
            "looks finding two leaders",
            format!("{double} of {}", looks.len()),
            "0".to_owned(),
            double == 0 && !looks.is_empty(),
        ),
        Verdict::claim(
            "backend-2 unhealthy, written by the new leader",
            if written.down { "yes" } else { "no" }.to_owned(),
            "yes".to_owned(),
            written.down,
        ),
        Verdict::claim(
            "writes landed after a newer leader's",
            format!("{} of {}", stale.len(), tokens.len()),
            "0".to_owned(),
            stale.is_empty() && !tokens.is_empty(),
        ),
        Verdict::context(
            "old leader's writes refused by fencing",
            written.refused.to_string(),
        ),
        Verdict::context(
            "fencing tokens in the change log",
            distinct
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    Outcome {
        scenario: "leader-partition",
        verdicts,
        notes: super::first_notes(stale.into_iter(), "stale writes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(revision: u64, token: Option<u64>) -> Change {
        Change {
            revision,
            entity: "backend".into(),
            operation: "set_health".into(),
            value: serde_json::Value::Null,
            at_ms: 0,
            fence_name: token.map(|_| FENCE.to_owned()),
            fence_token: token,
        }
    }

    fn look(ms: u64, leading: [bool; 2]) -> Look {
        Look {
            at: Duration::from_millis(ms),
            leading: leading.map(Some),
        }
    }

    fn holds(outcome: &Outcome, measure: &str) -> bool {
        outcome.holds(measure).expect("the measure is in the table")
    }

    fn written() -> Written {
        Written {
            down: true,
            refused: 0,
        }
    }

    #[test]
    fn an_older_token_after_a_newer_one_fails_the_check_and_unfenced_writes_do_not_count() {
        let looks = [look(0, [true, false]), look(4000, [false, true])];
        let cut = Duration::from_millis(1000);
        let took_over = Some(Duration::from_millis(3000));
        let ordered = [change(5, Some(7)), change(6, None), change(7, Some(9))];
        let outcome = judge(&looks, cut, 0, written(), took_over, &ordered);
        assert!(outcome.passed(), "{outcome:?}");
        let stale = [change(5, Some(9)), change(6, Some(7))];
        let outcome = judge(&looks, cut, 0, written(), took_over, &stale);
        assert!(!holds(&outcome, "writes landed after a newer leader's"));
        assert_eq!(
            outcome.notes,
            ["revision 6 was written with token 7 after token 9"]
        );
    }

    #[test]
    fn two_leaders_in_one_look_or_a_slow_takeover_fails_the_check() {
        let cut = Duration::from_millis(1000);
        let changes = [change(5, Some(9))];
        let both = [look(0, [true, false]), look(2000, [true, true])];
        let outcome = judge(&both, cut, 0, written(), Some(cut), &changes);
        assert!(!holds(&outcome, "looks finding two leaders"));
        let one = [look(0, [true, false]), look(2000, [false, true])];
        let slow = judge(
            &one,
            cut,
            0,
            written(),
            Some(Duration::from_secs(5)),
            &changes,
        );
        assert!(!holds(&slow, "new leader after the cut"));
        assert!(!judge(&one, cut, 0, written(), None, &changes).passed());
    }
}
