//! `labelqc run` against librdkafka's mock cluster (an in-process Kafka broker listening on
//! 127.0.0.1): the compacted view of every output topic equals `labelqc report` over the same
//! input, malformed messages land in the dead-letter topic while processing goes on, a service
//! killed with SIGKILL and restarted converges to the same outputs, in both delivery modes, and a
//! backlog read with a small pipeline pauses the input instead of holding more than the configured
//! epochs. The scenario itself is in `scenario`, shared with the tests on tansu.

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::http::samples;
use crate::scenario::{
    assert_dead_letters, assert_outputs_match_report, kill_and_restart, metrics, produce, produce_malformed,
    report, start_service, wait_for_events, Setup, GOLD, LABELS, MALFORMED,
};

fn setup(seed: u64) -> Setup<MockCluster<'static, DefaultProducerContext>> {
    let (cluster, brokers) = crate::scenario::mock_cluster();
    Setup::new(cluster, brokers, seed)
}

#[test]
fn outputs_equal_the_report_and_bad_messages_are_dead_lettered() {
    let s = setup(11);
    produce(&s.producer, GOLD, &s.gold);
    let (first, second) = s.labels.split_at(1200);
    produce(&s.producer, LABELS, first);
    produce_malformed(&s.producer, LABELS);
    produce(&s.producer, LABELS, second);

    let service = start_service(&s.brokers, &[]);
    wait_for_events(&service, (s.labels.len() + MALFORMED.len()) as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    assert_dead_letters(&s.brokers);
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
    let metrics = metrics(&service.1);
    let committed: f64 = samples(&metrics, "labelqc_input_committed_total{topic=\"labels\"}").sum();
    assert_eq!(committed, (s.labels.len() + MALFORMED.len()) as f64);
    let transactions: f64 = samples(&metrics, "labelqc_transactions_committed_total ").sum();
    assert!(transactions > 0.0, "no transaction was committed");
}

/// The sum of the samples of a metric on the service's /metrics.
fn metric(addr: &str, prefix: &str) -> f64 {
    samples(&metrics(addr), prefix).sum()
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
    s.broker.broker_down(1).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.broker.broker_up(1).unwrap();

    wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics(&service.1).contains("labelqc_consumer_lag_messages{topic=\"labelqc.labels\"} 0") {
        assert!(Instant::now() < deadline, "lag did not reach 0: {}", metrics(&service.1));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two `labelqc run` processes on 127.0.0.1 as one timely cluster of 2 x 2 workers: the 4 input
/// partitions are dealt out over the 4 workers, each process reads only its share, each publishes
/// its share of the keys (exactly once: the first publishes them all), the first commits, and the
/// outputs equal the report, as with one process, in both delivery modes. Stopping the first
/// process stops the second.
#[test]
fn two_processes_as_one_cluster_equal_the_report() {
    for (seed, extra) in [(47, &[][..]), (59, &["--exactly-once"][..])] {
        two_processes(seed, extra);
    }
}

fn two_processes(seed: u64, extra: &[&str]) {
    let s = setup(seed);
    produce(&s.producer, GOLD, &s.gold);
    let (first, second) = s.labels.split_at(1000);
    produce(&s.producer, LABELS, first);
    produce_malformed(&s.producer, LABELS);
    produce(&s.producer, LABELS, second);

    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path());
    let config = config.to_str().unwrap();
    let args = |process| [&["--config", config, "--process", process][..], extra].concat();
    let mut later = start_service(&s.brokers, &args("1"));
    let leader = start_service(&s.brokers, &args("0"));
    let labels = (s.labels.len() + MALFORMED.len()) as u64;
    wait_for_events(&leader, labels, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    assert_dead_letters(&s.brokers);

    // Each process read its own partitions, and together all of them, once.
    let read = |service: &crate::scenario::Service, topic: &str| {
        let label = format!("topic=\"{topic}\"");
        metrics(&service.1)
            .lines()
            .filter(|line| line.starts_with("labelqc_events_total{") && line.contains(&label))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    let (leader_read, later_read) = (read(&leader, "labels"), read(&later, "labels"));
    assert!(leader_read > 0.0 && later_read > 0.0, "{leader_read} + {later_read}");
    assert_eq!(leader_read + later_read, labels as f64);
    assert_eq!(read(&leader, "gold") + read(&later, "gold"), s.gold.len() as f64);
    if !extra.is_empty() {
        // Exactly once: the first process committed every partition's offsets in transactions.
        assert!(metric(&leader.1, "labelqc_transactions_committed_total ") > 0.0);
    }
    // At least once, each process published its share; exactly once, the first published all.
    let published = |service: &crate::scenario::Service| metric(&service.1, "labelqc_output_messages_total{");
    let annotators = |service: &crate::scenario::Service| {
        metric(&service.1, "labelqc_output_messages_total{topic=\"labelqc.annotators\"}")
    };
    assert!(annotators(&leader) > 0.0);
    if extra.is_empty() {
        assert!(annotators(&later) > 0.0, "the second process published no annotator");
    } else {
        assert_eq!(published(&later), 0.0, "exactly once, the first process publishes everything");
    }
    // Both report ready.
    for service in [&leader, &later] {
        let (status, _) = crate::http::get(&service.1, "/readyz").unwrap();
        assert_eq!(status, 200);
    }

    // SIGINT to the first process: it drains and finishes, and the second follows.
    unsafe { libc::kill(leader.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = later.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the second process did not stop with the first");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{extra:?}: {status:?}");
}

/// A cluster whose second process is killed with SIGKILL mid-stream: the first process cannot go
/// on without it and exits with an error rather than hang; both restarted, the outputs converge
/// to the report.
#[test]
fn cluster_restarted_after_a_process_dies_converges() {
    let s = setup(53);
    produce(&s.producer, GOLD, &s.gold);
    let (first, rest) = s.labels.split_at(900);
    produce(&s.producer, LABELS, first);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path());
    let config = config.to_str().unwrap();
    let start = || {
        let later = start_service(&s.brokers, &["--config", config, "--process", "1"]);
        let leader = start_service(&s.brokers, &["--config", config, "--process", "0"]);
        (leader, later)
    };
    let (mut leader, mut later) = start();
    wait_for_events(&leader, first.len() as u64, s.gold.len() as u64);
    let (second, third) = rest.split_at(rest.len() / 2);
    produce(&s.producer, LABELS, second);
    std::thread::sleep(Duration::from_millis(150));
    later.0.kill().unwrap();
    later.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = leader.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the first process did not stop when the second died");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "the first process must fail, not finish: {status:?}");
    assert_lost_peer(&leader, 1);
    produce(&s.producer, LABELS, third);

    let (mut leader, mut later) = start();
    wait_for_events(&leader, s.labels.len() as u64, s.gold.len() as u64);
    assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));

    // The first process dies: the second fails the same way, naming it.
    leader.0.kill().unwrap();
    leader.0.wait().unwrap();
    let status =
        later.wait_exit(Duration::from_secs(30)).expect("the second process stops when the first dies");
    assert!(!status.success(), "{status:?}");
    assert_lost_peer(&later, 0);
}

/// Two processes whose settings differ (one in exactly-once mode, which builds other dataflows)
/// do not start as one cluster: both stop, with an error that says so (each process logs it; the
/// one that stops last may be told first that it lost the other).
#[test]
fn processes_with_different_settings_refuse_to_run_as_one_cluster() {
    let s = setup(67);
    produce(&s.producer, LABELS, &s.labels[..100]);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config(dir.path());
    let config = config.to_str().unwrap();
    let mut later = start_service(&s.brokers, &["--config", config, "--process", "1", "--exactly-once"]);
    let mut leader = start_service(&s.brokers, &["--config", config, "--process", "0"]);
    for service in [&mut leader, &mut later] {
        let status = service.wait_exit(Duration::from_secs(30)).expect("a process with other settings stops");
        assert!(!status.success(), "{status:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let said: Vec<String> = [&leader, &later].iter().map(|s| s.stderr()).collect();
    assert!(said.iter().any(|e| e.contains("of the cluster run with different settings")), "{said:#?}");
}

/// A process that lost a peer exits with one error line naming it, and no panic.
fn assert_lost_peer(service: &crate::scenario::Service, peer: usize) {
    // The line is the last the process wrote; give the reader thread a moment to take it.
    std::thread::sleep(Duration::from_millis(200));
    let stderr = service.stderr();
    let lost: Vec<&str> = stderr.lines().filter(|l| l.contains("lost cluster process")).collect();
    assert_eq!(lost.len(), 1, "{stderr}");
    assert!(lost[0].contains(&format!("lost cluster process {peer} (127.0.0.1:")), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A cluster of two processes whose processes publish their own keys, stopped and started again
/// without new input: the restart publishes nothing (each process read back what the topics hold
/// of its keys and found its state equal); then one relabel publishes what it changes, and the
/// topics equal the report. Truth is off, so that no refit differs between the runs.
#[test]
fn a_restarted_cluster_publishes_only_what_changed() {
    let s = setup(61);
    produce(&s.producer, GOLD, &s.gold);
    produce(&s.producer, LABELS, &s.labels);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_config_with(dir.path(), "[truth]\nenabled = false\n");
    let config = config.to_str().unwrap();
    let start = || {
        let later = start_service(&s.brokers, &["--config", config, "--process", "1"]);
        let leader = start_service(&s.brokers, &["--config", config, "--process", "0"]);
        (leader, later)
    };
    let stop = |leader: crate::scenario::Service, mut later: crate::scenario::Service| {
        let mut leader = leader;
        leader.signal(libc::SIGINT);
        for service in [&mut leader, &mut later] {
            let status = service.wait_exit(Duration::from_secs(30)).expect("the cluster stops");
            assert!(status.success(), "{status:?}: {}", service.stderr());
        }
    };
    let keyed = [0, 1, 2, 3, 5, 6, 7, 8, 9];
    let counts = || keyed.map(|t| crate::scenario::read_all(&s.brokers, crate::scenario::OUTPUTS[t]).len());

    let (leader, later) = start();
    wait_for_events(&leader, s.labels.len() as u64, s.gold.len() as u64);
    stop(leader, later);
    let before = counts();
    assert!(before[1] > 0 && before[2] > 0, "{before:?}");

    let (leader, later) = start();
    wait_for_events(&leader, s.labels.len() as u64, s.gold.len() as u64);
    for service in [&leader, &later] {
        let (status, _) = crate::http::get(&service.1, "/readyz").unwrap();
        assert_eq!(status, 200, "{}", service.stderr());
    }
    assert_eq!(counts(), before, "a restart without new input published something");

    // One relabel: its item, annotator and pairs change; the topics equal the report.
    let mut relabel: serde_json::Value = serde_json::from_str(&s.labels[0]).unwrap();
    let old = relabel["label"].clone();
    let other = s
        .labels
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].clone())
        .find(|l| *l != old)
        .expect("two labels");
    relabel["label"] = other;
    // As late as the newest label: the relabel is the item's latest event from its annotator.
    relabel["ts"] =
        serde_json::from_str::<serde_json::Value>(s.labels.last().unwrap()).unwrap()["ts"].clone();
    let mut labels = s.labels.clone();
    labels.push(relabel.to_string());
    produce(&s.producer, LABELS, &labels[labels.len() - 1..]);
    wait_for_events(&leader, labels.len() as u64, s.gold.len() as u64);
    let after = counts();
    assert!(after[3] > before[3], "the relabelled item was not published: {before:?} {after:?}");
    crate::scenario::assert_outputs_match_report_but_truth(&s.brokers, &report(&labels, &s.gold));
    stop(leader, later);
}

/// A cluster configuration of two processes of two workers each on free ports of 127.0.0.1.
fn cluster_config(dir: &std::path::Path) -> std::path::PathBuf {
    cluster_config_with(dir, "")
}

/// [`cluster_config`] with more settings (whole TOML sections) after it.
fn cluster_config_with(dir: &std::path::Path, more: &str) -> std::path::PathBuf {
    let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<String> =
        listeners.iter().map(|l| format!("\"{}\"", l.local_addr().unwrap())).collect();
    let config = dir.join("cluster.toml");
    let settings =
        format!("[engine]\nworkers = 2\n[cluster]\naddresses = [{}]\n{more}", addresses.join(", "));
    std::fs::write(&config, settings).unwrap();
    config
}

/// Input keyed by label identity, as spec section 1 asks: one item's labels land on different
/// partitions, read by different workers, and its gold answer on another topic's partition; the
/// outputs (windows included) equal the report all the same, with 2 and 3 workers.
#[test]
fn results_do_not_depend_on_how_identities_are_partitioned() {
    for (seed, workers) in [(103, "2"), (107, "3")] {
        let s = setup(seed);
        produce(&s.producer, GOLD, &s.gold);
        produce(&s.producer, LABELS, &s.labels);
        // Some item's labels are spread over partitions.
        let mut partitions: std::collections::BTreeMap<String, std::collections::BTreeSet<i32>> =
            Default::default();
        for record in crate::scenario::read_all(&s.brokers, LABELS) {
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&record.payload.unwrap()) else {
                continue;
            };
            let Some(item) = event["item_id"].as_str() else { continue };
            partitions.entry(item.to_string()).or_default().insert(record.partition);
        }
        assert!(partitions.values().any(|p| p.len() > 1), "no item spread over partitions");
        let service = start_service(&s.brokers, &["--workers", workers]);
        wait_for_events(&service, s.labels.len() as u64, s.gold.len() as u64);
        assert_outputs_match_report(&s.brokers, &report(&s.labels, &s.gold));
    }
}

/// Likely mistakes in the input are counted per topic and kind on /metrics
/// (`labelqc_input_warnings_total`), the label event that looks like a gold answer also refused.
#[test]
fn likely_mistakes_are_counted_as_input_warnings() {
    let s = setup(61);
    let gold = [r#"{"item_id":"i1","annotator_id":"a","label":"1"}"#];
    let labels = [
        r#"{"item_id":"i1","annotator_id":"a","label":1,"ts":1764460800}"#,
        r#"{"item_id":"i1","annotator_id":"b","label":2,"ts":1764460801}"#,
        r#"{"item_id":"i2","label":"x"}"#,
    ];
    produce(&s.producer, GOLD, &gold.map(String::from));
    produce(&s.producer, LABELS, &labels.map(String::from));
    // Good events on more items, so that every partition of the labels topic has some.
    let good: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"item_id":"g{i}","annotator_id":"a","label":"x","ts":1764460800000}}"#))
        .collect();
    produce(&s.producer, LABELS, &good);
    let service = start_service(&s.brokers, &[]);
    wait_for_events(&service, (labels.len() + good.len()) as u64, gold.len() as u64);
    let metrics = metrics(&service.1);
    let warnings = |topic: &str, kind: &str| -> f64 {
        let (topic, kind) = (format!("topic=\"{topic}\""), format!("kind=\"{kind}\""));
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("labelqc_input_warnings_total{") && l.contains(&topic) && l.contains(&kind)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(warnings("labels", "ts_before_1973"), 2.0, "{metrics}");
    // Whichever of the gold "1" and the label 1 is read second is the one named.
    assert_eq!(
        warnings("labels", "number_and_string") + warnings("gold", "number_and_string"),
        1.0,
        "{metrics}"
    );
    assert_eq!(warnings("labels", "label_looks_like_gold"), 1.0, "{metrics}");
    assert_eq!(warnings("gold", "gold_with_annotator_id"), 1.0, "{metrics}");
    assert_eq!(metric(&service.1, "labelqc_dead_letters_total{topic=\"labels\"}"), 1.0, "{metrics}");
}
