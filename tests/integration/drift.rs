//! Drift, gating and alert scenarios with `labelqc gen`'s simulated workforce, run through the
//! real dataflows: spammers are blocked quickly, a doubled error rate is flagged within days,
//! stable annotators are rarely flagged, the gate does not flap, and correcting wrong gold
//! answers lifts the blocks they caused.

use std::collections::BTreeMap;

use labelqc::config::EngineSettings;
use labelqc::gen::{GenSpec, Traffic};
use labelqc::report::{self, ReportRequest};
use labelqc_dataflows::drift::{DriftConfig, DriftSettings, GateState};
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::gates::{GateLog, GateRecord};
use labelqc_dataflows::records::{Entity, Records};
use labelqc_dataflows::source::{Catalog, Source, Stream};
use serde_json::Value;

const DAY_MS: i64 = 86_400_000;

/// A workforce of 10 annotators, 3 labels per item, 600 labels a day, of which about 20 a day
/// per annotator are gold answers.
fn daily_spec(seed: u64, days: i64) -> GenSpec {
    GenSpec {
        events: (600 * days) as u64,
        annotators: 10,
        labels_per_item: 3,
        gold_rate: 0.35,
        relabel_rate: 0.0,
        delete_rate: 0.0,
        spammer_share: 0.0,
        biased_share: 0.0,
        careful_accuracy: Some(0.9),
        mean_gap_ms: DAY_MS as f64 / 600.0,
        seed,
        ..GenSpec::default()
    }
}

/// Generates `spec`'s traffic and returns the label and gold lines and the roster.
fn traffic(spec: &GenSpec) -> (Vec<String>, Vec<String>, Vec<(String, &'static str)>) {
    let mut t = Traffic::new(spec).unwrap();
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    for _ in 0..spec.events {
        t.next_event(None, &mut labels, &mut gold);
    }
    t.correct_gold(&mut gold);
    let lines = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap().lines().map(String::from).collect();
    (lines(labels), lines(gold), t.roster())
}

/// `labelqc report` over the lines, as JSON.
fn report(labels: &[String], gold: &[String], drift: DriftConfig) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (l, g) = (dir.path().join("labels.jsonl"), dir.path().join("gold.jsonl"));
    std::fs::write(&l, labels.join("\n")).unwrap();
    std::fs::write(&g, gold.join("\n")).unwrap();
    let request = ReportRequest {
        labels: l,
        gold: Some(g),
        with_items: false,
        strict: true,
        engine: EngineSettings { workers: 1, epoch_events: 20_000, max_epochs_in_flight: 2 },
        drift: DriftSettings { defaults: drift, projects: BTreeMap::new() },
        windows: Vec::new(),
        progress: false,
        preferences: Default::default(),
        truth: Default::default(),
        routing: Default::default(),
    };
    serde_json::to_value(report::run(&request, |l| panic!("bad line {l}")).unwrap().report).unwrap()
}

