//! The quality core's benchmarks, recorded in BENCHMARKS.md:
//!
//! 1. `labelqc report` throughput over a generated 1,000,000-event file (1,000 annotators, 5
//!    labels per item, 4 classes, 5% gold items, 1% relabels), end to end through the real
//!    binary, with 1 and 2 workers; the median of several runs. Each run is made with Dawid–Skene
//!    truth (the default) and again without it (`truth.enabled = false`), and the bench prints
//!    what truth adds to the report's time.
//! 2. Peak resident memory of those runs per live label.
//! 3. The time to apply one relabel after the 1,000,000 events: from submitting it to having
//!    every affected output record (scope, pairs, annotators, item, gate) re-formed and handed out
//!    by the live engine, configured as the service is (live Dawid–Skene truth refitted at most
//!    every second, warm: the relabel's epoch does not wait for it).
//! 4. The input side alone, in-process: parsing the 1,000,000 lines, and parsing and applying
//!    them to a `Source` (ids, upserts), in nanoseconds per event (best of the runs).
//!
//! Run with `cargo bench --bench report` (`-- --runs N --events N --relabels N` to change the
//! defaults; `--runs 0` measures only the relabels; `--relabel-every-ms N` spaces them, so that
//! live refits of Dawid–Skene, due every second or two, fall among them). The relabels are also
//! split by kind: those on gold items (which change the scope's gold accuracy, the baseline of
//! every annotator's gold drift) and the others. `--gold-only` relabels only labels on gold items,
//! `--workers N` measures the relabels with N workers alone (1 and 2 by default), `--no-truth`
//! turns Dawid–Skene off for them (`truth.enabled = false`), which takes its refits, running
//! beside the workers, out of the measurement, and `--slowest N` lists the N slowest relabels with
//! what each re-formed, to tell which kind sets the tail.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use labelqc::gen::{generate, GenSpec};
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::event::{parse_gold_event, parse_label_event};
use labelqc_dataflows::source::{Catalog, Source, Update};
use rand::{Rng, SeedableRng};

/// The binary's allocator (`src/main.rs`), so that the in-process relabels measure what
/// `labelqc run` does.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Options {
    events: u64,
    runs: usize,
    relabels: usize,
    /// Time between two relabels (0: back to back).
    relabel_every: Duration,
    /// Relabels of labels on gold items alone.
    gold_only: bool,
    /// The numbers of workers the relabels are measured with.
    workers: Vec<usize>,
    /// Whether the relabels' engine infers Dawid–Skene truth.
    truth: bool,
    /// How many of the slowest relabels to list, with what each re-formed.
    slowest: usize,
}

/// One relabel, measured.
struct Relabel {
    /// From submitting it to its epoch's outputs taken.
    latency: Duration,
    /// The item whose label it changed.
    item: ItemName,
    /// The records its epoch re-formed (changes with `+1`).
    records: usize,
    /// The process's CPU time (user and system) meanwhile, refits' threads included.
    cpu: Duration,
    /// Item truths of finished refits that waited to be published when it was submitted.
    truths_waiting: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let mut o = Options {
        events: 1_000_000,
        runs: 3,
        relabels: 300,
        relabel_every: Duration::ZERO,
        gold_only: flag("--gold-only"),
        workers: vec![1, 2],
        truth: !flag("--no-truth"),
        slowest: 0,
    };
    let value = |name: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
    };
    if let Some(v) = value("--events") {
        o.events = v;
    }
    if let Some(v) = value("--runs") {
        o.runs = v as usize;
    }
    if let Some(v) = value("--relabels") {
        o.relabels = v as usize;
    }
    if let Some(v) = value("--relabel-every-ms") {
        o.relabel_every = Duration::from_millis(v);
    }
    if let Some(v) = value("--workers") {
        o.workers = vec![v as usize];
    }
    if let Some(v) = value("--slowest") {
        o.slowest = v as usize;
    }
    o
}

fn dataset(events: u64) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-data");
    std::fs::create_dir_all(&dir).expect("bench data folder");
    let labels = dir.join(format!("labels-{events}.jsonl"));
    let gold = dir.join(format!("gold-{events}.jsonl"));
    if !labels.exists() || !gold.exists() {
        let spec = GenSpec {
            events,
            annotators: 1_000,
            labels_per_item: 5,
            classes: 4,
            gold_rate: 0.05,
            relabel_rate: 0.01,
            delete_rate: 0.0,
            seed: 2026,
            ..GenSpec::default()
        };
        let mut l = std::io::BufWriter::new(std::fs::File::create(&labels).unwrap());
        let mut g = std::io::BufWriter::new(std::fs::File::create(&gold).unwrap());
        generate(&spec, &mut l, Some(&mut g)).expect("generate bench data");
        l.flush().unwrap();
        g.flush().unwrap();
    }
    (labels, gold)
}

