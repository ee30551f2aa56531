//! The end-to-end scenario of `labelqc run` against a Kafka broker, shared by the tests on
//! librdkafka's mock cluster (`kafka`) and on tansu (`tansu`): the real `labelqc` binary as a
//! subprocess, a generated input stream with malformed messages in it, a SIGKILL and a restart;
//! the compacted view of every output topic must equal `labelqc report` over the same input, and
//! the malformed messages must be in the dead-letter topic with their source position.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use labelqc::gen::{generate, GenSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::compare::mismatches;
use crate::http::samples;

pub use crate::topics::{GOLD, LABELS, OUTPUTS};
pub const DEADLETTER: &str = OUTPUTS[4];
/// Messages the service must refuse, each with a word of the reason it must give: text that is not
/// JSON, a record without `ts`, binary bytes (a PNG header sent to the wrong topic, kept intact
/// as base64 in the dead letter) and a tombstone (no value at all).
pub const MALFORMED: [(Option<&[u8]>, &str); 4] = [
    (Some(b"this is not json"), "not JSON"),
    (Some(br#"{"item_id":"x","annotator_id":"a","label":"y"}"#), "`ts` is missing"),
    (Some(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "not UTF-8 text: byte 0x89"),
    (None, "a Kafka tombstone"),
];
const TIMEOUT: Duration = Duration::from_secs(10);

/// Kills the service when the test ends, however it ends. Holds the process, the address of its
/// HTTP endpoint, and what it has written to stderr so far.
pub struct Service(pub Child, pub String, pub Arc<Mutex<String>>);

impl Service {
    /// What the service has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.2.lock().unwrap().clone()
    }

    /// Sends `signal` to the service.
    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, signal) }, 0, "cannot signal the service");
    }

    /// Waits up to `timeout` for the service to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_service(brokers: &str, extra: &[&str]) -> Service {
    start_service_with_env(brokers, extra, &[])
}

/// Starts the service with extra environment variables (such as `LABELQC_LOG`).
pub fn start_service_with_env(brokers: &str, extra: &[&str], env: &[(&str, &str)]) -> Service {
    start_service_at(brokers, "127.0.0.1:0", extra, env)
}

/// Starts the service with its HTTP listener on `http`.
pub fn start_service_at(brokers: &str, http: &str, extra: &[&str], env: &[(&str, &str)]) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["run", "--brokers", brokers, "--http", http, "--group-id", "labelqc-test"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start labelqc run");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = crate::http::announced_address(&first);
    // Keep draining stderr so that the service never blocks on a full pipe, keeping it for the
    // test (and showing it, with LABELQC_TEST_STDERR set, to debug a test).
    let show = std::env::var_os("LABELQC_TEST_STDERR").is_some();
    let kept = Arc::new(Mutex::new(first));
    let keep = kept.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).is_ok_and(|n| n > 0) {
            if show {
                eprint!("{line}");
            }
            keep.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    Service(child, addr, kept)
}

