//! The demo's terminal view: a [`Snapshot`] of what a quality manager needs to see (throughput,
//! each scope's agreement and gold accuracy, gates and drift, the planted problems, and the alerts
//! firing, grouped per annotator, critical first) rendered into at most `height` lines of at most
//! `width` characters, so that it fits a terminal without wrapping or scrolling. Plain ASCII only.

use std::collections::BTreeMap;
use std::time::Duration;

use labelqc_dataflows::drift::{GateState, Severity, Signal};

/// Most scope rows shown; with more scopes, the worst are shown and the rest counted.
const MAX_SCOPE_ROWS: usize = 5;
/// Lines of explanation under an alert group's head line: at least, and at most.
const MIN_BODY_LINES: usize = 2;
const MAX_BODY_LINES: usize = 3;

/// What the view shows, gathered from the engine's view once a second.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub elapsed: Duration,
    /// Label events per second over the last refresh.
    pub rate: f64,
    pub live_labels: usize,
    pub latency_p99: Duration,
    /// Where the Prometheus metrics are served.
    pub metrics_url: String,
    pub scopes: Vec<ScopeRow>,
    /// Annotators by their most restrictive gate over the projects.
    pub gates: BTreeMap<GateState, usize>,
    /// Annotators whose most telling drift state over every scope and signal is alarm, and watch.
    pub in_alarm: usize,
    pub in_watch: usize,
    /// The planted problem annotators: (name, `spammer` | `biased` | `careless`, and with
    /// comparisons `left_biased` | `right_biased` | `tie_happy`).
    pub planted: Vec<(String, &'static str)>,
    /// Every alert firing now.
    pub alerts: Vec<ScreenAlert>,
    /// Alerts that started firing since the start.
    pub raised: u64,
    /// The leaderboards of the scopes with comparisons.
    pub leaderboards: Vec<LeaderboardRow>,
    /// Whether the demo has stopped (the last view, printed once it has).
    pub stopped: bool,
}

/// One scope's leaderboard: its systems by rank, with their Elo ratings.
#[derive(Clone, Debug, Default)]
pub struct LeaderboardRow {
    /// `project/task`.
    pub scope: String,
    pub systems: Vec<(String, f64)>,
}

/// One scope's line.
#[derive(Clone, Debug, Default)]
pub struct ScopeRow {
    /// `project/task`.
    pub name: String,
    pub labels: i64,
    pub annotators: usize,
    /// Nominal Krippendorff's alpha.
    pub alpha: Option<f64>,
    pub percent_agreement: Option<f64>,
    pub gold_accuracy: Option<f64>,
    /// Alerts firing in the scope, and whether one is critical.
    pub firing: usize,
    pub critical: bool,
}

/// An alert firing now, as the view shows it.
#[derive(Clone, Debug)]
pub struct ScreenAlert {
    pub severity: Severity,
    pub annotator: Option<String>,
    /// `project/task`.
    pub scope: String,
    pub kind: &'static str,
    pub signal: Option<Signal>,
    /// The alert's summary without the annotator's name in front.
    pub explanation: String,
    /// The annotator's gate in the alert's project.
    pub gate: Option<GateState>,
    /// The signal's evidence now, relative to its alarm level (1: alarm).
    pub score: Option<f64>,
}

/// Alerts of one annotator (or one scope-level alert), as one block of the view.
struct Group<'a> {
    severity: Severity,
    alerts: Vec<&'a ScreenAlert>,
}

