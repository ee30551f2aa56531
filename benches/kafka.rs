//! `labelqc run` against librdkafka's mock cluster, recorded in BENCHMARKS.md:
//!
//! 1. the ceiling: a bare rdkafka consumer that only parses each message's JSON, over the same
//!    cluster and data;
//! 2. sustained throughput of the real `labelqc run` binary, Kafka to Kafka (all outputs
//!    delivered and offsets committed), over a backlog of the same events (what a restart
//!    rebuilds from), the service's CPU time for it per event (steadier than throughput on a
//!    shared machine), and its resident memory once it holds them all, per live label;
//! 3. freshness at a fixed input rate (20,000 events/s unless `--rate N`): the service's own
//!    p50/p99 of the time from a message's Kafka timestamp to the delivery of the outputs it
//!    changed.
//!
//! Run with `cargo bench --bench kafka` (`-- --events N --seconds S` to change the defaults,
//! `-- --truth-refresh-ms N` for another live Dawid–Skene refit interval, `-- --truth-tolerance X`
//! for another `[truth] live_tolerance`, `-- --no-truth` for `[truth] enabled = false`;
//! `-- --processes N [--workers W]` runs the service as a cluster of N processes on 127.0.0.1).
//! `-- --brokers HOST:PORT` runs 1 and 2 on that broker instead (tansu, say): the benchmark
//! creates its topics there through the admin API, so the broker must not have them yet; 3 is
//! skipped, as it needs a second, fresh set of topics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labelqc::gen::{generate, GenSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// The integration tests' topic creation through the admin API.
#[path = "../tests/integration/admin.rs"]
mod admin;
/// The integration tests' HTTP client and exposition reader.
#[path = "../tests/integration/http.rs"]
mod http;

/// The default topic names, as the Kafka tests use them.
#[path = "../tests/integration/topics.rs"]
mod topics;
use topics::{GOLD, LABELS, OUTPUTS};

/// The mock broker keeps about 5 MB per partition; 8 partitions hold 200,000 events whole, and
/// larger runs get one more partition per 25,000 events.
fn partitions() -> i32 {
    (arg("--events", 200_000).div_ceil(25_000) as i32).max(8)
}

struct Service(Child, String);

/// The CPU time a process has used, user and system, in seconds (Linux: `/proc/PID/stat`, in
/// clock ticks of 10 ms; the service's own metric counts whole seconds).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: utime and stime are the 12th
    // and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = rest.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<f64>().ok()).sum();
    ticks / 100.0
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops every process of a cluster at once: killed one after the other, a later process would
/// see an earlier one go and say it lost the cluster (which it did, but not as a failure).
fn stop_all(mut processes: Vec<Service>) {
    for process in &mut processes {
        let _ = process.0.kill();
    }
    drop(processes);
}

