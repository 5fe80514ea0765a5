//! The autoscaling loop the leader runs: every interval, read the fleet and its scraped figures,
//! ask the [`Recommender`] how many LB servers to run, log the decision with its inputs, and have
//! the [`Provision`]er start or drain the difference, replacing any LB that stopped serving. LBs
//! just started count as running until they report, so that a slow start does not start more.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_config::{LbServer, SqlStore};

use crate::autoscale::{Policy, Recommender};
use crate::provision::Provision;

/// The metric the fleet is scaled on, per LB server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// CPU cores in use (1.0 = one core busy).
    Cpu,
    /// Open client connections.
    Connections,
    /// Responses per second.
    RequestsPerSecond,
}

/// `cpu:60%` (or `cpu:0.6`, or just `cpu`: 60% of a core), `connections:100` or `rps:500`: the
/// metric and its target per LB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The metric.
    pub metric: Metric,
    /// Its target per LB.
    pub value: f64,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (metric, value) = match text.split_once(':') {
            Some(split) => split,
            // CPU utilisation has a default target, as HPA's examples use: 60%.
            None if text == "cpu" => ("cpu", "60%"),
            None => return Err(format!("`{text}`: METRIC:TARGET, e.g. cpu:60% or rps:500")),
        };
        let metric = match metric {
            "cpu" => Metric::Cpu,
            "connections" => Metric::Connections,
            "rps" => Metric::RequestsPerSecond,
            other => return Err(format!("`{other}`: the metric is cpu, connections or rps")),
        };
        let value: f64 = match value.strip_suffix('%') {
            Some(percent) => percent.parse::<f64>().map(|p| p / 100.0),
            None => value.parse(),
        }
        .map_err(|_| format!("`{value}`: the target is a number (or a percentage for cpu)"))?;
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("`{value}`: the target must be above 0"));
        }
        Ok(Self { metric, value })
    }
}

impl Metric {
    fn of(self, lb: &LbServer) -> Option<f64> {
        let figures = lb.figures?;
        Some(match self {
            Self::Cpu => figures.cpu_cores,
            Self::Connections => figures.connections as f64,
            Self::RequestsPerSecond => figures.requests_per_second,
        })
    }
}

/// What the autoscaler needs: the metric and target, the policy, how often to decide, and the
/// provisioner, shared between leadership terms (the LBs it started outlive a term).
#[derive(Debug, Clone)]
pub struct Autoscaling {
    /// The metric and its target per LB.
    pub target: Target,
    /// Bounds, tolerance and the scale-down window (its `target` is taken from `target`).
    pub policy: Policy,
    /// How often to decide.
    pub interval: Duration,
    /// Who starts and stops LBs.
    pub provisioner: Arc<tokio::sync::Mutex<Box<dyn Provision>>>,
}

/// How long an LB just started may take to report before it no longer counts.
const START_GRACE: Duration = Duration::from_secs(30);

/// Scales the fleet in `store` on `target` within `policy`, every `interval`, for ever (the
/// caller aborts it on losing the lead).
///
/// Two jobs, as Kubernetes splits them between the Horizontal Pod Autoscaler and the ReplicaSet:
/// deciding how many LBs to run (`desired`, which only the metric moves), and keeping that many
/// running. An LB that dies or is found dead is replaced at once, whatever the scale-down window
/// holds: its loss is not a decision to run fewer.
pub async fn run(store: SqlStore, autoscaling: Autoscaling) {
    let Autoscaling {
        target,
        policy,
        interval,
        provisioner,
    } = autoscaling;
    let mut recommender = Recommender::new(Policy {
        target: target.value,
        ..policy
    });
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut desired: Option<u32> = None;
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        let fleet = match store.lb_servers().await {
            Ok(fleet) => fleet,
            Err(error) => {
                tracing::warn!(%error, "autoscaler cannot read the fleet");
                continue;
            }
        };
        let now = Instant::now();
        let live: Vec<&LbServer> = fleet.iter().filter(|lb| lb.is_live()).collect();
        pending.retain(|name, since| {
            !live.iter().any(|lb| &lb.name == name) && now.duration_since(*since) < START_GRACE
        });
        let readings: Vec<f64> = live.iter().filter_map(|lb| target.metric.of(lb)).collect();
        let observed = if readings.is_empty() {
            f64::NAN
        } else {
            readings.iter().sum::<f64>() / readings.len() as f64
        };
        let running = (live.len() + pending.len()) as u32;
        // A new leader takes the fleet as it finds it.
        let current = desired.unwrap_or(running);
        let decision = recommender.decide(current, observed, now);
        if decision.replicas != current {
            tracing::info!(
                current,
                observed,
                target = target.value,
                recommended = decision.recommended,
                replicas = decision.replicas,
                metric = ?target.metric,
                "scaling"
            );
        }
        let wanted = decision.replicas;
        desired = Some(wanted);
        if running < wanted {
            if decision.replicas == current {
                tracing::info!(running, wanted, "replacing LBs that stopped serving");
            }
            for _ in running..wanted {
                match provisioner.lock().await.scale_up().await {
                    Ok(name) => {
                        tracing::info!(lb = %name, "LB started");
                        pending.insert(name, now);
                    }
                    Err(error) => tracing::warn!(%error, "scale-up failed"),
                }
            }
        } else if running > wanted {
            let excess = (running - wanted) as usize;
            let mut provisioner = provisioner.lock().await;
            let removable: Vec<String> = provisioner
                .removable()
                .into_iter()
                .filter(|name| live.iter().any(|lb| &lb.name == name))
                .take(excess)
                .collect();
            if removable.is_empty() {
                // The surplus LBs were started by another process (a former leader): they
                // stay; say so rather than pretend to scale.
                tracing::debug!(running, wanted, "no LB this instance can drain");
                continue;
            }
            for name in removable {
                match provisioner.scale_down(&name).await {
                    Ok(true) => tracing::info!(lb = %name, "LB draining"),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, lb = %name, "scale-down failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            "rps:500".parse::<Target>(),
            Ok(Target {
                metric: Metric::RequestsPerSecond,
                value: 500.0
            })
        );
        assert_eq!(
            "cpu:0.6".parse::<Target>().map(|t| t.metric),
            Ok(Metric::Cpu)
        );
        assert!(
            "disk:3"
                .parse::<Target>()
                .expect_err("invalid")
                .contains("cpu, connections or rps")
        );
        assert!(
            "rps"
                .parse::<Target>()
                .expect_err("invalid")
                .contains("METRIC:TARGET")
        );
        assert!(
            "rps:0"
                .parse::<Target>()
                .expect_err("invalid")
                .contains("above 0")
        );
    }
}