/// The live labels of a report: the sum of its scopes' `n_labels`. Read as a stream into a
/// struct of those fields alone, so that this process stays small: a child's peak resident size
/// (`wait4`) counts the pages it shared with this process until `exec`.
fn count_live_labels(report: &Path) -> i64 {
    #[derive(serde::Deserialize)]
    struct Report {
        scopes: Vec<Scope>,
    }
    #[derive(serde::Deserialize)]
    struct Scope {
        n_labels: i64,
    }
    let file = std::fs::File::open(report).expect("the report");
    let report: Report = serde_json::from_reader(BufReader::new(file)).expect("report JSON");
    report.scopes.iter().map(|s| s.n_labels).sum()
}

/// Runs a command, returning its wall time and peak resident set size in bytes.
fn run_measured(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let child = cmd.spawn().expect("start labelqc");
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse from it.
    let o = options();
    let (labels, gold) = dataset(o.events);
    if o.runs > 0 {
        report_runs(&o, &labels, &gold);
    }
    let mut spacing = if o.relabel_every.is_zero() {
        String::new()
    } else {
        format!(", one every {} ms", o.relabel_every.as_millis())
    };
    if o.gold_only {
        spacing.push_str(", on gold items alone");
    }
    if !o.truth {
        spacing.push_str(", truth off");
    }
    println!("# one relabel after {} events of history ({} relabels{spacing})\n", o.events, o.relabels);
    println!("| workers | relabels | p50 (ms) | p99 (ms) | max (ms) |");
    println!("|---|---|---|---|---|");
    let gold_items = gold_items(&gold);
    let mut cpu = Vec::new();
    let mut slowest = Vec::new();
    for &workers in &o.workers {
        let (mut relabels, cpu_time) =
            relabel_latencies(&labels, &gold, workers, &o, o.gold_only.then_some(&gold_items));
        cpu.push((workers, cpu_time / relabels.len() as u32));
        let on_gold: Vec<Duration> =
            relabels.iter().filter(|r| gold_items.contains(&r.item)).map(|r| r.latency).collect();
        let others: Vec<Duration> =
            relabels.iter().filter(|r| !gold_items.contains(&r.item)).map(|r| r.latency).collect();
        let all: Vec<Duration> = relabels.iter().map(|r| r.latency).collect();
        relabels.sort_by_key(|r| std::cmp::Reverse(r.latency));
        relabels.truncate(o.slowest);
        slowest.push((workers, relabels));
        for (kind, latencies) in [("all", all), ("on gold items", on_gold), ("on other items", others)] {
            let mut latencies = latencies;
            if latencies.is_empty() {
                continue;
            }
            latencies.sort();
            println!(
                "| {workers} | {kind} ({}) | {:.3} | {:.3} | {:.3} |",
                latencies.len(),
                quantile(&latencies, 0.5).as_secs_f64() * 1e3,
                quantile(&latencies, 0.99).as_secs_f64() * 1e3,
                latencies.last().unwrap().as_secs_f64() * 1e3
            );
        }
    }
    // CPU time moves less than wall time with what else runs on the machine.
    println!("\nthe process's CPU time (user and system) per relabel, over the relabels:");
    for (workers, per) in cpu {
        println!("- {workers} worker(s): {:.3} ms", per.as_secs_f64() * 1e3);
    }
    if o.slowest > 0 {
        println!("\n# the {} slowest relabels\n", o.slowest);
        println!(
            "| workers | latency (ms) | on | records re-formed | process CPU (ms) | item truths waiting |"
        );
        println!("|---|---|---|---|---|---|");
        for (workers, relabels) in slowest {
            for r in relabels {
                let on = if gold_items.contains(&r.item) { "gold item" } else { "other item" };
                println!(
                    "| {workers} | {:.3} | {on} | {} | {:.3} | {} |",
                    r.latency.as_secs_f64() * 1e3,
                    r.records,
                    r.cpu.as_secs_f64() * 1e3,
                    r.truths_waiting
                );
            }
        }
    }
}

