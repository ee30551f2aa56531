//! Restarts, stops and failures of `labelqc run` that the output topics' readers must never see,
//! against librdkafka's mock cluster (an in-process broker on 127.0.0.1): an entity that vanished
//! while the service was down gets its tombstone; a reader of the topics never sees a count go
//! back or a gate record repeat, over several SIGKILLs at random moments after each of which the
//! topics equal the report; a poison message between good events; SIGTERM mid-stream in both
//! delivery modes (what was read is published and committed); SIGINT after the input was paused;
//! a second signal; readiness only once the outputs are committed and while the broker is up; a
//! start while the broker is down; names with `/` in them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::http::{get, samples};
use crate::scenario::{
    assert_outputs_match_report, assert_outputs_match_report_but_truth, compacted, key, metrics, produce,
    read_all, report, start_service, start_service_with_env, wait_for_events, Service, Setup, GOLD, LABELS,
    OUTPUTS,
};

type Mock = MockCluster<'static, DefaultProducerContext>;

fn cluster() -> (Mock, String) {
    crate::scenario::mock_cluster()
}

fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap()
}

fn label(item: &str, annotator: &str, label: &str, ts: i64) -> String {
    serde_json::json!({"item_id": item, "annotator_id": annotator, "label": label, "ts": ts}).to_string()
}

/// Waits until `/readyz` answers `status`.
fn wait_ready(service: &Service, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while get(&service.1, "/readyz").map(|(s, _)| s) != Some(status) {
        assert!(Instant::now() < deadline, "/readyz did not answer {status}: {}", service.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The committed offset of every partition of `topic` for the service's consumer group.
fn committed(brokers: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "labelqc-test")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let offsets = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    offsets
        .elements()
        .iter()
        .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 }))
        .collect()
}

/// The messages of `topic` before the committed offsets: what the service has processed.
fn committed_prefix(brokers: &str, topic: &str, partitions: i32) -> Vec<String> {
    let committed = committed(brokers, topic, partitions);
    read_all(brokers, topic)
        .into_iter()
        .filter(|r| r.offset < committed[&r.partition])
        .map(|r| String::from_utf8(r.payload.unwrap()).unwrap())
        .collect()
}

/// Two labels on one item; the service stops; one label is deleted; the service starts: the
/// annotator and the pair that vanished get their tombstones.
#[test]
fn what_vanished_while_down_is_tombstoned() {
    let (_cluster, brokers) = cluster();
    vanished_while_down(&brokers);
}

