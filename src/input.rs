//! Reading JSONL label and gold files: one record a line, bad lines refused with their line
//! number and reason while the good lines around them go on.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// A line that was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The file (or `-` for standard input).
    pub source: String,
    /// 1-based line number.
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.reason)
    }
}

/// Opens a file, or standard input for `-`; also returns its length when known.
pub fn open(path: &Path) -> io::Result<(Box<dyn Read>, Option<u64>)> {
    if path == Path::new("-") {
        Ok((Box::new(io::stdin().lock()), None))
    } else {
        let file = File::open(path)?;
        let len = file.metadata().ok().map(|m| m.len());
        Ok((Box::new(file), len))
    }
}

/// Reads JSONL records one line at a time, reusing one buffer.
pub struct LineReader {
    reader: BufReader<Box<dyn Read>>,
    buffer: Vec<u8>,
    line: u64,
    pub source: String,
    bytes_read: u64,
}

/// One line of input.
pub enum Line<'a> {
    /// A non-blank line that is valid UTF-8.
    Record(&'a str),
    /// A line that is not UTF-8.
    NotUtf8,
    /// A blank line (skipped silently).
    Blank,
}

impl LineReader {
    pub fn new(reader: Box<dyn Read>, source: &Path) -> LineReader {
        LineReader {
            reader: BufReader::with_capacity(1 << 20, reader),
            buffer: Vec::with_capacity(4096),
            line: 0,
            source: source.display().to_string(),
            bytes_read: 0,
        }
    }

    /// The next line, or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buffer.clear();
        let n = self.reader.read_until(b'\n', &mut self.buffer)?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes_read += n as u64;
        self.line += 1;
        let mut bytes = self.buffer.as_slice();
        while let [rest @ .., b'\n' | b'\r'] = bytes {
            bytes = rest;
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(Line::Blank));
        }
        Ok(Some(match std::str::from_utf8(bytes) {
            Ok(text) => Line::Record(text),
            Err(_) => Line::NotUtf8,
        }))
    }

    /// The number of the line last returned.
    pub fn line_number(&self) -> u64 {
        self.line
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// A dead letter for the line last returned.
    pub fn dead_letter(&self, reason: impl std::fmt::Display) -> DeadLetter {
        DeadLetter { source: self.source.clone(), line: self.line, reason: reason.to_string() }
    }
}

/// The reason a non-UTF-8 line is refused.
pub const NOT_UTF8: &str = "line is not valid UTF-8";
