//! Pairwise preferences through `labelqc report` (issue 15, recorded in BENCHMARKS.md): 1,000,000
//! comparisons of 50 systems (`labelqc gen --preferences`: 200 raters, 3 per comparison, two
//! side-biased and one tie-happy) against 1,000,000 plain label events of the same shape (200
//! annotators, 3 labels per item, 4 classes, no gold), end to end through the real binary with 1
//! and 2 workers: the median wall time of several runs, in nanoseconds per event, and the peak
//! resident memory. The target: comparisons no slower per event than plain labels.
//!
//! Then live, as `labelqc run` drives the engine: the comparisons at 20,000 events/s, one epoch
//! every 100 ms (2,000 comparisons an epoch), after the first 200,000: the time from submitting an
//! epoch to having its output (the changed leaderboard entries among it), against the 100 ms an
//! epoch lasts.
//!
//! Run with `cargo bench --bench preferences` (`-- --events N --runs N` to change the defaults,
//! `-- --live-only` for the live part alone).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use labelqc::gen::preferences::{PreferenceSpec, PreferenceTraffic};
use labelqc::gen::{generate, GenSpec};
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::records::Entity;
use labelqc_dataflows::source::{Catalog, Source, Stream};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The two inputs, generated once into the target folder: `(comparisons, plain labels)`.
fn datasets(events: u64) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-data");
    std::fs::create_dir_all(&dir).expect("bench data folder");
    let comparisons = dir.join(format!("comparisons-50-{events}.jsonl"));
    if !comparisons.exists() {
        let spec = PreferenceSpec { events, systems: 50, annotators: 200, ..PreferenceSpec::default() };
        let mut traffic = PreferenceTraffic::new(&spec).expect("a valid spec");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&comparisons).unwrap());
        let mut line = Vec::new();
        for _ in 0..events {
            line.clear();
            traffic.next_event(None, &mut line);
            out.write_all(&line).unwrap();
        }
        out.flush().unwrap();
    }
    let plain = dir.join(format!("plain-3-{events}.jsonl"));
    if !plain.exists() {
        let spec = GenSpec {
            events,
            annotators: 200,
            labels_per_item: 3,
            classes: 4,
            gold_rate: 0.0,
            relabel_rate: 0.0,
            delete_rate: 0.0,
            seed: 2026,
            ..GenSpec::default()
        };
        let mut out = std::io::BufWriter::new(std::fs::File::create(&plain).unwrap());
        generate(&spec, &mut out, None).expect("generate bench data");
        out.flush().unwrap();
    }
    (comparisons, plain)
}

/// Runs `labelqc report` over `labels`: its wall time and peak resident set size in bytes.
fn report(labels: &Path, workers: usize) -> (Duration, u64) {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_labelqc"))
        .args(["report", "--labels"])
        .arg(labels)
        .args(["--workers", &workers.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("start labelqc");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "labelqc report failed");
    std::mem::forget(child);
    (elapsed, usage.ru_maxrss as u64 * 1024)
}

fn main() {
    let events = arg("--events", 1_000_000);
    let runs = arg("--runs", 3) as usize;
    let (comparisons, plain) = datasets(events);
    if std::env::args().any(|a| a == "--live-only") {
        return live(&comparisons);
    }
    println!("# pairwise preferences through labelqc report ({events} events, median of {runs} runs)\n");
    println!("| workers | input | median wall (s) | ns per event | peak RSS (MiB) |");
    println!("|---|---|---|---|---|");
    for workers in [1usize, 2] {
        let mut per_event = [0.0; 2];
        for (i, (name, path)) in
            [("plain labels", &plain), ("comparisons, 50 systems", &comparisons)].iter().enumerate()
        {
            let mut times = Vec::new();
            let mut peak = 0;
            for _ in 0..runs {
                let (time, rss) = report(path, workers);
                times.push(time);
                peak = peak.max(rss);
            }
            times.sort();
            let median = times[times.len() / 2];
            per_event[i] = median.as_secs_f64() * 1e9 / events as f64;
            println!(
                "| {workers} | {name} | {:.2} | {:.0} | {:.0} |",
                median.as_secs_f64(),
                per_event[i],
                peak as f64 / (1 << 20) as f64
            );
        }
        println!("| {workers} | comparisons / plain | | {:.2}x | |", per_event[1] / per_event[0]);
    }
    live(&comparisons);
}

/// Live epochs of 2,000 comparisons (20,000 events/s at an epoch every 100 ms): per epoch the time
/// from submitting it to its output, and whether the output changed the leaderboard.
fn live(comparisons: &Path) {
    const EPOCH: usize = 2_000;
    const WARM: usize = 100;
    const MEASURED: usize = 100;
    let text = std::fs::read_to_string(comparisons).expect("the comparisons");
    let lines: Vec<&str> = text.lines().take(EPOCH * (WARM + MEASURED)).collect();
    println!("\n# live: epochs of {EPOCH} comparisons (20,000/s at 100 ms an epoch)\n");
    println!("| workers | epochs | p50 (ms) | p99 (ms) | max (ms) | epochs changing the leaderboard |");
    println!("|---|---|---|---|---|---|");
    for workers in [1usize, 2] {
        let mut engine =
            Engine::start(&EngineConfig { workers, max_epochs_in_flight: 2, ..EngineConfig::default() })
                .expect("the engine starts");
        let mut source = Source::default();
        source.catalog = Catalog::recording();
        let (mut times, mut changed) = (Vec::new(), 0);
        for (i, chunk) in lines.chunks(EPOCH).enumerate() {
            let mut updates = Vec::new();
            for line in chunk {
                source.apply_record(Stream::Labels, line, &mut updates).expect("a valid comparison");
            }
            let start = Instant::now();
            engine.submit(updates, source.catalog.take_new()).expect("submit");
            engine.sync().expect("sync");
            let outputs = engine.take_completed().1;
            let elapsed = start.elapsed();
            if i >= WARM {
                times.push(elapsed);
                let board = outputs.iter().any(|o| {
                    o.records.iter().any(|(r, d)| *d > 0 && matches!(r.key.entity, Entity::System(_)))
                });
                changed += usize::from(board);
            }
        }
        engine.finish().expect("finish");
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {workers} | {} | {:.1} | {:.1} | {:.1} | {changed} of {} |",
            times.len(),
            ms(times[times.len() / 2]),
            ms(times[times.len() * 99 / 100]),
            ms(*times.last().expect("epochs")),
            times.len()
        );
    }
}