pub fn metrics(addr: &str) -> String {
    crate::http::get(addr, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

/// Input messages of `topic` (`labels` or `gold`) whose outputs the service has delivered and
/// whose offsets it has committed.
fn committed(metrics: &str, topic: &str) -> u64 {
    samples(metrics, &format!("labelqc_input_committed_total{{topic=\"{topic}\"}}")).sum::<f64>() as u64
}

/// Waits until the service has delivered the outputs of `labels` label messages (malformed ones
/// included) and `gold` gold messages, and committed their offsets.
pub fn wait_for_events(service: &Service, labels: u64, gold: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = metrics(&service.1);
        if committed(&metrics, "labels") >= labels && committed(&metrics, "gold") >= gold {
            return;
        }
        assert!(Instant::now() < deadline, "the service did not process all input in time: {metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The key spec section 1 asks producers to give an event: the JSON array of its identity,
/// `["project","task","item_id","annotator_id"]` for a label event, `["project","task","item_id"]`
/// for a gold answer.
pub fn identity_key(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| {
            let scope = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("default").to_string();
            let mut key = vec![scope("project"), scope("task"), v.get("item_id")?.as_str()?.to_string()];
            if let Some(annotator) = v.get("annotator_id").and_then(Value::as_str) {
                key.push(annotator.to_string());
            }
            Some(serde_json::to_string(&key).unwrap())
        })
        .unwrap_or_else(|| "malformed".into())
}

/// The key of an output record: the JSON array of `parts`.
pub fn key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap()
}

pub fn produce(producer: &BaseProducer, topic: &str, lines: &[String]) {
    for line in lines {
        let key = identity_key(line);
        producer.send(BaseRecord::to(topic).key(&key).payload(line)).expect("enqueue input");
    }
    producer.flush(TIMEOUT).expect("input delivered");
}

/// Produces the [`MALFORMED`] messages to `topic`.
pub fn produce_malformed(producer: &BaseProducer, topic: &str) {
    for (payload, _) in MALFORMED {
        let record = BaseRecord::<str, [u8]>::to(topic).key("malformed");
        let record = match payload {
            Some(bytes) => record.payload(bytes),
            None => record,
        };
        producer.send(record).expect("enqueue input");
    }
    producer.flush(TIMEOUT).expect("input delivered");
}

/// One message of a topic.
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: Option<Vec<u8>>,
}

/// Every message of every partition of a topic, each partition in offset order.
pub fn read_all(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "labelqc-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT).unwrap();
        if high > low {
            assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
            ends.insert(partition.id(), high);
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return records;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "could not read {topic} to its end; partitions left: {ends:?}");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.unwrap();
        let (partition, offset) = (message.partition(), message.offset());
        if ends.get(&partition).is_some_and(|&end| offset + 1 >= end) {
            ends.remove(&partition);
        }
        let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap();
        records.push(Record { partition, offset, key, payload: message.payload().map(<[u8]>::to_vec) });
    }
    records
}

/// The latest value per key of a topic (`None` for a tombstone), as a compacted topic holds it.
pub fn compacted(brokers: &str, topic: &str) -> BTreeMap<String, Option<Value>> {
    read_all(brokers, topic)
        .into_iter()
        .map(|r| (r.key, r.payload.map(|p| serde_json::from_slice::<Value>(&p).unwrap())))
        .collect()
}

