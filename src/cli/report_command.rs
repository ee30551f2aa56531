//! `labelqc report`: the request formed from its arguments, the run, the refused lines shown and
//! kept (`--dead-letters`), and the report written.

use super::*;
use crate::deadletter::RawExcerpt;
use crate::input::Refused;
use crate::report::{self, ReportRequest};

pub(super) fn run_report(args: ReportArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let mut config = Config::from_env(args.config.as_deref())?;
    if let Some(workers) = args.workers {
        config.engine.workers = workers;
    }
    if let Some(epoch_events) = args.epoch_events {
        config.engine.epoch_events = epoch_events;
    }
    config.validate()?;
    if args.labels.as_os_str() == "-" && args.gold.as_deref().is_some_and(|g| g.as_os_str() == "-") {
        anyhow::bail!("--labels and --gold cannot both read standard input; give one of them a file");
    }
    warn_about_workers(config.engine.workers);
    let mut dead_letters = match &args.dead_letters {
        Some(path) => Some(DeadLetterFile::create(path)?),
        None => None,
    };
    let request = ReportRequest {
        labels: args.labels,
        gold: args.gold,
        with_items: args.items,
        strict: args.strict,
        drift: config.drift_settings(),
        windows: if args.windows { config.windows.sizes_ms()? } else { Vec::new() },
        engine: config.engine,
        progress: true,
        preferences: config.preferences,
        truth: config.truth,
        routing: config.routing,
    };
    let mut shown = 0u64;
    let mut examples = Vec::new();
    let mut write_error = None;
    let outcome = report::run(&request, |refused| {
        if shown < SHOWN_BAD_LINES {
            examples.push(format!("bad line: {refused}"));
        }
        shown += 1;
        if let Some(file) = &mut dead_letters {
            if let Err(error) = file.write(refused) {
                write_error.get_or_insert(error);
            }
        }
    });
    let dead_letter_path = args.dead_letters.as_deref().map(|p| p.display().to_string());
    if let Some(file) = dead_letters {
        if let Some(error) = write_error {
            return Err(error);
        }
        file.finish()?;
    }
    // Input with no valid record: its cause (the error, printed last) explains every line, so a
    // few examples lead up to it rather than a screenful.
    let hopeless = outcome.as_ref().err().is_some_and(|e| e.downcast_ref::<BadInput>().is_some());
    let examples = if hopeless { &examples[..examples.len().min(HOPELESS_BAD_LINES)] } else { &examples[..] };
    for line in examples {
        eprintln!("{line}");
    }
    let outcome = outcome?;
    for file in &outcome.files {
        let refused = file.refused_total();
        if file.records == 0 {
            eprintln!("warning: {} holds no records", file.file);
        } else if refused > 0 {
            let more = if shown > SHOWN_BAD_LINES {
                format!(", the first {SHOWN_BAD_LINES} shown above")
            } else {
                String::new()
            };
            let kept = match &dead_letter_path {
                Some(path) => format!("all of them are in {path}"),
                None => "--dead-letters FILE keeps them all".to_string(),
            };
            eprint!(
                "{}: {refused} of {} line(s) refused{more}; the report covers the rest ({kept}; --strict stops \
                 at the first):\n{}",
                file.file,
                file.records,
                file.refusal_counts()
            );
        }
        for line in file.warning_lines() {
            eprintln!("warning: {line}");
        }
    }
    tracing::info!(
        events = outcome.events,
        dead_letters = outcome.dead_letters,
        live_labels = outcome.live_labels,
        elapsed_ms = outcome.elapsed.as_millis() as u64,
        "report computed"
    );
    let mut out = create(args.output.as_ref().unwrap_or(&PathBuf::from("-")))?;
    outcome.report.write(&mut out, args.pretty)?;
    writeln!(out)?;
    out.flush().context("cannot write the report")?;
    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "report written");
    // The process ends next; freeing the report's many small allocations would only cost time.
    std::mem::forget(outcome);
    Ok(())
}

/// Warns on stderr when there are more dataflow workers than cores: the extra workers share the
/// cores and slow the run down (the numbers do not change).
fn warn_about_workers(workers: usize) {
    if let Ok(cores) = std::thread::available_parallelism() {
        if workers > cores.get() {
            eprintln!(
                "warning: {workers} workers on a machine with {cores} cores: workers beyond the cores share \
                 them and slow the run down (the numbers do not change); use --workers {cores} or fewer"
            );
        }
    }
}

/// `--dead-letters FILE`: every refused line as one JSON object a line.
struct DeadLetterFile {
    path: PathBuf,
    out: BufWriter<File>,
}

/// One line of a dead-letter file.
#[derive(serde::Serialize)]
struct FileDeadLetter<'a> {
    file: &'a str,
    line: u64,
    reason: String,
    kind: &'static str,
    #[serde(flatten)]
    raw: RawExcerpt,
}

impl DeadLetterFile {
    fn create(path: &std::path::Path) -> Result<DeadLetterFile> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(DeadLetterFile { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    fn write(&mut self, refused: &Refused<'_>) -> Result<()> {
        let letter = FileDeadLetter {
            file: refused.file,
            line: refused.line,
            reason: refused.error.to_string(),
            kind: refused.error.kind().name(),
            raw: RawExcerpt::new(refused.raw, usize::MAX),
        };
        serde_json::to_writer(&mut self.out, &letter)?;
        self.out.write_all(b"\n").with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn finish(mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}