/// The CPU time (user and system) this process has used so far.
fn process_cpu() -> Duration {
    // SAFETY: `getrusage` writes the struct it is given, which is zeroed plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0, "getrusage");
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// An item by its names: (project, task, item).
type ItemName = (String, String, String);

/// The (project, task, item) of every gold answer.
fn gold_items(gold: &Path) -> std::collections::HashSet<ItemName> {
    BufReader::new(std::fs::File::open(gold).unwrap())
        .lines()
        .filter_map(|line| {
            let line = line.unwrap();
            let e = parse_gold_event(&line).ok()?;
            Some((e.project.into_owned(), e.task.into_owned(), e.item_id.into_owned()))
        })
        .collect()
}

/// The report's runs with 1 and 2 workers, each run with Dawid–Skene truth (the default) and
/// then without it (`truth.enabled = false`), and the input side in-process.
fn report_runs(o: &Options, labels: &Path, gold: &Path) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let report_path = tmp.join("bench-report.json");
    let truth_off = tmp.join("bench-truth-off.toml");
    std::fs::write(&truth_off, "[truth]\nenabled = false\n").expect("write the truth-off config");
    println!("# labelqc report benchmark ({} events, {} runs each)\n", o.events, o.runs);
    println!("| workers | truth | median wall (s) | events/s | peak RSS (MiB) | bytes per live label |");
    println!("|---|---|---|---|---|---|");
    let mut live_labels = 0i64;
    let mut adds = Vec::new();
    for workers in [1usize, 2] {
        // Each run with truth, then without: the two medians come from the same minutes.
        let mut times = [Vec::new(), Vec::new()];
        let mut peaks = [0, 0];
        for _ in 0..o.runs {
            for (off, config) in [None, Some(&truth_off)].into_iter().enumerate() {
                let mut command = Command::new(env!("CARGO_BIN_EXE_labelqc"));
                command.args(["report", "--labels"]).arg(labels).arg("--gold").arg(gold);
                command.arg("--workers").arg(workers.to_string()).arg("--output").arg(&report_path);
                if let Some(config) = config {
                    command.arg("--config").arg(config);
                }
                let (elapsed, rss) = run_measured(&mut command);
                times[off].push(elapsed);
                peaks[off] = peaks[off].max(rss);
            }
        }
        if live_labels == 0 {
            live_labels = count_live_labels(&report_path);
        }
        let [with, without] = times.map(median);
        for (truth, m, peak) in [("on", with, peaks[0]), ("off", without, peaks[1])] {
            println!(
                "| {workers} | {truth} | {:.2} | {:.0} | {:.0} | {:.0} |",
                m.as_secs_f64(),
                o.events as f64 / m.as_secs_f64(),
                peak as f64 / (1 << 20) as f64,
                peak as f64 / live_labels as f64
            );
        }
        adds.push(format!(
            "{:+.0}% with {workers} worker{}",
            (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0,
            if workers == 1 { "" } else { "s" }
        ));
    }
    println!("\nDawid–Skene truth adds {} to the report's time.", adds.join(", "));
    println!("\nlive labels: {live_labels}\n");

    let (parse, apply) = input_costs(labels, gold, o.runs);
    println!("# input side, in-process (best of {} runs)\n", o.runs);
    println!("| parse (ns/event) | parse and apply to the source (ns/event) |");
    println!("|---|---|");
    println!("| {:.0} | {:.0} |\n", parse * 1e9 / o.events as f64, apply * 1e9 / o.events as f64);
}

/// The best times, in seconds, to parse every label line, and to parse and apply every line (gold
/// first) to a fresh [`Source`].
fn input_costs(labels: &Path, gold: &Path, runs: usize) -> (f64, f64) {
    let text = std::fs::read_to_string(labels).unwrap();
    let gold = std::fs::read_to_string(gold).unwrap();
    let (mut parse, mut apply) = (f64::MAX, f64::MAX);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let mut ids = 0usize;
        for line in text.lines() {
            ids += parse_label_event(line).unwrap().item_id.len();
        }
        std::hint::black_box(ids);
        parse = parse.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut source = Source::default();
        let mut updates = Vec::new();
        for line in gold.lines() {
            source.apply_gold(&parse_gold_event(line).unwrap(), &mut updates).unwrap();
        }
        for line in text.lines() {
            source.apply_label(&parse_label_event(line).unwrap(), &mut updates).unwrap();
            if updates.len() >= 100_000 {
                updates.clear();
            }
        }
        std::hint::black_box(&updates);
        apply = apply.min(start.elapsed().as_secs_f64());
    }
    (parse, apply)
}

