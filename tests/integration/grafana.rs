//! grafana/: the dashboards, Prometheus rules and scrape configuration against labelqc itself.
//!
//! - Every dashboard panel has a unit, a description, thresholds and the datasource variable, and
//!   names only metrics that labelqc exports and recording rules that grafana/prometheus defines.
//! - End to end: a real Prometheus (Debian's `prometheus`, started here on 127.0.0.1 with the
//!   shipped scrape configuration and rules) scrapes a running `labelqc demo`, and every panel and
//!   variable query of every dashboard returns data; every rule evaluates without error, no
//!   pipeline alert goes off on the healthy demo, and `promtool check metrics` accepts the
//!   exposition.
//! - Cardinality and the scrape's `sample_limit`: see `sizing`.
//!
//! The tests that need `prometheus` and `promtool` skip with a message when they are not on PATH,
//! and fail instead when `CI` is set (.ci/run installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::demo::{start_demo, Running};
use crate::http::get;

/// The tests that run a long demo (here and in `sizing`) take one at a time: each keeps a core
/// busy.
pub static ONE_DEMO_AT_A_TIME: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The dashboards, by file name.
fn dashboards() -> BTreeMap<String, Value> {
    let dir = repo().join("grafana/dashboards");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("grafana/dashboards") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let dashboard = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.insert(name, dashboard);
        }
    }
    assert_eq!(out.len(), 3, "overview, annotator drill-down and pipeline health: {:?}", out.keys());
    out
}

/// Every panel of a dashboard, those inside collapsed rows included, rows themselves not.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// A PromQL query of a dashboard, where it is, and whether it must return data.
struct Query {
    place: String,
    expr: String,
    needs_data: bool,
}

fn queries(dashboards: &BTreeMap<String, Value>) -> Vec<Query> {
    let mut out = Vec::new();
    for (name, d) in dashboards {
        for panel in panels(d) {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    place: format!("{name} › {} › {}", panel["title"].as_str().unwrap(), t["refId"]),
                    expr: t["expr"].as_str().expect("a PromQL target").to_string(),
                    needs_data: true,
                });
            }
        }
        // A variable's label_values(SELECTOR, label) lists the label values of SELECTOR's series.
        for v in d["templating"]["list"].as_array().unwrap().iter().filter(|v| v["type"] == "query") {
            let q = v["query"].as_str().expect("a label_values query");
            let inner = q.strip_prefix("label_values(").and_then(|r| r.rsplit_once(',')).map(|(s, _)| s);
            out.push(Query {
                place: format!("{name} › variable {}", v["name"]),
                expr: inner.unwrap_or_else(|| panic!("not label_values(SELECTOR, label): {q}")).to_string(),
                needs_data: true,
            });
        }
        // Annotations show events: they must be valid queries, and may well be empty.
        for a in d["annotations"]["list"].as_array().unwrap().iter().filter(|a| a.get("expr").is_some()) {
            out.push(Query {
                place: format!("{name} › annotation {}", a["name"]),
                expr: a["expr"].as_str().unwrap().to_string(),
                needs_data: false,
            });
        }
    }
    out
}

/// The query Grafana sends with every variable at "All" (window at its default `all`).
fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "30s"),
        ("$__interval", "5s"),
        ("$__range", "5m"),
        ("$project", ".*"),
        ("$task", ".*"),
        ("$annotator", ".*"),
        ("$instance", ".*"),
        ("$window", "all"),
    ] {
        out = out.replace(var, value);
    }
    assert!(!out.contains('$'), "a variable the test does not know in {expr}");
    out
}

/// The identifiers of a PromQL expression (metric names, functions, labels, label values).
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).filter(|t| !t.is_empty())
}