/// The scenario of [`what_vanished_while_down_is_tombstoned`] on the broker at `brokers`, whose
/// topics exist and are empty.
pub fn vanished_while_down(brokers: &str) {
    let brokers = brokers.to_string();
    let producer = producer(&brokers);
    let a = label("i1", "A", "x", 1_764_460_800_000);
    let b = label("i1", "B", "y", 1_764_460_800_001);
    produce(&producer, LABELS, &[a.clone(), b]);
    let mut service = start_service(&brokers, &[]);
    wait_for_events(&service, 2, 0);
    service.signal(libc::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", service.stderr());
    let annotators = compacted(&brokers, OUTPUTS[1]);
    assert!(annotators[&key(&["default", "default", "B"])].is_some());
    assert!(compacted(&brokers, OUTPUTS[2])[&key(&["default", "default", "A", "B"])].is_some());

    let delete = r#"{"item_id":"i1","annotator_id":"B","ts":1764460800002,"op":"delete"}"#.to_string();
    produce(&producer, LABELS, std::slice::from_ref(&delete));
    let service = start_service(&brokers, &[]);
    wait_for_events(&service, 3, 0);
    let annotators = compacted(&brokers, OUTPUTS[1]);
    assert_eq!(annotators[&key(&["default", "default", "B"])], None, "B's annotator record is tombstoned");
    assert!(annotators[&key(&["default", "default", "A"])].is_some());
    assert_eq!(compacted(&brokers, OUTPUTS[2])[&key(&["default", "default", "A", "B"])], None);
    let scope = compacted(&brokers, OUTPUTS[0])[&key(&["default", "default"])].clone().unwrap();
    assert_eq!(scope["n_labels"], 1, "{scope}");
    assert_eq!(scope["n_annotators"], 1, "{scope}");
}

/// Insert-only input, produced in chunks, with the service killed (SIGKILL) at a random moment
/// after each chunk and restarted: after each restart the compacted topics equal the report of
/// the input so far, and over the whole run a reader of the topics never saw a scope's or an
/// annotator's label count go back, a gate record repeat, or a gate go back to warm-up.
#[test]
fn kills_at_random_moments_are_invisible_to_readers() {
    let (cluster, brokers) = cluster();
    kills_invisible_to_readers(cluster, brokers, 4);
}

/// Insert-only input for `rounds` SIGKILLs of the scenario of
/// [`kills_at_random_moments_are_invisible_to_readers`], on the broker at `brokers` (kept alive by
/// `broker`), whose topics exist and are empty.
pub fn kills_invisible_to_readers<B>(broker: B, brokers: String, rounds: usize) {
    let spec = labelqc::gen::GenSpec {
        events: 600 * rounds as u64,
        annotators: 25,
        tasks: 2,
        gold_rate: 0.1,
        relabel_rate: 0.0,
        delete_rate: 0.0,
        seed: 61,
        ..labelqc::gen::GenSpec::default()
    };
    let s = Setup::with_spec(broker, brokers, &spec);
    produce(&s.producer, GOLD, &s.gold);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(67);
    let mut service = start_service(&s.brokers, &[]);
    let chunks: Vec<&[String]> = s.labels.chunks(600).collect();
    for (round, chunk) in chunks.iter().enumerate() {
        produce(&s.producer, LABELS, chunk);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..900)));
        service.0.kill().unwrap();
        service.0.wait().unwrap();
        service = start_service(&s.brokers, &[]);
        let so_far = &s.labels[..600 * (round + 1)];
        wait_for_events(&service, so_far.len() as u64, s.gold.len() as u64);
        assert_outputs_match_report(&s.brokers, &report(so_far, &s.gold));
    }

    // Every value a reader saw, in order.
    for topic in [OUTPUTS[0], OUTPUTS[1]] {
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        for record in read_all(&s.brokers, topic) {
            let value: Value =
                serde_json::from_slice(record.payload.as_deref().expect("no tombstones")).unwrap();
            let n = value["n_labels"].as_i64().unwrap();
            let last = seen.entry(record.key.clone()).or_insert(n);
            assert!(n >= *last, "{topic} {}: n_labels went back from {last} to {n}", record.key);
            *last = n;
        }
    }
    let mut gates: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in read_all(&s.brokers, OUTPUTS[5]) {
        gates.entry(record.key).or_default().push(serde_json::from_slice(&record.payload.unwrap()).unwrap());
    }
    assert!(!gates.is_empty());
    for (key, records) in &gates {
        for pair in records.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert!(
                (before["state"].clone(), before["at"].clone())
                    != (after["state"].clone(), after["at"].clone()),
                "{key}: a gate record repeated: {before} then {after}"
            );
            assert!(
                !(after["state"] == "warmup" && before["state"] != "warmup"),
                "{key}: back to warm-up on insert-only input: {before} then {after}"
            );
        }
    }
}

