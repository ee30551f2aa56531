//! Reading JSONL label and gold files: one record a line, bad lines refused with their line
//! number and reason while the good lines around them go on. Also what file mode tells about
//! each file afterwards ([`FileSummary`]: refusals per kind of reason, warnings with counts) and,
//! when no line of a file was valid, its likely cause ([`FileSummary::no_valid_record`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use labelqc_dataflows::event::{InputWarning, ParseError, ReasonKind};
use labelqc_dataflows::source::Stream;

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
    /// A line that is not blank: its bytes without the line end (`\n` or `\r\n`).
    Record(&'a [u8]),
    /// A blank line, or one holding only a byte-order mark (skipped silently).
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

    /// The next line with its 1-based number, or `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<(u64, Line<'_>)>> {
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
        let content = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        if content.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some((self.line, Line::Blank)));
        }
        Ok(Some((self.line, Line::Record(bytes))))
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }
}

/// A line that was refused: where, why, and its bytes (without the line end).
pub struct Refused<'a> {
    /// The file (or `-` for standard input).
    pub file: &'a str,
    /// 1-based line number.
    pub line: u64,
    pub error: &'a ParseError,
    pub raw: &'a [u8],
}

impl std::fmt::Display for Refused<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.error)
    }
}

/// What one input file held: records (non-blank lines), those refused by kind of reason, and
/// the warnings of its records with their counts and first line.
#[derive(Debug)]
pub struct FileSummary {
    pub file: String,
    pub stream: Stream,
    pub records: u64,
    pub refused: BTreeMap<ReasonKind, u64>,
    /// Per warning, the records that showed it and the first one's line.
    pub warnings: BTreeMap<InputWarning, (u64, u64)>,
    /// The first refused line: its number, reason and first bytes.
    first_refused: Option<(u64, String, Vec<u8>)>,
}

/// Input that cannot give a report: a file with no valid record, or a bad line under `--strict`
/// (exit code 3, see `cli`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl FileSummary {
    pub fn new(file: &str, stream: Stream) -> FileSummary {
        FileSummary {
            file: file.to_string(),
            stream,
            records: 0,
            refused: BTreeMap::new(),
            warnings: BTreeMap::new(),
            first_refused: None,
        }
    }

    /// Notes the warnings of the record on line `line`.
    pub fn warn(&mut self, warning: InputWarning, line: u64) {
        let (count, _) = self.warnings.entry(warning).or_insert((0, line));
        *count += 1;
    }

    /// Notes a refused record.
    pub fn refuse(&mut self, refused: &Refused<'_>) {
        *self.refused.entry(refused.error.kind()).or_default() += 1;
        if let Some(warning) = refused.error.warning() {
            self.warn(warning, refused.line);
        }
        if self.first_refused.is_none() {
            let head = refused.raw[..refused.raw.len().min(200)].to_vec();
            self.first_refused = Some((refused.line, refused.error.to_string(), head));
        }
    }

    /// Records refused.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    /// Records accepted.
    pub fn valid(&self) -> u64 {
        self.records - self.refused_total()
    }

    /// The refusals, one line per kind of reason, most frequent first (empty if none).
    pub fn refusal_counts(&self) -> String {
        let mut kinds: Vec<(ReasonKind, u64)> = self.refused.iter().map(|(k, n)| (*k, *n)).collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        kinds.iter().map(|(kind, n)| format!("  {n:>9}  {}\n", kind.describe())).collect()
    }

    /// The warnings, one line each: `FILE: N label events have ... (first at line L)`.
    pub fn warning_lines(&self) -> Vec<String> {
        let what = match self.stream {
            Stream::Labels => "label events",
            Stream::Gold => "gold answers",
        };
        self.warnings
            .iter()
            .map(|(warning, (count, line))| {
                let what = if *count == 1 { &what[..what.len() - 1] } else { what };
                let describe = warning.describe();
                let describe = if *count == 1 { singular(describe) } else { describe.to_string() };
                format!("{}: {count} {what} {describe} (first at line {line})", self.file)
            })
            .collect()
    }

    /// When the file had records and none was valid: what to tell the user, with the likely
    /// cause (a CSV file, a JSON array, gold answers given as labels, swapped files). `gold` is
    /// the summary of the gold file read before a label file, if any.
    pub fn no_valid_record(&self, gold: Option<&FileSummary>) -> Option<BadInput> {
        if self.records == 0 || self.valid() > 0 {
            return None;
        }
        let (line, reason, head) = self.first_refused.as_ref().expect("a refused record");
        let what = match self.stream {
            Stream::Labels => "a valid label event",
            Stream::Gold => "a valid gold answer",
        };
        let text = String::from_utf8_lossy(head);
        let text = text.trim_start_matches('\u{feff}').trim_start();
        let only = |kind: ReasonKind| self.refused.get(&kind) == Some(&self.refused_total());
        let cause = if text.starts_with('[') && (only(ReasonKind::NotJson) || only(ReasonKind::NotObject)) {
            "it looks like one JSON array (a .json file), not JSON Lines: write one object a line, e.g. \
             with `jq -c '.[]' FILE.json > FILE.jsonl`"
                .to_string()
        } else if only(ReasonKind::NotJson)
            && !text.starts_with('{')
            && (text.contains(',') || text.contains('\t'))
        {
            let first: String = text.chars().take(60).collect();
            format!(
                "it looks like a CSV file (line {line} is `{first}`): labelqc reads JSON Lines, one JSON \
                 object a line, like {{\"item_id\": \"i1\", \"annotator_id\": \"a1\", \"label\": \"x\", \"ts\": \
                 \"2026-03-01T09:12:44Z\"}}; convert it first"
            )
        } else if self.stream == Stream::Labels && only(ReasonKind::LooksLikeGold) {
            let swapped = gold.is_some_and(|g| {
                g.valid() > 0
                    && g.warnings.get(&InputWarning::GoldWithAnnotator).map(|w| w.0) == Some(g.valid())
            });
            if swapped {
                "its records look like gold answers (`item_id` and `label`, no `annotator_id` or `ts`), and \
                 the gold file's records all carry an `annotator_id`: --labels and --gold look swapped"
                    .to_string()
            } else {
                "its records look like gold answers (`item_id` and `label`, no `annotator_id` or `ts`): a \
                 gold file given as --labels? give it as --gold"
                    .to_string()
            }
        } else {
            format!("the first refused line, line {line}: {reason}")
        };
        Some(BadInput(format!(
            "no record of {} is {what}: {cause}\n{} line(s) refused:\n{}",
            self.file,
            self.refused_total(),
            self.refusal_counts().trim_end()
        )))
    }
}