/// Metric names labelqc exports: those declared in src/telemetry.rs, the summary's series and the
/// process collector's.
fn exported_metrics() -> BTreeSet<String> {
    let telemetry = read(&repo().join("src/telemetry.rs")) + &read(&repo().join("src/telemetry/systems.rs"));
    let mut names: BTreeSet<String> = telemetry
        .split('"')
        .filter(|s| s.starts_with("labelqc_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect();
    for suffix in ["_sum", "_count"] {
        names.insert(format!("labelqc_processing_latency_seconds{suffix}"));
    }
    for process in [
        "cpu_seconds_total",
        "open_fds",
        "max_fds",
        "virtual_memory_bytes",
        "resident_memory_bytes",
        "start_time_seconds",
        "threads",
    ] {
        names.insert(format!("labelqc_process_{process}"));
    }
    names
}

fn recording_rules() -> BTreeSet<String> {
    read(&repo().join("grafana/prometheus/rules/labelqc-recording.yml"))
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|r| r.trim().to_string())
        .collect()
}

#[test]
fn dashboards_have_units_descriptions_thresholds_and_name_only_real_series() {
    let exported = exported_metrics();
    let recorded = recording_rules();
    assert!(exported.contains("labelqc_watchlist_score") && recorded.len() >= 5, "{exported:?} {recorded:?}");
    let mut problems = Vec::new();
    let dashboards = dashboards();
    let uids: BTreeSet<&str> = dashboards.values().map(|d| d["uid"].as_str().unwrap()).collect();
    for (name, d) in &dashboards {
        assert!(d["schemaVersion"].as_u64().unwrap() >= 39, "{name}: current schema");
        let variables: Vec<&str> =
            d["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(variables[0], "datasource", "{name}: the datasource variable comes first");
        if name.contains("overview") {
            for v in ["project", "task", "window"] {
                assert!(variables.contains(&v), "{name}: no {v} variable");
            }
        }
        // Rows and panels on the 24-column grid, without overlaps; ids unique.
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        let all = d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()));
        for p in all {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{name}: panel id {} twice", p["id"]);
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_u64().unwrap(),
                g["y"].as_u64().unwrap(),
                g["w"].as_u64().unwrap(),
                g["h"].as_u64().unwrap(),
            );
            assert!(x + w <= 24 && w > 0 && h > 0, "{name}: {} off the grid", p["title"]);
            for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
                assert!(cells.insert(cell), "{name}: {} overlaps another panel at {cell:?}", p["title"]);
            }
        }
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            let at = format!("{name} › {title}");
            let defaults = &p["fieldConfig"]["defaults"];
            if p["description"].as_str().is_none_or(|s| s.len() < 20) {
                problems.push(format!("{at}: no description"));
            }
            if defaults["unit"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: no unit"));
            }
            if defaults["thresholds"]["steps"].as_array().is_none_or(Vec::is_empty) {
                problems.push(format!("{at}: no thresholds"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{at}: not on the datasource variable"));
            }
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{at}: no query"));
            }
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                if t["datasource"]["uid"] != "${datasource}" {
                    problems.push(format!("{at} {}: query not on the datasource variable", t["refId"]));
                }
                for id in identifiers(expr) {
                    if id.contains(':') && !recorded.contains(id) {
                        problems.push(format!("{at}: {id} is no recording rule of grafana/prometheus"));
                    } else if id.starts_with("labelqc_") && !exported.contains(id) {
                        problems.push(format!("{at}: labelqc exports no {id}"));
                    }
                }
                // Cardinality discipline: only the bounded watchlist carries annotator ids.
                if identifiers(expr).any(|id| id == "annotator") && !expr.contains("labelqc_watchlist_") {
                    problems.push(format!("{at}: annotator outside the watchlist"));
                }
            }
            // Links to other dashboards point at dashboards that exist.
            let text = p.to_string();
            for link in text.split("/d/").skip(1) {
                let uid = link.split(['/', '?', '"']).next().unwrap_or_default();
                if !uids.contains(uid) {
                    problems.push(format!("{at}: link to unknown dashboard {uid}"));
                }
            }
        }
    }
    // The rules name only exported metrics too (a misspelt metric never fires).
    for file in ["labelqc-recording.yml", "labelqc-alerts.yml"] {
        let rules = read(&repo().join("grafana/prometheus/rules").join(file));
        for id in identifiers(&rules) {
            if id.starts_with("labelqc_") && !exported.contains(id) {
                problems.push(format!("{file}: labelqc exports no {id}"));
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// Running labelqc demo and Prometheus

/// `prometheus` and `promtool`, or None (the caller skips) when they are not installed and this
/// is not CI.
fn prometheus_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    };
    match (find("prometheus"), find("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("prometheus and promtool are needed (apt-get install prometheus)")
        }
        _ => {
            crate::skip::skipped(
                "a Grafana/Prometheus test: prometheus and promtool are not on PATH (apt-get install prometheus)",
            );
            None
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus on 127.0.0.1 with a temporary data directory; stopped when dropped.
struct Prometheus {
    _process: Running,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with grafana/prometheus/prometheus.yml scraping `target` every second and
    /// evaluating the shipped rules every second; waits until it is ready.
    fn start(binary: &Path, target: &str) -> Prometheus {
        let shipped = repo().join("grafana/prometheus");
        let mut config = read(&shipped.join("prometheus.yml"));
        for (from, to) in [
            ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
            ("evaluation_interval: 15s", "evaluation_interval: 1s".to_string()),
            ("scrape_timeout: 10s", "scrape_timeout: 1s".to_string()),
            ("\"127.0.0.1:9898\"", format!("\"{target}\"")),
            ("- rules/", format!("- {}/rules/", shipped.display())),
        ] {
            assert!(config.contains(from), "grafana/prometheus/prometheus.yml has no {from}");
            config = config.replace(from, &to);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let mut last_log = String::new();
        for _attempt in 0..3 {
            // A free port: taken from the OS, released, and given to Prometheus.
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let addr = format!("127.0.0.1:{port}");
            let log = dir.path().join("prometheus.log");
            let child = Command::new(binary)
                .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--storage.tsdb.retention.time=1h")
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut process = Running(child);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Some((200, _)) = get(&addr, "/-/ready") {
                    return Prometheus { _process: process, addr, _dir: dir };
                }
                if process.0.try_wait().unwrap().is_some() {
                    break; // the port was taken in between: try another
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("Prometheus did not start:\n{last_log}");
    }

    /// An instant query: the result, or Prometheus's error.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let (status, body) = get(&self.addr, &format!("/api/v1/query?query={}", url_encode(expr)))
            .ok_or_else(|| "no answer from Prometheus".to_string())?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(match &answer["data"]["result"] {
            Value::Array(series) => series.clone(),
            scalar => vec![scalar.clone()],
        })
    }
}

/// Whether an instant query's result holds at least one finite value.
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|r| {
        let value = if r.is_array() { &r[1] } else { &r["value"][1] };
        value.as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite)
    })
}

#[test]
fn prometheus_scraping_the_demo_answers_every_dashboard_query() {
    let Some((prometheus, promtool)) = prometheus_tools() else { return };
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_demo, addr, _stderr) = start_demo(&["--duration", "600", "--rate", "1000", "--comparisons", "200"]);
    let server = Prometheus::start(&prometheus, &addr);
    let queries = queries(&dashboards());
    assert!(queries.len() > 40, "{} queries", queries.len());

    // Until every query answers: the drift gauges need the simulated workforce to have labelled
    // for a while (the watchlist holds annotators at watch or worse), rates need two scrapes.
    let deadline = Instant::now() + Duration::from_secs(150);
    let missing = loop {
        let mut missing = Vec::new();
        for q in &queries {
            match server.query(&substitute(&q.expr)) {
                Err(error) => missing.push(format!("{}: {} -> error {error}", q.place, q.expr)),
                Ok(result) if q.needs_data && !has_data(&result) => {
                    missing.push(format!("{}: {} -> no data", q.place, q.expr))
                }
                Ok(_) => {}
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        missing.is_empty(),
        "{} of {} dashboard queries returned nothing or failed:\n{}",
        missing.len(),
        queries.len(),
        missing.join("\n")
    );

    // Every rule of grafana/prometheus/rules evaluates without error ...
    let (_, body) = get(&server.addr, "/api/v1/rules").expect("rules");
    let rules: Value = serde_json::from_str(&body).unwrap();
    let mut evaluated = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(rule["health"], "err", "{} in {}: {}", rule["name"], group["name"], rule["lastError"]);
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, 14, "every rule loaded: {body}");
    // ... and no pipeline alert goes off on the healthy demo.
    let pipeline_alerts = server.query(r#"ALERTS{category="pipeline"}"#).unwrap();
    assert!(pipeline_alerts.is_empty(), "{pipeline_alerts:?}");

    // The exposition, every metric family present, passes promtool's lint.
    let (status, metrics) = get(&addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("labelqc_watchlist_score{"), "{metrics}");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
