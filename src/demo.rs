//! `labelqc demo`: the main job on an embedded default, with no Kafka. `labelqc gen`'s simulated
//! workforce labels live (event time is now), the full dataflows keep every number current,
//! `/metrics`, `/healthz` and `/readyz` are served, and a terminal view shows throughput, each
//! scope's agreement and gold accuracy, the annotators who agree least with their peers with
//! their gates, and the alerts fired so far.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use labelqc_dataflows::drift::{AlertStatus, GateState};
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::source::{Source, Stream};
use labelqc_dataflows::view::QualityView;

use crate::gen::{GenSpec, Traffic};
use crate::http::HttpServer;
use crate::telemetry::Telemetry;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoSettings {
    /// Where to serve `/metrics`, `/healthz` and `/readyz`.
    pub http: SocketAddr,
    /// Label events per second.
    pub rate: u64,
    /// Stop after this long (runs until Ctrl-C without it).
    pub duration: Option<Duration>,
    /// The simulated workforce and traffic.
    pub traffic: GenSpec,
    pub workers: usize,
    /// Window sizes (ms) of the windowed numbers (gauges with `window="1h"`, ...).
    pub windows: Vec<i64>,
    /// Redraw a full-screen view (only on a terminal); otherwise print a line a second.
    pub full_screen: bool,
}

/// How often events are fed to the dataflows (one epoch per tick).
const TICK: Duration = Duration::from_millis(100);
/// Alerts listed in the terminal view.
const RECENT_ALERTS: usize = 6;
/// How often the terminal view is redrawn.
const REFRESH: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs the demo until the duration passes or Ctrl-C.
pub fn run(settings: &DemoSettings) -> Result<()> {
    let telemetry = Arc::new(Telemetry::new()?);
    let ready = Arc::new(AtomicBool::new(false));
    let interrupted = crate::signals::install()?;
    let server = HttpServer::start(settings.http, telemetry.clone(), ready.clone())?;
    eprintln!("labelqc demo: metrics on http://{}/metrics (Ctrl-C stops)", server.local_addr());

    let mut engine = Engine::start(
        &EngineConfig { workers: settings.workers, max_epochs_in_flight: 2 },
        QualityView::with_change_tracking(),
    )?;
    let mut traffic = Traffic::new(&settings.traffic)?;
    let mut source = Source::with_windows(&settings.windows);
    let full_screen = settings.full_screen && std::io::stdout().is_terminal();

    let start = Instant::now();
    let mut fed = 0u64;
    let mut last_refresh = Instant::now();
    let mut fed_at_refresh = 0u64;
    let (mut label_lines, mut gold_lines) = (Vec::new(), Vec::new());
    let mut updates = Vec::new();
    let mut alerts_fired = 0u64;
    let mut recent_alerts: VecDeque<String> = VecDeque::new();
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
        fed = due;
        engine.submit(std::mem::take(&mut updates))?;
        engine.sync()?;
        {
            let mut view = engine.view();
            let changes = view.settle(&source.catalog);
            telemetry.set_scopes(&view, &source.catalog, &changes);
            telemetry.count_changes(&changes);
            alerts_fired += changes.fired.len() as u64;
            for alert in changes.alerts.iter().filter_map(|(_, a)| a.as_ref()) {
                if alert.status == AlertStatus::Firing && alert.kind == "annotator_drift" {
                    recent_alerts.retain(|s| s != &alert.summary);
                    recent_alerts.push_front(alert.summary.clone());
                    recent_alerts.truncate(RECENT_ALERTS);
                }
            }
            telemetry.set_drift(&view.drift_summary(&source.catalog));
        }
        telemetry.epochs.inc();
        telemetry.output_event_time.set(created as f64 / 1000.0);
        telemetry.output_updated.set(now_ms() as f64 / 1000.0);
        telemetry.observe_latency(Duration::from_millis((now_ms() - created).max(0) as u64));
        // The demo's input backlog: events the simulated workforce has given by now and the
        // dataflows have not yet taken (it grows when the demo cannot keep up with --rate).
        let given = (start.elapsed().as_secs_f64() * settings.rate as f64) as u64;
        telemetry.consumer_lag.with_label_values(&["labels"]).set(given.saturating_sub(fed) as i64);
        ready.store(true, Ordering::SeqCst);

        if last_refresh.elapsed() >= REFRESH {
            let rate = (fed - fed_at_refresh) as f64 / last_refresh.elapsed().as_secs_f64();
            let view = engine.view();
            let alerts = Alerts { fired: alerts_fired, recent: &recent_alerts };
            let screen = render(&view, &source, start.elapsed(), fed, rate, &telemetry, &alerts);
            drop(view);
            let mut out = std::io::stdout().lock();
            if full_screen {
                let _ = write!(out, "\x1b[2J\x1b[H{screen}");
            } else {
                let _ = writeln!(out, "{}", screen.lines().next().unwrap_or_default());
            }
            let _ = out.flush();
            last_refresh = Instant::now();
            fed_at_refresh = fed;
        }
        if let Some(rest) = TICK.checked_sub(tick_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let view = engine.finish()?;
    let summary = traffic.summary();
    eprintln!(
        "labelqc demo: stopped after {:.1} s; {} labels, {} relabels, {} deletes, {} gold items; {} scopes",
        start.elapsed().as_secs_f64(),
        summary.labels,
        summary.relabels,
        summary.deletes,
        summary.gold_items,
        source.catalog.scope_ids().filter(|&s| view.scope_summary(s, &source.catalog).is_some()).count()
    );
    drop(server);
    Ok(())
}

/// The alerts fired so far, for the terminal view.
struct Alerts<'a> {
    fired: u64,
    recent: &'a VecDeque<String>,
}