pub fn report(labels: &[String], gold: &[String]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (l, g) = (dir.path().join("labels.jsonl"), dir.path().join("gold.jsonl"));
    std::fs::write(&l, labels.join("\n")).unwrap();
    std::fs::write(&g, gold.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args([
            "report",
            "--items",
            "--windows",
            "--labels",
            l.to_str().unwrap(),
            "--gold",
            g.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks that the compacted outputs say what the report says, within a few seconds: live
/// Dawid–Skene truth becomes the report's once its scope has stopped changing for
/// `truth.refresh_ms` (spec section 2.1), so the outputs are read again until they match.
pub fn assert_outputs_match_report(brokers: &str, expected: &Value) {
    assert_outputs_match(brokers, expected, true);
}

/// As [`assert_outputs_match_report`], but for what Dawid–Skene truth decides (each scope's
/// `truth` and `routing`, each annotator's `confusion`, each item's `truth` and `route`): a
/// service stopped while its truth was still being refreshed leaves its last warm refit.
pub fn assert_outputs_match_report_but_truth(brokers: &str, expected: &Value) {
    assert_outputs_match(brokers, expected, false);
}

fn assert_outputs_match(brokers: &str, expected: &Value, truth: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let problems = outputs_vs_report(brokers, expected, truth);
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} mismatches: {:#?}",
            problems.len(),
            &problems[..problems.len().min(20)]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The differences between the compacted outputs and the report.
fn outputs_vs_report(brokers: &str, expected: &Value, truth: bool) -> Vec<String> {
    let expected = if truth { expected.clone() } else { crate::truth::without_truth(expected) };
    let expected = &expected;
    let live = |topic: &str| -> BTreeMap<String, Value> {
        compacted(brokers, topic).into_iter().filter_map(|(k, v)| Some((k, v?))).collect()
    };
    let (scopes, annotators, pairs, items) =
        (live(OUTPUTS[0]), live(OUTPUTS[1]), live(OUTPUTS[2]), live(OUTPUTS[3]));
    let (gating, alerts, windows) = (live(OUTPUTS[5]), live(OUTPUTS[6]), live(OUTPUTS[7]));
    let routing = live(OUTPUTS[9]);
    let (mut n_alerts, mut n_windows) = (0, 0);
    let report_scopes = expected["scopes"].as_array().unwrap();
    assert_eq!(scopes.len(), report_scopes.len());
    let (mut n_pairs, mut n_annotators, mut n_items) = (0, 0, 0);
    let mut problems = Vec::new();
    for scope in report_scopes {
        let (project, task) = (scope["project"].as_str().unwrap(), scope["task"].as_str().unwrap());
        let mut summary = scope.clone();
        for field in ["pairs", "annotators", "items", "alerts", "windows"] {
            summary.as_object_mut().unwrap().remove(field);
        }
        for window in scope["windows"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let (size, start) = (window["size"].as_str().unwrap(), window["start"].as_str().unwrap());
            let mut published = windows.get(&key(&[project, task, size, start])).cloned().unwrap_or_default();
            if let Some(object) = published.as_object_mut() {
                object.remove("updated_at");
            }
            problems.extend(mismatches(window, &published, 1e-9, true));
            n_windows += 1;
        }
        let mut published = scopes[&key(&[project, task])].clone();
        published.as_object_mut().unwrap().remove("updated_at");
        if !truth {
            published.as_object_mut().unwrap().remove("truth");
            published.as_object_mut().unwrap().remove("routing");
        }
        problems.extend(mismatches(&summary, &published, 1e-9, true));
        for pair in scope["pairs"].as_array().unwrap() {
            let key = key(&[project, task, pair["a"].as_str().unwrap(), pair["b"].as_str().unwrap()]);
            problems.extend(mismatches(pair, pairs.get(&key).unwrap_or(&Value::Null), 1e-9, false));
            n_pairs += 1;
        }
        for annotator in scope["annotators"].as_array().unwrap() {
            let key = key(&[project, task, annotator["annotator_id"].as_str().unwrap()]);
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
            let key = key(&[project, annotator["annotator_id"].as_str().unwrap()]);
            let gate = &annotator["gate"];
            let record = gating.get(&key).unwrap_or(&Value::Null);
            if record["state"] != gate["state"] || record["at"] != gate["since"] {
                problems.push(format!("gating {key}: {record}, expected state and time of {gate}"));
            }
        }
        for (item, consensus) in scope["items"].as_object().unwrap() {
            let key = key(&[project, task, item]);
            problems.extend(mismatches(consensus, items.get(&key).unwrap_or(&Value::Null), 1e-9, false));
            // The routing topic carries the item's route.
            let route = routing.get(&key).map(|r| &r["route"]);
            if truth && route != Some(&consensus["route"]) {
                problems.push(format!("routing {key}: {route:?}, expected {}", consensus["route"]));
            }
            n_items += 1;
        }
    }
    let counts = ((pairs.len(), annotators.len(), items.len(), routing.len()), alerts.len(), windows.len());
    if counts != ((n_pairs, n_annotators, n_items, n_items), n_alerts, n_windows) {
        problems.push(format!("{counts:?} published, expected {n_pairs} pairs, {n_annotators} annotators, {n_items} items and routes, {n_alerts} alerts, {n_windows} windows"));
    }
    assert!(n_windows > 0, "the scenario's events span windows");
    assert!(n_pairs > 100 && n_annotators > 20 && n_items > 100, "{n_pairs} {n_annotators} {n_items}");
    problems
}

/// Checks that each malformed message of the labels topic is in the dead-letter topic, under the
/// key `["topic",partition,offset]`, with its position, the reason it was refused and its bytes
/// intact (text as text, binary as base64).
pub fn assert_dead_letters(brokers: &str) {
    let malformed: Vec<(Record, &str)> = read_all(brokers, LABELS)
        .into_iter()
        .filter(|r| r.key == "malformed")
        .map(|r| {
            let (_, reason) =
                MALFORMED.iter().find(|(m, _)| r.payload.as_deref() == *m).expect("a malformed message");
            (r, *reason)
        })
        .collect();
    assert_eq!(malformed.len(), MALFORMED.len(), "each malformed message is in {LABELS} once");
    let letters = compacted(brokers, DEADLETTER);
    assert_eq!(letters.len(), malformed.len(), "{letters:#?}");
    for (record, reason) in &malformed {
        let key = serde_json::json!([LABELS, record.partition, record.offset]).to_string();
        let Some(Some(letter)) = letters.get(&key) else { panic!("no dead letter {key} in {letters:#?}") };
        assert_eq!(letter["topic"], LABELS, "{letter}");
        assert_eq!(letter["partition"], record.partition, "{letter}");
        assert_eq!(letter["offset"], record.offset, "{letter}");
        let raw: labelqc::deadletter::RawExcerpt = serde_json::from_value(letter.clone()).unwrap();
        assert_eq!(raw.bytes().unwrap(), record.payload.clone().unwrap_or_default(), "{letter}");
        assert_eq!(raw.raw_bytes, record.payload.as_ref().map_or(0, Vec::len) as u64, "{letter}");
        assert!(!raw.truncated, "{letter}");
        assert!(letter["reason"].as_str().unwrap().starts_with(reason), "{letter}");
    }
}

/// librdkafka's in-process mock cluster (one broker on 127.0.0.1) with the input topics (3 label
/// partitions, 1 gold) and every output topic made; the cluster lives as long as the value.
pub fn mock_cluster(
) -> (rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String) {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic(LABELS, 3, 1).unwrap();
    cluster.create_topic(GOLD, 1, 1).unwrap();
    for topic in OUTPUTS {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    (cluster, brokers)
}

/// A broker (kept alive by `broker`) with the topics created, a producer, and generated input.
pub struct Setup<B> {
    pub broker: B,
    pub brokers: String,
    pub producer: BaseProducer,
    pub labels: Vec<String>,
    pub gold: Vec<String>,
}

impl<B> Setup<B> {
    pub fn new(broker: B, brokers: String, seed: u64) -> Self {
        let spec =
            GenSpec { events: 2000, annotators: 25, tasks: 2, gold_rate: 0.1, seed, ..GenSpec::default() };
        Setup::with_spec(broker, brokers, &spec)
    }

    /// A setup whose input is generated by `spec`.
    pub fn with_spec(broker: B, brokers: String, spec: &GenSpec) -> Self {
        let (mut l, mut g) = (Vec::new(), Vec::new());
        generate(spec, &mut l, Some(&mut g)).unwrap();
        let lines =
            |bytes: Vec<u8>| String::from_utf8(bytes).unwrap().lines().map(String::from).collect::<Vec<_>>();
        let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        Setup { broker, brokers, producer, labels: lines(l), gold: lines(g) }
    }
}

/// Produces the gold answers, the first `split` labels and the malformed messages, runs the
/// service until it has processed them, produces half of the rest, kills the service with SIGKILL
/// while they may be in flight, produces the other half while it is down, restarts it and waits
/// until it has processed everything; checks that the outputs equal the report and that the
/// malformed messages are dead-lettered. Returns the restarted service.
pub fn kill_and_restart<B>(s: &Setup<B>, split: usize, extra: &[&str]) -> Service {
    produce(&s.producer, GOLD, &s.gold);
    let (first, rest) = s.labels.split_at(split);
    produce(&s.producer, LABELS, first);
    produce_malformed(&s.producer, LABELS);
    let mut service = start_service(&s.brokers, extra);
    wait_for_events(&service, (first.len() + MALFORMED.len()) as u64, s.gold.len() as u64);
    let (second, third) = rest.split_at(rest.len() / 2);
    produce(&s.producer, LABELS, second);
    std::thread::sleep(Duration::from_millis(150));
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    produce(&s.producer, LABELS, third);

    let service = start_service(&s.brokers, extra);
    wait_for_events(&service, (s.labels.len() + MALFORMED.len()) as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    assert_dead_letters(&s.brokers);
    service
}
