//! Every metric labelqc exports, declared in one place. Names carry the `labelqc_` prefix and base
//! units; labels are bounded (project, task, window, topic, result, level, quantile, signal,
//! state, severity): never an annotator or item id, except on the watchlist series, which hold at
//! most `watchlist_size` annotators per project and signal. An undefined number (null in the report) has no series rather than NaN.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use labelqc_dataflows::dataflow::Diff;
use labelqc_dataflows::drift::{GateState, Severity, Signal, SignalState};
use labelqc_dataflows::event::{InputWarning, Op};
use labelqc_dataflows::gates::GateRecord;

mod latency;
mod systems;
mod warnings;

use labelqc_dataflows::objects::ScopeSummary;
use labelqc_dataflows::records::{new_values, Entity, Record};
use labelqc_dataflows::routing::RoutingCounts;
use labelqc_dataflows::source::window_size_name;
use labelqc_dataflows::source::Applied;
use labelqc_dataflows::source::Stream;
use labelqc_dataflows::summary::DriftSummary;
use latency::LatencySummary;
use warnings::WarningLog;

/// The routing counts of a scope record.
#[derive(serde::Deserialize)]
struct RoutingRead {
    routing: RoutingCounts,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot register metric: {0}")]
pub struct TelemetryError(#[from] prometheus::Error);

/// The window label of all-time numbers (windowed numbers get their own window label).
pub const ALL_TIME: &str = "all";

/// The registry and every metric in it.
pub struct Telemetry {
    registry: Registry,
    /// Input events by topic (`labels`, `gold`) and result (`ok`, `invalid`, `deleted`).
    pub events: IntCounterVec,
    /// Dead letters (refused records) by topic.
    pub dead_letters: IntCounterVec,
    /// Likely mistakes in input records (spec section 1) by topic and kind.
    pub input_warnings: IntCounterVec,
    /// When each kind of input warning was last logged.
    warning_log: Mutex<WarningLog>,
    /// Epochs whose output is complete.
    pub epochs: IntCounter,
    /// Event time of the newest event whose output is complete.
    pub output_event_time: Gauge,
    /// Wall-clock time at which output was last brought up to date.
    pub output_updated: Gauge,
    /// Time from an event's creation to its effects in the published state: a summary.
    latency: LatencySummary,
    /// Messages not yet processed, by input topic.
    pub consumer_lag: IntGaugeVec,
    /// Input messages whose outputs are delivered and whose offsets are committed, by topic.
    pub committed: IntCounterVec,
    /// Kafka transactions committed (exactly-once mode).
    pub transactions: IntCounter,
    /// Output messages this process queued for its producer, by output topic.
    pub output_messages: IntCounterVec,
    /// Epochs submitted to the dataflows whose outputs are not yet delivered and committed.
    pub epochs_in_flight: IntGauge,
    /// The most epochs that were ever in flight at once.
    pub epochs_in_flight_max: IntGauge,
    /// The most input messages in one epoch.
    pub epoch_messages_max: IntGauge,
    /// Input partitions paused because the pipeline is full (backpressure).
    pub partitions_paused: IntGauge,
    /// Times the input was paused because the pipeline was full.
    pub pauses: IntCounter,
    scope_labels: IntGaugeVec,
    scope_items: IntGaugeVec,
    scope_annotators: IntGaugeVec,
    scope_percent_agreement: GaugeVec,
    scope_consensus: GaugeVec,
    scope_alpha: GaugeVec,
    scope_fleiss: GaugeVec,
    scope_gwet: GaugeVec,
    scope_mean_cohen: GaugeVec,
    scope_gold_accuracy: GaugeVec,
    scope_gold_answers: IntGaugeVec,
    /// Items per (project, task, route), and labels saved per scope, of the scopes' routing.
    routing_items: IntGaugeVec,
    routing_labels_saved: IntGaugeVec,
    /// Annotators per (project, gate state).
    annotators_gate: IntGaugeVec,
    /// Annotators per (project, signal, state).
    annotators_signal_state: IntGaugeVec,
    /// Gate changes per (project, from, to).
    gate_transitions: IntCounterVec,
    /// Alerts fired per (project, severity).
    alerts_fired: IntCounterVec,
    /// Alerts firing now per (project, severity).
    alerts_firing: IntGaugeVec,
    /// The watchlist: score per (project, signal, annotator) ...
    watchlist_score: GaugeVec,
    /// ... and the recent gold accuracy of each annotator on it.
    watchlist_gold: GaugeVec,
    /// What the gauges need to remember of the records.
    seen: Mutex<Seen>,
    /// The leaderboards' gauges, per system.
    systems: systems::SystemGauges,
}

/// The windows of one size of one scope: `(project, task, size_ms)`.
type WindowsOf = (std::sync::Arc<str>, std::sync::Arc<str>, i64);

/// What the gauges remember of the records: every window with its value (a scope's gauges show
/// its newest window of each size), and the alerts firing (to count those that start firing).
#[derive(Default)]
struct Seen {
    /// Each scope's windows of each size: `start -> value`.
    windows: BTreeMap<WindowsOf, BTreeMap<i64, Vec<u8>>>,
    /// Ids of the alerts firing now.
    firing: std::collections::HashSet<std::sync::Arc<str>>,
}

/// The parts of an alert record the counters need.
#[derive(serde::Deserialize)]
struct AlertRead {
    status: labelqc_dataflows::drift::AlertStatus,
    severity: Severity,
    project: String,
}

const SCOPE: &[&str] = &["project", "task", "window"];

impl Telemetry {
    pub fn new() -> Result<Telemetry, TelemetryError> {
        let registry = Registry::new();
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, TelemetryError> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, TelemetryError> {
            let metric = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let int_gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, TelemetryError> {
                let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let systems = systems::SystemGauges::new(&registry)?;
        let events =
            counter_vec("labelqc_events_total", "Input events by topic and result.", &["topic", "result"])?;
        let dead_letters =
            counter_vec("labelqc_dead_letters_total", "Refused input records by topic.", &["topic"])?;
        let input_warnings = counter_vec(
            "labelqc_input_warnings_total",
            "Input records with a likely mistake (ts before 1973, one value as number and string, gold \
             answers on the labels topic or label events on the gold topic), by topic and kind.",
            &["topic", "kind"],
        )?;
        let epochs = IntCounter::new("labelqc_epochs_completed_total", "Epochs whose output is complete.")?;
        registry.register(Box::new(epochs.clone()))?;
        let output_event_time = Gauge::new(
            "labelqc_output_event_time_timestamp_seconds",
            "Event time of the newest event whose output is complete.",
        )?;
        registry.register(Box::new(output_event_time.clone()))?;
        let output_updated = Gauge::new(
            "labelqc_output_updated_timestamp_seconds",
            "Wall-clock time at which the output was last brought up to date.",
        )?;
        registry.register(Box::new(output_updated.clone()))?;
        let latency = LatencySummary::new(
            "labelqc_processing_latency_seconds",
            "Time from an event's creation to its effects in the published state.",
        )?;
        registry.register(Box::new(latency.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::new(
            std::process::id() as i32,
            "labelqc",
        )))?;
        let consumer_lag = int_gauge_vec(
            "labelqc_consumer_lag_messages",
            "Input messages not yet processed (high watermark minus position), by topic.",
            &["topic"],
        )?;
        let committed = counter_vec(
            "labelqc_input_committed_total",
            "Input messages whose outputs are delivered and offsets committed, by topic.",
            &["topic"],
        )?;
        let output_messages = counter_vec(
            "labelqc_output_messages_total",
            "Output messages this process published (queued for delivery), by output topic.",
            &["topic"],
        )?;
        let transactions = IntCounter::new(
            "labelqc_transactions_committed_total",
            "Kafka transactions committed, each an epoch's outputs with its input offsets.",
        )?;
        registry.register(Box::new(transactions.clone()))?;
        let int_gauge = |name: &str, help: &str| -> Result<IntGauge, TelemetryError> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let epochs_in_flight = int_gauge(
            "labelqc_epochs_in_flight",
            "Epochs submitted to the dataflows whose outputs are not yet delivered and committed.",
        )?;
        let epochs_in_flight_max =
            int_gauge("labelqc_epochs_in_flight_max", "The most epochs in flight at once since start.")?;
        let epoch_messages_max =
            int_gauge("labelqc_epoch_messages_max", "The most input messages in one epoch since start.")?;
        let partitions_paused = int_gauge(
            "labelqc_partitions_paused",
            "Input partitions paused because the pipeline is full (backpressure).",
        )?;
        let pauses = IntCounter::new(
            "labelqc_input_pauses_total",
            "Times the input partitions were paused because the pipeline was full.",
        )?;
        registry.register(Box::new(pauses.clone()))?;
        Ok(Telemetry {
            input_warnings,
            warning_log: Mutex::new(WarningLog::default()),
            epochs_in_flight,
            epochs_in_flight_max,
            epoch_messages_max,
            partitions_paused,
            pauses,
            annotators_gate: int_gauge_vec(
                "labelqc_annotators_gate",
                "Annotators per gate state (allow, warmup, probation, block), per project.",
                &["project", "state"],
            )?,
            annotators_signal_state: int_gauge_vec(
                "labelqc_annotators_signal_state",
                "Annotators per drift signal and state (insufficient: too little data to judge, ok, watch, alarm), per project; each annotator at its most telling state over the project's scopes.",
                &["project", "signal", "state"],
            )?,
            gate_transitions: counter_vec(
                "labelqc_gate_transitions_total",
                "Gate changes, per project, from and to state.",
                &["project", "from", "to"],
            )?,
            alerts_fired: counter_vec(
                "labelqc_alerts_total",
                "Alerts that started firing, per project and severity.",
                &["project", "severity"],
            )?,
            alerts_firing: int_gauge_vec(
                "labelqc_alerts_firing",
                "Alerts firing now, per project and severity.",
                &["project", "severity"],
            )?,
            watchlist_score: gauge_vec(
                "labelqc_watchlist_score",
                "Drift evidence relative to the alarm threshold (1: alarm, 0.5: watch) of the most flagged annotators per project and signal.",
                &["project", "signal", "annotator"],
            )?,
            watchlist_gold: gauge_vec(
                "labelqc_watchlist_gold_accuracy_ratio",
                "Recent gold accuracy (the gate's evidence) of the annotators on the watchlist.",
                &["project", "annotator"],
            )?,
            latency,
            consumer_lag,
            committed,
            output_messages,
            transactions,
            routing_items: int_gauge_vec(
                "labelqc_routing_items",
                "Items of the scope per route (settled, needs_labels, escalate).",
                &["project", "task", "route"],
            )?,
            routing_labels_saved: int_gauge_vec(
                "labelqc_routing_labels_saved",
                "Labels that fixed overlap at routing.max_labels would have needed beyond those given, over the settled items.",
                &["project", "task"],
            )?,
            scope_labels: int_gauge_vec("labelqc_scope_labels", "Live labels of the scope.", SCOPE)?,
            scope_items: int_gauge_vec("labelqc_scope_items", "Labelled items of the scope.", SCOPE)?,
            scope_annotators: int_gauge_vec(
                "labelqc_scope_annotators",
                "Annotators with labels in the scope.",
                SCOPE,
            )?,
            scope_consensus: gauge_vec(
                "labelqc_scope_consensus_ratio",
                "Share of the scope's items with at least two labels on which one label has more than half of them.",
                SCOPE,
            )?,
            scope_percent_agreement: gauge_vec(
                "labelqc_scope_percent_agreement_ratio",
                "Percent agreement over pairable items.",
                SCOPE,
            )?,
            scope_alpha: gauge_vec(
                "labelqc_scope_krippendorff_alpha",
                "Krippendorff's alpha by level of measurement.",
                &["project", "task", "window", "level"],
            )?,
            scope_fleiss: gauge_vec(
                "labelqc_scope_fleiss_kappa",
                "Fleiss' kappa (missing-data form).",
                SCOPE,
            )?,
            scope_gwet: gauge_vec("labelqc_scope_gwet_ac1", "Gwet's AC1.", SCOPE)?,
            scope_mean_cohen: gauge_vec(
                "labelqc_scope_mean_cohen_kappa",
                "Mean Cohen's kappa over pairs.",
                SCOPE,
            )?,
            scope_gold_accuracy: gauge_vec(
                "labelqc_scope_gold_accuracy_ratio",
                "Pooled accuracy on gold answers.",
                SCOPE,
            )?,
            scope_gold_answers: int_gauge_vec(
                "labelqc_scope_gold_answers",
                "Labels on gold items (the gold accuracy's n).",
                SCOPE,
            )?,
            registry,
            events,
            dead_letters,
            epochs,
            output_event_time,
            output_updated,
            seen: Mutex::new(Seen::default()),
            systems,
        })
        .inspect(Telemetry::initialise_counters)
    }

    /// Gives the input counters their series at zero before the first record, so that a rate or
    /// an increase is defined from the start and the first dead letter counts as an increase.
    fn initialise_counters(&self) {
        for stream in [Stream::Labels, Stream::Gold] {
            self.dead_letters.with_label_values(&[stream.name()]);
            for result in ["ok", "deleted", "invalid"] {
                self.events.with_label_values(&[stream.name(), result]);
            }
        }
    }

    /// Follows an epoch's record changes (consolidated): sets the quality gauges of every changed
    /// scope (`window="all"`) and of each scope's newest window of each size (`window="1h"`, ...)
    /// when one of its windows changed, and counts the alerts that started firing.
    pub fn observe_records(&self, changes: &[(Record, Diff)]) {
        let mut seen = self.seen.lock().expect("telemetry poisoned");
        let mut windows: BTreeMap<WindowsOf, ()> = BTreeMap::new();
        let mut fired = Vec::new();
        for (key, now) in new_values(changes) {
            match &key.entity {
                Entity::Scope => {
                    if let Some(summary) = now.and_then(|v| serde_json::from_slice::<ScopeSummary>(v).ok()) {
                        self.set_scope(&summary, ALL_TIME);
                    }
                    if let Some(read) = now.and_then(|v| serde_json::from_slice::<RoutingRead>(v).ok()) {
                        self.set_routing(&key.project, &key.task, &read.routing);
                    }
                }
                Entity::Window { size_ms, start_ms } => {
                    let scope = (key.project.clone(), key.task.clone(), *size_ms);
                    let starts = seen.windows.entry(scope.clone()).or_default();
                    match now {
                        Some(value) => {
                            starts.insert(*start_ms, value.to_vec());
                        }
                        None => {
                            starts.remove(start_ms);
                        }
                    }
                    windows.insert(scope, ());
                }
                Entity::Alert(id) => {
                    let alert = now.and_then(|v| serde_json::from_slice::<AlertRead>(v).ok());
                    let firing = alert
                        .as_ref()
                        .is_some_and(|a| a.status == labelqc_dataflows::drift::AlertStatus::Firing);
                    if firing && seen.firing.insert(id.clone()) {
                        let alert = alert.expect("a firing alert");
                        fired.push((alert.project, alert.severity));
                    } else if !firing {
                        seen.firing.remove(id);
                    }
                }
                Entity::System(system) => self.systems.observe(key, system, now),
                _ => {}
            }
        }
        for (scope, ()) in windows {
            let newest = seen.windows.get(&scope).and_then(|starts| starts.values().next_back());
            if let Some(summary) = newest.and_then(|v| serde_json::from_slice::<ScopeSummary>(v).ok()) {
                self.set_scope(&summary, &window_size_name(scope.2));
            }
            if seen.windows.get(&scope).is_some_and(BTreeMap::is_empty) {
                seen.windows.remove(&scope);
            }
        }
        drop(seen);
        self.count_fired(&fired);
    }

    /// Sets the quality gauges of one scope from its current summary.
    /// Sets the routing gauges of a scope.
    fn set_routing(&self, project: &str, task: &str, routing: &RoutingCounts) {
        for (route, n) in [
            ("settled", routing.settled),
            ("needs_labels", routing.needs_labels),
            ("escalate", routing.escalate),
        ] {
            self.routing_items.with_label_values(&[project, task, route]).set(n);
        }
        self.routing_labels_saved.with_label_values(&[project, task]).set(routing.labels_saved);
    }

    pub fn set_scope(&self, scope: &ScopeSummary, window: &str) {
        let labels = [scope.project.as_str(), scope.task.as_str(), window];
        self.scope_labels.with_label_values(&labels).set(scope.n_labels);
        self.scope_items.with_label_values(&labels).set(scope.n_items);
        self.scope_annotators.with_label_values(&labels).set(scope.n_annotators as i64);
        let a = &scope.agreement;
        set_or_remove(&self.scope_percent_agreement, &labels, a.percent_agreement);
        set_or_remove(&self.scope_consensus, &labels, scope.consensus_rate);
        set_or_remove(&self.scope_fleiss, &labels, a.fleiss_kappa);
        set_or_remove(&self.scope_gwet, &labels, a.gwet_ac1);
        set_or_remove(&self.scope_mean_cohen, &labels, a.mean_cohen_kappa);
        let alpha = &a.krippendorff_alpha;
        for (level, value) in [
            ("nominal", Some(alpha.nominal)),
            ("ordinal", alpha.ordinal),
            ("interval", alpha.interval),
            ("ratio", alpha.ratio),
        ] {
            let with_level = [labels[0], labels[1], labels[2], level];
            set_or_remove(&self.scope_alpha, &with_level, value.flatten());
        }
        set_or_remove(&self.scope_gold_accuracy, &labels, scope.gold.as_ref().map(|g| g.accuracy));
        self.scope_gold_answers.with_label_values(&labels).set(scope.gold.as_ref().map_or(0, |g| g.n));
    }

    /// Sets the drift gauges from the current summary: every known state is set (zero included),
    /// and the watchlist is replaced.
    pub fn set_drift(&self, summary: &DriftSummary) {
        let projects: std::collections::BTreeSet<&str> = summary
            .gates
            .keys()
            .map(|(p, _)| p.as_str())
            .chain(summary.signals.keys().map(|(p, _, _)| p.as_str()))
            .collect();
        for project in projects {
            for state in GateState::ALL {
                let n = summary.gates.get(&(project.to_string(), state)).copied().unwrap_or(0);
                self.annotators_gate.with_label_values(&[project, state.name()]).set(n);
            }
            for signal in Signal::ALL {
                // The preference signals only in projects with comparisons (they are read only
                // for annotators of preference events).
                let read = |state| summary.signals.contains_key(&(project.to_string(), signal, state));
                if signal.is_preference() && !SignalState::ALL.into_iter().any(read) {
                    continue;
                }
                for state in SignalState::ALL {
                    let n = summary.signals.get(&(project.to_string(), signal, state)).copied().unwrap_or(0);
                    self.annotators_signal_state
                        .with_label_values(&[project, signal.name(), state.name()])
                        .set(n);
                }
            }
            for severity in Severity::ALL {
                let n = summary.firing.get(&(project.to_string(), severity)).copied().unwrap_or(0);
                self.alerts_firing.with_label_values(&[project, severity.name()]).set(n);
            }
        }
        self.watchlist_score.reset();
        self.watchlist_gold.reset();
        for entry in &summary.watchlist() {
            let (project, annotator) = (entry.project.as_str(), entry.annotator_id.as_str());
            self.watchlist_score
                .with_label_values(&[project, entry.signal.name(), annotator])
                .set(entry.score);
            if let Some(accuracy) = entry.gold_accuracy {
                self.watchlist_gold.with_label_values(&[project, annotator]).set(accuracy);
            }
        }
    }

    /// Counts the gate transitions among published gate records.
    pub fn count_gate_records<'r>(&self, records: impl IntoIterator<Item = &'r GateRecord>) {
        for record in records {
            if record.from != Some(record.state) {
                let from = record.from.map_or("none", GateState::name);
                self.gate_transitions.with_label_values(&[&record.project, from, record.state.name()]).inc();
            }
        }
    }

    /// Counts alerts that started firing: (project, severity).
    pub fn count_fired(&self, fired: &[(String, Severity)]) {
        for (project, severity) in fired {
            self.alerts_fired.with_label_values(&[project, severity.name()]).inc();
        }
    }

    /// Counts one input record by stream and result (`ok`, `deleted`, `invalid`); a refused
    /// record is also a dead letter. Counts the record's warnings (not logged).
    pub fn count_record<E>(&self, stream: Stream, outcome: &Result<Applied, E>) {
        let result = match outcome {
            Ok(applied) => {
                for warning in applied.warnings.iter() {
                    self.input_warnings.with_label_values(&[stream.name(), warning.name()]).inc();
                }
                match applied.op {
                    Op::Upsert => "ok",
                    Op::Delete => "deleted",
                }
            }
            Err(_) => {
                self.dead_letters.with_label_values(&[stream.name()]).inc();
                "invalid"
            }
        };
        self.events.with_label_values(&[stream.name(), result]).inc();
    }

    /// Counts input records of one stream: `[ok, deleted, invalid]`; refused records are also
    /// dead letters.
    pub fn count_records(&self, stream: Stream, [ok, deleted, invalid]: [u64; 3]) {
        for (result, n) in [("ok", ok), ("deleted", deleted), ("invalid", invalid)] {
            if n > 0 {
                self.events.with_label_values(&[stream.name(), result]).inc_by(n);
            }
        }
        if invalid > 0 {
            self.dead_letters.with_label_values(&[stream.name()]).inc_by(invalid);
        }
    }

    /// Counts an input record's warning, and logs it, at most once a minute per kind (with the
    /// number of warnings of that kind since the last log line). `position` says where the
    /// record is (`topic/partition/offset`).
    pub fn input_warning(&self, stream: Stream, warning: InputWarning, position: &dyn std::fmt::Display) {
        self.input_warnings.with_label_values(&[stream.name(), warning.name()]).inc();
        let due = self.warning_log.lock().expect("warning log poisoned").note(warning, Instant::now());
        if let Some(records) = due {
            tracing::warn!(
                topic = stream.name(),
                kind = warning.name(),
                records,
                example = %position,
                "input records {} (counted in labelqc_input_warnings_total; logged at most once a minute per kind)",
                warning.describe()
            );
        }
    }

    /// Records the processing latency of `events` input events: each counts once in the summary
    /// (`_count` is in events), all with the latency given, which callers take from the oldest
    /// event of those published together (an upper bound for the others).
    pub fn observe_latency(&self, latency: Duration, events: u64) {
        self.latency.observe(latency, events);
    }

    /// A quantile of the processing latencies recorded so far.
    pub fn latency_quantile(&self, q: f64) -> Duration {
        self.latency.quantile(q)
    }

    /// The exposition in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn set_or_remove(gauge: &GaugeVec, labels: &[&str], value: Option<f64>) {
    match value {
        Some(v) => gauge.with_label_values(labels).set(v),
        None => {
            let _ = gauge.remove_label_values(labels);
        }
    }
}
