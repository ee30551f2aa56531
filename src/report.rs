//! `labelqc report`: runs the quality dataflows over label and gold files and forms the report of
//! spec section 3. Every refused line is passed on with its line number, reason and bytes (or
//! stops the run with `--strict`); each file is summed up in a [`FileSummary`], and a file with
//! records but no valid one stops the run with its likely cause; a progress bar shows on a
//! terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use labelqc_dataflows::drift::DriftSettings;
use labelqc_dataflows::engine::{Engine, EngineConfig};
use labelqc_dataflows::items::ItemsConfig;
use labelqc_dataflows::source::{Source, Stream, Update};
use labelqc_dataflows::view::{QualityView, Report};

use crate::config::EngineSettings;
use crate::input::{self, BadInput, FileSummary, Line, LineReader, Refused};

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
    /// Show a progress bar (only honoured when stderr is a terminal).
    pub progress: bool,
}

/// The report and what was refused on the way.
pub struct ReportOutcome {
    pub report: Report,
    /// The gold file's summary (when given), then the label file's.
    pub files: Vec<FileSummary>,
    pub dead_letters: u64,
    pub events: u64,
    pub elapsed: Duration,
    pub live_labels: usize,
}

/// Runs the dataflows over the request's files. Every refused line is passed to `on_refused`.
/// Fails with [`BadInput`] when a file has records but no valid one (naming the likely cause), or
/// at the first refused line under `--strict`.
pub fn run(request: &ReportRequest, mut on_refused: impl FnMut(&Refused<'_>)) -> Result<ReportOutcome> {
    let start = Instant::now();
    let mut engine = Engine::start(
        &EngineConfig {
            workers: request.engine.workers,
            max_epochs_in_flight: request.engine.max_epochs_in_flight,
            items: ItemsConfig { window_sizes: request.windows.clone(), out_of_order: false },
        },
        QualityView::default().with_drift(request.drift.clone()),
    )?;
    let mut source = Source::with_windows(&request.windows);
    let mut feeder =
        Feeder { engine: &mut engine, source: &mut source, pending: Vec::new(), events: 0, dead: 0 };

    let mut files = Vec::new();
    if let Some(gold) = &request.gold {
        let summary = feeder.feed_file(gold, Stream::Gold, request, &mut on_refused)?;
        if let Some(error) = summary.no_valid_record(None) {
            return Err(error.into());
        }
        files.push(summary);
    }
    let summary = feeder.feed_file(&request.labels, Stream::Labels, request, &mut on_refused)?;
    if let Some(error) = summary.no_valid_record(files.first()) {
        return Err(error.into());
    }
    files.push(summary);
    feeder.flush()?;
    let (events, dead_letters) = (feeder.events, feeder.dead);
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, events, "input read");
    let mut view = engine.finish()?;
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "dataflows finished");
    let report = view.report(&source.catalog, request.with_items);
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "report formed");
    let live_labels = view.live_labels() as usize;
    // Freeing millions of small allocations takes a while; let it overlap with writing the report.
    std::thread::spawn(move || drop((view, source)));
    Ok(ReportOutcome { report, files, dead_letters, events, elapsed: start.elapsed(), live_labels })
}

struct Feeder<'a> {
    engine: &'a mut Engine,
    source: &'a mut Source,
    pending: Vec<Update>,
    events: u64,
    dead: u64,
}

impl Feeder<'_> {
    fn flush(&mut self) -> Result<()> {
        let updates = std::mem::take(&mut self.pending);
        self.engine.submit(updates)?;
        Ok(())
    }

    /// Feeds one file; returns what it held.
    fn feed_file(
        &mut self,
        path: &Path,
        stream: Stream,
        request: &ReportRequest,
        on_refused: &mut impl FnMut(&Refused<'_>),
    ) -> Result<FileSummary> {
        let (reader, len) = input::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut lines = LineReader::new(reader, path);
        let file = lines.source.clone();
        let mut summary = FileSummary::new(&file, stream);
        let progress = progress_bar(request.progress, len, path);
        let mut since_epoch = 0usize;
        loop {
            let next = lines.next_line().with_context(|| format!("cannot read {}", path.display()))?;
            let (line, raw) = match next {
                None => break,
                Some((_, Line::Blank)) => continue,
                Some((line, Line::Record(raw))) => (line, raw),
            };
            self.events += 1;
            summary.records += 1;
            match self.source.apply_message(stream, Some(raw), &mut self.pending) {
                Ok(applied) => {
                    for warning in applied.warnings.iter() {
                        summary.warn(warning, line);
                    }
                }
                Err(error) => {
                    let refused = Refused { file: &file, line, error: &error, raw };
                    if request.strict {
                        bail!(BadInput(format!(
                            "{refused} (--strict stops at the first bad line; drop it to skip bad lines)"
                        )));
                    }
                    self.dead += 1;
                    summary.refuse(&refused);
                    on_refused(&refused);
                }
            }
            since_epoch += 1;
            if since_epoch >= request.engine.epoch_events {
                since_epoch = 0;
                self.flush()?;
                if let Some(bar) = &progress {
                    bar.set_position(lines.bytes_read());
                }
            }
        }
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        Ok(summary)
    }
}

/// A progress bar on stderr for files over 16 MiB (or of unknown size), only on a terminal.
fn progress_bar(wanted: bool, len: Option<u64>, path: &Path) -> Option<ProgressBar> {
    const LARGE: u64 = 16 << 20;
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
