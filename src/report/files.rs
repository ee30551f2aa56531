//! Reading input files in parallel: one thread cuts the files into blocks of whole lines, and
//! every dataflow worker parses the blocks it takes ([`FileFeed`]). Each event carries its byte
//! offset in its file as its sequence number, so that the latest event of an identity in file
//! order wins whichever worker read it, and when (see [`labelqc_dataflows::items`]).
//!
//! What the workers refuse or warn about is gathered per file ([`Gathered`]) and reported after the
//! run in line order, as a sequential read would have.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};

use labelqc_dataflows::engine::{EpochReport, Feed};
use labelqc_dataflows::event::ParseError;
use labelqc_dataflows::source::{Catalog, Source, Stream, Update};

use crate::input::{self, FileSummary, Refused};

/// The size a block of lines is cut at (the block ends at the next line end after it).
const BLOCK_BYTES: usize = 256 << 10;

/// A run of whole lines of one input file.
pub struct Block {
    /// The file's index in [`Files::paths`].
    pub file: usize,
    /// The number (1-based) of the block's first line.
    pub first_line: u64,
    /// The byte offset of the block in its file.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The input files, in reading order, with their streams.
#[derive(Clone, Debug)]
pub struct Files {
    pub paths: Vec<(PathBuf, Stream)>,
}

/// Progress shared by the reading thread, the workers and the caller.
#[derive(Default)]
pub struct Progress {
    /// Blocks cut, and blocks parsed.
    pub cut: AtomicU64,
    pub parsed: AtomicU64,
    /// Whether every file has been cut into blocks (or reading failed).
    pub read_all: AtomicBool,
    /// Bytes cut so far (for the progress bar).
    pub bytes: AtomicU64,
    /// Events parsed since the last epoch closed, over every worker.
    pub open: AtomicU64,
}

/// Reads `files` into blocks sent on `blocks`, in order; returns the first error, naming the file.
pub fn cut_blocks(files: &Files, blocks: SyncSender<Block>, progress: &Progress) -> Result<(), String> {
    let result = (|| {
        for (index, (path, _)) in files.paths.iter().enumerate() {
            let (mut reader, _) =
                input::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let (mut offset, mut line) = (0u64, 1u64);
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let mut bytes = std::mem::take(&mut carry);
                let start = bytes.len();
                bytes.resize(start + BLOCK_BYTES, 0);
                let n = read_full(&mut reader, &mut bytes[start..])
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                bytes.truncate(start + n);
                if bytes.is_empty() {
                    break;
                }
                // Whole lines only: what follows the last line end waits for the next block,
                // unless the file ended.
                if n > 0 {
                    if let Some(end) = bytes.iter().rposition(|&b| b == b'\n') {
                        carry = bytes.split_off(end + 1);
                    } else {
                        carry = std::mem::take(&mut bytes);
                        continue;
                    }
                }
                let len = bytes.len() as u64;
                let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64 + u64::from(n == 0);
                progress.bytes.fetch_add(len, Ordering::Relaxed);
                progress.cut.fetch_add(1, Ordering::SeqCst);
                let block = Block { file: index, first_line: line, offset, bytes };
                if blocks.send(block).is_err() {
                    return Ok(());
                }
                offset += len;
                line += lines;
                if n == 0 {
                    break;
                }
            }
        }
        Ok(())
    })();
    progress.read_all.store(true, Ordering::SeqCst);
    result
}

/// Fills `buf` as far as the reader has bytes; returns how many it read (less only at the end).
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A refused line, kept until the run ends.
pub struct RefusedLine {
    pub file: usize,
    pub line: u64,
    pub error: ParseError,
    pub raw: Vec<u8>,
}

/// What the workers found in the files: per file a summary, and every refused line.
pub struct Gathered {
    pub summaries: Vec<FileSummary>,
    pub refused: Vec<RefusedLine>,
}

impl Gathered {
    pub fn new(files: &Files) -> Gathered {
        let summaries =
            files.paths.iter().map(|(p, s)| FileSummary::new(&p.display().to_string(), *s)).collect();
        Gathered { summaries, refused: Vec::new() }
    }

