//! The DNS server's metrics, in the Prometheus text format on `--admin`: queries by type and
//! response code, the sizes of the answers sent, and the configuration revision the zone was
//! built from.

use std::borrow::Cow;

use ballast_telemetry::{Format, Page};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    qtype: Cow<'static, str>,
    rcode: Cow<'static, str>,
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries: Family<QueryLabels, Counter>,
    answer_bytes: Histogram,
    revision: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let queries = Family::<QueryLabels, Counter>::default();
        let answer_bytes = Histogram::new(exponential_buckets(32.0, 2.0, 8));
        let revision = Gauge::default();
        registry.register(
            "ballast_dns_queries",
            "Queries answered, by query type and response code",
            queries.clone(),
        );
        registry.register(
            "ballast_dns_answer_bytes",
            "Sizes of the answers sent, in bytes (an upper bound before name compression)",
            answer_bytes.clone(),
        );
        registry.register(
            "ballast_dns_revision",
            "The configuration revision the zone was built from",
            revision.clone(),
        );
        Self {
            registry,
            queries,
            answer_bytes,
            revision,
        }
    }

    /// Counts one answer.
    pub(crate) fn answered(&self, qtype: &'static str, rcode: &'static str, bytes: usize) {
        // Borrowed labels: counting allocates nothing once the series exists.
        self.queries
            .get_or_create(&QueryLabels {
                qtype: Cow::Borrowed(qtype),
                rcode: Cow::Borrowed(rcode),
            })
            .inc();
        self.answer_bytes.observe(bytes as f64);
    }

    /// The page in `format`, with the revision of `serial`.
    pub fn encode(&self, format: Format, serial: u64) -> Page {
        self.revision.set(i64::try_from(serial).unwrap_or(i64::MAX));
        format.encode(&self.registry)
    }
}
