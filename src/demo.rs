//! `labelqc demo`: the main job on an embedded default, with no Kafka. A simulated workforce
//! that a quality manager would call healthy labels live (event time is now), with a few planted
//! problems: spammers, a biased annotator and one who turns careless part-way. The full dataflows
//! keep every number current, `/metrics`, `/healthz`, `/readyz` and the query API are served, and a terminal
//! view ([`screen`]) fitting 80x24 shows throughput, each scope's agreement and gold accuracy,
//! gates and drift, and the alerts firing grouped per annotator, critical first. At the end it
//! says which planted problems were caught and whether any healthy annotator was alerted.

mod screen;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use labelqc_dataflows::dataflow::Diff;
use labelqc_dataflows::drift::{AlertStatus, DriftSettings, Gate, GateState, Severity, Signal, SignalState};
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::gates::GateLog;
use labelqc_dataflows::keyed::Emit;
use labelqc_dataflows::objects::ScopeSummary;
use labelqc_dataflows::records::{Entity, Record, Records};
use labelqc_dataflows::source::{Catalog, Source, Stream};
use labelqc_dataflows::summary::DriftSummary;

use crate::api::{Api, Store};
use crate::gen::preferences::{PreferenceSpec, PreferenceTraffic};
use crate::gen::{GenSpec, Traffic};
use crate::http::HttpServer;
use crate::telemetry::Telemetry;

pub use screen::{render, LeaderboardRow, ScopeRow, ScreenAlert, Snapshot};

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoSettings {
    /// Where to serve `/metrics`, `/healthz`, `/readyz` and the query API (`/v1/...`).
    pub http: SocketAddr,
    /// Label events per second.
    pub rate: u64,
    /// Stop after this long (runs until Ctrl-C without it).
    pub duration: Option<Duration>,
    /// The simulated workforce and traffic (its `careless_from_ms` is set from
    /// `careless_after` when the demo starts).
    pub traffic: GenSpec,
    /// When the planted careless annotators turn careless, from the start.
    pub careless_after: Duration,
    /// Drift, gate and alert settings.
    pub drift: DriftSettings,
    pub workers: usize,
    /// Window sizes (ms) of the windowed numbers (gauges with `window="1h"`, ...).
    pub windows: Vec<i64>,
    /// Redraw a full-screen view (only on a terminal); otherwise print a line a second.
    pub full_screen: bool,
    /// Pairwise comparisons per second for a live leaderboard (`labelqc gen --preferences`
    /// traffic, scope default/preference); 0 for none.
    pub comparisons: u64,
}