    /// Adds what one worker found, keeping the first line of each warning.
    fn add(&mut self, other: Gathered) {
        for (mine, theirs) in self.summaries.iter_mut().zip(other.summaries) {
            mine.records += theirs.records;
            for (warning, (count, line)) in theirs.warnings {
                let entry = mine.warnings.entry(warning).or_insert((0, line));
                entry.0 += count;
                entry.1 = entry.1.min(line);
            }
        }
        self.refused.extend(other.refused);
    }

    /// Puts the refused lines in file and line order and passes each to `on_refused`, noting it in
    /// its file's summary.
    pub fn report_refused(&mut self, files: &Files, mut on_refused: impl FnMut(&Refused<'_>)) {
        self.refused.sort_by_key(|r| (r.file, r.line));
        let names: Vec<String> = files.paths.iter().map(|(p, _)| p.display().to_string()).collect();
        for r in &self.refused {
            let refused = Refused { file: &names[r.file], line: r.line, error: &r.error, raw: &r.raw };
            self.summaries[r.file].refuse(&refused);
            on_refused(&refused);
        }
    }
}

/// One worker's reading: it takes blocks from the shared queue, parses their lines and turns each
/// event into an update of its item. What it refuses and warns about goes to the shared
/// [`Gathered`] when it is done.
pub struct FileFeed {
    blocks: Arc<Mutex<Receiver<Block>>>,
    source: Source,
    streams: Vec<Stream>,
    progress: Arc<Progress>,
    found: Gathered,
    gathered: Arc<Mutex<Gathered>>,
}

impl FileFeed {
    pub fn new(
        blocks: Arc<Mutex<Receiver<Block>>>,
        files: &Files,
        window_sizes: &[i64],
        progress: Arc<Progress>,
        gathered: Arc<Mutex<Gathered>>,
    ) -> FileFeed {
        let mut source = Source::with_windows(window_sizes);
        source.catalog = Catalog::recording();
        FileFeed {
            blocks,
            source,
            streams: files.paths.iter().map(|(_, s)| *s).collect(),
            progress,
            found: Gathered::new(files),
            gathered,
        }
    }

    /// Parses one block.
    fn parse(&mut self, block: &Block, out: &mut Vec<Update>) -> usize {
        let stream = self.streams[block.file];
        let summary = &mut self.found.summaries[block.file];
        let mut records = 0;
        let (mut line, mut at) = (block.first_line, 0usize);
        for raw_line in block.bytes.split_inclusive(|&b| b == b'\n') {
            let offset = block.offset + at as u64;
            at += raw_line.len();
            let number = line;
            line += 1;
            let bytes = trim_line_end(raw_line);
            let content = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            records += 1;
            summary.records += 1;
            self.source.set_seq(offset);
            match self.source.apply_message(stream, Some(bytes), out) {
                Ok(applied) => {
                    for warning in applied.warnings.iter() {
                        summary.warn(warning, number);
                    }
                }
                Err(error) => self.found.refused.push(RefusedLine {
                    file: block.file,
                    line: number,
                    error,
                    raw: bytes.to_vec(),
                }),
            }
        }
        records
    }
}

fn trim_line_end(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = bytes {
        bytes = rest;
    }
    bytes
}

impl Feed for FileFeed {
    fn read(&mut self, out: &mut Vec<Update>) -> Result<usize, String> {
        let block = match self.blocks.lock().expect("block queue poisoned").try_recv() {
            Ok(block) => block,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(0),
        };
        let records = self.parse(&block, out);
        self.progress.open.fetch_add(records as u64, Ordering::SeqCst);
        self.progress.parsed.fetch_add(1, Ordering::SeqCst);
        Ok(records.max(1))
    }

    fn close(&mut self, _: labelqc_dataflows::dataflow::Time, _: &mut Vec<Update>) -> EpochReport {
        EpochReport { names: self.source.catalog.take_new(), meta: Vec::new(), hold: false }
    }
}

impl Drop for FileFeed {
    fn drop(&mut self) {
        let found =
            std::mem::replace(&mut self.found, Gathered { summaries: Vec::new(), refused: Vec::new() });
        if let Ok(mut gathered) = self.gathered.lock() {
            gathered.add(found);
        }
    }
}
