//! The processing-latency summary: a Prometheus summary (quantiles, `_sum`, `_count`) kept over an
//! HDR histogram of every latency recorded since start.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};

use super::TelemetryError;

/// The quantiles published for the processing latency.
const LATENCY_QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// A Prometheus summary (quantiles, `_sum`, `_count`) over an HDR histogram of every latency
/// recorded since start. Quantiles appear once there is an observation. Clones share the data.
#[derive(Clone)]
pub(super) struct LatencySummary {
    desc: Desc,
    /// The distribution in microseconds, and the exact sum in seconds.
    state: Arc<Mutex<(Histogram<u64>, f64)>>,
}

impl LatencySummary {
    pub(super) fn new(name: &str, help: &str) -> Result<LatencySummary, TelemetryError> {
        Ok(LatencySummary {
            desc: Desc::new(name.into(), help.into(), Vec::new(), Default::default())?,
            state: Arc::new(Mutex::new((
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
                0.0,
            ))),
        })
    }

    /// Records `events` events of this latency. A latency over the histogram's hour counts in the
    /// quantiles as an hour (and in `_sum` as it was), so that `_count` counts every event.
    pub(super) fn observe(&self, latency: Duration, events: u64) {
        if events == 0 {
            return;
        }
        let mut state = self.state.lock().expect("latency histogram poisoned");
        state.0.saturating_record_n((latency.as_micros() as u64).max(1), events);
        state.1 += latency.as_secs_f64() * events as f64;
    }

    pub(super) fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.state.lock().expect("latency histogram poisoned").0.value_at_quantile(q))
    }
}

impl Collector for LatencySummary {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let state = self.state.lock().expect("latency histogram poisoned");
        let mut summary = prometheus::proto::Summary::default();
        summary.set_sample_count(state.0.len());
        summary.set_sample_sum(state.1);
        if !state.0.is_empty() {
            summary.set_quantile(
                LATENCY_QUANTILES
                    .iter()
                    .map(|&q| {
                        let mut quantile = prometheus::proto::Quantile::default();
                        quantile.set_quantile(q);
                        quantile.set_value(state.0.value_at_quantile(q) as f64 / 1e6);
                        quantile
                    })
                    .collect(),
            );
        }
        let mut metric = prometheus::proto::Metric::default();
        metric.set_summary(summary);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_counts_once_and_an_hour_bounds_the_quantiles() {
        let summary = LatencySummary::new("latency", "help").unwrap();
        summary.observe(Duration::from_millis(20), 99);
        summary.observe(Duration::from_secs(2 * 3600), 1);
        summary.observe(Duration::from_secs(1), 0);
        let family = &summary.collect()[0];
        let proto = family.get_metric()[0].get_summary();
        assert_eq!(proto.sample_count(), 100);
        assert!((proto.sample_sum() - (99.0 * 0.02 + 7200.0)).abs() < 1e-6);
        let median = summary.quantile(0.5).as_secs_f64();
        assert!((median - 0.02).abs() < 0.001, "{median}");
        let top = summary.quantile(1.0).as_secs_f64();
        assert!((top - 3600.0).abs() < 3600.0 * 0.001, "{top}");
    }
}
