//! The gauges of the leaderboards (spec 2.2): per system of a scope (systems per scope are few, so
//! the `system` label is bounded), its Bradley–Terry strength with its interval, its Elo rating,
//! its rank and its comparisons. Set from the `labelqc.leaderboard` records as they change; a
//! system that leaves its leaderboard loses its series.

use prometheus::{GaugeVec, IntGaugeVec, Opts, Registry};

use labelqc_dataflows::records::RecordKey;

use super::TelemetryError;

/// The labels of the per-system gauges.
const SYSTEM: &[&str] = &["project", "task", "system"];

/// The parts of a leaderboard entry the gauges show.
#[derive(serde::Deserialize)]
struct EntryRead {
    wins: i64,
    losses: i64,
    ties: i64,
    strength: f64,
    interval: [f64; 2],
    elo: f64,
    rank: i64,
}

/// The per-system gauges.
pub struct SystemGauges {
    strength: GaugeVec,
    strength_low: GaugeVec,
    strength_high: GaugeVec,
    elo: GaugeVec,
    rank: IntGaugeVec,
    comparisons: IntGaugeVec,
}

impl SystemGauges {
    /// Declares the gauges in `registry`.
    pub fn new(registry: &Registry) -> Result<SystemGauges, TelemetryError> {
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, TelemetryError> {
            let metric = GaugeVec::new(Opts::new(name, help), SYSTEM)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, TelemetryError> {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        Ok(SystemGauges {
            strength: gauge(
                "labelqc_system_strength",
                "Bradley-Terry strength of a system on its scope's leaderboard (trusted annotators).",
            )?,
            strength_low: gauge("labelqc_system_strength_low", "Lower end of the strength's 95% interval.")?,
            strength_high: gauge(
                "labelqc_system_strength_high",
                "Upper end of the strength's 95% interval.",
            )?,
            elo: gauge("labelqc_system_elo", "The strength on the Elo scale (1000 + 400 strength / ln 10).")?,
            rank: int_gauge(
                "labelqc_system_rank",
                "Rank on the scope's leaderboard (1: strongest).",
                SYSTEM,
            )?,
            comparisons: int_gauge(
                "labelqc_system_comparisons",
                "Trusted comparisons of the system by result (win, loss, tie).",
                &["project", "task", "system", "result"],
            )?,
        })
    }

    /// Follows the record of one system's entry: `value` its new value, `None` when it is gone.
    pub fn observe(&self, key: &RecordKey, system: &str, value: Option<&[u8]>) {
        let labels = [&*key.project, &*key.task, system];
        let entry = value.and_then(|v| serde_json::from_slice::<EntryRead>(v).ok());
        let Some(e) = entry else {
            for gauge in [&self.strength, &self.strength_low, &self.strength_high, &self.elo] {
                let _ = gauge.remove_label_values(&labels);
            }
            let _ = self.rank.remove_label_values(&labels);
            for result in ["win", "loss", "tie"] {
                let _ = self.comparisons.remove_label_values(&[labels[0], labels[1], system, result]);
            }
            return;
        };
        self.strength.with_label_values(&labels).set(e.strength);
        self.strength_low.with_label_values(&labels).set(e.interval[0]);
        self.strength_high.with_label_values(&labels).set(e.interval[1]);
        self.elo.with_label_values(&labels).set(e.elo);
        self.rank.with_label_values(&labels).set(e.rank);
        for (result, n) in [("win", e.wins), ("loss", e.losses), ("tie", e.ties)] {
            self.comparisons.with_label_values(&[labels[0], labels[1], system, result]).set(n);
        }
    }
}
