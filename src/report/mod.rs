//! `labelqc report`: runs the quality dataflows over label and gold files and forms the report of
//! spec section 3. Every refused line is passed on with its line number, reason and bytes (or
//! stops the run with `--strict`); each file is summed up in a [`FileSummary`], and a file with
//! records but no valid one stops the run with its likely cause; a progress bar shows on a
//! terminal.

mod assemble;
mod files;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use labelqc_dataflows::drift::DriftSettings;
use labelqc_dataflows::engine::{Engine, EngineConfig, Feed, FeedFactory};
use labelqc_dataflows::items::ItemsConfig;
use labelqc_dataflows::keyed::Emit;
use labelqc_dataflows::routing::RoutingSettings;
use labelqc_dataflows::source::Stream;
use labelqc_dataflows::truth::TruthSettings;

use crate::config::EngineSettings;
use crate::input::{BadInput, FileSummary, Refused};
pub use assemble::Report;
use files::{cut_blocks, Block, FileFeed, Files, Gathered, Progress};

/// What to report on.
#[derive(Clone, Debug)]
pub struct ReportRequest {
    pub labels: PathBuf,
    pub gold: Option<PathBuf>,
    pub with_items: bool,
    pub strict: bool,
    pub engine: EngineSettings,
    /// Drift, gate and alert settings.
    pub drift: DriftSettings,
    /// Window sizes (ms) to report per-scope numbers over; empty for none.
    pub windows: Vec<i64>,
    /// The `[preferences]` settings.
    pub preferences: labelqc_dataflows::preferences::PreferenceSettings,
    /// Show a progress bar (only honoured when stderr is a terminal).
    pub progress: bool,
    /// Dawid–Skene truth settings (the report fits every scope once, cold).
    pub truth: TruthSettings,
    /// Routing settings.
    pub routing: RoutingSettings,
}

/// The report (its final records, to be written in order) and what was refused on the way.
pub struct ReportOutcome {
    pub report: Report,
    /// The gold file's summary (when given), then the label file's.
    pub files: Vec<FileSummary>,
    pub dead_letters: u64,
    pub events: u64,
    pub elapsed: Duration,
    pub live_labels: usize,
}

