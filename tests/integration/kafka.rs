//! `labelqc run` against librdkafka's mock cluster (an in-process Kafka broker listening on
//! 127.0.0.1): the compacted view of every output topic equals `labelqc report` over the same
//! input, malformed messages land in the dead-letter topic while processing goes on, a service
//! killed with SIGKILL and restarted converges to the same outputs, and a backlog read with a
//! small pipeline pauses the input instead of holding more than the configured epochs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labelqc::gen::{generate, GenSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::compare::mismatches;
use crate::http::samples;

const LABELS: &str = "labelqc.labels";
const GOLD: &str = "labelqc.gold";
const OUTPUTS: [&str; 7] = [
    "labelqc.scopes",
    "labelqc.annotators",
    "labelqc.pairs",
    "labelqc.items",
    "labelqc.deadletter",
    "labelqc.gating",
    "labelqc.alerts",
];
const MALFORMED: [&str; 2] = ["this is not json", r#"{"item_id":"x","annotator_id":"a","label":"y"}"#];

/// Kills the service when the test ends, however it ends.
struct Service(Child, String);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_service(brokers: &str, extra: &[&str]) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["run", "--brokers", brokers, "--http", "127.0.0.1:0", "--group-id", "labelqc-test"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start labelqc run");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr =
        first.split("http://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "unexpected first line {first:?}");
    // Keep draining stderr so that the service never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    Service(child, addr)
}

fn metrics(addr: &str) -> String {
    crate::http::get(addr, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

/// A metric's value, summed over the series whose line starts with `prefix`.
fn metric(addr: &str, prefix: &str) -> f64 {
    samples(&metrics(addr), prefix).sum()
}

/// Input messages of `topic` (`labels`, `gold`) whose outputs are delivered and offsets committed.
fn committed(addr: &str, topic: &str) -> u64 {
    metric(addr, &format!("labelqc_input_committed_total{{topic=\"{topic}\"}}")) as u64
}

/// Waits until the outputs of the first `labels` label and `gold` gold messages are delivered
/// and their offsets committed.
fn wait_for_events(service: &Service, labels: u64, gold: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&service.1, "labels") < labels || committed(&service.1, "gold") < gold {
        assert!(Instant::now() < deadline, "the service did not process all input in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn produce(producer: &BaseProducer, topic: &str, lines: &[String]) {
    for line in lines {
        let key = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| {
                let scope = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("default").to_string();
                Some(format!("{}/{}/{}", scope("project"), scope("task"), v.get("item_id")?.as_str()?))
            })
            .unwrap_or_else(|| "malformed".into());
        producer.send(BaseRecord::to(topic).key(&key).payload(line)).expect("enqueue input");
    }
    producer.flush(Duration::from_secs(10)).expect("input delivered");
}

/// The latest value per key of a topic (`None` for a tombstone), as a compacted topic holds it.
fn compacted(brokers: &str, topic: &str) -> BTreeMap<String, Option<Value>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "labelqc-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (_, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)).unwrap();
    let mut latest = BTreeMap::new();
    if high == 0 {
        return latest;
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "could not read {topic}");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let value = message.payload().map(|p| serde_json::from_slice::<Value>(p).unwrap());
        latest.insert(key, value);
        if message.offset() + 1 >= high {
            return latest;
        }
    }
}

fn report(labels: &[String], gold: &[String]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (l, g) = (dir.path().join("labels.jsonl"), dir.path().join("gold.jsonl"));
    std::fs::write(&l, labels.join("\n")).unwrap();
    std::fs::write(&g, gold.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["report", "--items", "--labels", l.to_str().unwrap(), "--gold", g.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks that the compacted outputs say what the report says.
fn assert_outputs_match_report(brokers: &str, expected: &Value) {
    let live = |topic: &str| -> BTreeMap<String, Value> {
        compacted(brokers, topic).into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
    };
    let (scopes, annotators, pairs, items) =
        (live(OUTPUTS[0]), live(OUTPUTS[1]), live(OUTPUTS[2]), live(OUTPUTS[3]));
    let (gating, alerts) = (live(OUTPUTS[5]), live(OUTPUTS[6]));
    let mut n_alerts = 0;
    let report_scopes = expected["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), report_scopes.len());
    let (mut n_pairs, mut n_annotators, mut n_items) = (0, 0, 0);
    let mut problems = Vec::new();
    for scope in report_scopes {
        let (project, task) = (scope["project"].as_str().unwrap(), scope["task"].as_str().unwrap());
        let mut summary = scope.clone();
        for field in ["pairs", "annotators", "items", "alerts"] {
            summary.as_object_mut().unwrap().remove(field);
        }
        let mut published = scopes[&format!("{project}/{task}")].clone();
        published.as_object_mut().unwrap().remove("updated_at");
        problems.extend(mismatches(&summary, &published, 1e-9, true));
        for pair in scope["pairs"].as_array().unwrap() {
            let key =
                format!("{project}/{task}/{}/{}", pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap());
            problems.extend(mismatches(pair, pairs.get(&key).unwrap_or(&Value::Null), 1e-9, false));
            n_pairs += 1;
        }
        for annotator in scope["annotators"].as_array().unwrap() {
            let key = format!("{project}/{task}/{}", annotator["annotator_id"].as_str().unwrap());
            problems.extend(mismatches(annotator, annotators.get(&key).unwrap_or(&Value::Null), 1e-9, false));
            n_annotators += 1;
        }
        for alert in scope["alerts"].as_array().unwrap() {
            let id = alert["id"].as_str().unwrap();
            problems.extend(mismatches(alert, alerts.get(id).unwrap_or(&Value::Null), 1e-9, false));
            n_alerts += 1;
        }
        for annotator in scope["annotators"].as_array().unwrap() {
            // The gating topic's latest record per (project, annotator) is the report's gate.
            let key = format!("{project}/{}", annotator["annotator_id"].as_str().unwrap());
            let gate = &annotator["gate"];
            let record = gating.get(&key).unwrap_or(&Value::Null);
            if record["state"] != gate["state"] || record["at"] != gate["since"] {
                problems.push(format!("gating {key}: {record}, expected state and time of {gate}"));
            }
        }
        for (item, consensus) in scope["items"].as_object().unwrap() {
            let key = format!("{project}/{task}/{item}");
            problems.extend(mismatches(consensus, items.get(&key).unwrap_or(&Value::Null), 1e-9, false));
            n_items += 1;
        }
    }
    assert!(problems.is_empty(), "{} mismatches: {:#?}", problems.len(), &problems[..problems.len().min(20)]);
    assert_eq!((pairs.len(), annotators.len(), items.len()), (n_pairs, n_annotators, n_items));
    assert_eq!(alerts.len(), n_alerts);
    assert!(n_pairs > 100 && n_annotators > 20 && n_items > 100, "{n_pairs} {n_annotators} {n_items}");
}

struct Setup {
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: String,
    producer: BaseProducer,
    labels: Vec<String>,
    gold: Vec<String>,
}

fn setup(seed: u64) -> Setup {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic(LABELS, 3, 1).unwrap();
    cluster.create_topic(GOLD, 1, 1).unwrap();
    for topic in OUTPUTS {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let spec = GenSpec { events: 2000, annotators: 25, tasks: 2, gold_rate: 0.1, seed, ..GenSpec::default() };
    let (mut l, mut g) = (Vec::new(), Vec::new());
    generate(&spec, &mut l, Some(&mut g)).unwrap();
    let lines =
        |bytes: Vec<u8>| String::from_utf8(bytes).unwrap().lines().map(String::from).collect::<Vec<_>>();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    Setup { _cluster: cluster, brokers, producer, labels: lines(l), gold: lines(g) }
}

#[test]
fn outputs_equal_the_report_and_bad_messages_are_dead_lettered() {
    let s = setup(11);
    produce(&s.producer, GOLD, &s.gold);
    let (first, second) = s.labels.split_at(1200);
    produce(&s.producer, LABELS, first);
    produce(&s.producer, LABELS, &MALFORMED.map(String::from));
    produce(&s.producer, LABELS, second);

    let service = start_service(&s.brokers, &[]);
    wait_for_events(&service, (s.labels.len() + MALFORMED.len()) as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));

    let letters = compacted(&s.brokers, OUTPUTS[4]);
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for (key, letter) in &letters {
        let letter = letter.as_ref().unwrap();
        assert!(key.starts_with(&format!("{LABELS}/")), "{key}");
        assert!(letter["reason"].as_str().unwrap().contains("not a valid record"), "{letter}");
        assert!(MALFORMED.contains(&letter["raw"].as_str().unwrap()), "{letter}");
    }
}

/// Produces the first `split` labels, runs the service until it has them, produces the rest,
/// kills the service with SIGKILL while they may be in flight, restarts it and waits until it has
/// read everything; checks that the outputs equal the report. Returns the restarted service.
fn kill_and_restart(s: &Setup, split: usize, extra: &[&str]) -> Service {
    produce(&s.producer, GOLD, &s.gold);
    let (first, second) = s.labels.split_at(split);
    produce(&s.producer, LABELS, first);
    let mut service = start_service(&s.brokers, extra);
    wait_for_events(&service, first.len() as u64, s.gold.len() as u64);
    produce(&s.producer, LABELS, second);
    std::thread::sleep(Duration::from_millis(150));
    service.0.kill().unwrap();
    service.0.wait().unwrap();

    let service = start_service(&s.brokers, extra);
    wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    service
}

#[test]
fn killed_and_restarted_service_converges() {
    kill_and_restart(&setup(23), 900, &[]);
}

#[test]
fn exactly_once_mode_commits_outputs_and_offsets_together() {
    // A transaction may be open at the SIGKILL; the restarted producer fences and aborts it, and
    // the reader sees committed transactions only (librdkafka reads read_committed by default).
    let s = setup(31);
    let service = kill_and_restart(&s, 800, &["--exactly-once"]);
    assert_eq!(committed(&service.1, "labels"), s.labels.len() as u64);
    assert!(
        metric(&service.1, "labelqc_transactions_committed_total ") > 0.0,
        "no transaction was committed"
    );
}

/// A backlog read through a pipeline of one epoch in flight of at most 250 messages: the service
/// pauses its input rather than read ahead (so what it holds does not grow with the backlog), and
/// the outputs are still those of the report. Both modes.
#[test]
fn backpressure_bounds_the_epochs_in_flight() {
    for (seed, extra) in [(41, &[][..]), (43, &["--exactly-once"][..])] {
        let s = setup(seed);
        produce(&s.producer, GOLD, &s.gold);
        produce(&s.producer, LABELS, &s.labels);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("labelqc.toml");
        let settings =
            "[engine]\nepoch_events = 250\nmax_epochs_in_flight = 1\n[kafka]\npause_after_ms = 0\n";
        std::fs::write(&config, settings).unwrap();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend(extra);
        let service = start_service(&s.brokers, &args);
        wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
        assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));

        let value = |prefix: &str| metric(&service.1, prefix);
        assert_eq!(value("labelqc_epochs_in_flight_max "), 1.0, "{extra:?}");
        assert!(value("labelqc_epoch_messages_max ") <= 250.0, "{extra:?}");
        let messages = (s.labels.len() + s.gold.len()) as f64;
        assert!(value("labelqc_epochs_completed_total ") >= messages / 250.0, "{extra:?}");
        assert!(value("labelqc_input_pauses_total ") > 0.0, "the input was never paused {extra:?}");
        // Resumed once the last epoch was taken.
        assert_eq!(value("labelqc_partitions_paused "), 0.0, "{extra:?}");
    }
}

#[test]
fn survives_a_broker_outage() {
    let s = setup(37);
    produce(&s.producer, GOLD, &s.gold);
    let (first, second) = s.labels.split_at(1000);
    produce(&s.producer, LABELS, first);
    let service = start_service(&s.brokers, &[]);
    wait_for_events(&service, first.len() as u64, s.gold.len() as u64);

    produce(&s.producer, LABELS, second);
    // The only broker goes away while the service works on the second half, then comes back.
    s._cluster.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s._cluster.broker_up(1).unwrap();

    wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&service.1).contains("labelqc_consumer_lag_messages{topic=\"labelqc.labels\"} 0") {
        assert!(Instant::now() < deadline, "lag did not reach 0: {}", metrics(&service.1));
        std::thread::sleep(Duration::from_millis(200));
    }
}
