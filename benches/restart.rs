//! The restart time of `labelqc run`, recorded in BENCHMARKS.md: the service runs over a backlog
//! of label events on librdkafka's mock cluster until its outputs are published and committed, is
//! killed with SIGKILL, and is started again; measured from the kill until `/readyz` says the
//! outputs of all the input are published and committed again (the rebuild: reading the output
//! topics back, rebuilding the state from the input, publishing the difference).
//!
//! Run with `cargo bench --bench restart` (`-- --events N --workers W`; default 1,000,000 events,
//! 2 workers). The mock broker keeps about 5 MB per partition, so the topics (outputs too) get
//! enough partitions to hold everything: a partition it had to trim would be read back short.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use labelqc::gen::{generate, GenSpec};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

#[path = "../tests/integration/http.rs"]
#[allow(dead_code)] // shared with the tests; this benchmark reads no samples
mod http;
#[path = "../tests/integration/topics.rs"]
mod topics;
use topics::{GOLD, LABELS, OUTPUTS};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Service(Child, String);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(brokers: &str, workers: u64) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["run", "--brokers", brokers, "--http", "127.0.0.1:0", "--group-id", "bench-restart"])
        .args(["--workers", &workers.to_string()])
        .env("LABELQC_LOG", std::env::var("LABELQC_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = http::announced_address(&first);
    std::thread::spawn(move || {
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            eprint!("{line}");
            line.clear();
        }
    });
    Service(child, addr)
}

fn wait_ready(service: &Service) -> Instant {
    while http::get(&service.1, "/readyz").map(|(s, _)| s) != Some(200) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Instant::now()
}

/// Peak resident memory of a process, from /proc (Linux), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
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

fn main() {
    let events = arg("--events", 1_000_000);
    let workers = arg("--workers", 2);
    let spec = GenSpec { events, annotators: 1000, delete_rate: 0.0, ..GenSpec::default() };
    let (mut labels, mut gold) = (Vec::new(), Vec::new());
    generate(&spec, &mut labels, Some(&mut gold)).unwrap();
    let lines =
        |b: &[u8]| String::from_utf8(b.to_vec()).unwrap().lines().map(String::from).collect::<Vec<_>>();
    let (labels, gold) = (lines(&labels), lines(&gold));
    let bytes: usize = labels.iter().map(String::len).sum();
    // About 5 MB per partition of the mock broker, with room to spare.
    let partitions = (bytes / 2_500_000 + 1) as i32;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(LABELS, partitions, 1).unwrap();
    cluster.create_topic(GOLD, 1, 1).unwrap();
    for topic in OUTPUTS {
        cluster.create_topic(topic, 32, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .unwrap();
    for (topic, lines) in [(GOLD, &gold), (LABELS, &labels)] {
        for line in lines {
            let key = key(line);
            while producer.send(BaseRecord::to(topic).key(&key).payload(line)).is_err() {
                producer.poll(Duration::from_millis(10));
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    eprintln!(
        "{} label events ({} MB) in {partitions} partitions, {} gold answers",
        labels.len(),
        bytes >> 20,
        gold.len()
    );

    let started = Instant::now();
    let mut service = start(&brokers, workers);
    let first = wait_ready(&service).duration_since(started);
    let rss = peak_rss(service.0.id());
    service.0.kill().unwrap();
    service.0.wait().unwrap();
    let killed = Instant::now();
    let service = start(&brokers, workers);
    let restart = wait_ready(&service).duration_since(killed);
    let restart_rss = peak_rss(service.0.id());
    println!(
        "first start to ready: {:.1} s (peak RSS {} MiB); kill -9 to outputs current again: {:.1} s (peak RSS {} MiB); {} events, {workers} workers",
        first.as_secs_f64(),
        rss >> 20,
        restart.as_secs_f64(),
        restart_rss >> 20,
        labels.len()
    );
}
