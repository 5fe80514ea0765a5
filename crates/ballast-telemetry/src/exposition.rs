//! A `/metrics` page in the format its reader asked for.
//!
//! `prometheus-client` writes OpenMetrics 1.0 only. Prometheus asks for that, but most other
//! readers (promtool, `curl`, older Prometheus, many agents) read the Prometheus text format
//! 0.0.4, where OpenMetrics' conventions are errors: a counter family `x` whose samples are
//! `x_total` has, to them, samples of an undeclared metric without help text, and `# EOF` and
//! `# UNIT` are stray comments. So the page follows the `Accept` header (RFC 9110 §12.5.1):
//! OpenMetrics when the reader prefers it, the 0.0.4 text otherwise, written from the same
//! registry by rewriting the few lines where the two formats differ.

use std::collections::HashMap;

use prometheus_client::registry::Registry;

/// The two text formats a metrics page is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`), what Prometheus asks for.
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`), for every reader that does not ask.
    PrometheusText,
}

/// One rendered page and the content type that names its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The page itself.
    pub body: String,
}

impl Format {
    /// The format for a request with this `Accept` header (none: the 0.0.4 text, as for any
    /// reader that does not say). OpenMetrics wins only where its quality is at least that of
    /// `text/plain`, so Prometheus' own header (OpenMetrics first, `text/plain;q=0.5`) gets it.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::PrometheusText;
        };
        let (mut openmetrics, mut text, mut any) = (None::<f32>, None::<f32>, None::<f32>);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let best = |slot: &mut Option<f32>| *slot = Some(slot.unwrap_or(0.0).max(quality));
            match media.as_str() {
                "application/openmetrics-text" => best(&mut openmetrics),
                "text/plain" | "text/*" => best(&mut text),
                "*/*" => best(&mut any),
                _ => {}
            }
        }
        let text = text.or(any).unwrap_or(0.0);
        match openmetrics {
            Some(q) if q > 0.0 && q >= text => Self::OpenMetrics,
            _ => Self::PrometheusText,
        }
    }

    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `registry` written in this format.
    pub fn encode(self, registry: &Registry) -> Page {
        let mut openmetrics = String::new();
        if prometheus_client::encoding::text::encode(&mut openmetrics, registry).is_err() {
            // Only a failing writer errs, and a String never fails; an empty page is honest.
            openmetrics.clear();
        }
        let body = match self {
            Self::OpenMetrics => openmetrics,
            Self::PrometheusText => to_prometheus_text(&openmetrics),
        };
        Page {
            content_type: self.content_type(),
            body,
        }
    }
}

/// An OpenMetrics page rewritten as the Prometheus text format 0.0.4: counters are declared
/// under their samples' `_total` name, info metrics become gauges named `_info`, types the old
/// format lacks become `untyped`, `_created` samples, exemplars, `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    let declared = |name: &str| -> String {
        match types.get(name).copied() {
            Some("counter") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_owned(),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", declared(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                "info" | "stateset" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", declared(name)));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: OpenMetrics only.
        } else if !line.is_empty() {
            let sample = line.split(" # ").next().unwrap_or(line);
            let name = sample.split(['{', ' ']).next().unwrap_or(sample);
            let created = name
                .strip_suffix("_created")
                .is_some_and(|family| types.contains_key(family));
            if !created {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_the_text_format() {
        assert_eq!(
            Format::negotiate(Some(PROMETHEUS_ACCEPT)),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        for accept in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0, */*"),
            Some("application/json"),
            Some("garbage;;q=x,,"),
        ] {
            assert_eq!(
                Format::negotiate(accept),
                Format::PrometheusText,
                "{accept:?}"
            );
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        requests
            .get_or_create(&vec![("code".to_owned(), "2xx".to_owned())])
            .inc_by(7);
        registry.register("ballast_requests", "Requests answered", requests);
        let gauge = Gauge::<i64>::default();
        gauge.set(3);
        registry.register("ballast_open", "Open connections", gauge);
        let histogram = Histogram::new([0.1, 1.0]);
        histogram.observe(0.5);
        registry.register_with_unit(
            "ballast_duration",
            "Time taken",
            prometheus_client::registry::Unit::Seconds,
            histogram,
        );
        registry.register(
            "ballast_build",
            "The build",
            Info::new(vec![("version".to_owned(), "1".to_owned())]),
        );
        registry
    }

    #[test]
    fn the_text_format_declares_counters_under_their_sample_names() {
        let page = Format::PrometheusText.encode(&registry());
        assert_eq!(
            page.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = page.body;
        assert!(
            body.contains("# HELP ballast_requests_total Requests answered.\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE ballast_requests_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("ballast_requests_total{code=\"2xx\"} 7\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE ballast_open gauge\nballast_open 3\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE ballast_duration_seconds histogram\n"),
            "{body}"
        );
        assert!(
            body.contains("ballast_duration_seconds_bucket{le=\"1.0\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("# TYPE ballast_build_info gauge\n"), "{body}");
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
        // Every sample belongs to a declared family, as the 0.0.4 format requires.
        let declared: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for sample in body.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| declared.contains(family))
                .unwrap_or(name);
            assert!(declared.contains(&family), "{sample} undeclared in\n{body}");
        }
    }

    #[test]
    fn openmetrics_is_passed_through() {
        let page = Format::OpenMetrics.encode(&registry());
        assert!(
            page.content_type
                .starts_with("application/openmetrics-text")
        );
        assert!(page.body.contains("# TYPE ballast_requests counter\n"));
        assert!(page.body.ends_with("# EOF\n"));
    }
}