/// The annotators of the report's only scope, by id.
fn annotators(report: &Value) -> BTreeMap<String, Value> {
    report["scopes"][0]["annotators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["annotator_id"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

/// The annotator drift alerts of the report's only scope: `(annotator, signal, start day)`.
fn drift_alerts(report: &Value) -> Vec<(String, String, i64)> {
    report["scopes"][0]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "annotator_drift")
        .map(|a| {
            let started =
                chrono::NaiveDate::parse_from_str(a["started"].as_str().unwrap(), "%Y-%m-%d").unwrap();
            let day = started.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis() / DAY_MS;
            (a["annotator_id"].as_str().unwrap().to_string(), a["signal"].as_str().unwrap().to_string(), day)
        })
        .collect()
}

fn start_day() -> i64 {
    GenSpec::default().start_ms / DAY_MS
}

#[test]
fn spammers_are_blocked_within_ten_gold_answers_past_the_minimum() {
    let config = DriftConfig::default();
    let mut spammers = 0;
    for seed in 1..=3 {
        let spec = GenSpec {
            events: 20_000,
            annotators: 20,
            gold_rate: 0.3,
            spammer_share: 0.15,
            seed,
            ..GenSpec::default()
        };
        let (labels, gold, roster) = traffic(&spec);
        let report = report(&labels, &gold, config.clone());
        let annotators = annotators(&report);
        for (name, _) in roster.iter().filter(|(_, kind)| *kind == "spammer") {
            spammers += 1;
            let gate = &annotators[name]["gate"];
            let block = gate["history"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["to"] == "block")
                .unwrap_or_else(|| panic!("spammer {name} (seed {seed}) was never blocked: {gate}"));
            let n = block["evidence"]["n"].as_i64().unwrap();
            assert!(
                n <= config.gate_min_answers + 10,
                "spammer {name} (seed {seed}) blocked only after {n} gold answers: {block}"
            );
            assert!(block["reason"].as_str().unwrap().contains("even at best under the required"), "{block}");
        }
    }
    assert!(spammers >= 4, "the scenario needs spammers; got {spammers}");
}

#[test]
fn a_doubled_error_rate_is_flagged_within_a_median_of_seven_days() {
    let change_day = 30;
    let mut delays = Vec::new();
    for seed in 1..=8 {
        let spec = GenSpec {
            careless_share: 0.3,
            careless_from_ms: GenSpec::default().start_ms + change_day * DAY_MS,
            careless_factor: 2.0,
            ..daily_spec(seed, 50)
        };
        let (labels, gold, roster) = traffic(&spec);
        let report = report(&labels, &gold, DriftConfig::default());
        let alerts = drift_alerts(&report);
        for (name, _) in roster.iter().filter(|(_, kind)| *kind == "careless") {
            let first = alerts
                .iter()
                .filter(|(a, _, day)| a == name && *day >= start_day() + change_day)
                .map(|(_, _, day)| day - start_day() - change_day)
                .min();
            delays.push(first.unwrap_or(i64::MAX));
        }
    }
    assert!(delays.len() >= 10, "too few careless annotators: {delays:?}");
    delays.sort_unstable();
    let median = delays[delays.len() / 2];
    assert!(median <= 7, "median detection delay {median} days: {delays:?}");
}

#[test]
fn stable_annotators_raise_at_most_half_a_false_alarm_a_year() {
    let days = 365;
    let mut alarms = Vec::new();
    let mut annotator_years = 0.0;
    for seed in 1..=2 {
        let spec = daily_spec(seed, days);
        let (labels, gold, _) = traffic(&spec);
        let report = report(&labels, &gold, DriftConfig::default());
        annotator_years += spec.annotators as f64 * days as f64 / 365.0;
        alarms.extend(drift_alerts(&report));
        // Nobody stable is blocked either.
        for (name, a) in annotators(&report) {
            let blocks =
                a["gate"]["history"].as_array().unwrap().iter().filter(|d| d["to"] == "block").count();
            assert_eq!(blocks, 0, "stable annotator {name} was blocked: {}", a["gate"]);
        }
    }
    let rate = alarms.len() as f64 / annotator_years;
    assert!(rate <= 0.5, "{} false alarms in {annotator_years} annotator-years: {alarms:?}", alarms.len());
}

#[test]
fn a_biased_annotator_is_flagged_for_its_label_mix() {
    let mut flagged = 0;
    for seed in 1..=4 {
        let spec = GenSpec { biased_share: 0.15, labels_per_item: 5, ..daily_spec(seed, 20) };
        let (labels, gold, roster) = traffic(&spec);
        let report = report(&labels, &gold, DriftConfig::default());
        let annotators = annotators(&report);
        for (name, kind) in &roster {
            let mix = &annotators[name]["drift"]["label_mix"];
            if *kind == "biased" {
                // Pulled toward one class 30-60% of the time: flagged, naming the over-used label.
                assert_eq!(mix["state"], "alarm", "{name} (seed {seed}): {mix}");
                assert!(mix["explanation"].as_str().unwrap().contains("the others to"), "{mix}");
                flagged += 1;
            } else {
                assert_ne!(mix["state"], "alarm", "careful {name} (seed {seed}): {mix}");
            }
        }
    }
    assert!(flagged >= 2, "the scenario needs biased annotators; got {flagged}");
}

#[test]
fn an_annotator_near_the_threshold_does_not_flap() {
    let config = DriftConfig::default();
    let cooldown = i64::from(config.gate_block_days) * DAY_MS;
    let mut decisions = 0;
    for seed in 1..=3 {
        let spec = GenSpec { careful_accuracy: Some(config.gate_threshold), ..daily_spec(seed, 60) };
        let (labels, gold, _) = traffic(&spec);
        let report = report(&labels, &gold, config.clone());
        for (name, a) in annotators(&report) {
            let history = a["gate"]["history"].as_array().unwrap();
            decisions += history.len();
            let at = |d: &Value| {
                chrono::DateTime::parse_from_rfc3339(d["at"].as_str().unwrap()).unwrap().timestamp_millis()
            };
            // Every block -> probation -> block cycle spans at least the cool-down.
            let mut cycles_within_cooldown = 0;
            for w in history.windows(3) {
                let cycle = w[0]["to"] == "block" && w[1]["to"] == "probation" && w[2]["to"] == "block";
                if cycle && at(&w[2]) - at(&w[0]) < cooldown {
                    cycles_within_cooldown += 1;
                }
            }
            assert!(cycles_within_cooldown <= 1, "{name} (seed {seed}) flapped: {history:#?}");
            // A block is never lifted sooner than the cool-down.
            for w in history.windows(2) {
                if w[0]["to"] == "block" {
                    assert!(at(&w[1]) - at(&w[0]) >= cooldown, "{name} (seed {seed}): {w:#?}");
                }
            }
        }
    }
    assert!(decisions > 0, "annotators at the threshold should be judged");
}

/// The live engine (two workers, default settings) and what it published: every record, and the
/// gate records.
struct Live {
    engine: Engine,
    source: Source,
    records: Records,
    gates: GateLog,
}

impl Live {
    fn start() -> Live {
        let engine =
            Engine::start(&EngineConfig { workers: 2, max_epochs_in_flight: 2, ..EngineConfig::default() })
                .unwrap();
        let mut source = Source::default();
        source.catalog = Catalog::recording();
        Live { engine, source, records: Records::default(), gates: GateLog::default() }
    }

    /// Feeds lines in epochs of 5,000; returns the gate records published.
    fn feed(&mut self, stream: Stream, lines: &[String]) -> Vec<GateRecord> {
        let mut records = Vec::new();
        for chunk in lines.chunks(5_000) {
            let mut updates = Vec::new();
            for line in chunk {
                self.source.apply_record(stream, line, &mut updates).unwrap();
            }
            self.engine.submit(updates, self.source.catalog.take_new()).unwrap();
            self.engine.sync().unwrap();
            for output in self.engine.take_completed().1 {
                records.extend(self.gates.records(&output.records));
                self.records.apply(&output.records);
            }
        }
        records
    }

    /// A live engine fed `spec`'s gold answers, then its labels, with the lines.
    fn fed(spec: &GenSpec) -> (Vec<String>, Vec<String>, Live) {
        let (labels, gold, _) = traffic(spec);
        let mut live = Live::start();
        live.feed(Stream::Gold, &gold);
        live.feed(Stream::Labels, &labels);
        (labels, gold, live)
    }

    /// The annotators' records in the default scope, by name.
    fn annotators(&self) -> BTreeMap<String, Value> {
        self.objects(|e| match e {
            Entity::Annotator(name) => Some(name),
            _ => None,
        })
    }

    /// The objects of one kind in the default scope (or project, for gates), by name.
    fn objects(&self, kind: fn(&Entity) -> Option<&str>) -> BTreeMap<String, Value> {
        self.records
            .iter()
            .filter(|(k, _)| &*k.project == "default")
            .filter_map(|(k, v)| Some((kind(&k.entity)?.to_string(), serde_json::from_slice(v).unwrap())))
            .collect()
    }
}

#[test]
fn correcting_wrong_gold_answers_lifts_the_blocks_they_caused() {
    let spec = GenSpec {
        events: 20_000,
        annotators: 10,
        gold_rate: 0.3,
        spammer_share: 0.0,
        biased_share: 0.0,
        careful_accuracy: Some(0.95),
        wrong_gold_rate: 0.6,
        seed: 5,
        ..GenSpec::default()
    };
    let (labels, gold, roster) = traffic(&spec);
    let gold_items = spec_gold_items(&gold);
    let (wrong, corrections) = gold.split_at(gold_items);
    let mut live = Live::start();
    let mut records = live.feed(Stream::Gold, wrong);
    records.extend(live.feed(Stream::Labels, &labels));
    let blocked: Vec<String> = records
        .iter()
        .filter(|r| r.state == GateState::Block)
        .map(|r| r.annotator_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        blocked.len() >= roster.len() / 2,
        "wrong gold answers should block careful annotators: {blocked:?}"
    );

    let revisions = live.feed(Stream::Gold, corrections);
    for name in &blocked {
        let last = revisions
            .iter()
            .rfind(|r| &r.annotator_id == name)
            .unwrap_or_else(|| panic!("no gate record for {name} after the corrections"));
        assert_ne!(last.state, GateState::Block, "{name} stays blocked: {last:?}");
        assert_eq!(last.from, Some(GateState::Block), "{last:?}");
        assert!(last.revised, "{last:?}");
        assert!(last.reason.starts_with("re-evaluated after gold answers"), "{}", last.reason);
    }
    // The live gates now equal the report over the corrected gold.
    let gates = live.objects(|e| match e {
        Entity::Gate(name) => Some(name),
        _ => None,
    });
    live.engine.finish().unwrap();
    let expected = report(&labels, &gold, DriftConfig::default());
    for (name, a) in annotators(&expected) {
        assert_eq!(gates[&name], a["gate"], "{name}");
    }
}

/// The number of gold lines before the corrections (each gold item appears once before them).
fn spec_gold_items(gold: &[String]) -> usize {
    let mut seen = std::collections::HashSet::new();
    gold.iter()
        .position(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            !seen.insert(v["item_id"].as_str().unwrap().to_string())
        })
        .unwrap_or(gold.len())
}