fn fmt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

/// The terminal view. Its first line is the one-line status.
fn render(
    view: &QualityView,
    source: &Source,
    elapsed: Duration,
    fed: u64,
    rate: f64,
    telemetry: &Telemetry,
    alerts: &Alerts<'_>,
) -> String {
    let catalog = &source.catalog;
    let mut out = format!(
        "labelqc demo  t={:.0}s  events={fed}  {rate:.0} events/s  live labels={}  latency p50={:.1}ms p99={:.1}ms\n\n",
        elapsed.as_secs_f64(),
        source.live_labels(),
        telemetry.latency_quantile(0.5).as_secs_f64() * 1e3,
        telemetry.latency_quantile(0.99).as_secs_f64() * 1e3,
    );
    out.push_str(&format!(
        "{:<28} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}\n",
        "scope", "labels", "agree", "alpha", "fleiss", "ac1", "kappa", "gold acc"
    ));
    let mut attention = Vec::new();
    let mut scopes: Vec<_> = catalog.scope_ids().collect();
    scopes.sort_by_key(|&s| catalog.scope_name(s));
    for scope in scopes {
        // The summary and the annotators only: forming every pair each second is not needed here.
        let Some(s) = view.scope_summary(scope, catalog) else { continue };
        out.push_str(&format!(
            "{:<28} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}\n",
            format!("{}/{}", s.project, s.task),
            s.n_labels,
            fmt(s.agreement.percent_agreement),
            fmt(s.agreement.krippendorff_alpha.nominal),
            fmt(s.agreement.fleiss_kappa),
            fmt(s.agreement.gwet_ac1),
            fmt(s.agreement.mean_cohen_kappa),
            fmt(s.gold.as_ref().map(|g| g.accuracy)),
        ));
        for a in view.annotators(scope, catalog).into_iter().filter(|a| a.n_labels >= 20) {
            if let Some(agreement) = a.agreement_with_others {
                attention.push((agreement, format!("{}/{}", s.project, s.task), a));
            }
        }
    }
    attention.sort_by(|x, y| x.0.total_cmp(&y.0));
    out.push_str("\nlowest agreement with peers (annotators with 20+ labels)\n");
    out.push_str(&format!(
        "{:<12} {:<28} {:>7} {:>9} {:>24} {:>10}\n",
        "annotator", "scope", "labels", "agreement", "gold accuracy (95% CI)", "gate"
    ));
    for (agreement, scope, a) in attention.iter().take(8) {
        let gold = a.gold.as_ref().map_or_else(
            || "-".to_string(),
            |g| format!("{:.2} ({:.2}-{:.2}, n={})", g.accuracy, g.wilson_low, g.wilson_high, g.n),
        );
        let gate = a.gate.as_ref().map_or("-", |g| g.state.name());
        out.push_str(&format!(
            "{:<12} {:<28} {:>7} {:>9.3} {:>24} {:>10}\n",
            a.annotator_id, scope, a.n_labels, agreement, gold, gate
        ));
    }
    let summary = view.drift_summary(catalog);
    let mut gates: BTreeMap<GateState, i64> = BTreeMap::new();
    for ((_, state), n) in &summary.gates {
        *gates.entry(*state).or_default() += n;
    }
    let gates: Vec<String> = gates.iter().map(|(state, n)| format!("{} {n}", state.name())).collect();
    out.push_str(&format!("\ngates: {}\nalerts so far: {}\n", gates.join(", "), alerts.fired));
    for summary in alerts.recent {
        out.push_str(&format!("  {summary}\n"));
    }
    out
}
