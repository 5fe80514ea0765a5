//! `lb-db-partition`: an LB server is cut off from the configuration database (PostgreSQL on
//! its own host; packets dropped, no reset) while clients send GETs through it, and the
//! configuration changes meanwhile. Claims: the LB keeps serving its last configuration (no
//! client request fails), and it applies the change within 1 s of the heal.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ballast_config::Write;

use crate::check::{Outcome, Verdict, seconds};
use crate::client::{self, GetLoad, Request};
use crate::fault;
use crate::net::Host;
use crate::system::{self, Db, Lab, Shape};
use crate::wait;

pub(super) const SHAPE: Shape = Shape {
    lbs: 1,
    backends: 2,
    controls: 1,
    redis: 0,
    db: Db::Postgres,
    leaders_ignore_lease_loss: false,
};
const WARM_UP: Duration = Duration::from_secs(2);
/// How long the LB stays cut off: several pull intervals and heartbeats.
const CUT_FOR: Duration = Duration::from_secs(10);
const CATCH_UP_BOUND: Duration = Duration::from_secs(1);

pub(super) async fn measure(lab: &Lab, step: &dyn Fn(&str)) -> Result<Outcome> {
    let store = lab.store().await?;
    let client_host = lab.host("client")?.clone();
    let lb = lab.host("lb-1")?;
    let origin = Instant::now();
    let load = GetLoad {
        target: system::lb_address(1),
        concurrency: 8,
        give_up_after: Duration::from_secs(10),
    }
    .start(&client_host, origin);
    step(&format!(
        "8 clients GET through lb-1 for {} s",
        WARM_UP.as_secs()
    ));
    tokio::time::sleep(WARM_UP).await;
    let before = applied(&client_host)?;

    fault::cut(&[lb], &[lab.host("db")?])?;
    let cut = origin.elapsed();
    step("lb-1 cut off from db; backend-2's weight changes to 3 meanwhile");
    let changed = store
        .apply(Write::SetWeight {
            pool: system::POOL.into(),
            address: system::backend_address(2).to_string(),
            weight: 3,
        })
        .await?;
    tokio::time::sleep(CUT_FOR).await;
    let during = applied(&client_host)?;
    fault::heal(&[lb])?;
    let healed = origin.elapsed();
    step("healed; waiting for lb-1 to apply the change");
    let caught_up = wait_for_revision(&client_host, changed, Duration::from_secs(60)).await;
    let caught_up_after = origin.elapsed().saturating_sub(healed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = load.stop()?;
    caught_up.context("lb-1 never applied the change")?;
    Ok(judge(
        &history,
        (cut, healed),
        Revisions {
            before,
            during,
            changed,
        },
        caught_up_after,
    ))
}

/// The LB's applied revision at each point.
struct Revisions {
    before: u64,
    during: u64,
    changed: u64,
}

fn judge(
    history: &[Request],
    (cut, healed): (Duration, Duration),
    revisions: Revisions,
    caught_up_after: Duration,
) -> Outcome {
    let failed: Vec<&Request> = history.iter().filter(|r| !r.ok()).collect();
    let served_cut_off = history
        .iter()
        .filter(|r| r.at >= cut && r.at + r.took < healed && r.ok())
        .count();
    let verdicts = vec![
        Verdict::claim(
            "failed GETs",
            format!("{} of {}", failed.len(), history.len()),
            "0".to_owned(),
            failed.is_empty() && !history.is_empty(),
        ),
        Verdict::claim(
            "GETs served while cut off",
            served_cut_off.to_string(),
            "> 0".to_owned(),
            served_cut_off > 0,
        ),
        Verdict::context(
            "revision applied: before, cut off, changed to",
            format!(
                "{}, {}, {}",
                revisions.before, revisions.during, revisions.changed
            ),
        ),
        Verdict::claim(
            "change applied after the heal",
            seconds(caught_up_after),
            format!("≤ {}", seconds(CATCH_UP_BOUND)),
            caught_up_after <= CATCH_UP_BOUND,
        ),
    ];
    Outcome {
        scenario: "lb-db-partition",
        verdicts,
        notes: super::failure_notes(&failed),
    }
}

/// The configuration revision lb-1 applied, from its `/metrics` as the client host reads it.
fn applied(client_host: &Host) -> Result<u64> {
    let admin = std::net::SocketAddr::from((system::address("lb", 1), 9090));
    let metrics = client::fetch(client_host, admin, "/metrics")?;
    client::metric(&metrics, "ballast_config_revision")
        .map(|value| value as u64)
        .context("lb-1's /metrics has no ballast_config_revision")
}

async fn wait_for_revision(client_host: &Host, revision: u64, within: Duration) -> Result<()> {
    wait::until(within, async || {
        let host = client_host.clone();
        let now = tokio::task::spawn_blocking(move || applied(&host)).await??;
        Ok(if now >= revision {
            Ok(())
        } else {
            Err(format!("lb-1 at revision {now}, not {revision},"))
        })
    })
    .await
}