/// How often events are fed to the dataflows (one epoch per tick).
const TICK: Duration = Duration::from_millis(100);
/// How often the terminal view is redrawn.
const REFRESH: Duration = Duration::from_secs(1);
/// The terminal the view is made for.
pub const SCREEN_WIDTH: usize = 80;
pub const SCREEN_HEIGHT: usize = 24;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs the demo until the duration passes or Ctrl-C.
pub fn run(settings: &DemoSettings) -> Result<()> {
    let telemetry = Arc::new(Telemetry::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let interrupted = crate::signals::install()?;
    // The query API answers from what the topics would hold: the demo publishes nothing, so its
    // store takes each epoch's records as publishing them would.
    let store = Arc::new(Store::default());
    let api = Api { store: store.clone(), token: None, forwarding: None };
    let server = HttpServer::start_with_api(settings.http, telemetry.clone(), ready.clone(), Some(api))?;
    let metrics_url = format!("http://{}/metrics", server.local_addr());
    eprintln!(
        "labelqc demo: metrics on {metrics_url}, the query API on http://{}/v1/scopes (Ctrl-C stops)",
        server.local_addr()
    );

    let mut engine = Engine::start(&EngineConfig {
        workers: settings.workers,
        max_epochs_in_flight: 2,
        items: labelqc_dataflows::items::ItemsConfig {
            window_sizes: settings.windows.clone(),
            out_of_order: false,
            records: Some(Emit::Changes),
            rows: false,
        },
        drift: settings.drift.clone(),
        emit: Emit::Changes,
        preferences: Default::default(),
        truth: Default::default(),
        routing: Default::default(),
        truth_refresh: Some(Duration::from_millis(
            labelqc_dataflows::truth::TruthSettings::default().refresh_ms,
        )),
        publishers: None,
    })?;
    let mut spec = settings.traffic.clone();
    spec.careless_from_ms = now_ms() + settings.careless_after.as_millis() as i64;
    let mut traffic = Traffic::new(&spec)?;
    let planted: Vec<(String, &'static str)> =
        traffic.roster().into_iter().filter(|(_, kind)| *kind != "careful").collect();
    let mut source = Source::with_windows(&settings.windows);
    source.catalog = Catalog::recording();
    // What the view shows: the scopes, annotators, alerts and gates (not the items, pairs or
    // windows), and the drift summary.
    let mut shown = Records::default();
    let mut drift = DriftSummary::default();
    let mut gate_log = GateLog::default();
    let full_screen = settings.full_screen && std::io::stdout().is_terminal();
    if full_screen {
        // Hide the cursor while the view is redrawn in place.
        print!("\x1b[?25l");
    }

    let start = Instant::now();
    let mut fed = 0u64;
    let mut last_refresh = Instant::now();
    let mut fed_at_refresh = 0u64;
    let (mut label_lines, mut gold_lines) = (Vec::new(), Vec::new());
    let mut updates = Vec::new();
    let (mut raised, mut raised_critical) = (0u64, 0u64);
    // Annotators with an alert that fired at some point, and those blocked at some point.
    let mut alerted: BTreeSet<String> = BTreeSet::new();
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    let mut last_view: Option<Snapshot> = None;
    // The comparisons behind the live leaderboard, when asked for.
    let mut comparisons =
        (settings.comparisons > 0).then(|| PreferenceTraffic::new(&PreferenceSpec::default())).transpose()?;
    // The planted problems the stop summary checks: the label traffic's, and the comparisons'
    // side-biased and tie-happy raters.
    let planted_all: Vec<(String, &'static str)> = planted
        .iter()
        .cloned()
        .chain(comparisons.iter().flat_map(|c| c.roster()).filter(|(_, kind)| *kind != "careful"))
        .collect();
    let (mut compared, mut comparison_lines) = (0u64, Vec::new());
    while !interrupted.load(Ordering::SeqCst) && settings.duration.is_none_or(|d| start.elapsed() < d) {
        let tick_start = Instant::now();
        let due = (start.elapsed().as_secs_f64() * settings.rate as f64) as u64;
        let created = now_ms();
        label_lines.clear();
        gold_lines.clear();
        for _ in fed..due {
            traffic.next_event(Some(created), &mut label_lines, &mut gold_lines);
        }
        for (stream, lines) in [(Stream::Gold, &gold_lines), (Stream::Labels, &label_lines)] {
            for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let text = std::str::from_utf8(line).context("generated traffic is UTF-8")?;
                telemetry.count_record(stream, &source.apply_record(stream, text, &mut updates));
            }
        }
        let mut events = due - fed;
        fed = due;
        if let Some(comparisons) = comparisons.as_mut() {
            let due = (start.elapsed().as_secs_f64() * settings.comparisons as f64) as u64;
            events += due - compared;
            comparison_lines.clear();
            for _ in compared..due {
                comparisons.next_event(Some(created), &mut comparison_lines);
            }
            compared = due;
            for line in comparison_lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let text = std::str::from_utf8(line).context("generated comparisons are UTF-8")?;
                telemetry
                    .count_record(Stream::Labels, &source.apply_record(Stream::Labels, text, &mut updates));
            }
        }
        engine.submit(std::mem::take(&mut updates), source.catalog.take_new())?;
        engine.sync()?;
        for output in engine.take_completed().1 {
            telemetry.observe_records(&output.records);
            let gates = gate_log.records(&output.records);
            telemetry.count_gate_records(&gates);
            crate::service::remember_changes(&store, &output.records, &gates, &crate::service::updated_at());
            blocked
                .extend(gates.iter().filter(|r| r.state == GateState::Block).map(|r| r.annotator_id.clone()));
            for (severity, annotator) in started_firing(&shown, &output.records) {
                raised += 1;
                raised_critical += u64::from(severity == Severity::Critical);
                alerted.extend(annotator);
            }
            let kept: Vec<(Record, Diff)> =
                output.records.into_iter().filter(|(r, _)| shows(&r.key.entity)).collect();
            shown.apply(&kept);
            drift.apply(&output.metrics);
        }
        telemetry.set_drift(&drift);
        telemetry.epochs.inc();
        telemetry.output_event_time.set(created as f64 / 1000.0);
        telemetry.output_updated.set(now_ms() as f64 / 1000.0);
        telemetry.observe_latency(Duration::from_millis((now_ms() - created).max(0) as u64), events);
        // The demo's input backlog: events the simulated workforce has given by now and the
        // dataflows have not yet taken (it grows when the demo cannot keep up with --rate).
        let given = (start.elapsed().as_secs_f64() * settings.rate as f64) as u64;
        telemetry.consumer_lag.with_label_values(&["labels"]).set(given.saturating_sub(fed) as i64);
        ready.store(true, Ordering::SeqCst);

        if last_refresh.elapsed() >= REFRESH {
            let snapshot = Snapshot {
                elapsed: start.elapsed(),
                rate: (fed - fed_at_refresh) as f64 / last_refresh.elapsed().as_secs_f64(),
                live_labels: live_labels(&shown),
                latency_p99: telemetry.latency_quantile(0.99),
                metrics_url: metrics_url.clone(),
                planted: planted_all.clone(),
                raised,
                ..Snapshot::default()
            };
            let observed = observe(&shown, snapshot);
            let screen = render(&observed, SCREEN_WIDTH, SCREEN_HEIGHT);
            last_view = Some(observed);
            let mut out = std::io::stdout().lock();
            if full_screen {
                redraw(&mut out, &screen);
            } else {
                let _ = writeln!(out, "{}", screen.first().map_or("", String::as_str));
            }
            let _ = out.flush();
            last_refresh = Instant::now();
            fed_at_refresh = fed;
        }
        if let Some(rest) = TICK.checked_sub(tick_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    // The last view says the demo has stopped, not how to stop it.
    let stopped =
        last_view.map(|last| render(&Snapshot { stopped: true, ..last }, SCREEN_WIDTH, SCREEN_HEIGHT));
    {
        let mut out = std::io::stdout().lock();
        if full_screen {
            if let Some(view) = &stopped {
                redraw(&mut out, view);
            }
            let _ = writeln!(out, "\x1b[?25h");
        } else if let Some(view) = &stopped {
            // The last view, for whoever reads the lines.
            let _ = writeln!(out, "\n{}", view.join("\n"));
        }
        let _ = out.flush();
    }
    engine.finish()?;
    let summary = traffic.summary();
    eprintln!(
        "labelqc demo: stopped after {:.1} s; {} label events sent ({} new labels, {} relabels, {} deletes), {} gold items; {} scopes",
        start.elapsed().as_secs_f64(),
        screen::thousands(summary.labels + summary.relabels + summary.deletes),
        screen::thousands(summary.labels),
        screen::thousands(summary.relabels),
        screen::thousands(summary.deletes),
        screen::thousands(summary.gold_items),
        shown.iter().filter(|(k, _)| k.entity == Entity::Scope).count()
    );
    let (caught, missed): (Vec<_>, Vec<_>) =
        planted_all.iter().partition(|(name, _)| alerted.contains(name) || blocked.contains(name));
    let named = |list: &[&(String, &str)]| -> String {
        if list.is_empty() {
            return "none".to_string();
        }
        list.iter().map(|(name, kind)| format!("{name} ({kind})")).collect::<Vec<_>>().join(", ")
    };
    eprintln!("labelqc demo: alerts raised: {raised} ({raised_critical} critical)");
    eprintln!("labelqc demo: planted problems caught: {}; missed: {}", named(&caught), named(&missed));
    if missed.iter().any(|(_, kind)| *kind == "careless") {
        // The careless ones turn part-way: a short demo may end before their labels show it.
        eprintln!(
            "labelqc demo: the careless annotators turn careless {:.0} s after the start and this run lasted {:.0} s; a run of {:.0} s or more (or a smaller --careless-after) shows them caught",
            settings.careless_after.as_secs_f64(),
            start.elapsed().as_secs_f64(),
            settings.careless_after.as_secs_f64() * 2.0
        );
    }
    let planted_names: BTreeSet<&String> = planted_all.iter().map(|(name, _)| name).collect();
    let healthy: Vec<&String> = alerted
        .iter()
        .chain(&blocked)
        .filter(|n| !planted_names.contains(n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    eprintln!(
        "labelqc demo: healthy annotators alerted or blocked: {}",
        if healthy.is_empty() {
            "none".to_string()
        } else {
            healthy.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        }
    );
    drop(server);
    Ok(())
}

/// Whether the demo's view shows records of this kind.
fn shows(entity: &Entity) -> bool {
    matches!(
        entity,
        Entity::Scope | Entity::Annotator(_) | Entity::Alert(_) | Entity::Gate(_) | Entity::System(_)
    )
}

/// The parts of an alert record the view shows.
#[derive(serde::Deserialize)]
struct AlertRead {
    status: AlertStatus,
    severity: Severity,
    kind: String,
    annotator_id: Option<String>,
    signal: Option<Signal>,
    summary: String,
}

/// The parts of an annotator record the view shows: its signals' states and scores.
#[derive(serde::Deserialize)]
struct AnnotatorRead {
    drift: Option<BTreeMap<Signal, SignalRead>>,
}

#[derive(serde::Deserialize)]
struct SignalRead {
    state: SignalState,
    score: Option<f64>,
}

/// The alerts an epoch's changes start firing (not firing before): their severity and annotator.
fn started_firing(shown: &Records, changes: &[(Record, Diff)]) -> Vec<(Severity, Option<String>)> {
    let firing = |value: &[u8]| {
        serde_json::from_slice::<AlertRead>(value).ok().filter(|a| a.status == AlertStatus::Firing)
    };
    changes
        .iter()
        .filter(|(r, d)| *d > 0 && matches!(r.key.entity, Entity::Alert(_)))
        .filter(|(r, _)| shown.get(&r.key).and_then(firing).is_none())
        .filter_map(|(r, _)| firing(&r.value))
        .map(|a| (a.severity, a.annotator_id))
        .collect()
}

/// The live labels of every scope shown.
fn live_labels(shown: &Records) -> usize {
    shown
        .iter()
        .filter(|(k, _)| k.entity == Entity::Scope)
        .filter_map(|(_, v)| serde_json::from_slice::<ScopeSummary>(v).ok())
        .map(|s| s.n_labels.max(0) as usize)
        .sum()
}

/// Draws `view` over the full-screen view: home, each line cleared to its end, and the rest of
/// the screen cleared: no flicker, no scrolling (no newline after the last line).
fn redraw(out: &mut impl Write, view: &[String]) {
    let body: Vec<String> = view.iter().map(|l| format!("{l}\x1b[K")).collect();
    let _ = write!(out, "\x1b[H{}\x1b[J", body.join("\n"));
}

/// An alert kind as the screen names it.
fn kind_name(kind: &str) -> &'static str {
    match kind {
        "annotator_drift" => "annotator_drift",
        "population_shift" => "population_shift",
        "alpha_below_floor" => "alpha_below_floor",
        "gold_below_target" => "gold_below_target",
        _ => "alert",
    }
}

/// Fills `snapshot` with what the records say now: each scope's numbers and alerts, the gates and
/// drift states of the annotators, and every alert firing.
pub fn observe(shown: &Records, mut snapshot: Snapshot) -> Snapshot {
    let mut gates: BTreeMap<&str, GateState> = BTreeMap::new();
    let mut project_gates: BTreeMap<(&str, &str), GateState> = BTreeMap::new();
    let mut drift: BTreeMap<&str, SignalState> = BTreeMap::new();
    let mut scores: BTreeMap<(&str, &str, &str, Signal), f64> = BTreeMap::new();
    for (key, value) in shown.iter() {
        match &key.entity {
            Entity::Gate(name) => {
                let Ok(gate) = serde_json::from_slice::<Gate>(value) else { continue };
                project_gates.insert((&key.project, name), gate.state);
                let worst = gates.entry(name).or_insert(gate.state);
                if screen::gate_rank(gate.state) > screen::gate_rank(*worst) {
                    *worst = gate.state;
                }
            }
            Entity::Annotator(name) => {
                let Ok(annotator) = serde_json::from_slice::<AnnotatorRead>(value) else { continue };
                for (signal, report) in annotator.drift.iter().flatten() {
                    let state = drift.entry(name).or_default();
                    *state = (*state).max(report.state);
                    if let Some(score) = report.score {
                        scores.insert((&key.project, &key.task, name, *signal), score);
                    }
                }
            }
            _ => {}
        }
    }
    for state in gates.into_values() {
        *snapshot.gates.entry(state).or_default() += 1;
    }
    snapshot.in_alarm = drift.values().filter(|s| **s == SignalState::Alarm).count();
    snapshot.in_watch = drift.values().filter(|s| **s == SignalState::Watch).count();
    for (key, value) in shown.iter().filter(|(k, _)| k.entity == Entity::Scope) {
        let Ok(summary) = serde_json::from_slice::<ScopeSummary>(value) else { continue };
        let name = format!("{}/{}", summary.project, summary.task);
        let firing: Vec<AlertRead> = shown
            .of_scope(&key.project, &key.task)
            .filter(|(k, _)| matches!(k.entity, Entity::Alert(_)))
            .filter_map(|(_, v)| serde_json::from_slice::<AlertRead>(v).ok())
            .filter(|a| a.status == AlertStatus::Firing)
            .collect();
        snapshot.scopes.push(ScopeRow {
            name: name.clone(),
            labels: summary.n_labels,
            annotators: summary.n_annotators,
            alpha: summary.agreement.krippendorff_alpha.nominal,
            percent_agreement: summary.agreement.percent_agreement,
            gold_accuracy: summary.gold.as_ref().map(|g| g.accuracy),
            firing: firing.len(),
            critical: firing.iter().any(|a| a.severity == Severity::Critical),
        });
        for alert in firing {
            let explanation = match &alert.annotator_id {
                Some(annotator) => alert
                    .summary
                    .strip_prefix(&format!("{annotator}: "))
                    .unwrap_or(&alert.summary)
                    .to_string(),
                None => alert.summary.clone(),
            };
            let gate = alert
                .annotator_id
                .as_deref()
                .and_then(|a| project_gates.get(&(summary.project.as_str(), a)).copied());
            let score = alert.annotator_id.as_deref().zip(alert.signal).and_then(|(annotator, signal)| {
                scores.get(&(&*key.project, &*key.task, annotator, signal)).copied()
            });
            snapshot.alerts.push(ScreenAlert {
                severity: alert.severity,
                annotator: alert.annotator_id,
                scope: name.clone(),
                kind: kind_name(&alert.kind),
                signal: alert.signal,
                explanation,
                gate,
                score,
            });
        }
    }
    snapshot.scopes.sort_by(|a, b| a.name.cmp(&b.name));
    snapshot.leaderboards = leaderboards(shown);
    snapshot
}

/// Each scope's leaderboard, by rank.
fn leaderboards(shown: &Records) -> Vec<LeaderboardRow> {
    #[derive(serde::Deserialize)]
    struct EntryRead {
        system: String,
        elo: f64,
        rank: u32,
    }
    let mut rows: BTreeMap<String, Vec<EntryRead>> = BTreeMap::new();
    for (key, value) in shown.iter().filter(|(k, _)| matches!(k.entity, Entity::System(_))) {
        if let Ok(entry) = serde_json::from_slice::<EntryRead>(value) {
            rows.entry(format!("{}/{}", key.project, key.task)).or_default().push(entry);
        }
    }
    rows.into_iter()
        .map(|(scope, mut entries)| {
            entries.sort_by_key(|e| e.rank);
            LeaderboardRow { scope, systems: entries.into_iter().map(|e| (e.system, e.elo)).collect() }
        })
        .collect()
}