/// A warning's description for one record: `have` as `has`, `send` as `sends`, `carry` as
/// `carries`.
fn singular(describe: &str) -> String {
    for (plural, one) in
        [("have ", "has "), ("send ", "sends "), ("carry ", "carries "), ("arrive ", "arrives ")]
    {
        if let Some(rest) = describe.strip_prefix(plural) {
            return format!("{one}{rest}");
        }
    }
    describe.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(stream: Stream, lines: &[&str]) -> FileSummary {
        let mut summary = FileSummary::new("f.jsonl", stream);
        let mut source = labelqc_dataflows::source::Source::default();
        for (i, line) in lines.iter().enumerate() {
            summary.records += 1;
            match source.apply_message(stream, Some(line.as_bytes()), &mut Vec::new()) {
                Ok(applied) => applied.warnings.iter().for_each(|w| summary.warn(w, i as u64 + 1)),
                Err(error) => summary.refuse(&Refused {
                    file: "f.jsonl",
                    line: i as u64 + 1,
                    error: &error,
                    raw: line.as_bytes(),
                }),
            }
        }
        summary
    }

    #[test]
    fn likely_causes() {
        let csv = summary(Stream::Labels, &["item_id,annotator_id,label,ts", "i1,a,x,1764460800000"]);
        let message = csv.no_valid_record(None).unwrap().to_string();
        assert!(
            message.contains("it looks like a CSV file (line 1 is `item_id,annotator_id,label,ts`)"),
            "{message}"
        );
        assert!(message.contains("        2  not JSON"), "{message}");
        let array = summary(Stream::Labels, &[r#"[{"item_id":"i","annotator_id":"a","label":"x","ts":1}]"#]);
        assert!(array.no_valid_record(None).unwrap().to_string().contains("one JSON array"));
        let pretty_array = summary(Stream::Labels, &["[", r#"  {"item_id": "i","#]);
        assert!(pretty_array.no_valid_record(None).unwrap().to_string().contains("one JSON array"));
        let gold_as_labels = summary(Stream::Labels, &[r#"{"item_id":"i","label":"x"}"#]);
        let message = gold_as_labels.no_valid_record(None).unwrap().to_string();
        assert!(message.contains("a gold file given as --labels?"), "{message}");
        let labels_as_gold =
            summary(Stream::Gold, &[r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1}"#]);
        assert!(labels_as_gold.no_valid_record(None).is_none(), "accepted, with a warning");
        assert_eq!(labels_as_gold.warnings[&InputWarning::GoldWithAnnotator], (1, 1));
        let message = gold_as_labels.no_valid_record(Some(&labels_as_gold)).unwrap().to_string();
        assert!(message.contains("--labels and --gold look swapped"), "{message}");
        let other = summary(Stream::Labels, &[r#"{"item_id":"i","annotator_id":"a","label":"x"}"#]);
        let message = other.no_valid_record(None).unwrap().to_string();
        assert!(message.contains("the first refused line, line 1: `ts` is missing or null"), "{message}");
        assert!(summary(Stream::Labels, &[]).no_valid_record(None).is_none(), "nothing to refuse");
    }

    #[test]
    fn warnings_are_counted_per_kind() {
        let s = summary(
            Stream::Labels,
            &[
                r#"{"item_id":"i","annotator_id":"a","label":"x","ts":1764460800}"#,
                r#"{"item_id":"i","annotator_id":"b","label":1,"ts":1764460800000}"#,
                r#"{"item_id":"i","annotator_id":"c","label":"1","ts":1764460800}"#,
            ],
        );
        assert_eq!(s.warnings[&InputWarning::TsBefore1973], (2, 1));
        assert_eq!(s.warnings[&InputWarning::NumberAndString], (1, 3));
        let lines = s.warning_lines();
        assert_eq!(
            lines[0],
            format!("f.jsonl: 2 label events {} (first at line 1)", InputWarning::TsBefore1973.describe())
        );
        assert!(
            lines[1].starts_with("f.jsonl: 1 label event sends a value both as a number"),
            "{}",
            lines[1]
        );
    }
}
