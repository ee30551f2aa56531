//! Dawid–Skene truth inference ([`labelqc_dataflows::truth::fit`]) on the report benchmark's
//! data: a generated 1,000,000-event file (1,000 annotators, 5 labels per item, 4 classes, 5% gold
//! items, 1% relabels; the same file as `benches/report.rs`), one scope.
//!
//! Prints, per fit: the live labels, items, annotators, iterations, and the wall time of the fit
//! alone (the labels already gathered as ids, as the dataflow holds them): the best and the median
//! of the runs, and the best CPU time of the calling thread (for one thread, the least disturbed
//! by other processes on a shared machine). Fits: a cold start (what the report computes), on one
//! thread and on two, the same with gold clamped, and after 20 relabels a warm start from the
//! cold fit's posteriors (a live refresh) next to a cold refit.
//!
//! Run with `cargo bench --bench truth` (`-- --runs N --events N` to change the defaults).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use labelqc::gen::{generate, GenSpec};
use labelqc_dataflows::event::{parse_gold_event, parse_label_event};
use labelqc_dataflows::label::{stable_id, LabelId, LabelTable};
use labelqc_dataflows::truth::{fit, FitOptions, TruthFit, WarmStart};

fn value(name: &str) -> Option<u64> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// The report benchmark's label and gold files (generated once, shared with it).
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

/// Each scope's live labels `(item, annotator, label)` and gold answers, and the label table.
type Scopes = HashMap<(String, String), (Vec<(u64, u64, LabelId)>, Vec<(u64, LabelId)>)>;

fn load(labels: &Path, gold: &Path) -> (Scopes, LabelTable) {
    let mut table = LabelTable::default();
    let mut live: HashMap<(String, String, u64, u64), Option<LabelId>> = HashMap::new();
    for line in std::fs::read_to_string(labels).unwrap().lines() {
        let e = parse_label_event(line).unwrap();
        let label = e.label.as_ref().map(|raw| table.intern(raw).unwrap());
        let key = (
            e.project.to_string(),
            e.task.to_string(),
            stable_id(e.item_id.as_bytes()),
            stable_id(e.annotator_id.as_bytes()),
        );
        live.insert(key, label);
    }
    let mut scopes = Scopes::new();
    for ((project, task, item, annotator), label) in live {
        if let Some(label) = label {
            scopes.entry((project, task)).or_default().0.push((item, annotator, label));
        }
    }
    // The fits do not depend on the order; the relabels picked below do.
    scopes.values_mut().for_each(|(labels, _)| labels.sort_unstable());
    let mut answers: HashMap<(String, String, u64), Option<LabelId>> = HashMap::new();
    for line in std::fs::read_to_string(gold).unwrap().lines() {
        let e = parse_gold_event(line).unwrap();
        let label = e.label.as_ref().map(|raw| table.intern(raw).unwrap());
        answers.insert((e.project.to_string(), e.task.to_string(), stable_id(e.item_id.as_bytes())), label);
    }
    for ((project, task, item), label) in answers {
        if let (Some(label), Some(scope)) = (label, scopes.get_mut(&(project, task))) {
            scope.1.push((item, label));
        }
    }
    (scopes, table)
}

/// CPU time of the calling thread: unlike wall time, barely changed by other processes on a
/// shared machine.
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime only writes the timespec it is given.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` `runs` times; the best and the median wall time, the best thread CPU time, and the
/// last result.
fn timed(runs: usize, mut f: impl FnMut() -> TruthFit) -> (Duration, Duration, Duration, TruthFit) {
    let mut times = Vec::new();
    let mut cpu = Duration::MAX;
    let mut last = None;
    for _ in 0..runs.max(1) {
        let (start, start_cpu) = (Instant::now(), thread_cpu_time());
        let fit = f();
        times.push(start.elapsed());
        cpu = cpu.min(thread_cpu_time() - start_cpu);
        last = Some(fit);
    }
    times.sort();
    (times[0], times[times.len() / 2], cpu, last.unwrap())
}

fn main() {
    let events = value("--events").unwrap_or(1_000_000);
    let runs = value("--runs").unwrap_or(3) as usize;
    let (labels_path, gold_path) = dataset(events);
    let (scopes, table) = load(&labels_path, &gold_path);
    let order = |a: &LabelId, b: &LabelId| table.get(*a).spec_cmp(table.get(*b));
    println!("# Dawid–Skene truth inference ({events} events, {runs} runs each)\n");
    println!(
        "| scope | fit | labels | items | annotators | iterations | best (s) | median (s) | CPU, best (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut names: Vec<_> = scopes.keys().cloned().collect();
    names.sort();
    for name in names {
        let (labels, gold) = &scopes[&name];
        let row = |what: &str, (best, median, cpu): (Duration, Duration, Duration), fit: &TruthFit| {
            println!(
                "| {}/{} | {what} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
                name.0,
                name.1,
                labels.len(),
                fit.n_items(),
                fit.annotators().len(),
                fit.iterations(),
                best.as_secs_f64(),
                median.as_secs_f64(),
                cpu.as_secs_f64()
            );
        };
        let setup = FitOptions { max_iterations: 0, ..FitOptions::default() };
        let (best, median, cpu, prepared) = timed(runs, || fit(labels, gold, order, &setup, None).unwrap());
        row("layout and first M-step only", (best, median, cpu), &prepared);
        let cold_options = FitOptions::default();
        let (best, median, cpu, cold) =
            timed(runs, || fit(labels, gold, order, &cold_options, None).unwrap());
        row("cold start (report)", (best, median, cpu), &cold);
        let two = FitOptions { threads: 2, ..FitOptions::default() };
        let (best, median, cpu, both) = timed(runs, || fit(labels, gold, order, &two, None).unwrap());
        row("cold start, 2 threads", (best, median, cpu), &both);
        assert!(both.items().eq(cold.items()), "threads change nothing");
        let clamp = FitOptions { clamp_gold: true, ..FitOptions::default() };
        let (best, median, cpu, clamped) = timed(runs, || fit(labels, gold, order, &clamp, None).unwrap());
        row("cold start, gold clamped", (best, median, cpu), &clamped);
        // A live refresh: 20 labels changed to the next category, warm-started from the fit before.
        let warm: WarmStart = cold.warm_start();
        let categories = cold.labels().to_vec();
        let mut changed = labels.clone();
        for l in changed.iter_mut().step_by(labels.len() / 20 + 1) {
            let at = categories.iter().position(|c| *c == l.2).unwrap();
            l.2 = categories[(at + 1) % categories.len()];
        }
        let (best, median, cpu, refreshed) =
            timed(runs, || fit(&changed, gold, order, &cold_options, Some(&warm)).unwrap());
        row("warm start after 20 relabels", (best, median, cpu), &refreshed);
        let (best, median, cpu, exact) =
            timed(runs, || fit(&changed, gold, order, &cold_options, None).unwrap());
        row("cold start after 20 relabels", (best, median, cpu), &exact);
        let (mut max_diff, mut disagree) = (0.0f64, 0);
        for (w, c) in refreshed.items().zip(exact.items()) {
            disagree += usize::from(w.label != c.label);
            for (p, q) in w.posterior.iter().zip(&c.posterior) {
                max_diff = max_diff.max((p.1 - q.1).abs());
            }
        }
        println!(
            "\nwarm against cold after 20 relabels: {disagree} truth labels differ, largest posterior difference {max_diff:.3e}"
        );
    }
}