fn arg_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn arg(name: &str, default: u64) -> u64 {
    arg_value(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn lines(spec: &GenSpec) -> (Vec<String>, Vec<String>) {
    let (mut l, mut g) = (Vec::new(), Vec::new());
    generate(spec, &mut l, Some(&mut g)).unwrap();
    let split = |b: Vec<u8>| String::from_utf8(b).unwrap().lines().map(String::from).collect();
    (split(l), split(g))
}

/// The key spec section 1 asks for: the JSON array of the event's identity.
fn key(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let part = |field: &str| v[field].as_str().unwrap_or("default").to_string();
    let mut key = vec![part("project"), part("task"), part("item_id")];
    if let Some(annotator) = v["annotator_id"].as_str() {
        key.push(annotator.to_string());
    }
    serde_json::to_string(&key).unwrap()
}

fn produce(producer: &BaseProducer, topic: &str, lines: &[String]) {
    for line in lines {
        let key = key(line);
        loop {
            match producer.send(BaseRecord::to(topic).key(&key).payload(line)) {
                Ok(()) => break,
                Err(_) => producer.poll(Duration::from_millis(10)),
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock cluster, or the `external` broker, with the topics created.
fn cluster(external: Option<&str>) -> (Option<Mock>, String, BaseProducer) {
    let mut topics = vec![(LABELS, partitions()), (GOLD, 1)];
    topics.extend(OUTPUTS.map(|topic| (topic, 1)));
    let (cluster, brokers) = match external {
        Some(brokers) => {
            admin::create_topics(brokers, &topics);
            (None, brokers.to_string())
        }
        None => {
            let cluster = MockCluster::new(1).unwrap();
            for (topic, partitions) in topics {
                cluster.create_topic(topic, partitions, 1).unwrap();
            }
            let brokers = cluster.bootstrap_servers();
            (Some(cluster), brokers)
        }
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    (cluster, brokers, producer)
}

/// A bare consumer that parses every message's JSON: the ceiling on this cluster and data.
fn ceiling(brokers: &str, expected: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-ceiling")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions() {
        tpl.add_partition_offset(LABELS, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut start = Instant::now();
    let mut seen = 0;
    let mut idle = 0;
    while seen < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
                std::hint::black_box(value);
                if seen == 0 {
                    // Time from the first message, as for the service (below).
                    start = Instant::now();
                }
                seen += 1;
                idle = 0;
            }
            Some(Err(error)) => panic!("ceiling consumer: {error}"),
            None => {
                idle += 1;
                assert!(idle < 100, "ceiling consumer saw {seen} of {expected} messages, then nothing");
            }
        }
    }
    expected as f64 / start.elapsed().as_secs_f64()
}

/// Starts `labelqc run`: `--processes` processes as one timely cluster on 127.0.0.1 (default 1),
/// with `--workers` workers each (default 2 in all). Returns the processes, the first first: it
/// publishes and commits for all.
fn start_service(brokers: &str, group: &str, config_dir: &std::path::Path) -> Vec<Service> {
    let processes = arg("--processes", 1) as usize;
    let workers = arg("--workers", (2 / processes).max(1) as u64);
    let config = config_dir.join(format!("{group}.toml"));
    let listeners: Vec<_> =
        (0..processes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<String> = if processes > 1 {
        listeners.iter().map(|l| format!("\"{}\"", l.local_addr().unwrap())).collect()
    } else {
        Vec::new()
    };
    drop(listeners);
    // `--truth-refresh-ms N` sets `[truth] refresh_ms` (the live Dawid–Skene refit interval),
    // `--truth-tolerance X` its `live_tolerance` (0 republishes every item a refit moves),
    // `--no-truth` sets `enabled = false` (what the live fits cost).
    let mut truth = String::from("[truth]\n");
    if std::env::args().any(|a| a == "--no-truth") {
        truth.push_str("enabled = false\n");
    }
    if let Some(ms) = arg_value("--truth-refresh-ms") {
        truth.push_str(&format!("refresh_ms = {ms}\n"));
    }
    if let Some(tolerance) = arg_value("--truth-tolerance") {
        truth.push_str(&format!("live_tolerance = {tolerance}\n"));
    }
    let settings =
        format!("[engine]\nworkers = {workers}\n[cluster]\naddresses = [{}]\n{truth}", addresses.join(", "));
    std::fs::write(&config, settings).unwrap();
    // The later processes first: the first one's start-up then measures as for a single process.
    (0..processes).rev().map(|process| start_process(brokers, group, &config, process)).rev().collect()
}

fn start_process(brokers: &str, group: &str, config: &std::path::Path, process: usize) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["run", "--brokers", brokers, "--http", "127.0.0.1:0", "--group-id", group])
        .arg("--config")
        .arg(config)
        .args(["--process", &process.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("LABELQC_LOG", std::env::var("LABELQC_LOG").unwrap_or_else(|_| "warn".into()))
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = http::announced_address(&first);
    std::thread::spawn(move || {
        // The service's log goes to this benchmark's stderr (set LABELQC_LOG=debug for epochs).
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            eprint!("{line}");
            line.clear();
        }
    });
    Service(child, addr)
}

fn metrics(addr: &str) -> String {
    http::get(addr, "/metrics").map(|(_, body)| body).unwrap_or_default()
}

fn sample(metrics: &str, series: &str) -> f64 {
    http::samples(metrics, series).sum()
}

fn wait_for(service: &Service, labels: usize) -> Instant {
    loop {
        let m = metrics(&service.1);
        if sample(&m, "labelqc_input_committed_total{topic=\"labels\"}") >= labels as f64 {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let events = arg("--events", 200_000) as usize;
    let seconds = arg("--seconds", 10);
    let external = arg_value("--brokers");
    let spec = GenSpec { events: events as u64, annotators: 1000, delete_rate: 0.0, ..GenSpec::default() };
    let (labels, gold) = lines(&spec);

    let broker =
        external.as_ref().map_or("librdkafka's mock cluster".into(), |b| format!("the broker at {b}"));
    println!("# labelqc run on {broker} ({events} events, {} partitions)\n", partitions());
    let (_cluster, brokers, producer) = cluster(external.as_deref());
    produce(&producer, GOLD, &gold);
    produce(&producer, LABELS, &labels);
    // The median of three: one run now and then reads everything prefetched at memory speed.
    let mut ceilings: Vec<f64> = (0..3).map(|_| ceiling(&brokers, labels.len())).collect();
    ceilings.sort_by(f64::total_cmp);
    let ceiling = ceilings[1];
    let config_dir = tempfile::tempdir().unwrap();
    let processes = start_service(&brokers, "bench-backlog", config_dir.path());
    let service = &processes[0];
    // Time from the first message seen, as for the ceiling: process start-up is not throughput.
    let cpu = || cpu_seconds(service.0.id());
    let (start, cpu_start) = loop {
        if processes.iter().any(|p| sample(&metrics(&p.1), "labelqc_events_total{") > 0.0) {
            break (Instant::now(), cpu());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let done = wait_for(service, labels.len());
    let throughput = labels.len() as f64 / (done - start).as_secs_f64();
    eprintln!("backlog of {} processed in {:?}", labels.len(), done - start);
    let m = metrics(&service.1);
    // CPU time per event moves less than throughput with what else runs on the machine.
    let cpu_used = cpu() - cpu_start;
    let pipeline = pipeline_stats(&m);
    // What the service holds once it has every label: resident memory over live labels, and that
    // of each process of a cluster.
    let resident = sample(&m, "labelqc_process_resident_memory_bytes ");
    let live = sample(&m, "labelqc_scope_labels{") - windowed_labels(&m);
    let per_process: Vec<f64> =
        processes.iter().map(|p| sample(&metrics(&p.1), "labelqc_process_resident_memory_bytes ")).collect();
    stop_all(processes);
    let shape = match arg("--processes", 1) {
        1 => format!("{} workers", arg("--workers", 2)),
        n => format!("{n} processes x {} workers", arg("--workers", (2 / n).max(1))),
    };
    println!("| measure | events/s |");
    println!("|---|---|");
    println!("| bare consumer parsing JSON (ceiling) | {ceiling:.0} |");
    println!("| labelqc run, Kafka to Kafka, {shape} | {throughput:.0} |");
    println!("| ratio | {:.0}% |\n", 100.0 * throughput / ceiling);
    println!("{pipeline}\n");
    if arg("--processes", 1) == 1 {
        println!(
            "service CPU for the backlog: {cpu_used:.2} s, {:.1} µs per event (process 0)\n",
            cpu_used * 1e6 / labels.len() as f64
        );
    }
    println!(
        "memory after the backlog: {:.0} MiB resident, {live:.0} live labels, {:.0} bytes per live label \
         (process 0)\n",
        resident / 1048576.0,
        resident / live.max(1.0),
    );
    if per_process.len() > 1 {
        let each: Vec<String> = per_process.iter().map(|r| format!("{:.0} MiB", r / 1048576.0)).collect();
        println!("resident memory per process: {}\n", each.join(", "));
    }
    if external.is_some() {
        return;
    }

    // Freshness at a fixed rate (20,000 events/s unless `--rate`) on a fresh cluster, sent in
    // batches every 10 ms.
    let (_cluster, brokers, producer) = cluster(None);
    let rate = (arg("--rate", 20_000) as usize).max(100);
    let stream_spec = GenSpec { events: (rate as u64) * seconds, seed: 99, ..spec };
    let (labels, gold) = lines(&stream_spec);
    let processes = start_service(&brokers, "bench-fresh", config_dir.path());
    let service = &processes[0];
    // The gold answers too once the service is ready (every process of a cluster): input present
    // at its start would be counted with the time the service took to start (the latency summary
    // counts every event).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !processes.iter().all(|p| http::get(&p.1, "/readyz").is_some_and(|(status, _)| status == 200)) {
        assert!(Instant::now() < deadline, "the service did not become ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu = || cpu_seconds(service.0.id());
    let cpu_start = cpu();
    let start = Instant::now();
    produce(&producer, GOLD, &gold);
    for (i, chunk) in labels.chunks(rate / 100).enumerate() {
        for line in chunk {
            let key = key(line);
            while producer.send(BaseRecord::to(LABELS).key(&key).payload(line)).is_err() {
                producer.poll(Duration::from_millis(1));
            }
        }
        producer.poll(Duration::ZERO);
        let due = start + Duration::from_millis(10 * (i as u64 + 1));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let offered = labels.len() as f64 / start.elapsed().as_secs_f64();
    wait_for(service, labels.len());
    // Small epochs cost more per event than a backlog's large ones: what the rate costs.
    let cpu_used = cpu() - cpu_start;
    let m = metrics(&service.1);
    let p50 = sample(&m, "labelqc_processing_latency_seconds{quantile=\"0.5\"}");
    let p99 = sample(&m, "labelqc_processing_latency_seconds{quantile=\"0.99\"}");
    println!("# freshness at a fixed input rate ({offered:.0} events/s offered for {seconds} s)\n");
    println!("| p50 (ms) | p99 (ms) |");
    println!("|---|---|");
    println!("| {:.1} | {:.1} |\n", p50 * 1e3, p99 * 1e3);
    println!("{}\n", pipeline_stats(&m));
    println!(
        "service CPU at this rate: {cpu_used:.2} s, {:.1} µs per event (process 0)",
        cpu_used * 1e6 / labels.len() as f64
    );
    stop_all(processes);
}

/// The `labelqc_scope_labels` samples of windows (every label also counts in each window size).
fn windowed_labels(m: &str) -> f64 {
    m.lines()
        .filter(|l| l.starts_with("labelqc_scope_labels{") && !l.contains("window=\"all\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How the service's pipeline ran: epochs, their largest size, epochs in flight, pauses.
fn pipeline_stats(m: &str) -> String {
    format!(
        "pipeline: {} epochs, largest {} messages, at most {} in flight, input paused {} times",
        sample(m, "labelqc_epochs_completed_total "),
        sample(m, "labelqc_epoch_messages_max "),
        sample(m, "labelqc_epochs_in_flight_max "),
        sample(m, "labelqc_input_pauses_total "),
    )
}