#[test]
fn live_drift_with_late_events_equals_a_full_evaluation() {
    // Careless annotators and a biased one, fed newest chunk first so that most events are late.
    let spec = GenSpec { careless_share: 0.3, biased_share: 0.1, ..daily_spec(11, 40) };
    let (labels, gold, _) = traffic(&spec);
    let mut live = Live::start();
    live.feed(Stream::Gold, &gold);
    let chunks: Vec<&[String]> = labels.chunks(3_000).rev().collect();
    for chunk in chunks {
        live.feed(Stream::Labels, chunk);
    }
    // Then an early gold answer is withdrawn: its three labellers change directly, everyone else in
    // the scope through the scope's usual error rate.
    let deletes: Vec<String> = gold[..1]
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            format!(r#"{{"item_id":{},"op":"delete"}}"#, v["item_id"])
        })
        .collect();
    live.feed(Stream::Gold, &deletes);
    let annotators: Vec<Value> = live
        .objects(|e| match e {
            Entity::Annotator(name) => Some(name),
            _ => None,
        })
        .into_values()
        .collect();
    let alerts: Vec<Value> = live
        .objects(|e| match e {
            Entity::Alert(id) => Some(id),
            _ => None,
        })
        .into_values()
        .collect();
    live.engine.finish().unwrap();
    // The report over the same final input.
    let full = report(&labels, &[gold, deletes].concat(), DriftConfig::default());
    assert_eq!(Value::from(annotators), full["scopes"][0]["annotators"]);
    assert!(!alerts.is_empty(), "the scenario should raise alerts");
    assert_eq!(Value::from(alerts), full["scopes"][0]["alerts"]);
}