/// Poison between good events: 1.8 MB of garbage, 170 KB of control characters, a valid label
/// whose item id is 600 KB. The service goes on; each is dead-lettered with a bounded excerpt,
/// its size and a hash; the outputs equal the report.
#[test]
fn poison_messages_are_dead_lettered_and_the_service_goes_on() {
    let (cluster, brokers) = cluster();
    let s = Setup::new(cluster, brokers, 71);
    let producer = producer(&s.brokers);
    produce(&producer, GOLD, &s.gold);
    let (first, second) = s.labels.split_at(1000);
    produce(&producer, LABELS, first);
    let garbage = "#".repeat(1_800_000);
    let control = "\u{1}".repeat(170_000);
    let long_item = label(&"i".repeat(600_000), "A", "x", 1_764_460_800_000);
    for poison in [&garbage, &control, &long_item] {
        producer.send(BaseRecord::to(LABELS).key("poison").payload(poison.as_str())).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    produce(&producer, LABELS, second);
    let service = start_service(&s.brokers, &[]);
    wait_for_events(&service, s.labels.len() as u64 + 3, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    let letters: Vec<Value> = compacted(&s.brokers, OUTPUTS[4]).into_values().flatten().collect();
    assert_eq!(letters.len(), 3, "{letters:?}");
    for letter in &letters {
        let size = letter["raw_bytes"].as_u64().unwrap();
        assert!([1_800_000, 170_000].contains(&size) || size > 600_000, "{size}");
        assert_eq!(letter["truncated"], true);
        assert!(letter["raw"].as_str().unwrap().len() <= 64 * 1024);
        assert_eq!(letter["raw_sha256"].as_str().unwrap().len(), 64);
        assert!(letter["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    assert!(!service.stderr().contains("panicked"), "{}", service.stderr());
}

/// SIGTERM while input flows, in both delivery modes: the service publishes and commits what it
/// has read and exits 0. At least once, the topics then say what the report of the committed input
/// says. (librdkafka's mock cluster does not keep offsets committed in a transaction, so in
/// exactly-once mode the topics are checked to hold at least what was read before the signal.)
/// Restarted, the service converges to the report of all the input.
#[test]
fn sigterm_mid_stream_publishes_and_commits_what_was_read() {
    for (seed, extra) in [(73, &[][..]), (79, &["--exactly-once"][..])] {
        let (cluster, brokers) = cluster();
        let s = Setup::new(cluster, brokers, seed);
        produce(&s.producer, GOLD, &s.gold);
        let (first, second) = s.labels.split_at(1000);
        produce(&s.producer, LABELS, first);
        let mut service = start_service(&s.brokers, extra);
        wait_for_events(&service, first.len() as u64, s.gold.len() as u64);
        produce(&s.producer, LABELS, second);
        std::thread::sleep(Duration::from_millis(30));
        service.signal(libc::SIGTERM);
        let status = service.wait_exit(Duration::from_secs(25));
        assert!(status.is_some_and(|s| s.success()), "{extra:?}: {status:?}\n{}", service.stderr());
        if extra.is_empty() {
            let labels = committed_prefix(&s.brokers, LABELS, 3);
            assert!(labels.len() >= first.len(), "{} committed", labels.len());
            // Stopped mid-stream, the truth is the last refit's (spec section 2.1); the restarted
            // service's below is the report's.
            assert_outputs_match_report_but_truth(&s.brokers, &report(&labels, &s.gold));
        } else {
            let read_before = report(first, &s.gold)["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["n_labels"].as_i64().unwrap())
                .sum::<i64>();
            let published: i64 = compacted(&s.brokers, OUTPUTS[0])
                .values()
                .flatten()
                .map(|v| v["n_labels"].as_i64().unwrap())
                .sum();
            assert!(
                published >= read_before,
                "{published} labels published, {read_before} read before the signal"
            );
        }
        let service = start_service(&s.brokers, extra);
        wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
        assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    }
}

/// A backlog read through a pipeline so small that the input is paused; SIGINT then stops the
/// service promptly (librdkafka's consumer destruction once hung here).
#[test]
fn sigint_after_the_input_was_paused_stops_promptly() {
    let (cluster, brokers) = cluster();
    let s = Setup::new(cluster, brokers, 83);
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels[..200]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("labelqc.toml");
    let settings = "[engine]\nepoch_events = 50\nmax_epochs_in_flight = 1\n[kafka]\npause_after_ms = 0\nshutdown_timeout_ms = 8000\n";
    std::fs::write(&config, settings).unwrap();
    let mut service = start_service(&s.brokers, &["--config", config.to_str().unwrap()]);
    wait_ready(&service, 200, Duration::from_secs(30));
    produce(&s.producer, LABELS, &s.labels[200..]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while samples(&metrics(&service.1), "labelqc_input_pauses_total ").sum::<f64>() == 0.0 {
        assert!(Instant::now() < deadline, "the input was never paused");
        std::thread::sleep(Duration::from_millis(10));
    }
    service.signal(libc::SIGINT);
    let status = service.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", service.stderr());
}

/// With the broker gone and outputs undelivered, a stop waits (up to `shutdown_timeout_ms`, then
/// fails, committing nothing), and a second signal ends the process at once.
#[test]
fn stops_with_the_broker_gone_time_out_and_a_second_signal_is_immediate() {
    for second_signal in [false, true] {
        let (cluster, brokers) = cluster();
        let s = Setup::new(cluster, brokers, 89);
        produce(&s.producer, GOLD, &s.gold);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("labelqc.toml");
        // Outputs wait two seconds in the producer: time to take the broker away under them.
        let settings = "[kafka]\nshutdown_timeout_ms = 3000\n[kafka.client]\n\"linger.ms\" = \"2000\"\n";
        std::fs::write(&config, settings).unwrap();
        let mut service = start_service(&s.brokers, &["--config", config.to_str().unwrap()]);
        wait_ready(&service, 200, Duration::from_secs(30));
        let read = || {
            samples(&metrics(&service.1), "labelqc_events_total{result=\"ok\",topic=\"labels\"}").sum::<f64>()
        };
        let before = read();
        produce(&s.producer, LABELS, &s.labels[..100]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while read() == before {
            assert!(Instant::now() < deadline, "the input was not read");
            std::thread::sleep(Duration::from_millis(1));
        }
        s.broker.broker_down(1).unwrap();
        let committed =
            samples(&metrics(&service.1), "labelqc_input_committed_total{topic=\"labels\"}").sum::<f64>();
        assert!(committed < read(), "outputs are in flight");
        service.signal(libc::SIGTERM);
        if second_signal {
            std::thread::sleep(Duration::from_millis(300));
            assert!(service.0.try_wait().unwrap().is_none(), "it waits for delivery");
            let sent = Instant::now();
            service.signal(libc::SIGTERM);
            let status = service.wait_exit(Duration::from_secs(2)).expect("a second signal stops it at once");
            assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
            assert!(sent.elapsed() < Duration::from_secs(1));
        } else {
            let status = service.wait_exit(Duration::from_secs(10)).expect("stopped within the timeout");
            assert!(!status.success(), "undelivered outputs: not a clean stop");
            assert!(service.stderr().contains("shutdown_timeout_ms"), "{}", service.stderr());
        }
        s.broker.broker_up(1).unwrap();
    }
}

/// `/readyz` turns ready only once the outputs of the input present at start are published and
/// committed, and is not ready while the broker is unreachable.
#[test]
fn ready_only_when_committed_and_while_the_broker_is_up() {
    let (cluster, brokers) = cluster();
    let s = Setup::new(cluster, brokers, 97);
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels);
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &s.brokers).create().unwrap();
    let high: Vec<i64> =
        (0..3).map(|p| consumer.fetch_watermarks(LABELS, p, Duration::from_secs(5)).unwrap().1).collect();
    let service = start_service(&s.brokers, &[]);
    wait_ready(&service, 200, Duration::from_secs(60));
    let committed = committed(&s.brokers, LABELS, 3);
    for (p, &high) in high.iter().enumerate() {
        assert!(committed[&(p as i32)] >= high, "ready before partition {p} was committed: {committed:?}");
    }
    s.broker.broker_down(1).unwrap();
    wait_ready(&service, 503, Duration::from_secs(15));
    s.broker.broker_up(1).unwrap();
    wait_ready(&service, 200, Duration::from_secs(30));
}

/// A start while the broker is unreachable waits for it (as a running service does) instead of
/// giving up, logs the outage once each way, and then works.
#[test]
fn a_start_waits_for_an_unreachable_broker() {
    let (cluster, brokers) = cluster();
    let s = Setup::new(cluster, brokers, 101);
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels);
    s.broker.broker_down(1).unwrap();
    let mut service = start_service_with_env(&s.brokers, &[], &[("LABELQC_LOG", "info")]);
    std::thread::sleep(Duration::from_secs(12));
    assert!(service.0.try_wait().unwrap().is_none(), "gave up: {}", service.stderr());
    s.broker.broker_up(1).unwrap();
    wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    let log = service.stderr();
    assert_eq!(log.matches("Kafka brokers unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("Kafka brokers reachable again").count(), 1, "{log}");
    assert!(!log.contains('\u{1b}'), "no ANSI colour codes off a terminal");
}

/// Scopes whose names contain `/`: ("a/b", "c") and ("a", "b/c") are two scopes, with two keys.
#[test]
fn names_with_slashes_do_not_collide() {
    let (_cluster, brokers) = cluster();
    let producer = producer(&brokers);
    let event = |project: &str, task: &str, annotator: &str| {
        serde_json::json!({"item_id": "i", "annotator_id": annotator, "label": "x", "ts": 1, "project": project, "task": task})
            .to_string()
    };
    let lines = [event("a/b", "c", "A"), event("a/b", "c", "B"), event("a", "b/c", "A")];
    produce(&producer, LABELS, &lines);
    let service = start_service(&brokers, &[]);
    wait_for_events(&service, 3, 0);
    let scopes = compacted(&brokers, OUTPUTS[0]);
    assert_eq!(scopes.len(), 2, "{scopes:?}");
    assert_eq!(scopes[&key(&["a/b", "c"])].as_ref().unwrap()["n_labels"], 2);
    assert_eq!(scopes[&key(&["a", "b/c"])].as_ref().unwrap()["n_labels"], 1);
}