/// Runs the dataflows over the request's files. Every refused line is passed to `on_refused`, in
/// line order. Fails with [`BadInput`] when a file has records but no valid one (naming the likely
/// cause), or at the first refused line under `--strict`.
///
/// The files are cut into blocks of lines by one thread and parsed by every worker in parallel
/// ([`files`]); an identity's latest event in file order wins, whichever worker read it.
pub fn run(request: &ReportRequest, on_refused: impl FnMut(&Refused<'_>)) -> Result<ReportOutcome> {
    let start = Instant::now();
    let mut paths = Vec::new();
    if let Some(gold) = &request.gold {
        paths.push((gold.clone(), Stream::Gold));
    }
    paths.push((request.labels.clone(), Stream::Labels));
    let files = Files { paths };
    let progress = Arc::new(Progress::default());
    let gathered = Arc::new(Mutex::new(Gathered::new(&files)));
    let (send, receive) = std::sync::mpsc::sync_channel::<Block>(4 * request.engine.workers.max(1));
    let blocks = Arc::new(Mutex::new(receive));
    let factory: FeedFactory = {
        let (files, progress, gathered) = (files.clone(), progress.clone(), gathered.clone());
        let window_sizes = request.windows.clone();
        Arc::new(move |_worker, _peers| {
            let feed =
                FileFeed::new(blocks.clone(), &files, &window_sizes, progress.clone(), gathered.clone());
            Ok(Box::new(feed) as Box<dyn Feed>)
        })
    };
    // Every record is formed once, from the final state, by the worker that owns its entity.
    let config = EngineConfig {
        workers: request.engine.workers,
        max_epochs_in_flight: request.engine.max_epochs_in_flight,
        items: ItemsConfig {
            window_sizes: request.windows.clone(),
            out_of_order: true,
            records: request.with_items.then_some(Emit::Final),
            rows: false,
        },
        drift: request.drift.clone(),
        emit: Emit::Final,
        preferences: request.preferences,
        truth: request.truth.clone(),
        routing: request.routing.clone(),
        truth_refresh: None,
        publishers: None,
    };
    let mut engine = Engine::start_fed(&config, None, factory)?;
    let reader = {
        let (files, progress) = (files.clone(), progress.clone());
        std::thread::Builder::new()
            .name("labelqc-read".into())
            .spawn(move || cut_blocks(&files, send, &progress))?
    };
    let bar = progress_bar(request.progress, &files);
    // Epochs of about `epoch_events` events, closed while the workers parse.
    loop {
        let done = progress.read_all.load(Ordering::SeqCst)
            && progress.parsed.load(Ordering::SeqCst) == progress.cut.load(Ordering::SeqCst);
        let open = progress.open.load(Ordering::SeqCst);
        if done || open as usize >= request.engine.epoch_events {
            progress.open.fetch_sub(open, Ordering::SeqCst);
            if engine.submitted() >= engine.completed() + request.engine.max_epochs_in_flight {
                engine.sync()?;
            }
            engine.close_epoch()?;
        }
        if let Some(bar) = &bar {
            bar.set_position(progress.bytes.load(Ordering::Relaxed));
        }
        if done {
            break;
        }
        engine.check()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    reader.join().map_err(|_| anyhow::anyhow!("the reading thread panicked"))?.map_err(anyhow::Error::msg)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    engine.sync()?;
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "input read");
    // The input's blocks, parsed lines and exchanged batches are freed by now: their pages go
    // back before the final epoch and the fits allocate theirs (the report's peak memory).
    crate::memory::release_freed_pages_or_log();
    labelqc_dataflows::freed::set_release(crate::memory::release_freed_pages_or_log);
    let parts = engine.finish()?;
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "dataflows finished");

    let mut gathered = std::mem::replace(
        &mut *gathered.lock().expect("the findings are whole"),
        Gathered { summaries: Vec::new(), refused: Vec::new() },
    );
    if request.strict {
        if let Some(first) = gathered.refused.iter().min_by_key(|r| (r.file, r.line)) {
            let file = files.paths[first.file].0.display();
            bail!(BadInput(format!(
                "{file}:{}: {} (--strict stops at the first bad line; drop it to skip bad lines)",
                first.line, first.error
            )));
        }
    }
    gathered.report_refused(&files, on_refused);
    let summaries = gathered.summaries;
    for (i, summary) in summaries.iter().enumerate() {
        let gold = if i > 0 { summaries.first().filter(|s| s.stream == Stream::Gold) } else { None };
        if let Some(error) = summary.no_valid_record(gold) {
            return Err(error.into());
        }
    }
    let events = summaries.iter().map(|s| s.records).sum();
    let dead_letters = summaries.iter().map(FileSummary::refused_total).sum();
    let report = Report { parts, with_items: request.with_items };
    let live_labels = report.live_labels() as usize;
    Ok(ReportOutcome {
        report,
        files: summaries,
        dead_letters,
        events,
        elapsed: start.elapsed(),
        live_labels,
    })
}

/// A progress bar on stderr for input over 16 MiB (or of unknown size), only on a terminal.
fn progress_bar(wanted: bool, files: &Files) -> Option<ProgressBar> {
    const LARGE: u64 = 16 << 20;
    let lengths: Option<u64> = files
        .paths
        .iter()
        .map(|(p, _)| (p.as_os_str() != "-").then(|| std::fs::metadata(p).ok().map(|m| m.len())).flatten())
        .sum();
    let len = lengths;
    let path = &files.paths.last().expect("a labels file").0;
    if !wanted || !std::io::stderr().is_terminal() || len.is_some_and(|l| l < LARGE) {
        return None;
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}").expect("valid template"),
        ),
    };
    bar.set_message(path.display().to_string());
    Some(bar)
}