/// Loads the history, then applies single relabels one at a time, timing each from submission
/// to re-formed outputs.
/// Each relabel, measured, and the process's CPU time over them (truth's refits included, where
/// on). With `only`, labels on those items alone are relabelled.
fn relabel_latencies(
    labels: &Path,
    gold: &Path,
    workers: usize,
    o: &Options,
    only: Option<&std::collections::HashSet<ItemName>>,
) -> (Vec<Relabel>, Duration) {
    let (relabels, every) = (o.relabels, o.relabel_every);
    // The service's live truth (`truth.refresh_ms`, default 1000): a relabel's epoch re-forms
    // every exact output; Dawid–Skene, global to a scope, follows at the scope's next refit.
    let mut engine_config = EngineConfig {
        workers,
        max_epochs_in_flight: 2,
        truth_refresh: Some(Duration::from_millis(1000)),
        ..EngineConfig::default()
    };
    engine_config.truth.enabled = o.truth;
    let mut engine = Engine::start(&engine_config).unwrap();
    let mut source = Source::default();
    source.catalog = Catalog::recording();
    let mut updates = Vec::new();
    for line in BufReader::new(std::fs::File::open(gold).unwrap()).lines() {
        source.apply_gold(&parse_gold_event(&line.unwrap()).unwrap(), &mut updates).unwrap();
    }
    let mut lines = Vec::new();
    for line in BufReader::new(std::fs::File::open(labels).unwrap()).lines() {
        let line = line.unwrap();
        source.apply_label(&parse_label_event(&line).unwrap(), &mut updates).unwrap();
        if updates.len() >= 100_000 {
            engine.submit(std::mem::take(&mut updates), source.catalog.take_new()).unwrap();
            engine.take_completed();
        }
        lines.push(line);
    }
    engine.submit(std::mem::take(&mut updates), source.catalog.take_new()).unwrap();
    engine.sync().unwrap();
    // Item truths of the history's refits that wait to be published go out first, as the
    // service's idle epochs publish them ([`Engine::truth_backlog`]): the relabels start from a
    // caught-up engine. A refit that lands among the relabels is published among them.
    while engine.truth_backlog() > 0 {
        engine.submit(Vec::new(), Vec::new()).unwrap();
        engine.sync().unwrap();
    }
    engine.take_completed();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let classes = ["\"positive\"", "\"negative\"", "\"neutral\"", "\"mixed\""];
    let mut measured = Vec::with_capacity(relabels);
    let mut formed = 0usize;
    let cpu_start = process_cpu();
    while measured.len() < relabels {
        let line = &lines[rng.gen_range(0..lines.len())];
        let Ok(event) = parse_label_event(line) else {
            continue;
        };
        let Some(_) = event.label else { continue };
        let item = (event.project.into_owned(), event.task.into_owned(), event.item_id.into_owned());
        if only.is_some_and(|only| !only.contains(&item)) {
            continue;
        }
        let relabel = line
            .replace(classes[0], "\"@\"")
            .replace(classes[1], classes[0])
            .replace("\"@\"", classes[1])
            .replace(classes[2], "\"@\"")
            .replace(classes[3], classes[2])
            .replace("\"@\"", classes[3]);
        let mut one: Vec<Update> = Vec::new();
        std::thread::sleep(every);
        let truths_waiting = engine.truth_backlog();
        let cpu_before = process_cpu();
        let start = Instant::now();
        source.apply_label(&parse_label_event(&relabel).unwrap(), &mut one).unwrap();
        engine.submit(one, source.catalog.take_new()).unwrap();
        engine.sync().unwrap();
        let mut records = 0;
        for output in engine.take_completed().1 {
            records += output.records.iter().filter(|(_, diff)| *diff > 0).count();
        }
        let latency = start.elapsed();
        formed += records;
        let cpu = process_cpu() - cpu_before;
        measured.push(Relabel { latency, item, records, cpu, truths_waiting });
    }
    let cpu = process_cpu() - cpu_start;
    assert!(formed > 0, "relabels re-formed no outputs");
    engine.finish().unwrap();
    (measured, cpu)
}