impl Group<'_> {
    /// The alert whose explanation the block shows: the most severe, then the strongest
    /// evidence, then by signal order and scope.
    fn worst(&self) -> &ScreenAlert {
        self.alerts
            .iter()
            .min_by(|a, b| {
                b.severity
                    .cmp(&a.severity)
                    .then(b.score.unwrap_or(0.0).total_cmp(&a.score.unwrap_or(0.0)))
                    .then(a.signal.cmp(&b.signal))
                    .then(a.scope.cmp(&b.scope))
            })
            .expect("a group has an alert")
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `m:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// `text` cut to `width` characters (ending in `...` when cut).
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(3)).collect();
    format!("{}...", kept.trim_end())
}

/// `text` word-wrapped into at most `max_lines` lines of at most `width` characters; the last
/// line ends in `...` when the text did not fit.
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let needed = if current.is_empty() {
            word.chars().count()
        } else {
            current.chars().count() + 1 + word.chars().count()
        };
        if needed > width && !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    let mut lines: Vec<String> = lines.into_iter().map(|l| fit(&l, width)).collect();
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            let kept: String = last.chars().take(width.saturating_sub(3)).collect();
            *last = format!("{}...", kept.trim_end());
        }
    }
    lines
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Critical => "CRITICAL",
        Severity::Warning => "WARNING",
    }
}

/// What a scope-level alert is about, in plain words.
fn kind_title(kind: &str) -> &str {
    match kind {
        "alpha_below_floor" => "agreement beyond chance under the floor",
        "gold_below_target" => "gold accuracy under the target",
        "population_shift" => "many annotators flagged at once",
        other => other,
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The view of `snapshot` as at most `height` lines of at most `width` characters each.
pub fn render(snapshot: &Snapshot, width: usize, height: usize) -> Vec<String> {
    let s = snapshot;
    let mut lines = vec![
        format!(
            "labelqc demo  {}  {} events/s  {} labels  latency p99 {:.1} ms",
            clock(s.elapsed),
            thousands(s.rate.round() as u64),
            thousands(s.live_labels as u64),
            s.latency_p99.as_secs_f64() * 1e3
        ),
        format!("metrics: {}   {}", s.metrics_url, if s.stopped { "stopped" } else { "Ctrl-C stops" }),
        format!(
            "{:<22} {:>9} {:>6} {:>6} {:>9} {:>8} {:>6}",
            "scope", "labels", "annot.", "alpha", "agreement", "gold acc", "alerts"
        ),
    ];
    let mut scopes: Vec<&ScopeRow> = s.scopes.iter().collect();
    let more_scopes = scopes.len().saturating_sub(MAX_SCOPE_ROWS);
    if more_scopes > 0 {
        // The worst first: critical alerts, then the lowest alpha.
        scopes.sort_by(|a, b| {
            (b.critical, b.firing)
                .cmp(&(a.critical, a.firing))
                .then(a.alpha.unwrap_or(2.0).total_cmp(&b.alpha.unwrap_or(2.0)))
                .then(a.name.cmp(&b.name))
        });
        scopes.truncate(MAX_SCOPE_ROWS - 1);
    }
    for row in scopes {
        lines.push(format!(
            "{:<22} {:>9} {:>6} {:>6} {:>9} {:>8} {:>6}",
            fit(&row.name, 22),
            thousands(row.labels.max(0) as u64),
            row.annotators,
            number(row.alpha),
            percent(row.percent_agreement),
            percent(row.gold_accuracy),
            if row.critical { format!("{}!", row.firing) } else { row.firing.to_string() },
        ));
    }
    if more_scopes > 0 {
        lines.push(format!("... {} more scopes (the worst are shown)", more_scopes + 1));
    }
    let gates: Vec<String> = [GateState::Allow, GateState::Warmup, GateState::Probation, GateState::Block]
        .iter()
        .filter_map(|g| s.gates.get(g).map(|n| format!("{n} {}", g.name())))
        .collect();
    lines.push(format!(
        "gates: {}   drift: {} alarm, {} watch",
        if gates.is_empty() { "-".to_string() } else { gates.join(", ") },
        s.in_alarm,
        s.in_watch
    ));
    if !s.planted.is_empty() {
        let mut kinds: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, kind) in &s.planted {
            kinds.entry(kind).or_default().push(name);
        }
        let parts: Vec<String> = [("spammer", "spammers"), ("biased", "biased"), ("careless", "careless")]
            .iter()
            .filter_map(|(kind, title)| Some(format!("{title} {}", kinds.get(kind)?.join(" "))))
            .collect();
        lines.push(format!("planted: {}", parts.join("; ")));
        // With --comparisons, the comparisons' planted raters on a line of their own.
        let raters: Vec<String> =
            [("left_biased", "left-side"), ("right_biased", "right-side"), ("tie_happy", "ties")]
                .iter()
                .filter_map(|(kind, title)| Some(format!("{title} {}", kinds.get(kind)?.join(" "))))
                .collect();
        if !raters.is_empty() {
            lines.push(format!("planted raters: {}", raters.join("; ")));
        }
    }
    for board in s.leaderboards.iter().take(2) {
        let systems: Vec<String> =
            board.systems.iter().map(|(name, elo)| format!("{name} {elo:.0}")).collect();
        lines.push(format!("leaderboard {} (Elo): {}", board.scope, systems.join(", ")));
    }
    lines.push(String::new());

    // Alerts, one block per annotator (scope-level alerts one block each), critical first.
    let mut by_annotator: BTreeMap<&str, Vec<&ScreenAlert>> = BTreeMap::new();
    let mut groups: Vec<Group<'_>> = Vec::new();
    for alert in &s.alerts {
        match &alert.annotator {
            Some(name) => by_annotator.entry(name).or_default().push(alert),
            None => groups.push(Group { severity: alert.severity, alerts: vec![alert] }),
        }
    }
    let annotators = by_annotator.len();
    groups.extend(by_annotator.into_values().map(|alerts| Group {
        severity: alerts.iter().map(|a| a.severity).max().unwrap_or(Severity::Warning),
        alerts,
    }));
    groups.sort_by(|a, b| {
        (b.severity, b.alerts.len())
            .cmp(&(a.severity, a.alerts.len()))
            .then_with(|| group_name(a).cmp(&group_name(b)))
    });
    let critical = s.alerts.iter().filter(|a| a.severity == Severity::Critical).count();
    lines.push(format!(
        "ALERTS firing: {} ({} critical) for {}; {} raised since start",
        s.alerts.len(),
        critical,
        plural(annotators, "annotator", "annotators"),
        s.raised
    ));
    if groups.is_empty() {
        lines.push("  none: the planted problems show here within a minute".to_string());
    }
    let mut shown = 0;
    for (i, group) in groups.iter().enumerate() {
        let reserve = usize::from(i + 1 < groups.len());
        let room = height.saturating_sub(lines.len() + reserve);
        if room < 2 {
            break;
        }
        // Share the room among the groups still to show: a few groups get more lines each.
        let share = height.saturating_sub(lines.len()) / (groups.len() - i);
        let body = share.saturating_sub(1).clamp(MIN_BODY_LINES, MAX_BODY_LINES).min(room - 1);
        lines.push(fit(&group_head(group), width));
        let worst = group.worst();
        let text = format!("{}: {}", worst.scope, worst.explanation);
        for line in wrap(&text, width - 2, body) {
            lines.push(format!("  {line}"));
        }
        shown += 1;
    }
    if shown < groups.len() {
        let rest: Vec<String> = groups[shown..].iter().map(group_name).collect();
        lines.push(format!("+{} more: {}", groups.len() - shown, rest.join(", ")));
    }
    lines.truncate(height);
    lines.into_iter().map(|l| fit(&l, width)).collect()
}

/// The annotator of a group, or the scope of a scope-level alert.
fn group_name(group: &Group<'_>) -> String {
    let first = group.alerts[0];
    first.annotator.clone().unwrap_or_else(|| first.scope.clone())
}

/// The first line of a group: severity, who, the gate, and what is flagged where.
fn group_head(group: &Group<'_>) -> String {
    let first = group.alerts[0];
    let Some(name) = &first.annotator else {
        return format!("{:<8} {}  {}", severity_name(group.severity), first.scope, kind_title(first.kind));
    };
    let mut scopes: Vec<&str> = group.alerts.iter().map(|a| a.scope.as_str()).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let mut signals: Vec<Signal> = group.alerts.iter().filter_map(|a| a.signal).collect();
    signals.sort_unstable();
    signals.dedup();
    let titles: Vec<&str> = signals.iter().map(|s| s.title()).collect();
    let gate = group.alerts.iter().filter_map(|a| a.gate).max_by_key(|g| gate_rank(*g));
    format!(
        "{:<8} {}  gate {}  {}: {}",
        severity_name(group.severity),
        name,
        gate.map_or("-", GateState::name),
        plural(scopes.len(), "scope", "scopes"),
        titles.join(", ")
    )
}

/// How restrictive a gate is: an annotator's gate over several projects is the most restrictive.
pub fn gate_rank(gate: GateState) -> u8 {
    match gate {
        GateState::Allow => 0,
        GateState::Warmup => 1,
        GateState::Probation => 2,
        GateState::Block => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(
        annotator: Option<&str>,
        scope: &str,
        severity: Severity,
        signal: Option<Signal>,
    ) -> ScreenAlert {
        ScreenAlert {
            severity,
            annotator: annotator.map(String::from),
            scope: scope.to_string(),
            kind: if annotator.is_some() { "annotator_drift" } else { "alpha_below_floor" },
            signal,
            explanation: "agrees with the others on the same items 61 points less often than they agree with each other (likely 55-67 points less; 212 items over the last 7 days)".to_string(),
            gate: Some(GateState::Block),
            score: Some(2.0),
        }
    }

    fn snapshot(scopes: usize, annotators: usize) -> Snapshot {
        let mut alerts = vec![alert(None, "project-1/task-0", Severity::Critical, None)];
        for a in 0..annotators {
            for scope in 0..3 {
                alerts.push(alert(
                    Some(&format!("ann-{a:05}")),
                    &format!("project-{scope}/task-0"),
                    Severity::Warning,
                    Some(Signal::Agreement),
                ));
            }
        }
        Snapshot {
            elapsed: Duration::from_secs(3725),
            rate: 2003.7,
            live_labels: 7_654_321,
            latency_p99: Duration::from_micros(3100),
            metrics_url: "http://127.0.0.1:9898/metrics".into(),
            scopes: (0..scopes)
                .map(|i| ScopeRow {
                    name: format!("project-{}-with-a-rather-long-name/task-{i}", i / 10),
                    labels: 1_234_567,
                    annotators: 100,
                    alpha: Some(0.8 - i as f64 / 1000.0),
                    percent_agreement: Some(0.88),
                    gold_accuracy: Some(0.93),
                    firing: i % 3,
                    critical: i == 7,
                })
                .collect(),
            gates: [(GateState::Allow, 96), (GateState::Block, 3), (GateState::Warmup, 1)].into(),
            in_alarm: 4,
            in_watch: 2,
            planted: vec![
                ("ann-00017".into(), "spammer"),
                ("ann-00052".into(), "spammer"),
                ("ann-00033".into(), "biased"),
                ("ann-00071".into(), "careless"),
            ],
            alerts,
            raised: 11,
            leaderboards: vec![LeaderboardRow {
                scope: "default/preference".into(),
                systems: (0..8).map(|i| (format!("sys-{i:02}"), 1200.0 - 40.0 * f64::from(i))).collect(),
            }],
            stopped: false,
        }
    }

    #[test]
    fn the_last_view_says_the_demo_stopped() {
        let running = render(&snapshot(2, 100), 80, 24);
        assert!(running[1].ends_with("Ctrl-C stops"), "{}", running[1]);
        let stopped = render(&Snapshot { stopped: true, ..snapshot(2, 100) }, 80, 24);
        assert!(stopped[1].ends_with("stopped") && !stopped[1].contains("Ctrl-C"), "{}", stopped[1]);
    }

    #[test]
    fn fits_80_by_24_with_few_or_many_scopes_and_alerts() {
        for (scopes, annotators) in [(0, 0), (1, 1), (4, 4), (6, 2), (200, 50)] {
            let lines = render(&snapshot(scopes, annotators), 80, 24);
            assert!(lines.len() <= 24, "{scopes} scopes: {} lines", lines.len());
            for line in &lines {
                assert!(line.chars().count() <= 80, "{} chars: {line}", line.chars().count());
                assert!(line.is_ascii(), "{line}");
            }
            assert!(
                lines[0].starts_with("labelqc demo  1:02:05") || lines[0].starts_with("labelqc demo  62:05")
            );
            assert!(lines[1].contains("http://127.0.0.1:9898/metrics"), "{}", lines[1]);
        }
    }

    #[test]
    fn alerts_are_grouped_per_annotator_critical_first() {
        let lines = render(&snapshot(4, 3), 80, 24);
        let text = lines.join("\n");
        let header = lines.iter().position(|l| l.starts_with("ALERTS")).expect("alerts header");
        assert_eq!(lines[header], "ALERTS firing: 10 (1 critical) for 3 annotators; 11 raised since start");
        assert!(
            lines[header + 1].starts_with("CRITICAL project-1/task-0  agreement beyond chance"),
            "{text}"
        );
        // One block per annotator, with its gate and what is flagged where.
        let heads: Vec<&String> = lines.iter().filter(|l| l.starts_with("WARNING")).collect();
        assert_eq!(heads.len(), 3, "{text}");
        assert_eq!(heads[0].as_str(), "WARNING  ann-00000  gate block  3 scopes: agreement with others");
        assert!(text.contains("  project-0/task-0: agrees with the others"), "{text}");
        assert!(text.contains("planted: spammers ann-00017 ann-00052; biased ann-00033; careless ann-00071"));
        assert!(!text.contains("planted raters"), "no comparisons, no raters line");
    }

    #[test]
    fn the_comparisons_planted_raters_have_a_line_of_their_own() {
        let mut s = snapshot(4, 3);
        s.planted.extend([
            ("rater-024".to_string(), "left_biased"),
            ("rater-039".to_string(), "right_biased"),
            ("rater-012".to_string(), "tie_happy"),
        ]);
        let lines = render(&s, 80, 24);
        assert!(lines.len() <= 24);
        assert!(
            lines
                .iter()
                .any(|l| l == "planted raters: left-side rater-024; right-side rater-039; ties rater-012"),
            "{}",
            lines.join("\n")
        );
    }

    #[test]
    fn many_scopes_show_the_worst_and_count_the_rest() {
        let lines = render(&snapshot(200, 0), 80, 24);
        let text = lines.join("\n");
        assert!(text.contains("... 196 more scopes (the worst are shown)"), "{text}");
        // Scope 7 has a critical alert: it comes first.
        assert!(lines[3].starts_with("project-0-with-a-ra...") && lines[3].ends_with("1!"), "{text}");
    }

    #[test]
    fn wrapping_and_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(wrap("aaa bbb ccc ddd", 7, 2), vec!["aaa bbb", "ccc ddd"]);
        assert_eq!(wrap("aaa bbb ccc ddd eee", 7, 2), vec!["aaa bbb", "ccc..."]);
        assert_eq!(fit("abcdefghij", 6), "abc...");
    }
}