/// Asserts that from `before` to `after` some annotator's record changed, and only those of the
/// annotators who labelled `item` in `labels`.
fn changed_only_its_annotators(
    before: &BTreeMap<String, Value>,
    after: &BTreeMap<String, Value>,
    labels: &[String],
    item: &str,
) {
    let changed: Vec<&String> = after.keys().filter(|name| before.get(*name) != after.get(*name)).collect();
    let of_item: Vec<String> = labels
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|v| v["item_id"] == item)
        .map(|v| v["annotator_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!changed.is_empty(), "a change of {item} changed no annotator");
    assert!(changed.iter().all(|name| of_item.contains(name)), "{changed:?} beyond {of_item:?}");
}

/// Gold answers withdrawn late, in the middle and early in 40 days of history, each in an epoch of
/// its own: an annotator is re-evaluated only when one of its readings reads a changed day of the
/// scope, and the live records still equal a full evaluation. Withdrawing the newest gold answer
/// changes only the records of the annotators who answered it.
#[test]
fn gold_withdrawn_anywhere_in_the_history_leaves_live_drift_equal_to_a_full_evaluation() {
    let (labels, gold, mut live) = Live::fed(&GenSpec { careless_share: 0.3, ..daily_spec(12, 40) });
    let withdraw = |line: &String| {
        let v: Value = serde_json::from_str(line).unwrap();
        (
            v["item_id"].as_str().unwrap().to_string(),
            format!(r#"{{"item_id":{},"op":"delete"}}"#, v["item_id"]),
        )
    };
    let mut deletes = Vec::new();
    for (at, newest) in [(gold.len() - 1, true), (gold.len() / 2, false), (0, false)] {
        let (item, delete) = withdraw(&gold[at]);
        let before = live.annotators();
        live.feed(Stream::Gold, std::slice::from_ref(&delete));
        deletes.push(delete);
        if newest {
            changed_only_its_annotators(&before, &live.annotators(), &labels, &item);
        }
    }
    let annotators: Vec<Value> = live.annotators().into_values().collect();
    live.engine.finish().unwrap();
    let full = report(&labels, &[gold, deletes].concat(), DriftConfig::default());
    assert_eq!(Value::from(annotators), full["scopes"][0]["annotators"]);
}

/// Label times changed in the history, each change in an epoch of its own. One label moved to
/// another day among thousands moves no day's median label time of the scope (what too-fast
/// readings compare with), so only the annotators of its item change. A burst of fast labels on
/// one day from a new annotator moves the medians of the days after it, and the too-fast readings
/// of annotators who labelled nothing in it move. The live records equal a full evaluation.
#[test]
fn label_times_changed_in_the_history_leave_live_drift_equal_to_a_full_evaluation() {
    let (labels, gold, mut live) = Live::fed(&daily_spec(13, 40));
    // One label of day 5 labelled again ten days later, and slower.
    let mut moved: Value = serde_json::from_str(&labels[3_000]).unwrap();
    let ts = chrono::DateTime::parse_from_rfc3339(moved["ts"].as_str().unwrap()).unwrap().timestamp_millis();
    moved["ts"] = Value::from(ts + 10 * DAY_MS);
    moved["duration_ms"] = Value::from(moved["duration_ms"].as_i64().unwrap() * 3);
    let item = moved["item_id"].as_str().unwrap().to_string();
    let moved = moved.to_string();
    let before = live.annotators();
    live.feed(Stream::Labels, std::slice::from_ref(&moved));
    changed_only_its_annotators(&before, &live.annotators(), &labels, &item);
    // 30,000 labels of 50 ms on day 20, more than all the others: the scope's median label time
    // of the days after it falls to 50 ms.
    let day20 = (start_day() + 20) * DAY_MS;
    let burst: Vec<String> = (0..30_000)
        .map(|i| {
            format!(
                r#"{{"item_id":"burst-{i}","annotator_id":"fast-bot","label":"positive","ts":{},"duration_ms":50}}"#,
                day20 + i
            )
        })
        .collect();
    let before = live.annotators();
    live.feed(Stream::Labels, &burst);
    let after = live.annotators();
    let moved_too_fast = before
        .iter()
        .filter(|(_, was)| {
            let is = &after[was["annotator_id"].as_str().unwrap()];
            was["drift"]["too_fast"] != is["drift"]["too_fast"]
        })
        .count();
    assert!(moved_too_fast >= 5, "the burst moved the too-fast reading of {moved_too_fast} annotators");
    let annotators: Vec<Value> = after.into_values().collect();
    live.engine.finish().unwrap();
    let full = report(&[labels, vec![moved], burst].concat(), &gold, DriftConfig::default());
    assert_eq!(Value::from(annotators), full["scopes"][0]["annotators"]);
}

/// Scope alerts carry when their condition began and ended, in event-time days, read as of the
/// end of each day: two annotators agree on every item of 2026-01-01 (alpha 1, gold all right),
/// disagree on every item of the 2nd (alpha and gold accuracy fall under their floor and target)
/// and agree again, on many more items, on the 3rd. Through the 2nd both alerts fire since the
/// 2nd; through the 3rd both are resolved on the 3rd.
#[test]
fn scope_alerts_start_and_resolve_on_event_time_days() {
    let day0 = 1_767_225_600_000_i64; // 2026-01-01T00:00:00Z
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    let mut item = 0;
    let mut add = |labels: &mut Vec<String>, gold: &mut Vec<String>, day: i64, n: usize, agree: bool| {
        for i in 0..n {
            item += 1;
            let ts = day0 + day * DAY_MS + i as i64;
            let (x, y) = if i % 2 == 0 { ("x", "y") } else { ("y", "x") };
            let b = if agree { x } else { y };
            labels.push(format!(r#"{{"item_id":"i{item}","annotator_id":"A","label":"{x}","ts":{ts}}}"#));
            labels.push(format!(r#"{{"item_id":"i{item}","annotator_id":"B","label":"{b}","ts":{ts}}}"#));
            gold.push(format!(r#"{{"item_id":"i{item}","label":"{x}"}}"#));
        }
    };
    add(&mut labels, &mut gold, 0, 60, true);
    add(&mut labels, &mut gold, 1, 200, false);
    let scope_alerts = |labels: &[String], gold: &[String]| -> BTreeMap<String, Value> {
        let report = report(labels, gold, DriftConfig::default());
        report["scopes"][0]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["annotator_id"].is_null())
            .map(|a| (a["kind"].as_str().unwrap().to_string(), a.clone()))
            .collect()
    };
    let firing = scope_alerts(&labels, &gold);
    for kind in ["alpha_below_floor", "gold_below_target"] {
        let alert = &firing[kind];
        assert_eq!(alert["status"], "firing", "{alert}");
        assert_eq!(alert["started"], "2026-01-02", "{alert}");
        assert!(alert.get("resolved").is_none(), "{alert}");
    }
    add(&mut labels, &mut gold, 2, 1000, true);
    let resolved = scope_alerts(&labels, &gold);
    for kind in ["alpha_below_floor", "gold_below_target"] {
        let alert = &resolved[kind];
        assert_eq!(alert["status"], "resolved", "{alert}");
        assert_eq!(
            (&alert["started"], &alert["resolved"]),
            (&Value::from("2026-01-02"), &Value::from("2026-01-03"))
        );
        assert!(alert["summary"].as_str().unwrap().contains("back at or above"), "{alert}");
    }
    // Agreeing from the start: both alerts are listed (the scope has the evidence to judge),
    // resolved, never having started.
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    add(&mut labels, &mut gold, 0, 100, true);
    let never = scope_alerts(&labels, &gold);
    for kind in ["alpha_below_floor", "gold_below_target"] {
        let alert = &never[kind];
        assert_eq!(alert["status"], "resolved", "{alert}");
        assert!(alert.get("started").is_none() && alert.get("resolved").is_none(), "{alert}");
        assert!(alert["summary"].as_str().unwrap().contains("never under"), "{alert}");
    }
}
