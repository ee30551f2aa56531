//! The series `/metrics` serves follow the formula of docs/metrics.md ("Sizing"): a fixed part,
//! a part per scope and a part per project, never a part per annotator or item; and 200 scopes
//! stay under the `sample_limit` that grafana/prometheus/prometheus.yml ships, which is derived
//! from that formula.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::demo::start_demo;
use crate::grafana::ONE_DEMO_AT_A_TIME;
use crate::http::get;

/// Series of the fixed part, at most: input and pipeline (36) and the process (7).
const FIXED: usize = 43;
/// Window sizes of the default `[windows]` (1h, 1d).
const WINDOWS: usize = 2;
/// The default `drift.watchlist_size`.
const WATCHLIST: usize = 10;
/// Signals, gate states and signal states, severities.
const SIGNALS: usize = 5;

/// Series of one scope with `levels` alpha levels (1 nominal, 4 numeric).
fn per_scope(levels: usize) -> usize {
    (9 + levels) * (1 + WINDOWS) + 1
}

/// At most this many series of one project.
fn per_project() -> usize {
    4 + SIGNALS * 4 + 2 + 2 + 16 + 2 * SIGNALS * WATCHLIST
}

/// The formula's bound for `scopes` scopes in `projects` projects.
fn bound(scopes: usize, projects: usize, levels: usize) -> usize {
    FIXED + scopes * per_scope(levels) + projects * per_project()
}

/// The `sample_limit` of the shipped scrape configuration.
fn shipped_sample_limit() -> usize {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/prometheus/prometheus.yml");
    let config = std::fs::read_to_string(path).unwrap();
    let limits: Vec<usize> = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sample_limit:"))
        .map(|v| v.split('#').next().unwrap().trim().parse().expect("a number"))
        .collect();
    assert_eq!(limits.len(), 1, "one sample_limit in {path}");
    limits[0]
}

/// Series (sample lines) of an exposition.
fn series(metrics: &str) -> Vec<&str> {
    metrics.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect()
}

fn count(lines: &[&str], prefix: &str) -> usize {
    lines.iter().filter(|l| l.starts_with(prefix)).count()
}

/// Polls the demo's /metrics until `done` holds (or two minutes pass) and returns it.
fn metrics_when(addr: &str, done: impl Fn(&[&str]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = get(addr, "/metrics").expect("the demo answers");
        assert_eq!(status, 200);
        if done(&series(&body)) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Checks the parts of the formula that are exact once every scope and project has its series,
/// and the bound; returns the number of series.
fn check_formula(metrics: &str, scopes: usize, projects: usize) -> usize {
    let lines = series(metrics);
    assert_eq!(count(&lines, "labelqc_scope_"), scopes * per_scope(1), "per scope");
    assert_eq!(count(&lines, "labelqc_annotators_gate{"), projects * 4);
    assert_eq!(count(&lines, "labelqc_annotators_signal_state{"), projects * SIGNALS * 4);
    assert_eq!(count(&lines, "labelqc_alerts_firing{"), projects * 2);
    let fixed = lines.iter().filter(|l| !l.contains("project=")).count();
    assert!(fixed <= FIXED, "{fixed} series without a project");
    assert!(lines.len() <= bound(scopes, projects, 1), "{} series over the formula's bound", lines.len());
    lines.len()
}

/// However many annotators label, the series stay those of the scopes and projects: 5,000
/// annotators in 2 projects of 2 tasks stay within the formula (455 series at most), annotator
/// ids appear only on the watchlist, and no item id anywhere.
#[test]
fn five_thousand_annotators_stay_within_the_formula() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (annotators, projects) = (5000, 2);
    let (_demo, addr, _stderr) =
        start_demo(&["--duration", "600", "--rate", "5000", "--annotators", "5000", "--projects", "2"]);
    // Until every annotator has labelled in both projects: each then has a gate.
    let gated = |lines: &[&str], project: usize| -> f64 {
        let prefix = format!("labelqc_annotators_gate{{project=\"project-{project}\"");
        lines
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metrics = metrics_when(&addr, |lines| {
        (0..projects).all(|p| gated(lines, p) >= annotators as f64)
            && count(lines, "labelqc_scope_") == 4 * per_scope(1)
    });
    let lines = series(&metrics);
    for p in 0..projects {
        assert_eq!(gated(&lines, p), annotators as f64, "{metrics}");
    }
    let n = check_formula(&metrics, 4, projects);
    assert!(n <= 455, "{n}");

    // Annotator ids only on the watchlist, at most watchlist_size per project and signal.
    let watchlist: Vec<&&str> = lines.iter().filter(|l| l.contains("annotator=")).collect();
    assert!(watchlist.iter().all(|l| l.starts_with("labelqc_watchlist_")), "{watchlist:?}");
    let named: BTreeSet<&str> =
        watchlist.iter().filter_map(|l| l.split("annotator=\"").nth(1)?.split('"').next()).collect();
    assert!(named.len() <= WATCHLIST * projects * SIGNALS, "{} annotators named", named.len());
    assert!(!metrics.contains("item-"), "no item id on any series");
}

/// 200 scopes (20 projects of 10 tasks) serve the series the formula says, under the
/// `sample_limit` of the shipped scrape configuration; and that limit is the formula's worst case
/// for 200 scopes (one project each, numeric labels) with some headroom, not a number of its own.
#[test]
fn two_hundred_scopes_stay_under_the_shipped_sample_limit() {
    let limit = shipped_sample_limit();
    let worst = bound(200, 200, 4);
    assert_eq!(worst, 36_843);
    assert!(worst <= limit && limit <= worst * 115 / 100, "sample_limit {limit} for a worst case of {worst}");

    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (scopes, projects) = (200, 20);
    let (_demo, addr, _stderr) = start_demo(&[
        "--duration",
        "600",
        "--rate",
        "1000",
        "--annotators",
        "40",
        "--projects",
        "20",
        "--tasks",
        "10",
    ]);
    let metrics = metrics_when(&addr, |lines| {
        count(lines, "labelqc_scope_") == scopes * per_scope(1)
            && count(lines, "labelqc_annotators_signal_state{") == projects * SIGNALS * 4
            && count(lines, "labelqc_alerts_firing{") == projects * 2
    });
    let n = check_formula(&metrics, scopes, projects);
    assert!(n < limit, "{n} series, over the shipped sample_limit {limit}");
}
