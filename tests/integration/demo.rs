//! `labelqc demo` end to end: it serves /metrics, /healthz and /readyz on 127.0.0.1 while the
//! simulated workforce labels, its quality gauges carry only bounded labels, and it stops by
//! itself after `--duration`; its planted problems, and only they, are alerted, and its view fits
//! 80x24.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped (if the test fails before it exits).
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    crate::http::get(addr, path).expect("the demo answers")
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    crate::http::samples(metrics, series).next()
}

/// Scopes with label counts for windows `window` (a label matcher) in an exposition.
fn windowed(metrics: &str, window: &str) -> usize {
    metrics.lines().filter(|l| l.starts_with("labelqc_scope_labels{") && l.contains(window)).count()
}

/// Scopes with all-time label counts in an exposition.
fn all_time_scopes(metrics: &str) -> usize {
    windowed(metrics, "window=\"all\"")
}

/// Starts `labelqc demo --lines` on a free port of 127.0.0.1 with `args`: the process, its address
/// and its stderr (past the line announcing the address).
pub fn start_demo(args: &[&str]) -> (Running, String, BufReader<ChildStderr>) {
    let child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["demo", "--http", "127.0.0.1:0", "--lines"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start labelqc demo");
    let mut demo = Running(child);
    let mut stderr = BufReader::new(demo.0.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = crate::http::announced_address(&first);
    (demo, addr, stderr)
}

#[test]
fn demo_serves_live_metrics_and_stops_by_itself() {
    let (mut demo, addr, mut stderr) = start_demo(&["--duration", "8", "--rate", "3000"]);

    // Wait for data to flow: every scope gets its gauges.
    let deadline = Instant::now() + Duration::from_secs(6);
    let metrics = loop {
        let (status, body) = get(&addr, "/metrics");
        assert_eq!(status, 200);
        // Each epoch sets the scopes' gauges, then their windows', then the gates': wait for all.
        let gated = body.contains("labelqc_annotators_gate{");
        let windows = windowed(&body, "window=\"1h\"") == 4 && windowed(&body, "window=\"1d\"") == 4;
        if (all_time_scopes(&body) == 4 && windows && gated) || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(all_time_scopes(&metrics), 4, "{metrics}");
    // The newest hour and day of each scope have their own series.
    let windowed =
        |w: &str| metrics.lines().filter(|l| l.starts_with("labelqc_scope_labels{") && l.contains(w)).count();
    assert_eq!((windowed("window=\"1h\""), windowed("window=\"1d\"")), (4, 4), "{metrics}");
    assert!(sample(&metrics, "labelqc_events_total{result=\"ok\",topic=\"labels\"}").unwrap() > 0.0);
    let alpha = sample(&metrics, "labelqc_scope_krippendorff_alpha{level=\"nominal\",project=\"project-0\",task=\"task-0\",window=\"all\"}")
        .expect("alpha series");
    assert!((-1.0..=1.0).contains(&alpha), "{alpha}");
    assert!(sample(&metrics, "labelqc_processing_latency_seconds{quantile=\"0.99\"}").unwrap() > 0.0);
    // Bounded labels only: no item ids anywhere, annotator ids only on the watchlist, which
    // holds at most 10 annotators per project and signal.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("labelqc_"), "{line}");
        assert!(!line.contains("item-"), "{line}");
        assert!(line.starts_with("labelqc_watchlist_") || !line.contains("ann-"), "{line}");
    }
    let watchlist = metrics.lines().filter(|l| l.starts_with("labelqc_watchlist_score{")).count();
    assert!(watchlist <= 10 * 5 * 2, "{watchlist} watchlist series");
    // Every annotator has a gate, counted per project and state.
    let gated: f64 = ["allow", "warmup", "probation", "block"]
        .iter()
        .filter_map(|state| {
            sample(&metrics, &format!("labelqc_annotators_gate{{project=\"project-0\",state=\"{state}\"}}"))
        })
        .sum();
    assert!(gated > 0.0, "{metrics}");
    // Every signal state has its series; speed and too_fast compare with weeks before: within
    // one day, every annotator is insufficient on them.
    for state in ["insufficient", "ok", "watch", "alarm"] {
        let series = format!(
            "labelqc_annotators_signal_state{{project=\"project-0\",signal=\"speed\",state=\"{state}\"}}"
        );
        let n = sample(&metrics, &series).unwrap_or_else(|| panic!("no {series}"));
        assert!(if state == "insufficient" { n > 0.0 } else { n == 0.0 }, "{series} {n}");
    }
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    // The query API answers from what the topics would hold: the scopes, each with the numbers
    // its gauges show, and every gate the metrics count.
    let (status, body) = get(&addr, "/v1/scopes");
    assert_eq!(status, 200, "{body}");
    let scopes: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(scopes.as_array().map(Vec::len), Some(4), "{body}");
    let (status, body) = get(&addr, "/v1/scopes/project-0/task-0");
    assert_eq!(status, 200, "{body}");
    let scope: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(scope["n_labels"].as_i64().unwrap() > 0 && scope["routing"].is_object(), "{scope}");
    let (status, body) = get(&addr, "/v1/gates/project-0/ann-00000");
    assert_eq!(status, 200, "{body}");
    let gate: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(["allow", "warmup", "probation", "block"].contains(&gate["state"].as_str().unwrap()), "{gate}");
    assert_eq!(get(&addr, "/v1/gates/project-0/nobody").0, 404);
    assert_eq!(get(&addr, "/openapi.json").0, 200);

    // It stops by itself after --duration and says what it did.
    let status = demo.0.wait().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("stopped after") && rest.contains("4 scopes"), "{rest}");
    assert!(TcpStream::connect(&addr).is_err(), "the endpoint stops with the demo");
}

/// Runs `labelqc demo --lines` with `args` on a free port of 127.0.0.1 until it stops by itself;
/// its standard output and standard error.
fn run_demo(args: &[&str], limit: Duration) -> (String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["demo", "--http", "127.0.0.1:0", "--lines"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start labelqc demo");
    let mut demo = Running(child);
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text).unwrap();
            text
        })
    };
    let stdout = read(Box::new(demo.0.stdout.take().unwrap()));
    let stderr = read(Box::new(demo.0.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop by itself");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "{stderr}");
    (stdout, stderr)
}

/// The demo's default workforce is healthy but for its planted problems: within half a minute the
/// two spammers, the biased annotator and the one who turns careless (here after 10 s) are the
/// annotators alerted, no careful annotator is alerted or blocked, no critical alert fires (alpha
/// stays above 0.667 everywhere), and the last view fits 80x24 and says where the metrics are.
#[test]
fn demo_alerts_the_planted_problems_and_only_them() {
    let (stdout, stderr) =
        run_demo(&["--duration", "35", "--careless-after", "10"], Duration::from_secs(120));
    assert!(stderr.contains("missed: none"), "{stderr}");
    assert!(stderr.contains("healthy annotators alerted or blocked: none"), "{stderr}");
    assert!(stderr.contains("(0 critical)"), "{stderr}");

    // The last view follows the status lines after an empty line.
    let at = stdout.rfind("\n\nlabelqc demo ").expect("the last view");
    let screen: Vec<&str> = stdout[at + 2..].trim_end().lines().collect();
    let text = screen.join("\n");
    assert!(screen.len() <= 24, "{} lines:\n{text}", screen.len());
    for line in &screen {
        assert!(line.chars().count() <= 80, "{} characters: {line}", line.chars().count());
    }
    assert!(screen[0].starts_with("labelqc demo  0:3"), "{text}");
    assert!(screen[1].starts_with("metrics: http://127.0.0.1:") && screen[1].contains("/metrics"), "{text}");
    // Four scopes, each with alpha comfortably above the 0.667 floor.
    let header = screen.iter().position(|l| l.starts_with("scope ")).expect("the scope table");
    let rows: Vec<&str> =
        screen[header + 1..].iter().take_while(|l| l.starts_with("project-")).copied().collect();
    assert_eq!(rows.len(), 4, "{text}");
    for row in rows {
        let alpha: f64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
        assert!(alpha > 0.75, "{row}");
    }
    // The planted annotators, and the annotators the alerts name: the same four.
    let planted: BTreeSet<&str> = screen
        .iter()
        .find_map(|l| l.strip_prefix("planted: "))
        .expect("the planted line")
        .split([' ', ';'])
        .filter(|w| w.starts_with("ann-"))
        .collect();
    assert_eq!(planted.len(), 4, "{text}");
    let alerted: BTreeSet<&str> = screen
        .iter()
        .filter(|l| l.starts_with("WARNING ") || l.starts_with("CRITICAL"))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(alerted, planted, "{text}");
    assert!(!text.contains("CRITICAL") && !text.contains("more:"), "{text}");
    // Each block says in plain words what is wrong.
    assert!(text.contains("agrees with the others on the same items"), "{text}");
    assert!(!text.contains("p=") && !text.contains("z "), "{text}");
}
