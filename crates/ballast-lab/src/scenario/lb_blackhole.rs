//! `lb-blackhole`: an LB server's packets vanish. Claims: the orchestrator, which scrapes every
//! LB's `/metrics`, finds it dead and DNS stops answering with it within 3 scrape intervals +
//! 0.5 s + DNS's fleet interval (a resolver may hold it a TTL longer); the other LB stays in every
//! answer meanwhile, so the name never resolves to nothing.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ballast_dns::proto::op::{Message, Query};
use ballast_dns::proto::rr::{Name, RData, RecordType};

use crate::check::{Outcome, Verdict, seconds};
use crate::client;
use crate::fault;
use crate::net::Host;
use crate::system::{self, DNS_NAME, Db, Lab, Shape};
use crate::wait;

pub(super) const SHAPE: Shape = Shape {
    lbs: 2,
    backends: 1,
    controls: 1,
    redis: 0,
    // Over PostgreSQL, as a fleet of hosts runs: a cut-off LB cannot heartbeat either (through
    // a shared SQLite file it could, and would count as alive).
    db: Db::Postgres,
    leaders_ignore_lease_loss: false,
};
/// The orchestrator's scrape interval in the lab, and `ballast dns`'s fleet interval.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
const FLEET_INTERVAL: Duration = Duration::from_millis(250);
/// How long the LBs run watched before the cut.
const WATCHED: Duration = Duration::from_secs(5);
/// `ballast dns`'s TTL: how long a resolver may still hand out an address DNS dropped.
const TTL: Duration = Duration::from_secs(5);

pub(super) async fn measure(lab: &Lab, step: &dyn Fn(&str)) -> Result<Outcome> {
    let client_host = lab.host("client")?.clone();
    let cut_lb = system::address("lb", 1);
    let other_lb = system::address("lb", 2);
    step("waiting until DNS answers with both LBs");
    watch(&client_host, Duration::from_secs(30), |answer| {
        answer.contains(&cut_lb) && answer.contains(&other_lb)
    })
    .await
    .context("DNS never answered with both LBs")?;
    // The orchestrator judges an LB by the rhythm of its signs of life: give it some history,
    // as LBs that have run a while have.
    step(&format!(
        "letting the orchestrator watch the LBs for {} s",
        WATCHED.as_secs()
    ));
    tokio::time::sleep(WATCHED).await;

    fault::partition(&lab.state.network, &[lab.host("lb-1")?])?;
    let cut = Instant::now();
    step("lb-1 cut off: its packets are dropped, both ways");
    let mut answers_without_other = 0;
    let mut answers = 0;
    let gone = watch(&client_host, Duration::from_secs(30), |answer| {
        answers += 1;
        if !answer.contains(&other_lb) {
            answers_without_other += 1;
        }
        !answer.contains(&cut_lb)
    })
    .await;
    let gone_after = cut.elapsed();
    fault::heal(&[lab.host("lb-1")?])?;
    let healed = Instant::now();
    let back = watch(&client_host, Duration::from_secs(30), |answer| {
        answer.contains(&cut_lb)
    })
    .await;
    let back_after = healed.elapsed();
    gone.context("DNS kept answering with lb-1")?;

    let bound = SCRAPE_INTERVAL * 3 + Duration::from_millis(500) + FLEET_INTERVAL;
    let mut verdicts = vec![
        Verdict::claim(
            "lb-1 out of DNS after the cut",
            seconds(gone_after),
            format!("≤ {}", seconds(bound)),
            gone_after <= bound,
        ),
        Verdict::claim(
            "answers without lb-2 meanwhile",
            format!("{answers_without_other} of {answers}"),
            "0".to_owned(),
            answers_without_other == 0 && answers > 0,
        ),
        Verdict::context(
            "out of resolvers' caches by (+ TTL)",
            seconds(gone_after + TTL),
        ),
    ];
    if back.is_ok() {
        verdicts.push(Verdict::context(
            "back in DNS after the heal",
            seconds(back_after),
        ));
    }
    Ok(Outcome {
        scenario: "lb-blackhole",
        verdicts,
        notes: Vec::new(),
    })
}

/// Asks DNS (from `host`, as a client's resolver would) again and again until `done` says so.
async fn watch(
    host: &Host,
    within: Duration,
    mut done: impl FnMut(&BTreeSet<Ipv4Addr>) -> bool,
) -> Result<()> {
    wait::until(within, async || {
        let asking = host.clone();
        let answer = tokio::task::spawn_blocking(move || resolve(&asking)).await??;
        Ok(if done(&answer) {
            Ok(())
        } else {
            Err(format!("DNS answered {answer:?}"))
        })
    })
    .await
}

/// The A records DNS answers for the demo pool's name, asked from `host`.
fn resolve(host: &Host) -> Result<BTreeSet<Ipv4Addr>> {
    let mut query = Message::new();
    query.add_query(Query::query(Name::from_ascii(DNS_NAME)?, RecordType::A));
    query.set_id(fastrand::u16(..));
    let bytes = query.to_vec()?;
    let server = SocketAddr::from((system::address("dns", 0), 53));
    let reply = client::run_on_host(host, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        socket.send_to(&bytes, server)?;
        let mut buffer = [0u8; 4096];
        let (length, _) = socket
            .recv_from(&mut buffer)
            .context("no answer from DNS")?;
        Ok(buffer[..length].to_vec())
    })?;
    let message = Message::from_vec(&reply)?;
    Ok(message
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::A(address) => Some(address.0),
            _ => None,
        })
        .collect())
}
